//! The backend-side HTTP/1.1 client on real sockets, against a scripted raw backend:
//! response framing (chunked, until close, HEAD, interim 1xx), connection reuse, idle
//! connections the backend closed, early answers during an upload, and broken bodies.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Each request as the backend received it: head (lower-cased) and body.
type Log = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// One canned answer: the raw bytes, and what the backend does after sending them.
#[derive(Clone)]
struct Reply {
    bytes: Vec<u8>,
    then: Then,
}

#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Read the next request on the same connection.
    KeepAlive,
    Close,
    /// Keep the connection open, idle, for this long, then close it (a keep-alive timeout).
    CloseAfter(Duration),
}

fn reply(bytes: &[u8], then: Then) -> Reply {
    Reply {
        bytes: bytes.to_vec(),
        then,
    }
}

/// A backend speaking raw bytes: each request it reads gets the next reply of its script
/// (the last one repeats). With `answer_early`, it answers as soon as it has the head.
struct Scripted {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    /// Each request as received: head and body (chunked bodies decoded).
    requests: Log,
}

impl Scripted {
    async fn start(script: Vec<Reply>, answer_early: bool) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let (c, r) = (conns.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (script, next, r) = (script.clone(), next.clone(), r.clone());
                tokio::spawn(serve(s, script, next, r, answer_early));
            }
        });
        Scripted {
            addr,
            conns,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut s: TcpStream,
    script: Vec<Reply>,
    next: Arc<AtomicUsize>,
    requests: Log,
    answer_early: bool,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut s, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        buf.drain(..head_end + 4);
        let i = next.fetch_add(1, Ordering::SeqCst).min(script.len() - 1);
        let r = &script[i];
        if answer_early {
            let _ = s.write_all(&r.bytes).await;
            requests.lock().unwrap().push((head, Vec::new()));
            return;
        }
        let body = if let Some(n) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            while buf.len() < n {
                if !read_more(&mut s, &mut buf).await {
                    return;
                }
            }
            buf.drain(..n).collect()
        } else if head.contains("transfer-encoding: chunked") {
            let mut body = Vec::new();
            loop {
                let Some(line_end) = read_until(&mut s, &mut buf, b"\r\n").await else {
                    return;
                };
                let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                buf.drain(..line_end + 2);
                if size == 0 {
                    let Some(end) = read_until(&mut s, &mut buf, b"\r\n").await else {
                        return;
                    };
                    buf.drain(..end + 2);
                    break;
                }
                while buf.len() < size + 2 {
                    if !read_more(&mut s, &mut buf).await {
                        return;
                    }
                }
                body.extend(buf.drain(..size));
                assert_eq!(buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
            }
            body
        } else {
            Vec::new()
        };
        requests.lock().unwrap().push((head, body));
        if s.write_all(&r.bytes).await.is_err() {
            return;
        }
        match r.then {
            Then::KeepAlive => {}
            Then::Close => return,
            Then::CloseAfter(d) => {
                tokio::time::sleep(d).await;
                return;
            }
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, pat: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(pat.len()).position(|w| w == pat) {
            return Some(i);
        }
        if !read_more(s, buf).await {
            return None;
        }
    }
}

