//! The request path of one node (SPEC 3): sanitize, pick a backend, proxy, clean the
//! response.
//!
//! - [`frontend`]: listeners, TLS, connection limits, HTTP/1.1 + HTTP/2 serving.
//! - [`headers`]: header hygiene.
//! - [`upstream`]: backend pool, balancer, health, retries.
//! - [`body`], [`error`]: the body types and the errors the proxy answers itself.

pub mod body;
pub mod error;
pub mod frontend;
pub mod headers;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::{SessionError, SessionLayer};

use body::{ProxyBody, UpBody};
use error::{Blame, ProxyError};
use headers::{ClientInfo, Hygiene};
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
            upstream: Arc::new(Upstream::new(&cfg.backends, &metrics)),
            sessions: Arc::new(SessionLayer::new(cfg, &metrics)?),
            metrics,
        })
    }

    /// Serves one client request; never fails: errors become responses.
    pub async fn handle(&self, req: Request<Incoming>, client: ClientInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let http1 = req.version() < Version::HTTP_2;
        let resp = match self.proxy(req, client).await {
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

    async fn proxy(
        &self,
        mut req: Request<Incoming>,
        client: ClientInfo,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let upgrade = self
            .hygiene
            .request(req.headers_mut(), &client, host.as_ref());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
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
        // None: the static filter matched, no session work (SPEC 3.3).
        let session = if upgrade.is_some() {
            None
        } else {
            self.sessions.on_request(&mut parts, client.tls)
        };
        let up_req = Request::from_parts(parts, UpBody::Client(body));

        let (mut resp, lease) = self.upstream.send(up_req).await.map_err(|e| match e {
            UpstreamError::NoHealthy => ProxyError::NoHealthyBackend,
            UpstreamError::Connect(m) => ProxyError::BackendConnect(m),
            UpstreamError::Failed(m) => ProxyError::BackendFailed(m),
            UpstreamError::Timeout => ProxyError::BackendTimeout,
        })?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_up) = client_upgrade else {
                return Err(ProxyError::BackendFailed(
                    "backend switched protocols without an upgrade request".into(),
                ));
            };
            let backend_up = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_up, backend_up, lease));
            let (mut parts, _) = resp.into_parts();
            self.hygiene.response(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        // The client's connection decides the version, not the backend's.
        parts.version = Version::HTTP_11;
        if let Some(rs) = &session {
            // Before hygiene: the directives are session-prefixed headers.
            let waits = self
                .sessions
                .on_response(rs, &mut parts)
                .map_err(|e| match e {
                    SessionError::Directive(d) => ProxyError::BadDirective(d.to_string()),
                    SessionError::Limit(_) => ProxyError::SessionLimit(e.to_string()),
                    SessionError::Random(_) => ProxyError::Internal(e.to_string()),
                })?;
            // Sync mode: the response goes out only after the members applied the change.
            self.sessions.settle(waits).await;
        }
        self.hygiene.response(&mut parts.headers, false);
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, lease),
        ))
    }
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
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    lease: upstream::Lease,
) {
    let (c, b) = match tokio::try_join!(client, backend) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
    // The backend connection was consumed by the upgrade: nothing returns to the pool.
    drop(lease);
}
