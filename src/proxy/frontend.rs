//! Client-facing listeners: accept with a cap on open connections, optional TLS (ALPN h2 /
//! http/1.1), HTTP/1.1 and HTTP/2 (h2c prior knowledge when enabled) with upgrades, a
//! header-read timeout against slowloris and a header size cap (431).
//!
//! Shutdown: on cancel the accept loop stops and every connection is asked to finish its
//! in-flight requests (`graceful_shutdown`); the caller waits on the [`TaskTracker`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::drain::{Drain, Signal};
use super::framing::Guarded;
use super::headers::ClientInfo;
use super::timer::CoarseTimer;
use super::Proxy;

/// `[http]`: the plain listeners and the limits of every client connection.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: Vec<SocketAddr>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2c: bool,
    pub trusted_proxies: Vec<IpNet>,
    /// The request id header (`X-Request-Id`), sent to backends and on error responses.
    pub request_id_header: Option<http::HeaderName>,
    /// Lower-case `Upgrade` protocols passed to backends (`websocket`).
    pub upgrades: Vec<String>,
}

/// `[https]`: the TLS listeners and their certificate.
#[derive(Clone)]
pub struct HttpsConfig {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Loaded and checked at validation time so a bad cert is a config error.
    pub tls: Arc<rustls::ServerConfig>,
    /// The certificate `tls` serves, which a reload replaces (rotation).
    pub certs: Arc<crate::tls::Rotating>,
}

impl std::fmt::Debug for HttpsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConfig")
            .field("listen", &self.listen)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// The settings hyper's HTTP/1.1 and HTTP/2 builders share, whichever connection type
/// (plain, TLS, or the version-sniffing `auto` one) serves the connection. A macro: the
/// `auto` builder's halves are other types with the same methods.
macro_rules! http1_settings {
    ($b:expr, $cfg:expr) => {
        // HTTP/1 responses are written flattened (head and body copied into one buffer,
        // one `write`) instead of hyper's `writev` queue: 4-5% less CPU per small proxied
        // request, and no measurable change for 8 KiB to 1 MiB bodies (bench/RESULTS.md).
        $b.timer(CoarseTimer)
            .header_read_timeout($cfg.header_read_timeout)
            .max_buf_size($cfg.max_header_bytes)
            .writev(false)
            .keep_alive(true);
        // hyper's own cap is 100 headers. Setting a cap, even 100, makes every head parse
        // build two `SmallVec`s of that size element by element (~1 600 instructions per
        // request, 8% of a plain request, callgrind): the default is left alone.
        if $cfg.max_headers != HYPER_MAX_HEADERS {
            $b.max_headers($cfg.max_headers);
        }
    };
}

/// hyper's default `max_headers` (`proto::h1::role::DEFAULT_MAX_HEADERS`).
const HYPER_MAX_HEADERS: usize = 100;

