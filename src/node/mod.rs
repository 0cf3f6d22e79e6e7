//! One caracal node: binds its listeners, runs the proxy, the health checks and the admin
//! endpoints, and drains on shutdown.
//!
//! [`Listeners::bind`] and [`run`] are separate so tests can bind port 0 and read the
//! addresses before serving, as mini-redis's `run(listener, shutdown)`.

mod reload;

pub(crate) use reload::Reloader;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::lifecycle::{NodeState, State};
use crate::metrics::Metrics;
use crate::persist::{self, Persistence};
use crate::proxy::{self, Frontend, Proxy};
use crate::tasks::Tasks;

/// The sockets of a node, bound before anything is served. The client sockets are bound
/// but not listening until the node is ready (REFERENCE 4.7): a client that connects to a
/// starting node is refused and moves on (DNS round robin) instead of waiting in a backlog.
/// Admin and mesh listen at once: `/ready` answers 503 and the cluster is joined meanwhile.
pub struct Listeners {
    pub http: Vec<TcpSocket>,
    pub https: Vec<TcpSocket>,
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
            http.push(bound(*a, "http.listen")?);
        }
        let mut https = Vec::new();
        if let Some(h) = &cfg.https {
            for a in &h.listen {
                https.push(bound(*a, "https.listen")?);
            }
        }
        let admin = match cfg.admin.listen {
            Some(a) => Some(one(a, "admin.listen").await?),
            None => None,
        };
        let mesh = if cfg.cluster.enabled {
            let r = &cfg.cluster.receiver;
            Some(crate::cluster::bind_receiver(r).await.with_context(|| {
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

/// Pending connections a client listener queues (tokio's default for `TcpListener::bind`).
const LISTEN_BACKLOG: u32 = 1024;

/// A client socket bound to `addr` (the port is taken: a conflict fails here), listening
/// only once [`listen`] is called.
fn bound(addr: SocketAddr, what: &str) -> anyhow::Result<TcpSocket> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .with_context(|| format!("cannot open a socket for {addr} ({what})"))?;
    // As `TcpListener::bind` does: a restarted node can take its port back at once.
    s.set_reuseaddr(true)
        .with_context(|| format!("cannot set SO_REUSEADDR on {addr} ({what})"))?;
    s.bind(addr)
        .with_context(|| format!("cannot listen on {addr} ({what})"))?;
    Ok(s)
}

fn listen(s: TcpSocket, what: &str) -> anyhow::Result<TcpListener> {
    let addr = s
        .local_addr()
        .map_or_else(|_| "its address".to_string(), |a| a.to_string());
    s.listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// SIGHUP reloads the conf (as `POST /reload`), until the node stops.
async fn on_hangup(r: Arc<Reloader>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reload only through POST /reload");
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                // The outcome is logged by the reload itself.
                let _ = r.reload();
            }
        }
    }
}

/// `[log] access`: the writer thread on stdout or the file (appended to, created if need
/// be); its dropped lines counted in `caracal_access_log_dropped_total`.
fn access_log(
    cfg: &crate::config::LogConfig,
    metrics: &Metrics,
) -> anyhow::Result<Option<proxy::AccessLog>> {
    let Some(format) = cfg.access else {
        return Ok(None);
    };
    let sink: Box<dyn std::io::Write + Send> = match &cfg.access_path {
        None => Box::new(std::io::stdout()),
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| {
                    format!(
                        "cannot open the access log {} (log.access_path)",
                        p.display()
                    )
                })?,
        ),
    };
    let dropped = prometheus_client::metrics::counter::Counter::default();
    metrics.with_registry(|r| {
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            dropped.clone(),
        )
    });
    let log = proxy::AccessLog::start(format, sink, cfg.access_buffer, dropped)
        .context("cannot start the access log writer")?;
    Ok(Some(log))
}

/// How long the mesh stays open after this node announced `leaving` (see `run`).
const LEAVE_LINGER: Duration = Duration::from_millis(100);
/// How long the background tasks (mesh, health, admin, tunnels) may take to end once
/// told to; each ends at its next await.
const BACKGROUND_STOP: Duration = Duration::from_secs(2);

