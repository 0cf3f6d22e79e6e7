//! What a client is told when caracal refuses or fails a request (REFERENCE 3 and 7).
//!
//! - A framing 4xx (431, and the 400s of a bad Host) closes the connection: whatever the
//!   client pipelined after it is never parsed as a request of its own.
//! - Every 5xx the proxy produces names its reason and the request id, and never a member's
//!   route, an address or a backend URL (those are in the log line with the same id). The
//!   routes here are distinctive words, so a leak cannot hide in hex or in "n1".

mod common;

use std::time::Duration;

use common::recorder::{raw, statuses, Recorder};
use common::*;
use http::StatusCode;

/// A bad request, then a good one on the same connection: one answer, and the connection
/// closes. The second request never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_4xx_closes_the_connection() {
    let b = Recorder::start().await;
    let node = Node::start(&conf(
        "n1",
        &[b.url()],
        "[http]\nlisten = [\"127.0.0.1:0\"]\nmax_header_bytes = 32768\nheader_read_timeout = \"5s\"\n",
    ))
    .await;
    let next = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    // Just over the exact cap (hyper's buffer holds it; the proxy counts it).
    let over = format!(
        "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(32 * 1024 - 20)
    );
    let cases: [(&str, String, u16); 5] = [
        ("a head over max_header_bytes", over, 431),
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
            400,
        ),
        (
            "HTTP/1.1 without Host",
            "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n".into(),
            400,
        ),
        (
            "Host with a space",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n".into(),
            400,
        ),
        (
            "Host with userinfo",
            "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n".into(),
            400,
        ),
    ];
    let mut failed = Vec::new();
    for (name, bad, status) in cases {
        b.clear();
        let (text, closed) = raw(
            node.http,
            format!("{bad}{next}").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        let got = statuses(&text);
        if got != [status] {
            failed.push(format!("{name}: answers {got:?}, wanted only [{status}]"));
        }
        if !closed {
            failed.push(format!("{name}: the connection was left open"));
        }
        if !text.to_ascii_lowercase().contains("connection: close") {
            failed.push(format!("{name}: no Connection: close in {text:.200}"));
        }
        if !b.requests().is_empty() {
            failed.push(format!(
                "{name}: the backend got {:?}",
                b.requests()[0].path
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // A good request still keeps its connection.
    let (text, closed) = raw(node.http, next.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(statuses(&text), [200]);
    assert!(!closed, "a good request's connection closed");
}

/// Words no error body may contain: the routes, the addresses, the backend URLs. The
/// request id (random hex) is left out of the search: a port's digits could occur in it.
fn leaks(body: &str, secrets: &[String]) -> Vec<String> {
    let body = body.split("(request id").next().unwrap_or(body);
    secrets
        .iter()
        .filter(|s| body.contains(s.as_str()))
        .cloned()
        .collect()
}

/// Drives every 5xx the proxy produces on real sockets and checks each body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_5xx_body_names_a_route_an_address_or_a_backend() {
    let mut bodies: Vec<(&str, u16, String)> = Vec::new();
    let mut secrets: Vec<String> = vec!["127.0.0.1".into(), "http://".into()];

    // One node: the backend-side failures.
    let dead = closed_port();
    let (garbage, _g) = garbage_backend().await;
    let slow = TestBackend::start("slowpoke").await;
    let rec = Recorder::start().await;
    for a in [dead, garbage, slow.addr, rec.addr] {
        secrets.push(a.port().to_string());
    }
    secrets.push("slowpoke".into());

    // 502 (connect), then 503 (no healthy backend) once the passive check marked it down.
    let n = Node::start(&conf(
        "route-alpha",
        &[format!("http://{dead}")],
        "[backends.health]\nenabled = false\n",
    ))
    .await;
    secrets.push(n.http.port().to_string());
    let r = http(n.http, get("/x")).await;
    bodies.push(("backend connect", r.status.as_u16(), r.text()));
    let r = http(n.http, get("/x")).await;
    bodies.push(("no healthy backend", r.status.as_u16(), r.text()));
    drop(n);

    // 502: a backend that answers garbage.
    let n = Node::start(&conf(
        "route-alpha",
        &[format!("http://{garbage}")],
        "retries = 0\n[backends.health]\nenabled = false\n",
    ))
    .await;
    let r = http(n.http, get("/x")).await;
    bodies.push(("backend failed", r.status.as_u16(), r.text()));
    drop(n);

    // 504, 502 (directive), 503 (session limit) against one node.
    let n = Node::start(&conf(
        "route-alpha",
        &[slow.url()],
        "response_timeout = \"300ms\"\n[session]\nmax_active_sessions = 1\n",
    ))
    .await;
    let r = http(n.http, get("/sleep/2000")).await;
    bodies.push(("backend timeout", r.status.as_u16(), r.text()));
    let r = http(
        n.http,
        reflect(
            "/",
            None,
            &[("x-session-invalidate", "http://10.9.8.7:9001/route-alpha")],
        ),
    )
    .await;
    secrets.push("10.9.8.7".into());
    bodies.push(("bad directive", r.status.as_u16(), r.text()));
    let first = http(n.http, reflect("/", None, &[("x-session-set", "{}")])).await;
    assert!(set_cookie_id(&first).is_some(), "{}", first.text());
    let r = http(n.http, reflect("/", None, &[("x-session-set", "{}")])).await;
    bodies.push(("session limit", r.status.as_u16(), r.text()));
    drop(n);

    // 502: a response that cannot be passed on.
    let n = Node::start(&conf("route-alpha", &[rec.url()], "")).await;
    let r = http(n.http, get("/te-gzip")).await;
    bodies.push(("response refused", r.status.as_u16(), r.text()));
    drop(n);

    // A cluster: the owner announces an HTTP address nobody listens on, so a forward to it
    // cannot be sent (503 cannot route); then the owner's peers stop (503 cut off).
    let routes = ["route-alpha", "route-bravo", "route-charlie"];
    secrets.extend(routes.iter().map(|r| r.to_string()));
    let nowhere = closed_port();
    secrets.push(nowhere.port().to_string());
    let (_b, nodes) = start_cluster(&routes, "client-errors", "expected_members = 3", |r, c| {
        if r == "route-alpha" {
            c.replace(
                "[cluster]\n",
                &format!("[cluster]\nadvertise_http = \"{nowhere}\"\n"),
            )
        } else {
            c
        }
    })
    .await;
    for n in &nodes {
        secrets.push(n.http.port().to_string());
        secrets.push(n.admin.port().to_string());
        let mesh = n.status().await["node"]["mesh_addr"]
            .as_str()
            .unwrap()
            .to_string();
        secrets.push(mesh.rsplit(':').next().unwrap().to_string());
    }
    let r = http(nodes[0].http, count(None)).await;
    let id = set_cookie_id(&r).expect("a session at route-alpha");
    assert!(id.ends_with(".route-alpha"), "{id}");
    let r = http(nodes[1].http, count(Some(&id))).await;
    let unreachable_id = r.header("x-request-id").unwrap_or_default().to_string();
    bodies.push(("owner unreachable", r.status.as_u16(), r.text()));

    nodes[1].signal("STOP");
    nodes[2].signal("STOP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // A write may first time out on its acks (too few copies), then the lease runs out.
    let mut too_few = None;
    let cut = loop {
        let r = http(nodes[0].http, count(Some(&id))).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            if r.text().contains("fewer copies") {
                too_few.get_or_insert(r.text());
            } else {
                break r;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never cut off: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    bodies.push(("cut off from the majority", cut.status.as_u16(), cut.text()));
    if let Some(text) = too_few {
        eprintln!("also seen: a write held by too few copies");
        bodies.push(("too few copies", 503, text));
    }
    nodes[1].signal("CONT");
    nodes[2].signal("CONT");

    let want = [
        ("backend connect", 502, "could not connect to a backend"),
        ("no healthy backend", 503, "no healthy backend"),
        ("backend failed", 502, "backend failed"),
        ("backend timeout", 504, "did not respond in time"),
        (
            "bad directive",
            502,
            "x-session-invalidate: expected true or false",
        ),
        ("session limit", 503, "max_active_sessions"),
        ("response refused", 502, "cannot be forwarded"),
        ("owner unreachable", 503, "cannot route the session"),
        (
            "cut off from the majority",
            503,
            "cut off from the cluster majority",
        ),
        ("too few copies", 503, "fewer copies than a majority needs"),
    ];
    let mut failed = Vec::new();
    for ((name, status, body), (wname, wstatus, reason)) in bodies.iter().zip(want) {
        assert_eq!(*name, wname);
        if *status != wstatus {
            failed.push(format!("{name}: status {status}, wanted {wstatus}: {body}"));
        }
        if !body.contains(reason) || !body.contains("request id") {
            failed.push(format!(
                "{name}: no reason {reason:?} or request id: {body}"
            ));
        }
        let l = leaks(body, &secrets);
        if !l.is_empty() {
            failed.push(format!("{name}: the body names {l:?}: {body}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The log has what the body leaves out, under the same request id.
    let log = nodes[1].log_text();
    let line = log
        .lines()
        .find(|l| l.contains(&unreachable_id))
        .unwrap_or_default();
    assert!(line.contains("route-alpha"), "the log line: {line}");
}
