//! Bad configs exit 2 naming file, line and key, before any socket is opened.

mod common;

use common::*;

fn assert_config_error(conf: &str, extra: &[&str], line: Option<usize>, key: &str, reason: &str) {
    let (code, err, path, _dir) = check_config(conf, extra);
    assert_eq!(code, 2, "exit code for {key}: {err}");
    let loc = match line {
        Some(l) => format!("{}:{l}: {key}:", path.display()),
        None => format!("{}: --set {key}:", path.display()),
    };
    assert!(err.contains(&loc), "expected {loc:?} in: {err}");
    assert!(err.contains(reason), "expected {reason:?} in: {err}");
}

const BASE: &str =
    "[node]\njvm_route = \"n1\"\n[backends]\nservers = [\"http://127.0.0.1:9001\"]\n";

#[test]
fn unknown_key() {
    let conf = format!("{BASE}[backends.health]\npath = \"/h\"\nintervall = \"2s\"\n");
    assert_config_error(
        &conf,
        &[],
        Some(7),
        "backends.health.intervall",
        "unknown field",
    );
}

#[test]
fn unknown_section() {
    let conf = format!("{BASE}[nonsense]\na = 1\n");
    assert_config_error(&conf, &[], Some(5), "nonsense", "unknown field");
}

#[test]
fn bad_duration() {
    let conf = format!("{BASE}connect_timeout = \"5 parsecs\"\n");
    assert_config_error(
        &conf,
        &[],
        Some(5),
        "backends.connect_timeout",
        "invalid duration",
    );
    let conf = format!("{BASE}connect_timeout = 5\n");
    assert_config_error(&conf, &[], Some(5), "backends.connect_timeout", "duration");
}

#[test]
fn bad_backend_url() {
    let conf = "[backends]\nservers = [\n  \"http://127.0.0.1:9001\",\n  { url = \"ftp://files\", weight = 2 },\n]\n";
    assert_config_error(
        conf,
        &[],
        Some(4),
        "backends.servers[1].url",
        "not supported",
    );
    let conf = "[backends]\nservers = [\"http://\"]\n";
    assert_config_error(
        conf,
        &[],
        Some(2),
        "backends.servers[0]",
        "invalid backend URL",
    );
}

#[test]
fn missing_cert_file() {
    let conf = format!(
        "{BASE}[https]\nlisten = [\"127.0.0.1:0\"]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n"
    );
    assert_config_error(&conf, &[], Some(7), "https.cert", "cannot load certificate");
}

#[test]
fn bad_values() {
    let conf = format!("{BASE}algorithm = \"fastest\"\n");
    assert_config_error(
        &conf,
        &[],
        Some(5),
        "backends.algorithm",
        "unknown algorithm",
    );
    let conf =
        "[node]\njvm_route = \"bad route!\"\n[backends]\nservers = [\"http://127.0.0.1:1\"]\n";
    assert_config_error(conf, &[], Some(2), "node.jvm_route", "invalid jvm_route");
    let conf = format!("{BASE}[http]\nlisten = [\"localhost:80\"]\n");
    assert_config_error(
        &conf,
        &[],
        Some(6),
        "http.listen[0]",
        "invalid listen address",
    );
    let conf = "[backends]\nservers = [\"http://a:1\", \"http://a:1\"]\n";
    assert_config_error(conf, &[], Some(2), "backends.servers[1]", "listed twice");
    let conf = format!("{BASE}[replication]\nfilter = '.*\\.(css'\n");
    assert_config_error(
        &conf,
        &[],
        Some(6),
        "replication.filter",
        "not a valid regex",
    );
    let conf = format!("{BASE}[session]\ncookie_secure = \"sometimes\"\n");
    assert_config_error(
        &conf,
        &[],
        Some(6),
        "session.cookie_secure",
        "unknown value",
    );
    let conf = format!("{BASE}[session]\nmax_inactive = \"0s\"\n");
    assert_config_error(
        &conf,
        &[],
        Some(6),
        "session.max_inactive",
        "greater than 0",
    );
    // Checked also while the cluster is off.
    let conf = format!("{BASE}[cluster]\nenabled = false\npartition_handling = \"yolo\"\n");
    assert_config_error(
        &conf,
        &[],
        Some(7),
        "cluster.partition_handling",
        "use \"quorum\" or \"available\"",
    );
    // The lease must end before the members may take the owner's sessions over.
    let conf = format!("{BASE}[cluster]\nenabled = false\nlease = \"5s\"\n");
    assert_config_error(
        &conf,
        &[],
        Some(7),
        "cluster.lease",
        "shorter than drop_time",
    );
}

