//! The framing guard of HTTP/1 client connections (REFERENCE 7): a request head
//! with two `Content-Length`s (also as a list, `5, 5`), or with `Content-Length` and
//! `Transfer-Encoding`, must be answered 400 and reach no backend. hyper frames both
//! safely (by the one length; by the chunked coding, closing after it) but hides them:
//! it drops the second length and the length next to a coding before the application
//! sees the head, so no check on the parsed head can find them.
//!
//! So the guard reads the connection's bytes as they pass to hyper, follows the framing
//! of every request (heads line by line, bodies by length or chunks, skipped without
//! looking at them), and when a head has one of those shapes it replaces the `\n` that
//! ends the head with a NUL: hyper's parser then refuses the head (400, connection
//! closed) before anything is dispatched. It never holds bytes back and never changes a
//! well-framed request. After an upgrade request or CONNECT it stops (the bytes that
//! follow may be another protocol); so does it after anything hyper refuses anyway.
//!
//! Hand-written: no crate inspects a byte stream for hyper; the checks are the few
//! header names that decide framing.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::headers::ConnFlags;

/// A connection whose reads are checked (see the module docs).
pub(super) struct Guarded<I> {
    io: I,
    scan: Scanner,
}

impl<I> Guarded<I> {
    /// `http1`: the connection speaks HTTP/1 (else the guard only passes bytes on: one
    /// connection type for every protocol keeps the serving code instantiated once). The
    /// guard of an HTTP/1 connection also counts each head's bytes, and sets
    /// `flags.big_head` when one may be over `max_head` (requests then count their heads
    /// exactly; the others skip that).
    pub(super) fn new(io: I, http1: bool, flags: Arc<ConnFlags>, max_head: usize) -> Self {
        let mut scan = Scanner {
            max_head,
            ..Scanner::default()
        };
        if http1 {
            flags.big_head.store(false, Ordering::Relaxed);
            scan.flags = Some(flags);
        } else {
            scan.at = At::Off;
        }
        Self { io, scan }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.scan.feed(&mut buf.filled_mut()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Where in the request stream the next byte is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Head,
    /// `n` more body bytes.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The line end after a chunk's data.
    ChunkEnd,
    Trailers,
    /// Not HTTP/1 framing any more (an upgrade, CONNECT, or a head hyper refuses).
    Off,
}

/// The longest part of a line kept: enough for the framing headers' names and values.
const LINE: usize = 160;

#[derive(Debug)]
struct Scanner {
    at: At,
    /// The current line's first [`LINE`] bytes, and its length so far.
    line: Vec<u8>,
    line_len: usize,
    /// The request line of this head was read.
    in_head: bool,
    /// `Content-Length` values and `Transfer-Encoding` headers in this head.
    lengths: usize,
    codings: usize,
    length: Option<u64>,
    chunked: bool,
    /// The head asked for an upgrade, or is CONNECT.
    leaves: bool,
    /// The chunk size being read, and whether a digit came.
    size: u64,
    size_digits: bool,
    size_done: bool,
    /// This head's bytes and lines so far, against `max_head`; `flags.big_head` is set for
    /// one that may be over it.
    head_bytes: usize,
    head_lines: usize,
    max_head: usize,
    flags: Option<Arc<ConnFlags>>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            at: At::Head,
            line: Vec::with_capacity(LINE),
            line_len: 0,
            in_head: false,
            lengths: 0,
            codings: 0,
            length: None,
            chunked: false,
            leaves: false,
            size: 0,
            size_digits: false,
            size_done: false,
            head_bytes: 0,
            head_lines: 0,
            max_head: usize::MAX,
            flags: None,
        }
    }
}

/// What a head line means for framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Blank,
    Request {
        connect: bool,
    },
    /// `Content-Length`: how many values it lists, the last one.
    Length {
        values: usize,
        last: Option<u64>,
    },
    Coding {
        chunked: bool,
    },
    Upgrade,
    Other,
}

