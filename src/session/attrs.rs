//! Session attributes as stored: one canonical JSON object (compact, keys sorted, ASCII-only),
//! the bytes every request sends to the backend as `X-Session` (REFERENCE 5), and the merge of a
//! change into it.
//!
//! A change carries its `-Set` object in the same canonical form ([`canonical`]), so the
//! owner and every replica merge two canonical texts: both are split into their top-level
//! members and the two sorted lists are merged, values copied as they are. Hand-written
//! because serde_json can only rebuild the whole tree (a `Value` per attribute, parsed and
//! rendered again), which was most of a session write's cost on the owner and all of it on
//! a replica. Anything the splitter does not expect (an escaped key, unsorted or repeated
//! keys, text that is not an object) takes the tree path instead, which renders the same
//! bytes for canonical input (a property test checks the two agree).

use std::cmp::Ordering;

use bytes::Bytes;
use http::HeaderValue;
use serde_json::{Map, Value};

use super::error::DirectiveError;
use super::json::to_ascii_json;

/// The canonical text of an attribute object.
pub fn canonical(attrs: &Map<String, Value>) -> Vec<u8> {
    to_ascii_json(attrs)
}

/// The attributes of a rendered session (`{}` when it is not an object).
pub(super) fn parse(rendered: &[u8]) -> Map<String, Value> {
    serde_json::from_slice(rendered).unwrap_or_default()
}

/// `current` with the canonical object `set` merged in, then the names in `remove` taken
/// out; over `max` bytes is an error. Owner and replicas run this same merge on the same
/// texts, so they hold the same bytes.
pub(super) fn merge(
    current: &[u8],
    set: Option<&[u8]>,
    remove: &[String],
    max: usize,
) -> Result<HeaderValue, DirectiveError> {
    let out = match merge_text(current, set.unwrap_or(b"{}"), remove) {
        Some(out) => out,
        None => merge_tree(current, set, remove)?,
    };
    if out.len() > max {
        return Err(DirectiveError::TooLarge {
            bytes: out.len(),
            limit: max,
        });
    }
    // An exact-size buffer: a Vec with spare capacity would cost a second allocation.
    HeaderValue::from_maybe_shared(Bytes::from(out.into_boxed_slice())).map_err(|_| {
        DirectiveError::NotText {
            header: "attributes".into(),
        }
    })
}

/// The general merge: both objects parsed, merged as maps, rendered again.
fn merge_tree(
    current: &[u8],
    set: Option<&[u8]>,
    remove: &[String],
) -> Result<Vec<u8>, DirectiveError> {
    let mut attrs = parse(current);
    if let Some(set) = set {
        let set: Map<String, Value> =
            serde_json::from_slice(set).map_err(|e| DirectiveError::BadJson {
                header: "attributes".into(),
                reason: e.to_string(),
            })?;
        attrs.extend(set);
    }
    for k in remove {
        attrs.remove(k);
    }
    Ok(canonical(&attrs))
}

/// The text merge of two canonical objects; `None` when either is not in that form.
fn merge_text(current: &[u8], set: &[u8], remove: &[String]) -> Option<Vec<u8>> {
    let mut a = Members::new(current)?;
    let mut b = Members::new(set)?;
    // An upper bound: the merge only drops members and one pair of braces.
    let mut out = Vec::with_capacity(current.len() + set.len());
    out.push(b'{');
    let mut x = a.next_member()?;
    let mut y = b.next_member()?;
    loop {
        let (key, value) = match (x, y) {
            (None, None) => break,
            (Some(m), None) => {
                x = a.next_member()?;
                m
            }
            (None, Some(m)) => {
                y = b.next_member()?;
                m
            }
            (Some(m), Some(n)) => match m.0.cmp(n.0) {
                Ordering::Less => {
                    x = a.next_member()?;
                    m
                }
                Ordering::Greater => {
                    y = b.next_member()?;
                    n
                }
                // The change's value wins.
                Ordering::Equal => {
                    x = a.next_member()?;
                    y = b.next_member()?;
                    n
                }
            },
        };
        if remove.iter().any(|r| r.as_bytes() == key) {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value);
    }
    out.push(b'}');
    Some(out)
}

/// The top-level members of a canonical object, in order: each key without escapes and
/// greater than the one before, each value's text ending at the next top-level `,` or `}`.
struct Members<'a> {
    text: &'a [u8],
    /// Where the next member starts (after `{` or `,`); `text.len()` once the `}` is read.
    at: usize,
    last: Option<&'a [u8]>,
}

impl<'a> Members<'a> {
    fn new(text: &'a [u8]) -> Option<Self> {
        if text.len() < 2 || text[0] != b'{' || text[text.len() - 1] != b'}' {
            return None;
        }
        let at = if text.len() == 2 { text.len() } else { 1 };
        Some(Self {
            text,
            at,
            last: None,
        })
    }

