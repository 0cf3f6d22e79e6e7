//! The request path of one node (floor 4; REFERENCE 3): sanitize, plan, pick a backend or the
//! owning member, proxy, clean the response.
//!
//! - `frontend`: listeners, TLS, connection limits, HTTP/1.1 + HTTP/2 serving.
//! - `framing`: the HTTP/1 framing guard (the duplicate lengths hyper hides).
//! - `survey`: one pass over a request's header names, for `checks` and `headers`.
//! - `checks`: what a request head must be before anything else looks at it (REFERENCE 7).
//! - `client`: the client side of a connection (`ClientInfo`, `ConnFlags`).
//! - `headers`: header hygiene.
//! - `hop`: the forwarding marker between members.
//! - `request_id`: the id that ties a response to its log line.
//! - `trailers`: trailer hygiene, both ways.
//! - `sticky`: the session layer around the backend: who serves a session, directives.
//! - `forward`: requests for a session another member owns.
//! - `member`: forwards over the mesh's channels (with `[cluster.tls]`).
//! - `upstream`: backend pool, balancer, health, retries, the HTTP/1.1 client.
//! - `body`, `error`: the body types and the errors the proxy answers itself.
//! - `tunnel`: upgraded connections.
//! - `access`: the access log (a line per request, written off the request path).
//! - `drain`: telling open connections to finish on shutdown.
//! - `leave`: a draining node hands its sessions to their successors (REFERENCE 4.8).
//! - `timer`: the coarse timers of the per-request deadlines.

mod access;
mod body;
mod checks;
mod client;
mod drain;
mod error;
mod forward;
mod framing;
mod frontend;
mod headers;
mod hop;
mod leave;
mod member;
mod request_id;
mod sticky;
mod survey;
mod timer;
mod trailers;
mod tunnel;
mod upstream;

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::session::{ReplicationConfig, SessionConfig};
use crate::tasks::Tasks;

use body::{ProxyBody, UpBody};
use error::{Blame, ProxyError};
use forward::ToOwner;
use hop::HOP;
use request_id::RequestId;
use sticky::{Plan, SessionLayer};

pub(crate) use access::{AccessLog, Format as AccessFormat};
pub(crate) use frontend::{Frontend, HttpConfig, HttpsConfig};
pub use headers::{Added, ClientInfo, Hygiene};
pub(crate) use leave::DrainReport;
pub(crate) use timer::start as start_timer;
pub use timer::ticking;
pub(crate) use upstream::{
    Algorithm, BackendsConfig, HealthConfig, Mode, ServerConfig, Upstream, DEFAULT_MAX_HEAD,
};

/// What a node's proxy is built from (the config layer's sections).
pub(crate) struct Settings<'a> {
    pub jvm_route: &'a str,
    pub http: &'a HttpConfig,
    pub backends: &'a BackendsConfig,
    pub session: &'a SessionConfig,
    pub replication: &'a ReplicationConfig,
    /// `[jvm_route_binder] enabled`.
    pub jvm_route_binder: bool,
}

/// Everything a request needs, shared by all connections of a node.
pub(crate) struct Proxy {
    hygiene: Hygiene,
    /// `[http] request_id_header`.
    request_id: Option<http::HeaderName>,
    /// `[http] max_header_bytes`, checked exactly (REFERENCE 7).
    max_header_bytes: usize,
    /// Swapped whole by a reload (`[backends]` changed): a request keeps the one it began
    /// with, so nothing in flight is cut.
    upstream: std::sync::RwLock<Arc<Upstream>>,
    sessions: Arc<SessionLayer>,
    /// Forwarding channels to members (with `[cluster.tls]`).
    members: member::MemberClient,
    pub metrics: Arc<Metrics>,
    /// Owns the tunnels of upgraded connections.
    tasks: Tasks,
    /// `[log] access`.
    access: Option<AccessLog>,
}

impl Proxy {
    /// `tasks` own what outlives a request: tunnels, and request bodies still being
    /// written to a backend.
    pub(crate) fn new(
        s: &Settings<'_>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Result<Self, http::Error> {
        let prefix = &s.session.header_prefix;
        Ok(Self {
            hygiene: Hygiene::new(
                prefix,
                s.http.trusted_proxies.clone(),
                s.http.upgrades.clone(),
                s.http.request_id_header.clone(),
            ),
            request_id: s.http.request_id_header.clone(),
            max_header_bytes: s.http.max_header_bytes,
            upstream: std::sync::RwLock::new(Arc::new(Upstream::new(
                s.backends,
                prefix,
                &metrics,
                tasks.clone(),
            ))),
            sessions: Arc::new(SessionLayer::new(
                s.jvm_route,
                s.session,
                s.replication,
                s.jvm_route_binder,
                &metrics,
            )?),
            members: member::MemberClient::new(
                s.backends.max_idle_per_server,
                s.backends.response_timeout + std::time::Duration::from_secs(1),
                tasks.clone(),
            ),
            metrics,
            tasks,
            access: None,
        })
    }

