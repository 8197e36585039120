//! One connection's TLS: rustls drives the handshake; once it is done the traffic secrets
//! move into [`Records`] and rustls' connection (and its buffers) is dropped. Socket I/O
//! goes through here for a TLS connection: reads give plaintext, writes take plaintext.
//!
//! Between events an established session holds only its keys; ciphertext the socket did
//! not take (at most one record), an incomplete record, and plaintext the connection has
//! not read yet are buffers that are freed as soon as they are empty.

use super::records::{self, RecordError, Records, ALERT, APPLICATION_DATA, HANDSHAKE, MAX_PLAIN};
use rustls::{HandshakeKind, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// Why a handshake failed; the `reason` label of the TLS failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Failure {
    /// A plain HTTP request on a TLS port (answered with a plain 400 before the close).
    PlainHttp = 0,
    /// Bytes that are no TLS record at all.
    NotTls = 1,
    /// rustls refused the handshake (bad or truncated messages, no common suite or ALPN,
    /// a client alert such as an unknown certificate authority).
    Refused = 2,
    /// The client went away before the handshake finished.
    Eof = 3,
    /// The handshake did not finish within `--handshake-timeout-secs`.
    Timeout = 4,
    /// A socket error.
    Io = 5,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::PlainHttp,
        Failure::NotTls,
        Failure::Refused,
        Failure::Eof,
        Failure::Timeout,
        Failure::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::PlainHttp => "plain_http",
            Failure::NotTls => "not_tls",
            Failure::Refused => "refused",
            Failure::Eof => "eof",
            Failure::Timeout => "timeout",
            Failure::Io => "io_error",
        }
    }
}

/// Where a handshake stands after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the client (or for the socket to take the server's flight).
    Pending,
    /// Done: the session is established.
    Established {
        resumed: bool,
    },
    Failed(Failure),
}

/// A connection's TLS state. It lives boxed in the connection's `Extra`, so the session
/// is inline (one allocation for an established connection) and the handshake, which is
/// over a kilobyte and short-lived, is boxed.
#[allow(clippy::large_enum_variant)]
pub enum Tls {
    Handshake(Box<Handshake>),
    Open(Session),
    /// A handshake that could not become a session.
    Broken,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tls::Handshake(_) => f.write_str("Tls::Handshake"),
            Tls::Open(s) => f.debug_tuple("Tls::Open").field(&s.records).finish(),
            Tls::Broken => f.write_str("Tls::Broken"),
        }
    }
}

pub struct Handshake {
    conn: ServerConnection,
    /// Bytes of a record not complete yet.
    inp: Vec<u8>,
    seen_bytes: bool,
}

/// An established session.
#[derive(Debug)]
pub struct Session {
    records: Records,
    /// Sealed records the socket did not take yet, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// Ciphertext of records not complete yet.
    inp: Vec<u8>,
    /// Plaintext opened but not read by the connection yet, from `plain_from` on.
    plain: Vec<u8>,
    plain_from: usize,
    /// The client's close_notify (or EOF) was seen.
    eof: bool,
    close_sent: bool,
}

