//! One caracal node: binds its listeners, runs the proxy, the health checks and the admin
//! endpoints, and drains on shutdown.
//!
//! [`Listeners::bind`] and [`run`] are separate so tests can bind port 0 and read the
//! addresses before serving, as mini-redis's `run(listener, shutdown)`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::frontend::Frontend;
use crate::proxy::{upstream, Proxy};

/// Node lifecycle, as announced to the cluster and shown by `/ready` and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Leaving = 3,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Leaving => "leaving",
        }
    }
}

pub struct NodeState {
    pub jvm_route: String,
    pub http_addrs: Vec<SocketAddr>,
    pub https_addrs: Vec<SocketAddr>,
    started: Instant,
    state: AtomicU8,
}

impl NodeState {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Starting,
            1 => State::Ready,
            2 => State::Draining,
            _ => State::Leaving,
        }
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// The sockets of a node, bound before anything is served.
pub struct Listeners {
    pub http: Vec<TcpListener>,
    pub https: Vec<TcpListener>,
    pub admin: Option<TcpListener>,
    /// The cluster mesh receiver, when the cluster is enabled.
    pub mesh: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> anyhow::Result<Self> {
        async fn one(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} ({what})"))
        }
        let mut http = Vec::new();
        for a in &cfg.http.listen {
            http.push(one(*a, "http.listen").await?);
        }
        let mut https = Vec::new();
        if let Some(h) = &cfg.https {
            for a in &h.listen {
                https.push(one(*a, "https.listen").await?);
            }
        }
        let admin = match cfg.admin.listen {
            Some(a) => Some(one(a, "admin.listen").await?),
            None => None,
        };
        let mesh = if cfg.cluster.enabled {
            let r = &cfg.cluster.receiver;
            Some(crate::cluster::mesh::bind(r).await.with_context(|| {
                format!(
                    "cannot bind the cluster receiver on {}:{}..{} (cluster.receiver)",
                    r.address,
                    r.port,
                    r.port.saturating_add(r.auto_bind - 1)
                )
            })?)
        } else {
            None
        };
        Ok(Self {
            http,
            https,
            admin,
            mesh,
        })
    }
}

/// How long the mesh stays open after this node announced `leaving` (see `run`).
const LEAVE_LINGER: Duration = Duration::from_millis(100);

/// Serves until `shutdown`, then drains within `node.shutdown_grace`.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::proxy::timer::start().map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::new());
    let proxy = Arc::new(Proxy::new(&cfg, metrics)?);
    let addrs = |ls: &[TcpListener]| -> Vec<SocketAddr> {
        ls.iter().filter_map(|l| l.local_addr().ok()).collect()
    };
    let state = Arc::new(NodeState {
        jvm_route: cfg.node.jvm_route.clone(),
        http_addrs: addrs(&listeners.http),
        https_addrs: addrs(&listeners.https),
        started: Instant::now(),
        state: AtomicU8::new(State::Starting as u8),
    });

    // Background parts stop after the drain, so health and admin stay true while draining.
    let background = CancellationToken::new();
    let health = tokio::spawn(upstream::health::run(
        proxy.upstream.clone(),
        background.clone(),
    ));
    // Expiry is also checked on every access; the sweep only frees memory.
    let sweep_every = (cfg.session.max_inactive / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    );
    tokio::spawn(
        proxy
            .sessions
            .clone()
            .sweep(sweep_every, background.clone()),
    );

    let cluster = match listeners.mesh {
        Some(mesh) if cfg.cluster.enabled => {
            let http_addr = state
                .http_addrs
                .first()
                .or(state.https_addrs.first())
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            Some(Cluster::start(
                &cfg.cluster,
                proxy.sessions.store.clone(),
                state.clone(),
                mesh,
                http_addr,
                &proxy.metrics,
                background.clone(),
            )?)
        }
        _ => None,
    };

    if let Some(l) = listeners.admin {
        let admin = Arc::new(Admin {
            state: state.clone(),
            proxy: proxy.clone(),
            cluster: cluster.clone(),
        });
        tracing::info!(kind = "admin", addr = %l.local_addr()?, "listening");
        tokio::spawn(admin.serve(l, background.clone()));
    }

    // A starting node hears the cluster before it serves (SPEC 4.7); a duplicate route
    // stops it here, before any client connection is accepted.
    if let Some(c) = &cluster {
        proxy.sessions.set_replicator(c.replicator.clone());
        if let Err(e) = c.join().await {
            background.cancel();
            return Err(e.into());
        }
        let limit = cfg.cluster.state_transfer_timeout;
        let failure = match tokio::time::timeout(limit, c.replicator.state_transfer()).await {
            Ok(Ok(None)) => {
                tracing::info!("no ready member: starting with no sessions");
                None
            }
            Ok(Ok(Some(_))) => None,
            Ok(Err(e)) => Some(format!("state transfer failed: {e}")),
            Err(_) => Some(format!("state transfer timed out after {limit:?}")),
        };
        if let Some(why) = failure {
            if cfg.cluster.require_state_transfer {
                background.cancel();
                anyhow::bail!("{why} (cluster.require_state_transfer = true)");
            }
            tracing::warn!("{why}: starting anyway");
        }
    }

    let frontend = Arc::new(Frontend::new(proxy.clone(), &cfg.http));
    let tracker = TaskTracker::new();
    for l in listeners.http {
        tracing::info!(kind = "http", addr = %l.local_addr()?, "listening");
        tracker.spawn(
            frontend
                .clone()
                .serve(l, None, shutdown.clone(), tracker.clone()),
        );
    }
    if let Some(h) = &cfg.https {
        let acceptor = TlsAcceptor::from(h.tls.clone());
        for l in listeners.https {
            tracing::info!(kind = "https", addr = %l.local_addr()?, "listening");
            tracker.spawn(frontend.clone().serve(
                l,
                Some(acceptor.clone()),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
    }
    state.set_state(State::Ready);
    if let Some(c) = &cluster {
        c.announce().await;
    }
    tracing::info!(jvm_route = %cfg.node.jvm_route, "node ready");

    shutdown.cancelled().await;
    // Tell the cluster first, so peers stop sending us work while we drain (SPEC 4.8).
    state.set_state(State::Leaving);
    if let Some(c) = &cluster {
        c.announce().await;
    }
    let announced = tokio::time::Instant::now();
    tracing::info!(grace = ?cfg.node.shutdown_grace, "shutting down: draining in-flight requests");
    tracker.close();
    if tokio::time::timeout(cfg.node.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over: closing remaining connections");
    }
    if cluster.is_some() && cfg.cluster.expire_sessions_on_shutdown {
        let n = proxy.sessions.end_owned_sessions().await;
        tracing::info!(
            sessions = n,
            "expire_sessions_on_shutdown: owned sessions ended"
        );
    }
    if cluster.is_some() {
        // The mesh closes with `background`. A peer that sees the connection close before
        // it has read the `leaving` heartbeat verifies this node, finds it gone and logs a
        // failure; datagrams have no acknowledgement to wait for, so the mesh stays up a
        // little after the announcement when the drain was quicker than that.
        tokio::time::sleep_until(announced + LEAVE_LINGER).await;
    }
    background.cancel();
    let _ = health.await;
    tracing::info!("stopped");
    Ok(())
}
