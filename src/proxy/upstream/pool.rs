//! Keep-alive connections to one backend. HTTP/1.1 only upstream, as nginx and HAProxy do by
//! default: one request per connection at a time, connections reused LIFO (the warmest
//! first), dropped after `idle_timeout` so a backend's own keep-alive timeout never races us.

use std::time::Instant;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::BackendsConfig;
use crate::proxy::body::UpBody;

use super::Backend;

#[derive(Debug)]
pub struct Idle {
    sender: SendRequest<UpBody>,
    since: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Opens a new HTTP/1.1 connection to `authority` (with upgrades, for WebSocket).
pub async fn connect(
    authority: &str,
    timeout: std::time::Duration,
) -> Result<SendRequest<UpBody>, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        // Ends when the backend closes or the sender is dropped; errors here are the
        // backend's and already surfaced through the request that saw them.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

impl Backend {
    /// An idle connection ready for a request, or a new one: (sender, freshly connected,
    /// how long it sat idle).
    pub(super) async fn checkout(
        &self,
        cfg: &BackendsConfig,
    ) -> Result<(SendRequest<UpBody>, bool, std::time::Duration), ConnectError> {
        loop {
            let idle = {
                let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                list.pop()
            };
            let Some(mut idle) = idle else { break };
            if idle.sender.is_closed() || idle.since.elapsed() >= cfg.idle_timeout {
                continue;
            }
            let idle_for = idle.since.elapsed();
            if idle.sender.is_ready() {
                return Ok((idle.sender, false, idle_for));
            }
            // Released right as its body ended: the connection task may not have caught up.
            if let Ok(Ok(())) =
                tokio::time::timeout(std::time::Duration::from_millis(50), idle.sender.ready())
                    .await
            {
                return Ok((idle.sender, false, idle_for));
            }
        }
        let s = connect(&self.authority, cfg.connect_timeout).await?;
        Ok((s, true, std::time::Duration::ZERO))
    }

    pub(super) fn checkin(&self, sender: SendRequest<UpBody>, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < max_idle {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops connections idle for longer than `idle_timeout` (called by the health loop).
    pub fn reap_idle(&self, idle_timeout: std::time::Duration) {
        let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < idle_timeout);
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
