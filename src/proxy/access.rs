//! The access log (`[log] access = "off" | "common" | "combined" | "json"`, REFERENCE 6): one
//! line per request with the request id, client address, method, path, status, bytes,
//! upstream, upstream time, total time and the session's base id (never the cookie).
//!
//! A request never waits for it: the request path hands an [`Entry`] to a bounded channel
//! (`try_send`; when the writer falls behind, the entry is dropped and counted in
//! `caracal_access_log_dropped_total`), and one writer thread formats the lines and writes
//! them through a buffer. The writer never blocks on the channel: it drains it, flushes,
//! and sleeps [`PAUSE`], so a request's `try_send` never has a sleeping thread to wake (a
//! wake per line, a futex call and a context switch, cost more than the line itself). Lines
//! reach the file within about `PAUSE`. The thread is owned by the [`AccessLog`]: dropping
//! it closes the channel and joins the thread, which writes what was queued first.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method};
use prometheus_client::metrics::counter::Counter;

/// `[log] access`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// NCSA common log format (Apache's `%h %l %u %t "%r" %>s %b`), request id appended.
    Common,
    /// Common plus `"Referer" "User-Agent"` (Apache/nginx `combined`), then the rest.
    Combined,
    /// One JSON object per line.
    Json,
}

/// What one request leaves for its line.
pub(crate) struct Entry {
    pub at: SystemTime,
    pub request_id: String,
    pub client: SocketAddr,
    pub method: Method,
    /// Path and query, as the client sent them.
    pub target: String,
    pub status: u16,
    /// The response body's length when known before it streams (`Content-Length`, or an
    /// answer of the proxy's own); `-` otherwise.
    pub bytes: Option<u64>,
    /// `host:port` of the backend, `member:<route>` for a forward, none for an answer of
    /// the proxy's own.
    pub upstream: Option<String>,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    /// The session's base id (`-` without one).
    pub session: Option<String>,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

pub(crate) struct AccessLog {
    pub format: Format,
    tx: Option<SyncSender<Entry>>,
    dropped: Counter,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl AccessLog {
    /// Starts the writer thread on `sink`; at most `buffer` lines wait for it.
    pub(crate) fn start(
        format: Format,
        sink: Box<dyn Write + Send>,
        buffer: usize,
        dropped: Counter,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(buffer.max(1));
        let writer = std::thread::Builder::new()
            .name("caracal-access-log".into())
            .spawn(move || write_lines(format, sink, rx))?;
        Ok(Self {
            format,
            tx: Some(tx),
            dropped,
            writer: Some(writer),
        })
    }

    /// Hands a line to the writer; never blocks.
    pub(crate) fn log(&self, e: Entry) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it wrote what was queued.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// How long the writer sleeps once the channel is empty.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

fn write_lines(format: Format, sink: Box<dyn Write + Send>, rx: Receiver<Entry>) {
    use std::sync::mpsc::TryRecvError;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut line = String::with_capacity(512);
    loop {
        match rx.try_recv() {
            Ok(e) => {
                line.clear();
                render(format, &e, &mut line);
                if out.write_all(line.as_bytes()).is_err() {
                    // A closed stdout or a full disk: lines are lost, requests are not.
                    return;
                }
            }
            Err(TryRecvError::Empty) => {
                if out.flush().is_err() {
                    return;
                }
                std::thread::sleep(PAUSE);
            }
            Err(TryRecvError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}

/// `s` as a JSON string, quotes included.
fn json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

fn dash(v: &Option<impl std::fmt::Display>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn header_text(v: &Option<HeaderValue>) -> String {
    let s = v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-");
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// One line, with its newline.
pub(super) fn render(format: Format, e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
    let ms = |v: f64| format!("{v:.3}");
    match format {
        Format::Json => {
            // Written by hand, in this order: a serde tree per line cost more than the rest
            // of the line.
            let _ = write!(out, "{{\"time\":\"{}\",\"request_id\":", rfc3339(e.at));
            json_str(out, &e.request_id);
            let _ = write!(
                out,
                ",\"client\":\"{}\",\"method\":",
                e.client.ip().to_canonical()
            );
            json_str(out, e.method.as_str());
            out.push_str(",\"path\":");
            json_str(out, &e.target);
            let _ = write!(out, ",\"status\":{},\"bytes\":", e.status);
            match e.bytes {
                Some(b) => {
                    let _ = write!(out, "{b}");
                }
                None => out.push_str("null"),
            }
            out.push_str(",\"upstream\":");
            json_opt(out, e.upstream.as_deref());
            out.push_str(",\"upstream_ms\":");
            match e.upstream_ms {
                Some(v) => {
                    let _ = write!(out, "{v:.3}");
                }
                None => out.push_str("null"),
            }
            let _ = write!(out, ",\"total_ms\":{:.3},\"session\":", e.total_ms);
            json_opt(out, e.session.as_deref());
            out.push_str("}\n");
        }
        Format::Common | Format::Combined => {
            let _ = write!(
                out,
                "{} - - [{}] \"{} {} HTTP/1.1\" {} {}",
                e.client.ip().to_canonical(),
                clf_time(e.at),
                e.method,
                e.target.replace('"', "%22"),
                e.status,
                dash(&e.bytes),
            );
            if format == Format::Combined {
                let _ = write!(
                    out,
                    " \"{}\" \"{}\"",
                    header_text(&e.referer),
                    header_text(&e.user_agent)
                );
            }
            let _ = writeln!(
                out,
                " rid={} upstream={} upstream_ms={} total_ms={} session={}",
                e.request_id,
                dash(&e.upstream),
                dash(&e.upstream_ms.map(ms)),
                ms(e.total_ms),
                dash(&e.session),
            );
        }
    }
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's civil_from_days (a
/// date crate for one conversion per line would be the only dependency of its kind).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn split(t: SystemTime) -> ((i64, u32, u32), u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    (
        civil((secs / 86_400) as i64),
        secs % 86_400,
        d.subsec_millis(),
    )
}

/// `10/Oct/2000:13:55:36 +0000`.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let ((y, m, d), s, _) = split(t);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m as usize).saturating_sub(1) % 12],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `2000-10-10T13:55:36.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let ((y, m, d), s, ms) = split(t);
    format!(
        "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// What a request's line needs, gathered on its way (boxed: only when the log is on, and
/// the request's future grows by one pointer).
pub(super) struct Pending {
    method: Method,
    target: String,
    client: SocketAddr,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    pub upstream: Option<String>,
    pub sent: Option<std::time::Instant>,
    pub upstream_ms: Option<f64>,
    pub session: Option<String>,
}

impl Pending {
    pub(super) fn of<B>(req: &http::Request<B>, client: SocketAddr, format: Format) -> Box<Self> {
        let combined = format == Format::Combined;
        let header =
            |n: http::HeaderName| combined.then(|| req.headers().get(n).cloned()).flatten();
        Box::new(Self {
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |pq| pq.as_str().to_string()),
            client,
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            upstream: None,
            sent: None,
            upstream_ms: None,
            session: None,
        })
    }

    /// The upstream answered (its head): how long it took from the send.
    pub(super) fn answered(&mut self, upstream: String) {
        self.upstream_ms = self.sent.map(|t| t.elapsed().as_secs_f64() * 1e3);
        self.upstream = Some(upstream);
    }

    pub(super) fn entry(
        self,
        request_id: String,
        status: u16,
        bytes: Option<u64>,
        start: std::time::Instant,
    ) -> Entry {
        Entry {
            at: SystemTime::now(),
            request_id,
            client: self.client,
            method: self.method,
            target: self.target,
            status,
            bytes,
            upstream: self.upstream,
            upstream_ms: self.upstream_ms,
            total_ms: start.elapsed().as_secs_f64() * 1e3,
            session: self.session,
            referer: self.referer,
            user_agent: self.user_agent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_lines_escape_what_clients_send() {
        let e = Entry {
            at: UNIX_EPOCH,
            request_id: "ab".into(),
            client: "127.0.0.1:1".parse().unwrap(),
            method: Method::GET,
            target: "/a\"b\\c\u{1}d\u{e9}".into(),
            status: 200,
            bytes: None,
            upstream: Some("127.0.0.1:9".into()),
            upstream_ms: Some(1.5),
            total_ms: 2.0,
            session: None,
            referer: None,
            user_agent: None,
        };
        let mut s = String::new();
        render(Format::Json, &e, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}d\u{e9}");
        assert_eq!(v["upstream_ms"], 1.5);
        assert!(v["bytes"].is_null() && v["session"].is_null());
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_millis(971_186_136_123);
        assert_eq!(clf_time(t), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(rfc3339(t), "2000-10-10T13:55:36.123Z");
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
    }
}
