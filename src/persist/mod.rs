//! The durable tier on this node's disk (floor 3; REFERENCE 4.11): sessions that outlive a
//! whole-cluster stop.
//!
//! - `format`: the files byte by byte (header with domain and format, checksummed records).
//! - `load`: reading a node's files back into its store at start.
//! - `writer`: the thread that appends what the store records, commits it in groups
//!   (`fsync`), flushes it on a timer (`async`), and compacts the log into a snapshot.
//!
//! Two files per node in `dir`, named by its jvm_route (operator configuration, never
//! client input): `<route>.snapshot` (every session and removal at one moment) and
//! `<route>.log` (every change since). Both are mode 0600. The store calls
//! [`Journal::record`] for each change it applies, under the session's guard; in `fsync`
//! mode a write's response, and a replica's ack, wait for [`Journal::durable`].

mod format;
mod load;
mod swap;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;
use crate::session::{Change, Journal, SessionStore};

pub(crate) use format::HeaderError;
pub(crate) use load::Loaded;

/// `[persistence] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Memory only.
    Off,
    /// A snapshot on graceful stop, loaded at start (StandardManager's SESSIONS.ser).
    Shutdown,
    /// A write-behind log, flushed (written and synced) every `flush_interval`.
    Async,
    /// Group commit: a write is acknowledged once it is on disk.
    Fsync,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Shutdown => "shutdown",
            Mode::Async => "async",
            Mode::Fsync => "fsync",
        }
    }
}

/// `[persistence]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct PersistConfig {
    pub mode: Mode,
    pub dir: PathBuf,
    pub flush_interval: Duration,
    /// The log is compacted into a snapshot once it is this large.
    pub compact_after_bytes: u64,
    /// Sessions idle this long leave memory for the swap file (`None`: never).
    pub swap_after: Option<Duration>,
}

/// Why the tier cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PersistError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Header { path: PathBuf, source: HeaderError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The two files of node `route` in `dir`.
fn paths(dir: &Path, route: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{route}.snapshot")),
        dir.join(format!("{route}.log")),
    )
}

