//! Reading a backend's response head (httparse): the framing headers read from the raw
//! bytes while the header map is built, hop-by-hop headers kept out of it, session-prefixed
//! ones set aside, interim 1xx skipped.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Chunk, Diverted, Framing, Head, Plan, SendError};
use super::{MAX_HEADERS, READ_MIN_SPARE, READ_RESERVE};

/// Reads until a final response head (interim 1xx answers are skipped). A head over
/// `max_head` bytes is refused: that response's 502, not a failure of the backend.
pub(super) async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    no_body: bool,
    divert: &[u8],
    max_head: usize,
) -> Result<Head, SendError> {
    loop {
        if !rbuf.is_empty() {
            if let Some(head) = parse_head(rbuf, no_body, divert)? {
                let s = head.parts.status;
                if s.is_informational() && s != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                return Ok(head);
            }
            if rbuf.len() >= max_head {
                return Err(SendError::response(format!(
                    "response head larger than {max_head} bytes"
                )));
            }
        }
        if rbuf.capacity() - rbuf.len() < READ_MIN_SPARE {
            rbuf.reserve(READ_RESERVE);
        }
        let n = rd
            .read_buf(rbuf)
            .await
            .map_err(|e| SendError::sent(format!("reading the response: {e}")))?;
        if n == 0 {
            return Err(SendError::sent(if rbuf.is_empty() {
                "the backend closed the connection without answering"
            } else {
                "the backend closed the connection in the middle of the response head"
            }));
        }
    }
}

/// `name` (token bytes, as httparse passed them) is `known` (lower-case letters and `-`) in
/// any case. Setting bit 5 lower-cases a letter and keeps `-`; no other token byte becomes
/// one of those. Branch-free, so short
/// names compare in a few vector instructions (`eq_ignore_ascii_case` goes byte by byte).
fn is_name(name: &[u8], known: &[u8]) -> bool {
    name.len() == known.len()
        && name
            .iter()
            .zip(known)
            .fold(0u8, |diff, (&a, &b)| diff | ((a | 0x20) ^ b))
            == 0
}

/// The names most responses carry, matched without `HeaderName::from_bytes` (which copies
/// and lower-cases the name first: about 130 instructions a header).
pub(super) fn common_name(name: &[u8]) -> Option<HeaderName> {
    let is = |known: &[u8]| is_name(name, known);
    Some(match name.len() {
        4 if is(b"date") => header::DATE,
        4 if is(b"etag") => header::ETAG,
        4 if is(b"vary") => header::VARY,
        6 if is(b"server") => header::SERVER,
        8 if is(b"location") => header::LOCATION,
        10 if is(b"set-cookie") => header::SET_COOKIE,
        12 if is(b"content-type") => header::CONTENT_TYPE,
        13 if is(b"cache-control") => header::CACHE_CONTROL,
        13 if is(b"last-modified") => header::LAST_MODIFIED,
        14 if is(b"content-length") => header::CONTENT_LENGTH,
        16 if is(b"content-encoding") => header::CONTENT_ENCODING,
        _ => return None,
    })
}

