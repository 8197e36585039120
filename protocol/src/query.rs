//! Query strings and percent-encoding, the one decoder both binaries use, so that the
//! gateway (which checks a token's channel at assign) and the worker (which checks it again
//! at subscribe) can never read the same URL two ways.
//!
//! Strict: a `%` not followed by two hex digits, or escapes that decode to invalid UTF-8,
//! are an error, not something to guess at.

use std::borrow::Cow;
use std::fmt::Write as _;

/// A query string or path segment that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("malformed percent-escape")]
    BadEscape,
    #[error("percent-escapes do not decode to UTF-8")]
    BadUtf8,
}

/// Decodes `%XX` escapes (and `+` as a space when `plus` is set, as in query strings).
pub fn percent_decode(s: &str, plus: bool) -> Result<Cow<'_, str>, QueryError> {
    if !s.bytes().any(|b| b == b'%' || (plus && b == b'+')) {
        return Ok(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(QueryError::BadEscape);
                };
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| QueryError::BadUtf8)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The `key=value` pairs of a query string, each decoded (`+` is a space); empty pairs
/// (`a&&b`) are skipped, a key without `=` has an empty value.
pub fn query_pairs(
    query: &str,
) -> impl Iterator<Item = Result<(Cow<'_, str>, Cow<'_, str>), QueryError>> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Ok((percent_decode(k, true)?, percent_decode(v, true)?))
    })
}

/// Appends `s` encoded for a query value: unreserved characters and `:` `@` stay as they are.
pub fn percent_encode_into(out: &mut String, s: &str) {
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(c as char);
        } else {
            let _ = write!(out, "%{c:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(percent_decode("a%3Ab+c", true).unwrap(), "a:b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("plain", true).unwrap(), "plain");
        assert!(matches!(
            percent_decode("plain", true).unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(percent_decode("%c3%A9", true).unwrap(), "é");
    }

    #[test]
    fn malformed_is_an_error_on_both_sides() {
        for bad in ["%zz", "%4", "100%", "%", "a%g1", "%zz%41"] {
            assert_eq!(
                percent_decode(bad, true),
                Err(QueryError::BadEscape),
                "{bad}"
            );
        }
        assert_eq!(percent_decode("%ff", true), Err(QueryError::BadUtf8));
        let pairs: Result<Vec<_>, _> = query_pairs("channel=a&x=%zz").collect();
        assert_eq!(pairs, Err(QueryError::BadEscape));
    }

    #[test]
    fn pairs_and_encoding_roundtrip() {
        let pairs: Vec<_> = query_pairs("channel=a%40b&token=t.x-y_&&flag")
            .map(|p| p.unwrap())
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("channel".into(), "a@b".into()),
                ("token".into(), "t.x-y_".into()),
                ("flag".into(), "".into())
            ]
        );
        let mut s = String::new();
        percent_encode_into(&mut s, "user:1@x y&z=é+");
        assert_eq!(s, "user:1@x%20y%26z%3D%C3%A9%2B");
        assert_eq!(percent_decode(&s, true).unwrap(), "user:1@x y&z=é+");
    }
}
