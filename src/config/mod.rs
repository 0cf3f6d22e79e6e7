//! Configuration: one TOML file plus `--set dotted.key=value` overrides.
//!
//! Two stages, as in sozu: [`raw`] is the file's shape with unknown keys rejected; [`load`]
//! turns it into a validated [`Config`] or a [`ConfigError`] that names `file:line: key`.
//! Nothing in here opens a socket, so a bad config never half-starts a node.
//!
//! Config is floor 5: it builds the types their owners define (`proxy::HttpConfig`,
//! `proxy::BackendsConfig`, `session::SessionConfig`, `cluster::ClusterConfig`, ...), one
//! file per section: `validate` (node, listeners, admin), `backends`, `session`, `cluster`;
//! `source` points an error at its line.

mod backends;
mod cluster;
mod duration;
mod locate;
mod persistence;
mod raw;
mod session;
mod source;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::ClusterConfig;
use crate::proxy::{BackendsConfig, HttpConfig, HttpsConfig};
use crate::session::{ReplicationConfig, SessionConfig};
use locate::Seg;
use raw::RawConfig;
use source::Source;

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
    pub log: LogConfig,
    /// `[persistence]`.
    pub(crate) persistence: crate::persist::PersistConfig,
    /// The file and `--set` overrides it was read from (`None`: from text), for a reload.
    pub source: Option<ConfigSource>,
}

#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: PathBuf,
    pub overrides: Vec<String>,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `level`: the log filter when `RUST_LOG` is not set.
    pub level: String,
    /// `access`: `None` is off.
    pub access: Option<crate::proxy::AccessFormat>,
    /// `access_path`: `None` is stdout.
    pub access_path: Option<std::path::PathBuf>,
    pub access_buffer: usize,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub jvm_route: String,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    pub shutdown_grace: Duration,
    /// How long a leaving (or admin-drained) node may take to hand its sessions to their
    /// successors (REFERENCE 4.8), before it stops accepting and finishes in-flight requests.
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// `[admin] token`: required (as `Authorization: Bearer <token>`) by every mutating
    /// endpoint, and by `/sessions/<id>` when the listener is not on loopback.
    pub token: Option<String>,
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

/// Reads, overrides and validates a conf file.
pub(crate) fn load(file: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        origin: Origin::File { line: None },
        key: String::new(),
        reason: format!("cannot read the config file: {e}"),
    })?;
    let mut cfg = load_str(file, &text, overrides)?;
    cfg.source = Some(ConfigSource {
        file: file.to_path_buf(),
        overrides: overrides.to_vec(),
    });
    Ok(cfg)
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

    if let Some(k) = silent_standalone(&table) {
        return Err(src.error(
            &source::key(&k),
            "cluster settings are given but the cluster is off: set [cluster] enabled = true, \
             or enabled = false to run this node standalone on purpose",
        ));
    }
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
    validate::validate(raw, &src)
}

/// The first `[cluster]` key set while `[cluster] enabled` is not: such a file would start a
/// standalone node that its operator believes clustered (docs/REFERENCE.md, "Configuration").
/// An explicit `enabled = false` is a choice, and passes.
fn silent_standalone(table: &toml::Table) -> Option<String> {
    let cluster = table.get("cluster")?.as_table()?;
    if cluster.contains_key("enabled") {
        return None;
    }
    let (k, v) = cluster.iter().next()?;
    match v.as_table().and_then(|t| t.keys().next()) {
        Some(inner) => Some(format!("cluster.{k}.{inner}")),
        None => Some(format!("cluster.{k}")),
    }
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
