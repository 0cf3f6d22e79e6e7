//! The access log (REFERENCE 6): a line per request in each format, to a file, with the
//! request id the backend saw, the client, method, path, status, bytes, upstream and its
//! time, the total time and the session's base id, never the whole cookie.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn conf(b: &TestBackend, format: &str, path: &Path) -> String {
    format!(
        "[node]\njvm_route = \"l1\"\n[backends]\nservers = [\"{}\"]\n\
         [backends.health]\nenabled = false\n[log]\naccess = \"{format}\"\naccess_path = \"{}\"\n",
        b.url(),
        path.display()
    )
}

/// The log's lines once it has `n` of them.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let l: Vec<String> = text.lines().map(str::to_string).collect();
        if l.len() >= n {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} lines: {text}",
            l.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three requests: a session made, one carrying it (`/headers`: the backend's view, with
/// its request id), and one at a path the backend answers 200 for, with a referer.
async fn traffic(node: &Node) -> (String, String) {
    let made = http(
        node.http,
        reflect("/make", None, &[("x-session-set", r#"{"a":1}"#)]),
    )
    .await;
    let id = set_cookie_id(&made).expect("a session");
    let mut req = get("/headers?x=1");
    req.headers_mut()
        .insert("cookie", format!("JSESSIONID={id}").parse().unwrap());
    let seen = http(node.http, req).await.json();
    let rid = seen["x-request-id"][0].as_str().unwrap().to_string();
    let mut req = get("/plain");
    req.headers_mut()
        .insert("referer", "http://ref.test/p".parse().unwrap());
    req.headers_mut()
        .insert("user-agent", "test-agent/1".parse().unwrap());
    assert_eq!(http(node.http, req).await.status, 200);
    (id, rid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_what_a_request_did() {
    let b = TestBackend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.json");
    let node = Node::start(&conf(&b, "json", &path)).await;
    let (id, rid) = traffic(&node).await;
    let l = lines(&path, 3).await;
    let v: Vec<serde_json::Value> = l
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let base = id.split('.').next().unwrap();
    let with_session = &v[1];
    assert_eq!(with_session["request_id"], rid.as_str());
    assert_eq!(with_session["method"], "GET");
    assert_eq!(with_session["path"], "/headers?x=1");
    assert_eq!(with_session["status"], 200);
    assert_eq!(with_session["client"], "127.0.0.1");
    assert_eq!(with_session["session"], base);
    assert_eq!(with_session["upstream"], b.addr.to_string());
    assert!(with_session["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        with_session["total_ms"].as_f64().unwrap() >= with_session["upstream_ms"].as_f64().unwrap()
    );
    assert!(
        with_session["bytes"].as_u64().unwrap_or(0) > 0,
        "{with_session}"
    );
    assert!(with_session["time"].as_str().unwrap().ends_with('Z'));
    // The cookie's full value (base id and route) is never written.
    let all = l.join("\n");
    assert!(!all.contains(&id), "the whole cookie is in the log");

    // A request the proxy refuses itself (a bad Host): logged with its status and no
    // upstream.
    let mut bad = get("/x");
    bad.headers_mut().insert("host", "a b".parse().unwrap());
    let r = http(node.http, bad).await;
    assert_eq!(r.status, 400);
    let l = lines(&path, 4).await;
    let last: serde_json::Value = serde_json::from_str(&l[3]).unwrap();
    assert_eq!(last["status"], 400);
    assert!(last["upstream"].is_null(), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_and_combined_lines() {
    let b = TestBackend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    for format in ["common", "combined"] {
        let path = dir.path().join(format!("access.{format}"));
        let node = Node::start(&conf(&b, format, &path)).await;
        let (id, rid) = traffic(&node).await;
        let l = lines(&path, 3).await;
        let base = id.split('.').next().unwrap();
        // 127.0.0.1 - - [02/Dec/2026:15:55:36 +0000] "GET /headers?x=1 HTTP/1.1" 200 123 ...
        let line = &l[1];
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.contains("+0000] \"GET /headers?x=1 HTTP/1.1\" 200 "),
            "{line}"
        );
        assert!(line.contains(&format!("rid={rid} ")), "{line}");
        assert!(line.contains(&format!("session={base}")), "{line}");
        assert!(line.contains(&format!("upstream={} ", b.addr)), "{line}");
        assert!(
            !l.join("\n").contains(&id),
            "the whole cookie is in the log"
        );
        let plain = &l[2];
        if format == "combined" {
            assert!(
                plain.contains("\"http://ref.test/p\" \"test-agent/1\""),
                "{plain}"
            );
        } else {
            assert!(!plain.contains("test-agent"), "{plain}");
        }
        assert!(plain.contains("session=-"), "{plain}");
    }
}

#[test]
fn a_bad_access_format_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[node]\njvm_route = \"l1\"\n[backends]\nservers = [\"http://127.0.0.1:9\"]\n\
         [log]\naccess = \"verbose\"\n",
    )
    .unwrap();
    let (code, err) = check_file(&p, &[]);
    assert_eq!(code, 2);
    assert!(err.contains(":6: log.access:"), "{err}");
}
