//! The `caracal` binary: everything lives in the library (`caracal::cli`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    caracal::cli::main()
}
