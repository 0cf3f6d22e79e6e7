//! What a request head must be before the proxy does anything with it (SPEC 7, #20
//! findings 8, 9 and 11). hyper has parsed and framed it; these are the rules hyper leaves
//! to the application:
//! - `CONNECT` is refused with 405 (this is not a forward proxy), and the connection closed;
//! - a `*` target is only for `OPTIONS`;
//! - HTTP/1.1 needs exactly one `Host`; more than one is 400 in any version; a `Host` that is
//!   not an authority (`a b`, `u@h`) is 400;
//! - `Transfer-Encoding` must be one `chunked` and nothing else (`identity, chunked`, two
//!   headers: 400): what passed hyper's framing and a backend could still read otherwise;
//! - the head may not be larger than `max_header_bytes`, counted as the backend would get
//!   it (request line, `name: value` lines): hyper's own cap is its read buffer, which let
//!   a 40 KiB head through a 32 KiB limit.
//!
//! - more than one `Content-Length` (HTTP/2 can bring two).
//!
//! Not visible here: an HTTP/1 `Content-Length` next to `Transfer-Encoding`, or a second
//! identical one: hyper drops those before the application sees the head. The framing
//! guard (`framing`) refuses them in the byte stream instead.

use http::{header, Method, Request, Version};
use hyper::body::Incoming;

use super::error::ProxyError;

/// `count_size`: the head may be over `max_bytes` (the framing guard saw as much, or no
/// guard reads this connection); HTTP/2 header lists are capped by hyper exactly.
pub(super) fn head(
    req: &Request<Incoming>,
    max_bytes: usize,
    count_size: bool,
) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(
            "CONNECT: this is a reverse proxy, not a tunnel",
        ));
    }
    let path = req.uri().path();
    if path == "*" && req.method() != Method::OPTIONS {
        return Err(ProxyError::BadRequest("a * target is only for OPTIONS"));
    }
    let http1 = req.version() < Version::HTTP_2;
    let mut hosts = 0usize;
    let mut te = 0usize;
    let mut lengths = 0usize;
    // The request line as the backend gets it: "METHOD TARGET HTTP/1.1\r\n", and "\r\n".
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let mut size = req.method().as_str().len() + 1 + target + 11 + 2;
    let count_size = count_size && http1;
    for (name, value) in req.headers() {
        if count_size {
            size += name.as_str().len() + value.len() + 4;
        }
        if name == header::HOST {
            hosts += 1;
            if !is_authority(value.as_bytes()) {
                return Err(ProxyError::BadRequest("Host is not a valid authority"));
            }
        } else if name == header::CONTENT_LENGTH {
            // HTTP/1 ones hyper merged already (and the framing guard refused); an
            // HTTP/2 request can still bring two, or a list.
            lengths += 1;
            if lengths > 1 || value.as_bytes().contains(&b',') {
                return Err(ProxyError::BadRequest("more than one Content-Length"));
            }
        } else if http1 && name == header::TRANSFER_ENCODING {
            te += 1;
            if !value
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
            {
                return Err(ProxyError::BadRequest(
                    "Transfer-Encoding other than a single chunked",
                ));
            }
        }
    }
    if count_size && size > max_bytes {
        return Err(ProxyError::HeadTooLarge);
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host"));
    }
    if te > 1 {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding other than a single chunked",
        ));
    }
    if hosts == 0 && req.version() == Version::HTTP_11 && req.uri().authority().is_none() {
        return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
    }
    Ok(())
}

/// A `Host` value: `host[:port]` with a reg-name, IPv4 or bracketed IPv6 host (RFC 3986
/// 3.2.2), no userinfo, no whitespace; or empty (RFC 9112 3.2: a target without an
/// authority). Byte classes only: this runs on every request.
fn is_authority(v: &[u8]) -> bool {
    v.iter().all(|&b| AUTHORITY[usize::from(b)])
}

/// The bytes of an authority: unreserved, sub-delims, `%`, `:`, `[`, `]`.
static AUTHORITY: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        for ok in [
            "example.com",
            "a:8080",
            "[::1]:80",
            "10.0.0.1",
            "xn--bcher-kva.de",
        ] {
            assert!(is_authority(ok.as_bytes()), "{ok}");
        }
        assert!(is_authority(b""), "empty is allowed");
        for bad in ["a b", "u@h", "a/b", "a?b", "a\tb", "h#x"] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
    }
}
