//! Unit tests of WebSocket encoding, frame walking and the client frame decoder.

use super::*;

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = Vec::new();
    out.push(0x80 | opcode);
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else if payload.len() <= 65535 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// A masked client frame; `fin` false makes it a fragment.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = masked(opcode, payload);
    if !fin {
        f[0] &= 0x7f;
    }
    f
}

/// Feeds `stream` in reads of `step` bytes, as the loop does; the control frames found
/// (up to a close, where the loop stops reading), or the first error.
fn run(stream: &[u8], step: usize) -> Result<Vec<Frame>, FrameError> {
    let mut st = ReadState::default();
    let mut pending = Vec::new();
    let mut got = Vec::new();
    for chunk in stream.chunks(step.max(1)) {
        pending.extend_from_slice(chunk);
        loop {
            let (n, f) = decode(&mut pending, &mut st, 1 << 20)?;
            pending.drain(..n);
            match f {
                None => break,
                Some(Frame::Data) => {}
                Some(f @ Frame::Close(_)) => {
                    got.push(f);
                    return Ok(got);
                }
                Some(f) => got.push(f),
            }
        }
    }
    Ok(got)
}

fn all_steps(stream: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let first = run(stream, stream.len());
    for step in 1..=9 {
        assert_eq!(run(stream, step), first, "read {step} bytes at a time");
    }
    first
}

#[test]
fn utf8_is_checked_across_fragments_and_reads() {
    let text = "héllo wörld € 𝄞 ok".as_bytes();
    // Fragments cut inside the two- to four-byte characters.
    for cut in [2, 9, 15, 17, 18, 19] {
        for cut2 in [cut + 1, text.len() - 1] {
            let mut s = frame(false, OP_TEXT, &text[..cut]);
            s.extend(frame(false, OP_CONT, &text[cut..cut2]));
            s.extend(masked(OP_PING, b"p"));
            s.extend(frame(true, OP_CONT, &text[cut2..]));
            let got = all_steps(&s).unwrap_or_else(|e| panic!("{cut}/{cut2}: {e}"));
            assert_eq!(got.len(), 1, "the ping between fragments");
        }
    }
    // Binary is not text; an empty text frame is fine.
    let mut s = masked(OP_BINARY, &[0xff, 0xc0, 0x80]);
    s.extend(masked(OP_TEXT, b""));
    assert_eq!(all_steps(&s), Ok(vec![]));
}

