//! Stage one of the config: the file's shape as serde reads it. Unknown keys are rejected
//! here (`deny_unknown_fields`); values are checked in stage two (`super::validate`).
//!
//! Defaults live in the `Default` impls so the documented defaults in `conf/caracal.toml`
//! have one source.

use serde::Deserialize;

use super::duration::Dur;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub node: RawNode,
    pub http: RawHttp,
    pub https: Option<RawHttps>,
    pub admin: RawAdmin,
    pub backends: RawBackends,
    pub session: RawSession,
    pub replication: RawReplication,
    pub jvm_route_binder: RawBinder,
    pub cluster: RawCluster,
    pub log: RawLog,
    pub persistence: RawPersistence,
}

/// `[persistence]`: the durable tier on this node's disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPersistence {
    /// off | shutdown | async | fsync.
    pub mode: String,
    pub dir: String,
    pub flush_interval: Dur,
    pub compact_after_bytes: u64,
    /// Sessions idle this long leave memory for a swap file ("0s": never).
    pub swap_after: Dur,
}

impl Default for RawPersistence {
    fn default() -> Self {
        Self {
            mode: "off".into(),
            dir: "data".into(),
            flush_interval: Dur(std::time::Duration::from_secs(1)),
            compact_after_bytes: 64 << 20,
            swap_after: Dur(std::time::Duration::ZERO),
        }
    }
}

/// `[log]`: the access log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    /// The log filter when RUST_LOG is not set (RUST_LOG syntax).
    pub level: String,
    /// off | common | combined | json.
    pub access: String,
    /// Empty: stdout.
    pub access_path: String,
    /// Lines that may wait for the writer before new ones are dropped.
    pub access_buffer: usize,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            access: "off".into(),
            access_path: String::new(),
            access_buffer: 65_536,
        }
    }
}

/// JvmRouteBinderValve: rewrite the cookie's route after a failover.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBinder {
    pub enabled: bool,
}

