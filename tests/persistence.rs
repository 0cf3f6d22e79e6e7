//! Sessions on a node's disk (REFERENCE 4.11), one node at a time: a restart in every mode,
//! damaged files, files that are not this node's, a directory that cannot be used.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use http::StatusCode;

/// A standalone node in front of `b`, keeping its sessions in `dir` in `mode`.
fn conf_in(b: &TestBackend, dir: &Path, mode: &str, extra: &str) -> String {
    conf(
        "p1",
        &[b.url()],
        &format!(
            "[persistence]\nmode = \"{mode}\"\ndir = \"{}\"\nflush_interval = \"100ms\"\n{extra}",
            dir.display()
        ),
    )
}

/// `n` sessions, each created with `{"i": i, "pad": ...}`: their ids.
async fn make(node: &Node, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let set = format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(i % 7 * 10));
        let r = http(node.http, reflect("/", None, &[("x-session-set", &set)])).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        ids.push(set_cookie_id(&r).expect("created"));
    }
    ids
}

fn base(id: &str) -> &str {
    id.split('.').next().unwrap()
}

/// The sessions of `ids` the node holds, with their attribute `i`.
async fn held(node: &Node, ids: &[String]) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            session_info(node.admin, base(id))
                .await
                .map(|s| s["attributes"]["i"].as_i64().unwrap()),
        );
    }
    out
}

async fn persistence(node: &Node) -> serde_json::Value {
    node.status().await["persistence"].clone()
}

/// A restart in each mode keeps every session: a graceful one in `shutdown` mode, a kill
/// -9 in `fsync` mode (at once) and in `async` mode (after a flush). `off` keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_in_every_mode() {
    let b = TestBackend::start("b").await;
    for mode in ["shutdown", "async", "fsync", "off"] {
        let dir = tempfile::tempdir().unwrap();
        let c = conf_in(&b, dir.path(), mode, "");
        let mut node = Node::start(&c).await;
        let ids = make(&node, 30).await;
        // A second write to one: the newest version must come back.
        let r = http(
            node.http,
            reflect(
                "/",
                Some(&format!("JSESSIONID={}", ids[0])),
                &[("x-session-set", r#"{"i":100}"#)],
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        match mode {
            "shutdown" | "off" => {
                node.signal("TERM");
                assert!(node.wait_exit(Duration::from_secs(10)).success());
            }
            "async" => {
                node.wait_status(Duration::from_secs(5), "flushed", |s| {
                    s["persistence"]["unflushed_records"] == 0
                })
                .await;
                node.kill();
            }
            _ => node.kill(),
        }
        let again = Node::start(&c).await;
        let got = held(&again, &ids).await;
        if mode == "off" {
            assert!(got.iter().all(Option::is_none), "off kept {got:?}");
            continue;
        }
        let mut want: Vec<Option<i64>> = (0..30).map(Some).collect();
        want[0] = Some(100);
        assert_eq!(got, want, "{mode}");
        let p = persistence(&again).await;
        assert_eq!(p["loaded"]["sessions"], 30, "{mode}: {p}");
        // The same id goes on where it was: a cookie from before the restart is served.
        let r = http(again.http, count(Some(&ids[1]))).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["n"], 1, "{mode}: {}", r.text());
        // Files: named by the route, mode 0600.
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            use std::os::unix::fs::PermissionsExt;
            let name = f.file_name().to_string_lossy().to_string();
            assert!(name.starts_with("p1."), "{name}");
            let m = f.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o600, "{name}: {m:o}");
        }
    }
}

