//! `caracal demo` and the demo app: a visit counter that lives in the proxy's session store.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two free ports in a row, for the demo's backend pair.
fn free_pair() -> u16 {
    loop {
        let p = closed_port().port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_counts_visits_across_both_backends() {
    let (http_port, admin_port, backend_port) =
        (closed_port().port(), closed_port().port(), free_pair());
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let node: std::net::SocketAddr = ([127, 0, 0, 1], http_port).into();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = try_http(admin, get("/ready")).await {
            if r.status == StatusCode::OK {
                break;
            }
        }
        assert!(Instant::now() < deadline, "demo never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut cookie: Option<String> = None;
    let mut backends = std::collections::HashSet::new();
    for visit in 1..=4u64 {
        let r = http(node, with_cookie("/api/session", &cookie)).await;
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
    assert_eq!(
        backends.len(),
        2,
        "both stateless backends served the one session"
    );
    // The HTML page and the static file.
    let page = http(node, with_cookie("/", &cookie)).await;
    assert!(page.text().contains("visit 5"), "{}", page.text());
    let css = http(node, with_cookie("/static/style.css", &cookie)).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.header("set-cookie").is_none());
    // Logout invalidates.
    let out = http(node, with_cookie("/logout", &cookie)).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
}
