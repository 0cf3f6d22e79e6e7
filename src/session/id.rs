//! Session ids (SPEC 2): 16 bytes from the OS CSPRNG as 32 upper-case hex characters (the
//! *base id*), then `.` and the owner's jvm_route: `0F3A...9C.node1`.

use std::fmt::Write;

/// Length of a base id in characters.
pub const BASE_LEN: usize = 32;

/// A fresh key: 16 bytes from the OS CSPRNG. Fails only if the OS random source does.
pub fn new_key() -> Result<Key, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(Key(u128::from_be_bytes(bytes)))
}

/// A fresh base id (32 upper-case hex characters).
pub fn new_base() -> Result<String, getrandom::Error> {
    new_key().map(|k| k.base())
}

/// `base.route`.
pub fn full(base: &str, route: &str) -> String {
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
        if base.len() != BASE_LEN {
            return None;
        }
        // One pass that checks and decodes (this runs on every request with a session).
        let mut k = 0u128;
        for b in base.bytes() {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'A'..=b'F' => b - b'A' + 10,
                _ => return None,
            };
            k = (k << 4) | u128::from(d);
        }
        Some(Key(k))
    }

    /// The 32-character upper-case hex form.
    pub fn base(&self) -> String {
        let mut s = String::with_capacity(BASE_LEN);
        // Writing to a String cannot fail.
        let _ = write!(s, "{:032X}", self.0);
        s
    }
}

/// A session id as a client presented it, checked for shape only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId<'a> {
    pub base: &'a str,
    /// The route suffix; `None` when the client sent a bare base id.
    pub route: Option<&'a str>,
}

/// Splits `base[.route]`; anything not of the exact shape is `None` (treated as no session).
pub fn parse(value: &str) -> Option<ClientId<'_>> {
    // Longest legal value: base + '.' + a 64-character route.
    if value.len() > BASE_LEN + 1 + 64 {
        return None;
    }
    let (base, route) = match value.split_once('.') {
        Some((b, r)) => (b, Some(r)),
        None => (value, None),
    };
    if base.len() != BASE_LEN || !base.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
        return None;
    }
    if let Some(r) = route {
        if !crate::config::valid_route(r) {
            return None;
        }
    }
    Some(ClientId { base, route })
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
    fn parse_accepts_only_the_exact_shape() {
        let base = "0123456789ABCDEF0123456789ABCDEF";
        assert_eq!(
            parse(&format!("{base}.node1")),
            Some(ClientId {
                base,
                route: Some("node1")
            })
        );
        assert_eq!(parse(base), Some(ClientId { base, route: None }));
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
