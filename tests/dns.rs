//! DNS membership and rolling restarts, with a real DNS server (dnsmasq) and each
//! node in a network namespace of its own (root only: otherwise, or without dnsmasq, the
//! tests print why and skip).
//!
//! - `dns_membership_admits_only_authenticated_candidates`: three nodes find each other by
//!   name; a fourth joins when its record is added; a removed record, or an NXDOMAIN
//!   answer, evicts no one; a dead node is dropped by verification although DNS still names
//!   it; an address that answers without the cluster's credentials is never admitted.
//! - `rolling_restart_and_rescale_lose_nothing`: every node in turn gets SIGTERM, is
//!   restarted and becomes ready, then 3 -> 4 -> 3, under load from clients with sessions of
//!   their own that retry on the next address as a DNS round-robin client does; 0 failed
//!   requests, 0 lost sessions, 0 lost acked writes, and the figures printed.

mod common;
#[path = "chaos/dnsmasq.rs"]
mod dnsmasq;
#[path = "chaos/harness.rs"]
mod harness;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dnsmasq::Dns;
use harness::{Lab, ADMIN_PORT, ADMIN_TOKEN, HTTP_PORT, MESH_PORT};

/// One lab at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NAME: &str = "peers.caracal.test";

fn skip() -> bool {
    if let Some(why) = harness::unavailable().or_else(dnsmasq::unavailable) {
        eprintln!("SKIP: {why}");
        return true;
    }
    false
}

/// A dns-membership node `n{i+1}` of the lab; `tls` is its `[cluster.tls]` section.
fn conf(lab: &Lab, i: usize, backend: SocketAddr, key: &str, tls: &str) -> String {
    let ip = lab.ip(i);
    format!(
        "[node]\njvm_route = \"n{}\"\nshutdown_grace = \"2s\"\ndrain_timeout = \"10s\"\n\
         [http]\nlisten = [\"{ip}:{HTTP_PORT}\"]\n\
         [admin]\nlisten = \"{ip}:{ADMIN_PORT}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [backends]\nservers = [\"http://{backend}\"]\n[backends.health]\nenabled = false\n\
         [cluster]\nenabled = true\nack_timeout = \"500ms\"\nkey = \"{key}\"\n\
         [cluster.membership]\nkind = \"dns\"\nname = \"{NAME}\"\nrefresh = \"1s\"\n\
         domain = \"dns\"\nfrequency = \"200ms\"\ndrop_time = \"1s\"\nverify_timeout = \"500ms\"\n\
         [cluster.receiver]\naddress = \"{ip}\"\nport = {MESH_PORT}\nauto_bind = 1\n{}{tls}",
        i + 1,
        lab.persistence()
    )
}

const KEY: &str = "dns-test-cluster-key-0001";

fn admin(lab: &Lab, i: usize) -> SocketAddr {
    SocketAddr::new(lab.ip(i).into(), ADMIN_PORT)
}

async fn status(lab: &Lab, i: usize) -> Option<serde_json::Value> {
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        try_http(admin(lab, i), get("/status")),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&r.body).ok()
}

