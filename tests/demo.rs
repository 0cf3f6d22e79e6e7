//! `caracal demo`: three node processes and two stateless demo backends; the walk-through
//! it prints works, including killing the owner.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM lets the demo stop the nodes it started.
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.0.id())])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` free loopback ports in a row.
fn free_run(n: u16) -> u16 {
    loop {
        let p = closed_port().port();
        if p < u16::MAX - n
            && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
        {
            return p;
        }
    }
}

fn with_cookie(
    path: &str,
    cookie: &Option<String>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut b = http::Request::get(path).header("host", "demo");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    b.body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// `log`: the demo's stderr, shown when the node never becomes ready.
async fn wait_ready(admin: SocketAddr, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = try_http(admin, get("/ready")).await {
            if r.status == StatusCode::OK {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "demo node {admin} never became ready; the demo's log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `caracal demo` on free ports, stdout piped, stderr to `log`: (child, http port, admin port).
fn spawn_demo(log: &tempfile::NamedTempFile) -> (std::process::Child, u16, u16) {
    spawn_demo_with(log, &[])
}

fn spawn_demo_with(
    log: &tempfile::NamedTempFile,
    extra: &[&str],
) -> (std::process::Child, u16, u16) {
    // One run for all eight ports: three runs picked one after the other could overlap
    // (none is held while the next is picked), and a node would fail to bind.
    let base = free_run(8);
    let (http_port, admin_port, backend_port) = (base, base + 3, base + 6);
    let child = Command::new(BIN)
        .args([
            "demo",
            "--port",
            &http_port.to_string(),
            "--admin-port",
            &admin_port.to_string(),
            "--backend-port",
            &backend_port.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .unwrap();
    (child, http_port, admin_port)
}

/// One demo at a time: each picks a run of free ports and binds them only when its nodes
/// start, so two at once could pick overlapping runs (a node that cannot bind never
/// becomes ready).
static ONE_DEMO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_walkthrough_survives_killing_the_owner() {
    let _one = ONE_DEMO.lock().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut child, http_port, admin_port) = spawn_demo(&log);
    let out = BufReader::new(child.stdout.take().unwrap());
    let guard = Killed(child);
    // The node1 line carries its PID: "node1  http://...   pid 1234".
    // The rest of its output is read too, in the background: the demo must not meet a
    // closed pipe (a test of its own below).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in out.lines().map_while(Result::ok) {
            if line.starts_with("node1 ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line.rsplit(' ').next().unwrap().trim().to_string());
                }
            }
        }
    });
    let node1_pid = rx.await.expect("demo printed no node1 line");
    let node = |i: u16| -> SocketAddr { ([127, 0, 0, 1], http_port + i).into() };
    let admin = |i: u16| -> SocketAddr { ([127, 0, 0, 1], admin_port + i).into() };
    for i in 0..3 {
        wait_ready(admin(i), log.path()).await;
    }
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = http(admin(i), get("/status")).await.json();
            if s["members"].as_array().unwrap().len() == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "demo cluster did not form");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let mut cookie: Option<String> = None;
    let mut backends = std::collections::HashSet::new();
    for visit in 1..=6u64 {
        // Visits go round the three nodes; the owner stays node1.
        let r = http(
            node(((visit - 1) % 3) as u16),
            with_cookie("/api/session", &cookie),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let j = r.json();
        assert_eq!(j["visits"], visit, "{j}");
        backends.insert(j["backend"].as_str().unwrap().to_string());
        if let Some(sc) = r.header("set-cookie") {
            cookie = Some(sc.split(';').next().unwrap().to_string());
        }
        if visit > 1 {
            assert_eq!(j["node"], "node1");
        }
    }
    assert!(cookie.as_deref().unwrap().ends_with(".node1"));
    assert_eq!(
        backends.len(),
        2,
        "both stateless backends served the one session"
    );
    let css = http(node(0), with_cookie("/static/style.css", &cookie)).await;
    assert!(css.header("set-cookie").is_none());

    // Step 3 of the walk-through: kill -9 the owner, continue on another node.
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -9 {node1_pid}")])
        .status()
        .unwrap();
    assert!(ok.success());
    let r = http(node(2), with_cookie("/api/session", &cookie)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let j = r.json();
    assert_eq!(j["visits"], 7, "{j}");
    assert_ne!(j["node"], "node1");
    let rewritten = r
        .header("set-cookie")
        .expect("cookie rewritten")
        .to_string();
    assert!(
        rewritten.contains(&format!(".{}", j["node"].as_str().unwrap())),
        "{rewritten}"
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_does_not_stop_the_demo() {
    let _one = ONE_DEMO.lock().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut child, _, admin_port) = spawn_demo(&log);
    // As `caracal demo | true` does: nobody reads what it prints.
    drop(child.stdout.take());
    let mut guard = Killed(child);
    for i in 0..3 {
        wait_ready(([127, 0, 0, 1], admin_port + i).into(), log.path()).await;
    }
    assert!(
        guard.0.try_wait().unwrap().is_none(),
        "the demo exited; its log:\n{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
}

/// `caracal demo --tls`: the three nodes form their cluster over mutual TLS (with TLS a
/// member is admitted only by a ping over TLS, so the membership itself shows it works)
/// and replicate a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_tls_forms_its_cluster_over_tls() {
    let _one = ONE_DEMO.lock().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut child, http_port, admin_port) = spawn_demo_with(&log, &["--tls"]);
    let out = child.stdout.take().unwrap();
    let _guard = Killed(child);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut tx = Some(tx);
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("Ctrl-C") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(text.clone());
                }
            }
        }
    });
    let printed = rx.await.expect("demo printed nothing");
    assert!(printed.contains("mutual TLS"), "{printed}");
    let admin = |i: u16| -> SocketAddr { ([127, 0, 0, 1], admin_port + i).into() };
    for i in 0..3 {
        wait_ready(admin(i), log.path()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = try_http(admin(0), get("/status")).await;
        let n = s
            .ok()
            .map_or(0, |r| r.json()["members"].as_array().map_or(0, |m| m.len()));
        if n == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TLS cluster did not form: {n} members"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node1: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let r = http(node1, get("/api/session")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = http(admin(0), get("/metrics")).await.text();
    assert!(
        !m.contains("reason=\"tls\"} 1"),
        "a member was refused: {m}"
    );
}
