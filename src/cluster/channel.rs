//! Forwarding channels (REFERENCE 4.4, 4.10): with `[cluster.tls]`, a request for a
//! session another member owns travels over a mesh connection of its own, not to the
//! member's client listener. The opener connects with mutual TLS (the member's certificate
//! must name the route it forwards to), sends `Hello` and `Channel`, and waits for
//! `ChannelOpen`; from then on the connection carries HTTP/1.1, served by the proxy with the
//! route the `Hello` proved as the client. The forwarding marker is honoured only there, so
//! a client listener never trusts a member by its IP or a marker it could have captured.
//!
//! The opener sends nothing after `Channel` until `ChannelOpen` arrives: no HTTP byte can
//! sit in the receiver's frame buffer when the connection changes hands.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use super::error::MeshError;
use super::link::{Link, MeshStream};
use super::messages::MeshMessage;
use crate::wire::codec;

/// A forwarding channel a member opened to this node.
pub(crate) struct MemberChannel {
    pub stream: MeshStream,
    pub peer: SocketAddr,
    /// The route its `Hello` named, which its certificate names too.
    pub route: String,
}

/// Serves the channels members open (the proxy's HTTP/1 server); a channel's connection
/// task awaits it.
pub(crate) type ChannelHandler =
    Arc<dyn Fn(MemberChannel) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// `ChannelOpen` is one small frame.
const OPEN_MAX_FRAME: usize = 1024;

impl Link {
    /// A forwarding channel to the member `route` at `addr`, within `verify_timeout`.
    pub(super) async fn open_channel(
        &self,
        addr: SocketAddr,
        route: &str,
    ) -> Result<MeshStream, MeshError> {
        let open = async {
            let stream = self.connect(addr, Some(route)).await?;
            let mut framed = Framed::new(stream, codec(OPEN_MAX_FRAME));
            let channel = self.seal(&MeshMessage::Channel {
                domain: self.domain.clone(),
            });
            for frame in [self.hello(), channel] {
                framed
                    .send(frame)
                    .await
                    .map_err(|source| MeshError::Send { addr, source })?;
            }
            match framed.next().await {
                Some(Ok(f)) => match self.open(&f) {
                    Ok(MeshMessage::ChannelOpen) => {}
                    Ok(other) => {
                        return Err(MeshError::Unexpected {
                            addr,
                            what: other.name(),
                        })
                    }
                    Err(source) => return Err(MeshError::Frame { addr, source }),
                },
                Some(Err(source)) => return Err(MeshError::Read { addr, source }),
                None => return Err(MeshError::Closed { addr }),
            }
            let parts = framed.into_parts();
            if !parts.read_buf.is_empty() {
                return Err(MeshError::Unexpected {
                    addr,
                    what: "bytes after channel open",
                });
            }
            Ok(parts.io)
        };
        let limit = self.verify_timeout;
        tokio::time::timeout(limit, open)
            .await
            .map_err(|_| MeshError::Timeout { addr, limit })?
    }
}

/// Where the mesh receiver hands the channels it accepts: set once the proxy can serve
/// them; until then, and after the node stopped serving, a `Channel` is refused (the
/// forwarder verifies and plans again). Cleared at shutdown: the handler holds the proxy,
/// which holds the cluster.
#[derive(Default)]
pub(super) struct Channels {
    handler: std::sync::RwLock<Option<ChannelHandler>>,
}

impl Channels {
    pub(super) fn set(&self, h: Option<ChannelHandler>) {
        if let Ok(mut g) = self.handler.write() {
            *g = h;
        }
    }

    pub(super) fn handler(&self) -> Option<ChannelHandler> {
        self.handler.read().ok()?.clone()
    }
}
