//! The `--report` page: one self-contained HTML file. The tables (command line, run
//! parameters, phases, result, per transport) are rendered here; the charts are drawn in
//! the browser by uPlot (`assets/vendor/uplot/`, inlined) and `report.js` from the summary
//! JSON the page carries. Nothing is loaded from the network.

use std::fmt::Write as _;

use crate::result::{HistSummary, Summary};

/// uPlot, vendored at the repository root (shared with other pages).
const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");
/// The charts: reads `#summary`, draws into `#charts`.
const REPORT_JS: &str = include_str!("report.js");

const CSS: &str = r#"
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1440px; padding: 0 16px; color: #222; }
h1 { margin: 0 0 4px; font-size: 24px; }
h2 { font-size: 17px; margin: 22px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
h3 { font-size: 14px; margin: 18px 0 2px; }
.meta, .note { color: #666; font-size: 13px; margin: 2px 0 6px; }
.badge { font-size: 15px; padding: 2px 8px; border-radius: 4px; color: #fff; vertical-align: middle; }
.badge.pass { background: #2ca02c; } .badge.fail { background: #d62728; }
pre.cmd { background: #f4f4f4; border: 1px solid #ddd; padding: 8px 10px; white-space: pre-wrap; word-break: break-all; font-size: 13px; margin: 0; }
.grid { display: flex; flex-wrap: wrap; gap: 8px 40px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px 3px 0; vertical-align: top; text-align: left; }
table.kv th { white-space: nowrap; font-weight: 600; }
table.num td, table.num th { text-align: right; padding-left: 12px; }
table.num td:first-child, table.num th:first-child { text-align: left; padding-left: 0; }
table.num thead th { border-bottom: 1px solid #ccc; }
.bad { color: #d62728; font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
.chart { margin: 4px 0 14px; }
.uplot .u-title { font-size: 14px; font-weight: 600; }
.uplot .u-legend { font-size: 12px; }
"#;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number without trailing zeros (`1`, `0.5`, `12.25`).
fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn secs(v: f64) -> String {
    format!("{} s", num(v))
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A `<tr><th>k</th><td>v</td></tr>` row; `v` is HTML already.
fn row_html(out: &mut String, k: &str, v: &str) {
    let _ = write!(out, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
}

fn row(out: &mut String, k: &str, v: impl std::fmt::Display) {
    row_html(out, k, &esc(&v.to_string()));
}

/// A count that must be zero, in red when it is not.
fn must_be_zero(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("<span class=\"bad\">{v}</span>")
    }
}

/// The phase colours `report.js` uses too (kept in step by hand).
fn phase_colour(name: &str) -> &'static str {
    match name {
        "baseline" | "settle" => "#9e9e9e",
        "ramp" => "#3182bd",
        "hold" | "publish" => "#31a354",
        "churn" => "#9467bd",
        "drain" => "#e6550d",
        "close" => "#d62728",
        _ => "#999999",
    }
}

fn parameters_table(s: &Summary) -> String {
    let mut t = String::from("<table class=\"kv\" id=\"parameters\">");
    row(&mut t, "subcommand", &s.command);
    let Some(p) = &s.parameters else {
        row(&mut t, "transport", &s.transport);
        row(&mut t, "clients", s.clients);
        row(&mut t, "gateway", &s.gateway);
        t.push_str("</table>");
        return t;
    };
    match &p.nchan_url {
        Some(u) => row(&mut t, "target", format!("{} at {u}", p.target)),
        None => row(&mut t, "target", &p.target),
    }
    row(&mut t, "gateways", p.gateways.join(", "));
    if p.clients > 0 {
        let by: Vec<String> = p
            .clients_by_transport
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        row(
            &mut t,
            "clients",
            format!("{} ({}), one channel each", p.clients, by.join(", ")),
        );
        if !p.client_plane.is_empty() {
            row(&mut t, "client plane", &p.client_plane);
        }
        row(
            &mut t,
            "connect",
            format!(
                "ramp {}/s, then settle {}",
                num(p.ramp_per_sec),
                secs(p.settle_secs)
            ),
        );
    }
    if let Some(h) = p.hold_secs {
        row(&mut t, "hold", secs(h));
    }
    if let Some(q) = &p.publish {
        let how = match (q.batch, q.broadcast) {
            (1, _) => "single publishes".to_string(),
            (b, false) => format!("NDJSON batches of {b}"),
            (b, true) => format!("broadcasts to {b} channels"),
        };
        row(
            &mut t,
            "publish",
            format!(
                "{}/s for {} to {} channels ({}), {how}, {} B payloads, {} connections per gateway",
                num(q.rate_per_sec),
                secs(q.duration_secs),
                q.channels,
                q.pattern,
                q.payload_bytes,
                q.publish_connections
            ),
        );
        if let (Some(every), Some(n)) = (q.broadcast_every_secs, q.broadcast_channels) {
            row(
                &mut t,
                "broadcasts",
                format!(
                    "besides the stream, every {} a broadcast to {n} random channels (at most {} per request)",
                    secs(every),
                    q.max_broadcast_channels.unwrap_or(n)
                ),
            );
        }
        if q.retry_for_secs > 0.0 {
            row(
                &mut t,
                "retries",
                format!(
                    "for up to {} under idempotency keys",
                    secs(q.retry_for_secs)
                ),
            );
        }
    }
    if let Some(c) = &p.churn {
        row(
            &mut t,
            "churn",
            format!(
                "{} % of the clients drop, {}/s, back after ~{}{}",
                num(c.fraction * 100.0),
                num(c.rate_per_sec),
                secs(c.backoff_secs),
                if c.after_secs > 0.0 {
                    format!(", from {} into publishing on", secs(c.after_secs))
                } else {
                    String::new()
                }
            ),
        );
    }
    if let Some(d) = p.drain_secs {
        row(&mut t, "drain", format!("up to {}", secs(d)));
    }
    row(
        &mut t,
        "processes",
        match (s.shards, p.max_per_process) {
            (1, _) => "1".to_string(),
            (k, Some(m)) => format!("{k} (at most {m} clients each)"),
            (k, None) => format!("{k} (open-file limit)"),
        },
    );
    row(
        &mut t,
        "network",
        format!(
            "{}; {}",
            if p.tls { "TLS" } else { "plain" },
            match p.source_ips {
                0 => "the system's source address".to_string(),
                n => format!("{n} source addresses"),
            }
        ),
    );
    let mut checks = vec![format!("max errors {}", p.max_errors)];
    for (on, what) in [
        (p.allow_drops, "drops allowed"),
        (p.allow_gaps, "gaps allowed"),
        (p.check_ids, "message ids checked"),
        (p.memory_after_drain, "memory read after the drain"),
    ] {
        if on {
            checks.push(what.to_string());
        }
    }
    row(&mut t, "checks", checks.join(", "));
    row(
        &mut t,
        "timeouts",
        format!(
            "connect {}, request {}, long-poll {}, whole run {}",
            secs(p.connect_timeout_secs),
            secs(p.request_timeout_secs),
            secs(p.poll_timeout_secs as f64),
            secs(p.max_duration_secs)
        ),
    );
    if !p.server_pids.is_empty() {
        let pids: Vec<String> = p.server_pids.iter().map(|p| p.to_string()).collect();
        row(&mut t, "server pids", pids.join(", "));
    }
    row(&mut t, "channel prefix", &s.channel_prefix);
    row(&mut t, "loadgen", &s.loadgen_version);
    t.push_str("</table>");
    t
}

fn phases_table(s: &Summary) -> String {
    if s.phases.is_empty() {
        return "<p class=\"note\">No phases recorded.</p>".into();
    }
    let mut t = String::from(
        "<table class=\"num\" id=\"phases\"><thead><tr><th>phase</th><th>start s</th><th>end s</th><th>duration s</th></tr></thead><tbody>",
    );
    for p in &s.phases {
        let _ = write!(
            t,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            phase_colour(&p.name),
            esc(&p.name),
            p.start_secs,
            p.end_secs,
            p.end_secs - p.start_secs
        );
    }
    t.push_str("</tbody></table><p class=\"note\">Seconds since loadgen started; the shaded bands of the charts.</p>");
    t
}

fn check_table(s: &Summary) -> String {
    let mut t = String::from("<table class=\"kv\" id=\"check\">");
    row_html(
        &mut t,
        "result",
        &format!(
            "<span class=\"{}\">{}</span> ({}, {:.1} s)",
            if s.passed { "" } else { "bad" },
            if s.passed { "PASS" } else { "FAIL" },
            esc(&s.stopped_by),
            s.elapsed_secs
        ),
    );
    if let Some(k) = &s.delivery.check {
        row(&mut t, "expected", k.expected);
        row(
            &mut t,
            "received",
            format!("{} ({} unique)", k.received, k.unique),
        );
        row_html(
            &mut t,
            "lost",
            &format!(
                "{} (on {} channels)",
                must_be_zero(k.lost),
                k.channels_with_loss
            ),
        );
        row_html(&mut t, "duplicated", &must_be_zero(k.duplicated));
        row_html(&mut t, "out of order", &must_be_zero(k.out_of_order));
        row_html(
            &mut t,
            "gaps",
            &if k.gaps == 0 {
                "0".to_string()
            } else {
                format!(
                    "{} on {} channels ({} saying messages were gone); replayed after a gap {}",
                    must_be_zero(k.gaps),
                    k.channels_with_gaps,
                    k.gaps_with_missing,
                    k.replayed
                )
            },
        );
        row_html(&mut t, "unexpected", &must_be_zero(k.unexpected));
        if k.id_duplicated > 0 {
            row_html(&mut t, "id duplicates", &must_be_zero(k.id_duplicated));
        }
    }
    let errs: Vec<String> = s
        .errors
        .by_kind
        .iter()
        .map(|(k, v)| format!("{}={v}", esc(k)))
        .collect();
    row_html(
        &mut t,
        "errors",
        &format!("{} {}", must_be_zero(s.errors.total), errs.join(" ")),
    );
    let c = &s.connect;
    if c.drops > 0 {
        let kinds: Vec<String> = c
            .drops_by_kind
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        row(
            &mut t,
            "drops",
            format!("{} (resumed; not errors) {}", c.drops, kinds.join(" ")),
        );
    }
    if c.attempts > 0 {
        row(
            &mut t,
            "connect",
            format!(
                "{} of {} first attempts ok ({} failed) in {:.2} s = {:.0}/s; peak {} connected; reconnects {}",
                c.first_ok, s.clients, c.first_failed, c.phase_secs, c.rate_per_sec, c.peak_connected, c.reconnects
            ),
        );
    }
    let p = &s.publish;
    if p.requests > 0 {
        row(
            &mut t,
            "publish",
            format!(
                "{} accepted of {} in {} requests over {:.1} s = {:.0}/s; rejected {}; retried requests {}",
                p.messages_accepted, p.messages_attempted, p.requests, p.secs, p.rate_per_sec, p.messages_rejected, p.retries
            ),
        );
    }
    let d = &s.delivery;
    if d.received > 0 {
        row(
            &mut t,
            "delivery",
            format!(
                "{} received = {:.0}/s{}",
                d.received,
                d.rate_per_sec,
                d.span_ms
                    .map(|v| format!("; first sent → last received {v:.2} ms"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(b) = &s.broadcasts {
        let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2} ms"));
        row_html(
            &mut t,
            "broadcasts",
            &format!(
                "{} sent in {} requests naming {} channels, accepted on {}; {} received (not received {}); send → last client p50 {}, max {}",
                b.sent,
                b.requests,
                b.channels,
                b.accepted,
                b.delivered,
                must_be_zero(b.accepted.saturating_sub(b.delivered)),
                esc(&opt(b.to_last_client_p50_ms)),
                esc(&opt(b.to_last_client_max_ms))
            ),
        );
    }
    if let Some(x) = &s.tls {
        row(
            &mut t,
            "TLS",
            format!(
                "{} full + {} resumed handshakes ({:.1} % resumed)",
                x.full,
                x.resumed,
                x.resumed_share * 100.0
            ),
        );
    }
    if let Some(m) = &s.memory {
        memory_rows(&mut t, "memory", m);
    }
    if let Some(m) = &s.memory_after_drain {
        memory_rows(&mut t, "memory after the drain", m);
    }
    t.push_str("</table>");
    t
}

fn percentile_table(s: &Summary) -> String {
    let mut t = String::from(
        "<table class=\"num\" id=\"percentiles\"><thead><tr><th>ms</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr></thead><tbody>",
    );
    let mut line = |name: &str, h: &HistSummary| {
        if h.count == 0 {
            return;
        }
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            h.count,
            ms(h.p50),
            ms(h.p90),
            ms(h.p99),
            ms(h.p999),
            ms(h.max)
        );
    };
    line("delivery latency", &s.delivery.latency_us);
    if let Some(h) = &s.delivery.steady_latency_us {
        line("… of the publish stream", h);
    }
    if let Some(h) = &s.delivery.broadcast_latency_us {
        line("… of the periodic broadcasts", h);
    }
    line("connect (assign + handshake)", &s.connect.time_us);
    line("assign", &s.connect.assign_us);
    line("publish request", &s.publish.request_us);
    if let Some(x) = &s.tls {
        line("TLS handshake", &x.handshake_us);
    }
    t.push_str("</tbody></table>");
    t
}

fn transport_table(s: &Summary) -> String {
    if s.by_transport.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "<h2>By transport</h2><table class=\"num\" id=\"by-transport\"><thead><tr><th>transport</th><th>clients</th><th>connections</th><th>received</th><th>connect p50 ms</th><th>connect p99 ms</th><th>latency p50 ms</th><th>latency p99 ms</th><th>latency max ms</th></tr></thead><tbody>",
    );
    // An empty histogram has no percentiles.
    let ms = |h: &HistSummary, us: u64| {
        if h.count == 0 {
            "–".to_string()
        } else {
            ms(us)
        }
    };
    for x in &s.by_transport {
        let (c, l) = (&x.connect_us, &x.latency_us);
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&x.transport),
            x.clients,
            x.connects_ok,
            x.delivered,
            ms(c, c.p50),
            ms(c, c.p99),
            ms(l, l.p50),
            ms(l, l.p99),
            ms(l, l.max)
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn broadcasts_table(s: &Summary) -> String {
    let Some(b) = &s.broadcasts else {
        return String::new();
    };
    let mut t = String::from(
        "<h2>Broadcasts</h2><table class=\"num\" id=\"broadcasts\"><thead><tr><th>broadcast</th><th>sent at s</th><th>channels</th><th>requests</th><th>accepted</th><th>received</th><th>request ms</th><th>send → last client ms</th></tr></thead><tbody>",
    );
    for x in &b.each {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
            x.n,
            (x.sent_unix_ms as f64 - s.started_unix_ms as f64) / 1000.0,
            x.channels,
            x.requests,
            x.accepted,
            x.delivered,
            x.request_ms,
            x.to_last_client_ms
                .map_or("–".to_string(), |v| format!("{v:.2}"))
        );
    }
    t.push_str("</tbody></table><p class=\"note\">Sent at: seconds since loadgen started. Received: first receipts by clients, one per channel that accepted the broadcast. Send → last client: from the payload's send time to the last of those receipts.</p>");
    t
}

/// The summary as JSON safe inside a `<script>` element (`<` only occurs in strings).
fn json_for_script(s: &Summary) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c")
}

/// Renders the whole page.
pub fn html(s: &Summary) -> String {
    let res = if s.passed { "PASS" } else { "FAIL" };
    let command_line = if s.command_line.is_empty() {
        format!("loadgen {}", s.command)
    } else {
        s.command_line.clone()
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>loadgen {cmd} {res}</title>
<style>{UPLOT_CSS}</style>
<style>{CSS}</style>
</head><body>
<h1>loadgen {cmd} <span class="badge {cls}">{res}</span></h1>
<p class="meta">started {started} · {elapsed:.1} s · {stopped} · {procs}</p>
<h2>Command</h2>
<pre class="cmd" id="command-line">{command_line}</pre>
<div class="grid">
<section><h2>Run parameters</h2>{params}</section>
<section><h2>Phases</h2>{phases}</section>
</div>
<h2>Result</h2>
<div class="grid">
<section>{check}</section>
<section><h3>Percentiles</h3>{pct}</section>
</div>
{by_transport}
{broadcasts}
<h2>Over time</h2>
<p class="note">x: seconds since loadgen started. Rates are per second, over the second ending at x; latencies are those of the messages received in that second. Shaded bands and dashed lines are the phases. Drag to zoom, double-click to zoom out.</p>
<div id="charts"><noscript>The charts need JavaScript (inline, nothing is loaded).</noscript></div>
<script type="application/json" id="summary">{json}</script>
<script>{UPLOT_JS}</script>
<script>{REPORT_JS}</script>
</body></html>
"#,
        cmd = esc(&s.command),
        cls = if s.passed { "pass" } else { "fail" },
        started = utc(s.started_unix_ms),
        elapsed = s.elapsed_secs,
        stopped = esc(&s.stopped_by),
        procs = if s.shards == 1 {
            "1 process".to_string()
        } else {
            format!("{} processes", s.shards)
        },
        command_line = esc(&command_line),
        params = parameters_table(s),
        phases = phases_table(s),
        check = check_table(s),
        pct = percentile_table(s),
        by_transport = transport_table(s),
        broadcasts = broadcasts_table(s),
        json = json_for_script(s),
    )
}

/// The memory rows of the result table.
fn memory_rows(table: &mut String, title: &str, m: &crate::memory::MemoryResult) {
    let f = |x: Option<f64>| {
        x.map(|v| format!("{v:.0} B"))
            .unwrap_or_else(|| "n/a".into())
    };
    row(
        table,
        &format!("{title} per connection"),
        format!(
            "{} over {} connections (workers +{} B)",
            f(m.bytes_per_connection),
            m.connections,
            m.workers_delta_bytes
        ),
    );
    for w in &m.workers {
        row(
            table,
            &format!("worker {}", w.id),
            format!(
                "{} connections, {} per connection",
                w.connections,
                f(w.bytes_per_connection)
            ),
        );
    }
    if let Some(d) = m.gateway.delta_bytes {
        row(table, "gateway RSS", format!("{d:+} B"));
    }
    if let Some(k) = &m.kernel {
        row(
            table,
            "kernel TCP memory",
            format!(
                "{} per socket, {} per connection",
                f(k.bytes_per_socket),
                f(k.bytes_per_connection)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_formats() {
        assert_eq!(esc("<a&\">"), "&lt;a&amp;&quot;&gt;");
        assert_eq!(num(1.0), "1");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(12.25), "12.25");
        assert_eq!(num(-0.0001), "0");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_798_761_599_000), "2026-12-31 23:59:59 UTC");
    }

    #[test]
    fn vendored_script_can_be_inlined() {
        // Inside a <script> element these would end it or confuse the parser.
        for part in [UPLOT_JS, REPORT_JS] {
            assert!(!part.contains("</script") && !part.contains("<!--"));
        }
        assert!(UPLOT_JS.contains("uPlot") && UPLOT_CSS.contains(".uplot"));
    }
}
