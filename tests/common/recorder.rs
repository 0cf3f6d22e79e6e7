//! A backend that records the exact bytes it receives and parses them strictly (its own
//! httparse reading, not hyper's), for the edge tests: what a client sent must reach a
//! backend as one well-formed request, or not at all.
//!
//! Answers by path: `/te-gzip` with `Transfer-Encoding: gzip`; `/trailers` with a chunked
//! body whose trailers carry session directives; `/head/<n>` with an `X-Session-Set` of
//! `n` bytes; `/http2-upgrade` with a 101 to h2c; anything else 200 `ok`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend read it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Names lower-cased, in order, values as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Chunked trailers, names lower-cased.
    pub trailers: Vec<(String, String)>,
    /// The exact bytes of the request.
    pub raw: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the backend saw on its connections.
#[derive(Debug, Default)]
pub struct Log {
    pub requests: Vec<Seen>,
    /// Byte streams it could not read as HTTP/1.1 requests (with why).
    pub malformed: Vec<(String, Vec<u8>)>,
}

pub struct Recorder {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, log2.clone()));
            }
        });
        Recorder { addr, log, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests clients sent (the node's own health checks left out).
    pub fn requests(&self) -> Vec<Seen> {
        let log = self.log.lock().unwrap();
        log.requests
            .iter()
            .filter(|r| r.path != "/health")
            .cloned()
            .collect()
    }

    pub fn malformed(&self) -> Vec<(String, Vec<u8>)> {
        self.log.lock().unwrap().malformed.clone()
    }

    pub fn clear(&self) {
        let mut l = self.log.lock().unwrap();
        l.requests.clear();
        l.malformed.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request read off the front of a byte stream (see [`parse`]).
pub enum Parsed {
    Partial,
    Bad(String),
    Done(Seen, usize),
}

/// One request off the front of `buf`, framed strictly (RFC 9112 6): one `chunked` and
/// no Content-Length, or one valid Content-Length, or no body. The edge fuzzer also reads a
/// client's bytes with it: the requests a strict server would see in them.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut hs = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut hs);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Bad(format!("head: {e}")),
    };
    if req.version != Some(1) {
        return Parsed::Bad("not HTTP/1.1".into());
    }
    let mut seen = Seen {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        ..Default::default()
    };
    for h in req.headers.iter() {
        // obs-text (bytes 0x80-0xFF) is legal in a value (RFC 9110 5.5).
        let v = String::from_utf8_lossy(h.value).to_string();
        seen.headers.push((h.name.to_ascii_lowercase(), v));
    }
    let cl = seen.all("content-length");
    let te = seen.all("transfer-encoding");
    if seen.all("host").len() != 1 {
        return Parsed::Bad("not exactly one Host".into());
    }
    if !te.is_empty() && !cl.is_empty() {
        return Parsed::Bad("Content-Length and Transfer-Encoding".into());
    }
    if cl.len() > 1 || te.len() > 1 {
        return Parsed::Bad("repeated framing header".into());
    }
    let mut at = n;
    if let Some(te) = te.first() {
        // Coding names are case-insensitive (RFC 9112 7).
        if !te.trim().eq_ignore_ascii_case("chunked") {
            return Parsed::Bad(format!("transfer-encoding {te:?}"));
        }
        loop {
            let rest = &buf[at..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                return Parsed::Partial;
            };
            let line = &rest[..eol];
            let size_hex = line.split(|&b| b == b';').next().unwrap_or_default();
            let Some(size) = std::str::from_utf8(size_hex)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| usize::from_str_radix(s, 16).ok())
            else {
                return Parsed::Bad(format!("chunk size {:?}", String::from_utf8_lossy(line)));
            };
            at += eol + 2;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let rest = &buf[at..];
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        return Parsed::Partial;
                    };
                    if eol == 0 {
                        at += 2;
                        break;
                    }
                    let line = String::from_utf8_lossy(&rest[..eol]).to_string();
                    let Some((k, v)) = line.split_once(':') else {
                        return Parsed::Bad(format!("trailer line {line:?}"));
                    };
                    seen.trailers
                        .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    at += eol + 2;
                }
                break;
            }
            if buf.len() < at + size + 2 {
                return Parsed::Partial;
            }
            seen.body.extend_from_slice(&buf[at..at + size]);
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Parsed::Bad("chunk without CRLF".into());
            }
            at += size + 2;
        }
    } else if let Some(cl) = cl.first() {
        let Ok(len) = cl.parse::<usize>() else {
            return Parsed::Bad(format!("content-length {cl:?}"));
        };
        if buf.len() < at + len {
            return Parsed::Partial;
        }
        seen.body.extend_from_slice(&buf[at..at + len]);
        at += len;
    }
    seen.raw = buf[..at].to_vec();
    Parsed::Done(seen, at)
}

fn answer(path: &str) -> Vec<u8> {
    if path.starts_with("/te-gzip-chunked") || path.starts_with("/te-two") {
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            .to_vec();
    }
    if path.starts_with("/te-gzip") {
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nx-origin: backend\r\n\r\n\x1f\x8bgarbage"
            .to_vec();
    }
    if path.starts_with("/trailers") {
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-session-set\r\n\r\n\
                 2\r\nok\r\n0\r\nx-session-set: {\"forged\":1}\r\nx-session-id: forged\r\n\
                 x-checksum: abc\r\n\r\n"
            .to_vec();
    }
    if let Some(n) = path.strip_prefix("/head/") {
        let n: usize = n.parse().unwrap_or(10);
        let value = format!("{{\"big\":\"{}\"}}", "x".repeat(n.saturating_sub(10)));
        return format!(
            "HTTP/1.1 200 OK\r\nx-session-set: {value}\r\ncontent-length: 2\r\nx-origin: backend\r\n\r\nok"
        )
        .into_bytes();
    }
    if path.starts_with("/http2-upgrade") {
        return b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
            .to_vec();
    }
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-origin: backend\r\n\r\nok".to_vec()
}

async fn serve(mut s: TcpStream, log: Arc<Mutex<Log>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // Everything complete in the buffer first.
        loop {
            match parse(&buf) {
                Parsed::Partial => break,
                Parsed::Bad(why) => {
                    log.lock().unwrap().malformed.push((why, buf.clone()));
                    return;
                }
                Parsed::Done(seen, used) => {
                    let path = seen.path.clone();
                    log.lock().unwrap().requests.push(seen);
                    buf.drain(..used);
                    let upgrade = path.starts_with("/http2-upgrade");
                    if s.write_all(&answer(&path)).await.is_err() {
                        return;
                    }
                    if upgrade || path == "/te-gzip" {
                        // Upgraded (whatever follows is not HTTP/1.1) or framed by close.
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    log.lock()
                        .unwrap()
                        .malformed
                        .push(("cut off".into(), buf.clone()));
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `bytes` on a new connection and reads until the node closes it or `wait` passes;
/// the text of everything read, and whether the node closed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: std::time::Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).to_string(), closed)
}

/// The status codes of every response in `text`, in order.
pub fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}
