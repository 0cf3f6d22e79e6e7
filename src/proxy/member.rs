//! Forwards over mesh channels (REFERENCE 4.10): with `[cluster.tls]`, a request for a
//! session another member owns goes over a forwarding channel (`cluster::open_channel`:
//! mutual TLS, the member's certificate naming its route), not to its client listener.
//!
//! hyper's HTTP/1 client runs on the channels: the hand-written backend client is built on
//! `TcpStream`'s split halves, and forwards are the rare path. Channels are long-lived and
//! kept per member (at most `max_idle_per_server`), so a TLS handshake is paid per channel,
//! not per forward.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::headers::Added;
use super::upstream::{SendError, UpBody};
use crate::cluster::{Cluster, NodeInfo};
use crate::tasks::Tasks;

/// The channels to members, idle or busy, by the member's mesh address.
pub(super) struct MemberClient {
    channels: DashMap<SocketAddr, Vec<SendRequest<Watched>>>,
    max_kept: usize,
    /// How long a member may take to answer (its backend's timeout and a second).
    limit: Duration,
    tasks: Tasks,
}

impl MemberClient {
    pub(super) fn new(max_kept: usize, limit: Duration, tasks: Tasks) -> Self {
        Self {
            channels: DashMap::new(),
            max_kept: max_kept.max(1),
            limit,
            tasks,
        }
    }

    /// Sends the request to `to` over a channel (one attempt, and one more on a fresh
    /// channel when a kept one turned out closed before it took the request). The error
    /// says whether nothing of the request was sent; an unsent request's body is back in
    /// `body`.
    pub(super) async fn send(
        &self,
        cluster: &Cluster,
        to: &NodeInfo,
        parts: &http::request::Parts,
        added: &Added,
        body: &mut UpBody,
    ) -> Result<Response<Incoming>, SendError> {
        let failed = Arc::new(OnceLock::new());
        let mut out = Watched {
            body: std::mem::replace(body, UpBody::Empty),
            failed: failed.clone(),
        };
        let mut kept = self.checkout(to.mesh_addr);
        loop {
            let (mut sender, fresh) = match kept.take() {
                Some(s) => (s, false),
                None => match self.open(cluster, to).await {
                    Ok(s) => (s, true),
                    Err(e) => {
                        *body = out.body;
                        return Err(SendError::unsent(e));
                    }
                },
            };
            let req = request(parts, added, out);
            let sent = match tokio::time::timeout(self.limit, sender.try_send_request(req)).await {
                Err(_) => return Err(SendError::sent("no answer in time")),
                Ok(r) => r,
            };
            match sent {
                Ok(resp) => {
                    self.checkin(to.mesh_addr, sender);
                    return Ok(resp);
                }
                Err(mut e) => {
                    if let Some(req) = e.take_message() {
                        out = req.into_body();
                        if !fresh {
                            continue;
                        }
                        *body = out.body;
                        return Err(SendError::unsent(format!("channel: {}", e.error())));
                    }
                    if let Some(why) = failed.get() {
                        return Err(SendError::client(why.clone()));
                    }
                    return Err(SendError::sent(format!("channel: {}", e.into_error())));
                }
            }
        }
    }

    /// A kept channel that can take a request now; closed ones are dropped on the way.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Watched>> {
        let mut list = self.channels.get_mut(&addr)?;
        list.retain(|s| !s.is_closed());
        let i = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    /// Keeps a channel for the next forward (busy until its response ends); past
    /// `max_kept` it is dropped, and closes once its response is done.
    fn checkin(&self, addr: SocketAddr, s: SendRequest<Watched>) {
        let mut list = self.channels.entry(addr).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < self.max_kept {
            list.push(s);
        }
    }

    async fn open(&self, cluster: &Cluster, to: &NodeInfo) -> Result<SendRequest<Watched>, String> {
        let stream = cluster.open_channel(to).await.map_err(|e| e.to_string())?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("channel handshake: {e}"))?;
        // The connection's task: ends when the channel closes, or with the node.
        self.tasks.spawn_until_stopped(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "forwarding channel ended");
            }
        });
        Ok(sender)
    }
}

/// The request as the owner gets it: HTTP/1.1 in origin form, the headers this hop adds
/// after the request's own.
fn request(parts: &http::request::Parts, added: &Added, body: Watched) -> Request<Watched> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    let headers = req.headers_mut();
    headers.clone_from(&parts.headers);
    for (k, v) in added {
        headers.append(k, v.clone());
    }
    req
}

/// The client's body on its way over a channel; a failure of the client's is recorded
/// before hyper sees it, so the forward answers the client's 400, not the member's 502.
pub(super) struct Watched {
    body: UpBody,
    failed: Arc<OnceLock<String>>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &r {
            let _ = this.failed.set(format!("client body: {e}"));
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
