//! Trailers, both ways: they lose what a head would lose (the session
//! prefix, `X-Forwarded-*`, the hop marker, with `_` read as `-`) plus the fields RFC 9110
//! 6.5.1 keeps out of trailers: framing, routing, connection control, authentication and
//! content metadata. Before, request trailers `x-session-id` or `content-length` reached
//! the backend, and a backend's `X-Session-Set` trailer reached HTTP/2 clients.

use http::header::{HeaderMap, HeaderName};

/// Fields that never pass in trailers: framing, routing, connection control,
/// authentication and content metadata (RFC 9110 6.5.1), and what this proxy sets.
const NOT_IN_TRAILERS: [&str; 25] = [
    "content-length",
    "transfer-encoding",
    "host",
    "trailer",
    "te",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
    "content-encoding",
    "content-type",
    "content-range",
    "authorization",
    "cookie",
    "set-cookie",
    "expect",
    "range",
    "max-forwards",
    "cache-control",
    "www-authenticate",
    "location",
    "forwarded",
];

/// Removes from trailers `t` every field that must not pass: see [`NOT_IN_TRAILERS`], the
/// session prefix, `X-Forwarded-*`, `X-Real-IP`, the hop marker and conditionals, with `_`
/// read as `-`. `prefix` is lower-case.
pub(super) fn clean(t: &mut HeaderMap, prefix: &[u8]) {
    let bad: Vec<HeaderName> = t
        .keys()
        .filter(|k| {
            let n = k.as_str().replace('_', "-");
            n.as_bytes().starts_with(prefix)
                || n.starts_with("x-forwarded-")
                || n.starts_with("if-")
                || n == "x-real-ip"
                || n == "x-caracal-hop"
                || NOT_IN_TRAILERS.contains(&n.as_str())
        })
        .cloned()
        .collect();
    for n in bad {
        t.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn trailers_lose_what_must_not_pass() {
        let mut t = HeaderMap::new();
        for n in [
            "x-session",
            "x-session-id",
            "x_session_set",
            "content-length",
            "transfer-encoding",
            "host",
            "authorization",
            "x-forwarded-for",
            "if-match",
        ] {
            t.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("x-checksum", HeaderValue::from_static("abc"));
        clean(&mut t, b"x-session");
        let mut left: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }
}
