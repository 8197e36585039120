//! `GET /client/pushgate.js`: the JavaScript client is served byte for byte as the file in
//! `clients/js/`, as a JavaScript module a page on another origin may import.

mod common;

use bytes::Bytes;

fn client_file() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/js/pushgate.js");
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn the_client_module_is_served_as_the_file() {
    let c = common::start(&[], 0, &[]).await;
    let file = client_file();
    assert!(file.len() > 1000, "the client file is there");

    let r = c
        .request(
            "GET",
            "/client/pushgate.js",
            &[("Origin", "https://app.example")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.body[..] == file[..],
        "served bytes differ from clients/js/pushgate.js"
    );
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let etag = r.header("etag").expect("an ETag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18,
        "{etag}"
    );

    // Revalidation: the same tag is 304 with no body; another tag gets the file again.
    let r = c
        .request(
            "GET",
            "/client/pushgate.js",
            &[("If-None-Match", &etag)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = c
        .request(
            "GET",
            "/client/pushgate.js",
            &[("If-None-Match", "\"0000000000000000\"")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body[..] == file[..]);

    let r = c
        .request("POST", "/client/pushgate.js", &[], Bytes::new())
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert_eq!(c.get("/client/other.js").await.status, 404);
    c.stop().await;
}

#[tokio::test]
async fn the_client_module_answers_cors_for_the_allowed_origins_only() {
    let c = common::start(&["--allow-origin", "https://app.example"], 0, &[]).await;
    let get = |origin: &'static str| {
        let c = &c;
        async move {
            c.request(
                "GET",
                "/client/pushgate.js",
                &[("Origin", origin)],
                Bytes::new(),
            )
            .await
        }
    };
    let r = get("https://app.example").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(r.headers.get_all("vary").iter().any(|v| v == "Origin"));
    let r = get("https://other.example").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    c.stop().await;
}
