//! The backend side of the proxy: one pooled keep-alive client for all backends, the
//! balancer, passive and active health, timeouts and the retry rule.
//!
//! - `client`: the HTTP/1.1 exchange on one connection, run in the request's task.
//! - `pool`: per-backend idle HTTP/1.1 connections and connecting with a timeout.
//! - `balancer`: which backend a request goes to.
//! - `health`: active checks (`[backends.health]`).
//! - `request_body`: the request body on its way to a backend.
//! - `config`: the settings.
//!
//! Retry rule (REFERENCE 3): a request moves to another backend only when nothing reached the
//! first (connect failed, or the write failed at once), or when it is idempotent and has no
//! body, so it can be sent again as it was (the request's parts are only borrowed).

mod balancer;
mod client;
mod config;
mod health;
mod pool;
mod request_body;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{request, response, HeaderName, HeaderValue, Method};

use crate::metrics::{BackendCounters, Metrics};
use crate::tasks::Tasks;

use balancer::Balancer;
use client::Conn;

pub(crate) use client::{Encoded, Fault, ResponseBody, SendError, DEFAULT_MAX_HEAD};
pub(crate) use config::{Algorithm, BackendsConfig, HealthConfig, ServerConfig};
pub(super) use request_body::UpBody;

/// `down_until` value meaning "until an active health check says otherwise".
const DOWN_UNTIL_CHECKED: u64 = u64::MAX;

/// One backend server with its pool and its health.
#[derive(Debug)]
pub(crate) struct Backend {
    pub url: String,
    pub authority: String,
    /// Set at runtime (`POST /backends/<b>/weight`); the balancer's schedule follows.
    weight: AtomicU32,
    /// [`Mode`]: ready, drain or maint, set at runtime.
    mode: AtomicU8,
    /// Milliseconds (since [`Upstream`]'s epoch) before which the backend counts as down.
    down_until: AtomicU64,
    in_flight: AtomicUsize,
    idle: Mutex<Vec<pool::Idle>>,
    pub counters: BackendCounters,
}

impl Backend {
    fn new(url: String, authority: String, weight: u32, counters: BackendCounters) -> Self {
        counters.weight.set(i64::from(weight));
        Self {
            url,
            authority,
            weight: AtomicU32::new(weight),
            mode: AtomicU8::new(Mode::Ready as u8),
            down_until: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            counters,
        }
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// What the operator set: ready, or drain / maint (no new requests; in-flight ones
    /// finish).
    pub(crate) fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Drain,
            2 => Mode::Maint,
            _ => Mode::Ready,
        }
    }

    /// The balancer may give it a new request: ready, up, and a weight above 0.
    pub(crate) fn takes_new(&self, now_ms: impl FnOnce() -> u64) -> bool {
        self.mode.load(Ordering::Relaxed) == Mode::Ready as u8
            && self.weight.load(Ordering::Relaxed) > 0
            && self.is_up(now_ms)
    }

    /// `now_ms` is only asked for when the backend was marked down (saves a clock read
    /// on every request).
    pub(crate) fn is_up(&self, now_ms: impl FnOnce() -> u64) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks the backend up (true) or down (false); returns whether that changed anything.
    fn set_health(&self, up: bool, down_until: u64) -> bool {
        let new = if up { 0 } else { down_until };
        let old = self.down_until.swap(new, Ordering::Relaxed);
        self.counters.up.set(i64::from(up));
        (old == 0) != up
    }
}

/// A backend's runtime mode (HAProxy's `set server ... state`): `Drain` takes no new
/// request while its in-flight ones finish and its health checks go on; `Maint` also stops
/// its health checks and closes its idle connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    Ready = 0,
    Drain = 1,
    Maint = 2,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Ready => "ready",
            Mode::Drain => "drain",
            Mode::Maint => "maint",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Mode> {
        match s {
            "ready" => Some(Mode::Ready),
            "drain" => Some(Mode::Drain),
            "maint" => Some(Mode::Maint),
            _ => None,
        }
    }
}

/// A request's hold on a backend: its in-flight count, and where its connection returns.
/// Held by the response body until the body ends.
#[derive(Debug)]
pub(crate) struct BackendHold {
    backend: Arc<Backend>,
    max_idle: usize,
}

impl BackendHold {
    fn new(backend: Arc<Backend>, max_idle: usize) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { backend, max_idle }
    }

    /// The response was read to its end: the connection goes back to the pool.
    pub(crate) fn release(self, conn: Conn) {
        self.backend.checkin(conn, self.max_idle);
    }
}

impl Drop for BackendHold {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no backend answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("no healthy backend")]
    NoHealthy,
    #[error("{0}")]
    Connect(Box<Failure>),
    #[error("{0}")]
    Failed(Box<Failure>),
    #[error("timeout")]
    Timeout,
    /// The backend answered with a response that cannot be passed on (its own 502).
    #[error("{0}")]
    Refused(Box<Failure>),
    /// The client's request body failed: the client's error, no backend's (boxed: this
    /// error is in every request's future).
    #[error("{0}")]
    Client(Box<str>),
}

