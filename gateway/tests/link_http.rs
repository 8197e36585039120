//! The gateway's HTTP surface around the link: errors as JSON, limits, auth, CORS, metrics,
//! dashboard.

mod link_support;

use link_support::*;

#[tokio::test]
async fn errors_are_json_with_fitting_status() {
    let gw = Gw::start(&[
        "--max-message-bytes",
        "10",
        "--max-batch-lines",
        "2",
        "--max-batch-bytes",
        "200",
        "--max-channels",
        "1",
    ])
    .await;
    let r = gw.get("/nope").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );
    let r = gw.post("/v1/workers", &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert_eq!(r.header("allow"), Some("GET"));
    let r = gw.get("/v1/publish/c").await;
    assert_eq!(r.status, 405);
    assert_eq!(
        gw.get("/healthz").await.json(),
        serde_json::json!({"status": "ok"})
    );

    let r = gw.post("/v1/publish/c", &[], b"01234567890").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    let r = gw.post("/v1/publish/bad%20name", &[], b"1").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_channel"))
    );
    let r = gw
        .post("/v1/publish/c", &[("Idempotency-Key", "")], b"1")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(gw.post("/v1/publish/c", &[], b"1").await.status, 202);
    // Past --max-channels a new channel is refused.
    let r = gw.post("/v1/publish/other", &[], b"1").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("too_many_channels"))
    );

    let nd = [("Content-Type", "application/x-ndjson")];
    let three = "{\"channel\":\"c\",\"data\":1}\n".repeat(3);
    let r = gw.post("/v1/publish", &nd, three.as_bytes()).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("too_many_lines"))
    );
    let r = gw
        .post("/v1/publish", &nd, "x".repeat(201).as_bytes())
        .await;
    assert_eq!(r.status, 413);
    let r = gw
        .post(
            "/v1/publish",
            &nd,
            b"{\"channel\":\"c\",\"data\":2}\n{\"channel\":\"new\",\"data\":2}",
        )
        .await;
    let j = r.json();
    assert_eq!(j["accepted"], 1);
    assert_eq!(
        j["rejected"][0],
        serde_json::json!({"line": 2, "error": "too_many_channels"})
    );

    let unknown = gw.get("/v1/channels/never").await.json();
    assert_eq!(
        unknown,
        serde_json::json!({"online": false, "worker": null, "last_seq": 0, "buffered": 0})
    );
    assert_eq!(gw.get("/v1/channels/a%20b").await.status, 400);
    let r = gw.get("/v1/link").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (426, Some("upgrade_required"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn publisher_keys_and_subscriber_tokens() {
    let gw = Gw::start(&[
        "--publisher-key",
        "k1",
        "--publisher-key",
        "k2",
        "--subscriber-secret",
        "sec",
    ])
    .await;
    let r = gw.post("/v1/publish/c", &[], b"1").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(
        gw.post("/v1/publish/c", &[("Authorization", "Bearer nope")], b"1")
            .await
            .status,
        401
    );
    assert_eq!(
        gw.post("/v1/publish/c", &[("Authorization", "Bearer k2")], b"1")
            .await
            .status,
        202
    );
    let nd = [("Content-Type", "application/x-ndjson")];
    assert_eq!(gw.post("/v1/publish", &nd, b"").await.status, 401);

    let _w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    let r = gw.get("/v1/assign?channel=c").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("token_missing"))
    );
    assert_eq!(gw.get("/v1/assign?token=garbage").await.status, 401);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = protocol::token::sign(b"sec", "c", now - 1);
    assert_eq!(
        gw.get(&format!("/v1/assign?token={expired}")).await.json()["error"],
        "token_expired"
    );
    let wrong_key = protocol::token::sign(b"other", "c", now + 100);
    assert_eq!(
        gw.get(&format!("/v1/assign?token={wrong_key}"))
            .await
            .status,
        401
    );
    let token = protocol::token::sign(b"sec", "user:9", now + 100);
    let r = gw.get(&format!("/v1/assign?token={token}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        j["ws_url"],
        format!("ws://127.0.0.2:9000/v1/ws?channel=user:9&token={token}")
    );
    assert_eq!(
        j["sse_url"],
        format!("http://127.0.0.2:9000/v1/sse?channel=user:9&token={token}")
    );
    let expires = j["expires_in"].as_u64().unwrap();
    assert!((98..=100).contains(&expires), "{expires}");
    let r = gw
        .get(&format!("/v1/assign?channel=other&token={token}"))
        .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("token_wrong_channel"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn cors_on_assign_and_only_when_configured_on_publish() {
    let gw = Gw::start(&[]).await;
    let pre = http(
        gw.addr,
        "OPTIONS",
        "/v1/assign?channel=c",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("GET"));
    let r = http(
        gw.addr,
        "GET",
        "/v1/assign?channel=c",
        &[("Origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "errors carry CORS too"
    );
    let r = gw
        .post("/v1/publish/c", &[("Origin", "https://app.example")], b"1")
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("access-control-allow-origin"), None);
    gw.stop().await;

    let gw = Gw::start(&[
        "--allow-origin",
        "https://app.example",
        "--publish-allow-origin",
        "https://admin.example",
    ])
    .await;
    let ok = [("Origin", "https://admin.example")];
    let pre = http(
        gw.addr,
        "OPTIONS",
        "/v1/publish/c",
        &[ok[0], ("Access-Control-Request-Headers", "authorization")],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://admin.example")
    );
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("authorization")
    );
    let r = gw.post("/v1/publish/c", &ok, b"1").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://admin.example")
    );
    let r = gw
        .post("/v1/publish/c", &[("Origin", "https://evil.example")], b"1")
        .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = http(
        gw.addr,
        "GET",
        "/v1/assign?channel=c",
        &[("Origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let r = http(
        gw.addr,
        "GET",
        "/v1/assign?channel=c",
        &[("Origin", "https://admin.example")],
        b"",
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    gw.stop().await;
}

#[tokio::test]
async fn metrics_and_dashboard() {
    let gw = Gw::start(&[]).await;
    gw.post("/v1/publish/m", &[], b"1").await;
    let r = gw.get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for name in [
        "pushgate_publish_total",
        "pushgate_publish_rejected_total{reason=\"unauthorized\"}",
        "pushgate_messages_evicted_total{reason=\"memory\"}",
        "pushgate_store_bytes",
        "pushgate_store_channels 1",
        "pushgate_workers{state=\"healthy\"} 0",
        "pushgate_assign_total",
        "pushgate_link_frames_sent_total",
        "pushgate_link_batches_sent_total",
        "pushgate_link_overflows_total",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    let d = gw.get("/").await;
    assert_eq!(d.status, 200);
    assert!(d.header("content-type").unwrap().starts_with("text/html"));
    let html = d.text();
    // One self-contained page: its data from /v1/stats, its charting library inlined, and
    // nothing loaded from anywhere else (no script or style source, no link, no import).
    assert!(html.contains("fetch(\"/v1/stats\"") && html.contains("uPlot"));
    for external in ["src=", "href=", "<link", "@import", "url("] {
        assert!(!html.contains(external), "the dashboard has {external}");
    }
    gw.stop().await;
}
