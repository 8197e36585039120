//! The gateway<->worker link: one TCP connection per worker, opened by the worker with an
//! HTTP/1.1 upgrade (`GET /v1/link`, `Upgrade: pushgate-link/1`) on the gateway's port, then
//! a stream of binary frames both ways.
//!
//! Frame: `u32` big-endian length of what follows, one kind byte, then the fields in order.
//! Integers are big-endian `u64`; strings and byte strings are a `u32` length and the bytes;
//! an `Option<u64>` is one flag byte then the value when the flag is 1.
//!
//! Hand-written rather than serde-generated so that decoding a delivery slices its payload
//! out of the read buffer (`Bytes::slice`, no copy, no allocation per message) and encoding
//! appends many frames into one reused buffer (one `write` per batch).
//!
//! Worker -> gateway: [`Up`]. Gateway -> worker: [`Down`].

use bytes::{Buf, Bytes, BytesMut};

/// Path of the upgrade request that opens a link.
pub const LINK_PATH: &str = "/v1/link";
/// `Upgrade:` token of the link protocol. The version changes with the frame layout, so a
/// worker and a gateway from different releases refuse each other with a clear status
/// instead of misreading frames.
pub const LINK_UPGRADE: &str = "pushgate-link/2";
/// The request a worker sends to open a link: `host` as it goes in the `Host` header
/// (`ip:port`, an IPv6 address in brackets), `link_key` as a bearer token when set.
pub fn upgrade_request(host: &str, link_key: Option<&str>) -> String {
    let auth = match link_key {
        Some(key) => format!("Authorization: Bearer {key}\r\n"),
        None => String::new(),
    };
    format!(
        "GET {LINK_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {LINK_UPGRADE}\r\n{auth}\r\n"
    )
}

/// Whether an `Upgrade:` header value (a comma-separated list) names this link protocol.
pub fn wants_link_upgrade(upgrade: &str) -> bool {
    upgrade
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case(LINK_UPGRADE))
}

/// Length of the response head at the start of `buf` (through the blank line), once whole.
pub fn response_head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Checks the gateway's answer to [`upgrade_request`]: `Ok` for `101`, else its status line.
pub fn check_upgrade_response(head: &[u8]) -> Result<(), String> {
    if head.starts_with(b"HTTP/1.1 101") {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    Err(String::from_utf8_lossy(line).into_owned())
}

/// Largest frame either side accepts (a backlog of retained messages is one frame).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Errors decoding a frame; any of them ends the link.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("frame ends early")]
    Truncated,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("string is not UTF-8")]
    BadUtf8,
}

/// Kick reason bytes this build does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown kick reason {0}")]
pub struct UnknownKickReason(pub u8);

/// The worker introduces itself (first frame on a link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Stable worker id (`--id`).
    pub id: String,
    /// Random per worker process, the same on every link: gateways that share a store name
    /// this process the same way in its directory.
    pub incarnation: u64,
    /// Bound client addresses as `ip:port`, as clients should dial them.
    pub addrs: Vec<String>,
    /// Most connections the worker accepts (`--capacity`).
    pub capacity: u64,
    /// Connections open now.
    pub connections: u64,
    /// Bound TLS client addresses (`--listen-tls`) as `host:port`: clients dial them with
    /// `wss://` / `https://`. Sent after a byte that older decoders read as "secure".
    pub tls_addrs: Vec<String>,
    /// The worker takes [`Down::TicketKeys`] (a gateway sends them to no other worker).
    pub wants_ticket_keys: bool,
}

/// One TLS session-ticket key as the gateways hand it to workers. Its `Debug` shows the id
/// only: keys are never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    /// Written in front of every ticket sealed with this key, so a worker finds the key.
    pub id: [u8; 4],
    /// AES-256-GCM key.
    pub key: [u8; 32],
    /// Whether new tickets are sealed with it (exactly one key of a set does); the others
    /// only open tickets.
    pub encrypt: bool,
    /// Seconds until the worker must forget the key, counted from when it got the set (the
    /// key is erased on time even if no newer set arrives).
    pub expires_in_secs: u32,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("id", &format_args!("{:02x?}", self.id))
            .field("encrypt", &self.encrypt)
            .field("expires_in_secs", &self.expires_in_secs)
            .finish_non_exhaustive()
    }
}