    /// The backends now.
    pub(crate) fn upstream(&self) -> Arc<Upstream> {
        self.upstream
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A reload's new `[backends]`: new requests go to `new` (its health checks started);
    /// the old one's checks stop, and its connections close as their requests end.
    pub(crate) fn swap_upstream(&self, cfg: &BackendsConfig) {
        let new = Arc::new(Upstream::new(
            cfg,
            self.hygiene.prefix(),
            &self.metrics,
            self.tasks.clone(),
        ));
        new.start_health();
        let old = std::mem::replace(
            &mut *self.upstream.write().unwrap_or_else(|p| p.into_inner()),
            new,
        );
        old.retire();
    }

    /// A reload's `[session]` limits.
    pub(crate) fn set_session_limits(&self, s: &SessionConfig) {
        self.sessions.set_limits(s);
    }

    /// A reload's `[replication] filter`.
    pub(crate) fn set_filter(&self, replication: &ReplicationConfig) {
        self.sessions.set_filter(replication);
    }

    /// Writes a line per request to `log` (set before the proxy serves).
    pub(crate) fn with_access_log(mut self, log: Option<AccessLog>) -> Self {
        self.access = log;
        self
    }

    /// The session store (for the admin endpoints and the cluster).
    pub(crate) fn store(&self) -> &Arc<crate::session::SessionStore> {
        &self.sessions.store
    }

    /// From now on session changes are replicated (set once, before the node serves).
    pub(crate) fn set_cluster(&self, c: Arc<crate::cluster::Cluster>) {
        self.sessions.set_cluster(c);
    }

    /// Ends every session this node owns and waits for the cluster to apply it
    /// (`expire_sessions_on_shutdown`).
    pub(crate) async fn end_owned_sessions(&self) -> usize {
        self.sessions.end_owned_sessions().await
    }

    /// Drains this node: hands its sessions to their successors (REFERENCE 4.8), within
    /// `limit`; see [`DrainReport`].
    pub(crate) async fn drain(&self, limit: std::time::Duration) -> DrainReport {
        self.sessions.drain(limit).await
    }

    /// An admin drain ends: ready again (the sessions handed over stay where they are).
    pub(crate) async fn resume(&self) {
        if let Some(c) = self.sessions.cluster() {
            c.resume().await;
        }
    }

    /// Removes expired sessions every `every` until the tasks stop.
    pub(crate) fn start_sweep(&self, every: std::time::Duration, tasks: &Tasks) {
        tasks.spawn(self.sessions.clone().sweep(every, tasks.token().clone()));
    }

    /// Serves one request; never fails: errors become responses. The part before the first
    /// wait runs in this call, when hyper hands the request over (the frontend calls it in
    /// the service call, not in the future it returns). For the common request, served by
    /// this node's backends, it ends with the backend request encoded and the client's
    /// request dropped: hyper's read buffer, whose bytes the request's header values share,
    /// is then the connection's own again when hyper reads on (it checks for a closed
    /// client right after the call), instead of a new buffer allocated per request.
    ///
    /// The rest is one `async` block, with the backend exchange written in it rather than
    /// in an `async fn` of its own: every level of `async fn` keeps its arguments for its
    /// whole life and is moved whole into its caller, and this future is moved several
    /// times per request (callgrind: each level cost ~10% of the proxy's own instructions).
    pub(crate) fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client: &ClientInfo,
    ) -> impl std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>
           + Send
           + 'static {
        let start = Instant::now();
        let http1 = req.version() < Version::HTTP_2;
        let mut id = RequestId::new();
        let mut logged = self
            .access
            .as_ref()
            .map(|log| access::Pending::of(&req, client.peer, log.format));
        let mut step = if http1 && client.is_refused() {
            Step::Fail(ProxyError::BadRequest(
                "the connection is closing after a refused request",
            ))
        } else {
            self.prepare(req, client, &mut id)
        };
        if let (true, Step::Fail(e)) = (http1, &step) {
            if e.blame() == Blame::Client {
                client.refuse_rest();
            }
        }
        let this = self.clone();
        async move {
            let resp = 'done: {
                // A forward that ends here comes back as a request for this node's
                // backends; `step` is used in place (no move of the common request).
                if let Step::Forward(_) = &step {
                    if let Step::Forward(f) = std::mem::replace(&mut step, Step::Taken) {
                        if let (Some(p), Plan::Forward(to)) = (&mut logged, &f.plan) {
                            p.sent = Some(Instant::now());
                            p.upstream = Some(format!("member:{}", to.jvm_route));
                        }
                        match Box::pin(this.to_owner(*f)).await {
                            Ok(forward::Routed::Local(b)) => step = Step::Backend(b),
                            Ok(forward::Routed::Served(resp)) => {
                                if let Some(p) = &mut logged {
                                    if let Some(u) = p.upstream.take() {
                                        p.answered(u);
                                    }
                                }
                                break 'done Ok(resp);
                            }
                            Err(e) => break 'done Err(e),
                        }
                    }
                }
                let b = match &mut step {
                    Step::Backend(b) => b,
                    Step::Fail(e) => {
                        break 'done Err(std::mem::replace(e, ProxyError::SessionMoved))
                    }
                    Step::Forward(_) | Step::Taken => {
                        break 'done Err(ProxyError::Internal("request planned twice"))
                    }
                };
                if let Some(p) = &mut logged {
                    p.sent = Some(Instant::now());
                }
                let up = this.upstream();
                let upstream::Exchange {
                    head: mut resp,
                    session: directives,
                    body: resp_body,
                    backend,
                } = match up.send(&b.out, &mut b.body).await {
                    Ok(x) => x,
                    Err(e) => break 'done Err(e.into()),
                };
                if let Some(p) = &mut logged {
                    let name = up.backends.get(backend);
                    p.answered(name.map_or_else(|| "member".into(), |b| b.authority.clone()));
                    p.session = b.session.as_ref().and_then(|rs| rs.key).map(|k| k.base());
                }
                if resp.status == StatusCode::SWITCHING_PROTOCOLS {
                    break 'done this.upgraded(resp, resp_body, b.client_upgrade.take());
                }
                // The client's connection decides the version, not the backend's.
                resp.version = Version::HTTP_11;
                if let Some(rs) = &mut b.session {
                    let settle = match this.sessions.on_response(rs, &mut resp, &directives) {
                        Ok(s) => s,
                        Err(e) => break 'done Err(e.into()),
                    };
                    // Sync mode: the response goes out only after the members applied the
                    // change, and never as a success when they fenced it (another node
                    // owns it now).
                    if let Err(e) = this.sessions.settle(settle).await {
                        break 'done Err(e.into());
                    }
                }
                this.hygiene.response(&mut resp.headers, false);
                Ok(Response::from_parts(resp, ProxyBody::Upstream(resp_body)))
            };
            let resp = match resp {
                Ok(r) => r,
                Err(e) => this.answer_error(&e, &id, http1),
            };
            this.metrics.count_status(resp.status().as_u16());
            this.metrics.latency.observe(start.elapsed().as_secs_f64());
            if let (Some(log), Some(p)) = (&this.access, logged) {
                let bytes = http_body::Body::size_hint(resp.body()).exact();
                log.log(p.entry(id.to_string(), resp.status().as_u16(), bytes, start));
            }
            Ok(resp)
        }
    }

    /// Sanitizes the request and plans it: to this node's backends (encoded) or to the
    /// member that owns its session. `id` becomes the request's id (the client's, from a
    /// trusted proxy or member).
    fn prepare(&self, mut req: Request<Incoming>, client: &ClientInfo, id: &mut RequestId) -> Step {
        // One look at the header names, for the checks and the hygiene both.
        let count_size = client.may_have_big_head();
        let mut seen = survey::Survey::of(
            req.headers(),
            self.hygiene.prefix(),
            self.request_id.as_ref(),
            count_size,
        );
        if let Err(e) = checks::head(&req, &seen, self.max_header_bytes, count_size) {
            return Step::Fail(e);
        }
        // The target's authority wins over a Host header (absolute form, HTTP/2
        // `:authority`) and becomes the backend's Host (RFC 9112 3.2.2).
        let authority = req.uri().authority().is_some();
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => seen.host.take(),
        };
        // A request forwarded by a member: its X-Forwarded-* are trusted, its hop count
        // stops forwarding loops, and it says whether the client came over TLS. From
        // anyone else the marker is dropped.
        let marker = if seen.marker {
            req.headers_mut().remove(HOP)
        } else {
            None
        };
        let hop = self.hop_from_member(marker, client, &req);
        let hops = hop.map(|h| h.0);
        let tls = hop.map_or(client.tls, |h| h.1);
        // X-Forwarded-* and the session headers: written after the request's own.
        let mut added = Added::with_capacity(8);
        let cleaned = self.hygiene.request_surveyed(
            req.headers_mut(),
            &seen,
            &mut added,
            client,
            host.as_ref(),
            hops.is_some(),
        );
        // This hop's own id goes into the backend's head as bytes (below), or with the
        // request to the owner (as a header value: the rare path).
        let mut own_id = None;
        if self.request_id.is_some() {
            match cleaned.request_id {
                Some(theirs) => *id = RequestId::Theirs(Box::new(theirs)),
                None => own_id = id.hex(),
            }
        }
        let upgrade = cleaned.upgrade;
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (mut parts, incoming) = req.into_parts();
        let body = UpBody::Client(incoming);
        // Backends speak HTTP/1.1 in origin form; an HTTP/2 request names its authority
        // in the URI and may split cookies over several headers.
        if parts.version == Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        match host {
            Some(h) if authority => {
                parts.headers.insert(header::HOST, h);
            }
            Some(_) => {}
            // HTTP/1.0 may omit it; backends get HTTP/1.1, which needs one (empty: RFC 9112
            // 3.2, a target without an authority).
            None => {
                parts
                    .headers
                    .insert(header::HOST, HeaderValue::from_static(""));
            }
        }
        parts.version = Version::HTTP_11;
        if parts.uri.authority().is_some() {
            parts.uri = origin_form(&parts.uri);
        }

        // Who serves the session (REFERENCE 4.4). Upgrades carry no session work.
        let session = if upgrade.is_some() {
            None
        } else {
            match self.sessions.on_request(&mut parts, &mut added, tls) {
                Plan::Static => None,
                Plan::Local(rs) => Some(rs),
                Plan::Refuse(why) => return Step::Fail(ProxyError::unsafe_now(why)),
                plan @ (Plan::Forward(_) | Plan::Claim { .. } | Plan::Locate(_)) => {
                    if let (Some(name), Some(_)) = (&self.request_id, own_id) {
                        added.push((name.clone(), id.value()));
                    }
                    return Step::Forward(Box::new(ToOwner {
                        parts,
                        added,
                        body,
                        hops,
                        tls,
                        plan,
                    }));
                }
            }
        };
        Step::Backend(ToBackend {
            out: upstream::Encoded::new(
                &parts,
                &added,
                self.request_id
                    .as_ref()
                    .zip(own_id.as_ref().map(|h| &h[..])),
                &body,
            ),
            body,
            session,
            client_upgrade,
        })
    }
}

