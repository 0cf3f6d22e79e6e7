//! The last things that happened to the cluster, as the admin page lists them: members
//! added and removed (a removal for a failed verification is a failover), and sessions
//! taken over. A ring of [`KEPT`]; `/metrics` has the counts.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept.
const KEPT: usize = 32;

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Event {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `member_added`, `member_removed`, `takeover`.
    pub kind: &'static str,
    pub route: String,
    pub detail: String,
}

#[derive(Default)]
pub(super) struct Events {
    ring: Mutex<VecDeque<Event>>,
}

impl Events {
    pub(super) fn push(&self, kind: &'static str, route: &str, detail: String) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == KEPT {
            r.pop_front();
        }
        r.push_back(Event {
            at_ms,
            kind,
            route: route.to_string(),
            detail,
        });
    }

    /// Newest first.
    pub(super) fn recent(&self) -> Vec<Event> {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().rev().cloned().collect()
    }
}
