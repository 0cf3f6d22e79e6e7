//! The store's metrics (`caracal_sessions_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::swap::Sessions;
use crate::metrics::Metrics;

pub(super) struct Counters {
    pub active: Gauge,
    pub created: Counter,
    pub expired: Counter,
    pub invalidated: Counter,
    pub renewed: Counter,
}

impl Counters {
    pub(super) fn register(metrics: &Metrics, map: &Sessions) -> Counters {
        let c = Counters {
            active: map.active.clone(),
            created: Counter::default(),
            expired: Counter::default(),
            invalidated: Counter::default(),
            renewed: Counter::default(),
        };
        metrics.with_registry(|r| {
            r.register(
                "sessions_active",
                "Sessions held by this node (in memory or swapped out)",
                c.active.clone(),
            );
            r.register("sessions_created", "Sessions created", c.created.clone());
            r.register(
                "sessions_expired",
                "Sessions expired (idle past max_inactive)",
                c.expired.clone(),
            );
            r.register(
                "sessions_invalidated",
                "Sessions ended by the backend",
                c.invalidated.clone(),
            );
            r.register("sessions_renewed", "Session ids renewed", c.renewed.clone());
            r.register(
                "sessions_swapped",
                "Sessions idle past swap_after, kept on disk and not in memory",
                map.n_swapped.clone(),
            );
            r.register(
                "sessions_swap_lost",
                "Swapped sessions whose bytes could not be read back (lost on this node)",
                map.lost.clone(),
            );
        });
        c
    }
}