thread_local! {
    /// Records sealed by [`Tls::write`] before they go to the socket.
    static SEALED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest handshake flight buffered from a client (a ClientHello with many extensions is
/// a few KB; certificates from clients are not asked for).
const MAX_HANDSHAKE_INPUT: usize = 64 * 1024;

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Tls {
    pub fn accept(config: Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
        Ok(Tls::Handshake(Box::new(Handshake {
            conn: ServerConnection::new(config)?,
            inp: Vec::new(),
            seen_bytes: false,
        })))
    }

    pub fn is_handshaking(&self) -> bool {
        matches!(self, Tls::Handshake(_))
    }

    /// Sealed bytes the socket has not taken yet.
    pub fn pending(&self) -> usize {
        match self {
            Tls::Open(s) => s.out.len() - s.sent,
            Tls::Handshake(_) | Tls::Broken => 0,
        }
    }

    /// Drives the handshake with what the socket has and writes the server's flight.
    pub fn handshake<S: Read + Write>(&mut self, sock: &mut S, scratch: &mut [u8]) -> Step {
        let Tls::Handshake(hs) = self else {
            return Step::Established { resumed: false };
        };
        let step = hs.advance(sock, scratch);
        if step != Step::Pending || hs.conn.is_handshaking() {
            return step;
        }
        let Tls::Handshake(hs) = std::mem::replace(self, Tls::Broken) else {
            unreachable!("matched above");
        };
        match hs.establish() {
            Ok((session, resumed)) => {
                *self = Tls::Open(session);
                match self.flush(sock) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Step::Failed(Failure::Io),
                }
                Step::Established { resumed }
            }
            Err(_) => Step::Failed(Failure::Refused),
        }
    }

    /// Reads plaintext (an established session only). `Ok(0)` is the end of the stream.
    pub fn read<S: Read>(&mut self, sock: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Tls::Open(s) => s.read(sock, buf),
            Tls::Handshake(_) => Err(would_block()),
            Tls::Broken => Err(invalid("no TLS session")),
        }
    }

    /// Takes up to one record of `data`, sealed, after what is pending has gone out;
    /// `WouldBlock` while the socket still holds back sealed bytes.
    pub fn write<S: Write>(&mut self, sock: &mut S, data: &[u8]) -> io::Result<usize> {
        let s = match self {
            Tls::Open(s) => s,
            Tls::Handshake(_) => return Err(would_block()),
            Tls::Broken => return Err(invalid("no TLS session")),
        };
        s.flush(sock)?;
        let n = data.len().min(MAX_PLAIN);
        // Sealed into the thread's scratch and written from there: only what the socket
        // refuses is copied into the session (no allocation per message).
        SEALED.with_borrow_mut(|sealed| {
            sealed.clear();
            s.records
                .seal(APPLICATION_DATA, &data[..n], sealed)
                .map_err(invalid)?;
            let mut off = 0;
            while off < sealed.len() {
                match sock.write(&sealed[off..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => off += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if off < sealed.len() {
                s.out.extend_from_slice(&sealed[off..]);
            }
            if sealed.capacity() > 4 * MAX_PLAIN {
                *sealed = Vec::new();
            }
            Ok(n)
        })
    }

    /// Writes pending sealed bytes (a handshake's flight too); `WouldBlock` if some stay.
    pub fn flush<S: Write>(&mut self, sock: &mut S) -> io::Result<()> {
        match self {
            Tls::Open(s) => s.flush(sock),
            Tls::Handshake(hs) => {
                while hs.conn.wants_write() {
                    hs.conn.write_tls(sock)?;
                }
                Ok(())
            }
            Tls::Broken => Ok(()),
        }
    }

    /// Queues the close_notify alert (once); the caller flushes.
    pub fn close_notify(&mut self) {
        if let Tls::Open(s) = self {
            if !s.close_sent {
                s.close_sent = true;
                // Level warning (1), description close_notify (0).
                let _ = s.records.seal(ALERT, &[1, 0], &mut s.out);
            }
        }
    }
}

impl Handshake {
    /// Reads what the socket has, feeds whole records to rustls until the handshake is
    /// done (what follows stays for the record layer), writes rustls' output.
    fn advance<S: Read + Write>(&mut self, sock: &mut S, scratch: &mut [u8]) -> Step {
        let mut eof = false;
        loop {
            match sock.read(scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if self.inp.len() + n > MAX_HANDSHAKE_INPUT {
                        return Step::Failed(Failure::Refused);
                    }
                    self.inp.extend_from_slice(&scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Failed(Failure::Io),
            }
        }
        if !self.seen_bytes && !self.inp.is_empty() {
            self.seen_bytes = true;
            if self.inp[0] != HANDSHAKE {
                return Step::Failed(if self.inp[0].is_ascii_uppercase() {
                    Failure::PlainHttp
                } else {
                    Failure::NotTls
                });
            }
        }
        let mut off = 0;
        let mut failed = false;
        while self.conn.is_handshaking() {
            let len = match records::record_len(&self.inp[off..]) {
                Ok(Some(len)) if off + len <= self.inp.len() => len,
                Ok(_) => break,
                Err(_) => return Step::Failed(Failure::Refused),
            };
            let mut rec = &self.inp[off..off + len];
            while !rec.is_empty() {
                if self.conn.read_tls(&mut rec).is_err() {
                    return Step::Failed(Failure::Refused);
                }
            }
            off += len;
            if self.conn.process_new_packets().is_err() {
                failed = true;
                break;
            }
        }
        self.inp.drain(..off);
        // rustls' flight (or its alert, when it refused).
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Step::Failed(Failure::Io),
            }
        }
        if failed {
            Step::Failed(Failure::Refused)
        } else if eof && self.conn.is_handshaking() {
            Step::Failed(Failure::Eof)
        } else {
            Step::Pending
        }
    }

    /// The handshake is done: what rustls still has to send and what it already opened
    /// move over, its secrets become the session's records.
    fn establish(mut self: Box<Self>) -> Result<(Session, bool), RecordError> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out).is_err() {
                return Err(RecordError::Unsupported);
            }
        }
        let mut plain = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
            }
        }
        let resumed = self.conn.handshake_kind() == Some(HandshakeKind::Resumed);
        let version = self
            .conn
            .protocol_version()
            .ok_or(RecordError::Unsupported)?;
        let Handshake { conn, inp, .. } = *self;
        let secrets = conn
            .dangerous_extract_secrets()
            .map_err(|_| RecordError::Unsupported)?;
        let records = Records::new(secrets, version)?;
        Ok((
            Session {
                records,
                out,
                sent: 0,
                inp,
                plain,
                plain_from: 0,
                eof: false,
                close_sent: false,
            },
            resumed,
        ))
    }
}

