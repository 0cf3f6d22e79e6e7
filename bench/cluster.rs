//! Cluster figures (issues: replication, failover), measured on real node processes on
//! loopback and printed:
//! 1. replication throughput between two nodes (changes/s), sync and async, with the
//!    replication lag p50/p99 and bytes on the wire per change;
//! 2. state-transfer time for TRANSFER_SESSIONS (100k) sessions of 1 KiB;
//! 3. failover: FAILOVER_KILLS (20) kill -9 of a session's owner under steady requests from
//!    a client that retries at once on the next node (DNS round robin): time from kill to the
//!    first continued response (p50/p99), failed requests, sessions lost.
//!
//! 4. delta vs backup: replication bytes and messages per session write for 2, 3, 4 and 6
//!    nodes, and the time to restore two copies of RESTORE_SESSIONS (10k) sessions after a
//!    node dies (backup).
//!
//! Run: `cargo bench --bench cluster` (env: BENCH_SECS, TRANSFER_SESSIONS, FAILOVER_KILLS,
//! RESTORE_SESSIONS; BENCH_ONLY=throughput|transfer|failover|managers runs one part).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[path = "../tests/common/mod.rs"]
mod common;

use common::env_num;

// ---- a backend that keeps a counter (and padding) in the session ----------------------

async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    service_fn(
                        |req: Request<Incoming>| async move { Ok::<_, Infallible>(route(&req)) },
                    );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn route(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let mut r = Response::new(Full::new(Bytes::new()));
    if path == "/health" {
        return r;
    }
    if let Some(n) = path.strip_prefix("/fill/") {
        let n: usize = n.parse().unwrap_or(0);
        let v = format!("{{\"pad\":\"{}\"}}", "x".repeat(n.saturating_sub(10)));
        r.headers_mut().insert("x-session-set", v.parse().unwrap());
        return r;
    }
    let n = req
        .headers()
        .get("x-session")
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v.as_bytes()).ok())
        .and_then(|v| v["n"].as_u64())
        .unwrap_or(0)
        + 1;
    r.headers_mut()
        .insert("x-session-set", format!("{{\"n\":{n}}}").parse().unwrap());
    *r.body_mut() = Full::new(Bytes::from(n.to_string()));
    r
}

// ---- nodes ------------------------------------------------------------------------------

/// The nodes are the tests' harness nodes (`tests/common`): the binary on loopback, its
/// addresses read from its log, ready when `/ready` answers.
type NodeProc = common::Node;

/// One multicast port per domain (each scenario has its own), from the tests' allocator.
fn port_of(domain: &str) -> u16 {
    static PORTS: std::sync::Mutex<Vec<(String, u16)>> = std::sync::Mutex::new(Vec::new());
    let mut ports = PORTS.lock().unwrap();
    if let Some((_, p)) = ports.iter().find(|(d, _)| d == domain) {
        return *p;
    }
    let p = common::mcast_port();
    ports.push((domain.to_string(), p));
    p
}

fn conf(route: &str, backend: SocketAddr, domain: &str, extra: &str) -> String {
    let port = port_of(domain);
    format!(
        "[node]\njvm_route = \"{route}\"\nshutdown_grace = \"1s\"\n\
         [backends]\nservers = [\"http://{backend}\"]\n\
         [cluster]\nenabled = true\n{extra}\n\
         [cluster.membership]\nport = {port}\ndomain = \"{domain}\"\n[cluster.receiver]\nport = 0\n"
    )
}

async fn spawn_node(conf: &str) -> NodeProc {
    common::Node::start(conf).await
}

fn request(path: &str, cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = common::get(path);
    if let Some(c) = cookie {
        if let Ok(v) = c.parse() {
            req.headers_mut().insert("cookie", v);
        }
    }
    req
}

async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Result<(u16, String), String> {
    let r = common::try_http(addr, request(path, cookie)).await?;
    Ok((r.status.as_u16(), r.text()))
}

/// One keep-alive connection.
struct Conn(common::KeepAlive);

impl Conn {
    async fn new(addr: SocketAddr) -> Conn {
        Conn(common::KeepAlive::connect(addr).await)
    }

    /// The status and the cookie the response set, if any.
    async fn get(&mut self, path: &str, cookie: Option<&str>) -> (u16, Option<String>) {
        let r = self.0.send(request(path, cookie)).await;
        let sc = r
            .header("set-cookie")
            .map(|v| v.split(';').next().unwrap_or("").to_string());
        (r.status.as_u16(), sc)
    }
}

