//! One conformance run over every scenario case (`tests/scenarios/cases` and `default`): the
//! same case, its `expect` and its `host` expectations, run natively, through the filter
//! `.wasm` in the wasmtime host (clock pinned to the case's `now`) and in real Envoy (1.40,
//! V8). Every runner checks the case's `expect`; none compares only against another runner.
//!
//! Envoy's clock is real: when the native verdict at Envoy's time differs from the one at the
//! case's `now` (a pinned date, or ranges that have aged since), Envoy is held to the native
//! verdict at its time instead, and counted as such. A runner that cannot run a case fails
//! the test unless the case lists that runner under `skip` with a reason.
//!
//! Needs Envoy (`scripts/install-envoy`), the filter .wasm (wasm-release) and the debug
//! `signalbox` CLI; `scripts/test` builds them first.

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
use signalbox_tests::envoy::{Envoy, Options};
use std::time::Duration;

use signalbox_tests::host::{Cluster, Clusters, Filter, Outcome, Scripted, VmOptions, compile};
use signalbox_tests::http::send;
use signalbox_tests::replay::{EVAL_EDGE_HEADERS, request_from_line};
use signalbox_tests::root;

const SECRET: &str = "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

fn policy_of(cache: &mut HashMap<String, Policy>, case: &LoadedCase) -> Policy {
    cache
        .entry(case.bundle_key.clone())
        .or_insert_with(|| Policy::from_json_slice(case.bundle.to_string().as_bytes()).unwrap())
        .clone()
}

fn native(policy: &Policy, case: &LoadedCase, now: u64) -> Observed {
    let facts = case.case.request.to_facts(&case.case.edge_header_names());
    Observed::of(&policy.evaluate(&facts, case.case.remote.as_ref(), now))
}

fn case_now(case: &LoadedCase) -> u64 {
    case.case.now.unwrap_or(DEFAULT_CASE_NOW)
}

/// Why the host runner cannot run a case, if it cannot. (It answers score-cache calls from
/// the case's `remote`, or fails them when the case has none.)
fn host_cannot(case: &LoadedCase) -> Option<&'static str> {
    case.case
        .request
        .client_ip
        .is_none()
        .then_some("it has no client address")
}

/// The stub score cache of the host runner: the case's `remote` as the context answer, or a
/// 503 when the case says the cache did not answer.
fn stub_cache(case: &LoadedCase) -> Clusters {
    let answer = case
        .case
        .remote
        .as_ref()
        .map(|r| serde_json::to_vec(r).unwrap());
    let script: signalbox_tests::host::Script = std::sync::Arc::new(move |_| Scripted {
        delay: Duration::ZERO,
        outcome: match &answer {
            Some(body) => Outcome::Response {
                status: 200,
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                body: body.clone(),
            },
            None => Outcome::Response {
                status: 503,
                headers: Vec::new(),
                body: b"no context".to_vec(),
            },
        },
    });
    Clusters::from([("signalbox_cache".to_owned(), Cluster::Scripted(script))])
}

/// The host and Envoy status expectation, when the case has one.
fn status_problem(case: &LoadedCase, status: u32) -> Option<String> {
    let want = case.case.host.as_ref()?.get("status")?.as_u64()?;
    (u64::from(status) != want).then(|| format!("status: expected {want}, got {status}"))
}

