//! Where each request on a connection starts and ends, and whether its head may reach
//! hyper: pure (bytes in, decisions out), driven by [`super::guard_io::GuardIo`].
//!
//! Why it exists: hyper 1.x answers a head it cannot parse (a control byte in a header, a
//! bad or duplicate `Content-Length`, a garbage request line, too many headers, a head or
//! target too long) with its own bare 400/431/414 and an empty body, and has no hook for
//! those answers (hyper issue #3225). The contract wants `{"error","message"}` JSON with a
//! fitting status, as the worker gives. So every head is parsed here first, with httparse
//! under the same settings hyper uses (default parser config, 100 headers), plus each
//! check hyper makes after httparse (Content-Length digits and agreement,
//! Transfer-Encoding ending in `chunked` and not in HTTP/1.0, target length and syntax);
//! a head that passes is one hyper accepts too, a head that fails is answered with a
//! [`Rejection`] and the connection is closed.
//!
//! To find the next head on a keep-alive connection, the message's framing is followed:
//! `Content-Length` bytes, or chunks (`httparse::parse_chunk_size`, data, CRLF, trailers
//! up to a blank line). A broken chunk stops the stream there: hyper then sees the body
//! end early and the handler answers 400 JSON, after which hyper closes. After an
//! answered upgrade (101, or 2xx to CONNECT) the bytes are no longer HTTP and pass as
//! they come.
//!
//! Alternatives weighed: hyper's `max_header_size`/`max_headers` limit but still answer
//! bare; a pre-read of only the first head misses every later head of a keep-alive
//! connection; a proxy task in front of hyper costs a task and a copy per connection.

use super::rejection::Rejection;

/// Header lines a head may carry: hyper's own default, so its "too many headers" never
/// fires before this one.
pub const MAX_HEADERS: usize = 100;
/// Longest request target hyper takes (`u16::MAX - 1`); longer is 414 here first.
const MAX_TARGET: usize = 65_534;
/// Longest chunk-size line (size + extensions) followed before the stream is stopped.
const MAX_CHUNK_LINE: usize = 4096;

/// What to do with the bytes at the front of the unread input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes belong to the current message: hand them on.
    Pass(usize),
    /// Nothing can be decided until more bytes arrive.
    More,
    /// The head is refused: answer this and close the connection.
    Refuse(Rejection),
    /// The body's framing is broken: hand nothing more on.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a request head.
    Head,
    /// `left` body bytes of the current message to come.
    Body {
        left: u64,
    },
    Chunked(Chunk),
    /// After an answered upgrade: not HTTP any more.
    Opaque,
    /// Refused or stopped: nothing more passes.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line.
    Size,
    /// `left` bytes of chunk data.
    Data { left: u64 },
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, up to a blank line.
    Trailers,
}

/// One connection's position in its request stream.
#[derive(Debug)]
pub struct HeadGuard {
    state: State,
    max_head: usize,
    /// The last head passed asked for an upgrade; its answer decides what follows.
    upgrade_asked: Option<UpgradeAsk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpgradeAsk {
    Upgrade,
    Connect,
}

impl HeadGuard {
    /// A guard for a new connection; heads may take up to `max_head` bytes.
    pub fn new(max_head: usize) -> Self {
        HeadGuard {
            state: State::Head,
            max_head,
            upgrade_asked: None,
        }
    }

    /// Whether a head is being waited for: how much of it may be buffered is `max_head`.
    pub fn wants_head(&self) -> bool {
        self.state == State::Head
    }

    /// Body bytes of the current message that may be read straight through, if its length
    /// is known.
    pub fn body_left(&self) -> Option<u64> {
        match self.state {
            State::Body { left } => Some(left),
            _ => None,
        }
    }

    /// Whether the stream is past an answered upgrade.
    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Whether an upgrade's answer is still to be seen (see [`Self::answered`]).
    pub fn awaits_answer(&self) -> bool {
        self.upgrade_asked.is_some()
    }

    /// The start of the server's next answer (`HTTP/1.1 101 ...`): after an upgrade
    /// request, a 101 (or 2xx to CONNECT) makes the rest opaque; any other final answer
    /// means HTTP goes on. An interim answer (`100 Continue`) decides nothing.
    pub fn answered(&mut self, head: &[u8]) {
        let Some(asked) = self.upgrade_asked else {
            return;
        };
        let Some(code) = head.get(9..12) else {
            return;
        };
        match (code, asked) {
            (b"101", _) => {}
            (c, UpgradeAsk::Connect) if c[0] == b'2' => {}
            (c, _) if c[0] == b'1' => return,
            _ => {
                self.upgrade_asked = None;
                return;
            }
        }
        self.upgrade_asked = None;
        self.state = State::Opaque;
    }

    /// Passed `n` bytes of body (read straight through, not via [`Self::step`]).
    pub fn consumed_body(&mut self, n: usize) {
        if let State::Body { left } = &mut self.state {
            *left -= n as u64;
            if *left == 0 {
                self.state = State::Head;
            }
        }
    }

    /// What to do with `buf`, the input not yet handed on (its start is where the stream
    /// stands).
    pub fn step(&mut self, buf: &[u8]) -> Step {
        match self.state {
            State::Done => Step::Stop,
            State::Opaque => pass_all(buf),
            State::Head => self.head(buf),
            State::Body { left } => {
                if buf.is_empty() {
                    return Step::More;
                }
                let n = (buf.len() as u64).min(left) as usize;
                self.consumed_body(n);
                Step::Pass(n)
            }
            State::Chunked(c) => self.chunk(c, buf),
        }
    }

