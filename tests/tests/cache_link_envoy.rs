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
use signalbox_tests::score_cache::{ADMIN_TOKEN, EDGE_TOKEN, ScoreCache, SlowRelay};

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
    signalbox_tests::score_cache::golden_json(dir, |_| {}).unwrap()
}

/// The key records hash addresses with (base64 of 32 bytes).
const RECORD_KEY: &str = "cmVjb3JkIGtleSBmb3IgdGhlIGVuZC10by1lbmQgdGVzdHM=";

fn start_envoy(dir: &std::path::Path, cache_port: u16) -> Envoy {
    // No sampled passes in the log: the outage's buffer of 50 must hold only the blocks the test
    // counts (by default a worker records its 1st, 101st, ... pass, and which worker sees how
    // many passes varies run to run: one in the buffer made it hold 49 blocks).
    let extra = json!({
        "score_cache": {"cluster": "signalbox_cache", "decisions_poll_ms": POLL_MS, "decision_log": {"flush_ms": 200, "max_buffered": 50, "pass_sample_percent": 0}},
        "edge_headers": {"trusted": true, "user": "x-signalbox-edge-user"},
    });
    Envoy::start(&Options {
        bundle: root().join("tests/scenarios/bundles/golden.yaml"),
        out: dir.join("envoy"),
        plugin_extra: extra.to_string(),
        concurrency: 2,
        cache_port: Some(cache_port),
        env: vec![
            ("SIGNALBOX_CACHE_TOKEN".to_owned(), EDGE_TOKEN.to_owned()),
            ("SIGNALBOX_RECORD_KEY".to_owned(), RECORD_KEY.to_owned()),
        ],
    })
    .unwrap()
}

/// How many records with `decision` the decision log holds.
fn logged_total(cache: &ScoreCache, decision: &str) -> usize {
    let (status, page) = cache
        .call(
            "GET",
            &format!("/v1/decisions/log?decision={decision}&limit=1"),
            ADMIN_TOKEN,
            None,
        )
        .unwrap();
    assert_eq!(status, 200, "{page}");
    page["total"].as_u64().unwrap_or(0) as usize
}

/// The decision log's records with `decision` (the newest 200).
fn logged(cache: &ScoreCache, decision: &str) -> Vec<Value> {
    let (status, page) = cache
        .call(
            "GET",
            &format!("/v1/decisions/log?decision={decision}&limit=200"),
            ADMIN_TOKEN,
            None,
        )
        .unwrap();
    assert_eq!(status, 200, "{page}");
    page["records"].as_array().cloned().unwrap_or_default()
}

