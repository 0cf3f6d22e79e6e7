//! The tests' own backends: [`TestBackend`] (routes that show what arrived and keep a
//! counter in the session), a garbage backend, and the requests that drive them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Deterministic test payload.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// Backends

/// A backend the tests control. Routes:
/// - `/health`: 200, or 503 while `set_healthy(false)`;
/// - `/headers`: the request headers as a JSON object (name -> list of values);
/// - `/echo`: the request body streamed back;
/// - `/bytes/N`: N bytes of [`pattern`], streamed in 64 KiB chunks;
/// - `/sleep/MS`: answers after MS milliseconds;
/// - `/count`, `/log?k=K`: a counter and a write log kept in the session;
/// - anything else: 200 with the backend's name.
///
/// Every response carries `x-backend: <name>`.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> TestBackend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let (n, h, c) = (name.to_string(), healthy.clone(), hits.clone());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (n, h, c) = (n.clone(), h.clone(), c.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, h, c) = (n.clone(), h.clone(), c.clone());
                        async move { Ok::<_, Infallible>(backend_route(req, &n, &h, &c).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        TestBackend {
            name: name.to_string(),
            addr,
            healthy,
            hits,
            task,
            conns,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Dies like a killed process: the listener and every open connection close.
    pub fn stop(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

async fn backend_route(
    req: Request<Incoming>,
    name: &str,
    healthy: &AtomicBool,
    hits: &AtomicUsize,
) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    if path != "/health" {
        hits.fetch_add(1, Ordering::SeqCst);
    }
    let mut resp = if req.headers().contains_key("x-reflect") {
        reflect_response(&req)
    } else if path == "/health" {
        let mut r = Response::new(full("ok"));
        if !healthy.load(Ordering::SeqCst) {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    } else if path == "/headers" {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in req.headers() {
            map.entry(k.as_str().to_string())
                .or_default()
                .push(v.to_str().unwrap_or("?").to_string());
        }
        Response::new(full(serde_json::to_vec(&map).unwrap()))
    } else if path == "/count" {
        // A visit counter kept only in the session: `n` goes up by one per request.
        let h = req.headers();
        let attrs = session_attrs(h);
        let n = attrs["n"].as_u64().unwrap_or(0) + 1;
        let body = serde_json::json!({
            "n": n,
            "node": h.get("x-session-node").and_then(|v| v.to_str().ok()),
            "original": h.get("x-session-original-id").and_then(|v| v.to_str().ok()),
            "backend": name,
        });
        let mut r = Response::new(full(body.to_string()));
        r.headers_mut()
            .insert("x-session-set", format!("{{\"n\":{n}}}").parse().unwrap());
        r
    } else if path == "/log" {
        // A write log kept only in the session (the fault-injection checker): `?k=K` sets
        // attribute `kK`, one attribute per write, so two requests of one session in flight
        // at once (a client's timed-out request still running) never clobber each other;
        // the body lists the writes the backend saw, before this one.
        let h = req.headers();
        let attrs = session_attrs(h);
        let seen: Vec<&str> = attrs
            .as_object()
            .map(|m| m.keys().filter_map(|k| k.strip_prefix('k')).collect())
            .unwrap_or_default();
        let k = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("k="))
            .unwrap_or("0");
        let body = serde_json::json!({
            "log": seen.join(","),
            "node": h.get("x-session-node").and_then(|v| v.to_str().ok()),
        });
        let mut r = Response::new(full(body.to_string()));
        let set = format!("{{\"k{k}\":1}}");
        r.headers_mut()
            .insert("x-session-set", set.parse().unwrap());
        r
    } else if path == "/directives" {
        let mut r = Response::new(full("with directives"));
        r.headers_mut()
            .insert("x-session-set", "{\"a\":1}".parse().unwrap());
        r.headers_mut()
            .insert("x-session-invalidate", "true".parse().unwrap());
        r
    } else if path == "/echo" {
        let body = req.into_body();
        Response::new(body.boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let data = Bytes::from(pattern(n));
        let chunks: Vec<Result<Frame<Bytes>, hyper::Error>> = (0..n)
            .step_by(65536)
            .map(|i| Ok(Frame::data(data.slice(i..(i + 65536).min(n)))))
            .collect();
        let stream = futures_util::stream::iter(chunks);
        Response::new(StreamBody::new(stream).boxed())
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full("slept"))
    } else {
        Response::new(full(name.to_string()))
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp
}

/// The `X-Session` attributes a backend got (`{}` without a session).
fn session_attrs(h: &HeaderMap) -> serde_json::Value {
    h.get("x-session")
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
        .unwrap_or(serde_json::json!({}))
}

/// Reflect mode (request header `x-reflect`): every request header `x-reply-NAME: V`
/// becomes response header `NAME: V`; the body is `{"path", "query", "headers"}`.
fn reflect_response(req: &Request<Incoming>) -> Response<BoxBody> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let mut replies = Vec::new();
    for (k, v) in req.headers() {
        map.entry(k.as_str().to_string())
            .or_default()
            .push(v.to_str().unwrap_or("?").to_string());
        if let Some(name) = k.as_str().strip_prefix("x-reply-") {
            replies.push((name.to_string(), v.clone()));
        }
    }
    let body = serde_json::json!({
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": map,
    });
    let mut r = Response::new(full(body.to_string()));
    for (k, v) in replies {
        r.headers_mut()
            .append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v);
    }
    r
}

/// A backend that answers every connection with bytes that are not HTTP.
pub async fn garbage_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
            });
        }
    });
    (addr, task)
}

/// A reflect-mode request (see [`TestBackend`]): `replies` become the backend's response
/// headers, e.g. `("x-session-set", "{\"a\":1}")`.
pub fn reflect(path: &str, cookie: Option<&str>, replies: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(path)
        .header("host", "app.test")
        .header("x-reflect", "1");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    for (k, v) in replies {
        b = b.header(format!("x-reply-{k}"), *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// `GET /count` (the [`TestBackend`]'s visit counter kept in the session), with the
/// session cookie `cookie` if any.
pub fn count(cookie: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut b = http::Request::get("/count").header("host", "app");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("JSESSIONID={c}"));
    }
    b.body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}
