//! What a request head must be before the proxy does anything with it (REFERENCE 7). hyper has parsed and framed it; these are the rules hyper leaves
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

use http::{Method, Request, Version};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::survey::Survey;

/// `seen`: the request's headers, surveyed (its `size` counted when the head may be over
/// `max_bytes`: the framing guard saw as much, or no guard reads this connection; HTTP/2
/// header lists are capped by hyper exactly).
pub(super) fn head(
    req: &Request<Incoming>,
    seen: &Survey,
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
    if count_size && http1 {
        // The request line as the backend gets it: "METHOD TARGET HTTP/1.1\r\n", and "\r\n".
        let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
        if req.method().as_str().len() + 1 + target + 11 + 2 + seen.size > max_bytes {
            return Err(ProxyError::HeadTooLarge);
        }
    }
    if seen.bad_host {
        return Err(ProxyError::BadRequest("Host is not a valid authority"));
    }
    if seen.lengths > 1 {
        return Err(ProxyError::BadRequest("more than one Content-Length"));
    }
    if http1 && (seen.codings > 1 || seen.bad_coding) {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding other than a single chunked",
        ));
    }
    if seen.hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host"));
    }
    if seen.hosts == 0 && req.version() == Version::HTTP_11 && req.uri().authority().is_none() {
        return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
    }
    Ok(())
}
