//! Long-poll answers: `{"messages":[{"seq":N,"data":...}],"next":S2}` with the gap fields
//! when a resume could not be served whole. No I/O.

/// Builds a poll body in a reused buffer.
#[derive(Debug, Default)]
pub struct PollBody {
    buf: Vec<u8>,
    count: usize,
}

impl PollBody {
    /// Starts an empty body (keeps the buffer's allocation).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(b"{\"messages\":[");
        self.count = 0;
    }

    /// Messages added since [`PollBody::clear`].
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds one `{"seq":N,"data":...}`.
    pub fn push(&mut self, seq: u64, data: &[u8]) {
        if self.buf.is_empty() {
            self.clear();
        }
        if self.count > 0 {
            self.buf.push(b',');
        }
        protocol::envelope::write_message(&mut self.buf, seq, data);
        self.count += 1;
    }

    /// Closes the body with `next` and, for a gap, `"gap":true,"epoch":E,"first_seq":N`.
    pub fn finish(&mut self, next: u64, gap: Option<(u64, u64)>) -> &[u8] {
        if self.buf.is_empty() {
            self.clear();
        }
        self.buf.extend_from_slice(b"],\"next\":");
        protocol::envelope::write_u64(&mut self.buf, next);
        if let Some((epoch, first_seq)) = gap {
            self.buf.extend_from_slice(b",\"gap\":true,\"epoch\":");
            protocol::envelope::write_u64(&mut self.buf, epoch);
            self.buf.extend_from_slice(b",\"first_seq\":");
            protocol::envelope::write_u64(&mut self.buf, first_seq);
        }
        self.buf.push(b'}');
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_render() {
        let mut b = PollBody::default();
        b.clear();
        assert_eq!(b.finish(7, None), br#"{"messages":[],"next":7}"#);
        b.clear();
        b.push(8, b"1");
        b.push(9, br#""x""#);
        assert_eq!(b.count(), 2);
        assert_eq!(
            b.finish(9, Some((3, 8))),
            br#"{"messages":[{"seq":8,"data":1},{"seq":9,"data":"x"}],"next":9,"gap":true,"epoch":3,"first_seq":8}"#
        );
    }
}
