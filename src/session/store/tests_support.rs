//! What the store's unit tests share.

use super::*;

pub(super) fn store(max_bytes: usize, max_active: usize) -> SessionStore {
    SessionStore::new("n1", limits(max_bytes, max_active), &Metrics::new())
}

pub(super) fn limits(max_bytes: usize, max_active: usize) -> SessionLimits {
    SessionLimits {
        default_max_inactive: Duration::from_secs(1800),
        max_session_bytes: max_bytes,
        max_active_sessions: max_active,
    }
}

pub(super) fn set(v: Value) -> Directives {
    Directives {
        set: Some(String::from_utf8(attrs::canonical(v.as_object().unwrap())).unwrap()),
        ..Default::default()
    }
}

pub(super) fn base_of(o: &Outcome) -> String {
    match o {
        Outcome::Created(f) | Outcome::Renewed(f) => f.split('.').next().unwrap().to_string(),
        other => panic!("no id in {other:?}"),
    }
}

pub(super) fn key(base: &str) -> Key {
    Key::from_base(base).unwrap()
}
