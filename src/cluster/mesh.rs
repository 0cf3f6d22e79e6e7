//! The TCP mesh (SPEC 4.2): the receiver (`[cluster.receiver]`, trying `auto_bind` ports
//! upward from `port`), length-delimited frames with a format version and a size cap, and
//! ping/pong for liveness. A bad frame (truncated, oversized, wrong version, undecodable) is
//! counted and closes that connection only.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use super::config::ReceiverConfig;
use super::membership::Membership;
use super::messages::MeshMessage;
use super::replication::Replicator;
use crate::tasks::Tasks;
use crate::wire::codec;

/// Binds the receiver on the first free port of `port .. port + auto_bind`.
pub async fn bind(cfg: &ReceiverConfig) -> std::io::Result<TcpListener> {
    let mut last = None;
    for i in 0..cfg.auto_bind {
        let Some(port) = cfg.port.checked_add(i) else {
            break;
        };
        match TcpListener::bind((cfg.address, port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        if cfg.port == 0 {
            break;
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port to try")))
}

/// Accepts mesh connections until the tasks stop; each connection is a task of `tasks`.
pub async fn serve(
    listener: TcpListener,
    membership: Arc<Membership>,
    replicator: Arc<Replicator>,
    tasks: Tasks,
) {
    let max_frame = membership.link.max_frame;
    while let Some((stream, peer)) = crate::net::accept(&listener, tasks.token(), "mesh").await {
        let (m, r) = (membership.clone(), replicator.clone());
        tasks.spawn_until_stopped(connection(stream, peer, m, r, max_frame));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    m: Arc<Membership>,
    r: Arc<Replicator>,
    max_frame: usize,
) {
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, codec(max_frame));
    // The route a replication connection's `Hello` named: the only owner it may speak for.
    let mut sender: Option<String> = None;
    while let Some(frame) = framed.next().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // Oversized frame or I/O error; a clean EOF ends the stream instead.
                let reason = if e.kind() == std::io::ErrorKind::InvalidData {
                    "oversized"
                } else {
                    "io"
                };
                m.metrics.mesh_rejected(reason).inc();
                tracing::debug!(%peer, error = %e, "mesh connection closed");
                return;
            }
        };
        let msg = match m.link.open(&frame) {
            Ok(msg) => msg,
            Err(e) => {
                m.metrics.mesh_rejected(e.label()).inc();
                tracing::warn!(%peer, error = %e, "bad mesh frame: connection closed");
                return;
            }
        };
        let reply = match msg {
            MeshMessage::Ping { domain, from } => {
                if domain != m.link.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                m.observe(from);
                Some(MeshMessage::Pong { from: m.link.me() })
            }
            MeshMessage::Hello { domain, from } => {
                if domain != m.link.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                tracing::debug!(%peer, route = %from.jvm_route, "replication connection");
                sender = Some(from.jvm_route);
                None
            }
            MeshMessage::Replicate { seq, changes } => {
                r.metrics.bytes_received.inc_by(frame.len() as u64);
                let (need_full, fenced) = r.apply_batch(&changes, sender.as_deref());
                Some(MeshMessage::Ack {
                    seq,
                    need_full,
                    fenced,
                })
            }
            MeshMessage::StateRequest { domain, from } => {
                if domain != m.link.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                tracing::info!(to = %from.jvm_route, "state transfer: sending sessions");
                match r.serve_state(&mut framed).await {
                    Ok(n) => {
                        tracing::info!(to = %from.jvm_route, sessions = n, "state transfer sent")
                    }
                    Err(e) => {
                        tracing::warn!(to = %from.jvm_route, error = %e, "state transfer failed")
                    }
                }
                None
            }
            MeshMessage::Claim {
                domain,
                from,
                owner,
                claims,
            } => {
                if domain != m.link.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                tracing::debug!(claimant = %from.jvm_route, %owner, sessions = claims.len(), "claim");
                Some(MeshMessage::Votes {
                    votes: r.vote(&owner, &claims).await,
                })
            }
            MeshMessage::Digest {
                domain, entries, ..
            } => {
                if domain != m.link.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                Some(MeshMessage::Fresher(r.fresher(&entries)))
            }
            // Answers and transfer frames only come back on connections we opened.
            MeshMessage::Votes { .. }
            | MeshMessage::Fresher(_)
            | MeshMessage::Pong { .. }
            | MeshMessage::Ack { .. }
            | MeshMessage::StateChunk { .. }
            | MeshMessage::StateDone { .. } => {
                m.metrics.mesh_rejected("unexpected").inc();
                tracing::warn!(%peer, "unexpected mesh message: connection closed");
                return;
            }
        };
        if let Some(r) = reply {
            if framed.send(m.link.seal(&r)).await.is_err() {
                return;
            }
        }
    }
}
