//! `ws_frames`: the worker's incremental WebSocket decoder, differentially against
//! tungstenite's server side, on the same bytes cut at fuzzer-chosen points.
//!
//! Input: a mode byte, the cut points, then either raw bytes (mode even) or a description
//! of frames that are encoded whole and masked (mode odd), so that both readers see every
//! frame complete and must agree on everything, including where the stream breaks.

use crate::{cuts, split, Input};
use std::io::{self, Read, Write};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;
use worker::ws::{self, Frame, ReadState};

/// `--max-client-frame-bytes` for the run: small, so the fuzzer reaches it.
const MAX_FRAME: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A data message ended (text or binary).
    Message,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Waiting for more bytes.
    Open,
    Closed,
    Broken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    end: End,
}

pub fn ws_frames(data: &[u8]) {
    let mut input = Input::new(data);
    let structured = input.u8() & 1 == 1;
    let cuts = cuts(&mut input);
    let stream = if structured {
        frames(&mut input)
    } else {
        input.rest().to_vec()
    };
    let chunks = split(&stream, &cuts);

    let ours = worker_reads(&chunks);
    // However the bytes arrive, the decoder decides the same.
    assert_eq!(ours, worker_reads(&[&stream]), "cut differently");
    let theirs = tungstenite_reads(&chunks);
    compare(&ours, &theirs, structured);
}

fn compare(ours: &Outcome, theirs: &Outcome, whole_frames: bool) {
    // Tungstenite answers a close code that may not be sent (1005, 1006, 1015, < 1000,
    // 1016-2999 unregistered) as 1002; the worker reads the code as sent and decides itself
    // what to echo (`session::answer_client_close`).
    let mut ours = ours.clone();
    for e in &mut ours.events {
        if let Event::Close(Some(c)) = e {
            if !CloseCode::from(*c).is_allowed() {
                *c = 1002;
            }
        }
    }
    assert_eq!(
        ours.events, theirs.events,
        "events differ (ours, tungstenite)"
    );
    match (&ours.end, &theirs.end) {
        (a, b) if a == b => {}
        // The worker fails a frame as soon as its header (or the payload read so far)
        // breaks a rule; tungstenite waits for the whole frame first.
        (End::Broken, End::Open) if !whole_frames => {}
        (a, b) => panic!(
            "ours ended {a:?}, tungstenite {b:?} after {:?}",
            ours.events
        ),
    }
}

fn worker_reads(chunks: &[&[u8]]) -> Outcome {
    let mut st = ReadState::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        let mut off = 0;
        // As `event_loop/read.rs` `decode_frames` does.
        while off < pending.len() {
            let len = pending.len() - off;
            match ws::decode(&mut pending[off..], &mut st, MAX_FRAME) {
                Ok((0, f)) => {
                    assert!(f.is_none(), "nothing consumed, but {f:?}");
                    break;
                }
                Ok((n, f)) => {
                    assert!(n <= len, "consumed {n} of {len}");
                    off += n;
                    match f {
                        Some(Frame::Data) => {
                            if st.is_idle() {
                                events.push(Event::Message);
                            }
                        }
                        Some(Frame::Ping(p)) => events.push(Event::Ping(p.as_slice().to_vec())),
                        Some(Frame::Pong) => events.push(Event::Pong),
                        Some(Frame::Close(code)) => {
                            events.push(Event::Close(code));
                            return Outcome {
                                events,
                                end: End::Closed,
                            };
                        }
                        None => panic!("{n} bytes consumed for nothing"),
                    }
                }
                Err(_) => {
                    return Outcome {
                        events,
                        end: End::Broken,
                    }
                }
            }
        }
        pending.drain(..off);
    }
    Outcome {
        events,
        end: End::Open,
    }
}

