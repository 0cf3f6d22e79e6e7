//! The HTTP/1.1 client of the backend side: one request at a time on a kept-alive
//! connection, written and read inside the request's own task.
//!
//! Hand-written because hyper's client runs every connection as a task of its own behind a
//! request channel, a response oneshot and a body channel, which a proxy pays for on every
//! request (bench/RESULTS.md has the profile). Parsing is httparse's, as in hyper.
//!
//! Framing of a response (RFC 9112 6.3): no body for HEAD, 1xx, 204 and 304; chunked when
//! the last transfer coding is chunked; else `Content-Length`; else until the backend
//! closes. Interim 1xx answers other than 101 are skipped. A connection is reused only when
//! its response was read to the end, had a known length, did not say `Connection: close`,
//! and the whole request body was sent.
//!
//! A request body that is not all there when the head goes out is written by a task of its
//! own while the response is read, as hyper does: a backend may answer before it has read
//! everything (a 413, or an echo that streams back as it reads).

use std::io::{self};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::{request, response, HeaderName, HeaderValue, Method};
use http_body::Body;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::request_body::UpBody;
use crate::tasks::Tasks;

mod body;
mod encode;
mod head;
#[cfg(test)]
mod tests;

pub(crate) use body::ResponseBody;
pub(crate) use encode::Encoded;
use encode::{encode_head, request_framing, write_body, BodyError, BodyOut, ReqFraming};
use head::read_head;

/// Largest response head (status line and headers) accepted from a backend when the config
/// does not say (health checks); requests use `[backends]`' `max_response_head`, which
/// follows `max_session_bytes` (a session write travels in a response header).
pub(crate) const DEFAULT_MAX_HEAD: usize = 64 * 1024;
/// Most headers accepted in a response head (hyper's client allows 100).
const MAX_HEADERS: usize = 128;
/// Largest chunk-size line or trailer block accepted in a chunked body.
const MAX_CHUNK_META: usize = 16 * 1024;
/// Below this much free space, the read buffer grows by [`READ_RESERVE`] before a read.
const READ_MIN_SPARE: usize = 1024;
const READ_RESERVE: usize = 16 * 1024;
/// A first body frame up to this size goes out in the same write as the request head.
const COALESCE_MAX: usize = 16 * 1024;

/// One connection to a backend (or to a member, when forwarding).
#[derive(Debug)]
pub(crate) struct Conn {
    io: Io,
    /// Bytes read from the backend and not consumed yet.
    rbuf: BytesMut,
    /// The request head being written (kept for its capacity).
    wbuf: Vec<u8>,
    /// Largest response head accepted.
    max_head: usize,
}

#[derive(Debug)]
enum Io {
    Whole(TcpStream),
    /// The request body is still being written by its own task.
    Split(OwnedReadHalf, Writer),
    /// Only while the stream moves from `Whole` to `Split`.
    Gone,
}

/// The task writing the rest of a request body; aborted when the exchange is dropped.
#[derive(Debug)]
struct Writer {
    task: Option<tokio::task::JoinHandle<Result<OwnedWriteHalf, BodyError>>>,
    /// The write half, once the task wrote the whole body.
    done: Option<OwnedWriteHalf>,
    /// Set by the task when the client's body failed, before the write half is dropped.
    client_failed: Arc<OnceLock<String>>,
}

impl Writer {
    fn new(
        task: tokio::task::JoinHandle<Result<OwnedWriteHalf, BodyError>>,
        client_failed: Arc<OnceLock<String>>,
    ) -> Self {
        Self {
            task: Some(task),
            done: None,
            client_failed,
        }
    }

    /// The write half back, if the body was written completely.
    fn finished(&mut self) -> Option<OwnedWriteHalf> {
        if let Some(wr) = self.done.take() {
            return Some(wr);
        }
        let h = self.task.as_mut()?;
        if !h.is_finished() {
            return None;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::future::Future::poll(Pin::new(h), &mut cx) {
            Poll::Ready(Ok(Ok(wr))) => {
                self.task = None;
                Some(wr)
            }
            _ => None,
        }
    }

    /// Waits for the writer to end: `Some(reason)` if the client's body failed; `None` if
    /// it ended otherwise (then it waits no more: pending for ever).
    async fn client_failure(&mut self) -> Option<String> {
        let Some(h) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let ended = h.await;
        self.task = None;
        match ended {
            Ok(Ok(wr)) => {
                self.done = Some(wr);
                None
            }
            Ok(Err(BodyError::Client(why))) => Some(why),
            // The backend's side broke: the response read reports it.
            Ok(Err(BodyError::Backend(why))) => {
                tracing::debug!(error = %why, "request body not written");
                None
            }
            Err(_) => None,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(h) = &self.task {
            h.abort();
        }
    }
}

/// Why an exchange failed. `unsent`: nothing of the request reached the backend, so it may
/// go to another one as it is. `fault` says whose it is: only the backend's own failures
/// count against its health.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct SendError {
    pub unsent: bool,
    pub reason: String,
    pub fault: Fault,
}

/// Whose failure an exchange's error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The backend or the connection to it broke: the passive health check counts it.
    Backend,
    /// The backend answered, with a response this proxy will not pass on (a head over the
    /// limit, a transfer coding it cannot carry): that response's 502, no health change.
    Response,
    /// The client's request body broke off or was malformed: the client's 400.
    Client,
}

