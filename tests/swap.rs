//! Idle sessions swapped out of memory (REFERENCE 4.11, `[persistence] swap_after`), on a
//! real node: they leave memory once idle, a request brings each back with its id, owner
//! and data, a write to one lands, a restart keeps them (and swaps the idle ones out again
//! right after the load), and the swap file is private and gone after a stop.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use http::StatusCode;

fn swap_conf(b: &TestBackend, dir: &Path, mode: &str) -> String {
    conf(
        "s1",
        &[b.url()],
        &format!(
            // max_inactive 20s: the sweep (and the swap pass) runs every 5 s.
            "[session]\nmax_inactive = \"20s\"\n\n[persistence]\nmode = \"{mode}\"\ndir = \"{}\"\n\
             flush_interval = \"100ms\"\nswap_after = \"1s\"\n",
            dir.display()
        ),
    )
}

/// The attributes the backend received with a request of session `id`.
async fn attrs_seen(node: &Node, id: &str) -> serde_json::Value {
    let r = http(
        node.http,
        reflect("/", Some(&format!("JSESSIONID={id}")), &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = &r.json()["headers"]["x-session"][0];
    serde_json::from_str(h.as_str().unwrap_or("null")).unwrap_or(serde_json::Value::Null)
}

async fn swapped(node: &Node) -> u64 {
    node.status().await["persistence"]["swapped_sessions"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_leave_memory_and_come_back_on_request() {
    let b = TestBackend::start("b").await;
    for mode in ["shutdown", "async"] {
        let dir = tempfile::tempdir().unwrap();
        let c = swap_conf(&b, dir.path(), mode);
        let mut node = Node::start(&c).await;
        let mut ids = Vec::new();
        for i in 0..20 {
            let set = format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(i * 3));
            let r = http(node.http, reflect("/", None, &[("x-session-set", &set)])).await;
            assert_eq!(r.status, StatusCode::OK);
            ids.push(set_cookie_id(&r).expect("created"));
        }
        node.wait_status(Duration::from_secs(15), "all swapped out", |s| {
            s["persistence"]["swapped_sessions"] == 20
        })
        .await;
        let swap = dir.path().join("s1.swap");
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(&swap).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o600, "{m:o}");
        }
        let st = node.status().await;
        assert_eq!(
            st["sessions"]["total"], 20,
            "swapped sessions still count: {st}"
        );
        // A request brings one back: same id, same data; the cookie is not rewritten.
        let got = attrs_seen(&node, &ids[3]).await;
        assert_eq!(got["i"], 3, "{got}");
        assert_eq!(got["pad"], "x".repeat(9));
        assert_eq!(swapped(&node).await, 19);
        // A write to another swapped one lands on its data.
        let r = http(
            node.http,
            reflect(
                "/",
                Some(&format!("JSESSIONID={}", ids[5])),
                &[("x-session-set", r#"{"w":1}"#)],
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(set_cookie_id(&r), None, "same id, no new cookie");
        let got = attrs_seen(&node, &ids[5]).await;
        assert_eq!(
            (got["i"].as_i64(), got["w"].as_i64()),
            (Some(5), Some(1)),
            "{got}"
        );
        // A restart keeps every session, swapped or not.
        if mode == "shutdown" {
            node.signal("TERM");
            assert!(node.wait_exit(Duration::from_secs(10)).success());
            assert!(!swap.exists(), "the swap file is removed at stop");
        } else {
            node.wait_status(Duration::from_secs(5), "flushed", |s| {
                s["persistence"]["unflushed_records"] == 0
            })
            .await;
            node.kill();
        }
        // Idle past swap_after by the time it starts again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let again = Node::start(&c).await;
        let p = again.status().await["persistence"].clone();
        assert_eq!(p["loaded"]["sessions"], 20, "{mode}: {p}");
        // The first pass, as the node starts, takes the ones idle past swap_after.
        again
            .wait_status(Duration::from_secs(5), "swapped after the load", |s| {
                s["sessions"]["swapped"].as_u64().unwrap_or(0) >= 18
            })
            .await;
        assert!(
            again
                .wait_log(
                    "loaded sessions idle past swap_after swapped out",
                    Duration::from_secs(5)
                )
                .await
        );
        for (i, id) in ids.iter().enumerate() {
            let got = attrs_seen(&again, id).await;
            assert_eq!(got["i"].as_u64(), Some(i as u64), "{mode}: {id}: {got}");
        }
        assert_eq!(attrs_seen(&again, &ids[5]).await["w"], 1, "{mode}");
    }
}

#[test]
fn swap_after_without_a_mode_exits_2_naming_the_key() {
    let (code, out, ..) = check_config(
        "[node]\njvm_route = \"s1\"\n[backends]\nservers = [\"http://127.0.0.1:1\"]\n\
         [persistence]\nswap_after = \"10m\"\n",
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(":6: persistence.swap_after"), "{out}");
}
