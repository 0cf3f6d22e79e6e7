//! The randomized edge harness: mutations of valid HTTP/1.1 requests and of HTTP/2
//! (h2c prior knowledge) connections, sent to a live node in front of the recording
//! backend. Seeded and bounded: `run(seed, cases)` is the same run every time.
//!
//! Each case is checked for:
//! - no panic and a node that still serves (after every batch, a plain GET gets 200);
//! - no 5xx the backend did not cause (the recording backend never answers 5xx, so every
//!   5xx is the proxy's: counted from the node's `/metrics`, and per HTTP/1 case);
//! - a backend that never sees a malformed request, a client header that forges session
//!   data or a hop (names with the session prefix, the hop marker, X-Forwarded-*, with `_`
//!   read as `-`, whose value is `FORGED`), or a smuggled request (`/SMUGGLED-<case>`,
//!   hidden after the case's request: it may only reach the backend if a strict parse of
//!   the client's bytes reads it as a request of its own);
//! - bounded memory: the node's RSS (from /proc) before and after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::recorder::{parse, Parsed, Recorder};
use crate::common::*;

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: usize,
    pub h2_cases: usize,
    pub failures: Vec<String>,
    pub statuses: HashMap<u16, usize>,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub elapsed: Duration,
    pub backend_requests: usize,
}

const SMUGGLED: &str = "/SMUGGLED-";

fn protected(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    n.starts_with("x-session")
        || n.starts_with("x-forwarded-")
        || n == "x-caracal-hop"
        || n == "forwarded"
        || n == "x-real-ip"
}

/// Header lines a mutation may add: framing and routing shapes attackers use, and forged
/// session data.
const LINES: &[&str] = &[
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: identity, chunked",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding:\tchunked",
    "Transfer-Encoding: xchunked",
    " Transfer-Encoding: chunked",
    "Content-Length: 0",
    "Content-Length: 5",
    "Content-Length: 10",
    "Content-Length: +5",
    "Content-Length: 5, 5",
    "Content-Length: 99999999999999999999",
    "Host: other",
    "Host: a b",
    "Connection: close",
    "Connection: keep-alive, X-Session",
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__",
    "Connection: Upgrade\r\nUpgrade: websocket",
    "Expect: 100-continue",
    "X-Session: FORGED",
    "X-Session-Id: FORGED",
    "x_session: FORGED",
    "X_Session_Set: FORGED",
    "X-SESSION-NODE: FORGED",
    "X-Caracal-Hop: FORGED",
    "X-Caracal-Hop: 1 n1 http",
    "X-Forwarded-For: FORGED",
    "X_Forwarded_Proto: FORGED",
    "Forwarded: FORGED",
    "X-Real-IP: FORGED",
    "Trailer: X-Session",
    "Cookie: JSESSIONID=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.n1",
    "X-Pad: \u{7f}",
];

const BYTES: &[u8] = b"\r\n\0 \t:;,_-=\x0b\x0c\x7f\x80\xff0aZ/";

fn base_request(rng: &mut fastrand::Rng, id: usize) -> Vec<u8> {
    let methods = ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH"];
    let paths = [
        "/",
        "/a/b?x=1",
        "/a;jsessionid=AAAA.n1/b",
        "/site.css;jsessionid=B.n2",
        "/q?a=b&c=%20",
        "*",
    ];
    let method = methods[rng.usize(..methods.len())];
    let path = paths[rng.usize(..paths.len())];
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: fuzz.test\r\nX-Case: {id}\r\n");
    if rng.bool() {
        head.push_str("Connection: close\r\n");
    }
    for _ in 0..rng.usize(0..3) {
        head.push_str(LINES[rng.usize(..LINES.len())]);
        head.push_str("\r\n");
    }
    let body: &[u8] = b"hello";
    match rng.u8(0..3) {
        0 => {
            head.push_str("\r\n");
            head.into_bytes()
        }
        1 => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut out = head.into_bytes();
            out.extend_from_slice(body);
            out
        }
        _ => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n");
            if rng.bool() {
                head.push_str("X-Session: FORGED\r\nx-checksum: 1\r\n");
            }
            head.push_str("\r\n");
            head.into_bytes()
        }
    }
}

