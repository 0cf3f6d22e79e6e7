//! The store's map with idle sessions swapped out (REFERENCE 4.11, `swap_after`):
//! [`Sessions`] is the resident map plus a compact index of swapped sessions, and every
//! keyed call brings a swapped session back first, so the store's code above reads as
//! if every session were in memory. Walks say which part they read ([`Sessions::resident`],
//! [`Sessions::swapped`]).
//!
//! Lock order: a swapped entry's guard may be held while a resident one is taken (swap-in,
//! swap-out), never the other way round, and the owner names' lock is taken last (a walk
//! copies them before it reads the index); a keyed call looks in the resident map, lets go,
//! and only then brings the session in. Every move of a session between the two maps
//! happens under its swapped entry's guard, so a lookup under that guard sees it in one
//! of them. A session brought in stays in memory at least [`GRACE`], so the call that
//! brought it in finds it there (and looks again, a few times, if it did not).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::mapref::entry::Entry;
use dashmap::mapref::one::{Ref, RefMut};
use http::HeaderValue;
use prometheus_client::metrics::gauge::Gauge;

use super::{KeyMap, Session};
use crate::session::apply::Ver;
use crate::session::id::Key;
use crate::session::swap::{Slot, SwapSpace};

/// What the store keeps of a swapped session: 32 bytes besides the key (a key is a
/// `u128`, aligned to 16: an entry is 48 bytes only while this stays within 32).
pub(crate) struct Swapped {
    /// The slot ([`pack`]).
    packed: u64,
    pub epoch: u64,
    pub version: u64,
    /// When it expires, in whole seconds from the map's `base`, rounded up (the owner's or
    /// a replica's rule, which cannot change while it is swapped: any change brings it in
    /// first).
    deadline_s: u32,
    /// Its owner, an index into [`Sessions`]' owner names.
    owner: u16,
}

impl Swapped {
    pub(super) fn ver(&self) -> Ver {
        Ver::new(self.epoch, self.version)
    }

    fn slot(&self) -> Slot {
        unpack(self.packed)
    }
}

const OFFSET_BITS: u32 = 40;
const LEN_BITS: u32 = 23;
const FILE_BIT: u64 = 1 << 63;

/// A slot in one `u64`: bit 63 the file, 23 bits of length (8 MiB), 40 of offset (1 TiB);
/// `None` past those (such a session stays in memory).
pub(super) fn pack(slot: Slot) -> Option<u64> {
    let offset = slot.at & !FILE_BIT;
    if offset >> OFFSET_BITS != 0 || u64::from(slot.len) >> LEN_BITS != 0 {
        return None;
    }
    Some((slot.at & FILE_BIT) | (u64::from(slot.len) << OFFSET_BITS) | offset)
}

pub(super) fn unpack(p: u64) -> Slot {
    Slot {
        at: (p & FILE_BIT) | (p & ((1 << OFFSET_BITS) - 1)),
        len: ((p >> OFFSET_BITS) & ((1 << LEN_BITS) - 1)) as u32,
    }
}

pub(crate) struct SwapTo {
    pub space: Arc<dyn SwapSpace>,
    pub after: Duration,
}

pub(crate) struct Sessions {
    resident: KeyMap<Session>,
    swapped: KeyMap<Swapped>,
    /// How many are swapped (the `sessions_swapped` gauge).
    pub n_swapped: Gauge,
    swap: OnceLock<SwapTo>,
    base: Instant,
    route: Arc<str>,
    /// The owners swapped sessions name (a cluster has a few): `Swapped::owner` indexes it.
    owners: std::sync::RwLock<Vec<Arc<str>>>,
    /// Swap-ins whose bytes could not be read back (the session is lost on this node).
    pub lost: prometheus_client::metrics::counter::Counter,
    /// `sessions_active` (a session lost at swap-in leaves it).
    pub active: Gauge,
}

/// Bytes of a record before the attributes: key, created, max_inactive.
const HEAD: usize = 16 + 8 + 8;
/// How long a session that came into memory stays there at least.
const GRACE: Duration = Duration::from_secs(1);
/// Lookups of a session that moved while it was looked up.
const TRIES: usize = 4;

impl Sessions {
    pub(super) fn new(route: Arc<str>) -> Self {
        Sessions {
            resident: KeyMap::default(),
            swapped: KeyMap::default(),
            n_swapped: Gauge::default(),
            swap: OnceLock::new(),
            base: Instant::now(),
            route,
            owners: Default::default(),
            lost: Default::default(),
            active: Gauge::default(),
        }
    }

    pub(super) fn set_swap(&self, to: SwapTo) {
        let _ = self.swap.set(to);
    }

    pub(super) fn swap_to(&self) -> Option<&SwapTo> {
        self.swap.get()
    }

