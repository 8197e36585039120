//! Publishes gathered into few function calls. Every publish (single, NDJSON line, one
//! channel of a broadcast) is queued here; one task takes what is queued and sends it as
//! `FCALL pg_publish_batch`, one call per Redis slot group of up to [`MAX_PER_CALL`]
//! messages. At most [`ROUNDS_IN_FLIGHT`] rounds are out at once, so while Redis works on
//! one round the next gathers: an idle gateway sends each publish at once, a busy one
//! sends many per call.
//!
//! Why: a publish's Redis time is about 7.7 µs of call (dispatch, arguments, the look at
//! the replication ids) and 11.8 µs of work per message (`benches/redis.sh`); a batch
//! pays the first once. The gateway's side gains the same way: one request, one reply
//! and one wake-up of the connection's driver for the whole round.

use super::client::{fcall_cmd, new_epoch, overloaded, Client};
use super::keys::slot;
use super::reply::{bad_reply, parse_publish_batch, PublishReply};
use crate::metrics;
use crate::store::contract::StoreError;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Most messages in one function call.
pub(super) const MAX_PER_CALL: usize = 64;
/// Most message bytes in one function call (a call holds at least one message).
const MAX_CALL_BYTES: usize = 1 << 20;
/// Most publishes taken from the queue for one round.
const MAX_PER_ROUND: usize = 512;
/// Rounds out at once: two keep Redis busy while the gateway reads the other's answers.
const ROUNDS_IN_FLIGHT: usize = 2;

/// One queued publish.
struct Job {
    meta: String,
    list: String,
    idem: String,
    data: Bytes,
    key: Option<String>,
    now_ms: u64,
    /// When its publisher answers 503: the call carrying it is abandoned by then too, so
    /// a refused publish is never committed afterwards (unless Redis ran it already).
    deadline: Instant,
    tx: oneshot::Sender<Result<PublishReply, StoreError>>,
}

/// The queue's sending side; the task ends when this is dropped.
pub(super) struct Batcher {
    tx: mpsc::Sender<Job>,
    client: Arc<Client>,
}

impl Batcher {
    /// Starts the task (needs a tokio runtime). `queue` bounds the publishes waiting.
    pub(super) fn start(client: Arc<Client>, queue: usize) -> Batcher {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(run(client.clone(), rx));
        Batcher { tx, client }
    }

    /// Queues one publish and waits for its answer, at most the call deadline: a publish
    /// still queued then is not sent (the task skips what nobody waits for). A queue that
    /// is full fails at once.
    pub(super) async fn publish(
        &self,
        meta: String,
        list: String,
        idem: String,
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> Result<PublishReply, StoreError> {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.client.opts.timeout;
        let job = Job {
            deadline,
            meta,
            list,
            idem,
            data,
            key: key.map(str::to_owned),
            now_ms,
            tx,
        };
        if self.tx.try_send(job).is_err() {
            return Err(overloaded());
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Unavailable("publish was not sent".into())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {:?}",
                self.client.opts.timeout
            ))),
        }
    }
}

async fn run(client: Arc<Client>, mut rx: mpsc::Receiver<Job>) {
    let mut rounds = FuturesUnordered::new();
    let mut taken = Vec::with_capacity(MAX_PER_ROUND);
    loop {
        tokio::select! {
            biased;
            Some(()) = rounds.next(), if !rounds.is_empty() => {}
            n = rx.recv_many(&mut taken, MAX_PER_ROUND), if rounds.len() < ROUNDS_IN_FLIGHT => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                let jobs: Vec<Job> = taken
                    .drain(..)
                    .filter(|j| !j.tx.is_closed() && j.deadline > now)
                    .collect();
                if !jobs.is_empty() {
                    rounds.push(round(client.clone(), jobs));
                }
            }
        }
    }
    while rounds.next().await.is_some() {}
}

/// One round: the jobs split into calls (by slot in a cluster, in queue order within a
/// slot), all sent at once.
async fn round(client: Arc<Client>, jobs: Vec<Job>) {
    let calls = split(jobs, client.fixed.cluster);
    futures_util::future::join_all(calls.into_iter().map(|c| call(&client, c))).await;
}

/// Jobs grouped into calls: one slot per call in a cluster, at most [`MAX_PER_CALL`]
/// messages and [`MAX_CALL_BYTES`] each, queue order kept within a slot.
fn split(jobs: Vec<Job>, cluster: bool) -> Vec<Vec<Job>> {
    let mut calls: Vec<(usize, Vec<Job>)> = Vec::new();
    // The open call of each slot (its index in `calls`).
    let mut open: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
    for j in jobs {
        let s = if cluster { slot(&j.meta) } else { 0 };
        match open.get(&s) {
            Some(&i)
                if calls[i].1.len() < MAX_PER_CALL
                    && calls[i].0 + j.data.len() <= MAX_CALL_BYTES =>
            {
                calls[i].0 += j.data.len();
                calls[i].1.push(j);
            }
            _ => {
                open.insert(s, calls.len());
                calls.push((j.data.len(), vec![j]));
            }
        }
    }
    calls.into_iter().map(|(_, c)| c).collect()
}

