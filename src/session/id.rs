//! Session ids (REFERENCE 2): 16 bytes from the OS CSPRNG as 32 upper-case hex characters (the
//! *base id*), then `.` and the owner's jvm_route: `0F3A...9C.node1`.

use std::fmt::Write;

/// Length of a base id in characters.
pub(super) const BASE_LEN: usize = 32;

/// A fresh key: 16 bytes from the OS CSPRNG. Fails only if the OS random source does.
pub(super) fn new_key() -> Result<Key, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(Key(u128::from_be_bytes(bytes)))
}

/// A fresh base id (32 upper-case hex characters).
#[cfg(test)]
fn new_base() -> Result<String, getrandom::Error> {
    new_key().map(|k| k.base())
}

/// `base.route`.
pub(crate) fn full(base: &str, route: &str) -> String {
    let mut s = String::with_capacity(base.len() + 1 + route.len());
    s.push_str(base);
    s.push('.');
    s.push_str(route);
    s
}

/// The store's key: the 16 random bytes of a base id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u128);

impl Key {
    /// From a base id of the right shape (see [`parse`]); `None` otherwise.
    pub fn from_base(base: &str) -> Option<Key> {
        decode(base.as_bytes()).map(Key)
    }

    /// The 32-character upper-case hex form.
    pub fn base(&self) -> String {
        let mut s = String::with_capacity(BASE_LEN);
        // Writing to a String cannot fail.
        let _ = write!(s, "{:032X}", self.0);
        s
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032X}", self.0)
    }
}

/// Checks and decodes 32 upper-case hex characters, eight at a time (SWAR: it runs on every
/// request that carries a session; a byte loop cost twice as much).
fn decode(base: &[u8]) -> Option<u128> {
    let base: &[u8; BASE_LEN] = base.try_into().ok()?;
    let mut k = 0u128;
    for chunk in base.chunks_exact(8) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        k = (k << 32) | u128::from(decode8(u64::from_be_bytes(eight))?);
    }
    Some(k)
}

/// Eight hex characters (the first in the top byte) to 32 bits, or `None` if any is not
/// `0-9A-F`.
fn decode8(x: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if x & HIGH != 0 {
        return None;
    }
    // For 7-bit bytes, the high bit of byte + (0x80 - lo) says byte >= lo (no carries).
    let at_least = |lo: u64| x.wrapping_add((0x80 - lo) * ONES) & HIGH;
    let digit = at_least(b'0' as u64) & !at_least(b'9' as u64 + 1);
    let letter = at_least(b'A' as u64) & !at_least(b'F' as u64 + 1);
    if digit | letter != HIGH {
        return None;
    }
    // '0'..'9' -> 0..9 by the low nibble; 'A'..'F' have low nibbles 1..6, plus 9.
    let mut v = (x & (0x0F * ONES)) + (letter >> 7) * 9;
    // Pack the eight nibbles: pairs into bytes, bytes into u16s, u16s into a u32.
    v = (v | (v >> 4)) & 0x00FF_00FF_00FF_00FF;
    v = (v | (v >> 8)) & 0x0000_FFFF_0000_FFFF;
    v = (v | (v >> 16)) & 0x0000_0000_FFFF_FFFF;
    u32::try_from(v).ok()
}

/// A session id as a client presented it, checked for shape only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId<'a> {
    pub base: &'a str,
    /// The store key `base` decodes to.
    pub key: Key,
    /// The route suffix; `None` when the client sent a bare base id.
    pub route: Option<&'a str>,
}

/// Splits `base[.route]`; anything not of the exact shape is `None` (treated as no session).
pub fn parse(value: &str) -> Option<ClientId<'_>> {
    // Longest legal value: base + '.' + a 64-character route.
    if value.len() > BASE_LEN + 1 + 64 {
        return None;
    }
    // The base has a fixed length: the `.` can only be right after it.
    let (base, route) = match value.as_bytes().get(BASE_LEN) {
        None => (value, None),
        Some(b'.') => (&value[..BASE_LEN], Some(&value[BASE_LEN + 1..])),
        Some(_) => return None,
    };
    let key = Key::from_base(base)?;
    if let Some(r) = route {
        if !valid_route(r) {
            return None;
        }
    }
    Some(ClientId { base, key, route })
}

/// A jvm_route ends up in cookies and header values: keep it to a safe token.
pub(crate) fn valid_route(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_32_upper_hex_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = new_base().unwrap();
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
                "{id}"
            );
            assert!(seen.insert(id), "duplicate id");
        }
    }

    #[test]
    fn keys_round_trip() {
        let b = new_base().unwrap();
        assert_eq!(Key::from_base(&b).unwrap().base(), b);
        assert_eq!(
            Key::from_base("00000000000000000000000000000001").unwrap(),
            Key(1)
        );
        assert!(Key::from_base("0000000000000000000000000000000g").is_none());
        assert!(
            Key::from_base("0000000000000000000000000000000a").is_none(),
            "lower case"
        );
        assert!(
            Key::from_base("000000000000000000000000000000001").is_none(),
            "33 chars"
        );
        assert_eq!(
            Key::from_base("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF").unwrap(),
            Key(u128::MAX)
        );
    }

    #[test]
    fn decode_rejects_any_non_hex_byte_anywhere() {
        let good = *b"0123456789ABCDEF0123456789ABCDEF";
        for b in 0..=255u8 {
            let hex = b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
            for i in 0..BASE_LEN {
                let mut v = good;
                v[i] = b;
                assert_eq!(decode(&v).is_some(), hex, "byte {b:#x} at {i}");
            }
        }
        let random = (0..10_000).map(|_| fastrand::u128(..));
        for k in [0, 1, u128::MAX, 0x8000_0000_0000_0000_0000_0000_0000_0001]
            .into_iter()
            .chain(random)
        {
            assert_eq!(Key::from_base(&Key(k).base()), Some(Key(k)));
            assert_eq!(Key(k).to_string(), Key(k).base());
        }
    }

    #[test]
    fn parse_accepts_only_the_exact_shape() {
        let base = "0123456789ABCDEF0123456789ABCDEF";
        let key = Key(0x0123456789ABCDEF0123456789ABCDEF);
        assert_eq!(
            parse(&format!("{base}.node1")),
            Some(ClientId {
                base,
                key,
                route: Some("node1")
            })
        );
        assert_eq!(
            parse(base),
            Some(ClientId {
                base,
                key,
                route: None
            })
        );
        for bad in [
            "",
            "0123456789abcdef0123456789abcdef.node1",
            "0123456789ABCDEF0123456789ABCDE.node1",
            "0123456789ABCDEF0123456789ABCDEF0.node1",
            "0123456789ABCDEF0123456789ABCDEF.",
            "0123456789ABCDEF0123456789ABCDEF.no de",
            "0123456789ABCDEF0123456789ABCDEF.a.b",
            "../../etc/passwd",
            "0123456789ABCDEF0123456789ABCDEF.\u{e9}",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse(&format!("{base}.{}", "r".repeat(200))), None);
    }
}
