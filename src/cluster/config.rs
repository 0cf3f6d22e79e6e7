//! The cluster's settings (`[cluster]`, `[cluster.membership]`, `[cluster.receiver]`),
//! built and checked by the config layer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

/// `[cluster] partition_handling` (REFERENCE 4.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionHandling {
    /// Ownership moves only by a majority's vote, owners write only under a lease, and a
    /// sync write counts once a majority holds it: no acked write is lost.
    Quorum,
    /// Today's two-node trade-off: any node takes over a session whose owner it cannot
    /// see and serves without a majority. A partition can then make two owners, and on heal
    /// one side's acked writes are discarded.
    Available,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub enabled: bool,
    pub manager: Manager,
    pub send_mode: SendMode,
    pub ack_timeout: Duration,
    pub state_transfer_timeout: Duration,
    pub require_state_transfer: bool,
    pub expire_sessions_on_shutdown: bool,
    /// Shared secret: HMAC-SHA256 on heartbeats.
    pub key: Option<Vec<u8>>,
    /// The HTTP address peers forward to; `None` = derived from `http.listen`.
    pub advertise_http: Option<SocketAddr>,
    pub membership: MembershipConfig,
    pub receiver: ReceiverConfig,
    pub partition_handling: PartitionHandling,
    /// `[cluster] expected_members` (with this node); 0 = the static list plus one, or for
    /// multicast every route heard this run that did not announce `leaving`.
    pub expected_members: usize,
    /// `[cluster] lease`: an owner serves only while it heard from a majority this recently.
    pub lease: Duration,
    /// `[cluster] max_queue_changes` / `max_queue_bytes`: one peer's queue (REFERENCE 4.10).
    pub max_queue_changes: usize,
    pub max_queue_bytes: usize,
    /// `[cluster.tls]`: mutual TLS on every mesh connection, loaded at validation.
    pub tls: Option<MeshTlsConfig>,
}

#[derive(Debug, Clone)]
pub struct MeshTlsConfig {
    pub tls: crate::tls::MeshTls,
    /// A member's certificate must name its jvm_route (`bind_routes`).
    pub bind_routes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipKind {
    Multicast {
        group: std::net::Ipv4Addr,
        port: u16,
        bind: std::net::Ipv4Addr,
        ttl: u32,
    },
    /// Mesh addresses (`host:port`) of the other members.
    Static { members: Vec<String> },
    /// Candidates from the A/AAAA records of `name` (resolved every `refresh`) at mesh
    /// port `port`; each is admitted only by an authenticated ping (REFERENCE 4.1).
    Dns {
        name: String,
        port: u16,
        refresh: std::time::Duration,
    },
}

#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub kind: MembershipKind,
    pub domain: String,
    pub frequency: Duration,
    pub drop_time: Duration,
    pub verify_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub address: IpAddr,
    pub port: u16,
    pub auto_bind: u16,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}
