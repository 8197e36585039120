//! The JSON a client receives, rendered straight into a caller's buffer.
//!
//! A published payload is turned into its `data` JSON once, at publish time
//! ([`payload_to_data`]); every delivery then only copies those bytes between a fixed
//! prefix and suffix, so no per-delivery serialization happens anywhere.

use bytes::Bytes;

/// Turns a published body into the JSON text of the `data` field: the body itself when it
/// is one valid JSON value on one line, the same value re-serialized compactly when it
/// spans lines (SSE `data:` lines must not contain newlines), else a JSON string of the
/// body (lossy UTF-8).
pub fn payload_to_data(body: &[u8]) -> Bytes {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let trimmed = body.trim_ascii();
        if !trimmed.contains(&b'\n') && !trimmed.contains(&b'\r') {
            return Bytes::copy_from_slice(trimmed);
        }
        return Bytes::from(serde_json::to_vec(&value).expect("a Value always serializes"));
    }
    let text = String::from_utf8_lossy(body);
    Bytes::from(serde_json::to_vec(&text).expect("a string always serializes"))
}

/// Same as [`payload_to_data`] for a value already parsed (NDJSON batch lines).
pub fn value_to_data(value: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a Value always serializes"))
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

    #[test]
    fn json_payload_is_kept_verbatim() {
        assert_eq!(&payload_to_data(br#"{"a":1}"#)[..], br#"{"a":1}"#);
        assert_eq!(&payload_to_data(b" [1,2] \n")[..], b"[1,2]");
        assert_eq!(&payload_to_data(b"42")[..], b"42");
    }

    #[test]
    fn multiline_json_is_compacted() {
        assert_eq!(&payload_to_data(b"{\n  \"a\": 1\n}")[..], br#"{"a":1}"#);
    }

    #[test]
    fn non_json_becomes_a_string() {
        assert_eq!(&payload_to_data(b"hello world")[..], br#""hello world""#);
        assert_eq!(
            &payload_to_data(b"line1\nline\"2")[..],
            br#""line1\nline\"2""#
        );
        assert_eq!(&payload_to_data(b"")[..], br#""""#);
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
