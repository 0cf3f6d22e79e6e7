//! The admin listener (REFERENCE 6), plain HTTP/1.1, meant for localhost or a private network:
//! - `mod.rs`: serving, routing, the bearer token;
//! - `status`: `GET /status`, the JSON scripts read;
//! - `page`: `GET /`, the HTML cluster page rendered from it;
//! - `runtime`: the runtime API (`POST /backends/<b>/state`, `POST /backends/<b>/weight`,
//!   `POST /node/state`);
//!   `POST /reload` calls the node's reload (`node::Reloader`).
//!
//! `[admin] token` (`Authorization: Bearer <token>`) guards every mutating endpoint, and
//! `/sessions/<id>` (a session's contents) when the listener is not on loopback. Without a
//! token the mutating endpoints are off (403): nothing changes a node that its operator did
//! not give a secret for. A missing or wrong token is a 401 with the reason.

mod page;
mod runtime;
mod status;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::cluster::Cluster;
use crate::lifecycle::{NodeState, State};
use crate::proxy::Proxy;
use crate::tasks::Tasks;

/// A runtime API request body is a small JSON object.
const MAX_BODY: usize = 4096;

/// What the admin endpoints read, and the one secret that lets them change anything.
pub(crate) struct Admin {
    pub state: Arc<NodeState>,
    pub proxy: Arc<Proxy>,
    pub cluster: Option<Arc<Cluster>>,
    /// The durable tier (`[persistence]`), when on.
    pub persistence: Option<Arc<crate::persist::Persistence>>,
    /// `[admin] token`.
    pub token: Option<String>,
    /// `[node] drain_timeout`: bounds `POST /node/state {"state":"drain"}`.
    pub drain_timeout: std::time::Duration,
    /// The listener is on loopback: session contents need no token there.
    pub loopback: bool,
    /// `POST /reload`: the node's reload (the answer, or why nothing changed).
    pub reload: Option<ReloadFn>,
}

/// What `POST /reload` calls (the node layer's reload, floor 7).
pub(crate) type ReloadFn = Arc<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>;

type Resp = Response<Full<Bytes>>;

impl Admin {
    /// Serves `listener` until `tasks` stop; each connection is one of their tasks.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener, tasks: Tasks) {
        while let Some((stream, _)) = crate::net::accept(&listener, tasks.token(), "admin").await {
            let this = self.clone();
            let shutdown = tasks.token().clone();
            tasks.spawn(async move {
                let svc = service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.route(req).await) }
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

    async fn route(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        if req.method() == Method::POST {
            if let Some(r) = self.denied(&req, true) {
                return r;
            }
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "413 the body is over 4 KiB or broke off\n",
                    )
                }
            };
            if path == "/reload" {
                return match self.reload.as_ref().map(|r| r()) {
                    Some(Ok(report)) => json_response(StatusCode::OK, &report),
                    Some(Err(why)) => text(
                        StatusCode::BAD_REQUEST,
                        &format!("400 reload refused, the running config stays: {why}\n"),
                    ),
                    None => text(StatusCode::NOT_FOUND, "404 this node cannot reload\n"),
                };
            }
            if path == "/node/state" {
                return self.node_state(&body).await;
            }
            return self.post(&path, &body);
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 only GET, HEAD and POST are served here\n",
            );
        }
        if let Some(base) = path.strip_prefix("/sessions/") {
            if let Some(r) = self.denied(&req, !self.loopback) {
                return r;
            }
            return match self.proxy.store().info(base, std::time::Instant::now()) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => text(StatusCode::NOT_FOUND, "404 no such session on this node\n"),
            };
        }
        match path.as_str() {
            "/" => self.page(req.uri().query()),
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
            "/status" => json_response(StatusCode::OK, &self.status()),
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

    /// `needed`: this request must carry the token. `Some` is the answer instead: 403
    /// when no token is configured (the endpoint is off), 401 when it is missing or wrong.
    fn denied<B>(&self, req: &Request<B>, needed: bool) -> Option<Resp> {
        if !needed {
            return None;
        }
        let Some(token) = &self.token else {
            return Some(text(
                StatusCode::FORBIDDEN,
                "403 this endpoint needs [admin] token in the node's configuration\n",
            ));
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let reason = match given {
            None => "401 no bearer token: send Authorization: Bearer <[admin] token>\n",
            Some(g) if same(g.as_bytes(), token.as_bytes()) => return None,
            Some(_) => "401 wrong token\n",
        };
        let mut r = text(StatusCode::UNAUTHORIZED, reason);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"caracal admin\""),
        );
        Some(r)
    }
}

/// Cells of the `fields` of each object in the array `list` (`f` renders one), for the
/// tables of the page and of `caracal status`.
pub(crate) fn rows(
    list: &serde_json::Value,
    fields: &[&str],
    f: impl Fn(&serde_json::Value) -> String,
) -> Vec<Vec<String>> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|o| fields.iter().map(|k| f(&o[*k])).collect())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) use page::PEER_FIELDS;

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