impl Drop for TicketKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Frames a worker sends to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Up {
    Hello(Hello),
    /// Heartbeat with the current load; sent every second.
    Load {
        connections: u64,
    },
    /// A client connection wants `channel`'s messages with `seq > since` (live only when
    /// `since` is `None`). `epoch` is the epoch the client last saw, when it told us.
    /// `sub_id` is the worker's handle for the connection; every `Down` for it carries it.
    /// `resume`: the worker re-sends this for a connection it already held when its link
    /// came back; a newer holder of the channel then keeps it (the resumer is kicked).
    /// `max_bytes`: most payload bytes the answering `Backlog` may carry (at least one
    /// message is always sent); the rest is asked for with `Fetch` as the client drains.
    /// `opened_us`: when the client asked, in µs since the Unix epoch by the worker's clock
    /// (0: not known, e.g. a `resume`, or a worker that predates the field). A subscribe
    /// that lands after the channel's live holder although it was asked before (another
    /// link was faster) does not take the channel. Trailing and optional on the wire.
    Subscribe {
        sub_id: u64,
        since: Option<u64>,
        epoch: Option<u64>,
        resume: bool,
        max_bytes: u32,
        channel: String,
        opened_us: u64,
    },
    /// Retained messages of `channel` after `since` (the last seq the connection sent, in
    /// `epoch`), at most `max_bytes` of payload: the next page of a resume, or the messages
    /// of a hole. Answered with a `Backlog`; the directory is not touched.
    Fetch {
        sub_id: u64,
        since: u64,
        epoch: Option<u64>,
        max_bytes: u32,
        channel: String,
    },
    /// The connection behind `sub_id` is gone (or its long-poll was answered).
    Unsubscribe {
        sub_id: u64,
        channel: String,
    },
}

/// Why the gateway tells a worker to drop a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KickReason {
    /// A newer connection took the channel (one client per channel).
    Replaced = 1,
    /// The gateway could not keep the subscription (e.g. its state was reset); the client
    /// should reconnect with `since`.
    Resync = 2,
    /// The gateway refused the subscription (store full, bad channel): the client gets an
    /// error, not an invitation to reconnect at once.
    Refused = 3,
}

impl TryFrom<u8> for KickReason {
    type Error = UnknownKickReason;

    fn try_from(b: u8) -> Result<Self, Self::Error> {
        match b {
            1 => Ok(KickReason::Replaced),
            2 => Ok(KickReason::Resync),
            3 => Ok(KickReason::Refused),
            other => Err(UnknownKickReason(other)),
        }
    }
}

/// Frames the gateway sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// Answer to `Hello`.
    Welcome { gateway_id: String },
    /// Answer to `Subscribe` and `Fetch`: what is retained after `since`, in order, at most
    /// the asked-for bytes (the oldest first; `last_seq` tells whether more exists), and
    /// whether the resume could not be served whole (`gap_first_seq`: the first seq that
    /// follows). After the first one, the subscription is live: `Deliver` frames follow.
    Backlog {
        sub_id: u64,
        epoch: u64,
        last_seq: u64,
        gap_first_seq: Option<u64>,
        messages: Vec<(u64, Bytes)>,
    },
    /// One live message of the channel's log `epoch`; `data` is the rendered JSON of the
    /// `data` field. The worker orders by (epoch, seq): the link's order is not relied on.
    /// `published_us`: when a gateway accepted the publish, in µs since the Unix epoch (0:
    /// not known; trailing and optional on the wire), for the publish -> deliver latency.
    Deliver {
        sub_id: u64,
        epoch: u64,
        seq: u64,
        data: Bytes,
        published_us: u64,
    },
    /// Drop the subscriber behind `sub_id` (its close reason given by `reason`).
    Kick { sub_id: u64, reason: KickReason },
    /// The fleet's TLS session-ticket keys, replacing any set this link sent before: sent
    /// after `Welcome` and at every rotation, only to workers that asked for them, over a
    /// link that is TLS or on loopback. `lifetime_secs` is the ticket lifetime to announce.
    TicketKeys {
        lifetime_secs: u32,
        keys: Vec<TicketKey>,
    },
    /// The store lost every directory entry (a Redis that restarted empty): subscribe every
    /// connection again, with `resume` and the position it reached, as after a link came
    /// back. Clients stay connected; their next frame is a gap if their history is gone.
    ResubscribeAll,
}

