//! # signalbox-tests
//!
//! Test infrastructure shared by Signalbox's end-to-end runs: starting real Envoy with the
//! filter (rendered from `envoy/envoy.template.yaml` by `scripts/envoy-config`) and a raw
//! HTTP/1.1 client that can send what a hostile client sends (repeated headers, non-UTF-8
//! bytes, oversized values). The case table lives in `tests/scenarios/`; the Envoy runner is
//! `tests/tests/envoy_e2e.rs`.

pub mod bench;
pub mod conformance;
pub mod edge;
pub mod envoy;
pub mod fuzzing;
pub mod host;
pub mod http;
pub mod js_runtimes;
pub mod replay;
pub mod score_cache;
pub mod trace;
pub mod upstream;
pub mod wasi_http;
pub mod workload;

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}