    /// Sessions in memory (every walk that must see all sessions reads
    /// [`Sessions::swapped`] too).
    pub(super) fn resident(&self) -> &KeyMap<Session> {
        &self.resident
    }

    pub(super) fn swapped(&self) -> &KeyMap<Swapped> {
        &self.swapped
    }

    pub(super) fn swapped_len(&self) -> usize {
        self.n_swapped.get().max(0) as usize
    }

    pub(super) fn len(&self) -> usize {
        self.resident.len() + self.swapped_len()
    }

    /// Visits every session, in memory or swapped: (key, owner, epoch, version).
    pub(super) fn each(&self, mut f: impl FnMut(Key, &Arc<str>, Ver)) {
        for e in self.resident.iter() {
            f(*e.key(), &e.value().owner, e.value().ver());
        }
        // A copy: the names' lock is never held while an index guard is taken.
        let owners = self
            .owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let none: Arc<str> = Arc::from(super::MOVING);
        for e in self.swapped.iter() {
            let s = e.value();
            let owner = owners.get(usize::from(s.owner)).unwrap_or(&none);
            f(*e.key(), owner, s.ver());
        }
    }

    /// `f` of a session's copy, without bringing it into memory (state transfer).
    pub(super) fn peek<T>(&self, k: &Key, f: impl FnOnce(&Session) -> T) -> Option<T> {
        if let Some(s) = self.resident.get(k) {
            return Some(f(&s));
        }
        let to = self.swap.get()?;
        let sw = self.swapped.get(k)?;
        self.read(to, *k, &sw).map(|s| f(&s))
    }

    /// (version, live promise, promised epoch) of a session, from the index if it is
    /// swapped (a swapped session has no live promise).
    pub(super) fn glance(&self, k: &Key, now: Instant) -> Option<(Ver, u64, u64)> {
        if let Some(s) = self.resident.get(k) {
            return Some((s.ver(), s.promise(now), s.promised));
        }
        let sw = self.swapped.get(k)?;
        Some((sw.ver(), 0, 0))
    }

    /// Every session as a whole copy, the swapped ones read back (a snapshot).
    pub(super) fn each_full(&self, now: Instant, out: &mut dyn FnMut(Key, &Session)) {
        for e in self.resident.iter() {
            out(*e.key(), e.value());
        }
        let Some(to) = self.swap.get() else {
            return;
        };
        for e in self.swapped.iter() {
            if let Some(s) = self.read(to, *e.key(), e.value()) {
                if !s.expired(now, &self.route) {
                    out(*e.key(), &s);
                }
            }
        }
    }

    /// Brings `k` in if it is swapped out (not called while a resident guard is held).
    fn bring_in(&self, k: &Key) {
        if self.swapped_len() > 0 && !self.resident.contains_key(k) {
            self.bring(k);
        }
    }

    /// `look` in the resident map; on a miss, `k` brought in and looked for again.
    fn find<'a, R>(
        &'a self,
        k: &Key,
        look: impl Fn(&'a KeyMap<Session>) -> Option<R>,
    ) -> Option<R> {
        for _ in 0..TRIES {
            if let Some(r) = look(&self.resident) {
                return Some(r);
            }
            if self.swapped_len() == 0 || !self.bring(k) {
                return None;
            }
        }
        None
    }