impl SendError {
    pub(crate) fn sent(reason: impl Into<String>) -> Self {
        Self {
            unsent: false,
            reason: reason.into(),
            fault: Fault::Backend,
        }
    }

    pub(crate) fn unsent(reason: impl Into<String>) -> Self {
        Self {
            unsent: true,
            ..Self::sent(reason)
        }
    }

    pub(super) fn response(reason: impl Into<String>) -> Self {
        Self {
            fault: Fault::Response,
            ..Self::sent(reason)
        }
    }

    pub(crate) fn client(reason: impl Into<String>) -> Self {
        Self {
            fault: Fault::Client,
            ..Self::sent(reason)
        }
    }
}

/// A response head, and how to read the body that follows it.
#[derive(Debug)]
pub(crate) struct Head {
    pub parts: response::Parts,
    /// The headers whose names start with the divert prefix (the session prefix): they
    /// never enter `parts`.
    pub diverted: Diverted,
    plan: Plan,
}

/// Response headers taken out of a head: the name as received, and the value.
pub(super) type Diverted = Vec<(Bytes, HeaderValue)>;

impl Head {
    pub(crate) fn into_parts(self) -> (response::Parts, Diverted, Plan) {
        (self.parts, self.diverted, self.plan)
    }
}

/// How a response body is read, and whether its connection may be reused after it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    framing: Framing,
    keep_alive: bool,
}

/// What remains of a response body.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Close,
    /// `101 Switching Protocols`: the connection now belongs to the upgraded protocol.
    Upgrade,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

impl Conn {
    /// Opens a connection; `authority` is `host:port`; `max_head` caps response heads.
    pub(crate) async fn connect(authority: &str, max_head: usize) -> io::Result<Self> {
        let io = TcpStream::connect(authority).await?;
        io.set_nodelay(true)?;
        Ok(Self {
            io: Io::Whole(io),
            rbuf: BytesMut::with_capacity(READ_RESERVE),
            wbuf: Vec::with_capacity(1024),
            max_head,
        })
    }

