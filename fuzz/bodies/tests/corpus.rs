//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, seeds and every input
//! that once broke a rule) through the targets' bodies.

use std::path::PathBuf;

fn replay(target: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    let body = fuzz_bodies::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("a target of that name");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    for f in files {
        let data = std::fs::read(&f).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| body(&data)) {
            eprintln!("{target}: {} breaks a rule", f.display());
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn every_target_has_a_test() {
    let here = include_str!("corpus.rs");
    for (name, _) in fuzz_bodies::TARGETS {
        assert!(here.contains(&format!("fn {name}()")), "{name}");
    }
}

#[test]
fn http_request() {
    replay("http_request");
}

#[test]
fn ws_frames() {
    replay("ws_frames");
}

#[test]
fn link_decode() {
    replay("link_decode");
}

#[test]
fn link_roundtrip() {
    replay("link_roundtrip");
}

#[test]
fn ndjson_batch() {
    replay("ndjson_batch");
}

#[test]
fn broadcast_body() {
    replay("broadcast_body");
}

#[test]
fn token() {
    replay("token");
}

#[test]
fn tls_ticket() {
    replay("tls_ticket");
}
