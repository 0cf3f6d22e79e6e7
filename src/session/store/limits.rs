//! A store's limits (`[session] max_inactive`, `max_session_bytes`, `max_active_sessions`),
//! read on every write and replaced by a reload.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub default_max_inactive: Duration,
    pub max_session_bytes: usize,
    /// 0 = unlimited.
    pub max_active_sessions: usize,
}

/// [`SessionLimits`] as the store reads them on every write: a reload sets new ones
/// ([`SessionStore::set_limits`]); sessions already held keep their own timeout.
pub(super) struct LiveLimits {
    default_max_inactive_ms: std::sync::atomic::AtomicU64,
    max_session_bytes: std::sync::atomic::AtomicUsize,
    max_active_sessions: std::sync::atomic::AtomicUsize,
}

impl LiveLimits {
    pub(super) fn new(l: &SessionLimits) -> Self {
        use std::sync::atomic::{AtomicU64, AtomicUsize};
        Self {
            default_max_inactive_ms: AtomicU64::new(l.default_max_inactive.as_millis() as u64),
            max_session_bytes: AtomicUsize::new(l.max_session_bytes),
            max_active_sessions: AtomicUsize::new(l.max_active_sessions),
        }
    }

    pub(super) fn set(&self, l: &SessionLimits) {
        use std::sync::atomic::Ordering::Relaxed;
        self.default_max_inactive_ms
            .store(l.default_max_inactive.as_millis() as u64, Relaxed);
        self.max_session_bytes.store(l.max_session_bytes, Relaxed);
        self.max_active_sessions
            .store(l.max_active_sessions, Relaxed);
    }

    pub(super) fn max_inactive(&self) -> Duration {
        Duration::from_millis(
            self.default_max_inactive_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub(super) fn max_bytes(&self) -> usize {
        self.max_session_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn max_active(&self) -> usize {
        self.max_active_sessions
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
