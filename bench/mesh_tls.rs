//! The cost of mutual TLS on the mesh: three real node processes on loopback, sync
//! delta replication, the same load with `[cluster.tls]` and without (both with
//! `[cluster] key`), in interleaved rounds of one run:
//! - writes at the owner: CLIENTS keep-alive clients, each writing its own session at n1
//!   (every write replicated to n2 and n3 and acked before the response);
//! - forwarded writes: the same at n2 for sessions n1 owns (a forward to n1, over a mesh
//!   channel with TLS and to n1's client listener without, then replicated).
//!
//! Printed: req/s, client-side p50/p99, replication messages/s, and mesh connections
//! accepted per 1000 writes (with TLS each is a handshake: steady load should add none).
//!
//! Run: `cargo bench --bench mesh_tls` (env: BENCH_SECS 5, ROUNDS 2, CLIENTS 32).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;

const KEY: &str = "a-bench-cluster-key-0123456789";

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Sum of every series of `name`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(n: &Node) -> String {
    http(n.admin, get("/metrics")).await.text()
}

struct Load {
    writes: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `clients` clients, each with a session made at `owner`, writing through `entry`.
async fn load(owner: SocketAddr, entry: SocketAddr, clients: usize, secs: u64) -> Load {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let made = http(owner, get("/count")).await;
            let cookie = format!("JSESSIONID={}", set_cookie_id(&made).expect("a session"));
            let mut c = KeepAlive::connect(entry).await;
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let mut req = get("/count");
                req.headers_mut().insert("cookie", cookie.parse().unwrap());
                let t = Instant::now();
                let r = c.send(req).await;
                assert_eq!(r.status, 200, "{}", r.text());
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    Load {
        writes: all.len() as u64,
        secs,
        p50_ms: pct(&mut all, 0.5),
        p99_ms: pct(&mut all, 0.99),
    }
}

struct Round {
    owner: Load,
    forwarded: Load,
    repl_per_s: f64,
    conns_per_1k: f64,
    unreplicated: f64,
}

async fn round(tls: Option<&std::path::Path>, clients: usize, secs: u64) -> Round {
    let (_b, nodes) = keyed_cluster(&["n1", "n2", "n3"], "bench-tls", KEY, tls, |_, c| c).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    // Warm-up: the peers' connections and the forwarding channels are open.
    load(n1.http, n2.http, clients, 1).await;
    let before: Vec<String> = futures_util::future::join_all(nodes.iter().map(metrics)).await;
    let owner = load(n1.http, n1.http, clients, secs).await;
    let forwarded = load(n1.http, n2.http, clients, secs).await;
    let after: Vec<String> = futures_util::future::join_all(nodes.iter().map(metrics)).await;
    let delta = |name: &str, nodes: std::ops::Range<usize>| -> f64 {
        nodes
            .map(|i| metric(&after[i], name) - metric(&before[i], name))
            .sum()
    };
    let conns = delta("caracal_mesh_connections_accepted_total", 0..3);
    let writes = (owner.writes + forwarded.writes) as f64;
    Round {
        repl_per_s: delta("caracal_replication_messages_sent_total", 0..1)
            / (owner.secs + forwarded.secs),
        conns_per_1k: conns * 1000.0 / writes,
        unreplicated: delta("caracal_replication_unreplicated_writes_total", 0..3),
        owner,
        forwarded,
    }
}

fn main() {
    let rt = bench_runtime();
    rt.block_on(async {
        let secs = env_num("BENCH_SECS", 5);
        let rounds = env_num("ROUNDS", 2);
        let clients = env_num("CLIENTS", 32) as usize;
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path(), "n1,n2,n3");
        println!(
            "machine: {} cores; 3 nodes, sync delta, {clients} clients, {secs} s per load, {rounds} rounds",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let mut sums = [[0.0f64; 2]; 2];
        for r in 0..rounds {
            for (m, tls) in [None, Some(dir.path())].into_iter().enumerate() {
                let x = round(tls, clients, secs).await;
                let name = if tls.is_some() { "tls" } else { "plain" };
                let rate = |l: &Load| l.writes as f64 / l.secs;
                println!(
                    "round {r} {name:5}: owner writes {:>7.0}/s p50 {:.2} ms p99 {:.2} ms | \
                     forwarded writes {:>7.0}/s p50 {:.2} ms p99 {:.2} ms | replication {:>7.0} msgs/s | \
                     mesh connections per 1000 writes {:.3} | unreplicated {}",
                    rate(&x.owner),
                    x.owner.p50_ms,
                    x.owner.p99_ms,
                    rate(&x.forwarded),
                    x.forwarded.p50_ms,
                    x.forwarded.p99_ms,
                    x.repl_per_s,
                    x.conns_per_1k,
                    x.unreplicated
                );
                sums[m][0] += rate(&x.owner);
                sums[m][1] += rate(&x.forwarded);
            }
        }
        println!(
            "tls / plain: owner writes {:.3}, forwarded writes {:.3}",
            sums[1][0] / sums[0][0],
            sums[1][1] / sums[0][1]
        );
    });
}