impl Proxy {
    /// The proxy's own answer to a failed request, logged with its request id. Out of line
    /// and cold: inlined, it grew the request path's future (more bytes moved per request).
    #[cold]
    #[inline(never)]
    fn answer_error(&self, e: &ProxyError, id: &RequestId, http1: bool) -> Response<ProxyBody> {
        let id = id.to_string();
        match e.blame() {
            Blame::Client => tracing::debug!(request_id = %id, error = %e, "bad request"),
            Blame::Backend => tracing::warn!(request_id = %id, error = %e, "backend error"),
            Blame::Proxy => tracing::warn!(request_id = %id, error = %e, "cannot serve request"),
        }
        self.metrics.proxy_error(e.reason());
        let mut r = e.to_response(&id, self.request_id.as_ref());
        if !http1 {
            // Connection-specific headers are illegal in HTTP/2.
            r.headers_mut().remove(header::CONNECTION);
        }
        r
    }

    /// A `101` to an upgrade request: the tunnel joins the two connections. Out of line and
    /// cold: inlined, its code made the request path's future too large to be inlined
    /// itself, which cost every request extra moves (callgrind, bench/RESULTS.md).
    #[cold]
    #[inline(never)]
    fn upgraded(
        &self,
        mut resp: http::response::Parts,
        body: upstream::ResponseBody,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (Some(client_up), Some(backend_up)) = (client_upgrade, body.into_upgraded()) else {
            return Err(ProxyError::BackendFailed(upstream::Failure::new(
                "-",
                "backend switched protocols without an upgrade request",
            )));
        };
        self.tasks
            .spawn_until_stopped(tunnel::tunnel(client_up, backend_up));
        self.hygiene.response(&mut resp.headers, true);
        Ok(Response::from_parts(resp, ProxyBody::empty()))
    }
}

// The common variant stays inline: boxing it would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Step {
    Backend(ToBackend),
    /// Boxed, with the future of its path: the rare forward would otherwise make every
    /// request's future (moved into hyper's dispatcher) kilobytes larger. Also a takeover.
    Forward(Box<ToOwner>),
    /// Answered at once (no lease, REFERENCE 4.9).
    Fail(ProxyError),
    /// Moved out while a forward runs.
    Taken,
}

/// A request for this node's backends, encoded: nothing of the client's request is kept.
struct ToBackend {
    out: upstream::Encoded,
    body: UpBody,
    session: Option<sticky::RequestSession>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
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
