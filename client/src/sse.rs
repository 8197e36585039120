//! An incremental `text/event-stream` parser: bytes in, events out.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen (it carries over to later events, as in `EventSource`).
    pub id: Option<String>,
    /// `event:`, or `message` when none was given.
    pub event: String,
}

/// Feeds bytes, collects events (`id:`, `event:`, `data:`; comments and other fields
/// ignored; lines end with LF, CR LF or CR).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
    id: Option<String>,
    event: String,
    /// The last byte fed was a CR: an LF right after it ends no second line.
    after_cr: bool,
}

/// Most bytes one line may take: a worker's message is at most the gateway's
/// `--max-message-bytes` plus its envelope.
const MAX_LINE: usize = 64 << 20;

impl SseParser {
    /// Adds `bytes`; appends every event they complete to `out`. Errs on a line over the
    /// bound.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(i) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.buf.extend_from_slice(&bytes[..i]);
            let line = std::mem::take(&mut self.buf);
            self.line(&line, out);
            if bytes[i] == b'\r' {
                match bytes.get(i + 1) {
                    Some(b'\n') => bytes = &bytes[i + 2..],
                    Some(_) => bytes = &bytes[i + 1..],
                    None => {
                        self.after_cr = true;
                        bytes = &[];
                    }
                }
            } else {
                bytes = &bytes[i + 1..];
            }
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_LINE {
            return Err(format!("an event stream line over {MAX_LINE} bytes"));
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            if !self.data.is_empty() {
                out.push(SseEvent {
                    data: std::mem::take(&mut self.data).join("\n"),
                    id: self.id.clone(),
                    event: if self.event.is_empty() {
                        "message".into()
                    } else {
                        std::mem::take(&mut self.event)
                    },
                });
            }
            self.event.clear();
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "data" => self.data.push(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = value.to_owned(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn events_split_anywhere() {
        let stream = b"data: {\"gap\":true}\n\n:\n\nid: 5\ndata: {\"seq\":5}\n\nid: replaced\ndata: {\"closed\":\"replaced\"}\n\n";
        let whole = parse(&[stream]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].id, None);
        assert_eq!(whole[1].id.as_deref(), Some("5"));
        assert_eq!(whole[1].data, "{\"seq\":5}");
        assert_eq!(whole[2].id.as_deref(), Some("replaced"));
        for cut in 1..stream.len() {
            assert_eq!(
                parse(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn line_ends_fields_and_multiline_data() {
        let evs = parse(&[
            b"event: x\r\ndata: a\r",
            b"\ndata:b\rretry: 5\r\r\ndata\n\n",
        ]);
        assert_eq!(evs.len(), 2);
        assert_eq!((evs[0].event.as_str(), evs[0].data.as_str()), ("x", "a\nb"));
        assert_eq!(
            (evs[1].event.as_str(), evs[1].data.as_str()),
            ("message", "")
        );
    }
}
