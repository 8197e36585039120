//! The server side of RFC 6455 that the worker needs: the handshake answer, frame
//! encoding (text, ping, pong, close) and an incremental decoder for client frames. No I/O.

use base64::Engine;
use sha1::{Digest, Sha1};

/// RFC 6455 handshake GUID.
pub const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes the worker sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const REPLACED: u16 = 4001;
    pub const RESYNC: u16 = 4002;
    pub const TOO_SLOW: u16 = 4003;
    /// RFC 6455 "Try Again Later": the gateway refused the subscription.
    pub const TRY_AGAIN: u16 = 1013;
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Appends the `101 Switching Protocols` answer.
pub fn write_handshake(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept_key(key).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends an unmasked frame header (FIN set) for a payload of `len` bytes.
pub fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Length (header and payload) of the server frame at the start of `buf`, once its header
/// is there. For walking frames the worker wrote itself (unmasked).
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let (head, len) = match *buf.get(1)? & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        l => (2, l as usize),
    };
    Some(head + len)
}

/// Where the frame that holds byte `at` of `frames` (whole server frames, back to back)
/// starts and ends; `(at, at)` when `at` is at a frame boundary (or past the end).
pub fn frame_around(frames: &[u8], at: usize) -> (usize, usize) {
    let mut start = 0;
    while start < at {
        let Some(len) = frame_len(&frames[start..]) else {
            break;
        };
        if start + len > at {
            return (start, start + len);
        }
        start += len;
    }
    (at, at)
}

/// Appends one text frame `{"seq":N,"data":...}`.
pub fn write_message(out: &mut Vec<u8>, seq: u64, data: &[u8]) {
    write_header(out, OP_TEXT, protocol::envelope::message_len(seq, data));
    protocol::envelope::write_message(out, seq, data);
}

/// Appends one text frame `{"gap":true,"epoch":E,"first_seq":N}`.
pub fn write_gap(out: &mut Vec<u8>, epoch: u64, first_seq: u64) {
    let mut body = Vec::with_capacity(64);
    protocol::envelope::write_gap(&mut body, epoch, first_seq);
    write_header(out, OP_TEXT, body.len());
    out.extend_from_slice(&body);
}

/// Appends a close frame with `code` and `reason` (truncated to fit 125 bytes).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut r = reason.as_bytes();
    if r.len() > 123 {
        r = &r[..123];
    }
    write_header(out, OP_CLOSE, 2 + r.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(r);
}

/// Appends an empty ping frame.
pub fn write_ping(out: &mut Vec<u8>) {
    write_header(out, OP_PING, 0);
}

/// Appends a pong frame echoing `payload`.
pub fn write_pong(out: &mut Vec<u8>, payload: &[u8]) {
    write_header(out, OP_PONG, payload.len());
    out.extend_from_slice(payload);
}

/// A client frame that broke the rules; the connection is closed with the given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame larger than allowed")]
    TooLarge,
    #[error("protocol error")]
    Protocol,
}

impl FrameError {
    /// Close code to answer with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge => close::TOO_BIG,
            FrameError::Protocol => close::PROTOCOL,
        }
    }
}

/// What one step of [`decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// (Part of) a data frame: ignored, the client has nothing to say to us.
    Data,
    Ping(ControlPayload),
    Pong,
    /// Client's close code, if it gave one.
    Close(Option<u16>),
}

/// An unmasked control-frame payload (at most 125 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct ControlPayload {
    len: u8,
    bytes: [u8; 125],
}

impl ControlPayload {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for ControlPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_slice())
    }
}

