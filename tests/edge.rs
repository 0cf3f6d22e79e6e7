//! The client edge (REFERENCE 7): raw-socket clients against a node in front of a backend
//! that records the exact bytes it gets. Each family is a table: what the client sends,
//! the status it gets, whether the node closes, and what reached the backend.

mod common;
#[allow(dead_code)]
#[path = "fuzz/edge.rs"]
mod fuzz_edge;

use std::time::Duration;

use common::recorder::{raw, statuses, Recorder, Seen};
use common::*;

/// What the backend must have seen for a case.
type Check = fn(&[Seen]) -> Result<(), String>;

struct Case {
    name: &'static str,
    send: Vec<u8>,
    status: u16,
    /// The node closes the connection after its answer.
    closed: bool,
    check: Check,
}

fn nothing(seen: &[Seen]) -> Result<(), String> {
    match seen {
        [] => Ok(()),
        s => Err(format!(
            "the backend got {} request(s): {:?}",
            s.len(),
            s[0].path
        )),
    }
}

fn one(seen: &[Seen]) -> Result<&Seen, String> {
    match seen {
        [s] => Ok(s),
        s => Err(format!("the backend got {} requests, not one", s.len())),
    }
}

fn req(head: &str) -> Vec<u8> {
    head.replace('\n', "\r\n").into_bytes()
}

