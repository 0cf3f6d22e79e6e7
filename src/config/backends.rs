//! `[backends]`: the servers, the balancer, timeouts and health checks.

use super::locate::Seg;
use super::raw::{RawBackends, RawServer};
use super::source::{key, key_idx, Source};
use super::ConfigError;
use crate::proxy::{Algorithm, BackendsConfig, HealthConfig, ServerConfig};

/// `[backends]` and `[backends.health]`.
pub(super) fn validate(b: &RawBackends, src: &Source) -> Result<BackendsConfig, ConfigError> {
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
    let h = &b.health;
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

    Ok(BackendsConfig {
        algorithm,
        servers,
        connect_timeout: b.connect_timeout.0,
        response_timeout: b.response_timeout.0,
        idle_timeout: b.idle_timeout.0,
        max_idle_per_server: b.max_idle_per_server,
        retries: b.retries,
        fail_timeout: b.fail_timeout.0,
        // Set with the session limits (config::validate).
        max_response_head: crate::proxy::DEFAULT_MAX_HEAD,
        health: HealthConfig {
            enabled: h.enabled,
            path: h.path.clone(),
            interval: h.interval.0,
            timeout: h.timeout.0,
            rise: h.rise,
            fall: h.fall,
        },
    })
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