#[test]
fn toml_syntax_error() {
    let conf = format!("{BASE}[http\n");
    assert_config_error(&conf, &[], Some(5), "(top level)", "TOML syntax error");
}

#[test]
fn overrides_apply_and_are_blamed() {
    assert_config_error(
        BASE,
        &["--set", "backends.retries=lots"],
        None,
        "backends.retries",
        "invalid type",
    );
    let (code, out, _, _d) = check_config(BASE, &["--set", "node.jvm_route=node7"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn shipped_conf_is_valid() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/caracal.toml");
    let (code, err) = check_file(std::path::Path::new(conf), &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_running_node_refuses_a_bad_config_before_binding() {
    // The port stays free: the node exits 2 before opening any socket.
    let port = closed_port();
    let conf = format!(
        "[http]\nlisten = [\"{port}\"]\n[admin]\nlisten = \"\"\n[backends]\nservers = [\"http://127.0.0.1:1\"]\nretries = -1\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, conf).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":7: backends.retries:"), "{err}");
    assert!(std::net::TcpListener::bind(port).is_ok(), "port was bound");
}

/// REFERENCE 4.10: a cluster reachable beyond loopback needs a key (heartbeats) and mutual TLS
/// (the mesh), or an explicit `insecure`.
#[test]
fn a_cluster_beyond_loopback_fails_closed() {
    let open =
        format!("{BASE}[cluster]\nenabled = true\n[cluster.receiver]\naddress = \"0.0.0.0\"\n");
    assert_config_error(
        &open,
        &[],
        Some(8),
        "cluster.receiver.address",
        "needs cluster.key",
    );
    let mcast =
        format!("{BASE}[cluster]\nenabled = true\n[cluster.membership]\nbind = \"10.1.2.3\"\n");
    assert_config_error(
        &mcast,
        &[],
        Some(8),
        "cluster.membership.bind",
        "needs cluster.key",
    );
    // A key covers the heartbeats; the mesh beyond loopback needs TLS as well.
    let keyed_open = format!(
        "{BASE}[cluster]\nenabled = true\nkey = \"a-cluster-secret-0123\"\n\
         [cluster.receiver]\naddress = \"0.0.0.0\"\n"
    );
    assert_config_error(
        &keyed_open,
        &[],
        Some(9),
        "cluster.receiver.address",
        "needs cluster.key and [cluster.tls]",
    );
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), "n1");
    let tls = tls_section(dir.path(), "n1");
    for ok in [
        format!("{keyed_open}{tls}"),
        format!("{BASE}[cluster]\nenabled = true\ninsecure = true\n[cluster.receiver]\naddress = \"0.0.0.0\"\n"),
        format!("{BASE}[cluster]\nenabled = true\nkey = \"a-cluster-secret-0123\"\n[cluster.membership]\nbind = \"10.1.2.3\"\n"),
    ] {
        let (code, err, _, _dir) = check_config(&ok, &[]);
        assert_eq!(code, 0, "{ok}: {err}");
    }
    // The loopback default needs nothing (the demo stays zero-config).
    let (code, err, _, _dir) = check_config(&format!("{BASE}[cluster]\nenabled = true\n"), &[]);
    assert_eq!(code, 0, "{err}");
}

/// `[cluster.tls]`: files are loaded at validation (a bad one names its key), and it needs
/// `[cluster] key` for the heartbeats.
#[test]
fn mesh_tls_is_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), "n1");
    let p = |f: &str| dir.path().join(f).display().to_string();
    let tls = |ca: &str| {
        format!(
            "[cluster.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{ca}\"\n",
            p("n1.pem"),
            p("n1-key.pem")
        )
    };
    let keyed = "[cluster]\nenabled = true\nkey = \"a-cluster-secret-0123\"\n";
    let (code, err, _, _d) = check_config(&format!("{BASE}{keyed}{}", tls(&p("ca.pem"))), &[]);
    assert_eq!(code, 0, "{err}");
    assert_config_error(
        &format!("{BASE}{keyed}{}", tls("/nonexistent/ca.pem")),
        &[],
        Some(11),
        "cluster.tls.ca",
        "cannot load",
    );
    let unkeyed = "[cluster]\nenabled = true\n";
    let (code, err, _, _d) = check_config(&format!("{BASE}{unkeyed}{}", tls(&p("ca.pem"))), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cluster.tls") && err.contains("needs cluster.key"),
        "{err}"
    );
}

