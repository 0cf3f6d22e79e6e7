//! The whole file checked: `[node]`, `[http]`, `[https]`, `[admin]` here, the other
//! sections in their own files.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::raw::RawConfig;
use super::source::{key, key_idx, parse_addr, resolve, Source};
use super::{AdminConfig, Config, ConfigError, NodeConfig};
use crate::proxy::{HttpConfig, HttpsConfig};
use crate::{session, tls};

pub(super) fn validate(raw: RawConfig, src: &Source) -> Result<Config, ConfigError> {
    // [node]
    let jvm_route = match raw.node.jvm_route {
        Some(r) => r,
        None => host_name().replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-"),
    };
    if !session::valid_route(&jvm_route) {
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
    let request_id_header = if raw.http.request_id_header.is_empty() {
        None
    } else {
        match http::HeaderName::from_bytes(raw.http.request_id_header.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                return Err(src.error(
                    &key("http.request_id_header"),
                    "not a valid header name (\"\" turns it off)",
                ))
            }
        }
    };
    let mut upgrades = Vec::new();
    for (i, u) in raw.http.upgrades.iter().enumerate() {
        let ok = !u.is_empty()
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
        if !ok {
            return Err(src.error(
                &key_idx("http.upgrades", i),
                format!("{u:?} is not a protocol token, e.g. \"websocket\""),
            ));
        }
        if u.eq_ignore_ascii_case("h2c") {
            return Err(src.error(
                &key_idx("http.upgrades", i),
                "h2c cannot be passed: it would tunnel requests past the header hygiene",
            ));
        }
        upgrades.push(u.to_ascii_lowercase());
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
            let (tls, certs) = tls::server_config(&cert, &keyp, h.http2).map_err(|e| {
                let k = match e {
                    tls::TlsError::Cert(..) => "https.cert",
                    tls::TlsError::Key(..) => "https.key",
                    tls::TlsError::Rustls(..) => "https.cert",
                };
                src.error(&key(k), e.to_string())
            })?;
            Some(HttpsConfig {
                listen: l,
                cert,
                key: keyp,
                tls,
                certs,
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
    let admin_token = match &raw.admin.token {
        Some(t) if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(src.error(
                &key("admin.token"),
                "must be at least 16 printable ASCII characters, no spaces",
            ))
        }
        t => t.clone(),
    };
    // Fail closed: an admin API reachable from the network needs its token (REFERENCE 6).
    if let (Some(a), None) = (admin_listen, &admin_token) {
        if !a.ip().is_loopback() {
            return Err(src.error(
                &key("admin.listen"),
                "not a loopback address: an admin listener reachable from the network \
                 needs admin.token",
            ));
        }
    }

    let backends = super::backends::validate(&raw.backends, src)?;
    if raw.http.header_read_timeout.0.is_zero() {
        return Err(src.error(&key("http.header_read_timeout"), "must be greater than 0"));
    }
    let (session, replication) = super::session::validate(&raw.session, &raw.replication, src)?;
    let mut backends = backends;
    // A session write travels in a response header: what max_session_bytes allows must fit
    // (JSON escaping can double it), with room for the response's other headers.
    backends.max_response_head = 64 * 1024 + 2 * session.max_session_bytes;
    let cluster = super::cluster::validate(&raw.cluster, src)?;
    use crate::proxy::AccessFormat;
    let access = match raw.log.access.as_str() {
        "off" => None,
        "common" => Some(AccessFormat::Common),
        "combined" => Some(AccessFormat::Combined),
        "json" => Some(AccessFormat::Json),
        _ => {
            return Err(src.error(
                &key("log.access"),
                "must be \"off\", \"common\", \"combined\" or \"json\"",
            ))
        }
    };
    if raw.log.access_buffer == 0 {
        return Err(src.error(&key("log.access_buffer"), "must be greater than 0"));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
        return Err(src.error(&key("log.level"), format!("not a log filter: {e}")));
    }
    let log = super::LogConfig {
        level: raw.log.level.clone(),
        access,
        access_path: (!raw.log.access_path.is_empty())
            .then(|| std::path::PathBuf::from(&raw.log.access_path)),
        access_buffer: raw.log.access_buffer,
    };

    let persistence = super::persistence::validate(
        &raw.persistence,
        &jvm_route,
        &raw.cluster.membership.domain,
        src,
    )?;

    Ok(Config {
        log,
        persistence,
        source: None,
        node: NodeConfig {
            jvm_route,
            workers: raw.node.workers,
            shutdown_grace: raw.node.shutdown_grace.0,
            drain_timeout: raw.node.drain_timeout.0,
        },
        http: HttpConfig {
            listen,
            max_connections: raw.http.max_connections,
            header_read_timeout: raw.http.header_read_timeout.0,
            max_header_bytes: raw.http.max_header_bytes,
            max_headers: raw.http.max_headers,
            h2c: raw.http.h2c,
            trusted_proxies: trusted,
            request_id_header,
            upgrades,
        },
        https,
        admin: AdminConfig {
            listen: admin_listen,
            token: admin_token,
        },
        backends,
        session,
        replication,
        jvm_route_binder: raw.jvm_route_binder.enabled,
        cluster,
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "caracal".to_string())
}