const UP_HELLO: u8 = 1;
const UP_LOAD: u8 = 2;
const UP_SUBSCRIBE: u8 = 3;
const UP_UNSUBSCRIBE: u8 = 4;
const UP_FETCH: u8 = 5;
const DOWN_WELCOME: u8 = 10;
const DOWN_BACKLOG: u8 = 11;
const DOWN_DELIVER: u8 = 12;
const DOWN_KICK: u8 = 13;
const DOWN_RESUBSCRIBE_ALL: u8 = 14;
const DOWN_TICKET_KEYS: u8 = 15;
/// Most keys one `TicketKeys` frame may carry.
pub const MAX_TICKET_KEYS: usize = 16;

impl Up {
    /// Appends this frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = begin(out);
        match self {
            Up::Hello(h) => {
                out.push(UP_HELLO);
                put_str(out, &h.id);
                put_u64(out, h.incarnation);
                out.extend_from_slice(&(h.addrs.len() as u32).to_be_bytes());
                for a in &h.addrs {
                    put_str(out, a);
                }
                put_u64(out, h.capacity);
                put_u64(out, h.connections);
                out.push(u8::from(!h.tls_addrs.is_empty()));
                out.extend_from_slice(&(h.tls_addrs.len() as u32).to_be_bytes());
                for a in &h.tls_addrs {
                    put_str(out, a);
                }
                out.push(u8::from(h.wants_ticket_keys));
            }
            Up::Load { connections } => {
                out.push(UP_LOAD);
                put_u64(out, *connections);
            }
            Up::Subscribe {
                sub_id,
                since,
                epoch,
                resume,
                max_bytes,
                channel,
                opened_us,
            } => {
                out.push(UP_SUBSCRIBE);
                put_u64(out, *sub_id);
                put_opt(out, *since);
                put_opt(out, *epoch);
                out.push(*resume as u8);
                out.extend_from_slice(&max_bytes.to_be_bytes());
                put_str(out, channel);
                put_u64(out, *opened_us);
            }
            Up::Fetch {
                sub_id,
                since,
                epoch,
                max_bytes,
                channel,
            } => {
                out.push(UP_FETCH);
                put_u64(out, *sub_id);
                put_u64(out, *since);
                put_opt(out, *epoch);
                out.extend_from_slice(&max_bytes.to_be_bytes());
                put_str(out, channel);
            }
            Up::Unsubscribe { sub_id, channel } => {
                out.push(UP_UNSUBSCRIBE);
                put_u64(out, *sub_id);
                put_str(out, channel);
            }
        }
        finish(out, start);
    }

    /// Decodes one frame body as returned by [`split_frame`].
    pub fn decode(mut f: Bytes) -> Result<Up, LinkError> {
        let kind = get_u8(&mut f)?;
        Ok(match kind {
            UP_HELLO => {
                let id = get_string(&mut f)?;
                let incarnation = get_u64(&mut f)?;
                let n = get_u32(&mut f)? as usize;
                let mut addrs = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    addrs.push(get_string(&mut f)?);
                }
                let capacity = get_u64(&mut f)?;
                let connections = get_u64(&mut f)?;
                let _secure = get_u8(&mut f)?;
                // A Hello from a build before TLS listeners ends here.
                let mut tls_addrs = Vec::new();
                if !f.is_empty() {
                    let n = get_u32(&mut f)? as usize;
                    tls_addrs.reserve(n.min(1024));
                    for _ in 0..n {
                        tls_addrs.push(get_string(&mut f)?);
                    }
                }
                // ... and one from before fleet ticket keys here.
                let wants_ticket_keys = !f.is_empty() && get_u8(&mut f)? != 0;
                Up::Hello(Hello {
                    id,
                    incarnation,
                    addrs,
                    capacity,
                    connections,
                    tls_addrs,
                    wants_ticket_keys,
                })
            }
            UP_LOAD => Up::Load {
                connections: get_u64(&mut f)?,
            },
            UP_SUBSCRIBE => Up::Subscribe {
                sub_id: get_u64(&mut f)?,
                since: get_opt(&mut f)?,
                epoch: get_opt(&mut f)?,
                resume: get_u8(&mut f)? != 0,
                max_bytes: get_u32(&mut f)?,
                channel: get_string(&mut f)?,
                opened_us: if f.len() >= 8 { get_u64(&mut f)? } else { 0 },
            },
            UP_FETCH => Up::Fetch {
                sub_id: get_u64(&mut f)?,
                since: get_u64(&mut f)?,
                epoch: get_opt(&mut f)?,
                max_bytes: get_u32(&mut f)?,
                channel: get_string(&mut f)?,
            },
            UP_UNSUBSCRIBE => Up::Unsubscribe {
                sub_id: get_u64(&mut f)?,
                channel: get_string(&mut f)?,
            },
            k => return Err(LinkError::UnknownKind(k)),
        })
    }
}