/// A metric's value (first line starting with `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// p-quantile from a Prometheus histogram's cumulative buckets (upper bound of the bucket).
fn quantile(text: &str, hist: &str, q: f64) -> f64 {
    caracal::testing::quantile(text, hist, q).unwrap_or(f64::NAN)
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

// ---- 1. replication throughput -----------------------------------------------------------

async fn throughput(mode: &str, secs: u64, b: SocketAddr) {
    let domain = format!("bench-tp-{mode}-{}", std::process::id());
    let extra = format!("send_options = \"{mode}\"");
    let n1 = spawn_node(&conf("n1", b, &domain, &extra)).await;
    let n2 = spawn_node(&conf("n2", b, &domain, &extra)).await;
    let total = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (addr, total) = (n1.http, total.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(addr).await;
            let (_, cookie) = c.get("/inc", None).await;
            let cookie = cookie.unwrap();
            while Instant::now() < deadline {
                let (s, _) = c.get("/inc", Some(&cookie)).await;
                assert_eq!(s, 200);
                total.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = total.load(Ordering::Relaxed);
    // Let async mode drain before reading the counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = get(n1.admin, "/metrics", None).await.unwrap().1;
    let bytes = metric(&m, "caracal_replication_bytes_sent_total");
    let msgs = metric(&m, "caracal_replication_messages_sent_total");
    let deltas = metric(
        &m,
        "caracal_replication_messages_sent_total{peer=\"n2\",kind=\"delta\"}",
    );
    let unrepl = metric(&m, "caracal_replication_unreplicated_writes_total");
    println!(
        "replication {mode:5}: {:>8.0} changes/s (32 clients, {secs} s, 2 nodes); lag p50 <= {:.2} ms, p99 <= {:.2} ms; \
         {:.1} bytes on the wire per change ({} changes, {} deltas); unreplicated writes {}",
        n as f64 / secs as f64,
        quantile(&m, "caracal_replication_lag_seconds", 0.5) * 1e3,
        quantile(&m, "caracal_replication_lag_seconds", 0.99) * 1e3,
        bytes / msgs.max(1.0),
        msgs,
        deltas,
        unrepl,
    );
    let n2s = get(n2.admin, "/status", None).await.unwrap().1;
    let v: serde_json::Value = serde_json::from_str(&n2s).unwrap();
    assert_eq!(v["sessions"]["total"], 32, "replica lost sessions");
}

fn single_delta_bytes() -> usize {
    use caracal::testing::Change;
    use caracal::testing::{encode_mesh, MeshMessage};
    let d = Change::Delta {
        key: u128::MAX / 3,
        epoch: 1,
        version: 42,
        set: Some("{\"n\":42}".into()),
        remove: vec![],
        max_inactive_ms: None,
    };
    4 + encode_mesh(&MeshMessage::Replicate {
        seq: 7,
        changes: vec![Arc::new(d)],
    })
    .len()
}

// ---- 2. state transfer -------------------------------------------------------------------

async fn transfer(sessions: u64, b: SocketAddr) {
    let domain = format!("bench-st-{}", std::process::id());
    let n1 = spawn_node(&conf("n1", b, &domain, "")).await;
    let t = Instant::now();
    let per = sessions / 32;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let addr = n1.http;
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(addr).await;
            for _ in 0..per {
                let (s, sc) = c.get("/fill/1024", None).await;
                assert!(s == 200 && sc.is_some());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let filled = per * 32;
    let fill_time = t.elapsed();
    let t = Instant::now();
    let n2 = spawn_node(&conf("n2", b, &domain, "")).await;
    let ready = t.elapsed();
    let m = get(n2.admin, "/metrics", None).await.unwrap().1;
    let st = metric(&m, "caracal_state_transfer_duration_seconds_sum");
    let s: serde_json::Value =
        serde_json::from_str(&get(n2.admin, "/status", None).await.unwrap().1).unwrap();
    println!(
        "state transfer: {filled} sessions of 1 KiB (filled in {:.1} s): transfer {:.2} s \
         ({:.0} sessions/s); new node spawn -> /ready 200 in {:.2} s (incl. 1.25 s join window); it holds {}",
        fill_time.as_secs_f64(),
        st,
        filled as f64 / st,
        ready.as_secs_f64(),
        s["sessions"]["total"]
    );
}

// ---- 3. failover ---------------------------------------------------------------------------

async fn failover(kills: u64, b: SocketAddr) {
    let domain = format!("bench-fo-{}", std::process::id());
    let routes = ["n1", "n2", "n3"];
    let mut nodes: Vec<Option<NodeProc>> = Vec::new();
    for r in routes {
        nodes.push(Some(spawn_node(&conf(r, b, &domain, "")).await));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut recover = Vec::new();
    let (mut failed, mut lost) = (0u64, 0u64);
    for k in 0..kills {
        // A fresh session, owned by the node it was created on.
        let owner = (k % 3) as usize;
        let addr = nodes[owner].as_ref().unwrap().http;
        let mut c = Conn::new(addr).await;
        let (_, sc) = c.get("/inc", None).await;
        let cookie = sc.unwrap();
        let mut counter = 1u64;
        // Steady requests over the live nodes (round robin), then the kill.
        let addrs: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.http).collect();
        for i in 0..20 {
            let (s, body) = get(addrs[i % addrs.len()], "/inc", Some(&cookie))
                .await
                .unwrap();
            assert_eq!(s, 200);
            counter = body.parse().unwrap();
        }
        let killed = nodes[owner].take().unwrap();
        let mut killed = killed;
        let _ = killed.child.kill();
        let t = Instant::now();
        let _ = killed.child.wait();
        // The client retries at once on the next node, as a DNS round-robin client does.
        let others: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.http).collect();
        let mut i = 0;
        loop {
            match get(others[i % others.len()], "/inc", Some(&cookie)).await {
                Ok((200, body)) => {
                    let n: u64 = body.parse().unwrap_or(0);
                    if n != counter + 1 {
                        lost += 1;
                    }
                    break;
                }
                _ => failed += 1,
            }
            i += 1;
            assert!(t.elapsed() < Duration::from_secs(30), "no recovery");
        }
        recover.push(t.elapsed().as_secs_f64() * 1e3);
        drop(killed);
        // Bring the node back for the next round.
        nodes[owner] = Some(spawn_node(&conf(routes[owner], b, &domain, "")).await);
    }
    println!(
        "failover: {kills} kill -9 of the owner: kill -> first continued response p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         failed requests {failed}; sessions lost {lost} (sync mode, default timers)",
        pct(&mut recover.clone(), 0.5),
        pct(&mut recover.clone(), 0.99),
        recover.iter().cloned().fold(0.0, f64::max),
    );
}

// ---- 4. delta vs backup ----------------------------------------------------------------

async fn per_write(manager: &str, n: usize, b: SocketAddr) {
    let domain = format!("bench-pw-{manager}-{n}-{}", std::process::id());
    let extra = format!("manager = \"{manager}\"");
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(spawn_node(&conf(&format!("n{i}"), b, &domain, &extra)).await);
    }
    // Everyone hears everyone before measuring.
    loop {
        let s = get(nodes[0].admin, "/status", None).await.unwrap().1;
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        if v["members"].as_array().map_or(0, |m| m.len()) == n - 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writes = 2000u64;
    let mut c = Conn::new(nodes[0].http).await;
    let (_, cookie) = c.get("/inc", None).await;
    let cookie = cookie.unwrap();
    let before = get(nodes[0].admin, "/metrics", None).await.unwrap().1;
    for _ in 0..writes {
        c.get("/inc", Some(&cookie)).await;
    }
    let after = get(nodes[0].admin, "/metrics", None).await.unwrap().1;
    let d = |name: &str| metric(&after, name) - metric(&before, name);
    println!(
        "{manager:6} {n} nodes: {:6.1} bytes and {:4.2} messages sent per session write",
        d("caracal_replication_bytes_sent_total") / writes as f64,
        d("caracal_replication_messages_sent_total") / writes as f64,
    );
}

async fn restore(sessions: u64, b: SocketAddr) {
    let domain = format!("bench-rs-{}", std::process::id());
    let extra = "manager = \"backup\"";
    let mut nodes = Vec::new();
    for i in 1..=4 {
        nodes.push(spawn_node(&conf(&format!("n{i}"), b, &domain, extra)).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let per = sessions / 32;
    let mut tasks = Vec::new();
    for t in 0..32usize {
        let addr = nodes[t % 4].http;
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(addr).await;
            for _ in 0..per {
                c.get("/fill/256", None).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = per * 32;
    let held = |nodes: &Vec<NodeProc>| {
        let admins: Vec<SocketAddr> = nodes.iter().map(|n| n.admin).collect();
        async move {
            let mut sum = 0;
            for a in admins {
                let s = get(a, "/status", None).await.unwrap().1;
                let v: serde_json::Value = serde_json::from_str(&s).unwrap();
                sum += v["sessions"]["total"].as_u64().unwrap_or(0);
            }
            sum
        }
    };
    while held(&nodes).await != 2 * total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut dead = nodes.remove(0);
    let _ = dead.child.kill();
    let t = Instant::now();
    let _ = dead.child.wait();
    while held(&nodes).await != 2 * total {
        assert!(t.elapsed() < Duration::from_secs(60), "copies not restored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "backup: {total} sessions on 4 nodes, kill -9 of one: two copies of every session again after {:.2} s \
         (includes detection: the killed node's connections break, verification ~ms)",
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    let rt = common::bench_runtime();
    rt.block_on(async {
        let secs = env_num("BENCH_SECS", 5);
        let b = backend().await;
        println!(
            "machine: {} cores; one Replicate frame with one small delta: {} bytes",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            single_delta_bytes()
        );
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let run = |part: &str| only.is_empty() || only == part;
        if run("throughput") {
            throughput("sync", secs, b).await;
            throughput("async", secs, b).await;
        }
        if run("transfer") {
            transfer(env_num("TRANSFER_SESSIONS", 100_000), b).await;
        }
        if run("failover") {
            failover(env_num("FAILOVER_KILLS", 20), b).await;
        }
        if run("managers") {
            for n in [2, 3, 4, 6] {
                per_write("delta", n, b).await;
                per_write("backup", n, b).await;
            }
            restore(env_num("RESTORE_SESSIONS", 10_000), b).await;
        }
    });
}
