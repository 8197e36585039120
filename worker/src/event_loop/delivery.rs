//! Gateway commands: the inbox batch, per-transport rendering, poll answers, kicks and
//! resubscribing.

use super::conn::Out;
use super::conn::{CLOSING, HAS_EPOCH, HAS_POS, KEEP_ALIVE, RESUB, SUBSCRIBED, WRITE_SHUT};
use super::{render, EventLoop};
use crate::http1;
use crate::metrics::{metrics, CloseReason, Transport};
use crate::poll::PollBody;
use crate::session::order::{Backlog, Sink};
use crate::session::End;
use crate::shared::{split_sub_id, sub_id, Cmd};
use protocol::link::{Down, KickReason, Up};
use tokio::sync::mpsc::error::TrySendError;

/// Inbox commands (64 bytes each) a loop thread keeps room for between wake-ups.
pub(super) const SPARE_CMDS: usize = 256;

fn out_kind(page: bool) -> Out {
    if page {
        Out::Page
    } else {
        Out::Live
    }
}

/// What the order rules are given.
enum Event<'a> {
    Backlog(Backlog<'a>),
    /// A `Deliver`: epoch, seq, data.
    Deliver(u64, u64, &'a [u8]),
}

/// The batch of one connection being gathered: rendered for its transport.
struct Batch<'a> {
    transport: Transport,
    out: &'a mut Vec<u8>,
    body: &'a mut PollBody,
    count: &'a mut u64,
    gap: &'a mut Option<(u64, u64)>,
}

impl Sink for Batch<'_> {
    fn gap(&mut self, epoch: u64, first_seq: u64) {
        metrics().gaps.inc();
        *self.gap = Some((epoch, first_seq));
        render::gap(self.transport, self.out, epoch, first_seq);
    }

    fn message(&mut self, seq: u64, data: &[u8]) {
        *self.count += 1;
        render::message(self.transport, self.out, self.body, seq, data);
    }
}

impl EventLoop {
    // ---- gateway commands ----

