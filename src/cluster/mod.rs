//! The cluster (floor 3): membership (multicast heartbeats, static members or dns), the TCP
//! mesh, failure detection, and replication of session changes (REFERENCE 4.1-4.7). It carries
//! what the session domain produces ([`crate::session::Change`]) and applies what arrives
//! through the store; it never sees a request.
//!
//! - `config`, `error`: the cluster's settings and errors.
//! - `link`: the key, domain and identity every mesh exchange uses.
//! - `messages`: heartbeat and mesh wire formats (versioned, HMAC-tagged with a key).
//! - `membership`: the member table and the failure detector.
//! - `lease`: the majority and this node's lease (REFERENCE 4.9).
//! - `mesh`: the receiver, frames, ping/pong.
//! - `transport`: multicast heartbeats, static pings, or dns (a name resolved to candidates).
//! - `replication`: the replicator, its peers, rebalance, state transfer.
//! - `routing`: rendezvous successors and who serves a session.
//! - `metrics`: the cluster's Prometheus metrics.
//!
//! [`Cluster`] is all that the layers above use: `start`, `join` (the join window of a
//! starting node), `state_transfer`, `announce`, and the named questions of the sticky
//! layer (`replicate`, `settle`, `has_lease`, `claim`, `members`, `verify`,
//! `is_member_at`) and of the admin endpoints (`quorum`, `member_table`).

mod channel;
mod config;
mod error;
mod events;
mod lease;
mod link;
mod membership;
mod mesh;
mod messages;
mod metrics;
mod replication;
mod routing;
mod transport;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::lifecycle::{NodeState, State};
use crate::session::{Change, SessionStore};
use crate::tasks::Tasks;
use crate::wire::ClusterKey;
use link::{Link, Me};
use membership::Membership;
use replication::Replicator;
use transport::Multicast;

pub(crate) use channel::{ChannelHandler, MemberChannel};
pub(crate) use config::{
    ClusterConfig, Manager, MembershipConfig, MembershipKind, MeshTlsConfig, PartitionHandling,
    ReceiverConfig, SendMode,
};
pub(crate) use error::{ClaimError, ClusterError, MeshError, SettleError};
pub(crate) use events::Event;
pub(crate) use link::MeshStream;
pub(crate) use membership::Member;
pub(crate) use mesh::bind as bind_receiver;
pub use messages::{
    decode_mesh, encode_heartbeat, encode_mesh, open_mesh, seal_mesh, Heartbeat, MeshMessage,
    NodeInfo, MESH_VERSION,
};
pub(crate) use replication::{HandOverRound, ReplicationStatus, Wait};
pub use routing::successor;
pub(crate) use routing::Decision;
pub use transport::multicast_socket;

pub(crate) struct Cluster {
    membership: Arc<Membership>,
    lease: Arc<lease::Lease>,
    replicator: Arc<Replicator>,
    multicast: Option<Arc<Multicast>>,
    static_members: Vec<String>,
    channels: Arc<channel::Channels>,
    /// Draining and announced: requests for this node's sessions go to their successors.
    handing_over: std::sync::atomic::AtomicBool,
    /// The join is over ([`Cluster::joined`]).
    joined: Arc<std::sync::atomic::AtomicBool>,
}

/// Replaces an unspecified IP (0.0.0.0) by one peers can reach.
fn reachable(addr: SocketAddr, fallback: IpAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(fallback, addr.port())
    } else {
        addr
    }
}