#[test]
fn invalid_utf8_is_1007() {
    for bad in [
        &[0xc3, 0x28][..],
        &[0xc0, 0x80],             // overlong
        &[0xed, 0xa0, 0x80],       // a surrogate
        &[0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
        &[0xff],
        &[b'a', 0x80],
        &[0xe2, 0x82], // the message ends inside a character
    ] {
        assert_eq!(
            all_steps(&masked(OP_TEXT, bad)),
            Err(FrameError::BadUtf8),
            "{bad:x?}"
        );
        // Split over two fragments at every point.
        for cut in 0..=bad.len() {
            let mut s = frame(false, OP_TEXT, &bad[..cut]);
            s.extend(frame(true, OP_CONT, &bad[cut..]));
            assert_eq!(
                all_steps(&s),
                Err(FrameError::BadUtf8),
                "{bad:x?} cut {cut}"
            );
        }
    }
    let mut reason = vec![0x03, 0xe8];
    reason.extend_from_slice(&[0xc3, 0x28]);
    assert_eq!(
        all_steps(&masked(OP_CLOSE, &reason)),
        Err(FrameError::BadUtf8)
    );
    assert_eq!(FrameError::BadUtf8.close_code(), 1007);
}

#[test]
fn fragmentation_rules_are_1002() {
    // A continuation with no message started.
    assert_eq!(all_steps(&masked(OP_CONT, b"x")), Err(FrameError::Protocol));
    // A new data frame while a message is unfinished.
    for op in [OP_TEXT, OP_BINARY] {
        let mut s = frame(false, OP_TEXT, b"a");
        s.extend(masked(op, b"b"));
        assert_eq!(all_steps(&s), Err(FrameError::Protocol));
    }
    // Once a fragmented message is over, a new one may start; and not before its end.
    let mut s = frame(false, OP_BINARY, b"a");
    s.extend(frame(true, OP_CONT, b"b"));
    s.extend(masked(OP_TEXT, b"c"));
    s.extend(masked(OP_CONT, b"d"));
    assert_eq!(all_steps(&s), Err(FrameError::Protocol));
    let mut st = ReadState::default();
    assert!(st.is_idle());
    let (n, _) = decode(&mut frame(false, OP_TEXT, &[0xe2]), &mut st, 100).unwrap();
    assert_eq!(n, 7);
    assert!(!st.is_idle(), "a message under way is carried");
    assert!(std::mem::size_of::<ReadState>() <= 16);
}

/// Differential check against tungstenite's parser (a well-kept one): random streams of
/// fragments, pings, and text that is valid, cut inside characters, or not UTF-8; both
/// must accept or refuse each stream alike (refusing for the same reason).
#[test]
fn agrees_with_tungstenite() {
    use std::io::{Cursor, Read, Write};
    use tokio_tungstenite::tungstenite::{self, protocol::Role, Message};

    struct Duplex(Cursor<Vec<u8>>);
    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        }
    }
    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    #[derive(Debug, PartialEq)]
    enum Verdict {
        Closed,
        Protocol,
        Utf8,
        More,
    }
    let theirs = |stream: &[u8]| {
        let mut ws = tungstenite::WebSocket::from_raw_socket(
            Duplex(Cursor::new(stream.to_vec())),
            Role::Server,
            None,
        );
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => return Verdict::Closed,
                Ok(_) => {}
                Err(tungstenite::Error::Protocol(_)) => return Verdict::Protocol,
                Err(tungstenite::Error::Utf8(_)) => return Verdict::Utf8,
                Err(tungstenite::Error::Io(_)) => return Verdict::More,
                Err(e) => panic!("{e}"),
            }
        }
    };
    let ours = |stream: &[u8], step: usize| match run(stream, step) {
        Ok(f) if f.iter().any(|f| matches!(f, Frame::Close(_))) => Verdict::Closed,
        Ok(_) => Verdict::More,
        Err(FrameError::Protocol) => Verdict::Protocol,
        Err(FrameError::BadUtf8) => Verdict::Utf8,
        Err(FrameError::TooLarge) => unreachable!(),
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let text = "aé€𝄞z".as_bytes();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20_000 {
        let mut stream = Vec::new();
        for _ in 0..1 + rnd(5) {
            let payload: Vec<u8> = match rnd(4) {
                0 => b"plain".to_vec(),
                1 => {
                    let a = rnd(text.len());
                    text[a..a + rnd(text.len() - a + 1)].to_vec()
                }
                2 => (0..rnd(4))
                    .map(|_| [0x80, 0xc3, 0xe2, 0xf0, 0xff][rnd(5)])
                    .collect(),
                _ => Vec::new(),
            };
            match rnd(8) {
                0 => stream.extend(masked(OP_PING, b"p")),
                1 if rnd(4) == 0 => {
                    let mut close = vec![0x03, 0xe8];
                    close.extend_from_slice(&payload);
                    stream.extend(masked(OP_CLOSE, &close));
                }
                k => {
                    let op = [OP_TEXT, OP_BINARY, OP_CONT][k % 3];
                    stream.extend(frame(rnd(2) == 0, op, &payload));
                }
            }
        }
        stream.extend(masked(OP_CLOSE, &[0x03, 0xe8]));
        let want = theirs(&stream);
        assert_eq!(ours(&stream, 1 + rnd(9)), want, "{stream:x?}");
        *seen.entry(format!("{want:?}")).or_insert(0) += 1;
    }
    // The streams exercised every outcome.
    assert!(seen.len() >= 3, "{seen:?}");
}

