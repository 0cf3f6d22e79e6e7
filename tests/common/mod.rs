//! Test harness: real caracal processes and real backends on loopback, ports from the OS.
//!
//! - [`Node`] spawns the `caracal` binary with a generated conf, learns its bound addresses
//!   from its log, waits for `/ready`, and kills it by PID on drop.
//! - [`TestBackend`] is a small hyper server whose routes let tests observe what arrived.
//! - [`http`] sends one request on a new connection and reads the whole response.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub mod recorder;

pub const BIN: &str = env!("CARGO_BIN_EXE_caracal");

/// A running caracal process.
pub struct Node {
    pub child: Child,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node with `conf` (TOML; listen addresses default to port 0) and waits until
    /// `/ready` answers 200.
    pub async fn start(conf: &str) -> Node {
        let node = Self::launch(conf, None).await;
        node.wait_ready().await;
        node
    }

    /// Starts a node inside network namespace `ns` (the test's own). Readiness is the
    /// "node ready" log line: the test's own HTTP client cannot reach into the namespace.
    pub async fn start_in_netns(conf: &str, ns: &str) -> Node {
        Self::launch(conf, Some(ns)).await
    }

    async fn launch(conf: &str, netns: Option<&str>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("caracal.toml");
        let mut text = conf.to_string();
        if !text.contains("[http]") {
            text.push_str("\n[http]\nlisten = [\"127.0.0.1:0\"]\n");
        }
        if !text.contains("[admin]") {
            text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        }
        std::fs::write(&path, &text).unwrap();
        Self::spawn(path, dir, netns).await
    }

    /// Starts several nodes at once (their join windows overlap) and waits for all.
    pub async fn start_all(confs: &[String]) -> Vec<Node> {
        let tasks: Vec<_> = confs
            .iter()
            .map(|c| {
                let c = c.clone();
                tokio::spawn(async move { Node::start(&c).await })
            })
            .collect();
        let mut nodes = Vec::new();
        for t in tasks {
            nodes.push(t.await.unwrap());
        }
        nodes
    }