/// Reads one line (without its `\n`). `in_head`: the request line was read; `long`: the
/// line was longer than [`LINE`] and `line` holds its start only.
fn classify(line: &[u8], in_head: bool, long: bool) -> Kind {
    match line {
        [] | [b'\r'] => return Kind::Blank,
        _ if !in_head => {
            return Kind::Request {
                connect: line.starts_with(b"CONNECT "),
            }
        }
        _ => {}
    }
    // Most lines are decided by their first byte.
    match line[0] | 0x20 {
        b'c' if starts_with_ci(line, b"content-length:") => {
            if long {
                // Past what is kept: refuse rather than guess (hyper would not take such a
                // value either).
                return Kind::Length {
                    values: 2,
                    last: None,
                };
            }
            let mut values = 0;
            let mut last = None;
            for p in line[15..].split(|&b| b == b',') {
                values += 1;
                last = std::str::from_utf8(p.trim_ascii())
                    .ok()
                    .and_then(|s| s.parse().ok());
            }
            Kind::Length { values, last }
        }
        b't' if starts_with_ci(line, b"transfer-encoding:") => {
            let last = line[18..].rsplit(|&b| b == b',').next().unwrap_or_default();
            Kind::Coding {
                chunked: !long && last.trim_ascii().eq_ignore_ascii_case(b"chunked"),
            }
        }
        b'u' if starts_with_ci(line, b"upgrade:") => Kind::Upgrade,
        _ => Kind::Other,
    }
}

fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

impl Scanner {
    /// Follows `data` (just read); a head that must be refused gets its last `\n` set to 0.
    #[inline(never)]
    fn feed(&mut self, data: &mut [u8]) {
        let mut i = 0;
        while i < data.len() {
            match self.at {
                At::Off => return,
                At::Body(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.at = if take == n {
                        At::Head
                    } else {
                        At::Body(n - take)
                    };
                }
                At::ChunkData(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.at = if take == n {
                        At::ChunkEnd
                    } else {
                        At::ChunkData(n - take)
                    };
                }
                At::ChunkEnd => match memchr::memchr(b'\n', &data[i..]) {
                    Some(p) => {
                        i += p + 1;
                        self.start_chunk();
                    }
                    None => return,
                },
                At::ChunkSize => {
                    let seg_end = memchr::memchr(b'\n', &data[i..]).map(|p| i + p);
                    let end = seg_end.unwrap_or(data.len());
                    for &b in &data[i..end] {
                        if self.size_done {
                            break;
                        }
                        match (b as char).to_digit(16) {
                            Some(d) => {
                                self.size_digits = true;
                                match self.size.checked_mul(16) {
                                    Some(s) => self.size = s + u64::from(d),
                                    None => {
                                        self.at = At::Off;
                                        return;
                                    }
                                }
                            }
                            None => self.size_done = true,
                        }
                    }
                    let Some(e) = seg_end else { return };
                    i = e + 1;
                    self.at = match (self.size_digits, self.size) {
                        // hyper refuses it: the connection ends.
                        (false, _) => At::Off,
                        (true, 0) => At::Trailers,
                        (true, n) => At::ChunkData(n),
                    };
                }
                At::Head | At::Trailers => i = self.lines(data, i),
            }
        }
    }

    fn start_chunk(&mut self) {
        self.at = At::ChunkSize;
        self.size = 0;
        self.size_digits = false;
        self.size_done = false;
    }

