//! What a session change is (REFERENCE 4.3, 4.6): the owner's [`Change`]s, in the order it makes
//! them, each carrying the session's (epoch, version) after it. The cluster carries them;
//! replicas apply them by [`super::apply::verdict`].

use serde::{Deserialize, Serialize};

/// A whole session on the wire (create, full copy, state transfer, takeover).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullSession {
    pub key: u128,
    pub owner: String,
    pub epoch: u64,
    pub version: u64,
    /// The attributes as an ASCII JSON object.
    pub attrs: String,
    pub max_inactive_ms: u64,
    /// How long the session has been idle on the sender: the receiver sets its own
    /// monotonic last-access from it (no wall clocks compared).
    pub idle_ms: u64,
}

/// One replicated change; (epoch, version) is the session's after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Full(FullSession),
    /// Only what changed: `set` (a JSON object, merged) then `remove`.
    Delta {
        key: u128,
        epoch: u64,
        version: u64,
        set: Option<String>,
        remove: Vec<String>,
        max_inactive_ms: Option<u64>,
    },
    /// Accessed without change: keeps replicas from expiring it.
    Touch {
        key: u128,
        epoch: u64,
        version: u64,
    },
    /// Invalidated or expired on the owner (also the old id of a renew).
    Remove {
        key: u128,
        epoch: u64,
        version: u64,
    },
    /// BackupManager: this node is no longer the session's backup; forget the copy (no
    /// tombstone: the session lives on).
    Drop {
        key: u128,
        epoch: u64,
        version: u64,
    },
}

impl Change {
    pub fn key(&self) -> u128 {
        match self {
            Change::Full(f) => f.key,
            Change::Delta { key, .. }
            | Change::Touch { key, .. }
            | Change::Remove { key, .. }
            | Change::Drop { key, .. } => *key,
        }
    }

    /// Metric label.
    /// Metric label of each kind, by [`Change::kind_index`].
    pub const KINDS: [&'static str; 5] = ["full", "delta", "touch", "remove", "drop"];

    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    pub fn kind_index(&self) -> usize {
        match self {
            Change::Full(_) => 0,
            Change::Delta { .. } => 1,
            Change::Touch { .. } => 2,
            Change::Remove { .. } => 3,
            Change::Drop { .. } => 4,
        }
    }
}
