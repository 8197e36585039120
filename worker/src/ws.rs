//! The server side of RFC 6455 that the worker needs: the handshake answer, frame
//! encoding (text, ping, pong, close) and an incremental decoder for client frames that
//! checks fragmentation and UTF-8 without buffering payloads. No I/O.

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
    /// RFC 6455 "Invalid frame payload data": a text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
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
    #[error("a text message (or close reason) is not UTF-8")]
    BadUtf8,
}

impl FrameError {
    /// Close code to answer with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge => close::TOO_BIG,
            FrameError::Protocol => close::PROTOCOL,
            FrameError::BadUtf8 => close::INVALID_DATA,
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

// `ReadState::bits`.
/// Length of the UTF-8 carry (0..=3).
const CARRY_LEN: u8 = 0b11;
/// A message is under way (its first frame came, its final one did not end yet).
const IN_MESSAGE: u8 = 4;
/// That message is text: its payload is checked as UTF-8.
const TEXT: u8 = 8;
/// The frame whose payload is being read is the message's final one.
const FINAL: u8 = 16;

/// What [`decode`] carries between reads of one client (16 bytes): the unread rest of a
/// data frame and its mask, and where a text message stands, so that UTF-8 is checked
/// across frames and reads without buffering payloads (only an incomplete character, at
/// most 3 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadState {
    /// Unread payload bytes of the current data frame.
    skip: u64,
    /// Its masking key, turned to the next payload byte.
    mask: [u8; 4],
    /// The start of a UTF-8 character that the bytes read so far did not complete.
    carry: [u8; 3],
    bits: u8,
}

impl ReadState {
    /// Nothing to carry: no frame or message under way.
    pub fn is_idle(&self) -> bool {
        self.skip == 0 && self.bits & (IN_MESSAGE | CARRY_LEN) == 0
    }

    /// Reads `n` payload bytes of the current data frame from the front of `buf`.
    fn payload(&mut self, buf: &mut [u8]) -> Result<(), FrameError> {
        let n = buf.len();
        if self.bits & TEXT != 0 {
            for (i, b) in buf.iter_mut().enumerate() {
                *b ^= self.mask[i & 3];
            }
            self.utf8(buf)?;
        }
        self.mask.rotate_left(n & 3);
        self.skip -= n as u64;
        if self.skip == 0 && self.bits & FINAL != 0 {
            // The message is over: it must not end inside a character.
            if self.bits & CARRY_LEN != 0 {
                return Err(FrameError::BadUtf8);
            }
            self.bits = 0;
        }
        Ok(())
    }

    /// Checks more of a text message: what completes the carried character, then the rest;
    /// an incomplete character at the end is carried.
    fn utf8(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        let n = (self.bits & CARRY_LEN) as usize;
        if n > 0 {
            let width = match self.carry[0] {
                0xc2..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            let take = (width - n).min(data.len());
            let mut ch = [0u8; 4];
            ch[..n].copy_from_slice(&self.carry[..n]);
            ch[n..n + take].copy_from_slice(&data[..take]);
            self.set_carry(&[]);
            match std::str::from_utf8(&ch[..n + take]) {
                Ok(_) => data = &data[take..],
                Err(e) if e.error_len().is_none() => {
                    self.set_carry(&ch[..n + take]);
                    return Ok(());
                }
                Err(_) => return Err(FrameError::BadUtf8),
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                self.set_carry(&data[e.valid_up_to()..]);
                Ok(())
            }
            Err(_) => Err(FrameError::BadUtf8),
        }
    }

    fn set_carry(&mut self, bytes: &[u8]) {
        self.carry[..bytes.len()].copy_from_slice(bytes);
        self.bits = (self.bits & !CARRY_LEN) | bytes.len() as u8;
    }
}

/// Decodes the next client frame from `buf`. Returns bytes consumed and what was found;
/// `(0, None)` means more bytes are needed (keep `buf` and retry with more appended).
/// `st` carries the unread rest of a data frame and the state of a fragmented message
/// between calls; a data frame's payload is never buffered (a text payload is unmasked in
/// place in `buf` and checked as UTF-8 as it goes).
pub fn decode(
    buf: &mut [u8],
    st: &mut ReadState,
    max_frame: u64,
) -> Result<(usize, Option<Frame>), FrameError> {
    if st.skip > 0 {
        let n = st.skip.min(buf.len() as u64) as usize;
        st.payload(&mut buf[..n])?;
        return Ok((n, (n > 0).then_some(Frame::Data)));
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
            // A continuation needs a message under way; a new message needs none.
            if (opcode == OP_CONT) != (st.bits & IN_MESSAGE != 0) {
                return Err(FrameError::Protocol);
            }
            if len > max_frame {
                return Err(FrameError::TooLarge);
            }
            if buf.len() < pos + 4 {
                return Ok((0, None));
            }
            st.mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            st.bits |= IN_MESSAGE;
            if opcode == OP_TEXT {
                st.bits |= TEXT;
            }
            st.bits &= !FINAL;
            if fin {
                st.bits |= FINAL;
            }
            st.skip = len;
            // Also ends an empty final frame's message.
            let take = len.min((buf.len() - pos) as u64) as usize;
            st.payload(&mut buf[pos..pos + take])?;
            Ok((pos + take, Some(Frame::Data)))
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
                    if s.len() > 2 && std::str::from_utf8(&s[2..]).is_err() {
                        return Err(FrameError::BadUtf8);
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
mod tests;
