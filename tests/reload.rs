//! Reload without restart (REFERENCE 6): `POST /reload` and SIGHUP read the conf again. A
//! reload adds and removes a backend under steady load with no failed request; a bad file
//! keeps the running config and names the problem; a section that needs a restart is named.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

const TOKEN: &str = "a-reload-admin-token-0123";

fn reload_req() -> Request<Full<Bytes>> {
    Request::post("/reload")
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn conf(servers: &[&TestBackend]) -> String {
    let s: Vec<String> = servers.iter().map(|b| format!("\"{}\"", b.url())).collect();
    format!(
        "[node]\njvm_route = \"r1\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [backends]\nservers = [{}]\n[backends.health]\nenabled = false\n",
        s.join(", ")
    )
}

/// Rewrites the node's conf file with `servers` (everything else as it was).
fn rewrite(node: &Node, servers: &[&TestBackend]) {
    std::fs::write(node.conf_path(), conf(servers)).unwrap();
}

async fn wait_hits(b: &TestBackend, more_than: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.hits() <= more_than {
        assert!(
            Instant::now() < deadline,
            "{what}: backend {} got nothing",
            b.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_a_backend_under_load() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let node = Node::start(&conf(&[&b1])).await;

    // Steady load: four keep-alive clients and one opening a connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for i in 0..5 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), node.http);
        load.push(tokio::spawn(async move {
            let mut ka = KeepAlive::connect(addr).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let status = if i == 0 {
                    try_http(addr, get("/")).await.map(|r| r.status.as_u16())
                } else {
                    Ok(ka.send(get("/")).await.status.as_u16())
                };
                match status {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    rewrite(&node, &[&b1, &b2]);
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["applied"], serde_json::json!(["backends"]));
    assert_eq!(r.json()["restart_needed"], serde_json::json!([]));
    wait_hits(&b2, 0, "added").await;

    rewrite(&node, &[&b2]);
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // b1's in-flight requests finish; then it gets nothing more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b1_hits = b1.hits();
    let b2_hits = b2.hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b1.hits(), b1_hits, "a removed backend still gets requests");
    assert!(b2.hits() > b2_hits);

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "the load ran");
    let s = node.status().await;
    assert_eq!(s["backends"].as_array().unwrap().len(), 1);
    assert_eq!(s["backends"][0]["url"], b2.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_running_config() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let node = Node::start(&conf(&[&b1])).await;
    let good = std::fs::read_to_string(node.conf_path()).unwrap();
    // A bad value, line 12: refused, named, counted; b1 still serves.
    std::fs::write(
        node.conf_path(),
        good.replace("enabled = false", "enabled = false\ninterval = \"soon\""),
    )
    .unwrap();
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 400);
    let t = r.text();
    assert!(t.contains("the running config stays"), "{t}");
    assert!(
        t.contains("caracal.toml:12: backends.health.interval:"),
        "{t}"
    );
    assert_eq!(
        http(node.http, get("/")).await.header("x-backend"),
        Some("b1")
    );
    let m = http(node.admin, get("/metrics")).await.text();
    assert!(m.contains("caracal_config_reload_failures_total 1"), "{m}");
    // No token: not even tried.
    let mut anon = reload_req();
    anon.headers_mut().remove("authorization");
    assert_eq!(http(node.admin, anon).await.status, 401);

    // A section that needs a restart is named and left as it runs; backends apply.
    let text = conf(&[&b2]).replace("jvm_route = \"r1\"", "jvm_route = \"r1\"\nworkers = 3");
    std::fs::write(node.conf_path(), text).unwrap();
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["restart_needed"], serde_json::json!(["node"]));
    assert_eq!(r.json()["applied"], serde_json::json!(["backends"]));
    assert_eq!(
        http(node.http, get("/")).await.header("x-backend"),
        Some("b2")
    );

    // SIGHUP does the same.
    rewrite(&node, &[&b1]);
    node.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if http(node.http, get("/")).await.header("x-backend") == Some("b1") {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.log_text().contains("config reloaded"));
}

/// The certificate the node's HTTPS listener presents to a new handshake (both test
/// certificates trusted).
async fn presented(addr: std::net::SocketAddr, roots: &[Vec<u8>]) -> Vec<u8> {
    let tls = tls_to_localhost(addr, roots).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A certificate renewed in place (same paths, new files) is served after a reload; the
/// listeners stay, and a change beyond `cert`/`key` needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_https_certificate() {
    let b = TestBackend::start("b").await;
    let (old, https, dir) = self_signed_https("");
    let node = Node::start(&format!("{}{https}", conf(&[&b]))).await;
    let addr = node.https.expect("https");
    let new = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let roots = [old.cert.der().to_vec(), new.cert.der().to_vec()];
    assert_eq!(presented(addr, &roots).await, roots[0]);

    // Renewed in place, then reloaded: new handshakes get the new certificate.
    std::fs::write(dir.path().join("cert.pem"), new.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), new.signing_key.serialize_pem()).unwrap();
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["applied"], serde_json::json!(["https"]));
    assert_eq!(presented(addr, &roots).await, roots[1]);
    let resp = https_http1(addr, roots[1].clone(), get("/")).await;
    assert_eq!(resp.status, 200);

    // A mismatched key: refused, the new certificate stays.
    std::fs::write(dir.path().join("key.pem"), old.signing_key.serialize_pem()).unwrap();
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("https.cert"), "{}", r.text());
    assert_eq!(presented(addr, &roots).await, roots[1]);
}

