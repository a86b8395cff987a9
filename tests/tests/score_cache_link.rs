//! The filter's score-cache link in the wasmtime host: a lookup goes out when the bundle wants
//! context, the answer decides; a dead or slow cache never stalls a request beyond the
//! bundle's timeout, and the shared circuit breaker stops asking while the cache keeps failing,
//! probes once after the open period, and closes when the probe is answered.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signalbox_tests::host::{
    Cluster, Clusters, Filter, Outcome, Request, Scripted, SharedData, VmOptions, compile,
};
use signalbox_tests::root;

fn golden() -> Value {
    let text = std::fs::read_to_string(root().join("tests/scenarios/bundles/golden.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

struct StubCache {
    calls: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
}

fn start(bundle: Value) -> (Filter, StubCache) {
    let wasm =
        std::fs::read(root().join("target/wasm32-wasip1/wasm-release/signalbox_filter.wasm"))
            .expect("build the filter first");
    let engine = wasmtime::Engine::default();
    let module = compile(&engine, &wasm).unwrap();
    let stub = StubCache {
        calls: Arc::default(),
        healthy: Arc::default(),
        silent: Arc::default(),
    };
    let (calls, healthy, silent) = (
        Arc::clone(&stub.calls),
        Arc::clone(&stub.healthy),
        Arc::clone(&stub.silent),
    );
    let script: signalbox_tests::host::Script = Arc::new(move |req| {
        calls.fetch_add(1, Ordering::SeqCst);
        assert!(
            req.header(":path").unwrap().starts_with("/v1/context?ip="),
            "{:?}",
            req.header(":path")
        );
        let outcome = if silent.load(Ordering::SeqCst) {
            Outcome::Silent
        } else if healthy.load(Ordering::SeqCst) {
            Outcome::Response {
                status: 200,
                headers: Vec::new(),
                // TTL 0: no answer is reused, every request asks (cache_link_envoy.rs covers reuse).
                body: br#"{"ip":{"score":100},"ttl_seconds":0}"#.to_vec(),
            }
        } else {
            Outcome::Response {
                status: 503,
                headers: Vec::new(),
                body: b"down".to_vec(),
            }
        };
        Scripted {
            delay: Duration::ZERO,
            outcome,
        }
    });
    let config = json!({
        "bundle": bundle,
        "allow_unsigned": true,
        "debug_verdict_header": true,
        // Lookups only: no decision stream, no bundle polls (cache_link_envoy.rs has those).
        "score_cache": {"cluster": "signalbox_cache", "decisions_poll_ms": 0, "bundle_poll_ms": 0},
    });
    let filter = Filter::start(
        &engine,
        &module,
        &VmOptions {
            plugin_config: config.to_string().into_bytes(),
            clusters: Clusters::from([("signalbox_cache".to_owned(), Cluster::Scripted(script))]),
            shared: SharedData::default(),
            ..VmOptions::default()
        },
    )
    .unwrap();
    (filter, stub)
}

/// Giovanni on /signup (a sensitive route: the bundle asks the cache).
fn signup() -> Request {
    let headers = [
        (":method", "GET"),
        (":path", "/signup"),
        (":authority", "shop.example"),
        (":scheme", "https"),
        (
            "user-agent",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        ),
        ("accept", "text/html,*/*;q=0.8"),
        ("accept-language", "fr-CH, fr;q=0.9"),
        ("accept-encoding", "gzip, br"),
        (
            "sec-ch-ua",
            "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
        ),
        ("sec-fetch-site", "none"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
    ];
    Request {
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
        source_address: "81.62.10.4:40000".to_owned(),
        upstream_status: 200,
        ..Request::default()
    }
}

fn verdict(filter: &mut Filter) -> (Value, Duration) {
    let started = Instant::now();
    let response = filter.request(&signup()).unwrap();
    let took = started.elapsed();
    let header = response.header("x-signalbox-verdict").unwrap();
    (serde_json::from_slice(header).unwrap(), took)
}

#[test]
fn an_answer_decides_and_a_dead_cache_opens_the_breaker() {
    let mut bundle = golden();
    bundle["cache"]["breaker"] = json!({"failure_rate_percent": 50, "min_requests": 4, "window_seconds": 10, "open_seconds": 1});
    let (mut filter, stub) = start(bundle);

    // A healthy cache: its score (100 × 60% = 60) with the route (10) makes Giovanni's signup
    // high: challenged.
    stub.healthy.store(true, Ordering::SeqCst);
    let (v, _) = verdict(&mut filter);
    assert_eq!(
        (
            v["remote"].as_str(),
            v["decision"].as_str(),
            v["score"].as_u64()
        ),
        (Some("used"), Some("challenge"), Some(70))
    );
    assert_eq!(stub.calls.load(Ordering::SeqCst), 1);

    // It fails: fail open. Four lookups in the window, three of them failed (75% ≥ 50%): the
    // breaker opens, and the fourth failing request is already decided without asking.
    stub.healthy.store(false, Ordering::SeqCst);
    for _ in 0..4 {
        let (v, _) = verdict(&mut filter);
        assert_eq!(v["remote"], "unavailable_fail_open", "{v}");
        assert_eq!(v["decision"], "pass");
    }
    assert_eq!(stub.calls.load(Ordering::SeqCst), 4);
    for _ in 0..5 {
        let (v, _) = verdict(&mut filter);
        assert_eq!(v["remote"], "unavailable_fail_open");
    }
    assert_eq!(
        stub.calls.load(Ordering::SeqCst),
        4,
        "no lookup goes out while the breaker is open"
    );
    let unavailable = filter
        .metrics()
        .into_iter()
        .find(|(_, name, _)| name == "signalbox.cache.unavailable")
        .map(|(_, _, v)| v);
    assert_eq!(unavailable, Some(9));

    // After the open period one probe goes out; answered, it closes the breaker.
    std::thread::sleep(Duration::from_millis(1100));
    stub.healthy.store(true, Ordering::SeqCst);
    let (v, _) = verdict(&mut filter);
    assert_eq!(v["remote"], "used");
    assert_eq!(stub.calls.load(Ordering::SeqCst), 5);
    let (v, _) = verdict(&mut filter);
    assert_eq!(v["remote"], "used");
    assert_eq!(stub.calls.load(Ordering::SeqCst), 6, "closed again");
}

#[test]
fn a_silent_cache_costs_at_most_the_timeout() {
    let mut bundle = golden();
    bundle["cache"]["timeout_ms"] = json!(50);
    let (mut filter, stub) = start(bundle);
    stub.silent.store(true, Ordering::SeqCst);
    let (v, took) = verdict(&mut filter);
    assert_eq!(v["remote"], "unavailable_fail_open", "{v}");
    assert_eq!(v["decision"], "pass");
    println!("a silent cache: decided in {took:?} (timeout 50 ms)");
}
