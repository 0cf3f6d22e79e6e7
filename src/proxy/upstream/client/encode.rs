//! Writing a request to a backend: the head encoded once ([`Encoded`], so a retry sends it
//! again as it is), the body framed by length or chunked, streamed from the client.

use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::Bytes;
use http::{request, HeaderMap, HeaderName, HeaderValue, Method};
use http_body::{Body, Frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::head::content_length;
use crate::proxy::trailers;
use crate::proxy::upstream::request_body::UpBody;

/// A request head encoded for a backend, with what sending it needs. Owned: it keeps
/// nothing of the client's request, whose header values share hyper's read buffer (hyper
/// allocates a new buffer for the connection's next read while any of them lives), and a
/// retry sends it again as it is.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(super) head: Vec<u8>,
    /// An invalid request `Content-Length` is reported when sending, as by [`Conn::send`].
    pub(super) framing: Result<ReqFraming, &'static str>,
    pub(super) method: Method,
}

impl Encoded {
    /// `line`: one more header, written from its bytes (the request id: no `HeaderValue`
    /// allocated per request for it).
    pub(crate) fn new(
        req: &request::Parts,
        extra: &[(HeaderName, HeaderValue)],
        line: Option<(&HeaderName, &[u8])>,
        body: &UpBody,
    ) -> Self {
        let framing = request_framing(&req.headers, body);
        let mut head = Vec::with_capacity(512);
        encode_head(
            &mut head,
            req,
            extra,
            line,
            framing.unwrap_or(ReqFraming::None),
        );
        Self {
            head,
            framing,
            method: req.method.clone(),
        }
    }

    pub(crate) fn method(&self) -> &Method {
        &self.method
    }
}

/// The request body's framing from its headers; none for a body already at its end.
pub(super) fn request_framing(h: &HeaderMap, body: &UpBody) -> Result<ReqFraming, &'static str> {
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
pub(super) enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// The request body's framing as it is written.
pub(super) struct BodyOut {
    /// The lower-case session prefix: trailers lose what a head would.
    pub(super) strip: &'static [u8],
    pub(super) framing: ReqFraming,
    /// Bytes still owed under `Content-Length`.
    pub(super) remaining: u64,
    pub(super) done: bool,
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
    pub(super) fn push(&mut self, buf: &mut Vec<u8>, data: &[u8]) -> Result<(), String> {
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
    pub(super) fn finish(
        &mut self,
        buf: &mut Vec<u8>,
        trailers: Option<HeaderMap>,
    ) -> Result<(), String> {
        match self.framing {
            ReqFraming::Length(_) if self.remaining > 0 => {
                return Err("the client's body ended before its Content-Length".into());
            }
            ReqFraming::Chunked => {
                buf.extend_from_slice(b"0\r\n");
                if let Some(mut t) = trailers {
                    trailers::clean(&mut t, self.strip);
                    for (n, v) in &t {
                        put_header(buf, n, v);
                    }
                }
                buf.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        self.done = true;
        Ok(())
    }
}

/// Why a request body could not be written: the client's body failed (broke off, or did
/// not match its length), or the connection to the backend did.
#[derive(Debug)]
pub(super) enum BodyError {
    Client(String),
    Backend(String),
}

impl From<String> for BodyError {
    /// The framing checks of [`BodyOut`] fail on what the client sent.
    fn from(why: String) -> Self {
        BodyError::Client(why)
    }
}

/// Streams the rest of the client's body (starting with `first`, if taken already).
pub(super) async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    scratch: &mut Vec<u8>,
    body: &mut UpBody,
    mut out: BodyOut,
    first: Option<Bytes>,
) -> Result<(), BodyError> {
    let io_err = |e: io::Error| BodyError::Backend(format!("writing the request body: {e}"));
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
            Some(Err(e)) => return Err(BodyError::Client(format!("client body: {e}"))),
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
                    out.finish(scratch, f.into_trailers().ok())?;
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
pub(super) fn encode_head(
    buf: &mut Vec<u8>,
    req: &request::Parts,
    extra: &[(HeaderName, HeaderValue)],
    line: Option<(&HeaderName, &[u8])>,
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
    if let Some((name, value)) = line {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n");
    }
    if framing == ReqFraming::Chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

pub(super) fn put_header(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}