/// `[log] level` applies live: a client error logged at debug shows only after the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sets_the_log_level() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf(&[&b])).await;
    let bad = || {
        let mut r = get("/x");
        r.headers_mut().insert("host", "a b".parse().unwrap());
        r
    };
    assert_eq!(http(node.http, bad()).await.status, 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !node.log_text().contains("bad request"),
        "debug logged at info"
    );

    let text = format!(
        "{}[log]\nlevel = \"info,caracal::proxy=debug\"\n",
        conf(&[&b])
    );
    std::fs::write(node.conf_path(), text).unwrap();
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["applied"], serde_json::json!(["log"]));
    assert_eq!(http(node.http, bad()).await.status, 400);
    assert!(node.wait_log("bad request", Duration::from_secs(3)).await);
}

/// `[replication] filter` and `[session]` limits apply live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sets_the_filter_and_session_limits() {
    let b = TestBackend::start("b").await;
    let node = Node::start(&conf(&[&b])).await;
    let made = http(
        node.http,
        reflect("/", None, &[("x-session-set", r#"{"a":1}"#)]),
    )
    .await;
    let cookie = format!("JSESSIONID={}", set_cookie_id(&made).unwrap());
    let has_session = |r: &Resp| r.json()["headers"].get("x-session-id").is_some();
    // Tomcat's default filter: a .png request carries no session.
    let png = http(node.http, reflect("/a.png", Some(&cookie), &[])).await;
    assert!(!has_session(&png), "{}", png.text());
    let big = format!(r#"{{"b":"{}"}}"#, "x".repeat(200));
    let r = http(
        node.http,
        reflect("/", Some(&cookie), &[("x-session-set", &big)]),
    )
    .await;
    assert_eq!(r.status, 200);

    let text = format!(
        "{}[replication]\nfilter = '.*\\.xyz'\n[session]\nmax_session_bytes = 128\n",
        conf(&[&b])
    );
    std::fs::write(node.conf_path(), text).unwrap();
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut applied: Vec<String> = serde_json::from_value(r.json()["applied"].clone()).unwrap();
    applied.sort();
    assert_eq!(applied, ["replication", "session"]);
    let png = http(node.http, reflect("/a.png", Some(&cookie), &[])).await;
    assert!(has_session(&png), "the new filter: {}", png.text());
    let r = http(
        node.http,
        reflect("/", Some(&cookie), &[("x-session-set", &big)]),
    )
    .await;
    assert_eq!(
        r.status,
        502,
        "over the new max_session_bytes: {}",
        r.text()
    );

    // A restart-only [session] key with a new filter: the filter applies on its own.
    let text = format!(
        "{}[replication]\nfilter = '.*\\.png'\n[session]\nmax_session_bytes = 128\ncookie_name = \"SID\"\n",
        conf(&[&b])
    );
    std::fs::write(node.conf_path(), text).unwrap();
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["applied"], serde_json::json!(["replication"]));
    assert_eq!(r.json()["restart_needed"], serde_json::json!(["session"]));
    let png = http(node.http, reflect("/a.png", Some(&cookie), &[])).await;
    assert!(!has_session(&png), "the filter again: {}", png.text());
}

/// A reload of session timeouts keeps the runtime state of the backends (a drained one
/// stays drained); only a new `max_session_bytes` renews them (the response head cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_timeout_reload_keeps_a_drained_backend_drained() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let node = Node::start(&conf(&[&a, &b])).await;
    let mut drain = with_body("POST", "/backends/0/state", "{\"state\":\"drain\"}");
    drain
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    assert_eq!(http(node.admin, drain).await.status, 200);
    let text = format!("{}[session]\nmax_inactive = \"10m\"\n", conf(&[&a, &b]));
    std::fs::write(node.conf_path(), text).unwrap();
    let r = http(node.admin, reload_req()).await;
    assert_eq!(r.json()["applied"], serde_json::json!(["session"]));
    assert_eq!(node.status().await["backends"][0]["mode"], "drain");
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(http(node.http, get("/")).await.status, 200);
    }
    assert_eq!(a.hits(), before, "the drained backend got new requests");
}
