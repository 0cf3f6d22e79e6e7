//! Session hot paths: cookie parse + id split, store access and apply-directives with 1M
//! sessions in the store, and the memory one session costs (printed before the timings).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use serde_json::{json, Map, Value};

use caracal::testing::Metrics;
use caracal::testing::{
    canonical_attrs, parse_id, CookieConfig, Directives, Key, Outcome, SecureMode, SessionLimits,
    SessionStore,
};

const SESSIONS: usize = 1_000_000;

/// About 100 bytes of attributes once rendered.
fn attrs(i: usize) -> Map<String, Value> {
    let v = json!({"user": format!("user{i:08}"), "cart": [1, 2, 3], "visits": i % 1000,
                   "theme": "dark", "locale": "en-US", "pad": "abcdefghijklmnopqrst"});
    v.as_object().cloned().unwrap_or_default()
}

/// A `-Set` as the protocol parser hands it to the store: canonical text.
fn set_text(m: &Map<String, Value>) -> String {
    String::from_utf8(canonical_attrs(m)).unwrap_or_default()
}

fn rss_bytes() -> usize {
    // Second field of statm: resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn filled_store() -> (SessionStore, Vec<String>) {
    let store = SessionStore::new(
        "node1",
        SessionLimits {
            default_max_inactive: Duration::from_secs(1800),
            max_session_bytes: 65536,
            max_active_sessions: 0,
        },
        &Metrics::new(),
    );
    let before = rss_bytes();
    let now = Instant::now();
    let mut ids = Vec::with_capacity(SESSIONS);
    let ids_bytes = SESSIONS * (std::mem::size_of::<String>() + 32);
    for i in 0..SESSIONS {
        let d = Directives {
            set: Some(set_text(&attrs(i))),
            ..Default::default()
        };
        if let Ok(Outcome::Created(full)) = store.apply(None, &d, now, &mut |_| {}) {
            ids.push(full.split('.').next().unwrap_or_default().to_string());
        }
    }
    let after = rss_bytes();
    let rendered = store
        .get(&ids[0])
        .map(|s| serde_json::to_vec(&s.attributes()).map_or(0, |v| v.len()));
    println!(
        "memory: {} sessions, {} B of attributes each (rendered): RSS grew {:.1} MiB = {} B per session \
         (of which ~{} B is this benchmark's own id list)",
        store.len(),
        rendered.unwrap_or(0),
        (after - before) as f64 / (1024.0 * 1024.0),
        (after - before) / SESSIONS,
        ids_bytes / SESSIONS,
    );
    (store, ids)
}

fn bench(c: &mut Criterion) {
    let cookie = CookieConfig {
        name: "JSESSIONID".into(),
        path_param: "jsessionid".into(),
        path: "/".into(),
        secure: SecureMode::Auto,
        same_site: cookie::SameSite::Lax,
        http_only: true,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "cookie",
        HeaderValue::from_static(
            "_ga=GA1.2.1234567890.1234567890; theme=dark; JSESSIONID=0F3A9C0F3A9C0F3A9C0F3A9C0F3A9C0F.node1; lang=en",
        ),
    );
    c.bench_function("cookie parse + id split", |b| {
        b.iter(|| {
            cookie
                .from_cookies(&headers)
                .and_then(parse_id)
                .map(|p| p.base.len())
        })
    });

    let (store, ids) = filled_store();
    let mut i = 0usize;
    c.bench_function("store access (1M sessions)", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            Key::from_base(&ids[i])
                .and_then(|k| store.access(k, Instant::now(), &mut |_| {}))
                .is_some()
        })
    });
    let d = Directives {
        set: Some(set_text(
            json!({"visits": 43}).as_object().unwrap_or(&Map::new()),
        )),
        ..Default::default()
    };
    c.bench_function("store apply Set of one attribute (1M sessions)", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            store
                .apply(Key::from_base(&ids[i]), &d, Instant::now(), &mut |_| {})
                .is_ok()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
