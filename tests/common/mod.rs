//! Test harness: real caracal processes and real backends on loopback, ports from the OS.
//!
//! - [`Node`] spawns the `caracal` binary with a generated conf, learns its bound addresses
//!   from its log, waits for `/ready`, and kills it by PID on drop.
//! - [`TestBackend`] (`backend.rs`) is a small hyper server whose routes let tests observe
//!   what arrived.
//! - `cluster.rs`: one multicast port per test cluster ([`mcast_port`]), node confs,
//!   [`start_cluster`] / [`three`] and the mesh-level helpers.
//! - [`http`] sends one request on a new connection and reads the whole response.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

mod backend;
mod cluster;
pub mod recorder;
pub mod whole;

#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use cluster::*;

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
        let node = Self::launch(conf, &[]).await;
        node.wait_ready().await;
        node
    }

    /// Starts a node as the last arguments of `wrap` (a command that runs its arguments,
    /// e.g. in a mount namespace of the test's own) and waits until `/ready` answers 200.
    pub async fn start_wrapped(conf: &str, wrap: &[String]) -> Node {
        let node = Self::launch(conf, wrap).await;
        node.wait_ready().await;
        node
    }

    /// Starts a node inside network namespace `ns` (the test's own). Readiness is the
    /// "node ready" log line: the test's own HTTP client cannot reach into the namespace.
    pub async fn start_in_netns(conf: &str, ns: &str) -> Node {
        let wrap = ["ip", "netns", "exec", ns].map(String::from);
        Self::launch(conf, &wrap).await
    }

    async fn launch(conf: &str, wrap: &[String]) -> Node {
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
        Self::spawn(path, dir, wrap).await
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

    /// The conf the node runs (to start it again, or a node like it, after a kill).
    pub fn conf_text(&self) -> String {
        std::fs::read_to_string(self.conf_path()).unwrap()
    }

    /// `kill -9`, and the process reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn spawn(path: PathBuf, dir: tempfile::TempDir, wrap: &[String]) -> Node {
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
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
    let mut args = vec!["check", "--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, err) = caracal(&args);
    (code, err, path, dir)
}

/// `caracal check --config FILE --set S ...` on a file that exists: exit code and stderr.
pub fn check_file(conf: &std::path::Path, sets: &[&str]) -> (i32, String) {
    let mut args = vec!["check", "--config", conf.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    caracal(&args)
}

/// Runs the `caracal` binary with `args` to its end: exit code (-1: a signal) and stderr.
pub fn caracal(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
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
