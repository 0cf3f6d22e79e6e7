//! The replica side of the store: applying a change the session's owner replicated
//! (REFERENCE 4.6, by [`verdict`]), and the copies and key lists replication and state transfer
//! read.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

use super::{attrs, Session, SessionStore};
use crate::session::apply::{verdict, Kind, Ver, Verdict};
use crate::session::change::{Change, FullSession};
use crate::session::id::Key;

/// What a replica did with a replicated change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    Applied,
    Stale,
    /// Not applicable on what this node holds: it needs a full copy from the owner.
    Gap,
    /// From an owner with a lower epoch than this node knows: rejected.
    Fenced,
}

impl Session {
    /// A session from a full copy (`None`: attributes that are no header value).
    pub(super) fn from_full(f: &FullSession, now: Instant) -> Option<Session> {
        let rendered = HeaderValue::from_str(&f.attrs).ok()?;
        Some(Session {
            owner: Arc::from(f.owner.as_str()),
            epoch: f.epoch,
            version: f.version,
            rendered,
            created: SystemTime::now(),
            last_access: now
                .checked_sub(Duration::from_millis(f.idle_ms))
                .unwrap_or(now),
            max_inactive: Duration::from_millis(f.max_inactive_ms),
            last_replicated: now,
            promised: 0,
            promised_at: now,
        })
    }
}

impl SessionStore {
    /// Applies a change replicated by the session's owner (REFERENCE 4.6, [`verdict`]).
    pub fn apply_remote(&self, change: &Change, now: Instant) -> Remote {
        let key = Key(change.key());
        if let Change::Drop { epoch, version, .. } = change {
            // Only a copy this node does not own, and not newer than the sender's.
            let at = Ver::new(*epoch, *version);
            let dropped = self
                .map
                .remove_if(&key, |_, s| *s.owner != *self.route && s.ver() <= at);
            if dropped.is_some() {
                self.counters.active.dec();
                self.record(change);
                return Remote::Applied;
            }
            return Remote::Stale;
        }
        let (kind, at) = match change {
            Change::Full(f) => {
                let v = Ver::new(f.epoch, f.version);
                (Kind::Full(v), v)
            }
            Change::Delta { epoch, version, .. } => {
                let v = Ver::new(*epoch, *version);
                (Kind::Delta(v), v)
            }
            Change::Touch { epoch, version, .. } => {
                let v = Ver::new(*epoch, *version);
                (Kind::Touch(v), v)
            }
            Change::Remove { epoch, version, .. } | Change::Drop { epoch, version, .. } => {
                let v = Ver::new(*epoch, *version);
                (Kind::Remove(v), v)
            }
        };
        let tomb = self.tombs.get(&key).map(|t| t.0);
        // The entry guard makes check-and-apply atomic for this session.
        let entry = self.map.entry(key);
        let held = match &entry {
            dashmap::Entry::Occupied(o) => {
                // Promised to a claimant of a newer epoch: the old owner's changes no
                // longer count here.
                if at.epoch < o.get().promise(now) {
                    return Remote::Fenced;
                }
                Some(o.get().ver())
            }
            dashmap::Entry::Vacant(_) => None,
        };
        match verdict(held, tomb, kind) {
            Verdict::Stale => return Remote::Stale,
            Verdict::Gap => return Remote::Gap,
            Verdict::Fenced => return Remote::Fenced,
            Verdict::Apply => {}
        }
        // Each applied change is recorded while its session is still locked, so the durable
        // tier sees one session's changes in the order they were applied.
        match change {
            Change::Full(f) => {
                let Some(s) = Session::from_full(f, now) else {
                    return Remote::Stale;
                };
                match entry {
                    dashmap::Entry::Occupied(mut o) => {
                        o.insert(s);
                        self.record(change);
                    }
                    dashmap::Entry::Vacant(v) => {
                        let _locked = v.insert(s);
                        self.record(change);
                        self.counters.active.inc();
                    }
                }
            }
            Change::Delta {
                set,
                remove,
                max_inactive_ms,
                ..
            } => {
                let dashmap::Entry::Occupied(mut o) = entry else {
                    return Remote::Gap;
                };
                // A peer's text is checked to be JSON before the text merge copies it.
                if let Some(text) = set {
                    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
                        return Remote::Gap;
                    }
                }
                // The owner checked the size; a replica never refuses what its owner holds.
                let Ok(rendered) = attrs::merge(
                    o.get().rendered.as_bytes(),
                    set.as_deref().map(str::as_bytes),
                    remove,
                    usize::MAX,
                ) else {
                    return Remote::Gap;
                };
                let s = o.get_mut();
                s.rendered = rendered;
                s.version = at.version;
                s.last_access = now;
                if let Some(ms) = max_inactive_ms {
                    s.max_inactive = Duration::from_millis(*ms);
                }
                self.record(change);
            }
            Change::Touch { .. } => {
                if let dashmap::Entry::Occupied(mut o) = entry {
                    o.get_mut().last_access = now;
                    self.record(change);
                }
            }
            Change::Remove { .. } | Change::Drop { .. } => {
                if let dashmap::Entry::Occupied(o) = entry {
                    o.remove();
                    self.counters.active.dec();
                }
                self.tomb(key, at, now);
                self.record(change);
            }
        }
        Remote::Applied
    }

    /// A full copy of one session, for a replica that found a gap or for state transfer.
    pub fn full_copy(&self, key: u128, now: Instant) -> Option<FullSession> {
        let k = Key(key);
        self.map.peek(&k, |s| s.full(k, now))
    }

    /// Every key held now (16 bytes each): state transfer walks these and copies sessions
    /// one chunk at a time, never the whole store at once.
    pub fn keys(&self) -> Vec<u128> {
        let mut out = Vec::with_capacity(self.map.len());
        self.map.each(|k, _, _| out.push(k.0));
        out
    }

    /// (key, owner, epoch, version) of every session held: the BackupManager's rebalance
    /// walks this after a membership change.
    pub fn placements(&self) -> Vec<(u128, Arc<str>, Ver)> {
        let mut out = Vec::with_capacity(self.map.len());
        self.map
            .each(|k, owner, at| out.push((k.0, owner.clone(), at)));
        out
    }

    /// A member's copy of a session whose change it fenced (the answer to a stale owner's
    /// write): applied by the rule only if this node still holds the session, so the old
    /// owner learns the new one and no node gains a copy it was not meant to hold
    /// (BackupManager: owner and one backup only).
    pub fn refresh(&self, full: FullSession, now: Instant) -> Remote {
        if !self.map.contains_key(&Key(full.key)) {
            return Remote::Stale;
        }
        self.apply_remote(&Change::Full(full), now)
    }
}