impl Cluster {
    /// Starts membership and the mesh receiver on `mesh_listener`; the node is `starting`.
    /// Every task it starts belongs to `tasks` and ends when they stop.
    pub(crate) fn start(
        cfg: &ClusterConfig,
        store: Arc<SessionStore>,
        state: Arc<NodeState>,
        mesh_listener: TcpListener,
        http_addr: SocketAddr,
        metrics: &crate::metrics::Metrics,
        tasks: &Tasks,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let announce_ip = match &cfg.membership.kind {
            MembershipKind::Multicast { bind, .. } => IpAddr::V4(*bind),
            MembershipKind::Static { .. } | MembershipKind::Dns { .. } => cfg.receiver.address,
        };
        let mesh_addr = mesh_listener
            .local_addr()
            .map(|a| reachable(a, announce_ip))
            .unwrap_or_else(|_| SocketAddr::new(announce_ip, cfg.receiver.port));
        let http_addr = cfg
            .advertise_http
            .unwrap_or(reachable(http_addr, announce_ip));
        let me = Me {
            node_id: fastrand::u64(..),
            mesh_addr,
            http_addr,
            state,
        };
        let key = cfg.key.as_deref().map(ClusterKey::new);
        let link = Arc::new(Link::new(
            key,
            cfg.membership.domain.clone(),
            me,
            cfg.membership.verify_timeout,
            cfg.receiver.max_frame_bytes,
            cfg.tls.clone(),
        ));
        let cm = metrics::ClusterMetrics::register(metrics);
        let membership = Arc::new(Membership::new(
            link,
            cfg.membership.clone(),
            cm,
            tasks.clone(),
        ));
        tracing::info!(kind = "mesh", addr = %mesh_addr, "listening");

        let from_disk = store.loaded_from_disk();
        let fixed_size = match (&cfg.membership.kind, cfg.expected_members) {
            (_, n) if n > 0 => n,
            (MembershipKind::Static { members }, _) => members.len() + 1,
            _ => 0,
        };
        let lease = Arc::new(lease::Lease::new(
            cfg.partition_handling,
            cfg.lease,
            fixed_size,
            membership.clone(),
        ));

        let replicator = Replicator::new(
            store,
            membership.clone(),
            cfg.manager,
            cfg.send_mode,
            cfg.ack_timeout,
            lease.clone(),
            (cfg.max_queue_changes, cfg.max_queue_bytes),
            metrics,
            tasks.clone(),
        );
        let rep = replicator.clone();
        let joined = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if from_disk {
            // Copies loaded from disk: the first lease too waits for a catch-up with a
            // majority (REFERENCE 4.11), and only once the join has shown who the members
            // are (before it, this node may count itself a majority of one).
            lease.catch_up_first();
        }
        let ready_to_compare = joined.clone();
        tasks.spawn(lease.clone().keep(tasks.clone(), move || {
            let rep = rep.clone();
            let joined = ready_to_compare.load(std::sync::atomic::Ordering::Acquire);
            async move { joined && rep.catch_up().await }
        }));
        tasks.spawn(replicator.clone().follow_members());
        tasks.spawn(replicator.clone().rebalance());
        let channels = Arc::new(channel::Channels::default());
        tasks.spawn(mesh::serve(
            mesh_listener,
            mesh::MeshLimits::new(&cfg.receiver),
            membership.clone(),
            replicator.clone(),
            channels.clone(),
            tasks.clone(),
        ));
        tasks.spawn(membership.clone().detect());
        let shutdown = tasks.token().clone();
        let (multicast, static_members) = match &cfg.membership.kind {
            MembershipKind::Multicast {
                group,
                port,
                bind,
                ttl,
            } => {
                let sock =
                    transport::multicast_socket(*group, *port, *bind, *ttl).map_err(|e| {
                        ClusterError::Multicast {
                            group: *group,
                            port: *port,
                            bind: *bind,
                            source: e,
                        }
                    })?;
                let mc = Arc::new(Multicast::new(sock, SocketAddr::from((*group, *port))));
                tasks.spawn(mc.clone().run(membership.clone(), shutdown));
                (Some(mc), Vec::new())
            }
            MembershipKind::Static { members } => {
                tasks.spawn(transport::run_static(
                    members.clone(),
                    membership.clone(),
                    shutdown,
                ));
                (None, members.clone())
            }
            MembershipKind::Dns {
                name,
                port,
                refresh,
            } => {
                tasks.spawn(transport::run_dns(
                    name.clone(),
                    *port,
                    *refresh,
                    membership.clone(),
                    shutdown,
                ));
                (None, Vec::new())
            }
        };
        Ok(Arc::new(Cluster {
            membership,
            lease,
            replicator,
            multicast,
            static_members,
            channels,
            handing_over: std::sync::atomic::AtomicBool::new(false),
            joined,
        }))
    }

    /// The join window of a starting node: about two heartbeat periods to hear the others,
    /// then a node announcing our own route is verified; if it answers, we refuse to start.
    pub(crate) async fn join(&self) -> Result<(), ClusterError> {
        let m = &self.membership;
        tokio::time::sleep(m.cfg.frequency * 2 + m.cfg.frequency / 2).await;
        if let Some(other) = m.conflict() {
            let alive = m
                .link
                .ping(other.mesh_addr)
                .await
                .is_ok_and(|pong| pong.jvm_route == other.jvm_route);
            if alive {
                return Err(ClusterError::DuplicateRoute {
                    route: other.jvm_route,
                    mesh: other.mesh_addr,
                    http: other.http_addr,
                });
            }
            tracing::info!(route = %other.jvm_route, "a dead previous process had this route: replacing it");
            m.clear_conflict();
        }
        Ok(())
    }

