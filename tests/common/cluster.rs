//! Test clusters: one multicast port per cluster from the OS ([`mcast_port`]), node confs,
//! clusters started and formed ([`start_cluster`], [`three`]), and the mesh-level helpers
//! (a raw replicate, a stranger's identity, certificates).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::{Node, TestBackend};

/// A UDP port for one test cluster's heartbeats, chosen by the OS (a socket bound on
/// port 0 and let go) and never handed out twice in this process, so parallel tests never
/// hear each other. Each cluster also gets its own domain.
pub fn mcast_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = s.local_addr().unwrap().port();
        if GIVEN
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert(port)
        {
            return port;
        }
    }
}

/// A cluster of `routes` in front of one [`TestBackend`], on its own multicast port and
/// `domain`: `cluster` is added to each node's `[cluster]` section, then `edit(route,
/// conf)` makes the node's final conf (`|_, c| c` for none; its last section is
/// `[cluster.receiver]`). Started together; returns once every node lists the others.
pub async fn start_cluster(
    routes: &[&str],
    domain: &str,
    cluster: &str,
    edit: impl Fn(&str, String) -> String,
) -> (TestBackend, Vec<Node>) {
    let b = TestBackend::start("b").await;
    let port = mcast_port();
    let confs: Vec<String> = routes
        .iter()
        .map(|r| edit(r, cluster_node(r, &b.url(), port, domain, cluster)))
        .collect();
    let nodes = Node::start_all(&confs).await;
    wait_formed(&nodes, Duration::from_secs(5)).await;
    (b, nodes)
}

/// A cluster whose members share `[cluster] key = key`, with `[cluster.tls]` from the
/// files `caracal certs` wrote to `tls` when given; `edit` as for [`start_cluster`].
pub async fn keyed_cluster(
    routes: &[&str],
    domain: &str,
    key: &str,
    tls: Option<&std::path::Path>,
    edit: impl Fn(&str, String) -> String,
) -> (TestBackend, Vec<Node>) {
    start_cluster(routes, domain, &format!("key = \"{key}\""), |r, c| {
        let c = match tls {
            Some(dir) => c + &tls_section(dir, r),
            None => c,
        };
        edit(r, c)
    })
    .await
}

/// The multicast port a node's conf names (to send it heartbeats of the test's own).
pub fn mcast_port_of(node: &Node) -> u16 {
    let conf = node.conf_text();
    let membership = conf.split("[cluster.membership]").nth(1).unwrap();
    membership
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// [`start_cluster`] of n1, n2 and n3.
pub async fn three(domain: &str, cluster: &str) -> (TestBackend, Vec<Node>) {
    start_cluster(&["n1", "n2", "n3"], domain, cluster, |_, c| c).await
}

/// A node conf for a cluster test: one backend, fast membership timers, own port/domain.
pub fn cluster_node(
    route: &str,
    backend: &str,
    mcast_port: u16,
    domain: &str,
    extra_cluster: &str,
) -> String {
    format!(
        "[node]\njvm_route = \"{route}\"\nshutdown_grace = \"2s\"\n\
         [backends]\nservers = [\"{backend}\"]\n\
         [cluster]\nenabled = true\n{extra_cluster}\n\
         [cluster.membership]\nport = {mcast_port}\ndomain = \"{domain}\"\nfrequency = \"200ms\"\n\
         drop_time = \"1s\"\nverify_timeout = \"500ms\"\n[cluster.receiver]\nport = 0\n"
    )
}

/// Sends one change to a node's mesh as member `route` would, and waits for its ack.
pub async fn raw_replicate(
    mesh: SocketAddr,
    domain: &str,
    route: &str,
    change: caracal::testing::Change,
) {
    use caracal::testing::State;
    use caracal::testing::{encode_mesh, MeshMessage, NodeInfo};
    use futures_util::{SinkExt, StreamExt};
    let stream = tokio::net::TcpStream::connect(mesh).await.unwrap();
    let mut f = tokio_util::codec::Framed::new(stream, caracal::testing::mesh_codec(1 << 20));
    let me = NodeInfo {
        node_id: 7,
        jvm_route: route.into(),
        mesh_addr: "127.0.0.1:9".parse().unwrap(),
        http_addr: "127.0.0.1:9".parse().unwrap(),
        state: State::Ready,
        alive_ms: 1,
    };
    let hello = MeshMessage::Hello {
        domain: domain.into(),
        from: me,
    };
    f.send(bytes::Bytes::from(encode_mesh(&hello)))
        .await
        .unwrap();
    let msg = MeshMessage::Replicate {
        seq: 1,
        changes: vec![std::sync::Arc::new(change)],
    };
    f.send(bytes::Bytes::from(encode_mesh(&msg))).await.unwrap();
    f.next().await.unwrap().unwrap();
}

/// Waits until every node lists the other `nodes.len() - 1` as members.
pub async fn wait_formed(nodes: &[Node], within: Duration) {
    for node in nodes {
        node.wait_status(within, "cluster formed", |s| {
            s["members"].as_array().map_or(0, |m| m.len()) == nodes.len() - 1
        })
        .await;
    }
}

/// `caracal certs --out dir --nodes nodes`: a cluster CA and a certificate per node.
pub fn write_certs(dir: &std::path::Path, nodes: &str) {
    let (code, err) = super::caracal(&["certs", "--out", dir.to_str().unwrap(), "--nodes", nodes]);
    assert_eq!(code, 0, "{err}");
}

/// A mesh identity of the test's own, for a node that is not in the cluster.
pub fn stranger(route: &str) -> caracal::testing::NodeInfo {
    caracal::testing::NodeInfo {
        node_id: 77,
        jvm_route: route.into(),
        mesh_addr: "127.0.0.1:9".parse().unwrap(),
        http_addr: "127.0.0.1:9".parse().unwrap(),
        state: caracal::testing::State::Ready,
        alive_ms: 1,
    }
}

/// `caracal_mesh_frames_rejected_total{reason}` in a `/metrics` text (0 when absent).
pub fn mesh_rejected(metrics: &str, reason: &str) -> u64 {
    let name = format!("caracal_mesh_frames_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The `[cluster.tls]` section for `node`, with the files `caracal certs` wrote to `dir`.
pub fn tls_section(dir: &std::path::Path, node: &str) -> String {
    let p = |f: String| dir.join(f).display().to_string();
    format!(
        "[cluster.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        p(format!("{node}.pem")),
        p(format!("{node}-key.pem")),
        p("ca.pem".into())
    )
}
