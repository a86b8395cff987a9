//! Random requests (headers, bytes, properties, bodies) through the real filter `.wasm` in the
//! wasmtime host: the filter must never trap. Input layout: `signalbox_tests::fuzzing`.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use signalbox_tests::fuzzing::{run_one, start_filter};
use signalbox_tests::host::Filter;

thread_local! {
    static FILTER: RefCell<Option<Filter>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    FILTER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let filter = cell.get_or_insert_with(|| {
            start_filter(&wasmtime::Engine::default()).expect("the filter starts")
        });
        if let Err(e) = run_one(filter, data) {
            panic!("{e:#}");
        }
    });
});
