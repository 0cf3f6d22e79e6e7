//! Configuration: one TOML file plus `--set dotted.key=value` overrides.
//!
//! Two stages, as in sozu: [`raw`] is the file's shape with unknown keys rejected; [`load`]
//! turns it into a validated [`Config`] or a [`ConfigError`] that names `file:line: key`.
//! Nothing in here opens a socket, so a bad config never half-starts a node.

pub mod duration;
mod locate;
pub mod raw;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::session::cookie::{CookieConfig, SecureMode};
use crate::session::filter::StaticFilter;
use ipnet::IpNet;
use locate::Seg;
use raw::{RawConfig, RawServer};

pub use duration::parse_duration;

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeConfig,
    pub http: HttpConfig,
    pub https: Option<HttpsConfig>,
    pub admin: AdminConfig,
    pub backends: BackendsConfig,
    pub session: SessionConfig,
    pub replication: ReplicationConfig,
    /// `[jvm_route_binder] enabled`: rewrite the session cookie to the new owner's route.
    pub jvm_route_binder: bool,
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub jvm_route: String,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: Vec<SocketAddr>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2c: bool,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Clone)]
pub struct HttpsConfig {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Loaded and checked at validation time so a bad cert is a config error.
    pub tls: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for HttpsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsConfig")
            .field("listen", &self.listen)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
}

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

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub enabled: bool,
    pub manager: crate::cluster::replication::Manager,
    pub send_mode: crate::cluster::replication::SendMode,
    pub ack_timeout: Duration,
    pub state_transfer_timeout: Duration,
    pub require_state_transfer: bool,
    pub expire_sessions_on_shutdown: bool,
    /// Shared secret: HMAC-SHA256 on heartbeats.
    pub key: Option<Vec<u8>>,
    /// The HTTP address peers forward to; `None` = derived from `http.listen`.
    pub advertise_http: Option<SocketAddr>,
    pub membership: MembershipConfig,
    pub receiver: ReceiverConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipKind {
    Multicast {
        group: std::net::Ipv4Addr,
        port: u16,
        bind: std::net::Ipv4Addr,
        ttl: u32,
    },
    /// Mesh addresses (`host:port`) of the other members.
    Static { members: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub kind: MembershipKind,
    pub domain: String,
    pub frequency: Duration,
    pub drop_time: Duration,
    pub verify_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub address: IpAddr,
    pub port: u16,
    pub auto_bind: u16,
    pub max_frame_bytes: usize,
}

/// Where a bad value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { line: Option<usize> },
    Override,
}

/// A config error: `file:line: key: reason`. The CLI exits 2 on it.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub origin: Origin,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        let key = if self.key.is_empty() {
            "(top level)"
        } else {
            &self.key
        };
        match &self.origin {
            Origin::File { line: Some(l) } => write!(f, "{file}:{l}: {key}: {}", self.reason),
            Origin::File { line: None } => write!(f, "{file}: {key}: {}", self.reason),
            Origin::Override => write!(f, "{file}: --set {key}: {}", self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The file text plus what is needed to point at a line.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    doc: toml_edit::Document<String>,
    overridden: Vec<Vec<String>>,
}

impl Source<'_> {
    fn error(&self, path: &[Seg], reason: impl Into<String>) -> ConfigError {
        let keys: Vec<&str> = path
            .iter()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .collect();
        let from_set = self
            .overridden
            .iter()
            .any(|o| keys.len() >= o.len() && keys[..o.len()].iter().zip(o).all(|(a, b)| *a == b));
        let origin = if from_set {
            Origin::Override
        } else {
            Origin::File {
                line: locate::line_of(&self.doc, self.text, path),
            }
        };
        ConfigError {
            file: self.file.to_path_buf(),
            origin,
            key: locate::render(path),
            reason: reason.into(),
        }
    }
}

fn key(path: &str) -> Vec<Seg> {
    path.split('.').map(|k| Seg::Key(k.to_string())).collect()
}

fn key_idx(path: &str, i: usize) -> Vec<Seg> {
    let mut p = key(path);
    p.push(Seg::Index(i));
    p
}

/// Reads, overrides and validates a conf file.
pub fn load(file: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        origin: Origin::File { line: None },
        key: String::new(),
        reason: format!("cannot read the config file: {e}"),
    })?;
    load_str(file, &text, overrides)
}

