//! The randomized edge harness in CI: a few thousand mutated HTTP/1.1 requests and
//! h2c connections against a live node (`tests/fuzz/edge.rs` says what each case checks).
//! `cargo bench --bench fuzz` runs the long version with a count and a seed.

mod common;
#[allow(dead_code)]
#[path = "fuzz/edge.rs"]
mod edge;

/// RSS may grow by this much over a run (allocator caches, hyper's buffers): a leak per
/// case would be far past it.
const RSS_BOUND_KB: u64 = 48 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_get_past_the_edge() {
    let seed = common::env_num("FUZZ_SEED", 20_201);
    let cases = common::env_num("FUZZ_CASES", 3000) as usize;
    let r = edge::run(seed, cases, 64).await;
    println!(
        "fuzz: seed {seed}, {} cases ({} h2) in {:.1?}, backend got {} requests, statuses {:?}, RSS {} -> {} KiB",
        r.cases, r.h2_cases, r.elapsed, r.backend_requests, r.statuses, r.rss_before_kb, r.rss_after_kb
    );
    assert!(
        r.failures.is_empty(),
        "{} failures:\n{}",
        r.failures.len(),
        r.failures.join("\n")
    );
    assert_eq!(r.cases, cases);
    assert!(
        r.backend_requests > cases / 10,
        "most cases must reach the backend: {r:?}"
    );
    assert!(
        r.rss_after_kb <= r.rss_before_kb + RSS_BOUND_KB,
        "RSS grew from {} to {} KiB",
        r.rss_before_kb,
        r.rss_after_kb
    );
}
