//! The `caracal` binary: everything lives in the library (`caracal::main`).
#![forbid(unsafe_code)]

/// mimalloc: the request path allocates small, short-lived buffers; glibc's malloc showed
/// up at ~5% of a proxying core in `perf` (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    caracal::main()
}
