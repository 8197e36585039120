//! Gateway commands: the inbox batch, per-transport rendering, poll answers, kicks and
//! resubscribing.

use super::conn::{CLOSING, HAS_EPOCH, HAS_POS, KEEP_ALIVE, LIVE, RESUB, SUBSCRIBED, WRITE_SHUT};
use super::{send_up, EventLoop};
use crate::http1;
use crate::metrics::{metrics, CloseReason, Transport};
use crate::shared::{split_sub_id, sub_id, Cmd};
use crate::{sse, ws};
use protocol::link::{Down, KickReason, Up};
use tokio::sync::mpsc::error::TrySendError;

/// Inbox commands (64 bytes each) a loop thread keeps room for between wake-ups.
pub(super) const SPARE_CMDS: usize = 256;

pub(super) const REPLACED_MSG: &str = "replaced by a newer connection on this channel";
pub(super) const RESYNC_MSG: &str = "reconnect with since";
pub(super) const REFUSED_MSG: &str = "the gateway refused the subscription; try again later";

impl EventLoop {
    // ---- gateway commands ----

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
            let down = match cmd {
                Cmd::LinkUp => {
                    self.flush_batch(&mut cur);
                    self.start_resubscribe();
                    continue;
                }
                Cmd::Down(d) => d,
            };
            let id = match &down {
                Down::Backlog { sub_id, .. }
                | Down::Deliver { sub_id, .. }
                | Down::Kick { sub_id, .. } => *sub_id,
                Down::Welcome { .. } => continue,
            };
            let Some(key) = self.resolve(id) else {
                continue;
            };
            if cur != Some(key) {
                self.flush_batch(&mut cur);
                cur = Some(key);
                self.out.clear();
                self.body.clear();
                self.batch_count = 0;
                self.batch_gap = None;
                self.batch_backlog = false;
            }
            match down {
                Down::Backlog {
                    epoch,
                    last_seq,
                    gap_first_seq,
                    messages,
                    ..
                } => {
                    self.batch_backlog = true;
                    let conn = &mut self.conns[key];
                    // A Backlog again for the same subscription and epoch (a resubscribe, or
                    // a duplicate from a reconnect race) must not move the position back.
                    let again = conn.has(LIVE) && conn.has(HAS_EPOCH) && conn.epoch == epoch;
                    conn.flags |= LIVE | HAS_EPOCH;
                    conn.epoch = epoch;
                    if let Some(first) = gap_first_seq
                        .filter(|f| !again || !conn.has(HAS_POS) || f.saturating_sub(1) > conn.pos)
                    {
                        // The resume could not be served whole: positions restart here.
                        conn.pos = first.saturating_sub(1);
                        conn.flags |= HAS_POS;
                        self.batch_gap = Some((epoch, first));
                        match conn.transport {
                            Transport::Ws => ws::write_gap(&mut self.out, epoch, first),
                            Transport::Sse => sse::write_gap(&mut self.out, epoch, first),
                            _ => {}
                        }
                    }
                    for (seq, data) in &messages {
                        self.render_message(key, *seq, data);
                    }
                    let conn = &mut self.conns[key];
                    if !conn.has(HAS_POS) {
                        conn.pos = last_seq;
                        conn.flags |= HAS_POS;
                    }
                }
                Down::Deliver { seq, data, .. } => self.render_message(key, seq, &data),
                Down::Kick { reason, .. } => {
                    self.flush_batch(&mut cur);
                    if self
                        .conns
                        .get(key)
                        .is_some_and(|c| c.has(SUBSCRIBED) && !c.has(CLOSING))
                    {
                        self.on_kick(key, reason);
                    }
                }
                Down::Welcome { .. } => {}
            }
        }
        self.flush_batch(&mut cur);
        // A burst's long inbox is given back once handled (the other vector, now the
        // inbox, is the previous spare: bounded too).
        if cmds.capacity() > SPARE_CMDS {
            cmds.shrink_to(SPARE_CMDS);
        }
        self.spare_cmds = cmds;
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

    /// Renders one message for the batch unless it was sent already.
    pub(super) fn render_message(&mut self, key: usize, seq: u64, data: &[u8]) {
        let conn = &mut self.conns[key];
        if conn.has(HAS_POS) && seq <= conn.pos {
            return;
        }
        conn.pos = seq;
        conn.flags |= HAS_POS;
        self.batch_count += 1;
        match conn.transport {
            Transport::Ws => ws::write_message(&mut self.out, seq, data),
            Transport::Sse => sse::write_message(&mut self.out, seq, data),
            Transport::Poll => self.body.push(seq, data),
            Transport::Http => {}
        }
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
        let backlog = std::mem::take(&mut self.batch_backlog);
        match conn.transport {
            Transport::Ws | Transport::Sse => {
                if !self.out.is_empty() && self.send_out_as(key, backlog) {
                    metrics().delivered.inc_by(count);
                }
            }
            Transport::Poll => {
                if count > 0 || gap.is_some() {
                    metrics().delivered.inc_by(count);
                    self.answer_poll(key, gap, backlog);
                }
            }
            Transport::Http => {}
        }
        self.out.clear();
    }

    /// Answers a held poll with what `self.body` holds, unsubscribes, and returns the
    /// connection to reading requests (keep-alive) or closes it.
    pub(super) fn answer_poll(&mut self, key: usize, gap: Option<(u64, u64)>, exempt: bool) {
        let conn = &mut self.conns[key];
        let next = conn.pos;
        let keep_alive = conn.has(KEEP_ALIVE) && self.drain_deadline.is_none();
        let origin = (conn.cors > 0)
            .then(|| self.shared.config.allow_origin[conn.cors as usize - 1].as_str());
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
        if self.send_out_as(key, exempt) {
            if keep_alive {
                let gen = self.gen();
                let conn = &mut self.conns[key];
                conn.gen = gen;
                self.add_deadline(
                    self.now + self.shared.config.handshake_timeout_secs,
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
        let conn = &mut self.conns[key];
        if conn.has(SUBSCRIBED) {
            let sub = sub_id(self.index, key, conn.gen);
            if let Some(ch) = conn.channel.take() {
                send_up(
                    &self.shared,
                    Up::Unsubscribe {
                        sub_id: sub,
                        channel: ch.into(),
                    },
                );
            }
        }
        conn.channel = None;
        conn.flags &= CLOSING | WRITE_SHUT;
        metrics().open(conn.transport).dec();
        metrics().open(Transport::Http).inc();
        conn.transport = Transport::Http;
        conn.last_active = self.now;
    }

    pub(super) fn on_kick(&mut self, key: usize, reason: KickReason) {
        let conn = &mut self.conns[key];
        // The gateway dropped the subscription itself: no Unsubscribe owed.
        conn.flags &= !(SUBSCRIBED | RESUB);
        let (code, ws_code, msg) = match reason {
            KickReason::Replaced => ("replaced", ws::close::REPLACED, REPLACED_MSG),
            KickReason::Resync => ("resync", ws::close::RESYNC, RESYNC_MSG),
            KickReason::Refused => ("refused", ws::close::TRY_AGAIN, REFUSED_MSG),
        };
        tracing::debug!(thread = self.index, key, reason = code, "kicked");
        self.out.clear();
        match conn.transport {
            Transport::Ws => {
                ws::write_close(&mut self.out, ws_code, msg);
                if self.send_out(key) {
                    self.close_after_flush(key, CloseReason::Kicked);
                }
            }
            Transport::Sse => {
                sse::write_closed(&mut self.out, code, msg);
                if self.send_out(key) {
                    self.close_after_flush(key, CloseReason::Kicked);
                }
            }
            Transport::Poll => match reason {
                KickReason::Replaced => {
                    let origin = (conn.cors > 0)
                        .then(|| self.shared.config.allow_origin[conn.cors as usize - 1].clone());
                    metrics().open(Transport::Poll).dec();
                    metrics().open(Transport::Http).inc();
                    conn.transport = Transport::Http;
                    http1::write_error(
                        &mut self.out,
                        409,
                        "replaced",
                        REPLACED_MSG,
                        origin.as_deref(),
                        b"",
                    );
                    if self.send_out(key) {
                        self.close_after_flush(key, CloseReason::Kicked);
                    }
                }
                KickReason::Resync => {
                    self.body.clear();
                    self.answer_poll(key, None, false);
                }
                KickReason::Refused => {
                    let origin = (conn.cors > 0)
                        .then(|| self.shared.config.allow_origin[conn.cors as usize - 1].clone());
                    metrics().open(Transport::Poll).dec();
                    metrics().open(Transport::Http).inc();
                    conn.transport = Transport::Http;
                    http1::write_error(
                        &mut self.out,
                        503,
                        "refused",
                        REFUSED_MSG,
                        origin.as_deref(),
                        b"",
                    );
                    if self.send_out(key) {
                        self.close_after_flush(key, CloseReason::Kicked);
                    }
                }
            },
            Transport::Http => {}
        }
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
        let end = self.conns.capacity();
        while i < end {
            if let Some(c) = self.conns.get_mut(i) {
                if c.has(RESUB) {
                    let up = Up::Subscribe {
                        sub_id: sub_id(self.index, i, c.gen),
                        since: c.has(HAS_POS).then_some(c.pos),
                        epoch: c.has(HAS_EPOCH).then_some(c.epoch),
                        resume: true,
                        max_bytes: u32::MAX,
                        channel: c.channel.as_deref().unwrap_or_default().to_owned(),
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