/// The bytes that arrived so far; reading past them would block.
#[derive(Default)]
struct Feed {
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Feed {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Feed {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tungstenite_reads(chunks: &[&[u8]]) -> Outcome {
    let mut config = WebSocketConfig::default();
    config.max_frame_size = Some(MAX_FRAME as usize);
    // The worker does not gather messages, so it sets no message bound.
    config.max_message_size = None;
    let mut ws = WebSocket::from_raw_socket(Feed::default(), Role::Server, Some(config));
    let mut events = Vec::new();
    for chunk in chunks {
        ws.get_mut().buf.extend_from_slice(chunk);
        loop {
            match ws.read() {
                Ok(Message::Text(_) | Message::Binary(_)) => events.push(Event::Message),
                Ok(Message::Ping(p)) => events.push(Event::Ping(p.to_vec())),
                Ok(Message::Pong(_)) => events.push(Event::Pong),
                Ok(Message::Close(c)) => {
                    events.push(Event::Close(c.map(|c| u16::from(c.code))));
                    return Outcome {
                        events,
                        end: End::Closed,
                    };
                }
                Ok(Message::Frame(_)) => unreachable!("raw frames are not read"),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    return Outcome {
                        events,
                        end: End::Broken,
                    }
                }
            }
        }
    }
    Outcome {
        events,
        end: End::Open,
    }
}

/// Frames described by `input`, encoded whole as a client sends them (masked, except
/// when the description says not to).
fn frames(input: &mut Input<'_>) -> Vec<u8> {
    const OPCODES: [u8; 16] = [
        0x1, 0x0, 0x2, 0x9, 0xA, 0x8, 0x1, 0x0, 0x3, 0xB, 0x9, 0x8, 0x0, 0x1, 0x2, 0xF,
    ];
    let mut out = Vec::new();
    let mut count = 0;
    while !input.is_empty() && count < 64 {
        count += 1;
        let b = input.u8();
        let fin = b & 0x80 == 0;
        let opcode = OPCODES[(b & 0x0f) as usize];
        // Rarely: reserved bits, or an unmasked frame.
        let rsv = if b & 0x70 == 0x70 {
            input.u8() & 0x70
        } else {
            0
        };
        let masked = !(b & 0x70 == 0x60 && input.bool());
        let payload: Vec<u8> = match input.u8() {
            // A close payload: a code and a reason.
            0 => {
                let mut p = input.u16().to_be_bytes().to_vec();
                p.extend_from_slice(input.short_bytes());
                p
            }
            // Longer than one byte's length: the 16-bit length form, and past MAX_FRAME.
            1 => {
                let n = input.u16() as usize % (2 * MAX_FRAME as usize);
                let fill = input.u8();
                vec![fill; n]
            }
            n => input.bytes(n as usize - 2).to_vec(),
        };
        let form = input.u8() % 4;
        out.push(if fin { 0x80 } else { 0 } | rsv | opcode);
        let m = if masked { 0x80 } else { 0 };
        let len = payload.len();
        match form {
            // The 16-bit form for a short length, the 64-bit form for any.
            1 if len <= u16::MAX as usize => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            2 => {
                out.push(m | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            _ => ws_len(&mut out, m, len),
        }
        let mask: [u8; 4] = input.array();
        if masked {
            out.extend_from_slice(&mask);
        }
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| if masked { b ^ mask[i & 3] } else { *b }),
        );
    }
    out
}

fn ws_len(out: &mut Vec<u8>, m: u8, len: usize) {
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | op];
        ws_len(&mut out, 0x80, payload.len());
        let mask = [9, 8, 7, 6];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn both_readers_see_the_same_stream() {
        let mut s = masked(OP_TEXT, "é".as_bytes());
        s.extend(masked(0x9, b"hi"));
        s.extend(masked(0x2, &[0; 300]));
        s.extend(masked(0x8, &[0x03, 0xed]));
        let want = Outcome {
            events: vec![
                Event::Message,
                Event::Ping(b"hi".to_vec()),
                Event::Message,
                Event::Close(Some(1005)),
            ],
            end: End::Closed,
        };
        let chunks: Vec<&[u8]> = s.chunks(3).collect();
        assert_eq!(worker_reads(&chunks), want);
        let theirs = tungstenite_reads(&chunks);
        assert_eq!(theirs.events[..3], want.events[..3]);
        // 1005 may not be sent: tungstenite reports it as 1002.
        assert_eq!(theirs.events[3], Event::Close(Some(1002)));
        compare(&want, &theirs, true);
    }

    const OP_TEXT: u8 = 0x1;

    #[test]
    #[should_panic(expected = "events differ")]
    fn a_disagreement_is_caught() {
        let s = masked(OP_TEXT, b"\xff");
        let theirs = tungstenite_reads(&[&s]);
        assert_eq!(theirs.end, End::Broken);
        let lenient = Outcome {
            events: vec![Event::Message],
            end: End::Open,
        };
        compare(&lenient, &theirs, true);
    }
}