impl Down {
    /// The subscription a frame is for (`None` for `Welcome`).
    pub fn sub_id(&self) -> Option<u64> {
        match self {
            Down::Backlog { sub_id, .. }
            | Down::Deliver { sub_id, .. }
            | Down::Kick { sub_id, .. } => Some(*sub_id),
            Down::Welcome { .. } | Down::ResubscribeAll | Down::TicketKeys { .. } => None,
        }
    }

    /// Appends this frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Down::Deliver {
                sub_id,
                epoch,
                seq,
                data,
                published_us,
            } => encode_deliver(out, *sub_id, *epoch, *seq, data, *published_us),
            Down::Welcome { gateway_id } => {
                let start = begin(out);
                out.push(DOWN_WELCOME);
                put_str(out, gateway_id);
                finish(out, start);
            }
            Down::Backlog {
                sub_id,
                epoch,
                last_seq,
                gap_first_seq,
                messages,
            } => {
                let start = begin(out);
                out.push(DOWN_BACKLOG);
                put_u64(out, *sub_id);
                put_u64(out, *epoch);
                put_u64(out, *last_seq);
                put_opt(out, *gap_first_seq);
                out.extend_from_slice(&(messages.len() as u32).to_be_bytes());
                for (seq, data) in messages {
                    put_u64(out, *seq);
                    put_bytes(out, data);
                }
                finish(out, start);
            }
            Down::Kick { sub_id, reason } => {
                let start = begin(out);
                out.push(DOWN_KICK);
                put_u64(out, *sub_id);
                out.push(*reason as u8);
                finish(out, start);
            }
            Down::ResubscribeAll => {
                let start = begin(out);
                out.push(DOWN_RESUBSCRIBE_ALL);
                finish(out, start);
            }
            Down::TicketKeys {
                lifetime_secs,
                keys,
            } => {
                let start = begin(out);
                out.push(DOWN_TICKET_KEYS);
                out.extend_from_slice(&lifetime_secs.to_be_bytes());
                out.push(keys.len().min(MAX_TICKET_KEYS) as u8);
                for k in keys.iter().take(MAX_TICKET_KEYS) {
                    out.extend_from_slice(&k.id);
                    out.extend_from_slice(&k.key);
                    out.push(u8::from(k.encrypt));
                    out.extend_from_slice(&k.expires_in_secs.to_be_bytes());
                }
                finish(out, start);
            }
        }
    }

    /// Decodes one frame body as returned by [`split_frame`]; payloads are slices of `f`.
    pub fn decode(mut f: Bytes) -> Result<Down, LinkError> {
        let kind = get_u8(&mut f)?;
        Ok(match kind {
            DOWN_WELCOME => Down::Welcome {
                gateway_id: get_string(&mut f)?,
            },
            DOWN_BACKLOG => {
                let sub_id = get_u64(&mut f)?;
                let epoch = get_u64(&mut f)?;
                let last_seq = get_u64(&mut f)?;
                let gap_first_seq = get_opt(&mut f)?;
                let n = get_u32(&mut f)? as usize;
                let mut messages = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let seq = get_u64(&mut f)?;
                    messages.push((seq, get_bytes(&mut f)?));
                }
                Down::Backlog {
                    sub_id,
                    epoch,
                    last_seq,
                    gap_first_seq,
                    messages,
                }
            }
            DOWN_DELIVER => {
                let sub_id = get_u64(&mut f)?;
                let epoch = get_u64(&mut f)?;
                let seq = get_u64(&mut f)?;
                let data = get_bytes(&mut f)?;
                // Trailing and optional: a gateway that does not stamp sends none.
                let published_us = if f.len() >= 8 { get_u64(&mut f)? } else { 0 };
                Down::Deliver {
                    sub_id,
                    epoch,
                    seq,
                    data,
                    published_us,
                }
            }
            DOWN_KICK => {
                let sub_id = get_u64(&mut f)?;
                // A reason from a newer gateway: the safe default is to reconnect.
                let reason = KickReason::try_from(get_u8(&mut f)?).unwrap_or(KickReason::Resync);
                Down::Kick { sub_id, reason }
            }
            DOWN_RESUBSCRIBE_ALL => Down::ResubscribeAll,
            DOWN_TICKET_KEYS => {
                let lifetime_secs = get_u32(&mut f)?;
                let n = get_u8(&mut f)? as usize;
                if n > MAX_TICKET_KEYS {
                    return Err(LinkError::Truncated);
                }
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    if f.len() < 4 + 32 + 1 + 4 {
                        return Err(LinkError::Truncated);
                    }
                    let mut id = [0u8; 4];
                    id.copy_from_slice(&f.split_to(4));
                    let mut key = [0u8; 32];
                    key.copy_from_slice(&f.split_to(32));
                    let encrypt = get_u8(&mut f)? != 0;
                    let expires_in_secs = get_u32(&mut f)?;
                    keys.push(TicketKey {
                        id,
                        key,
                        encrypt,
                        expires_in_secs,
                    });
                }
                Down::TicketKeys {
                    lifetime_secs,
                    keys,
                }
            }
            k => return Err(LinkError::UnknownKind(k)),
        })
    }
}

