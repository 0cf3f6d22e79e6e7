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
}
