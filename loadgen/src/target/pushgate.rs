//! pushgate as a target: its public contract only. Subscribers ask `/v1/assign` for their
//! URLs and resume with `since`; messages arrive as `{"seq":N,"data":...}` (or a gap
//! frame), and a single publish is answered with its seq.

use std::time::Instant;

use hyper::StatusCode;
use serde::Deserialize;

use super::{Opening, Server, SingleAnswer};
use crate::checker::{Published, SeqChecker};
use crate::cli::{Plan, Transport};
use crate::clients::{assign, on_frame, poll, sse, ws, ClientCtx, Conn, Slot};
use crate::stats::Stats;

/// pushgate.
pub struct Pushgate;

#[derive(Deserialize)]
struct SeqAnswer {
    seq: u64,
}

impl Server for Pushgate {
    fn validate(&self, _plan: &Plan) -> anyhow::Result<()> {
        Ok(())
    }

    fn publish_bases(&self, plan: &Plan) -> Vec<String> {
        plan.common.gateway.clone()
    }

    fn publish_path(&self, channel: &str) -> String {
        format!("/v1/publish/{channel}")
    }

    fn stamp(&self, _entry: &Published, k: u64) -> u64 {
        k
    }

    fn single_answer(&self, status: StatusCode, body: &[u8], _stamp: u64) -> SingleAnswer {
        if status != StatusCode::ACCEPTED && status != StatusCode::OK {
            return SingleAnswer::Refused;
        }
        match serde_json::from_slice::<SeqAnswer>(body) {
            Ok(a) => SingleAnswer::Seq(a.seq),
            Err(_) => SingleAnswer::Unnumbered,
        }
    }

    fn on_text(
        &self,
        stats: &Stats,
        checker: &mut SeqChecker,
        slot: &Slot,
        text: &[u8],
    ) -> Option<String> {
        on_frame(stats, checker, slot, text)
    }

    fn open<'a>(
        &'a self,
        ctx: &'a ClientCtx,
        channel: &'a str,
        transport: Transport,
        since: Option<u64>,
        epoch: Option<u64>,
        started: Instant,
    ) -> Opening<'a> {
        Box::pin(async move {
            let a = assign(ctx, channel).await?;
            let assign_us = started.elapsed().as_micros() as u64;
            let conn = match transport {
                Transport::Ws => {
                    Conn::Ws(Box::new(ws::connect(ctx, &a.ws_url, since, epoch).await?))
                }
                Transport::Sse => Conn::Sse(sse::connect(ctx, &a.sse_url, since, epoch).await?),
                Transport::Poll | Transport::Mixed => {
                    Conn::Poll(poll::connect(ctx, &a.poll_url).await?)
                }
            };
            ctx.stats
                .record_connect(started.elapsed().as_micros() as u64, assign_us, transport);
            Ok((a.worker, conn))
        })
    }

    fn has_metrics(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_answers() {
        let p = Pushgate;
        assert_eq!(
            p.single_answer(StatusCode::ACCEPTED, br#"{"seq":7}"#, 99),
            SingleAnswer::Seq(7)
        );
        assert_eq!(
            p.single_answer(StatusCode::ACCEPTED, b"nope", 99),
            SingleAnswer::Unnumbered
        );
        assert_eq!(
            p.single_answer(StatusCode::SERVICE_UNAVAILABLE, br#"{"seq":7}"#, 99),
            SingleAnswer::Refused
        );
        let n = super::super::nchan::Nchan;
        assert_eq!(
            n.single_answer(StatusCode::CREATED, b"", 3),
            SingleAnswer::Seq(3)
        );
        assert_eq!(
            n.single_answer(StatusCode::FORBIDDEN, b"", 3),
            SingleAnswer::Refused
        );
        let e = Published::default();
        assert_eq!(
            (p.stamp(&e, 41), n.stamp(&e, 41), n.stamp(&e, 41)),
            (41, 1, 2)
        );
    }
}