/// As [`load`], from text already read (`file` is only used in messages and for relative paths).
pub fn load_str(file: &Path, text: &str, overrides: &[String]) -> Result<Config, ConfigError> {
    let syntax_err = |span: Option<std::ops::Range<usize>>, msg: &str| ConfigError {
        file: file.to_path_buf(),
        origin: Origin::File {
            line: span.map(|s| locate::line_at(text, s.start)),
        },
        key: String::new(),
        reason: format!("TOML syntax error: {}", msg.trim()),
    };
    let doc = toml_edit::Document::parse(text.to_string())
        .map_err(|e| syntax_err(e.span(), e.message()))?;
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| syntax_err(e.span(), e.message()))?;

    let mut overridden = Vec::new();
    for o in overrides {
        let path = apply_override(&mut table, o).map_err(|reason| ConfigError {
            file: file.to_path_buf(),
            origin: Origin::Override,
            key: o.split('=').next().unwrap_or_default().trim().to_string(),
            reason,
        })?;
        overridden.push(path);
    }
    let src = Source {
        file,
        text,
        doc,
        overridden,
    };

    let raw: RawConfig =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path: Vec<Seg> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                    _ => None,
                })
                .collect();
            let reason = e.inner().message().trim().to_string();
            src.error(&path, reason)
        })?;
    validate(raw, &src)
}

/// Applies `a.b.c=value` (value in TOML syntax; a bare word is taken as a string) and
/// returns the key path it set.
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<Vec<String>, String> {
    let (k, v) = spec
        .split_once('=')
        .ok_or_else(|| format!("expected dotted.key=value, got {spec:?}"))?;
    let keys: Vec<String> = k.trim().split('.').map(|s| s.trim().to_string()).collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(format!("bad key in {spec:?}"));
    }
    let v = v.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(v.to_string())),
        Err(_) => toml::Value::String(v.to_string()),
    };
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(keys)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "caracal".to_string())
}

/// A jvm_route ends up in cookies and header values: keep it to a safe token.
pub fn valid_route(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_addr(src: &Source, path: &[Seg], s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        src.error(
            path,
            format!("invalid listen address {s:?}: expected IP:port, e.g. \"127.0.0.1:8080\""),
        )
    })
}

