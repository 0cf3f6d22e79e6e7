//! The proxy core on real sockets: bodies, balancing, health, errors, header hygiene,
//! limits and timeouts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FAST_HEALTH: &str =
    "[backends.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_several_mb_arrive_byte_exact() {
    let b = TestBackend::start("b1").await;
    let node = Node::start(&conf("n1", &[b.url()], "")).await;
    let payload = pattern(5 * 1024 * 1024 + 7);
    for method in ["POST", "PUT"] {
        let r = http(node.http, with_body(method, "/echo", payload.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{method}");
        assert_eq!(r.body.len(), payload.len(), "{method} length");
        assert!(r.body[..] == payload[..], "{method} body differs");
    }
    let r = http(node.http, get(&format!("/bytes/{}", 6 * 1024 * 1024))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body[..] == pattern(6 * 1024 * 1024)[..],
        "download differs"
    );
    assert_eq!(r.header("x-backend"), Some("b1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let text = format!(
        "[node]\njvm_route = \"n1\"\n[backends]\nservers = [\"{}\", {{ url = \"{}\", weight = 3 }}]\n",
        a.url(),
        b.url()
    );
    let node = Node::start(&text).await;
    for _ in 0..40 {
        assert_eq!(http(node.http, get("/")).await.status, StatusCode::OK);
    }
    // Smooth weighted round robin over one client is exact: 1:3.
    assert_eq!((a.hits(), b.hits()), (10, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_busy_backend() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf(
        "n1",
        &[a.url(), b.url()],
        "algorithm = \"least_conn\"",
    ))
    .await;
    let addr = node.http;
    let slow = tokio::spawn(async move { http(addr, get("/sleep/1500")).await });
    // Wait until the slow request is in flight on one backend.
    let busy = loop {
        if a.hits() + b.hits() == 1 {
            break if a.hits() == 1 { "a" } else { "b" };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for _ in 0..8 {
        let r = http(node.http, get("/")).await;
        assert_ne!(
            r.header("x-backend"),
            Some(busy),
            "least_conn sent to the busy backend"
        );
    }
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_two_uses_every_backend_and_weights() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let text = format!(
        "[node]\njvm_route = \"n1\"\n[backends]\nalgorithm = \"random_two\"\nservers = [\"{}\", {{ url = \"{}\", weight = 4 }}]\n",
        a.url(),
        b.url()
    );
    let node = Node::start(&text).await;
    for _ in 0..200 {
        assert_eq!(http(node.http, get("/")).await.status, StatusCode::OK);
    }
    let (ha, hb) = (a.hits(), b.hits());
    assert_eq!(ha + hb, 200);
    assert!(ha > 0, "weight-1 backend never chosen");
    assert!(hb > 2 * ha, "weight 4 should dominate: a={ha} b={hb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_backend_down_and_bring_it_back() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[a.url(), b.url()], FAST_HEALTH)).await;
    let healthy = |s: &serde_json::Value, i: usize| s["backends"][i]["healthy"].as_bool().unwrap();

    // Failing health endpoint.
    a.set_healthy(false);
    node.wait_status(Duration::from_secs(5), "a down", |s| !healthy(s, 0))
        .await;
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(
            http(node.http, get("/")).await.header("x-backend"),
            Some("b")
        );
    }
    assert_eq!(a.hits(), before, "a down backend got traffic");
    a.set_healthy(true);
    node.wait_status(Duration::from_secs(5), "a up after rise", |s| healthy(s, 0))
        .await;

    // A dead process: the listener goes away, then comes back on the same port.
    let addr = b.addr;
    b.stop();
    drop(b);
    node.wait_status(Duration::from_secs(5), "b down", |s| !healthy(s, 1))
        .await;
    for _ in 0..5 {
        assert_eq!(http(node.http, get("/")).await.status, StatusCode::OK);
    }
    let _b2 = TestBackend::start_on("b2", addr).await;
    node.wait_status(Duration::from_secs(5), "b back", |s| healthy(s, 1))
        .await;
    let mut seen_b2 = false;
    for _ in 0..4 {
        seen_b2 |= http(node.http, get("/")).await.header("x-backend") == Some("b2");
    }
    assert!(seen_b2, "revived backend gets traffic again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_retries_on_another_backend() {
    let a = TestBackend::start("a").await;
    let dead = closed_port();
    // No active checks: only the passive check can notice the dead backend.
    let extra = "retries = 1\n[backends.health]\nenabled = false\n";
    let node = Node::start(&conf("n1", &[format!("http://{dead}"), a.url()], extra)).await;
    for _ in 0..6 {
        let r = http(node.http, with_body("POST", "/echo", "x")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.text(), "x");
    }
    let s = node.status().await;
    assert_eq!(s["backends"][0]["healthy"], false);
    assert!(s["backends"][0]["connect_errors"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_backend_is_503_with_a_reason() {
    let dead = closed_port();
    let node = Node::start(&conf("n1", &[format!("http://{dead}")], FAST_HEALTH)).await;
    node.wait_status(Duration::from_secs(5), "backend down", |s| {
        s["backends"][0]["healthy"] == false
    })
    .await;
    let r = http(node.http, get("/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains("no healthy backend"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_backend_is_502_with_a_reason() {
    let (g, _task) = garbage_backend().await;
    let extra = "retries = 0\n[backends.health]\nenabled = false\n";
    let node = Node::start(&conf("n1", &[format!("http://{g}")], extra)).await;
    let r = http(node.http, with_body("POST", "/", "data")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("backend failed"), "{}", r.text());
}

/// A node stopped (SIGSTOP) for longer than `response_timeout` does not time out a
/// request for the time it could not run itself (after a stop it answered 504 within
/// milliseconds, its coarse clock jumping past every deadline). Here the backend answers
/// 3.5 s after the request, 200 ms after the node resumes from a 3 s stop: 0.5 s of the
/// node's running time, well within its 2 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_of_the_node_does_not_count_against_the_backend_timeout() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "response_timeout = \"2s\"")).await;
    assert_eq!(http(node.http, get("/")).await.status, StatusCode::OK);
    let t = Instant::now();
    let pending = tokio::spawn(try_http(node.http, get("/sleep/3500")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.signal("STOP");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    node.signal("CONT");
    let r = pending.await.unwrap().unwrap();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "after {:?}: {}",
        t.elapsed(),
        r.text()
    );
    // And the timeout still counts running time: a backend slower than it is cut.
    let r = http(node.http, get("/sleep/4000")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_504_with_a_reason() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "response_timeout = \"300ms\"")).await;
    let t = Instant::now();
    let r = http(node.http, get("/sleep/3000")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.text().contains("did not respond in time"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(2));
    // Slow is not dead: the next request is served.
    assert_eq!(http(node.http, get("/")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hygiene_strips_session_and_connection_listed_headers() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "")).await;
    let req = http::Request::get("/headers")
        .header("host", "shop.example")
        .header("x-session-id", "FORGED")
        .header("X-Session", "{\"admin\":true}")
        .header("x-session-node", "evil")
        .header("connection", "x-private, keep-alive")
        .header("x-private", "secret")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        // CGI/WSGI/PHP read `_` as `-`: these would become HTTP_X_SESSION and friends.
        .header("X_Session", "{\"user\":\"admin\"}")
        .header("x_session_id", "FORGED")
        .header("X-Session_Node", "evil")
        .header("x_forwarded_for", "6.6.6.6")
        .header("X_Caracal_Hop", "1 n2")
        .header("x_kept_too", "yes")
        .header("x-kept", "yes")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = http(node.http, req).await;
    let h = r.json();
    for gone in [
        "x-session-id",
        "x-session",
        "x-session-node",
        "x-private",
        "proxy-authorization",
        "connection",
        "x_session",
        "x_session_id",
        "x-session_node",
        "x_forwarded_for",
        "x_caracal_hop",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h}");
    }
    assert_eq!(h["x-kept"][0], "yes");
    assert_eq!(h["x_kept_too"][0], "yes", "other underscored names pass");
    // Not from a trusted proxy: the client's chain is replaced by the real peer.
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "shop.example");
    assert_eq!(h["host"][0], "shop.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xff_is_appended_for_trusted_proxies() {
    let b = TestBackend::start("b").await;
    let extra = "[http]\nlisten = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"127.0.0.0/8\"]\n";
    let node = Node::start(&conf("n1", &[b.url()], extra)).await;
    let req = http::Request::get("/headers")
        .header("host", "h")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let h = http(node.http, req).await.json();
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_session_headers_never_reach_the_client() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "")).await;
    let r = http(node.http, get("/directives")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-backend"), Some("b"));
    assert!(r.header("x-session-set").is_none(), "{:?}", r.headers);
    assert!(
        r.header("x-session-invalidate").is_none(),
        "{:?}",
        r.headers
    );
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_is_431_and_the_node_keeps_serving() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "")).await;
    let big = "a".repeat(64 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let out = raw_exchange(node.http, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "got: {:.80}", out);
    assert_eq!(b.hits(), 0, "oversized request reached the backend");
    assert_eq!(http(node.http, get("/")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_400_and_reach_no_backend() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "")).await;
    let shapes: [&[u8]; 3] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
    ];
    for shape in shapes {
        let out = raw_exchange(node.http, shape).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "got {:.60} for {:?}",
            out,
            String::from_utf8_lossy(shape)
        );
    }
    assert_eq!(b.hits(), 0, "a smuggling shape reached the backend");
    assert_eq!(http(node.http, get("/")).await.status, StatusCode::OK);
}

/// CL + TE is 400 (REFERENCE 7; it was once framed by the chunked coding and forwarded
/// without the length): nothing reaches the backend, and the bytes a CL-trusting server
/// would have taken as a second request are never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "")).await;
    let smuggle = b"POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = raw_exchange(node.http, smuggle).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "a second response came back: {out}"
    );
    assert_eq!(b.hits(), 0, "a request reached the backend");
}

/// h2c is on by default: a connection that sends `P`, part of the preface, or the whole
/// preface and no SETTINGS is closed by the header timeout too, so such
/// sockets cannot hold the `max_connections` permits; a real request still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_sniff_or_handshake_that_stalls_is_closed_by_the_header_timeout() {
    let b = TestBackend::start("b").await;
    let extra = "[http]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"500ms\"\nmax_connections = 3\n";
    let node = Node::start(&conf("n1", &[b.url()], extra)).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let stalls: [&[u8]; 3] = [b"P", &preface[..16], preface];
    let t = Instant::now();
    let mut held = Vec::new();
    for bytes in stalls {
        let mut s = TcpStream::connect(node.http).await.unwrap();
        s.write_all(bytes).await.unwrap();
        held.push(s);
    }
    for (i, mut s) in held.into_iter().enumerate() {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "stalled connection {i} still open after 5s");
    }
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed too early"
    );
    // The three permits are free again: a client gets served.
    let r = tokio::time::timeout(Duration::from_secs(5), http(node.http, get("/")))
        .await
        .expect("a client was shut out");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_closed_by_the_header_timeout() {
    let b = TestBackend::start("b").await;
    let extra = "[http]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"500ms\"\n";
    let node = Node::start(&conf("n1", &[b.url()], extra)).await;
    let mut s = TcpStream::connect(node.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection still open after 5s");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed too early"
    );
    assert_eq!(b.hits(), 0);
    // Anything sent back is a timeout answer, never the backend's.
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_slow_request_finish() {
    let b = TestBackend::start("b").await;
    let mut node = Node::start(&conf("n1", &[b.url()], "")).await;
    let addr = node.http;
    let slow = tokio::spawn(async move { http(addr, get("/sleep/1200")).await });
    while b.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.signal("TERM");
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "slept");
    let status = tokio::task::spawn_blocking(move || {
        let s = node.wait_exit(Duration::from_secs(10));
        (s, node)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    assert!(
        try_http(addr, get("/")).await.is_err(),
        "still accepting after shutdown"
    );
}

/// Idle keep-alive connections are told to close at shutdown: the node exits at once, not
/// after `shutdown_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections() {
    let b = TestBackend::start("b").await;
    let c =
        conf("n1", &[b.url()], "").replace("shutdown_grace = \"5s\"", "shutdown_grace = \"60s\"");
    let mut node = Node::start(&c).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = KeepAlive::connect(node.http).await;
        assert_eq!(c.send(get("/")).await.status, StatusCode::OK);
        idle.push(c);
    }
    let t = Instant::now();
    node.signal("TERM");
    let status = tokio::task::spawn_blocking(move || node.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "waited {:?} for idle connections",
        t.elapsed()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_count_requests() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "")).await;
    for _ in 0..3 {
        http(node.http, get("/")).await;
    }
    let m = http(node.admin, get("/metrics")).await.text();
    assert!(
        m.contains("caracal_http_requests_total{class=\"2xx\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("caracal_http_request_duration_seconds_count 3"),
        "{m}"
    );
    assert!(m.contains("caracal_backend_up{backend="), "{m}");
    assert!(m.contains("caracal_http_open_connections"), "{m}");
    let s = node.status().await;
    assert_eq!(s["node"]["jvm_route"], "n1");
    assert_eq!(s["node"]["state"], "ready");
    assert_eq!(s["backends"][0]["responses"], 3);
    assert_eq!(s["requests"]["2xx"], 3);
}
