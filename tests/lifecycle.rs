//! A node's start and stop, in-process:
//! - until it is ready, its client ports refuse connections (REFERENCE 4.7), so round-robin
//!   clients move on instead of waiting in a backlog;
//! - every task it starts has an owner and ends at shutdown (docs/ARCHITECTURE.md,
//!   "Tasks").
//!
//! For the second: Two nodes run in-process on a runtime of their own, as a cluster, with a
//! session created, replicated and forwarded, and a WebSocket-style tunnel left open; after
//! both `node::run`s return, the runtime has no live task and the timer thread has stopped.
//!
//! The backend and the clients live on another runtime, so only the nodes' tasks count.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// `/login` creates a session; a request with `Upgrade` gets a 101 and its bytes echoed.
async fn backend(listener: TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let svc = service_fn(|mut req: Request<Incoming>| async move {
                if req.headers().contains_key("upgrade") {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 64];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                    return Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    );
                }
                let mut r = Response::builder().header("x-seen-session", {
                    req.headers()
                        .get("x-session")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string()
                });
                if req.uri().path() == "/login" {
                    r = r.header("x-session-set", r#"{"user":"alice"}"#);
                }
                Ok(r.body(Full::new(Bytes::from_static(b"ok"))).unwrap())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// One raw HTTP/1.1 exchange on a new connection: (status line + headers, body).
async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("cookie: JSESSIONID={c}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n{cookie}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn conf(route: &str, backend: SocketAddr, port: u16, domain: &str) -> String {
    conf_every(route, backend, port, domain, "100ms")
}

/// `frequency` sets the join window of a starting node (2.5 heartbeats).
fn conf_every(
    route: &str,
    backend: SocketAddr,
    port: u16,
    domain: &str,
    frequency: &str,
) -> String {
    format!(
        "[node]\njvm_route = \"{route}\"\nshutdown_grace = \"2s\"\n\
         [http]\nlisten = [\"127.0.0.1:0\"]\nupgrades = [\"websocket\", \"echo\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [backends]\nservers = [\"http://{backend}\"]\n\
         [cluster]\nenabled = true\n\
         [cluster.membership]\nport = {port}\ndomain = \"{domain}\"\nfrequency = \"{frequency}\"\n\
         drop_time = \"5s\"\nverify_timeout = \"500ms\"\n[cluster.receiver]\nport = 0\n"
    )
}

/// A runtime for the outside world (the backend, started on it, and the clients), and one
/// for the nodes alone, so that only the nodes' tasks count there.
fn runtimes() -> (tokio::runtime::Runtime, tokio::runtime::Runtime, SocketAddr) {
    let rt = |threads| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    };
    let outside = rt(1);
    let backend_addr = outside.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(backend(l));
        a
    });
    (outside, rt(2), backend_addr)
}

/// The timer thread is shared by the nodes of one process: the tests here run one at a
/// time, so "no thread after the nodes stopped" is about this test's nodes.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Running {
    http: SocketAddr,
    admin: SocketAddr,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(conf: &str) -> Running {
    let cfg = caracal::testing::load_str(Path::new("test.toml"), conf, &[]).unwrap();
    let listeners = caracal::testing::Listeners::bind(&cfg).await.unwrap();
    let http = listeners.http[0].local_addr().unwrap();
    let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
    let stop = CancellationToken::new();
    let done = tokio::spawn(caracal::testing::run(cfg, listeners, stop.clone()));
    Running {
        http,
        admin,
        stop,
        done,
    }
}

/// Polls `/status` from the outside runtime until `pred` holds (at most 10 s).
fn wait_status(outside: &tokio::runtime::Runtime, admin: SocketAddr, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = outside.block_on(get(admin, "/status", None));
        if pred(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "status never matched: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stopped_node_leaves_no_task_and_no_timer_thread() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (outside, nodes_rt, backend_addr) = runtimes();
    let nodes_rt = Arc::new(nodes_rt);
    // Its own multicast port and domain: no other test hears this cluster.
    let port = common::mcast_port();
    let domain = format!("shutdown-{}", std::process::id());
    let n1 = nodes_rt.block_on(start(&conf("s1", backend_addr, port, &domain)));
    let n2 = nodes_rt.block_on(start(&conf("s2", backend_addr, port, &domain)));
    for n in [&n1, &n2] {
        wait_status(&outside, n.admin, |s| {
            s.contains("\"state\": \"ready\"") && s.contains("\"jvm_route\": \"s")
        });
    }
    wait_status(&outside, n1.admin, |s| s.contains("\"jvm_route\": \"s2\""));
    wait_status(&outside, n2.admin, |s| s.contains("\"jvm_route\": \"s1\""));

    // A session on s1 (replicated to s2 before the response: sync), read through s2, which
    // forwards to its owner.
    let login = outside.block_on(get(n1.http, "/login", None));
    let id = login
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim().strip_prefix("JSESSIONID=")?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.split(';').next().unwrap_or(v).to_string())
        })
        .unwrap_or_else(|| panic!("no session cookie in {login}"));
    let via_s2 = outside.block_on(get(n2.http, "/page", Some(&id)));
    assert!(
        via_s2.contains("x-seen-session: {\"user\":\"alice\"}"),
        "{via_s2}"
    );

    // A tunnel left open across the shutdown.
    let mut tunnel = outside.block_on(async {
        let mut s = TcpStream::connect(n1.http).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed in the 101 head");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        s
    });

    let nodes = nodes_rt.clone();
    let left = nodes.block_on(async move {
        n1.stop.cancel();
        n2.stop.cancel();
        n1.done.await.unwrap().unwrap();
        n2.done.await.unwrap().unwrap();
        // A task that finished may take a moment to be reaped: bounded poll.
        let m = tokio::runtime::Handle::current().metrics();
        let deadline = Instant::now() + Duration::from_secs(2);
        // This block itself is not a task (block_on runs it on the caller's thread).
        while m.num_alive_tasks() > 0 && Instant::now() < deadline {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        m.num_alive_tasks()
    });
    assert_eq!(left, 0, "tasks still alive after both nodes returned");
    assert!(
        !caracal::testing::ticking(),
        "the timer thread still runs after the nodes stopped"
    );
    // The tunnel was closed by the node's shutdown.
    let n = outside.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut [0u8; 8]))
            .await
            .expect("tunnel still open after shutdown")
    });
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[test]
fn a_starting_node_refuses_client_connections_until_it_is_ready() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (outside, node_rt, backend_addr) = runtimes();
    let port = common::mcast_port();
    let domain = format!("starting-{}", std::process::id());
    // A 2 s heartbeat: the join window (2.5 heartbeats) keeps the node starting for 5 s.
    let n = node_rt.block_on(start(&conf_every("r1", backend_addr, port, &domain, "2s")));
    // Starting: admin answers (503), the client port refuses.
    let ready = outside.block_on(get(n.admin, "/ready", None));
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let refused = outside.block_on(TcpStream::connect(n.http));
    match refused {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a starting node accepted a client connection"),
    }
    wait_status(&outside, n.admin, |s| s.contains("\"state\": \"ready\""));
    let served = outside.block_on(get(n.http, "/page", None));
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    node_rt.block_on(async move {
        n.stop.cancel();
        n.done.await.unwrap().unwrap();
    });
}
