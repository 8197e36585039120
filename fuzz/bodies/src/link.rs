//! `link_decode` and `link_roundtrip`: the gateway<->worker link codec, both directions.

use crate::Input;
use bytes::{Bytes, BytesMut};
use protocol::link::{self, Down, Hello, KickReason, TicketKey, Up, MAX_TICKET_KEYS};

/// Arbitrary bytes as a link stream (cut where the fuzzer says) and as single frame
/// bodies: decoding never panics, and whatever decodes re-encodes to a frame that decodes
/// to the same value.
pub fn link_decode(data: &[u8]) {
    let mut input = Input::new(data);
    let cuts = crate::cuts(&mut input);
    let stream = input.rest();
    let body = Bytes::copy_from_slice(stream);
    check_up(Up::decode(body.clone()));
    check_down(Down::decode(body));

    let mut buf = BytesMut::new();
    for chunk in crate::split(stream, &cuts) {
        buf.extend_from_slice(chunk);
        loop {
            match link::split_frame(&mut buf) {
                Ok(Some(frame)) => {
                    check_up(Up::decode(frame.clone()));
                    check_down(Down::decode(frame));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn check_up(r: Result<Up, link::LinkError>) {
    if let Ok(m) = r {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(Up::decode(frame_of(out)), Ok(m));
    }
}

fn check_down(r: Result<Down, link::LinkError>) {
    if let Ok(m) = r {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(Down::decode(frame_of(out)), Ok(m));
    }
}

/// The one frame `out` holds, as `split_frame` hands it to `decode`.
fn frame_of(out: Vec<u8>) -> Bytes {
    let len = out.len();
    let mut buf = BytesMut::from(&out[..]);
    let frame = link::split_frame(&mut buf)
        .expect("an encoded frame is within the bound")
        .expect("an encoded frame is whole");
    assert!(
        buf.is_empty(),
        "{} bytes behind a {len}-byte frame",
        buf.len()
    );
    frame
}

/// Values built from fuzzer bytes: each encodes to a frame that decodes to the same
/// value (the ticket keys past the most a frame carries are left out, by contract).
pub fn link_roundtrip(data: &[u8]) {
    let mut input = Input::new(data);
    let mut stream = Vec::new();
    let mut sent = Vec::new();
    while !input.is_empty() && sent.len() < 32 {
        let m = if input.bool() {
            let up = up(&mut input);
            up.encode(&mut stream);
            Ok(up)
        } else {
            let down = down(&mut input);
            down.encode(&mut stream);
            Err(down)
        };
        sent.push(m);
    }
    let mut buf = BytesMut::from(&stream[..]);
    for m in sent {
        let frame = link::split_frame(&mut buf).unwrap().expect("a whole frame");
        match m {
            Ok(up) => assert_eq!(Up::decode(frame).as_ref(), Ok(&up)),
            Err(Down::TicketKeys {
                lifetime_secs,
                mut keys,
            }) => {
                keys.truncate(MAX_TICKET_KEYS);
                let want = Down::TicketKeys {
                    lifetime_secs,
                    keys,
                };
                assert_eq!(Down::decode(frame), Ok(want));
            }
            Err(down) => assert_eq!(Down::decode(frame).as_ref(), Ok(&down)),
        }
    }
    assert!(buf.is_empty());
}

fn text(input: &mut Input<'_>) -> String {
    String::from_utf8_lossy(input.short_bytes()).into_owned()
}

fn opt(input: &mut Input<'_>) -> Option<u64> {
    input.bool().then(|| input.u64())
}

fn up(input: &mut Input<'_>) -> Up {
    match input.u8() % 5 {
        0 => Up::Hello(Hello {
            id: text(input),
            incarnation: input.u64(),
            addrs: (0..input.u8() % 4).map(|_| text(input)).collect(),
            capacity: input.u64(),
            connections: input.u64(),
            tls_addrs: (0..input.u8() % 4).map(|_| text(input)).collect(),
            wants_ticket_keys: input.bool(),
        }),
        1 => Up::Load {
            connections: input.u64(),
        },
        2 => Up::Subscribe {
            sub_id: input.u64(),
            since: opt(input),
            epoch: opt(input),
            resume: input.bool(),
            max_bytes: input.u32(),
            channel: text(input),
            opened_us: input.u64(),
        },
        3 => Up::Fetch {
            sub_id: input.u64(),
            since: input.u64(),
            epoch: opt(input),
            max_bytes: input.u32(),
            channel: text(input),
        },
        _ => Up::Unsubscribe {
            sub_id: input.u64(),
            channel: text(input),
        },
    }
}

fn down(input: &mut Input<'_>) -> Down {
    match input.u8() % 6 {
        0 => Down::Welcome {
            gateway_id: text(input),
        },
        1 => Down::Backlog {
            sub_id: input.u64(),
            epoch: input.u64(),
            last_seq: input.u64(),
            gap_first_seq: opt(input),
            messages: (0..input.u8() % 8)
                .map(|_| (input.u64(), Bytes::copy_from_slice(input.short_bytes())))
                .collect(),
        },
        2 => Down::Deliver {
            sub_id: input.u64(),
            epoch: input.u64(),
            seq: input.u64(),
            data: Bytes::copy_from_slice(input.short_bytes()),
            published_us: input.u64(),
        },
        3 => Down::Kick {
            sub_id: input.u64(),
            reason: match input.u8() % 3 {
                0 => KickReason::Replaced,
                1 => KickReason::Resync,
                _ => KickReason::Refused,
            },
        },
        4 => Down::TicketKeys {
            lifetime_secs: input.u32(),
            keys: (0..input.u8() % 24)
                .map(|_| TicketKey {
                    id: input.array(),
                    key: input.array(),
                    encrypt: input.bool(),
                    expires_in_secs: input.u32(),
                })
                .collect(),
        },
        _ => Down::ResubscribeAll,
    }
}
