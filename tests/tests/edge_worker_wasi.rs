//! The edge worker's WASI HTTP component (`edge-worker/`, wasm32-wasip2) served by our
//! wasi-http host (`signalbox_tests::wasi_http`, wasmtime-wasi-http, a fresh instance per
//! request as Spin gives WASIp2 components) on loopback, in front of a real origin and the real
//! score cache behind a relay that can make it slow (`signalbox_tests::edge::check_worker`):
//!
//! - a browser passes to origin with the `x-signalbox-*` annotations; the client's own copies,
//!   the runtime's address header and hop-by-hop headers never reach origin, and origin's
//!   `x-signalbox-*` headers never reach the client;
//! - automation is challenged, a denied address blocked, without reaching origin;
//! - a sensitive route asks the cache: an event ingested for the address makes its next
//!   request challenged, a manual ban in the cache's answer blocks it;
//! - with the cache slow (400 ms against the bundle's 50 ms) or stopped, requests pass
//!   (fail-open bundle) without waiting for it.
//!
//! Needs the component (`cargo build -p signalbox-edge-worker --target wasm32-wasip2
//! --profile edge-release`, and `scripts/build-edge-spin` for the Spin build; `scripts/test`
//! builds both) and the debug `signalbox-cache`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signalbox_tests::edge::{
    EdgeRig, LINK_POLL_MS, SIGNING_KEY, SIGNING_KID, browser, check_rates, check_worker, signed,
    write_trusted_keys,
};
use signalbox_tests::http::send;
use signalbox_tests::root;
use signalbox_tests::score_cache::ADMIN_TOKEN;
use signalbox_tests::wasi_http::{Server, SpinHost};

/// Where the `spin` build keeps the pushed bundle (`edge-worker/src/spin_host.rs`).
const BUNDLE_KEY: &str = "signalbox/bundle.prepared";
/// The test's `store_key` (`SIGNALBOX_STORE_KEY`).
const STORE_KEY: &str = "edge-test-store-key-0123456789abcdef";

/// A prepared bundle as the Spin build stores it: HMAC-SHA256 under the store key over the
/// purpose and the bundle, then the bundle (the format `spin_host.rs` documents).
fn tagged(prepared: &[u8], key: &str) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(b"signalbox stored prepared bundle v1\0");
    mac.update(prepared);
    let mut entry = mac.finalize().into_bytes().to_vec();
    entry.extend_from_slice(prepared);
    entry
}

fn component() -> PathBuf {
    let path = root().join("target/wasm32-wasip2/edge-release/signalbox_edge_worker.wasm");
    assert!(
        path.exists(),
        "no {}: cargo build -p signalbox-edge-worker --target wasm32-wasip2 --profile edge-release",
        path.display()
    );
    path
}

#[test]
fn the_component_scores_forwards_answers_and_asks_the_cache() {
    let mut rig = EdgeRig::start("edge-worker-wasi").unwrap();
    let server =
        Server::start(&component(), &rig.variables(), &rig.dir.join("worker.log")).unwrap();
    // A fresh instance per request: each reports itself to the cache's rate counts.
    check_rates(&rig, &[server.port], true, "wasi-http");
    check_worker(&mut rig, server.port, "wasi-http");
    assert_eq!(server.failures(), 0, "the host saw guest failures");
    server.stop();
}

/// The same checks with the bundle signed and prepared (`signalbox policy prepare`), loaded
/// from the component's files as Spin mounts them: no inline bundle is parsed per instance.
#[test]
fn the_component_serves_a_prepared_bundle() {
    let mut rig = EdgeRig::start("edge-worker-wasi-prepared").unwrap();
    let (vars, files) = rig.prepared_variables().unwrap();
    let server = Server::start_with_files(
        &component(),
        &vars,
        Some(&files),
        &rig.dir.join("worker.log"),
    )
    .unwrap();
    check_worker(&mut rig, server.port, "wasi-http (prepared bundle)");
    assert_eq!(server.failures(), 0, "the host saw guest failures");
    server.stop();
}

/// The `spin` build (`scripts/build-edge-spin`).
fn spin_component() -> PathBuf {
    let path = root().join("target/wasm32-wasip2/spin-release/signalbox_edge_worker.wasm");
    assert!(
        path.exists(),
        "no {}: scripts/build-edge-spin",
        path.display()
    );
    path
}