async fn node_for(b: &Scripted) -> Node {
    let extra = "retries = 1\n[backends.health]\nenabled = false\n";
    Node::start(&conf("n1", &[b.url()], extra)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_arrive_whole_and_keep_the_connection() {
    let b = Scripted::start(
        vec![reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            Then::KeepAlive,
        )],
        false,
    )
    .await;
    let node = node_for(&b).await;
    let mut c = KeepAlive::connect(node.http).await;
    for _ in 0..3 {
        let r = c.send(get("/")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "hello world");
    }
    assert_eq!(b.conns(), 1, "the backend connection is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_length_is_read_to_close_and_not_reused() {
    let b = Scripted::start(
        vec![reply(b"HTTP/1.1 200 OK\r\n\r\nuntil close", Then::Close)],
        false,
    )
    .await;
    let node = node_for(&b).await;
    for _ in 0..2 {
        let r = http(node.http, get("/")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "until close");
    }
    assert_eq!(b.conns(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_no_body_and_interim_answers_are_skipped() {
    let b = Scripted::start(
        vec![
            reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                Then::KeepAlive,
            ),
            reply(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                Then::KeepAlive,
            ),
        ],
        false,
    )
    .await;
    let node = node_for(&b).await;
    let mut c = KeepAlive::connect(node.http).await;
    let head = http::Request::head("/")
        .header("host", "t")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = c.send(head).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("100"));
    assert!(r.body.is_empty());
    let r = c.send(get("/")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(
        b.conns(),
        1,
        "HEAD and the interim answers kept the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_backend_closed_cost_no_request() {
    // A backend with a 50 ms keep-alive timeout: every pooled connection dies while idle.
    let b = Scripted::start(
        vec![reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Then::CloseAfter(Duration::from_millis(50)),
        )],
        false,
    )
    .await;
    let node = node_for(&b).await;
    for i in 0..4 {
        // Idle past the backend's timeout: the scenario itself, not a synchronization.
        tokio::time::sleep(Duration::from_millis(150)).await;
        // A POST may not be sent twice: it must never go out on the dead connection.
        let r = http(node.http, with_body("POST", "/", format!("n={i}"))).await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"), "{i}");
    }
    assert_eq!(b.conns(), 4);
    let bodies: Vec<Vec<u8>> = b
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(bodies, [b"n=0", b"n=1", b"n=2", b"n=3"].map(|b| b.to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_during_an_upload_reaches_the_client() {
    let b = Scripted::start(
        vec![reply(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
            Then::Close,
        )],
        true,
    )
    .await;
    let node = node_for(&b).await;
    // Announce 64 MiB, send 1 MiB, then wait for the answer.
    let mut s = TcpStream::connect(node.http).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 67108864\r\n\r\n")
        .await
        .unwrap();
    // The answer and the close can come before the whole megabyte is out: the upload may
    // then fail with a broken pipe. What counts is that the answer arrives (data queued
    // before a reset is still read).
    let _ = s.write_all(&vec![b'x'; 1 << 20]).await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let text = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
            if got.ends_with(b"big!") {
                break;
            }
        }
        String::from_utf8_lossy(&got).to_string()
    })
    .await
    .expect("no answer while uploading");
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("big!"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_length_goes_up_chunked() {
    let b = Scripted::start(
        vec![reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Then::KeepAlive,
        )],
        false,
    )
    .await;
    let node = node_for(&b).await;
    // The client sends chunked; the proxy streams it on, chunked, byte for byte.
    let mut s = TcpStream::connect(node.http).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n",
    )
    .await
    .unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"4\r\ndefg\r\n0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"ok") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let reqs = b.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].0.contains("transfer-encoding: chunked"),
        "{}",
        reqs[0].0
    );
    assert!(!reqs[0].0.contains("content-length"), "{}", reqs[0].0);
    assert_eq!(reqs[0].1, b"abcdefg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_body_aborts_the_response_and_the_connection() {
    let b = Scripted::start(
        vec![
            reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nZZ\r\n",
                Then::KeepAlive,
            ),
            reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                Then::KeepAlive,
            ),
        ],
        false,
    )
    .await;
    let node = node_for(&b).await;
    let r = try_http(node.http, get("/")).await;
    assert!(
        r.is_err(),
        "a broken body must not look complete: {:?}",
        r.map(|r| r.body)
    );
    let r = http(node.http, get("/")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(b.conns(), 2, "the broken connection was not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_lengths_from_a_backend_are_502() {
    let b = Scripted::start(
        vec![reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            Then::Close,
        )],
        false,
    )
    .await;
    let node = Node::start(&conf(
        "n1",
        &[b.url()],
        "retries = 0\n[backends.health]\nenabled = false\n",
    ))
    .await;
    let r = http(node.http, get("/")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    // The client gets the generic reason; the log line, under its request id, the detail.
    let id = r.header("x-request-id").unwrap_or("-").to_string();
    assert!(
        node.wait_log(&id, Duration::from_secs(5)).await,
        "{}",
        r.text()
    );
    let log = node.log_text();
    let line = log.lines().find(|l| l.contains(&id)).unwrap_or_default();
    assert!(line.contains("Content-Length"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodyless_get_sent_to_a_backend_that_hangs_up_is_retried_elsewhere() {
    // `mute` reads each request and closes without a word; `good` answers.
    let mute = Scripted::start(vec![reply(b"", Then::Close)], false).await;
    let good = Scripted::start(
        vec![reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Then::KeepAlive,
        )],
        false,
    )
    .await;
    let extra = "retries = 1\n[backends.health]\nenabled = false\n";
    let node = Node::start(&conf("n1", &[mute.url(), good.url()], extra)).await;
    for i in 0..4 {
        let r = http(node.http, get("/")).await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"), "{i}");
    }
    assert!(
        !mute.requests.lock().unwrap().is_empty(),
        "round robin sent nothing to the mute backend: the retry was not exercised"
    );
}

/// The backend's hop-by-hop headers, and those its `Connection` names, never reach the
/// client; `Connection: close` from an HTTP/1.1 backend and a missing `keep-alive` from an
/// HTTP/1.0 one end the connection, anything else keeps it. Equal repeated lengths are one
/// length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_hop_by_hop_headers_are_dropped_and_decide_reuse() {
    let b = Scripted::start(
        vec![reply(
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
              X-Hop: secret\r\nX-Kept: yes\r\nContent-Length: 2, 2\r\n\r\nok",
            Then::KeepAlive,
        )],
        false,
    )
    .await;
    let node = node_for(&b).await;
    let mut c = KeepAlive::connect(node.http).await;
    for _ in 0..3 {
        let r = c.send(get("/")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "ok");
        assert_eq!(r.header("x-kept"), Some("yes"));
        for gone in ["x-hop", "keep-alive"] {
            assert_eq!(r.header(gone), None, "{gone} reached the client");
        }
        assert_ne!(r.header("connection"), Some("Keep-Alive, X-Hop"));
    }
    assert_eq!(b.conns(), 1, "the backend connection is reused");

    for (head, reused) in [
        (
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
            false,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            true,
        ),
    ] {
        let b = Scripted::start(vec![reply(head, Then::KeepAlive)], false).await;
        let node = node_for(&b).await;
        for _ in 0..2 {
            let r = http(node.http, get("/")).await;
            assert_eq!(r.text(), "ok");
        }
        let want = if reused { 1 } else { 2 };
        let head = String::from_utf8_lossy(head);
        assert_eq!(b.conns(), want, "{head}");
    }
}