/// Appends a `Deliver` frame without building a [`Down`] (the hot path).
pub fn encode_deliver(
    out: &mut Vec<u8>,
    sub_id: u64,
    epoch: u64,
    seq: u64,
    data: &[u8],
    published_us: u64,
) {
    let start = begin(out);
    out.push(DOWN_DELIVER);
    put_u64(out, sub_id);
    put_u64(out, epoch);
    put_u64(out, seq);
    put_bytes(out, data);
    put_u64(out, published_us);
    finish(out, start);
}

/// Takes one complete frame body (kind byte onwards) off the front of `buf`, if `buf`
/// holds one. The body shares `buf`'s memory.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, LinkError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
        None => out.push(0),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn get_u8(f: &mut Bytes) -> Result<u8, LinkError> {
    if f.remaining() < 1 {
        return Err(LinkError::Truncated);
    }
    Ok(f.get_u8())
}

fn get_u32(f: &mut Bytes) -> Result<u32, LinkError> {
    if f.remaining() < 4 {
        return Err(LinkError::Truncated);
    }
    Ok(f.get_u32())
}

fn get_u64(f: &mut Bytes) -> Result<u64, LinkError> {
    if f.remaining() < 8 {
        return Err(LinkError::Truncated);
    }
    Ok(f.get_u64())
}

fn get_opt(f: &mut Bytes) -> Result<Option<u64>, LinkError> {
    match get_u8(f)? {
        0 => Ok(None),
        _ => Ok(Some(get_u64(f)?)),
    }
}

fn get_bytes(f: &mut Bytes) -> Result<Bytes, LinkError> {
    let len = get_u32(f)? as usize;
    if f.remaining() < len {
        return Err(LinkError::Truncated);
    }
    Ok(f.split_to(len))
}

