//! Session replication over the mesh: the DeltaManager and the BackupManager (REFERENCE 4.3,
//! 4.5, 4.6, 4.7).
//!
//! - [`Replicator`] (here): what the sticky layer calls through the cluster: `enqueue`
//!   (under the session's guard, so per-session order holds on every queue) and `settle`
//!   (sync mode: wait for every member's "applied" ack, bounded by `ack_timeout`); the
//!   receiving side, `apply_batch`, which hands each change to the store's apply rule.
//! - `peers`: one peer task per member, following membership events; resync of a member
//!   that comes back.
//! - `peer`: one such task: an ordered queue, a connection with reconnect and backoff,
//!   batches, acks, resend of unacked batches after a reconnect.
//! - `rebalance`: the BackupManager's "owner + exactly one backup" after membership changes.
//! - `transfer`: state transfer, both directions.
//! - `claim`: takeover by a majority's vote, both sides (REFERENCE 4.9).
//! - `rejoin`: catching up after a lapsed lease, both sides.

mod claim;
mod handover;
mod metrics;
mod peer;
mod peers;
mod rebalance;
mod rejoin;
mod transfer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::config::{Manager, PartitionHandling, SendMode};
use super::error::SettleError;
use super::lease::Lease;
use super::link::Link;
use super::membership::Membership;
use super::messages::encode_change;
use super::routing;
use crate::session::{Change, FullSession, Key, Remote, SessionStore};
use crate::tasks::Tasks;
pub(crate) use handover::HandOverRound;
pub(super) use metrics::ReplMetrics;
pub(crate) use peers::ReplicationStatus;

/// A change on its way to one peer.
pub(super) struct Outgoing {
    /// The session the change is about.
    pub key: u128,
    /// The change as encoded for the mesh (once, shared by every peer it goes to).
    pub change: bytes::Bytes,
    /// [`Change::kind_index`], for the metrics.
    pub kind: usize,
    pub ack: Option<oneshot::Sender<Acked>>,
    pub enqueued: Instant,
}

/// What a peer said of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acked {
    Applied,
    /// From an older epoch than the peer's copy: the write did not count there.
    Fenced,
}

/// A sync-mode wait for one peer's ack.
pub(crate) struct Wait {
    node_id: u64,
    route: Arc<str>,
    rx: oneshot::Receiver<Acked>,
}

/// One peer's queue, as the enqueuing side and the peer's task both see it: changes and
/// bytes queued or unacked, and whether changes were dropped at the cap (REFERENCE 4.10).
#[derive(Default)]
pub(super) struct Load {
    pub depth: AtomicI64,
    pub bytes: AtomicI64,
    /// Set when a change was dropped; the peer's task resyncs the member once the queue
    /// is down to half the cap.
    pub overflowed: std::sync::atomic::AtomicBool,
}

struct PeerHandle {
    route: Arc<str>,
    /// The member drains (REFERENCE 4.8): it keeps the copies it has until it leaves, but
    /// BackupManager places no copy on it.
    draining: std::sync::atomic::AtomicBool,
    tx: mpsc::UnboundedSender<Outgoing>,
    load: Arc<Load>,
    metrics: metrics::PeerMetrics,
    cancel: CancellationToken,
}

pub(super) struct Replicator {
    store: Arc<SessionStore>,
    /// Membership events, and verification of a peer that fails.
    membership: Arc<Membership>,
    /// Sealing and opening frames, this node's identity.
    link: Arc<Link>,
    pub manager: Manager,
    pub mode: SendMode,
    ack_timeout: Duration,
    /// The majority and this node's lease (REFERENCE 4.9).
    pub lease: Arc<Lease>,
    /// An audit after a member came back is scheduled or running (backup manager).
    auditing: std::sync::atomic::AtomicBool,
    /// Sessions this node is claiming now, one claim each at a time.
    claiming: dashmap::DashMap<u128, Arc<tokio::sync::Mutex<()>>>,
    peers: RwLock<HashMap<u64, PeerHandle>>,
    /// `[cluster] max_queue_changes`, `max_queue_bytes`: one peer's queue.
    max_queue: (usize, usize),
    pub metrics: ReplMetrics,
    /// Owns the peer tasks.
    tasks: Tasks,
}

