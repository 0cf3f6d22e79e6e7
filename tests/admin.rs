//! The admin listener's runtime API, its token, and the cluster page (REFERENCE 6): a
//! backend set to `drain` gets no new request while its in-flight one finishes; weights and
//! modes show in `/status` and `/metrics`; without the token a change is refused (401, or
//! 403 when no token is configured); the page renders every member, in a real headless
//! Chromium when the machine has one, and drops a killed member.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

const TOKEN: &str = "an-admin-token-0123456789";

fn post(path: &str, token: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post(path)
        .header("host", "admin")
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn node_conf(backends: &[&TestBackend], admin_extra: &str) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    format!(
        "[node]\njvm_route = \"a1\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\
         [backends]\nservers = [{}]\n[backends.health]\nenabled = false\n",
        servers.join(", ")
    )
}

/// Which backend served `n` plain requests.
async fn served_by(node: &Node, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = http(node.http, get("/")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        out.push(r.header("x-backend").unwrap_or("").to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_no_new_requests_while_in_flight_ones_finish() {
    let (b0, b1) = (
        TestBackend::start("b0").await,
        TestBackend::start("b1").await,
    );
    let node = Node::start(&node_conf(&[&b0, &b1], &format!("token = \"{TOKEN}\""))).await;
    let both = served_by(&node, 4).await;
    assert!(
        both.contains(&"b0".into()) && both.contains(&"b1".into()),
        "{both:?}"
    );

    // A slow request on b0 (round robin: the next pick after 4 is b0), then drain b0.
    let slow = tokio::spawn({
        let addr = node.http;
        async move { http(addr, get("/sleep/1500")).await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.status().await["backends"][0]["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the slow request is not on b0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http(
        node.admin,
        post("/backends/0/state", Some(TOKEN), r#"{"state":"drain"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["mode"], "drain");
    let hits_b0 = b0.hits();
    assert_eq!(served_by(&node, 10).await, vec!["b1"; 10]);
    assert_eq!(b0.hits(), hits_b0, "a drained backend got a new request");
    let done = slow.await.unwrap();
    assert_eq!(
        done.status, 200,
        "the in-flight request on the drained backend"
    );
    assert_eq!(done.header("x-backend"), Some("b0"));
    let s = node.status().await;
    assert_eq!(s["backends"][0]["mode"], "drain");
    let m = http(node.admin, get("/metrics")).await.text();
    assert!(
        m.contains(&format!(
            "caracal_backend_mode{{backend=\"{}\"}} 1",
            b0.url()
        )),
        "{m}"
    );

    // maint, by address; then ready again: traffic returns.
    let by_addr = format!("/backends/{}/state", b0.addr);
    let r = http(
        node.admin,
        post(&by_addr, Some(TOKEN), r#"{"state":"maint"}"#),
    )
    .await;
    assert_eq!(r.json()["mode"], "maint");
    assert_eq!(served_by(&node, 4).await, vec!["b1"; 4]);
    let r = http(
        node.admin,
        post(&by_addr, Some(TOKEN), r#"{"state":"ready"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(served_by(&node, 4).await.contains(&"b0".into()));

    // Weight 0 on b1: everything to b0; 3 to 1 then: both, b1 three times as often.
    let r = http(
        node.admin,
        post("/backends/1/weight", Some(TOKEN), r#"{"weight":0}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served_by(&node, 6).await, vec!["b0"; 6]);
    http(
        node.admin,
        post("/backends/1/weight", Some(TOKEN), r#"{"weight":3}"#),
    )
    .await;
    let seen = served_by(&node, 8).await;
    assert_eq!(seen.iter().filter(|b| *b == "b1").count(), 6, "{seen:?}");
    assert_eq!(node.status().await["backends"][1]["weight"], 3);

    // Bad requests name what is wrong.
    for (path, body, want) in [
        (
            "/backends/0/state",
            r#"{"state":"sleep"}"#,
            "\"state\" must be",
        ),
        ("/backends/0/weight", r#"{"weight":999}"#, "from 0 to 256"),
        ("/backends/0/weight", "not json", "not JSON"),
        ("/backends/7/state", r#"{"state":"drain"}"#, "no backend"),
    ] {
        let r = http(node.admin, post(path, Some(TOKEN), body)).await;
        assert!(r.status == 400 || r.status == 404, "{path}: {}", r.status);
        assert!(r.text().contains(want), "{path}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_token() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&node_conf(&[&b], &format!("token = \"{TOKEN}\""))).await;
    let drain = r#"{"state":"drain"}"#;
    let r = http(node.admin, post("/backends/0/state", None, drain)).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("no bearer token"), "{}", r.text());
    assert!(r.header("www-authenticate").is_some());
    let r = http(
        node.admin,
        post("/backends/0/state", Some("wrong-token-0123456789"), drain),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("wrong token"));
    assert_eq!(node.status().await["backends"][0]["mode"], "ready");

    // No token configured: changes are off.
    let open = Node::start(&node_conf(&[&b], "")).await;
    let r = http(open.admin, post("/backends/0/state", Some(TOKEN), drain)).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("needs [admin] token"), "{}", r.text());
    // Reading stays open on loopback, session contents included.
    let made = http(
        open.http,
        reflect("/", None, &[("x-session-set", r#"{"a":1}"#)]),
    )
    .await;
    let id = set_cookie_id(&made).unwrap();
    let base = id.split('.').next().unwrap();
    assert!(session_info(open.admin, base).await.is_some());
}

/// `caracal status --admin ADDR` prints the node, its backends and their modes; an admin
/// that does not answer is exit 1 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caracal_status_prints_the_cluster_as_a_table() {
    let (b0, b1) = (
        TestBackend::start("b0").await,
        TestBackend::start("b1").await,
    );
    let node = Node::start(&node_conf(&[&b0, &b1], &format!("token = \"{TOKEN}\""))).await;
    http(
        node.admin,
        post("/backends/1/state", Some(TOKEN), r#"{"state":"maint"}"#),
    )
    .await;
    let admin = node.admin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["status", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("node a1  ready"), "{text}");
    assert!(text.contains("backends (2)"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(&b1.url()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("maint"), "{row}");

    let gone = closed_port().to_string();
    let out = std::process::Command::new(BIN)
        .args(["status", "--admin", &gone])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&gone));
}

/// The page's members: the text of every `<span class="member">`.
fn members_in(html: &str) -> Vec<String> {
    html.split("<span class=\"member\">")
        .skip(1)
        .filter_map(|s| s.split('<').next())
        .map(str::to_string)
        .collect()
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The page as a headless Chromium renders it (`--dump-dom`).
fn rendered(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--timeout=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_every_member_and_drops_a_killed_one() {
    let (_b, mut nodes) = start_cluster(&["p1", "p2", "p3"], "page", "", |_, c| c).await;
    let url = format!("http://{}/?refresh=5", nodes[0].admin);

    // Served HTML, whatever renders it.
    let html = http(nodes[0].admin, get("/?refresh=5")).await;
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let text = html.text();
    assert!(text.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    let mut m = members_in(&text);
    m.sort();
    assert_eq!(m, ["p2", "p3"]);
    assert!(text.contains("id=\"backends\"") && text.contains("id=\"replication\""));
    assert!(
        !text.contains("<link") && !text.contains("src=\"http"),
        "external assets"
    );

    let browser = chromium();
    if browser.is_none() {
        eprintln!("SKIP (browser part): no chromium on this machine (.ci/run installs it)");
    }
    if let Some(br) = browser {
        let dom = rendered(br, &url);
        let mut m = members_in(&dom);
        m.sort();
        assert_eq!(m, ["p2", "p3"], "rendered DOM: {dom}");
        assert!(dom.contains("<span id=\"route\">p1</span>"), "{dom}");
    }

    // kill -9 p3: gone from p1's page once p1 dropped it.
    nodes[2].signal("KILL");
    nodes[2].wait_exit(Duration::from_secs(5));
    nodes[0]
        .wait_status(Duration::from_secs(10), "p3 dropped", |s| {
            s["members"].as_array().is_some_and(|m| m.len() == 1)
        })
        .await;
    let after = match browser {
        Some(br) => rendered(br, &url),
        None => http(nodes[0].admin, get("/")).await.text(),
    };
    assert_eq!(members_in(&after), ["p2"], "{after}");
    assert!(
        after.contains("member_removed"),
        "the failover is listed: {after}"
    );
}