/// The mesh's bounds must be bounds: zero is refused, naming the key.
#[test]
fn mesh_bounds_cannot_be_zero() {
    let conf =
        format!("{BASE}[cluster]\nenabled = true\n[cluster.receiver]\nmax_connections = 0\n");
    assert_config_error(
        &conf,
        &[],
        Some(8),
        "cluster.receiver.max_connections",
        "greater than 0",
    );
    let conf = format!(
        "{BASE}[cluster]\nenabled = true\n[cluster.receiver]\nhandshake_timeout = \"0s\"\n"
    );
    assert_config_error(
        &conf,
        &[],
        Some(8),
        "cluster.receiver.handshake_timeout",
        "greater than 0",
    );
    let conf = format!("{BASE}[cluster]\nenabled = true\nmax_queue_bytes = 0\n");
    assert_config_error(
        &conf,
        &[],
        Some(7),
        "cluster.max_queue_bytes",
        "greater than 0",
    );
}

/// A non-loopback admin listener without a token does not start.
#[test]
fn a_non_loopback_admin_needs_a_token() {
    let conf = "[node]\njvm_route = \"a1\"\n[admin]\nlisten = \"0.0.0.0:0\"\n\
                [backends]\nservers = [\"http://127.0.0.1:9\"]\n";
    assert_config_error(conf, &[], Some(4), "admin.listen", "needs admin.token");
    let short = "[node]\njvm_route = \"a1\"\n[admin]\ntoken = \"short\"\n\
                 [backends]\nservers = [\"http://127.0.0.1:9\"]\n";
    assert_config_error(short, &[], Some(4), "admin.token", "at least 16");
}

#[test]
fn dns_membership_needs_a_valid_name_and_refresh() {
    let dns = |extra: &str| {
        format!("{BASE}[cluster]\nenabled = true\n[cluster.membership]\nkind = \"dns\"\n{extra}")
    };
    assert_config_error(
        &dns("name = \"bad name!\"\n"),
        &[],
        Some(9),
        "cluster.membership.name",
        "dns membership needs a DNS name",
    );
    assert_config_error(
        &dns("name = \"peers.example\"\nrefresh = \"10ms\"\n"),
        &[],
        Some(10),
        "cluster.membership.refresh",
        "at least 100ms",
    );
    let (code, err, _, _dir) = check_config(&dns("name = \"caracal-peers\"\n"), &[]);
    assert_eq!(code, 0, "{err}");
}

/// Cluster settings with no `[cluster] enabled` would start a standalone node its operator
/// believes clustered: exit 2 naming the key. An explicit `enabled = false` is a choice.
#[test]
fn cluster_settings_without_enabled_are_refused() {
    let conf = format!(
        "{BASE}[cluster]\nkey = \"a-cluster-key-0123456789\"\n[cluster.membership]\nkind = \"dns\"\nname = \"caracal-peers\"\n"
    );
    assert_config_error(&conf, &[], Some(6), "cluster.key", "the cluster is off");
    let conf = format!("{BASE}[cluster.membership]\nkind = \"dns\"\nname = \"caracal-peers\"\n");
    assert_config_error(
        &conf,
        &[],
        Some(6),
        "cluster.membership.kind",
        "set [cluster] enabled = true",
    );
    // Through an override as well.
    assert_config_error(
        BASE,
        &["--set", "cluster.manager=backup"],
        None,
        "cluster.manager",
        "the cluster is off",
    );
    for enabled in ["true", "false"] {
        let conf = format!(
            "{BASE}[cluster]\nenabled = {enabled}\nkey = \"a-cluster-key-0123456789\"\n[cluster.membership]\nkind = \"static\"\nmembers = [\"127.0.0.1:4001\"]\n"
        );
        let (code, err, _, _dir) = check_config(&conf, &[]);
        assert_eq!(code, 0, "enabled = {enabled}: {err}");
    }
}
