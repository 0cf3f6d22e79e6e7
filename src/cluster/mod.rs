//! The cluster: membership over multicast heartbeats or static members, the TCP mesh, and
//! failure detection (SPEC 4.1, 4.2).
//!
//! - [`messages`]: heartbeat and mesh wire formats (versioned, HMAC on heartbeats).
//! - [`membership`]: the member table and the failure detector.
//! - [`mesh`]: the receiver, frames, ping/pong.
//! - [`transport`]: multicast heartbeats or static pings.
//! - [`metrics`]: the cluster's Prometheus metrics.
//!
//! [`Cluster::start`] runs it all; [`Cluster::join`] is the join window of a starting node,
//! [`Cluster::announce`] sends the current state at once (ready, leaving).

pub mod membership;
pub mod mesh;
pub mod messages;
pub mod metrics;
pub mod replication;
pub mod routing;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, MembershipKind};
use crate::node::NodeState;
use membership::{Me, Membership};
use messages::Key;
use replication::Replicator;
use transport::Multicast;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "another live node already has jvm_route {route:?} (mesh {mesh}, http {http}): \
         each node needs its own [node] jvm_route; refusing to start"
    )]
    DuplicateRoute {
        route: String,
        mesh: SocketAddr,
        http: SocketAddr,
    },
    #[error("cannot open the multicast socket on {bind} for {group}:{port}: {source}")]
    Multicast {
        group: std::net::Ipv4Addr,
        port: u16,
        bind: std::net::Ipv4Addr,
        source: std::io::Error,
    },
}

pub struct Cluster {
    pub membership: Arc<Membership>,
    pub replicator: Arc<Replicator>,
    multicast: Option<Arc<Multicast>>,
    static_members: Vec<String>,
}

/// Replaces an unspecified IP (0.0.0.0) by one peers can reach.
pub fn reachable(addr: SocketAddr, fallback: IpAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(fallback, addr.port())
    } else {
        addr
    }
}

impl Cluster {
    /// Starts membership and the mesh receiver on `mesh_listener`; the node is `starting`.
    pub fn start(
        cfg: &ClusterConfig,
        store: Arc<crate::session::SessionStore>,
        state: Arc<NodeState>,
        mesh_listener: TcpListener,
        http_addr: SocketAddr,
        metrics: &crate::metrics::Metrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let announce_ip = match &cfg.membership.kind {
            MembershipKind::Multicast { bind, .. } => IpAddr::V4(*bind),
            MembershipKind::Static { .. } => cfg.receiver.address,
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
        let cm = metrics::ClusterMetrics::register(metrics);
        let key = cfg.key.as_deref().map(Key::new);
        let membership = Arc::new(Membership::new(me, cfg.membership.clone(), key.clone(), cm));
        tracing::info!(kind = "mesh", addr = %mesh_addr, "listening");

        let replicator = Replicator::new(
            store,
            membership.clone(),
            cfg.manager,
            cfg.send_mode,
            cfg.ack_timeout,
            cfg.receiver.max_frame_bytes,
            metrics,
        );
        tokio::spawn(replicator.clone().follow_members(shutdown.clone()));
        tokio::spawn(replicator.clone().rebalance(shutdown.clone()));
        tokio::spawn(mesh::serve(
            mesh_listener,
            membership.clone(),
            replicator.clone(),
            cfg.receiver.max_frame_bytes,
            shutdown.clone(),
        ));
        tokio::spawn(membership.clone().detect(shutdown.clone()));
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
                let mc = Arc::new(Multicast::new(sock, SocketAddr::from((*group, *port)), key));
                tokio::spawn(mc.clone().run(membership.clone(), shutdown.clone()));
                (Some(mc), Vec::new())
            }
            MembershipKind::Static { members } => {
                tokio::spawn(transport::run_static(
                    members.clone(),
                    membership.clone(),
                    shutdown.clone(),
                ));
                (None, members.clone())
            }
        };
        Ok(Arc::new(Cluster {
            membership,
            replicator,
            multicast,
            static_members,
        }))
    }

    /// The join window of a starting node: about two heartbeat periods to hear the others,
    /// then a node announcing our own route is verified; if it answers, we refuse to start.
    pub async fn join(&self) -> Result<(), ClusterError> {
        let m = &self.membership;
        tokio::time::sleep(m.cfg.frequency * 2 + m.cfg.frequency / 2).await;
        if let Some(other) = m.conflict() {
            let alive = mesh::ping(m, other.mesh_addr)
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

    /// Sends the current state now (after `ready`, and `leaving` on shutdown).
    pub async fn announce(&self) {
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
}
