//! Reload without restart (SIGHUP, or `POST /reload` on the admin listener; REFERENCE 6.1):
//! the conf file is read again, with the same `--set` overrides, and validated whole. A bad
//! file changes nothing: the running config stays, the error (`file:line: key: reason`) is
//! logged and answered, and `caracal_config_reload_failures_total` counts it.
//!
//! What applies live: `[backends]` (the list, weights, algorithm, health settings, timeouts):
//! a new upstream takes the new requests, the old one finishes those it has, and no client
//! connection is touched; and the HTTPS certificate (`[https] cert`/`key`, the files read
//! again even when their paths did not change): new handshakes get the new one, open
//! connections keep theirs; `[session]` `max_inactive`, `max_session_bytes` and
//! `max_active_sessions` (new sessions and writes from now; a session keeps the timeout it
//! has) and `[replication] filter`; and `[log] level` (when the process's logging can change it:
//! the `caracal` binary's can). A section changed that cannot change live is named in the answer
//! (`restart_needed`) and keeps its running value. Runtime changes made through the admin
//! API (a backend's mode or weight) do not survive a reload that changes `[backends]`, as
//! with HAProxy without a state file.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Sections a reload applies.
const LIVE: &[&str] = &["backends"];

/// Every section of the file, in the order the answer names them.
const SECTIONS: &[&str] = &[
    "node",
    "http",
    "https",
    "admin",
    "backends",
    "session",
    "replication",
    "jvm_route_binder",
    "cluster",
    "log",
];

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// Sections changed and applied.
    pub applied: Vec<&'static str>,
    /// Sections changed that only a restart applies (their running values stay).
    pub restart_needed: Vec<&'static str>,
}

pub(crate) struct Reloader {
    proxy: Arc<Proxy>,
    /// The HTTPS listeners' certificate (rotated by a reload).
    certs: Option<Arc<crate::tls::Rotating>>,
    source: Option<config::ConfigSource>,
    /// The file as last applied (per section), to tell what a reload changes.
    running: Mutex<toml::Table>,
    reloads: Counter,
    failures: Counter,
}

/// Section `name` of `t` without its `live` keys (empty when there is no such section:
/// a section added with only live keys is a live change).
fn rest(t: &toml::Table, name: &str, live: &[&str]) -> toml::Table {
    let mut s = t
        .get(name)
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();
    for k in live {
        s.remove(*k);
    }
    s
}

fn table_of(text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_default()
}

impl Reloader {
    pub(crate) fn new(cfg: &Config, proxy: Arc<Proxy>, metrics: &Metrics) -> Self {
        let reloads = Counter::default();
        let failures = Counter::default();
        metrics.with_registry(|r| {
            r.register(
                "config_reloads",
                "Reloads of the conf file that were applied",
                reloads.clone(),
            );
            r.register(
                "config_reload_failures",
                "Reloads refused (a bad file): the running config stayed",
                failures.clone(),
            );
        });
        let running = cfg
            .source
            .as_ref()
            .and_then(|s| std::fs::read_to_string(&s.file).ok())
            .map(|t| table_of(&t))
            .unwrap_or_default();
        Self {
            proxy,
            certs: cfg.https.as_ref().map(|h| h.certs.clone()),
            source: cfg.source.clone(),
            running: Mutex::new(running),
            reloads,
            failures,
        }
    }

    /// Reads the file again and applies what can change live; `Err`: the reason, and
    /// nothing changed.
    pub(crate) fn reload(&self) -> Result<Report, String> {
        let Some(src) = &self.source else {
            return Err("this node's config was not read from a file".into());
        };
        let refused = |e: String| {
            self.failures.inc();
            tracing::error!(error = %e, "reload refused: the running config stays");
            e
        };
        let text = std::fs::read_to_string(&src.file)
            .map_err(|e| refused(format!("{}: cannot read: {e}", src.file.display())))?;
        let new = config::load_str(&src.file, &text, &src.overrides)
            .map_err(|e| refused(e.to_string()))?;
        let table = table_of(&text);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = Report {
            applied: Vec::new(),
            restart_needed: Vec::new(),
        };
        // `[https]`: the certificate files are read again on every reload, so a certificate
        // renewed in place (same paths) rotates too; the listeners need a restart only
        // when something but `cert` and `key` changed.
        let https_live =
            rest(&running, "https", &["cert", "key"]) == rest(&table, "https", &["cert", "key"]);
        if let (Some(r), Some(h), true) = (&self.certs, &new.https, https_live) {
            if r.set(h.certs.current()) {
                report.applied.push("https");
                tracing::info!(cert = %h.cert.display(), "TLS certificate rotated");
            }
            if let Some(v) = table.get("https") {
                running.insert("https".into(), v.clone());
            }
        }
        // `[session]` limits and timeouts and `[replication] filter` apply live; the cookie
        // and the header prefix need a restart. The response head cap follows
        // `max_session_bytes`, so the backends are renewed with them.
        const SESSION_LIVE: &[&str] = &["max_inactive", "max_session_bytes", "max_active_sessions"];
        let changed: Vec<&str> = ["session", "replication", "backends"]
            .into_iter()
            .filter(|s| running.get(*s) != table.get(*s))
            .collect();
        let session_live =
            rest(&running, "session", SESSION_LIVE) == rest(&table, "session", SESSION_LIVE);
        let mut live = Vec::new();
        if session_live && changed.contains(&"session") {
            self.proxy.set_session_limits(&new.session);
            // Only a new `max_session_bytes` renews them (which resets the runtime modes and
            // weights, as a `[backends]` change does); timeouts and counts do not.
            let cap = |t: &toml::Table| {
                t.get("session")
                    .and_then(|s| s.get("max_session_bytes"))
                    .cloned()
            };
            if !changed.contains(&"backends") && cap(&running) != cap(&table) {
                self.proxy.swap_upstream(&new.backends);
            }
            live.push("session");
        }
        // The filter is the whole `[replication]` section: it applies on its own.
        if changed.contains(&"replication") {
            self.proxy.set_filter(&new.replication);
            live.push("replication");
        }
        for s in live {
            report.applied.push(s);
            match table.get(s) {
                Some(v) => running.insert(s.into(), v.clone()),
                None => running.remove(s),
            };
        }
        // `[log] level` applies live; the access log's keys need a restart.
        let log_live = rest(&running, "log", &["level"]) == rest(&table, "log", &["level"]);
        if log_live && running.get("log") != table.get("log") {
            match crate::logging::set_level(&new.log.level) {
                Ok(()) => {
                    report.applied.push("log");
                    tracing::info!(level = %new.log.level, "log level set");
                    match table.get("log") {
                        Some(v) => running.insert("log".into(), v.clone()),
                        None => running.remove("log"),
                    };
                }
                Err(e) => tracing::warn!(error = %e, "log level not changed"),
            }
        }
        for s in SECTIONS {
            if running.get(*s) == table.get(*s) {
                continue;
            }
            if LIVE.contains(s) {
                report.applied.push(s);
            } else {
                report.restart_needed.push(s);
            }
        }
        if report.applied.contains(&"backends") {
            self.proxy.swap_upstream(&new.backends);
            match table.get("backends") {
                Some(v) => running.insert("backends".into(), v.clone()),
                None => running.remove("backends"),
            };
        }
        self.reloads.inc();
        tracing::info!(applied = ?report.applied, restart_needed = ?report.restart_needed, "config reloaded");
        Ok(report)
    }
}
