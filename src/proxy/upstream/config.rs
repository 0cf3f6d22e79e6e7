//! The backend side's settings (`[backends]`, `[backends.health]`), built and checked by
//! the config layer.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConn,
    RandomTwo,
}

#[derive(Debug, Clone)]
pub struct BackendsConfig {
    pub algorithm: Algorithm,
    pub servers: Vec<ServerConfig>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_server: usize,
    pub retries: usize,
    pub fail_timeout: Duration,
    pub health: HealthConfig,
    /// Largest response head taken from a backend: room for a whole session write
    /// (`X-Session-Set`), so it follows `[session] max_session_bytes`.
    pub max_response_head: usize,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// As written, normalised without a trailing slash: `http://127.0.0.1:9001`.
    pub url: String,
    /// `host:port` to connect to and to send as `Host` for health checks.
    pub authority: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}
