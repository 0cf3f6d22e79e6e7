//! The body the client gets: a backend's (streamed) or one the proxy wrote. Nothing here
//! buffers a body; the request body is [`UpBody`].

use std::pin::Pin;
use std::task::{Context, Poll};

use super::upstream::ResponseBody;
pub(super) use super::upstream::UpBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// What the proxy sends to the client: a backend's body (which returns its connection to the
/// pool when it ends), or a short body the proxy wrote itself.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    Upstream(ResponseBody),
    /// A member's answer to a forward over a mesh channel (hyper's client).
    Member(hyper::body::Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ProxyBody::Full(if b.is_empty() { None } else { Some(b) })
    }

    pub(crate) fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Member(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| std::io::Error::other(format!("member: {e}"))),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Member(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Member(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
