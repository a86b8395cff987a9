//! `signalbox-harness bench --quick` end to end: the filter and the no-op fixture in the host,
//! the eval-bench module in wasmtime and `signalbox bench-eval` natively. Asserts that the wasm
//! and native evaluations agree (equal checksums) and that every figure is a positive time;
//! the timing goals are the bench's to report, not a test's to enforce. Needs the `.wasm`
//! files and the `signalbox` CLI built first (`scripts/test` does).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use serde_json::Value;
use signalbox_tests::root;

#[test]
fn quick_bench_agrees_and_reports_positive_figures() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_signalbox-harness"))
        .args(["bench", "--quick", "--generate", "60", "--rounds", "2"])
        .arg("--signalbox")
        .arg(root().join("target/debug/signalbox"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["requests"], 60);
    for key in [
        "noop_ns",
        "filter_ns",
        "filter_over_noop",
        "native_eval_ns",
        "wasm_eval_ns",
        "wasm_over_native",
    ] {
        let figure = report[key].as_f64().unwrap_or(0.0);
        assert!(figure > 0.0 && figure.is_finite(), "{key} = {figure}");
    }
    let answered: u64 = report["filter_outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(answered, 60, "every request answered in the last round");
    assert!(stdout.contains("on both sides"), "{stdout}");
    assert_eq!(report["checksum"].as_str().unwrap().len(), 16);
}