/// What the config check asks before any socket opens: `dir` is a directory this process
/// can write, and the node's files in it, if any, are of this cluster and a format this
/// build reads.
pub(crate) fn check_dir(dir: &Path, route: &str, domain: &str) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let probe = dir.join(format!(".{route}.probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    let (snap, log) = paths(dir, route);
    for (p, kind) in [(snap, format::Kind::Snapshot), (log, format::Kind::Log)] {
        match load::check_file(&p, kind, domain, route) {
            Ok(()) => {}
            Err(PersistError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("refused, not loaded: {e}")),
        }
    }
    Ok(())
}

/// The tier's counters, for `/metrics` and `/status`.
#[derive(Clone, Default)]
pub(crate) struct PersistMetrics {
    pub records: Counter,
    pub fsyncs: Counter,
    pub write_failures: Counter,
    pub snapshots: Counter,
    pub failing: Gauge,
    pub unflushed: Gauge,
    pub log_bytes: Gauge,
    pub loaded: Counter,
    pub skipped: Counter,
    pub expired_at_load: Counter,
}

impl PersistMetrics {
    fn register(&self, m: &Metrics) {
        m.with_registry(|r| {
            let p = r.sub_registry_with_prefix("persist");
            p.register("records", "Session changes recorded", self.records.clone());
            p.register(
                "fsyncs",
                "Log commits made durable (fsync); a sync write is acknowledged only after one",
                self.fsyncs.clone(),
            );
            p.register(
                "write_failures",
                "Log writes or syncs that failed (a full disk)",
                self.write_failures.clone(),
            );
            p.register("snapshots", "Snapshots written", self.snapshots.clone());
            p.register(
                "failing",
                "1 while the last write to disk failed",
                self.failing.clone(),
            );
            p.register(
                "unflushed_records",
                "Changes recorded and not yet on disk (what a crash would lose now)",
                self.unflushed.clone(),
            );
            p.register("log_bytes", "Size of the log", self.log_bytes.clone());
            p.register(
                "loaded",
                "Sessions loaded from disk at start",
                self.loaded.clone(),
            );
            p.register(
                "skipped_records",
                "Damaged or torn records skipped at load",
                self.skipped.clone(),
            );
            p.register(
                "expired_at_load",
                "Sessions found past their lifetime at load",
                self.expired_at_load.clone(),
            );
        });
    }
}

/// This node's durable tier: loaded at start, recording while the node runs, flushed (and
/// in `shutdown` mode snapshotted) by [`Persistence::close`].
pub(crate) struct Persistence {
    cfg: PersistConfig,
    route: String,
    domain: String,
    store: Arc<SessionStore>,
    pub(crate) metrics: PersistMetrics,
    journal: Option<Arc<writer::Journaled>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    loaded: Loaded,
    swap: Option<Arc<swap::SwapFile>>,
}

impl Persistence {
    /// Loads the node's files into `store` (which must be empty and not yet serving), then
    /// starts recording. `Ok(None)` with `mode = "off"`.
    pub(crate) fn open(
        cfg: &PersistConfig,
        route: &str,
        domain: &str,
        store: Arc<SessionStore>,
        metrics: &Metrics,
    ) -> Result<Option<Arc<Persistence>>, PersistError> {
        if cfg.mode == Mode::Off {
            return Ok(None);
        }
        let pm = PersistMetrics::default();
        pm.register(metrics);
        let (snap, log) = paths(&cfg.dir, route);
        let loaded = load::load(&snap, &log, domain, route, &store, &pm)?;
        let mut p = Persistence {
            cfg: cfg.clone(),
            route: route.to_string(),
            domain: domain.to_string(),
            store: store.clone(),
            metrics: pm,
            journal: None,
            thread: Mutex::new(None),
            loaded,
            swap: None,
        };
        if matches!(cfg.mode, Mode::Async | Mode::Fsync) {
            let (j, t) = writer::start(&p, &snap, &log)?;
            store.set_journal(j.clone() as Arc<dyn Journal>);
            p.journal = Some(j);
            *p.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        }
        if let Some(after) = cfg.swap_after {
            let file = swap::SwapFile::create(&cfg.dir, route, cfg.compact_after_bytes)
                .map_err(io(&cfg.dir))?;
            let file = Arc::new(file);
            store.set_swap(file.clone(), after);
            // The loaded sessions already idle that long leave now, on the thread that
            // loaded them, so their pages go back to the OS at once (mimalloc returns a
            // page on activity of the thread that allocated it; `memory`).
            let started = std::time::Instant::now();
            let n = store.swap_idle(started);
            if n > 0 {
                tracing::info!(
                    sessions = n,
                    took_ms = started.elapsed().as_millis() as u64,
                    "loaded sessions idle past swap_after swapped out"
                );
            }
            p.swap = Some(file);
        }
        Ok(Some(Arc::new(p)))
    }

    /// Flushes what is pending and stops recording; in `shutdown` mode writes the
    /// snapshot. Called once the node stopped serving.
    pub(crate) fn close(&self) {
        self.stop_writer();
        if self.cfg.mode == Mode::Shutdown {
            let (snap, log) = paths(&self.cfg.dir, &self.route);
            match writer::snapshot(&snap, &self.domain, &self.route, &self.store) {
                Ok(n) => {
                    // The log is of no use once the snapshot holds everything.
                    let _ = std::fs::remove_file(&log);
                    self.metrics.snapshots.inc();
                    tracing::info!(sessions = n, path = %snap.display(), "sessions saved for the next start");
                }
                Err(e) => tracing::error!(error = %e, "cannot save the sessions at shutdown"),
            }
        }
        if let Some(s) = &self.swap {
            s.remove();
        }
    }

    /// The `/status` view.
    pub(crate) fn status(&self) -> serde_json::Value {
        let m = &self.metrics;
        serde_json::json!({
            "mode": self.cfg.mode.as_str(),
            "dir": self.cfg.dir.display().to_string(),
            "failing": m.failing.get() != 0,
            "last_error": self.journal.as_ref().and_then(|j| j.last_error()),
            "records": m.records.get(),
            "fsyncs": m.fsyncs.get(),
            "write_failures": m.write_failures.get(),
            "unflushed_records": m.unflushed.get(),
            "log_bytes": m.log_bytes.get(),
            "snapshots": m.snapshots.get(),
            "swap_after_ms": self.cfg.swap_after.map(|d| d.as_millis() as u64),
            "swapped_sessions": self.store.swapped(),
            "swap_bytes": self.swap.as_ref().map(|s| s.live_bytes()),
            "loaded": {
                "sessions": self.loaded.sessions,
                "removals": self.loaded.removals,
                "skipped_records": self.loaded.skipped,
                "torn": self.loaded.torn,
                "expired": self.loaded.expired,
            },
        })
    }
}

impl Persistence {
    /// Stops the writer once what is pending is written (a second call does nothing).
    fn stop_writer(&self) {
        if let Some(j) = &self.journal {
            j.stop();
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Persistence {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// A change recorded for the log, with this node's wall-clock time.
fn record_of(change: &Change) -> format::Record {
    format::Record {
        written_unix_ms: unix_ms(),
        change: change.clone(),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Creates (or truncates) `path` with mode 0600.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Syncs the directory, so a rename or a new file in it survives a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
