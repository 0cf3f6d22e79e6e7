//! The request path of one node (SPEC 3): sanitize, pick a backend, proxy, clean the
//! response.
//!
//! - [`frontend`]: listeners, TLS, connection limits, HTTP/1.1 + HTTP/2 serving.
//! - [`headers`]: header hygiene.
//! - [`upstream`]: backend pool, balancer, health, retries.
//! - [`body`], [`error`]: the body types and the errors the proxy answers itself.
//! - [`drain`]: telling open connections to finish on shutdown.
//! - [`timer`]: the coarse timers of the per-request deadlines.

pub mod body;
pub mod drain;
pub mod error;
pub mod frontend;
pub mod headers;
pub mod timer;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::{Plan, SessionError, SessionLayer};

use body::{ProxyBody, UpBody};
use error::{Blame, ProxyError};
use headers::{Added, ClientInfo, Hygiene};
use upstream::{Upstream, UpstreamError};

/// Everything a request needs, shared by all connections of a node.
pub struct Proxy {
    hygiene: Hygiene,
    pub upstream: Arc<Upstream>,
    pub sessions: Arc<SessionLayer>,
    pub metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Ok(Self {
            hygiene: Hygiene::new(&cfg.session.header_prefix, cfg.http.trusted_proxies.clone()),
            upstream: Arc::new(Upstream::new(
                &cfg.backends,
                &cfg.session.header_prefix,
                &metrics,
            )),
            sessions: Arc::new(SessionLayer::new(cfg, &metrics)?),
            metrics,
        })
    }

    /// The part of a request before its first wait, run when hyper hands the request over
    /// (the frontend calls it in the service call, not in the future it returns). For the
    /// common request, served by this node's backends, it ends with the backend request
    /// encoded and the client's request dropped: hyper's read buffer, whose bytes the
    /// request's header values share, is then the connection's own again when hyper reads
    /// on (it checks for a closed client right after the call), instead of a new buffer
    /// allocated per request.
    pub fn begin(&self, req: Request<Incoming>, client: &ClientInfo) -> Begun {
        let start = Instant::now();
        let http1 = req.version() < Version::HTTP_2;
        Begun {
            start,
            http1,
            step: self.prepare(req, client),
        }
    }

    /// Runs a request from [`Proxy::begin`] to its response; never fails: errors become
    /// responses.
    pub async fn finish(&self, begun: Begun) -> Response<ProxyBody> {
        let Begun { start, http1, step } = begun;
        let resp = match step {
            Step::Backend(b) => self.to_backend(b).await,
            Step::Forward(f) => Box::pin(self.to_owner(*f)).await,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                match e.blame() {
                    Blame::Client => tracing::debug!(error = %e, "client error"),
                    Blame::Backend => tracing::warn!(error = %e, "backend error"),
                    Blame::Proxy => tracing::warn!(error = %e, "cannot serve request"),
                }
                self.metrics.proxy_error(e.reason());
                let mut r = e.to_response();
                if !http1 {
                    // Connection-specific headers are illegal in HTTP/2.
                    r.headers_mut().remove(header::CONNECTION);
                }
                r
            }
        };
        self.metrics.count_status(resp.status().as_u16());
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        resp
    }

    /// Sanitizes the request and plans it: to this node's backends (encoded) or to the
    /// member that owns its session.
    fn prepare(&self, mut req: Request<Incoming>, client: &ClientInfo) -> Step {
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // A request forwarded by a member: its X-Forwarded-* are trusted, its hop count
        // stops forwarding loops. From anyone else the marker is dropped.
        let hops = self.hops_from_member(req.headers_mut().remove(HOP), client);
        // X-Forwarded-* and the session headers: written after the request's own.
        let mut added = Added::with_capacity(7);
        let upgrade = self.hygiene.request(
            req.headers_mut(),
            &mut added,
            client,
            host.as_ref(),
            hops.is_some(),
        );
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (mut parts, incoming) = req.into_parts();
        let body = UpBody::Client(incoming);
        // Backends speak HTTP/1.1 in origin form; an HTTP/2 request names its authority
        // in the URI and may split cookies over several headers.
        if parts.version == Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        if let Some(h) = host {
            parts.headers.entry(header::HOST).or_insert(h);
        }
        parts.version = Version::HTTP_11;
        if parts.uri.authority().is_some() {
            parts.uri = origin_form(&parts.uri);
        }

        // Who serves the session (SPEC 4.4). Upgrades carry no session work.
        let session = if upgrade.is_some() {
            None
        } else {
            match self.sessions.on_request(&mut parts, &mut added, client.tls) {
                Plan::Static => None,
                Plan::Local(rs) => Some(rs),
                Plan::Forward(to) => {
                    return Step::Forward(Box::new(ToOwner {
                        parts,
                        added,
                        body,
                        hops,
                        tls: client.tls,
                        to,
                    }))
                }
            }
        };
        Step::Backend(ToBackend {
            out: upstream::client::Encoded::new(&parts, &added, &body),
            body,
            session,
            client_upgrade,
        })
    }

    /// A request whose session another member owns: forwarded there. A refused forward
    /// verifies the member at once and plans again, so a client retrying after a crash
    /// does not wait for drop_time; a plan that ends here goes to this node's backends.
    async fn to_owner(&self, f: ToOwner) -> Result<Response<ProxyBody>, ProxyError> {
        let ToOwner {
            mut parts,
            mut added,
            mut body,
            hops,
            tls,
            to,
        } = f;
        let mut plan = Plan::Forward(to);
        let mut attempts = 0;
        let session = loop {
            match plan {
                Plan::Static => break None,
                Plan::Local(rs) => break Some(rs),
                Plan::Forward(to) => {
                    let hop = hops.unwrap_or(0) + 1;
                    if hop > MAX_HOPS {
                        return Err(ProxyError::Unroutable(format!(
                            "session forwarded {MAX_HOPS} times without reaching its owner"
                        )));
                    }
                    // A bodyless idempotent request can be planned again if its owner
                    // turns out dead after the request reached it.
                    let replayable = upstream::is_idempotent(&parts.method)
                        && http_body::Body::is_end_stream(&body);
                    let outcome = self.forward(&mut parts, &added, &mut body, &to, hop).await;
                    parts.headers.remove(HOP);
                    match outcome {
                        Ok(resp) => return Ok(resp),
                        Err(Forward::Failed(e)) => return Err(e),
                        Err(Forward::OwnerDied(e)) => {
                            attempts += 1;
                            if !replayable || attempts > MAX_HOPS {
                                return Err(e);
                            }
                        }
                        Err(Forward::Unsent(why)) => {
                            attempts += 1;
                            if attempts > MAX_HOPS {
                                return Err(ProxyError::Unroutable(format!(
                                    "the session's owner {} cannot be reached: {why}",
                                    to.jvm_route
                                )));
                            }
                            // Dead: removed now, and the next plan fails over. Alive
                            // (e.g. a stale keep-alive connection): try again.
                            if let Some(r) = self.sessions.replicator() {
                                r.membership.check_now(to.node_id).await;
                            }
                        }
                    }
                }
            }
            plan = self.sessions.on_request(&mut parts, &mut added, tls);
        };
        let out = upstream::client::Encoded::new(&parts, &added, &body);
        self.to_backend(ToBackend {
            out,
            body,
            session,
            client_upgrade: None,
        })
        .await
    }

    /// Sends a request to this node's backends and prepares the response: session
    /// directives applied (and, in sync mode, replicated) before it leaves.
    async fn to_backend(&self, b: ToBackend) -> Result<Response<ProxyBody>, ProxyError> {
        let ToBackend {
            out,
            mut body,
            mut session,
            client_upgrade,
        } = b;
        let upstream::Exchange {
            head: mut resp,
            session: directives,
            body: resp_body,
        } = self
            .upstream
            .send(&out, &mut body)
            .await
            .map_err(|e| match e {
                UpstreamError::NoHealthy => ProxyError::NoHealthyBackend,
                UpstreamError::Connect(m) => ProxyError::BackendConnect(m),
                UpstreamError::Failed(m) => ProxyError::BackendFailed(m),
                UpstreamError::Timeout => ProxyError::BackendTimeout,
            })?;

        if resp.status == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(client_up), Some(backend_up)) = (client_upgrade, resp_body.into_upgraded())
            else {
                return Err(ProxyError::BackendFailed(
                    "backend switched protocols without an upgrade request".into(),
                ));
            };
            tokio::spawn(tunnel(client_up, backend_up));
            self.hygiene.response(&mut resp.headers, true);
            return Ok(Response::from_parts(resp, ProxyBody::empty()));
        }
        // The client's connection decides the version, not the backend's.
        resp.version = Version::HTTP_11;
        if let Some(rs) = &mut session {
            let waits = self
                .sessions
                .on_response(rs, &mut resp, &directives)
                .map_err(|e| match e {
                    SessionError::Directive(d) => ProxyError::BadDirective(d.to_string()),
                    SessionError::Limit(_) => ProxyError::SessionLimit(e.to_string()),
                    SessionError::Random(_) => ProxyError::Internal(e.to_string()),
                })?;
            // Sync mode: the response goes out only after the members applied the change.
            self.sessions.settle(waits).await;
        }
        self.hygiene.response(&mut resp.headers, false);
        Ok(Response::from_parts(resp, ProxyBody::Upstream(resp_body)))
    }

    /// The hop count of a request forwarded by a member, if the marker is genuine: it
    /// names a member whose announced HTTP address has the peer's IP.
    fn hops_from_member(&self, marker: Option<HeaderValue>, client: &ClientInfo) -> Option<u8> {
        let marker = marker?;
        let v = marker.to_str().ok()?;
        let (n, route) = v.split_once(' ')?;
        let n: u8 = n.parse().ok()?;
        let r = self.sessions.replicator()?;
        r.membership
            .infos()
            .iter()
            .any(|m| m.jvm_route == route && m.http_addr.ip() == client.peer.ip().to_canonical())
            .then_some(n)
    }

    /// Sends the request to the member that owns its session; the member's response is the
    /// client's. `Unsent`: nothing reached the member. A member that does not answer is
    /// verified after `verify_timeout`: if it is dead (a stopped process still accepts
    /// connections), the forward is abandoned (`OwnerDied`). The caller removes the hop
    /// marker this adds.
    async fn forward(
        &self,
        parts: &mut http::request::Parts,
        added: &Added,
        body: &mut UpBody,
        to: &crate::cluster::messages::NodeInfo,
        hop: u8,
    ) -> Result<Response<ProxyBody>, Forward> {
        let marker = format!("{hop} {}", self.sessions.store.route());
        if let Ok(v) = HeaderValue::from_str(&marker) {
            parts.headers.insert(HOP, v);
        }
        let send = self.upstream.send_to_peer(to.http_addr, parts, added, body);
        let watch = async {
            let Some(r) = self.sessions.replicator() else {
                return std::future::pending().await;
            };
            tokio::time::sleep(r.membership.cfg.verify_timeout).await;
            if r.membership.check_now(to.node_id).await {
                // Alive, only slow: let the forward run to its own timeout.
                std::future::pending::<()>().await;
            }
        };
        let sent = tokio::select! {
            r = send => r,
            _ = watch => {
                return Err(Forward::OwnerDied(ProxyError::Unroutable(format!(
                    "the session's owner {} stopped answering and failed verification",
                    to.jvm_route
                ))));
            }
        };
        match sent {
            // The owner stripped its backend's directives; any here are dropped.
            Ok(upstream::Exchange { mut head, body, .. }) => {
                head.version = Version::HTTP_11;
                self.hygiene.response(&mut head.headers, false);
                Ok(Response::from_parts(head, ProxyBody::Upstream(body)))
            }
            Err((true, why)) => Err(Forward::Unsent(why)),
            Err((false, why)) => {
                // Sent, then the connection broke (a killed owner's pooled connection):
                // if the member is dead, this is a failover, not a backend error.
                let dead = match self.sessions.replicator() {
                    Some(r) => !r.membership.check_now(to.node_id).await,
                    None => false,
                };
                let e =
                    ProxyError::BackendFailed(format!("forward to member {}: {why}", to.jvm_route));
                Err(if dead {
                    Forward::OwnerDied(e)
                } else {
                    Forward::Failed(e)
                })
            }
        }
    }
}

