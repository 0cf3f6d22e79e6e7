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
//! rendered ASCII JSON (what every request sends to the backend); they are parsed into a
//! map only when a write merges into them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Map, Value};

use super::id::{self, Key};
use super::json::to_ascii_json;
use super::protocol::{DirectiveError, Directives};
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
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_access) > self.max_inactive
    }

    /// The attributes, parsed.
    pub fn attributes(&self) -> Map<String, Value> {
        parse_attrs(&self.rendered)
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

pub struct SessionStore {
    map: DashMap<Key, Session>,
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
            map: DashMap::new(),
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

    /// Looks a session up for a request and records the access. An expired session is
    /// removed and reported absent.
    pub fn access(&self, base: &str, now: Instant) -> Option<Found> {
        let key = Key::from_base(base)?;
        let mut e = self.map.get_mut(&key)?;
        if e.expired(now) {
            drop(e);
            self.remove_if_expired(key, now);
            return None;
        }
        e.last_access = now;
        Some(Found {
            owner: e.owner.clone(),
            rendered: e.rendered.clone(),
        })
    }

    fn remove_if_expired(&self, key: Key, now: Instant) {
        if self.map.remove_if(&key, |_, s| s.expired(now)).is_some() {
            self.counters.expired.inc();
            self.counters.active.dec();
        }
    }

    /// Applies a backend's directives to the session `base` (the one the request carried,
    /// if it was live), creating one when `-Set` arrives without a session.
    pub fn apply(
        &self,
        base: Option<&str>,
        d: &Directives,
        now: Instant,
    ) -> Result<Outcome, SessionError> {
        let key = base.and_then(Key::from_base);
        if d.invalidate {
            if let Some(k) = key {
                if self.map.remove(&k).is_some() {
                    self.counters.invalidated.inc();
                    self.counters.active.dec();
                }
            }
            return Ok(Outcome::Invalidated);
        }
        let live = key.filter(|k| self.map.get(k).is_some_and(|s| !s.expired(now)));
        let Some(k) = live else {
            return self.create(d, now);
        };
        let mut changed = false;
        if d.changes_data() {
            let Some(mut s) = self.map.get_mut(&k) else {
                return self.create(d, now);
            };
            s.rendered = self.merged(&s.rendered, d)?;
            if let Some(mi) = d.max_inactive {
                s.max_inactive = mi;
            }
            s.version += 1;
            s.last_access = now;
            changed = true;
        }
        if d.renew {
            let new_key = id::new_key().map_err(SessionError::Random)?;
            let Some((_, mut s)) = self.map.remove(&k) else {
                return Ok(Outcome::Unchanged);
            };
            s.version += 1;
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
    fn create(&self, d: &Directives, now: Instant) -> Result<Outcome, SessionError> {
        if d.set.is_none() {
            return Ok(Outcome::Unchanged);
        }
        let max = self.limits.max_active_sessions;
        if max > 0 && self.map.len() >= max {
            return Err(SessionError::Limit(max));
        }
        let rendered = self.merged(&HeaderValue::from_static("{}"), d)?;
        let key = id::new_key().map_err(SessionError::Random)?;
        let s = Session {
            owner: self.route.clone(),
            epoch: 1,
            version: 1,
            rendered,
            created: SystemTime::now(),
            last_access: now,
            max_inactive: d.max_inactive.unwrap_or(self.limits.default_max_inactive),
        };
        self.map.insert(key, s);
        self.counters.created.inc();
        self.counters.active.inc();
        Ok(Outcome::Created(id::full(&key.base(), &self.route)))
    }

    /// `current` with `-Set` merged and `-Remove` applied, rendered and size-checked.
    fn merged(&self, current: &HeaderValue, d: &Directives) -> Result<HeaderValue, DirectiveError> {
        let mut attrs = parse_attrs(current);
        if let Some(set) = &d.set {
            for (k, v) in set {
                attrs.insert(k.clone(), v.clone());
            }
        }
        for k in &d.remove {
            attrs.remove(k);
        }
        let bytes = to_ascii_json(&attrs);
        if bytes.len() > self.limits.max_session_bytes {
            return Err(DirectiveError::TooLarge {
                bytes: bytes.len(),
                limit: self.limits.max_session_bytes,
            });
        }
        // ASCII JSON without control characters is always a legal header value.
        // An exact-size buffer: a Vec with spare capacity would cost a second allocation.
        HeaderValue::from_maybe_shared(Bytes::from(bytes.into_boxed_slice())).map_err(|_| {
            DirectiveError::NotText {
                header: "attributes".into(),
            }
        })
    }

    /// The admin view of a session (`GET /sessions/<base>`); does not count as an access.
    pub fn info(&self, base: &str, now: Instant) -> Option<Value> {
        let s = self.map.get(&Key::from_base(base)?)?;
        if s.expired(now) {
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

    /// Removes every expired session; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut n = 0;
        self.map.retain(|_, s| {
            let keep = !s.expired(now);
            n += usize::from(!keep);
            keep
        });
        if n > 0 {
            self.counters.expired.inc_by(n as u64);
            self.counters.active.dec_by(n as i64);
        }
        n
    }

    /// A copy of one session (tests, admin and, later, replication).
    pub fn get(&self, base: &str) -> Option<Session> {
        self.map.get(&Key::from_base(base)?).map(|s| s.clone())
    }
}

/// The attributes of a rendered session; the store only renders JSON objects.
fn parse_attrs(rendered: &HeaderValue) -> Map<String, Value> {
    serde_json::from_slice(rendered.as_bytes()).unwrap_or_default()
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
            set: Some(v.as_object().unwrap().clone()),
            ..Default::default()
        }
    }

    fn base_of(o: &Outcome) -> String {
        match o {
            Outcome::Created(f) | Outcome::Renewed(f) => f.split('.').next().unwrap().to_string(),
            other => panic!("no id in {other:?}"),
        }
    }

    #[test]
    fn create_change_renew_invalidate() {
        let s = store(65536, 0);
        let t0 = Instant::now();
        let created = s.apply(None, &set(json!({"a": 1})), t0).unwrap();
        let b = base_of(&created);
        assert!(matches!(&created, Outcome::Created(f) if f.ends_with(".n1")));
        assert_eq!(s.get(&b).unwrap().version, 1);
        assert_eq!(
            s.apply(Some(&b), &set(json!({"b": 2})), t0).unwrap(),
            Outcome::Changed
        );
        let sess = s.get(&b).unwrap();
        assert_eq!(sess.version, 2);
        assert_eq!(Value::Object(sess.attributes()), json!({"a": 1, "b": 2}));
        let renew = Directives {
            renew: true,
            ..Default::default()
        };
        let r = s.apply(Some(&b), &renew, t0).unwrap();
        let nb = base_of(&r);
        assert_ne!(nb, b);
        assert!(s.get(&b).is_none());
        assert_eq!(
            Value::Object(s.get(&nb).unwrap().attributes()),
            json!({"a": 1, "b": 2})
        );
        let inv = Directives {
            invalidate: true,
            set: Some(Map::new()),
            ..Default::default()
        };
        assert_eq!(s.apply(Some(&nb), &inv, t0).unwrap(), Outcome::Invalidated);
        assert!(s.is_empty());
    }

    #[test]
    fn expiry_uses_the_monotonic_clock() {
        let s = store(65536, 0);
        let t0 = Instant::now();
        let b = base_of(&s.apply(None, &set(json!({"a": 1})), t0).unwrap());
        assert!(s.access(&b, t0 + Duration::from_secs(1799)).is_some());
        // Access renewed the idle clock.
        assert!(s
            .access(&b, t0 + Duration::from_secs(1799 + 1800))
            .is_some());
        assert!(s
            .access(&b, t0 + Duration::from_secs(1799 + 3601))
            .is_none());
        assert!(s.is_empty());
        let b = base_of(&s.apply(None, &set(json!({"a": 1})), t0).unwrap());
        let short = Directives {
            max_inactive: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        s.apply(Some(&b), &short, t0).unwrap();
        assert_eq!(s.sweep(t0 + Duration::from_secs(4)), 0);
        assert_eq!(s.sweep(t0 + Duration::from_secs(6)), 1);
    }

    #[test]
    fn limits_are_errors_and_leave_the_session_unchanged() {
        let s = store(20, 1);
        let t0 = Instant::now();
        let b = base_of(&s.apply(None, &set(json!({"a": 1})), t0).unwrap());
        let err = s
            .apply(Some(&b), &set(json!({"big": "xxxxxxxxxxxxxxxxxxxx"})), t0)
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
        let err = s.apply(None, &set(json!({"a": 2})), t0).unwrap_err();
        assert!(matches!(err, SessionError::Limit(1)));
    }
}
