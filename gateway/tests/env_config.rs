//! Every flag of both binaries also comes from `PUSHGATE_<FLAG>`, and a gateway process
//! configured only through the environment behaves accordingly.

mod common;

use clap::CommandFactory;
use common::process::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn assert_env_for_every_flag(cmd: clap::Command) {
    let name = cmd.get_name().to_string();
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let want = format!("PUSHGATE_{}", long.to_ascii_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(want.as_str()),
            "{name} --{long} has no {want} fallback"
        );
        checked += 1;
    }
    assert!(checked >= 10, "{name}: only {checked} flags found");
}

#[test]
fn every_flag_has_an_environment_fallback() {
    assert_env_for_every_flag(gateway::Config::command());
    assert_env_for_every_flag(worker::Config::command());
}

#[tokio::test]
async fn gateway_configured_only_by_environment() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("PUSHGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("PUSHGATE_MAX_MESSAGE_BYTES", "10")
        .env("PUSHGATE_THREADS", "1")
        .env("PUSHGATE_PUBLISHER_KEY", "k1,k2")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if http_get(&format!("{base}/healthz")).await.is_some() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let publish = |key: &'static str, body: &'static str| {
        let url = format!("{base}/v1/publish/envtest");
        async move {
            use http_body_util::BodyExt;
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let req = hyper::Request::post(url)
                .header("Authorization", format!("Bearer {key}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }
    };
    let results = if up {
        Some((
            publish("k2", "\"short\"").await,
            publish("k1", "\"0123456789\"").await,
            publish("nope", "1").await,
        ))
    } else {
        None
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        results,
        Some((202, 413, 401)),
        "gateway on PUSHGATE_LISTEN: up={up}"
    );
}
