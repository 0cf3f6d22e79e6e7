//! The fault-injection table (root only: network namespaces, iptables): for each
//! manager and send mode, ROUNDS (5) rounds of every fault on a three-node cluster, with
//! the figures summed over the rounds: acked writes, lost acked writes, stale reads,
//! split-brain sessions, copies still divergent 4 s after the heal, and the longest stall
//! a client saw while the fault lasted. The lab and the checker are tests/chaos/harness.rs
//! (tests/chaos.rs runs one round of each fault in CI).
//!
//! Run: `cargo bench --bench chaos` (env: ROUNDS, CLIENTS (6), ONLY=delta-sync|...).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/chaos/harness.rs"]
mod harness;

use harness::{Cluster, Fault, Lab, Outcome, Setup};

fn env_num(name: &str, default: usize) -> usize {
    common::env_num(name, default as u64) as usize
}

fn main() {
    if let Some(why) = harness::unavailable() {
        println!("SKIP: {why}");
        return;
    }
    let rounds = env_num("ROUNDS", 5);
    let clients = env_num("CLIENTS", 6);
    let only = std::env::var("ONLY").unwrap_or_default();
    let rt = common::bench_runtime();
    println!(
        "machine: {} cores; 3 nodes in network namespaces, frequency 200ms, drop_time 1s, \
         verify_timeout 500ms, ack_timeout 500ms, lease 600ms; {clients} clients, client \
         timeout 1s; {rounds} rounds per fault",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| manager, mode | fault | acked | lost acked | stale reads | split-brain | divergent | longest stall |");
    println!("|---|---|---|---|---|---|---|---|");
    rt.block_on(async {
        for manager in ["delta", "backup"] {
            for send in ["sync", "async"] {
                let name = format!("{manager}-{send}");
                if !name.contains(&only) {
                    continue;
                }
                let lab = match Lab::create() {
                    Ok(l) => l,
                    Err(e) => {
                        println!("cannot build the lab: {e}");
                        return;
                    }
                };
                let setup = Setup {
                    manager,
                    send,
                    clients,
                };
                let mut cluster = Cluster::start(&lab, setup).await;
                for fault in Fault::ALL {
                    let mut sum = Outcome::default();
                    for _ in 0..rounds {
                        sum.add(&cluster.round(fault).await);
                    }
                    println!(
                        "| {manager}, {send} | {} ({rounds}) | {} | {} | {} | {} | {} | {:.2} s |",
                        fault.name(),
                        sum.acked,
                        sum.lost,
                        sum.stale,
                        sum.split,
                        sum.divergent,
                        sum.stall.as_secs_f64()
                    );
                }
            }
        }
    });
}
