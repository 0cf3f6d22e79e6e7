//! Replication metrics: messages and bytes by peer and type, acks, ack timeouts,
//! unreplicated writes, lag, queue depth, gaps, fenced changes, state transfers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::session::Change;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerKind {
    peer: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone)]
pub(crate) struct ReplMetrics {
    sent: Family<PeerKind, Counter>,
    bytes_sent: Family<PeerLabel, Counter>,
    /// Changes received, by [`Change::kind_index`] (handles looked up once).
    received: [Counter; 5],
    pub bytes_received: Counter,
    pub acks: Counter,
    pub ack_timeouts: Counter,
    pub unreplicated_writes: Counter,
    pub gaps: Counter,
    pub fenced: Counter,
    /// This node's writes that a member fenced (answered 503).
    pub fenced_writes: Counter,
    pub lag: Histogram,
    depth: Family<PeerLabel, Gauge>,
    queue_bytes: Family<PeerLabel, Gauge>,
    overflows: Family<PeerLabel, Counter>,
    pub state_transfers: Counter,
    pub state_transfer_seconds: Histogram,
    pub rebalanced: Counter,
    /// Sessions taken over by a majority's vote.
    pub claims: Counter,
    /// Claims that found no majority (answered 503).
    pub claims_refused: Counter,
    /// Claims this node refused because it still hears the owner.
    pub votes_refused: Counter,
    /// Sessions this node, draining, handed to successors that confirmed them.
    pub handed_over: Counter,
    /// Catch-ups after a lapsed lease, and the sessions they changed.
    pub catch_ups: Counter,
    pub caught_up_sessions: Counter,
    /// Sync writes that reached fewer copies than a majority (answered 503).
    pub below_quorum_writes: Counter,
    /// Whole copies claiming a newer ownership from a node that is not their owner.
    pub not_owner: Counter,
}

