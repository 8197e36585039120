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
    assert!(html.contains("<svg") && html.contains("</html>"));
    assert!(!html.contains("http://") || !html.contains("<script src"));
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