#[test]
fn every_case_agrees_with_its_expect_natively_in_the_host_and_in_envoy() {
    let cases = load_cases().unwrap();
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let mut policies = HashMap::new();

    // Native.
    let mut native_tally = Tally::default();
    for case in &cases {
        let policy = policy_of(&mut policies, case);
        let got = native(&policy, case, case_now(case));
        native_tally.result(case, case.case.expect.mismatches_observed(&got));
    }

    // The filter .wasm in the wasmtime host, clock pinned to the case's now.
    let wasm =
        std::fs::read(root().join("target/wasm32-wasip1/wasm-release/signalbox_filter.wasm"))
            .expect("build the filter first (scripts/test does)");
    let engine = wasmtime::Engine::default();
    let module = compile(&engine, &wasm).unwrap();
    let mut host_tally = Tally::default();
    for case in &cases {
        if let Some(why) = host_cannot(case) {
            host_tally.skip(case, "host", why);
            continue;
        }
        let edge: Value = if case.case.edge_headers.is_some() || case.case.request.user.is_some() {
            serde_json::from_str(EVAL_EDGE_HEADERS).unwrap()
        } else {
            // Configured but not trusted here: stripped, never read (a listener with no
            // trusted edge in front).
            json!({"trusted": false, "country": "cf-ipcountry", "asn": "x-signalbox-edge-asn", "tls_fingerprint": "x-signalbox-edge-ja4", "user": "x-signalbox-edge-user"})
        };
        let config = json!({
            "bundle": case.bundle,
            "allow_unsigned": true,
            "debug_verdict_header": true,
            "client_ip": {"mode": "source_address"},
            "edge_headers": edge,
            "rate_limit_slots": 1024,
            "score_cache": {"cluster": "signalbox_cache"},
        });
        let opts = VmOptions {
            plugin_config: config.to_string().into_bytes(),
            env: vec![("SIGNALBOX_SECRET".into(), SECRET.into())],
            clusters: stub_cache(case),
            clock_nanos: Some(case_now(case) * 1_000_000_000),
            ..VmOptions::default()
        };
        let mut filter = match Filter::start(&engine, &module, &opts) {
            Ok(f) => f,
            Err(e) => {
                host_tally.result(
                    case,
                    vec![format!("the filter refused the case's configuration: {e}")],
                );
                continue;
            }
        };
        let (_, request) =
            request_from_line(&serde_json::to_value(&case.case.request).unwrap()).unwrap();
        let response = filter.request(&request).unwrap();
        let mut problems = match response
            .header("x-signalbox-verdict")
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
            .and_then(|line| Observed::of_line(&line))
        {
            Some(got) => case.case.expect.mismatches_observed(&got),
            None => vec!["no verdict header".to_owned()],
        };
        problems.extend(status_problem(case, response.status));
        host_tally.result(case, problems);
    }

    // Real Envoy: one process per (bundle, edge trust), through the lab listener (client
    // address from x-forwarded-for, scheme from x-forwarded-proto).
    let real_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = root().join("target/conformance");
    std::fs::create_dir_all(&out).unwrap();
    let mut envoys: HashMap<(String, bool), Envoy> = HashMap::new();
    let stub = StubCache::start().unwrap();
    let mut envoy_tally = Tally::default();
    let mut clock_shifted = 0;
    for case in &cases {
        if let Some(why) = host_cannot(case) {
            envoy_tally.skip(case, "envoy", why);
            continue;
        }
        let trusted = case.case.edge_headers.is_some() || case.case.request.user.is_some();
        let key = (case.bundle_key.clone(), trusted);
        if !envoys.contains_key(&key) {
            let n = envoys.len();
            let bundle_path = out.join(format!("bundle-{n}.json"));
            std::fs::write(&bundle_path, case.bundle.to_string()).unwrap();
            let edge = edge_headers_config(case);
            let envoy = Envoy::start(&Options {
                bundle: bundle_path,
                out: out.join(format!("envoy-{n}")),
                plugin_extra: json!({
                    "edge_headers": edge,
                    "rate_limit_slots": 1024,
                    "score_cache": {"cluster": "signalbox_cache"},
                })
                .to_string(),
                concurrency: 1,
                cache_port: Some(stub.port),
                env: Vec::new(),
            })
            .unwrap();
            envoys.insert(key.clone(), envoy);
        }
        let envoy = &envoys[&key];
        stub.serve(case);
        let request = &case.case.request;
        let headers = proxied_headers(case);
        let response = send(
            envoy.ports.lab,
            &request.method,
            &request.path,
            &headers,
            b"",
        )
        .unwrap();
        let Some(got) = response
            .header("x-signalbox-verdict")
            .and_then(|v| serde_json::from_str::<Value>(&v).ok())
            .and_then(|line| Observed::of_line(&line))
        else {
            envoy_tally.result(
                case,
                vec![format!("no verdict header (status {})", response.status)],
            );
            continue;
        };
        let policy = policy_of(&mut policies, case);
        let at_case_now = native(&policy, case, case_now(case));
        let at_real_now = native(&policy, case, real_now);
        let mut problems = if at_case_now == at_real_now {
            let mut p = case.case.expect.mismatches_observed(&got);
            p.extend(status_problem(case, u32::from(response.status)));
            p
        } else {
            // The date matters for this case and Envoy's clock is real: hold Envoy to the
            // native verdict at Envoy's time.
            clock_shifted += 1;
            let mut p = Vec::new();
            if got != at_real_now {
                p.push(format!(
                    "at the real time: envoy {got:?}, native {at_real_now:?}"
                ));
            }
            p
        };
        problems.retain(|p| !p.is_empty());
        envoy_tally.result(case, problems);
    }
    drop(envoys);

    let mut failed = Vec::new();
    for (runner, tally) in [
        ("native", &native_tally),
        ("host", &host_tally),
        ("envoy", &envoy_tally),
    ] {
        println!(
            "{runner}: {} of {} cases agree with their expect; {} skipped with a reason{}",
            tally.agreed,
            cases.len(),
            tally.skipped.len(),
            if runner == "envoy" {
                format!(" ({clock_shifted} held to the native verdict at Envoy's real time)")
            } else {
                String::new()
            }
        );
        for (name, reason) in &tally.skipped {
            println!("  skipped {name}: {reason}");
        }
        for (name, why) in &tally.failed {
            failed.push(format!("{runner} {name}: {why}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(native_tally.agreed, cases.len());
}

/// The prepared form of every case's bundle (`signalbox policy prepare`: lists as binary
/// ranges, the User-Agent matcher built for startup) gives the whole verdict the bundle JSON
/// gives, for every case and for the example requests on the real default bundle.
#[test]
fn the_prepared_form_decides_like_its_bundle() {
    use signalbox_policy::prepared::{load_prepared, prepare};
    use signalbox_policy::signing::{LoadContext, TrustedKeys};
    let ctx = LoadContext {
        allow_unsigned: true,
        ..LoadContext::default()
    };
    let keys = TrustedKeys::default();
    let prepared_of = |json: &[u8]| {
        load_prepared(&prepare(json, &keys, &ctx).unwrap(), &keys, &ctx)
            .unwrap()
            .policy
    };
    let cases = load_cases().unwrap();
    let mut policies: HashMap<String, (Policy, Policy)> = HashMap::new();
    let mut compared = 0;
    for case in &cases {
        let (json, prepared) = policies.entry(case.bundle_key.clone()).or_insert_with(|| {
            let bytes = case.bundle.to_string().into_bytes();
            (
                Policy::from_json_slice(&bytes).unwrap(),
                prepared_of(&bytes),
            )
        });
        let facts = case.case.request.to_facts(&case.case.edge_header_names());
        let remote = case.case.remote.as_ref();
        let now = case_now(case);
        assert_eq!(
            prepared.evaluate(&facts, remote, now),
            json.evaluate(&facts, remote, now),
            "{}",
            case.name
        );
        compared += 1;
    }
    let default =
        signalbox_tests::conformance::bundle_file(&root().join("policy/examples/default.yaml"))
            .unwrap()
            .to_string()
            .into_bytes();
    let (json, prepared) = (
        Policy::from_json_slice(&default).unwrap(),
        prepared_of(&default),
    );
    assert!(
        json.lists()
            .iter()
            .map(|l| l.set.prefix_count())
            .sum::<usize>()
            > 10_000
    );
    let requests = std::fs::read_to_string(root().join("policy/examples/requests.jsonl")).unwrap();
    let edge = signalbox_policy::EdgeHeaderNames::conventional();
    for line in requests.lines().filter(|l| !l.trim().is_empty()) {
        let request: signalbox_test_kit::requests::RequestLine =
            serde_json::from_str(line).unwrap();
        let facts = request.to_facts(&edge);
        assert_eq!(
            prepared.evaluate(&facts, None, DEFAULT_CASE_NOW),
            json.evaluate(&facts, None, DEFAULT_CASE_NOW),
            "{line}"
        );
        compared += 1;
    }
    assert!(compared >= 60, "only {compared} compared");
}