    /// Spawns a node that is expected to fail; returns its exit code and log.
    pub fn run_to_exit(conf: &str, within: Duration) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("caracal.toml");
        std::fs::write(&path, conf).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                return (s.code(), err);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return (None, String::new());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The conf file the node runs from (a reload reads it again).
    pub fn conf_path(&self) -> std::path::PathBuf {
        self._dir.path().join("caracal.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn spawn(path: PathBuf, dir: tempfile::TempDir, netns: Option<&str>) -> Node {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let log_for_panic = log.clone();
        // Reading the log blocks: keep it off the async workers.
        let found = tokio::task::spawn_blocking(move || {
            let (mut http, mut https, mut admin, mut ready) = (None, None, None, false);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !ready {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(line) = rx.recv_timeout(left) else {
                    return None;
                };
                if let Some(a) = addr_after(&line, "kind=\"http\" addr=") {
                    http = Some(a);
                }
                if let Some(a) = addr_after(&line, "kind=\"https\" addr=") {
                    https = Some(a);
                }
                if let Some(a) = addr_after(&line, "kind=\"admin\" addr=") {
                    admin = Some(a);
                }
                // Logged after every listener line.
                ready |= line.contains("node ready");
            }
            Some((http, https, admin))
        })
        .await
        .unwrap();
        let Some((http, https, admin)) = found else {
            let _ = child.kill();
            panic!(
                "node did not start; log:\n{}",
                log_for_panic.lock().unwrap().join("\n")
            );
        };
        let admin = admin.expect("the harness needs the admin listener");
        Node {
            child,
            http: http.or(https).unwrap(),
            https,
            admin,
            log,
            _dir: dir,
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = try_http(self.admin, get("/ready")).await {
                if r.status == StatusCode::OK {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = http(self.admin, get("/status")).await;
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Polls `/status` until `pred` holds, or panics after `within`.
    pub async fn wait_status(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status().await;
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        // The shell's builtin kill: no procps needed on a fresh machine.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.child.id())])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (at most `within`).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether `needle` shows up in the log within `within`. The log is read from the
    /// child's stderr by a thread, so a line can trail the event the admin API shows.
    pub async fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let i = line.find(marker)? + marker.len();
    line[i..].split_whitespace().next()?.parse().ok()
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `caracal check --config <conf>`; returns (exit code, stderr).
pub fn check_config(conf: &str, extra: &[&str]) -> (i32, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, conf).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
        dir,
    )
}

// ---------------------------------------------------------------------------------------
// Client side

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "test.local")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub fn with_body(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local")
        .body(Full::new(body.into()))
        .unwrap()
}

/// One HTTP/1.1 request on a new connection; the whole response.
pub async fn http(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    try_http(addr, req).await.unwrap()
}

pub async fn try_http(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Resp, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

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

/// A number from the environment (bench and fuzz knobs), else `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A self-signed certificate for `localhost`, written to a temporary directory, and the
/// `[https]` section serving it on a loopback port (`extra` lines appended to it).
pub fn self_signed_https(
    extra: &str,
) -> (
    rcgen::CertifiedKey<rcgen::KeyPair>,
    String,
    tempfile::TempDir,
) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let conf = format!(
        "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
        cert.display(),
        key.display()
    );
    (ck, conf, dir)
}

/// One HTTP/1.1 request over TLS to `addr` (server name `localhost`), trusting `root`
/// (a certificate in DER).
pub async fn https_http1(
    addr: std::net::SocketAddr,
    root: Vec<u8>,
    req: http::Request<Full<Bytes>>,
) -> Resp {
    use http_body_util::BodyExt;
    let tls = tls_to_localhost(addr, &[root]).await;
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = s.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// The runtime of a bench's `main` (two workers, as the machine has two cores); exits 1
/// with the reason when there is none.
pub fn bench_runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A conf for one node in front of `backends`, plus `extra` TOML appended.
pub fn conf(route: &str, backends: &[String], extra: &str) -> String {
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[node]\njvm_route = \"{route}\"\nshutdown_grace = \"5s\"\n\n[backends]\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    )
}

/// A keep-alive HTTP/1.1 client on one connection (for loads of requests).
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAlive { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Resp {
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
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

/// The `JSESSIONID` value a response set, if any.
pub fn set_cookie_id(r: &Resp) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("JSESSIONID="))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

/// `GET /sessions/<base>` on a node's admin: `None` on 404.
pub async fn session_info(admin: SocketAddr, base: &str) -> Option<serde_json::Value> {
    let r = http(admin, get(&format!("/sessions/{base}"))).await;
    match r.status {
        StatusCode::OK => Some(r.json()),
        StatusCode::NOT_FOUND => None,
        s => panic!("/sessions answered {s}"),
    }
}

/// A node conf for a cluster test: one backend, fast membership timers, own port/domain.
pub fn cluster_node(
    route: &str,
    backend: &str,
    mcast_port: u16,
    domain: &str,
    extra_cluster: &str,
) -> String {
    format!(
        "[node]\njvm_route = \"{route}\"\nshutdown_grace = \"2s\"\n\
         [backends]\nservers = [\"{backend}\"]\n\
         [cluster]\nenabled = true\n{extra_cluster}\n\
         [cluster.membership]\nport = {mcast_port}\ndomain = \"{domain}\"\nfrequency = \"200ms\"\n\
         drop_time = \"1s\"\nverify_timeout = \"500ms\"\n[cluster.receiver]\nport = 0\n"
    )
}

/// Sends one change to a node's mesh as member `route` would, and waits for its ack.
pub async fn raw_replicate(
    mesh: SocketAddr,
    domain: &str,
    route: &str,
    change: caracal::testing::Change,
) {
    use caracal::testing::State;
    use caracal::testing::{encode_mesh, MeshMessage, NodeInfo};
    use futures_util::{SinkExt, StreamExt};
    let stream = tokio::net::TcpStream::connect(mesh).await.unwrap();
    let mut f = tokio_util::codec::Framed::new(stream, caracal::testing::mesh_codec(1 << 20));
    let me = NodeInfo {
        node_id: 7,
        jvm_route: route.into(),
        mesh_addr: "127.0.0.1:9".parse().unwrap(),
        http_addr: "127.0.0.1:9".parse().unwrap(),
        state: State::Ready,
        alive_ms: 1,
    };
    let hello = MeshMessage::Hello {
        domain: domain.into(),
        from: me,
    };
    f.send(bytes::Bytes::from(encode_mesh(&hello)))
        .await
        .unwrap();
    let msg = MeshMessage::Replicate {
        seq: 1,
        changes: vec![std::sync::Arc::new(change)],
    };
    f.send(bytes::Bytes::from(encode_mesh(&msg))).await.unwrap();
    f.next().await.unwrap().unwrap();
}

/// Waits until every node lists the other `nodes.len() - 1` as members.
pub async fn wait_formed(nodes: &[Node], within: Duration) {
    for node in nodes {
        node.wait_status(within, "cluster formed", |s| {
            s["members"].as_array().map_or(0, |m| m.len()) == nodes.len() - 1
        })
        .await;
    }
}

/// `caracal certs --out dir --nodes nodes`: a cluster CA and a certificate per node.
pub fn write_certs(dir: &std::path::Path, nodes: &str) {
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(dir)
        .args(["--nodes", nodes])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mesh identity of the test's own, for a node that is not in the cluster.
pub fn stranger(route: &str) -> caracal::testing::NodeInfo {
    caracal::testing::NodeInfo {
        node_id: 77,
        jvm_route: route.into(),
        mesh_addr: "127.0.0.1:9".parse().unwrap(),
        http_addr: "127.0.0.1:9".parse().unwrap(),
        state: caracal::testing::State::Ready,
        alive_ms: 1,
    }
}

/// `caracal_mesh_frames_rejected_total{reason}` in a `/metrics` text (0 when absent).
pub fn mesh_rejected(metrics: &str, reason: &str) -> u64 {
    let name = format!("caracal_mesh_frames_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A process's resident set (`VmRSS`), in KiB; 0 if it cannot be read.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The `[cluster.tls]` section for `node`, with the files `caracal certs` wrote to `dir`.
pub fn tls_section(dir: &std::path::Path, node: &str) -> String {
    let p = |f: String| dir.join(f).display().to_string();
    format!(
        "[cluster.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        p(format!("{node}.pem")),
        p(format!("{node}-key.pem")),
        p("ca.pem".into())
    )
}

/// A TLS connection to `addr` as `localhost`, trusting the certificates `roots` (DER).
pub async fn tls_to_localhost(
    addr: std::net::SocketAddr,
    roots: &[Vec<u8>],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(r.clone()))
            .unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}
