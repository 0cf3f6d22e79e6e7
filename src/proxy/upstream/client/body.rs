//! A backend's response body, framed by length, chunks (with trailers) or the connection's
//! end, read from the socket as the client side asks for it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::{Chunk, Conn, Framing, Io, Plan, MAX_CHUNK_META};
use crate::proxy::upstream::BackendHold;

/// A backend's response body, read straight from its connection as the client's side asks
/// for it. At its end the connection goes back to the pool through the lease (when it may
/// be reused); dropped early, the connection is closed.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    conn: Option<Conn>,
    plan: Plan,
    lease: Option<BackendHold>,
    /// The lower-case session prefix: trailers lose what a head would.
    strip: &'static [u8],
}

impl ResponseBody {
    pub(crate) fn new(conn: Conn, plan: Plan, lease: BackendHold, strip: &'static [u8]) -> Self {
        let mut b = Self {
            conn: Some(conn),
            plan,
            lease: Some(lease),
            strip,
        };
        if matches!(plan.framing, Framing::Done) {
            // Nothing to read: hyper will not poll an empty body, so return it now.
            b.finish();
        }
        b
    }

    /// After `101 Switching Protocols`: the raw connection and any bytes the backend sent
    /// past the response head, plus the lease to hold while the tunnel lives.
    pub(crate) fn into_upgraded(mut self) -> Option<(TcpStream, Bytes, Option<BackendHold>)> {
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
                        let mut trailers = parse_trailers(&block);
                        if let Some(t) = &mut trailers {
                            crate::proxy::trailers::clean(t, this.strip);
                        }
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