impl Replicator {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        store: Arc<SessionStore>,
        membership: Arc<Membership>,
        manager: Manager,
        mode: SendMode,
        ack_timeout: Duration,
        lease: Arc<Lease>,
        max_queue: (usize, usize),
        metrics: &crate::metrics::Metrics,
        tasks: Tasks,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            link: membership.link.clone(),
            membership,
            manager,
            mode,
            ack_timeout,
            lease,
            claiming: dashmap::DashMap::new(),
            auditing: std::sync::atomic::AtomicBool::new(false),
            peers: RwLock::new(HashMap::new()),
            max_queue,
            metrics: ReplMetrics::register(metrics),
            tasks,
        })
    }

    /// BackupManager: the peer that holds the copy of session `key` now.
    fn backup_of(&self, key: u128) -> Option<Arc<str>> {
        let peers = self.peers_read();
        let placeable = peers
            .values()
            .filter(|p| !p.draining.load(Ordering::Relaxed))
            .map(|p| &*p.route);
        let route = routing::backup(key, placeable)?;
        peers
            .values()
            .find(|p| &*p.route == route)
            .map(|p| p.route.clone())
    }

    fn peers_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, PeerHandle>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `change` for every peer. In sync mode with `waits`, one ack wait per peer is
    /// added. Synchronous and cheap: called while the session is locked.
    pub(super) fn enqueue(&self, change: Change, waits: Option<&mut Vec<Wait>>) {
        let target = match self.manager {
            Manager::Delta => None,
            Manager::Backup => match self.backup_of(change.key()) {
                Some(r) => Some(r),
                None => return, // alone: nobody to back up to
            },
        };
        self.enqueue_to(change, target.as_deref(), waits);
    }

    /// Queues `change` for the peer with route `only`, or for every peer.
    pub(super) fn enqueue_to(
        &self,
        change: Change,
        only: Option<&str>,
        mut waits: Option<&mut Vec<Wait>>,
    ) {
        let kind = change.kind_index();
        let key = change.key();
        let change = encode_change(&change);
        let enqueued = Instant::now();
        let peers = self.peers_read();
        for (id, p) in peers.iter() {
            if only.is_some_and(|r| r != &*p.route) {
                continue;
            }
            // Past the cap a change for every peer is dropped for this one (which gets
            // a full resync once its queue drains); one sent to this peer alone (a resync,
            // a full copy) is not: its size is the sessions this node holds.
            let (max_changes, max_bytes) = self.max_queue;
            if only.is_none()
                && (p.load.depth.load(Ordering::Relaxed) >= max_changes as i64
                    || p.load.bytes.load(Ordering::Relaxed) + change.len() as i64
                        > max_bytes as i64)
            {
                if !p.load.overflowed.swap(true, Ordering::AcqRel) {
                    tracing::warn!(peer = %p.route, "replication queue full: changes for this peer are dropped until it drains, then it is resynced");
                }
                p.metrics.overflows.inc();
                if let Some(w) = waits.as_deref_mut() {
                    // An ack that cannot come: in sync mode the write is unreplicated there.
                    let (_, rx) = oneshot::channel();
                    w.push(Wait {
                        node_id: *id,
                        route: p.route.clone(),
                        rx,
                    });
                }
                continue;
            }
            let ack = match waits.as_deref_mut() {
                Some(w) => {
                    let (tx, rx) = oneshot::channel();
                    w.push(Wait {
                        node_id: *id,
                        route: p.route.clone(),
                        rx,
                    });
                    Some(tx)
                }
                None => None,
            };
            let out = Outgoing {
                key,
                change: change.clone(),
                kind,
                ack,
                enqueued,
            };
            // Counted before the send: the peer may ack it before this line returns.
            let len = change.len() as i64;
            let d = p.load.depth.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            let b = p
                .load
                .bytes
                .fetch_add(len, Ordering::Relaxed)
                .wrapping_add(len);
            if p.tx.send(out).is_err() {
                p.load.depth.fetch_sub(1, Ordering::Relaxed);
                p.load.bytes.fetch_sub(len, Ordering::Relaxed);
                continue;
            }
            p.metrics.depth.set(d.max(0));
            p.metrics.bytes.set(b.max(0));
        }
    }

    /// Sync mode: waits for the acks, at most `ack_timeout`. A peer that did not ack is
    /// verified (and dropped if dead). The write counts only if no peer fenced it and, with
    /// `partition_handling = "quorum"`, enough copies hold it: a majority (delta), or the
    /// backup (backup); an unreplicated write is counted either way.
    pub(super) async fn settle(&self, waits: Vec<Wait>) -> Result<(), SettleError> {
        if waits.is_empty() {
            // Nothing changed, or no peer to send to: then the lease decided already.
            return Ok(());
        }
        let targets = waits.len();
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let (missed, fenced) = await_acks(waits, deadline).await;
        if fenced {
            self.metrics.fenced_writes.inc();
            tracing::warn!("a member fenced this node's write: the session has a newer owner");
            return Err(SettleError::Fenced);
        }
        for w in &missed {
            self.metrics.ack_timeouts.inc();
            tracing::warn!(peer = %w.route, "no replication ack in time: verifying the member");
            self.membership.suspect(w.node_id);
        }
        if !missed.is_empty() {
            self.metrics.unreplicated_writes.inc();
        }
        self.enough(targets - missed.len())
    }

    /// Whether a write that `applied` peers hold counts (REFERENCE 4.9).
    fn enough(&self, applied: usize) -> Result<(), SettleError> {
        if self.lease.handling == PartitionHandling::Available {
            return Ok(());
        }
        let needed = match self.manager {
            Manager::Delta => self.lease.quorum(),
            // Owner and backup; alone, the lease already says whether we may write.
            Manager::Backup => 2,
        };
        if applied + 1 >= needed {
            Ok(())
        } else {
            self.metrics.below_quorum_writes.inc();
            Err(SettleError::NotReplicated {
                applied: applied + 1,
                needed,
            })
        }
    }

    /// The receiving side: applies a batch from `sender` (the route its connection's
    /// `Hello` named) in order; returns the sessions that need a full copy (gaps), and this
    /// node's copies of those whose change it fenced.
    /// The wait until the changes applied so far are durable (`fsync` persistence).
    pub(super) fn durable(&self) -> Option<crate::session::Durable> {
        self.store.durable()
    }

    pub(super) fn apply_batch(
        &self,
        changes: &[Arc<Change>],
        sender: Option<&str>,
    ) -> (Vec<u128>, Vec<FullSession>) {
        let now = Instant::now();
        let mut need_full = Vec::new();
        let mut fenced = Vec::new();
        for c in changes {
            self.metrics.received(c).inc();
            if let Change::Full(f) = &**c {
                // A node announces only its own ownership: a whole copy that names another
                // owner at a newer epoch than the one held here claims what its sender
                // cannot have won (REFERENCE 4.9). A hand-on of a copy (no copy here) passes.
                let foreign = sender.is_none_or(|s| s != f.owner);
                if foreign
                    && self
                        .store
                        .held_epoch(Key(f.key))
                        .is_some_and(|e| e < f.epoch)
                {
                    self.metrics.not_owner.inc();
                    tracing::warn!(
                        session = %Key(f.key).base(), sender = sender.unwrap_or("-"), owner = %f.owner,
                        "a copy claiming a newer ownership from a node that is not its owner: dropped"
                    );
                    continue;
                }
            }
            match self.store.apply_remote(c, now) {
                Remote::Applied | Remote::Stale => {}
                Remote::Gap => {
                    self.metrics.gaps.inc();
                    need_full.push(c.key());
                }
                Remote::Fenced => {
                    self.metrics.fenced.inc();
                    tracing::warn!(
                        session = %Key(c.key()).base(),
                        "change from an owner with an older epoch rejected"
                    );
                    if let Some(copy) = self.store.full_copy(c.key(), now) {
                        fenced.push(copy);
                    }
                }
            }
        }
        (need_full, fenced)
    }
}

