//! The docs stay true: conf/caracal.toml shows the code's defaults, docs/REFERENCE.md lists
//! only keys the config has (and every key the conf shows), and every conf and command the
//! README shows passes `caracal check`.

mod common;

use std::path::{Path, PathBuf};

use caracal::testing::load_str;
use common::check_file;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}

/// A line of conf/caracal.toml that sets a key: its number, dotted key, and whether it is
/// commented out.
struct ConfKey {
    line: usize,
    key: String,
    commented: bool,
    /// Marked `# example: …`: deliberately not the default.
    example: bool,
    /// The value as written (TOML), its trailing comment cut.
    value: String,
}

/// The keys conf/caracal.toml shows, set or commented out (`# key = value` right after the
/// `#`, under a `[section]` or `# [section]` header standing alone on its line).
fn conf_keys(text: &str) -> Vec<ConfKey> {
    let header = regex::Regex::new(r"^(?:# )?\[([a-z_.]+)\]\s*(?:#.*)?$").unwrap();
    let set = regex::Regex::new(r"^(# )?([a-z_]+) = (.*)$").unwrap();
    let mut section = String::new();
    let mut keys = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if let Some(c) = header.captures(l) {
            section = c[1].to_string();
        } else if let Some(c) = set.captures(l) {
            keys.push(ConfKey {
                line: i + 1,
                key: format!("{section}.{}", &c[2]),
                commented: c.get(1).is_some(),
                example: l.contains("# example:"),
                value: c[3].split("  #").next().unwrap_or("").trim().to_string(),
            });
        }
    }
    keys
}

/// The keys of docs/REFERENCE.md's table (between `<!-- keys -->` and `<!-- /keys -->`),
/// with their default column.
fn reference_keys() -> Vec<(String, String)> {
    let text = read("docs/REFERENCE.md");
    let table = text
        .split("<!-- keys -->")
        .nth(1)
        .and_then(|t| t.split("<!-- /keys -->").next())
        .expect("docs/REFERENCE.md has a keys table");
    let row = regex::Regex::new(r"^\| `([a-z_.]+)` \| ([^|]*) \|").unwrap();
    table
        .lines()
        .filter_map(|l| row.captures(l))
        .map(|c| (c[1].to_string(), c[2].trim().to_string()))
        .collect()
}

/// Every key conf/caracal.toml sets (uncommented) is the code's default unless it is marked
/// `# example:`: the file loads to the same config with the line removed.
#[test]
fn the_conf_shows_the_codes_defaults() {
    let path = repo("conf/caracal.toml");
    let text = read("conf/caracal.toml");
    let whole = format!("{:?}", load_str(&path, &text, &[]).unwrap());
    let keys = conf_keys(&text);
    let set: Vec<&ConfKey> = keys.iter().filter(|k| !k.commented).collect();
    assert!(
        set.len() > 60,
        "only {} keys set: the parser lost them",
        set.len()
    );
    let mut drifted = Vec::new();
    for k in set.iter().filter(|k| !k.example) {
        let without: String = text
            .lines()
            .enumerate()
            .filter(|(i, _)| i + 1 != k.line)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        let cfg = load_str(&path, &without, &[])
            .unwrap_or_else(|e| panic!("conf/caracal.toml without {}: {e}", k.key));
        if format!("{cfg:?}") != whole {
            drifted.push(format!(
                "conf/caracal.toml:{}: {} is not the default (mark it `# example: …` if meant)",
                k.line, k.key
            ));
        }
    }
    assert!(drifted.is_empty(), "{}", drifted.join("\n"));
}

/// A value for `--set key=…`: the reference's default when it is a TOML literal.
fn value_for(default: &str) -> String {
    let lit = default
        .strip_prefix('`')
        .and_then(|d| d.split('`').next())
        .unwrap_or("\"x\"");
    lit.to_string()
}

/// A TOML value, parsed (so `"a"` and `'a'` compare equal).
fn toml_value(text: &str) -> Option<toml::Value> {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()?
        .remove("v")
}

/// Every key of the reference exists in the config (the loader does not call it unknown)
/// and in conf/caracal.toml, with the default the conf shows (the test above ties that to
/// the code); every key conf/caracal.toml shows is in the reference.
#[test]
fn the_reference_names_the_configs_keys() {
    let reference = reference_keys();
    assert!(reference.len() > 80, "only {} keys read", reference.len());
    let shown = conf_keys(&read("conf/caracal.toml"));
    let conf: Vec<String> = shown.iter().map(|k| k.key.clone()).collect();
    let base = "[node]\njvm_route = \"n1\"\n[backends]\nservers = [\"http://127.0.0.1:9001\"]\n";
    let path = repo("conf/check.toml");
    let mut wrong = Vec::new();
    for (key, default) in &reference {
        if !conf.contains(key) {
            wrong.push(format!(
                "{key}: in docs/REFERENCE.md, not in conf/caracal.toml"
            ));
        }
        let literal = value_for(default);
        if let Some(k) = shown
            .iter()
            .find(|k| &k.key == key && !k.commented && !k.example)
        {
            if default.starts_with('`') && toml_value(&k.value) != toml_value(&literal) {
                wrong.push(format!(
                    "{key}: docs/REFERENCE.md says {default}, conf/caracal.toml:{} {}",
                    k.line, k.value
                ));
            }
        }
        let mut sets = vec![format!("{key}={literal}")];
        if key.starts_with("cluster.") {
            sets.push("cluster.enabled=true".into());
        }
        if let Err(e) = load_str(&path, base, &sets) {
            let e = e.to_string();
            if e.contains("unknown field") {
                wrong.push(format!(
                    "{key}: in docs/REFERENCE.md, unknown to the config: {e}"
                ));
            }
        }
    }
    for key in &conf {
        if !reference.iter().any(|(k, _)| k == key) {
            wrong.push(format!(
                "{key}: in conf/caracal.toml, not in docs/REFERENCE.md"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The README's TOML blocks are whole confs, and every command it shows that names a conf
/// (`caracal … --config FILE [--set …]`) passes `caracal check` as written: `caracal.toml`
/// is the README's own block, `conf/caracal.toml` the repository's.
#[test]
fn the_readmes_confs_and_commands_pass_check() {
    let readme = read("README.md");
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert!(!blocks.is_empty(), "the README shows no conf");
    for (i, b) in blocks.iter().enumerate() {
        let p = dir.path().join(format!("block{i}.toml"));
        std::fs::write(&p, b).unwrap();
        let (code, err) = check_file(&p, &[]);
        assert_eq!(code, 0, "README conf block {i}: {err}\n{b}");
    }
    let own = dir.path().join("block0.toml");
    let cmd = regex::Regex::new(
        r"(?:caracal|cargo run --release --)(?: check)? --config (\S+?)((?: --set \S+?)*)(?:`|\s|$)",
    )
    .unwrap();
    let mut seen = 0;
    for c in cmd.captures_iter(&readme) {
        let file = match &c[1] {
            "caracal.toml" => own.clone(),
            f => repo(f),
        };
        let sets: Vec<&str> = c[2].split(" --set ").filter(|s| !s.is_empty()).collect();
        let (code, err) = check_file(&file, &sets);
        assert_eq!(code, 0, "README: {}: {err}", &c[0]);
        seen += 1;
    }
    assert!(
        seen >= 3,
        "only {seen} commands with --config found in the README"
    );
}
