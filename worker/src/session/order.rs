//! Delivery order: where a connection stands in its channel's log ([`Position`]) and what
//! a `Backlog` or a `Deliver` from the gateway makes of it. Output goes to a [`Sink`]
//! (the per-transport rendering); no I/O here.

use bytes::Bytes;

/// Where a connection stands in its channel's log (kept in `Conn`: `pos`, `epoch` and
/// three flag bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Every message with `seq <= pos` was sent (or told to be gone by a gap). `None` until
    /// the first Backlog of a live-only subscription.
    pub pos: Option<u64>,
    /// The log's epoch `pos` counts in (until the first Backlog: the client's `epoch=`).
    pub epoch: Option<u64>,
    /// The subscription's first Backlog arrived.
    pub live: bool,
}

/// Where the rules put what the client is to be sent, in order.
pub trait Sink {
    /// The resume could not be served whole: messages go on at `first_seq` of `epoch`.
    fn gap(&mut self, epoch: u64, first_seq: u64);
    fn message(&mut self, seq: u64, data: &[u8]);
}

/// The fields of a `Down::Backlog`.
#[derive(Debug, Clone, Copy)]
pub struct Backlog<'a> {
    pub epoch: u64,
    /// The channel's newest seq when the Backlog was read.
    pub last_seq: u64,
    /// The resume could not be served whole: the first seq that follows.
    pub gap_first_seq: Option<u64>,
    pub messages: &'a [(u64, Bytes)],
}

impl Position {
    /// A subscription's Backlog: the gap (if any) and the messages after `pos`.
    pub fn backlog(&mut self, b: &Backlog<'_>, sink: &mut impl Sink) {
        // A Backlog again for the same subscription and epoch (a resubscribe, or a
        // duplicate from a reconnect race) must not move the position back.
        let again = self.live && self.epoch == Some(b.epoch);
        self.live = true;
        self.epoch = Some(b.epoch);
        if let Some(first) = b
            .gap_first_seq
            .filter(|f| !again || self.pos.is_none_or(|p| f.saturating_sub(1) > p))
        {
            // The resume could not be served whole: positions restart here.
            self.pos = Some(first.saturating_sub(1));
            sink.gap(b.epoch, first);
        }
        for (seq, data) in b.messages {
            self.deliver(*seq, data, sink);
        }
        if self.pos.is_none() {
            self.pos = Some(b.last_seq);
        }
    }

    /// A live message: sent unless it was sent already.
    pub fn deliver(&mut self, seq: u64, data: &[u8], sink: &mut impl Sink) {
        if self.pos.is_some_and(|p| seq <= p) {
            return;
        }
        self.pos = Some(seq);
        sink.message(seq, data);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What a client was sent: `Gap(epoch, first)` and `Msg(seq)` in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Sent {
        Gap(u64, u64),
        Msg(u64),
    }

    #[derive(Debug, Default)]
    pub struct Client(pub Vec<Sent>);

    impl Sink for Client {
        fn gap(&mut self, epoch: u64, first_seq: u64) {
            self.0.push(Sent::Gap(epoch, first_seq));
        }
        fn message(&mut self, seq: u64, data: &[u8]) {
            assert_eq!(
                data,
                seq.to_string().as_bytes(),
                "seq {seq} carries its own data"
            );
            self.0.push(Sent::Msg(seq));
        }
    }

    pub fn msgs(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, Bytes)> {
        seqs.into_iter()
            .map(|s| (s, Bytes::from(s.to_string())))
            .collect()
    }

    pub fn backlog(epoch: u64, last_seq: u64, gap: Option<u64>, m: &[(u64, Bytes)]) -> Backlog<'_> {
        Backlog {
            epoch,
            last_seq,
            gap_first_seq: gap,
            messages: m,
        }
    }

    fn resume(since: Option<u64>, epoch: Option<u64>) -> Position {
        Position {
            pos: since,
            epoch,
            live: false,
        }
    }

    use Sent::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut p = resume(Some(3), None);
        let mut c = Client::default();
        p.backlog(&backlog(1, 5, None, &msgs(4..=5)), &mut c);
        for seq in [5, 6, 6, 4, 7] {
            p.deliver(seq, seq.to_string().as_bytes(), &mut c);
        }
        assert_eq!(c.0, [Msg(4), Msg(5), Msg(6), Msg(7)]);
        assert_eq!(p.pos, Some(7));
    }

    #[test]
    fn a_gap_restarts_the_position_and_is_told_once() {
        let mut p = resume(Some(3), Some(2));
        let mut c = Client::default();
        let m = msgs(5..=6);
        p.backlog(&backlog(7, 6, Some(5), &m), &mut c);
        // The same answer again (a resubscribe racing a reconnect): nothing new.
        p.backlog(&backlog(7, 6, Some(5), &m), &mut c);
        assert_eq!(c.0, [Gap(7, 5), Msg(5), Msg(6)]);
        assert_eq!((p.pos, p.epoch, p.live), (Some(6), Some(7), true));
    }

    #[test]
    fn live_only_starts_at_the_last_seq() {
        let mut p = resume(None, None);
        let mut c = Client::default();
        p.backlog(&backlog(3, 40, None, &[]), &mut c);
        p.deliver(40, b"40", &mut c);
        p.deliver(41, b"41", &mut c);
        assert_eq!(c.0, [Msg(41)]);
    }
}