/// Waits until the log holds at least `n` records with `decision` (counted by the log's
/// `total`, not by one page, which holds at most 200), then returns the newest page.
fn until_logged(cache: &ScoreCache, decision: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let total = logged_total(cache, decision);
        if total >= n {
            return logged(cache, decision);
        }
        // A deadline for a loaded CI machine, not a timing goal.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{total} of {n} {decision} records"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    // The blocks reach the cache's decision log as records: hashed address, its lists, the
    // revision, and the facts a replay needs; never the address itself.
    let records = until_logged(&cache, "block", 20);
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(ip), "a raw address in the log: {text}");
    let r = &records[0];
    assert_eq!(
        (r["revision"].as_u64(), r["client"].as_str()),
        (Some(7), Some("browser")),
        "{r}"
    );
    assert_eq!(r["ip_hash"].as_str().map(str::len), Some(32), "{r}");
    assert!(
        r["facts"]["headers"]["user-agent"].as_str().is_some(),
        "{r}"
    );
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

    // The cache goes away: the last set keeps applying and traffic flows; the edge keeps the
    // records it cannot ship.
    std::thread::sleep(Duration::from_millis(500));
    let blocked_logged = logged_total(&cache, "block");
    cache.stop();
    std::thread::sleep(Duration::from_millis(POLL_MS * 2));
    assert_eq!(count(&envoy, ip, None, 80, "block"), 80);
    assert_eq!(count(&envoy, "198.51.100.9", None, 10, "pass"), 10);

    let blocked_before_outage = blocked_logged;
    // Back, the ban lifted: the client passes again.
    cache.restart().unwrap();
    // 80 blocks in the outage, a buffer of 50: the kept 50 arrive, never more, and at least
    // 30 were dropped and counted.
    until_logged(&cache, "block", blocked_before_outage + 50);
    std::thread::sleep(Duration::from_millis(600));
    let after = logged_total(&cache, "block");
    println!("{after} block records after the outage ({blocked_before_outage} before it)");
    assert!(
        after <= blocked_before_outage + 50,
        "{after}: the buffer is bounded"
    );
    let dropped: u64 = envoy
        .stats()
        .unwrap()
        .lines()
        .find_map(|l| {
            l.split_once("signalbox.decision_log.dropped: ")
                .map(|(_, v)| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    assert!(dropped >= 30, "dropped {dropped}");
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

/// `target/debug/signalbox` with `args`; its stdout.
fn signalbox(args: &[&str]) -> String {
    let out = std::process::Command::new(root().join("target/debug/signalbox"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "signalbox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The golden bundle at `revision`, built, stamped to expire in a day and signed with `key`.
fn signed_golden(dir: &std::path::Path, revision: u64, key: &std::path::Path) -> Vec<u8> {
    let text = std::fs::read_to_string(root().join("tests/scenarios/bundles/golden.yaml")).unwrap();
    let mut value: Value = serde_norway::from_str(&text).unwrap();
    value["revision"] = json!(revision);
    let expires = std::process::Command::new("date")
        .args(["-u", "-d", "+1 day", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    let expires = String::from_utf8(expires.stdout).unwrap().trim().to_owned();
    value["expires_at"] = json!(expires);
    let plain = dir.join(format!("bundle-{revision}.json"));
    std::fs::write(&plain, value.to_string()).unwrap();
    let built = dir.join(format!("bundle-{revision}.built.json"));
    signalbox(&[
        "policy",
        "build",
        plain.to_str().unwrap(),
        "-o",
        built.to_str().unwrap(),
    ]);
    let signed = dir.join(format!("bundle-{revision}.signed.json"));
    signalbox(&[
        "policy",
        "sign",
        built.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-o",
        signed.to_str().unwrap(),
    ]);
    std::fs::read(signed).unwrap()
}

fn revision_of(r: &Response) -> String {
    let v: Value = serde_json::from_str(&r.header("x-signalbox-verdict").unwrap()).unwrap();
    v["revision"].as_str().unwrap_or_default().to_owned()
}

/// Waits until 20 requests in a row are decided by `revision`.
fn until_revision(envoy: &Envoy, revision: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if (0..20).all(|_| revision_of(&gio(envoy, "198.51.100.20", None)) == revision) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "revision {revision} not served within {limit:?}\n{}",
            envoy.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pushed_bundle_reaches_every_worker_and_a_refused_one_changes_nothing() {
    let dir = work("cache-link-bundles");
    let envoy_dir = dir.join("envoy");
    std::fs::create_dir_all(&envoy_dir).unwrap();
    // The key Envoy's inline bundle is signed with (scripts/envoy-config reuses it), and a
    // second key only the cache trusts: a bundle signed with it passes the cache, not the edge.
    let edge_key = envoy_dir.join("bundle-signing.secret");
    let edge_keys = envoy_dir.join("trusted-keys.json");
    signalbox(&[
        "policy",
        "keygen",
        "--kid",
        "demo",
        "--secret-out",
        edge_key.to_str().unwrap(),
        "--public-out",
        edge_keys.to_str().unwrap(),
    ]);
    let other_key = dir.join("other.secret");
    let other_keys = dir.join("other-keys.json");
    signalbox(&[
        "policy",
        "keygen",
        "--kid",
        "other",
        "--secret-out",
        other_key.to_str().unwrap(),
        "--public-out",
        other_keys.to_str().unwrap(),
    ]);
    let read = |p: &std::path::Path| -> Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut both = read(&edge_keys);
    both["keys"]
        .as_array_mut()
        .unwrap()
        .extend(read(&other_keys)["keys"].as_array().unwrap().clone());
    let cache_keys = dir.join("cache-keys.json");
    std::fs::write(&cache_keys, both.to_string()).unwrap();

    let cache = ScoreCache::start_with(
        &dir.join("cache"),
        &golden_json(&dir),
        &[
            "--trusted-keys".to_owned(),
            cache_keys.display().to_string(),
        ],
    )
    .unwrap();
    let extra = json!({
        "score_cache": {"cluster": "signalbox_cache", "decisions_poll_ms": POLL_MS, "bundle_poll_ms": POLL_MS, "node_id": "edge-test"},
    });
    let envoy = Envoy::start(&Options {
        bundle: root().join("tests/scenarios/bundles/golden.yaml"),
        out: envoy_dir.clone(),
        plugin_extra: extra.to_string(),
        concurrency: 2,
        cache_port: Some(cache.port),
        env: vec![
            ("SIGNALBOX_CACHE_TOKEN".to_owned(), EDGE_TOKEN.to_owned()),
            ("SIGNALBOX_CANARY_KEY".to_owned(), CANARY_KEY.to_owned()),
        ],
    })
    .unwrap();
    until_revision(&envoy, "7", Duration::from_secs(2));

    // Revision 8, pushed: every worker serves it, and the fleet says so.
    let (status, answer) = cache
        .call_raw(
            "PUT",
            "/v1/bundle",
            ADMIN_TOKEN,
            Some(&signed_golden(&dir, 8, &edge_key)),
        )
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let took = until_revision(&envoy, "8", Duration::from_millis(POLL_MS * 10));
    println!("push -> every request decided by revision 8 in {took:?} (bundle poll {POLL_MS} ms)");
    let fleet = || {
        let (status, fleet) = cache.call("GET", "/v1/fleet", ADMIN_TOKEN, None).unwrap();
        assert_eq!(status, 200, "{fleet}");
        fleet["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| {
                n["node_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("edge-test/"))
            })
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet().is_none_or(|n| n["stable_revision"] != 8) {
        assert!(Instant::now() < deadline, "{:?}", fleet());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Revision 9, signed with a key the cache trusts and the edge does not: refused at the
    // edge, revision 8 keeps serving, and the fleet shows why.
    let (status, answer) = cache
        .call_raw(
            "PUT",
            "/v1/bundle",
            ADMIN_TOKEN,
            Some(&signed_golden(&dir, 9, &other_key)),
        )
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let node = fleet().unwrap();
        if node["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused"))
        {
            assert_eq!(node["stable_revision"], 8, "{node}");
            println!("fleet: {node}");
            break;
        }
        assert!(Instant::now() < deadline, "{node}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!((0..20).all(|_| revision_of(&gio(&envoy, "198.51.100.20", None)) == "8"));
    let stats = envoy.stats().unwrap();
    assert!(
        stats
            .lines()
            .any(|l| l.contains("signalbox.bundles.rejected") && !l.ends_with(": 0")),
        "{stats}"
    );

    // Revision 10 as a 10% canary: 400 clients in 400 networks, each asked twice, are served
    // exactly as the fleet's keyed hash says (so each client always sees one revision), about
    // a tenth of them the canary.
    let body = json!({
        "bundle": serde_json::from_slice::<Value>(&signed_golden(&dir, 10, &edge_key)).unwrap(),
        "percent": 10,
    });
    let (status, answer) = cache
        .call("PUT", "/v1/bundle/canary", ADMIN_TOKEN, Some(&body))
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let client = |i: u32| format!("10.{}.{}.7", i / 256, i % 256);
    let expected = |i: u32| {
        let key = signalbox_pipeline::canary::canary_key(None, client(i).parse().ok()).unwrap();
        signalbox_pipeline::canary::in_canary(&key, CANARY_KEY.as_bytes(), 10, 10)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while (0..40).all(|i| revision_of(&gio(&envoy, &client(i), None)) == "8") {
        assert!(
            Instant::now() < deadline,
            "the canary never arrived\n{}",
            envoy.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Seen on one worker; the other picks it up within a tick.
    std::thread::sleep(Duration::from_millis(POLL_MS));
    let mut in_canary = 0;
    for i in 0..400 {
        let want = if expected(i) { "10" } else { "8" };
        for _ in 0..2 {
            assert_eq!(
                revision_of(&gio(&envoy, &client(i), None)),
                want,
                "client {}",
                client(i)
            );
        }
        in_canary += usize::from(expected(i));
    }
    println!("canary at 10%: {in_canary} of 400 clients served revision 10, each on every request");
    assert!((20..=60).contains(&in_canary), "{in_canary}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet().is_none_or(|n| n["canary_revision"] != 10) {
        assert!(Instant::now() < deadline, "{:?}", fleet());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Promoted: every client gets revision 10.
    let (status, answer) = cache
        .call("POST", "/v1/bundle/promote", ADMIN_TOKEN, Some(&json!({})))
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    until_revision(&envoy, "10", Duration::from_millis(POLL_MS * 10));
}

/// The fleet's canary secret in these tests.
const CANARY_KEY: &str = "the fleet's canary secret for tests";

/// Giovanni on /signup, a sensitive route: the bundle asks the cache about his IP.
fn signup(lab_port: u16, ip: &str) -> Response {
    let headers: Vec<(String, Vec<u8>)> = [
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
    send(lab_port, "GET", "/signup", &headers, b"").unwrap()
}

/// Envoy's count of calls to the cache cluster: requests sent, plus connections refused.
fn cache_calls(envoy: &Envoy) -> u64 {
    let stats = envoy.stats().unwrap();
    let stat = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cluster.signalbox_cache.{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    stat("upstream_rq_total") + stat("upstream_cx_connect_fail")
}

fn remote_of(r: &Response) -> String {
    let v: Value = serde_json::from_str(&r.header("x-signalbox-verdict").unwrap()).unwrap();
    v["remote"].as_str().unwrap_or("not_wanted").to_owned()
}

#[test]
fn context_on_demand_is_cached_for_its_ttl_and_coalesced() {
    let dir = work("cache-link-context");
    // The cache answers with a one-second TTL.
    let bundle = golden_json(&dir);
    let mut value: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    value["scoring"] = json!({"context_ttl_seconds": 1});
    std::fs::write(&bundle, value.to_string()).unwrap();
    let mut cache = ScoreCache::start(&dir.join("cache"), &bundle).unwrap();
    // Envoy reaches the cache through a relay that can hold requests (a slow cache).
    let relay = SlowRelay::start(cache.port).unwrap();
    // The edge's bundle: golden with a quick breaker (4 lookups, half failed: open for 1 s).
    let text = std::fs::read_to_string(root().join("tests/scenarios/bundles/golden.yaml")).unwrap();
    let mut edge_bundle: Value = serde_norway::from_str(&text).unwrap();
    edge_bundle["cache"]["breaker"] = json!({"failure_rate_percent": 50, "min_requests": 4, "window_seconds": 10, "open_seconds": 1});
    let edge_bundle_path = dir.join("edge-bundle.json");
    std::fs::write(&edge_bundle_path, edge_bundle.to_string()).unwrap();
    // Lookups only: no stream, no bundle polls, so every call Envoy counts is a lookup.
    let extra = json!({
        "score_cache": {"cluster": "signalbox_cache", "decisions_poll_ms": 0, "bundle_poll_ms": 0},
    });
    let envoy = Envoy::start(&Options {
        bundle: edge_bundle_path,
        out: dir.join("envoy"),
        plugin_extra: extra.to_string(),
        concurrency: 2,
        cache_port: Some(relay.port),
        env: vec![("SIGNALBOX_CACHE_TOKEN".to_owned(), EDGE_TOKEN.to_owned())],
    })
    .unwrap();
    let ip = "203.0.113.80";
    assert_eq!(decision_of(&signup(envoy.ports.lab, ip)), "pass");

    // Twenty requests at once for one subject: one call per worker at most, the rest wait for
    // it or reuse its answer.
    std::thread::sleep(Duration::from_millis(1_100));
    let before = cache_calls(&envoy);
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let port = envoy.ports.lab;
            std::thread::spawn(move || decision_of(&signup(port, "203.0.113.81")))
        })
        .collect();
    let decisions: Vec<String> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(decisions.iter().all(|d| d == "pass"), "{decisions:?}");
    let calls = cache_calls(&envoy) - before;
    println!("20 concurrent requests for one subject: {calls} calls to the cache");
    assert!(calls <= 2, "{calls} calls for one subject on two workers");

    // Origin reports chargebacks for the IP: within the TTL its next request is challenged.
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("cb-{i}"), "subject": {"scope": "ip", "key": ip}, "type": "chargeback", "severity": "critical", "impact": 100}))
        .collect();
    let (status, answer) = cache
        .call(
            "POST",
            "/v1/events",
            signalbox_tests::score_cache::ORIGIN_TOKEN,
            Some(&json!({"events": events})),
        )
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let started = Instant::now();
    loop {
        if (0..10).all(|_| decision_of(&signup(envoy.ports.lab, ip)) != "pass") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "still passing");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "event -> challenged in {:?} (context TTL 1 s)",
        started.elapsed()
    );
    let stats = envoy.stats().unwrap();
    assert!(stats.contains("signalbox.cache.answers_reused"), "{stats}");

    // The cache answers slowly (each request held 400 ms; the bundle's timeout is 50 ms): every
    // request passes (fail-open bundle) without its answer, so it did not wait for it, and the
    // breaker opens after a few timeouts.
    relay.set_delay(Duration::from_millis(400));
    let before = cache_calls(&envoy);
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let started = Instant::now();
        let r = signup(envoy.ports.lab, &format!("198.51.100.{}", 10 + i));
        slowest = slowest.max(started.elapsed());
        assert_eq!(decision_of(&r), "pass");
        assert_eq!(remote_of(&r), "unavailable_fail_open");
    }
    let calls = cache_calls(&envoy) - before;
    println!("cache slow (400 ms): 30 requests passed, slowest {slowest:?}, {calls} calls tried");
    assert!(
        calls < 15,
        "{calls} calls: the breaker did not open on timeouts"
    );
    // Quick again: after the open second a probe is answered and lookups are used again.
    relay.set_delay(Duration::ZERO);
    let started = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        let r = signup(envoy.ports.lab, &format!("198.51.100.{}", 60 + i % 30));
        if remote_of(&r) == "used" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the breaker never closed after the slow spell"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "cache quick again: lookups used again after {:?}",
        started.elapsed()
    );

    // The cache stops: every request passes (fail-open bundle) within the 50 ms timeout, and
    // the shared breaker opens after a few failures, so most ask nothing.
    cache.stop();
    let before = cache_calls(&envoy);
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let started = Instant::now();
        let r = signup(envoy.ports.lab, &format!("198.51.100.{}", 100 + i));
        slowest = slowest.max(started.elapsed());
        assert_eq!(decision_of(&r), "pass");
        assert_eq!(remote_of(&r), "unavailable_fail_open");
    }
    let calls = cache_calls(&envoy) - before;
    println!("cache stopped: 30 requests passed, slowest {slowest:?}, {calls} calls tried");
    assert!(calls < 15, "{calls} calls: the breaker did not open");

    // Back: after the open second a probe is answered and lookups are used again.
    cache.restart().unwrap();
    let started = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        let r = signup(envoy.ports.lab, &format!("198.51.100.{}", 200 + i % 50));
        if remote_of(&r) == "used" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the breaker never closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "cache back: lookups used again after {:?}",
        started.elapsed()
    );
}