    /// State transfer of a starting node (REFERENCE 4.7): `Ok(None)` when there was nobody to
    /// ask (or the manager pulls nothing), else the source's route and its session count.
    pub(crate) async fn state_transfer(&self) -> Result<Option<(String, u64)>, MeshError> {
        self.replicator.state_transfer().await
    }

    /// Sends the current state now (after `ready`, `draining` and `leaving`); every
    /// current member is also pinged, so when this returns the reachable ones know it.
    pub(crate) async fn announce(&self) {
        self.send_state().await;
        transport::ping_members(&self.membership).await;
    }

    /// The heartbeats (multicast) or the static list's pings that carry the state.
    async fn send_state(&self) {
        match &self.multicast {
            Some(mc) => {
                // UDP may drop one; three in a row make `leaving` reliable on a LAN.
                for _ in 0..3 {
                    mc.send(&self.membership).await;
                }
            }
            None => transport::ping_all(&self.static_members, &self.membership).await,
        }
    }

    /// How many times a drain pings the members that missed its `draining` (a slow or
    /// dropped ping): a member that did not hear it would send this node's sessions back
    /// here while this node sends them to their successors.
    const DRAIN_ANNOUNCE_TRIES: usize = 3;

    /// Graceful leave, first step (REFERENCE 4.8): announces `draining` and waits until the
    /// members heard it; from then on [`Cluster::is_handing_over`] holds, and the sticky
    /// layer sends this node's sessions' requests to their successors.
    pub(crate) async fn drain(&self) {
        self.membership.link.set_state(State::Draining);
        self.send_state().await;
        for _ in 0..Self::DRAIN_ANNOUNCE_TRIES {
            if transport::ping_members(&self.membership).await == 0 {
                break;
            }
        }
        self.handing_over
            .store(true, std::sync::atomic::Ordering::Release);
        self.membership
            .log
            .push("draining", self.membership.link.route(), "this node".into());
    }

    /// Back to `ready` after an admin drain (the sessions handed over stay where they are).
    pub(crate) async fn resume(&self) {
        self.handing_over
            .store(false, std::sync::atomic::Ordering::Release);
        self.membership.link.set_state(State::Ready);
        self.announce().await;
    }