impl Default for RawBinder {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNode {
    pub jvm_route: Option<String>,
    pub workers: usize,
    pub shutdown_grace: Dur,
    pub drain_timeout: Dur,
}

impl Default for RawNode {
    fn default() -> Self {
        Self {
            jvm_route: None,
            workers: 0,
            shutdown_grace: Dur(std::time::Duration::from_secs(30)),
            drain_timeout: Dur(std::time::Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttp {
    pub listen: Vec<String>,
    pub max_connections: usize,
    pub header_read_timeout: Dur,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2c: bool,
    pub trusted_proxies: Vec<String>,
    /// Request id header ("" for none).
    pub request_id_header: String,
    /// `Upgrade` protocols passed to backends.
    pub upgrades: Vec<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8080".into()],
            max_connections: 8192,
            header_read_timeout: Dur(std::time::Duration::from_secs(10)),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            h2c: true,
            trusted_proxies: Vec::new(),
            request_id_header: "X-Request-Id".into(),
            upgrades: vec!["websocket".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttps {
    pub listen: Vec<String>,
    pub cert: String,
    pub key: String,
    #[serde(default = "yes")]
    pub http2: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    /// Empty string disables the admin listener.
    pub listen: String,
    /// Bearer token for the mutating endpoints (and session contents off loopback).
    pub token: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            token: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBackends {
    pub algorithm: String,
    pub servers: Vec<RawServer>,
    pub connect_timeout: Dur,
    pub response_timeout: Dur,
    pub idle_timeout: Dur,
    pub max_idle_per_server: usize,
    pub retries: usize,
    pub fail_timeout: Dur,
    pub health: RawHealth,
}

impl Default for RawBackends {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            algorithm: "round_robin".into(),
            servers: Vec::new(),
            connect_timeout: Dur(Duration::from_secs(2)),
            response_timeout: Dur(Duration::from_secs(60)),
            idle_timeout: Dur(Duration::from_secs(15)),
            max_idle_per_server: 64,
            retries: 2,
            fail_timeout: Dur(Duration::from_secs(10)),
            health: RawHealth::default(),
        }
    }
}

/// A backend: `"http://host:port"` or `{ url = "...", weight = N }`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a URL string or a table { url = \"http://...\", weight = N }"
)]
pub(super) enum RawServer {
    Url(String),
    Table(RawServerTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTable {
    pub url: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealth {
    pub enabled: bool,
    pub path: String,
    pub interval: Dur,
    pub timeout: Dur,
    pub rise: u32,
    pub fall: u32,
}

impl Default for RawHealth {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            enabled: true,
            path: "/health".into(),
            interval: Dur(Duration::from_secs(2)),
            timeout: Dur(Duration::from_secs(1)),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSession {
    pub cookie_name: String,
    pub cookie_path: String,
    pub cookie_secure: String,
    pub cookie_same_site: String,
    pub cookie_http_only: bool,
    pub header_prefix: String,
    pub max_inactive: Dur,
    pub max_session_bytes: usize,
    pub max_active_sessions: usize,
}

impl Default for RawSession {
    fn default() -> Self {
        Self {
            cookie_name: "JSESSIONID".into(),
            cookie_path: "/".into(),
            cookie_secure: "auto".into(),
            cookie_same_site: "Lax".into(),
            cookie_http_only: true,
            header_prefix: "X-Session".into(),
            max_inactive: Dur(std::time::Duration::from_secs(30 * 60)),
            max_session_bytes: 64 * 1024,
            max_active_sessions: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawReplication {
    pub filter: String,
}

impl Default for RawReplication {
    fn default() -> Self {
        Self {
            filter: crate::session::TOMCAT_DEFAULT.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCluster {
    pub enabled: bool,
    pub manager: String,
    /// A name ("sync", "async") or a Tomcat channelSendOptions number.
    pub send_options: toml::Value,
    pub ack_timeout: Dur,
    pub state_transfer_timeout: Dur,
    pub require_state_transfer: bool,
    pub expire_sessions_on_shutdown: bool,
    pub key: Option<String>,
    pub advertise_http: Option<String>,
    pub partition_handling: String,
    pub expected_members: usize,
    /// Default: halfway between `frequency` and `drop_time`.
    pub lease: Option<Dur>,
    /// Run a cluster reachable beyond loopback without authentication (REFERENCE 4.10).
    pub insecure: bool,
    /// Per peer: changes queued or unacked, and their bytes (Tomcat's
    /// MessageDispatchInterceptor `maxQueueSize`: 64 MiB).
    pub max_queue_changes: usize,
    pub max_queue_bytes: usize,
    pub membership: RawMembership,
    pub receiver: RawReceiver,
    pub tls: Option<RawMeshTls>,
}

/// `[cluster.tls]`: mutual TLS on the mesh.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeshTls {
    pub cert: String,
    pub key: String,
    pub ca: String,
    /// A member's certificate must name its jvm_route.
    #[serde(default = "yes")]
    pub bind_routes: bool,
}

impl Default for RawCluster {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            enabled: false,
            manager: "delta".into(),
            send_options: toml::Value::String("sync".into()),
            ack_timeout: Dur(Duration::from_secs(1)),
            state_transfer_timeout: Dur(Duration::from_secs(60)),
            require_state_transfer: false,
            expire_sessions_on_shutdown: false,
            key: None,
            advertise_http: None,
            partition_handling: "quorum".into(),
            expected_members: 0,
            lease: None,
            insecure: false,
            max_queue_changes: 100_000,
            max_queue_bytes: 64 * 1024 * 1024,
            membership: RawMembership::default(),
            receiver: RawReceiver::default(),
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMembership {
    pub kind: String,
    pub domain: String,
    pub address: String,
    /// Multicast: the group port (45564). DNS: the peers' mesh port (default: this
    /// node's `cluster.receiver.port`).
    pub port: Option<u16>,
    pub bind: String,
    pub ttl: u32,
    pub frequency: Dur,
    pub drop_time: Dur,
    pub verify_timeout: Dur,
    pub members: Vec<String>,
    /// DNS: the name resolved for candidates, and how often.
    pub name: String,
    pub refresh: Dur,
}

impl Default for RawMembership {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            kind: "multicast".into(),
            domain: "default".into(),
            address: "228.0.0.4".into(),
            port: None,
            bind: "127.0.0.1".into(),
            ttl: 1,
            frequency: Dur(Duration::from_millis(500)),
            drop_time: Dur(Duration::from_millis(3000)),
            verify_timeout: Dur(Duration::from_millis(1000)),
            members: Vec::new(),
            name: String::new(),
            refresh: Dur(Duration::from_secs(5)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawReceiver {
    pub address: String,
    pub port: u16,
    pub auto_bind: u16,
    pub max_frame_bytes: usize,
    /// Mesh connections open at once, in total and from one source address.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// For a new connection's first (authenticated) frame.
    pub handshake_timeout: Dur,
    /// A connection with no frame for this long is closed.
    pub idle_timeout: Dur,
}

impl Default for RawReceiver {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".into(),
            port: 4000,
            auto_bind: 100,
            max_frame_bytes: 16 * 1024 * 1024,
            max_connections: 256,
            max_connections_per_source: 32,
            handshake_timeout: Dur(std::time::Duration::from_secs(5)),
            idle_timeout: Dur(std::time::Duration::from_secs(300)),
        }
    }
}
