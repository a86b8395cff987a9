//! Helpers shared by integration tests (and, by `#[path]`, by the fuzz targets).

pub mod fuzz_input;
