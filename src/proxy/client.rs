//! The client side of one connection: its address, whether it came over TLS, and the
//! flags its requests share with its framing guard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::HeaderValue;

/// The client side of one connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's IP as a header value, rendered once per connection.
    pub ip_value: HeaderValue,
    /// What the connection's requests and its framing guard share.
    pub flags: Arc<ConnFlags>,
    /// A forwarding channel from this member (its route proven by the mesh's mutual TLS):
    /// the only connections whose forwarding marker counts with `[cluster.tls]`.
    pub member: Option<Arc<str>>,
}

/// Per-connection state shared by the framing guard and the request path.
#[derive(Debug, Default)]
pub struct ConnFlags {
    /// An HTTP/1 request on this connection was refused as the client's fault: the
    /// connection closes after that answer, and nothing after it on the connection is
    /// served (hyper may read a pipelined request before the refusal's `Connection: close`
    /// goes out; the fuzzer found one smuggled that way).
    refused: AtomicBool,
    /// A head on this connection may be over `max_header_bytes` (the framing guard counts
    /// raw head bytes): requests count their head exactly. Always set where no guard reads
    /// the connection.
    pub big_head: AtomicBool,
}

impl ClientInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        Self {
            peer,
            tls,
            ip_value: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
            flags: Arc::new(ConnFlags {
                big_head: AtomicBool::new(true),
                ..Default::default()
            }),
            member: None,
        }
    }

    /// A forwarding channel from the member `route`.
    pub fn member(peer: SocketAddr, route: &str) -> Self {
        Self {
            member: Some(Arc::from(route)),
            ..Self::new(peer, false)
        }
    }

    pub fn refuse_rest(&self) {
        self.flags.refused.store(true, Ordering::Relaxed);
    }

    pub fn is_refused(&self) -> bool {
        self.flags.refused.load(Ordering::Relaxed)
    }

    pub fn may_have_big_head(&self) -> bool {
        self.flags.big_head.load(Ordering::Relaxed)
    }
}
