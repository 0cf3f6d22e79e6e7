//! Sessions on one node through the backend header protocol.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};

fn base(full: &str) -> &str {
    full.split('.').next().unwrap()
}

async fn session_info(node: &Node, base: &str) -> Option<Value> {
    common::session_info(node.admin, base).await
}

async fn new_session(node: &Node, attrs: &str) -> String {
    let r = http(node.http, reflect("/", None, &[("x-session-set", attrs)])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    set_cookie_id(&r).expect("a session cookie")
}

async fn start() -> (TestBackend, Node) {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf("n1", &[b.url()], "")).await;
    (b, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_format_and_flags_over_plain_http() {
    let (_b, node) = start().await;
    let r = http(
        node.http,
        reflect("/", None, &[("x-session-set", r#"{"a":1}"#)]),
    )
    .await;
    let sc = r.header("set-cookie").unwrap().to_string();
    let id = set_cookie_id(&r).unwrap();
    let (b, route) = id.split_once('.').unwrap();
    assert_eq!(route, "n1");
    assert_eq!(b.len(), 32);
    assert!(
        b.bytes().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')),
        "{b}"
    );
    for part in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(sc.contains(part), "{sc}");
    }
    assert!(!sc.contains("Secure"), "Secure over plain HTTP: {sc}");
    assert!(!sc.contains("Max-Age") && !sc.contains("Expires"), "{sc}");
    // The directive itself never reaches the client.
    assert!(r.header("x-session-set").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_is_secure_under_tls() {
    let b = TestBackend::start("b").await;
    let (ck, extra, _dir) = self_signed_https("http2 = false\n");
    let node = Node::start(&conf("n1", &[b.url()], &extra)).await;
    let r = https_http1(
        node.https.unwrap(),
        ck.cert.der().to_vec(),
        reflect("/", None, &[("x-session-set", "{}")]),
    )
    .await;
    let sc = r.header("set-cookie").unwrap();
    assert!(sc.contains("; Secure"), "{sc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_the_session_and_forged_headers_never_reach_it() {
    let (_b, node) = start().await;
    let id = new_session(&node, r#"{"name":"Zo\u00eb","n":1}"#).await;
    let r = http(
        node.http,
        http::Request::get("/")
            .header("host", "h")
            .header("x-reflect", "1")
            .header("cookie", format!("theme=dark; JSESSIONID={id}"))
            .header("x-session", r#"{"admin":true}"#)
            .header("x-session-id", "FORGED")
            .header("x-session-node", "evil")
            .header("x-session-original-id", "x")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-session-id"], json!([base(&id)]));
    assert_eq!(h["x-session-node"], json!(["n1"]));
    assert!(h.get("x-session-original-id").is_none());
    let sent = h["x-session"][0].as_str().unwrap();
    // ASCII-only JSON; non-ASCII escaped.
    assert!(sent.is_ascii() && sent.contains("\\u00eb"), "{sent}");
    let attrs: Value = serde_json::from_str(sent).unwrap();
    assert_eq!(attrs, json!({"name": "Zo\u{eb}", "n": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_garbage_and_overlong_ids_are_no_session_never_5xx() {
    let (_b, node) = start().await;
    let real = new_session(&node, r#"{"a":1}"#).await;
    let unknown = format!("{}.n1", "0123456789ABCDEF0123456789ABCDEF");
    let long = "A".repeat(10_000);
    let cookies = [
        format!("JSESSIONID={unknown}"),
        format!("JSESSIONID={}", base(&real).to_lowercase()),
        format!("JSESSIONID={}.bad route", base(&real)),
        format!("JSESSIONID={long}"),
        "JSESSIONID=../../../etc/passwd".to_string(),
        "JSESSIONID=".to_string(),
        "JSESSIONID=%00%01".to_string(),
        "JSESSIONID".to_string(),
        ";;;=;".to_string(),
    ];
    for c in &cookies {
        let r = http(node.http, reflect("/", Some(c), &[])).await;
        assert_eq!(r.status, StatusCode::OK, "cookie {c:.60}: {}", r.text());
        assert!(r.json()["headers"].get("x-session-id").is_none(), "{c:.60}");
    }
    // A forged but well-formed id is never adopted: the new session gets a fresh id.
    let r = http(
        node.http,
        reflect(
            "/",
            Some(&format!("JSESSIONID={unknown}")),
            &[("x-session-set", "{}")],
        ),
    )
    .await;
    let id = set_cookie_id(&r).unwrap();
    assert_ne!(base(&id), base(&unknown));
    assert!(session_info(&node, base(&unknown)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_remove_and_max_inactive_directives() {
    let (_b, node) = start().await;
    let id = new_session(&node, r#"{"a":1,"b":2,"c":3}"#).await;
    let cookie = format!("JSESSIONID={id}");
    let r = http(
        node.http,
        reflect(
            "/",
            Some(&cookie),
            &[
                ("x-session-set", r#"{"a":10}"#),
                ("x-session-remove", "b, c"),
                ("x-session-max-inactive", "120"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("set-cookie").is_none(),
        "no cookie change on a plain update"
    );
    let info = session_info(&node, base(&id)).await.unwrap();
    assert_eq!(info["attributes"], json!({"a": 10}));
    assert_eq!(info["version"], 2);
    assert_eq!(info["max_inactive_ms"], 120_000);
    assert_eq!(info["owner"], "n1");
    // Several Set headers merge in order.
    let r = http(
        node.http,
        http::Request::get("/")
            .header("host", "h")
            .header("x-reflect", "1")
            .header("cookie", &cookie)
            .header("x-reply-x-session-set", r#"{"x":1,"y":1}"#)
            .header("x-reply-x-session-set", r#"{"y":2}"#)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let info = session_info(&node, base(&id)).await.unwrap();
    assert_eq!(info["attributes"], json!({"a": 10, "x": 1, "y": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_gives_a_new_id_and_keeps_the_data() {
    let (_b, node) = start().await;
    let id = new_session(&node, r#"{"cart":[1,2]}"#).await;
    let r = http(
        node.http,
        reflect(
            "/login",
            Some(&format!("JSESSIONID={id}")),
            &[
                ("x-session-renew", "true"),
                ("x-session-set", r#"{"user":"al"}"#),
            ],
        ),
    )
    .await;
    let new = set_cookie_id(&r).expect("renew sets a cookie");
    assert_ne!(base(&new), base(&id));
    assert!(new.ends_with(".n1"));
    assert!(
        session_info(&node, base(&id)).await.is_none(),
        "old id still alive"
    );
    let info = session_info(&node, base(&new)).await.unwrap();
    assert_eq!(info["attributes"], json!({"cart": [1, 2], "user": "al"}));
    // The old cookie is now no session.
    let r = http(
        node.http,
        reflect("/", Some(&format!("JSESSIONID={id}")), &[]),
    )
    .await;
    assert!(r.json()["headers"].get("x-session-id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_clears_the_cookie_and_wins_over_other_directives() {
    let (_b, node) = start().await;
    let id = new_session(&node, r#"{"a":1}"#).await;
    let r = http(
        node.http,
        reflect(
            "/logout",
            Some(&format!("JSESSIONID={id}")),
            &[
                ("x-session-invalidate", "true"),
                ("x-session-set", r#"{"b":1}"#),
                ("x-session-renew", "true"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let sc = r.header("set-cookie").unwrap();
    assert!(
        sc.starts_with("JSESSIONID=;") && sc.contains("Max-Age=0"),
        "{sc}"
    );
    assert!(session_info(&node, base(&id)).await.is_none());
    let s = node.status().await;
    assert_eq!(s["sessions"]["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_directives_are_502_and_leave_the_session_unchanged() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf(
        "n1",
        &[b.url()],
        "[session]\nmax_session_bytes = 200\n",
    ))
    .await;
    let id = new_session(&node, r#"{"a":1}"#).await;
    let cookie = format!("JSESSIONID={id}");
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(300));
    let cases: [(&str, &str, &str); 5] = [
        ("x-session-set", "{not json", "not valid JSON"),
        ("x-session-set", "[1,2,3]", "must be a JSON object"),
        ("x-session-set", big.as_str(), "over max_session_bytes"),
        ("x-session-invalidate", "maybe", "expected true or false"),
        ("x-session-max-inactive", "soon", "whole seconds"),
    ];
    for (h, v, reason) in cases {
        let r = http(node.http, reflect("/", Some(&cookie), &[(h, v)])).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{h}: {v:.40}");
        assert!(r.text().contains(reason), "{h}: {}", r.text());
        assert!(r.header("set-cookie").is_none());
        let info = session_info(&node, base(&id)).await.unwrap();
        assert_eq!(info["attributes"], json!({"a": 1}), "{h}");
        assert_eq!(info["version"], 1, "{h}");
    }
    // Without a session, a bad Set creates nothing.
    let r = http(
        node.http,
        reflect("/", None, &[("x-session-set", big.as_str())]),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(node.status().await["sessions"]["total"], 1);
    let m = http(node.admin, get("/metrics")).await.text();
    assert!(
        m.contains("caracal_session_directive_errors_total 6"),
        "{m}"
    );
    assert!(
        node.wait_log(base(&id), Duration::from_secs(2)).await,
        "directive error not logged with the base id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_filter_skips_all_session_work() {
    let (_b, node) = start().await;
    let id = new_session(&node, r#"{"a":1}"#).await;
    let cookie = format!("JSESSIONID={id}");
    // Tomcat's list: .css matches in full...
    let r = http(
        node.http,
        reflect(
            "/a/b.css",
            Some(&cookie),
            &[("x-session-set", r#"{"css":1}"#)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = &r.json()["headers"];
    assert!(
        h.get("x-session-id").is_none() && h.get("x-session").is_none(),
        "{h}"
    );
    assert!(r.header("set-cookie").is_none());
    assert!(
        r.header("x-session-set").is_none(),
        "directive leaked to the client"
    );
    assert_eq!(
        session_info(&node, base(&id)).await.unwrap()["attributes"],
        json!({"a": 1})
    );
    // ...no session is created from a static path either.
    let r = http(
        node.http,
        reflect("/logo.png", None, &[("x-session-set", "{}")]),
    )
    .await;
    assert!(r.header("set-cookie").is_none());
    // ...and .cssx does not match.
    let r = http(
        node.http,
        reflect(
            "/a/b.cssx",
            Some(&cookie),
            &[("x-session-set", r#"{"cssx":1}"#)],
        ),
    )
    .await;
    assert_eq!(r.json()["headers"]["x-session-id"], json!([base(&id)]));
    assert_eq!(
        session_info(&node, base(&id)).await.unwrap()["attributes"],
        json!({"a": 1, "cssx": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameter_is_read_and_stripped() {
    let (_b, node) = start().await;
    let id = new_session(&node, r#"{"a":1}"#).await;
    let r = http(
        node.http,
        reflect(&format!("/cart;jsessionid={id}?x=1"), None, &[]),
    )
    .await;
    let body = r.json();
    assert_eq!(body["path"], "/cart");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["headers"]["x-session-id"], json!([base(&id)]));
    // Cookie first: a cookie wins over the path parameter.
    let other = new_session(&node, r#"{"b":1}"#).await;
    let r = http(
        node.http,
        reflect(
            &format!("/cart;jsessionid={id}"),
            Some(&format!("JSESSIONID={other}")),
            &[],
        ),
    )
    .await;
    assert_eq!(r.json()["headers"]["x-session-id"], json!([base(&other)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_after_max_inactive() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf(
        "n1",
        &[b.url()],
        "[session]\nmax_inactive = \"1s\"\n",
    ))
    .await;
    let id = new_session(&node, r#"{"a":1}"#).await;
    let created = Instant::now();
    assert!(session_info(&node, base(&id)).await.is_some());
    // Poll the admin view (which does not count as an access) until the session is gone.
    loop {
        if session_info(&node, base(&id)).await.is_none() {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "session never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        created.elapsed() >= Duration::from_millis(900),
        "expired early"
    );
    let r = http(
        node.http,
        reflect("/", Some(&format!("JSESSIONID={id}")), &[]),
    )
    .await;
    assert!(r.json()["headers"].get("x-session-id").is_none());
    let m = http(node.admin, get("/metrics")).await.text();
    assert!(m.contains("caracal_sessions_expired_total 1"), "{m}");
    assert!(m.contains("caracal_sessions_active 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_requests_setting_distinct_attributes_all_land() {
    let (_b, node) = start().await;
    let id = new_session(&node, "{}").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let cookie = format!("JSESSIONID={id}");
        let addr = node.http;
        tasks.push(tokio::spawn(async move {
            let set = format!(r#"{{"k{i}":{i}}}"#);
            http(
                addr,
                reflect("/", Some(&cookie), &[("x-session-set", &set)]),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let info = session_info(&node, base(&id)).await.unwrap();
    let attrs = info["attributes"].as_object().unwrap();
    assert_eq!(attrs.len(), 50, "{attrs:?}");
    for i in 0..50 {
        assert_eq!(attrs[&format!("k{i}")], json!(i));
    }
    assert_eq!(info["version"], 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_sessions_is_a_clear_503() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf(
        "n1",
        &[b.url()],
        "[session]\nmax_active_sessions = 2\n",
    ))
    .await;
    new_session(&node, "{}").await;
    new_session(&node, "{}").await;
    let r = http(node.http, reflect("/", None, &[("x-session-set", "{}")])).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains("max_active_sessions"), "{}", r.text());
    let s = node.status().await;
    assert_eq!(
        s["sessions"],
        json!({"total": 2, "owned": 2, "replica": 0, "swapped": 0})
    );
}
