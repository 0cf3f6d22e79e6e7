//! Tests that need a network namespace of their own (root): real packet loss with iptables.
//! For a non-root user, or without `ip` / `iptables`, each test prints why and skips.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A network namespace this test created; deleted on drop.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Option<Netns> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("SKIP: needs root to create a network namespace");
            return None;
        }
        for tool in ["ip", "iptables"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                eprintln!("SKIP: {tool} is not installed");
                return None;
            }
        }
        let name = format!("caracal-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.0];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `GET /status` of a node inside the namespace.
    fn status(&self, admin: std::net::SocketAddr) -> Value {
        let out = self.exec(&[
            "curl",
            "-s",
            "--max-time",
            "2",
            &format!("http://{admin}/status"),
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad /status ({e}): {out}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn member<'a>(s: &'a Value, route: &str) -> Option<&'a Value> {
    s["members"]
        .as_array()?
        .iter()
        .find(|m| m["jvm_route"] == route)
}

fn conf(route: &str, ip: &str, port: u16) -> String {
    format!(
        "[node]\njvm_route = \"{route}\"\nshutdown_grace = \"1s\"\n\
         [http]\nlisten = [\"{ip}:0\"]\n[admin]\nlisten = \"{ip}:0\"\ntoken = \"netns-test-admin-token-0123\"\n\
         [backends]\nservers = [\"http://127.0.0.1:1\"]\n[backends.health]\nenabled = false\n\
         [cluster]\nenabled = true\nkey = \"netns-test-cluster-key\"\n\
         # Heartbeats are what this test is about; the mesh runs plain.\n\
         insecure = true\n\
         # The failure detector alone: the lease's mesh pings would keep n3 heard.\n\
         partition_handling = \"available\"\n[cluster.membership]\nbind = \"{ip}\"\nport = {port}\n\
         domain = \"netns\"\nfrequency = \"200ms\"\ndrop_time = \"1s\"\nverify_timeout = \"500ms\"\n\
         [cluster.receiver]\naddress = \"{ip}\"\nport = 0\n"
    )
}

/// Heartbeats of n3 are really dropped (iptables, by source address) but its mesh answers:
/// n1 and n2 verify it and keep it as a suspect-but-alive member, for several drop_times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_heartbeats_are_dropped_but_whose_mesh_answers_stays() {
    let Some(ns) = Netns::create("hb") else {
        return;
    };
    // The namespace is the test's own; the port comes from the allocator all the same.
    let port = mcast_port();
    let nodes = vec![
        Node::start_in_netns(&conf("n1", "127.0.0.1", port), &ns.0).await,
        Node::start_in_netns(&conf("n2", "127.0.0.2", port), &ns.0).await,
        Node::start_in_netns(&conf("n3", "127.0.0.3", port), &ns.0).await,
    ];
    let deadline = Instant::now() + Duration::from_secs(3);
    while member(&ns.status(nodes[0].admin), "n3").is_none()
        || member(&ns.status(nodes[1].admin), "n3").is_none()
    {
        assert!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Drop every UDP datagram n3 sends (its heartbeats come from 127.0.0.3).
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "-s",
        "127.0.0.3",
        "-j",
        "DROP",
    ]);
    let t = Instant::now();
    let mut saw_suspect = false;
    while t.elapsed() < Duration::from_millis(3500) {
        for n in &nodes[..2] {
            let s = ns.status(n.admin);
            let m = member(&s, "n3")
                .unwrap_or_else(|| panic!("n3 dropped although its mesh answers: {s}"));
            saw_suspect |= m["suspect"] == true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_suspect,
        "heartbeats were not really dropped (n3 never became suspect)"
    );
    let m = member(&ns.status(nodes[0].admin), "n3").unwrap().clone();
    assert!(m["last_heard_ms"].as_u64().unwrap() > 2500, "{m}");
    // Verified alive, never dead.
    let metrics = ns.exec(&["curl", "-s", &format!("http://{}/metrics", nodes[0].admin)]);
    assert!(
        metrics.contains("caracal_member_verifications_total{result=\"alive\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"dead\""), "{metrics}");
    drop(nodes);
}