/// One `FCALL pg_publish_batch`; every job gets its own answer or the call's error.
async fn call(client: &Client, jobs: Vec<Job>) {
    let f = &client.fixed;
    let now = jobs.iter().map(|j| j.now_ms).max().unwrap_or(0).to_string();
    let epoch = new_epoch().to_string();
    let ops: Vec<[u8; 16]> = jobs.iter().map(|_| op_id()).collect();
    let mut keys: Vec<&str> = Vec::with_capacity(jobs.len() * 3);
    let mut args: Vec<&[u8]> = Vec::with_capacity(7 + jobs.len() * 3);
    args.extend_from_slice(&[
        now.as_bytes(),
        f.max_messages.as_bytes(),
        f.max_age.as_bytes(),
        f.channel_bytes.as_bytes(),
        f.meta_ttl.as_bytes(),
        epoch.as_bytes(),
        f.strict,
    ]);
    for (j, op) in jobs.iter().zip(&ops) {
        keys.extend_from_slice(&[&j.meta, &j.list, &j.idem]);
        args.extend_from_slice(&[&j.data, j.key.as_deref().unwrap_or("").as_bytes(), op]);
    }
    let cmd = fcall_cmd("pg_publish_batch", &keys, &args);
    metrics::REDIS_PUBLISHES_PER_CALL.observe(jobs.len() as f64);
    let deadline = jobs
        .iter()
        .map(|j| j.deadline)
        .min()
        .unwrap_or_else(Instant::now);
    let answers = match client.call(&cmd, deadline).await {
        Ok(v) => {
            parse_publish_batch(&v, jobs.len()).ok_or_else(|| bad_reply("pg_publish_batch", &v))
        }
        Err(e) => Err(e),
    };
    match answers {
        Ok(answers) => {
            for (j, a) in jobs.into_iter().zip(answers) {
                let _ = j.tx.send(Ok(a));
            }
        }
        Err(e) => {
            for j in jobs {
                let _ = j.tx.send(Err(e.clone()));
            }
        }
    }
}

/// A publish's op id: 16 hex digits, so a resent call is recognised (see the library).
pub(super) fn op_id() -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut r = rand::random::<u64>();
    let mut out = [0u8; 16];
    for b in out.iter_mut().rev() {
        *b = HEX[(r & 15) as usize];
        r >>= 4;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(channel: &str, bytes: usize) -> Job {
        let (tx, _rx) = oneshot::channel();
        Job {
            meta: format!("pg:{{{channel}}}:m"),
            list: String::new(),
            idem: String::new(),
            data: Bytes::from(vec![b'x'; bytes]),
            key: None,
            now_ms: 0,
            deadline: Instant::now(),
            tx,
        }
    }

    fn channels(calls: &[Vec<Job>]) -> Vec<Vec<String>> {
        calls
            .iter()
            .map(|c| c.iter().map(|j| j.meta.clone()).collect())
            .collect()
    }

    #[test]
    fn one_node_takes_everything_in_order_up_to_the_bounds() {
        let jobs: Vec<Job> = (0..MAX_PER_CALL + 3)
            .map(|i| job(&format!("c{i}"), 10))
            .collect();
        let calls = split(jobs, false);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].len(), MAX_PER_CALL);
        assert_eq!(calls[1][0].meta, format!("pg:{{c{MAX_PER_CALL}}}:m"));
        let big = split(
            vec![job("a", MAX_CALL_BYTES), job("a", 1), job("a", 1)],
            false,
        );
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_cluster_call_holds_one_slot_and_keeps_its_order() {
        let jobs = vec![
            job("a", 1),
            job("b", 1),
            job("a", 2),
            job("b", 2),
            job("a", 3),
        ];
        assert_ne!(slot("pg:{a}:m"), slot("pg:{b}:m"));
        let calls = split(jobs, true);
        assert_eq!(
            channels(&calls),
            [
                vec!["pg:{a}:m", "pg:{a}:m", "pg:{a}:m"],
                vec!["pg:{b}:m", "pg:{b}:m"]
            ]
        );
        let sizes: Vec<usize> = calls[0].iter().map(|j| j.data.len()).collect();
        assert_eq!(sizes, [1, 2, 3]);
    }

    #[test]
    fn op_ids_are_sixteen_hex_digits() {
        let a = op_id();
        assert!(a
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, op_id());
    }
}
