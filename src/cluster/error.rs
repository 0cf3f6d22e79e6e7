//! The cluster's errors: what stops a node from joining, and what goes wrong on one mesh
//! exchange (a ping, a state transfer).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::messages::FrameError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
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
        group: Ipv4Addr,
        port: u16,
        bind: Ipv4Addr,
        source: std::io::Error,
    },
}

/// One mesh exchange that failed, and where.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MeshError {
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("send to {addr}: {source}")]
    Send {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("read from {addr}: {source}")]
    Read {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} closed the connection early")]
    Closed { addr: SocketAddr },
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("bad frame from {addr}: {source}")]
    Frame {
        addr: SocketAddr,
        source: FrameError,
    },
    #[error("unexpected {what} from {addr}")]
    Unexpected {
        addr: SocketAddr,
        what: &'static str,
    },
    #[error("no answer from {addr} within {limit:?}")]
    Timeout { addr: SocketAddr, limit: Duration },
    #[error("another process answers on its mesh address")]
    OtherProcess,
}

impl MeshError {
    /// The address answered but not as a member of this cluster: its TLS or its frames
    /// failed authentication, or it closed the connection on our ping (it refused ours).
    pub(crate) fn is_auth(&self) -> bool {
        matches!(
            self,
            MeshError::Tls { .. } | MeshError::Frame { .. } | MeshError::Closed { .. }
        )
    }

    /// The peer's process is certainly gone: its address refuses connections (the host is
    /// up, nothing listens), or another process answers there. A timeout is not: a paused
    /// or cut-off node may still hold its lease.
    pub(crate) fn is_gone(&self) -> bool {
        match self {
            MeshError::Connect { source, .. } => {
                source.kind() == std::io::ErrorKind::ConnectionRefused
            }
            MeshError::OtherProcess => true,
            _ => false,
        }
    }
}

/// Why a takeover did not happen (REFERENCE 4.9); each is answered 503 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClaimError {
    #[error("this node is cut off from the cluster majority (no lease)")]
    NoLease,
    #[error("no majority agreed the owner {owner} is gone ({granted} of {needed} votes)")]
    NoMajority {
        owner: String,
        granted: usize,
        needed: usize,
    },
    #[error("another node claimed the session at the same time")]
    Lost,
}

/// Why a sync write did not count (REFERENCE 4.6, 4.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SettleError {
    #[error("a member fenced the write: the session has a newer owner")]
    Fenced,
    #[error("the write reached {applied} of the {needed} copies a majority needs")]
    NotReplicated { applied: usize, needed: usize },
}
