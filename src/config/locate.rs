//! Maps a dotted key path (as serde reports it) back to a line of the conf file, so every
//! config error can name `file:line:key`.

use toml_edit::{Document, Item, Value};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a path as `backends.servers[1].url`.
pub(super) fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// 1-based line of the deepest element of `path` found in `doc`.
pub(super) fn line_of(doc: &Document<String>, text: &str, path: &[Seg]) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut item: Option<&Item> = None;
    let mut value: Option<&Value> = None;
    for (i, seg) in path.iter().enumerate() {
        let (next_item, next_value, span) = match seg {
            Seg::Key(k) => {
                let table = if i == 0 {
                    Some(doc.as_table() as &dyn toml_edit::TableLike)
                } else if let Some(v) = value {
                    v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike)
                } else {
                    item.and_then(|it| it.as_table_like())
                };
                let Some((key, it)) = table.and_then(|t| t.get_key_value(k)) else {
                    break;
                };
                let span = key.span().or_else(|| it.span());
                match it {
                    Item::Value(v) => (None, Some(v), span),
                    other => (Some(other), None, span),
                }
            }
            Seg::Index(n) => {
                if let Some(arr) = value.and_then(|v| v.as_array()) {
                    let Some(v) = arr.get(*n) else { break };
                    (None, Some(v), v.span())
                } else if let Some(Item::ArrayOfTables(aot)) = item {
                    let Some(t) = aot.get(*n) else { break };
                    // Arrays of tables are not in caracal's conf shape: stop at the element.
                    (None, None, t.span())
                } else if let Some(arr) = item.and_then(|it| it.as_array()) {
                    let Some(v) = arr.get(*n) else { break };
                    (None, Some(v), v.span())
                } else {
                    break;
                }
            }
        };
        if let Some(span) = span {
            best = Some(line_at(text, span.start));
        }
        item = next_item;
        value = next_value;
    }
    best
}

/// 1-based line number of a byte offset.
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
