//! The backend side of the proxy: one pooled keep-alive client for all backends, the
//! balancer, passive and active health, timeouts and the retry rule.
//!
//! - [`pool`]: per-backend idle HTTP/1.1 connections and connecting with a timeout.
//! - [`balancer`]: which backend a request goes to.
//! - [`health`]: active checks (`[backends.health]`).
//!
//! Retry rule (SPEC 3): a request moves to another backend only when nothing reached the
//! first (connect failed, or hyper handed the request back unsent), or when it is
//! idempotent and has no body, so it can be sent again as it was.

pub mod balancer;
pub mod health;
pub mod pool;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use crate::config::BackendsConfig;
use crate::metrics::{BackendCounters, Metrics};

use super::body::UpBody;
use balancer::Balancer;

/// `down_until` value meaning "until an active health check says otherwise".
const DOWN_UNTIL_CHECKED: u64 = u64::MAX;

/// One backend server with its pool and its health.
#[derive(Debug)]
pub struct Backend {
    pub url: String,
    pub authority: String,
    pub weight: u32,
    /// Milliseconds (since [`Upstream`]'s epoch) before which the backend counts as down.
    down_until: AtomicU64,
    in_flight: AtomicUsize,
    idle: Mutex<Vec<pool::Idle>>,
    pub counters: BackendCounters,
}

impl Backend {
    pub fn is_up(&self, now_ms: u64) -> bool {
        now_ms >= self.down_until.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
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

/// A backend connection lent to one request, plus its in-flight count. Dropping it without
/// [`Lease::release`] closes the connection (the response was not read to its end).
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    sender: Option<SendRequest<UpBody>>,
    max_idle: usize,
}

impl Lease {
    fn new(backend: Arc<Backend>, max_idle: usize) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            backend,
            sender: None,
            max_idle,
        }
    }

    /// The response was read to its end: the connection goes back to the pool.
    pub fn release(mut self) {
        if let Some(s) = self.sender.take() {
            self.backend.checkin(s, self.max_idle);
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no healthy backend")]
    NoHealthy,
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Failed(String),
    #[error("timeout")]
    Timeout,
}

/// The parts of a bodyless idempotent request, kept so it can be sent again.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(req: &Request<UpBody>) -> Option<Self> {
        use http_body::Body;
        (is_idempotent(req.method()) && req.body().is_end_stream()).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn build(&self) -> Request<UpBody> {
        let mut r = Request::new(UpBody::Empty);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

pub struct Upstream {
    pub backends: Vec<Arc<Backend>>,
    /// Keep-alive pools to other members' HTTP listeners, for forwarding.
    peers: dashmap::DashMap<std::net::SocketAddr, Arc<Backend>>,
    balancer: Balancer,
    cfg: BackendsConfig,
    epoch: Instant,
}

impl Upstream {
    pub fn new(cfg: &BackendsConfig, metrics: &Metrics) -> Self {
        let backends: Vec<Arc<Backend>> = cfg
            .servers
            .iter()
            .map(|s| {
                let counters = metrics.backend(&s.url);
                counters.up.set(1);
                Arc::new(Backend {
                    url: s.url.clone(),
                    authority: s.authority.clone(),
                    weight: s.weight,
                    down_until: AtomicU64::new(0),
                    in_flight: AtomicUsize::new(0),
                    idle: Mutex::new(Vec::new()),
                    counters,
                })
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self {
            balancer: Balancer::new(cfg.algorithm, &weights),
            backends,
            peers: dashmap::DashMap::new(),
            cfg: cfg.clone(),
            epoch: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn config(&self) -> &BackendsConfig {
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

    /// Forwards `req` to another member's HTTP listener (one attempt). On failure, the
    /// request comes back if nothing of it was sent.
    pub async fn send_to_peer(
        &self,
        addr: std::net::SocketAddr,
        req: Request<UpBody>,
    ) -> Result<(Response<Incoming>, Lease), (Option<Request<UpBody>>, String)> {
        let peer = self
            .peers
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Backend {
                    url: format!("http://{addr}"),
                    authority: addr.to_string(),
                    weight: 1,
                    down_until: AtomicU64::new(0),
                    in_flight: AtomicUsize::new(0),
                    idle: Mutex::new(Vec::new()),
                    counters: BackendCounters::default(),
                })
            })
            .clone();
        let mut lease = Lease::new(peer.clone(), self.cfg.max_idle_per_server);
        let (mut sender, _, _) = match peer.checkout(&self.cfg).await {
            Ok(c) => c,
            Err(e) => return Err((Some(req), e.to_string())),
        };
        // The owner answers within its own backend timeout; this only guards against a
        // member that accepted and hung.
        let limit = self.cfg.response_timeout + std::time::Duration::from_secs(1);
        match tokio::time::timeout(limit, sender.try_send_request(req)).await {
            Err(_) => Err((None, "no answer in time".into())),
            Ok(Ok(resp)) => {
                lease.sender = Some(sender);
                Ok((resp, lease))
            }
            Ok(Err(mut e)) => {
                let why = e.error().to_string();
                Err((e.take_message(), why))
            }
        }
    }

    /// Sends `req` to a backend chosen by the balancer; returns the response head and the
    /// lease that must live as long as its body.
    pub async fn send(
        &self,
        mut req: Request<UpBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let mut replay: Option<Replay> = None;
        let attempts = 1 + self.cfg.retries;
        let mut tried: Vec<usize> = Vec::new();
        let mut last_err = UpstreamError::NoHealthy;
        for _ in 0..attempts {
            let Some(idx) = self.balancer.pick(&self.backends, self.now_ms(), &tried) else {
                break;
            };
            let backend = &self.backends[idx];
            let mut lease = Lease::new(backend.clone(), self.cfg.max_idle_per_server);
            let (mut sender, fresh, idle_for) = match backend.checkout(&self.cfg).await {
                Ok(c) => c,
                Err(e) => {
                    backend.counters.connect_errors.inc();
                    self.passive_failure(backend);
                    tried.push(idx);
                    last_err = UpstreamError::Connect(format!("{}: {e}", backend.url));
                    continue;
                }
            };
            // A copy to send again is worth its cost only where a failure after sending is
            // likely: a new connection, or one idle long enough for the backend to close it.
            if replay.is_none() && (fresh || idle_for > std::time::Duration::from_secs(1)) {
                replay = Replay::of(&req);
            }
            let fut = sender.try_send_request(req);
            match tokio::time::timeout(self.cfg.response_timeout, fut).await {
                Err(_) => {
                    backend.counters.timeouts.inc();
                    return Err(UpstreamError::Timeout);
                }
                Ok(Ok(resp)) => {
                    backend.counters.responses.inc();
                    lease.sender = Some(sender);
                    return Ok((resp, lease));
                }
                Ok(Err(mut e)) => {
                    backend.counters.errors.inc();
                    let msg = format!("{}: {}", backend.url, e.error());
                    if fresh {
                        self.passive_failure(backend);
                        tried.push(idx);
                    }
                    if let Some(unsent) = e.take_message() {
                        req = unsent;
                    } else if let Some(r) = &replay {
                        req = r.build();
                    } else {
                        return Err(UpstreamError::Failed(msg));
                    }
                    last_err = UpstreamError::Failed(msg);
                }
            }
        }
        Err(last_err)
    }
}
