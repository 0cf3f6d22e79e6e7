//! Session replication over the mesh: the DeltaManager (SPEC 4.3, 4.5 delta, 4.6, 4.7).
//!
//! - [`apply`]: the replica's apply rule, one pure function (proptested).
//! - [`peer`]: one task per member: an ordered queue, a connection with reconnect and
//!   backoff, batches, acks, resend of unacked batches after a reconnect.
//! - [`Replicator`]: what the session layer calls: `enqueue` (under the session's guard, so
//!   per-session order holds on every queue) and `settle` (sync mode: wait for every
//!   member's "applied" ack, bounded by `ack_timeout`); the receiving side (`apply_batch`);
//!   state transfer in both directions.

pub mod apply;
mod metrics;
pub mod peer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::membership::{MemberEvent, Membership};
use super::mesh::codec;
use super::messages::{Change, FullSession, MeshMessage, NodeInfo, PeerState};
use crate::session::id::Key;
use crate::session::store::{Remote, SessionStore};
pub use metrics::ReplMetrics;

/// `[cluster] manager`: where a session's copies live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// DeltaManager: on every member.
    Delta,
    /// BackupManager: on the owner and one backup, the member with the highest rendezvous
    /// score for the base id (owner excluded).
    Backup,
}

/// `send_options`: when a response may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMode {
    /// After every member acked that it applied the change (bounded by `ack_timeout`).
    Sync,
    /// At once; replication follows in the background.
    Async,
}

/// A change on its way to one peer.
pub struct Outgoing {
    /// The change as encoded for the mesh (once, shared by every peer it goes to).
    pub change: bytes::Bytes,
    /// [`Change::kind_index`], for the metrics.
    pub kind: usize,
    pub ack: Option<oneshot::Sender<()>>,
    pub enqueued: Instant,
}

/// A sync-mode wait for one peer's ack.
pub struct Wait {
    node_id: u64,
    route: Arc<str>,
    rx: oneshot::Receiver<()>,
}

struct PeerHandle {
    route: Arc<str>,
    tx: mpsc::UnboundedSender<Outgoing>,
    depth: Arc<AtomicI64>,
    metrics: metrics::PeerMetrics,
    cancel: CancellationToken,
}

pub struct Replicator {
    pub store: Arc<SessionStore>,
    pub membership: Arc<Membership>,
    pub manager: Manager,
    pub mode: SendMode,
    pub ack_timeout: Duration,
    pub max_frame: usize,
    peers: RwLock<HashMap<u64, PeerHandle>>,
    pub metrics: ReplMetrics,
}