impl Session {
    fn read<S: Read>(&mut self, sock: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain_from < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_from);
                buf[..n].copy_from_slice(&self.plain[self.plain_from..self.plain_from + n]);
                self.plain_from += n;
                if self.plain_from == self.plain.len() {
                    self.plain = Vec::new();
                    self.plain_from = 0;
                }
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            if let Some(len) = records::record_len(&self.inp).map_err(invalid)? {
                if len <= self.inp.len() {
                    self.open_first(len)?;
                    continue;
                }
            }
            // Read ciphertext into the caller's buffer (plaintext is never longer).
            match sock.read(buf) {
                Ok(0) => {
                    if !self.inp.is_empty() {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.eof = true;
                }
                Ok(n) => self.inp.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens the whole record at the start of `inp`: application data becomes readable
    /// plaintext, close_notify the end of the stream; anything else ends the connection.
    fn open_first(&mut self, len: usize) -> io::Result<()> {
        let (ty, range) = self.records.open(&mut self.inp[..len]).map_err(invalid)?;
        match ty {
            APPLICATION_DATA => {
                if self.plain.is_empty() {
                    self.plain_from = 0;
                }
                self.plain.extend_from_slice(&self.inp[range]);
            }
            ALERT => {
                let alert = &self.inp[range];
                if alert.len() == 2 && alert[1] == 0 {
                    self.eof = true;
                } else {
                    return Err(invalid("TLS alert from the client"));
                }
            }
            // A KeyUpdate or a renegotiation: not handled after the handshake.
            HANDSHAKE => return Err(invalid("TLS handshake message after the handshake")),
            other => return Err(invalid(RecordError::Unexpected(other))),
        }
        if len == self.inp.len() {
            self.inp = Vec::new();
        } else {
            self.inp.drain(..len);
        }
        Ok(())
    }

    fn flush<S: Write>(&mut self, sock: &mut S) -> io::Result<()> {
        while self.sent < self.out.len() {
            match sock.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out = Vec::new();
        self.sent = 0;
        Ok(())
    }
}