    /// Handles what the link thread left in this thread's inbox, one batch (one write) per
    /// run of frames for the same connection.
    pub(super) fn process_inbox(&mut self) {
        let mut cmds = std::mem::take(&mut self.spare_cmds);
        {
            let mut inbox = self.shared.ports[self.index]
                .inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *inbox, &mut cmds);
        }
        if !cmds.is_empty() {
            self.busy();
        }
        let mut cur: Option<usize> = None;
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::LinkUp => {
                    self.flush_batch(&mut cur);
                    self.side.link_lost();
                    self.start_resubscribe();
                }
                Cmd::Down(down) => self.on_down(down, &mut cur),
            }
        }
        self.flush_batch(&mut cur);
        if self.inbox_us.take().is_some() {
            self.latency.flush();
        }
        // A burst's long inbox is given back once handled (the other vector, now the
        // inbox, is the previous spare: bounded too).
        if cmds.capacity() > SPARE_CMDS {
            cmds.shrink_to(SPARE_CMDS);
        }
        self.spare_cmds = cmds;
    }

    /// One frame for one of this thread's connections, gathered into its batch.
    fn on_down(&mut self, down: Down, cur: &mut Option<usize>) {
        let Some(key) = down.sub_id().and_then(|id| self.resolve(id)) else {
            return;
        };
        if *cur != Some(key) {
            self.flush_batch(cur);
            *cur = Some(key);
            self.out.clear();
            self.body.clear();
            self.batch_count = 0;
            self.batch_gap = None;
            self.batch_page = false;
        }
        match down {
            Down::Backlog {
                epoch,
                last_seq,
                gap_first_seq,
                messages,
                ..
            } => {
                self.batch_page = true;
                let b = Backlog {
                    epoch,
                    last_seq,
                    gap_first_seq,
                    messages: &messages,
                };
                self.order(key, Event::Backlog(b));
            }
            Down::Deliver {
                epoch,
                seq,
                data,
                published_us,
                ..
            } => {
                if published_us != 0 {
                    let now_us = *self.inbox_us.get_or_insert_with(unix_us);
                    self.latency
                        .observe(now_us.saturating_sub(published_us) as f64 / 1e6);
                }
                self.order(key, Event::Deliver(epoch, seq, &data))
            }
            Down::Kick { reason, .. } => {
                self.flush_batch(cur);
                if self
                    .conns
                    .get(key)
                    .is_some_and(|c| c.has(SUBSCRIBED) && !c.has(CLOSING))
                {
                    self.on_kick(key, reason);
                }
            }
            // The link thread turns ResubscribeAll into LinkUp; neither reaches a connection.
            Down::Welcome { .. } | Down::ResubscribeAll | Down::TicketKeys { .. } => {}
        }
    }

    /// Runs the order rules on one Backlog or Deliver, rendering into the batch; keeps the
    /// position in `Conn` and what is left in the side table, arms a hole timer.
    fn order(&mut self, key: usize, ev: Event<'_>) {
        let page = self.page_bytes();
        let now = self.now.at;
        let conn = &mut self.conns[key];
        let gen = conn.gen;
        let mut at = conn.position();
        let mut behind = self.side.take(key, gen);
        let mut batch = Batch {
            transport: conn.transport,
            out: &mut self.out,
            body: &mut self.body,
            count: &mut self.batch_count,
            gap: &mut self.batch_gap,
        };
        let room = &mut self.side.room;
        let hole = match ev {
            Event::Backlog(b) => behind.backlog(&mut at, &b, page, room, now, &mut batch),
            Event::Deliver(epoch, seq, data) => {
                behind.deliver(&mut at, epoch, seq, data, room, now, &mut batch)
            }
        };
        conn.set_position(at);
        self.side.put(key, gen, behind, &at);
        if hole {
            metrics().holes.inc();
            let t = now + self.hole_wait();
            self.side.arm(t, key, gen);
        }
    }

    /// The live connection a `sub_id` names, if it still exists in that generation.
    pub(super) fn resolve(&self, id: u64) -> Option<usize> {
        let (thread, key, gen) = split_sub_id(id);
        if thread != self.index {
            return None;
        }
        let c = self.conns.get(key)?;
        (c.gen == gen && c.has(SUBSCRIBED) && !c.has(CLOSING)).then_some(key)
    }

    /// Sends what was gathered for the current connection in one write.
    pub(super) fn flush_batch(&mut self, cur: &mut Option<usize>) {
        let Some(key) = cur.take() else {
            return;
        };
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let count = std::mem::take(&mut self.batch_count);
        let gap = self.batch_gap.take();
        let page = std::mem::take(&mut self.batch_page);
        match conn.transport {
            Transport::Ws | Transport::Sse => {
                if !self.out.is_empty() && self.send(key, out_kind(page)) {
                    metrics().delivered.inc_by(count);
                }
            }
            Transport::Poll => {
                if count > 0 || gap.is_some() {
                    metrics().delivered.inc_by(count);
                    self.answer_poll(key, gap, page);
                }
            }
            Transport::Http => {}
        }
        self.out.clear();
        if self.side.has(key) {
            self.fetch_if_due(key);
        }
    }

    /// Answers a held poll with what `self.body` holds, unsubscribes, and returns the
    /// connection to reading requests (keep-alive) or closes it.
    pub(super) fn answer_poll(&mut self, key: usize, gap: Option<(u64, u64)>, page: bool) {
        let conn = &mut self.conns[key];
        let next = conn.pos;
        let keep_alive = conn.has(KEEP_ALIVE) && self.drain_deadline.is_none();
        let origin = self.shared.origin(conn.cors);
        self.out.clear();
        http1::write_json(
            &mut self.out,
            200,
            self.body.finish(next, gap),
            origin,
            keep_alive,
        );
        self.body.clear();
        self.end_poll(key);
        if self.send(key, out_kind(page)) {
            if keep_alive {
                let gen = self.gen();
                let conn = &mut self.conns[key];
                conn.gen = gen;
                self.add_deadline(
                    self.now.secs + self.shared.config.handshake_timeout_secs,
                    key,
                    gen,
                );
            } else {
                self.close_after_flush(key, CloseReason::Done);
            }
        }
    }

    /// A poll is over: unsubscribe and go back to the request state.
    pub(super) fn end_poll(&mut self, key: usize) {
        self.unsubscribe(key);
        let conn = &mut self.conns[key];
        conn.channel = None;
        conn.flags &= CLOSING | WRITE_SHUT;
        self.side.forget(key);
        conn.set_transport(Transport::Http);
        conn.last_active = self.now.secs;
    }

    pub(super) fn on_kick(&mut self, key: usize, reason: KickReason) {
        // The gateway dropped the subscription itself: no Unsubscribe owed.
        self.conns[key].flags &= !(SUBSCRIBED | RESUB);
        tracing::debug!(thread = self.index, key, ?reason, "kicked");
        self.end(key, End::Kick(reason));
    }

    pub(super) fn start_resubscribe(&mut self) {
        for (_, c) in self.conns.iter_mut() {
            if c.has(SUBSCRIBED) && !c.has(CLOSING) {
                c.flags |= RESUB;
            }
        }
        self.resub_cursor = Some(0);
        self.resubscribe_some();
    }

    /// Re-sends `Subscribe` for connections marked `RESUB` until the link queue is full.
    pub(super) fn resubscribe_some(&mut self) {
        let Some(mut i) = self.resub_cursor else {
            return;
        };
        let page = self.page_bytes() as u32;
        let end = self.conns.capacity();
        while i < end {
            if let Some(c) = self.conns.get_mut(i) {
                if c.has(RESUB) {
                    let up = Up::Subscribe {
                        sub_id: sub_id(self.index, i, c.gen),
                        since: c.has(HAS_POS).then_some(c.pos),
                        epoch: c.has(HAS_EPOCH).then_some(c.epoch),
                        resume: true,
                        max_bytes: page,
                        channel: c.channel.as_deref().unwrap_or_default().to_owned(),
                        // Not kept per connection (8 bytes each); a resume never takes
                        // the channel from another live holder anyway.
                        opened_us: 0,
                    };
                    match self.shared.up_tx.try_send(up) {
                        Ok(()) => c.flags &= !RESUB,
                        Err(TrySendError::Full(_)) => {
                            self.resub_cursor = Some(i);
                            return;
                        }
                        Err(TrySendError::Closed(_)) => break,
                    }
                }
            }
            i += 1;
        }
        self.resub_cursor = None;
    }
}

/// Wall-clock microseconds since the Unix epoch, as the gateway stamps `published_us`.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
