//! [`Link`]: what every part of the cluster needs to talk on the mesh. The key, the domain,
//! this node's announced identity and the mesh's limits, in one handle that membership,
//! the mesh receiver, the replication peers and state transfer share (none of them reaches
//! into another for it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::{TlsConnector, TlsStream};
use tokio_util::either::Either;

use super::config::MeshTlsConfig;
use super::error::MeshError;
use super::messages::{open_mesh, seal_mesh, seal_replicate, FrameError, MeshMessage, NodeInfo};
use crate::lifecycle::NodeState;
use crate::tls::MESH_NAME;
use crate::wire::{codec, ClusterKey};
use tokio_util::codec::LengthDelimitedCodec;

/// Frames of pings and pongs are small; this caps what a verifier reads.
const PING_MAX_FRAME: usize = 64 * 1024;

/// This node, as it announces itself.
pub(super) struct Me {
    /// Random per process start: tells a restarted node from its previous life.
    pub node_id: u64,
    pub mesh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: Arc<NodeState>,
}

pub(super) struct Link {
    key: Option<ClusterKey>,
    /// `[cluster.membership] domain`: frames of another cluster are refused.
    pub domain: String,
    me: Me,
    /// How long a connect + ping/pong may take (`verify_timeout`).
    pub verify_timeout: Duration,
    /// `[cluster.receiver] max_frame_bytes`.
    pub max_frame: usize,
    /// `[cluster.tls]`: every mesh connection is mutual TLS.
    pub tls: Option<MeshTlsConfig>,
    /// A ping connection kept per address: the lease pings every member each `frequency`,
    /// and with TLS a connection per ping would be a handshake per ping.
    kept: dashmap::DashMap<SocketAddr, Framed<MeshStream, LengthDelimitedCodec>>,
}

/// A mesh connection, plain or TLS (either end).
pub(crate) type MeshStream = Either<TcpStream, TlsStream<TcpStream>>;

/// The certificate the other end of `s` presented (TLS only).
pub(super) fn peer_cert(s: &MeshStream) -> Option<CertificateDer<'static>> {
    match s {
        Either::Left(_) => None,
        Either::Right(t) => t.get_ref().1.peer_certificates()?.first().cloned(),
    }
}

impl Link {
    pub(super) fn new(
        key: Option<ClusterKey>,
        domain: String,
        me: Me,
        verify_timeout: Duration,
        max_frame: usize,
        tls: Option<MeshTlsConfig>,
    ) -> Self {
        Self {
            key,
            domain,
            me,
            verify_timeout,
            max_frame,
            tls,
            kept: dashmap::DashMap::new(),
        }
    }

