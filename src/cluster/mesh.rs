//! The TCP mesh (REFERENCE 4.2): the receiver (`[cluster.receiver]`, trying `auto_bind` ports
//! upward from `port`), length-delimited frames with a format version and a size cap, and
//! ping/pong for liveness. A bad frame (truncated, oversized, wrong version, undecodable) is
//! counted and closes that connection only.
//!
//! Bounded before authentication (REFERENCE 4.10): at most `max_connections` connections,
//! `max_connections_per_source` from one address (past either, a new one is closed at once,
//! counted `over_limit`); the first frame must come within `handshake_timeout`, be at most
//! [`FIRST_FRAME`] bytes (the buffer a stranger can fill), open (the tag, when there is a
//! key) and be a `Hello` or a `Ping`; only then may frames be `max_frame_bytes`. Every
//! opener sends one of those first ([`super::link::Link::call`], the replication peer, state
//! transfer). A connection with no frame for `idle_timeout` is closed.
//!
//! With `[cluster.tls]` every connection is mutual TLS first (under `handshake_timeout`;
//! plaintext or a certificate not from the cluster CA is refused, `tls`), and the first
//! frame must name a route the peer's certificate names (`route`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use tokio_rustls::{TlsAcceptor, TlsStream};
use tokio_util::either::Either;

use super::channel::{Channels, MemberChannel};
use super::config::ReceiverConfig;
use super::link::MeshStream;
use super::membership::Membership;
use super::messages::MeshMessage;
use super::replication::Replicator;
use crate::tasks::Tasks;
use crate::wire::codec;