impl Replicator {
    pub fn new(
        store: Arc<SessionStore>,
        membership: Arc<Membership>,
        manager: Manager,
        mode: SendMode,
        ack_timeout: Duration,
        max_frame: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            membership,
            manager,
            mode,
            ack_timeout,
            max_frame,
            peers: RwLock::new(HashMap::new()),
            metrics: ReplMetrics::register(metrics),
        })
    }

    /// Keeps one peer task per member, following membership events, until `shutdown`.
    pub async fn follow_members(self: Arc<Self>, shutdown: CancellationToken) {
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

    fn peers_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, PeerHandle>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn add_peer(self: &Arc<Self>, info: &NodeInfo, shutdown: &CancellationToken) {
        if info.state == PeerState::Leaving {
            return;
        }
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if peers.contains_key(&info.node_id) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicI64::new(0));
        let cancel = shutdown.child_token();
        let metrics = self.metrics.peer(&info.jvm_route);
        tokio::spawn(peer::run(
            self.clone(),
            info.clone(),
            rx,
            depth.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
        peers.insert(
            info.node_id,
            PeerHandle {
                route: info.jvm_route.as_str().into(),
                tx,
                depth,
                metrics,
                cancel,
            },
        );
    }

    /// A member is back after being dropped: it gets a full copy of every session this node
    /// owns that it should hold (all of them for delta; those it backs up for backup).
    fn resync(&self, info: &NodeInfo) {
        let now = Instant::now();
        let mut n = 0;
        for key in self.store.owned_keys() {
            if self.manager == Manager::Backup {
                let base = Key(key).base();
                let peers = self.peers_read();
                let backup =
                    crate::cluster::routing::successor(&base, peers.values().map(|p| &*p.route));
                if backup != Some(info.jvm_route.as_str()) {
                    continue;
                }
            }
            if let Some(full) = self.store.full_copy(key, now) {
                self.enqueue_to(Change::Full(full), Some(&info.jvm_route), None);
                n += 1;
            }
        }
        tracing::info!(peer = %info.jvm_route, sessions = n, "member back after being dropped: resynced");
    }

    fn remove_peer(&self, node_id: u64) {
        let removed = self
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node_id);
        if let Some(p) = removed {
            p.cancel.cancel();
            p.metrics.depth.set(0);
        }
    }

    /// BackupManager: after every membership change, restores "owner + exactly one backup"
    /// for the sessions this node holds (SPEC 4.5 backup):
    /// - owned sessions whose backup moved: a full copy to the new backup, acked, then the
    ///   old backup (if alive) drops its copy;
    /// - copies of a dead owner's sessions (an owner this node saw leave): the successor
    ///   takes over (higher epoch) and sends its own backup a copy; a holder that is not
    ///   the successor hands its copy on.
    pub async fn rebalance(self: Arc<Self>, shutdown: CancellationToken) {
        if self.manager != Manager::Backup {
            return;
        }
        let mut events = self.membership.subscribe();
        let routes = |m: &Membership| -> Vec<String> {
            m.infos()
                .into_iter()
                .filter(|i| i.state != PeerState::Leaving)
                .map(|i| i.jvm_route)
                .collect()
        };
        let mut old = routes(&self.membership);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.recv() => {
                    if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
            }
            // Let the peer tasks for new members exist before copies are queued for them.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while events.try_recv().is_ok() {}
            let new = routes(&self.membership);
            if new != old {
                let started = Instant::now();
                let moved = self.rebalance_once(&old, &new).await;
                self.metrics.rebalanced.inc_by(moved as u64);
                if moved > 0 {
                    tracing::info!(sessions = moved, took = ?started.elapsed(), "backups rebalanced");
                }
                old = new;
            }
        }
    }

    async fn rebalance_once(&self, old: &[String], new: &[String]) -> usize {
        use crate::cluster::routing::successor;
        let me = self.store.route().to_string();
        let mut moved = 0;
        let mut drops: Vec<(String, Change)> = Vec::new();
        let mut waits = Vec::new();
        let now = Instant::now();
        for (key, owner, ver) in self.store.placements() {
            let base = Key(key).base();
            if *owner == *me {
                let ob = successor(&base, old.iter().map(String::as_str));
                let nb = successor(&base, new.iter().map(String::as_str));
                if ob == nb {
                    continue;
                }
                if let (Some(nb), Some(full)) = (nb, self.store.full_copy(key, now)) {
                    self.enqueue_to(Change::Full(full), Some(nb), Some(&mut waits));
                    moved += 1;
                }
                if let Some(ob) = ob.filter(|ob| new.iter().any(|r| r == ob)) {
                    let drop = Change::Drop {
                        key,
                        epoch: ver.epoch,
                        version: ver.version,
                    };
                    drops.push((ob.to_string(), drop));
                }
            } else if old.iter().any(|r| **r == *owner) && !new.iter().any(|r| **r == *owner) {
                // A copy of a dead owner's session: one this node saw leave. An owner it
                // has not seen yet (a joiner gets copies from owners before it hears all
                // their heartbeats) is not dead: taking those over split a live owner's
                // sessions (tests/backup.rs caught it, a few runs in a hundred).
                let with_me = new
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::once(me.as_str()));
                match successor(&base, with_me) {
                    Some(s) if s == me => {
                        let rep = self;
                        let taken = self.store.take_over(Key(key), now, &mut |c| {
                            rep.enqueue(c, Some(&mut waits));
                        });
                        if taken.is_some() {
                            moved += 1;
                            tracing::debug!(session = %base, dead_owner = %owner, "took over a backed-up session");
                        }
                    }
                    Some(s) => {
                        if let Some(full) = self.store.full_copy(key, now) {
                            self.enqueue_to(Change::Full(full), Some(s), Some(&mut waits));
                            moved += 1;
                        }
                    }
                    None => {}
                }
            }
            // Bounded rate: let requests run between batches.
            if waits.len() >= 256 {
                self.settle(std::mem::take(&mut waits)).await;
            }
        }
        self.settle(waits).await;
        // Old copies go only after the new ones were acked.
        for (route, drop) in drops {
            self.enqueue_to(drop, Some(&route), None);
        }
        moved
    }

    /// Queues `change` for every peer. In sync mode with `waits`, one ack wait per peer is
    /// added. Synchronous and cheap: called while the session is locked.
    pub fn enqueue(&self, change: Change, waits: Option<&mut Vec<Wait>>) {
        let target = match self.manager {
            Manager::Delta => None,
            Manager::Backup => {
                let peers = self.peers_read();
                let base = crate::session::id::Key(change.key()).base();
                match crate::cluster::routing::successor(&base, peers.values().map(|p| &*p.route)) {
                    Some(r) => Some(r.to_string()),
                    None => return, // alone: nobody to back up to
                }
            }
        };
        self.enqueue_to(change, target.as_deref(), waits);
    }

    /// Queues `change` for the peer with route `only`, or for every peer.
    pub fn enqueue_to(
        &self,
        change: Change,
        only: Option<&str>,
        mut waits: Option<&mut Vec<Wait>>,
    ) {
        let kind = change.kind_index();
        let change = crate::cluster::messages::encode_change(&change);
        let enqueued = Instant::now();
        let peers = self.peers_read();
        for (id, p) in peers.iter() {
            if only.is_some_and(|r| r != &*p.route) {
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
                change: change.clone(),
                kind,
                ack,
                enqueued,
            };
            // Counted before the send: the peer may ack it before this line returns.
            let d = p.depth.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if p.tx.send(out).is_err() {
                p.depth.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            p.metrics.depth.set(d.max(0));
        }
    }

    /// Sync mode: waits for the acks, at most `ack_timeout`. A peer that did not ack is
    /// verified (and dropped if dead); the write is counted as unreplicated.
    pub async fn settle(&self, waits: Vec<Wait>) {
        if waits.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let mut waits = waits;
        // One timer for all the acks; `acked` counts those that came, in order.
        let mut acked = 0;
        let all = async {
            for w in waits.iter_mut() {
                if (&mut w.rx).await.is_err() {
                    return;
                }
                acked += 1;
            }
        };
        let _ = tokio::time::timeout_at(deadline, all).await;
        if acked == waits.len() {
            return;
        }
        let mut missed = false;
        for mut w in waits.into_iter().skip(acked) {
            if w.rx.try_recv().is_err() {
                missed = true;
                self.metrics.ack_timeouts.inc();
                tracing::warn!(peer = %w.route, "no replication ack in time: verifying the member");
                self.membership.suspect(w.node_id);
            }
        }
        if missed {
            self.metrics.unreplicated_writes.inc();
        }
    }

    /// The receiving side: applies a batch in order; returns the sessions that need a full
    /// copy (gaps).
    pub fn apply_batch(&self, changes: &[Arc<Change>]) -> Vec<u128> {
        let now = Instant::now();
        let mut need_full = Vec::new();
        for c in changes {
            self.metrics.received(c).inc();
            match self.store.apply_remote(c, now) {
                Remote::Applied | Remote::Stale => {}
                Remote::Gap => {
                    self.metrics.gaps.inc();
                    need_full.push(c.key());
                }
                Remote::Fenced => {
                    self.metrics.fenced.inc();
                    tracing::warn!(
                        session = %crate::session::id::Key(c.key()).base(),
                        "change from an owner with an older epoch rejected"
                    );
                }
            }
        }
        need_full
    }

    /// Sends this node's sessions to a joiner, in chunks: only the key list is taken up
    /// front; each session is copied when its chunk is built.
    pub async fn serve_state(
        &self,
        framed: &mut Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    ) -> std::io::Result<u64> {
        let keys = self.store.keys();
        // Leave room for the frame's own overhead.
        let budget = self.max_frame / 2;
        let mut chunk: Vec<FullSession> = Vec::new();
        let mut bytes = 0usize;
        let mut count = 0u64;
        for key in keys {
            let Some(s) = self.store.full_copy(key, Instant::now()) else {
                continue; // removed since the key list was taken
            };
            bytes += s.attrs.len() + 64;
            chunk.push(s);
            count += 1;
            if chunk.len() >= 512 || bytes >= budget {
                let msg = MeshMessage::StateChunk {
                    sessions: std::mem::take(&mut chunk),
                };
                framed.send(self.membership.seal(&msg)).await?;
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            framed
                .send(
                    self.membership
                        .seal(&MeshMessage::StateChunk { sessions: chunk }),
                )
                .await?;
        }
        framed
            .send(self.membership.seal(&MeshMessage::StateDone { count }))
            .await?;
        Ok(count)
    }

    /// A starting node: streams every session from the oldest ready member. Live changes
    /// arriving meanwhile are applied by version, so order does not matter. `Ok(None)`: no
    /// ready member to ask (a new cluster).
    pub async fn state_transfer(&self) -> Result<Option<(String, u64)>, String> {
        if self.manager == Manager::Backup {
            // A joiner holds only the copies it backs up; owners send exactly those when
            // they see it join (rebalance), so there is nothing to pull.
            tracing::info!("backup manager: copies arrive from their owners (rebalance)");
            return Ok(None);
        }
        let source = self
            .membership
            .members()
            .into_iter()
            .filter(|m| m.info.state == PeerState::Ready && !m.suspect)
            .max_by_key(|m| m.info.alive_ms);
        let Some(src) = source else {
            return Ok(None);
        };
        let started = Instant::now();
        let addr: SocketAddr = src.info.mesh_addr;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, codec(self.max_frame));
        let req = MeshMessage::StateRequest {
            domain: self.membership.cfg.domain.clone(),
            from: self.membership.me.info(),
        };
        framed
            .send(self.membership.seal(&req))
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut applied = 0u64;
        loop {
            let frame = match framed.next().await {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Err(format!("read from {addr}: {e}")),
                None => return Err(format!("{addr} closed the transfer early")),
            };
            match self
                .membership
                .open(&frame)
                .map_err(|e| format!("bad frame from {addr}: {e}"))?
            {
                MeshMessage::StateChunk { sessions } => {
                    let now = Instant::now();
                    for s in sessions {
                        if self.store.apply_remote(&Change::Full(s), now) == Remote::Applied {
                            applied += 1;
                        }
                    }
                }
                MeshMessage::StateDone { count } => {
                    self.metrics.state_transfers.inc();
                    self.metrics
                        .state_transfer_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::info!(from = %src.info.jvm_route, sent = count, applied, took = ?started.elapsed(), "state transfer complete");
                    return Ok(Some((src.info.jvm_route, count)));
                }
                other => return Err(format!("unexpected message from {addr}: {other:?}")),
            }
        }
    }
}
