//! The TCP mesh (SPEC 4.2): the receiver (`[cluster.receiver]`, trying `auto_bind` ports
//! upward from `port`), length-delimited frames with a format version and a size cap, and
//! ping/pong for liveness. A bad frame (truncated, oversized, wrong version, undecodable) is
//! counted and closes that connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::membership::Membership;
use super::messages::{MeshMessage, NodeInfo};
use super::replication::Replicator;
use crate::config::ReceiverConfig;

/// Frames of pings and pongs are small; this caps what a verifier reads.
const PING_MAX_FRAME: usize = 64 * 1024;

pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

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

/// Accepts mesh connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    membership: Arc<Membership>,
    replicator: Arc<Replicator>,
    max_frame: usize,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let m = membership.clone();
        let r = replicator.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection(stream, peer, m, r, max_frame) => {}
            }
        });
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
        let msg = match m.open(&frame) {
            Ok(msg) => msg,
            Err(e) => {
                m.metrics.mesh_rejected(e.label()).inc();
                tracing::warn!(%peer, error = %e, "bad mesh frame: connection closed");
                return;
            }
        };
        let reply = match msg {
            MeshMessage::Ping { domain, from } => {
                if domain != m.cfg.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                m.observe(from);
                Some(MeshMessage::Pong { from: m.me.info() })
            }
            MeshMessage::Hello { domain, from } => {
                if domain != m.cfg.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                tracing::debug!(%peer, route = %from.jvm_route, "replication connection");
                None
            }
            MeshMessage::Replicate { seq, changes } => {
                r.metrics.bytes_received.inc_by(frame.len() as u64);
                let need_full = r.apply_batch(&changes);
                Some(MeshMessage::Ack { seq, need_full })
            }
            MeshMessage::StateRequest { domain, from } => {
                if domain != m.cfg.domain {
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
            // Answers and transfer frames only come back on connections we opened.
            MeshMessage::Pong { .. }
            | MeshMessage::Ack { .. }
            | MeshMessage::StateChunk { .. }
            | MeshMessage::StateDone { .. } => {
                m.metrics.mesh_rejected("unexpected").inc();
                tracing::warn!(%peer, "unexpected mesh message: connection closed");
                return;
            }
        };
        if let Some(r) = reply {
            if framed.send(m.seal(&r)).await.is_err() {
                return;
            }
        }
    }
}

/// Connects to `addr`, sends a ping and waits for the pong, all within `verify_timeout`.
pub async fn ping(m: &Membership, addr: SocketAddr) -> Result<NodeInfo, String> {
    let timeout = m.cfg.verify_timeout;
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, codec(PING_MAX_FRAME));
        let ping = MeshMessage::Ping {
            domain: m.cfg.domain.clone(),
            from: m.me.info(),
        };
        framed
            .send(m.seal(&ping))
            .await
            .map_err(|e| format!("send ping to {addr}: {e}"))?;
        match framed.next().await {
            Some(Ok(f)) => match m.open(&f) {
                Ok(MeshMessage::Pong { from }) => Ok(from),
                Ok(other) => Err(format!("unexpected answer from {addr}: {other:?}")),
                Err(e) => Err(format!("bad answer from {addr}: {e}")),
            },
            Some(Err(e)) => Err(format!("read from {addr}: {e}")),
            None => Err(format!("{addr} closed the connection")),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no pong from {addr} within {timeout:?}"))?
}