/// `edge-worker/spin.toml`'s component variables, resolved as Spin resolves them: a
/// `{{ name }}` template from `app_values` (else the application variable's default; a required
/// one without a value panics), a literal as it is. Also checks what the Spin build relies on:
/// the `default` key-value store, and the prepared bundle at the path its files mount.
fn spin_toml_variables(app_values: &HashMap<String, String>) -> HashMap<String, String> {
    let text = std::fs::read_to_string(root().join("edge-worker/spin.toml")).unwrap();
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    let app = doc["variables"].as_table().unwrap();
    let component = doc["component"]["signalbox"].as_table().unwrap();
    assert!(
        component["source"]
            .as_str()
            .unwrap()
            .ends_with("spin-release/signalbox_edge_worker.wasm")
    );
    let stores: Vec<&str> = component["key_value_stores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(stores, ["default"]);
    let files = component["files"].as_array().unwrap();
    let destination = files
        .iter()
        .filter_map(|f| f.as_inline_table()?.get("destination")?.as_str())
        .next()
        .unwrap();
    let mut resolved = HashMap::new();
    for (name, value) in component["variables"].as_table().unwrap() {
        let value = value.as_str().unwrap();
        let value = match value.strip_prefix("{{").and_then(|v| v.strip_suffix("}}")) {
            Some(template) => {
                let app_name = template.trim();
                let declared = app
                    .get(app_name)
                    .and_then(|d| d.as_inline_table())
                    .unwrap_or_else(|| panic!("{{{{ {app_name} }}}} is not an app variable"));
                match (app_values.get(app_name), declared.get("default")) {
                    (Some(v), _) => v.clone(),
                    (None, Some(default)) => default.as_str().unwrap().to_owned(),
                    (None, None) => panic!("the required variable {app_name} has no value"),
                }
            }
            None => value.to_owned(),
        };
        resolved.insert(name.to_owned(), value);
    }
    assert_eq!(
        resolved.get("prepared_bundle").map(String::as_str),
        Some(destination),
        "prepared_bundle must name the file spin.toml mounts"
    );
    resolved
}

/// The revision a reply's verdict names (panics without one).
fn served_revision(r: &signalbox_tests::http::Response) -> u64 {
    let verdict: Value = r
        .header("x-signalbox-verdict")
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_else(|| panic!("no verdict (status {}): {}", r.status, r.text()));
    verdict["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {verdict}"))
}

