//! The session store of one node: a `DashMap` from base id to [`Session`].
//!
//! Every change to a session happens inside one map guard (synchronous, never across an
//! `.await`), so concurrent requests of one session apply their directives atomically and
//! distinct attributes never clobber each other: each change starts from the current state,
//! not from the copy the backend saw.
//!
//! Each session carries its owner and an (epoch, version) pair for the cluster (REFERENCE 4.6):
//! `version` grows by one per change; `epoch` rises with each change of owner, minted unique
//! cluster-wide ([`super::epoch`]); a claimant's promise fences older epochs (`claim`).
//!
//! Memory: the key is the id's 16 random bytes and the attributes only their canonical
//! ASCII JSON (what every request sends); a write merges into that text ([`super::attrs`]).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use http::HeaderValue;
use serde_json::{json, Map, Value};

use super::apply::Ver;
use super::attrs;
use super::change::{Change, FullSession};
use super::error::{DirectiveError, SessionError};
use super::id::{self, Key};
use super::journal::Journal;
use super::protocol::Directives;
use crate::metrics::Metrics;

mod counters;
use counters::Counters;
mod limits;
use limits::LiveLimits;
pub use limits::SessionLimits;
mod claim;
mod durable;
mod replica;
mod swap;
pub(crate) use claim::{Fresher, Promise};
pub(crate) use replica::Remote;
#[cfg(test)]
mod swap_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_support;

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    pub owner: Arc<str>,
    pub epoch: u64,
    pub version: u64,
    /// The attributes as an ASCII JSON object, ready to send as the `X-Session` header; its
    /// length is what `max_session_bytes` limits.
    rendered: HeaderValue,
    pub created: SystemTime,
    last_access: Instant,
    pub max_inactive: Duration,
    /// When the owner last told replicas about an access (touches are rate-limited).
    last_replicated: Instant,
    /// The highest epoch this node promised to a claimant (0: none), and when: while the
    /// promise lives ([`PROMISE_TTL`]), changes of older epochs are fenced and, if it is
    /// above `epoch`, the session is moving. With no promise (0), `promised_at` is when
    /// the session came into memory: the swap leaves it there a while ([`swap`]).
    promised: u64,
    promised_at: Instant,
}

impl Session {
    /// The epoch promised to a claimant, while the promise lives (0: none).
    fn promise(&self, now: Instant) -> u64 {
        if self.promised != 0 && now.saturating_duration_since(self.promised_at) < PROMISE_TTL {
            self.promised
        } else {
            0
        }
    }

    /// A replica keeps a session a quarter longer than the owner: touches arrive at most
    /// every max_inactive/4, so the owner's expiry (which it replicates) decides.
    fn expired(&self, now: Instant, me: &str) -> bool {
        let limit = if *self.owner == *me {
            self.max_inactive
        } else {
            self.max_inactive + self.max_inactive / 4
        };
        now.saturating_duration_since(self.last_access) > limit
    }

    /// The attributes, parsed.
    pub fn attributes(&self) -> Map<String, Value> {
        attrs::parse(self.rendered.as_bytes())
    }

    pub fn ver(&self) -> Ver {
        Ver::new(self.epoch, self.version)
    }

    fn full(&self, key: Key, now: Instant) -> FullSession {
        FullSession {
            key: key.0,
            owner: self.owner.to_string(),
            epoch: self.epoch,
            version: self.version,
            attrs: String::from_utf8_lossy(self.rendered.as_bytes()).into_owned(),
            max_inactive_ms: self.max_inactive.as_millis() as u64,
            idle_ms: now.saturating_duration_since(self.last_access).as_millis() as u64,
        }
    }
}

/// What a request needs of a live session.
#[derive(Debug, Clone)]
pub struct Found {
    pub owner: Arc<str>,
    /// The owner's epoch the request is planned with: its write is applied only while the
    /// session is still this node's at this epoch ([`SessionStore::apply_planned`]).
    pub epoch: u64,
    pub rendered: HeaderValue,
}

/// A request's session as it was planned: the key, and the owner's epoch it was read at
/// (`None`: not checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub key: Key,
    pub epoch: Option<u64>,
}

/// The result of applying a response's directives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to tell the client.
    Unchanged,
    /// A session was created: the client gets this full id.
    Created(String),
    /// Attributes or timeout changed; the id stays.
    Changed,
    /// New base id, same data: the client gets this full id.
    Renewed(String),
    /// The session is gone: the cookie is cleared.
    Invalidated,
}

/// How long a removed session's (epoch, version) is remembered, so a late or replayed
/// change cannot bring it back. Mesh connections deliver in order; this only has to outlive
/// a reconnect and its resent batches.
pub(super) const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