/// A request after [`Proxy::begin`].
pub struct Begun {
    start: Instant,
    http1: bool,
    step: Step,
}

// The common variant stays inline: boxing it would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Step {
    Backend(ToBackend),
    /// Boxed, with the future of its path: the rare forward would otherwise make every
    /// request's future (moved into hyper's dispatcher) kilobytes larger.
    Forward(Box<ToOwner>),
}

/// A request for this node's backends, encoded: nothing of the client's request is kept.
struct ToBackend {
    out: upstream::client::Encoded,
    body: UpBody,
    session: Option<crate::session::RequestSession>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// A request for the member that owns its session, kept whole: it may be planned again.
struct ToOwner {
    parts: http::request::Parts,
    added: Added,
    body: UpBody,
    hops: Option<u8>,
    tls: bool,
    to: crate::cluster::messages::NodeInfo,
}

/// Forwarding markers (SPEC 4.4): `<hops> <route of the forwarding member>`.
const HOP: http::HeaderName = http::HeaderName::from_static("x-caracal-hop");
/// A request is forwarded at most twice.
const MAX_HOPS: u8 = 2;

enum Forward {
    /// Nothing reached the member: the request can go again.
    Unsent(String),
    /// The member took the request and then failed verification.
    OwnerDied(ProxyError),
    Failed(ProxyError),
}

fn join_cookies(h: &mut http::HeaderMap) {
    if h.get_all(header::COOKIE).iter().count() < 2 {
        return;
    }
    let joined = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(header::COOKIE, v);
    }
}

fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

/// Joins the client's and the backend's upgraded connections (WebSocket and friends).
/// `backend` is the raw connection, the bytes the backend sent past its 101, and the lease
/// held while the tunnel lives.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: (tokio::net::TcpStream, bytes::Bytes, Option<upstream::Lease>),
) {
    use tokio::io::AsyncWriteExt;
    let (mut b, early, lease) = backend;
    let mut c = match client.await {
        Ok(c) => TokioIo::new(c),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    if !early.is_empty() {
        if let Err(e) = c.write_all(&early).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
            return;
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
    // The backend connection was consumed by the upgrade: nothing returns to the pool.
    drop(lease);
}
