//! Replays the cargo-fuzz corpora (`policy/fuzz/corpus/<target>/`) and saved crashes
//! (`policy/fuzz/regressions/<target>/`, if any) on stable Rust, through the same code the fuzz
//! targets run (`tests/common/fuzz_input.rs`). Fuzzing itself needs nightly flags; see
//! `policy/fuzz/README.md`.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::fuzz_input::{self, Input};
use signalbox_policy::{Clearance, ManualAction, Policy};

/// Every file under `policy/fuzz/<kind>/<target>/`, sorted; none if the folder is missing.
fn files(kind: &str, target: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| Ok((p.clone(), std::fs::read(&p)?)))
        .collect()
}

/// Runs `run` on every file, collecting the files that panic, and fails listing them.
fn replay(files: &[(PathBuf, Vec<u8>)], mut run: impl FnMut(&[u8])) {
    let failed: Vec<String> = files
        .iter()
        .filter(|(_, data)| catch_unwind(AssertUnwindSafe(|| run(data))).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} inputs panicked: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn bundle_parse_corpus() {
    let corpus = files("corpus", "bundle_parse").unwrap();
    assert!(
        !corpus.is_empty(),
        "no files in policy/fuzz/corpus/bundle_parse"
    );
    let mut loaded = 0;
    replay(&corpus, |data| {
        loaded += usize::from(fuzz_input::bundle_parse(data))
    });
    // The corpus must still reach the evaluation half, not only the error paths.
    assert!(loaded > 0, "none of {} bundles loaded", corpus.len());
    eprintln!(
        "bundle_parse: replayed {} files, {loaded} loaded",
        corpus.len()
    );
}

#[test]
fn evaluate_corpus() {
    let policies = fuzz_input::evaluate_policies().unwrap();
    let corpus = files("corpus", "evaluate").unwrap();
    assert!(
        !corpus.is_empty(),
        "no files in policy/fuzz/corpus/evaluate"
    );
    replay(&corpus, |data| fuzz_input::evaluate(&policies, data));
    eprintln!("evaluate: replayed {} files", corpus.len());
}

#[test]
fn regressions() {
    let policies = fuzz_input::evaluate_policies().unwrap();
    replay(&files("regressions", "bundle_parse").unwrap(), |data| {
        fuzz_input::bundle_parse(data);
    });
    replay(&files("regressions", "evaluate").unwrap(), |data| {
        fuzz_input::evaluate(&policies, data)
    });
}

#[test]
fn fixed_request_is_evaluated() {
    for bundle in fuzz_input::EVALUATE_BUNDLES {
        assert!(fuzz_input::bundle_parse(bundle.as_bytes()));
    }
    let facts = fuzz_input::fixed_request();
    assert_eq!(
        (facts.method.as_str(), facts.authority.as_str()),
        ("POST", "shop.example")
    );
    assert_eq!(facts.clearance, Clearance::Presented(b"abc.def".to_vec()));
    assert!(!fuzz_input::bundle_parse(b"{"));
    assert!(!fuzz_input::bundle_parse(
        br#"{"format_version":2,"revision":1,"min_engine_version":"0.1.0"}"#
    ));
}

#[test]
fn input_layout() {
    let mut data = vec![0b0011_0111]; // IPv6, bundle 1, clearance valid, remote IP and user
    data.extend(1_764_000_000u64.to_le_bytes());
    data.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0; 11]).chain(&[1]));
    data.extend(150u32.to_le_bytes());
    data.push(1);
    data.extend((-5i32).to_le_bytes());
    data.extend(7u32.to_le_bytes());
    data.push(9);
    data.extend(0i32.to_le_bytes());
    data.extend(b"GET\xff/a?b\xffUser-Agent\xffcurl/8\xff\x00\xfe\xffx-empty");
    let input = Input::decode(&data);
    assert_eq!(input.bundle, 1);
    assert_eq!(input.now, 1_764_000_000);
    assert_eq!(
        input.client_ip,
        "2001:db8::1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(input.clearance, Some(Clearance::Valid { difficulty: 16 }));
    let ip = input.remote.ip.unwrap();
    assert_eq!(ip.score, 150);
    assert_eq!(
        ip.decision.map(|d| (d.action, d.expires_at)),
        Some((ManualAction::Ban, 1_763_999_995))
    );
    assert_eq!(
        input.remote.user.map(|u| (u.score, u.decision)),
        Some((7, None))
    );
    assert_eq!(
        (input.method.as_str(), input.path.as_str()),
        ("GET", "/a?b")
    );
    assert_eq!(
        input.headers,
        [
            ("User-Agent".to_owned(), b"curl/8\xff\xfe".to_vec()),
            ("x-empty".to_owned(), Vec::new())
        ]
    );
    assert_eq!(input.facts().clearance, Clearance::Valid { difficulty: 16 });

    // Short inputs decode too: zeros, an IPv4 client, no headers.
    let empty = Input::decode(&[]);
    assert_eq!(
        (empty.now, empty.client_ip.to_string(), empty.headers.len()),
        (0, "0.0.0.0".to_owned(), 0)
    );
    let policies: Vec<Policy> = fuzz_input::evaluate_policies().unwrap();
    fuzz_input::evaluate(&policies, &[]);
    fuzz_input::evaluate(&policies, &data);
}
