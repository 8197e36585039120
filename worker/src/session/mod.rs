//! The per-connection session rules, without I/O: which request becomes which
//! subscription ([`request`]), what a client is told when its connection ends (the
//! [`goodbye`] table), which client close codes are echoed ([`answer_client_close`]).
//! Bytes, `now` and events go in; decisions come out. The event loop does the I/O.

pub mod order;
pub mod request;

use crate::metrics::{CloseReason, Transport};
use crate::{sse, ws};
use protocol::link::KickReason;

pub const REPLACED_MSG: &str = "replaced by a newer connection on this channel";
pub const RESYNC_MSG: &str = "reconnect with since";
pub const REFUSED_MSG: &str = "the gateway refused the subscription; try again later";
pub const SHUTDOWN_MSG: &str = "server shutting down";
pub const TOO_SLOW_MSG: &str = "client too slow";

/// Why the worker ends a subscribed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The gateway dropped the subscription.
    Kick(KickReason),
    /// The worker is stopping.
    Shutdown,
    /// Its pending output passed `--max-pending-bytes`.
    Slow,
}

impl End {
    /// The `reason` label the close is counted under.
    pub fn reason(self) -> CloseReason {
        match self {
            End::Kick(_) => CloseReason::Kicked,
            End::Shutdown => CloseReason::Shutdown,
            End::Slow => CloseReason::SlowClient,
        }
    }
}

/// What a client is told when its connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    /// WebSocket: this close frame after what is pending, then the close linger.
    Close { code: u16, reason: &'static str },
    /// SSE: a final event `{"closed":code,"message":message}` (with `id: <id>` when
    /// given), then the close.
    Event {
        id: Option<&'static str>,
        code: &'static str,
        message: &'static str,
    },
    /// Long-poll: a JSON error answer, then the close.
    Error {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
    /// Long-poll: answer with what there is (nothing); the client polls again.
    Answer,
    /// No last word: what is pending is flushed, then the close.
    Flush,
    /// Closed at once: nothing more can reach the client.
    Drop,
}

/// The goodbye table: per transport, what each way of ending says.
pub fn goodbye(transport: Transport, end: End) -> Goodbye {
    use Transport::*;
    let (code, ws_code, message) = match end {
        End::Kick(KickReason::Replaced) => ("replaced", ws::close::REPLACED, REPLACED_MSG),
        End::Kick(KickReason::Resync) => ("resync", ws::close::RESYNC, RESYNC_MSG),
        End::Kick(KickReason::Refused) => ("refused", ws::close::TRY_AGAIN, REFUSED_MSG),
        End::Shutdown => ("shutdown", ws::close::GOING_AWAY, SHUTDOWN_MSG),
        End::Slow => ("slow", ws::close::TOO_SLOW, TOO_SLOW_MSG),
    };
    match (transport, end) {
        (Ws, _) => Goodbye::Close {
            code: ws_code,
            reason: message,
        },
        (_, End::Slow) => Goodbye::Drop,
        // A replaced stream's last event id marks the browser's own reconnect of it, which
        // is then told to stop (`request::replaced_reconnect`): it does not take the
        // channel back.
        (Sse, End::Kick(KickReason::Replaced)) => Goodbye::Event {
            id: Some(sse::REPLACED_ID),
            code,
            message,
        },
        (Sse, End::Kick(_)) => Goodbye::Event {
            id: None,
            code,
            message,
        },
        (Sse, End::Shutdown) => Goodbye::Flush,
        (Poll, End::Kick(KickReason::Replaced)) => Goodbye::Error {
            status: 409,
            code,
            message,
        },
        (Poll, End::Kick(KickReason::Refused)) => Goodbye::Error {
            status: 503,
            code,
            message,
        },
        (Poll, End::Kick(KickReason::Resync) | End::Shutdown) => Goodbye::Answer,
        (Http, _) => Goodbye::Flush,
    }
}

/// The answer to a client's close frame: its code echoed when RFC 6455 lets it travel
/// on the wire, else a protocol error (1004-1006, 1015 and the unassigned ranges).
pub fn answer_client_close(code: Option<u16>) -> (u16, CloseReason) {
    match code {
        None => (ws::close::NORMAL, CloseReason::ClientClosed),
        Some(c @ (1000..=1003 | 1007..=1014 | 3000..=4999)) => (c, CloseReason::ClientClosed),
        Some(_) => (ws::close::PROTOCOL, CloseReason::ProtocolError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_say_why_on_every_transport() {
        use Transport::*;
        let replaced = End::Kick(KickReason::Replaced);
        assert_eq!(
            goodbye(Ws, replaced),
            Goodbye::Close {
                code: 4001,
                reason: REPLACED_MSG
            }
        );
        assert_eq!(
            goodbye(Sse, replaced),
            Goodbye::Event {
                id: Some("replaced"),
                code: "replaced",
                message: REPLACED_MSG
            }
        );
        assert_eq!(
            goodbye(Poll, replaced),
            Goodbye::Error {
                status: 409,
                code: "replaced",
                message: REPLACED_MSG
            }
        );
        let resync = End::Kick(KickReason::Resync);
        assert!(matches!(
            goodbye(Ws, resync),
            Goodbye::Close { code: 4002, .. }
        ));
        assert!(matches!(
            goodbye(Sse, resync),
            Goodbye::Event {
                id: None,
                code: "resync",
                ..
            }
        ));
        assert_eq!(goodbye(Poll, resync), Goodbye::Answer);
        let refused = End::Kick(KickReason::Refused);
        assert!(matches!(
            goodbye(Ws, refused),
            Goodbye::Close { code: 1013, .. }
        ));
        assert!(matches!(
            goodbye(Sse, refused),
            Goodbye::Event {
                id: None,
                code: "refused",
                ..
            }
        ));
        assert!(matches!(
            goodbye(Poll, refused),
            Goodbye::Error { status: 503, .. }
        ));
        assert_eq!(End::Kick(KickReason::Refused).reason(), CloseReason::Kicked);
    }

    #[test]
    fn shutdown_and_slow_clients() {
        use Transport::*;
        assert_eq!(
            goodbye(Ws, End::Shutdown),
            Goodbye::Close {
                code: 1001,
                reason: "server shutting down"
            }
        );
        assert_eq!(goodbye(Poll, End::Shutdown), Goodbye::Answer);
        assert_eq!(goodbye(Sse, End::Shutdown), Goodbye::Flush);
        assert_eq!(goodbye(Http, End::Shutdown), Goodbye::Flush);
        assert!(matches!(
            goodbye(Ws, End::Slow),
            Goodbye::Close { code: 4003, .. }
        ));
        assert_eq!(goodbye(Sse, End::Slow), Goodbye::Drop);
        assert_eq!(goodbye(Poll, End::Slow), Goodbye::Drop);
        assert_eq!(End::Slow.reason(), CloseReason::SlowClient);
    }

    #[test]
    fn client_close_codes_echoed_or_refused() {
        assert_eq!(answer_client_close(None), (1000, CloseReason::ClientClosed));
        for c in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4001, 4999] {
            assert_eq!(answer_client_close(Some(c)), (c, CloseReason::ClientClosed));
        }
        for c in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert_eq!(
                answer_client_close(Some(c)),
                (1002, CloseReason::ProtocolError),
                "{c}"
            );
        }
    }
}