fn validate(raw: RawConfig, src: &Source) -> Result<Config, ConfigError> {
    // [node]
    let jvm_route = match raw.node.jvm_route {
        Some(r) => r,
        None => host_name().replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-"),
    };
    if !valid_route(&jvm_route) {
        return Err(src.error(
            &key("node.jvm_route"),
            format!("invalid jvm_route {jvm_route:?}: use 1-64 characters of A-Z a-z 0-9 - _"),
        ));
    }
    if raw.node.workers > 1024 {
        return Err(src.error(&key("node.workers"), "at most 1024 worker threads"));
    }

    // [http]
    let mut listen = Vec::new();
    for (i, s) in raw.http.listen.iter().enumerate() {
        listen.push(parse_addr(src, &key_idx("http.listen", i), s)?);
    }
    if raw.http.max_connections == 0 {
        return Err(src.error(&key("http.max_connections"), "must be at least 1"));
    }
    // hyper refuses read buffers under 8 KiB.
    if raw.http.max_header_bytes < 8192 {
        return Err(src.error(
            &key("http.max_header_bytes"),
            "must be at least 8192 (8 KiB)",
        ));
    }
    if raw.http.max_headers == 0 {
        return Err(src.error(&key("http.max_headers"), "must be at least 1"));
    }
    let mut trusted = Vec::new();
    for (i, s) in raw.http.trusted_proxies.iter().enumerate() {
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                src.error(
                    &key_idx("http.trusted_proxies", i),
                    format!("invalid address or CIDR {s:?}, e.g. \"10.0.0.0/8\""),
                )
            })?;
        trusted.push(net);
    }

    // [https]
    let https = match raw.https {
        None => None,
        Some(h) => {
            let mut l = Vec::new();
            for (i, s) in h.listen.iter().enumerate() {
                l.push(parse_addr(src, &key_idx("https.listen", i), s)?);
            }
            let base = src.file.parent().unwrap_or(Path::new("."));
            let cert = resolve(base, &h.cert);
            let keyp = resolve(base, &h.key);
            let tls = crate::tls::server_config(&cert, &keyp, h.http2).map_err(|e| {
                let k = match e {
                    crate::tls::TlsError::Cert(..) => "https.cert",
                    crate::tls::TlsError::Key(..) => "https.key",
                    crate::tls::TlsError::Rustls(..) => "https.cert",
                };
                src.error(&key(k), e.to_string())
            })?;
            Some(HttpsConfig {
                listen: l,
                cert,
                key: keyp,
                tls,
            })
        }
    };
    if listen.is_empty() && https.as_ref().is_none_or(|h| h.listen.is_empty()) {
        return Err(src.error(
            &key("http.listen"),
            "no listener: give http.listen or https.listen at least one address",
        ));
    }

    // [admin]
    let admin_listen = if raw.admin.listen.trim().is_empty() {
        None
    } else {
        Some(parse_addr(src, &key("admin.listen"), &raw.admin.listen)?)
    };

    // [backends]
    let b = raw.backends;
    let algorithm = match b.algorithm.as_str() {
        "round_robin" => Algorithm::RoundRobin,
        "least_conn" => Algorithm::LeastConn,
        "random_two" => Algorithm::RandomTwo,
        other => {
            return Err(src.error(
                &key("backends.algorithm"),
                format!("unknown algorithm {other:?}: use round_robin, least_conn or random_two"),
            ))
        }
    };
    if b.servers.is_empty() {
        return Err(src.error(
            &key("backends.servers"),
            "at least one backend server is required",
        ));
    }
    let mut servers: Vec<ServerConfig> = Vec::new();
    for (i, s) in b.servers.iter().enumerate() {
        let (url, weight, path) = match s {
            RawServer::Url(u) => (u.as_str(), 1, key_idx("backends.servers", i)),
            RawServer::Table(t) => {
                let mut p = key_idx("backends.servers", i);
                p.push(Seg::Key("url".into()));
                (t.url.as_str(), t.weight, p)
            }
        };
        let authority = parse_backend_url(url).map_err(|r| src.error(&path, r))?;
        if weight == 0 || weight > 256 {
            let mut p = key_idx("backends.servers", i);
            p.push(Seg::Key("weight".into()));
            return Err(src.error(&p, "weight must be between 1 and 256"));
        }
        let url = url.trim_end_matches('/').to_string();
        if servers.iter().any(|s| s.url == url) {
            return Err(src.error(&path, format!("backend {url} is listed twice")));
        }
        servers.push(ServerConfig {
            url,
            authority,
            weight,
        });
    }
    let h = b.health;
    if !h.path.starts_with('/') {
        return Err(src.error(&key("backends.health.path"), "must start with '/'"));
    }
    if h.rise == 0 || h.fall == 0 {
        let k = if h.rise == 0 {
            "backends.health.rise"
        } else {
            "backends.health.fall"
        };
        return Err(src.error(&key(k), "must be at least 1"));
    }
    for (k, d) in [
        ("backends.health.interval", h.interval.0),
        ("backends.health.timeout", h.timeout.0),
        ("backends.connect_timeout", b.connect_timeout.0),
        ("backends.response_timeout", b.response_timeout.0),
    ] {
        if d.is_zero() {
            return Err(src.error(&key(k), "must be greater than 0"));
        }
    }
    if raw.http.header_read_timeout.0.is_zero() {
        return Err(src.error(&key("http.header_read_timeout"), "must be greater than 0"));
    }

    // [session]
    let prefix = raw.session.header_prefix.trim().to_ascii_lowercase();
    if prefix.is_empty() || http::HeaderName::from_bytes(prefix.as_bytes()).is_err() {
        return Err(src.error(
            &key("session.header_prefix"),
            format!("invalid header prefix {:?}", raw.session.header_prefix),
        ));
    }

    let rs = &raw.session;
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token_ok(&rs.cookie_name) {
        return Err(src.error(
            &key("session.cookie_name"),
            format!("invalid cookie name {:?}", rs.cookie_name),
        ));
    }
    if !rs.cookie_path.starts_with('/') || rs.cookie_path.contains([';', ' ']) {
        return Err(src.error(
            &key("session.cookie_path"),
            "must start with '/' and have no ';' or space",
        ));
    }
    let secure = match rs.cookie_secure.as_str() {
        "auto" => SecureMode::Auto,
        "always" => SecureMode::Always,
        "never" => SecureMode::Never,
        other => {
            return Err(src.error(
                &key("session.cookie_secure"),
                format!("unknown value {other:?}: use auto, always or never"),
            ))
        }
    };
    let same_site = match rs.cookie_same_site.to_ascii_lowercase().as_str() {
        "lax" => cookie::SameSite::Lax,
        "strict" => cookie::SameSite::Strict,
        "none" => cookie::SameSite::None,
        _ => {
            return Err(src.error(
                &key("session.cookie_same_site"),
                format!(
                    "unknown value {:?}: use Lax, Strict or None",
                    rs.cookie_same_site
                ),
            ))
        }
    };
    if rs.max_inactive.0.is_zero() {
        return Err(src.error(&key("session.max_inactive"), "must be greater than 0"));
    }
    if rs.max_session_bytes < 2 {
        return Err(src.error(
            &key("session.max_session_bytes"),
            "must be at least 2 (\"{}\")",
        ));
    }
    let filter = StaticFilter::new(&raw.replication.filter).map_err(|e| {
        src.error(
            &key("replication.filter"),
            format!("not a valid regex: {}", e.to_string().replace('\n', " ")),
        )
    })?;

    let cluster = validate_cluster(&raw.cluster, src)?;

    Ok(Config {
        node: NodeConfig {
            jvm_route,
            workers: raw.node.workers,
            shutdown_grace: raw.node.shutdown_grace.0,
        },
        http: HttpConfig {
            listen,
            max_connections: raw.http.max_connections,
            header_read_timeout: raw.http.header_read_timeout.0,
            max_header_bytes: raw.http.max_header_bytes,
            max_headers: raw.http.max_headers,
            h2c: raw.http.h2c,
            trusted_proxies: trusted,
        },
        https,
        admin: AdminConfig {
            listen: admin_listen,
        },
        backends: BackendsConfig {
            algorithm,
            servers,
            connect_timeout: b.connect_timeout.0,
            response_timeout: b.response_timeout.0,
            idle_timeout: b.idle_timeout.0,
            max_idle_per_server: b.max_idle_per_server,
            retries: b.retries,
            fail_timeout: b.fail_timeout.0,
            health: HealthConfig {
                enabled: h.enabled,
                path: h.path,
                interval: h.interval.0,
                timeout: h.timeout.0,
                rise: h.rise,
                fall: h.fall,
            },
        },
        session: SessionConfig {
            header_prefix: prefix,
            cookie: CookieConfig {
                name: rs.cookie_name.clone(),
                path_param: rs.cookie_name.to_ascii_lowercase(),
                path: rs.cookie_path.clone(),
                secure,
                same_site,
                http_only: rs.cookie_http_only,
            },
            max_inactive: rs.max_inactive.0,
            max_session_bytes: rs.max_session_bytes,
            max_active_sessions: rs.max_active_sessions,
        },
        replication: ReplicationConfig { filter },
        jvm_route_binder: raw.jvm_route_binder.enabled,
        cluster,
    })
}

