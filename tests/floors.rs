//! The dependency rule of the crate (docs/ARCHITECTURE.md, "Floors"): a module imports only
//! from floors below its own, and no two source files depend on each other in a circle.
//!
//! The floor table is read from docs/ARCHITECTURE.md itself (between the `floors` markers),
//! so the document and the check cannot drift apart. Edges are the `crate::` and `super::`
//! paths of every source file: `use` trees (grouped ones too) and paths written inline.
//! Edges between a module and its own ancestors or descendants (a `mod.rs` and the files
//! that split its `impl`s) are not counted for cycles: that is one module's inside.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `module path -> file` for every file under src/ (lib.rs and main.rs excluded: they only
/// declare and re-export).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut m = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|l| l == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts == ["main"] {
            continue;
        }
        m.insert(parts.join("::"), f);
    }
    m
}

/// The floor of each top-level module, from the table in docs/ARCHITECTURE.md:
/// `| <floor> | `a`, `b` | ... |` rows between `<!-- floors -->` and `<!-- /floors -->`.
fn floors() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/ARCHITECTURE.md")).unwrap();
    let start = doc
        .find("<!-- floors -->")
        .expect("floors table start marker");
    let end = doc
        .find("<!-- /floors -->")
        .expect("floors table end marker");
    let mut out = BTreeMap::new();
    for line in doc[start..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let Ok(floor) = cells[1].parse::<u32>() else {
            continue;
        };
        for name in cells[2].split(',') {
            let name = name.trim().trim_matches('`');
            if !name.is_empty() {
                out.insert(name.to_string(), floor);
            }
        }
    }
    assert!(
        !out.is_empty(),
        "no floor rows found in docs/ARCHITECTURE.md"
    );
    out
}

/// Source text without comments, string literals and `#[cfg(test)] mod tests { .. }`
/// blocks (their `super::*` is the file's own module).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"' would otherwise open a string); lifetimes pass through.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    // Drop inline test modules.
    while let Some(at) = out.find("#[cfg(test)]\nmod tests {") {
        let open = at + out[at..].find('{').unwrap();
        let mut depth = 0;
        let mut end = out.len();
        for (k, c) in out[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    // A rename (`x as y`) keeps the path it names.
    let tree: String = tree
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" as ", "@")
        .split_whitespace()
        .collect();
    fn go(prefix: &str, t: &str, out: &mut Vec<String>) {
        match t.find('{') {
            None => {
                let t = t.split('@').next().unwrap_or(t);
                out.push(format!("{prefix}{t}"));
            }
            Some(open) => {
                let head = &t[..open];
                let inner = &t[open + 1..t.rfind('}').unwrap_or(t.len())];
                let mut depth = 0;
                let mut last = 0;
                for (k, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            go(&format!("{prefix}{head}"), &inner[last..k], out);
                            last = k + 1;
                        }
                        _ => {}
                    }
                }
                if last < inner.len() {
                    go(&format!("{prefix}{head}"), &inner[last..], out);
                }
            }
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

/// Every `crate::` / `super::` path a file names, made absolute (`a::b::c`).
fn paths(module: &str, is_mod_rs: bool, text: &str) -> Vec<String> {
    let code = code(text);
    let mut raw = Vec::new();
    // `use` statements, possibly over several lines.
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        let Some(semi) = after.find(';') else { break };
        if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
            raw.extend(expand(&after[..semi]));
        }
        rest = &after[semi..];
    }
    // Inline paths.
    for (at, _) in code.match_indices("crate::") {
        let tail: String = code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        raw.push(tail);
    }
    for (at, _) in code.match_indices("super::") {
        if code[..at].ends_with("super::") || code[..at].ends_with(':') {
            continue;
        }
        let tail: String = code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        raw.push(tail);
    }
    let here: Vec<&str> = module.split("::").collect();
    let mut out = Vec::new();
    for p in raw {
        let p = p.trim_end_matches(':');
        if let Some(r) = p.strip_prefix("crate::") {
            out.push(r.to_string());
        } else if p.starts_with("super::") {
            // In `a/b/mod.rs` (module a::b) and in `a/b.rs` alike, `super` is `a`.
            let mut base: Vec<&str> = here.clone();
            let _ = is_mod_rs;
            let mut r = p;
            while let Some(x) = r.strip_prefix("super::") {
                base.pop();
                r = x;
            }
            let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            v.push(r.to_string());
            out.push(v.join("::"));
        }
    }
    out
}

/// The module a path lands in: its longest prefix that is a module.
fn target(path: &str, mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

fn top(m: &str) -> &str {
    m.split("::").next().unwrap_or(m)
}

/// (from module, to module) for every reference between modules.
fn edges(mods: &BTreeMap<String, PathBuf>) -> BTreeSet<(String, String)> {
    let mut e = BTreeSet::new();
    for (m, file) in mods {
        let text = std::fs::read_to_string(file).unwrap();
        let is_mod_rs = file.ends_with("mod.rs");
        for p in paths(m, is_mod_rs, &text) {
            if let Some(t) = target(&p, mods) {
                if t != *m {
                    e.insert((m.clone(), t));
                }
            }
        }
    }
    e
}

#[test]
fn every_module_imports_only_from_floors_below_it() {
    let mods = modules();
    let floors = floors();
    let mut unplaced = BTreeSet::new();
    for m in mods.keys() {
        if !floors.contains_key(top(m)) {
            unplaced.insert(top(m).to_string());
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules without a floor in docs/ARCHITECTURE.md: {unplaced:?}"
    );
    let mut back = Vec::new();
    for (from, to) in edges(&mods) {
        let (a, b) = (top(&from), top(&to));
        if a == b {
            continue;
        }
        if floors[b] >= floors[a] {
            back.push(format!(
                "{from} (floor {}) -> {to} (floor {})",
                floors[a], floors[b]
            ));
        }
    }
    assert!(
        back.is_empty(),
        "imports that do not go down a floor:\n  {}",
        back.join("\n  ")
    );
}

#[test]
fn no_two_files_depend_on_each_other_in_a_circle() {
    let mods = modules();
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (a, b) in edges(&mods) {
        if !related(&a, &b) {
            graph.entry(a).or_default().push(b);
        }
    }
    // Depth-first search with colours; a grey node met again closes a cycle.
    fn visit(
        n: &str,
        g: &BTreeMap<String, Vec<String>>,
        colour: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        colour.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match colour.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, colour, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(n.to_string(), 2);
        None
    }
    let mut colour = BTreeMap::new();
    for n in graph.keys() {
        if colour.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &graph, &mut colour, &mut Vec::new()) {
                panic!("a dependency cycle between files: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn the_reader_finds_the_edges_it_must() {
    // The parser itself: grouped trees, renames, `super::` from a nested file.
    let p = paths(
        "proxy::upstream::client::body",
        false,
        "use crate::{a::{b, c::D as E}, f};\nuse super::{Conn, Io};\nfn x() { crate::g::h(); }\n// use crate::comment;\nlet s = \"crate::string\";",
    );
    for want in [
        "a::b",
        "a::c::D",
        "f",
        "proxy::upstream::client::Conn",
        "g::h",
    ] {
        assert!(p.iter().any(|x| x == want), "{want} not in {p:?}");
    }
    assert!(!p
        .iter()
        .any(|x| x.contains("comment") || x.contains("string")));
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut long = Vec::new();
    for file in modules().values() {
        let n = std::fs::read_to_string(file).unwrap().lines().count();
        if n > 600 {
            long.push(format!("{} ({n} lines)", file.display()));
        }
    }
    assert!(long.is_empty(), "files over ~600 lines: {long:?}");
}