    pub(super) fn get(&self, k: &Key) -> Option<Ref<'_, Key, Session>> {
        self.find(k, |m| m.get(k))
    }

    pub(super) fn get_mut(&self, k: &Key) -> Option<RefMut<'_, Key, Session>> {
        self.find(k, |m| m.get_mut(k))
    }

    pub(super) fn entry(&self, k: Key) -> Entry<'_, Key, Session> {
        self.bring_in(&k);
        self.resident.entry(k)
    }

    pub(super) fn contains_key(&self, k: &Key) -> bool {
        if self.resident.contains_key(k) {
            return true;
        }
        if self.swapped_len() == 0 {
            return false;
        }
        // Under the index entry's guard: a session moving between the maps is in one.
        match self.swapped.entry(*k) {
            Entry::Occupied(_) => true,
            Entry::Vacant(_) => self.resident.contains_key(k),
        }
    }

    pub(super) fn remove(&self, k: &Key) -> Option<(Key, Session)> {
        self.bring_in(k);
        self.resident.remove(k)
    }

    pub(super) fn remove_if(
        &self,
        k: &Key,
        f: impl FnOnce(&Key, &Session) -> bool,
    ) -> Option<(Key, Session)> {
        self.bring_in(k);
        self.resident.remove_if(k, f)
    }

    pub(super) fn insert(&self, k: Key, s: Session) -> Option<Session> {
        self.bring_in(&k);
        self.resident.insert(k, s)
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }

    /// The lifetime a copy has here: a replica keeps a session a quarter longer than its
    /// owner ([`Session::expired`]).
    fn limit(&self, owner: &str, max_inactive: Duration) -> Duration {
        if *owner == *self.route {
            max_inactive
        } else {
            max_inactive + max_inactive / 4
        }
    }

    /// The index of `owner` in the owner names (added if new; `None` past 65 536).
    fn owner_id(&self, owner: &Arc<str>) -> Option<u16> {
        let known = |v: &Vec<Arc<str>>| v.iter().position(|o| **o == **owner);
        if let Some(i) = known(&self.owners.read().unwrap_or_else(|e| e.into_inner())) {
            return u16::try_from(i).ok();
        }
        let mut w = self.owners.write().unwrap_or_else(|e| e.into_inner());
        let i = match known(&w) {
            Some(i) => i,
            None => {
                w.push(owner.clone());
                w.len() - 1
            }
        };
        u16::try_from(i).ok()
    }

    /// The owner a swapped session names.
    pub(super) fn owner_of(&self, sw: &Swapped) -> Arc<str> {
        let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
        owners
            .get(usize::from(sw.owner))
            .cloned()
            .unwrap_or_else(|| Arc::from(super::MOVING))
    }

    /// Whether the swapped session expired at `now`.
    pub(super) fn swapped_expired(&self, s: &Swapped, now: Instant) -> bool {
        self.ms(now) > u64::from(s.deadline_s) * 1000
    }

    /// Moves `k` to the swap space if it is still idle past `swap_after` and nothing holds
    /// it to memory; `true` if it moved.
    pub(super) fn swap_out(&self, k: Key, now: Instant) -> bool {
        let Some(to) = self.swap.get() else {
            return false;
        };
        let Entry::Vacant(v) = self.swapped.entry(k) else {
            return false;
        };
        let Entry::Occupied(o) = self.resident.entry(k) else {
            return false;
        };
        let s = o.get();
        if now.saturating_duration_since(s.last_access) < to.after
            || now.saturating_duration_since(s.promised_at) < GRACE
            || s.promise(now) != 0
            || *s.owner == *super::MOVING
        {
            return false;
        }
        let created = s
            .created
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut rec = Vec::with_capacity(HEAD + s.rendered.len());
        rec.extend_from_slice(&k.0.to_le_bytes());
        rec.extend_from_slice(&created.to_le_bytes());
        rec.extend_from_slice(&(s.max_inactive.as_millis() as u64).to_le_bytes());
        rec.extend_from_slice(s.rendered.as_bytes());
        let Some(owner) = self.owner_id(&s.owner) else {
            return false;
        };
        let Ok(slot) = to.space.put(&rec) else {
            return false;
        };
        let Some(packed) = pack(slot) else {
            to.space.free(slot);
            return false;
        };
        let deadline = s.last_access + self.limit(&s.owner, s.max_inactive);
        let Ok(deadline_s) = u32::try_from(self.ms(deadline).div_ceil(1000)) else {
            to.space.free(slot);
            return false;
        };
        // Counted before it leaves memory: a lookup that finds no count finds no swap.
        self.n_swapped.inc();
        v.insert(Swapped {
            packed,
            epoch: s.epoch,
            version: s.version,
            deadline_s,
            owner,
        });
        o.remove();
        true
    }

    /// Under `k`'s swapped entry guard: brings it into memory if it is swapped out;
    /// whether it is in memory now (`false`: absent, or its bytes were lost).
    fn bring(&self, k: &Key) -> bool {
        let Some(to) = self.swap.get() else {
            return false;
        };
        let o = match self.swapped.entry(*k) {
            Entry::Occupied(o) => o,
            Entry::Vacant(_) => return self.resident.contains_key(k),
        };
        let back = self.read(to, *k, o.get());
        let slot = o.get().slot();
        let present = match back {
            Some(mut s) => {
                s.promised_at = Instant::now();
                self.resident.insert(*k, s);
                true
            }
            None => {
                self.active.dec();
                false
            }
        };
        // Removed only once it is in memory: a lookup never finds it in neither map.
        o.remove();
        self.n_swapped.dec();
        to.space.free(slot);
        present
    }

    /// The session a swapped entry stands for, read back (`None`: lost, counted and
    /// logged).
    pub(super) fn read(&self, to: &SwapTo, k: Key, sw: &Swapped) -> Option<Session> {
        let bytes = match to.space.get(sw.slot()) {
            Ok(b) => b,
            Err(e) => {
                self.lost.inc();
                tracing::error!(error = %e, "a swapped session could not be read back: lost on this node");
                return None;
            }
        };
        let field = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[16 + 8 * i..24 + 8 * i]);
            u64::from_le_bytes(b)
        };
        let rendered = (bytes.len() >= HEAD && bytes[..16] == k.0.to_le_bytes())
            .then(|| HeaderValue::from_bytes(&bytes[HEAD..]).ok())
            .flatten();
        let Some(rendered) = rendered else {
            self.lost.inc();
            tracing::error!("a swapped record names another session or holds no header value: lost on this node");
            return None;
        };
        let max_inactive = Duration::from_millis(field(1));
        let owner = self.owner_of(sw);
        let deadline = self.base + Duration::from_secs(u64::from(sw.deadline_s));
        let last_access = deadline
            .checked_sub(self.limit(&owner, max_inactive))
            .unwrap_or(self.base);
        Some(Session {
            owner,
            epoch: sw.epoch,
            version: sw.version,
            rendered,
            created: SystemTime::UNIX_EPOCH + Duration::from_millis(field(0)),
            last_access,
            max_inactive,
            // The owner tells replicas of the next access (it is idle past a quarter).
            last_replicated: last_access,
            promised: 0,
            promised_at: last_access,
        })
    }

    /// Forgets a swapped entry removed by a walk (expiry).
    pub(super) fn forget(&self, sw: &Swapped) {
        self.n_swapped.dec();
        if let Some(to) = self.swap.get() {
            to.space.free(sw.slot());
        }
    }

    /// Moves every live slot to a new file when most of the space is freed slots.
    pub(super) fn compact_space(&self) {
        let Some(to) = self.swap.get() else {
            return;
        };
        if !to.space.wants_move() {
            return;
        }
        if let Err(e) = to.space.begin_move() {
            tracing::warn!(error = %e, "cannot start a new swap file; the old one stays");
            return;
        }
        let keys: Vec<Key> = self.swapped.iter().map(|e| *e.key()).collect();
        for k in keys {
            let Some(mut sw) = self.swapped.get_mut(&k) else {
                continue;
            };
            let old = sw.slot();
            if !to.space.is_old(old) {
                continue;
            }
            let moved = to.space.get(old).and_then(|b| to.space.put(&b));
            match moved.map(|slot| (slot, pack(slot))) {
                Ok((_, Some(packed))) => {
                    to.space.free(old);
                    sw.packed = packed;
                }
                Ok((slot, None)) => {
                    to.space.free(slot);
                    drop(sw);
                    self.bring(&k);
                }
                Err(e) => {
                    // Read back now, while the old file is still there, or lost.
                    drop(sw);
                    tracing::warn!(error = %e, "a swapped session could not be moved; brought back into memory");
                    self.bring(&k);
                }
            }
        }
        if let Err(e) = to.space.flush() {
            tracing::warn!(error = %e, "cannot write the swap file");
        }
        to.space.end_move();
    }
}

