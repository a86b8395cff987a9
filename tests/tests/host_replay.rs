//! The filter `.wasm` in the in-process wasmtime host: a few thousand varied requests agree
//! with the native engine verdict for verdict; a soak keeps linear memory flat and the
//! shared-data keyspace within its bound. Needs the filter built for wasm32-wasip1
//! (`scripts/test` builds it first).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{Value, json};
use signalbox_policy::{EdgeHeaderNames, Policy};
use signalbox_test_kit::requests::RequestLine;
use signalbox_tests::host::{Filter, SharedData, VmOptions, compile};
use signalbox_tests::replay::{replay_config, replay_line};
use signalbox_tests::root;

fn golden() -> Value {
    let text = std::fs::read_to_string(root().join("tests/scenarios/bundles/golden.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// The engine and the compiled filter, shared by every test (Cranelift compiles the 0.9 MB
/// module once per test binary, not once per VM).
fn compiled() -> &'static (wasmtime::Engine, wasmtime::Module) {
    static COMPILED: std::sync::OnceLock<(wasmtime::Engine, wasmtime::Module)> =
        std::sync::OnceLock::new();
    COMPILED.get_or_init(|| {
        let wasm = std::fs::read(root().join("target/wasm32-wasip1/wasm-release/signalbox_filter.wasm")).expect(
            "build the filter first: cargo build -p signalbox-filter --target wasm32-wasip1 --profile wasm-release",
        );
        let engine = wasmtime::Engine::default();
        let module = compile(&engine, &wasm).unwrap();
        (engine, module)
    })
}

fn start(bundle: Value, extra: Value, shared: SharedData) -> Filter {
    let (engine, module) = compiled();
    let example = std::fs::read(root().join("filter/examples/plugin-config.json")).unwrap();
    let mut config: Value =
        serde_json::from_slice(&replay_config(&example, Some(bundle)).unwrap()).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let opts = VmOptions {
        plugin_config: serde_json::to_vec(&config).unwrap(),
        shared,
        ..VmOptions::default()
    };
    Filter::start(engine, module, &opts).unwrap()
}

/// Deterministic, varied request lines.
fn requests(n: usize) -> Vec<Value> {
    let uas: &[&str] = &[
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Linux; Android 7.0; SM-G930F Build/NRD90M) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Mobile Safari/537.36 Puffin/7.1.2.18064AP",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        "curl/8.5.0",
        "python-requests/2.32.3",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
        "GPTBot/1.2",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0)",
        "OldBot/1.0",
        "",
    ];
    let ips = [
        "81.62.10.4",
        "167.99.134.20",
        "3.5.140.2",
        "66.249.66.1",
        "2.26.97.42",
        "198.51.100.66",
        "192.0.2.10",
        "2001:4860:4801:10::5",
        "2a03:b0c0:3:d0::1a:2001",
        "::ffff:167.99.134.20",
        "203.0.113.5",
    ];
    let paths = [
        "/",
        "/signup",
        "/login",
        "/checkout?x=1",
        "/search?q=a",
        "/products/42",
        "//%6Cogin",
        "/LOGIN/x",
    ];
    let mut state: u64 = 0x5eed_1234;
    let mut next = |m: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    (0..n)
        .map(|i| {
            let mut headers: Vec<Value> = vec![json!(["host", "shop.example"])];
            let ua = uas[next(uas.len())];
            if !ua.is_empty() || next(2) == 0 {
                headers.push(json!(["user-agent", ua]));
            }
            match next(3) {
                0 => headers.push(json!(["accept-language", "fr-CH, fr;q=0.9"])),
                1 => headers.push(json!(["accept-language", ""])),
                _ => {}
            }
            if next(2) == 0 {
                headers.push(json!(["accept-encoding", "gzip, br"]));
            }
            if next(2) == 0 {
                headers.push(json!(["sec-fetch-mode", "navigate"]));
            }
            match next(4) {
                0 => headers.push(json!(["sec-ch-ua", "\"Chromium\";v=\"131\""])),
                1 => headers.push(json!(["sec-ch-ua-platform", "\"Windows\""])),
                _ => {}
            }
            match next(5) {
                0 => headers.push(json!(["cf-ipcountry", "KP"])),
                1 => headers.push(json!(["x-signalbox-edge-asn", "AS14061"])),
                2 => headers.push(json!([
                    "x-signalbox-edge-ja4",
                    "t13d1516h2_8daaf6152771_bad"
                ])),
                3 => headers.push(json!(["cookie", "a=1; __Host-signalbox-clearance=forged"])),
                _ => {}
            }
            if next(10) == 0 {
                headers.push(json!(["user-agent", [255, 254, 77, 200]]));
            }
            let method = ["GET", "POST", "HEAD"][next(3)];
            let mut line = json!({
                "id": format!("r{i}"),
                "method": method,
                "path": paths[next(paths.len())],
                "headers": headers,
                "client_ip": ips[next(ips.len())],
            });
            if next(4) == 0 {
                line["user"] = json!(format!("u-{}", next(50)));
            }
            line
        })
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn thousands_of_requests_agree_with_the_native_engine() {
    let bundle = golden();
    let policy = Policy::from_json_slice(bundle.to_string().as_bytes()).unwrap();
    let mut filter = start(bundle, json!({}), SharedData::default());
    let mut lines = requests(3000);
    for example in std::fs::read_to_string(root().join("policy/examples/requests.jsonl"))
        .unwrap()
        .lines()
    {
        lines.push(serde_json::from_str(example).unwrap());
    }
    for line in &lines {
        let wasm = replay_line(&mut filter, line).unwrap();
        let request: RequestLine = serde_json::from_value(line.clone()).unwrap();
        let native = policy.evaluate(
            &request.to_facts(&EdgeHeaderNames::conventional()),
            None,
            now(),
        );
        let native = serde_json::to_value(signalbox_test_kit::requests::VerdictLine::new(
            &request.id,
            &native,
        ))
        .unwrap();
        assert_eq!(wasm, native, "request {line}");
    }
    assert!(lines.len() >= 3000);
}

#[test]
fn soak_keeps_memory_flat_and_the_keyspace_bounded() {
    let n: usize = std::env::var("SIGNALBOX_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let shared = SharedData::default();
    let mut filter = start(golden(), json!({"rate_limit_slots": 64}), shared.clone());
    let line = |i: usize| {
        json!({
            "id": format!("s{i}"), "method": "GET", "path": if i.is_multiple_of(2) { "/burst" } else { "/products" },
            "headers": [["host", "shop.example"], ["user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"], ["accept-language", "en"]],
            "client_ip": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        })
    };
    for i in 0..2_000 {
        replay_line(&mut filter, &line(i)).unwrap();
    }
    let warm = filter.memory_bytes();
    for i in 2_000..n {
        replay_line(&mut filter, &line(i)).unwrap();
    }
    assert_eq!(
        filter.memory_bytes(),
        warm,
        "linear memory grew after warm-up"
    );
    // 64 rate-bucket slots, plus the plugin's highest-revision key (rollback protection).
    assert!(
        shared.len() <= 64 + 1,
        "{} shared-data keys for 64 slots and one revision",
        shared.len()
    );
    assert!(
        shared.len() > 32,
        "the buckets were used ({} keys)",
        shared.len()
    );
    println!(
        "{n} requests; linear memory {} bytes; {} shared-data keys",
        warm,
        shared.len()
    );
}

#[test]
fn two_worker_vms_share_one_rate_bucket() {
    let shared = SharedData::default();
    let mut workers = [
        start(golden(), json!({}), shared.clone()),
        start(golden(), json!({}), shared.clone()),
    ];
    let mut passed = 0;
    for i in 0..12 {
        let line = json!({
            "id": format!("b{i}"), "method": "GET", "path": "/burst",
            "headers": [["host", "shop.example"], ["user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"], ["accept-language", "en"]],
            "client_ip": "198.51.100.77",
        });
        let verdict = replay_line(&mut workers[i % 2], &line).unwrap();
        passed += usize::from(verdict["decision"] == "pass");
    }
    assert_eq!(
        passed, 5,
        "the golden /burst budget is 5, shared by both VMs"
    );
}

#[test]
fn worker_vms_on_threads_share_one_rate_bucket() {
    // Four worker VMs on four threads hit the same /burst budget (5) at once: the shared-data
    // CAS loop must let exactly 5 through in total.
    let shared = SharedData::default();
    let passed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for w in 0..4 {
            let shared = shared.clone();
            let passed = &passed;
            scope.spawn(move || {
                let mut vm = start(golden(), json!({}), shared);
                for i in 0..10 {
                    let line = json!({
                        "id": format!("t{w}-{i}"), "method": "GET", "path": "/burst",
                        "headers": [["host", "shop.example"], ["user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"], ["accept-language", "en"]],
                        "client_ip": "198.51.100.78",
                    });
                    let verdict = replay_line(&mut vm, &line).unwrap();
                    if verdict["decision"] == "pass" {
                        passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(
        passed.into_inner(),
        5,
        "40 requests from 4 VMs, one budget of 5"
    );
}

mod no_trap {
    use super::*;
    use proptest::prelude::*;
    use signalbox_tests::host::Request;

    proptest! {
        // 300 cases in CI; `SIGNALBOX_FUZZ_CASES=100000` for a longer run.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("SIGNALBOX_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
            ..ProptestConfig::default()
        })]

        /// Random header names, values (any bytes but NUL/CR/LF, which HTTP cannot carry),
        /// paths, methods, bodies and properties (source address, route name) never trap the
        /// filter: the VM must not have failed after any of them.
        #[test]
        fn random_requests_never_trap(
            method in "[A-Z]{1,8}",
            path in "/[ -~]{0,60}",
            headers in proptest::collection::vec(("[a-z0-9-]{1,20}", proptest::collection::vec(1u8..=255, 0..200)), 0..30),
            source in prop_oneof![Just("81.62.10.4:1".to_owned()), Just("[2001:db8::1]:2".to_owned()), "[ -~]{0,30}"],
            route in proptest::option::of(prop_oneof![Just("account".to_owned()), "\\PC{0,20}"]),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            thread_local! {
                static FILTER: std::cell::RefCell<Option<Filter>> = const { std::cell::RefCell::new(None) };
            }
            let mut all = vec![
                (":method".to_owned(), method.into_bytes()),
                (":path".to_owned(), path.into_bytes()),
                (":authority".to_owned(), b"shop.example".to_vec()),
            ];
            for (n, v) in headers {
                let v: Vec<u8> = v.into_iter().filter(|b| *b != b'\r' && *b != b'\n').collect();
                all.push((n, v));
            }
            let request = Request { headers: all, body, source_address: source, upstream_status: 200, route_name: route };
            FILTER.with(|f| {
                let mut f = f.borrow_mut();
                let filter = f.get_or_insert_with(|| start(golden(), json!({"sensitive_route_names": ["account"]}), SharedData::default()));
                let response = filter.request(&request);
                prop_assert!(response.is_ok(), "host error: {:?}", response.err());
                prop_assert!(filter.failure().is_none(), "the filter trapped: {:?}", filter.failure());
                Ok(())
            })?;
        }
    }
}

/// The real default bundle (163k-prefix lists inlined, 200 declared-bot patterns) as a bundle
/// value, the way `signalbox policy build` inlines includes.
fn default_bundle() -> Value {
    signalbox_tests::conformance::bundle_file(&root().join("policy/examples/default.yaml")).unwrap()
}

#[test]
fn the_default_bundle_fits_a_worker_vm_in_16_mib() {
    let mut filter = start(default_bundle(), json!({}), SharedData::default());
    for line in requests(500) {
        replay_line(&mut filter, &line).unwrap();
    }
    let bytes = filter.memory_bytes();
    println!(
        "default bundle: linear memory {bytes} bytes ({:.1} MiB) after 500 requests",
        bytes as f64 / 1_048_576.0
    );
    assert!(bytes <= 16 << 20, "{bytes} bytes of linear memory");
}

#[test]
fn stale_crawler_ranges_are_a_gauge_and_one_warning() {
    // The golden bundle's oldbot ranges are dated 2010-01-01: stale under its ten-year allowance.
    let mut filter = start(golden(), json!({}), SharedData::default());
    for line in requests(5) {
        replay_line(&mut filter, &line).unwrap();
    }
    let gauge = |f: &Filter| {
        f.metrics()
            .into_iter()
            .find(|(_, name, _)| name == "signalbox.crawler_ranges.stale")
            .map(|(_, _, value)| value)
    };
    assert!(gauge(&filter) >= Some(1), "{:?}", filter.metrics());
    let warnings: Vec<&String> = filter
        .logs()
        .iter()
        .map(|(_, line)| line)
        .filter(|line| line.contains("crawler ranges older than"))
        .collect();
    assert_eq!(warnings.len(), 1, "logged once: {warnings:?}");
    assert!(warnings[0].contains("oldbot (2010-01-01)"), "{warnings:?}");

    // Fresh ranges only (no oldbot, ten years allowed): the gauge reads 0.
    let mut fresh = golden();
    fresh["crawlers"]["max_ranges_age_days"] = json!(3650);
    fresh["crawlers"]["catalogue"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != "oldbot");
    fresh["lists"].as_object_mut().unwrap().remove("oldbot");
    let mut filter = start(fresh, json!({}), SharedData::default());
    for line in requests(5) {
        replay_line(&mut filter, &line).unwrap();
    }
    assert_eq!(gauge(&filter), Some(0), "{:?}", filter.metrics());
}