/// A backend that failed: `backend` names the server (for the log); `reason` says what
/// went wrong without it (what the client may read). Boxed in the errors that carry it, so
/// the request path's `Result`s stay small (they are moved with every future).
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {reason}")]
pub(crate) struct Failure {
    pub backend: String,
    pub reason: String,
}

impl Failure {
    pub(crate) fn new(backend: impl Into<String>, reason: impl Into<String>) -> Box<Self> {
        Box::new(Self {
            backend: backend.into(),
            reason: reason.into(),
        })
    }
}

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

pub(crate) struct Upstream {
    pub backends: Vec<Arc<Backend>>,
    /// Keep-alive pools to other members' HTTP listeners, for forwarding.
    peers: dashmap::DashMap<std::net::SocketAddr, Arc<Backend>>,
    balancer: Balancer,
    cfg: BackendsConfig,
    epoch: Instant,
    /// The lower-case session header prefix: response headers named with it are the
    /// backend's session directives, set aside in [`Exchange::session`]. Leaked once per
    /// upstream (at start, and at a reload that changed `[backends]`: the prefix's few
    /// bytes each time): the request bodies' writer tasks and the response bodies need it for
    /// trailers, and a `'static` costs them nothing where an `Arc` would cost two atomic
    /// operations per request.
    divert: &'static [u8],
    /// Own the request-body writers and the health checks.
    tasks: Tasks,
    /// Stops the health checks of an upstream a reload replaced (its request-body writers
    /// run on under `tasks`).
    retired: tokio_util::sync::CancellationToken,
}

