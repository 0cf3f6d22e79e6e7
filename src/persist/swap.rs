//! The swap file (REFERENCE 4.11, `swap_after`): where the store puts sessions idle past
//! `swap_after` ([`SwapSpace`]). `<route>.swap` in `dir`, mode 0600, scratch: truncated at
//! start and removed at stop, never loaded (every swapped session is also in the log or
//! the snapshot). Records are framed with their length and a CRC32, appended through a
//! buffer of up to [`BUFFER`] bytes (a read of a slot still in the buffer reads the buffer).
//! When the file is larger than `compact_after_bytes` and more than half of it is freed
//! slots, the store moves the live slots to `<route>.swap.new`, which is then renamed over
//! it. A slot's top bit says which of the two files it is in.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::session::{Slot, SwapSpace};

/// Bytes buffered before they are written (one write per this many).
const BUFFER: usize = 1 << 20;
/// Bytes that may wait in memory while the file cannot be written (a full disk); past
/// them, sessions stay in memory.
const MAX_PENDING: usize = 64 << 20;
/// length and CRC32 of a record.
const FRAME: u64 = 8;
const GEN: u64 = 1 << 63;

pub(crate) struct SwapFile {
    path: PathBuf,
    next: PathBuf,
    move_after: u64,
    inner: Mutex<Inner>,
    /// Bytes of live records, in both files.
    live: AtomicU64,
}

struct Inner {
    files: [Option<Arc<File>>; 2],
    /// The file `put` appends to.
    cur: usize,
    /// Its length, buffer included.
    end: u64,
    /// Where the buffer starts in it.
    flushed: u64,
    buf: Vec<u8>,
}

impl SwapFile {
    /// Creates (truncates) `<route>.swap` in `dir`.
    pub(crate) fn create(dir: &Path, route: &str, move_after: u64) -> std::io::Result<SwapFile> {
        let path = dir.join(format!("{route}.swap"));
        let next = dir.join(format!("{route}.swap.new"));
        let file = open_rw(&path)?;
        let _ = std::fs::remove_file(&next);
        Ok(SwapFile {
            path,
            next,
            move_after,
            inner: Mutex::new(Inner {
                files: [Some(Arc::new(file)), None],
                cur: 0,
                end: 0,
                flushed: 0,
                buf: Vec::new(),
            }),
            live: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the file (the node stops; nothing in it is needed again).
    pub(crate) fn remove(&self) {
        let mut g = self.lock();
        g.files = [None, None];
        g.buf = Vec::new();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.next);
    }

    /// Bytes of live records.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.load(Relaxed)
    }
}

impl Inner {
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let f = self.files[self.cur]
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the swap file is closed"))?;
        f.write_all_at(&self.buf, self.flushed)?;
        self.flushed = self.end;
        self.buf.clear();
        Ok(())
    }
}

