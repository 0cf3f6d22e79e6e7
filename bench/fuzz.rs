//! The long run of the randomized edge harness: `cargo bench --bench fuzz`, with
//! `CASES` (default 100 000), `SEED` (default 1) and `PARALLEL` (default 64). Prints the
//! count, the time, the statuses, the node's RSS before and after, and every failure;
//! exits 1 on any. What a case checks: tests/fuzz/edge.rs.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/fuzz/edge.rs"]
mod edge;

use common::env_num as env;

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let cases = env("CASES", 100_000) as usize;
    let seed = env("SEED", 1);
    let parallel = env("PARALLEL", 64) as usize;
    let rt = common::bench_runtime();
    let r = rt.block_on(edge::run(seed, cases, parallel));
    let mut statuses: Vec<_> = r.statuses.iter().collect();
    statuses.sort();
    println!(
        "fuzz: seed {seed}: {} cases ({} HTTP/2) in {:.1} s ({:.0} cases/s); the backend got {} requests",
        r.cases,
        r.h2_cases,
        r.elapsed.as_secs_f64(),
        r.cases as f64 / r.elapsed.as_secs_f64(),
        r.backend_requests
    );
    println!("fuzz: HTTP/1 statuses {statuses:?}");
    println!(
        "fuzz: node RSS {} KiB before, {} KiB after ({:+} KiB)",
        r.rss_before_kb,
        r.rss_after_kb,
        r.rss_after_kb as i64 - r.rss_before_kb as i64
    );
    println!("fuzz: {} failures", r.failures.len());
    for f in &r.failures {
        println!("  {f}");
    }
    if !r.failures.is_empty() || r.cases < cases {
        std::process::exit(1);
    }
}
