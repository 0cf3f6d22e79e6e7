//! The Prometheus registry (`/metrics`) and the handles the request path updates.
//!
//! Hot-path counters are created once at startup and cloned into the parts that bump them,
//! so a request never looks a label set up in a map.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClassLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BackendOutcome {
    pub backend: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

/// Counters of one backend, readable by `/status` too.
#[derive(Clone, Debug, Default)]
pub struct BackendCounters {
    pub up: Gauge,
    /// The runtime mode: 0 ready, 1 drain, 2 maint.
    pub mode: Gauge,
    pub weight: Gauge,
    pub responses: Counter,
    pub connect_errors: Counter,
    pub errors: Counter,
    pub timeouts: Counter,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests answered to clients by status class: index 0 = 1xx ... 4 = 5xx.
    requests: [Counter; 5],
    pub latency: Histogram,
    pub open_connections: Gauge,
    pub connections: Counter,
    /// Errors the proxy answered itself, by reason (`no_healthy_backend`, ...).
    proxy_errors: Family<ReasonLabel, Counter>,
    backend_up: Family<BackendLabel, Gauge>,
    backend_mode: Family<BackendLabel, Gauge>,
    backend_weight: Family<BackendLabel, Gauge>,
    backend_requests: Family<BackendOutcome, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("caracal");
        let requests_family = Family::<ClassLabel, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered to clients, by status class",
            requests_family.clone(),
        );
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| requests_family.get_or_create_owned(&ClassLabel { class }));
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response head",
            latency.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "http_open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let connections = Counter::default();
        registry.register(
            "http_connections",
            "Client connections accepted",
            connections.clone(),
        );
        let proxy_errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "proxy_errors",
            "Error responses produced by the proxy itself, by reason",
            proxy_errors.clone(),
        );
        let backend_up = Family::<BackendLabel, Gauge>::default();
        registry.register(
            "backend_up",
            "1 when the backend is considered healthy",
            backend_up.clone(),
        );
        let backend_mode = Family::<BackendLabel, Gauge>::default();
        registry.register(
            "backend_mode",
            "The backend's runtime mode: 0 ready, 1 drain, 2 maint",
            backend_mode.clone(),
        );
        let backend_weight = Family::<BackendLabel, Gauge>::default();
        registry.register(
            "backend_weight",
            "The backend's weight (set in the conf or at runtime)",
            backend_weight.clone(),
        );
        let backend_requests = Family::<BackendOutcome, Counter>::default();
        registry.register(
            "backend_requests",
            "Requests sent to backends, by outcome",
            backend_requests.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            open_connections,
            connections,
            proxy_errors,
            backend_up,
            backend_mode,
            backend_weight,
            backend_requests,
        }
    }

    /// Counts a response by its status class.
    pub fn count_status(&self, status: u16) {
        let i = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[i].inc();
    }

    pub fn requests_by_class(&self) -> [u64; 5] {
        self.requests.clone().map(|c| c.get())
    }

    pub fn proxy_error(&self, reason: &'static str) {
        self.proxy_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Handles for one backend, registered under its URL.
    pub fn backend(&self, url: &str) -> BackendCounters {
        let o = |outcome| {
            self.backend_requests.get_or_create_owned(&BackendOutcome {
                backend: url.to_string(),
                outcome,
            })
        };
        let label = BackendLabel {
            backend: url.to_string(),
        };
        BackendCounters {
            up: self.backend_up.get_or_create_owned(&label),
            mode: self.backend_mode.get_or_create_owned(&label),
            weight: self.backend_weight.get_or_create_owned(&label),
            responses: o("response"),
            connect_errors: o("connect_error"),
            errors: o("error"),
            timeouts: o("timeout"),
        }
    }

    /// Lets other parts (the cluster, sessions) add their own metrics.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut reg)
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

/// The p-quantile of histogram `hist` in a `/metrics` text: the upper bound of the first
/// bucket that holds a share `q` of the observations (`None` without any).
pub fn quantile(text: &str, hist: &str, q: f64) -> Option<f64> {
    let prefix = format!("{hist}_bucket{{le=\"");
    let mut b: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let (le, v) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total == 0.0 {
        return None;
    }
    b.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
}
