//! `worker::http1`: parsing the head of a typical WebSocket upgrade and a long-poll
//! request (httparse + the header scan), the subscribe query, and the token check the
//! worker then does.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use worker::http1::{parse_request, parse_subscribe_query};

const SECRET: &[u8] = b"bench-secret-bench-secret-bench!";
const CHANNEL: &str = "user:12345.notifications";
const MAX_HEAD: usize = 8192;

fn requests(token: &str) -> (Vec<u8>, Vec<u8>) {
    let ws = format!(
        "GET /v1/ws?channel={CHANNEL}&token={token} HTTP/1.1\r\n\
Host: 10.0.0.7:8081\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\
Accept: */*\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cache-Control: no-cache\r\n\
Pragma: no-cache\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Connection: Upgrade\r\n\
Upgrade: websocket\r\n\r\n"
    );
    let poll = format!(
        "GET /v1/poll?channel={CHANNEL}&token={token}&since=1041&timeout=30 HTTP/1.1\r\n\
Host: 10.0.0.7:8081\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Origin: https://app.example.com\r\n\
Connection: keep-alive\r\n\r\n"
    );
    (ws.into_bytes(), poll.into_bytes())
}

fn parse(c: &mut Criterion) {
    let exp = 4_000_000_000u64;
    let token = protocol::token::sign(SECRET, CHANNEL, exp);
    let (ws, poll) = requests(&token);
    // Sanity: both parse completely and carry what the worker needs.
    let r = parse_request(&ws, MAX_HEAD).unwrap().unwrap();
    assert!(r.upgrade_websocket && r.ws_key.is_some() && r.head_len == ws.len());
    let q = parse_subscribe_query(r.query).unwrap();
    assert_eq!(q.channel, CHANNEL);
    let p = parse_request(&poll, MAX_HEAD).unwrap().unwrap();
    assert_eq!(p.path, "/v1/poll");
    assert_eq!(parse_subscribe_query(p.query).unwrap().since, Some(1041));

    let mut g = c.benchmark_group("request_parse");
    g.bench_function(format!("ws_upgrade_head_{}B", ws.len()), |b| {
        b.iter(|| {
            let r = parse_request(black_box(&ws), MAX_HEAD).unwrap().unwrap();
            black_box(r.head_len)
        })
    });
    g.bench_function(format!("poll_head_{}B", poll.len()), |b| {
        b.iter(|| {
            let r = parse_request(black_box(&poll), MAX_HEAD).unwrap().unwrap();
            black_box(r.head_len)
        })
    });
    g.bench_function("subscribe_query_ws", |b| {
        let query = r.query;
        b.iter(|| parse_subscribe_query(black_box(query)).unwrap())
    });
    g.bench_function("ws_head+query", |b| {
        b.iter(|| {
            let r = parse_request(black_box(&ws), MAX_HEAD).unwrap().unwrap();
            parse_subscribe_query(r.query).unwrap()
        })
    });
    g.bench_function("token_verify_hs256", |b| {
        b.iter(|| {
            protocol::token::verify(SECRET, black_box(&token), CHANNEL, 1_700_000_000).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(pushgate_benches::MEASUREMENT)
        .warm_up_time(pushgate_benches::WARM_UP)
        .sample_size(pushgate_benches::SAMPLES);
    targets = parse
}
criterion_main!(benches);