fn mutate(rng: &mut fastrand::Rng, buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    let at = rng.usize(..buf.len());
    match rng.u8(0..8) {
        0 => buf[at] = rng.u8(..),
        1 => buf.insert(at, BYTES[rng.usize(..BYTES.len())]),
        2 => {
            let end = (at + rng.usize(1..8)).min(buf.len());
            buf.drain(at..end);
        }
        3 => {
            // A header line added after the request line.
            if let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = format!("{}\r\n", LINES[rng.usize(..LINES.len())]);
                let pos = eol + 2;
                buf.splice(pos..pos, line.into_bytes());
            }
        }
        4 => {
            // Duplicate a line.
            let lines: Vec<usize> = buf
                .windows(2)
                .enumerate()
                .filter(|(_, w)| *w == b"\r\n")
                .map(|(i, _)| i + 2)
                .collect();
            if lines.len() >= 2 {
                let i = rng.usize(..lines.len() - 1);
                let line = buf[lines[i]..lines[i + 1]].to_vec();
                let pos = lines[i + 1];
                buf.splice(pos..pos, line);
            }
        }
        5 => buf.truncate(at.max(1)),
        6 => buf[at] = buf[at].to_ascii_uppercase() ^ if rng.bool() { 0x20 } else { 0 },
        _ => {
            // A \n for a \r\n, or the other way.
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                buf.remove(p);
            }
        }
    }
}

/// HPACK: a literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2).
fn hpack(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for s in [name, value] {
        let mut n = s.len();
        if n < 127 {
            out.push(n as u8);
        } else {
            out.push(127);
            n -= 127;
            while n >= 128 {
                out.push((n % 128 + 128) as u8);
                n /= 128;
            }
            out.push(n as u8);
        }
        out.extend_from_slice(s);
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An h2c connection: preface, SETTINGS, one or two requests with forged headers, bodies
/// that disagree with their content-length, smuggling attempts; then mutated.
fn h2_case(rng: &mut fastrand::Rng, id: usize) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    let mut stream = 1;
    for _ in 0..rng.usize(1..3) {
        let mut block = Vec::new();
        let post = rng.bool();
        hpack(&mut block, b":method", if post { b"POST" } else { b"GET" });
        hpack(&mut block, b":scheme", b"http");
        let path = format!("/h2/{id}");
        hpack(
            &mut block,
            b":path",
            if rng.u8(0..8) == 0 {
                b"*"
            } else {
                path.as_bytes()
            },
        );
        hpack(&mut block, b":authority", b"fuzz.test");
        let extras: [(&[u8], &[u8]); 12] = [
            (b"x-session", b"FORGED"),
            (b"x-session-id", b"FORGED"),
            (b"x_session", b"FORGED"),
            (b"x-caracal-hop", b"FORGED"),
            (b"x-forwarded-for", b"FORGED"),
            (b"content-length", b"3"),
            (b"content-length", b"50"),
            (b"transfer-encoding", b"chunked"),
            (b"connection", b"close"),
            (b"te", b"trailers"),
            (b"host", b"other"),
            (b"X-Upper", b"1"),
        ];
        for _ in 0..rng.usize(0..4) {
            let (n, v) = extras[rng.usize(..extras.len())];
            hpack(&mut block, n, v);
        }
        let end_headers = 0x4;
        if post {
            frame(&mut out, 1, end_headers, stream, &block);
            let mut data = b"hello".to_vec();
            if rng.bool() {
                data.extend_from_slice(
                    format!("\r\n0\r\n\r\nGET {SMUGGLED}{id} HTTP/1.1\r\nHost: x\r\n\r\n")
                        .as_bytes(),
                );
            }
            frame(&mut out, 0, 0x1, stream, &data);
        } else {
            frame(&mut out, 1, end_headers | 0x1, stream, &block);
        }
        if rng.u8(0..6) == 0 {
            frame(&mut out, 3, 0, stream, &8u32.to_be_bytes()); // RST_STREAM CANCEL
        }
        stream += 2;
    }
    for _ in 0..rng.usize(0..3) {
        // Mutations after the preface only: a broken preface is just HTTP/1 garbage.
        if out.len() <= 24 {
            break;
        }
        let at = 24 + rng.usize(..out.len() - 24);
        match rng.u8(0..3) {
            0 => out[at] = rng.u8(..),
            1 => out.insert(at, rng.u8(..)),
            _ => out.truncate(at),
        }
    }
    out
}

/// An h2c connection with one bodyless request of `headers` (pseudo-headers first).
pub fn h2_request(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    let mut block = Vec::new();
    for (n, v) in headers {
        hpack(&mut block, n, v);
    }
    frame(&mut out, 1, 0x4 | 0x1, 1, &block);
    out
}

/// The `:status` of stream 1's response in `buf`, when the server sent it from HPACK's
/// static table (200, 204, 206, 304, 400, 404, 500), as hyper does.
pub fn h2_status(buf: &[u8]) -> Option<u16> {
    let mut at = 0;
    while buf.len() >= at + 9 {
        let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
        let stream = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]);
        if buf[at + 3] == 1 && stream == 1 {
            let first = *buf.get(at + 9)?;
            let table = [200, 204, 206, 304, 400, 404, 500];
            return (first & 0x80 != 0)
                .then(|| {
                    table
                        .get(usize::from(first & 0x7f).checked_sub(8)?)
                        .copied()
                })
                .flatten();
        }
        at += 9 + len;
    }
    None
}