#[test]
fn rfc6455_accept_key() {
    // RFC 6455 section 1.3 (also what Python's sha1+b64encode gives).
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn encodes_frames() {
    let mut out = Vec::new();
    write_message(&mut out, 5, b"\"hi\"");
    let body = br#"{"seq":5,"data":"hi"}"#;
    assert_eq!(out[0], 0x81);
    assert_eq!(out[1] as usize, body.len());
    assert_eq!(&out[2..], body);

    out.clear();
    let big = vec![b'1'; 300];
    write_message(&mut out, 1, &big);
    assert_eq!(out[1], 126);
    let len = u16::from_be_bytes([out[2], out[3]]) as usize;
    assert_eq!(len, out.len() - 4);

    out.clear();
    let huge = vec![b'1'; 70_000];
    write_message(&mut out, 1, &huge);
    assert_eq!(out[1], 127);
    assert_eq!(
        u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
        out.len() - 10
    );

    out.clear();
    write_close(&mut out, 4001, "replaced");
    assert_eq!(out, [&[0x88, 10, 0x0f, 0xa1][..], b"replaced"].concat());

    out.clear();
    write_gap(&mut out, 3, 9);
    assert_eq!(&out[2..], br#"{"gap":true,"epoch":3,"first_seq":9}"#);
}

#[test]
fn walks_server_frames() {
    let mut out = Vec::new();
    write_ping(&mut out);
    write_message(&mut out, 1, &vec![b'1'; 300]);
    write_message(&mut out, 2, &vec![b'2'; 70_000]);
    // A ping (2 bytes), then {"seq":1,"data":<300>} in a 126-length frame.
    let (a, b) = (2, 2 + 4 + 317);
    assert_eq!(frame_len(&out), Some(2));
    assert_eq!(frame_len(&out[a..]), Some(b - a));
    assert_eq!(frame_len(&out[b..]), Some(out.len() - b));
    assert_eq!(frame_len(&out[..1]), None);
    assert_eq!(frame_len(&out[b..b + 5]), None);
    assert_eq!(frame_around(&out, 0), (0, 0));
    assert_eq!(frame_around(&out, 1), (0, 2));
    assert_eq!(frame_around(&out, a), (a, a));
    assert_eq!(frame_around(&out, a + 1), (a, b));
    assert_eq!(frame_around(&out, b + 100), (b, out.len()));
    assert_eq!(frame_around(&out, out.len()), (out.len(), out.len()));
}

#[test]
fn decodes_control_frames() {
    let mut st = ReadState::default();
    let f = masked(OP_PING, b"abc");
    let (n, fr) = decode(&mut f.clone(), &mut st, 1000).unwrap();
    assert_eq!(n, f.len());
    match fr {
        Some(Frame::Ping(p)) => assert_eq!(p.as_slice(), b"abc"),
        other => panic!("{other:?}"),
    }
    let f = masked(OP_CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']);
    assert_eq!(
        decode(&mut f.clone(), &mut st, 1000).unwrap(),
        (f.len(), Some(Frame::Close(Some(1000))))
    );
    let f = masked(OP_PONG, b"");
    assert_eq!(
        decode(&mut f.clone(), &mut st, 1000).unwrap(),
        (f.len(), Some(Frame::Pong))
    );
}

#[test]
fn decodes_incrementally_and_skips_data() {
    let mut stream = masked(OP_TEXT, &vec![b'x'; 1000]);
    stream.extend(masked(OP_PING, b"p"));
    // Feed one byte at a time, keeping what decode did not consume.
    let mut pending: Vec<u8> = Vec::new();
    let mut st = ReadState::default();
    let mut got = Vec::new();
    for b in stream {
        pending.push(b);
        loop {
            let (n, f) = decode(&mut pending, &mut st, 65536).unwrap();
            pending.drain(..n);
            match f {
                Some(f) => got.push(f),
                None => break,
            }
        }
    }
    assert!(pending.is_empty());
    assert!(matches!(got.last(), Some(Frame::Ping(p)) if p.as_slice() == b"p"));
    assert!(got[..got.len() - 1].iter().all(|f| *f == Frame::Data));
}

#[test]
fn refuses_bad_frames() {
    let mut st = ReadState::default();
    let big = masked(OP_BINARY, &vec![0; 2000]);
    assert_eq!(
        decode(&mut big.clone(), &mut st, 1000),
        Err(FrameError::TooLarge)
    );
    let mut unmasked = masked(OP_TEXT, b"hi");
    unmasked[1] &= 0x7f;
    assert_eq!(
        decode(&mut unmasked.clone(), &mut st, 1000),
        Err(FrameError::Protocol)
    );
    let mut rsv = masked(OP_TEXT, b"hi");
    rsv[0] |= 0x40;
    assert_eq!(
        decode(&mut rsv.clone(), &mut st, 1000),
        Err(FrameError::Protocol)
    );
    assert_eq!(
        decode(&mut masked(0x3, b""), &mut st, 1000),
        Err(FrameError::Protocol)
    );
    assert_eq!(
        decode(&mut masked(OP_PING, &[0; 126]), &mut st, 1000),
        Err(FrameError::Protocol)
    );
    let mut frag_ping = masked(OP_PING, b"");
    frag_ping[0] &= 0x7f;
    assert_eq!(
        decode(&mut frag_ping.clone(), &mut st, 1000),
        Err(FrameError::Protocol)
    );
    assert_eq!(FrameError::TooLarge.close_code(), 1009);
}

/// Text messages of random bytes (mostly valid UTF-8 with multi-byte characters, sometimes
/// broken), cut into random fragments and read in random steps, one after another on one
/// connection: the decoder's verdict is `from_utf8` of each whole message, every time.
#[test]
fn utf8_verdicts_match_whole_message_checks_under_random_cuts() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let pieces: [&[u8]; 8] = [
        b"a",
        "é".as_bytes(),
        "€".as_bytes(),
        "😀".as_bytes(),
        b"z",
        &[0xff],
        &[0xe2, 0x82],
        &[0xc3],
    ];
    for _ in 0..20_000 {
        let mut stream = Vec::new();
        let mut verdict = Ok(());
        // A few messages back to back; the first invalid one ends the connection.
        for _ in 0..3 {
            let mut msg = Vec::new();
            for _ in 0..rnd(12) {
                let kinds = if rnd(10) == 0 { 8 } else { 5 };
                let p = pieces[rnd(kinds) as usize];
                msg.extend_from_slice(p);
            }
            // Fragments at random cuts.
            let mut cuts = Vec::new();
            for _ in 0..rnd(4) {
                cuts.push(rnd(msg.len() as u64 + 1) as usize);
            }
            cuts.sort_unstable();
            let mut start = 0;
            let mut frames: Vec<(usize, usize)> = Vec::new();
            for c in cuts {
                frames.push((start, c));
                start = c;
            }
            frames.push((start, msg.len()));
            // Some messages are binary: never checked, and they must not disturb the next.
            let binary = rnd(4) == 0;
            for (i, (a, b)) in frames.iter().enumerate() {
                let first = if binary { OP_BINARY } else { OP_TEXT };
                let op = if i == 0 { first } else { OP_CONT };
                stream.extend(frame(i + 1 == frames.len(), op, &msg[*a..*b]));
                // A ping between fragments is allowed and must not disturb the check.
                if rnd(5) == 0 && i + 1 < frames.len() {
                    stream.extend(masked(OP_PING, b"p"));
                }
            }
            if !binary && std::str::from_utf8(&msg).is_err() {
                verdict = Err(FrameError::BadUtf8);
                break;
            }
        }
        let step = 1 + rnd(stream.len() as u64 + 1) as usize;
        let got = run(&stream, step).map(|_| ());
        assert_eq!(got, verdict, "stream {stream:02x?} read {step} at a time");
    }
}
