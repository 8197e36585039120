//! The gateway's modules form no import circle: every file of `gateway/src` is a module,
//! every path it names (`use` trees, `crate::a::b` and `super::x` anywhere in its code) is an
//! edge to the deepest module that path reaches, and the graph must be acyclic.
//!
//! A circle makes two files one unit in disguise (neither can be read, tested or replaced
//! alone); at 8443bd6 there were three: `store/mod.rs -> link.rs -> store`,
//! `http.rs -> link.rs -> http.rs` and `store/mod.rs <-> store/memory.rs` (a parent that
//! re-exports its child while the child uses the parent's items).
//!
//! Rules of the reading: comments and string literals are skipped; a file is read up to its
//! first `#[cfg(test)]` line (an inline test module's `super` is the file itself, not its
//! parent); `mod x;` declarations are containment, not edges; `pub use` re-exports are edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn gateway_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.len() >= 10,
        "only {} modules found under {}",
        graph.len(),
        src.display()
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles in gateway/src:\n{}",
        cycles
            .iter()
            .map(|c| c.join(" -> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_reader_sees_every_kind_of_edge() {
    let known: BTreeSet<String> = ["crate", "crate::a", "crate::a::b", "crate::c", "crate::d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = r#"
        //! Mentions crate::d in a comment only.
        use super::c::Thing;
        use crate::{c::{self, X}, d as dee};
        pub use b::Other;
        fn f() { let s = "crate::d"; crate::c::g(); std::mem::drop(s); }
        #[cfg(test)]
        mod tests { use super::*; use crate::d; }
    "#;
    let edges = edges_of("crate::a", code, &known);
    let want: BTreeSet<String> = ["crate::a::b", "crate::c", "crate::d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(edges, want);
    // From `crate::a::b`, `super::x` is `crate::a`; a circle is found and named.
    let child = edges_of("crate::a::b", "use super::Item;", &known);
    assert_eq!(child.into_iter().collect::<Vec<_>>(), ["crate::a"]);
    let mut g = BTreeMap::new();
    g.insert(
        "crate::a".to_string(),
        BTreeSet::from(["crate::a::b".to_string()]),
    );
    g.insert(
        "crate::a::b".to_string(),
        BTreeSet::from(["crate::a".to_string()]),
    );
    assert_eq!(cycles(&g), [vec!["crate::a", "crate::a::b", "crate::a"]]);
}

/// Module path of every file under `src` -> the modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect(src, &mut files);
    let mut modules = BTreeMap::new();
    for f in &files {
        if let Some(m) = module_of(src, f) {
            modules.insert(m, f.clone());
        }
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(m, f)| {
            let code = std::fs::read_to_string(f).unwrap();
            (m.clone(), edges_of(m, &code, &known))
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/lib.rs` -> `crate`, `src/a/mod.rs` -> `crate::a`, `src/a/b.rs` -> `crate::a::b`;
/// `main.rs` is the binary, another crate.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        Some("main") if parts.len() == 1 => return None,
        Some("lib") if parts.len() == 1 => parts.clear(),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    let mut m = String::from("crate");
    for p in parts {
        m.push_str("::");
        m.push_str(&p);
    }
    Some(m)
}

/// The modules `code` (the file of module `me`) names, other than `me` itself.
fn edges_of(me: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let code = strip(code);
    let code = match code.find("#[cfg(test)]") {
        Some(i) => &code[..i],
        None => &code[..],
    };
    let me_path: Vec<&str> = me.split("::").collect();
    let mut paths: Vec<(Vec<String>, bool)> = Vec::new();
    // `use` trees.
    let mut i = 0;
    while let Some(at) = find_word(code, "use", i) {
        let end = code[at..].find(';').map_or(code.len(), |e| at + e);
        for p in expand_tree(&code[at + 3..end]) {
            paths.push((p, true));
        }
        i = end;
    }
    // `crate::...` and `super::...` anywhere (a bare `pub(crate)` names no module).
    for start in ["crate", "super"] {
        let mut i = 0;
        while let Some(at) = find_word(code, start, i) {
            let mut segs = vec![start.to_string()];
            let mut j = at + start.len();
            while code[j..].starts_with("::") {
                let rest = &code[j + 2..];
                let n = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if n == 0 {
                    break;
                }
                segs.push(rest[..n].to_string());
                j += 2 + n;
            }
            if segs.len() > 1 {
                paths.push((segs, false));
            }
            i = j.max(at + 1);
        }
    }
    let mut out = BTreeSet::new();
    for (segs, in_use) in paths {
        if let Some(target) = resolve(&me_path, &segs, in_use, known) {
            if target != me {
                out.insert(target);
            }
        }
    }
    out
}

/// The deepest known module `segs` reaches from module `me`; `None` for other crates.
fn resolve(me: &[&str], segs: &[String], in_use: bool, known: &BTreeSet<String>) -> Option<String> {
    let mut abs: Vec<String> = Vec::new();
    let mut rest = segs;
    match segs.first().map(String::as_str) {
        Some("crate") => {
            abs.push("crate".into());
            rest = &segs[1..];
        }
        Some("super") | Some("self") => {
            abs = me.iter().map(|s| s.to_string()).collect();
            while let Some(s) = rest.first() {
                match s.as_str() {
                    "super" => {
                        abs.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        Some(first) if in_use => {
            // `use child::X` names a child module of `me` (2018 paths), else another crate.
            let child = format!("{}::{first}", me.join("::"));
            if !known.contains(&child) {
                return None;
            }
            abs = me.iter().map(|s| s.to_string()).collect();
        }
        _ => return None,
    }
    let mut best = None;
    let mut cur = abs.join("::");
    if known.contains(&cur) {
        best = Some(cur.clone());
    }
    for s in rest {
        cur = format!("{cur}::{s}");
        if known.contains(&cur) {
            best = Some(cur.clone());
        } else {
            break;
        }
    }
    best
}

/// The paths of a use tree (`a::{b, c::{self, d as e}}` -> `a::b`, `a::c`, `a::c::d`).
fn expand_tree(tree: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    expand(tree, &mut Vec::new(), &mut out);
    out
}

fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim().trim_start_matches("::");
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let n = head.len();
        prefix.extend(head);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        for part in split_top(inner) {
            expand(part, prefix, out);
        }
        prefix.truncate(prefix.len() - n);
    } else {
        // `d as e`: the path is what comes before the rename.
        let path = tree.split_whitespace().next().unwrap_or("");
        let mut p = prefix.clone();
        for s in path.split("::").filter(|s| !s.is_empty()) {
            if s != "self" && s != "*" {
                p.push(s.to_string());
            }
        }
        if !p.is_empty() {
            out.push(p);
        }
    }
}

/// Splits on commas that are not inside braces.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The next `word` at or after `from` that stands alone (not part of a longer name).
fn find_word(code: &str, word: &str, from: usize) -> Option<usize> {
    let is_name = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = code.as_bytes();
    let mut i = from;
    while let Some(k) = code.get(i..)?.find(word) {
        let at = i + k;
        let before = at == 0 || !is_name(b[at - 1]);
        let after = b.get(at + word.len()).is_none_or(|&c| !is_name(c));
        if before && after {
            return Some(at);
        }
        i = at + word.len();
    }
    None
}

/// `code` with comments and string and char literals blanked out (lines kept).
fn strip(code: &str) -> String {
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) {
            let mut hashes = 0;
            let mut j = i + 1;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else if c == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3;
        } else {
            let ch = code[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Every circle, each as `a -> b -> ... -> a`, found by a depth-first walk (one per back
/// edge).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn walk(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m).copied().unwrap_or(Mark::New) {
                Mark::New => walk(m, g, marks, stack, out),
                Mark::Open => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    out.push(c);
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            walk(n, g, &mut marks, &mut Vec::new(), &mut out);
        }
    }
    out
}