/// Reads what the node answers until it closes, a complete HTTP/1 response without
/// keep-alive... or `wait` passes. Stops early on a complete HTTP/1 response (the node keeps
/// the connection open for the next request) or an HTTP/2 stream end.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], h2: bool, wait: Duration) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
        if !h2 && complete_http1(&out) || h2 && stream_ended(&out) {
            break;
        }
    }
    out
}

fn complete_http1(buf: &[u8]) -> bool {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let Ok(httparse::Status::Complete(n)) = r.parse(buf) else {
        return false;
    };
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
    match len {
        Some(l) => buf.len() >= n + l,
        None => buf.ends_with(b"0\r\n\r\n"),
    }
}

/// An HTTP/2 frame with END_STREAM on a stream, RST_STREAM or GOAWAY has arrived.
fn stream_ended(buf: &[u8]) -> bool {
    let mut at = 0;
    while buf.len() >= at + 9 {
        let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
        let (kind, flags) = (buf[at + 3], buf[at + 4]);
        if kind == 3 || kind == 7 || (kind <= 1 && flags & 1 != 0) {
            return true;
        }
        at += 9 + len;
    }
    false
}

fn statuses(text: &[u8]) -> Vec<u16> {
    let t = String::from_utf8_lossy(text);
    t.match_indices("HTTP/1.")
        .filter_map(|(i, _)| t.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The requests a strict server reads from `bytes` (to the first it cannot read).
fn strict_paths(bytes: &[u8]) -> Vec<String> {
    let mut at = 0;
    let mut paths = Vec::new();
    while at < bytes.len() {
        match parse(&bytes[at..]) {
            Parsed::Done(seen, used) => {
                paths.push(seen.path);
                at += used;
            }
            _ => break,
        }
    }
    paths
}

async fn proxy_5xx(node: &Node) -> u64 {
    let m = http(node.admin, get("/metrics")).await.text();
    m.lines()
        .filter(|l| l.starts_with("caracal_proxy_errors_total{"))
        .filter(|l| {
            [
                "client_body",
                "bad_request",
                "method_not_allowed",
                "head_too_large",
            ]
            .iter()
            .all(|r| !l.contains(&format!("reason=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs `cases` cases from `seed` against a fresh node, `parallel` at a time.
pub async fn run(seed: u64, cases: usize, parallel: usize) -> Report {
    let backend = Recorder::start().await;
    // `conf` ends inside [backends].
    let extra = "response_timeout = \"30s\"\n\
                 [http]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"1s\"\n";
    let node = Node::start(&conf("n1", &[backend.url()], extra)).await;
    let mut report = Report {
        rss_before_kb: rss_kb(node.pid()),
        ..Default::default()
    };
    let start = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let sent: Arc<std::sync::Mutex<HashMap<usize, Vec<u8>>>> = Default::default();
    let batch = parallel * 8;
    let mut done = 0;
    while done < cases {
        let n = batch.min(cases - done);
        let mut set = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(parallel));
        for id in done..done + n {
            let h2 = rng.u8(0..4) == 0;
            let bytes = if h2 {
                report.h2_cases += 1;
                h2_case(&mut rng, id)
            } else {
                let mut b = base_request(&mut rng, id);
                for _ in 0..rng.usize(0..4) {
                    mutate(&mut rng, &mut b);
                }
                // The smuggled request goes after the mutations: it stays intact, so a
                // strict parse tells whether it is a request of its own.
                if rng.u8(0..3) == 0 {
                    b.extend_from_slice(
                        format!(
                            "GET {SMUGGLED}{id} HTTP/1.1\r\nHost: x\r\nX-Session: FORGED\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                }
                b
            };
            sent.lock().unwrap().insert(id, bytes.clone());
            let addr = node.http;
            let permit = limit.clone().acquire_owned().await;
            set.spawn(async move {
                let _permit = permit;
                let out = exchange(addr, &bytes, h2, Duration::from_millis(1500)).await;
                (id, h2, out)
            });
        }
        while let Some(r) = set.join_next().await {
            let Ok((id, h2, out)) = r else { continue };
            if !h2 {
                for st in statuses(&out) {
                    *report.statuses.entry(st).or_default() += 1;
                    if st >= 500 {
                        let req = sent.lock().unwrap().get(&id).cloned().unwrap_or_default();
                        report.failures.push(format!(
                            "case {id}: {st} from the proxy\n  sent: {:?}\n  got: {:?}",
                            String::from_utf8_lossy(&req),
                            String::from_utf8_lossy(&out).lines().last()
                        ));
                    }
                }
            }
        }
        done += n;
        // The backend's view of this batch.
        let seen = backend.requests();
        report.backend_requests += seen.len();
        for r in &seen {
            for (name, value) in &r.headers {
                if protected(name) && value.contains("FORGED") {
                    report.failures.push(format!(
                        "forged header reached the backend: {name}: {value} in {:?}",
                        String::from_utf8_lossy(&r.raw)
                    ));
                }
            }
            for (name, value) in &r.trailers {
                if protected(name) && value.contains("FORGED") {
                    report
                        .failures
                        .push(format!("forged trailer reached the backend: {name}"));
                }
            }
            if let Some(id) = r.path.strip_prefix(SMUGGLED) {
                let id: usize = id.parse().unwrap_or(usize::MAX);
                let sent = sent.lock().unwrap().get(&id).cloned().unwrap_or_default();
                let legit = strict_paths(&sent).iter().any(|p| p == &r.path);
                if !legit {
                    report.failures.push(format!(
                        "smuggled request reached the backend: case {id}: {:?}",
                        String::from_utf8_lossy(&sent)
                    ));
                }
            }
        }
        for (why, bytes) in backend.malformed() {
            if why != "cut off" {
                report.failures.push(format!(
                    "malformed request at the backend ({why}): {:?}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
        }
        backend.clear();
        sent.lock().unwrap().clear();
        // Still serving, and alive.
        let ok = try_http(node.http, get("/alive")).await;
        let status = ok.as_ref().map(|r| r.status.as_u16());
        if status != Ok(200) {
            report.failures.push(format!(
                "after case {done}: the node does not serve: {status:?}"
            ));
            break;
        }
        if report.failures.len() > 20 {
            break;
        }
    }
    let own = proxy_5xx(&node).await;
    if own > 0 {
        report.failures.push(format!(
            "the proxy answered {own} 5xx of its own (see /metrics)"
        ));
    }
    if node.log_text().contains("panicked") {
        report.failures.push("the node panicked".into());
    }
    report.cases = done;
    report.rss_after_kb = rss_kb(node.pid());
    report.elapsed = start.elapsed();
    report
}
