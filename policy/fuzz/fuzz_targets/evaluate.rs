//! Fuzzes request evaluation: arbitrary bytes decoded into method, path, headers (raw, possibly
//! non-UTF-8 values), client IP, `now`, clearance and remote context, then `assess` and `decide`
//! (with and without remote context) against fixed bundles. The decoding and the checks are in
//! `policy/tests/common/fuzz_input.rs`, which `cargo test` replays the corpus with.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use signalbox_policy::Policy;

#[allow(dead_code)] // the `bundle_parse` half of the shared module
#[path = "../../tests/common/fuzz_input.rs"]
mod fuzz_input;

static POLICIES: OnceLock<Vec<Policy>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let policies = POLICIES
        .get_or_init(|| fuzz_input::evaluate_policies().expect("the fixed fuzz bundles load"));
    fuzz_input::evaluate(policies, data);
});