/// Binds the receiver on the first free port of `port .. port + auto_bind`.
pub(crate) async fn bind(cfg: &ReceiverConfig) -> std::io::Result<TcpListener> {
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

/// The largest first frame: a `Hello` or `Ping` is a few hundred bytes.
pub(super) const FIRST_FRAME: usize = 4096;

/// `[cluster.receiver]`'s bounds on connections.
pub(super) struct MeshLimits {
    total: Arc<Semaphore>,
    per_source: usize,
    open: Arc<DashMap<IpAddr, usize>>,
    handshake: Duration,
    idle: Duration,
}

impl MeshLimits {
    pub(super) fn new(cfg: &ReceiverConfig) -> Self {
        Self {
            total: Arc::new(Semaphore::new(cfg.max_connections)),
            per_source: cfg.max_connections_per_source,
            open: Arc::new(DashMap::new()),
            handshake: cfg.handshake_timeout,
            idle: cfg.idle_timeout,
        }
    }

    /// A place for a connection from `ip`, or `None` past a cap. A member's connections
    /// take no place (`member`): the caps are for strangers.
    fn admit(&self, ip: IpAddr, member: bool) -> Option<Slot> {
        if member {
            return Some(Slot {
                _permit: None,
                ip: None,
                open: self.open.clone(),
            });
        }
        let permit = self.total.clone().try_acquire_owned().ok()?;
        {
            // The entry guard is dropped at the end of this block, before any await.
            let mut n = self.open.entry(ip).or_insert(0);
            if *n >= self.per_source {
                return None;
            }
            *n += 1;
        }
        Some(Slot {
            _permit: Some(permit),
            ip: Some(ip),
            open: self.open.clone(),
        })
    }
}

/// A connection's place under [`MeshLimits`], given back when it ends.
struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    /// The source counted, for a stranger's connection.
    ip: Option<IpAddr>,
    open: Arc<DashMap<IpAddr, usize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else {
            return;
        };
        // Removed at zero: the map holds only sources with open connections.
        self.open.remove_if_mut(&ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// Accepts mesh connections until the tasks stop; each connection is a task of `tasks`.
pub(super) async fn serve(
    listener: TcpListener,
    limits: MeshLimits,
    membership: Arc<Membership>,
    replicator: Arc<Replicator>,
    channels: Arc<Channels>,
    tasks: Tasks,
) {
    let shared = Arc::new(Receiver {
        max_frame: membership.link.max_frame,
        m: membership,
        r: replicator,
        channels,
        limits,
    });
    while let Some((stream, peer)) = crate::net::accept(&listener, tasks.token(), "mesh").await {
        let ip = peer.ip().to_canonical();
        let Some(slot) = shared.limits.admit(ip, shared.m.is_member_ip(ip)) else {
            shared.m.metrics.mesh_rejected("over_limit").inc();
            tracing::debug!(%peer, "mesh connection over the limits: closed");
            continue;
        };
        shared.m.metrics.mesh_connections.inc();
        let s = shared.clone();
        tasks.spawn_until_stopped(async move {
            connection(stream, peer, &s, slot).await;
        });
    }
}

/// What every inbound connection shares.
struct Receiver {
    m: Arc<Membership>,
    r: Arc<Replicator>,
    channels: Arc<Channels>,
    limits: MeshLimits,
    max_frame: usize,
}

async fn connection(stream: TcpStream, peer: SocketAddr, s: &Receiver, slot: Slot) {
    let Receiver {
        m,
        r,
        channels,
        limits,
        max_frame,
    } = s;
    let max_frame = *max_frame;
    let _ = stream.set_nodelay(true);
    // With `[cluster.tls]` the handshake comes first, under the same timeout; plaintext or
    // a certificate the cluster CA did not sign ends here.
    let stream: MeshStream = match &m.link.tls {
        None => Either::Left(stream),
        Some(t) => {
            let accept = TlsAcceptor::from(t.tls.server.clone()).accept(stream);
            match tokio::time::timeout(limits.handshake, accept).await {
                Ok(Ok(s)) => Either::Right(TlsStream::Server(s)),
                Ok(Err(e)) => {
                    m.metrics.mesh_rejected("tls").inc();
                    tracing::debug!(%peer, error = %e, "mesh TLS handshake failed");
                    return;
                }
                Err(_) => {
                    m.metrics.mesh_rejected("handshake_timeout").inc();
                    return;
                }
            }
        }
    };
    // Until the first frame proves the peer, it can make this node buffer a few KiB only.
    let mut framed = Framed::new(stream, codec(FIRST_FRAME.min(max_frame)));
    let mut authenticated = false;
    // The route a replication connection's `Hello` named: the only owner it may speak for.
    let mut sender: Option<String> = None;
    loop {
        let wait = if authenticated {
            limits.idle
        } else {
            limits.handshake
        };
        let frame = match tokio::time::timeout(wait, framed.next()).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(_) => {
                let reason = if authenticated {
                    "idle"
                } else {
                    "handshake_timeout"
                };
                m.metrics.mesh_rejected(reason).inc();
                tracing::debug!(%peer, reason, "mesh connection closed");
                return;
            }
        };
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
        let from = match &msg {
            MeshMessage::Hello { from, .. } | MeshMessage::Ping { from, .. } => Some(from),
            _ => None,
        };
        // With TLS, a member speaks only for the route its certificate names: every
        // `Hello` and `Ping` (its identity goes into the member table), not only the first.
        if let Some(from) = from {
            if !m.link.speaks_for(framed.get_ref(), &from.jvm_route) {
                m.metrics.mesh_rejected("route").inc();
                tracing::warn!(%peer, route = %from.jvm_route, "mesh certificate does not name this route: closed");
                return;
            }
        }
        if !authenticated {
            if from.is_none() {
                m.metrics.mesh_rejected("unauthenticated").inc();
                tracing::warn!(%peer, "mesh connection began with {}: closed", msg.name());
                return;
            }
            authenticated = true;
            framed.codec_mut().set_max_frame_length(max_frame);
        }
        let reply = match msg {
            MeshMessage::Ping { domain, from } => {
                if domain != m.link.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                m.hear(from);
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
                // `fsync` persistence: "applied" means on disk too. A write that cannot be
                // made durable is not acked; the connection closes and the owner counts
                // the write as not held here (REFERENCE 4.11).
                if let Some(d) = r.durable() {
                    if let Err(e) = d.await {
                        tracing::warn!(error = %e, "replicated changes not durable: not acked");
                        return;
                    }
                }
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
            MeshMessage::Channel { domain } => {
                // Only a proven member, only over TLS (the HTTP after this has no tag of
                // its own), and only once the proxy serves channels.
                let handler = channels.handler().filter(|_| m.link.tls.is_some());
                let (Some(route), Some(handler)) = (sender.take(), handler) else {
                    m.metrics.mesh_rejected("channel").inc();
                    tracing::debug!(%peer, "forwarding channel refused");
                    return;
                };
                if domain != m.link.domain {
                    m.metrics.mesh_rejected("domain").inc();
                    return;
                }
                if framed
                    .send(m.link.seal(&MeshMessage::ChannelOpen))
                    .await
                    .is_err()
                {
                    return;
                }
                let parts = framed.into_parts();
                if !parts.read_buf.is_empty() {
                    // The opener sent HTTP before `ChannelOpen`: not one of ours.
                    m.metrics.mesh_rejected("channel").inc();
                    return;
                }
                tracing::debug!(%peer, %route, "forwarding channel open");
                // A channel is a proven member's (mutual TLS), one per forward in flight:
                // it leaves the limits, which are for connections not yet authenticated
                // (under load a member's channels would crowd out its own pings).
                drop(slot);
                handler(MemberChannel {
                    stream: parts.io,
                    peer,
                    route,
                })
                .await;
                return;
            }
            MeshMessage::HandOver { keys } => {
                // Only from the owner that said `Hello` on this connection: the sessions
                // are claimed as that route's, by a majority's vote, so a member can only
                // speed up a takeover the voters would grant anyway.
                let Some(owner) = sender.as_deref() else {
                    m.metrics.mesh_rejected("unexpected").inc();
                    return;
                };
                Some(r.take_handover(owner, &keys).await)
            }
            // Answers and transfer frames only come back on connections we opened.
            MeshMessage::HandedOver { .. }
            | MeshMessage::ChannelOpen
            | MeshMessage::Votes { .. }
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
