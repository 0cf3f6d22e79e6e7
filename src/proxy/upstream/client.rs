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

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, request, response, HeaderMap, HeaderName, HeaderValue, Method, Response};
use http::{StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::proxy::body::UpBody;

use super::Lease;

/// Largest response head (status line and headers) accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
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
pub struct Conn {
    io: Io,
    /// Bytes read from the backend and not consumed yet.
    rbuf: BytesMut,
    /// The request head being written (kept for its capacity).
    wbuf: Vec<u8>,
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
struct Writer(Option<tokio::task::JoinHandle<Result<OwnedWriteHalf, String>>>);

impl Writer {
    /// The write half back, if the body was written completely.
    fn finished(&mut self) -> Option<OwnedWriteHalf> {
        let h = self.0.as_mut()?;
        if !h.is_finished() {
            return None;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::future::Future::poll(Pin::new(h), &mut cx) {
            Poll::Ready(Ok(Ok(wr))) => {
                self.0 = None;
                Some(wr)
            }
            _ => None,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Why an exchange failed. `unsent`: nothing of the request reached the backend, so it may
/// go to another one as it is.
#[derive(Debug)]
pub struct SendError {
    pub unsent: bool,
    pub reason: String,
}

impl SendError {
    fn sent(reason: impl Into<String>) -> Self {
        Self {
            unsent: false,
            reason: reason.into(),
        }
    }
}

/// A response head, and how to read the body that follows it.
#[derive(Debug)]
pub struct Head {
    pub parts: response::Parts,
    /// The headers whose names start with the divert prefix (the session prefix): they
    /// never enter `parts`.
    pub diverted: Diverted,
    plan: Plan,
}

/// Response headers taken out of a head: the name as received, and the value.
pub type Diverted = Vec<(Bytes, HeaderValue)>;

impl Head {
    pub fn into_parts(self) -> (response::Parts, Diverted, Plan) {
        (self.parts, self.diverted, self.plan)
    }
}

/// How a response body is read, and whether its connection may be reused after it.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
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
    /// Opens a connection; `authority` is `host:port`.
    pub async fn connect(authority: &str) -> io::Result<Self> {
        let io = TcpStream::connect(authority).await?;
        io.set_nodelay(true)?;
        Ok(Self {
            io: Io::Whole(io),
            rbuf: BytesMut::with_capacity(READ_RESERVE),
            wbuf: Vec::with_capacity(1024),
        })
    }

    /// Whether an idle connection can carry a request: the backend has not closed it nor
    /// sent anything unasked. No system call unless the socket turned readable while idle.
    pub fn is_usable(&mut self) -> bool {
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
    pub async fn send(
        &mut self,
        req: &request::Parts,
        extra: &[(HeaderName, HeaderValue)],
        divert: &[u8],
        body: &mut UpBody,
    ) -> Result<Head, SendError> {
        let framing = request_framing(&req.headers, body).map_err(SendError::sent)?;
        self.wbuf.clear();
        encode_head(&mut self.wbuf, req, extra, framing);
        self.send_buffered(framing, req.method == Method::HEAD, divert, body)
            .await
    }

    /// [`Conn::send`] of a request encoded beforehand.
    pub async fn send_encoded(
        &mut self,
        req: &Encoded,
        divert: &[u8],
        body: &mut UpBody,
    ) -> Result<Head, SendError> {
        let framing = req.framing.map_err(SendError::sent)?;
        self.wbuf.clear();
        self.wbuf.extend_from_slice(&req.head);
        self.send_buffered(framing, req.method == Method::HEAD, divert, body)
            .await
    }

    /// Sends the head in `wbuf` and the body, and reads the response head (`no_body`: the
    /// request was a HEAD).
    async fn send_buffered(
        &mut self,
        framing: ReqFraming,
        no_body: bool,
        divert: &[u8],
        body: &mut UpBody,
    ) -> Result<Head, SendError> {
        let mut out = BodyOut {
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
                    None => out.finish(&mut self.wbuf, None).map_err(SendError::sent)?,
                    Some(Err(e)) => return Err(SendError::sent(format!("client body: {e}"))),
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) if d.len() <= COALESCE_MAX => {
                            out.push(&mut self.wbuf, &d).map_err(SendError::sent)?;
                            if body.is_end_stream() {
                                out.finish(&mut self.wbuf, None).map_err(SendError::sent)?;
                            }
                        }
                        Ok(d) => big_first = Some(d),
                        Err(f) => {
                            let t = f.into_trailers().ok();
                            out.finish(&mut self.wbuf, t.as_ref())
                                .map_err(SendError::sent)?;
                        }
                    },
                }
            }
        }
        let Io::Whole(io) = &mut self.io else {
            return Err(SendError {
                unsent: true,
                reason: "connection busy".into(),
            });
        };
        if let Err(e) = io.write_all(&self.wbuf).await {
            return Err(SendError {
                // A write that fails at once (a reset connection) sent nothing; a body frame
                // taken from the client cannot be given back.
                unsent: !started,
                reason: format!("writing the request: {e}"),
            });
        }

        let mut head = if out.done {
            read_head(io, &mut self.rbuf, no_body, divert).await?
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
            let writer = tokio::spawn(async move {
                write_body(&mut wr, &mut scratch, &mut body, out, big_first).await?;
                Ok(wr)
            });
            self.io = Io::Split(rd, Writer(Some(writer)));
            let Io::Split(rd, _) = &mut self.io else {
                return Err(SendError::sent("connection busy"));
            };
            read_head(rd, &mut self.rbuf, no_body, divert).await?
        };
        if head.parts.status == StatusCode::SWITCHING_PROTOCOLS {
            head.plan.keep_alive = false;
        }
        Ok(head)
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

/// A request head encoded for a backend, with what sending it needs. Owned: it keeps
/// nothing of the client's request, whose header values share hyper's read buffer (hyper
/// allocates a new buffer for the connection's next read while any of them lives), and a
/// retry sends it again as it is.
#[derive(Debug)]
pub struct Encoded {
    head: Vec<u8>,
    /// An invalid request `Content-Length` is reported when sending, as by [`Conn::send`].
    framing: Result<ReqFraming, &'static str>,
    method: Method,
}

impl Encoded {
    pub fn new(req: &request::Parts, extra: &[(HeaderName, HeaderValue)], body: &UpBody) -> Self {
        let framing = request_framing(&req.headers, body);
        let mut head = Vec::with_capacity(512);
        encode_head(&mut head, req, extra, framing.unwrap_or(ReqFraming::None));
        Self {
            head,
            framing,
            method: req.method.clone(),
        }
    }

    pub fn method(&self) -> &Method {
        &self.method
    }
}

/// The request body's framing from its headers; none for a body already at its end.
fn request_framing(h: &HeaderMap, body: &UpBody) -> Result<ReqFraming, &'static str> {
    if body.is_end_stream() {
        return Ok(ReqFraming::None);
    }
    match content_length(h) {
        Ok(Some(n)) => Ok(ReqFraming::Length(n)),
        Ok(None) => Ok(ReqFraming::Chunked),
        Err(()) => Err("the request's Content-Length is invalid"),
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// The request body's framing as it is written.
struct BodyOut {
    framing: ReqFraming,
    /// Bytes still owed under `Content-Length`.
    remaining: u64,
    done: bool,
}

impl BodyOut {
    /// The bytes that go before a data frame of `len` bytes (a chunk-size line).
    fn prefix(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<(), String> {
        match self.framing {
            ReqFraming::Length(_) => {
                self.remaining = self
                    .remaining
                    .checked_sub(len as u64)
                    .ok_or("the client sent more body than its Content-Length")?;
            }
            ReqFraming::Chunked => {
                use std::io::Write;
                let _ = write!(buf, "{len:x}\r\n");
            }
            ReqFraming::None => return Err("a body on a request without one".into()),
        }
        Ok(())
    }

    fn suffix(&self) -> &'static [u8] {
        match self.framing {
            ReqFraming::Chunked => b"\r\n",
            _ => b"",
        }
    }

    /// Appends one data frame (copied) to `buf`.
    fn push(&mut self, buf: &mut Vec<u8>, data: &[u8]) -> Result<(), String> {
        if data.is_empty() {
            // An empty chunk would end a chunked body.
            return Ok(());
        }
        self.prefix(buf, data.len())?;
        buf.extend_from_slice(data);
        buf.extend_from_slice(self.suffix());
        Ok(())
    }

    /// Appends the end of the body (the last chunk and any trailers).
    fn finish(&mut self, buf: &mut Vec<u8>, trailers: Option<&HeaderMap>) -> Result<(), String> {
        match self.framing {
            ReqFraming::Length(_) if self.remaining > 0 => {
                return Err("the client's body ended before its Content-Length".into());
            }
            ReqFraming::Chunked => {
                buf.extend_from_slice(b"0\r\n");
                for (n, v) in trailers.into_iter().flatten() {
                    put_header(buf, n, v);
                }
                buf.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        self.done = true;
        Ok(())
    }
}

/// Streams the rest of the client's body (starting with `first`, if taken already).
async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    scratch: &mut Vec<u8>,
    body: &mut UpBody,
    mut out: BodyOut,
    first: Option<Bytes>,
) -> Result<(), String> {
    let io_err = |e: io::Error| format!("writing the request body: {e}");
    let mut next = first.map(|d| Ok(Frame::data(d)));
    loop {
        let frame = match next.take() {
            Some(f) => Some(f),
            None => std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await,
        };
        match frame {
            None => {
                scratch.clear();
                out.finish(scratch, None)?;
                return wr.write_all(scratch).await.map_err(io_err);
            }
            Some(Err(e)) => return Err(format!("client body: {e}")),
            Some(Ok(f)) => match f.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    scratch.clear();
                    out.prefix(scratch, data.len())?;
                    let mut parts = [
                        IoSlice::new(scratch),
                        IoSlice::new(&data),
                        IoSlice::new(out.suffix()),
                    ];
                    write_all_vectored(wr, &mut parts).await.map_err(io_err)?;
                }
                Err(f) => {
                    scratch.clear();
                    out.finish(scratch, f.into_trailers().ok().as_ref())?;
                    return wr.write_all(scratch).await.map_err(io_err);
                }
            },
        }
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut parts: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = wr.write_vectored(parts).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// `extra`: headers added for the backend (the session's), written after the request's
/// own without entering its map (no hashing, no map growth per request).
fn encode_head(
    buf: &mut Vec<u8>,
    req: &request::Parts,
    extra: &[(HeaderName, HeaderValue)],
    framing: ReqFraming,
) {
    buf.extend_from_slice(req.method.as_str().as_bytes());
    buf.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter().chain(extra.iter().map(|(n, v)| (n, v))) {
        put_header(buf, name, value);
    }
    if framing == ReqFraming::Chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

fn put_header(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// Reads until a final response head (interim 1xx answers are skipped).
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    no_body: bool,
    divert: &[u8],
) -> Result<Head, SendError> {
    loop {
        if !rbuf.is_empty() {
            if let Some(head) = parse_head(rbuf, no_body, divert)? {
                let s = head.parts.status;
                if s.is_informational() && s != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                return Ok(head);
            }
            if rbuf.len() >= MAX_HEAD {
                return Err(SendError::sent(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
        }
        if rbuf.capacity() - rbuf.len() < READ_MIN_SPARE {
            rbuf.reserve(READ_RESERVE);
        }
        let n = rd
            .read_buf(rbuf)
            .await
            .map_err(|e| SendError::sent(format!("reading the response: {e}")))?;
        if n == 0 {
            return Err(SendError::sent(if rbuf.is_empty() {
                "the backend closed the connection without answering"
            } else {
                "the backend closed the connection in the middle of the response head"
            }));
        }
    }
}

/// `name` (token bytes, as httparse passed them) is `known` (lower-case letters and `-`) in
/// any case. Setting bit 5 lower-cases a letter and keeps `-`; no other token byte becomes
/// one of those. Branch-free, so short
/// names compare in a few vector instructions (`eq_ignore_ascii_case` goes byte by byte).
fn is_name(name: &[u8], known: &[u8]) -> bool {
    name.len() == known.len()
        && name
            .iter()
            .zip(known)
            .fold(0u8, |diff, (&a, &b)| diff | ((a | 0x20) ^ b))
            == 0
}

/// The names most responses carry, matched without `HeaderName::from_bytes` (which copies
/// and lower-cases the name first: about 130 instructions a header).
fn common_name(name: &[u8]) -> Option<HeaderName> {
    let is = |known: &[u8]| is_name(name, known);
    Some(match name.len() {
        4 if is(b"date") => header::DATE,
        4 if is(b"etag") => header::ETAG,
        4 if is(b"vary") => header::VARY,
        6 if is(b"server") => header::SERVER,
        8 if is(b"location") => header::LOCATION,
        10 if is(b"set-cookie") => header::SET_COOKIE,
        12 if is(b"content-type") => header::CONTENT_TYPE,
        13 if is(b"cache-control") => header::CACHE_CONTROL,
        13 if is(b"last-modified") => header::LAST_MODIFIED,
        14 if is(b"content-length") => header::CONTENT_LENGTH,
        16 if is(b"content-encoding") => header::CONTENT_ENCODING,
        _ => return None,
    })
}

/// Parses one response head off the front of `rbuf`, if it is complete. Header values are
/// slices of the received bytes, not copies. Headers named with the `divert` prefix are set
/// aside (see [`Conn::send`]).
fn parse_head(
    rbuf: &mut BytesMut,
    no_body: bool,
    divert: &[u8],
) -> Result<Option<Head>, SendError> {
    let bad = |why: String| SendError::sent(format!("bad response head: {why}"));
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    // (name start, name end, value start, value end) of each header within the head; on
    // the stack for the usual few headers.
    let mut few = [(0u32, 0u32, 0u32, 0u32); 24];
    let mut many = Vec::new();
    let (len, code, minor, spans) = {
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, rbuf, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let base = rbuf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let spans: &mut [(u32, u32, u32, u32)] = if res.headers.len() <= few.len() {
            &mut few[..res.headers.len()]
        } else {
            many.resize(res.headers.len(), (0, 0, 0, 0));
            &mut many
        };
        for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
            let n = offset(h.name.as_bytes());
            let v = offset(h.value);
            *span = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
        }
        (len, res.code.unwrap_or(0), res.version.unwrap_or(1), spans)
    };
    let count = spans.len();
    let raw = rbuf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|e| bad(e.to_string()))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // The framing headers are read from the raw bytes as the map is built; the hop-by-hop
    // ones the proxy would strip anyway never enter it.
    let mut conn = ConnectionTokens::default();
    let mut chunked_last: Option<bool> = None;
    let mut length: Result<Option<u64>, ()> = Ok(None);
    let mut headers = HeaderMap::with_capacity(count);
    let mut diverted = Diverted::new();
    for &(ns, ne, vs, ve) in spans.iter() {
        let name = &raw[ns as usize..ne as usize];
        let value = &raw[vs as usize..ve as usize];
        if is_name(name, b"connection") {
            conn.read(value);
            if !conn.names_headers {
                continue;
            }
        } else if is_name(name, b"keep-alive") {
            continue;
        } else if is_name(name, b"transfer-encoding") {
            // The last coding of the last header decides.
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked_last = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        } else if is_name(name, b"content-length") {
            length = length.and_then(|found| add_length(found, value));
        }
        let value = HeaderValue::from_maybe_shared(raw.slice(vs as usize..ve as usize))
            .map_err(|e| bad(e.to_string()))?;
        // After the framing reads: a prefix that also starts a framing header (a valid if
        // odd `header_prefix`) must not take the body's framing with it.
        if !divert.is_empty()
            && name.len() >= divert.len()
            && name[..divert.len()].eq_ignore_ascii_case(divert)
        {
            // httparse checked the name is a token.
            diverted.push((raw.slice(ns as usize..ne as usize), value));
            continue;
        }
        let name = match common_name(name) {
            Some(n) => n,
            None => HeaderName::from_bytes(name).map_err(|e| bad(e.to_string()))?,
        };
        headers.append(name, value);
    }
    let mut keep_alive = if version == Version::HTTP_10 {
        conn.keep_alive
    } else {
        !conn.close
    };
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        Framing::Upgrade
    } else if no_body
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if let Some(chunked) = chunked_last {
        // Transfer-Encoding wins over Content-Length, and such a message must not be
        // followed by another on this connection (RFC 9112 6.3).
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Framing::Close
        }
    } else {
        match length {
            Ok(Some(0)) => Framing::Done,
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => {
                keep_alive = false;
                Framing::Close
            }
            Err(()) => return Err(bad("invalid Content-Length".into())),
        }
    };
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(Some(Head {
        parts: resp.into_parts().0,
        diverted,
        plan: Plan {
            framing,
            keep_alive,
        },
    }))
}

/// The length all `Content-Length` values agree on; `Err` when they are malformed or differ.
fn content_length(h: &HeaderMap) -> Result<Option<u64>, ()> {
    h.get_all(header::CONTENT_LENGTH)
        .iter()
        .try_fold(None, |found, v| add_length(found, v.as_bytes()))
}

/// `found` so far and one more `Content-Length` value (a list of equal numbers).
fn add_length(mut found: Option<u64>, value: &[u8]) -> Result<Option<u64>, ()> {
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(());
        }
        found = Some(n);
    }
    Ok(found)
}

/// The `Connection` tokens of a response, over all its `Connection` headers.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    /// Some token names a header (to be stripped with it): the header stays in the map for
    /// the hygiene that does that.
    names_headers: bool,
}

impl ConnectionTokens {
    fn read(&mut self, value: &[u8]) {
        for t in value.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade") {
                self.names_headers = true;
            }
        }
    }
}

/// A backend's response body, read straight from its connection as the client's side asks
/// for it. At its end the connection goes back to the pool through the lease (when it may
/// be reused); dropped early, the connection is closed.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Conn>,
    plan: Plan,
    lease: Option<Lease>,
}

