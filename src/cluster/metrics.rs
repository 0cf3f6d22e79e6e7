//! Cluster metrics: heartbeats, rejections by reason, members by state, verifications, mesh
//! frames rejected.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::lifecycle::State;
use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Default)]
pub(super) struct ClusterMetrics {
    pub heartbeats_sent: Counter,
    pub heartbeats_received: Counter,
    heartbeats_rejected: Family<Reason, Counter>,
    members: Family<StateLabel, Gauge>,
    verifications: Family<ResultLabel, Counter>,
    mesh_rejected: Family<Reason, Counter>,
    /// Mesh connections accepted under the limits (with TLS: handshakes begun). Steady
    /// replication and forwarding add none: their connections are long-lived.
    pub mesh_connections: Counter,
    dns: Family<ResultLabel, Counter>,
}

impl ClusterMetrics {
    pub(super) fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.with_registry(|r| {
            r.register(
                "heartbeats_sent",
                "Heartbeats sent",
                m.heartbeats_sent.clone(),
            );
            r.register(
                "heartbeats_received",
                "Valid heartbeats received (own excluded)",
                m.heartbeats_received.clone(),
            );
            r.register(
                "heartbeats_rejected",
                "Heartbeats dropped, by reason",
                m.heartbeats_rejected.clone(),
            );
            r.register(
                "members",
                "Other members, by announced state",
                m.members.clone(),
            );
            r.register(
                "member_verifications",
                "Verifications of silent members over the mesh, by result",
                m.verifications.clone(),
            );
            r.register(
                "mesh_connections_accepted",
                "Mesh connections accepted under the limits (with TLS, each a handshake)",
                m.mesh_connections.clone(),
            );
            r.register(
                "dns_lookups",
                "DNS membership lookups, by result (ok, empty, error, timeout)",
                m.dns.clone(),
            );
            r.register(
                "mesh_frames_rejected",
                "Mesh frames dropped (connection closed), by reason",
                m.mesh_rejected.clone(),
            );
        });
        m
    }

    pub(super) fn rejected(&self, reason: &'static str) -> Counter {
        self.heartbeats_rejected
            .get_or_create_owned(&Reason { reason })
    }

    pub(super) fn members(&self, s: State) -> Gauge {
        self.members
            .get_or_create_owned(&StateLabel { state: s.as_str() })
    }

    pub(super) fn verification(&self, result: &'static str) -> Counter {
        self.verifications
            .get_or_create_owned(&ResultLabel { result })
    }

    pub(super) fn dns(&self, result: &'static str) -> Counter {
        self.dns.get_or_create_owned(&ResultLabel { result })
    }

    pub(super) fn mesh_rejected(&self, reason: &'static str) -> Counter {
        self.mesh_rejected.get_or_create_owned(&Reason { reason })
    }
}