    /// Whether this node drains and its sessions' requests go to their successors.
    #[inline]
    /// The join and the state transfer are over (done, failed or timed out): a catch-up
    /// may count its majority from the members heard.
    pub(crate) fn joined(&self) {
        self.joined
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn is_handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands `keys` (sessions this node owns) to their successors; see
    /// [`HandOverRound`].
    pub(crate) async fn hand_over(&self, keys: &[crate::session::Key]) -> HandOverRound {
        self.replicator.hand_over(keys).await
    }

    /// Queues a change of a session this node owns for the members that hold copies; in
    /// sync mode with `waits`, one ack wait per target is added. Called under the session's
    /// guard: synchronous and cheap.
    #[inline]
    pub(crate) fn replicate(&self, change: Change, waits: Option<&mut Vec<Wait>>) {
        self.replicator.enqueue(change, waits);
    }

    /// `send_options = sync`: responses wait for the members' acks.
    #[inline]
    pub(crate) fn is_sync(&self) -> bool {
        self.replicator.mode == SendMode::Sync
    }

    /// Waits until the members applied the changes behind `waits` (bounded by
    /// `ack_timeout`; a member that misses it is verified). An error if the write does not
    /// count: a member fenced it (the session has a newer owner), or too few copies hold it
    /// for a majority (REFERENCE 4.9).
    pub(crate) async fn settle(&self, waits: Vec<Wait>) -> Result<(), SettleError> {
        self.replicator.settle(waits).await
    }

    /// Whether this node may serve sessions now (REFERENCE 4.9): it heard from a majority within
    /// the lease, or `partition_handling = "available"`. One atomic load.
    #[inline]
    pub(crate) fn has_lease(&self, now: std::time::Instant) -> bool {
        self.lease.holds(now)
    }

    /// Waits for the lease (a node about to become ready), at most `limit`.
    pub(crate) async fn wait_lease(&self, limit: Duration) -> bool {
        self.lease.wait(limit).await
    }

    /// Whether ownership moves only by a majority's vote.
    pub(crate) fn is_quorum(&self) -> bool {
        self.lease.handling == PartitionHandling::Quorum
    }

    /// (cluster size, majority) now, for `/status`.
    pub(crate) fn quorum(&self) -> (usize, usize) {
        (self.lease.size(), self.lease.quorum())
    }

    /// Takes session `key` of the gone owner `owner` over by a majority's vote (REFERENCE 4.9);
    /// the new ownership is replicated, with ack waits in `waits` (sync mode). `Ok(false)`:
    /// the session turned out removed.
    pub(crate) async fn claim(
        &self,
        key: crate::session::Key,
        owner: &str,
        waits: Option<&mut Vec<Wait>>,
    ) -> Result<bool, ClaimError> {
        self.replicator
            .claim(owner, &[key], waits)
            .await
            .map(|n| n > 0)
    }

    /// The other members' announced identity and state, for routing.
    /// Who serves session `base` from this node, given the owner this node's copy records
    /// and the cookie's route (REFERENCE 4.4).
    pub(crate) fn decide(
        &self,
        base: &str,
        copy_owner: Option<&str>,
        cookie_route: Option<&str>,
        members: &[NodeInfo],
    ) -> Decision {
        let me = self.membership.link.route();
        routing::decide(base, me, copy_owner, cookie_route, members)
    }

    /// The ready member that succeeds this node for session `base`: where a draining node
    /// sends the session's requests.
    pub(crate) fn ready_successor(&self, base: &str, members: &[NodeInfo]) -> Option<NodeInfo> {
        routing::ready_successor(base, members)
    }

    pub(crate) fn members(&self) -> Vec<NodeInfo> {
        self.membership.infos()
    }

    /// Verifies a member now and waits for the answer: `true` if it is alive; a dead
    /// member is removed before this returns.
    pub(crate) async fn verify(&self, node_id: u64) -> bool {
        self.membership.check_now(node_id).await
    }

    /// `[cluster] key`: it also authenticates the forwarding marker.
    pub(crate) fn key(&self) -> Option<&crate::wire::ClusterKey> {
        self.membership.link.key()
    }

    /// How long a verification may take (`verify_timeout`).
    pub(crate) fn verify_timeout(&self) -> Duration {
        self.membership.link.verify_timeout
    }

    /// Whether `route` is a member whose announced HTTP address has the IP `ip` (the
    /// forwarding marker's trust rule, REFERENCE 4.4).
    pub(crate) fn is_member_at(&self, route: &str, ip: IpAddr) -> bool {
        self.membership
            .infos()
            .iter()
            .any(|m| m.jvm_route == route && m.http_addr.ip() == ip)
    }

    /// With `[cluster.tls]`, forwards go over mesh channels (REFERENCE 4.10), and the
    /// forwarding marker is honoured only there.
    pub(crate) fn forwards_over_mesh(&self) -> bool {
        self.membership.link.tls.is_some()
    }

    /// A forwarding channel to `to` (mutual TLS, its certificate naming its route).
    pub(crate) async fn open_channel(&self, to: &NodeInfo) -> Result<MeshStream, MeshError> {
        self.membership
            .link
            .open_channel(to.mesh_addr, &to.jvm_route)
            .await
    }

    /// Hands the forwarding channels members open to `h` (the proxy's HTTP server);
    /// `None` refuses them from now on.
    pub(crate) fn serve_channels(&self, h: Option<ChannelHandler>) {
        self.channels.set(h);
    }

    /// The last members added and removed and sessions taken over, newest first.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.membership.log.recent()
    }

    /// Queues and counters of replication, for `/status`.
    pub(crate) fn replication(&self) -> ReplicationStatus {
        self.replicator.status()
    }

    /// The member table, for `/status`.
    pub(crate) fn member_table(&self) -> Vec<Member> {
        self.membership.members()
    }

    pub(crate) fn mesh_addr(&self) -> SocketAddr {
        self.membership.link.mesh_addr()
    }

    /// Looks the session `key` up at every member: the owner its newest copy names.
    pub(crate) async fn locate(&self, key: crate::session::Key) -> Option<String> {
        self.replicator.locate(key.0).await
    }

    pub(crate) fn manager(&self) -> Manager {
        self.replicator.manager
    }
}