fn validate_cluster(c: &raw::RawCluster, src: &Source) -> Result<ClusterConfig, ConfigError> {
    let m = &c.membership;
    let ip = |k: &str, s: &str| {
        s.parse::<IpAddr>()
            .map_err(|_| src.error(&key(k), format!("invalid IP address {s:?}")))
    };
    let kind = match m.kind.as_str() {
        "multicast" => {
            let group = match ip("cluster.membership.address", &m.address)? {
                IpAddr::V4(g) if g.is_multicast() => g,
                _ => {
                    return Err(src.error(
                        &key("cluster.membership.address"),
                        format!(
                            "{:?} is not an IPv4 multicast address (224.0.0.0/4)",
                            m.address
                        ),
                    ))
                }
            };
            let IpAddr::V4(bind) = ip("cluster.membership.bind", &m.bind)? else {
                return Err(src.error(&key("cluster.membership.bind"), "must be an IPv4 address"));
            };
            if m.ttl > 255 {
                return Err(src.error(&key("cluster.membership.ttl"), "must be 0..255"));
            }
            if m.port == 0 {
                return Err(src.error(&key("cluster.membership.port"), "must not be 0"));
            }
            MembershipKind::Multicast {
                group,
                port: m.port,
                bind,
                ttl: m.ttl,
            }
        }
        "static" => {
            if c.enabled && m.members.is_empty() {
                return Err(src.error(
                    &key("cluster.membership.members"),
                    "static membership needs the other members' mesh addresses",
                ));
            }
            for (i, a) in m.members.iter().enumerate() {
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(src.error(
                        &key_idx("cluster.membership.members", i),
                        format!("expected host:port, got {a:?}"),
                    ));
                }
            }
            MembershipKind::Static {
                members: m.members.clone(),
            }
        }
        "dns" => {
            return Err(src.error(
                &key("cluster.membership.kind"),
                "dns membership is not available in this version: use multicast or static",
            ))
        }
        other => {
            return Err(src.error(
                &key("cluster.membership.kind"),
                format!("unknown kind {other:?}: use multicast or static"),
            ))
        }
    };
    if m.domain.is_empty() || m.domain.len() > 64 {
        return Err(src.error(&key("cluster.membership.domain"), "1 to 64 characters"));
    }
    if m.frequency.0.is_zero() {
        return Err(src.error(
            &key("cluster.membership.frequency"),
            "must be greater than 0",
        ));
    }
    if m.drop_time.0 <= m.frequency.0 {
        return Err(src.error(
            &key("cluster.membership.drop_time"),
            "must be longer than cluster.membership.frequency",
        ));
    }
    if m.verify_timeout.0.is_zero() {
        return Err(src.error(
            &key("cluster.membership.verify_timeout"),
            "must be greater than 0",
        ));
    }
    let key_bytes = match &c.key {
        Some(k) if k.len() < 16 => {
            return Err(src.error(
                &key("cluster.key"),
                "use a secret of at least 16 characters",
            ))
        }
        Some(k) => Some(k.as_bytes().to_vec()),
        None => None,
    };
    let advertise_http = match &c.advertise_http {
        Some(a) => Some(parse_addr(src, &key("cluster.advertise_http"), a)?),
        None => None,
    };
    use crate::cluster::replication::Manager;
    let manager = match c.manager.as_str() {
        "delta" => Manager::Delta,
        "backup" => Manager::Backup,
        other => {
            return Err(src.error(
                &key("cluster.manager"),
                format!("unknown manager {other:?}: use delta or backup"),
            ))
        }
    };
    use crate::cluster::replication::SendMode;
    // Tomcat's channelSendOptions: 8 = asynchronous; 4 = use ack, 2 = synchronized ack
    // (6 = both, 10 = 8|2). caracal's sync really waits for "applied" acks.
    let send_mode = match &c.send_options {
        toml::Value::String(s) if s == "sync" => SendMode::Sync,
        toml::Value::String(s) if s == "async" => SendMode::Async,
        toml::Value::Integer(8) => SendMode::Async,
        toml::Value::Integer(2 | 4 | 6 | 10) => SendMode::Sync,
        other => {
            return Err(src.error(
                &key("cluster.send_options"),
                format!("unknown value {other}: use \"sync\", \"async\" or a Tomcat number (8 = async; 4, 6, 10 = sync)"),
            ))
        }
    };
    if c.ack_timeout.0.is_zero() {
        return Err(src.error(&key("cluster.ack_timeout"), "must be greater than 0"));
    }
    let r = &c.receiver;
    let address = ip("cluster.receiver.address", &r.address)?;
    if r.max_frame_bytes < 1024 {
        return Err(src.error(
            &key("cluster.receiver.max_frame_bytes"),
            "must be at least 1024",
        ));
    }
    Ok(ClusterConfig {
        enabled: c.enabled,
        manager,
        send_mode,
        ack_timeout: c.ack_timeout.0,
        state_transfer_timeout: c.state_transfer_timeout.0,
        require_state_transfer: c.require_state_transfer,
        expire_sessions_on_shutdown: c.expire_sessions_on_shutdown,
        key: key_bytes,
        advertise_http,
        membership: MembershipConfig {
            kind,
            domain: m.domain.clone(),
            frequency: m.frequency.0,
            drop_time: m.drop_time.0,
            verify_timeout: m.verify_timeout.0,
        },
        receiver: ReceiverConfig {
            address,
            port: r.port,
            auto_bind: r.auto_bind.max(1),
            max_frame_bytes: r.max_frame_bytes,
        },
    })
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Checks `http://host:port[/]` and returns `host:port` (port 80 when absent).
fn parse_backend_url(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid backend URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(s) => {
            return Err(format!(
                "invalid backend URL {url:?}: scheme {s:?} is not supported (use http://)"
            ))
        }
        None => {
            return Err(format!(
                "invalid backend URL {url:?}: expected http://host:port"
            ))
        }
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("invalid backend URL {url:?}: no host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "invalid backend URL {url:?}: a backend is host and port only, no path"
        ));
    }
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}
