//! The session layer's settings (`[session]`, `[replication]`), built and checked by the
//! config layer.

use std::time::Duration;

use super::cookie::CookieConfig;
use super::filter::StaticFilter;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Lower-cased, as header names are compared.
    pub header_prefix: String,
    pub cookie: CookieConfig,
    pub max_inactive: Duration,
    pub max_session_bytes: usize,
    /// 0 = unlimited.
    pub max_active_sessions: usize,
}

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub filter: StaticFilter,
}
