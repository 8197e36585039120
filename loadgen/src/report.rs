//! Self-contained HTML report: a summary table and inline SVG plots (connections, messages
//! per second, latency percentiles per second, latency distribution). No scripts, no network.

use std::fmt::Write as _;

use crate::result::Summary;

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

const W: f64 = 760.0;
const H: f64 = 260.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 30.0;
const B: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A line chart; `log_y` plots log10 of positive values. `x_ticks` optionally names x values.
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
    x_ticks: Option<&[(f64, &str)]>,
) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{L}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| !log_y || p.1 > 0.0)
        .collect();
    if all.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"#888\">no data</text></svg>",
            W / 2.0 - 20.0,
            H / 2.0
        );
        return svg;
    }
    let ty = |v: f64| if log_y { v.max(1e-9).log10() } else { v };
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(ty(y));
        y1 = y1.max(ty(y));
    }
    if log_y {
        y0 = y0.floor();
        y1 = y1.ceil().max(y0 + 1.0);
    } else {
        y0 = y0.min(0.0);
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        y1 *= 1.05;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let px = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - (ty(y) - y0) / (y1 - y0) * (H - T - B);
    let _ = write!(
        svg,
        "<rect x=\"{L}\" y=\"{T}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>",
        W - L - R,
        H - T - B
    );
    // Y grid.
    let y_ticks: Vec<f64> = if log_y {
        (y0 as i32..=y1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=4).map(|i| y0 + (y1 - y0) * i as f64 / 4.0).collect()
    };
    for v in y_ticks {
        let y = py(v);
        let _ = write!(
            svg,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - R,
            L - 4.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    // X ticks.
    match x_ticks {
        Some(ticks) => {
            for &(x, label) in ticks {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                    px(x),
                    H - B + 14.0,
                    esc(label)
                );
            }
        }
        None => {
            for i in 0..=5 {
                let x = x0 + (x1 - x0) * i as f64 / 5.0;
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                    px(x),
                    H - B + 14.0,
                    fmt_num(x)
                );
            }
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        (L + W - R) / 2.0,
        H - 6.0,
        esc(x_label),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| !log_y || p.1 > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        for &(x, y) in s.points.iter().filter(|p| !log_y || p.1 > 0.0) {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{}"><title>{}: {} at {}</title></circle>"#,
                px(x),
                py(y),
                s.color,
                esc(s.name),
                fmt_num(y),
                fmt_num(x)
            );
        }
        let lx = L + 10.0 + 130.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            T + 8.0,
            s.color,
            lx + 16.0,
            T + 12.0,
            esc(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn row(out: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = write!(
        out,
        "<tr><th>{}</th><td>{}</td></tr>",
        esc(k),
        esc(&v.to_string())
    );
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Renders the whole page.
pub fn html(s: &Summary) -> String {
    let t: Vec<f64> = s.timeline.iter().map(|x| x.t as f64).collect();
    let pts = |f: &dyn Fn(usize) -> f64| -> Vec<(f64, f64)> {
        (0..t.len()).map(|i| (t[i], f(i))).collect()
    };
    let tl = &s.timeline;

    let mut table = String::from("<table>");
    row(
        &mut table,
        "command",
        format!(
            "{} ({}), {} clients, {} shard(s)",
            s.command, s.transport, s.clients, s.shards
        ),
    );
    row(&mut table, "gateway", &s.gateway);
    row(&mut table, "result", if s.passed { "PASS" } else { "FAIL" });
    row(&mut table, "stopped by", &s.stopped_by);
    row(&mut table, "elapsed", format!("{:.1} s", s.elapsed_secs));
    let c = &s.connect;
    row(
        &mut table,
        "connect",
        format!(
            "{} ok, {} failed, {:.0}/s; p50 {} p99 {} max {}; reconnects {}",
            c.first_ok,
            c.first_failed,
            c.rate_per_sec,
            ms(c.time_us.p50),
            ms(c.time_us.p99),
            ms(c.time_us.max),
            c.reconnects
        ),
    );
    let p = &s.publish;
    row(
        &mut table,
        "publish",
        format!(
            "{} accepted of {} in {} requests, {:.0}/s; request p99 {}",
            p.messages_accepted,
            p.messages_attempted,
            p.requests,
            p.rate_per_sec,
            ms(p.request_us.p99)
        ),
    );
    let d = &s.delivery;
    let l = &d.latency_us;
    row(
        &mut table,
        "delivery",
        format!(
            "{} received, {:.0}/s; latency p50 {} p90 {} p99 {} p99.9 {} max {}",
            d.received,
            d.rate_per_sec,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        ),
    );
    if let Some(v) = d.span_ms {
        row(
            &mut table,
            "first sent → last received",
            format!("{v:.2} ms"),
        );
    }
    if let Some(k) = &d.check {
        row(
            &mut table,
            "check",
            format!(
                "expected {} unique {}; lost {} duplicated {} out-of-order {} gaps {} unexpected {}",
                k.expected, k.unique, k.lost, k.duplicated, k.out_of_order, k.gaps, k.unexpected
            ),
        );
    }
    let errs: Vec<String> = s
        .errors
        .by_kind
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    row(
        &mut table,
        "errors",
        format!("{} {}", s.errors.total, errs.join(" ")),
    );
    if let Some(m) = &s.memory {
        memory_rows(&mut table, "memory", m);
    }
    if let Some(m) = &s.memory_after_drain {
        memory_rows(&mut table, "memory after the drain", m);
    }
    table.push_str("</table>");

    let conn_chart = chart(
        "Connected clients",
        "seconds",
        "clients",
        &[Series {
            name: "connected",
            color: "#1f77b4",
            points: pts(&|i| tl[i].connected as f64),
        }],
        false,
        None,
    );
    let rate_chart = chart(
        "Messages per second",
        "seconds",
        "messages/s",
        &[
            Series {
                name: "published",
                color: "#2ca02c",
                points: pts(&|i| tl[i].published as f64),
            },
            Series {
                name: "delivered",
                color: "#ff7f0e",
                points: pts(&|i| tl[i].delivered as f64),
            },
            Series {
                name: "errors",
                color: "#d62728",
                points: pts(&|i| tl[i].errors as f64),
            },
        ],
        false,
        None,
    );
    let has = |i: usize| tl[i].delivered > 0;
    let lat_pts = |f: &dyn Fn(usize) -> u64| -> Vec<(f64, f64)> {
        (0..t.len())
            .filter(|&i| has(i))
            .map(|i| (t[i], f(i) as f64 / 1000.0))
            .collect()
    };
    let lat_chart = chart(
        "Delivery latency per second",
        "seconds",
        "ms (log)",
        &[
            Series {
                name: "p50",
                color: "#1f77b4",
                points: lat_pts(&|i| tl[i].latency_p50_us),
            },
            Series {
                name: "p99",
                color: "#ff7f0e",
                points: lat_pts(&|i| tl[i].latency_p99_us),
            },
            Series {
                name: "max",
                color: "#d62728",
                points: lat_pts(&|i| tl[i].latency_max_us),
            },
        ],
        true,
        None,
    );
    // Percentile distribution on a "nines" axis: x = log10(1 / (1 - p)).
    let nines = |p: f64| (1.0 / (1.0 - (p / 100.0).min(0.99999))).log10();
    let dist = Series {
        name: "latency",
        color: "#9467bd",
        points: s
            .latency_distribution
            .iter()
            .map(|pt| (nines(pt.percentile), pt.value_us as f64 / 1000.0))
            .collect(),
    };
    let ticks = [
        (nines(0.0), "0%"),
        (nines(90.0), "90%"),
        (nines(99.0), "99%"),
        (nines(99.9), "99.9%"),
        (nines(99.99), "99.99%"),
        (nines(100.0), "max"),
    ];
    let dist_chart = chart(
        "Delivery latency distribution",
        "percentile",
        "ms (log)",
        &[dist],
        true,
        Some(&ticks),
    );

    let json = serde_json::to_string(s)
        .unwrap_or_default()
        .replace("</", "<\\/");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>loadgen {cmd} report</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 16px; }}
th {{ text-align: left; padding: 3px 12px 3px 0; vertical-align: top; white-space: nowrap; }}
td {{ padding: 3px 0; }}
.pass {{ color: #2ca02c; }} .fail {{ color: #d62728; }}
svg {{ display: block; margin: 12px 0; }}
</style></head><body>
<h1>loadgen {cmd} <span class="{cls}">{res}</span></h1>
{table}
{conn_chart}
{rate_chart}
{lat_chart}
{dist_chart}
<script type="application/json" id="summary">{json}</script>
</body></html>
"#,
        cmd = esc(&s.command),
        cls = if s.passed { "pass" } else { "fail" },
        res = if s.passed { "PASS" } else { "FAIL" },
    )
}

/// The memory rows of the summary table.
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
    fn charts_handle_empty_and_flat_data() {
        let empty = chart("x", "s", "y", &[], false, None);
        assert!(empty.contains("no data") && empty.ends_with("</svg>"));
        let flat = chart(
            "x",
            "s",
            "y",
            &[Series {
                name: "a",
                color: "#000",
                points: vec![(1.0, 5.0)],
            }],
            true,
            None,
        );
        assert!(flat.contains("<polyline") && !flat.contains("NaN") && !flat.contains("inf"));
        assert_eq!(esc("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