    /// Reads head (or trailer) lines from `data[i..]`, in place (only a line cut by the end
    /// of the read is carried, at most [`LINE`] bytes of it); returns where it stopped.
    fn lines(&mut self, data: &mut [u8], start: usize) -> usize {
        let mut i = start;
        let mut head_end = None;
        while let Some(p) = memchr::memchr(b'\n', &data[i..]) {
            let e = i + p;
            if self.at == At::Head {
                self.head_bytes += self.line_len + p + 1;
                self.head_lines += 1;
            }
            let kind = if self.line_len == 0 {
                let line = &data[i..e];
                // Most lines are decided here, without a call: a blank one, the request
                // line, and header lines that cannot be `Content-Length`,
                // `Transfer-Encoding` or `Upgrade` by their first byte.
                match line {
                    [] | [b'\r'] => Kind::Blank,
                    _ if !self.in_head => Kind::Request {
                        connect: line.starts_with(b"CONNECT "),
                    },
                    [b, ..] if !matches!(b | 0x20, b'c' | b't' | b'u') => Kind::Other,
                    _ => classify(line, true, false),
                }
            } else {
                let room = LINE.saturating_sub(self.line.len());
                self.line.extend_from_slice(&data[i..e.min(i + room)]);
                let long = self.line_len + p > LINE;
                let k = classify(&self.line, self.in_head, long);
                self.line.clear();
                self.line_len = 0;
                k
            };
            i = e + 1;
            if self.at == At::Trailers {
                if kind == Kind::Blank {
                    self.at = At::Head;
                    return i;
                }
                continue;
            }
            match kind {
                // Empty lines before a request line are skipped (RFC 9112 2.2), as hyper does.
                Kind::Blank if !self.in_head => {}
                Kind::Blank => {
                    head_end = Some(e);
                    break;
                }
                Kind::Request { connect } => {
                    self.in_head = true;
                    self.leaves = connect;
                }
                Kind::Length { values, last } => {
                    self.lengths += values;
                    self.length = last;
                }
                Kind::Coding { chunked } => {
                    self.codings += 1;
                    self.chunked = chunked;
                }
                Kind::Upgrade => self.leaves = true,
                Kind::Other => {}
            }
        }
        if let Some(e) = head_end {
            self.end_head(data, e);
            return e + 1;
        }
        // A line cut by the end of the read: its start is kept for the next one.
        let room = LINE.saturating_sub(self.line.len());
        let rest = &data[i..];
        self.line.extend_from_slice(&rest[..rest.len().min(room)]);
        self.line_len += rest.len();
        data.len()
    }

    /// The blank line ending at `data[end]` ends a head: refuse it, or frame its body.
    fn end_head(&mut self, data: &mut [u8], end: usize) {
        // Counted as the backend gets it a head can be longer than its raw bytes by a `\r`
        // and a space a line (bare LF, `name:value`): past that margin it may be too big.
        if self.head_bytes + 2 * self.head_lines > self.max_head {
            if let Some(f) = &self.flags {
                f.big_head.store(true, Ordering::Relaxed);
            }
        }
        self.head_bytes = 0;
        self.head_lines = 0;
        let refuse = self.lengths > 1 || (self.lengths > 0 && self.codings > 0);
        self.at = if refuse {
            data[end] = 0;
            At::Off
        } else if self.leaves {
            At::Off
        } else if self.codings > 0 {
            if self.chunked {
                self.start_chunk();
                At::ChunkSize
            } else {
                At::Off
            }
        } else if self.lengths == 1 {
            match self.length {
                Some(0) => At::Head,
                Some(n) => At::Body(n),
                None => At::Off,
            }
        } else {
            At::Head
        };
        self.in_head = false;
        self.lengths = 0;
        self.codings = 0;
        self.length = None;
        self.chunked = false;
        self.leaves = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would get.
    fn guard(input: &[u8], step: usize) -> Vec<u8> {
        let mut s = Scanner::default();
        let mut out = input.to_vec();
        for piece in out.chunks_mut(step) {
            s.feed(piece);
        }
        out
    }

    #[test]
    fn well_framed_streams_pass_unchanged_in_any_split() {
        let stream = b"\r\nPOST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\n\
            Content-Length: 1\r\nContent-Length: 2\r\n\r\n\
            POST /b HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n\
            1a;ext=1\r\ncontent-length: 5\r\n\r\nxxxxxxxxx\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
        for step in [1, 2, 3, 7, 16, stream.len()] {
            assert_eq!(guard(stream, step), stream.to_vec(), "step {step}");
        }
    }

    #[test]
    fn two_lengths_or_a_length_and_a_coding_are_refused() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5, 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\nTRANSFER-ENCODING: chunked\nContent-Length: 4\n\n0\n\n",
        ] {
            for step in [1, 5, head.len()] {
                let out = guard(head, step);
                let end = head.windows(2).rposition(|w| w == b"\n\n" || w == b"\r\n").unwrap();
                assert!(out.contains(&0), "{:?} step {step}", String::from_utf8_lossy(head));
                assert_eq!(out.iter().filter(|&&b| b != 0).count(), head.len() - 1);
                let _ = end;
            }
        }
        // A second request on the connection, after a good one.
        let two = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        assert!(guard(two, 3).contains(&0));
    }

    #[test]
    fn upgrades_and_connect_end_the_checks() {
        let up = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
                   Content-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(guard(up, 4), up.to_vec());
        let c = b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(guard(c, 4), c.to_vec());
    }
}
