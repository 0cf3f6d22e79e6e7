//! Reload without restart (#21, SPEC 6): `POST /reload` and SIGHUP read the conf again. A
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
