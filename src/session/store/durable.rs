//! The store's side of the durable tier (REFERENCE 4.11): the journal it records its
//! changes in, the wait for their durability, and what a load and a snapshot need.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Emit, SessionStore, TOMBSTONE_TTL};
use crate::session::change::Change;
use crate::session::id::Key;
use crate::session::journal::{Durable, Journal};

impl SessionStore {
    /// Removals are remembered `ttl` (at least [`TOMBSTONE_TTL`]): with a durable tier, as
    /// long as a session may be idle, so a node that comes back with a copy from disk
    /// learns of a removal made while it was away (REFERENCE 4.11).
    pub(crate) fn set_tomb_ttl(&self, ttl: Duration) {
        let ms = ttl.max(TOMBSTONE_TTL).as_millis() as u64;
        self.tomb_ttl_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Attaches the durable tier: every change applied from now on is recorded. Set once,
    /// after the node loaded its sessions (loading records nothing).
    pub(crate) fn set_journal(&self, j: Arc<dyn Journal>) {
        let _ = self.journal.set(j);
    }

    /// Records `change` in the durable tier, if any (under the session's guard).
    #[inline]
    pub(super) fn record(&self, change: &Change) {
        if let Some(j) = self.journal.get() {
            j.record(change);
        }
    }

    /// `emit`, with each change recorded in the durable tier first.
    pub(super) fn journaled<'a>(&'a self, emit: Emit<'a>) -> impl FnMut(Change) + 'a {
        move |c| {
            self.record(&c);
            emit(c)
        }
    }

    /// A wait until what this node applied so far is durable (`fsync` mode), else `None`.
    pub(crate) fn durable(&self) -> Option<Durable> {
        self.journal
            .get()
            .filter(|j| j.waits())
            .map(|j| j.durable())
    }

    /// Every session as a whole copy and every remembered removal, for a snapshot of the
    /// durable tier. Each session is read under its own guard (the store keeps serving).
    pub(crate) fn export(&self, now: Instant, out: &mut dyn FnMut(Change)) {
        self.map
            .each_full(now, &mut |k, s| out(Change::Full(s.full(k, now))));
        for t in self.tombs.iter() {
            let at = t.value().0;
            out(Change::Remove {
                key: t.key().0,
                epoch: at.epoch,
                version: at.version,
            });
        }
    }

    /// The durable tier loaded copies or removals into this store at start: its first
    /// lease must wait for a catch-up (REFERENCE 4.11).
    pub(crate) fn loaded_from_disk(&self) -> bool {
        self.from_disk.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn mark_from_disk(&self) {
        self.from_disk
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Removals remembered now.
    pub(crate) fn removals(&self) -> usize {
        self.tombs.len()
    }

    /// After a load from the durable tier: the session `key` was last accessed `idle` ago
    /// (by the tier's record of it). One idle past its lifetime is dropped (nothing is
    /// replicated: every copy ages alike); `false` then.
    pub(crate) fn settle_loaded(&self, key: u128, idle: Duration, now: Instant) -> bool {
        let k = Key(key);
        let Some(mut s) = self.map.get_mut(&k) else {
            return false;
        };
        s.last_access = now.checked_sub(idle).unwrap_or(now);
        s.last_replicated = s.last_access;
        // Not a promise (0): no grace in memory either, the swap may take it at once.
        s.promised_at = s.last_access;
        if s.expired(now, &self.route) {
            drop(s);
            if self.map.remove(&k).is_some() {
                self.counters.active.dec();
            }
            return false;
        }
        true
    }
}