impl ReplMetrics {
    pub(crate) fn register(m: &crate::metrics::Metrics) -> Self {
        let received = Family::<KindLabel, Counter>::default();
        let r = Self {
            sent: Family::default(),
            bytes_sent: Family::default(),
            received: Change::KINDS.map(|kind| received.get_or_create_owned(&KindLabel { kind })),
            bytes_received: Counter::default(),
            acks: Counter::default(),
            ack_timeouts: Counter::default(),
            unreplicated_writes: Counter::default(),
            gaps: Counter::default(),
            fenced: Counter::default(),
            fenced_writes: Counter::default(),
            lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            depth: Family::default(),
            queue_bytes: Family::default(),
            overflows: Family::default(),
            state_transfers: Counter::default(),
            state_transfer_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            rebalanced: Counter::default(),
            claims: Counter::default(),
            claims_refused: Counter::default(),
            votes_refused: Counter::default(),
            handed_over: Counter::default(),
            catch_ups: Counter::default(),
            caught_up_sessions: Counter::default(),
            below_quorum_writes: Counter::default(),
            not_owner: Counter::default(),
        };
        m.with_registry(|reg| {
            for (name, help, c) in [
                ("replication_claims", "Sessions taken over by a majority's vote", &r.claims),
                ("replication_claims_refused", "Takeovers that found no majority (503)", &r.claims_refused),
                ("replication_votes_refused", "Claims refused because this node still hears the owner", &r.votes_refused),
                ("replication_handed_over", "Sessions this node handed to their successors while draining (REFERENCE 4.8)", &r.handed_over),
                ("replication_catch_ups", "Catch-ups with the majority after a lapsed lease", &r.catch_ups),
                ("replication_caught_up_sessions", "Sessions a catch-up changed (taken over or removed elsewhere)", &r.caught_up_sessions),
                ("replication_below_quorum_writes", "Sync writes that reached fewer copies than a majority (503)", &r.below_quorum_writes),
                ("replication_not_owner", "Copies claiming a newer ownership from a node that is not their owner (dropped)", &r.not_owner),
            ] {
                reg.register(name, help, c.clone());
            }
            reg.register(
                "replication_messages_sent",
                "Changes sent, by peer and type",
                r.sent.clone(),
            );
            reg.register(
                "replication_bytes_sent",
                "Replication frame bytes sent, by peer",
                r.bytes_sent.clone(),
            );
            reg.register(
                "replication_messages_received",
                "Changes received, by type",
                received.clone(),
            );
            reg.register(
                "replication_bytes_received",
                "Replication frame bytes received",
                r.bytes_received.clone(),
            );
            reg.register(
                "replication_acks",
                "Batches acknowledged as applied by peers",
                r.acks.clone(),
            );
            reg.register(
                "replication_ack_timeouts",
                "Peers that did not ack within ack_timeout",
                r.ack_timeouts.clone(),
            );
            reg.register(
                "replication_unreplicated_writes",
                "Sync-mode responses sent without every ack",
                r.unreplicated_writes.clone(),
            );
            reg.register(
                "replication_gaps",
                "Changes that needed a full copy",
                r.gaps.clone(),
            );
            reg.register(
                "replication_fenced",
                "Changes rejected for an older owner epoch",
                r.fenced.clone(),
            );
            reg.register(
                "replication_fenced_writes",
                "This node's writes that a member fenced: the session had a newer owner (503)",
                r.fenced_writes.clone(),
            );
            reg.register(
                "replication_lag_seconds",
                "From enqueue to the peer's applied ack",
                r.lag.clone(),
            );
            reg.register(
                "replication_queue_depth",
                "Changes queued or unacked, by peer",
                r.depth.clone(),
            );
            reg.register(
                "replication_queue_bytes",
                "Bytes of the changes queued or unacked, by peer",
                r.queue_bytes.clone(),
            );
            reg.register(
                "replication_queue_overflows",
                "Changes not queued for a peer whose queue was full (it is resynced once drained)",
                r.overflows.clone(),
            );
            reg.register(
                "state_transfers",
                "State transfers completed as the receiver",
                r.state_transfers.clone(),
            );
            reg.register(
                "backup_rebalanced_sessions",
                "BackupManager: sessions copied to a new backup or taken over after a membership change",
                r.rebalanced.clone(),
            );
            reg.register(
                "state_transfer_duration_seconds",
                "State transfer time as the receiver",
                r.state_transfer_seconds.clone(),
            );
        });
        r
    }

    /// The handles of one peer's series, looked up once: a label lookup hashes and
    /// allocates, which the per-change path should not pay.
    pub(crate) fn peer(&self, peer: &str) -> PeerMetrics {
        let label = PeerLabel {
            peer: peer.to_string(),
        };
        PeerMetrics {
            sent: Change::KINDS.map(|kind| {
                self.sent.get_or_create_owned(&PeerKind {
                    peer: peer.to_string(),
                    kind,
                })
            }),
            bytes_sent: self.bytes_sent.get_or_create_owned(&label),
            depth: self.depth.get_or_create_owned(&label),
            bytes: self.queue_bytes.get_or_create_owned(&label),
            overflows: self.overflows.get_or_create_owned(&label),
        }
    }

    /// Removes a peer's series (it left the cluster).
    pub(crate) fn forget_peer(&self, peer: &str) {
        let label = PeerLabel {
            peer: peer.to_string(),
        };
        for kind in Change::KINDS {
            self.sent.remove(&PeerKind {
                peer: peer.to_string(),
                kind,
            });
        }
        self.bytes_sent.remove(&label);
        self.depth.remove(&label);
        self.queue_bytes.remove(&label);
        self.overflows.remove(&label);
    }

    pub(crate) fn received(&self, c: &Change) -> &Counter {
        &self.received[c.kind_index()]
    }
}

/// One peer's replication series.
#[derive(Clone)]
pub(crate) struct PeerMetrics {
    sent: [Counter; 5],
    pub bytes_sent: Counter,
    pub depth: Gauge,
    pub bytes: Gauge,
    pub overflows: Counter,
}

impl PeerMetrics {
    /// By [`Change::kind_index`].
    pub(crate) fn sent(&self, kind: usize) -> &Counter {
        &self.sent[kind]
    }
}