impl super::SessionStore {
    /// Sessions idle past `after` leave memory for `space` from now on (REFERENCE 4.11).
    /// Set once, after the load.
    pub(crate) fn set_swap(&self, space: Arc<dyn SwapSpace>, after: Duration) {
        self.map.set_swap(SwapTo { space, after });
    }

    pub(crate) fn swapped(&self) -> usize {
        self.map.swapped_len()
    }

    /// One swap pass: every session idle past `swap_after` leaves memory; the space is
    /// compacted when most of it is freed slots. When most of the sessions in memory leave
    /// (the pass after a load, a quiet night), those that stay are copied first, so the
    /// pages the leaving ones shared with them are freed whole (mimalloc returns only whole
    /// free pages). Returns how many left.
    pub(crate) fn swap_idle(&self, now: Instant) -> usize {
        let Some(to) = self.map.swap_to() else {
            return 0;
        };
        let idle = |s: &Session| now.saturating_duration_since(s.last_access) >= to.after;
        let resident = self.map.resident();
        let leaving: Vec<Key> = resident
            .iter()
            .filter(|e| idle(e.value()))
            .map(|e| *e.key())
            .collect();
        // Most leave: the ones that stay are copied first (into this thread's pages), so
        // the pages they shared with the leaving ones are freed whole.
        if leaving.len() * 2 > resident.len() {
            for mut e in resident.iter_mut() {
                if !idle(e.value()) {
                    let copy = HeaderValue::from_bytes(e.rendered.as_bytes());
                    if let Ok(copy) = copy {
                        e.rendered = copy;
                    }
                }
            }
        }
        let mut n = 0;
        for k in leaving {
            n += usize::from(self.map.swap_out(k, now));
        }
        if let Err(e) = to.space.flush() {
            tracing::warn!(error = %e, "cannot write the swap file (its records stay in memory until it can)");
        }
        if n > 0 && resident.capacity() > 4 * resident.len() + 1024 {
            resident.shrink_to_fit();
        }
        self.map.compact_space();
        if n > 0 {
            crate::memory::release();
        }
        n
    }
}
