//! `[persistence]`: the durable tier (REFERENCE 4.11). The directory is checked here, before
//! any socket opens: it must exist and be writable, and the node's files in it, if any,
//! must be of this cluster domain and a format this build reads.

use std::path::Path;

use super::raw::RawPersistence;
use super::source::{key, resolve, Source};
use super::ConfigError;
use crate::persist::{check_dir, Mode, PersistConfig};

pub(super) fn validate(
    p: &RawPersistence,
    route: &str,
    domain: &str,
    src: &Source,
) -> Result<PersistConfig, ConfigError> {
    let mode = match p.mode.as_str() {
        "off" => Mode::Off,
        "shutdown" => Mode::Shutdown,
        "async" => Mode::Async,
        "fsync" => Mode::Fsync,
        other => {
            return Err(src.error(
                &key("persistence.mode"),
                format!(
                    "unknown mode {other:?}: use \"off\", \"shutdown\", \"async\" or \"fsync\""
                ),
            ))
        }
    };
    if p.flush_interval.0.is_zero() {
        return Err(src.error(&key("persistence.flush_interval"), "must be greater than 0"));
    }
    if p.compact_after_bytes < 1 << 20 {
        return Err(src.error(
            &key("persistence.compact_after_bytes"),
            "must be at least 1048576 (1 MiB)",
        ));
    }
    let swap_after = (!p.swap_after.0.is_zero()).then_some(p.swap_after.0);
    if swap_after.is_some() && mode == Mode::Off {
        return Err(src.error(
            &key("persistence.swap_after"),
            "idle sessions are swapped to a file in persistence.dir: set persistence.mode \
             (\"shutdown\", \"async\" or \"fsync\"), or swap_after = \"0s\"",
        ));
    }
    let base = src.file.parent().unwrap_or(Path::new("."));
    let dir = resolve(base, &p.dir);
    if mode != Mode::Off {
        check_dir(&dir, route, domain).map_err(|e| src.error(&key("persistence.dir"), e))?;
    }
    Ok(PersistConfig {
        mode,
        dir,
        flush_interval: p.flush_interval.0,
        compact_after_bytes: p.compact_after_bytes,
        swap_after,
    })
}
