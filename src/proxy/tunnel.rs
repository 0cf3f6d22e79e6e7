//! Upgraded connections (WebSocket and friends): after a backend's `101`, the client's and
//! the backend's connections are joined until either side closes or the node stops.

use hyper_util::rt::TokioIo;

use super::upstream;

/// Joins the client's and the backend's upgraded connections (WebSocket and friends).
/// `backend` is the raw connection, the bytes the backend sent past its 101, and the lease
/// held while the tunnel lives.
pub(super) async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: (
        tokio::net::TcpStream,
        bytes::Bytes,
        Option<upstream::BackendHold>,
    ),
) {
    use tokio::io::AsyncWriteExt;
    let (mut b, early, lease) = backend;
    let mut c = match client.await {
        Ok(c) => TokioIo::new(c),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    if !early.is_empty() {
        if let Err(e) = c.write_all(&early).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
            return;
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
    // The backend connection was consumed by the upgrade: nothing returns to the pool.
    drop(lease);
}
