//! The session store of one node: a `DashMap` from base id to [`Session`].
//!
//! Every change to a session happens inside one map guard (synchronous, never across an
//! `.await`), so concurrent requests of one session apply their directives atomically and
//! distinct attributes never clobber each other: each change starts from the current state,
//! not from the copy the backend saw.
//!
//! Each session carries its owner and an (epoch, version) pair for the cluster (SPEC 4.6):
//! `version` grows by one per change; `epoch` by one per change of owner.
//!
//! Memory: the key is the id's 16 random bytes and the attributes are kept only as their
//! canonical ASCII JSON (what every request sends to the backend); a write merges its
//! change into that text ([`super::attrs`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Map, Value};

use super::attrs;
use super::id::{self, Key};
use super::protocol::{DirectiveError, Directives};
use crate::cluster::messages::{Change, FullSession};
use crate::cluster::replication::apply::{decide, Decision, Kind, Ver};
use crate::metrics::Metrics;

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
}

impl Session {
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
    pub rendered: HeaderValue,
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

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Directive(#[from] DirectiveError),
    #[error("session limit reached: max_active_sessions = {0}")]
    Limit(usize),
    #[error("cannot generate a session id: {0}")]
    Random(getrandom::Error),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub default_max_inactive: Duration,
    pub max_session_bytes: usize,
    /// 0 = unlimited.
    pub max_active_sessions: usize,
}

struct Counters {
    active: Gauge,
    created: Counter,
    expired: Counter,
    invalidated: Counter,
    renewed: Counter,
}

/// How long a removed session's (epoch, version) is remembered, so a late or replayed
/// change cannot bring it back. Mesh connections deliver in order; this only has to outlive
/// a reconnect and its resent batches.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

/// Receives the changes the owner makes, in order per session (called under its guard).
pub type Emit<'a> = &'a mut dyn FnMut(Change);

/// Keys are CSPRNG output made by a node, never chosen by a client (a client's id only looks
/// one up), so a fast seeded hash is enough; SipHash was a tenth of a sticky request's cost.
type KeyMap<V> = DashMap<Key, V, foldhash::fast::RandomState>;

pub struct SessionStore {
    map: KeyMap<Session>,
    tombs: KeyMap<(Ver, Instant)>,
    route: Arc<str>,
    limits: Limits,
    counters: Counters,
}

impl SessionStore {
    pub fn new(route: &str, limits: Limits, metrics: &Metrics) -> Self {
        let counters = Counters {
            active: Gauge::default(),
            created: Counter::default(),
            expired: Counter::default(),
            invalidated: Counter::default(),
            renewed: Counter::default(),
        };
        metrics.with_registry(|r| {
            r.register(
                "sessions_active",
                "Sessions held by this node",
                counters.active.clone(),
            );
            r.register(
                "sessions_created",
                "Sessions created",
                counters.created.clone(),
            );
            r.register(
                "sessions_expired",
                "Sessions expired (idle past max_inactive)",
                counters.expired.clone(),
            );
            r.register(
                "sessions_invalidated",
                "Sessions ended by the backend",
                counters.invalidated.clone(),
            );
            r.register(
                "sessions_renewed",
                "Session ids renewed",
                counters.renewed.clone(),
            );
        });
        Self {
            map: KeyMap::default(),
            tombs: KeyMap::default(),
            route: Arc::from(route),
            limits,
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
        self.map.is_empty()
    }

    /// Sessions whose owner is this node.
    pub fn owned(&self) -> usize {
        self.map
            .iter()
            .filter(|e| *e.value().owner == *self.route)
            .count()
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
        if e.expired(now, &self.route) {
            drop(e);
            self.expire(key, now, emit);
            return Err(None);
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
            rendered: e.rendered.clone(),
        })
    }

