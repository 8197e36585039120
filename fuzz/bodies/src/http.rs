//! `http_request`: the worker's request-head parser, routing and subscribe checks, and the
//! shared query decoder.

use crate::Input;
use protocol::query::{percent_decode, percent_encode_into, query_pairs};
use worker::http1::{self, HeadError};
use worker::metrics::Transport;
use worker::session::request::{self, Route, SubscribeRules};

/// The worker's default `--max-head-bytes` is 8 KiB; a small bound is reached by the fuzzer.
const MAX_HEADS: [usize; 2] = [8192, 64];

pub fn http_request(data: &[u8]) {
    let mut input = Input::new(data);
    let origin_allowed = input.bool();
    let secret = input.short_bytes().to_vec();
    let now = u64::from(input.u32());
    let buf = input.rest();
    for max_head in MAX_HEADS {
        head(buf, max_head, origin_allowed, &secret, now);
    }
    if let Ok(s) = std::str::from_utf8(buf) {
        query(s);
    }
}

fn head(buf: &[u8], max_head: usize, origin_allowed: bool, secret: &[u8], now: u64) {
    let req = match http1::parse_request(buf, max_head) {
        Ok(Some(req)) => req,
        Ok(None) => {
            assert!(buf.len() < max_head, "an incomplete head past the bound");
            return;
        }
        Err(HeadError::TooLarge | HeadError::Malformed) => return,
    };
    let n = req.head_len;
    assert!(
        n <= buf.len() && n <= max_head,
        "head_len {n} of {}",
        buf.len()
    );
    let head = &buf[..n];
    // The blank line ends it (LF or CRLF, as httparse takes both).
    assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"));
    for part in [req.method, req.path, req.query]
        .into_iter()
        .chain(req.origin)
        .chain(req.last_event_id)
    {
        within(head, part.as_bytes());
    }
    for part in req.ws_key.into_iter().chain(req.ws_version) {
        within(head, part);
    }
    // The same head, alone, reads the same; cut anywhere before its end it is incomplete
    // (a head split across reads is never refused for it).
    let alone = http1::parse_request(head, max_head)
        .expect("the head alone parses")
        .expect("the head alone is complete");
    assert_eq!(format!("{alone:?}"), format!("{req:?}"));
    for cut in prefixes(n) {
        let r = http1::parse_request(&head[..cut], max_head);
        assert!(
            matches!(r, Ok(None)),
            "prefix of {cut} bytes of an accepted {n}-byte head: {r:?}"
        );
    }

    let route = request::route(&req, origin_allowed);
    if let Ok(Route::Subscribe(transport)) = route {
        assert!(!req.body);
        let max_poll_timeout_secs = 120;
        let rules = SubscribeRules {
            secret: (!secret.is_empty()).then_some(secret),
            max_poll_timeout_secs,
        };
        if let Ok(sub) = request::subscribe(transport, &req, rules, now) {
            protocol::validate_channel(&sub.channel).expect("an accepted channel is valid");
            assert!(sub.hold_secs <= max_poll_timeout_secs);
            if transport != Transport::Sse {
                let q = http1::parse_subscribe_query(req.query).expect("the query was accepted");
                assert_eq!(sub.since, q.since);
            }
            if rules.secret.is_some() {
                let q = http1::parse_subscribe_query(req.query).expect("the query was accepted");
                let token = q.token.expect("an accepted subscribe has a token");
                protocol::token::verify(secret, &token, &sub.channel, now)
                    .expect("an accepted token verifies");
            }
        }
    }
}

/// Cut points to try: all of a short head, a spread over a long one.
fn prefixes(n: usize) -> impl Iterator<Item = usize> {
    let step = (n / 256).max(1);
    (0..n).step_by(step)
}

fn within(outer: &[u8], part: &[u8]) {
    let (o, p) = (outer.as_ptr() as usize, part.as_ptr() as usize);
    assert!(
        part.is_empty() || (p >= o && p + part.len() <= o + outer.len()),
        "a field outside the head"
    );
}

/// Query decoding: what decodes re-encodes to the same text, and never grows.
fn query(s: &str) {
    for plus in [false, true] {
        if let Ok(d) = percent_decode(s, plus) {
            assert!(d.len() <= s.len());
            let mut enc = String::new();
            percent_encode_into(&mut enc, &d);
            assert_eq!(percent_decode(&enc, true).as_deref(), Ok(&*d));
        }
    }
    let pairs: Vec<_> = query_pairs(s).collect();
    if pairs.iter().all(|p| p.is_ok()) {
        // A query that decodes, rebuilt from its pairs, decodes to the same pairs.
        let mut rebuilt = String::new();
        for (k, v) in pairs.iter().flatten() {
            if !rebuilt.is_empty() {
                rebuilt.push('&');
            }
            percent_encode_into(&mut rebuilt, k);
            rebuilt.push('=');
            percent_encode_into(&mut rebuilt, v);
        }
        let again: Vec<_> = query_pairs(&rebuilt).map(|p| p.unwrap()).collect();
        let first: Vec<_> = pairs.into_iter().flatten().collect();
        assert_eq!(again, first);
    }
    if let Ok(q) = http1::parse_subscribe_query(s) {
        protocol::validate_channel(&q.channel).expect("an accepted channel is valid");
    }
}
