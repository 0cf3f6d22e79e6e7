//! The forwarding marker (REFERENCE 4.4): `X-Caracal-Hop: <hops> <route> <scheme>`, and with a
//! `[cluster] key` also ` <unix ms> <hmac>`, the HMAC-SHA256 (hex) over those fields and
//! the request's method and target, so a process that is not a member cannot mint one
//! and a captured one cannot be replayed for another request or after
//! [`MAX_AGE_MS`]. The scheme is the client's (`http`/`https`): the owner sets `Secure`
//! on the cookie from it, not from its own plain connection from the forwarder.
//! Without a key the marker is trusted by the sender's IP alone (a member's
//! announced HTTP address).

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, Method};

use crate::wire::{self, ClusterKey};

pub(super) const HOP: HeaderName = HeaderName::from_static("x-caracal-hop");

/// A signed marker older (or newer: clock skew between members) than this is refused.
const MAX_AGE_MS: u64 = 30_000;

/// What a genuine marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hop<'a> {
    pub hops: u8,
    pub route: &'a str,
    /// The client's connection to the first member was TLS.
    pub tls: bool,
}

fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the HMAC covers.
fn signed(fields: &str, method: &Method, target: &str) -> Vec<u8> {
    format!("caracal-hop\n{fields}\n{method} {target}").into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The marker a member sends with a forward.
pub(super) fn encode(
    hop: Hop<'_>,
    key: Option<&ClusterKey>,
    method: &Method,
    target: &str,
) -> Option<HeaderValue> {
    let mut v = format!("{} {} {}", hop.hops, hop.route, scheme(hop.tls));
    if let Some(k) = key {
        v = format!("{v} {}", now_ms());
        let mac = wire::sign(k, &signed(&v, method, target));
        v = format!("{v} {}", hex(&mac));
    }
    HeaderValue::from_str(&v).ok()
}

/// Reads a marker; with a key, only a correctly signed, fresh one for this request.
pub(super) fn decode<'a>(
    v: &'a HeaderValue,
    key: Option<&ClusterKey>,
    method: &Method,
    target: &str,
) -> Option<Hop<'a>> {
    let v = v.to_str().ok()?;
    let mut it = v.split(' ');
    let hops: u8 = it.next()?.parse().ok()?;
    let route = it.next()?;
    let tls = match it.next()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    if let Some(k) = key {
        let ts: u64 = it.next()?.parse().ok()?;
        let mac = it.next()?;
        if now_ms().abs_diff(ts) > MAX_AGE_MS || mac.len() != 2 * wire::TAG_LEN {
            return None;
        }
        let fields = &v[..v.len() - mac.len() - 1];
        let tag: Vec<u8> = (0..mac.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(mac.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        if !wire::verify(k, &signed(fields, method, target), &tag) {
            return None;
        }
    }
    if it.next().is_some() {
        return None;
    }
    Some(Hop { hops, route, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_forgeries_fail() {
        let hop = Hop {
            hops: 1,
            route: "node2",
            tls: true,
        };
        let get = Method::GET;
        let plain = encode(hop, None, &get, "/a").unwrap();
        assert_eq!(plain, "1 node2 https");
        assert_eq!(decode(&plain, None, &get, "/a"), Some(hop));

        let k = ClusterKey::new(b"a-cluster-key-of-some-length");
        let signed = encode(hop, Some(&k), &get, "/a").unwrap();
        assert_eq!(decode(&signed, Some(&k), &get, "/a"), Some(hop));
        // Unsigned, signed with another key, for another request, or altered: refused.
        assert_eq!(decode(&plain, Some(&k), &get, "/a"), None);
        let other = ClusterKey::new(b"another-key-entirely-here");
        assert_eq!(decode(&signed, Some(&other), &get, "/a"), None);
        assert_eq!(decode(&signed, Some(&k), &get, "/b"), None);
        assert_eq!(decode(&signed, Some(&k), &Method::POST, "/a"), None);
        let altered = signed.to_str().unwrap().replacen("1 node2", "2 node2", 1);
        let altered = HeaderValue::from_str(&altered).unwrap();
        assert_eq!(decode(&altered, Some(&k), &get, "/a"), None);
        let old = format!("1 node2 https {}", now_ms() - 2 * MAX_AGE_MS);
        let mac = wire::sign(&k, &signed_fields(&old));
        let stale = HeaderValue::from_str(&format!("{old} {}", hex(&mac))).unwrap();
        assert_eq!(decode(&stale, Some(&k), &get, "/a"), None, "too old");
        assert_eq!(
            decode(&HeaderValue::from_static("1 node2"), None, &get, "/a"),
            None
        );
    }

    fn signed_fields(f: &str) -> Vec<u8> {
        signed(f, &Method::GET, "/a")
    }
}
