//! Unit tests of the response head parser.

use bytes::BytesMut;
use http::{header, HeaderName};

use super::head::{common_name, parse_head};
use super::{Chunk, Framing, Head, SendError};

fn parse(raw: &[u8], no_body: bool) -> Result<Option<Head>, SendError> {
    let mut b = BytesMut::from(raw);
    parse_head(&mut b, no_body, b"x-session")
}

#[test]
fn framing_follows_rfc_9112() {
    let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert!(matches!(h.plan.framing, Framing::Length(5)) && h.plan.keep_alive);
    let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
        .unwrap()
        .unwrap();
    assert!(matches!(h.plan.framing, Framing::Done));
    let h = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(matches!(h.plan.framing, Framing::Chunked(Chunk::Size)));
    assert!(!h.plan.keep_alive, "TE + CL must close");
    assert!(!h.parts.headers.contains_key(header::CONTENT_LENGTH));
    let h = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
    assert!(matches!(h.plan.framing, Framing::Close) && !h.plan.keep_alive);
    let h = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert!(!h.plan.keep_alive, "HTTP/1.0 without keep-alive");
    let h = parse(
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(matches!(h.plan.framing, Framing::Done) && !h.plan.keep_alive);
    assert!(parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        false
    )
    .is_err());
    assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
    assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false)
        .unwrap()
        .is_none());
    assert!(parse(b"garbage\r\n\r\n", false).is_err());
    // A coding the proxy cannot carry is that response's 502, not the backend's failure.
    for te in [
        "gzip",
        "gzip, chunked",
        "chunked\r\nTransfer-Encoding: chunked",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
        let e = parse(raw.as_bytes(), false).unwrap_err();
        assert_eq!(e.fault, super::Fault::Response, "{te}");
    }
}

#[test]
fn common_names_match_the_general_parse() {
    for n in [
        "Date",
        "ETAG",
        "vary",
        "Server",
        "location",
        "Set-Cookie",
        "content-type",
        "Cache-Control",
        "last-modified",
        "Content-Length",
        "content-encoding",
    ] {
        let general = HeaderName::from_bytes(n.as_bytes()).unwrap();
        assert_eq!(common_name(n.as_bytes()), Some(general), "{n}");
    }
    // Names reach it from httparse: token bytes only (a CR would pass for `-`).
    for n in [
        "dat",
        "x-date",
        "content-typo",
        "",
        "set-cookie2",
        "content_type",
        "Dat^",
    ] {
        assert_eq!(common_name(n.as_bytes()), None, "{n}");
    }
}

#[test]
fn session_prefixed_headers_are_set_aside() {
    let mut b = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nX-Session-Set: {\"a\":1}\r\nx-kept: 1\r\nx-session: {}\r\nx-sessio: 2\r\nContent-Length: 0\r\n\r\n"[..],
    );
    let h = parse_head(&mut b, false, b"x-session").unwrap().unwrap();
    let names: Vec<_> = h.diverted.iter().map(|(n, _)| &n[..]).collect();
    assert_eq!(names, [&b"X-Session-Set"[..], b"x-session"]);
    assert_eq!(h.diverted[0].1, r#"{"a":1}"#);
    let kept: Vec<_> = h.parts.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(kept, ["x-kept", "x-sessio", "content-length"]);
    // A prefix that also starts the framing headers leaves the framing intact.
    let mut b = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n3\r\nabc\r\n"[..],
    );
    let h = parse_head(&mut b, false, b"tr").unwrap().unwrap();
    assert!(matches!(h.plan.framing, Framing::Chunked(_)));
    assert!(h.plan.keep_alive);
    let names: Vec<_> = h.diverted.iter().map(|(n, _)| &n[..]).collect();
    assert_eq!(names, [&b"Trailer"[..]]);
    let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"[..]);
    let h = parse_head(&mut b, false, b"content").unwrap().unwrap();
    assert!(matches!(h.plan.framing, Framing::Length(3)));
    assert_eq!(h.diverted.len(), 1);
    // Without a prefix nothing is set aside.
    let mut b = BytesMut::from(&b"HTTP/1.1 204 No Content\r\nx-session-set: {}\r\n\r\n"[..]);
    let h = parse_head(&mut b, false, b"").unwrap().unwrap();
    assert!(h.diverted.is_empty());
    assert!(h.parts.headers.contains_key("x-session-set"));
}

#[test]
fn header_values_are_slices_of_the_head() {
    let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A: one\r\nx-a: two\r\n\r\nBODY"[..]);
    let h = parse_head(&mut b, false, b"").unwrap().unwrap();
    let v: Vec<_> = h.parts.headers.get_all("x-a").iter().collect();
    assert_eq!(v, ["one", "two"]);
    assert_eq!(&b[..], b"BODY", "the body stays in the buffer");
}