    /// `Some(None)` at the end, `None` on text not in canonical form.
    #[allow(clippy::type_complexity)]
    fn next_member(&mut self) -> Option<Option<(&'a [u8], &'a [u8])>> {
        let t = self.text;
        if self.at >= t.len() {
            return Some(None);
        }
        if t[self.at] != b'"' {
            return None;
        }
        let key_start = self.at + 1;
        let key_len = memchr::memchr2(b'"', b'\\', &t[key_start..])?;
        let key = &t[key_start..key_start + key_len];
        if t[key_start + key_len] != b'"' || t.get(key_start + key_len + 1) != Some(&b':') {
            return None;
        }
        if self.last.is_some_and(|last| last >= key) {
            return None;
        }
        let value_start = key_start + key_len + 2;
        let value_end = value_end(t, value_start)?;
        if value_end == value_start {
            return None;
        }
        match t[value_end] {
            b',' => self.at = value_end + 1,
            b'}' if value_end == t.len() - 1 => self.at = t.len(),
            _ => return None,
        }
        self.last = Some(key);
        Some(Some((key, &t[value_start..value_end])))
    }
}

/// Where the value starting at `from` ends: the index of the first `,` or `}` outside any
/// string, array or object. `None` if there is none.
fn value_end(t: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = from;
    while i < t.len() {
        match t[i] {
            b'"' => {
                // Skip the string: to the first quote not escaped.
                i += 1;
                loop {
                    let j = i + memchr::memchr2(b'"', b'\\', t.get(i..)?)?;
                    if t[j] == b'"' {
                        i = j;
                        break;
                    }
                    i = j + 2;
                }
            }
            b'[' | b'{' => depth += 1,
            b']' => depth = depth.checked_sub(1)?,
            b'}' if depth > 0 => depth -= 1,
            b',' | b'}' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn canon(v: Value) -> Vec<u8> {
        match v {
            Value::Object(m) => canonical(&m),
            _ => unreachable!("objects only"),
        }
    }

    fn text(h: HeaderValue) -> String {
        String::from_utf8(h.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn merges_sets_and_removes() {
        let cur = canon(json!({"a": 1, "c": [1, {"x": "}"}], "e": "q\"u,o}te"}));
        let set = canon(json!({"b": {"k": [2]}, "c": null, "f": 1.5}));
        let out = merge(&cur, Some(&set), &["e".into(), "zz".into()], usize::MAX).unwrap();
        assert_eq!(
            text(out),
            r#"{"a":1,"b":{"k":[2]},"c":null,"f":1.5}"#,
            "set wins, removed names go, strings with structure characters are skipped whole"
        );
        assert_eq!(text(merge(b"{}", None, &[], 100).unwrap()), "{}");
        assert_eq!(
            text(merge(b"{}", Some(b"{}"), &[], 100).unwrap()),
            "{}",
            "nothing set"
        );
    }

    #[test]
    fn size_limit_counts_the_merged_text() {
        let cur = canon(json!({"a": "xxxx"}));
        let set = canon(json!({"b": "yyyy"}));
        let e = merge(&cur, Some(&set), &[], 20).unwrap_err();
        assert_eq!(
            e,
            DirectiveError::TooLarge {
                bytes: 23,
                limit: 20
            }
        );
        assert!(merge(&cur, Some(&set), &[], 23).is_ok());
    }

    #[test]
    fn uncommon_forms_take_the_tree_path() {
        // An escaped key, unsorted keys, spaces, a repeated key: the tree merge decides.
        for (cur, set, want) in [
            (
                r#"{"\u00e9":1,"a":2}"#,
                r#"{"b":3}"#,
                r#"{"a":2,"b":3,"\u00e9":1}"#,
            ),
            (r#"{"b":1,"a":2}"#, r#"{"c":3}"#, r#"{"a":2,"b":1,"c":3}"#),
            (r#"{ "a" : 1 }"#, r#"{"a":2}"#, r#"{"a":2}"#),
            (r#"{"a":1,"a":2}"#, r#"{}"#, r#"{"a":2}"#),
        ] {
            assert!(
                merge_text(cur.as_bytes(), set.as_bytes(), &[]).is_none(),
                "{cur}"
            );
            let out = merge(cur.as_bytes(), Some(set.as_bytes()), &[], usize::MAX).unwrap();
            assert_eq!(text(out), want, "{cur} + {set}");
        }
    }

    #[test]
    fn a_set_that_is_not_an_object_is_an_error() {
        for set in [&b"[1]"[..], b"{\"a\":", b"nope", b"{\"a\" 1}"] {
            assert!(matches!(
                merge(b"{}", Some(set), &[], usize::MAX),
                Err(DirectiveError::BadJson { .. })
            ));
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z\"\\\\,:{}\\[\\] é😀\u{7f}\n]{0,8}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        // Mostly plain names; sometimes ones that need escaping.
        prop_oneof![4 => "[a-e]{1,3}", 1 => "[a-e\"é]{1,3}"]
    }

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map(key(), value(), 0..6).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn text_merge_renders_what_the_tree_merge_renders(
            cur in object(),
            set in object(),
            remove in prop::collection::vec(key(), 0..3),
        ) {
            let (c, s) = (canonical(&cur), canonical(&set));
            let fast = merge(&c, Some(&s), &remove, usize::MAX).unwrap();
            let tree = merge_tree(&c, Some(&s), &remove).unwrap();
            prop_assert_eq!(fast.as_bytes(), &tree[..]);
            // And the result is the canonical text of the merged maps.
            let mut want = cur.clone();
            want.extend(set.clone());
            for r in &remove {
                want.remove(r);
            }
            prop_assert_eq!(fast.as_bytes(), &canonical(&want)[..]);
        }
    }
}
