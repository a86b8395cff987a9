//! The scenario table (`tests/scenarios/cases` and `default`) through the edge worker's two
//! builds, in three runtimes: the WASI HTTP component in our wasi-http host, and the
//! wasm-bindgen build in workerd and in Deno. Each request goes to the worker as a load
//! balancer would send it (client in `x-forwarded-for`, scheme in `x-forwarded-proto`), the
//! score cache is a stub answering with the case's `remote`, and every runtime must agree with
//! the case's `expect` — the same table the native engine, the wasmtime host and real Envoy
//! pass (`conformance.rs`). The runtimes' clocks are real: when the native verdict at the real
//! time differs from the one at the case's `now`, the runtime is held to the native verdict
//! at the real time, and counted as such.
//!
//! Needs the component (wasm32-wasip2), `scripts/build-edge-js` and `npm ci --prefix
//! edge-worker/js`; `scripts/test` does all three.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use signalbox_policy::Policy;
use signalbox_test_kit::cases::{DEFAULT_CASE_NOW, Observed};
use signalbox_tests::conformance::{
    LoadedCase, StubCache, Tally, edge_headers_config, load_cases, proxied_headers,
};
use signalbox_tests::edge::SECRET;
use signalbox_tests::http::send;
use signalbox_tests::js_runtimes::JsRuntime;
use signalbox_tests::root;
use signalbox_tests::upstream::Upstream;
use signalbox_tests::wasi_http::Server;

enum Running {
    Wasi(Server),
    Js(JsRuntime),
}

impl Running {
    fn port(&self) -> u16 {
        match self {
            Running::Wasi(s) => s.port,
            Running::Js(r) => r.port,
        }
    }
}

fn variables(case: &LoadedCase, cache_port: u16, origin_port: u16) -> Vec<(String, String)> {
    let config = json!({
        "bundle": case.bundle,
        "allow_unsigned": true,
        "debug_verdict_header": true,
        "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 0},
        "edge_headers": edge_headers_config(case),
        "rate_limit_slots": 1024,
        "score_cache": {"cluster": "signalbox_cache"},
    });
    [
        ("SIGNALBOX_CONFIG", config.to_string()),
        (
            "SIGNALBOX_ORIGIN_URL",
            format!("http://127.0.0.1:{origin_port}"),
        ),
        (
            "SIGNALBOX_CACHE_URL",
            format!("http://127.0.0.1:{cache_port}"),
        ),
        ("SIGNALBOX_SECRET", SECRET.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn native(policy: &Policy, case: &LoadedCase, now: u64) -> Observed {
    let facts = case.case.request.to_facts(&case.case.edge_header_names());
    Observed::of(&policy.evaluate(&facts, case.case.remote.as_ref(), now))
}

#[test]
fn every_case_agrees_through_the_component_workerd_and_deno() {
    let cases = load_cases().unwrap();
    let component = root().join("target/wasm32-wasip2/edge-release/signalbox_edge_worker.wasm");
    assert!(
        component.exists(),
        "build the component first (scripts/test does)"
    );
    let out = root().join("target/edge-conformance");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let stub = StubCache::start().unwrap();
    let origin = Upstream::start().unwrap();
    let real_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut policies: HashMap<String, Policy> = HashMap::new();
    let mut failed = Vec::new();
    let mut forced = Vec::new();
    for runtime in ["wasi-http", "workerd", "deno"] {
        let mut tally = Tally::default();
        let mut clock_shifted = 0;
        let mut running: HashMap<(String, bool), Running> = HashMap::new();
        for case in &cases {
            // The wasi-http host (as Spin) and Deno give every request its peer address;
            // workerd gives none apart from Cloudflare's header, so it runs a case without one.
            if runtime != "workerd" && case.case.request.client_ip.is_none() {
                tally.skip(
                    case,
                    runtime,
                    "the runtime gives every request its peer address",
                );
                continue;
            }
            let trusted = case.case.edge_headers.is_some() || case.case.request.user.is_some();
            let key = (case.bundle_key.clone(), trusted);
            if !running.contains_key(&key) {
                let dir = out.join(format!("{runtime}-{}", running.len()));
                std::fs::create_dir_all(&dir).unwrap();
                let vars = variables(case, stub.port, origin.addr.port());
                let r = match runtime {
                    "wasi-http" => {
                        Running::Wasi(Server::start(&component, &vars, &dir.join("log")).unwrap())
                    }
                    "workerd" => Running::Js(JsRuntime::workerd(&dir, &vars).unwrap()),
                    _ => Running::Js(JsRuntime::deno(&dir, &vars).unwrap()),
                };
                running.insert(key.clone(), r);
            }
            let port = running[&key].port();
            stub.serve(case);
            let request = &case.case.request;
            let response = send(
                port,
                &request.method,
                &request.path,
                &proxied_headers(case),
                b"",
            )
            .unwrap();
            let Some(got) = response
                .header("x-signalbox-verdict")
                .and_then(|v| serde_json::from_str::<Value>(&v).ok())
                .and_then(|line| Observed::of_line(&line))
            else {
                tally.result(
                    case,
                    vec![format!(
                        "no verdict header (status {}): {}",
                        response.status,
                        response.text()
                    )],
                );
                continue;
            };
            let policy = policies
                .entry(case.bundle_key.clone())
                .or_insert_with(|| {
                    Policy::from_json_slice(case.bundle.to_string().as_bytes()).unwrap()
                })
                .clone();
            // What the runtime forces on the request before the worker sees it: the runtime
            // is then held to the native verdict of the request as delivered.
            if let Some((delivered, why)) = as_delivered(runtime, case) {
                let want = native(&policy, &delivered, real_now);
                forced.push(format!("{runtime} {}: {why}", case.name));
                let problems = if got == want {
                    Vec::new()
                } else {
                    vec![format!(
                        "as delivered ({why}): {runtime} {got:?}, native {want:?}"
                    )]
                };
                tally.result(case, problems);
                continue;
            }
            let at_case_now = native(&policy, case, case.case.now.unwrap_or(DEFAULT_CASE_NOW));
            let at_real_now = native(&policy, case, real_now);
            let problems = if at_case_now == at_real_now {
                case.case.expect.mismatches_observed(&got)
            } else {
                clock_shifted += 1;
                if got == at_real_now {
                    Vec::new()
                } else {
                    vec![format!(
                        "at the real time: {runtime} {got:?}, native {at_real_now:?}"
                    )]
                }
            };
            tally.result(case, problems);
        }
        println!(
            "{runtime}: {} of {} cases agree with their expect; {} skipped with a reason ({clock_shifted} held to the native verdict at the real time)",
            tally.agreed,
            cases.len(),
            tally.skipped.len()
        );
        for (name, reason) in &tally.skipped {
            println!("  skipped {name}: {reason}");
        }
        for (name, why) in &tally.failed {
            failed.push(format!("{runtime} {name}: {why}"));
        }
    }
    println!("differences a runtime forces ({}):", forced.len());
    for f in &forced {
        println!("  {f}");
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// A case's request as `runtime` delivers it to the worker, when that differs from what was
/// sent, and why.
fn as_delivered(runtime: &str, case: &LoadedCase) -> Option<(LoadedCase, &'static str)> {
    let request = &case.case.request;
    if runtime == "workerd" && request.headers.iter().any(|(_, v)| v.as_bytes().is_empty()) {
        let mut delivered = case.clone();
        delivered
            .case
            .request
            .headers
            .retain(|(_, v)| !v.as_bytes().is_empty());
        return Some((delivered, "workerd drops header fields with an empty value"));
    }
    None
}