impl Upstream {
    pub(crate) fn new(
        cfg: &BackendsConfig,
        session_prefix: &str,
        metrics: &Metrics,
        tasks: Tasks,
    ) -> Self {
        let backends: Vec<Arc<Backend>> = cfg
            .servers
            .iter()
            .map(|s| {
                let counters = metrics.backend(&s.url);
                counters.up.set(1);
                Arc::new(Backend::new(
                    s.url.clone(),
                    s.authority.clone(),
                    s.weight,
                    counters,
                ))
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight()).collect();
        Self {
            balancer: Balancer::new(cfg.algorithm, &weights),
            backends,
            peers: dashmap::DashMap::new(),
            cfg: cfg.clone(),
            epoch: Instant::now(),
            retired: tasks.token().child_token(),
            divert: Box::leak(
                session_prefix
                    .to_ascii_lowercase()
                    .into_bytes()
                    .into_boxed_slice(),
            ),
            tasks,
        }
    }

    /// Starts the active health checks and the idle-connection reaper; they end when the
    /// tasks given to [`Upstream::new`] stop.
    pub(crate) fn start_health(self: &Arc<Self>) {
        self.tasks.spawn(health::run(self.clone()));
    }

    /// The backend `name` names: its index in the list, or its `host:port`.
    pub(crate) fn find(&self, name: &str) -> Option<&Arc<Backend>> {
        match name.parse::<usize>() {
            Ok(i) => self.backends.get(i),
            Err(_) => self.backends.iter().find(|b| b.authority == name),
        }
    }

    /// Sets a backend's mode; `maint` closes its idle connections too.
    pub(crate) fn set_mode(&self, b: &Backend, mode: Mode) {
        b.mode.store(mode as u8, Ordering::Relaxed);
        b.counters.mode.set(mode as i64);
        if mode == Mode::Maint {
            b.drop_idle();
        }
        tracing::info!(backend = %b.url, mode = mode.as_str(), "backend mode set");
    }

    /// Sets a backend's weight (0..=256; 0 takes no new requests) and rebuilds the
    /// round-robin schedule.
    pub(crate) fn set_weight(&self, b: &Backend, weight: u32) {
        b.weight.store(weight, Ordering::Relaxed);
        b.counters.weight.set(i64::from(weight));
        let weights: Vec<u32> = self.backends.iter().map(|b| b.weight()).collect();
        self.balancer.reschedule(&weights);
        tracing::info!(backend = %b.url, weight, "backend weight set");
    }

    /// Replaced by a reload: its health checks end.
    pub(crate) fn retire(&self) {
        self.retired.cancel();
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn config(&self) -> &BackendsConfig {
        &self.cfg
    }

    /// A connection error or a failed exchange on a fresh connection: take the backend out
    /// until the health checker (or, without one, `fail_timeout`) brings it back.
    fn passive_failure(&self, b: &Backend) {
        let until = if self.cfg.health.enabled {
            DOWN_UNTIL_CHECKED
        } else {
            self.now_ms() + self.cfg.fail_timeout.as_millis() as u64
        };
        if b.set_health(false, until) {
            tracing::warn!(backend = %b.url, "backend marked down after a failed request");
        }
    }

    /// Forwards a request to another member's HTTP listener (one attempt). The error says
    /// whether nothing of the request was sent.
    pub(crate) async fn send_to_peer(
        &self,
        addr: std::net::SocketAddr,
        req: &request::Parts,
        extra: &[(HeaderName, HeaderValue)],
        body: &mut UpBody,
    ) -> Result<Exchange, SendError> {
        let peer = self
            .peers
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Backend::new(
                    format!("http://{addr}"),
                    addr.to_string(),
                    1,
                    BackendCounters::default(),
                ))
            })
            .clone();
        let lease = BackendHold::new(peer.clone(), self.cfg.max_idle_per_server);
        let (mut conn, _) = match peer.checkout(&self.cfg).await {
            Ok(c) => c,
            Err(e) => {
                return Err(SendError {
                    unsent: true,
                    reason: e.to_string(),
                    fault: Fault::Backend,
                })
            }
        };
        // The owner answers within its own backend timeout; this only guards against a
        // member that accepted and hung.
        let limit = self.cfg.response_timeout + std::time::Duration::from_secs(1);
        let send = conn.send(req, extra, self.divert, body, &self.tasks);
        match tokio::time::timeout(limit, send).await {
            Err(_) => Err(SendError {
                unsent: false,
                reason: "no answer in time".into(),
                fault: Fault::Backend,
            }),
            Ok(Ok(head)) => Ok(Exchange::new(conn, head, lease, self.divert, usize::MAX)),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Sends a request to a backend chosen by the balancer; returns the response head and
    /// its body, which holds the connection until it ends.
    pub(crate) async fn send(
        &self,
        req: &client::Encoded,
        body: &mut UpBody,
    ) -> Result<Exchange, UpstreamError> {
        use http_body::Body;
        // Sent and failed, it can be sent again as it is: nothing of it was consumed.
        let replayable = is_idempotent(req.method()) && body.is_end_stream();
        let attempts = 1 + self.cfg.retries;
        let mut tried: Vec<usize> = Vec::new();
        let mut last_err = UpstreamError::NoHealthy;
        for _ in 0..attempts {
            let Some(idx) = self.balancer.pick(&self.backends, || self.now_ms(), &tried) else {
                break;
            };
            let backend = &self.backends[idx];
            let lease = BackendHold::new(backend.clone(), self.cfg.max_idle_per_server);
            let (mut conn, fresh) = match backend.checkout(&self.cfg).await {
                Ok(c) => c,
                Err(e) => {
                    backend.counters.connect_errors.inc();
                    self.passive_failure(backend);
                    tried.push(idx);
                    last_err =
                        UpstreamError::Connect(Failure::new(backend.url.clone(), e.to_string()));
                    continue;
                }
            };
            match super::timer::timeout(
                self.cfg.response_timeout,
                conn.send_encoded(req, self.divert, body, &self.tasks),
            )
            .await
            {
                Err(_) => {
                    backend.counters.timeouts.inc();
                    return Err(UpstreamError::Timeout);
                }
                Ok(Ok(head)) => {
                    backend.counters.responses.inc();
                    return Ok(Exchange::new(conn, head, lease, self.divert, idx));
                }
                Ok(Err(e)) if e.fault == Fault::Client => {
                    // Not the backend's doing: no health change, no retry (the body is
                    // spent); the half-sent connection is dropped with `conn`.
                    return Err(UpstreamError::Client(e.reason.into_boxed_str()));
                }
                Ok(Err(e)) if e.fault == Fault::Response => {
                    backend.counters.errors.inc();
                    return Err(UpstreamError::Refused(Failure::new(
                        backend.url.clone(),
                        e.reason,
                    )));
                }
                Ok(Err(e)) => {
                    backend.counters.errors.inc();
                    let failed = || {
                        UpstreamError::Failed(Failure::new(backend.url.clone(), e.reason.clone()))
                    };
                    if fresh {
                        self.passive_failure(backend);
                        tried.push(idx);
                    }
                    if !(e.unsent || replayable) {
                        return Err(failed());
                    }
                    last_err = failed();
                }
            }
        }
        Err(last_err)
    }
}

/// A backend's answer: the response head, its session-prefixed headers (the backend's
/// session directives, never in `head`), and its body.
pub(crate) struct Exchange {
    pub head: response::Parts,
    pub session: client::Diverted,
    pub body: ResponseBody,
    /// The index of the backend that answered in [`Upstream::backends`] (`usize::MAX`:
    /// a member), for the access log.
    pub backend: usize,
}

impl Exchange {
    fn new(
        conn: Conn,
        head: client::Head,
        lease: BackendHold,
        strip: &'static [u8],
        backend: usize,
    ) -> Self {
        let (head, session, plan) = head.into_parts();
        Self {
            head,
            session,
            body: ResponseBody::new(conn, plan, lease, strip),
            backend,
        }
    }
}
