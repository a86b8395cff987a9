//! # signalbox-test-kit
//!
//! What every Signalbox runner shares and no adapter needs: scenario cases (`tests/scenarios/`,
//! their `expect`), the JSONL request and verdict formats the tools read and print, labelled
//! evaluation (`signalbox eval --labels`) and the evaluation loop the benches time natively and
//! inside a wasm VM. Pure like the core (no I/O), so it builds for wasm32 too.

pub mod bench;
pub mod cases;
pub mod labels;
pub mod requests;
