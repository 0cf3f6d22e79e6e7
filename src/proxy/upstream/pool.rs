//! Keep-alive connections to one backend. HTTP/1.1 only upstream, as nginx and HAProxy do by
//! default: one request per connection at a time, connections reused LIFO (the warmest
//! first), dropped after `idle_timeout` (to a timer tick, [`coarse_ms`]) so a backend's own
//! keep-alive timeout never races us.

use std::time::Duration;

use super::config::BackendsConfig;
use crate::proxy::timer::coarse_ms;

use super::client::Conn;
use super::Backend;

#[derive(Debug)]
pub(super) struct Idle {
    conn: Conn,
    /// Checked in at this [`coarse_ms`].
    since: u64,
}

fn idle_for(since: u64, now: u64) -> Duration {
    Duration::from_millis(now.saturating_sub(since))
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens a new connection to `authority` within `timeout`; `max_head` caps its response heads.
pub(super) async fn connect(
    authority: &str,
    timeout: Duration,
    max_head: usize,
) -> Result<Conn, ConnectError> {
    tokio::time::timeout(timeout, Conn::connect(authority, max_head))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Io)
}

impl Backend {
    /// An idle connection ready for a request, or a new one: (connection, freshly
    /// connected).
    pub(super) async fn checkout(
        &self,
        cfg: &BackendsConfig,
    ) -> Result<(Conn, bool), ConnectError> {
        loop {
            let idle = {
                let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                list.pop()
            };
            let Some(mut idle) = idle else { break };
            if idle_for(idle.since, coarse_ms()) < cfg.idle_timeout && idle.conn.is_usable() {
                return Ok((idle.conn, false));
            }
        }
        let c = connect(&self.authority, cfg.connect_timeout, cfg.max_response_head).await?;
        Ok((c, true))
    }

    pub(super) fn checkin(&self, conn: Conn, max_idle: usize) {
        let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < max_idle {
            list.push(Idle {
                conn,
                since: coarse_ms(),
            });
        }
    }

    /// Drops connections idle for longer than `idle_timeout` or closed by the backend
    /// (called by the health loop).
    pub(crate) fn reap_idle(&self, idle_timeout: Duration) {
        let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = coarse_ms();
        list.retain_mut(|i| idle_for(i.since, now) < idle_timeout && i.conn.is_usable());
    }

    /// Closes every idle connection (`maint`).
    pub(super) fn drop_idle(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