fn get_string(f: &mut Bytes) -> Result<String, LinkError> {
    let b = get_bytes(f)?;
    String::from_utf8(b.to_vec()).map_err(|_| LinkError::BadUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_up(m: Up) {
        let mut out = Vec::new();
        m.encode(&mut out);
        let mut buf = BytesMut::from(&out[..]);
        let body = split_frame(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(Up::decode(body).unwrap(), m);
    }

    fn roundtrip_down(m: Down) {
        let mut out = Vec::new();
        m.encode(&mut out);
        let mut buf = BytesMut::from(&out[..]);
        let body = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(Down::decode(body).unwrap(), m);
    }

    #[test]
    fn a_hello_without_tls_addresses_still_decodes() {
        // As a build before TLS listeners wrote it: the "secure" byte ends the frame.
        let h = Hello {
            id: "old".into(),
            incarnation: 9,
            addrs: vec!["127.0.0.2:9000".into()],
            capacity: 5,
            connections: 1,
            tls_addrs: vec![],
            wants_ticket_keys: false,
        };
        let mut out = Vec::new();
        Up::Hello(h.clone()).encode(&mut out);
        out.truncate(out.len() - 5); // drop the (empty) TLS list and the ticket-key flag
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        let mut buf = BytesMut::from(&out[..]);
        let body = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(Up::decode(body).unwrap(), Up::Hello(h));
    }

    #[test]
    fn every_frame_roundtrips() {
        roundtrip_up(Up::Hello(Hello {
            id: "w1".into(),
            incarnation: 0xfeed,
            addrs: vec!["127.0.0.2:9000".into(), "127.0.0.3:9000".into()],
            capacity: 1_000_000,
            connections: 7,
            tls_addrs: vec![],
            wants_ticket_keys: false,
        }));
        roundtrip_up(Up::Hello(Hello {
            id: "w2".into(),
            incarnation: 3,
            addrs: vec![],
            capacity: 10,
            connections: 0,
            tls_addrs: vec!["push.example:443".into()],
            wants_ticket_keys: false,
        }));
        roundtrip_up(Up::Load { connections: 3 });
        roundtrip_up(Up::Subscribe {
            sub_id: u64::MAX,
            since: Some(5),
            epoch: None,
            resume: true,
            max_bytes: 256 * 1024,
            channel: "c:1".into(),
            opened_us: 0,
        });
        roundtrip_up(Up::Subscribe {
            sub_id: 7,
            since: None,
            epoch: Some(2),
            resume: false,
            max_bytes: 1,
            channel: "c:2".into(),
            opened_us: 1_780_000_000_654_321,
        });
        roundtrip_up(Up::Fetch {
            sub_id: 4,
            since: 17,
            epoch: Some(3),
            max_bytes: 1,
            channel: "c:1".into(),
        });
        roundtrip_up(Up::Unsubscribe {
            sub_id: 1,
            channel: "c".into(),
        });
        roundtrip_down(Down::Welcome {
            gateway_id: "g".into(),
        });
        roundtrip_down(Down::Backlog {
            sub_id: 9,
            epoch: 77,
            last_seq: 12,
            gap_first_seq: Some(3),
            messages: vec![
                (3, Bytes::from_static(b"1")),
                (4, Bytes::from_static(b"\"x\"")),
            ],
        });
        roundtrip_down(Down::Deliver {
            sub_id: 9,
            epoch: 77,
            seq: 13,
            data: Bytes::from_static(b"{}"),
            published_us: 1_780_000_000_123_456,
        });
        for reason in [
            KickReason::Replaced,
            KickReason::Resync,
            KickReason::Refused,
        ] {
            roundtrip_down(Down::Kick { sub_id: 2, reason });
            assert_eq!(KickReason::try_from(reason as u8), Ok(reason));
        }
        roundtrip_down(Down::ResubscribeAll);
        roundtrip_down(Down::TicketKeys {
            lifetime_secs: 7200,
            keys: vec![],
        });
        roundtrip_down(Down::TicketKeys {
            lifetime_secs: 1,
            keys: (0..3u8)
                .map(|i| TicketKey {
                    id: [i, 1, 2, 3],
                    key: [i + 7; 32],
                    encrypt: i == 1,
                    expires_in_secs: 3600 * u32::from(i),
                })
                .collect(),
        });
        roundtrip_up(Up::Hello(Hello {
            id: "w3".into(),
            incarnation: 3,
            addrs: vec![],
            capacity: 10,
            connections: 0,
            tls_addrs: vec![],
            wants_ticket_keys: true,
        }));
    }

    #[test]
    fn ticket_keys_are_bounded_and_never_shown() {
        let k = TicketKey {
            id: [0xab, 0, 0, 1],
            key: [0x5a; 32],
            encrypt: true,
            expires_in_secs: 9,
        };
        let shown = format!("{k:?}");
        assert!(shown.contains("ab") && !shown.contains("5a"), "{shown}");
        // A count above the bound is refused, not allocated.
        let mut out = Vec::new();
        Down::TicketKeys {
            lifetime_secs: 1,
            keys: vec![],
        }
        .encode(&mut out);
        *out.last_mut().unwrap() = (MAX_TICKET_KEYS + 1) as u8;
        let mut buf = BytesMut::from(&out[..]);
        let body = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(Down::decode(body), Err(LinkError::Truncated));
    }

    #[test]
    fn unknown_kick_reasons_mean_resync() {
        assert_eq!(KickReason::try_from(0), Err(UnknownKickReason(0)));
        let mut out = Vec::new();
        Down::Kick {
            sub_id: 5,
            reason: KickReason::Refused,
        }
        .encode(&mut out);
        *out.last_mut().unwrap() = 200;
        let mut buf = BytesMut::from(&out[..]);
        let body = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            Down::decode(body).unwrap(),
            Down::Kick {
                sub_id: 5,
                reason: KickReason::Resync
            }
        );
    }

    #[test]
    fn sub_id_of_every_frame() {
        let d = Down::Deliver {
            sub_id: 7,
            epoch: 1,
            seq: 1,
            data: Bytes::new(),
            published_us: 0,
        };
        assert_eq!(d.sub_id(), Some(7));
        assert_eq!(
            Down::Welcome {
                gateway_id: "g".into()
            }
            .sub_id(),
            None
        );
    }

    #[test]
    fn upgrade_handshake() {
        let req = upgrade_request("[::1]:80", Some("k"));
        assert!(
            req.starts_with("GET /v1/link HTTP/1.1\r\nHost: [::1]:80\r\n"),
            "{req}"
        );
        assert!(req.contains("Upgrade: pushgate-link/2\r\n"));
        assert!(req.contains("Authorization: Bearer k\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
        assert!(!upgrade_request("h:1", None).contains("Authorization"));
        assert!(wants_link_upgrade("foo, PUSHGATE-LINK/2"));
        assert!(!wants_link_upgrade("pushgate-link/1"));
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: pushgate-link/2\r\n\r\nrest";
        assert_eq!(response_head_len(ok), Some(ok.len() - 4));
        assert_eq!(check_upgrade_response(ok), Ok(()));
        assert_eq!(
            check_upgrade_response(b"HTTP/1.1 401 Unauthorized\r\n\r\n"),
            Err("HTTP/1.1 401 Unauthorized".to_string())
        );
        assert_eq!(response_head_len(b"HTTP/1.1 101\r\n"), None);
    }

    #[test]
    fn frames_split_across_reads() {
        let mut out = Vec::new();
        encode_deliver(&mut out, 1, 9, 2, b"hello", 0);
        encode_deliver(&mut out, 1, 9, 3, b"world", 7);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in out {
            buf.extend_from_slice(&[byte]);
            while let Some(body) = split_frame(&mut buf).unwrap() {
                got.push(Down::decode(body).unwrap());
            }
        }
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[1], Down::Deliver { seq: 3, data, .. } if &data[..] == b"world"));
    }

    #[test]
    fn a_deliver_without_its_stamp_decodes_as_unstamped() {
        // The frame an older gateway sends: no trailing `published_us`.
        let mut body = vec![DOWN_DELIVER];
        put_u64(&mut body, 5);
        put_u64(&mut body, 2);
        put_u64(&mut body, 9);
        put_bytes(&mut body, b"\"x\"");
        assert_eq!(
            Down::decode(Bytes::from(body)).unwrap(),
            Down::Deliver {
                sub_id: 5,
                epoch: 2,
                seq: 9,
                data: Bytes::from_static(b"\"x\""),
                published_us: 0,
            }
        );
    }

    #[test]
    fn a_subscribe_without_its_stamp_decodes_as_unstamped() {
        // The frame an older worker sends: no trailing `opened_us`.
        let mut body = vec![UP_SUBSCRIBE];
        put_u64(&mut body, 5);
        put_opt(&mut body, Some(3));
        put_opt(&mut body, None);
        body.push(0);
        body.extend_from_slice(&64u32.to_be_bytes());
        put_str(&mut body, "c");
        assert_eq!(
            Up::decode(Bytes::from(body)).unwrap(),
            Up::Subscribe {
                sub_id: 5,
                since: Some(3),
                epoch: None,
                resume: false,
                max_bytes: 64,
                channel: "c".into(),
                opened_us: 0,
            }
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(split_frame(&mut buf), Err(LinkError::TooLarge(_))));
        assert_eq!(
            Down::decode(Bytes::from_static(&[99])),
            Err(LinkError::UnknownKind(99))
        );
        assert_eq!(
            Down::decode(Bytes::from_static(&[DOWN_DELIVER, 0, 0])),
            Err(LinkError::Truncated)
        );
        assert_eq!(Up::decode(Bytes::new()), Err(LinkError::Truncated));
    }
}
