//! The edge worker's wasm-bindgen build (`edge-worker/js`: the pipeline as wasm plus the JS
//! module that does the fetches) in Cloudflare's `workerd` and in Deno, both from npm, on
//! loopback, held to the same checks as the WASI HTTP component
//! (`signalbox_tests::edge::check_worker`): annotations and stripping, local answers, lookups
//! to the real score cache, and fail-open with the cache slow or stopped.
//!
//! Needs `scripts/build-edge-js` (the wasm and its glue) and `npm ci --prefix edge-worker/js`
//! (workerd, Deno); `scripts/test` does both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use signalbox_tests::edge::{EdgeRig, check_link, check_rates, check_worker};
use signalbox_tests::js_runtimes::JsRuntime;

#[test]
fn workerd_runs_the_worker() {
    let mut rig = EdgeRig::start("edge-worker-workerd").unwrap();
    let runtime = JsRuntime::workerd(&rig.dir, &rig.variables()).unwrap();
    check_link(&rig, runtime.port, "workerd");
    check_worker(&mut rig, runtime.port, "workerd");
    let output = runtime.output();
    assert!(!output.contains("Uncaught"), "{output}");
}

#[test]
fn deno_runs_the_worker() {
    let mut rig = EdgeRig::start("edge-worker-deno").unwrap();
    let runtime = JsRuntime::deno(&rig.dir, &rig.variables()).unwrap();
    check_link(&rig, runtime.port, "deno");
    check_worker(&mut rig, runtime.port, "deno");
    let output = runtime.output();
    assert!(!output.contains("Uncaught"), "{output}");
}

/// Rate buckets counted by the score cache across isolates: workerd and Deno in front of one
/// cache, requests alternating between them, share one budget.
#[test]
fn isolates_share_rate_budgets_through_the_score_cache() {
    let rig = EdgeRig::start("edge-worker-js-rates").unwrap();
    let workerd = JsRuntime::workerd(&rig.dir, &rig.variables()).unwrap();
    let deno = JsRuntime::deno(&rig.dir, &rig.variables()).unwrap();
    check_rates(&rig, &[workerd.port, deno.port], false, "workerd + deno");
}
