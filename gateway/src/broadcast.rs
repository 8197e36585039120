//! Parsing of broadcast requests (`POST /v1/broadcast`):
//! `{"channels": ["c1", ...], "data": <any JSON>, "id": "<optional key>"}`. Pure: the body is
//! checked as a whole (shape, channel count, data size, key), then each channel name on its
//! own; a bad or repeated name is a rejection, never the end of the others.

use crate::ndjson;
use bytes::Bytes;
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

/// A parsed broadcast; channel names borrow from the body where they can.
#[derive(Debug)]
pub struct Broadcast<'a> {
    pub channels: Vec<Cow<'a, str>>,
    /// The `data` JSON, compact and on one line, rendered once for every channel.
    pub data: Bytes,
    pub key: Option<Cow<'a, str>>,
}

/// A body refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// 400.
    #[error("{0}")]
    Invalid(String),
    /// 413.
    #[error("the broadcast names more than {0} channels")]
    TooManyChannels(usize),
    /// 413.
    #[error("data exceeds {0} bytes")]
    DataTooLarge(usize),
}

/// One refused channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub channel: String,
    pub error: String,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    channels: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// Keeps an explicit `null` apart from a missing field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// A string that borrows from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a channel name (string)")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The `channels` array, stopping as soon as it passes `max` (so an oversized list costs
/// no more than `max` names).
struct ChannelsSeed<'c> {
    max: usize,
    too_many: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for ChannelsSeed<'_> {
    type Value = Vec<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ChannelsSeed<'_> {
    type Value = Vec<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of channel names")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        while let Some(CowStr(c)) = seq.next_element()? {
            if out.len() == self.max {
                self.too_many.set(true);
                return Err(A::Error::custom("too many channels"));
            }
            out.push(c);
        }
        Ok(out)
    }
}

/// Parses and checks a broadcast body: at most `max_channels` names, `data` of at most
/// `max_data` bytes once rendered, a valid key if any. Names are not validated here
/// (see [`split_channels`]).
pub fn parse(
    body: &[u8],
    max_channels: usize,
    max_data: usize,
) -> Result<Broadcast<'_>, BroadcastError> {
    // serde's derived struct reader also takes an array of the fields in order.
    if crate::ndjson::is_array(body) {
        return Err(BroadcastError::Invalid(
            "the body must be a JSON object, not an array".into(),
        ));
    }
    let b: Body<'_> = serde_json::from_slice(body)
        .map_err(|e| BroadcastError::Invalid(format!("invalid JSON body: {e}")))?;
    let raw_channels = b
        .channels
        .ok_or_else(|| BroadcastError::Invalid("missing channels".into()))?;
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(raw_channels.get());
    let channels = ChannelsSeed {
        max: max_channels,
        too_many: &too_many,
    }
    .deserialize(&mut de)
    .map_err(|e| {
        if too_many.get() {
            BroadcastError::TooManyChannels(max_channels)
        } else {
            BroadcastError::Invalid(format!("channels must be an array of strings: {e}"))
        }
    })?;
    let raw = b
        .data
        .ok_or_else(|| BroadcastError::Invalid("missing data".into()))?;
    let data = protocol::envelope::json_to_data(Bytes::copy_from_slice(raw.get().as_bytes()));
    if data.len() > max_data {
        return Err(BroadcastError::DataTooLarge(max_data));
    }
    if let Some(k) = &b.id {
        ndjson::check_key(k).map_err(BroadcastError::Invalid)?;
    }
    Ok(Broadcast {
        channels,
        data,
        key: b.id,
    })
}

/// Splits the names into the ones to publish on (valid, first occurrence, in order) and
/// the rejected ones (bad name, or repeated: a channel gets the message once).
pub fn split_channels<'b>(channels: &'b [Cow<'_, str>]) -> (Vec<&'b str>, Vec<Rejected>) {
    let mut good = Vec::with_capacity(channels.len());
    let mut bad = Vec::new();
    let mut seen: HashSet<&str> = HashSet::with_capacity(channels.len());
    for c in channels {
        let c: &str = c;
        if let Err(e) = protocol::validate_channel(c) {
            bad.push(Rejected {
                channel: c.to_owned(),
                error: format!("bad channel: {e}"),
            });
        } else if !seen.insert(c) {
            bad.push(Rejected {
                channel: c.to_owned(),
                error: "duplicate channel".into(),
            });
        } else {
            good.push(c);
        }
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_is_not_a_body() {
        let e = parse(br#"[["a","b"], {"x":1}]"#, 10, 100).err().unwrap();
        assert!(
            matches!(&e, BroadcastError::Invalid(m) if m.contains("JSON object")),
            "{e:?}"
        );
        assert!(parse(br#"  {"channels":["a"],"data":1}"#, 10, 100).is_ok());
    }

    #[test]
    fn parses_channels_data_and_key() {
        let body = br#"{"channels":["a","b\u0063"],"data":{"x": [1, 2]},"id":"k1"}"#;
        let b = parse(body, 10, 100).unwrap();
        assert_eq!(b.channels, vec!["a", "bc"]);
        assert!(
            matches!(b.channels[0], Cow::Borrowed(_)),
            "no copy when unescaped"
        );
        assert_eq!(&b.data[..], br#"{"x": [1, 2]}"#);
        assert_eq!(b.key.as_deref(), Some("k1"));
        // Multi-line data is re-serialized onto one line.
        let b = parse(b"{\"data\":{\"k\":\n1},\"channels\":[]}", 10, 100).unwrap();
        assert_eq!(&b.data[..], br#"{"k":1}"#);
        assert!(b.channels.is_empty());
        assert_eq!(b.key, None);
        // null is data.
        assert_eq!(
            &parse(br#"{"channels":["a"],"data":null}"#, 1, 100)
                .unwrap()
                .data[..],
            b"null"
        );
    }

    #[test]
    fn whole_body_errors() {
        let inv = |body: &[u8]| match parse(body, 2, 8) {
            Err(BroadcastError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(inv(b"nope").contains("invalid JSON"));
        assert!(inv(br#"{"data":1}"#).contains("missing channels"));
        assert!(inv(br#"{"channels":["a"]}"#).contains("missing data"));
        assert!(inv(br#"{"channels":"a","data":1}"#).contains("array of strings"));
        assert!(inv(br#"{"channels":["a",1],"data":1}"#).contains("array of strings"));
        assert!(inv(br#"{"channels":["a"],"data":1,"id":""}"#).contains("idempotency key"));
        assert_eq!(
            parse(br#"{"channels":["a","b","c"],"data":1}"#, 2, 8).unwrap_err(),
            BroadcastError::TooManyChannels(2)
        );
        assert!(parse(br#"{"channels":["a","b"],"data":1}"#, 2, 8).is_ok());
        assert_eq!(
            parse(br#"{"channels":["a"],"data":"123456789"}"#, 2, 8).unwrap_err(),
            BroadcastError::DataTooLarge(8)
        );
    }

    #[test]
    fn bad_and_repeated_names_are_rejected_alone() {
        let names: Vec<Cow<'_, str>> = ["a", "b c", "a", "", "d"]
            .iter()
            .map(|s| Cow::Borrowed(*s))
            .collect();
        let (good, bad) = split_channels(&names);
        assert_eq!(good, vec!["a", "d"]);
        let bad: Vec<_> = bad
            .iter()
            .map(|r| (r.channel.as_str(), r.error.split(':').next().unwrap()))
            .collect();
        assert_eq!(
            bad,
            vec![
                ("b c", "bad channel"),
                ("a", "duplicate channel"),
                ("", "bad channel")
            ]
        );
    }
}
