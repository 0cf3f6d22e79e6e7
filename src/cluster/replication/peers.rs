//! The replicator's peers: one task per member, kept in step with membership events, and
//! the resync of a member that was dropped while alive and comes back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{peer, Load, PeerHandle, Replicator};
use crate::cluster::config::{Manager, SendMode};
use crate::cluster::membership::MemberEvent;
use crate::cluster::messages::NodeInfo;
use crate::lifecycle::State;
use crate::session::Change;

impl Replicator {
    /// Keeps one peer task per member, following membership events, until `shutdown`.
    pub(crate) async fn follow_members(self: Arc<Self>) {
        let shutdown = self.tasks.token().clone();
        let mut events = self.membership.subscribe();
        // Processes seen before: one that is added again was dropped while alive (a pause, a
        // partition) and may have missed changes.
        let mut known: std::collections::HashSet<u64> = std::collections::HashSet::new();
        for m in self.membership.members() {
            known.insert(m.info.node_id);
            self.add_peer(&m.info, &shutdown);
        }
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => ev,
            };
            match ev {
                Ok(MemberEvent::Added(info)) => {
                    self.add_peer(&info, &shutdown);
                    if !known.insert(info.node_id) {
                        self.resync(&info);
                        self.audit_later();
                    }
                }
                Ok(MemberEvent::Changed(info)) => self.add_peer(&info, &shutdown),
                Ok(MemberEvent::Removed { info, .. }) => self.remove_peer(info.node_id),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed events: rebuild from the table.
                    let live: Vec<NodeInfo> = self
                        .membership
                        .members()
                        .into_iter()
                        .map(|m| m.info)
                        .collect();
                    let stale: Vec<u64> = self
                        .peers_read()
                        .keys()
                        .filter(|id| !live.iter().any(|i| i.node_id == **id))
                        .copied()
                        .collect();
                    for id in stale {
                        self.remove_peer(id);
                    }
                    for info in &live {
                        self.add_peer(info, &shutdown);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        let ids: Vec<u64> = self.peers_read().keys().copied().collect();
        for id in ids {
            self.remove_peer(id);
        }
    }

    /// BackupManager: a member came back after being dropped, so copies may be stale or
    /// misplaced anywhere (a backup replaced while it was away, a copy handed on before the
    /// vote). Once the returning node had time to catch up (a lease), this node compares
    /// its copies with the members too and drops what it no longer backs up. One at a time.
    fn audit_later(self: &Arc<Self>) {
        if self.manager != Manager::Backup || self.auditing.swap(true, Ordering::AcqRel) {
            return;
        }
        let rep = self.clone();
        self.tasks.spawn_until_stopped(async move {
            tokio::time::sleep(rep.lease.duration * 2).await;
            rep.catch_up().await;
            rep.auditing.store(false, Ordering::Release);
        });
    }

    fn add_peer(self: &Arc<Self>, info: &NodeInfo, shutdown: &CancellationToken) {
        if info.state == State::Leaving {
            return;
        }
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = peers.get(&info.node_id) {
            p.draining
                .store(info.state == State::Draining, Ordering::Relaxed);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let load = Arc::new(Load::default());
        let cancel = shutdown.child_token();
        let metrics = self.metrics.peer(&info.jvm_route);
        self.tasks.spawn(peer::run(
            self.clone(),
            info.clone(),
            rx,
            load.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
        peers.insert(
            info.node_id,
            PeerHandle {
                route: info.jvm_route.as_str().into(),
                draining: std::sync::atomic::AtomicBool::new(info.state == State::Draining),
                tx,
                load,
                metrics,
                cancel,
            },
        );
    }

    /// A member is back after being dropped: it gets a full copy of every session this node
    /// owns that it should hold (all of them for delta; those it backs up for backup).
    /// `false`: skipped, this node holds no lease.
    pub(super) fn resync(&self, info: &NodeInfo) -> bool {
        let now = Instant::now();
        if !self.lease.holds(now) {
            // It is this node that was away: what it "owns" may have been taken over, and
            // its copies would resurrect stale ones (chaos, backup manager). The catch-up
            // corrects this node; the members with a lease resync it.
            tracing::info!(peer = %info.jvm_route, "member back, but this node has no lease: no resync from here");
            return false;
        }
        let mut n = 0;
        for key in self.store.owned_keys() {
            if self.manager == Manager::Backup
                && self.backup_of(key).as_deref() != Some(info.jvm_route.as_str())
            {
                continue;
            }
            if let Some(full) = self.store.full_copy(key, now) {
                self.enqueue_to(Change::Full(full), Some(&info.jvm_route), None);
                n += 1;
            }
        }
        tracing::info!(peer = %info.jvm_route, sessions = n, "member back after being dropped: resynced");
        true
    }

    fn remove_peer(&self, node_id: u64) {
        let removed = self
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node_id);
        if let Some(p) = removed {
            p.cancel.cancel();
            // Its series go with it: members that come and go (or are spoofed, without a
            // key) must not grow /metrics without end.
            self.metrics.forget_peer(&p.route);
        }
    }
}

/// One peer's queue, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PeerQueue {
    pub route: String,
    /// Changes queued or not yet acked, and their bytes.
    pub depth: i64,
    pub bytes: i64,
    /// Changes were dropped at the cap; a resync follows once it is down to half.
    pub overflowed: bool,
}

/// The replication counters `/status` shows (REFERENCE 6); `/metrics` has them too.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ReplicationStatus {
    pub send_options: &'static str,
    pub peers: Vec<PeerQueue>,
    pub acks: u64,
    pub ack_timeouts: u64,
    pub unreplicated_writes: u64,
    pub below_quorum_writes: u64,
    pub fenced: u64,
    pub fenced_writes: u64,
    pub gaps: u64,
    pub state_transfers: u64,
    pub claims: u64,
    pub claims_refused: u64,
    pub catch_ups: u64,
}

impl Replicator {
    pub(crate) fn status(&self) -> ReplicationStatus {
        let m = &self.metrics;
        let mut peers: Vec<PeerQueue> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| PeerQueue {
                route: p.route.to_string(),
                depth: p.load.depth.load(Ordering::Relaxed),
                bytes: p.load.bytes.load(Ordering::Relaxed),
                overflowed: p.load.overflowed.load(Ordering::Relaxed),
            })
            .collect();
        peers.sort_by(|a, b| a.route.cmp(&b.route));
        ReplicationStatus {
            send_options: match self.mode {
                SendMode::Sync => "sync",
                SendMode::Async => "async",
            },
            peers,
            acks: m.acks.get(),
            ack_timeouts: m.ack_timeouts.get(),
            unreplicated_writes: m.unreplicated_writes.get(),
            below_quorum_writes: m.below_quorum_writes.get(),
            fenced: m.fenced.get(),
            fenced_writes: m.fenced_writes.get(),
            gaps: m.gaps.get(),
            state_transfers: m.state_transfers.get(),
            claims: m.claims.get(),
            claims_refused: m.claims_refused.get(),
            catch_ups: m.catch_ups.get(),
        }
    }
}