macro_rules! http2_settings {
    ($b:expr, $cfg:expr) => {
        $b.timer(CoarseTimer)
            .max_header_list_size(u32::try_from($cfg.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
    };
}

/// Settings and shared state of all client listeners of a node. The protocol is known
/// without sniffing (TLS says it in ALPN, plain listeners speak HTTP/1.1 unless h2c is on),
/// so only h2c listeners pay for hyper's version-detecting `auto` connection.
pub(crate) struct Frontend {
    proxy: Arc<Proxy>,
    /// HTTP/1.1 or HTTP/2 by the connection preface (h2c prior knowledge).
    auto: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    h2c: bool,
    handshake_timeout: Duration,
    /// `max_header_bytes`, for the framing guard's count.
    max_head: usize,
    permits: Arc<Semaphore>,
    drain: Arc<Drain>,
}

impl Frontend {
    pub(crate) fn new(proxy: Arc<Proxy>, cfg: &HttpConfig) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        http1_settings!(builder.http1(), cfg);
        http2_settings!(builder.http2(), cfg);
        let mut http1 = http1::Builder::new();
        http1_settings!(http1, cfg);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2_settings!(http2, cfg);
        Self {
            proxy,
            auto: builder,
            http1,
            http2,
            h2c: cfg.h2c,
            handshake_timeout: cfg.header_read_timeout,
            max_head: cfg.max_header_bytes,
            permits: Arc::new(Semaphore::new(cfg.max_connections)),
            drain: Arc::new(Drain::default()),
        }
    }

    /// Accepts on `listener` until `shutdown`, then asks the open connections to finish;
    /// connections are tracked by `tracker`.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        self.clone().accept(listener, tls, shutdown, tracker).await;
        self.drain.close_all();
    }

    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            // Past the cap, new clients wait in the kernel's backlog (as HAProxy's maxconn).
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let Some((stream, peer)) = crate::net::accept(&listener, &shutdown, "http").await
            else {
                return;
            };
            let this = self.clone();
            let tls = tls.clone();
            tracker.spawn(async move {
                let metrics = this.proxy.metrics.clone();
                metrics.connections.inc();
                metrics.open_connections.inc();
                this.connection(stream, peer, tls).await;
                metrics.open_connections.dec();
                drop(permit);
            });
        }
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
        let _ = stream.set_nodelay(true);
        match tls {
            None => {
                let protocol = if self.h2c {
                    match tokio::time::timeout(self.handshake_timeout, sniff(&stream)).await {
                        Ok(Ok(Some(p))) => p,
                        // Closed, failed or silent before its first byte.
                        _ => return,
                    }
                } else {
                    Protocol::Http1
                };
                let client = ClientInfo::new(peer, false);
                let http1 = matches!(protocol, Protocol::Http1);
                let io = Guarded::new(stream, http1, client.flags.clone(), self.max_head);
                self.serve_io(TokioIo::new(io), client, protocol).await
            }
            Some(acceptor) => {
                let hs = tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream));
                let tls_stream = match hs.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let protocol = if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                let client = ClientInfo::new(peer, true);
                let http1 = matches!(protocol, Protocol::Http1);
                let io = Guarded::new(tls_stream, http1, client.flags.clone(), self.max_head);
                self.serve_io(TokioIo::new(io), client, protocol).await
            }
        }
    }

    /// Serves a forwarding channel a member opened over the mesh (HTTP/1.1): its requests'
    /// client is that member, whose forwarding marker counts (`ClientInfo::member`).
    /// It drains with the client connections.
    pub(crate) async fn serve_channel(self: Arc<Self>, ch: crate::cluster::MemberChannel) {
        let client = ClientInfo::member(ch.peer, &ch.route);
        self.serve_io(TokioIo::new(ch.stream), client, Protocol::Http1)
            .await
    }

    async fn serve_io<I>(&self, io: TokioIo<I>, client: ClientInfo, protocol: Protocol)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.proxy.clone();
        let peer = client.peer;
        let shutdown = self.drain.register();
        // `handle` starts in the call, before hyper goes on reading the connection (see
        // there); its future is handed to hyper as it is (a wrapper is one more move).
        let handle = move |req| proxy.handle(req, &client);
        let result = match protocol {
            Protocol::Http1 => {
                let conn = self
                    .http1
                    .serve_connection(io, service_fn(handle))
                    .with_upgrades();
                drive(conn, shutdown, |c| c.graceful_shutdown())
                    .await
                    .map_err(|e| e.to_string())
            }
            Protocol::Http2 => {
                // Each stream's future is spawned as a task, moved a few times on the way:
                // boxed, a move copies a pointer, not the kilobytes of the request's state
                // (4-5% fewer instructions per HTTP/2 request; for HTTP/1, where the future
                // stays in its connection, the allocation costs more than it saves).
                let (started, handle) = first_request(handle);
                let svc = service_fn(move |req| Box::pin(handle(req)));
                let conn = self.http2.serve_connection(io, svc);
                let served = drive(conn, shutdown, |c| c.graceful_shutdown());
                // Boxed: the HTTP/1 connection's future (the common one) stays as small
                // as it was; this is one allocation per HTTP/2 connection.
                Box::pin(self.until_first_request(served, &started, peer))
                    .await
                    .map(|_| ())
            }
            Protocol::Sniff => {
                let (started, handle) = first_request(handle);
                let conn = self
                    .auto
                    .serve_connection_with_upgrades(io, service_fn(handle));
                let served = drive(conn, shutdown, |c| c.graceful_shutdown());
                Box::pin(self.until_first_request(served, &started, peer))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        }
    }
}

impl Frontend {
    /// An HTTP/2 (or still sniffed) connection must bring its first request within the
    /// handshake timeout (`header_read_timeout`): hyper's `header_read_timeout` covers
    /// HTTP/1 heads only, so a client that sent `P`, part of the preface, or the preface
    /// and no SETTINGS, held its connection (and a `max_connections` permit) forever
    ///. Once a request began, the connection runs on its own timeouts.
    async fn until_first_request<T, E: std::fmt::Display>(
        &self,
        served: impl std::future::Future<Output = Result<T, E>>,
        started: &AtomicBool,
        peer: SocketAddr,
    ) -> Result<Option<T>, String> {
        let deadline = async {
            tokio::time::sleep(self.handshake_timeout).await;
            if started.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = served => r.map(Some).map_err(|e| e.to_string()),
            _ = deadline => {
                tracing::debug!(%peer, "no request within the handshake timeout: connection closed");
                Ok(None)
            }
        }
    }
}

/// Wraps a connection's request handler so the connection knows a request began.
fn first_request<R, O>(
    handle: impl Fn(R) -> O + Clone,
) -> (Arc<AtomicBool>, impl Fn(R) -> O + Clone) {
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    (started, move |req| {
        flag.store(true, Ordering::Release);
        handle(req)
    })
}

/// The protocol of a plain connection that may speak h2c with prior knowledge, from its
/// first bytes (peeked: they stay for the protocol that serves it). `None`: closed first.
/// Peeking once per connection is cheaper than hyper's sniffing `auto` connection, which
/// wraps every read of the connection.
async fn sniff(stream: &TcpStream) -> std::io::Result<Option<Protocol>> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let n = stream.peek(&mut buf).await?;
    Ok(if n == 0 {
        None
    } else if buf[..n] != PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        // A prefix of the preface so far: hyper's auto connection waits for the rest.
        Some(Protocol::Sniff)
    })
}

#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
    /// h2c prior knowledge or HTTP/1.1, told apart by the first bytes.
    Sniff,
}

/// Runs one client connection; on shutdown it is asked to finish its in-flight requests.
async fn drive<C, T, E>(
    conn: C,
    shutdown: Signal,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<T, E>
where
    C: std::future::Future<Output = Result<T, E>>,
{
    tokio::pin!(conn);
    let mut graceful = Some(graceful);
    std::future::poll_fn(|cx| {
        if graceful.is_some() && shutdown.poll_stop(cx) {
            if let Some(g) = graceful.take() {
                g(conn.as_mut());
            }
        }
        conn.as_mut().poll(cx)
    })
    .await
}
