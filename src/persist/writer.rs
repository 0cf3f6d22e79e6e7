//! The log writer (REFERENCE 4.11): one thread per node, owned by [`super::Persistence`].
//!
//! The store's [`Journal::record`] frames a change and appends it to a pending buffer
//! under a short lock, giving it the next sequence number. The thread takes the whole
//! buffer, writes it, and syncs it:
//! - `fsync`: as soon as anything is pending. Whatever arrived during one sync goes in the
//!   next, so one sync covers every write of those milliseconds (group commit), with no
//!   timer adding latency. Only after the sync returns does the durable sequence move
//!   past those records, and only then do their waiters ([`Journal::durable`]: a write's
//!   response, a replica's ack) go on: the ack-after-fsync order. `caracal_persist_fsyncs_total`
//!   counts the syncs.
//! - `async`: every `flush_interval`; a crash loses at most that window
//!   (`caracal_persist_unflushed_records` is what it would lose now).
//!
//! A failed write or sync (a full disk) fails the waiters of its records (their writes
//! answer 503 in `fsync` mode), marks the tier failing, and makes the next successful round
//! write a snapshot first: the log may have lost records in the middle. A snapshot (also
//! once the log passes `compact_after_bytes`) is written to a temporary file, synced,
//! renamed over the old one and the directory synced; only then is the log truncated.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::format::{self, Kind};
use super::{
    create_private, io, record_of, sync_dir, Mode, PersistError, PersistMetrics, Persistence,
};
use crate::session::{Change, Durable, Journal, NotDurable, SessionStore};

/// What is on disk, by sequence number: everything up to `durable` is; the records up to
/// `failed` (and not up to `durable`) could not be written.
#[derive(Debug, Clone, Copy, Default)]
struct Commit {
    durable: u64,
    failed: u64,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    last: u64,
    count: i64,
}

/// The store's side of the writer: what [`Journal`] calls.
pub(super) struct Journaled {
    mode: Mode,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The sequence number of the last record queued.
    assigned: AtomicU64,
    commit: watch::Sender<Commit>,
    stop: AtomicBool,
    /// Shared with the waits, which read it only when their records failed.
    last_error: Arc<Mutex<Option<String>>>,
    metrics: PersistMetrics,
}

impl Journaled {
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        // Under the lock, so the writer cannot miss it between its check and its wait.
        let _p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    pub(super) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Journal for Journaled {
    fn record(&self, change: &Change) {
        let mut framed = Vec::with_capacity(128);
        if !format::frame(&mut framed, &record_of(change)) {
            return;
        }
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.buf.extend_from_slice(&framed);
            p.last += 1;
            p.count += 1;
            self.assigned.store(p.last, Ordering::Release);
        }
        self.metrics.records.inc();
        self.metrics.unflushed.inc();
        if self.mode == Mode::Fsync {
            self.wake.notify_one();
        }
    }

    fn waits(&self) -> bool {
        self.mode == Mode::Fsync
    }

    fn durable(&self) -> Durable {
        let seq = self.assigned.load(Ordering::Acquire);
        let mut rx = self.commit.subscribe();
        let last_error = self.last_error.clone();
        Box::pin(async move {
            match rx.wait_for(|c| c.durable >= seq || c.failed >= seq).await {
                Ok(c) if c.durable >= seq => Ok(()),
                Ok(_) => {
                    let why = last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    Err(NotDurable(
                        why.unwrap_or_else(|| "a write to disk failed".into()),
                    ))
                }
                Err(_) => Err(NotDurable("the session store is closed".into())),
            }
        })
    }
}

/// Where the writer writes.
struct Files {
    snapshot: PathBuf,
    log: PathBuf,
    domain: String,
    route: String,
    header_len: u64,
}

