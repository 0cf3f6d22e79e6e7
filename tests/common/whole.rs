//! Whole-cluster restarts under load (REFERENCE 4.11), shared by `tests/persistence_cluster.rs`
//! (sized for CI) and `cargo bench --bench persistence` (the table): three nodes stopped at
//! once, gracefully or by kill -9, while clients write, then started again. A checker
//! follows every acknowledged write (`/log?k=K` sets attribute `kK`); after the restart each
//! client's next request shows the writes its session holds.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

use super::*;

/// Held for the whole of one run (see [`restart_under_load`]).
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

pub const ROUTES: [&str; 3] = ["n1", "n2", "n3"];

/// The three nodes of `manager`, keeping their sessions in `dir` in `mode`.
pub async fn persistent_cluster(
    dir: &Path,
    domain: &str,
    manager: &str,
    mode: &str,
) -> (TestBackend, Vec<Node>) {
    let persistence = format!(
        "[persistence]\nmode = \"{mode}\"\ndir = \"{}\"\nflush_interval = \"200ms\"\n",
        dir.display()
    );
    let (b, nodes) = start_cluster(
        &ROUTES,
        domain,
        &format!("expected_members = 3\nmanager = \"{manager}\""),
        |_, c| c + &persistence,
    )
    .await;
    leased(&nodes).await;
    (b, nodes)
}

pub async fn leased(nodes: &[Node]) {
    for n in nodes {
        n.wait_status(Duration::from_secs(10), "a lease", |s| {
            s["quorum"]["lease"] == true
        })
        .await;
    }
}

pub fn log(k: u64, cookie: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut b = http::Request::get(format!("/log?k={k}")).header("host", "app");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("JSESSIONID={c}"));
    }
    b.body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// One client per session, writing round robin over the nodes until `stop`; its id and
/// the writes that got a 200.
async fn writer(
    addrs: Vec<std::net::SocketAddr>,
    i: usize,
    stop: Arc<AtomicBool>,
) -> (String, HashSet<u64>) {
    let r = http(addrs[i % 3], log(0, None)).await;
    let id = set_cookie_id(&r).expect("a session");
    let mut acked = HashSet::from([0]);
    let mut k = 1;
    while !stop.load(Ordering::Relaxed) && k < 5000 {
        if let Ok(r) = try_http(addrs[(i + k as usize) % 3], log(k, Some(&id))).await {
            if r.status == StatusCode::OK {
                acked.insert(k);
            }
        }
        k += 1;
    }
    (id, acked)
}

/// Writes into every session for a while, stops all three nodes at once (`kill`: -9, else
/// SIGTERM), starts them again, and returns (acknowledged writes, lost ones).
pub async fn restart_under_load(
    manager: &str,
    mode: &str,
    kill: bool,
    load: Duration,
) -> (usize, Vec<u64>) {
    // One whole-cluster run at a time: three nodes, six clients and a restart already load
    // both cores; several at once starve the nodes past their timeouts.
    let _one = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let domain = format!("restart-{manager}-{mode}-{kill}");
    let (_b, mut nodes) = persistent_cluster(dir.path(), &domain, manager, mode).await;
    let confs: Vec<String> = nodes.iter().map(Node::conf_text).collect();
    let addrs: Vec<_> = nodes.iter().map(|n| n.http).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|i| tokio::spawn(writer(addrs.clone(), i, stop.clone())))
        .collect();
    tokio::time::sleep(load).await;
    // Every node at once, with the clients still writing.
    if kill {
        for n in &mut nodes {
            n.kill();
        }
    } else {
        for n in &nodes {
            n.signal("TERM");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut sessions = Vec::new();
    for c in clients {
        sessions.push(c.await.unwrap());
    }
    if !kill {
        let stopped = Mutex::new(Vec::new());
        for n in &mut nodes {
            stopped
                .lock()
                .unwrap()
                .push(n.wait_exit(Duration::from_secs(20)).success());
        }
        assert!(
            stopped.lock().unwrap().iter().all(|s| *s),
            "a node did not exit 0"
        );
    }
    drop(nodes);
    let nodes = Node::start_all(&confs).await;
    wait_formed(&nodes, Duration::from_secs(5)).await;
    leased(&nodes).await;
    let mut acked = 0;
    let mut lost = Vec::new();
    for (i, (id, writes)) in sessions.iter().enumerate() {
        let r = http(nodes[i % 3].http, log(999_999, Some(id))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let seen = seen_writes(&r.body);
        acked += writes.len();
        let missing: Vec<u64> = writes
            .iter()
            .filter(|k| !seen.contains(k))
            .copied()
            .collect();
        lost.extend(missing);
    }
    eprintln!(
        "{manager} {mode} kill={kill}: {acked} acknowledged writes, {} lost",
        lost.len()
    );
    (acked, lost)
}

/// The writes (`k` of `/log?k=K`) the backend saw in the session before this request.
pub fn seen_writes(body: &[u8]) -> HashSet<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|b| b["log"].as_str().map(str::to_string))
        .unwrap_or_default()
        .split(',')
        .filter_map(|k| k.parse().ok())
        .collect()
}
