//! The `caracal` binary: everything lives in the library (`caracal::main`), except the
//! allocator and its one call the library cannot make itself.
#![deny(unsafe_code)]

/// mimalloc: the request path allocates small, short-lived buffers; glibc's malloc showed
/// up at ~5% of a proxying core in `perf` (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's collect: after a swap pass or a load freed many sessions, their pages go
/// back to the OS now rather than on later allocator activity (bench/RESULTS.md §9).
#[allow(unsafe_code)] // the allocator's own C API; no safe wrapper exposes it
fn release_memory() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> std::process::ExitCode {
    caracal::set_memory_release(release_memory);
    caracal::main()
}
