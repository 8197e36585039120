//! The JSON a client receives, rendered straight into a caller's buffer.
//!
//! A published payload is turned into its `data` JSON once, at publish time
//! ([`payload_to_data`]); every delivery then only copies those bytes between a fixed
//! prefix and suffix, so no per-delivery serialization happens anywhere.

use bytes::Bytes;

/// Turns a published body into the JSON text of the `data` field: the body itself (a
/// zero-copy slice, trimmed) when it is one valid JSON value, compacted onto one line by
/// [`json_to_data`] when it spans lines, else a JSON string of the body (lossy UTF-8).
pub fn payload_to_data(body: Bytes) -> Bytes {
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
        let trimmed = body.trim_ascii();
        let start = trimmed.as_ptr() as usize - body.as_ptr() as usize;
        return json_to_data(body.slice(start..start + trimmed.len()));
    }
    let text = String::from_utf8_lossy(&body);
    Bytes::from(serde_json::to_vec(&text).expect("a string always serializes"))
}

/// The `data` text of a JSON value already known to be valid (a batch line's or a
/// broadcast's raw `data`): kept as it is when it has no line breaks, else compacted by
/// dropping the whitespace outside strings (SSE `data:` lines must not break). Only
/// whitespace goes: key order, numbers and duplicate keys stay exactly as sent.
pub fn json_to_data(json: Bytes) -> Bytes {
    if !json.contains(&b'\n') && !json.contains(&b'\r') {
        return json;
    }
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.iter() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            in_string = b == b'"';
        }
    }
    Bytes::from(out)
}

/// Appends `{"seq":N,"data":DATA}` to `out`.
pub fn write_message(out: &mut Vec<u8>, seq: u64, data: &[u8]) {
    out.extend_from_slice(b"{\"seq\":");
    write_u64(out, seq);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
}

/// Length of what [`write_message`] appends, for sizing frames before writing them.
pub fn message_len(seq: u64, data: &[u8]) -> usize {
    b"{\"seq\":,\"data\":}".len() + decimal_len(seq) + data.len()
}

/// Appends `{"gap":true,"epoch":E,"first_seq":N}` to `out`.
pub fn write_gap(out: &mut Vec<u8>, epoch: u64, first_seq: u64) {
    out.extend_from_slice(b"{\"gap\":true,\"epoch\":");
    write_u64(out, epoch);
    out.extend_from_slice(b",\"first_seq\":");
    write_u64(out, first_seq);
    out.push(b'}');
}

/// The contract's error body: `{"error":"<code>","message":"<text>"}`.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

/// Appends the decimal digits of `n` (`itoa`: no formatter machinery on the hot path).
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(body: &'static [u8]) -> Bytes {
        payload_to_data(Bytes::from_static(body))
    }

    #[test]
    fn json_payload_is_kept_verbatim() {
        assert_eq!(&data(br#"{"a":1}"#)[..], br#"{"a":1}"#);
        assert_eq!(&data(b" [1,2] \n")[..], b"[1,2]");
        assert_eq!(&data(b"42")[..], b"42");
    }

    #[test]
    fn multiline_json_is_compacted() {
        assert_eq!(&data(b"{\n  \"a\": 1\n}")[..], br#"{"a":1}"#);
        // Only whitespace goes: key order, big numbers, spaces and escapes in strings stay.
        let sent = b"{\n  \"z\": 123456789012345678901234567890,\n  \"a\": \"x y \\\" \\\\\"\n}";
        assert_eq!(
            &data(sent)[..],
            br#"{"z":123456789012345678901234567890,"a":"x y \" \\"}"#
        );
    }

    #[test]
    fn non_json_becomes_a_string() {
        assert_eq!(&data(b"hello world")[..], br#""hello world""#);
        assert_eq!(&data(b"line1\nline\"2")[..], br#""line1\nline\"2""#);
        assert_eq!(&data(b"")[..], br#""""#);
    }

    #[test]
    fn numbers_render_exactly() {
        for n in [0, 9, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            assert_eq!(message_len(n, b"1"), {
                let mut m = Vec::new();
                write_message(&mut m, n, b"1");
                m.len()
            });
        }
    }

    #[test]
    fn message_and_gap_render() {
        let mut out = Vec::new();
        write_message(&mut out, 17, br#"{"x":true}"#);
        assert_eq!(out, br#"{"seq":17,"data":{"x":true}}"#);
        assert_eq!(message_len(17, br#"{"x":true}"#), out.len());
        out.clear();
        write_gap(&mut out, 9, 3);
        assert_eq!(out, br#"{"gap":true,"epoch":9,"first_seq":3}"#);
        let v: serde_json::Value =
            serde_json::from_str(&error_body("bad_channel", "no \"")).unwrap();
        assert_eq!(v["error"], "bad_channel");
        assert_eq!(v["message"], "no \"");
    }
}
