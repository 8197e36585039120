//! The Redis store against real `redis-server` processes: what lands in Redis, what a
//! Redis restart or outage does to publishes and to resuming clients, and that a channel's
//! seq outlives its messages.

mod common;

use common::redis::RedisServer;
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A gateway (one worker) over `redis`, with `extra` gateway flags.
async fn over(redis: &RedisServer, extra: &[&str]) -> Cluster {
    let url = redis.url();
    let mut args = vec!["--store", url.as_str()];
    args.extend_from_slice(extra);
    start(&args, 1, &[]).await
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn publishes_and_the_directory_live_in_redis() {
    let redis = RedisServer::start(&[]);
    let c = over(&redis, &[]).await;
    let mut ws = c.ws("r:1", Some(0)).await;
    c.wait_online("r:1").await;
    for i in 1..=3 {
        assert_eq!(c.publish("r:1", &i.to_string()).await, i);
        assert_eq!(next_json(&mut ws).await, json!({"seq": i, "data": i}));
    }
    // The log, its seq and its holder are Redis keys under the channel's hash tag.
    assert_eq!(redis.cli(&["HGET", "pg:{r:1}:m", "s"]).unwrap().trim(), "3");
    assert_eq!(redis.cli(&["LLEN", "pg:{r:1}:l"]).unwrap().trim(), "3");
    let owner = redis.cli(&["HGET", "pg:{r:1}:m", "o"]).unwrap();
    assert!(owner.trim().ends_with(":w0"), "{owner}");
    let info = c.get("/v1/channels/r:1").await.json();
    assert_eq!(
        (
            info["online"].clone(),
            info["last_seq"].clone(),
            info["buffered"].clone()
        ),
        (json!(true), json!(3), json!(3))
    );
    let m = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    assert!(metric(&m, "pushgate_redis_seconds_count") >= 4.0, "{m}");
    // Unsubscribing clears the holder (compare-and-delete).
    drop(ws);
    for _ in 0..200 {
        if redis.cli(&["HEXISTS", "pg:{r:1}:m", "o"]).unwrap().trim() == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        redis.cli(&["HEXISTS", "pg:{r:1}:m", "o"]).unwrap().trim(),
        "0"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_restarted_redis_changes_the_epoch_and_resumes_get_a_gap() {
    let mut redis = RedisServer::start(&[]);
    let c = over(&redis, &[]).await;
    let mut ws = c.ws("r:2", Some(0)).await;
    c.wait_online("r:2").await;
    c.publish("r:2", "1").await;
    c.publish("r:2", "2").await;
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    assert_eq!(next_json(&mut ws).await["seq"], 2);
    let epoch0: u64 = redis
        .cli(&["HGET", "pg:{r:2}:m", "e"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(ws);
    // Redis crashes and comes back empty (no persistence): the history is gone.
    redis.restart();
    let seq = publish_when_back(&c, "r:2", "3").await;
    assert_eq!(seq, 1, "a new history starts its own count");
    // The function library was loaded again by itself; the new epoch is told to a client
    // resuming from the old one, before what follows.
    let mut ws = resume(&c, "r:2", 2, epoch0).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["gap"], true, "{gap}");
    assert_ne!(gap["epoch"], json!(epoch0));
    assert_eq!(gap["first_seq"], 1);
    assert_eq!(next_json(&mut ws).await, json!({"seq": 1, "data": 3}));
    let m = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    assert!(
        metric(&m, "pushgate_epoch_changes_total{cause=\"missing\"}") >= 2.0,
        "the first publish and the restart: {m}"
    );
    c.stop().await;
}

/// A WebSocket on `ch` resuming after `since` of `epoch`.
async fn resume(c: &Cluster, ch: &str, since: u64, epoch: u64) -> Ws {
    let a = c.assign(ch).await;
    ws_connect(&format!(
        "{}&since={since}&epoch={epoch}",
        a["ws_url"].as_str().unwrap()
    ))
    .await
}

/// Publishes "1" and "2" to `ch` with a client on it; returns the channel's epoch.
async fn two_seen(c: &Cluster, redis: &RedisServer, ch: &str) -> u64 {
    let mut ws = c.ws(ch, Some(0)).await;
    c.wait_online(ch).await;
    for i in 1..=2 {
        assert_eq!(c.publish(ch, &i.to_string()).await, i);
        assert_eq!(next_json(&mut ws).await["seq"], i);
    }
    redis
        .cli(&["HGET", &format!("pg:{{{ch}}}:m"), "e"])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Publishes `data` until Redis takes it again; its seq.
async fn publish_when_back(c: &Cluster, ch: &str, data: &'static str) -> u64 {
    let started = Instant::now();
    loop {
        let r = c
            .request(
                "POST",
                &format!("/v1/publish/{ch}"),
                &[],
                bytes::Bytes::from_static(data.as_bytes()),
            )
            .await;
        if r.status == 202 {
            return r.json()["seq"].as_u64().unwrap();
        }
        assert_eq!(r.status, 503, "{:?}", r.json());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_restart_from_the_append_only_file_is_a_new_epoch_unless_redis_is_durable() {
    let aof = ["--appendonly", "yes", "--appendfsync", "always"];
    // By default a node with a new replication id (every restart) is another history: the
    // data came back, but it could have come from an older snapshot, so resumes get a gap
    // and the seq goes on from what the node holds.
    let mut redis = RedisServer::start(&aof);
    let c = over(&redis, &[]).await;
    let epoch0 = two_seen(&c, &redis, "d:1").await;
    let keyed = || {
        c.request(
            "POST",
            "/v1/publish/d:1",
            &[("Idempotency-Key", "k1")],
            bytes::Bytes::from_static(b"keyed"),
        )
    };
    assert_eq!(keyed().await.json()["seq"], 3);
    redis.restart();
    assert_eq!(publish_when_back(&c, "d:1", "4").await, 4);
    // A key that survived still names its message: the epoch changed, the count did not.
    let again = keyed().await;
    assert_eq!((again.status, again.json()["seq"].clone()), (202, json!(3)));
    let mut ws = resume(&c, "d:1", 2, epoch0).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["gap"], true, "{gap}");
    assert_ne!(gap["epoch"], json!(epoch0));
    let m = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    assert!(
        metric(&m, "pushgate_epoch_changes_total{cause=\"replid\"}") >= 1.0,
        "{m}"
    );
    c.stop().await;
    drop(redis);

    // `--redis-durable`: the operator says a restart keeps every acknowledged write; the
    // epoch stays and a resume continues where it was.
    let mut redis = RedisServer::start(&aof);
    let c = over(&redis, &["--redis-durable"]).await;
    let epoch0 = two_seen(&c, &redis, "d:2").await;
    redis.restart();
    assert_eq!(publish_when_back(&c, "d:2", "3").await, 3);
    let mut ws = resume(&c, "d:2", 1, epoch0).await;
    assert_eq!(next_json(&mut ws).await, json!({"seq": 2, "data": 2}));
    assert_eq!(next_json(&mut ws).await, json!({"seq": 3, "data": 3}));
    c.stop().await;
}

#[tokio::test]
async fn an_unreachable_redis_gets_503_quickly_and_nothing_is_accepted() {
    let mut redis = RedisServer::start(&[]);
    let c = over(&redis, &["--redis-timeout-ms", "500"]).await;
    assert_eq!(c.publish("r:3", "1").await, 1);
    redis.kill();
    for i in 0..5 {
        let t = Instant::now();
        let r = c
            .request(
                "POST",
                "/v1/publish/r:3",
                &[],
                bytes::Bytes::from_static(b"2"),
            )
            .await;
        assert_eq!(r.status, 503, "attempt {i}: {:?}", r.body);
        assert_eq!(r.json()["error"], "store_unavailable");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
    let m = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    assert!(metric(&m, "pushgate_redis_errors_total") >= 5.0, "{m}");
    c.stop().await;
}

#[tokio::test]
async fn a_channel_seq_outlives_its_messages() {
    let redis = RedisServer::start(&[]);
    let c = over(&redis, &["--retention-secs", "1"]).await;
    assert_eq!(c.publish("r:4", "1").await, 1);
    assert_eq!(c.publish("r:4", "2").await, 2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The messages expired; the seq did not start over.
    assert_eq!(redis.cli(&["EXISTS", "pg:{r:4}:l"]).unwrap().trim(), "0");
    assert_eq!(c.publish("r:4", "3").await, 3);
    let mut ws = c.ws("r:4", Some(0)).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(
        (gap["gap"].clone(), gap["first_seq"].clone()),
        (json!(true), json!(3))
    );
    assert_eq!(next_json(&mut ws).await, json!({"seq": 3, "data": 3}));
    let ttl: i64 = redis
        .cli(&["PTTL", "pg:{r:4}:m"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 29 * 24 * 3600 * 1000, "meta TTL {ttl} ms");
    c.stop().await;
}

#[tokio::test]
async fn two_gateways_share_one_log() {
    let redis = RedisServer::start(&[]);
    let a = over(&redis, &[]).await;
    let b = over(&redis, &[]).await;
    // Seqs interleave across gateways without repeating; each is idempotent on its key.
    let mut seen = Vec::new();
    for i in 0..10 {
        let g = if i % 2 == 0 { &a } else { &b };
        seen.push(g.publish("r:5", &i.to_string()).await);
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
    let k = [("Idempotency-Key", "once")];
    let r1 = a
        .request(
            "POST",
            "/v1/publish/r:5",
            &k,
            bytes::Bytes::from_static(b"x"),
        )
        .await;
    let r2 = b
        .request(
            "POST",
            "/v1/publish/r:5",
            &k,
            bytes::Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(r1.json()["seq"], 11);
    assert_eq!(r2.json()["seq"], 11, "the other gateway knows the key");
    // A client of gateway a's worker resumes with everything, in order, once.
    let mut ws = a.ws("r:5", Some(0)).await;
    for i in 1..=11u64 {
        assert_eq!(next_json(&mut ws).await["seq"], i);
    }
    assert_quiet(&mut ws, 200).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn connected_clients_are_subscribed_again_when_redis_restarts_empty() {
    let mut redis = RedisServer::start(&[]);
    let c = over(&redis, &[]).await;
    let mut ws = c.ws("r:6", Some(0)).await;
    let mut sse = Sse::open(
        &c.assign("r:7").await["sse_url"]
            .as_str()
            .unwrap()
            .replace("channel=", "since=0&channel="),
        &[],
    )
    .await;
    c.wait_online("r:6").await;
    c.wait_online("r:7").await;
    c.publish("r:6", "1").await;
    c.publish("r:7", "1").await;
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    assert_eq!(sse.next_event().await.0, Some(1));
    // Redis comes back empty: every holder it knew is gone. Nobody reconnects; within a few
    // seconds the worker has subscribed both connections again, and what is published next
    // reaches them, after the gap that says their history is gone.
    redis.restart();
    let t = Instant::now();
    for ch in ["r:6", "r:7"] {
        loop {
            let r = c
                .request(
                    "POST",
                    &format!("/v1/publish/{ch}"),
                    &[],
                    bytes::Bytes::from_static(b"2"),
                )
                .await;
            if r.status == 202 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{:?}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let gap = next_json(&mut ws).await;
    assert_eq!(
        (gap["gap"].clone(), gap["first_seq"].clone()),
        (json!(true), json!(1)),
        "{gap}"
    );
    assert_eq!(next_json(&mut ws).await, json!({"seq": 1, "data": 2}));
    let (id, gap) = sse.next_event().await;
    assert_eq!((id, gap["gap"].clone()), (None, json!(true)), "{gap}");
    assert_eq!(
        sse.next_event().await,
        (Some(1), json!({"seq": 1, "data": 2}))
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "resynced after {:?}",
        t.elapsed()
    );
    c.stop().await;
}

#[tokio::test]
async fn healthz_says_when_redis_does_not_answer() {
    let mut redis = RedisServer::start(&[]);
    let c = over(&redis, &["--redis-timeout-ms", "300"]).await;
    assert_eq!(c.get("/healthz").await.status, 200);
    redis.kill();
    let t = Instant::now();
    loop {
        let r = c.get("/healthz").await;
        if r.status == 503 {
            assert_eq!(r.json()["error"], "store_unavailable");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "healthz still {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.restart();
    let t = Instant::now();
    while c.get("/healthz").await.status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "healthz never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.stop().await;
}

#[tokio::test]
async fn flushall_under_connected_clients_is_a_gap_not_a_silent_stop() {
    let redis = RedisServer::start(&[]);
    let c = over(&redis, &[]).await;
    let mut ws = c.ws("r:8", Some(0)).await;
    c.wait_online("r:8").await;
    c.publish("r:8", "1").await;
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    redis.cli(&["FLUSHALL"]).unwrap();
    // The history is gone but the connection stays: within a check period the worker has
    // subscribed it again, and the next message follows a gap.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.publish("r:8", "2").await, 1, "a new history");
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["gap"], true, "{gap}");
    assert_eq!(next_json(&mut ws).await, json!({"seq": 1, "data": 2}));
    c.stop().await;
}

/// A TCP forwarder whose target can be switched: what a failover looks like from a gateway
/// that reaches Redis through one address (a virtual IP, a proxy).
struct Switch {
    addr: std::net::SocketAddr,
    target: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Switch {
    async fn start(target: std::net::SocketAddr) -> Switch {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let target = std::sync::Arc::new(std::sync::Mutex::new(target));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, cs) = (target.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let to = *t.lock().unwrap();
                cs.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                }));
            }
        });
        Switch {
            addr,
            target,
            conns,
        }
    }

    /// Points new connections at `to` and cuts the open ones.
    fn switch(&self, to: std::net::SocketAddr) {
        *self.target.lock().unwrap() = to;
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// A TCP forwarder that can turn into a black hole: connections stay open, nothing goes
/// through, no error comes back (a partition, a dead host behind a live route).
struct Blackhole {
    addr: std::net::SocketAddr,
    /// `true`: swallowing. Back to `false`: every connection held meanwhile is reset.
    hole: tokio::sync::watch::Sender<bool>,
}

impl Blackhole {
    async fn start(target: std::net::SocketAddr) -> Blackhole {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (hole, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    if !*rx.borrow() {
                        let Ok(mut out) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => return,
                            _ = rx.wait_for(|h| *h) => {}
                        }
                    }
                    // Swallowing: hold the client's socket open, read nothing, until healed.
                    let _ = rx.wait_for(|h| !*h).await;
                });
            }
        });
        Blackhole { addr, hole }
    }

    fn swallow(&self) {
        self.hole.send_replace(true);
    }

    /// The way a black hole usually ends: the connections it held are reset.
    fn heal(&self) {
        self.hole.send_replace(false);
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_gets_503_within_the_deadline_with_bounded_work_and_memory() {
    let redis = RedisServer::start(&[]);
    let hole = Blackhole::start(redis.addr).await;
    let url = format!("redis://{}", hole.addr);
    let c = start(
        &[
            "--store",
            &url,
            "--redis-timeout-ms",
            "500",
            "--redis-max-inflight",
            "64",
        ],
        1,
        &[],
    )
    .await;
    let mut ws = c.ws("bh:1", Some(0)).await;
    c.wait_online("bh:1").await;
    assert_eq!(c.publish("bh:1", "1").await, 1);
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    hole.swallow();
    let body = bytes::Bytes::from(vec![b'x'; 32 * 1024]);
    let mut rss = Vec::new();
    for round in 0..12 {
        let t = Instant::now();
        let answers = futures_util::future::join_all(
            (0..200).map(|_| c.request("POST", "/v1/publish/bh:1", &[], body.clone())),
        )
        .await;
        for r in &answers {
            assert_eq!(r.status, 503, "round {round}: {:?}", r.body);
            assert_eq!(r.json()["error"], "store_unavailable");
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "round {round} took {:?}",
            t.elapsed()
        );
        rss.push(rss_bytes());
    }
    // Work in flight is bounded (--redis-max-inflight: the rest fail at once), and what a
    // timed-out call left behind does not pile up (it did, 64 x 32 KB a round, before a
    // timeout replaced the connection).
    let m = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    assert!(
        metric(&m, "pushgate_redis_errors_total{kind=\"overloaded\"}") >= 100.0,
        "{m}"
    );
    let growth = rss[5] as i64 - rss[1] as i64;
    assert!(
        growth < 8 << 20,
        "RSS grew {growth} B over 4 rounds: {rss:?}"
    );
    let t = Instant::now();
    while c.get("/healthz").await.status != 503 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "/healthz never said so"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The hole ends; publishing goes on and nothing was accepted meanwhile.
    hole.heal();
    let seq = publish_when_back(&c, "bh:1", "2").await;
    assert_eq!(seq, 2);
    assert_eq!(next_json(&mut ws).await, json!({"seq": 2, "data": 2}));
    c.stop().await;
}

#[tokio::test]
async fn a_failover_to_a_replica_that_missed_writes_changes_the_epoch() {
    let primary = RedisServer::start(&[]);
    let port = primary.addr.port().to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
    let switch = Switch::start(primary.addr).await;
    let url = format!("redis://{}", switch.addr);
    let c = start(&["--store", &url], 1, &[]).await;
    for i in 1..=3 {
        assert_eq!(c.publish("r:9", &i.to_string()).await, i);
    }
    let epoch: u64 = primary
        .cli(&["HGET", "pg:{r:9}:m", "e"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The replica has 1..3, then stops following: the primary's 4 and 5 never reach it.
    let t = Instant::now();
    while replica.cli(&["HGET", "pg:{r:9}:m", "s"]).unwrap().trim() != "3" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica.cli(&["REPLICAOF", "NO", "ONE"]).unwrap();
    assert_eq!(c.publish("r:9", "4").await, 4);
    assert_eq!(c.publish("r:9", "5").await, 5);
    // Failover: the gateway now reaches the promoted replica, which lacks 4 and 5.
    switch.switch(replica.addr);
    let seq = publish_when_back(&c, "r:9", "6").await;
    // Seq 4 again, but in a new epoch: a client that saw (epoch, 5) is told of the gap
    // instead of silently missing the new 4.
    assert_eq!(seq, 4);
    let mut ws = resume(&c, "r:9", 5, epoch).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["gap"], true, "{gap}");
    assert_ne!(gap["epoch"], json!(epoch));
    let m = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    assert!(
        metric(&m, "pushgate_epoch_changes_total{cause=\"replid\"}") >= 1.0,
        "{m}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_publishing_to_one_channel_reach_its_client_in_order_once() {
    let redis = RedisServer::start(&[]);
    let a = over_bare(&redis).await;
    let mut b = over_bare(&redis).await;
    // One worker, linked to both gateways (it belongs to b's test cluster).
    b.add_worker("both", &["--gateway", &a.base]).await;
    a.wait_workers(1).await;
    b.wait_workers(1).await;
    let mut ws = a.ws("r:10", Some(0)).await;
    b.wait_online("r:10").await;
    // Both gateways publish at once: seqs interleave as Redis hands them out, each gateway
    // sends its own over its own link, and the worker orders them.
    const N: u64 = 200;
    let (sa, sb) = tokio::join!(
        async {
            let mut s = Vec::new();
            for i in 0..N / 2 {
                s.push(a.publish("r:10", &format!("\"a{i}\"")).await);
            }
            s
        },
        async {
            let mut s = Vec::new();
            for i in 0..N / 2 {
                s.push(b.publish("r:10", &format!("\"b{i}\"")).await);
            }
            s
        }
    );
    let mut all: Vec<u64> = sa.iter().chain(&sb).copied().collect();
    all.sort();
    assert_eq!(all, (1..=N).collect::<Vec<_>>(), "every seq once");
    for i in 1..=N {
        assert_eq!(next_json(&mut ws).await["seq"], i);
    }
    assert_quiet(&mut ws, 300).await;
    // Gateway a goes away: b keeps assigning and publishing, and the worker takes
    // its subscriptions over the link to b.
    a.stop().await;
    assert_eq!(b.publish("r:10", "1").await, N + 1);
    assert_eq!(next_json(&mut ws).await["seq"], N + 1);
    let assigned = b.assign("r:11").await;
    assert_eq!(assigned["worker"], "both");
    let mut ws2 = ws_connect(assigned["ws_url"].as_str().unwrap()).await;
    b.wait_online("r:11").await;
    assert_eq!(b.publish("r:11", "7").await, 1);
    assert_eq!(next_json(&mut ws2).await, json!({"seq": 1, "data": 7}));
    b.stop().await;
}

/// A gateway over `redis` with no workers of its own.
async fn over_bare(redis: &RedisServer) -> Cluster {
    let url = redis.url();
    start(&["--store", url.as_str()], 0, &[]).await
}

/// A TCP forwarder between a worker and a gateway whose gateway->worker direction can be
/// muted (bytes read and dropped) and whose connections can be cut: a gateway that
/// committed a publish and died before its Deliver reached the worker.
struct LinkProxy {
    url: String,
    mute: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl LinkProxy {
    async fn start(to: std::net::SocketAddr) -> LinkProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let mute = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (m, cs) = (mute.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((worker_side, _)) = l.accept().await {
                let m = m.clone();
                cs.lock().unwrap().push(tokio::spawn(async move {
                    let Ok(gw_side) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut wr, mut ww) = worker_side.into_split();
                    let (mut gr, mut gw) = gw_side.into_split();
                    let up = async move {
                        let _ = tokio::io::copy(&mut wr, &mut gw).await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match gr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if !m.load(Ordering::Relaxed) && ww.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    };
                    tokio::select! { _ = up => {}, _ = down => {} }
                }));
            }
        });
        LinkProxy { url, mute, conns }
    }

    fn mute(&self) {
        self.mute.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends every forwarded connection (the worker sees its link drop).
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_committed_by_a_gateway_that_dies_before_delivering_still_arrives() {
    let redis = RedisServer::start(&[]);
    let a = over_bare(&redis).await;
    let mut b = over_bare(&redis).await;
    let proxy = LinkProxy::start(a.gateway).await;
    // The worker reaches gateway a through the proxy.
    b.add_worker("w", &["--gateway", &proxy.url]).await;
    a.wait_workers(1).await;
    b.wait_workers(1).await;
    let mut ws = b.ws("r:12", Some(0)).await;
    a.wait_online("r:12").await;
    assert_eq!(a.publish("r:12", "1").await, 1);
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    // Gateway a commits seq 2 and 3 to Redis, but its Delivers never reach the worker...
    proxy.mute();
    assert_eq!(a.publish("r:12", "2").await, 2);
    assert_eq!(a.publish("r:12", "3").await, 3);
    assert_quiet(&mut ws, 300).await;
    // ...and then it dies. The worker's link to it drops; nothing else is published. The
    // worker cannot know what that link still carried, so it asks the store.
    proxy.cut();
    a.stop().await;
    assert_eq!(next_json(&mut ws).await, json!({"seq": 2, "data": 2}));
    assert_eq!(next_json(&mut ws).await, json!({"seq": 3, "data": 3}));
    assert_eq!(b.publish("r:12", "4").await, 4);
    assert_eq!(next_json(&mut ws).await["seq"], 4);
    assert_quiet(&mut ws, 200).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_holds_each_channel_on_one_slot() {
    let cluster = common::redis::RedisCluster::start(3);
    let url = cluster.url();
    let c = start(&["--store", &url], 1, &[]).await;
    // Channels spread over the masters; each channel's keys live on the node of its slot,
    // and the functions (loaded on every master) never cross a slot.
    let channels: Vec<String> = (0..30).map(|i| format!("cl:{i}")).collect();
    let mut clients = Vec::new();
    for ch in &channels {
        clients.push(c.ws(ch, Some(0)).await);
    }
    for round in 1..=3u64 {
        for ch in &channels {
            assert_eq!(c.publish(ch, &round.to_string()).await, round);
        }
    }
    for ws in clients.iter_mut() {
        for round in 1..=3u64 {
            assert_eq!(next_json(ws).await, json!({"seq": round, "data": round}));
        }
    }
    let mut holders = std::collections::HashSet::new();
    for ch in &channels {
        let meta = format!("pg:{{{ch}}}:m");
        let node = cluster.node_of(&meta);
        assert_eq!(node.cli(&["HGET", &meta, "s"]).unwrap().trim(), "3", "{ch}");
        assert_eq!(
            node.cli(&["LLEN", &format!("pg:{{{ch}}}:l")])
                .unwrap()
                .trim(),
            "3"
        );
        holders.insert(node.addr);
    }
    assert_eq!(holders.len(), 3, "30 channels over 3 masters");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_that_restarts_empty_resyncs_its_channels_clients() {
    let mut cluster = common::redis::RedisCluster::start(3);
    let url = cluster.url();
    let c = start(&["--store", &url], 1, &[]).await;
    let mut ws = c.ws("cl:r", Some(0)).await;
    c.publish("cl:r", "1").await;
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    let meta = "pg:{cl:r}:m";
    // The epoch the client has seen (it would have it from an earlier gap frame).
    let epoch = cluster.node_of(meta).cli(&["HGET", meta, "e"]).unwrap();
    let epoch = epoch.trim().to_owned();
    let addr = cluster.node_of(meta).addr;
    let i = cluster.nodes.iter().position(|n| n.addr == addr).unwrap();
    tokio::task::block_in_place(|| cluster.restart(i));
    publish_when_back(&c, "cl:r", "2").await;
    // The client is told of the gap on its connection, or, when its resubscription came
    // while the node was still coming back (close 1013, try again later), on the resume a
    // client makes then: since and epoch of what it saw.
    let gap = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no frame within 10 s")
            .expect("stream ended")
            .expect("ws error");
        match m {
            Message::Text(t) => {
                break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap()
            }
            Message::Close(Some(f)) if u16::from(f.code) == 1013 => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let a = c.assign("cl:r").await;
                let url = format!("{}&since=1&epoch={epoch}", a["ws_url"].as_str().unwrap());
                ws = ws_connect(&url).await;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    };
    assert_eq!(gap["gap"], true, "{gap}");
    assert_eq!(next_json(&mut ws).await, json!({"seq": 1, "data": 2}));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_while_publishing_loses_nothing_and_keeps_order() {
    let cluster = common::redis::RedisCluster::start(3);
    let url = cluster.url();
    let c = std::sync::Arc::new(start(&["--store", &url], 1, &[]).await);
    let channels: Vec<String> = (0..20).map(|i| format!("rs:{i}")).collect();
    let mut clients = Vec::new();
    for ch in &channels {
        clients.push(c.ws(ch, Some(0)).await);
    }
    // Publishing goes on while 2,000 slots move from one master to another.
    const ROUNDS: u64 = 60;
    let publisher = {
        let (c, channels) = (c.clone(), channels.clone());
        tokio::spawn(async move {
            for round in 1..=ROUNDS {
                for ch in &channels {
                    assert_eq!(c.publish(ch, &round.to_string()).await, round, "{ch}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let from = cluster.nodes[0].cli(&["CLUSTER", "MYID"]).unwrap();
    let to = cluster.nodes[1].cli(&["CLUSTER", "MYID"]).unwrap();
    let out = tokio::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &cluster.nodes[0].addr.to_string()])
        .args(["--cluster-from", from.trim(), "--cluster-to", to.trim()])
        .args(["--cluster-slots", "2000", "--cluster-yes"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    publisher.await.unwrap();
    for (ch, ws) in channels.iter().zip(clients.iter_mut()) {
        for round in 1..=ROUNDS {
            assert_eq!(next_json(ws).await["seq"], round, "{ch}");
        }
        assert_quiet(ws, 50).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_through_a_gateway_the_worker_has_not_linked_to_yet_arrives_when_it_links() {
    let redis = RedisServer::start(&[]);
    let mut b = over_bare(&redis).await;
    let late = over_bare(&redis).await;
    // The worker's link to `late` hangs for now (a gateway that just started, before its
    // workers found it).
    let hole = Blackhole::start(late.gateway).await;
    hole.swallow();
    let via_hole = format!("http://{}", hole.addr);
    b.add_worker("w", &["--gateway", &via_hole]).await;
    b.wait_workers(1).await;
    let mut ws = b.ws("pk:1", Some(0)).await;
    b.wait_online("pk:1").await;
    // `late` commits the publish and knows the holder, but has no link to its worker.
    assert_eq!(late.publish("pk:1", "1").await, 1);
    assert_quiet(&mut ws, 300).await;
    let m = String::from_utf8_lossy(&late.get("/metrics").await.body).into_owned();
    assert_eq!(metric(&m, "pushgate_parked_deliveries_total"), 1.0, "{m}");
    // The link comes: what was parked for the worker goes out, with no further publish.
    hole.heal();
    assert_eq!(next_json(&mut ws).await, json!({"seq": 1, "data": 1}));
    let m = String::from_utf8_lossy(&late.get("/metrics").await.body).into_owned();
    assert_eq!(
        metric(&m, "pushgate_parked_deliveries_sent_total"),
        1.0,
        "{m}"
    );
    b.stop().await;
    late.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_stuck_on_a_slow_redis_do_not_hold_up_the_worker_heartbeats() {
    let redis = RedisServer::start(&[]);
    let hole = Blackhole::start(redis.addr).await;
    let url = format!("redis://{}", hole.addr);
    let c = start(&["--store", &url, "--redis-timeout-ms", "1500"], 1, &[]).await;
    let mut assigned = Vec::new();
    for i in 0..4 {
        assigned.push(c.assign(&format!("slow:{i}")).await);
    }
    hole.swallow();
    // Four subscribes, each waiting out its 1.5 s deadline in turn: 6 s of store work
    // queued on one link, twice the time after which a silent worker counts as stale.
    let mut clients = Vec::new();
    for a in &assigned {
        clients.push(ws_connect(a["ws_url"].as_str().unwrap()).await);
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let w = c.get("/v1/workers").await.json();
        assert_eq!(
            w["workers"][0]["state"],
            "healthy",
            "after {:?}: {w}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hole.heal();
    drop(clients);
    c.stop().await;
}

/// Concurrent publishes travel in few function calls (`pg_publish_batch`), and a batch
/// keeps each channel's seqs whole: every publish answered, each seq once, every message
/// delivered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_calls_and_keep_every_seq() {
    let redis = RedisServer::start(&[]);
    let c = over(&redis, &[]).await;
    let mut ws = c.ws("b:0", Some(0)).await;
    c.wait_online("b:0").await;
    const N: u64 = 400;
    let publishes = (0..N).map(|i| {
        let c = &c;
        async move { c.publish(&format!("b:{}", i % 4), &i.to_string()).await }
    });
    let mut seqs = futures_util::future::join_all(publishes).await;
    seqs.sort_unstable();
    // Four channels of a hundred each: seqs 1..=100 four times, none twice, none skipped.
    let want: Vec<u64> = (1..=N / 4).flat_map(|s| [s; 4]).collect();
    assert_eq!(seqs, want);
    for s in 1..=N / 4 {
        assert_eq!(next_json(&mut ws).await["seq"], json!(s));
    }
    // This test's own Redis counts the function calls (one subscribe among them).
    let stats = redis.cli(&["INFO", "commandstats"]).unwrap();
    let calls: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|l| l.split(',').next()?.parse().ok())
        .unwrap();
    assert!(calls < N / 2, "{calls} calls for {N} concurrent publishes");
    let m = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    assert!(
        metric(&m, "pushgate_redis_publishes_per_call_sum") >= N as f64,
        "{m}"
    );
    c.stop().await;
}

/// A batch call re-sent whole (what a client library does after a dropped connection)
/// answers the seqs the first one took, and appends nothing.
#[tokio::test]
async fn a_resent_batch_gives_no_message_a_second_seq() {
    let redis = RedisServer::start(&[]);
    let c = over(&redis, &[]).await;
    // A publish through the gateway has loaded the library.
    assert_eq!(c.publish("o:1", "0").await, 1);
    let call = |ops: [&str; 3]| {
        let now = unix_now().to_string() + "000";
        let mut args = vec!["FCALL", "pg_publish_batch", "9"];
        for ch in ["o:1", "o:2", "o:1"] {
            let keys = [
                format!("pg:{{{ch}}}:m"),
                format!("pg:{{{ch}}}:l"),
                format!("pg:{{{ch}}}:i:"),
            ];
            args.extend(keys.map(|k| &*Box::leak(k.into_boxed_str())));
        }
        let now = &*Box::leak(now.into_boxed_str());
        args.extend([now, "100", "300000", "16777216", "2592000000", "7", "1"]);
        for (i, op) in ops.iter().enumerate() {
            args.extend([["\"a\"", "\"b\"", "\"c\""][i], "", *op]);
        }
        redis.cli(&args).unwrap()
    };
    let ops = ["00000000000000a1", "00000000000000a2", "00000000000000a3"];
    let first = call(ops);
    // Five publishes in between: the op ids have moved to the older of the fields that
    // remember them.
    for i in 4..=8 {
        assert_eq!(c.publish("o:1", "1").await, i);
    }
    let again = call(ops);
    let seqs = |out: &str| -> Vec<(String, String)> {
        let l: Vec<&str> = out.lines().collect();
        l.chunks(6)
            .map(|r| (r[0].to_owned(), r[2].to_owned()))
            .collect()
    };
    // o:1 gets 2 and 3, o:2 gets 1; the re-sent call answers the same, as duplicates.
    assert_eq!(
        seqs(&first),
        [("2", "0"), ("1", "0"), ("3", "0")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(
        seqs(&again),
        [("2", "1"), ("1", "1"), ("3", "1")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(redis.cli(&["LLEN", "pg:{o:1}:l"]).unwrap().trim(), "8");
    assert_eq!(redis.cli(&["HGET", "pg:{o:1}:m", "s"]).unwrap().trim(), "8");
    // New op ids are new messages.
    let third = call(["00000000000000b1", "00000000000000b2", "00000000000000b3"]);
    assert_eq!(seqs(&third)[2], ("10".to_owned(), "0".to_owned()));
    // The meta stays a compact listpack (no field over 64 bytes).
    assert_eq!(
        redis
            .cli(&["OBJECT", "ENCODING", "pg:{o:1}:m"])
            .unwrap()
            .trim(),
        "listpack"
    );
    c.stop().await;
}

/// The fleet registry in Redis: a gateway with no link to a worker assigns clients to it
/// from the lease another gateway renews, sees the channel it holds as online, and once
/// the worker is gone and its lease has ended, assigns nothing to it and no longer counts
/// it as the channel's live holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_registry_spans_gateways_and_a_dead_workers_lease_ends() {
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let flags = ["--store", url.as_str(), "--worker-timeout-secs", "1"];
    let a = start(&flags, 0, &[]).await;
    let b = start(&flags, 0, &[]).await;
    // A worker that links to gateway a only.
    let token = tokio_util::sync::CancellationToken::new();
    let w = worker::Worker::bind(<worker::Config as clap::Parser>::parse_from([
        "worker",
        "--gateway",
        &a.base,
        "--id",
        "lone",
        "--threads",
        "1",
        "--listen",
        "127.0.0.1:0",
    ]))
    .unwrap();
    let addr = w.local_addrs()[0].to_string();
    let handle = w.start(token.clone());
    a.wait_workers(1).await;
    // Gateway b learns it from the registry within a couple of seconds.
    let t = Instant::now();
    let assigned = loop {
        let r = b.get("/v1/assign?channel=f:1").await;
        if r.status == 200 {
            break r.json();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "b never assigned: {:?}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(assigned["worker"], "lone");
    assert!(
        assigned["ws_url"].as_str().unwrap().contains(&addr),
        "{assigned}"
    );
    let fleet = b.get("/v1/workers").await.json();
    assert_eq!(fleet["workers"], json!([]), "b has no link of its own");
    assert_eq!(fleet["fleet"][0]["id"], "lone", "{fleet}");
    // A client through b's assignment; publishes through a (the worker's gateway).
    let mut ws = ws_connect(assigned["ws_url"].as_str().unwrap()).await;
    a.wait_online("f:1").await;
    assert_eq!(a.publish("f:1", "1").await, 1);
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    let info = b.get("/v1/channels/f:1").await.json();
    assert_eq!(
        info["online"], true,
        "b sees the holder live through its lease: {info}"
    );
    // The worker goes away; its lease (worker timeout + 1 s) ends and b stops using it.
    token.cancel();
    tokio::task::spawn_blocking(move || handle.wait())
        .await
        .unwrap();
    let gone = Instant::now();
    loop {
        let r = b.get("/v1/assign?channel=f:1").await;
        if r.status == 503 {
            assert_eq!(r.json()["error"], "no_worker");
            break;
        }
        assert_eq!(r.json()["worker"], "lone");
        assert!(
            gone.elapsed() < Duration::from_secs(6),
            "b kept assigning a dead worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = b.get("/v1/channels/f:1").await.json();
    assert_eq!(info["online"], false, "{info}");
    // Published meanwhile: stored, never routed (nor parked) for the dead incarnation.
    assert_eq!(b.publish("f:1", "2").await, 2);
    let m = String::from_utf8_lossy(&b.get("/metrics").await.body).into_owned();
    assert!(
        metric(&m, "pushgate_lease_ended_deliveries_total") >= 1.0,
        "{m}"
    );
    a.stop().await;
    b.stop().await;
}

/// The registry's rule, on the function itself: the same incarnation keeps the later lease
/// end; another incarnation takes the entry only if it linked later or the lease ended; an
/// entry ended for longer than the keep time is forgotten.
#[tokio::test]
async fn the_worker_registry_keeps_the_newest_incarnation() {
    let redis = RedisServer::start(&[]);
    let c = over(&redis, &[]).await;
    assert_eq!(c.publish("lib:1", "0").await, 1, "the library is loaded");
    c.stop().await;
    let renew = |now: &str, id: &str, line: &str| -> Vec<String> {
        let out = redis
            .cli(&[
                "FCALL",
                "pg_workers",
                "1",
                "t:workers",
                now,
                "60000",
                id,
                line,
            ])
            .unwrap();
        out.lines().map(str::to_owned).collect()
    };
    // incarnation since until connections capacity has-tls addrs (the Lua keeps the line whole)
    assert_eq!(
        renew("1000", "w", "7 100 5000 0 10 0 a:1"),
        ["w", "7 100 5000 0 10 0 a:1"]
    );
    // The same incarnation: a later lease end wins, an earlier one does not undo it.
    assert_eq!(
        renew("1000", "w", "7 200 6000 3 10 0 a:1")[1],
        "7 200 6000 3 10 0 a:1"
    );
    assert_eq!(
        renew("1000", "w", "7 100 5500 1 10 0 a:1")[1],
        "7 200 6000 3 10 0 a:1"
    );
    // Another incarnation that linked earlier (a gateway still holding a dead one's link)
    // cannot take a live entry; one that linked later (a restart) does.
    assert_eq!(
        renew("1000", "w", "9 150 7000 0 10 0 a:1")[1],
        "7 200 6000 3 10 0 a:1"
    );
    assert_eq!(
        renew("1000", "w", "9 300 7000 0 10 0 a:2")[1],
        "9 300 7000 0 10 0 a:2"
    );
    // Once the lease has ended, any incarnation takes it.
    assert_eq!(
        renew("8000", "w", "5 1 9000 0 10 0 a:3")[1],
        "5 1 9000 0 10 0 a:3"
    );
    // Ended for longer than the keep time (60 s here): forgotten.
    assert_eq!(
        renew("70000", "x", "1 1 80000 0 10 0 b:1"),
        ["x", "1 1 80000 0 10 0 b:1"]
    );
    assert_eq!(
        redis.cli(&["HEXISTS", "t:workers", "w"]).unwrap().trim(),
        "0"
    );
}

/// Redis behind the fault-injection proxy, its connection reset every 18-30 KB: publishes
/// that fail answer 503 and are retried under their idempotency key, and in the end every
/// message has exactly one seq, with none skipped, and reaches its client once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_reset_again_and_again_give_no_message_two_seqs() {
    let redis = RedisServer::start(&[]);
    let faults = chaos::Faults {
        seed: 20261202,
        // Above the function library's 17.6 KB, which a fresh connection loads first.
        reset_after: Some(18_000..=30_000),
        ..chaos::Faults::default()
    };
    let proxy = chaos::Proxy::start("127.0.0.1:0".parse().unwrap(), redis.addr, faults)
        .await
        .unwrap();
    let url = format!("redis://{}", proxy.addr);
    // Every message stays retained, so a hole a reset made can always be filled.
    let c = start(
        &[
            "--store",
            &url,
            "--redis-timeout-ms",
            "1000",
            "--retention-messages",
            "1000",
        ],
        1,
        &[],
    )
    .await;
    let mut ws = loop {
        // Subscribing can meet a reset too: the worker is told and the client retries.
        let r = c.get("/v1/assign?channel=rr:1").await;
        assert_eq!(r.status, 200);
        let mut ws = ws_connect(r.json()["ws_url"].as_str().unwrap()).await;
        if tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                let i = c.get("/v1/channels/rr:1").await.json();
                if i["online"] == true {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok()
        {
            break ws;
        }
        let _ = futures_util::SinkExt::close(&mut ws).await;
    };
    const N: u64 = 400;
    let mut retried = 0;
    for i in 1..=N {
        let key = format!("k{i}");
        let t = Instant::now();
        loop {
            let r = c
                .request(
                    "POST",
                    "/v1/publish/rr:1",
                    &[("Idempotency-Key", &key)],
                    bytes::Bytes::from(format!("{i}")),
                )
                .await;
            if r.status == 202 {
                assert_eq!(r.json()["seq"], i, "message {i} got another seq");
                break;
            }
            assert_eq!(r.status, 503, "{:?}", r.json());
            retried += 1;
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "publish {i} never went in"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The client: every message once, in order (a reset may have made the worker fetch).
    for i in 1..=N {
        let v = next_json(&mut ws).await;
        assert_eq!(v, json!({"seq": i, "data": i}));
    }
    let resets = proxy
        .control
        .resets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(resets >= 3, "only {resets} resets: the test did not test");
    assert_eq!(
        redis.cli(&["HGET", "pg:{rr:1}:m", "s"]).unwrap().trim(),
        N.to_string()
    );
    eprintln!("{resets} Redis connection resets, {retried} publishes retried");
    c.stop().await;
}
