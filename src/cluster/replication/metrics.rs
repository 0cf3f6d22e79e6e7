//! Replication metrics: messages and bytes by peer and type, acks, ack timeouts,
//! unreplicated writes, lag, queue depth, gaps, fenced changes, state transfers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

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
pub struct ReplMetrics {
    sent: Family<PeerKind, Counter>,
    bytes_sent: Family<PeerLabel, Counter>,
    received: Family<KindLabel, Counter>,
    pub bytes_received: Counter,
    pub acks: Counter,
    pub ack_timeouts: Counter,
    pub unreplicated_writes: Counter,
    pub gaps: Counter,
    pub fenced: Counter,
    pub lag: Histogram,
    depth: Family<PeerLabel, Gauge>,
    pub state_transfers: Counter,
    pub state_transfer_seconds: Histogram,
    pub rebalanced: Counter,
}

impl ReplMetrics {
    pub fn register(m: &crate::metrics::Metrics) -> Self {
        let r = Self {
            sent: Family::default(),
            bytes_sent: Family::default(),
            received: Family::default(),
            bytes_received: Counter::default(),
            acks: Counter::default(),
            ack_timeouts: Counter::default(),
            unreplicated_writes: Counter::default(),
            gaps: Counter::default(),
            fenced: Counter::default(),
            lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            depth: Family::default(),
            state_transfers: Counter::default(),
            state_transfer_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            rebalanced: Counter::default(),
        };
        m.with_registry(|reg| {
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
                r.received.clone(),
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

    pub fn sent(&self, peer: &str, kind: &'static str) -> Counter {
        self.sent.get_or_create_owned(&PeerKind {
            peer: peer.to_string(),
            kind,
        })
    }

    pub fn bytes_sent(&self, peer: &str) -> Counter {
        self.bytes_sent.get_or_create_owned(&PeerLabel {
            peer: peer.to_string(),
        })
    }

    pub fn received(&self, kind: &'static str) -> Counter {
        self.received.get_or_create_owned(&KindLabel { kind })
    }

    pub fn queue_depth(&self, peer: &str) -> Gauge {
        self.depth.get_or_create_owned(&PeerLabel {
            peer: peer.to_string(),
        })
    }
}