/// The owner a copy reports while a claim on it is under way: no member has this route,
/// so routing treats the session as having lost its owner and sends it to the successor.
pub(super) const MOVING: &str = "";

/// How long a voter's promise fences the old owner. A claimant installs within half of it
/// or gives up, so a claim that failed (a minority granted it) blocks a live owner's
/// writes at those voters for this long at most.
pub(crate) const PROMISE_TTL: Duration = Duration::from_secs(4);

/// Receives the changes the owner makes, in order per session (called under its guard).
pub(super) type Emit<'a> = &'a mut dyn FnMut(Change);

/// Keys are CSPRNG output made by a node, never chosen by a client (a client's id only looks
/// one up), so a fast seeded hash is enough; SipHash was a tenth of a sticky request's cost.
pub(super) type KeyMap<V> = DashMap<Key, V, foldhash::fast::RandomState>;

pub struct SessionStore {
    map: swap::Sessions,
    tombs: KeyMap<(Ver, Instant)>,
    /// How long a removal is remembered, in ms (longer with a durable tier).
    tomb_ttl_ms: std::sync::atomic::AtomicU64,
    /// The durable tier, once the node loaded its sessions (REFERENCE 4.11); whether that
    /// load found anything.
    journal: OnceLock<Arc<dyn Journal>>,
    from_disk: std::sync::atomic::AtomicBool,
    route: Arc<str>,
    /// This node's epoch tag ([`super::epoch`]).
    tag: u64,
    limits: LiveLimits,
    counters: Counters,
}

impl SessionStore {
    /// New limits from a reload: they apply to the writes and the sessions made from now.
    pub fn set_limits(&self, limits: &SessionLimits) {
        self.limits.set(limits);
    }

