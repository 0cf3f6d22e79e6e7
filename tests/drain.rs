//! Graceful leave (REFERENCE 4.8): a draining node hands its sessions to their successors
//! with their copies acked, creates no new session, keeps forwarding what reaches it, and
//! a SIGTERM under load fails no request and loses no acked write.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caracal::testing::successor;
use common::*;
use http::StatusCode;

const TOKEN: &str = "drain-test-admin-token";

fn node_state(state: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = with_body("POST", "/node/state", format!("{{\"state\":\"{state}\"}}"));
    r.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

/// n1, n2 and n3 with `cluster` settings and an admin token.
async fn tokened(domain: &str, cluster: &str) -> (TestBackend, Vec<Node>) {
    let cluster = format!("expected_members = 3\n{cluster}");
    start_cluster(&["n1", "n2", "n3"], domain, &cluster, |_, c| {
        c + &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
    })
    .await
}

/// `n` sessions created at `node`, each written twice (n = 2).
async fn sessions_at(node: &Node, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let r = http(node.http, count(None)).await;
        let id = set_cookie_id(&r).expect("a session");
        let r = http(node.http, count(Some(&id))).await;
        assert_eq!(r.json()["n"], 2);
        ids.push(id);
    }
    ids
}

async fn run_admin_drain(manager: &str) {
    let (_b, nodes) = tokened(
        &format!("drain-{manager}"),
        &format!("manager = \"{manager}\""),
    )
    .await;
    let ids = sessions_at(&nodes[0], 40).await;
    assert_eq!(nodes[0].status().await["sessions"]["owned"], 40);

    let r = http(nodes[0].admin, node_state("drain")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let report = r.json();
    assert_eq!(report["handed_over"], 40, "{report}");
    assert_eq!(report["left"], 0, "{report}");

    // Draining: shown, not ready, owns nothing; the successors own everything.
    let s = nodes[0].status().await;
    assert_eq!(s["node"]["state"], "draining");
    assert_eq!(s["sessions"]["owned"], 0);
    let page = http(nodes[0].admin, get("/")).await.text();
    assert!(
        page.contains(">draining<") && page.contains("drain this node"),
        "{page}"
    );
    assert_eq!(
        http(nodes[0].admin, get("/ready")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for n in &nodes[1..] {
        n.wait_status(Duration::from_secs(3), "n1 draining", |s| {
            s["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["jvm_route"] == "n1" && m["state"] == "draining")
        })
        .await;
    }
    let owned: u64 = {
        let mut t = 0;
        for n in &nodes[1..] {
            t += n.status().await["sessions"]["owned"].as_u64().unwrap();
        }
        t
    };
    assert_eq!(owned, 40);

    // Each session is at its successor with both writes, and a client holding the old
    // cookie is served there through any node, n1 included, and gets the new route.
    for id in &ids {
        let base = id.split('.').next().unwrap();
        let succ = successor(base, ["n2", "n3"]).unwrap();
        let r = http(nodes[0].http, count(Some(id))).await;
        assert_eq!(r.status, StatusCode::OK);
        let j = r.json();
        assert_eq!(j["n"], 3, "a write was lost in the handover: {j}");
        assert_eq!(j["node"], succ);
        let new = set_cookie_id(&r).expect("the cookie is rebound");
        assert_eq!(new, format!("{base}.{succ}"));
    }
    // A draining node creates no session: a new client's session belongs to a ready node.
    for _ in 0..4 {
        let r = http(nodes[0].http, count(None)).await;
        assert_eq!(r.status, StatusCode::OK);
        let id = set_cookie_id(&r).unwrap();
        assert!(!id.ends_with(".n1"), "a draining node created {id}");
    }
    assert_eq!(nodes[0].status().await["sessions"]["owned"], 0);

    // Ready again: it takes new sessions again.
    let r = http(nodes[0].admin, node_state("ready")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    nodes[0].wait_ready().await;
    let r = http(nodes[0].http, count(None)).await;
    assert!(set_cookie_id(&r).unwrap().ends_with(".n1"));
    // The sessions it handed over stay with their new owners (n1's copy routes there).
    for id in &ids[..5] {
        let base = id.split('.').next().unwrap();
        let r = http(nodes[0].http, count(Some(&format!("{base}.n1")))).await;
        assert_eq!(r.json()["n"], 4);
        assert_ne!(r.json()["node"], "n1");
    }
    // Token required.
    let mut r = with_body("POST", "/node/state", "{\"state\":\"drain\"}");
    r.headers_mut().insert(
        "authorization",
        "Bearer wrong-token-wrong-token".parse().unwrap(),
    );
    assert_eq!(
        http(nodes[0].admin, r).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = http(nodes[0].admin, node_state("sideways")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_hands_every_session_to_its_successor_delta() {
    run_admin_drain("delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_hands_every_session_to_its_successor_backup() {
    run_admin_drain("backup").await;
}

/// SIGTERM of a node under load from clients that each keep a session and, as a DNS
/// round-robin client, try the next address when a connection fails. No request fails
/// (a refused connection is retried elsewhere, not a failure), no acked write is lost,
/// the node shows `draining`, then leaves and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_request_and_loses_no_write() {
    let (_b, mut nodes) = tokened("drain-sigterm", "").await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.http).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..6 {
        let (addrs, stop) = (addrs.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            // Sessions start at n1, the node that leaves.
            let mut cookie: Option<String> = None;
            let (mut acked, mut failed, mut refused) = (0u64, Vec::new(), 0u32);
            let mut next = 0usize;
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
                let addr = if cookie.is_none() {
                    addrs[0]
                } else {
                    addrs[(c + next) % addrs.len()]
                };
                next += 1;
                match try_http(addr, count(cookie.as_deref())).await {
                    // Refused or reset before an answer: the next address (DNS round robin).
                    Err(_) => refused += 1,
                    Ok(r) if r.status == StatusCode::OK => {
                        if let Some(id) = set_cookie_id(&r) {
                            cookie = Some(id);
                        }
                        let n = r.json()["n"].as_u64().unwrap();
                        if n != acked + 1 {
                            failed.push(format!("expected n={} got {n}", acked + 1));
                        }
                        acked = n;
                    }
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text().trim())),
                }
            }
            (cookie, acked, failed, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let owned = nodes[0].status().await["sessions"]["owned"]
        .as_u64()
        .unwrap();
    assert!(owned >= 6, "the clients' sessions are n1's: {owned}");
    nodes[0].signal("TERM");
    // `draining` shows while the handover lasts (each peer heard it before n1 forwards).
    assert!(
        nodes[0]
            .wait_log("draining: members told", Duration::from_secs(5))
            .await,
        "{}",
        nodes[0].log_text()
    );
    assert!(
        nodes[1].wait_log("draining", Duration::from_secs(5)).await,
        "n2 never heard n1 draining"
    );
    let status = nodes[0].wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit {status:?}");
    assert!(
        nodes[0]
            .log_text()
            .contains("drained: every session handed to its successor"),
        "{}",
        nodes[0].log_text()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        let (cookie, acked, failed, _refused) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        let id = cookie.unwrap();
        assert!(!id.ends_with(".n1"), "cookie not rebound: {id}");
        // The last acked value is what the session holds now.
        let r = http(nodes[1].http, count(Some(&id))).await;
        assert_eq!(r.json()["n"].as_u64().unwrap(), acked + 1);
        total += acked;
    }
    assert!(total > 60, "too little load to mean anything: {total}");
    let n1 = nodes.remove(0);
    for n in &nodes {
        n.wait_status(Duration::from_secs(3), "n1 gone", |s| {
            s["members"].as_array().unwrap().len() == 1
        })
        .await;
    }
    drop(n1);
}

/// The last node of a cluster has nobody to hand its sessions to: SIGTERM does not wait
/// for `drain_timeout`, it leaves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_node_leaves_without_waiting_for_drain_timeout() {
    let b = TestBackend::start("b").await;
    let conf = cluster_node("alone", &b.url(), mcast_port(), "drain-alone", "")
        .replace("[node]\n", "[node]\ndrain_timeout = \"20s\"\n");
    let mut node = Node::start(&conf).await;
    let r = http(node.http, count(None)).await;
    assert!(set_cookie_id(&r).is_some());
    let t = Instant::now();
    node.signal("TERM");
    let status = tokio::task::spawn_blocking(move || node.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
