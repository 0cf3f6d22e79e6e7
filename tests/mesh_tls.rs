//! Mutual TLS on the mesh (REFERENCE 4.10), with certificates from `caracal certs`: the
//! members replicate over it; plaintext, a certificate of another CA, and a member's
//! certificate used to speak for another route are all refused and counted.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use caracal::testing::{encode_mesh, MeshMessage};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;

const KEY: &str = "mesh-tls-test-secret-0123";

fn certs(dir: &Path, nodes: &str) {
    write_certs(dir, nodes);
    for n in nodes.split(',') {
        assert!(dir.join(format!("{n}.pem")).exists() && dir.join(format!("{n}-key.pem")).exists());
    }
    assert!(dir.join("ca.pem").exists());
}

/// A TLS client with `node`'s certificate from `dir`, sending a ping as `route`: the
/// answer, if any.
async fn ping_over_tls(
    mesh: SocketAddr,
    dir: &Path,
    node: &str,
    route: &str,
) -> Option<MeshMessage> {
    pings_over_tls(mesh, dir, node, &[route]).await.pop()
}

/// Pings as each of `routes` in turn on one TLS connection; the answers until it closes.
async fn pings_over_tls(
    mesh: SocketAddr,
    dir: &Path,
    node: &str,
    routes: &[&str],
) -> Vec<MeshMessage> {
    let tls = caracal::testing::mesh_tls(
        &dir.join(format!("{node}.pem")),
        &dir.join(format!("{node}-key.pem")),
        &dir.join("ca.pem"),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(mesh).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(caracal::testing::MESH_NAME).unwrap();
    let mut answers = Vec::new();
    let Ok(s) = tokio_rustls::TlsConnector::from(tls.client)
        .connect(name, tcp)
        .await
    else {
        return answers;
    };
    let mut f = Framed::new(s, caracal::testing::mesh_codec(1 << 20));
    let key = caracal::testing::ClusterKey::new(KEY.as_bytes());
    for route in routes {
        let ping = MeshMessage::Ping {
            domain: "tls".into(),
            from: stranger(route),
        };
        let sealed = caracal::testing::seal_mesh(&ping, Some(&key));
        if f.send(Bytes::from(sealed)).await.is_err() {
            break;
        }
        let answer = match tokio::time::timeout(Duration::from_secs(3), f.next()).await {
            Ok(Some(Ok(frame))) => caracal::testing::open_mesh(&frame, Some(&key)).ok(),
            _ => None,
        };
        match answer {
            Some(a) => answers.push(a),
            None => break,
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_is_mutual_tls_with_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "n1,n2,n3");
    let other = tempfile::tempdir().unwrap();
    certs(other.path(), "n3");
    let (b, nodes) = keyed_cluster(&["n1", "n2"], "tls", KEY, Some(dir.path()), |_, c| c).await;
    // Replication (sync) runs over TLS.
    let r = http(
        nodes[0].http,
        reflect("/", None, &[("x-session-set", r#"{"over":"tls"}"#)]),
    )
    .await;
    let id = set_cookie_id(&r).expect("a session");
    let base = id.split('.').next().unwrap().to_string();
    let s = session_info(nodes[1].admin, &base)
        .await
        .expect("replicated");
    assert_eq!(s["attributes"]["over"], "tls");

    let mesh: SocketAddr = nodes[0].status().await["node"]["mesh_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // Plaintext: a ping frame gets no answer, the connection closes.
    let mut c = tokio::net::TcpStream::connect(mesh).await.unwrap();
    let ping = MeshMessage::Ping {
        domain: "tls".into(),
        from: stranger("n3"),
    };
    let frame = encode_mesh(&ping);
    c.write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    c.write_all(&frame).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut got))
        .await
        .expect("plaintext left open");
    // At most a TLS alert record (content type 21), never a mesh frame.
    assert!(
        got.is_empty() || got[0] == 21,
        "plaintext was answered: {got:?}"
    );
    // A certificate of another CA: no handshake.
    assert!(ping_over_tls(mesh, other.path(), "n3", "n3")
        .await
        .is_none());
    // The cluster's n3 certificate speaking as n3: answered.
    assert!(matches!(
        ping_over_tls(mesh, dir.path(), "n3", "n3").await,
        Some(MeshMessage::Pong { .. })
    ));
    // The same certificate speaking as n2: refused, also after a first ping as itself.
    assert!(ping_over_tls(mesh, dir.path(), "n3", "n2").await.is_none());
    let answers = pings_over_tls(mesh, dir.path(), "n3", &["n3", "n2"]).await;
    assert_eq!(
        answers.len(),
        1,
        "a second ping as another route was answered"
    );

    let m = http(nodes[0].admin, get("/metrics")).await.text();
    assert!(mesh_rejected(&m, "tls") >= 2, "{m}");
    assert!(mesh_rejected(&m, "route") >= 1, "{m}");

    // A node with the key but another CA's certificate: its heartbeats are heard, it is
    // never admitted (a member joins by a ping over TLS, not by a heartbeat).
    let port = mcast_port_of(&nodes[0]);
    let c = cluster_node("n3", &b.url(), port, "tls", &format!("key = \"{KEY}\""));
    let outsider = Node::start(&format!("{c}{}", tls_section(other.path(), "n3"))).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = http(nodes[0].admin, get("/metrics")).await.text();
        if m.contains("caracal_heartbeats_rejected_total{reason=\"not_admitted\"}") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "n3 not refused: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let members = nodes[0].status().await["members"].clone();
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
    drop(outsider);
}

#[test]
fn certs_refuses_a_name_that_cannot_be_a_san() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--nodes", "n1,bad name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a DNS name"));
}

/// A forwarding marker as a member signs it (proxy::hop), minted here with the cluster key:
/// what a process that sniffed or holds the key could send to a client listener.
fn signed_marker(fields: &str, method: &str, target: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let fields = format!("{fields} {ms}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    let data = format!("caracal-hop\n{fields}\n{method} {target}");
    let tag = ring::hmac::sign(&key, data.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{fields} {hex}")
}

/// REFERENCE 4.10: with `[cluster.tls]` a forward travels over a mesh channel (mutual TLS),
/// never to the owner's client listener, and a marker on a client listener counts for
/// nothing, even one signed with the cluster key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_forwards_go_over_mesh_channels_only() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), "n1,n2");
    // n2 announces an HTTP address nobody listens on: a forward that went there instead of
    // over the mesh would fail.
    let (_b, nodes) = keyed_cluster(&["n1", "n2"], "tls-fwd", KEY, Some(dir.path()), |r, c| {
        if r == "n2" {
            c.replace(
                "[cluster]\n",
                "[cluster]\nadvertise_http = \"127.0.0.1:1\"\n",
            )
        } else {
            c
        }
    })
    .await;
    let (n1, n2) = (&nodes[0], &nodes[1]);

    let made = http(n2.http, get("/count")).await;
    let id = set_cookie_id(&made).expect("session");
    assert!(id.ends_with(".n2"), "{id}");
    let cookie = format!("JSESSIONID={id}");
    // Several forwards (a POST with a body among them) reuse the channel.
    for i in 0..5 {
        let mut req = reflect("/h", Some(&cookie), &[]);
        req.headers_mut()
            .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        let r = http(n1.http, req).await;
        assert_eq!(r.status, 200, "forward {i}: {}", r.text());
        let seen = r.json()["headers"].clone();
        assert_eq!(seen["x-session-node"], serde_json::json!(["n2"]));
        // n2 trusted n1's marker on the channel: the chain is n1's (client, then n1).
        assert_eq!(
            seen["x-forwarded-for"],
            serde_json::json!(["127.0.0.1, 127.0.0.1"])
        );
    }
    let mut post = with_body("POST", "/echo", pattern(100_000));
    post.headers_mut().insert("cookie", cookie.parse().unwrap());
    let r = http(n1.http, post).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), 100_000);
    assert!(r.body[..] == pattern(100_000)[..], "echoed body differs");

    // On n2's client listener, n1's marker (signed with the key, fresh, for this very
    // request) is a client's header: dropped, the client's X-Forwarded-For replaced.
    let mut req = reflect("/h", Some(&cookie), &[]);
    let marker = signed_marker("1 n1 https", "GET", "/h");
    req.headers_mut()
        .insert("x-caracal-hop", marker.parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    let r = http(n2.http, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["headers"].clone();
    assert_eq!(seen["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["http"]));
    assert!(seen.get("x-caracal-hop").is_none());
}