    pub fn new(route: &str, limits: SessionLimits, metrics: &Metrics) -> Self {
        let map = swap::Sessions::new(Arc::from(route));
        let counters = Counters::register(metrics, &map);
        Self {
            map,
            tombs: KeyMap::default(),
            tomb_ttl_ms: std::sync::atomic::AtomicU64::new(TOMBSTONE_TTL.as_millis() as u64),
            journal: OnceLock::new(),
            from_disk: std::sync::atomic::AtomicBool::new(false),
            route: Arc::from(route),
            tag: super::epoch::tag(route),
            limits: LiveLimits::new(&limits),
            counters,
        }
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Sessions whose owner is this node.
    pub fn owned(&self) -> usize {
        let mut n = 0;
        self.map
            .each(|_, owner, _| n += usize::from(**owner == *self.route));
        n
    }

    /// Looks a session up for a request and records the access (replicated as a touch at
    /// most every max_inactive/4 by the owner). An expired session is removed and reported
    /// absent.
    pub fn access(&self, key: Key, now: Instant, emit: Emit) -> Option<Found> {
        self.access_where(key, now, emit, false).ok()
    }

    /// [`SessionStore::access`] if this node owns the session (one map lookup for the
    /// common case of sticky traffic at its owner); else, untouched, the owner its copy
    /// records (`None`: no live copy).
    pub fn access_if_owner(
        &self,
        key: Key,
        now: Instant,
        emit: Emit,
    ) -> Result<Found, Option<Arc<str>>> {
        self.access_where(key, now, emit, true)
    }

    fn access_where(
        &self,
        key: Key,
        now: Instant,
        emit: Emit,
        only_owned: bool,
    ) -> Result<Found, Option<Arc<str>>> {
        let mut e = self.map.get_mut(&key).ok_or(None)?;
        let emit = &mut self.journaled(emit);
        if e.expired(now, &self.route) {
            drop(e);
            self.expire(key, now, emit);
            return Err(None);
        }
        if e.promise(now) > e.epoch && *e.owner == *self.route {
            // This node promised its own session to a claimant: it may not serve it as
            // owner any more (elsewhere the copy's owner still routes).
            return Err(Some(Arc::from(MOVING)));
        }
        let owned = *e.owner == *self.route;
        if only_owned && !owned {
            return Err(Some(e.owner.clone()));
        }
        e.last_access = now;
        if owned && now.saturating_duration_since(e.last_replicated) >= e.max_inactive / 4 {
            e.last_replicated = now;
            emit(Change::Touch {
                key: key.0,
                epoch: e.epoch,
                version: e.version,
            });
        }
        Ok(Found {
            owner: e.owner.clone(),
            epoch: e.epoch,
            rendered: e.rendered.clone(),
        })
    }

    fn expire(&self, key: Key, now: Instant, emit: Emit) {
        let removed = self.map.remove_if(&key, |_, s| s.expired(now, &self.route));
        if let Some((_, s)) = removed {
            self.counters.expired.inc();
            self.counters.active.dec();
            self.tomb(key, s.ver(), now);
            // Only the owner's expiry is news for the cluster.
            if *s.owner == *self.route {
                emit(Change::Remove {
                    key: key.0,
                    epoch: s.epoch,
                    version: s.version,
                });
            }
        }
    }

    fn tomb(&self, key: Key, at: Ver, now: Instant) {
        let mut t = self.tombs.entry(key).or_insert((at, now));
        if at >= t.0 {
            *t = (at, now);
        }
    }

    /// Applies a backend's directives to the session `base` (the one the request carried,
    /// if it was live), creating one when `-Set` arrives without a session. Each change is
    /// passed to `emit` while the session is still locked.
    pub fn apply(
        &self,
        key: Option<Key>,
        d: &Directives,
        now: Instant,
        emit: Emit,
    ) -> Result<Outcome, SessionError> {
        self.apply_planned(key.map(|key| Planned { key, epoch: None }), d, now, emit)
    }

    /// [`SessionStore::apply`] of a request planned against this node's copy at an epoch:
    /// the write lands only if the session is still this node's at that epoch. A session
    /// that moved meanwhile (taken over by another node while this one was paused or cut
    /// off, and the new owner's copy arrived) is [`SessionError::Moved`]: the request's
    /// view is stale, and merging its directives into the new owner's copy would bump the
    /// version inside the new epoch.
    pub fn apply_planned(
        &self,
        planned: Option<Planned>,
        d: &Directives,
        now: Instant,
        emit: Emit,
    ) -> Result<Outcome, SessionError> {
        let emit = &mut self.journaled(emit);
        let key = planned.as_ref().map(|p| p.key);
        let still_ours = |s: &Session| {
            planned
                .as_ref()
                .and_then(|p| p.epoch)
                .is_none_or(|e| *s.owner == *self.route && s.epoch == e && s.promise(now) <= e)
        };
        if d.invalidate {
            if let Some(k) = key {
                let removed = self.map.remove_if(&k, |_, s| still_ours(s));
                if removed.is_none() && self.map.contains_key(&k) {
                    // Still there, so it was not ours to end.
                    return Err(SessionError::Moved);
                }
                if let Some((_, s)) = removed {
                    self.counters.invalidated.inc();
                    self.counters.active.dec();
                    self.tomb(k, s.ver(), now);
                    emit(Change::Remove {
                        key: k.0,
                        epoch: s.epoch,
                        version: s.version,
                    });
                }
            }
            return Ok(Outcome::Invalidated);
        }
        let live = key.and_then(|k| {
            self.map
                .get_mut(&k)
                .filter(|s| !s.expired(now, &self.route))
                .map(|s| (k, s))
        });
        let Some((k, mut s)) = live else {
            return self.create(d, now, emit);
        };
        if !still_ours(&s) {
            return Err(SessionError::Moved);
        }
        let mut changed = false;
        if d.changes_data() {
            s.rendered = self.merged(&s.rendered, d.set.as_deref(), &d.remove)?;
            if let Some(mi) = d.max_inactive {
                s.max_inactive = mi;
            }
            s.version += 1;
            s.last_access = now;
            s.last_replicated = now;
            changed = true;
            if !d.renew {
                emit(Change::Delta {
                    key: k.0,
                    epoch: s.epoch,
                    version: s.version,
                    set: d.set.clone(),
                    remove: d.remove.clone(),
                    max_inactive_ms: d.max_inactive.map(|m| m.as_millis() as u64),
                });
            }
        }
        // Unlocked before the renewal moves the session to its new key.
        drop(s);
        if d.renew {
            let new_key = id::new_key().map_err(SessionError::Random)?;
            let Some((_, mut s)) = self.map.remove(&k) else {
                return Ok(Outcome::Unchanged);
            };
            s.version += 1;
            s.last_replicated = now;
            // An id change travels as: the old id removed, the session under its new id.
            self.tomb(k, s.ver(), now);
            emit(Change::Remove {
                key: k.0,
                epoch: s.epoch,
                version: s.version,
            });
            emit(Change::Full(s.full(new_key, now)));
            self.map.insert(new_key, s);
            self.counters.renewed.inc();
            return Ok(Outcome::Renewed(id::full(&new_key.base(), &self.route)));
        }
        Ok(if changed {
            Outcome::Changed
        } else {
            Outcome::Unchanged
        })
    }

    /// A new session from `-Set` (other directives without a session change nothing).
    fn create(&self, d: &Directives, now: Instant, emit: Emit) -> Result<Outcome, SessionError> {
        if d.set.is_none() {
            return Ok(Outcome::Unchanged);
        }
        let max = self.limits.max_active();
        if max > 0 && self.map.len() >= max {
            return Err(SessionError::Limit(max));
        }
        let rendered = self.merged(&HeaderValue::from_static("{}"), d.set.as_deref(), &d.remove)?;
        let key = id::new_key().map_err(SessionError::Random)?;
        let s = Session {
            owner: self.route.clone(),
            epoch: super::epoch::first(self.tag),
            version: 1,
            rendered,
            created: SystemTime::now(),
            last_access: now,
            max_inactive: d.max_inactive.unwrap_or_else(|| self.limits.max_inactive()),
            last_replicated: now,
            promised: 0,
            promised_at: now,
        };
        emit(Change::Full(s.full(key, now)));
        self.map.insert(key, s);
        self.counters.created.inc();
        self.counters.active.inc();
        Ok(Outcome::Created(id::full(&key.base(), &self.route)))
    }

    /// `current` with `set` merged and `remove` applied, rendered and size-checked against
    /// `max_session_bytes`.
    fn merged(
        &self,
        current: &HeaderValue,
        set: Option<&str>,
        remove: &[String],
    ) -> Result<HeaderValue, DirectiveError> {
        attrs::merge(
            current.as_bytes(),
            set.map(str::as_bytes),
            remove,
            self.limits.max_bytes(),
        )
    }

    /// Ends a session this node owns (shutdown with `expire_sessions_on_shutdown`); the
    /// removal is emitted like an invalidation.
    pub fn end_owned(&self, key: u128, now: Instant, emit: Emit) -> bool {
        let emit = &mut self.journaled(emit);
        let k = Key(key);
        let Some((_, s)) = self.map.remove_if(&k, |_, s| *s.owner == *self.route) else {
            return false;
        };
        self.counters.expired.inc();
        self.counters.active.dec();
        self.tomb(k, s.ver(), now);
        emit(Change::Remove {
            key,
            epoch: s.epoch,
            version: s.version,
        });
        true
    }

    /// Keys of the sessions this node owns.
    pub fn owned_keys(&self) -> Vec<u128> {
        let mut out = Vec::new();
        self.map.each(|k, owner, _| {
            if **owner == *self.route {
                out.push(k.0);
            }
        });
        out
    }

    /// The admin view of a session (`GET /sessions/<base>`); does not count as an access.
    pub fn info(&self, base: &str, now: Instant) -> Option<Value> {
        let s = self.map.get(&Key::from_base(base)?)?;
        if s.expired(now, &self.route) {
            return None;
        }
        let created_ms = s
            .created
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Some(json!({
            "id": base,
            "cookie_id": id::full(base, &s.owner),
            "owner": &*s.owner,
            "epoch": s.epoch,
            "version": s.version,
            "attributes": s.attributes(),
            "idle_ms": now.saturating_duration_since(s.last_access).as_millis() as u64,
            "max_inactive_ms": s.max_inactive.as_millis() as u64,
            "created_unix_ms": created_ms,
            "bytes": s.rendered.len(),
        }))
    }

    /// Removes every expired session (the owner's expiries are emitted) and old tombstones;
    /// returns how many sessions expired.
    pub fn sweep(&self, now: Instant, emit: Emit) -> usize {
        let emit = &mut self.journaled(emit);
        let mut gone = Vec::new();
        self.map.resident().retain(|k, s| {
            let keep = !s.expired(now, &self.route);
            if !keep {
                gone.push((*k, s.ver(), *s.owner == *self.route));
            }
            keep
        });
        self.map.swapped().retain(|k, s| {
            let keep = !self.map.swapped_expired(s, now);
            if !keep {
                self.map.forget(s);
                gone.push((*k, s.ver(), *self.map.owner_of(s) == *self.route));
            }
            keep
        });
        for (k, at, owned) in &gone {
            self.tomb(*k, *at, now);
            if *owned {
                emit(Change::Remove {
                    key: k.0,
                    epoch: at.epoch,
                    version: at.version,
                });
            }
        }
        let ttl =
            Duration::from_millis(self.tomb_ttl_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.tombs
            .retain(|_, t| now.saturating_duration_since(t.1) < ttl);
        let n = gone.len();
        if n > 0 {
            self.counters.expired.inc_by(n as u64);
            self.counters.active.dec_by(n as i64);
        }
        n
    }

    /// A copy of one session (tests, admin).
    pub fn get(&self, base: &str) -> Option<Session> {
        self.map.get(&Key::from_base(base)?).map(|s| s.clone())
    }
}
