//! `ndjson_batch` and `broadcast_body`: the gateway's publish body parsers.

use crate::Input;
use gateway::{broadcast, ndjson};
use std::collections::HashSet;

/// What every accepted `data` must be: one line of valid JSON (SSE `data:` lines must not
/// break), within the bound, and valid in the envelope the clients get.
fn check_data(data: &[u8], max_data: usize) {
    assert!(data.len() <= max_data, "{} > {max_data}", data.len());
    assert!(
        !data.contains(&b'\n') && !data.contains(&b'\r'),
        "a line break in data"
    );
    // JSON by the grammar (RFC 8259), as the single publish checks it: a lone surrogate
    // escape or a number past f64 is JSON there, though `serde_json::Value` refuses both.
    let json = |b: &[u8]| serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok();
    assert!(json(data), "data is not JSON");
    let mut msg = Vec::new();
    protocol::envelope::write_message(&mut msg, 7, data);
    assert!(json(&msg), "the message is not JSON");
}

fn bounds(input: &mut Input<'_>) -> (usize, usize) {
    let max_lines = 1 + input.u8() as usize % 64;
    let max_data = [16, 256, 65536][input.u8() as usize % 3];
    (max_lines, max_data)
}

pub fn ndjson_batch(data: &[u8]) {
    let mut input = Input::new(data);
    let (max_lines, max_data) = bounds(&mut input);
    let body = input.rest();
    let lines = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .count();
    match ndjson::parse_batch(body, max_lines, max_data) {
        Err(ndjson::BatchError::TooManyLines(n)) => {
            assert_eq!(n, max_lines);
            assert!(lines > max_lines);
        }
        Ok((good, bad)) => {
            assert_eq!(
                good.len() + bad.len(),
                lines,
                "every non-blank line is told"
            );
            let mut numbers: Vec<usize> = good
                .iter()
                .map(|g| g.line)
                .chain(bad.iter().map(|b| b.line))
                .collect();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), lines, "line numbers are unique");
            let raw: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
            for g in &good {
                assert!(g.line >= 1 && g.line <= raw.len());
                assert!(!raw[g.line - 1].trim_ascii().is_empty());
                protocol::validate_channel(&g.channel).expect("valid channel");
                check_data(&g.data, max_data);
                if let Some(k) = &g.key {
                    ndjson::check_key(k).expect("valid key");
                }
            }
        }
    }
}

pub fn broadcast_body(data: &[u8]) {
    let mut input = Input::new(data);
    let (max_channels, max_data) = bounds(&mut input);
    let body = input.rest();
    let Ok(b) = broadcast::parse(body, max_channels, max_data) else {
        return;
    };
    assert!(b.channels.len() <= max_channels);
    check_data(&b.data, max_data);
    if let Some(k) = &b.key {
        ndjson::check_key(k).expect("valid key");
    }
    let (good, bad) = broadcast::split_channels(&b.channels);
    assert_eq!(good.len() + bad.len(), b.channels.len());
    let mut seen = HashSet::new();
    for c in &good {
        protocol::validate_channel(c).expect("valid channel");
        assert!(seen.insert(*c), "a channel published twice");
    }
    // Each refused name is invalid or repeats one before it.
    for r in &bad {
        assert!(protocol::validate_channel(&r.channel).is_err() || seen.contains(&*r.channel));
    }
}
