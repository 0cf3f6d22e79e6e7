//! Reading a node's files back into its store at start (REFERENCE 4.11): the snapshot, then
//! the log, each record applied by the replica's apply rule, so a record never rolls a
//! session back and a removal keeps the session removed. Then each session's idle time
//! is set from its newest record: the time since that write, on this node's own clock (no
//! clock of another node is read), and one idle past its lifetime is dropped.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::format::{self, Kind};
use super::{io, unix_ms, PersistError, PersistMetrics};
use crate::session::{Change, Remote, SessionStore};

/// What a start found on disk.
#[derive(Debug, Clone, Default)]
pub(crate) struct Loaded {
    /// Sessions live after the load.
    pub sessions: u64,
    pub removals: u64,
    /// Damaged records skipped (the rest loaded).
    pub skipped: u64,
    /// A file ended inside a record.
    pub torn: bool,
    pub expired: u64,
    /// Where the log's last intact record ends (appending goes on from there), if there
    /// is a log.
    pub log_end: Option<usize>,
}

/// The header of the file at `path` checked against this node, reading only as much as a
/// header can be (the config check: the load reads the file once, later).
pub(super) fn check_file(
    path: &Path,
    kind: Kind,
    domain: &str,
    route: &str,
) -> Result<(), PersistError> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(format::MAX_HEADER as u64).read_to_end(&mut head))
        .map_err(io(path))?;
    format::check_header(&head, kind, domain, route).map_err(|source| PersistError::Header {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// A whole file, its header checked against this node; the offset of the first record.
pub(super) fn read_header(
    path: &Path,
    kind: Kind,
    domain: &str,
    route: &str,
) -> Result<(Vec<u8>, usize), PersistError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let at = format::check_header(&bytes, kind, domain, route).map_err(|source| {
        PersistError::Header {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok((bytes, at))
}

pub(super) fn load(
    snapshot: &Path,
    log: &Path,
    domain: &str,
    route: &str,
    store: &SessionStore,
    pm: &PersistMetrics,
) -> Result<Loaded, PersistError> {
    let started = Instant::now();
    let now = Instant::now();
    let mut out = Loaded::default();
    // The newest access each record shows, in this node's wall-clock milliseconds.
    let mut access: HashMap<u128, u64, foldhash::fast::RandomState> = HashMap::default();
    for (path, kind) in [(snapshot, Kind::Snapshot), (log, Kind::Log)] {
        let (bytes, at) = match read_header(path, kind, domain, route) {
            Ok(b) => b,
            Err(PersistError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let st = format::read(&bytes, at, &mut |r| {
            let key = r.change.key();
            if store.apply_remote(&r.change, now) != Remote::Applied {
                return;
            }
            let seen = match &r.change {
                Change::Full(f) => r.written_unix_ms.saturating_sub(f.idle_ms),
                Change::Delta { .. } | Change::Touch { .. } => r.written_unix_ms,
                Change::Remove { .. } | Change::Drop { .. } => {
                    access.remove(&key);
                    return;
                }
            };
            let t = access.entry(key).or_insert(seen);
            *t = (*t).max(seen);
        });
        out.skipped += st.skipped;
        out.torn |= st.torn;
        if kind == Kind::Log {
            out.log_end = Some(st.end);
        }
        if st.skipped > 0 || st.torn {
            tracing::warn!(
                path = %path.display(),
                loaded = st.records,
                skipped = st.skipped,
                torn = st.torn,
                "damaged records skipped; every intact record loaded"
            );
        }
    }
    let wall = unix_ms();
    for (key, seen) in access {
        let idle = Duration::from_millis(wall.saturating_sub(seen));
        if !store.settle_loaded(key, idle, now) {
            out.expired += 1;
        }
    }
    out.removals = store.removals() as u64;
    out.sessions = store.len() as u64;
    if out.sessions > 0 || out.removals > 0 {
        store.mark_from_disk();
    }
    pm.loaded.inc_by(out.sessions);
    pm.skipped.inc_by(out.skipped);
    pm.expired_at_load.inc_by(out.expired);
    if out.sessions > 0 || out.skipped > 0 {
        tracing::info!(
            sessions = out.sessions,
            removals = out.removals,
            skipped = out.skipped,
            expired = out.expired,
            took_ms = started.elapsed().as_millis() as u64,
            "sessions loaded from disk"
        );
    }
    Ok(out)
}
