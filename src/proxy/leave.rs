//! Graceful leave, the proxy's part (REFERENCE 4.8): a draining node hands every session it
//! owns to its successor before it stops accepting.
//!
//! 1. The cluster announces `draining` and waits until the members heard it; from then on
//!    the sticky layer forwards this node's sessions' requests to their successors, and
//!    requests without a session to a ready member (no new session is created here).
//! 2. Requests that were already serving an owned session finish first: a session taken
//!    over under a running request would fence its write (a 503 for the client).
//! 3. The owned sessions go to their successors in rounds, each confirmed by the successor
//!    once its copies acked, until none is left or `drain_timeout` is over. A session left
//!    over is taken over by its successor on its next request, as after a crash.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::sticky::SessionLayer;
use crate::session::Key;

/// What a drain did, for the log and `POST /node/state`.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct DrainReport {
    pub state: &'static str,
    /// Sessions the successors confirmed they took over.
    pub handed_over: u64,
    /// Sessions this node still owns (none in the usual case).
    pub left: usize,
    pub took_ms: u64,
    /// Why some sessions were not handed over (the last round's reasons).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// How often the drain looks again at the requests in flight, and waits between rounds.
const POLL: Duration = Duration::from_millis(5);
const RETRY: Duration = Duration::from_millis(100);

impl SessionLayer {
    /// Drains this node (see the module docs), within `limit`. Without a cluster there is
    /// nobody to hand sessions to: nothing to do.
    pub(super) async fn drain(&self, limit: Duration) -> DrainReport {
        let started = Instant::now();
        let deadline = started + limit;
        let mut report = DrainReport {
            state: "draining",
            ..Default::default()
        };
        let Some(c) = self.cluster() else {
            report.left = self.store.owned();
            return report;
        };
        if !c.is_handing_over() {
            c.drain().await;
            tracing::info!("draining: members told; handing sessions over");
        }
        while self.local_in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        loop {
            let keys: Vec<Key> = self.store.owned_keys().into_iter().map(Key).collect();
            if keys.is_empty() || Instant::now() >= deadline {
                break;
            }
            let ready = c
                .members()
                .iter()
                .any(|m| m.state == crate::lifecycle::State::Ready);
            if !ready {
                // The last node: nobody to hand to (its sessions end with it, or wait in
                // the copies of members that are not ready).
                report.refused = vec!["no ready member to hand the sessions to".into()];
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let round = match tokio::time::timeout(left, c.hand_over(&keys)).await {
                Ok(r) => r,
                Err(_) => break,
            };
            report.handed_over += round.taken;
            if !round.refused.is_empty() {
                report.refused = round.refused;
                tokio::time::sleep(RETRY.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
        report.left = self.store.owned();
        report.took_ms = started.elapsed().as_millis() as u64;
        if report.left == 0 {
            tracing::info!(
                sessions = report.handed_over,
                took_ms = report.took_ms,
                "drained: every session handed to its successor"
            );
        } else {
            tracing::warn!(
                handed_over = report.handed_over,
                left = report.left,
                reasons = ?report.refused,
                "drain_timeout over: the sessions left are taken over by their successors on their next request"
            );
        }
        report
    }
}