/// A kill in the middle of a write leaves a torn tail, and a bad disk flips bytes: the node
/// starts, loads every intact record, counts what it skipped, and never loads a damaged
/// one. The next start finds a clean snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_and_damaged_files_load_every_intact_record() {
    let b = TestBackend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let c = conf_in(&b, dir.path(), "fsync", "");
    let mut node = Node::start(&c).await;
    let ids = make(&node, 60).await;
    node.kill();
    let log = dir.path().join("p1.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let len = bytes.len();
    // Damage in the middle: a few bytes flipped, far apart.
    for at in [len / 3, len / 2, 2 * len / 3] {
        bytes[at] ^= 0xA5;
    }
    // A torn tail: the first half of a record.
    let tail = bytes[len - 40..len - 20].to_vec();
    bytes.extend_from_slice(&tail);
    std::fs::write(&log, &bytes).unwrap();

    let node = Node::start(&c).await;
    let p = persistence(&node).await;
    let skipped = p["loaded"]["skipped_records"].as_u64().unwrap();
    assert!((1..=4).contains(&skipped), "{p}");
    let got = held(&node, &ids).await;
    let loaded = got.iter().filter(|g| g.is_some()).count();
    assert!(loaded >= 57, "only {loaded} of 60 loaded: {p}");
    assert_eq!(p["loaded"]["sessions"], loaded as u64, "{p}");
    for (i, g) in got.iter().enumerate() {
        if let Some(v) = g {
            assert_eq!(*v, i as i64, "a damaged record loaded for session {i}");
        }
    }
    let m = http(node.admin, get("/metrics")).await.text();
    assert!(
        m.contains(&format!("caracal_persist_skipped_records_total {skipped}")),
        "{m}"
    );
    // The damage made the node write a snapshot: the next start skips nothing.
    node.wait_status(Duration::from_secs(5), "a snapshot", |s| {
        s["persistence"]["snapshots"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    drop(node);
    let node = Node::start(&c).await;
    let p = persistence(&node).await;
    assert_eq!(p["loaded"]["skipped_records"], 0, "{p}");
    assert_eq!(p["loaded"]["sessions"], loaded as u64, "{p}");
}

/// A directory that is missing, or not a directory; a file of another cluster domain or
/// of a newer format: exit 2 naming `persistence.dir`, before any socket opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_are_not_this_nodes_and_a_bad_dir_exit_2() {
    let b = TestBackend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let (code, err, _, _d) = check_config(&conf_in(&b, &missing, "async", ""), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("persistence.dir"), "{err}");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (code, err, _, _d) = check_config(&conf_in(&b, &file, "async", ""), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a directory"), "{err}");

    // Files of cluster domain "other".
    let other = conf_in(
        &b,
        dir.path(),
        "fsync",
        "[cluster]\nenabled = false\n[cluster.membership]\ndomain = \"other\"\n",
    );
    let mut node = Node::start(&other).await;
    make(&node, 3).await;
    node.kill();
    let ours = conf_in(&b, dir.path(), "fsync", "");
    let (code, err, _, _d) = check_config(&ours, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("persistence.dir") && err.contains("domain \"other\""),
        "{err}"
    );
    // The node refuses to start (before its listeners: nothing is bound).
    let o = ours.clone();
    let (code, err) =
        tokio::task::spawn_blocking(move || Node::run_to_exit(&o, Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(code, Some(2), "{err}");
    // A newer format.
    let log = dir.path().join("p1.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[8] = 0xFF;
    std::fs::write(&log, &bytes).unwrap();
    let (code, err, _, _d) = check_config(&other, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("newer caracal"), "{err}");
    // Never loaded, never overwritten.
    assert_eq!(std::fs::read(&log).unwrap(), bytes);
}

/// A full disk, on a 256 KiB tmpfs mounted in a mount namespace of the test's own (root;
/// skipped otherwise): in `fsync` mode a write that cannot be made durable answers 503
/// with a reason, never a 200; in `async` mode the node serves on from memory, counts the
/// failure, and `/status` says persistence is failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_in_fsync_mode_and_is_shown_in_async_mode() {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let unshare = std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_ok();
    if !root || !unshare {
        eprintln!("SKIP: needs root and unshare (a tmpfs in a mount namespace of its own)");
        return;
    }
    let b = TestBackend::start("b").await;
    for mode in ["fsync", "async"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        // `sh -c SCRIPT BIN ARGS`: BIN and its arguments are $0 and $@.
        let wrap: Vec<String> = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!("mount -t tmpfs -o size=256k tmpfs '{d}' && exec \"$0\" \"$@\""),
        ]
        .map(String::from)
        .to_vec();
        let node = Node::start_wrapped(&conf_in(&b, dir.path(), mode, ""), &wrap).await;
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(8000));
        let mut statuses = Vec::new();
        let mut first_refusal = None;
        for _ in 0..200 {
            let r = http(node.http, reflect("/", None, &[("x-session-set", &big)])).await;
            if r.status != StatusCode::OK && first_refusal.is_none() {
                first_refusal = Some(r.text());
            }
            statuses.push(r.status.as_u16());
        }
        let p = persistence(&node).await;
        assert_eq!(p["failing"], true, "{mode}: {p}");
        assert!(p["write_failures"].as_u64().unwrap() >= 1, "{mode}: {p}");
        let m = http(node.admin, get("/metrics")).await.text();
        assert!(m.contains("caracal_persist_failing 1"), "{m}");
        let page = http(node.admin, get("/")).await.text();
        assert!(
            page.contains("persistence failing"),
            "the cluster page does not say so"
        );
        if mode == "fsync" {
            let first = statuses.iter().position(|s| *s == 503).expect("a 503");
            assert!(
                statuses[first..].iter().all(|s| *s == 503),
                "a 200 after the disk filled: {statuses:?}"
            );
            let text = first_refusal.unwrap_or_default();
            assert!(text.contains("could not be made durable"), "{text}");
            assert!(!text.contains(&d), "the body names the directory: {text}");
            assert!(m.contains("reason=\"not_durable\""), "{m}");
        } else {
            assert!(
                statuses.iter().all(|s| *s == 200),
                "async mode refused a write: {statuses:?}"
            );
        }
    }
}
