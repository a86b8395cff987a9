//! The filter's link to the real score cache (`signalbox-cache`, embedded store) in real Envoy
//! with two workers: one worker follows the decision stream and publishes the set in shared
//! data; every worker applies it to every request without a call. A manual ban blocks within
//! about one poll interval on every worker, an `allow` for a user beats the IP's ban, lifting
//! the ban lets the client through again, and with the cache stopped the last set keeps
//! applying while traffic flows.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signalbox_tests::envoy::{Envoy, Options};
use signalbox_tests::http::{Response, send};
use signalbox_tests::root;
use signalbox_tests::score_cache::{ADMIN_TOKEN, EDGE_TOKEN, ScoreCache};

const GIO_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
/// The leader polls this often; workers look for a new set four times as often.
const POLL_MS: u64 = 400;

fn work(name: &str) -> PathBuf {
    let dir = root().join("target/e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The golden bundle as JSON, for the cache's own scoring.
fn golden_json(dir: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("tests/scenarios/bundles/golden.yaml")).unwrap();
    let value: Value = serde_norway::from_str(&text).unwrap();
    let path = dir.join("cache-bundle.json");
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

fn start_envoy(dir: &std::path::Path, cache_port: u16) -> Envoy {
    let extra = json!({
        "score_cache": {"cluster": "signalbox_cache", "decisions_poll_ms": POLL_MS},
        "edge_headers": {"trusted": true, "user": "x-signalbox-edge-user"},
    });
    Envoy::start(&Options {
        bundle: root().join("tests/scenarios/bundles/golden.yaml"),
        out: dir.join("envoy"),
        plugin_extra: extra.to_string(),
        concurrency: 2,
        cache_port: Some(cache_port),
        env: vec![("SIGNALBOX_CACHE_TOKEN".to_owned(), EDGE_TOKEN.to_owned())],
    })
    .unwrap()
}

/// Giovanni's browser from `ip` (the lab listener takes the address from x-forwarded-for),
/// signed in as `user` when given. One connection per request, so both workers serve them.
fn gio(envoy: &Envoy, ip: &str, user: Option<&str>) -> Response {
    let mut headers: Vec<(String, Vec<u8>)> = [
        ("host", "shop.example"),
        ("x-forwarded-for", ip),
        ("user-agent", GIO_UA),
        ("accept", "text/html,*/*;q=0.8"),
        ("accept-language", "fr-CH, fr;q=0.9, en;q=0.8"),
        ("accept-encoding", "gzip"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "none"),
        ("sec-fetch-dest", "document"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
    .collect();
    if let Some(u) = user {
        headers.push(("x-signalbox-edge-user".to_owned(), u.as_bytes().to_vec()));
    }
    send(envoy.ports.lab, "GET", "/", &headers, b"").unwrap()
}

fn decision_of(r: &Response) -> String {
    let v: Value = serde_json::from_str(
        &r.header("x-signalbox-verdict")
            .unwrap_or_else(|| panic!("no verdict header: {r:?}")),
    )
    .unwrap();
    v["decision"].as_str().unwrap_or_default().to_owned()
}

/// Sends `n` requests (each on its own connection) and says how many got `decision`.
fn count(envoy: &Envoy, ip: &str, user: Option<&str>, n: usize, decision: &str) -> usize {
    (0..n)
        .filter(|_| decision_of(&gio(envoy, ip, user)) == decision)
        .count()
}

/// Waits until 20 requests in a row get `decision`; the time it took.
fn until_all(
    envoy: &Envoy,
    ip: &str,
    user: Option<&str>,
    decision: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if count(envoy, ip, user, 20, decision) == 20 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{ip}: not every request got {decision} within {limit:?}\n{}",
            envoy.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn manual_decisions_reach_every_worker_without_a_call() {
    let dir = work("cache-link-decisions");
    let mut cache = ScoreCache::start(&dir.join("cache"), &golden_json(&dir)).unwrap();
    let envoy = start_envoy(&dir, cache.port);
    let ip = "203.0.113.50";
    assert_eq!(count(&envoy, ip, None, 10, "pass"), 10);

    // A ban on the IP: blocked on both workers within about one poll interval.
    let (status, added) = cache
        .call(
            "POST",
            "/v1/decisions",
            ADMIN_TOKEN,
            Some(&json!({"action": "ban", "scope": "ip", "key": ip, "duration_seconds": 3600, "reason": "card testing"})),
        )
        .unwrap();
    assert_eq!(status, 201, "{added}");
    let ban_id = added["decision"]["id"].as_str().unwrap().to_owned();
    let took = until_all(
        &envoy,
        ip,
        None,
        "block",
        Duration::from_millis(POLL_MS * 5),
    );
    println!("ban -> every request blocked in {took:?} (poll interval {POLL_MS} ms)");
    // Decided by the local copy, not by a context lookup.
    let v: Value =
        serde_json::from_str(&gio(&envoy, ip, None).header("x-signalbox-verdict").unwrap())
            .unwrap();
    println!("{v}");
    assert_ne!(v["remote"], "used", "{v}");
    // Another address in the same /24 is not banned; a range ban covers it.
    assert_eq!(count(&envoy, "203.0.113.51", None, 5, "pass"), 5);

    // An allow for Giovanni's user key beats the IP's ban.
    let (status, _) = cache
        .call(
            "POST",
            "/v1/decisions",
            ADMIN_TOKEN,
            Some(&json!({"action": "allow", "scope": "user", "key": "gio", "duration_seconds": 3600})),
        )
        .unwrap();
    assert_eq!(status, 201);
    until_all(
        &envoy,
        ip,
        Some("gio"),
        "pass",
        Duration::from_millis(POLL_MS * 5),
    );
    assert_eq!(
        count(&envoy, ip, Some("cam"), 5, "block"),
        5,
        "only gio is allowed"
    );

    // A range challenge for the /24: the other address is challenged, the banned one still
    // blocked (its own decision is more specific).
    let (status, _) = cache
        .call(
            "POST",
            "/v1/decisions",
            ADMIN_TOKEN,
            Some(&json!({"action": "challenge", "scope": "range", "key": "203.0.113.0/24", "duration_seconds": 3600})),
        )
        .unwrap();
    assert_eq!(status, 201);
    until_all(
        &envoy,
        "203.0.113.51",
        None,
        "challenge",
        Duration::from_millis(POLL_MS * 5),
    );
    assert_eq!(count(&envoy, ip, None, 5, "block"), 5);

    // The cache goes away: the last set keeps applying and traffic flows.
    cache.stop();
    std::thread::sleep(Duration::from_millis(POLL_MS * 2));
    assert_eq!(count(&envoy, ip, None, 10, "block"), 10);
    assert_eq!(count(&envoy, "198.51.100.9", None, 10, "pass"), 10);

    // Back, the ban lifted: the client passes again.
    cache.restart().unwrap();
    let (status, _) = cache
        .call(
            "DELETE",
            &format!("/v1/decisions/{ban_id}"),
            ADMIN_TOKEN,
            None,
        )
        .unwrap();
    assert_eq!(status, 200);
    let took = until_all(
        &envoy,
        ip,
        None,
        "challenge",
        Duration::from_millis(POLL_MS * 10),
    );
    println!("lifted -> the range's challenge applies again in {took:?}");
    let stats = envoy.stats().unwrap();
    assert!(
        stats.contains("signalbox.decisions.stream_failures"),
        "the outage was counted:\n{stats}"
    );
}