    /// A connection to a member's mesh address; with `[cluster.tls]`, mutual TLS, the
    /// member's certificate valid for [`MESH_NAME`] and, when `route` is known and
    /// `bind_routes` is on, for that route.
    pub(super) async fn connect(
        &self,
        addr: SocketAddr,
        route: Option<&str>,
    ) -> Result<MeshStream, MeshError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| MeshError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let Some(t) = &self.tls else {
            return Ok(Either::Left(stream));
        };
        let tls_err = |reason: String| MeshError::Tls { addr, reason };
        let name = ServerName::try_from(MESH_NAME).map_err(|e| tls_err(e.to_string()))?;
        let s = TlsConnector::from(t.tls.client.clone())
            .connect(name, stream)
            .await
            .map_err(|e| tls_err(e.to_string()))?;
        let s = Either::Right(TlsStream::Client(s));
        if let Some(r) = route {
            if !self.speaks_for(&s, r) {
                return Err(tls_err(format!("its certificate does not name route {r}")));
            }
        }
        Ok(s)
    }

    /// The other end of `s` may speak for `route`: always without TLS or with
    /// `bind_routes = false`; else its certificate must name the route.
    pub(super) fn speaks_for(&self, s: &MeshStream, route: &str) -> bool {
        match &self.tls {
            Some(t) if t.bind_routes => {
                peer_cert(s).is_some_and(|c| crate::tls::names_route(&c, route))
            }
            _ => true,
        }
    }

    /// What this node announces now.
    /// This node's announced state changes (the next heartbeat or ping carries it).
    pub(super) fn set_state(&self, s: crate::lifecycle::State) {
        self.me.state.set_state(s);
    }

    pub(super) fn me(&self) -> NodeInfo {
        let s = &self.me.state;
        NodeInfo {
            node_id: self.me.node_id,
            jvm_route: s.jvm_route.clone(),
            mesh_addr: self.me.mesh_addr,
            http_addr: self.me.http_addr,
            state: s.state(),
            alive_ms: s.uptime_ms(),
        }
    }

    pub(super) fn node_id(&self) -> u64 {
        self.me.node_id
    }

    pub(super) fn route(&self) -> &str {
        &self.me.state.jvm_route
    }

    pub(super) fn mesh_addr(&self) -> SocketAddr {
        self.me.mesh_addr
    }

    pub(super) fn key(&self) -> Option<&ClusterKey> {
        self.key.as_ref()
    }

    /// A mesh frame of this cluster (tagged when it has a key).
    pub(super) fn seal(&self, msg: &MeshMessage) -> bytes::Bytes {
        bytes::Bytes::from(seal_mesh(msg, self.key.as_ref()))
    }

    /// The `Hello` that opens a connection for anything but a ping: the receiver takes
    /// nothing larger, and nothing else, before it (`mesh`, bounded before authentication).
    pub(super) fn hello(&self) -> bytes::Bytes {
        self.seal(&MeshMessage::Hello {
            domain: self.domain.clone(),
            from: self.me(),
        })
    }

    /// A `Replicate` frame of changes already encoded ([`super::messages::encode_change`]).
    pub(super) fn seal_replicate<'a>(
        &self,
        seq: u64,
        changes: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
    ) -> bytes::Bytes {
        bytes::Bytes::from(seal_replicate(seq, changes, self.key.as_ref()))
    }

    /// Opens a mesh frame: version, tag, decoding.
    pub(super) fn open(&self, frame: &[u8]) -> Result<MeshMessage, FrameError> {
        open_mesh(frame, self.key.as_ref())
    }

    /// Sends a ping to `addr` and waits for the pong, all within `verify_timeout`: on the
    /// connection kept from the last ping, or (none, or it turned out closed) a new one,
    /// kept after. A kept connection that stays silent is the member's silence: no second
    /// try, so a stopped member is found within `verify_timeout` as before.
    pub(super) async fn ping(&self, addr: SocketAddr) -> Result<NodeInfo, MeshError> {
        let limit = self.verify_timeout;
        let ping = self.seal(&MeshMessage::Ping {
            domain: self.domain.clone(),
            from: self.me(),
        });
        let exchange = async {
            // Taken out of the map: the guard is not held across the awaits below.
            let kept = self.kept.remove(&addr).map(|(_, f)| f);
            if let Some(mut f) = kept {
                match self.ping_on(&mut f, addr, ping.clone()).await {
                    Ok(from) => {
                        self.kept.insert(addr, f);
                        return Ok(from);
                    }
                    // Closed since (the member restarted, or an idle close): a new one.
                    Err(
                        MeshError::Send { .. } | MeshError::Read { .. } | MeshError::Closed { .. },
                    ) => {}
                    Err(e) => return Err(e),
                }
            }
            let stream = self.connect(addr, None).await?;
            let mut f = Framed::new(stream, codec(PING_MAX_FRAME));
            let from = self.ping_on(&mut f, addr, ping).await?;
            self.kept.insert(addr, f);
            Ok(from)
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| MeshError::Timeout { addr, limit })?
    }

    /// One ping and its pong on `f`; the pong's route must be one the connection's
    /// certificate names.
    async fn ping_on(
        &self,
        f: &mut Framed<MeshStream, LengthDelimitedCodec>,
        addr: SocketAddr,
        ping: bytes::Bytes,
    ) -> Result<NodeInfo, MeshError> {
        f.send(ping)
            .await
            .map_err(|source| MeshError::Send { addr, source })?;
        let frame = match f.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(source)) => return Err(MeshError::Read { addr, source }),
            None => return Err(MeshError::Closed { addr }),
        };
        match self
            .open(&frame)
            .map_err(|source| MeshError::Frame { addr, source })?
        {
            MeshMessage::Pong { from } if self.speaks_for(f.get_ref(), &from.jvm_route) => Ok(from),
            MeshMessage::Pong { from } => Err(MeshError::Tls {
                addr,
                reason: format!("its certificate does not name route {}", from.jvm_route),
            }),
            other => Err(MeshError::Unexpected {
                addr,
                what: other.name(),
            }),
        }
    }

    /// Forgets the ping connection kept to `addr` (its member left).
    pub(super) fn forget(&self, addr: SocketAddr) {
        self.kept.remove(&addr);
    }

    /// One request and its answer on a connection of its own, within `limit`; answers
    /// larger than `max_frame` are refused.
    pub(super) async fn call(
        &self,
        addr: SocketAddr,
        msg: &MeshMessage,
        max_frame: usize,
        limit: Duration,
    ) -> Result<MeshMessage, MeshError> {
        let exchange = async {
            let stream = self.connect(addr, None).await?;
            let mut framed = Framed::new(stream, codec(max_frame));
            if !matches!(msg, MeshMessage::Ping { .. }) {
                framed
                    .send(self.hello())
                    .await
                    .map_err(|source| MeshError::Send { addr, source })?;
            }
            framed
                .send(self.seal(msg))
                .await
                .map_err(|source| MeshError::Send { addr, source })?;
            match framed.next().await {
                Some(Ok(f)) => {
                    let msg = self
                        .open(&f)
                        .map_err(|source| MeshError::Frame { addr, source })?;
                    // A pong names who answered: its certificate must agree.
                    if let MeshMessage::Pong { from } = &msg {
                        if !self.speaks_for(framed.get_ref(), &from.jvm_route) {
                            return Err(MeshError::Tls {
                                addr,
                                reason: format!(
                                    "its certificate does not name route {}",
                                    from.jvm_route
                                ),
                            });
                        }
                    }
                    Ok(msg)
                }
                Some(Err(source)) => Err(MeshError::Read { addr, source }),
                None => Err(MeshError::Closed { addr }),
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| MeshError::Timeout { addr, limit })?
    }
}
