//! The log level of a running node (floor 1): the command line installs the subscriber's
//! reload handle here, and a reload (`[log] level`) sets a new filter through it.

use std::sync::OnceLock;

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Called once, by the command line, with what replaces the filter.
pub(crate) fn install(f: SetLevel) {
    let _ = SET_LEVEL.set(f);
}

/// A new filter (`RUST_LOG` syntax, e.g. `info,caracal::cluster=debug`); an error when the
/// process has no reloadable subscriber (an embedding or a test harness).
pub(crate) fn set_level(directives: &str) -> Result<(), String> {
    match SET_LEVEL.get() {
        Some(f) => f(directives),
        None => Err("this process's logging cannot change its level".into()),
    }
}
