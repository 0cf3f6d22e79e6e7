//! Returning freed memory to the OS after a bulk release (a swap pass, a load). The
//! binary registers its allocator's collect here: mimalloc returns freed pages lazily, on
//! later allocator activity, so a node that swapped most of its sessions out and then
//! runs quietly would keep their pages resident.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets what [`release`] calls (once; the binary's `main`).
pub fn set_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Gives freed memory back to the OS now, if the binary said how.
pub(crate) fn release() {
    if let Some(f) = RELEASE.get() {
        f();
    }
}