/// Serves until `shutdown`, then drains within `node.shutdown_grace`. When it returns,
/// every task the node started has ended and its timer thread has stopped.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ticker = proxy::start_timer().map_err(anyhow::Error::msg)?;
    // Background parts stop after the drain, so health and admin stay true while draining.
    let background = Tasks::new();
    let mut persistence = None;
    let res = {
        let serving = serve(cfg, listeners, shutdown, &background, &mut persistence);
        tokio::pin!(serving);
        // This future runs on the thread that loaded the sessions (the CLI's `block_on`):
        // it collects there after a swap pass (`memory`).
        loop {
            tokio::select! {
                r = &mut serving => break r,
                () = crate::memory::released() => {}
            }
        }
    };
    if !background.stop(BACKGROUND_STOP).await {
        tracing::warn!(
            left = background.len(),
            "background tasks still running at exit"
        );
    }
    if let Some(p) = persistence {
        // Last, once nothing can change a session any more (clients, the mesh): the last
        // changes flushed, and in `shutdown` mode the snapshot written.
        let _ = tokio::task::spawn_blocking(move || p.close()).await;
    }
    drop(ticker);
    if res.is_ok() {
        tracing::info!("stopped");
    }
    res
}

async fn serve(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    background: &Tasks,
    persisted: &mut Option<Arc<Persistence>>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let settings = proxy::Settings {
        jvm_route: &cfg.node.jvm_route,
        http: &cfg.http,
        backends: &cfg.backends,
        session: &cfg.session,
        replication: &cfg.replication,
        jvm_route_binder: cfg.jvm_route_binder,
    };
    let access = access_log(&cfg.log, &metrics)?;
    let proxy =
        Arc::new(Proxy::new(&settings, metrics, background.clone())?.with_access_log(access));
    let addrs = |ls: &[TcpSocket]| -> Vec<SocketAddr> {
        ls.iter().filter_map(|l| l.local_addr().ok()).collect()
    };
    let state = Arc::new(NodeState::new(
        cfg.node.jvm_route.clone(),
        addrs(&listeners.http),
        addrs(&listeners.https),
    ));

    // Sessions from disk, before the cluster or a client sees the store (REFERENCE 4.11).
    let store = proxy.store().clone();
    if cfg.persistence.mode != persist::Mode::Off {
        store.set_tomb_ttl(cfg.session.max_inactive);
    }
    let persistence = Persistence::open(
        &cfg.persistence,
        &cfg.node.jvm_route,
        &cfg.cluster.membership.domain,
        store,
        &proxy.metrics,
    )
    .context("cannot open the session store's files (persistence.dir)")?;
    persisted.clone_from(&persistence);

    proxy.upstream().start_health();
    // Expiry is also checked on every access; the sweep only frees memory.
    let sweep_every =
        (cfg.session.max_inactive / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    proxy.start_sweep(sweep_every, background);

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
                proxy.store().clone(),
                state.clone(),
                mesh,
                http_addr,
                &proxy.metrics,
                background,
            )?)
        }
        _ => None,
    };

    let reloader = Arc::new(Reloader::new(&cfg, proxy.clone(), &proxy.metrics));
    background.spawn(on_hangup(reloader.clone(), background.token().clone()));

    if let Some(l) = listeners.admin {
        let r = reloader.clone();
        let admin = Arc::new(Admin {
            reload: Some(Arc::new(move || {
                r.reload()
                    .map(|rep| serde_json::to_value(rep).unwrap_or_default())
            })),
            state: state.clone(),
            proxy: proxy.clone(),
            cluster: cluster.clone(),
            persistence: persistence.clone(),
            token: cfg.admin.token.clone(),
            drain_timeout: cfg.node.drain_timeout,
            loopback: l.local_addr().is_ok_and(|a| a.ip().is_loopback()),
        });
        tracing::info!(kind = "admin", addr = %l.local_addr()?, "listening");
        background.spawn(admin.serve(l, background.clone()));
    }

    let frontend = Arc::new(Frontend::new(proxy.clone(), &cfg.http));
    // A starting node hears the cluster before it serves (REFERENCE 4.7); a duplicate route
    // stops it here, before any client connection is accepted.
    if let Some(c) = &cluster {
        proxy.set_cluster(c.clone());
        // Forwards from members over mesh channels ([cluster.tls]).
        let f = frontend.clone();
        c.serve_channels(Some(Arc::new(move |ch| {
            Box::pin(f.clone().serve_channel(ch))
        })));
        c.join().await?;
        let limit = cfg.cluster.state_transfer_timeout;
        let failure = match tokio::time::timeout(limit, c.state_transfer()).await {
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
                anyhow::bail!("{why} (cluster.require_state_transfer = true)");
            }
            tracing::warn!("{why}: starting anyway");
        }
        c.joined();
        // Serving sessions needs the lease (REFERENCE 4.9): usually one ping round away.
        let limit = cfg.cluster.membership.verify_timeout * 2;
        if !c.wait_lease(limit).await {
            tracing::warn!(
                "no majority of the cluster answers yet: session requests get 503 until one does"
            );
        }
    }

    // The client connections: drained first on shutdown, within the grace period. The
    // listeners keep accepting while the sessions are handed over (REFERENCE 4.8).
    let clients = TaskTracker::new();
    let accepting = CancellationToken::new();
    // An early return stops the listeners too.
    let _accepting = accepting.clone().drop_guard();
    for s in listeners.http {
        let l = listen(s, "http.listen")?;
        tracing::info!(kind = "http", addr = %l.local_addr()?, "listening");
        clients.spawn(
            frontend
                .clone()
                .serve(l, None, accepting.clone(), clients.clone()),
        );
    }
    if let Some(h) = &cfg.https {
        let acceptor = TlsAcceptor::from(h.tls.clone());
        for s in listeners.https {
            let l = listen(s, "https.listen")?;
            tracing::info!(kind = "https", addr = %l.local_addr()?, "listening");
            clients.spawn(frontend.clone().serve(
                l,
                Some(acceptor.clone()),
                accepting.clone(),
                clients.clone(),
            ));
        }
    }
    state.set_state(State::Ready);
    if let Some(c) = &cluster {
        c.announce().await;
    }
    tracing::info!(jvm_route = %cfg.node.jvm_route, "node ready");

    shutdown.cancelled().await;
    // REFERENCE 4.8: announce `draining` and hand the sessions over while still accepting (a
    // client that reaches this node meanwhile is forwarded), then stop accepting and
    // finish in-flight requests, then announce `leaving`.
    if cluster.is_some() && cfg.cluster.expire_sessions_on_shutdown {
        let n = proxy.end_owned_sessions().await;
        tracing::info!(
            sessions = n,
            "expire_sessions_on_shutdown: owned sessions ended"
        );
    }
    if cluster.is_some() {
        tracing::info!(drain_timeout = ?cfg.node.drain_timeout, "shutting down: draining");
        proxy.drain(cfg.node.drain_timeout).await;
    } else {
        state.set_state(State::Draining);
    }
    tracing::info!(grace = ?cfg.node.shutdown_grace, "stopped accepting: finishing in-flight requests");
    accepting.cancel();
    clients.close();
    if tokio::time::timeout(cfg.node.shutdown_grace, clients.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over: closing remaining connections");
    }
    state.set_state(State::Leaving);
    if let Some(c) = &cluster {
        c.serve_channels(None);
        c.announce().await;
    }
    let announced = tokio::time::Instant::now();
    if cluster.is_some() {
        // The mesh closes with the background tasks. A peer that sees the connection close
        // before it has read the `leaving` heartbeat verifies this node, finds it gone and
        // logs a failure; datagrams have no acknowledgement to wait for, so the mesh stays
        // up a little after the announcement when the drain was quicker than that.
        tokio::time::sleep_until(announced + LEAVE_LINGER).await;
    }
    Ok(())
}