impl ResponseBody {
    pub fn new(conn: Conn, plan: Plan, lease: Lease) -> Self {
        let mut b = Self {
            conn: Some(conn),
            plan,
            lease: Some(lease),
        };
        if matches!(plan.framing, Framing::Done) {
            // Nothing to read: hyper will not poll an empty body, so return it now.
            b.finish();
        }
        b
    }

    /// After `101 Switching Protocols`: the raw connection and any bytes the backend sent
    /// past the response head, plus the lease to hold while the tunnel lives.
    pub fn into_upgraded(mut self) -> Option<(TcpStream, Bytes, Option<Lease>)> {
        if !matches!(self.plan.framing, Framing::Upgrade) {
            return None;
        }
        let mut conn = self.conn.take()?;
        if !conn.rejoin() {
            return None;
        }
        let Io::Whole(io) = conn.io else {
            return None;
        };
        Some((io, conn.rbuf.freeze(), self.lease.take()))
    }

    /// The body was read to its end: the connection goes back if it can be reused.
    fn finish(&mut self) {
        self.plan.framing = Framing::Done;
        let conn = self.conn.take();
        if let (Some(mut conn), Some(lease)) = (conn, self.lease.take()) {
            if self.plan.keep_alive && conn.rejoin() {
                lease.release(conn);
            }
        }
    }

