//! Header hygiene on the hot path: a browser-like request through `Hygiene::request`, and a
//! backend response through `Hygiene::response`. Prints ns per call (criterion).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};

use caracal::testing::{Added, ClientInfo, Hygiene};

fn browser_request() -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        (
            "cookie",
            "JSESSIONID=0F3A9C0F3A9C0F3A9C0F3A9C0F3A9C0F.node1; theme=dark",
        ),
        ("upgrade-insecure-requests", "1"),
    ] {
        m.insert(k, HeaderValue::from_static(v));
    }
    m
}

fn bench(c: &mut Criterion) {
    let h = Hygiene::new(
        "X-Session",
        vec!["10.0.0.0/8".parse().unwrap()],
        vec!["websocket".into()],
        Some(http::HeaderName::from_static("x-request-id")),
    );
    let client = ClientInfo::new("192.0.2.10:51234".parse().unwrap(), false);
    let req = browser_request();
    let host = req.get("host").cloned();
    c.bench_function("hygiene/request (8 headers)", |b| {
        b.iter_batched_ref(
            || (req.clone(), Added::with_capacity(7)),
            |(m, added)| h.request(m, added, &client, host.as_ref(), false).upgrade,
            BatchSize::SmallInput,
        )
    });
    let mut forged = browser_request();
    forged.insert("x-session-id", HeaderValue::from_static("forged"));
    forged.insert("x-session", HeaderValue::from_static("{}"));
    c.bench_function("hygiene/request with forged session headers", |b| {
        b.iter_batched_ref(
            || (forged.clone(), Added::with_capacity(7)),
            |(m, added)| h.request(m, added, &client, host.as_ref(), false).upgrade,
            BatchSize::SmallInput,
        )
    });
    let mut resp = HeaderMap::new();
    resp.insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp.insert("content-length", HeaderValue::from_static("5120"));
    resp.insert(
        "date",
        HeaderValue::from_static("Sun, 22 Nov 2026 03:40:18 GMT"),
    );
    resp.insert("keep-alive", HeaderValue::from_static("timeout=20"));
    c.bench_function("hygiene/response (4 headers)", |b| {
        b.iter_batched_ref(
            || resp.clone(),
            |m| h.response(m, false),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
