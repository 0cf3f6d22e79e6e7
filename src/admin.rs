//! The admin listener (SPEC 6): `/live`, `/ready`, `/status` (JSON that scripts read) and
//! `/metrics` (Prometheus text). Plain HTTP/1.1, meant for localhost or a private network.
//! Floor 6: it reads the node's parts and changes nothing.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::cluster::{Cluster, Manager};
use crate::lifecycle::{NodeState, State};
use crate::proxy::Proxy;
use crate::tasks::Tasks;

/// What the admin endpoints read.
pub struct Admin {
    pub state: Arc<NodeState>,
    pub proxy: Arc<Proxy>,
    pub cluster: Option<Arc<Cluster>>,
}

impl Admin {
    /// Serves `listener` until `tasks` stop; each connection is one of their tasks.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tasks: Tasks) {
        while let Some((stream, _)) = crate::net::accept(&listener, tasks.token(), "admin").await {
            let this = self.clone();
            let shutdown = tasks.token().clone();
            tasks.spawn(async move {
                let svc = service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.route(req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    }

    fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 only GET is served here\n",
            );
        }
        let path = req.uri().path();
        if let Some(base) = path.strip_prefix("/sessions/") {
            return match self.proxy.store().info(base, std::time::Instant::now()) {
                Some(v) => json_response(&v),
                None => text(StatusCode::NOT_FOUND, "404 no such session on this node\n"),
            };
        }
        match path {
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => {
                let s = self.state.state();
                if s == State::Ready {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: {}\n", s.as_str()),
                    )
                }
            }
            "/status" => json_response(&self.status()),
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.proxy.metrics.encode())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, "404 no such admin endpoint\n"),
        }
    }

    /// `GET /status`.
    pub fn status(&self) -> serde_json::Value {
        let up = &self.proxy.upstream;
        let now = up.now_ms();
        let backends: Vec<_> = up
            .backends
            .iter()
            .map(|b| {
                json!({
                    "url": b.url,
                    "weight": b.weight,
                    "healthy": b.is_up(|| now),
                    "in_flight": b.in_flight(),
                    "idle_connections": b.idle_count(),
                    "responses": b.counters.responses.get(),
                    "connect_errors": b.counters.connect_errors.get(),
                    "errors": b.counters.errors.get(),
                    "timeouts": b.counters.timeouts.get(),
                })
            })
            .collect();
        let members: Vec<_> = self
            .cluster
            .iter()
            .flat_map(|c| c.member_table())
            .map(|m| {
                json!({
                    "jvm_route": m.info.jvm_route,
                    "mesh_addr": m.info.mesh_addr,
                    "http_addr": m.info.http_addr,
                    "state": m.info.state.as_str(),
                    "last_heard_ms": m.last_heard.elapsed().as_millis() as u64,
                    "suspect": m.suspect,
                    "alive_ms": m.info.alive_ms,
                })
            })
            .collect();
        let mesh_addr = self.cluster.as_ref().map(|c| c.mesh_addr());
        let m = &self.proxy.metrics;
        let sessions = self.proxy.store();
        let owned = sessions.owned();
        let by_class = m.requests_by_class();
        json!({
            "node": {
                "jvm_route": self.state.jvm_route,
                "state": self.state.state().as_str(),
                "uptime_ms": self.state.uptime_ms(),
                "version": env!("CARGO_PKG_VERSION"),
                "http_listen": self.state.http_addrs,
                "https_listen": self.state.https_addrs,
                "mesh_addr": mesh_addr,
                "manager": self.cluster.as_ref().map(|c| match c.manager() {
                    Manager::Delta => "delta",
                    Manager::Backup => "backup",
                }),
            },
            "members": members,
            // SPEC 4.9: the cluster size this node counts, its majority, and whether it holds
            // the lease that lets it serve sessions.
            "quorum": self.cluster.as_ref().map(|c| {
                let (size, majority) = c.quorum();
                json!({
                    "partition_handling": if c.is_quorum() { "quorum" } else { "available" },
                    "cluster_size": size,
                    "majority": majority,
                    "lease": c.has_lease(std::time::Instant::now()),
                })
            }),
            "sessions": {
                "total": sessions.len(),
                "owned": owned,
                "replica": sessions.len().saturating_sub(owned),
            },
            "backends": backends,
            "requests": {
                "1xx": by_class[0], "2xx": by_class[1], "3xx": by_class[2],
                "4xx": by_class[3], "5xx": by_class[4],
                "open_connections": m.open_connections.get(),
            },
        })
    }
}

fn json_response(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
