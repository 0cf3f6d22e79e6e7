//! The fault-injection suite, sized for CI: three nodes in network namespaces of
//! their own (root only: for a non-root user, or without `ip` / `iptables-restore`, it
//! prints why and skips). Sync mode, both managers, one round of every fault; each must
//! end with no lost acked write, no stale read, no split-brain and no divergent copy.
//! `cargo bench --bench chaos` runs more rounds, async mode too, and prints the table.

mod common;
#[path = "chaos/harness.rs"]
mod harness;

use harness::{Cluster, Fault, Lab, Outcome, Setup};

/// One lab at a time: two three-node clusters at once on two cores would measure the
/// machine, not the faults.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(manager: &'static str) {
    if let Some(why) = harness::unavailable() {
        eprintln!("SKIP: {why}");
        return;
    }
    let _one = SERIAL.lock().await;
    let lab = Lab::create().expect("lab");
    let setup = Setup {
        manager,
        send: "sync",
        clients: 6,
    };
    let mut cluster = Cluster::start(&lab, setup).await;
    let mut failures = Vec::new();
    // CHAOS_ROUNDS and CHAOS_FAULT (a substring of a fault's name) narrow a local rerun.
    let rounds: usize = std::env::var("CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let only = std::env::var("CHAOS_FAULT").unwrap_or_default();
    let faults = Fault::ALL.into_iter().filter(|f| f.name().contains(&only));
    for fault in faults.flat_map(|f| std::iter::repeat_n(f, rounds)) {
        let o: Outcome = cluster.round(fault).await;
        eprintln!("{manager} sync, {}: {o:?}", fault.name());
        assert!(o.acked > 0, "{}: no write was acked at all", fault.name());
        if o.lost + o.stale + o.split + o.divergent > 0 {
            failures.push(format!("{}: {o:?}", fault.name()));
        }
    }
    if !failures.is_empty() && std::env::var_os("CHAOS_DEBUG").is_some() {
        cluster.dump_logs();
    }
    assert!(failures.is_empty(), "{manager}: {failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sync_loses_no_acked_write_under_any_fault() {
    run("delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_sync_loses_no_acked_write_under_any_fault() {
    run("backup").await;
}
