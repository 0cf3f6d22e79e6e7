//! Ownership changes decided by a majority (REFERENCE 4.4.3, 4.9), the store's side: a voter's
//! promise, the claimant's install of the newest copy a majority holds, and the digest a
//! node that lost its lease compares with the members before it serves again.

use std::sync::Arc;
use std::time::Instant;

use super::{Found, Session, SessionStore};
use crate::session::apply::Ver;
use crate::session::change::{Change, FullSession};
use crate::session::epoch;
use crate::session::id::Key;
use crate::session::store::Emit;

/// A voter's answer to "promise epoch `e` of this session to me".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promise {
    /// Changes of older epochs are fenced here from now on. `copy`: this node's copy (the
    /// claimant takes the newest of a majority); `removed`: where it was removed, if so.
    Granted {
        copy: Option<FullSession>,
        removed: Option<Ver>,
    },
    /// This node already holds or promised `top` >= the claimed epoch.
    Refused { top: u64 },
}

/// What a node that lost its lease holds: (key, epoch, version) per session.
pub(super) type Digest = Vec<(u128, u64, u64)>;

/// A member's answer to a digest: what it knows that is newer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fresher {
    /// Newer copies (full) and removals.
    pub changes: Vec<Change>,
    /// Sessions promised to a claimant at a newer epoch: (key, epoch).
    pub promised: Vec<(u128, u64)>,
}

impl SessionStore {
    /// Failover without a vote (`partition_handling = "available"`, REFERENCE 4.4.3): this node
    /// becomes the owner with a higher epoch; the new ownership goes to the cluster as a
    /// full copy. Atomic per session: concurrent takeovers on this node raise the epoch
    /// once. `None` if the session is gone.
    pub fn take_over(&self, key: Key, now: Instant, emit: Emit) -> Option<Found> {
        let emit = &mut self.journaled(emit);
        let mut s = self.map.get_mut(&key)?;
        if s.expired(now, &self.route) {
            return None;
        }
        let promised = s.promise(now);
        if *s.owner != *self.route || promised > s.epoch {
            let at = epoch::next(s.epoch.max(promised), self.tag);
            let version = s.version + 1;
            return Some(self.become_owner(&mut s, key, at, version, now, emit));
        }
        Some(Found {
            owner: s.owner.clone(),
            epoch: s.epoch,
            rendered: s.rendered.clone(),
        })
    }

    /// Makes `s` this node's at (`at`, `version`) and emits it whole (a takeover).
    fn become_owner(
        &self,
        s: &mut Session,
        key: Key,
        at: u64,
        version: u64,
        now: Instant,
        emit: Emit,
    ) -> Found {
        s.owner = self.route.clone();
        s.epoch = at;
        s.promised = 0;
        s.version = version;
        s.last_access = now;
        s.last_replicated = now;
        emit(Change::Full(s.full(key, now)));
        Found {
            owner: s.owner.clone(),
            epoch: s.epoch,
            rendered: s.rendered.clone(),
        }
    }

    /// The epoch of the copy held, if any.
    pub fn held_epoch(&self, key: Key) -> Option<u64> {
        self.map.get(&key).map(|s| s.epoch)
    }

    /// This node's tag for the epochs it mints.
    pub fn epoch_tag(&self) -> u64 {
        self.tag
    }

    /// The epoch a claim by this node starts from: above everything held or promised.
    pub fn claim_epoch(&self, key: Key) -> u64 {
        let top = self
            .map
            .get(&key)
            .map(|s| s.epoch.max(s.promised))
            .or_else(|| self.tombs.get(&key).map(|t| t.0.epoch))
            .unwrap_or(0);
        epoch::next(top, self.tag)
    }

    /// A voter (or the claimant itself): promises `at` if it is above every epoch this node
    /// holds or promised for the session, atomically with reading the copy it answers.
    pub fn promise(&self, key: Key, at: u64, now: Instant) -> Promise {
        let removed = self.tombs.get(&key).map(|t| t.0);
        if let Some(t) = removed.filter(|t| t.epoch >= at) {
            return Promise::Refused { top: t.epoch };
        }
        match self.map.get_mut(&key) {
            Some(mut s) => {
                let top = s.epoch.max(s.promise(now));
                if at <= top {
                    return Promise::Refused { top };
                }
                s.promised = at;
                s.promised_at = now;
                Promise::Granted {
                    copy: Some(s.full(key, now)),
                    removed,
                }
            }
            None => Promise::Granted {
                copy: None,
                removed,
            },
        }
    }