async fn run_table(node: &Node, backend: &Recorder, cases: Vec<Case>) {
    let mut failed = Vec::new();
    for c in cases {
        backend.clear();
        let (text, closed) = raw(node.http, &c.send, Duration::from_secs(3)).await;
        let got = statuses(&text);
        let seen = backend.requests();
        let mut why = Vec::new();
        if got.first() != Some(&c.status) {
            why.push(format!("status {got:?}, wanted {}", c.status));
        }
        if c.closed && !closed {
            why.push("connection left open".into());
        }
        if let Err(e) = (c.check)(&seen) {
            why.push(e);
        }
        // Nothing malformed may reach a backend, whole or cut (a body that breaks off
        // after its head went out is a cut request: only the body family allows it).
        for (w, bytes) in backend.malformed() {
            if !(w == "cut off" && c.name.starts_with("body:")) {
                why.push(format!(
                    "malformed at the backend ({w}): {:?}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
        }
        if !why.is_empty() {
            failed.push(format!(
                "{}: {}\n  response: {:?}",
                c.name,
                why.join("; "),
                text.lines().next()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

async fn node_for(backend: &Recorder, extra: &str) -> Node {
    let extra =
        format!("[http]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"2s\"\n{extra}");
    Node::start(&conf("n1", &[backend.url()], &extra)).await
}

/// framing a backend could read differently is refused (CL+TE and a
/// repeated Content-Length by the framing guard, since hyper hides them from the head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_vectors() {
    let b = Recorder::start().await;
    let node = node_for(&b, "").await;
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";
    let smuggled = "GET /SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = vec![
        Case {
            name: "TE identity, chunked",
            send: req(&format!("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: identity, chunked\n\n{chunked_body}")),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "two TE headers",
            send: req(&format!("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n\n{chunked_body}")),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "TE gzip",
            send: req("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip\n\nxxxx"),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "differing Content-Length",
            send: req("POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 6\n\nhello!"),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "CL+TE",
            send: format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}{smuggled}").into_bytes(),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "TE+CL, and a bare LF",
            send: format!("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nContent-Length: 4\n\n{chunked_body}{smuggled}").into_bytes(),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "repeated identical Content-Length",
            send: req(&format!("POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 5\n\nhello{smuggled}")),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "a Content-Length list",
            send: req("POST / HTTP/1.1\nHost: a\nContent-Length: 5, 5\n\nhello"),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "a good request, then a repeated Content-Length on the same connection",
            send: req("GET /first HTTP/1.1\nHost: a\n\nPOST / HTTP/1.1\nHost: a\nContent-Length: 1\nContent-Length: 1\n\nx"),
            status: 200,
            closed: true,
            check: |s| (one(s)?.path == "/first").then_some(()).ok_or("the second reached".into()),
        },
        Case {
            name: "body: bad chunk size",
            send: req("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\nzz\n"),
            status: 400,
            closed: true,
            check: nothing,
        },
    ];
    run_table(&node, &b, cases).await;
}

/// a client's broken body is the client's: 400 or a closed connection, and the
/// backend is never marked down for it (before: 503 "no healthy backend" for the next
/// legitimate requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_error_never_takes_the_backend_down() {
    let b = Recorder::start().await;
    let node = node_for(&b, "").await;
    // Many, eight at a time: the body writer runs on its own task, and a race between its
    // end and the backend's broken answer once made a bad chunk a backend failure (found
    // by the 100k-case fuzz run, with `Expect: 100-continue`).
    let bad_bodies = [
        "POST /upload HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n5\nhello\nzz\n",
        // Content-Length 100, 10 bytes, then the client goes away.
        "POST /upload HTTP/1.1\nHost: a\nContent-Length: 100\n\n0123456789",
        "PUT /site.css;jsessionid=B.n2 HTTP/1.1\nHost: a\nExpect: 100-continue\n\
         Transfer-Encoding: chunked\n\n5\nhello\nhello\n0\n\n",
    ];
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..360 {
        let bad = req(bad_bodies[i % bad_bodies.len()]);
        let addr = node.http;
        batch.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(&bad).await.unwrap();
            s.shutdown().await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
            let text = String::from_utf8_lossy(&out).into_owned();
            let st = statuses(&text);
            assert!(
                st.is_empty() || st == [400] || st == [100, 400],
                "case {i}: {text}"
            );
        });
        if batch.len() == 8 {
            batch.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = batch.join_next().await {
        r.unwrap();
    }
    for _ in 0..20 {
        let r = http(node.http, get("/after")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = http(node.admin, get("/metrics")).await.text();
    let line = m
        .lines()
        .find(|l| l.starts_with("caracal_backend_up{"))
        .unwrap_or_default();
    assert!(line.ends_with(" 1"), "backend still up: {line}");
    assert!(
        !m.lines()
            .any(|l| l.starts_with("caracal_backend_errors_total{") && !l.ends_with(" 0")),
        "no backend errors counted"
    );
}

/// Host, CONNECT, `*`, the exact header cap, what is stripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_target_and_strip_vectors() {
    let b = Recorder::start().await;
    let node = node_for(&b, "max_header_bytes = 32768\n").await;
    let big = |n: usize| {
        req(&format!(
            "GET /big HTTP/1.1\nHost: a\nX-Big: {}\nConnection: close\n\n",
            "b".repeat(n)
        ))
    };
    let cases = vec![
        Case {
            name: "two Host headers",
            send: req("GET / HTTP/1.1\nHost: a\nHost: b\n\n"),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "HTTP/1.1 without Host",
            send: req("GET / HTTP/1.1\nAccept: */*\n\n"),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "Host with a space",
            send: req("GET / HTTP/1.1\nHost: a b\n\n"),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "Host with userinfo",
            send: req("GET / HTTP/1.1\nHost: u@h\n\n"),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "HTTP/1.0 without Host: the backend gets an empty Host",
            send: req("GET /old HTTP/1.0\n\n"),
            status: 200,
            closed: true,
            check: |s| {
                let r = one(s)?;
                (r.all("host") == [""]).then_some(()).ok_or(format!("{:?}", r.all("host")))
            },
        },
        Case {
            name: "absolute form: the target's authority is the Host",
            send: req("GET http://target.example/x?q=1 HTTP/1.1\nHost: other\nConnection: close\n\n"),
            status: 200,
            closed: true,
            check: |s| {
                let r = one(s)?;
                (r.path == "/x?q=1" && r.all("host") == ["target.example"])
                    .then_some(())
                    .ok_or(format!("{} {:?}", r.path, r.all("host")))
            },
        },
        Case {
            name: "CONNECT",
            send: req("CONNECT example.com:443 HTTP/1.1\nHost: example.com:443\n\n"),
            status: 405,
            closed: true,
            check: nothing,
        },
        Case {
            name: "GET *",
            send: req("GET * HTTP/1.1\nHost: a\n\n"),
            status: 400,
            closed: true,
            check: nothing,
        },
        Case {
            name: "OPTIONS * passes",
            send: req("OPTIONS * HTTP/1.1\nHost: a\nConnection: close\n\n"),
            status: 200,
            closed: true,
            check: |s| (one(s)?.path == "*").then_some(()).ok_or("path".into()),
        },
        Case {
            name: "a 40 KiB head over a 32 KiB max_header_bytes",
            send: big(40 * 1024),
            status: 431,
            closed: true,
            check: nothing,
        },
        Case {
            name: "a head just over 32 KiB",
            send: big(32 * 1024 - 40),
            status: 431,
            closed: true,
            check: nothing,
        },
        Case {
            name: "a head just under 32 KiB passes",
            send: big(32 * 1024 - 200),
            status: 200,
            closed: true,
            check: |s| one(s).map(|_| ()),
        },
        Case {
            name: "every ;jsessionid= is stripped",
            send: req("GET /a;jsessionid=A.n1;jsessionid=B.n2/b;JSESSIONID=C HTTP/1.1\nHost: a\nConnection: close\n\n"),
            status: 200,
            closed: true,
            check: |s| (one(s)?.path == "/a/b").then_some(()).ok_or(s[0].path.to_string()),
        },
        Case {
            name: "a ;jsessionid= on a static path is stripped",
            send: req("GET /site.css;jsessionid=A.n1 HTTP/1.1\nHost: a\nConnection: close\n\n"),
            status: 200,
            closed: true,
            check: |s| (one(s)?.path == "/site.css").then_some(()).ok_or(s[0].path.to_string()),
        },
        Case {
            name: "Forwarded, X-Real-IP, X-Request-Id and underscore names from a client",
            send: req("GET /f HTTP/1.1\nHost: a\nForwarded: for=6.6.6.6\nX-Real-IP: 6.6.6.6\nX-Request-Id: forged\nX_Session: {\"user\":\"admin\"}\nX_Forwarded_For: 6.6.6.6\nConnection: close\n\n"),
            status: 200,
            closed: true,
            check: |s| {
                let r = one(s)?;
                let leaked: Vec<_> = r
                    .headers
                    .iter()
                    .filter(|(n, v)| {
                        n == "forwarded" || n == "x-real-ip" || n.contains('_') || v.contains("6.6.6.6") || v == "forged"
                    })
                    .collect();
                let id = r.all("x-request-id");
                if !leaked.is_empty() || id.len() != 1 || id[0].len() != 16 {
                    return Err(format!("leaked {leaked:?}, request id {id:?}"));
                }
                Ok(())
            },
        },
        Case {
            name: "an h2c upgrade is not passed on",
            send: req("GET /up HTTP/1.1\nHost: a\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAAQAAP__\n\n"),
            status: 200,
            closed: false,
            check: |s| {
                let r = one(s)?;
                let bad: Vec<_> = r
                    .headers
                    .iter()
                    .filter(|(n, _)| n == "upgrade" || n == "http2-settings" || n == "connection")
                    .collect();
                bad.is_empty().then_some(()).ok_or(format!("{bad:?}"))
            },
        },
        Case {
            name: "a backend's 101 to a request that asked no upgrade opens no tunnel",
            send: req("GET /http2-upgrade HTTP/1.1\nHost: a\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAAQAAP__\n\nGET /inner HTTP/1.1\nHost: a\nX-Session: {\"user\":\"admin\"}\n\n"),
            status: 502,
            closed: false,
            check: |s| {
                // The bytes after the head are the client's next request, proxied (and
                // cleaned) as such, never carried raw through a tunnel.
                s.iter()
                    .all(|r| r.header("x-session").is_none())
                    .then_some(())
                    .ok_or("a raw inner request reached the backend".into())
            },
        },
    ];
    run_table(&node, &b, cases).await;
}

/// a response the proxy cannot pass on is that response's 502 and never
/// a health failure; a session write as large as the config allows is writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_response_vectors() {
    let b = Recorder::start().await;
    let node = node_for(&b, "[session]\nmax_session_bytes = 1048576\n").await;
    for (path, status) in [
        ("/te-gzip", 502),
        ("/te-gzip-chunked", 502),
        ("/head/65536", 200),
        ("/head/700000", 200),
        ("/head/2500000", 502),
    ] {
        let r = http(node.http, get(path)).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        if status == 200 {
            assert!(
                set_cookie_id(&r).is_some(),
                "{path}: the big session was created"
            );
        } else {
            let text = r.text();
            assert!(
                !text.contains("127.0.0.1") && text.contains("request id"),
                "{text}"
            );
        }
        // The backend is still in rotation: the next request is served.
        let r = http(node.http, get("/next")).await;
        assert_eq!(r.status, 200, "after {path}: {}", r.text());
    }
}

/// The config refuses a session limit no header could carry.
#[test]
fn a_session_limit_over_what_a_header_carries_exits_2() {
    let (code, err, _, _) = check_config(
        &conf(
            "n1",
            &["http://127.0.0.1:1".into()],
            "[session]\nmax_session_bytes = 20000000\n",
        ),
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("session.max_session_bytes"), "{err}");
}

/// the proxy's own 5xx names no backend URL, and carries a request id that is
/// also in the header and in the log line with the details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_responses_are_generic_with_a_request_id() {
    let dead = closed_port();
    let node = Node::start(&conf("n1", &[format!("http://{dead}")], "")).await;
    let r = http(node.http, get("/x")).await;
    assert_eq!(r.status, 502);
    let text = r.text();
    let id = r
        .header("x-request-id")
        .expect("request id header")
        .to_string();
    assert_eq!(id.len(), 16, "{id}");
    assert!(text.contains(&id), "{text}");
    assert!(
        !text.contains(&dead.to_string()) && !text.contains("127.0.0.1"),
        "{text}"
    );
    assert!(
        node.wait_log(&id, Duration::from_secs(5)).await,
        "the log line has the request id"
    );
    let log = node.log_text();
    let line = log.lines().find(|l| l.contains(&id)).unwrap_or_default();
    assert!(
        line.contains(&dead.to_string()),
        "the log has the details: {line}"
    );
}

/// trailers lose what a head would, both ways (HTTP/1.1 here; HTTP/2 below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_request_trailers_are_cleaned() {
    let b = Recorder::start().await;
    let node = node_for(&b, "").await;
    let send = req("POST /t HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTrailer: x-checksum\nConnection: close\n\n5\nhello\n0\nx-session-id: forged\nx-session: {}\ncontent-length: 5\nX_Session_Set: {}\nx-checksum: abc\n\n");
    let (text, _) = raw(node.http, &send, Duration::from_secs(3)).await;
    assert_eq!(statuses(&text), [200], "{text}");
    let seen = b.requests();
    let r = one(&seen).unwrap();
    assert_eq!(r.body, b"hello");
    assert_eq!(
        r.trailers,
        [("x-checksum".to_string(), "abc".to_string())],
        "{:?}",
        String::from_utf8_lossy(&r.raw)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_trailers_are_cleaned_both_ways() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let b = Recorder::start().await;
    let node = node_for(&b, "").await;
    let tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);

    // A request whose trailers try to forge a session.
    let mut t = http::HeaderMap::new();
    t.insert("x-session-id", "forged".parse().unwrap());
    t.insert("x-session", "{}".parse().unwrap());
    t.insert("x-checksum", "abc".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(t)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let req = http::Request::post("http://a/t").body(body).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let seen = b.requests();
    let r = one(&seen).unwrap();
    assert_eq!(r.trailers, [("x-checksum".to_string(), "abc".to_string())]);

    // A backend whose trailers carry session directives.
    let none: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = Vec::new();
    let req = http::Request::get("http://a/trailers")
        .body(StreamBody::new(futures_util::stream::iter(none)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let got = resp.into_body().collect().await.unwrap();
    let trailers = got.trailers().cloned().unwrap_or_default();
    assert!(
        trailers.get("x-session-set").is_none() && trailers.get("x-session-id").is_none(),
        "{trailers:?}"
    );
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc"[..])
    );
    assert_eq!(got.to_bytes(), "ok");
}

/// Finding 9 over HTTP/2: `:path *` with GET is 400 and reaches no backend; so are two
/// `content-length`s (HTTP/2 leaves both in the head) and CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_heads_get_the_same_checks() {
    let b = Recorder::start().await;
    let node = node_for(&b, "").await;
    let base: [(&[u8], &[u8]); 3] = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"a"),
    ];
    let with = |extra: &[(&'static [u8], &'static [u8])]| {
        let mut h: Vec<(&[u8], &[u8])> = base.to_vec();
        h.extend_from_slice(extra);
        fuzz_edge::h2_request(&h)
    };
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("a plain GET", with(&[(b":path", b"/ok")]), 200),
        ("GET *", with(&[(b":path", b"*")]), 400),
        (
            "two content-lengths",
            with(&[
                (b":path", b"/cl"),
                (b"content-length", b"0"),
                (b"content-length", b"0"),
            ]),
            400,
        ),
        (
            "a forged session header",
            with(&[(b":path", b"/f"), (b"x-session", b"{}")]),
            200,
        ),
    ];
    for (name, bytes, want) in cases {
        b.clear();
        let out = fuzz_edge::exchange(node.http, &bytes, true, Duration::from_secs(3)).await;
        assert_eq!(fuzz_edge::h2_status(&out), Some(want), "{name}");
        let seen = b.requests();
        if want == 200 {
            let r = one(&seen).unwrap();
            assert!(r.header("x-session").is_none(), "{name}");
        } else {
            assert!(seen.is_empty(), "{name}: reached the backend");
        }
    }
}
