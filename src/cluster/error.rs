//! The cluster's errors: what stops a node from joining, and what goes wrong on one mesh
//! exchange (a ping, a state transfer).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::messages::FrameError;

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
        group: Ipv4Addr,
        port: u16,
        bind: Ipv4Addr,
        source: std::io::Error,
    },
}

/// One mesh exchange that failed, and where.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
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
