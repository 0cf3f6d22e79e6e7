//! Persistence figures (REFERENCE 4.11), on real node processes on loopback, printed:
//! 1. cost: session writes per second and latency p50/p99 on one node with `mode` off,
//!    async and fsync, in interleaved rounds (ROUNDS, BENCH_SECS each, CLIENTS keep-alive
//!    clients, each writing its own session);
//! 2. whole-cluster stop under load: for each mode and manager, KILL_ROUNDS rounds of three
//!    nodes killed (-9) at once while clients write, then started again; acknowledged
//!    writes and lost ones, counted by the checker of `tests/common/whole.rs`; and the
//!    graceful stop (SIGTERM to all three);
//! 3. scale: SCALE_SESSIONS (1 000 000) sessions of ~200 B made on one node (fsync), the
//!    node killed, started again: the time to ready and the RSS before and after; then
//!    (unless SCALE_SWAP=0) with 5% written again and `swap_after` past the other 95%:
//!    the restart, RSS against all in memory, the latency of a request that brings a
//!    swapped session back (warm, and cold after dropping the page cache when root)
//!    against one in memory, and RSS when the swap takes them at runtime.
//!
//! Run: `cargo bench --bench persistence` (env: BENCH_ONLY=cost|kill|scale; SCALE_KEEP=DIR
//! keeps a copy of the scale run's files).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::whole::restart_under_load;
use common::*;

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// One node in front of `b` with `mode` in a fresh directory.
fn conf_for(b: &TestBackend, dir: &std::path::Path, mode: &str) -> String {
    conf(
        "p1",
        &[b.url()],
        &format!(
            "[backends.health]\nenabled = false\n[persistence]\nmode = \"{mode}\"\ndir = \"{}\"\n",
            dir.display()
        ),
    )
}

/// `clients` keep-alive clients writing their own session (`/count`) for `secs`.
async fn writes(node: &Node, clients: usize, secs: u64) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = node.http;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = KeepAlive::connect(addr).await;
                let r = c.send(count(None)).await;
                let id = set_cookie_id(&r).unwrap_or_default();
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = c.send(count(Some(&id))).await;
                    if r.status == 200 {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                lat
            })
        })
        .collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let rate = all.len() as f64 / t.elapsed().as_secs_f64();
    (rate, pct(&mut all, 0.5), pct(&mut all, 0.99))
}

async fn cost(rounds: u64, secs: u64, clients: usize) {
    println!("\n## cost: session writes on one node, {clients} clients, {secs} s a round, {rounds} rounds interleaved");
    let b = TestBackend::start("b").await;
    let modes = ["off", "async", "fsync"];
    let mut sums: [(f64, Vec<f64>, Vec<f64>); 3] =
        std::array::from_fn(|_| (0.0, Vec::new(), Vec::new()));
    for r in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let node = Node::start(&conf_for(&b, dir.path(), mode)).await;
            let (rate, p50, p99) = writes(&node, clients, secs).await;
            println!("round {r} {mode:6}: {rate:>8.0} writes/s  p50 {p50:.2} ms  p99 {p99:.2} ms");
            sums[i].0 += rate;
            sums[i].1.push(p50);
            sums[i].2.push(p99);
        }
    }
    let off = sums[0].0 / rounds as f64;
    for (i, mode) in modes.iter().enumerate() {
        let rate = sums[i].0 / rounds as f64;
        let p50 = pct(&mut sums[i].1, 0.5);
        let p99 = pct(&mut sums[i].2, 0.5);
        println!(
            "mean {mode:6}: {rate:>8.0} writes/s = {:.2}x off  p50 {p50:.2} ms  p99 {p99:.2} ms (medians over rounds)",
            rate / off
        );
    }
}

async fn kills(rounds: u64) {
    println!("\n## whole-cluster stop under load: 3 nodes, 6 clients, 1.5 s of writes, {rounds} rounds each");
    for manager in ["delta", "backup"] {
        for (mode, kill) in [
            ("fsync", true),
            ("async", true),
            ("shutdown", true),
            ("off", true),
            ("async", false),
            ("shutdown", false),
        ] {
            let (mut acked, mut lost) = (0, 0);
            let mut worst = 0;
            for _ in 0..rounds {
                let (a, l) =
                    restart_under_load(manager, mode, kill, Duration::from_millis(1500)).await;
                acked += a;
                lost += l.len();
                worst = worst.max(l.len());
            }
            let how = if kill { "kill -9" } else { "SIGTERM" };
            println!(
                "{manager:6} {mode:8} {how}: {acked:>6} acknowledged, {lost:>6} lost ({:.1}%), worst round {worst}",
                lost as f64 * 100.0 / acked.max(1) as f64
            );
        }
    }
}