/// Creates (truncates) `path`, mode 0600, for reading and writing.
fn open_rw(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn split(slot: Slot) -> (usize, u64) {
    (usize::from(slot.at & GEN != 0), slot.at & !GEN)
}

impl SwapSpace for SwapFile {
    fn put(&self, bytes: &[u8]) -> std::io::Result<Slot> {
        let mut g = self.lock();
        if g.buf.len() >= MAX_PENDING {
            return Err(std::io::Error::other("the swap file cannot be written"));
        }
        let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
        let at = g.end;
        g.buf.extend_from_slice(&len.to_le_bytes());
        g.buf
            .extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        g.buf.extend_from_slice(bytes);
        g.end += FRAME + u64::from(len);
        if g.buf.len() >= BUFFER {
            // A failed write keeps the bytes in the buffer (readable) for the next try.
            let _ = g.flush();
        }
        self.live.fetch_add(FRAME + u64::from(len), Relaxed);
        let gen = if g.cur == 1 { GEN } else { 0 };
        Ok(Slot { at: at | gen, len })
    }

    fn get(&self, slot: Slot) -> std::io::Result<Vec<u8>> {
        let (gen, at) = split(slot);
        let n = (FRAME + u64::from(slot.len)) as usize;
        let mut rec = vec![0u8; n];
        let file = {
            let g = self.lock();
            if gen == g.cur && at >= g.flushed {
                let from = (at - g.flushed) as usize;
                let part = g
                    .buf
                    .get(from..from + n)
                    .ok_or_else(|| std::io::Error::other("a swap slot past the file's end"))?;
                rec.copy_from_slice(part);
                None
            } else {
                Some(
                    g.files[gen]
                        .clone()
                        .ok_or_else(|| std::io::Error::other("a swap slot in a closed file"))?,
                )
            }
        };
        if let Some(f) = file {
            f.read_exact_at(&mut rec, at)?;
        }
        let len = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let crc = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let body = rec.split_off(FRAME as usize);
        if len != slot.len || crc32fast::hash(&body) != crc {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a damaged record in the swap file",
            ));
        }
        Ok(body)
    }

    fn free(&self, slot: Slot) {
        let _ = self.live.fetch_update(Relaxed, Relaxed, |l| {
            Some(l.saturating_sub(FRAME + u64::from(slot.len)))
        });
    }

    fn flush(&self) -> std::io::Result<()> {
        self.lock().flush()
    }

    fn wants_move(&self) -> bool {
        let end = self.lock().end;
        end > self.move_after && self.live.load(Relaxed) < end / 2
    }

    fn begin_move(&self) -> std::io::Result<()> {
        let mut g = self.lock();
        g.flush()?;
        let file = open_rw(&self.next)?;
        let to = 1 - g.cur;
        g.files[to] = Some(Arc::new(file));
        g.cur = to;
        g.end = 0;
        g.flushed = 0;
        Ok(())
    }

    fn is_old(&self, slot: Slot) -> bool {
        split(slot).0 != self.lock().cur
    }

    fn end_move(&self) {
        let mut g = self.lock();
        let old = 1 - g.cur;
        g.files[old] = None;
        if let Err(e) = std::fs::rename(&self.next, &self.path) {
            tracing::warn!(error = %e, "cannot rename the new swap file; it keeps its name");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_reads_back_from_the_buffer_the_file_and_after_a_move() {
        let dir = tempfile::tempdir().unwrap();
        let s = SwapFile::create(dir.path(), "n1", 0).unwrap();
        let a = s.put(b"first").unwrap();
        assert_eq!(s.get(a).unwrap(), b"first", "from the buffer");
        s.flush().unwrap();
        assert_eq!(s.get(a).unwrap(), b"first", "from the file");
        let b = s.put(&vec![7u8; 3 * BUFFER]).unwrap();
        assert_eq!(s.get(b).unwrap().len(), 3 * BUFFER);
        s.free(b);
        assert!(s.wants_move(), "most of the file is freed");
        s.begin_move().unwrap();
        assert!(s.is_old(a));
        let moved = s.put(&s.get(a).unwrap()).unwrap();
        s.free(a);
        assert!(!s.is_old(moved));
        s.end_move();
        assert_eq!(s.get(moved).unwrap(), b"first");
        assert!(s.get(a).is_err(), "the old file is gone");
        assert_eq!(s.live_bytes(), FRAME + 5);
        let meta = std::fs::metadata(dir.path().join("n1.swap")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    /// The store drives the move: once most of the file is freed slots, every live slot
    /// is copied to a new file, which replaces the old; every session still reads back.
    #[test]
    fn the_store_moves_live_slots_to_a_new_file_when_most_are_freed() {
        use crate::metrics::Metrics;
        use crate::session::{Change, FullSession, Key, SessionLimits, SessionStore};
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let limits = SessionLimits {
            default_max_inactive: Duration::from_secs(600),
            max_session_bytes: 1 << 16,
            max_active_sessions: 0,
        };
        let store = SessionStore::new("t1", limits, &Metrics::new());
        let file = Arc::new(SwapFile::create(dir.path(), "t1", 1).unwrap());
        store.set_swap(file.clone(), Duration::from_secs(1));
        let now = Instant::now();
        for k in 1..=200u128 {
            let full = FullSession {
                key: k,
                owner: "t2".into(),
                epoch: 1,
                version: 1,
                attrs: format!(r#"{{"k":{k},"pad":"{}"}}"#, "p".repeat(100)),
                max_inactive_ms: 600_000,
                idle_ms: 10_000,
            };
            store.apply_remote(&Change::Full(full), now);
        }
        let later = now + Duration::from_secs(2);
        assert_eq!(store.swap_idle(later), 200);
        let full_size = std::fs::metadata(dir.path().join("t1.swap")).unwrap().len();
        for k in 1..=150u128 {
            assert!(store.access(Key(k), later, &mut |_| {}).is_some());
        }
        assert_eq!(store.swap_idle(later), 0, "the ones in use stay");
        assert_eq!(store.swapped(), 50);
        let moved_size = std::fs::metadata(dir.path().join("t1.swap")).unwrap().len();
        assert!(
            moved_size * 3 < full_size,
            "the file holds only the live slots now: {moved_size} of {full_size} bytes"
        );
        assert!(!dir.path().join("t1.swap.new").exists());
        for k in 1..=200u128 {
            let f = store.full_copy(k, later).expect("every session reads back");
            assert!(
                f.attrs.starts_with(&format!(r#"{{"k":{k},"#)),
                "{}",
                f.attrs
            );
        }
        assert_eq!(store.swapped(), 50, "a copy does not bring it in");
    }

    #[test]
    fn a_damaged_record_is_an_error_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let s = SwapFile::create(dir.path(), "n1", 1 << 20).unwrap();
        let a = s.put(b"{\"a\":1}").unwrap();
        s.flush().unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("n1.swap"))
            .unwrap();
        f.write_all_at(b"X", FRAME + 2).unwrap();
        assert_eq!(
            s.get(a).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}
