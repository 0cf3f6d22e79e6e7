//! ASCII-only JSON for the `X-Session` request header (REFERENCE 5): every non-ASCII character
//! is written as `\uXXXX` (surrogate pairs above the BMP), so the value is a legal header.
//!
//! Hand-written: serde_json has no ASCII-only mode; this is its `Formatter` hook.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            // DEL is ASCII but not legal in a header value.
            if c.is_ascii() && c != '\x7f' {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(w, "\\u{u:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serializes `value` as compact ASCII-only JSON.
pub(super) fn to_ascii_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    // Serializing a JSON value into a Vec cannot fail.
    let _ = value.serialize(&mut ser);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_ascii_is_escaped_and_round_trips() {
        let v = json!({"name": "Zo\u{eb} \u{1F600}", "n": 1, "q": "a\"b\n"});
        let out = to_ascii_json(&v);
        assert!(
            out.iter().all(|b| b.is_ascii() && *b >= 0x20),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Zo\\u00eb \\ud83d\\ude00"), "{s}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }
}
