//! `tls_ticket`: the fleet's session tickets (opening arbitrary bytes never panics, and
//! only a ticket this fleet sealed opens) and the TLS record layer's reader (record
//! lengths, and opening arbitrary records of a session).

use crate::Input;
use protocol::link::TicketKey;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::server::ProducesTickets;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};
use std::time::Instant;
use worker::tls::records::{self, Records, MAX_RECORD};
use worker::tls::tickets::FleetTickets;

pub fn tls_ticket(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 3 {
        0 => tickets(&mut input),
        1 => record_reader(&mut input),
        _ => record_roundtrip(&mut input),
    }
}

fn tickets(input: &mut Input<'_>) {
    let fleet = FleetTickets::new().expect("ticketer");
    let now = Instant::now();
    let keys: Vec<TicketKey> = (0..input.u8() % 4)
        .map(|_| TicketKey {
            id: [input.u8() % 4, 0, 0, 0],
            key: input.array(),
            encrypt: input.bool(),
            // Zero is a key that is gone already.
            expires_in_secs: u32::from(input.u8() % 2) * 3600,
        })
        .collect();
    fleet.install(input.u8() as usize % 3, 3600, &keys, now);
    let plain = input.short_bytes().to_vec();
    let ticket = fleet.encrypt(&plain).expect("a ticket is sealed");
    // Ids are random 32-bit values, so two live keys share one about never; when they do,
    // a ticket may not open (a full handshake, by design).
    let mut live: Vec<_> = keys
        .iter()
        .filter(|k| k.expires_in_secs > 0)
        .map(|k| k.id)
        .collect();
    let n = live.len();
    live.sort_unstable();
    live.dedup();
    if live.len() == n {
        assert_eq!(fleet.decrypt(&ticket).as_deref(), Some(&plain[..]));
    }

    // The ticket edited where the fuzzer says, or bytes of its own.
    let forged = if input.bool() {
        let mut t = ticket.clone();
        for _ in 0..1 + input.u8() % 3 {
            let at = input.u16() as usize % (t.len() + 1);
            match input.u8() % 3 {
                0 if at < t.len() => t[at] ^= input.u8() | 1,
                1 => t.insert(at, input.u8()),
                _ => t.truncate(at),
            }
        }
        t
    } else {
        input.rest().to_vec()
    };
    if forged != ticket {
        assert_eq!(fleet.decrypt(&forged), None, "a forged ticket opened");
    }
}

fn secrets(input: &mut Input<'_>, key: [u8; 32], iv: [u8; 12]) -> ConnectionTrafficSecrets {
    if input.bool() {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        }
    } else {
        ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        }
    }
}

fn version(input: &mut Input<'_>) -> ProtocolVersion {
    if input.bool() {
        ProtocolVersion::TLSv1_3
    } else {
        ProtocolVersion::TLSv1_2
    }
}

/// A client's bytes, split into records as `tls/session.rs` does, each opened.
fn record_reader(input: &mut Input<'_>) {
    let key = input.array();
    let iv = input.array();
    let seq = u64::from(input.u8());
    let tx = secrets(input, [0; 32], [0; 12]);
    let rx = match tx {
        ConnectionTrafficSecrets::Aes256Gcm { .. } => ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        },
        _ => ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        },
    };
    let version = version(input);
    let mut recs = Records::new(
        ExtractedSecrets {
            tx: (0, tx),
            rx: (seq, rx),
        },
        version,
    )
    .expect("a supported session");
    let mut buf = input.rest().to_vec();
    let mut off = 0;
    while let Ok(Some(len)) = records::record_len(&buf[off..]) {
        assert!((records::HEADER..=MAX_RECORD).contains(&len));
        if buf.len() - off < len {
            break;
        }
        let rec = &mut buf[off..off + len];
        if let Ok((_, range)) = recs.open(rec) {
            assert!(range.end <= len && range.start <= range.end);
        }
        off += len;
    }
}

/// Records sealed by one side open on the other, in order, with their type and bytes.
fn record_roundtrip(input: &mut Input<'_>) {
    let key_a: [u8; 32] = input.array();
    let key_b: [u8; 32] = input.array();
    let iv_a: [u8; 12] = input.array();
    let iv_b: [u8; 12] = input.array();
    let seq = u64::from(input.u16());
    let chacha = input.bool();
    let version = version(input);
    let make = |key, iv| {
        if chacha {
            ConnectionTrafficSecrets::Chacha20Poly1305 {
                key: AeadKey::from(key),
                iv: Iv::new(iv),
            }
        } else {
            ConnectionTrafficSecrets::Aes256Gcm {
                key: AeadKey::from(key),
                iv: Iv::new(iv),
            }
        }
    };
    let mut server = Records::new(
        ExtractedSecrets {
            tx: (seq, make(key_a, iv_a)),
            rx: (0, make(key_b, iv_b)),
        },
        version,
    )
    .unwrap();
    let mut client = Records::new(
        ExtractedSecrets {
            tx: (0, make(key_b, iv_b)),
            rx: (seq, make(key_a, iv_a)),
        },
        version,
    )
    .unwrap();
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    while !input.is_empty() && sent.len() < 16 {
        let ty = [
            records::APPLICATION_DATA,
            records::ALERT,
            records::HANDSHAKE,
        ][input.u8() as usize % 3];
        let plain = input.short_bytes().to_vec();
        server.seal(ty, &plain, &mut wire).unwrap();
        sent.push((ty, plain));
    }
    let mut off = 0;
    for (ty, plain) in sent {
        let len = records::record_len(&wire[off..]).unwrap().unwrap();
        let rec = &mut wire[off..off + len];
        let (got_ty, range) = client.open(rec).expect("a sealed record opens");
        assert_eq!((got_ty, &rec[range]), (ty, &plain[..]));
        off += len;
    }
    assert_eq!(off, wire.len());
    // And the other way.
    let mut echo = Vec::new();
    client
        .seal(records::APPLICATION_DATA, b"x", &mut echo)
        .unwrap();
    assert!(server.open(&mut echo).is_ok());
}
