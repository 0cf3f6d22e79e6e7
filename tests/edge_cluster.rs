//! The edge between members: the hop marker a member sends with a
//! forward carries the client's scheme (so the owner sets `Secure` for a TLS client), and
//! with a `[cluster] key` it is signed, so a process on a member's address cannot forge it.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

const KEY: &str =
    "key = \"an-edge-test-cluster-key-0123456789\"\npartition_handling = \"available\"";

/// n1 and n2 with `cluster` settings, `n1_extra` added to n1's conf.
async fn pair(domain: &str, cluster: &str, n1_extra: &str) -> (TestBackend, Node, Node) {
    let (b, mut nodes) = start_cluster(&["n1", "n2"], domain, cluster, |r, c| {
        if r == "n1" {
            c + n1_extra
        } else {
            c
        }
    })
    .await;
    let n2 = nodes.pop().unwrap();
    let n1 = nodes.pop().unwrap();
    (b, n1, n2)
}

fn headers_of(r: &Resp) -> serde_json::Value {
    r.json()["headers"].clone()
}

/// with a key, an unsigned marker from a member's own IP (loopback here) is not
/// a member's: the client's X-Forwarded-For is replaced and `2 n2` does not force a 503.
/// A real forward, signed, still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_only_a_signed_hop_marker_is_trusted() {
    let (_b, n1, n2) = pair("edge-hop", KEY, "").await;
    let forged = |marker: &str, cookie: Option<&str>| {
        let mut r = reflect("/h", cookie, &[]);
        r.headers_mut()
            .insert("x-caracal-hop", marker.parse().unwrap());
        r.headers_mut()
            .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        r
    };
    let r = http(n1.http, forged("1 n2 http", None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        headers_of(&r)["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
    assert!(headers_of(&r).get("x-caracal-hop").is_none());

    // A session n2 owns, asked for at n1 with a forged "2 hops" marker: forwarded anyway.
    let made = http(n2.http, get("/count")).await;
    let id = set_cookie_id(&made).expect("session");
    let cookie = format!("JSESSIONID={id}");
    let r = http(n1.http, forged("2 n2 http", Some(&cookie))).await;
    assert_eq!(r.status, 200, "a forged marker forced {}", r.text());
    // The client, then n1 (n2 appended the peer it got the forward from).
    let chain = serde_json::json!(["127.0.0.1, 127.0.0.1"]);
    assert_eq!(headers_of(&r)["x-forwarded-for"], chain);
    assert_eq!(headers_of(&r)["x-session-node"], serde_json::json!(["n2"]));

    // The real forward: n1 to n2, signed with the key; n2 trusted it (its XFF chain is
    // the one n1 set, and no marker reached the backend).
    let mut req = reflect("/h", Some(&cookie), &[]);
    req.headers_mut()
        .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    let r = http(n1.http, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(headers_of(&r)["x-session-node"], serde_json::json!(["n2"]));
    assert_eq!(headers_of(&r)["x-forwarded-for"], chain);
}

/// a TLS client at n1 whose session n2 owns gets `Secure` on the cookie n2 sets
/// (a renew here); the owner reads the scheme from the marker, not its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_scheme_travels_with_a_forward() {
    let (ck, https, _dir) = self_signed_https("");
    for (i, cluster) in [(1, "partition_handling = \"available\""), (2, KEY)] {
        let (_b, n1, n2) = pair(&format!("edge-secure-{i}"), cluster, &https).await;
        let made = http(n2.http, get("/count")).await;
        let id = set_cookie_id(&made).expect("session");

        let req = http::Request::get("/renew")
            .header("host", "localhost")
            .header("x-reflect", "1")
            .header("x-reply-x-session-renew", "true")
            .header("cookie", format!("JSESSIONID={id}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = https_http1(n1.https.expect("https"), ck.cert.der().to_vec(), req).await;
        assert_eq!(resp.status, 200);
        let set: Vec<String> = resp
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let seen = resp.json();
        assert_eq!(
            seen["headers"]["x-session-node"],
            serde_json::json!(["n2"]),
            "forwarded"
        );
        assert_eq!(
            seen["headers"]["x-forwarded-proto"],
            serde_json::json!(["https"])
        );
        let renewed = set
            .iter()
            .find(|c| c.starts_with("JSESSIONID="))
            .expect("renewed cookie");
        assert!(
            renewed.ends_with(".n2") || renewed.contains(".n2;"),
            "{renewed}"
        );
        assert!(renewed.contains("Secure"), "{cluster}: {renewed}");
    }
}