    /// Whether an idle connection can carry a request: the backend has not closed it nor
    /// sent anything unasked. No system call unless the socket turned readable while idle.
    pub(crate) fn is_usable(&mut self) -> bool {
        let Io::Whole(io) = &self.io else {
            return false;
        };
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness may be stale: only a read that would block proves the connection idle.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(io.try_read(&mut probe),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends a request and reads the response head. The request's parts are only borrowed,
    /// so the caller can send them again; the body is consumed as it is sent. Response
    /// headers whose lower-case names start with `divert` (when not empty) go to
    /// [`Head::diverted`] instead of the header map.
    pub(crate) async fn send(
        &mut self,
        req: &request::Parts,
        extra: &[(HeaderName, HeaderValue)],
        divert: &'static [u8],
        body: &mut UpBody,
        tasks: &Tasks,
    ) -> Result<Head, SendError> {
        let framing = request_framing(&req.headers, body).map_err(SendError::client)?;
        self.wbuf.clear();
        encode_head(&mut self.wbuf, req, extra, None, framing);
        self.send_buffered(framing, req.method == Method::HEAD, divert, body, tasks)
            .await
    }

    /// [`Conn::send`] of a request encoded beforehand.
    pub(crate) async fn send_encoded(
        &mut self,
        req: &Encoded,
        divert: &'static [u8],
        body: &mut UpBody,
        tasks: &Tasks,
    ) -> Result<Head, SendError> {
        let framing = req.framing.map_err(SendError::client)?;
        self.wbuf.clear();
        self.wbuf.extend_from_slice(&req.head);
        self.send_buffered(framing, req.method == Method::HEAD, divert, body, tasks)
            .await
    }

    /// Sends the head in `wbuf` and the body, and reads the response head (`no_body`: the
    /// request was a HEAD). A body still arriving is written by a task of `tasks`.
    async fn send_buffered(
        &mut self,
        framing: ReqFraming,
        no_body: bool,
        divert: &'static [u8],
        body: &mut UpBody,
        tasks: &Tasks,
    ) -> Result<Head, SendError> {
        let mut out = BodyOut {
            strip: divert,
            framing,
            remaining: match framing {
                ReqFraming::Length(n) => n,
                _ => 0,
            },
            done: framing == ReqFraming::None,
        };

        // A body that is already here (a small POST) rides in the head's write.
        let mut started = false;
        let mut big_first = None;
        if !out.done {
            let first =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
            if let Poll::Ready(frame) = first {
                started = true;
                match frame {
                    None => out
                        .finish(&mut self.wbuf, None)
                        .map_err(SendError::client)?,
                    Some(Err(e)) => return Err(SendError::client(format!("client body: {e}"))),
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) if d.len() <= COALESCE_MAX => {
                            out.push(&mut self.wbuf, &d).map_err(SendError::client)?;
                            if body.is_end_stream() {
                                out.finish(&mut self.wbuf, None)
                                    .map_err(SendError::client)?;
                            }
                        }
                        Ok(d) => big_first = Some(d),
                        Err(f) => {
                            let t = f.into_trailers().ok();
                            out.finish(&mut self.wbuf, t).map_err(SendError::client)?;
                        }
                    },
                }
            }
        }
        let Io::Whole(io) = &mut self.io else {
            return Err(SendError::unsent("connection busy"));
        };
        if let Err(e) = io.write_all(&self.wbuf).await {
            // A write that fails at once (a reset connection) sent nothing; a body frame
            // taken from the client cannot be given back.
            let mut e = SendError::sent(format!("writing the request: {e}"));
            e.unsent = !started;
            return Err(e);
        }

        let max_head = self.max_head;
        let mut head = if out.done {
            read_head(io, &mut self.rbuf, no_body, divert, max_head).await?
        } else {
            let stream = match std::mem::replace(&mut self.io, Io::Gone) {
                Io::Whole(s) => s,
                other => {
                    self.io = other;
                    return Err(SendError::sent("connection busy"));
                }
            };
            let (rd, mut wr) = stream.into_split();
            let mut body = std::mem::replace(body, UpBody::Empty);
            let mut scratch = std::mem::take(&mut self.wbuf);
            let client_failed = Arc::new(OnceLock::new());
            let failed = client_failed.clone();
            let writer = tasks.spawn(async move {
                match write_body(&mut wr, &mut scratch, &mut body, out, big_first).await {
                    Ok(()) => Ok(wr),
                    Err(e) => {
                        // Said before `wr` drops (and closes the backend's side).
                        if let BodyError::Client(why) = &e {
                            let _ = failed.set(why.clone());
                        }
                        Err(e)
                    }
                }
            });
            self.io = Io::Split(rd, Writer::new(writer, client_failed));
            // Boxed: this path (a body still arriving) is the rare one, and its future
            // inlined would grow every request's by the select below.
            Box::pin(self.read_while_writing(no_body, divert)).await?
        };
        if head.parts.status == StatusCode::SWITCHING_PROTOCOLS {
            head.plan.keep_alive = false;
        }
        Ok(head)
    }

    /// Reads the response head while the body's task writes the rest of the request. A
    /// client body that breaks off first is the client's failure, not the backend's (which
    /// then sees a cut body and closes).
    async fn read_while_writing(
        &mut self,
        no_body: bool,
        divert: &'static [u8],
    ) -> Result<Head, SendError> {
        let max_head = self.max_head;
        let Io::Split(rd, writer) = &mut self.io else {
            return Err(SendError::sent("connection busy"));
        };
        let read = read_head(rd, &mut self.rbuf, no_body, divert, max_head);
        tokio::pin!(read);
        // The writer first: a body that broke off also breaks the backend's answer, and
        // the cause is the client's.
        loop {
            tokio::select! {
                biased;
                failed = writer.client_failure() => {
                    if let Some(why) = failed {
                        return Err(SendError::client(why));
                    }
                }
                r = &mut read => match r {
                    Ok(h) => return Ok(h),
                    Err(e) => {
                        // The backend's answer broke. If the client's body broke first,
                        // the writer said so before its half of the socket closed (which
                        // is what the backend answered), even if its task's end is not
                        // visible yet: it runs on another worker (the 100k-case fuzz run
                        // found that race: a bad chunk then counted as a backend failure).
                        if let Some(why) = writer.client_failed.get() {
                            return Err(SendError::client(why.clone()));
                        }
                        return Err(e);
                    }
                },
            }
        }
    }

    /// After a request body written by its own task: the whole stream again, if the body
    /// went out completely. False when the connection cannot be reused.
    fn rejoin(&mut self) -> bool {
        match &mut self.io {
            Io::Whole(_) => true,
            Io::Gone => false,
            Io::Split(_, w) => {
                let Some(wr) = w.finished() else {
                    return false;
                };
                let Io::Split(rd, _) = std::mem::replace(&mut self.io, Io::Gone) else {
                    return false;
                };
                match rd.reunite(wr) {
                    Ok(s) => {
                        self.io = Io::Whole(s);
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }

    /// Fills the read buffer from the socket: the number of bytes read, 0 at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_MIN_SPARE {
            self.rbuf.reserve(READ_RESERVE);
        }
        match &mut self.io {
            Io::Whole(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, &mut self.rbuf),
            Io::Split(r, _) => tokio_util::io::poll_read_buf(Pin::new(r), cx, &mut self.rbuf),
            Io::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}