/// Opens the log for appending (cut back to its last intact record, or created) and
/// starts the writer thread.
pub(super) fn start(
    p: &Persistence,
    snapshot: &Path,
    log: &Path,
) -> Result<(Arc<Journaled>, std::thread::JoinHandle<()>), PersistError> {
    let header = format::header(Kind::Log, &p.domain, &p.route);
    let damaged = p.loaded.skipped > 0 || p.loaded.torn;
    let file = match p.loaded.log_end {
        Some(end) => {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .map_err(io(log))?;
            // A torn tail is cut: appending after it would leave it in the middle.
            f.set_len(end as u64).map_err(io(log))?;
            f
        }
        None => {
            let mut f = create_private(log).map_err(io(log))?;
            f.write_all(&header).map_err(io(log))?;
            f.sync_all().map_err(io(log))?;
            sync_dir(&p.cfg.dir).map_err(io(&p.cfg.dir))?;
            drop(f);
            std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .map_err(io(log))?
        }
    };
    let len = file.metadata().map_err(io(log))?.len();
    p.metrics.log_bytes.set(len as i64);
    let (tx, _) = watch::channel(Commit::default());
    let j = Arc::new(Journaled {
        mode: p.cfg.mode,
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        assigned: AtomicU64::new(0),
        commit: tx,
        stop: AtomicBool::new(false),
        last_error: Arc::new(Mutex::new(None)),
        metrics: p.metrics.clone(),
    });
    let files = Files {
        snapshot: snapshot.to_path_buf(),
        log: log.to_path_buf(),
        domain: p.domain.clone(),
        route: p.route.clone(),
        header_len: header.len() as u64,
    };
    let (jw, store) = (j.clone(), Arc::downgrade(&p.store));
    let (every, compact) = (p.cfg.flush_interval, p.cfg.compact_after_bytes);
    let t = std::thread::Builder::new()
        .name("caracal-persist".into())
        .spawn(move || run(jw, file, files, store, every, compact, damaged))
        .map_err(io(log))?;
    Ok((j, t))
}