    fn fail(&mut self, why: impl Into<String>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.plan.framing = Framing::Done;
        self.conn = None;
        self.lease = None;
        Poll::Ready(Some(Err(io::Error::other(why.into()))))
    }

    /// Takes up to `max` bytes of body data, reading if none are buffered. `None`: the
    /// backend closed the connection.
    fn poll_data(
        conn: &mut Conn,
        cx: &mut Context<'_>,
        max: u64,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if conn.rbuf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Ok(None));
        }
        let n = conn
            .rbuf
            .len()
            .min(usize::try_from(max).unwrap_or(usize::MAX));
        Poll::Ready(Ok(Some(conn.rbuf.split_to(n).freeze())))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.plan.framing {
                Framing::Done | Framing::Upgrade => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(rem) => match ready!(Self::poll_data(conn, cx, rem)) {
                    Err(e) => return this.fail(format!("reading the response body: {e}")),
                    Ok(None) => return this.fail("the backend closed the connection mid-body"),
                    Ok(Some(data)) => {
                        let left = rem - data.len() as u64;
                        this.plan.framing = Framing::Length(left);
                        if left == 0 {
                            // Released before the last frame goes out: hyper may never
                            // poll a body whose length it has seen end.
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                },
                Framing::Close => match ready!(Self::poll_data(conn, cx, u64::MAX)) {
                    Err(e) => return this.fail(format!("reading the response body: {e}")),
                    Ok(None) => {
                        this.plan.keep_alive = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                },
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.rbuf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        conn.rbuf.advance(used);
                        this.plan.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) => {
                        if conn.rbuf.len() > MAX_CHUNK_META {
                            return this.fail("chunk size line too long");
                        }
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                return this.fail("the backend closed the connection mid-body")
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(format!("reading the response body: {e}")),
                        }
                    }
                    Err(_) => return this.fail("bad chunk size in the response body"),
                },
                Framing::Chunked(Chunk::Data(rem)) => {
                    match ready!(Self::poll_data(conn, cx, rem)) {
                        Err(e) => return this.fail(format!("reading the response body: {e}")),
                        Ok(None) => return this.fail("the backend closed the connection mid-body"),
                        Ok(Some(data)) => {
                            let left = rem - data.len() as u64;
                            this.plan.framing = Framing::Chunked(if left == 0 {
                                Chunk::DataEnd
                            } else {
                                Chunk::Data(left)
                            });
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if conn.rbuf.len() >= 2 {
                        if &conn.rbuf[..2] != b"\r\n" {
                            return this.fail("chunk data not followed by CRLF");
                        }
                        conn.rbuf.advance(2);
                        this.plan.framing = Framing::Chunked(Chunk::Size);
                        continue;
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => return this.fail("the backend closed the connection mid-body"),
                        Ok(_) => {}
                        Err(e) => return this.fail(format!("reading the response body: {e}")),
                    }
                }
                Framing::Chunked(Chunk::Trailers) => {
                    if conn.rbuf.starts_with(b"\r\n") {
                        conn.rbuf.advance(2);
                        this.finish();
                        return Poll::Ready(None);
                    }
                    if let Some(end) = find(&conn.rbuf, b"\r\n\r\n") {
                        let block = conn.rbuf.split_to(end + 4);
                        let trailers = parse_trailers(&block);
                        this.finish();
                        return match trailers {
                            Some(t) if !t.is_empty() => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                            Some(_) => Poll::Ready(None),
                            None => this.fail("bad trailers in the response body"),
                        };
                    }
                    if conn.rbuf.len() > MAX_CHUNK_META {
                        return this.fail("response trailers too long");
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => return this.fail("the backend closed the connection mid-body"),
                        Ok(_) => {}
                        Err(e) => return this.fail(format!("reading the response body: {e}")),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.plan.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.plan.framing {
            Framing::Length(n) if self.conn.is_some() => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Trailer fields of a chunked body (`None` if malformed). Ones that may not be trailers
/// (framing, routing) are dropped, as RFC 9110 6.5.1 allows.
fn parse_trailers(block: &[u8]) -> Option<HeaderMap> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let fields = match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return None,
    };
    let mut map = HeaderMap::new();
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        if matches!(
            name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::HOST | header::CONNECTION
        ) {
            continue;
        }
        map.append(name, HeaderValue::from_bytes(f.value).ok()?);
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], no_body: bool) -> Result<Option<Head>, SendError> {
        let mut b = BytesMut::from(raw);
        parse_head(&mut b, no_body, b"x-session")
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(matches!(h.plan.framing, Framing::Length(5)) && h.plan.keep_alive);
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(matches!(h.plan.framing, Framing::Done));
        let h = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.plan.framing, Framing::Chunked(Chunk::Size)));
        assert!(!h.plan.keep_alive, "TE + CL must close");
        assert!(!h.parts.headers.contains_key(header::CONTENT_LENGTH));
        let h = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert!(matches!(h.plan.framing, Framing::Close) && !h.plan.keep_alive);
        let h = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.plan.keep_alive, "HTTP/1.0 without keep-alive");
        let h = parse(
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.plan.framing, Framing::Done) && !h.plan.keep_alive);
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn common_names_match_the_general_parse() {
        for n in [
            "Date",
            "ETAG",
            "vary",
            "Server",
            "location",
            "Set-Cookie",
            "content-type",
            "Cache-Control",
            "last-modified",
            "Content-Length",
            "content-encoding",
        ] {
            let general = HeaderName::from_bytes(n.as_bytes()).unwrap();
            assert_eq!(common_name(n.as_bytes()), Some(general), "{n}");
        }
        // Names reach it from httparse: token bytes only (a CR would pass for `-`).
        for n in [
            "dat",
            "x-date",
            "content-typo",
            "",
            "set-cookie2",
            "content_type",
            "Dat^",
        ] {
            assert_eq!(common_name(n.as_bytes()), None, "{n}");
        }
    }

    #[test]
    fn session_prefixed_headers_are_set_aside() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nX-Session-Set: {\"a\":1}\r\nx-kept: 1\r\nx-session: {}\r\nx-sessio: 2\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let h = parse_head(&mut b, false, b"x-session").unwrap().unwrap();
        let names: Vec<_> = h.diverted.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, [&b"X-Session-Set"[..], b"x-session"]);
        assert_eq!(h.diverted[0].1, r#"{"a":1}"#);
        let kept: Vec<_> = h.parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(kept, ["x-kept", "x-sessio", "content-length"]);
        // A prefix that also starts the framing headers leaves the framing intact.
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n3\r\nabc\r\n"[..],
        );
        let h = parse_head(&mut b, false, b"tr").unwrap().unwrap();
        assert!(matches!(h.plan.framing, Framing::Chunked(_)));
        assert!(h.plan.keep_alive);
        let names: Vec<_> = h.diverted.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, [&b"Trailer"[..]]);
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"[..]);
        let h = parse_head(&mut b, false, b"content").unwrap().unwrap();
        assert!(matches!(h.plan.framing, Framing::Length(3)));
        assert_eq!(h.diverted.len(), 1);
        // Without a prefix nothing is set aside.
        let mut b = BytesMut::from(&b"HTTP/1.1 204 No Content\r\nx-session-set: {}\r\n\r\n"[..]);
        let h = parse_head(&mut b, false, b"").unwrap().unwrap();
        assert!(h.diverted.is_empty());
        assert!(h.parts.headers.contains_key("x-session-set"));
    }

    #[test]
    fn header_values_are_slices_of_the_head() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A: one\r\nx-a: two\r\n\r\nBODY"[..]);
        let h = parse_head(&mut b, false, b"").unwrap().unwrap();
        let v: Vec<_> = h.parts.headers.get_all("x-a").iter().collect();
        assert_eq!(v, ["one", "two"]);
        assert_eq!(&b[..], b"BODY", "the body stays in the buffer");
    }
}
