//! The demo: a stateless app that uses sessions only through the header protocol
//! (`caracal demo-backend`), and `caracal demo`, which runs a node and two such backends on
//! loopback and prints what to try.
//!
//! Demo app routes: `/` (HTML page with a visit counter), `/api/session` (the same as JSON),
//! `/login?user=NAME` (renew + set user), `/logout` (invalidate), `/static/style.css`
//! (matched by the static filter), `/health`.

use std::convert::Infallible;
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
pub async fn serve_backend(listener: TcpListener, name: String, shutdown: CancellationToken) {
    let name = Arc::new(name);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(route(req, &name)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
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

/// Ports of `caracal demo`.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    pub http: u16,
    pub admin: u16,
    pub backend: u16,
}

/// Runs one node and two demo backends on loopback until `shutdown`.
pub async fn run(ports: DemoPorts, shutdown: CancellationToken) -> anyhow::Result<()> {
    let b = [ports.backend, ports.backend.wrapping_add(1)];
    let mut backend_urls = Vec::new();
    for (i, port) in b.iter().enumerate() {
        let addr: SocketAddr = ([127, 0, 0, 1], *port).into();
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for demo backend: {e}"))?;
        tokio::spawn(serve_backend(
            l,
            format!("backend{}", i + 1),
            shutdown.clone(),
        ));
        backend_urls.push(format!("\"http://{addr}\""));
    }
    let conf = format!(
        "[node]\njvm_route = \"node1\"\nshutdown_grace = \"2s\"\n\
         [http]\nlisten = [\"127.0.0.1:{}\"]\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
         [backends]\nservers = [{}]\n[backends.health]\ninterval = \"1s\"\n",
        ports.http,
        ports.admin,
        backend_urls.join(", ")
    );
    let cfg = crate::config::load_str(std::path::Path::new("(demo)"), &conf, &[])?;
    let listeners = crate::node::Listeners::bind(&cfg).await?;
    println!(
        "\ncaracal demo: one node, two stateless demo backends, all on loopback.\n\n\
         node1    http://127.0.0.1:{http}/           (pid {pid})\n\
         admin    http://127.0.0.1:{admin}/status\n\
         backends http://127.0.0.1:{b0}  http://127.0.0.1:{b1}\n\n\
         Try:\n\
         1. Open http://127.0.0.1:{http}/ and reload: the visit counter grows, and the\n   \
            backend alternates while the session stays (it lives in caracal, not the backend).\n\
         2. curl -si -c /tmp/jar -b /tmp/jar http://127.0.0.1:{http}/api/session\n   \
            (run it twice: Set-Cookie JSESSIONID=<32 hex>.node1, then visits 2)\n\
         3. curl -s http://127.0.0.1:{admin}/sessions/<the 32 hex chars>   (the stored session)\n\
         4. /login?user=alice renews the id (old id gone, data kept); /logout invalidates it.\n\
         5. /static/style.css matches the static filter: no session headers, no cookie.\n\n\
         Ctrl-C stops everything.\n",
        http = ports.http,
        admin = ports.admin,
        b0 = b[0],
        b1 = b[1],
        pid = std::process::id(),
    );
    crate::node::run(cfg, listeners, shutdown).await
}
