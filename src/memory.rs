//! Returning freed memory to the OS after a bulk release (a swap pass). The binary
//! registers its allocator's collect here. mimalloc returns a freed page only on later
//! allocator activity of the thread that owns it, after a delay: the sessions a swap pass
//! frees were allocated by the runtime's workers (requests) and by the thread that runs
//! the node's main future (the load), so each worker collects the next time it parks
//! ([`on_park`]) and the main future waits for [`released`], once per release.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

static COLLECT: OnceLock<fn()> = OnceLock::new();
/// Releases asked so far.
static ASKED: AtomicU64 = AtomicU64::new(0);
/// Wakes the node's main future after a release (a stored permit if it is busy).
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

thread_local! {
    /// The releases this thread has collected for.
    static DONE: Cell<u64> = const { Cell::new(0) };
}

/// Sets the allocator's collect (once; the binary's `main`).
pub fn set_release(f: fn()) {
    let _ = COLLECT.set(f);
}

/// Gives freed memory back to the OS: on this thread now, on each runtime worker when it
/// next parks.
pub(crate) fn release() {
    ASKED.fetch_add(1, Relaxed);
    collect_here();
    WAKE.notify_one();
}

/// Resolves after a release, having collected on the thread that polls it.
pub(crate) async fn released() {
    WAKE.notified().await;
    collect_here();
}

/// A runtime worker parks (idle): it collects if a release was asked since its last.
pub(crate) fn on_park() {
    if COLLECT.get().is_some() {
        collect_here();
    }
}

fn collect_here() {
    let asked = ASKED.load(Relaxed);
    if DONE.with(|d| d.replace(asked)) != asked {
        if let Some(f) = COLLECT.get() {
            f();
        }
    }
}