/// Waits for every ack until `deadline`; returns the waits that got none. A target whose
/// channel closed (its peer task ended: the member left or died) is one miss, and the
/// others are still awaited: returning at the first closed channel answered the client
/// before live members had acked.
/// Also says whether a member fenced a change.
async fn await_acks(waits: Vec<Wait>, deadline: tokio::time::Instant) -> (Vec<Wait>, bool) {
    let mut waits = waits;
    let mut acked: Vec<Option<Acked>> = vec![None; waits.len()];
    // One timer for all the acks, awaited in order (each ack only ends sooner).
    let all = async {
        for (w, a) in waits.iter_mut().zip(acked.iter_mut()) {
            *a = (&mut w.rx).await.ok();
        }
    };
    let _ = tokio::time::timeout_at(deadline, all).await;
    let mut fenced = false;
    let missed = waits
        .into_iter()
        .zip(acked)
        .filter_map(|(mut w, a)| match a.or_else(|| w.rx.try_recv().ok()) {
            Some(Acked::Fenced) => {
                fenced = true;
                None
            }
            Some(Acked::Applied) => None,
            None => Some(w),
        })
        .collect();
    (missed, fenced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(id: u64) -> (oneshot::Sender<Acked>, Wait) {
        let (tx, rx) = oneshot::channel();
        let w = Wait {
            node_id: id,
            route: format!("n{id}").into(),
            rx,
        };
        (tx, w)
    }

    #[tokio::test]
    async fn a_closed_ack_channel_does_not_end_the_wait_for_the_others() {
        let (dead, w1) = wait(1);
        let (live, w2) = wait(2);
        drop(dead); // the dead member's peer task ended: its ack never comes
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = live.send(Acked::Applied);
        });
        let started = tokio::time::Instant::now();
        let (missed, fenced) = await_acks(vec![w1, w2], started + Duration::from_secs(5)).await;
        assert!(!fenced);
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "returned before the live member acked"
        );
        let ids: Vec<u64> = missed.iter().map(|w| w.node_id).collect();
        assert_eq!(ids, [1], "only the dead member missed");
    }

    #[tokio::test]
    async fn a_member_that_never_acks_is_missed_at_the_deadline() {
        let (_silent, w1) = wait(1);
        let (fast, w2) = wait(2);
        let _ = fast.send(Acked::Fenced);
        let started = tokio::time::Instant::now();
        let (missed, fenced) = await_acks(vec![w1, w2], started + Duration::from_millis(100)).await;
        assert!(fenced, "a fenced ack is reported");
        assert!(started.elapsed() >= Duration::from_millis(100));
        let ids: Vec<u64> = missed.iter().map(|w| w.node_id).collect();
        assert_eq!(ids, [1]);
    }
}