/// The writer thread, until [`Journaled::stop`]; what is pending then is written last.
fn run(
    j: Arc<Journaled>,
    mut file: File,
    files: Files,
    store: Weak<SessionStore>,
    every: Duration,
    compact_after: u64,
    mut needs_snapshot: bool,
) {
    let mut log_bytes = file.metadata().map_or(0, |m| m.len());
    let mut next_flush = Instant::now() + every;
    // After a failed snapshot, the next try waits a little (a full disk stays full a while).
    let mut retry_at = Instant::now();
    loop {
        let (buf, hi, n, stopping) = {
            let mut p = j.pending.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let now = Instant::now();
                let stopping = j.stop.load(Ordering::Acquire);
                let due = j.mode == Mode::Fsync || now >= next_flush;
                let snap = needs_snapshot && now >= retry_at;
                if stopping || (due && !p.buf.is_empty()) || snap {
                    break;
                }
                let mut until = if needs_snapshot {
                    retry_at
                } else {
                    now + Duration::from_secs(3600)
                };
                if j.mode != Mode::Fsync {
                    until = until.min(next_flush);
                }
                let left = until
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                p = j
                    .wake
                    .wait_timeout(p, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let buf = std::mem::take(&mut p.buf);
            let n = std::mem::take(&mut p.count);
            (buf, p.last, n, j.stop.load(Ordering::Acquire))
        };
        next_flush = Instant::now() + every;
        if !buf.is_empty() {
            #[cfg(test)]
            let _held = tests::SYNC_GATE.read();
            match file.write_all(&buf).and_then(|()| file.sync_data()) {
                Ok(()) => {
                    log_bytes += buf.len() as u64;
                    j.metrics.fsyncs.inc();
                    j.metrics.failing.set(0);
                    j.commit.send_modify(|c| c.durable = c.durable.max(hi));
                }
                Err(e) => fail(&j, hi, &format!("writing {}: {e}", files.log.display())),
            }
            if j.metrics.failing.get() != 0 {
                needs_snapshot = true;
            }
            j.metrics.unflushed.dec_by(n);
            j.metrics.log_bytes.set(log_bytes as i64);
        }
        if (needs_snapshot && Instant::now() >= retry_at) || log_bytes > compact_after {
            // Everything queued so far is in memory, so in the snapshot.
            let upto = j.assigned.load(Ordering::Acquire);
            let Some(s) = store.upgrade() else { return };
            match compact(&mut file, &files, &s) {
                Ok(()) => {
                    needs_snapshot = false;
                    log_bytes = files.header_len;
                    j.metrics.log_bytes.set(log_bytes as i64);
                    j.metrics.snapshots.inc();
                    j.metrics.failing.set(0);
                    j.commit.send_modify(|c| c.durable = c.durable.max(upto));
                }
                Err(e) => {
                    needs_snapshot = true;
                    retry_at = Instant::now() + Duration::from_secs(1);
                    fail(
                        &j,
                        upto,
                        &format!("compacting into {}: {e}", files.snapshot.display()),
                    );
                }
            }
        }
        if stopping {
            let empty = j.pending.lock().map_or(true, |p| p.buf.is_empty());
            if empty {
                return;
            }
        }
    }
}

fn fail(j: &Journaled, upto: u64, why: &str) {
    if j.metrics.failing.get() == 0 {
        tracing::error!(error = why, "the session store cannot write to disk");
    }
    j.metrics.write_failures.inc();
    j.metrics.failing.set(1);
    *j.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    j.commit.send_modify(|c| c.failed = c.failed.max(upto));
}

/// A snapshot of the store, then the log cut back to its header.
fn compact(file: &mut File, f: &Files, store: &SessionStore) -> std::io::Result<()> {
    snapshot(&f.snapshot, &f.domain, &f.route, store).map_err(|e| match e {
        PersistError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })?;
    file.set_len(f.header_len)?;
    file.seek(std::io::SeekFrom::End(0))?;
    file.sync_all()?;
    Ok(())
}

/// Writes every session and removal of `store` to `path` (through a temporary file,
/// synced and renamed, the directory synced); the number of sessions.
pub(super) fn snapshot(
    path: &Path,
    domain: &str,
    route: &str,
    store: &SessionStore,
) -> Result<usize, PersistError> {
    let tmp = path.with_extension("snapshot.tmp");
    let file = create_private(&tmp).map_err(io(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&format::header(Kind::Snapshot, domain, route))
        .map_err(io(&tmp))?;
    let mut err = None;
    let mut buf = Vec::with_capacity(1 << 16);
    let mut n = 0;
    store.export(Instant::now(), &mut |c| {
        if err.is_some() {
            return;
        }
        n += usize::from(matches!(c, Change::Full(_)));
        format::frame(&mut buf, &record_of(&c));
        if buf.len() >= 1 << 16 {
            if let Err(e) = w.write_all(&buf) {
                err = Some(e);
            }
            buf.clear();
        }
    });
    if let Some(e) = err {
        return Err(io(&tmp)(e));
    }
    w.write_all(&buf).map_err(io(&tmp))?;
    let file = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir).map_err(io(dir))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};
    use std::time::{Duration, Instant};

    use super::super::{Mode, PersistConfig, Persistence};
    use crate::metrics::Metrics;
    use crate::session::{Change, SessionLimits, SessionStore};

    /// Held for writing, it stops the writer just before its write and sync.
    pub(super) static SYNC_GATE: RwLock<()> = RwLock::new(());

    fn touch(i: u64) -> Change {
        Change::Touch {
            key: u128::from(i),
            epoch: 1,
            version: i,
        }
    }

    /// The commit path in order: a durable wait does not resolve while the sync has not
    /// returned (a kill -9 keeps the page cache, so only this order, not a crash test,
    /// shows an ack comes after the fsync), and resolves once the sync counter moved.
    #[test]
    fn a_durable_wait_resolves_only_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PersistConfig {
            mode: Mode::Fsync,
            dir: dir.path().to_path_buf(),
            flush_interval: Duration::from_secs(1),
            compact_after_bytes: 64 << 20,
            swap_after: None,
        };
        let metrics = Metrics::new();
        let limits = SessionLimits {
            default_max_inactive: Duration::from_secs(60),
            max_session_bytes: 1 << 16,
            max_active_sessions: 0,
        };
        let store = Arc::new(SessionStore::new("t1", limits, &metrics));
        let p = Persistence::open(&cfg, "t1", "dom", store.clone(), &metrics)
            .unwrap()
            .unwrap();
        let j = p.journal.clone().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let gate = SYNC_GATE.write().unwrap();
        use crate::session::Journal;
        j.record(&touch(1));
        let wait = store.durable().expect("fsync mode waits");
        let handle = rt.spawn(wait);
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
        assert!(!handle.is_finished(), "resolved before the sync");
        assert_eq!(p.metrics.fsyncs.get(), 0);
        drop(gate);
        let t = Instant::now();
        let r = rt.block_on(handle).unwrap();
        assert_eq!(r, Ok(()));
        assert_eq!(p.metrics.fsyncs.get(), 1, "one sync covered it");
        assert!(t.elapsed() < Duration::from_secs(2));
        // Group commit: records queued while a sync is held go out in one sync.
        let gate = SYNC_GATE.write().unwrap();
        for i in 2..50 {
            j.record(&touch(i));
        }
        let waits: Vec<_> = (0..10)
            .map(|_| rt.spawn(store.durable().unwrap()))
            .collect();
        drop(gate);
        for w in waits {
            assert_eq!(rt.block_on(w).unwrap(), Ok(()));
        }
        assert!(
            p.metrics.fsyncs.get() <= 3,
            "{} syncs for one batch",
            p.metrics.fsyncs.get()
        );
        p.close();
        let log = std::fs::read(dir.path().join("t1.log")).unwrap();
        let mut n = 0;
        let at = super::format::check_header(&log, super::format::Kind::Log, "dom", "t1").unwrap();
        super::format::read(&log, at, &mut |_| n += 1);
        assert_eq!(n, 49);
    }
}
