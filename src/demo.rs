//! The demo: a stateless app that uses sessions only through the header protocol
//! (`caracal demo-backend`), and `caracal demo`, which runs three node processes and two
//! such backends on loopback and prints what to try (including killing the owner).
//!
//! Demo app routes: `/` (HTML page with a visit counter), `/api/session` (the same as JSON),
//! `/login?user=NAME` (renew + set user), `/logout` (invalidate), `/static/style.css`
//! (matched by the static filter), `/health`.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CSS: &str = "body{font-family:sans-serif;max-width:40em;margin:2em auto;line-height:1.5}\
code{background:#eee;padding:0 .3em}.n{font-size:3em;font-weight:bold}\n";

/// Serves the demo app on `listener` as backend `name` until `shutdown`.
pub(crate) async fn serve_backend(
    listener: TcpListener,
    name: String,
    shutdown: CancellationToken,
) {
    let name = Arc::new(name);
    let conns = tokio_util::task::TaskTracker::new();
    while let Some((stream, _)) = crate::net::accept(&listener, &shutdown, "demo-backend").await {
        let name = name.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(route(req, &name)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn route(req: Request<Incoming>, backend: &str) -> Response<Full<Bytes>> {
    let h = req.headers();
    let attrs: Map<String, Value> = header_str(h, "x-session")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let sid = header_str(h, "x-session-id")
        .unwrap_or("(none)")
        .to_string();
    let node = header_str(h, "x-session-node")
        .unwrap_or("(none)")
        .to_string();
    let visits = attrs.get("visits").and_then(Value::as_u64).unwrap_or(0) + 1;
    let user = attrs
        .get("user")
        .and_then(Value::as_str)
        .map(str::to_string);
    let query = req.uri().query().unwrap_or("").to_string();
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/static/style.css" => {
            let mut r = text(StatusCode::OK, "text/css", CSS.into());
            // Shows the filter at work: this directive is ignored for a static path.
            r.headers_mut()
                .insert("x-session-set", HeaderValue::from_static(r#"{"css":true}"#));
            r
        }
        "/login" => {
            let user = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("user="))
                .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or("alice");
            let mut r = redirect("/");
            r.headers_mut()
                .insert("x-session-renew", HeaderValue::from_static("true"));
            if let Ok(v) = HeaderValue::from_str(&json!({ "user": user }).to_string()) {
                r.headers_mut().insert("x-session-set", v);
            }
            r
        }
        "/logout" => {
            let mut r = redirect("/");
            r.headers_mut()
                .insert("x-session-invalidate", HeaderValue::from_static("true"));
            r
        }
        "/api/session" | "/" => {
            let mut r = if req.uri().path() == "/" {
                let user_line = match &user {
                    Some(u) => format!("Logged in as <b>{u}</b>. <a href=\"/logout\">Log out</a>"),
                    None => {
                        "Not logged in. <a href=\"/login?user=alice\">Log in as alice</a>".into()
                    }
                };
                let page = format!(
                    "<!doctype html><html><head><title>caracal demo</title>\
                     <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>\
                     <h1>caracal demo</h1><p class=\"n\">visit {visits}</p>\
                     <p>served by node <code>{node}</code> through backend <code>{backend}</code></p>\
                     <p>session <code>{sid}</code></p><p>{user_line}</p>\
                     <p>Reload to count. The backend is stateless: the count lives in the \
                     proxy's session store.</p></body></html>\n"
                );
                text(StatusCode::OK, "text/html; charset=utf-8", page)
            } else {
                let body = json!({
                    "visits": visits, "node": node, "backend": backend,
                    "session_id": sid, "attributes": attrs,
                });
                text(StatusCode::OK, "application/json", body.to_string())
            };
            if let Ok(v) = HeaderValue::from_str(&json!({ "visits": visits }).to_string()) {
                r.headers_mut().insert("x-session-set", v);
            }
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 not found\n".into(),
        ),
    }
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::SEE_OTHER, "text/plain", String::new());
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

/// Ports of `caracal demo`: node i (0..3) uses `http + i` and `admin + i`; the two backends
/// `backend` and `backend + 1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DemoPorts {
    pub http: u16,
    pub admin: u16,
    pub backend: u16,
}

const NODES: u16 = 3;

/// Runs three node processes (this binary) and two demo backends on loopback until
/// `shutdown`, then stops the nodes it started.
///
/// `tls`: the nodes' mesh is mutual TLS, with a CA and node certificates made for the run
/// (`caracal certs`) and a random cluster key.
pub(crate) async fn run(
    ports: DemoPorts,
    tls: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let b = [ports.backend, ports.backend.wrapping_add(1)];
    let mut backend_urls = Vec::new();
    let backends = tokio_util::task::TaskTracker::new();
    for (i, port) in b.iter().enumerate() {
        let addr: SocketAddr = ([127, 0, 0, 1], *port).into();
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for demo backend: {e}"))?;
        backends.spawn(serve_backend(
            l,
            format!("backend{}", i + 1),
            shutdown.clone(),
        ));
        backend_urls.push(format!("\"http://{addr}\""));
    }
    let dir = std::env::temp_dir().join(format!("caracal-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    // Its own multicast port and domain, so a demo never joins a real cluster.
    let mcast_port = 45565;
    let domain = format!("caracal-demo-{}", std::process::id());
    let secure = if tls {
        let certs = dir.join("tls");
        let names: Vec<String> = (1..=NODES).map(|n| format!("node{n}")).collect();
        crate::tls::write_cluster_certs(&certs, &names).map_err(|e| anyhow::anyhow!(e))?;
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let key: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        Some((certs, key))
    } else {
        None
    };
    // Each node's sessions on disk too (async: written every second), in the run's folder.
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let mut children = Vec::new();
    for i in 0..NODES {
        // With --tls: the key under [cluster], and a [cluster.tls] section at the end.
        let (key, tls) = match &secure {
            None => (String::new(), String::new()),
            Some((certs, key)) => {
                let f = |name: String| certs.join(name).display().to_string();
                (
                    format!("key = \"{key}\"\n"),
                    format!(
                        "[cluster.tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
                        f(format!("node{}.pem", i + 1)),
                        f(format!("node{}-key.pem", i + 1)),
                        f("ca.pem".into())
                    ),
                )
            }
        };
        let conf = format!(
            "[node]\njvm_route = \"node{n}\"\nshutdown_grace = \"2s\"\n\
             [http]\nlisten = [\"127.0.0.1:{http}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [backends]\nservers = [{servers}]\n[backends.health]\ninterval = \"1s\"\n\
             [cluster]\nenabled = true\n{key}[cluster.membership]\nport = {mcast_port}\ndomain = \"{domain}\"\n\
             [cluster.receiver]\nport = 4000\nauto_bind = 100\n\
             [persistence]\nmode = \"async\"\ndir = {data:?}\n{tls}",
            n = i + 1,
            http = ports.http + i,
            admin = ports.admin + i,
            servers = backend_urls.join(", "),
            data = data.display().to_string(),
        );
        let path = dir.join(format!("node{}.toml", i + 1));
        std::fs::write(&path, conf)?;
        let log = std::fs::File::create(dir.join(format!("node{}.log", i + 1)))?;
        let child = tokio::process::Command::new(&exe)
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let pid = |c: &tokio::process::Child| c.id().map_or("?".to_string(), |p| p.to_string());
    let mut lines = String::new();
    for (i, c) in children.iter().enumerate() {
        let i16 = i as u16;
        lines.push_str(&format!(
            "node{n}  http://127.0.0.1:{h}/   admin http://127.0.0.1:{a}/status   pid {p}\n",
            n = i + 1,
            h = ports.http + i16,
            a = ports.admin + i16,
            p = pid(c)
        ));
    }
    // Ignoring a write error: a closed stdout (`caracal demo | head`) must not stop the demo
    // (println! would panic on it).
    let _ = writeln!(
        std::io::stdout(),
        "\ncaracal demo: a three-node cluster and two stateless demo backends, all on loopback.\n\n\
         {lines}backends http://127.0.0.1:{b0}  http://127.0.0.1:{b1}\n\
         logs and confs in {dir}{mesh}\n\n\
         Try:\n\
         1. curl -s -c jar -b jar http://127.0.0.1:{h0}/api/session   (a few times)\n   \
            The visit counter lives in the cluster's session store; the cookie ends in .node1.\n\
         2. Ask the other nodes with the same cookie: they forward to the owner, node1.\n   \
            curl -s -b jar http://127.0.0.1:{h1}/api/session\n\
         3. Kill the owner:  kill -9 {p0}\n\
         4. Continue on any other node: the counter goes on, the session's successor owns it\n   \
            now, and the cookie is rewritten to its route (JvmRouteBinder):\n   \
            curl -si -c jar -b jar http://127.0.0.1:{h2}/api/session\n\
         5. Every node's copy: curl -s http://127.0.0.1:{a1}/sessions/<the 32 hex chars>\n\
         6. /login?user=alice renews the id, /logout invalidates it, /static/style.css skips\n   \
            all session work (the static filter). Open http://127.0.0.1:{h0}/ in a browser.\n\n\
         Ctrl-C stops everything.\n",
        b0 = b[0],
        b1 = b[1],
        dir = dir.display(),
        mesh = if secure.is_some() {
            "\nthe mesh is mutual TLS: a CA and node certificates in tls/ there, a random key"
        } else {
            ""
        },
        h0 = ports.http,
        h1 = ports.http + 1,
        h2 = ports.http + 2,
        a1 = ports.admin + 1,
        p0 = pid(&children[0]),
    );
    shutdown.cancelled().await;
    for c in &mut children {
        // SIGTERM so each node leaves the cluster cleanly; the shell's kill needs no crate.
        if let Some(p) = c.id() {
            let _ = std::process::Command::new("sh")
                .args(["-c", &format!("kill -TERM {p} 2>/dev/null")])
                .status();
        }
    }
    for c in &mut children {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), c.wait()).await;
        let _ = c.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    backends.close();
    backends.wait().await;
    Ok(())
}