    /// The claimant, after a majority granted `at`: takes the newest copy among its own and
    /// `best` (the voters' newest), makes it this node's at epoch `at` one version above
    /// it, and emits it whole. `None`: the session is gone (a voter saw it removed after
    /// every copy), or another claim superseded this one here.
    pub fn install_claim(
        &self,
        key: Key,
        at: u64,
        best: Option<FullSession>,
        removed: Option<Ver>,
        now: Instant,
        emit: Emit,
    ) -> Option<Found> {
        let emit = &mut self.journaled(emit);
        let own = self.map.get(&key).map(|s| (s.ver(), s.promise(now)));
        if own.is_some_and(|(_, p)| p != at) {
            return None; // promised to a newer claim meanwhile
        }
        let theirs = best.as_ref().map(|b| Ver::new(b.epoch, b.version));
        let newest = match (own.map(|o| o.0), theirs) {
            (Some(o), Some(t)) => Some(o.max(t)),
            (o, t) => o.or(t),
        }?;
        if removed.is_some_and(|r| r >= newest) {
            // Removed after the newest live copy: the removal is final.
            if let Some((_, s)) = self.map.remove(&key) {
                self.counters.active.dec();
                self.tomb(key, s.ver(), now);
                self.record(&Change::Remove {
                    key: key.0,
                    epoch: s.epoch,
                    version: s.version,
                });
            }
            return None;
        }
        if theirs == Some(newest) && own.is_none_or(|o| o.0 < newest) {
            // A voter's copy is newer: it replaces ours whole (ours may be behind by
            // writes this node never saw).
            let taken = best.as_ref().and_then(|b| Session::from_full(b, now))?;
            if self.map.insert(key, taken).is_none() {
                self.counters.active.inc();
            }
        }
        let mut s = self.map.get_mut(&key)?;
        Some(self.become_owner(&mut s, key, at, newest.version + 1, now, emit))
    }

    /// Forgets a promise that did not lead to an installed claim, so the session can be
    /// served again (only if nobody promised a newer one since).
    pub fn withdraw(&self, key: Key, at: u64) {
        if let Some(mut s) = self.map.get_mut(&key) {
            if s.promised == at {
                s.promised = 0;
            }
        }
    }

    /// A draining owner handed `key` to `to`, which confirmed it took it over: this copy
    /// routes there from now on. Its epoch stays the older one, so `to`'s changes replace
    /// it; with BackupManager (no copy here any more in `to`'s eyes) it only ages out.
    pub fn release(&self, key: Key, to: &str) {
        if let Some(mut s) = self.map.get_mut(&key) {
            if *s.owner == *self.route {
                s.owner = Arc::from(to);
            }
        }
    }

    /// (key, epoch, version) of every session held.
    pub fn digest(&self) -> Digest {
        let mut out = Vec::with_capacity(self.map.len());
        self.map
            .each(|k, _, at| out.push((k.0, at.epoch, at.version)));
        out
    }

    /// A member's answer to `digest`: everything it holds that is newer than the entry.
    pub fn fresher(&self, digest: &[(u128, u64, u64)], now: Instant) -> Fresher {
        let mut out = Fresher::default();
        for &(key, e, v) in digest {
            let k = Key(key);
            let theirs = Ver::new(e, v);
            if let Some((held, promise, promised)) = self.map.glance(&k, now) {
                if held > theirs {
                    if let Some(full) = self.map.peek(&k, |s| s.full(k, now)) {
                        out.changes.push(Change::Full(full));
                    }
                } else if promise > e {
                    out.promised.push((key, promised));
                }
                continue;
            }
            if let Some(t) = self.tombs.get(&k).map(|t| t.0).filter(|t| *t >= theirs) {
                out.changes.push(Change::Remove {
                    key,
                    epoch: t.epoch,
                    version: t.version,
                });
            }
        }
        out
    }

    /// Applies a member's [`Fresher`] answer: newer copies and removals by the apply rule
    /// (only for sessions still held, so no node gains a copy it was not meant to hold),
    /// and promises. Returns how many sessions changed.
    pub fn catch_up(&self, f: Fresher, now: Instant) -> usize {
        let mut n = 0;
        for c in f.changes {
            let applied = match c {
                Change::Full(full) => self.refresh(full, now),
                other => self.apply_remote(&other, now),
            };
            n += usize::from(applied == super::Remote::Applied);
        }
        for (key, at) in f.promised {
            if let Some(mut s) = self.map.get_mut(&Key(key)) {
                if at > s.promise(now) && at > s.epoch {
                    s.promised = at;
                    s.promised_at = now;
                    n += 1;
                }
            }
        }
        n
    }

    /// The owner recorded for a session, if held (tests, admin).
    pub fn owner_of(&self, key: Key) -> Option<Arc<str>> {
        self.map.get(&key).map(|s| s.owner.clone())
    }
}