/// Parses one response head off the front of `rbuf`, if it is complete. Header values are
/// slices of the received bytes, not copies. Headers named with the `divert` prefix are set
/// aside (see [`Conn::send`]).
pub(super) fn parse_head(
    rbuf: &mut BytesMut,
    no_body: bool,
    divert: &[u8],
) -> Result<Option<Head>, SendError> {
    let bad = |why: String| SendError::sent(format!("bad response head: {why}"));
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    // (name start, name end, value start, value end) of each header within the head; on
    // the stack for the usual few headers.
    let mut few = [(0u32, 0u32, 0u32, 0u32); 24];
    let mut many = Vec::new();
    let (len, code, minor, spans) = {
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, rbuf, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let base = rbuf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let spans: &mut [(u32, u32, u32, u32)] = if res.headers.len() <= few.len() {
            &mut few[..res.headers.len()]
        } else {
            many.resize(res.headers.len(), (0, 0, 0, 0));
            &mut many
        };
        for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
            let n = offset(h.name.as_bytes());
            let v = offset(h.value);
            *span = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
        }
        (len, res.code.unwrap_or(0), res.version.unwrap_or(1), spans)
    };
    let count = spans.len();
    let raw = rbuf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|e| bad(e.to_string()))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // The framing headers are read from the raw bytes as the map is built; the hop-by-hop
    // ones the proxy would strip anyway never enter it.
    let mut conn = ConnectionTokens::default();
    // A `Transfer-Encoding: chunked` came (any other coding is refused as it is read).
    let mut chunked = false;
    let mut length: Result<Option<u64>, ()> = Ok(None);
    let mut headers = HeaderMap::with_capacity(count);
    let mut diverted = Diverted::new();
    for &(ns, ne, vs, ve) in spans.iter() {
        let name = &raw[ns as usize..ne as usize];
        let value = &raw[vs as usize..ve as usize];
        if is_name(name, b"connection") {
            conn.read(value);
            if !conn.names_headers {
                continue;
            }
        } else if is_name(name, b"keep-alive") {
            continue;
        } else if is_name(name, b"transfer-encoding") {
            // Only `chunked` can be carried: another coding (gzip, ...) would reach the
            // client as coded bytes with nothing saying so.
            let only_chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !only_chunked || chunked {
                return Err(SendError::response(format!(
                    "the response's transfer coding {:?} cannot be forwarded",
                    String::from_utf8_lossy(value)
                )));
            }
            chunked = true;
            continue;
        } else if is_name(name, b"content-length") {
            length = length.and_then(|found| add_length(found, value));
        }
        let value = HeaderValue::from_maybe_shared(raw.slice(vs as usize..ve as usize))
            .map_err(|e| bad(e.to_string()))?;
        // After the framing reads: a prefix that also starts a framing header (a valid if
        // odd `header_prefix`) must not take the body's framing with it.
        if !divert.is_empty()
            && name.len() >= divert.len()
            && name[..divert.len()].eq_ignore_ascii_case(divert)
        {
            // httparse checked the name is a token.
            diverted.push((raw.slice(ns as usize..ne as usize), value));
            continue;
        }
        let name = match common_name(name) {
            Some(n) => n,
            None => HeaderName::from_bytes(name).map_err(|e| bad(e.to_string()))?,
        };
        headers.append(name, value);
    }
    let mut keep_alive = if version == Version::HTTP_10 {
        conn.keep_alive
    } else {
        !conn.close
    };
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        Framing::Upgrade
    } else if no_body
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if chunked {
        // Transfer-Encoding wins over Content-Length, and such a message must not be
        // followed by another on this connection (RFC 9112 6.3).
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        Framing::Chunked(Chunk::Size)
    } else {
        match length {
            Ok(Some(0)) => Framing::Done,
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => {
                keep_alive = false;
                Framing::Close
            }
            Err(()) => return Err(bad("invalid Content-Length".into())),
        }
    };
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(Some(Head {
        parts: resp.into_parts().0,
        diverted,
        plan: Plan {
            framing,
            keep_alive,
        },
    }))
}

/// The length all `Content-Length` values agree on; `Err` when they are malformed or differ.
pub(super) fn content_length(h: &HeaderMap) -> Result<Option<u64>, ()> {
    h.get_all(header::CONTENT_LENGTH)
        .iter()
        .try_fold(None, |found, v| add_length(found, v.as_bytes()))
}

/// `found` so far and one more `Content-Length` value (a list of equal numbers).
fn add_length(mut found: Option<u64>, value: &[u8]) -> Result<Option<u64>, ()> {
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(());
        }
        found = Some(n);
    }
    Ok(found)
}

/// The `Connection` tokens of a response, over all its `Connection` headers.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    /// Some token names a header (to be stripped with it): the header stays in the map for
    /// the hygiene that does that.
    names_headers: bool,
}

impl ConnectionTokens {
    fn read(&mut self, value: &[u8]) {
        for t in value.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade") {
                self.names_headers = true;
            }
        }
    }
}