/// Decodes the next client frame from `buf`. Returns bytes consumed and what was found;
/// `(0, None)` means more bytes are needed (keep `buf` and retry with more appended).
/// `skip` carries the unread rest of an ignored data frame between calls; a data frame's
/// payload is never buffered.
pub fn decode(
    buf: &[u8],
    skip: &mut u64,
    max_frame: u64,
) -> Result<(usize, Option<Frame>), FrameError> {
    if *skip > 0 {
        let n = (*skip).min(buf.len() as u64);
        *skip -= n;
        return Ok((n as usize, if n > 0 { Some(Frame::Data) } else { None }));
    }
    if buf.len() < 2 {
        return Ok((0, None));
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol);
    }
    let opcode = b0 & 0x0f;
    if b1 & 0x80 == 0 {
        // Client frames must be masked.
        return Err(FrameError::Protocol);
    }
    let len7 = (b1 & 0x7f) as u64;
    let (len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok((0, None));
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok((0, None));
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let l = u64::from_be_bytes(b);
            if l >> 63 != 0 {
                return Err(FrameError::Protocol);
            }
            (l, 10)
        }
        l => (l, 2),
    };
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {
            if len > max_frame {
                return Err(FrameError::TooLarge);
            }
            if buf.len() < pos + 4 {
                return Ok((0, None));
            }
            pos += 4;
            let avail = (buf.len() - pos) as u64;
            let take = avail.min(len);
            *skip = len - take;
            Ok((pos + take as usize, Some(Frame::Data)))
        }
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || len > 125 {
                return Err(FrameError::Protocol);
            }
            let total = pos + 4 + len as usize;
            if buf.len() < total {
                return Ok((0, None));
            }
            let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            let mut p = ControlPayload {
                len: len as u8,
                bytes: [0; 125],
            };
            for i in 0..len as usize {
                p.bytes[i] = buf[pos + i] ^ mask[i & 3];
            }
            let frame = match opcode {
                OP_PING => Frame::Ping(p),
                OP_PONG => Frame::Pong,
                _ => {
                    let s = p.as_slice();
                    if s.len() == 1 {
                        return Err(FrameError::Protocol);
                    }
                    Frame::Close((s.len() >= 2).then(|| u16::from_be_bytes([s[0], s[1]])))
                }
            };
            Ok((total, Some(frame)))
        }
        _ => Err(FrameError::Protocol),
    }
}

#[cfg(test)]
mod tests {
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
        let mut skip = 0;
        let f = masked(OP_PING, b"abc");
        let (n, fr) = decode(&f, &mut skip, 1000).unwrap();
        assert_eq!(n, f.len());
        match fr {
            Some(Frame::Ping(p)) => assert_eq!(p.as_slice(), b"abc"),
            other => panic!("{other:?}"),
        }
        let f = masked(OP_CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']);
        assert_eq!(
            decode(&f, &mut skip, 1000).unwrap(),
            (f.len(), Some(Frame::Close(Some(1000))))
        );
        let f = masked(OP_PONG, b"");
        assert_eq!(
            decode(&f, &mut skip, 1000).unwrap(),
            (f.len(), Some(Frame::Pong))
        );
    }

    #[test]
    fn decodes_incrementally_and_skips_data() {
        let mut stream = masked(OP_TEXT, &vec![b'x'; 1000]);
        stream.extend(masked(OP_PING, b"p"));
        // Feed one byte at a time, keeping what decode did not consume.
        let mut pending: Vec<u8> = Vec::new();
        let mut skip = 0;
        let mut got = Vec::new();
        for b in stream {
            pending.push(b);
            loop {
                let (n, f) = decode(&pending, &mut skip, 65536).unwrap();
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
        let mut skip = 0;
        let big = masked(OP_BINARY, &vec![0; 2000]);
        assert_eq!(decode(&big, &mut skip, 1000), Err(FrameError::TooLarge));
        let mut unmasked = masked(OP_TEXT, b"hi");
        unmasked[1] &= 0x7f;
        assert_eq!(
            decode(&unmasked, &mut skip, 1000),
            Err(FrameError::Protocol)
        );
        let mut rsv = masked(OP_TEXT, b"hi");
        rsv[0] |= 0x40;
        assert_eq!(decode(&rsv, &mut skip, 1000), Err(FrameError::Protocol));
        assert_eq!(
            decode(&masked(0x3, b""), &mut skip, 1000),
            Err(FrameError::Protocol)
        );
        assert_eq!(
            decode(&masked(OP_PING, &[0; 126]), &mut skip, 1000),
            Err(FrameError::Protocol)
        );
        let mut frag_ping = masked(OP_PING, b"");
        frag_ping[0] &= 0x7f;
        assert_eq!(
            decode(&frag_ping, &mut skip, 1000),
            Err(FrameError::Protocol)
        );
        assert_eq!(FrameError::TooLarge.close_code(), 1009);
    }
}
