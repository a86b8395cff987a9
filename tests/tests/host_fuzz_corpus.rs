//! Replays the cargo-fuzz corpus of the host target (`tests/fuzz/corpus/host_request/`, and
//! saved crashes in `tests/fuzz/regressions/host_request/` if any) through the real filter in
//! the wasmtime host, with the decoder the fuzz target uses: no input may trap the filter.
//! Fuzzing itself needs nightly flags; see `tests/fuzz/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use signalbox_tests::fuzzing::{run_one, start_filter};
use signalbox_tests::root;

fn inputs(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root().join("tests/fuzz").join(kind).join("host_request");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn no_corpus_input_traps_the_filter() {
    let corpus = inputs("corpus");
    assert!(
        corpus.len() >= 12,
        "the seed corpus is missing ({} files)",
        corpus.len()
    );
    let engine = wasmtime::Engine::default();
    let mut filter = start_filter(&engine).unwrap();
    let mut failures = Vec::new();
    for (path, bytes) in corpus.iter().chain(inputs("regressions").iter()) {
        if let Err(e) = run_one(&mut filter, bytes) {
            failures.push(format!("{}: {e:#}", path.display()));
            // A trapped VM stays failed: start a fresh one for the rest.
            filter = start_filter(&engine).unwrap();
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_decoder_builds_the_seed_requests() {
    // The seeds are policy/examples/requests.jsonl in the fuzz layout: Giovanni's is a GET of
    // /signup with his user agent.
    let request = signalbox_tests::fuzzing::request_from_bytes(
        b"\0/signup\081.62.10.4:40000\0\0\0user-agent\0Mozilla/5.0\0X-Empty\0\0accept\0*/*",
    );
    let header = |n: &str| signalbox_tests::host::first_header(&request.headers, n);
    assert_eq!(header(":method"), Some(&b"GET"[..]));
    assert_eq!(header(":path"), Some(&b"/signup"[..]));
    assert_eq!(header("user-agent"), Some(&b"Mozilla/5.0"[..]));
    assert_eq!(header("x-empty"), Some(&b""[..]));
    assert_eq!(header("accept"), Some(&b"*/*"[..]));
    assert_eq!(request.source_address, "81.62.10.4:40000");
    assert_eq!(request.route_name, None);
}