    /// Failover (SPEC 4.4.3): this node becomes the owner with a higher epoch; the new
    /// ownership goes to the cluster as a full copy. Atomic per session: concurrent
    /// takeovers on this node raise the epoch once. `None` if the session is gone.
    pub fn take_over(&self, key: Key, now: Instant, emit: Emit) -> Option<Found> {
        let mut s = self.map.get_mut(&key)?;
        if s.expired(now, &self.route) {
            return None;
        }
        if *s.owner != *self.route {
            s.owner = self.route.clone();
            s.epoch += 1;
            s.version += 1;
            s.last_access = now;
            s.last_replicated = now;
            emit(Change::Full(s.full(key, now)));
        }
        Some(Found {
            owner: s.owner.clone(),
            rendered: s.rendered.clone(),
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
        if d.invalidate {
            if let Some(k) = key {
                if let Some((_, s)) = self.map.remove(&k) {
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
        let max = self.limits.max_active_sessions;
        if max > 0 && self.map.len() >= max {
            return Err(SessionError::Limit(max));
        }
        let rendered = self.merged(&HeaderValue::from_static("{}"), d.set.as_deref(), &d.remove)?;
        let key = id::new_key().map_err(SessionError::Random)?;
        let s = Session {
            owner: self.route.clone(),
            epoch: 1,
            version: 1,
            rendered,
            created: SystemTime::now(),
            last_access: now,
            max_inactive: d.max_inactive.unwrap_or(self.limits.default_max_inactive),
            last_replicated: now,
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
            self.limits.max_session_bytes,
        )
    }

    /// Applies a change replicated by the session's owner (SPEC 4.6, [`decide`]).
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
            dashmap::Entry::Occupied(o) => Some(o.get().ver()),
            dashmap::Entry::Vacant(_) => None,
        };
        match decide(held, tomb, kind) {
            Decision::Stale => return Remote::Stale,
            Decision::Gap => return Remote::Gap,
            Decision::Fenced => return Remote::Fenced,
            Decision::Apply => {}
        }
        match change {
            Change::Full(f) => {
                let Ok(rendered) = HeaderValue::from_str(&f.attrs) else {
                    return Remote::Stale;
                };
                let s = Session {
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
                };
                match entry {
                    dashmap::Entry::Occupied(mut o) => {
                        o.insert(s);
                    }
                    dashmap::Entry::Vacant(v) => {
                        v.insert(s);
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
            }
            Change::Touch { .. } => {
                if let dashmap::Entry::Occupied(mut o) = entry {
                    o.get_mut().last_access = now;
                }
            }
            Change::Remove { .. } | Change::Drop { .. } => {
                if let dashmap::Entry::Occupied(o) = entry {
                    o.remove();
                    self.counters.active.dec();
                }
                self.tomb(key, at, now);
            }
        }
        Remote::Applied
    }

    /// A full copy of one session, for a replica that found a gap or for state transfer.
    pub fn full_copy(&self, key: u128, now: Instant) -> Option<FullSession> {
        let k = Key(key);
        self.map.get(&k).map(|s| s.full(k, now))
    }

    /// Every key held now (16 bytes each): state transfer walks these and copies sessions
    /// one chunk at a time, never the whole store at once.
    pub fn keys(&self) -> Vec<u128> {
        self.map.iter().map(|e| e.key().0).collect()
    }

    /// Ends a session this node owns (shutdown with `expire_sessions_on_shutdown`); the
    /// removal is emitted like an invalidation.
    pub fn end_owned(&self, key: u128, now: Instant, emit: Emit) -> bool {
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

    /// (key, owner, epoch, version) of every session held: the BackupManager's rebalance
    /// walks this after a membership change.
    pub fn placements(&self) -> Vec<(u128, Arc<str>, Ver)> {
        self.map
            .iter()
            .map(|e| (e.key().0, e.value().owner.clone(), e.value().ver()))
            .collect()
    }

    /// Keys of the sessions this node owns.
    pub fn owned_keys(&self) -> Vec<u128> {
        self.map
            .iter()
            .filter(|e| *e.value().owner == *self.route)
            .map(|e| e.key().0)
            .collect()
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
        let mut gone = Vec::new();
        self.map.retain(|k, s| {
            let keep = !s.expired(now, &self.route);
            if !keep {
                gone.push((*k, s.ver(), *s.owner == *self.route));
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
        self.tombs
            .retain(|_, t| now.saturating_duration_since(t.1) < TOMBSTONE_TTL);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_bytes: usize, max_active: usize) -> SessionStore {
        SessionStore::new(
            "n1",
            Limits {
                default_max_inactive: Duration::from_secs(1800),
                max_session_bytes: max_bytes,
                max_active_sessions: max_active,
            },
            &Metrics::new(),
        )
    }

    fn set(v: Value) -> Directives {
        Directives {
            set: Some(String::from_utf8(attrs::canonical(v.as_object().unwrap())).unwrap()),
            ..Default::default()
        }
    }

    fn base_of(o: &Outcome) -> String {
        match o {
            Outcome::Created(f) | Outcome::Renewed(f) => f.split('.').next().unwrap().to_string(),
            other => panic!("no id in {other:?}"),
        }
    }

    fn key(base: &str) -> Key {
        Key::from_base(base).unwrap()
    }

    #[test]
    fn create_change_renew_invalidate() {
        let s = store(65536, 0);
        let t0 = Instant::now();
        let created = s
            .apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
            .unwrap();
        let b = base_of(&created);
        assert!(matches!(&created, Outcome::Created(f) if f.ends_with(".n1")));
        assert_eq!(s.get(&b).unwrap().version, 1);
        assert_eq!(
            s.apply(Key::from_base(&b), &set(json!({"b": 2})), t0, &mut |_| {})
                .unwrap(),
            Outcome::Changed
        );
        let sess = s.get(&b).unwrap();
        assert_eq!(sess.version, 2);
        assert_eq!(Value::Object(sess.attributes()), json!({"a": 1, "b": 2}));
        let renew = Directives {
            renew: true,
            ..Default::default()
        };
        let r = s
            .apply(Key::from_base(&b), &renew, t0, &mut |_| {})
            .unwrap();
        let nb = base_of(&r);
        assert_ne!(nb, b);
        assert!(s.get(&b).is_none());
        assert_eq!(
            Value::Object(s.get(&nb).unwrap().attributes()),
            json!({"a": 1, "b": 2})
        );
        let inv = Directives {
            invalidate: true,
            set: Some("{}".into()),
            ..Default::default()
        };
        assert_eq!(
            s.apply(Key::from_base(&nb), &inv, t0, &mut |_| {}).unwrap(),
            Outcome::Invalidated
        );
        assert!(s.is_empty());
    }

    #[test]
    fn expiry_uses_the_monotonic_clock() {
        let s = store(65536, 0);
        let t0 = Instant::now();
        let b = base_of(
            &s.apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
                .unwrap(),
        );
        assert!(s
            .access(key(&b), t0 + Duration::from_secs(1799), &mut |_| {})
            .is_some());
        // Access renewed the idle clock.
        assert!(s
            .access(key(&b), t0 + Duration::from_secs(1799 + 1800), &mut |_| {})
            .is_some());
        assert!(s
            .access(key(&b), t0 + Duration::from_secs(1799 + 3601), &mut |_| {})
            .is_none());
        assert!(s.is_empty());
        let b = base_of(
            &s.apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
                .unwrap(),
        );
        let short = Directives {
            max_inactive: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        s.apply(Key::from_base(&b), &short, t0, &mut |_| {})
            .unwrap();
        assert_eq!(s.sweep(t0 + Duration::from_secs(4), &mut |_| {}), 0);
        assert_eq!(s.sweep(t0 + Duration::from_secs(6), &mut |_| {}), 1);
    }

    #[test]
    fn limits_are_errors_and_leave_the_session_unchanged() {
        let s = store(20, 1);
        let t0 = Instant::now();
        let b = base_of(
            &s.apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
                .unwrap(),
        );
        let err = s
            .apply(
                Key::from_base(&b),
                &set(json!({"big": "xxxxxxxxxxxxxxxxxxxx"})),
                t0,
                &mut |_| {},
            )
            .unwrap_err();
        assert!(matches!(
            err,
            SessionError::Directive(DirectiveError::TooLarge { .. })
        ));
        assert_eq!(
            Value::Object(s.get(&b).unwrap().attributes()),
            json!({"a": 1})
        );
        assert_eq!(s.get(&b).unwrap().version, 1);
        let err = s
            .apply(None, &set(json!({"a": 2})), t0, &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, SessionError::Limit(1)));
    }

    #[test]
    fn a_replica_holds_the_owners_bytes_and_refuses_a_malformed_delta() {
        let owner = store(65536, 0);
        let replica = SessionStore::new(
            "n2",
            Limits {
                default_max_inactive: Duration::from_secs(1800),
                max_session_bytes: 65536,
                max_active_sessions: 0,
            },
            &Metrics::new(),
        );
        let t0 = Instant::now();
        let mut changes = Vec::new();
        let b = base_of(
            &owner
                .apply(None, &set(json!({"z": 1, "a": [1.5]})), t0, &mut |c| {
                    changes.push(c)
                })
                .unwrap(),
        );
        for d in [
            set(json!({"m": {"x": "é"}, "z": 2})),
            Directives {
                remove: vec!["a".into()],
                ..set(json!({"b": null}))
            },
        ] {
            owner
                .apply(Key::from_base(&b), &d, t0, &mut |c| changes.push(c))
                .unwrap();
        }
        for c in &changes {
            assert_eq!(replica.apply_remote(c, t0), Remote::Applied, "{c:?}");
        }
        let (o, r) = (owner.get(&b).unwrap(), replica.get(&b).unwrap());
        assert_eq!(o.rendered, r.rendered);
        assert_eq!(
            o.rendered.to_str().unwrap(),
            r#"{"b":null,"m":{"x":"\u00e9"},"z":2}"#
        );
        // A delta whose text is not a JSON object: a gap, the copy unchanged.
        for bad in ["{bad", r#"{"a":tru}"#, "[1]", r#"{"a":1"#] {
            let c = Change::Delta {
                key: key(&b).0,
                epoch: 1,
                version: r.version + 1,
                set: Some(bad.into()),
                remove: vec![],
                max_inactive_ms: None,
            };
            assert_eq!(replica.apply_remote(&c, t0), Remote::Gap, "{bad}");
            assert_eq!(replica.get(&b).unwrap().rendered, o.rendered);
        }
    }
}
