//! Parsing of NDJSON publish batches (`POST /v1/publish`): one
//! `{"channel": "...", "data": <any JSON>, "id": "<optional key>"}` per line. Pure: bad lines
//! become rejections with their 1-based line number, good lines are kept.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// One accepted line of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLine {
    /// 1-based line number in the body.
    pub line: usize,
    pub channel: String,
    /// The `data` JSON, compact and on one line.
    pub data: Bytes,
    pub key: Option<String>,
}

/// One refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub line: usize,
    pub error: String,
}

/// A batch refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the batch has more than {0} lines")]
    TooManyLines(usize),
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// Keeps an explicit `null` apart from a missing field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Checks an idempotency key (header or batch `id`).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!("idempotency key must be 1-{MAX_KEY_LEN} bytes"));
    }
    Ok(())
}

/// Splits and checks a batch body. Blank lines are skipped (but counted for numbering);
/// more than `max_lines` non-blank lines refuses the batch.
pub fn parse_batch(
    body: &[u8],
    max_lines: usize,
    max_data: usize,
) -> Result<(Vec<BatchLine>, Vec<Rejected>), BatchError> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut count = 0usize;
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let text = raw.trim_ascii();
        if text.is_empty() {
            continue;
        }
        count += 1;
        if count > max_lines {
            return Err(BatchError::TooManyLines(max_lines));
        }
        match parse_line(text, max_data) {
            Ok((channel, data, key)) => good.push(BatchLine {
                line: i + 1,
                channel,
                data,
                key,
            }),
            Err(error) => bad.push(Rejected { line: i + 1, error }),
        }
    }
    Ok((good, bad))
}

fn parse_line(text: &[u8], max_data: usize) -> Result<(String, Bytes, Option<String>), String> {
    // serde's derived struct reader also takes an array of the fields in order: a line
    // must be an object.
    if is_array(text) {
        return Err("a line must be a JSON object, not an array".into());
    }
    let line: Line<'_> = serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let channel = line.channel.ok_or("missing channel")?;
    protocol::validate_channel(&channel).map_err(|e| format!("bad channel: {e}"))?;
    let raw = line.data.ok_or("missing data")?;
    let data = protocol::envelope::json_to_data(Bytes::copy_from_slice(raw.get().as_bytes()));
    if data.len() > max_data {
        return Err(format!("data exceeds {max_data} bytes"));
    }
    let key = match line.id {
        Some(k) => {
            check_key(&k)?;
            Some(k.into_owned())
        }
        None => None,
    };
    Ok((channel.into_owned(), data, key))
}

/// Whether `text` starts, past whitespace, with `[` (what else is no object, serde's
/// reader already refuses with its own message).
pub fn is_array(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_not_lines() {
        // Positional fields, as serde's derived reader would take them.
        let body = "[\"a\", {\"x\":1}]\n [\"b\", 2, \"key\"]\n{\"channel\":\"c\",\"data\":3}\n";
        let (good, bad) = parse_batch(body.as_bytes(), 100, 100).unwrap();
        assert_eq!(good.len(), 1, "only the object line");
        assert_eq!(good[0].channel, "c");
        assert_eq!(bad.len(), 2);
        assert!(
            bad.iter().all(|b| b.error.contains("JSON object")),
            "{bad:?}"
        );
    }

    #[test]
    fn good_and_bad_lines() {
        let body = concat!(
            "{\"channel\":\"a\",\"data\":{\"x\":1}}\n",
            "\n",
            "not json\n",
            "{\"channel\":\"b c\",\"data\":1}\r\n",
            "{\"channel\":\"c\"}\n",
            "{\"channel\":\"d\",\"data\":null,\"id\":\"k1\"}\n",
            "{\"channel\":\"e\",\"data\":\"0123456789abcdef\"}\n",
            "  {\"channel\":\"f\",\"data\":[1, 2],\"id\":\"\"}  \n",
            "{\"channel\":\"g\",\"data\":\"ok\"}",
        );
        let (good, bad) = parse_batch(body.as_bytes(), 100, 16).unwrap();
        let lines: Vec<_> = good
            .iter()
            .map(|g| (g.line, g.channel.as_str(), &g.data[..]))
            .collect();
        assert_eq!(
            lines,
            vec![
                (1, "a", &br#"{"x":1}"#[..]),
                (6, "d", &b"null"[..]),
                (9, "g", &br#""ok""#[..])
            ]
        );
        assert_eq!(good[1].key.as_deref(), Some("k1"));
        let rejected: Vec<_> = bad.iter().map(|r| r.line).collect();
        assert_eq!(rejected, vec![3, 4, 5, 7, 8]);
        assert!(bad[0].error.starts_with("invalid JSON"));
        assert!(bad[1].error.starts_with("bad channel"));
        assert_eq!(bad[2].error, "missing data");
        assert!(bad[3].error.contains("exceeds 16 bytes"));
        assert!(bad[4].error.contains("idempotency key"));
    }

    #[test]
    fn escaped_channel_and_carriage_returns() {
        let body = b"{\"channel\":\"a\\u0062\",\"data\":{\"k\":\r1}}";
        let (good, bad) = parse_batch(body, 10, 100).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(good[0].channel, "ab");
        assert_eq!(&good[0].data[..], br#"{"k":1}"#);
    }

    #[test]
    fn too_many_lines() {
        let body = "{\"channel\":\"a\",\"data\":1}\n".repeat(3);
        assert!(parse_batch(body.as_bytes(), 3, 100).is_ok());
        assert_eq!(
            parse_batch(body.as_bytes(), 2, 100),
            Err(BatchError::TooManyLines(2))
        );
    }
}
