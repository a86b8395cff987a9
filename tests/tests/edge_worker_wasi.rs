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
//! --profile wasm-release`; `scripts/test` builds it) and the debug `signalbox-cache`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use signalbox_tests::edge::{EdgeRig, check_rates, check_worker};
use signalbox_tests::root;
use signalbox_tests::wasi_http::Server;

fn component() -> PathBuf {
    let path = root().join("target/wasm32-wasip2/wasm-release/signalbox_edge_worker.wasm");
    assert!(
        path.exists(),
        "no {}: cargo build -p signalbox-edge-worker --target wasm32-wasip2 --profile wasm-release",
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
