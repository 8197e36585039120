//! What the library's functions answer, decoded.

use crate::metrics;
use crate::store::contract::{BacklogPage, StoreError};
use bytes::Bytes;
use redis::Value;

/// What `pg_publish` answers for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PublishReply {
    pub(super) seq: u64,
    pub(super) epoch: u64,
    pub(super) duplicate: bool,
    pub(super) owner: String,
    pub(super) cause: String,
    pub(super) evicted: u64,
}

/// A backlog page as the functions return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PageReply {
    pub(super) gap: bool,
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
    pub(super) messages: Vec<(u64, Bytes)>,
}
pub(super) fn bad_reply(what: &str, v: &Value) -> StoreError {
    metrics::REDIS_ERRORS.with_label_values(&["reply"]).inc();
    StoreError::Unavailable(format!("unexpected answer to {what}: {v:?}"))
}

pub(super) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Nil => Some(String::new()),
        _ => None,
    }
}

/// What `pg_publish_batch` answers for `n` messages: six values each, in turn.
pub(super) fn parse_publish_batch(v: &Value, n: usize) -> Option<Vec<PublishReply>> {
    let Value::Array(a) = v else { return None };
    if a.len() != 6 * n {
        return None;
    }
    a.chunks_exact(6)
        .map(|a| {
            Some(PublishReply {
                seq: int(&a[0])?,
                epoch: int(&a[1])?,
                duplicate: int(&a[2])? == 1,
                owner: text(&a[3])?,
                cause: text(&a[4])?,
                evicted: int(&a[5])?,
            })
        })
        .collect()
}

/// `{gap, first_seq, last_seq, seq1, data1, ...}` from `a`.
pub(super) fn parse_page(a: Vec<Value>) -> Option<PageReply> {
    if a.len() < 3 || !(a.len() - 3).is_multiple_of(2) {
        return None;
    }
    let mut it = a.into_iter();
    let gap = int(&it.next()?)? == 1;
    let first_seq = int(&it.next()?)?;
    let last_seq = int(&it.next()?)?;
    let mut messages = Vec::with_capacity(it.len() / 2);
    while let (Some(seq), Some(data)) = (it.next(), it.next()) {
        let data = match data {
            Value::BulkString(b) => Bytes::from(b),
            _ => return None,
        };
        messages.push((int(&seq)?, data));
    }
    Some(PageReply {
        gap,
        first_seq,
        last_seq,
        messages,
    })
}

pub(super) fn to_backlog(epoch: u64, p: PageReply) -> BacklogPage {
    BacklogPage {
        epoch,
        last_seq: p.last_seq,
        gap_first_seq: p.gap.then_some(p.first_seq),
        messages: p.messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_parse() {
        let one = [
            Value::Int(7),
            Value::Int(99),
            Value::Int(0),
            bulk("3:5:w"),
            bulk("replid"),
            Value::Int(1),
        ];
        let two = Value::Array([one.clone(), one.clone()].concat());
        let p = parse_publish_batch(&two, 2).unwrap();
        assert_eq!(p.len(), 2);
        let p = &p[1];
        assert_eq!((p.seq, p.epoch, p.duplicate, p.evicted), (7, 99, false, 1));
        assert_eq!((p.owner.as_str(), p.cause.as_str()), ("3:5:w", "replid"));
        assert!(parse_publish_batch(&two, 1).is_none());
        assert!(parse_publish_batch(&Value::Array(vec![Value::Int(1)]), 1).is_none());
        let page = parse_page(vec![
            Value::Int(1),
            Value::Int(4),
            Value::Int(9),
            Value::Int(4),
            bulk("\"a\""),
            Value::Int(5),
            bulk("1"),
        ])
        .unwrap();
        assert_eq!((page.gap, page.first_seq, page.last_seq), (true, 4, 9));
        assert_eq!(page.messages[1], (5, Bytes::from_static(b"1")));
        let b = to_backlog(3, page);
        assert_eq!((b.gap_first_seq, b.last_seq, b.epoch), (Some(4), 9, 3));
        assert!(parse_page(vec![Value::Int(0), Value::Int(1)]).is_none());
        assert!(parse_page(vec![
            Value::Int(0),
            Value::Int(1),
            Value::Int(0),
            Value::Int(1)
        ])
        .is_none());
    }
}