/// One node in front of `b` (fsync) in `dir`, swapping sessions idle `swap_after` out.
fn swap_conf(b: &TestBackend, dir: &std::path::Path, swap_after: &str) -> String {
    format!(
        "{}swap_after = \"{swap_after}\"\n",
        conf_for(b, dir, "fsync")
    )
}

/// Requests of `ids` over `conns` keep-alive connections: `/count` (a write) or a reflect
/// (a read, an access); the latencies in ms.
async fn visit(addr: std::net::SocketAddr, ids: &[String], conns: usize, write: bool) -> Vec<f64> {
    let per = ids.len().div_ceil(conns.max(1)).max(1);
    let tasks: Vec<_> = ids
        .chunks(per)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                let mut c = KeepAlive::connect(addr).await;
                let mut lat = Vec::with_capacity(chunk.len());
                for id in chunk {
                    let t = Instant::now();
                    let r = if write {
                        c.send(count(Some(&id))).await
                    } else {
                        c.send(reflect("/", Some(&format!("JSESSIONID={id}")), &[]))
                            .await
                    };
                    assert_eq!(r.status, 200);
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// RSS once it stops falling, at most 5 s later. The workers return freed pages when they
/// next park: a `/status` request each 250 ms stands for the traffic a node has.
async fn settled_rss(node: &Node) -> u64 {
    let mut last = rss_kb(node.pid());
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        node.status().await;
        let now = rss_kb(node.pid());
        if now + now / 100 >= last {
            return now;
        }
        last = now;
    }
    last
}

async fn swapped(node: &Node) -> u64 {
    node.status().await["sessions"]["swapped"]
        .as_u64()
        .unwrap_or(0)
}

async fn scale(n: u64) {
    println!("\n## scale: {n} sessions of ~200 B on one node (fsync), killed and started again");
    let b = TestBackend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let c = conf_for(&b, dir.path(), "fsync");
    let mut node = Node::start(&c).await;
    if let Ok(keep) = std::env::var("SCALE_KEEP") {
        println!("(the node's files are kept in {keep}: see SCALE_KEEP)");
    }
    let t = Instant::now();
    let per = n / 32;
    let addr = node.http;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = KeepAlive::connect(addr).await;
                let v = format!(r#"{{"user":"{}"}}"#, "u".repeat(180));
                let mut ids = Vec::with_capacity(per as usize);
                for _ in 0..per {
                    let r = c.send(reflect("/", None, &[("x-session-set", &v)])).await;
                    ids.push(set_cookie_id(&r).unwrap_or_default());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    let made = t.elapsed();
    let made_at = Instant::now();
    let held = node.status().await["sessions"]["total"]
        .as_u64()
        .unwrap_or(0);
    let rss = rss_kb(node.pid());
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    println!(
        "made {held} sessions in {:.1} s; RSS {} MiB ({} B a session); files {} MiB",
        made.as_secs_f64(),
        rss / 1024,
        rss * 1024 / held.max(1),
        bytes >> 20
    );
    node.kill();
    if let Ok(keep) = std::env::var("SCALE_KEEP") {
        // For a look at a node with these files by hand (smaps, allocator stats).
        let _ = std::fs::create_dir_all(&keep);
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let _ = std::fs::copy(f.path(), std::path::Path::new(&keep).join(f.file_name()));
        }
    }
    let t = Instant::now();
    let mut again = Node::start(&c).await;
    let ready = t.elapsed();
    let p = again.status().await["persistence"]["loaded"].clone();
    let rss_all = rss_kb(again.pid());
    println!(
        "restart to ready (all in memory): {:.2} s, loaded {p}; RSS after {} MiB",
        ready.as_secs_f64(),
        rss_all / 1024
    );
    if std::env::var("SCALE_SWAP").as_deref() == Ok("0") {
        return;
    }
    // 5% active: written now; the other 95% idle past swap_after at the next start.
    let active: Vec<String> = ids.iter().step_by(20).cloned().collect();
    let after = Duration::from_secs(20);
    if let Some(rest) = after.checked_sub(made_at.elapsed()) {
        tokio::time::sleep(rest + Duration::from_secs(1)).await;
    }
    visit(again.http, &active, 32, true).await;
    again.kill();
    let cs = swap_conf(&b, dir.path(), "20s");
    let t = Instant::now();
    let node = Node::start(&cs).await;
    let ready = t.elapsed();
    let p = node.status().await["persistence"]["loaded"].clone();
    // The first swap pass runs as the node starts, beside readiness.
    let goal = held * 95 / 100;
    while swapped(&node).await < goal && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The pass ends with the map shrunk and the freed pages returned, then logs.
    node.wait_log("swapped out", Duration::from_secs(30)).await;
    let settled = t.elapsed();
    let rss_swap = settled_rss(&node).await;
    println!(
        "restart to ready (swap_after 20s, 95% idle): {:.2} s, loaded {p}; {} swapped out {:.2} s after the start; RSS then {} MiB = {:.0}% of all in memory after a restart, {:.0}% of the node that made them",
        ready.as_secs_f64(),
        swapped(&node).await,
        settled.as_secs_f64(),
        rss_swap / 1024,
        rss_swap as f64 * 100.0 / rss_all.max(1) as f64,
        rss_swap as f64 * 100.0 / rss.max(1) as f64
    );
    // Swap-in latency: one request at a time on one connection, against sessions in
    // memory in the same run.
    let sample = env_num("SWAP_SAMPLE", 2000) as usize;
    let pick = |k: usize| -> Vec<String> {
        ids.iter()
            .skip(k)
            .step_by(20)
            .take(sample)
            .cloned()
            .collect()
    };
    let before = swapped(&node).await;
    let mut resident = visit(node.http, &active[..sample.min(active.len())], 1, false).await;
    let mut warm = visit(node.http, &pick(1), 1, false).await;
    let brought = before - swapped(&node).await;
    println!(
        "request of a session in memory: p50 {:.3} ms p99 {:.3} ms; swapped out (file in the page cache, {brought} brought in): p50 {:.3} ms p99 {:.3} ms",
        pct(&mut resident, 0.5),
        pct(&mut resident, 0.99),
        pct(&mut warm, 0.5),
        pct(&mut warm, 0.99)
    );
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok();
    if dropped {
        let mut cold = visit(node.http, &pick(2), 1, false).await;
        println!(
            "swapped out, page cache dropped first (a read from the disk): p50 {:.3} ms p99 {:.3} ms",
            pct(&mut cold, 0.5),
            pct(&mut cold, 0.99)
        );
    } else {
        println!("(not root: the page cache was not dropped; no cold figure)");
    }
    drop(node);
    // At runtime: a start with nothing idle enough yet; the sweep (every 30 s with the
    // default max_inactive) swaps the idle ones out while 5% keep being used.
    let wait = made_at.elapsed() + made + Duration::from_secs(20);
    let cr = swap_conf(&b, dir.path(), &format!("{}s", wait.as_secs()));
    let node = Node::start(&cr).await;
    let rss_in = rss_kb(node.pid());
    let deadline = Instant::now() + wait + Duration::from_secs(120);
    while swapped(&node).await < held * 9 / 10 && Instant::now() < deadline {
        visit(node.http, &active, 8, false).await;
    }
    let rss_run = settled_rss(&node).await;
    println!(
        "at runtime (5% kept in use): RSS {} MiB with all in memory, {} MiB once {} were swapped out = {:.0}%",
        rss_in / 1024,
        rss_run / 1024,
        swapped(&node).await,
        rss_run as f64 * 100.0 / rss_in.max(1) as f64
    );
}

fn main() {
    let rt = bench_runtime();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    rt.block_on(async {
        if only.is_empty() || only == "cost" {
            cost(
                env_num("ROUNDS", 3),
                env_num("BENCH_SECS", 5),
                env_num("CLIENTS", 16) as usize,
            )
            .await;
        }
        if only.is_empty() || only == "kill" {
            kills(env_num("KILL_ROUNDS", 5)).await;
        }
        if only.is_empty() || only == "scale" {
            scale(env_num("SCALE_SESSIONS", 1_000_000)).await;
        }
    });
}
