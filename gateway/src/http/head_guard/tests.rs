//! The guard without sockets: heads in, decisions out.

use super::*;

/// Steps `g` over `input` as the I/O side would (passing what it clears), until it needs
/// more bytes; returns the sizes passed and the last step.
fn run(g: &mut HeadGuard, input: &[u8]) -> (Vec<usize>, Step) {
    let mut at = 0;
    let mut passed = Vec::new();
    loop {
        match g.step(&input[at..]) {
            Step::Pass(n) => {
                passed.push(n);
                at += n;
            }
            other => return (passed, other),
        }
    }
}

fn refusal(input: &[u8], max_head: usize) -> Rejection {
    match run(&mut HeadGuard::new(max_head), input).1 {
        Step::Refuse(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn keep_alive_heads_and_bodies_are_passed_message_by_message() {
    let mut g = HeadGuard::new(8192);
    let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /b HTTP/1.1\r\n\r\n";
    let (passed, last) = run(&mut g, input);
    assert_eq!(passed, [39, 3, 19]);
    assert_eq!(last, Step::More);
    assert!(g.wants_head());
    // A head arriving a byte at a time is passed whole, once.
    let mut g = HeadGuard::new(8192);
    let head = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
    for n in 0..head.len() {
        assert_eq!(g.step(&head[..n]), Step::More, "{n} bytes");
    }
    assert_eq!(g.step(head), Step::Pass(head.len()));
}

#[test]
fn chunked_bodies_are_followed_to_the_next_head() {
    let mut g = HeadGuard::new(8192);
    let input = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n\
        GET /b HTTP/1.1\r\n\r\n";
    let (passed, last) = run(&mut g, input);
    assert_eq!(last, Step::More);
    assert_eq!(passed.iter().sum::<usize>(), input.len());
    assert_eq!(*passed.last().unwrap(), 19, "the next head alone");
    // Without trailers; split anywhere.
    let input =
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    for split in 1..input.len() {
        let mut g = HeadGuard::new(8192);
        let mut at = 0;
        let mut fed = split;
        loop {
            match g.step(&input[at..fed]) {
                Step::Pass(n) => at += n,
                Step::More if fed < input.len() => fed = input.len(),
                Step::More => break,
                other => panic!("split {split}: {other:?}"),
            }
        }
        assert_eq!(at, input.len(), "split {split}");
        assert!(g.wants_head());
    }
}

#[test]
fn a_broken_chunk_stops_the_stream() {
    for body in [&b"zz\r\n"[..], b"\r\n", b"3\r\nabcXY", b"3\rX"] {
        let mut input = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(body);
        let mut g = HeadGuard::new(8192);
        assert_eq!(run(&mut g, &input).1, Step::Stop, "{body:?}");
        assert_eq!(
            g.step(b"GET / HTTP/1.1\r\n\r\n"),
            Step::Stop,
            "and stays stopped"
        );
    }
}

#[test]
fn malformed_heads_are_refused_as_hyper_would_refuse_them() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
            "invalid header value",
        ),
        (
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "invalid header name",
        ),
        (b"\x16\x03\x01\x02\x00 hello\r\n\r\n", "invalid token"),
        (b"GET / HTTP/9.9\r\n\r\n", "invalid HTTP version"),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 18446744073709551614\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "conflicting Content-Length headers",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "Transfer-Encoding must end in chunked",
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 request",
        ),
        (b"GET /a<b HTTP/1.1\r\n\r\n", "invalid request target"),
        (b"GET /a?b=\"c\" HTTP/1.1\r\n\r\n", "invalid request target"),
        (b"GET http://h`/ HTTP/1.1\r\n\r\n", "invalid request target"),
    ];
    for (input, why) in cases {
        match refusal(input, 8192) {
            Rejection::Malformed(m) => assert!(m.contains(why), "{m:?} for {input:?}"),
            other => panic!("{other:?} for {input:?}"),
        }
    }
}

#[test]
fn what_hyper_accepts_passes() {
    for input in [
        &b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"[..],
        b"GET http://h/x?y=%zz HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"GET /a?d={e}|f^g HTTP/1.0\r\n\r\n",
        // Transfer-Encoding wins: a Content-Length after it is not read.
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\n\r\n",
    ] {
        let mut g = HeadGuard::new(8192);
        assert!(
            matches!(g.step(input), Step::Pass(_)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn limits_give_431_and_414() {
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(
        refusal(head.as_bytes(), 8192),
        Rejection::TooManyHeaders { max: 100 }
    );
    let hundred: String = (0..99).map(|i| format!("X-{i}: v\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\nHost: h\r\n{hundred}\r\n");
    assert!(matches!(
        HeadGuard::new(8192).step(head.as_bytes()),
        Step::Pass(_)
    ));
    // An unfinished head at the limit: refused without waiting for more.
    let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
    assert_eq!(
        refusal(&big.as_bytes()[..8192], 8192),
        Rejection::HeadTooLarge { limit: 8192 }
    );
    assert_eq!(
        HeadGuard::new(8192).step(&big.as_bytes()[..8191]),
        Step::More
    );
    // A whole head over the limit.
    let whole = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
    assert_eq!(
        refusal(whole.as_bytes(), 256),
        Rejection::HeadTooLarge { limit: 256 }
    );
    // A request line that never ends within the limit is a target too long.
    let target = format!("GET /{}", "a".repeat(9000));
    assert_eq!(
        refusal(&target.as_bytes()[..8192], 8192),
        Rejection::UriTooLong { limit: 8192 }
    );
    let whole = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
    assert_eq!(
        refusal(whole.as_bytes(), 256),
        Rejection::UriTooLong { limit: 256 }
    );
}

#[test]
fn an_answered_upgrade_makes_the_rest_opaque_and_a_refused_one_does_not() {
    let up = b"GET /v1/link HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n";
    let mut g = HeadGuard::new(8192);
    assert_eq!(g.step(up), Step::Pass(up.len()));
    assert!(g.awaits_answer());
    g.answered(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(g.awaits_answer(), "an interim answer decides nothing");
    g.answered(b"HTTP/1.1 101 Switching Protocols\r\n");
    assert!(g.is_opaque() && !g.awaits_answer());
    assert_eq!(g.step(b"\x00\x00\x00\x05garbage"), Step::Pass(11));
    // Refused (426): HTTP goes on and the next head is checked.
    let mut g = HeadGuard::new(8192);
    g.step(up);
    g.answered(b"HTTP/1.1 426 Upgrade Required\r\n");
    assert!(!g.is_opaque() && !g.awaits_answer());
    assert!(matches!(
        g.step(b"\x00\x00\x00\x05garbage\r\n\r\n"),
        Step::Refuse(_)
    ));
    // HTTP/1.0 cannot upgrade; CONNECT answered 2xx can.
    let mut g = HeadGuard::new(8192);
    g.step(b"GET / HTTP/1.0\r\nUpgrade: x\r\n\r\n");
    assert!(!g.awaits_answer());
    let mut g = HeadGuard::new(8192);
    g.step(b"CONNECT h:443 HTTP/1.1\r\n\r\n");
    g.answered(b"HTTP/1.1 200 OK\r\n");
    assert!(g.is_opaque());
}
