//! Fuzzes bundle loading: arbitrary bytes through `Policy::from_json_slice`; a bundle that loads
//! is evaluated against a fixed request and must survive a JSON round trip of its wire form.
//! The work is in `policy/tests/common/fuzz_input.rs`, which `cargo test` replays the corpus with.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // the `evaluate` half of the shared module
#[path = "../../tests/common/fuzz_input.rs"]
mod fuzz_input;

fuzz_target!(|data: &[u8]| {
    fuzz_input::bundle_parse(data);
});
