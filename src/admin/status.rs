//! `GET /status` (REFERENCE 6): the JSON scripts read, and the page renders.

use serde_json::json;

use super::Admin;
use crate::cluster::Manager;

impl Admin {
    /// `GET /status`.
    pub(crate) fn status(&self) -> serde_json::Value {
        let up = self.proxy.upstream();
        let now = up.now_ms();
        let backends: Vec<_> = up
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                json!({
                    "index": i,
                    "url": b.url,
                    "address": b.authority,
                    "weight": b.weight(),
                    "mode": b.mode().as_str(),
                    "healthy": b.is_up(|| now),
                    "in_flight": b.in_flight(),
                    "idle_connections": b.idle_count(),
                    "responses": b.counters.responses.get(),
                    "connect_errors": b.counters.connect_errors.get(),
                    "errors": b.counters.errors.get(),
                    "timeouts": b.counters.timeouts.get(),
                })
            })
            .collect();
        let members: Vec<_> = self
            .cluster
            .iter()
            .flat_map(|c| c.member_table())
            .map(|m| {
                json!({
                    "jvm_route": m.info.jvm_route,
                    "mesh_addr": m.info.mesh_addr,
                    "http_addr": m.info.http_addr,
                    "state": m.info.state.as_str(),
                    "last_heard_ms": m.last_heard.elapsed().as_millis() as u64,
                    "suspect": m.suspect,
                    "alive_ms": m.info.alive_ms,
                })
            })
            .collect();
        let mesh_addr = self.cluster.as_ref().map(|c| c.mesh_addr());
        let m = &self.proxy.metrics;
        let sessions = self.proxy.store();
        let owned = sessions.owned();
        let by_class = m.requests_by_class();
        json!({
            "node": {
                "jvm_route": self.state.jvm_route,
                "state": self.state.state().as_str(),
                "uptime_ms": self.state.uptime_ms(),
                "version": env!("CARGO_PKG_VERSION"),
                "http_listen": self.state.http_addrs,
                "https_listen": self.state.https_addrs,
                "mesh_addr": mesh_addr,
                "manager": self.cluster.as_ref().map(|c| match c.manager() {
                    Manager::Delta => "delta",
                    Manager::Backup => "backup",
                }),
            },
            "members": members,
            // REFERENCE 4.9: the cluster size this node counts, its majority, and whether it holds
            // the lease that lets it serve sessions.
            "quorum": self.cluster.as_ref().map(|c| {
                let (size, majority) = c.quorum();
                json!({
                    "partition_handling": if c.is_quorum() { "quorum" } else { "available" },
                    "cluster_size": size,
                    "majority": majority,
                    "lease": c.has_lease(std::time::Instant::now()),
                })
            }),
            "sessions": {
                "total": sessions.len(),
                "owned": owned,
                "replica": sessions.len().saturating_sub(owned),
                "swapped": sessions.swapped(),
            },
            "backends": backends,
            "replication": self.cluster.as_ref().map(|c| c.replication()),
            "events": self.cluster.as_ref().map(|c| c.events()),
            "persistence": self.persistence.as_ref().map(|p| p.status()),
            "requests": {
                "1xx": by_class[0], "2xx": by_class[1], "3xx": by_class[2],
                "4xx": by_class[3], "5xx": by_class[4],
                "open_connections": m.open_connections.get(),
            },
        })
    }
}