/// The routes node `i` lists as members (ready or not).
async fn members(lab: &Lab, i: usize) -> Vec<String> {
    let Some(s) = status(lab, i).await else {
        return Vec::new();
    };
    let mut v: Vec<String> = s["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["jvm_route"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until each node in `nodes` lists exactly the others of `nodes` (ready).
async fn wait_members(lab: &Lab, nodes: &[usize], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let mut ok = true;
        for &i in nodes {
            let mut want: Vec<String> = nodes
                .iter()
                .filter(|j| **j != i)
                .map(|j| format!("n{}", j + 1))
                .collect();
            want.sort();
            let ready = status(lab, i).await.is_some_and(|s| {
                s["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m["state"] == "ready"))
            });
            if members(lab, i).await != want || !ready {
                ok = false;
            }
        }
        if ok {
            return;
        }
        if Instant::now() > deadline {
            let mut seen = Vec::new();
            for &i in nodes {
                seen.push((i + 1, members(lab, i).await));
            }
            panic!("{what}: members not as expected after {within:?}: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(lab: &Lab, i: usize, needle: &str) -> u64 {
    let Ok(r) = try_http(admin(lab, i), get("/metrics")).await else {
        return 0;
    };
    r.text()
        .lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_membership_admits_only_authenticated_candidates() {
    if skip() {
        return;
    }
    let _one = SERIAL.lock().await;
    let lab = Lab::create_n(5).expect("lab");
    let ips: Vec<Ipv4Addr> = (0..5).map(|i| lab.ip(i)).collect();
    let namespaces: Vec<&str> = (0..5).map(|i| lab.ns(i)).collect();
    let dns = Dns::start(lab.host(), NAME, &ips[..3], &namespaces);
    let backend = TestBackend::start_on("b", SocketAddr::new(lab.host().into(), 0)).await;
    let tls = |i: usize| tls_section(lab.certs(), &format!("n{}", i + 1));
    let start = |i: usize| {
        let c = conf(&lab, i, backend.addr, KEY, &tls(i));
        let ns = lab.ns(i).to_string();
        async move { Node::start_in_netns(&c, &ns).await }
    };

    // Three nodes find each other by name.
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start(i).await);
    }
    wait_members(&lab, &[0, 1, 2], Duration::from_secs(10), "three by name").await;

    // A fourth joins when its record is added.
    dns.set(&ips[..4]);
    nodes.push(start(3).await);
    wait_members(&lab, &[0, 1, 2, 3], Duration::from_secs(10), "a fourth").await;

    // Its record removed while it lives: kept. Then no record at all (NXDOMAIN): nobody
    // is evicted.
    dns.set(&ips[..3]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    wait_members(
        &lab,
        &[0, 1, 2, 3],
        Duration::from_secs(1),
        "record removed",
    )
    .await;
    dns.set(&[]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    wait_members(&lab, &[0, 1, 2, 3], Duration::from_secs(1), "NXDOMAIN").await;
    assert!(metric(&lab, 0, "caracal_dns_lookups_total{result=\"error\"}").await > 0);

    // A dead node is dropped by verification, though DNS names it again.
    dns.set(&ips[..4]);
    let mut n4 = nodes.pop().unwrap();
    let _ = n4.child.kill();
    let _ = n4.child.wait();
    wait_members(&lab, &[0, 1, 2], Duration::from_secs(5), "dead n4 dropped").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    wait_members(
        &lab,
        &[0, 1, 2],
        Duration::from_secs(1),
        "dead n4 stays out",
    )
    .await;

    // An address that answers without the cluster's credentials (another CA, another key)
    // is never admitted, however long DNS names it.
    let rejected_before = metric(
        &lab,
        0,
        "caracal_heartbeats_rejected_total{reason=\"not_admitted\"}",
    )
    .await;
    let other = tempfile::tempdir().unwrap();
    write_certs(other.path(), "n5");
    dns.set(&[ips[0], ips[1], ips[2], ips[4]]);
    let stranger = Node::start_in_netns(
        &conf(
            &lab,
            4,
            backend.addr,
            "another-cluster-key-0002",
            &tls_section(other.path(), "n5"),
        ),
        lab.ns(4),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    wait_members(
        &lab,
        &[0, 1, 2],
        Duration::from_secs(1),
        "stranger kept out",
    )
    .await;
    let rejected = metric(
        &lab,
        0,
        "caracal_heartbeats_rejected_total{reason=\"not_admitted\"}",
    )
    .await;
    assert!(
        rejected > rejected_before,
        "the stranger's failed handshakes are counted ({rejected_before} -> {rejected})"
    );
    assert!(
        members(&lab, 4).await.is_empty(),
        "the stranger admitted a member"
    );
    drop(stranger);
    drop(nodes);
}

/// One client of the rolling restart: its own session, `/log?k=K` writes in round-robin
/// order over the addresses DNS gives now. A connection refused, or closed before any
/// answer (a listener closing under a connect), is retried at once on the next address, as
/// a DNS round-robin client does (the write is idempotent: attribute `kK`); anything else
/// that is not a 200 is a failed request.
async fn rr_client(
    id: usize,
    addrs: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
) -> (harness::Client, usize, Vec<String>) {
    let mut c = harness::Client::new();
    let (mut retries, mut why) = (0usize, Vec::new());
    let mut next = id;
    let mut k = 0u64;
    let mut last_ack = Instant::now();
    let started = Instant::now();
    'writes: while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
        k += 1;
        let mut tries = 0;
        loop {
            let addr = {
                let a = addrs.lock().unwrap();
                a[next % a.len()]
            };
            next += 1;
            let mut req = http::Request::get(format!("/log?k={k}")).header("host", "rolling");
            if let Some(id) = &c.cookie {
                req = req.header("cookie", format!("JSESSIONID={id}"));
            }
            let req = req
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let sent = tokio::time::timeout(Duration::from_secs(2), send(addr, req)).await;
            let r = match sent {
                Ok(Ok(r)) => r,
                Ok(Err(Unsent)) if tries < 20 => {
                    retries += 1;
                    tries += 1;
                    continue;
                }
                Ok(Err(Unsent)) => {
                    c.failed += 1;
                    why.push(format!("k={k}: no address took the connection"));
                    continue 'writes;
                }
                Err(_) => {
                    c.failed += 1;
                    why.push(format!("k={k}: timed out at {addr}"));
                    continue 'writes;
                }
            };
            if r.status != http::StatusCode::OK {
                c.failed += 1;
                why.push(format!(
                    "k={k}: {} from {addr}: {}",
                    r.status,
                    r.text().trim()
                ));
                continue 'writes;
            }
            if let Some(id) = set_cookie_id(&r) {
                c.cookie = Some(id);
            }
            let seen = common::whole::seen_writes(&r.body);
            if c.acked.iter().any(|k| !seen.contains(k)) {
                c.stale += 1;
            }
            c.stall = c.stall.max(last_ack.elapsed());
            last_ack = Instant::now();
            c.acked.push(k);
            break;
        }
    }
    (c, retries, why)
}

/// Nothing reached a node: the connection was refused, or closed before any answer.
struct Unsent;

async fn send(
    addr: SocketAddr,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<Resp, Unsent> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|_| Unsent)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|_| Unsent)?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|_| Unsent)?;
    let (parts, body) = resp.into_parts();
    // Once the head arrived the node answered: a broken body is a failure, not a retry.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => bytes::Bytes::from(format!("body broke off: {e}")),
    };
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_and_rescale_lose_nothing() {
    rolling("delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_and_rescale_lose_nothing_backup() {
    rolling("backup").await;
}

async fn rolling(manager: &str) {
    if skip() {
        return;
    }
    let _one = SERIAL.lock().await;
    let lab = Lab::create_n(4).expect("lab");
    let ips: Vec<Ipv4Addr> = (0..4).map(|i| lab.ip(i)).collect();
    let namespaces: Vec<&str> = (0..4).map(|i| lab.ns(i)).collect();
    let dns = Dns::start(lab.host(), NAME, &ips[..3], &namespaces);
    let backend = TestBackend::start_on("b", SocketAddr::new(lab.host().into(), 0)).await;
    let start = |i: usize| {
        let c = conf(
            &lab,
            i,
            backend.addr,
            KEY,
            &tls_section(lab.certs(), &format!("n{}", i + 1)),
        )
        .replace(
            "[cluster]\n",
            &format!("[cluster]\nmanager = \"{manager}\"\n"),
        );
        let ns = lab.ns(i).to_string();
        async move {
            let t = Instant::now();
            let n = Node::start_in_netns(&c, &ns).await;
            (n, t.elapsed())
        }
    };
    let http_of = |i: usize| SocketAddr::new(lab.ip(i).into(), HTTP_PORT);
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for i in 0..3 {
        nodes.push(Some(start(i).await.0));
    }
    wait_members(&lab, &[0, 1, 2], Duration::from_secs(10), "formed").await;

    let addrs = Arc::new(std::sync::Mutex::new(
        (0..3).map(http_of).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|c| tokio::spawn(rr_client(c, addrs.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut figures = Vec::new();
    // The logs of the processes that exited (printed, with the live ones', on a failure).
    let mut logs: Vec<(String, String)> = Vec::new();
    let term = |n: Node| async move {
        let t = Instant::now();
        n.signal("TERM");
        let mut n = n;
        let status = tokio::task::spawn_blocking(move || {
            let s = n.wait_exit(Duration::from_secs(30));
            (s, n.log_text())
        })
        .await
        .unwrap();
        (status, t.elapsed())
    };
    // The rolling restart: each node in turn.
    for (i, slot) in nodes.iter_mut().enumerate() {
        let n = slot.take().unwrap();
        let ((status, log), drained) = term(n).await;
        assert!(status.success(), "n{} exit {status:?}:\n{log}", i + 1);
        assert!(log.contains("drained: every session handed"), "{log}");
        logs.push((format!("n{} (first run)", i + 1), log));
        let (n, ready) = start(i).await;
        *slot = Some(n);
        wait_members(&lab, &[0, 1, 2], Duration::from_secs(10), "rejoined").await;
        figures.push(format!(
            "n{}: SIGTERM to exit {drained:?}, restart to ready {ready:?}",
            i + 1
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Scale up to four, then down to three.
    dns.set(&ips[..4]);
    let (n4, ready) = start(3).await;
    addrs.lock().unwrap().push(http_of(3));
    wait_members(&lab, &[0, 1, 2, 3], Duration::from_secs(10), "scaled up").await;
    figures.push(format!("n4 (scale-up): start to ready {ready:?}"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ((status, log), drained) = term(n4).await;
    assert!(status.success(), "n4 exit {status:?}:\n{log}");
    logs.push(("n4".into(), log));
    dns.set(&ips[..3]);
    addrs.lock().unwrap().pop();
    wait_members(&lab, &[0, 1, 2], Duration::from_secs(10), "scaled down").await;
    figures.push(format!("n4 (scale-down): SIGTERM to exit {drained:?}"));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    let (mut retries, mut why) = (0, Vec::new());
    for c in clients {
        let (c, r, w) = c.await.unwrap();
        retries += r;
        why.extend(w);
        all.push(c);
    }
    let admins: Vec<SocketAddr> = (0..3).map(|i| admin(&lab, i)).collect();
    let copies = if manager == "backup" { 2 } else { 3 };
    let o = harness::check(&admins, &all, copies).await;
    let sessions = all.iter().filter(|c| c.cookie.is_some()).count();
    eprintln!("rolling restart figures ({manager}):");
    for f in &figures {
        eprintln!("  {f}");
    }
    eprintln!(
        "  clients: {} sessions, {} acked writes, {} failed, {} retried on the next address, \
         {} lost, {} stale, {} divergent; longest stall {:?}",
        sessions, o.acked, o.failed, retries, o.lost, o.stale, o.divergent, o.stall
    );
    if o.failed + o.lost + o.stale + o.divergent > 0 {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(n) = n {
                logs.push((format!("n{} (restarted)", i + 1), n.log_text()));
            }
        }
        for (who, log) in &logs {
            eprintln!("==== {who}: warnings ====");
            for l in log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            {
                eprintln!("{l}");
            }
        }
    }
    assert_eq!(sessions, 6);
    assert!(
        o.acked > 200,
        "too little load to mean anything: {}",
        o.acked
    );
    assert_eq!(o.failed, 0, "failed requests: {why:#?}");
    assert_eq!(o.lost, 0, "lost acked writes");
    assert_eq!(o.stale, 0, "stale reads");
    assert_eq!(o.divergent + o.split, 0, "copies disagree");
    drop(nodes);
}