    fn refuse(&mut self, r: Rejection) -> Step {
        self.state = State::Done;
        Step::Refuse(r)
    }

    fn stop(&mut self) -> Step {
        self.state = State::Done;
        Step::Stop
    }

    fn head(&mut self, buf: &[u8]) -> Step {
        // ~240 ns for a typical publish head (release build): 0.2 % of a single publish's
        // CPU per delivery as recorded (100-121 us).
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() < self.max_head {
                    return Step::More;
                }
                // It cannot fit any more: no line end yet means the request line itself
                // (its target) is what is too long.
                let r = if buf.contains(&b'\n') {
                    Rejection::HeadTooLarge {
                        limit: self.max_head,
                    }
                } else {
                    Rejection::UriTooLong {
                        limit: self.max_head,
                    }
                };
                return self.refuse(r);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return self.refuse(Rejection::TooManyHeaders { max: MAX_HEADERS });
            }
            Err(e) => return self.refuse(Rejection::Malformed(e.to_string())),
        };
        let target = req.path.unwrap_or("");
        if target.len() > MAX_TARGET.min(self.max_head) {
            let limit = MAX_TARGET.min(self.max_head);
            return self.refuse(Rejection::UriTooLong { limit });
        }
        if len > self.max_head {
            return self.refuse(Rejection::HeadTooLarge {
                limit: self.max_head,
            });
        }
        if !valid_target(target) {
            return self.refuse(Rejection::Malformed("invalid request target".to_string()));
        }
        let http11 = req.version == Some(1);
        let framing = match framing(req.headers, http11) {
            Ok(f) => f,
            Err(why) => return self.refuse(Rejection::Malformed(why.to_string())),
        };
        let method = req.method.unwrap_or("");
        self.upgrade_asked = if method == "CONNECT" {
            Some(UpgradeAsk::Connect)
        } else if http11
            && req
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
        {
            Some(UpgradeAsk::Upgrade)
        } else {
            None
        };
        self.state = match framing {
            Framing::Length(0) => State::Head,
            Framing::Length(left) => State::Body { left },
            Framing::Chunked => State::Chunked(Chunk::Size),
        };
        Step::Pass(len)
    }

    fn chunk(&mut self, c: Chunk, buf: &[u8]) -> Step {
        if buf.is_empty() {
            return Step::More;
        }
        match c {
            Chunk::Size => {
                // httparse takes an empty size line as 0; hyper does not: stop there.
                if !buf[0].is_ascii_hexdigit() {
                    return self.stop();
                }
                match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        self.state = State::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data { left: size }
                        });
                        Step::Pass(n)
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => Step::More,
                    _ => self.stop(),
                }
            }
            Chunk::Data { left } => {
                let n = (buf.len() as u64).min(left);
                self.state = State::Chunked(if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data { left: left - n }
                });
                Step::Pass(n as usize)
            }
            Chunk::DataEnd => match buf {
                [b'\r', b'\n', ..] => {
                    self.state = State::Chunked(Chunk::Size);
                    Step::Pass(2)
                }
                [b'\r'] => Step::More,
                _ => self.stop(),
            },
            Chunk::Trailers => {
                // A blank line ends them; otherwise the first CRLF CRLF does.
                let end = if buf.starts_with(b"\r\n") {
                    Some(2)
                } else if buf.len() == 1 && buf[0] == b'\r' {
                    return Step::More;
                } else {
                    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
                };
                match end {
                    Some(n) => {
                        self.state = State::Head;
                        Step::Pass(n)
                    }
                    None if buf.len() < self.max_head => Step::More,
                    None => self.stop(),
                }
            }
        }
    }
}

fn pass_all(buf: &[u8]) -> Step {
    if buf.is_empty() {
        Step::More
    } else {
        Step::Pass(buf.len())
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// The body framing of a head, with hyper's rules and in its order: `Transfer-Encoding`
/// (HTTP/1.1 only, `chunked` last) wins over `Content-Length` (digits only; repeated,
/// the same value), a `Content-Length` seen before it is still checked.
fn framing(headers: &[httparse::Header<'_>], http11: bool) -> Result<Framing, &'static str> {
    let (mut te, mut chunked, mut length) = (false, false, None);
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err("Transfer-Encoding in an HTTP/1.0 request");
            }
            te = true;
            chunked = std::str::from_utf8(h.value).is_ok_and(|v| {
                v.rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            });
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if te {
                continue;
            }
            // hyper's DecodedLength reserves the two highest values.
            let n = digits(h.value)
                .filter(|&n| n <= u64::MAX - 2)
                .ok_or("invalid Content-Length")?;
            match length {
                Some(prev) if prev != n => return Err("conflicting Content-Length headers"),
                _ => length = Some(n),
            }
        }
    }
    match (te, chunked) {
        (true, false) => Err("Transfer-Encoding must end in chunked"),
        (true, true) => Ok(Framing::Chunked),
        (false, _) => Ok(Framing::Length(length.unwrap_or(0))),
    }
}

/// A decimal number with no sign, no space and no other character (as hyper reads it).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Whether hyper takes `target` as a URI. The usual origin form (`/path?query` of RFC 3986
/// characters) is checked here without an allocation; anything else is handed to the very
/// parser hyper uses (httparse lets through characters such as `<` `>` `` ` `` and
/// authority forms that `http::Uri` refuses).
fn valid_target(target: &str) -> bool {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
    if target.starts_with('/') && target.bytes().all(plain) {
        return true;
    }
    hyper::Uri::try_from(target).is_ok()
}

#[cfg(test)]
mod tests;
