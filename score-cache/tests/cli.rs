//! `signalbox decisions …` and `signalbox events send` (the `signalbox-cli` binary, built by
//! `cargo test --workspace` beside this crate's) against a real cache process: output, JSON
//! output and exit codes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn signalbox() -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_BIN_EXE_signalbox-cache"));
    let cli = cache.with_file_name("signalbox");
    assert!(
        cli.exists(),
        "{} is missing: build it first (cargo build -p signalbox-cli; cargo test --workspace does)",
        cli.display()
    );
    cli
}

fn run(port: u16, token: &str, args: &[&str]) -> Output {
    Command::new(signalbox())
        .args(args)
        .env("SIGNALBOX_CACHE_URL", format!("http://127.0.0.1:{port}"))
        .env("SIGNALBOX_TOKEN", token)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn decisions_and_events_from_the_shell() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let cache =
        common::CacheProcess::start(work.path(), &["--data".into(), data.display().to_string()]);
    let port = cache.port;

    let out = run(
        port,
        common::ADMIN,
        &[
            "decisions",
            "add",
            "--action",
            "ban",
            "--scope",
            "ip",
            "--key",
            "203.0.113.7",
            "--duration",
            "2h",
            "--reason",
            "card testing",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = added["decision"]["id"].as_str().unwrap().to_owned();
    assert_eq!(added["decision"]["origin"], "cli");

    let out = run(port, common::READ, &["decisions", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = text(&out);
    assert!(
        listing.contains(&id) && listing.contains("card testing"),
        "{listing}"
    );

    // A read token cannot add: refused, exit 1, the cache's message shown.
    let out = run(
        port,
        common::READ,
        &[
            "decisions",
            "add",
            "--action",
            "ban",
            "--scope",
            "user",
            "--key",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("lacks the admin scope"),
        "{}",
        text(&out)
    );
    // A bad key: refused naming the field.
    let out = run(
        port,
        common::ADMIN,
        &[
            "decisions",
            "add",
            "--action",
            "ban",
            "--scope",
            "range",
            "--key",
            "10.0.0.0/99",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("(key)"), "{}", text(&out));

    let out = run(
        port,
        common::INGEST,
        &[
            "events",
            "send",
            "--subject",
            "user:alice",
            "--type",
            "chargeback",
            "--severity",
            "high",
            "--id",
            "cb-1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 accepted"), "{}", text(&out));
    let out = run(
        port,
        common::INGEST,
        &[
            "events",
            "send",
            "--subject",
            "user:alice",
            "--type",
            "chargeback",
            "--id",
            "cb-1",
            "--json",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"accepted":0,"duplicates":1}"#
    );
    let jsonl = work.path().join("events.jsonl");
    std::fs::write(&jsonl, "{\"id\":\"f1\",\"subject\":{\"scope\":\"ip\",\"key\":\"198.51.100.4\"},\"type\":\"failed_login\",\"severity\":\"low\"}\n\n{\"id\":\"f2\",\"subject\":{\"scope\":\"ip\",\"key\":\"198.51.100.4\"},\"type\":\"failed_login\",\"severity\":\"low\"}\n").unwrap();
    let out = run(
        port,
        common::INGEST,
        &["events", "send", "--file", jsonl.to_str().unwrap()],
    );
    assert!(text(&out).contains("2 accepted"), "{}", text(&out));

    let out = run(port, common::ADMIN, &["decisions", "delete", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(port, common::ADMIN, &["decisions", "delete", &id]);
    assert_eq!(out.status.code(), Some(1));

    // Nobody listening: exit 3.
    drop(cache);
    let out = run(port, common::READ, &["decisions", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

#[test]
fn policy_push_canary_promote_abort_and_fleet_from_the_shell() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    // This cache accepts unsigned bundles (--allow-unsigned), so plain JSON can be pushed here;
    // signed pushes and refusals are covered in tests/store_suite.rs.
    let cache =
        common::CacheProcess::start(work.path(), &["--data".into(), data.display().to_string()]);
    let port = cache.port;
    let bundle = |rev: u64| {
        let path = work.path().join(format!("b{rev}.json"));
        std::fs::write(
            &path,
            format!(r#"{{"format_version":1,"revision":{rev},"min_engine_version":"0.1.0"}}"#),
        )
        .unwrap();
        path.display().to_string()
    };
    let out = run(port, common::ADMIN, &["policy", "push", &bundle(10)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("stable revision 10"), "{}", text(&out));
    let out = run(port, common::ADMIN, &["policy", "push", &bundle(9)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("lower than the active revision 10"),
        "{}",
        text(&out)
    );
    let out = run(
        port,
        common::ADMIN,
        &["policy", "push", &bundle(11), "--canary", "10"],
    );
    assert!(
        text(&out).contains("canary revision 11 at 10%"),
        "{}",
        text(&out)
    );
    let out = run(port, common::ADMIN, &["policy", "abort"]);
    assert!(
        text(&out).contains("aborted: stable revision 10, canary revision none"),
        "{}",
        text(&out)
    );
    let out = run(
        port,
        common::ADMIN,
        &["policy", "push", &bundle(12), "--canary", "50"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run(port, common::ADMIN, &["policy", "promote", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stable_revision"], 12);

    let report = serde_json::json!({"node_id": "envoy-1/signalbox", "stable_revision": 12, "clock_skew_ms": 3,
        "reported_at": 1, "last_error": "bundle revision 9 refused"});
    let (s, _) = common::post(port, "/v1/fleet", common::READ, &report.to_string()).unwrap();
    assert_eq!(s, 204);
    let out = run(port, common::READ, &["fleet"]);
    let listing = text(&out);
    assert!(
        listing.contains("envoy-1/signalbox") && listing.contains("bundle revision 9 refused"),
        "{listing}"
    );
}

/// The requests of every scenario case and of `policy/examples/requests.jsonl`, as facts (each
/// case with the edge headers it trusts).
fn replay_corpus() -> Vec<signalbox_policy::Facts> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut facts = Vec::new();
    let mut cases: Vec<_> = std::fs::read_dir(root.join("tests/scenarios/cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    for path in cases {
        let text = std::fs::read_to_string(&path).unwrap();
        let case: signalbox_test_kit::cases::Case = serde_norway::from_str(&text).unwrap();
        facts.push(case.request.to_facts(&case.edge_header_names()));
    }
    let edge = signalbox_policy::EdgeHeaderNames::conventional();
    for line in std::fs::read_to_string(root.join("policy/examples/requests.jsonl"))
        .unwrap()
        .lines()
    {
        let request: signalbox_test_kit::requests::RequestLine =
            serde_json::from_str(line).unwrap();
        facts.push(request.to_facts(&edge));
    }
    facts
}

fn golden_text() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join("tests/scenarios/bundles/golden.yaml")).unwrap()
}

fn policy_of(yaml: &str) -> signalbox_policy::Policy {
    let value: serde_json::Value = serde_norway::from_str(yaml).unwrap();
    signalbox_policy::Policy::from_json_slice(value.to_string().as_bytes()).unwrap()
}

/// `signalbox policy diff --log`: records an edge would ship for the scenario requests (built by
/// `signalbox_pipeline::record`, posted to a real cache) replay against a candidate to the flips
/// the candidate makes on the original requests, raw addresses and all; the same bundle flips
/// nothing; rate-limited records, records a manual decision decided and records without facts
/// are counted, not replayed.
#[test]
fn policy_diff_replays_the_decision_log_against_a_candidate() {
    use signalbox_pipeline::Final;
    use signalbox_pipeline::record::{Decided, Recorder, decision_record};

    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let cache =
        common::CacheProcess::start(work.path(), &["--data".into(), data.display().to_string()]);
    let golden_yaml = golden_text();
    let golden = policy_of(&golden_yaml);
    // Heavier hosting and login weights, and a list the recording bundle did not have.
    let candidate_yaml = golden_yaml
        .replace("ip_lists: { hosting: 25", "ip_lists: { hosting: 45")
        .replace(
            "path_prefix: /login, methods: [POST], weight: 15",
            "path_prefix: /login, methods: [POST], weight: 35",
        )
        .replace(
            "  tor: { source: fixture,",
            "  fresh: { source: fixture, cidrs: [100.64.0.0/10] }\n  tor: { source: fixture,",
        );
    assert_ne!(candidate_yaml, golden_yaml);
    let candidate = policy_of(&candidate_yaml);
    std::fs::write(work.path().join("candidate.yaml"), &candidate_yaml).unwrap();
    std::fs::write(work.path().join("golden.yaml"), &golden_yaml).unwrap();

    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let corpus = replay_corpus();
    assert!(corpus.len() > 50, "{} requests", corpus.len());
    let mut records = Vec::new();
    // What the candidate flips on the original requests: (recorded, candidate) -> count.
    let mut expected: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for (i, facts) in corpus.iter().enumerate() {
        let assessment = golden.assess(facts, now_s);
        let asked = assessment.lookup().is_some();
        let verdict = golden.decide(assessment, None, now_s);
        let last = Final::of(&verdict, false);
        records.push(decision_record(
            Recorder {
                node_id: "edge-test",
                hash_key: b"log key",
            },
            &golden,
            Decided {
                request_id: &format!("r{i}"),
                facts,
                verdict: &verdict,
                last,
                rate_limited: false,
                context_asked: asked,
                context: None,
                at_ms: now_s * 1_000,
            },
        ));
        let a = candidate.assess(facts, now_s);
        let context =
            (a.lookup().is_some() && !asked).then(signalbox_policy::RemoteContext::default);
        let after = candidate.decide(a, context.as_ref(), now_s);
        let (b, a) = (last.intended(), Final::of(&after, false).intended());
        if b != a {
            *expected
                .entry((b.as_str().to_owned(), a.as_str().to_owned()))
                .or_default() += 1;
        }
    }
    assert!(!expected.is_empty(), "the candidate must flip something");
    // One throttled by a rate budget, one from an edge that kept no facts.
    let mut limited = records[0].clone();
    limited.request_id = "limited".into();
    limited.decision = "throttle".into();
    limited.rate_limited = true;
    let mut bare = records[1].clone();
    bare.request_id = "bare".into();
    bare.facts = None;
    // One blocked by a manual ban on its address: whatever the candidate, it stays blocked.
    let mut banned = records[2].clone();
    banned.request_id = "banned".into();
    banned.decision = "block".into();
    banned.manual_decision = Some("ip".into());
    records.push(limited);
    records.push(bare);
    records.push(banned);
    let total = records.len();
    for chunk in records.chunks(40) {
        let body = serde_json::json!({ "records": chunk }).to_string();
        let (status, answer) =
            common::post(cache.port, "/v1/decisions/log", common::READ, &body).unwrap();
        assert_eq!(status, 200, "{answer}");
    }

    let diff = |bundle: &str, json: bool| {
        let path = work.path().join(bundle);
        let mut args = vec![
            "policy",
            "diff",
            path.to_str().unwrap(),
            "--log",
            "--since",
            "1h",
        ];
        if json {
            args.push("--json");
        }
        run(cache.port, common::READ, &args)
    };
    let out = diff("candidate.yaml", true);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], total);
    assert_eq!(report["replayed"], total - 3);
    assert_eq!(report["rate_limited"], 1);
    assert_eq!(report["manual_decision"], 1);
    assert_eq!(report["without_facts"], 1);
    let mut got: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for pair in report["flips"].as_array().unwrap() {
        got.insert(
            (
                pair["from"].as_str().unwrap().to_owned(),
                pair["to"].as_str().unwrap().to_owned(),
            ),
            pair["count"].as_u64().unwrap(),
        );
    }
    assert_eq!(got, expected, "{report}");
    assert_eq!(
        report["lists_in_no_record"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| *l == "fresh")
            .count(),
        1
    );

    let out = diff("golden.yaml", true);
    let same: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(same["flipped"], 0, "{same}");
    assert_eq!(same["class_changes"].as_array().unwrap().len(), 0, "{same}");

    let out = diff("candidate.yaml", false);
    let human = text(&out);
    assert!(out.status.success(), "{human}");
    assert!(
        human.starts_with(&format!(
            "replayed {} of {total} logged verdicts",
            total - 3
        )),
        "{human}"
    );
    assert!(human.contains("1 throttled by a rate budget"), "{human}");
    assert!(human.contains("1 decided by a manual decision"), "{human}");

    // Without a token the cache refuses, and the exit code says so.
    let out = Command::new(signalbox())
        .args(["policy", "diff", "x.yaml", "--log"])
        .env(
            "SIGNALBOX_CACHE_URL",
            format!("http://127.0.0.1:{}", cache.port),
        )
        .env("SIGNALBOX_TOKEN", "not-a-token")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out)); // x.yaml does not exist
}