/// The Spin build on a host giving it Spin's variables and key-value store, a fresh instance
/// per request as Spin does for WASIp2: every setting comes from Spin variables bound by
/// spin.toml (no WASI environment at all); a stored bundle without the deployment's tag never
/// serves, nor an older one of its own over the packaged one; a bundle pushed to the score
/// cache reaches later instances through the store; a damaged stored bundle falls back to the
/// packaged one and is fetched again; a bundle the edge does not trust is refused (named in
/// the fleet report) and the pushed one keeps serving.
#[test]
fn the_spin_build_takes_pushed_bundles_through_the_key_value_store() {
    const OTHER_KEY: [u8; 32] = [12; 32];
    let name = "edge-worker-spin";
    let keys = root().join("target/e2e").join(format!("{name}-keys.json"));
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    // The cache trusts the rig's key and another one the edge does not.
    write_trusted_keys(&keys, &[(SIGNING_KID, SIGNING_KEY), ("other", OTHER_KEY)]).unwrap();
    let rig = EdgeRig::start_with(name, &["--trusted-keys", keys.to_str().unwrap()]).unwrap();
    let (vars, files) = rig.prepared_variables().unwrap();
    // The application's variables as an operator sets them (SPIN_VARIABLE_*), bound to the
    // component through spin.toml's own templates.
    let mut app_values: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| {
            let name = k.strip_prefix("SIGNALBOX_").unwrap().to_ascii_lowercase();
            (name, v.clone())
        })
        .collect();
    app_values.insert("store_key".to_owned(), STORE_KEY.to_owned());
    let spin = SpinHost {
        variables: spin_toml_variables(&app_values),
        ..SpinHost::default()
    };
    let packaged = rig.golden_revision();
    // Someone with access to the store (not the deployment: no store key) writes a trusted,
    // well-formed prepared bundle far above the packaged one.
    spin.store_value(
        BUNDLE_KEY,
        tagged(
            &rig.prepared(packaged + 50).unwrap(),
            "not-the-store-key-0123456789abcdef",
        ),
    );
    let server = Server::start_spin(
        &spin_component(),
        &[],
        Some(&files),
        Some(&spin),
        &rig.dir.join("worker.log"),
    )
    .unwrap();
    let port = server.port;
    let get = || send(port, "GET", "/products/1", &browser("81.62.7.9"), b"").unwrap();
    let first = get();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        served_revision(&first),
        packaged,
        "a forged stored bundle must not serve"
    );
    assert!(
        spin.stored(BUNDLE_KEY).is_none(),
        "the forged stored bundle was not set aside"
    );
    // An older bundle of the deployment's own left in the store (from before a redeploy).
    spin.store_value(
        BUNDLE_KEY,
        tagged(&rig.prepared(packaged - 1).unwrap(), STORE_KEY),
    );
    assert_eq!(
        served_revision(&get()),
        packaged,
        "the packaged bundle serves"
    );
    assert!(
        spin.stored(BUNDLE_KEY).is_none(),
        "the older stored bundle was not set aside"
    );
    let until = |what: &str, ok: &dyn Fn(&signalbox_tests::http::Response) -> bool| {
        let started = Instant::now();
        loop {
            let r = get();
            if ok(&r) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_millis(LINK_POLL_MS * 20),
                "{what}: still {} {}",
                r.status,
                r.header("x-signalbox-verdict").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let put_bundle = |envelope: Vec<u8>| {
        let (status, answer) = rig
            .cache
            .call_raw("PUT", "/v1/bundle", ADMIN_TOKEN, Some(&envelope))
            .unwrap();
        assert_eq!(status, 200, "{answer}");
    };

    // Pushed: later instances serve it, from the store.
    put_bundle(signed(&rig.golden_for_push(packaged + 1), SIGNING_KID, SIGNING_KEY).unwrap());
    let took = until("the pushed bundle", &|r| {
        r.status == 200 && served_revision(r) == packaged + 1
    });
    let stored = spin.stored(BUNDLE_KEY).expect("no bundle in the store");
    assert_eq!(
        stored,
        tagged(&stored[32..], STORE_KEY),
        "an untagged entry"
    );
    assert_eq!(
        signalbox_policy::prepared::prepared_revision(&stored[32..]),
        Some(packaged + 1)
    );
    let fleet_shows = |what: &str, ok: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, fleet) = rig
                .cache
                .call("GET", "/v1/fleet", ADMIN_TOKEN, None)
                .unwrap();
            assert_eq!(status, 200, "{fleet}");
            let node = fleet["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["node_id"] == json!("edge-test"))
                .cloned();
            if node.as_ref().is_some_and(ok) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {fleet}");
            let _ = get();
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    fleet_shows("no fleet report of the pushed revision", &|n| {
        n["stable_revision"] == json!(packaged + 1)
    });

    // A damaged stored bundle: the packaged one serves meanwhile, the poll fetches it again.
    let mut damaged = stored.clone();
    let cut = damaged.len() / 2;
    damaged.truncate(cut);
    spin.store_value(BUNDLE_KEY, damaged);
    let after_damage = get();
    assert_eq!(after_damage.status, 200, "{}", after_damage.text());
    assert_eq!(served_revision(&after_damage), packaged);
    until("the pushed bundle fetched again", &|r| {
        r.status == 200 && served_revision(r) == packaged + 1
    });

    // Signed with a key the cache trusts and the edge does not: refused at the edge.
    put_bundle(signed(&rig.golden_for_push(packaged + 2), "other", OTHER_KEY).unwrap());
    fleet_shows("no refusal in the fleet report", &|n| {
        n["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("bundle refused") && e.contains("\"other\""))
            && n["stable_revision"] == json!(packaged + 1)
    });
    assert_eq!(served_revision(&get()), packaged + 1);
    assert_eq!(
        signalbox_policy::prepared::prepared_revision(&spin.stored(BUNDLE_KEY).unwrap()[32..]),
        Some(packaged + 1)
    );
    assert_eq!(server.failures(), 0, "the host saw guest failures");
    println!(
        "wasi-http (spin build): pushed revision served after {took:?} (polls every {LINK_POLL_MS} ms)"
    );
    server.stop();
}
