//! The admin surface (dashboard, `/metrics`, `/v1/workers`, `/v1/channels/…`): behind
//! `--admin-key` (Bearer, or Basic with the key as the password, which browsers prompt
//! for), or moved to its own `--admin-listen` address; `/healthz`, assign, publish and
//! worker links never ask for it.

mod common;

use common::process::free_port;
use common::*;

const ADMIN: [&str; 5] = [
    "/",
    "/metrics",
    "/v1/workers",
    "/v1/stats",
    "/v1/channels/adm",
];

#[tokio::test]
async fn with_an_admin_key_the_admin_surface_asks_for_it_and_nothing_else_does() {
    let c = start(
        &["--admin-key", "adm-key-1"],
        1,
        &["--admin-key", "adm-key-1"],
    )
    .await;
    for path in ADMIN {
        let r = c.get(path).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.json()["error"], "admin_unauthorized", "{path}");
        assert!(
            r.header("www-authenticate").unwrap().starts_with("Basic "),
            "{path}"
        );
        let wrong = c
            .request("GET", path, &[("Authorization", "Bearer adm-key-2")], "")
            .await;
        assert_eq!(wrong.status, 401, "{path}");
        let bearer = c
            .request("GET", path, &[("Authorization", "Bearer adm-key-1")], "")
            .await;
        assert_eq!(bearer.status, 200, "{path}");
        // "ops:adm-key-1", as a browser sends it after the prompt.
        let basic = c
            .request(
                "GET",
                path,
                &[("Authorization", "Basic b3BzOmFkbS1rZXktMQ==")],
                "",
            )
            .await;
        assert_eq!(basic.status, 200, "{path}");
    }
    // A worker with the fleet's key asks for it on /metrics; the gateway presents it when it
    // reads the worker for /v1/stats.
    let worker = format!("http://{}/metrics", c.worker_addrs[0][0]);
    let r = c.get(&worker).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "admin_unauthorized");
    let r = c
        .request("GET", &worker, &[("Authorization", "Bearer adm-key-1")], "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        c.get(&format!("http://{}/healthz", c.worker_addrs[0][0]))
            .await
            .status,
        200
    );
    let s = c
        .request(
            "GET",
            "/v1/stats",
            &[("Authorization", "Bearer adm-key-1")],
            "",
        )
        .await
        .json();
    assert_eq!(s["workers"][0]["error"], serde_json::Value::Null, "{s}");
    assert!(
        s["workers"][0]["metrics"]["pushgate_link_up"].is_number(),
        "{s}"
    );
    // The worker linked without it (wait_workers passed), and the API does not ask.
    assert_eq!(c.get("/healthz").await.status, 200);
    let mut ws = c.ws("adm", None).await;
    c.publish("adm", "\"hi\"").await;
    assert_eq!(next_json(&mut ws).await["data"], "hi");
    c.stop().await;
}

#[tokio::test]
async fn admin_listen_moves_the_admin_surface_to_its_own_address() {
    let admin = format!("127.0.0.1:{}", free_port());
    let c = start(&["--admin-listen", &admin], 1, &[]).await;
    for path in ADMIN {
        let r = c.get(path).await;
        assert_eq!(r.status, 404, "{path} on --listen");
        let r = c.get(&format!("http://{admin}{path}")).await;
        assert_eq!(r.status, 200, "{path} on --admin-listen");
    }
    assert_eq!(c.get(&format!("http://{admin}/healthz")).await.status, 200);
    let m = c.get(&format!("http://{admin}/metrics")).await;
    assert!(String::from_utf8_lossy(&m.body).contains("pushgate_publish_total"));
    // The admin address serves nothing of the API.
    assert_eq!(
        c.get(&format!("http://{admin}/v1/assign?channel=adm"))
            .await
            .status,
        404
    );
    let r = c
        .request("POST", &format!("http://{admin}/v1/publish/adm"), &[], "x")
        .await;
    assert_eq!(r.status, 404);
    // The API is where it was.
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.get("/v1/assign?channel=adm").await.status, 200);
    c.stop().await;
}

#[tokio::test]
async fn stats_carry_the_gateway_samples_and_each_workers_own() {
    let mut c = start(&[], 1, &[]).await;
    c.add_worker("w1", &[]).await;
    c.wait_workers(2).await;
    let mut ws = c.ws("stats", None).await;
    c.publish("stats", "1").await;
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    let s = c.get("/v1/stats").await.json();
    assert_eq!(
        s["store"],
        serde_json::json!({"kind": "memory", "healthy": true})
    );
    assert!(
        s["gateway"]["pushgate_publish_total"].as_f64().unwrap() >= 1.0,
        "{s}"
    );
    assert!(
        s["gateway"]["process_resident_memory_bytes"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert_eq!(w["error"], serde_json::Value::Null, "{w}");
        let m = &w["metrics"];
        assert!(
            m["process_resident_memory_bytes"].as_f64().unwrap() > 0.0,
            "{w}"
        );
        assert!(
            m["pushgate_connections_open{transport=\"ws\"}"].is_number(),
            "{w}"
        );
        // (A gauge of the whole process, shared by every in-process worker of this binary.)
        assert!(m["pushgate_link_up"].is_number(), "{w}");
    }
    // The subscriber is on one of them (the workers' metrics live in this one process, so
    // both read the same counters: the sum is twice the one connection).
    let open: f64 = workers
        .iter()
        .map(|w| {
            w["metrics"]["pushgate_connections_open{transport=\"ws\"}"]
                .as_f64()
                .unwrap()
        })
        .sum();
    assert!(open >= 1.0, "{s}");
    c.stop().await;
}
