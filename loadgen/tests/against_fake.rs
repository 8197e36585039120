//! End-to-end tests of the loadgen binary against the in-test fake of the public contract:
//! a correct fake passes with zero loss, a lossy or duplicating one is caught.

mod fake;

use std::path::PathBuf;

use fake::{Mode, Options};
use serde_json::Value;

struct Outcome {
    code: i32,
    json: Value,
    stdout: String,
    stderr: String,
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-test-{}-{name}", std::process::id()))
}

async fn loadgen(gateway: &str, name: &str, args: &[&str]) -> Outcome {
    let json = tmp(&format!("{name}.json"));
    let _ = std::fs::remove_file(&json);
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(
        [
            "--gateway",
            gateway,
            "--json",
            json.to_str().unwrap(),
            "--max-duration",
            "60s",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(&all)
        .output()
        .await
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|_| panic!("no JSON written; stderr:\n{stderr}"));
    let _ = std::fs::remove_file(&json);
    Outcome {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&text).expect("valid JSON"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

fn n(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ws_on_a_correct_fake_is_clean() {
    let f = fake::start(Mode::Correct, Options::default()).await;
    let o = loadgen(
        &f.url(),
        "run-ws",
        &[
            "run",
            "--clients",
            "20",
            "--transport",
            "ws",
            "--rate",
            "200/s",
            "--duration",
            "1s",
            "--settle",
            "0s",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    // The human summary is on stdout (`loadgen ... > out.txt` keeps it), not on stderr.
    assert!(
        o.stdout.starts_with("loadgen run (ws, 20 clients"),
        "stdout: {:?}",
        o.stdout
    );
    assert!(o.stdout.contains("  deliver "), "stdout: {:?}", o.stdout);
    assert!(
        !o.stderr.contains("loadgen run (ws"),
        "stderr: {}",
        o.stderr
    );
    let j = &o.json;
    assert_eq!(j["command"], "run");
    assert!(j["passed"].as_bool().unwrap());
    assert_eq!(n(j, "connect.first_ok"), 20);
    let published = n(j, "publish.messages_accepted");
    assert!(published >= 150, "published {published}");
    assert_eq!(published, f.published());
    let check = &j["delivery"]["check"];
    assert_eq!(n(check, "expected"), published);
    assert_eq!(n(check, "unique"), published);
    assert_eq!(
        n(check, "lost") + n(check, "duplicated") + n(check, "out_of_order") + n(check, "gaps"),
        0
    );
    assert_eq!(n(j, "delivery.latency_us.count"), published);
    assert!(n(j, "connect.time_us.p99") > 0);
    assert_eq!(n(j, "errors.total"), 0);
    // Memory was read from the fake's /v1/workers and /metrics.
    let m = &j["memory"];
    assert_eq!(m["workers"][0]["id"], "fake-1");
    assert!(m["workers"][0]["rss_before"].as_u64().unwrap() > 0);
    assert_eq!(n(m, "connections"), 20);
    assert!(!j["timeline"].as_array().unwrap().is_empty());
}

/// `--target nchan`: no assign, raw payloads checked by the publisher's per-channel counter.
async fn nchan_run(mode: Mode, transport: &str) -> (Outcome, u64) {
    let f = fake::start(mode, Options::default()).await;
    let o = loadgen(
        &f.url(),
        &format!("nchan-{mode:?}-{transport}"),
        &[
            "run",
            "--target",
            "nchan",
            "--nchan-url",
            &f.url(),
            "--clients",
            "10",
            "--transport",
            transport,
            "--rate",
            "100/s",
            "--duration",
            "1s",
            "--settle",
            "0s",
            "--drain",
            "2s",
        ],
    )
    .await;
    let published = f.published();
    (o, published)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nchan_target_is_checked_by_its_counter() {
    for transport in ["ws", "poll"] {
        let (o, published) = nchan_run(Mode::Correct, transport).await;
        assert_eq!(o.code, 0, "{transport}: {}", o.stderr);
        let check = &o.json["delivery"]["check"];
        assert!(published >= 50, "{transport}: published {published}");
        assert_eq!(n(check, "unique"), published, "{transport}");
        assert_eq!(n(check, "lost") + n(check, "duplicated"), 0, "{transport}");
        assert_eq!(o.json["connect"]["per_worker"]["nchan"].as_i64(), Some(10));
    }
    // The same path catches a server that loses messages.
    let (o, _) = nchan_run(Mode::Lossy, "ws").await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(n(&o.json["delivery"]["check"], "lost") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_mixed_batched_with_auth_is_clean() {
    let opts = Options {
        subscriber_secret: Some("sub-secret".into()),
        publisher_key: Some("pub-key".into()),
        ..Options::default()
    };
    let f = fake::start(Mode::Correct, opts).await;
    let o = loadgen(
        &f.url(),
        "run-mixed",
        &[
            "run",
            "--clients",
            "12",
            "--transport",
            "mixed",
            "--rate",
            "300/s",
            "--duration",
            "1s",
            "--batch",
            "5",
            "--pattern",
            "random",
            "--settle",
            "0s",
            "--subscriber-secret",
            "sub-secret",
            "--publisher-key",
            "pub-key",
            "--poll-timeout",
            "2",
            "--source-ips",
            "127.0.1.1-127.0.1.3",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let check = &o.json["delivery"]["check"];
    let published = n(&o.json, "publish.messages_accepted");
    assert!(published >= 200, "published {published}");
    assert_eq!(n(check, "expected"), published);
    assert_eq!(
        n(check, "lost") + n(check, "duplicated") + n(check, "out_of_order"),
        0
    );
    assert_eq!(
        n(&o.json, "publish.requests") * 5,
        n(&o.json, "publish.messages_attempted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_subscriber_secret_is_an_error() {
    let opts = Options {
        subscriber_secret: Some("right".into()),
        publisher_key: None,
        ..Options::default()
    };
    let f = fake::start(Mode::Correct, opts).await;
    let o = loadgen(
        &f.url(),
        "auth",
        &[
            "connect",
            "--clients",
            "3",
            "--hold",
            "0s",
            "--settle",
            "0s",
            "--subscriber-secret",
            "wrong",
            "--connect-timeout",
            "1s",
        ],
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(n(&o.json, "connect.first_failed"), 3);
    assert!(n(&o.json, "errors.by_kind.assign_http_401") >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_is_detected() {
    for transport in ["ws", "poll", "sse"] {
        let f = fake::start(Mode::Lossy, Options::default()).await;
        let o = loadgen(
            &f.url(),
            &format!("lossy-{transport}"),
            &[
                "run",
                "--clients",
                "5",
                "--transport",
                transport,
                "--rate",
                "100/s",
                "--duration",
                "1s",
                "--settle",
                "0s",
                "--drain",
                "1s",
            ],
        )
        .await;
        assert_eq!(o.code, 1, "{transport}: {}", o.stderr);
        assert!(!o.json["passed"].as_bool().unwrap());
        let check = &o.json["delivery"]["check"];
        let published = n(&o.json, "publish.messages_accepted");
        // Every fifth seq is never delivered.
        assert!(
            n(check, "lost") >= published / 5 - 5,
            "{transport}: {check}"
        );
        assert!(n(check, "channels_with_loss") > 0);
        assert!(o.stdout.contains("FAIL"), "{}", o.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_detected() {
    for transport in ["ws", "poll"] {
        let f = fake::start(Mode::Duplicating, Options::default()).await;
        let o = loadgen(
            &f.url(),
            &format!("dup-{transport}"),
            &[
                "run",
                "--clients",
                "5",
                "--transport",
                transport,
                "--rate",
                "100/s",
                "--duration",
                "1s",
                "--settle",
                "0s",
            ],
        )
        .await;
        assert_eq!(o.code, 1, "{}", o.stderr);
        let check = &o.json["delivery"]["check"];
        assert!(n(check, "duplicated") > 0, "{check}");
        assert_eq!(n(check, "lost"), 0, "{check}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_loses_nothing() {
    let f = fake::start(Mode::Correct, Options::default()).await;
    let o = loadgen(
        &f.url(),
        "churn",
        &[
            "churn",
            "--clients",
            "12",
            "--transport",
            "mixed",
            "--fraction",
            "0.5",
            "--churn-rate",
            "30/s",
            "--rate",
            "200/s",
            "--duration",
            "2s",
            "--backoff",
            "20ms",
            "--settle",
            "0s",
            "--poll-timeout",
            "2",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = &o.json;
    assert!(n(j, "connect.dropped_on_purpose") >= 20, "{}", j["connect"]);
    assert!(n(j, "connect.reconnects") >= 20);
    let check = &j["delivery"]["check"];
    assert_eq!(n(check, "expected"), n(j, "publish.messages_accepted"));
    assert_eq!(
        n(check, "lost") + n(check, "duplicated") + n(check, "out_of_order"),
        0,
        "{check}"
    );
}

/// A port nothing listens on: connections to it are refused.
fn dead_gateway() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigns_and_publishes_fail_over_to_the_next_gateway() {
    // One gateway refuses connections, one answers 503 to everything, one works.
    let down = fake::start(
        Mode::Correct,
        Options {
            unavailable: true,
            ..Options::default()
        },
    )
    .await;
    let good = fake::start(Mode::Correct, Options::default()).await;
    let gateways = format!("{},{},{}", dead_gateway(), down.url(), good.url());
    let o = loadgen(
        &gateways,
        "failover",
        &[
            "run",
            "--clients",
            "12",
            "--transport",
            "mixed",
            "--rate",
            "100/s",
            "--duration",
            "1s",
            "--settle",
            "0s",
            "--poll-timeout",
            "2",
            "--retry-for",
            "5s",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = &o.json;
    assert_eq!(n(j, "errors.total"), 0, "{}", j["errors"]);
    assert_eq!(n(j, "connect.first_ok"), 12);
    let accepted = n(j, "publish.messages_accepted");
    assert_eq!(accepted, n(j, "publish.messages_attempted"));
    assert_eq!(accepted, good.published());
    assert_eq!(down.published(), 0);
    let check = &j["delivery"]["check"];
    assert_eq!(n(check, "unique"), accepted, "{check}");
    assert_eq!(n(check, "lost") + n(check, "duplicated"), 0, "{check}");
    assert_eq!(j["gateway"], gateways.as_str());
}

/// A fake that appends every seventh publish but answers it 503 (the answer was lost).
async fn lossy_answers(ignore_keys: bool, name: &str) -> (Outcome, fake::Fake) {
    let f = fake::start(
        Mode::Correct,
        Options {
            lose_answer_every: Some(7),
            ignore_keys,
            ..Options::default()
        },
    )
    .await;
    let o = loadgen(
        &f.url(),
        name,
        &[
            "run",
            "--clients",
            "10",
            "--transport",
            "ws",
            "--rate",
            "100/s",
            "--duration",
            "1s",
            "--settle",
            "0s",
            "--drain",
            "2s",
            "--retry-for",
            "5s",
            "--check-ids",
        ],
    )
    .await;
    (o, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_publishes_carry_keys_and_are_not_duplicated() {
    let (o, f) = lossy_answers(false, "retry-keys").await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = &o.json;
    let accepted = n(j, "publish.messages_accepted");
    assert_eq!(accepted, n(j, "publish.messages_attempted"));
    // Every publish was appended once: the retries were answered with the first seq.
    assert_eq!(f.published(), accepted);
    assert!(n(j, "publish.retries") >= accepted / 7, "{}", j["publish"]);
    // At least some messages went in through a retry. (Not "one in seven": on a loaded
    // machine a retry can overtake a slow first answer, and CI once saw fewer.)
    assert!(n(j, "publish.accepted_after_retry") > 0, "{}", j["publish"]);
    let check = &j["delivery"]["check"];
    assert_eq!(
        n(check, "id_duplicated") + n(check, "duplicated"),
        0,
        "{check}"
    );
    assert_eq!(n(j, "errors.total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_appended_twice_is_caught_by_its_id() {
    // The same fake without idempotency: each retried publish is a second copy.
    let (o, f) = lossy_answers(true, "retry-no-keys").await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    let j = &o.json;
    let accepted = n(j, "publish.messages_accepted");
    assert!(f.published() > accepted, "{} vs {accepted}", f.published());
    let check = &j["delivery"]["check"];
    assert_eq!(
        n(check, "id_duplicated"),
        f.published() - accepted,
        "{check}"
    );
    // Each copy has its own seq: the seq check alone sees nothing wrong.
    assert_eq!(n(check, "duplicated") + n(check, "lost"), 0, "{check}");
    assert!(o.stdout.contains("id duplicates"), "{}", o.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_are_drops_that_resume() {
    let cut = || Options {
        ws_cut_after: Some(4),
        ..Options::default()
    };
    let args = [
        "run",
        "--clients",
        "8",
        "--transport",
        "ws",
        "--rate",
        "100/s",
        "--duration",
        "1s",
        "--settle",
        "0s",
        "--drain",
        "3s",
    ];
    let f = fake::start(Mode::Correct, cut()).await;
    let mut with = args.to_vec();
    with.push("--allow-drops");
    let o = loadgen(&f.url(), "drops", &with).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = &o.json;
    let drops = n(j, "connect.drops");
    assert!(drops >= 8, "{}", j["connect"]);
    // Each drop is followed by a reconnect, but for a client cut once more at the end.
    assert!(n(j, "connect.reconnects") + 8 >= drops, "{}", j["connect"]);
    assert_eq!(n(j, "errors.total"), 0, "{}", j["errors"]);
    let check = &j["delivery"]["check"];
    assert_eq!(n(check, "unique"), n(j, "publish.messages_accepted"));
    assert_eq!(n(check, "lost") + n(check, "duplicated"), 0, "{check}");
    assert!(o.stdout.contains("drops"), "{}", o.stdout);
    // Without the flag the same cuts are errors (and still nothing is lost).
    let f = fake::start(Mode::Correct, cut()).await;
    let o = loadgen(&f.url(), "drops-errors", &args).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(n(&o.json, "errors.total") >= 8);
    assert_eq!(n(&o.json, "connect.drops"), 0);
    assert_eq!(n(&o.json["delivery"]["check"], "lost"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gaps_replay_is_not_a_duplicate() {
    let gap = || Options {
        gap_at: Some(4),
        ..Options::default()
    };
    let args = [
        "run",
        "--clients",
        "6",
        "--transport",
        "ws",
        "--rate",
        "60/s",
        "--duration",
        "1s",
        "--settle",
        "0s",
        "--drain",
        "2s",
        "--check-ids",
    ];
    let f = fake::start(Mode::Correct, gap()).await;
    let mut with = args.to_vec();
    with.push("--allow-gaps");
    let o = loadgen(&f.url(), "gaps", &with).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let check = &o.json["delivery"]["check"];
    // Each channel: a gap before seq 4, then seqs 1-3 again.
    assert_eq!(n(check, "gaps"), 6, "{check}");
    assert_eq!(n(check, "channels_with_gaps"), 6);
    assert_eq!(n(check, "max_gaps_per_channel"), 1);
    assert_eq!(n(check, "gaps_with_missing"), 0);
    assert_eq!(n(check, "replayed"), 18, "{check}");
    assert_eq!(
        n(check, "duplicated") + n(check, "out_of_order") + n(check, "lost"),
        0,
        "{check}"
    );
    assert!(n(check, "gap_first_unix_ms") >= n(&o.json, "started_unix_ms"));
    assert!(n(check, "gap_last_unix_ms") >= n(check, "gap_first_unix_ms"));
    assert_eq!(n(&o.json, "errors.total"), 0);
    // Without the flag a gap fails the run.
    let f = fake::start(Mode::Correct, gap()).await;
    let o = loadgen(&f.url(), "gaps-fail", &args).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(n(&o.json, "errors.by_kind.gap"), 6);
    assert_eq!(n(&o.json["delivery"]["check"], "duplicated"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_splits_into_shards_and_merges() {
    let f = fake::start(Mode::Correct, Options::default()).await;
    let report = tmp("report.html");
    let o = loadgen(
        &f.url(),
        "shards",
        &[
            "connect",
            "--clients",
            "9",
            "--transport",
            "sse",
            "--max-per-process",
            "4",
            "--hold",
            "1s",
            "--settle",
            "0s",
            "--source-ips",
            "127.0.1.1-127.0.1.3",
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = &o.json;
    assert_eq!(n(j, "shards"), 3);
    assert_eq!(n(j, "clients"), 9);
    assert_eq!(n(j, "connect.first_ok"), 9);
    assert_eq!(n(j, "connect.connected_at_ready"), 9);
    assert_eq!(n(j, "connect.time_us.count"), 9);
    assert_eq!(n(j, "connect.per_worker.fake-1"), 9);
    assert_eq!(n(j, "memory.connections"), 9);
    assert_eq!(j["memory"]["workers"][0]["connections"].as_u64(), Some(9));
    let html = std::fs::read_to_string(&report).unwrap();
    let _ = std::fs::remove_file(&report);
    assert!(html.contains(UPLOT) && html.ends_with("</html>\n"));
    // The shards' phases are merged: each once, from the earliest start to the latest end.
    let summary = embedded_summary(&html);
    assert_eq!(
        phase_names(&summary),
        ["ramp", "settle", "hold", "close"],
        "{:#}",
        summary["phases"]
    );
    assert_eq!(summary["by_transport"][0]["transport"], "sse");
    assert_eq!(n(&summary["by_transport"][0], "clients"), 9);
}

/// The vendored chart library every report carries inline.
const UPLOT: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");

/// The summary JSON a report embeds for its charts.
fn embedded_summary(html: &str) -> Value {
    let open = r#"<script type="application/json" id="summary">"#;
    let start = html.find(open).expect("summary element") + open.len();
    let len = html[start..].find("</script>").expect("end of the summary");
    serde_json::from_str(&html[start..start + len]).expect("summary JSON")
}

fn phase_names(summary: &Value) -> Vec<String> {
    summary["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// Every `<tag ...>` opening tag of one kind in `html`.
fn tags<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    html.match_indices(&open)
        .filter(|(i, _)| {
            html[i + open.len()..].starts_with(|c: char| c == '>' || c.is_ascii_whitespace())
        })
        .map(|(i, _)| &html[i..i + html[i..].find('>').unwrap() + 1])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_is_one_page_with_its_command_phases_and_transports() {
    let opts = Options {
        publisher_key: Some("pub-key".into()),
        ..Options::default()
    };
    let f = fake::start(Mode::Correct, opts).await;
    let dir = tmp("report-dir");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("churn report.html");
    let o = loadgen(
        &f.url(),
        "report",
        &[
            "churn",
            "--clients",
            "12",
            "--transport",
            "mixed",
            "--rate",
            "120/s",
            "--duration",
            "2s",
            "--fraction",
            "0.25",
            "--settle",
            "0s",
            "--poll-timeout",
            "2",
            "--publisher-key",
            "pub-key",
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.starts_with("loadgen churn (mixed, 12 clients"),
        "stdout: {:?}",
        o.stdout
    );
    assert!(
        o.stdout.contains("  transport ws 4 clients"),
        "{}",
        o.stdout
    );
    // One file, and it needs nothing else: uPlot inline, no script, stylesheet or image
    // from anywhere.
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let html = std::fs::read_to_string(&report).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(html.starts_with("<!doctype html>") && html.ends_with("</html>\n"));
    assert!(html.contains(UPLOT), "uPlot is not inline");
    let scripts = tags(&html, "script");
    assert_eq!(scripts.len(), 3, "{scripts:?}");
    for t in scripts {
        assert!(!t.contains("src"), "{t}");
    }
    assert!(tags(&html, "link").is_empty() && tags(&html, "img").is_empty());
    assert!(tags(&html, "iframe").is_empty());
    for bad in ["@import", "url(http", "url(//", "src=\"http", "href=\"http"] {
        assert!(!html.contains(bad), "{bad}");
    }
    // The command line as run, quoted, the publisher key hidden.
    let quoted = format!("--report '{}'", report.to_str().unwrap());
    for part in [
        "/loadgen churn --clients 12 --transport mixed --rate 120/s",
        "--publisher-key ***",
        quoted.as_str(),
    ] {
        assert!(html.contains(part), "{part}");
    }
    assert!(!html.contains("pub-key"));
    let summary = embedded_summary(&html);
    assert_eq!(
        summary["command_line"]
            .as_str()
            .map(|c| c.contains("--publisher-key ***")),
        Some(true)
    );
    let p = &summary["parameters"];
    assert_eq!(p["mode"], "churn");
    assert_eq!(
        p["clients_by_transport"],
        serde_json::json!([["ws", 4], ["poll", 4], ["sse", 4]])
    );
    assert_eq!(p["publish"]["rate_per_sec"], 120.0);
    assert_eq!(p["churn"]["fraction"], 0.25);
    // The phases as they ran, in order, within the run; each in the phase table.
    assert_eq!(
        phase_names(&summary),
        ["baseline", "ramp", "settle", "churn", "drain", "close"]
    );
    let mut at = 0.0;
    for ph in summary["phases"].as_array().unwrap() {
        let (a, b) = (
            ph["start_secs"].as_f64().unwrap(),
            ph["end_secs"].as_f64().unwrap(),
        );
        assert!(at <= a + 0.001 && a <= b, "{ph}");
        at = b;
        assert!(html.contains(&format!("</span>{}</td>", ph["name"].as_str().unwrap())));
    }
    let churn = &summary["phases"][3];
    let length = churn["end_secs"].as_f64().unwrap() - churn["start_secs"].as_f64().unwrap();
    assert!((1.9..3.0).contains(&length), "{churn}");
    assert!(at <= summary["elapsed_secs"].as_f64().unwrap() + 0.001);
    // Per transport: the whole run and every second of it.
    let by = summary["by_transport"].as_array().unwrap();
    let names: Vec<&str> = by
        .iter()
        .map(|t| t["transport"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ws", "poll", "sse"]);
    let received: u64 = by.iter().map(|t| n(t, "delivered")).sum();
    assert_eq!(received, n(&o.json, "delivery.received"));
    for t in by {
        assert_eq!(n(t, "clients"), 4);
        assert!(n(t, "delivered") > 0 && n(t, "latency_us.count") > 0, "{t}");
    }
    let timeline = summary["timeline"].as_array().unwrap();
    let per_second: u64 = timeline
        .iter()
        .flat_map(|t| t["transports"].as_array().unwrap())
        .map(|l| n(l, "delivered"))
        .sum();
    assert_eq!(per_second, received);
    assert!(timeline
        .iter()
        .all(|t| t["transports"].as_array().unwrap().len() == 3));
    assert!(html.contains("Deliveries per second by transport"));
    assert!(html.contains("id=\"by-transport\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_on_stdout_moves_the_summary_to_stderr() {
    let f = fake::start(Mode::Correct, Options::default()).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "connect",
            "--clients",
            "3",
            "--hold",
            "0s",
            "--settle",
            "0s",
            "--gateway",
            &f.url(),
            "--json",
            "-",
        ])
        .output()
        .await
        .expect("run loadgen");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let j: Value = serde_json::from_str(&stdout).expect("stdout is the JSON alone");
    assert_eq!(n(&j, "connect.first_ok"), 3);
    assert!(j["command_line"].as_str().unwrap().ends_with("--json -"));
    assert!(
        stderr.contains("loadgen connect (ws, 3 clients"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_alone_counts_batches() {
    let f = fake::start(Mode::Correct, Options::default()).await;
    let o = loadgen(
        &f.url(),
        "publish",
        &[
            "publish",
            "--rate",
            "200/s",
            "--duration",
            "1s",
            "--batch",
            "10",
            "--channels",
            "7",
            "--payload-bytes",
            "200",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j = &o.json;
    let accepted = n(j, "publish.messages_accepted");
    assert!((190..=210).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted, f.published());
    assert_eq!(
        n(j, "publish.requests") * 10,
        n(j, "publish.messages_attempted")
    );
    assert!(j["delivery"]["check"].is_null());
}

/// `--broadcast-every` beside the single publishes, over 3 shards: 2 broadcasts (at 1 s and
/// 2 s of 3 s) naming 25 channels in all (8 + 8 + 9, each shard its own), each shard's part
/// in requests of at most 4 channels (the fake refuses more, as the gateway does above its
/// `--max-broadcast-channels`). Every broadcast message is checked like a single publish and
/// its latency counted apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_broadcasts_over_shards_are_split_checked_and_timed_apart() {
    let opts = Options {
        max_broadcast_channels: Some(4),
        ..Options::default()
    };
    let f = fake::start(Mode::Correct, opts).await;
    let report = tmp("broadcast-report.html");
    let o = loadgen(
        &f.url(),
        "periodic-broadcast",
        &[
            "run",
            "--clients",
            "30",
            "--transport",
            "mixed",
            "--max-per-process",
            "10",
            "--rate",
            "60/s",
            "--duration",
            "3s",
            "--pattern",
            "random",
            "--broadcast-every",
            "1s",
            "--broadcast-channels",
            "25",
            "--max-broadcast-channels",
            "4",
            "--retry-for",
            "5s",
            "--check-ids",
            "--settle",
            "0s",
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let j = &o.json;
    assert_eq!(n(j, "shards"), 3);
    let b = &j["broadcasts"];
    assert_eq!((n(b, "sent"), n(b, "channels")), (2, 50), "{b:#}");
    // 8 = 4 + 4, 8 = 4 + 4, 9 = 4 + 4 + 1: 7 requests per broadcast.
    assert_eq!(n(b, "requests"), 14, "{b:#}");
    let mut sizes = f.broadcasts();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]);
    assert_eq!((n(b, "accepted"), n(b, "delivered")), (50, 50), "{b:#}");
    for each in b["each"].as_array().unwrap() {
        assert_eq!(n(each, "channels"), 25, "{each}");
        assert!(each["to_last_client_ms"].as_f64().unwrap() > 0.0, "{each}");
    }
    assert_eq!(n(&b["each"][1], "n"), 2);
    let published = n(j, "publish.messages_accepted");
    assert_eq!(published, f.published());
    let singles = published - 50;
    assert!((150..=200).contains(&singles), "singles {singles}");
    let d = &j["delivery"];
    assert_eq!(n(d, "check.expected"), published);
    assert_eq!(n(d, "check.unique"), published);
    assert_eq!(
        n(d, "check.lost")
            + n(d, "check.duplicated")
            + n(d, "check.id_duplicated")
            + n(d, "check.out_of_order"),
        0,
        "{:#}",
        d["check"]
    );
    assert_eq!(n(d, "broadcast_latency_us.count"), 50);
    assert_eq!(n(d, "steady_latency_us.count"), singles);
    assert_eq!(n(d, "latency_us.count"), published);
    assert!(o
        .stdout
        .contains("  broadcast 2 sent in 14 requests naming 50 channels"));
    let html = std::fs::read_to_string(&report).unwrap();
    let _ = std::fs::remove_file(&report);
    assert!(html.contains(r#"<table class="num" id="broadcasts">"#));
    assert!(html.contains("… of the periodic broadcasts"));
}

/// Scale check (run by hand): 15,000 WebSockets over 3 shards against the fake.
/// `cargo test -p loadgen --release --test against_fake -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn scale_15k_ws_over_3_shards() {
    let f = fake::start(Mode::Correct, Options::default()).await;
    let o = loadgen(
        &f.url(),
        "scale",
        &[
            "connect",
            "--clients",
            "15000",
            "--transport",
            "ws",
            "--max-per-process",
            "6000",
            "--ramp",
            "5000/s",
            "--hold",
            "2s",
            "--source-ips",
            "127.0.1.1-127.0.1.10",
            "--max-errors",
            "0",
        ],
    )
    .await;
    eprintln!("{}", o.stderr);
    assert_eq!(o.code, 0);
    assert_eq!(n(&o.json, "shards"), 3);
    assert_eq!(n(&o.json, "connect.first_ok"), 15000);
    assert_eq!(n(&o.json, "memory.connections"), 15000);
}
