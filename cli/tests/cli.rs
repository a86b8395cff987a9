//! End-to-end tests of the `signalbox` binary: the golden cases, the real default bundle,
//! lint errors with field paths, build digests and eval output.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn signalbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signalbox"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// A fresh-enough directory for one test's files (per test name and process).
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("signalbox-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn golden_cases_pass() {
    let out = signalbox(&["policy", "test", "--cases", "tests/scenarios/cases"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let summary = text.lines().last().unwrap();
    assert!(summary.ends_with("passed, 0 failed"), "{summary}");
    let passed: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed >= 30, "{summary}");
}

#[test]
fn gio_and_cam_hold_with_the_real_default_bundle() {
    let out = signalbox(&[
        "policy",
        "test",
        "--bundle",
        "policy/examples/default.yaml",
        "--cases",
        "tests/scenarios/default",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok    gio-passes-signup") && text.contains("ok    cam-challenged-signup"),
        "{text}"
    );
}

#[test]
fn failing_case_exits_non_zero_with_a_diff() {
    let dir = scratch_dir("badcase");
    let golden = root().join("tests/scenarios/bundles/golden.yaml");
    let case = serde_json::json!({
        "bundle": golden.to_str().unwrap(),
        "request": {"id": "x", "method": "GET", "path": "/", "headers": [["user-agent", "curl/8"]], "client_ip": "198.51.100.1"},
        "expect": {"decision": "block", "reasons": ["ip.tor"]}
    });
    std::fs::write(dir.join("wrong.json"), case.to_string()).unwrap();
    let out = signalbox(&["policy", "test", "--cases", dir.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("decision: expected block, got challenge"),
        "{text}"
    );
    assert!(text.contains("reasons: expected ip.tor"), "{text}");
    assert!(text.contains("0 passed, 1 failed"), "{text}");
}

#[test]
fn lint_reports_every_error_with_its_path() {
    let dir = scratch_dir("lint");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "format_version: 1\nrevision: 2\nmin_engine_version: 0.1.0\n\
         signals:\n  ua_automation: { weight: 101, tokens: [curl/] }\n  ip_lists: { nowhere: 10 }\n\
         lists:\n  hosting: { cidrs: [10.0.0.0/8, 300.1.1.1/8] }\n",
    )
    .unwrap();
    let out = signalbox(&["policy", "lint", bad.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("signals.ua_automation.weight: must be 0..=100"),
        "{text}"
    );
    assert!(
        text.contains("signals.ip_lists.nowhere: no list named \"nowhere\""),
        "{text}"
    );
    assert!(
        text.contains("lists.hosting.cidrs[1]: not an IP prefix"),
        "{text}"
    );

    std::fs::write(
        &bad,
        "format_version: 1\nrevision: 2\nmin_engine_version: 0.1.0\nsignal: {}\n",
    )
    .unwrap();
    let out = signalbox(&["policy", "lint", bad.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("unknown field `signal`"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_bundle_with_clearance_trust_still_loads_and_says_what_to_change() {
    let dir = scratch_dir("trust");
    let old = dir.join("old.yaml");
    std::fs::write(
        &old,
        "format_version: 1\nrevision: 2\nmin_engine_version: 0.1.0\n\
         signals:\n  clearance: { trust: 40, invalid_weight: 10 }\n",
    )
    .unwrap();
    let out = signalbox(&["policy", "lint", old.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: signals.clearance.trust: ignored")
            && text.contains("Remove the field"),
        "{text}"
    );
    assert!(text.contains("ok (revision 2)"), "{text}");
}

#[test]
fn eval_with_labels_prints_decisions_per_label() {
    let dir = scratch_dir("labels");
    let labels = dir.join("labels.jsonl");
    std::fs::write(
        &labels,
        "{\"id\":\"giovanni\",\"label\":\"human\"}\n{\"id\":\"curl-home\",\"label\":\"automation\"}\n",
    )
    .unwrap();
    let out = signalbox(&[
        "eval",
        "--bundle",
        "policy/examples/default.yaml",
        "--requests",
        "policy/examples/requests.jsonl",
        "--labels",
        labels.to_str().unwrap(),
        "--now",
        "1795392000",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let human = err.lines().find(|l| l.starts_with("human ")).unwrap();
    assert!(human.ends_with("0.00%"), "Giovanni passes: {err}");
    assert!(err.contains("humans passed 100.00%"), "{err}");
    assert!(err.contains("requests without a label"), "{err}");
}

#[test]
fn build_writes_canonical_json_with_digest() {
    let out_path =
        std::env::temp_dir().join(format!("signalbox-build-{}.json", std::process::id()));
    let out = signalbox(&[
        "policy",
        "build",
        "policy/examples/default.yaml",
        "-o",
        out_path.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let digest_line = text.lines().find(|l| l.starts_with("sha256:")).unwrap();
    assert_eq!(digest_line.len(), "sha256:".len() + 64);
    let bytes = std::fs::read(&out_path).unwrap();
    let policy = signalbox_policy::Policy::from_json_slice(&bytes).unwrap();
    let hex = policy.digest_hex();
    assert_eq!(digest_line, format!("sha256:{hex}"));
    assert!(
        policy
            .lists()
            .iter()
            .any(|l| &*l.name == "hosting" && l.set.prefix_count() > 10_000)
    );
    // Building the built JSON again is a fixed point.
    let again = std::env::temp_dir().join(format!("signalbox-build2-{}.json", std::process::id()));
    assert!(
        signalbox(&[
            "policy",
            "build",
            out_path.to_str().unwrap(),
            "-o",
            again.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
}

#[test]
fn eval_prints_one_verdict_per_request_and_a_summary() {
    let out = signalbox(&[
        "eval",
        "--bundle",
        "policy/examples/default.yaml",
        "--requests",
        "policy/examples/requests.jsonl",
        "--now",
        "1795392000",
    ]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let requests = std::fs::read_to_string(root().join("policy/examples/requests.jsonl")).unwrap();
    assert_eq!(lines.len(), requests.lines().count());
    let by_id = |id: &str| lines.iter().find(|v| v["id"] == id).unwrap().clone();
    assert_eq!(by_id("giovanni")["decision"], "pass");
    assert_eq!(by_id("campanella")["decision"], "challenge");
    assert_eq!(by_id("googlebot-verified")["decision"], "pass");
    assert_eq!(by_id("googlebot-spoofed")["decision"], "block");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("decisions") && stderr.contains("p99"),
        "{stderr}"
    );
}

#[test]
fn eval_uses_remote_context_by_request_id() {
    let dir = scratch_dir("remote");
    let remote = dir.join("remote.jsonl");
    std::fs::write(
        &remote,
        r#"{"id":"giovanni","ip":{"score":0,"decision":{"action":"ban","expires_at":1900000000}}}"#,
    )
    .unwrap();
    let out = signalbox(&[
        "eval",
        "--bundle",
        "policy/examples/default.yaml",
        "--requests",
        "policy/examples/requests.jsonl",
        "--remote",
        remote.to_str().unwrap(),
        "--now",
        "1795392000",
    ]);
    assert!(out.status.success());
    let gio = stdout(&out)
        .lines()
        .find(|l| l.contains("\"giovanni\""))
        .unwrap()
        .to_owned();
    assert!(
        gio.contains("\"decision\":\"block\"") && gio.contains("\"remote\":\"used\""),
        "{gio}"
    );
}

#[test]
fn keygen_sign_verify_and_rotation() {
    let dir = std::env::temp_dir().join(format!("signalbox-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    for kid in ["old", "new"] {
        let out = signalbox(&[
            "policy",
            "keygen",
            "--kid",
            kid,
            "--secret-out",
            &p(&format!("{kid}.secret")),
            "--public-out",
            &p("keys.json"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // keygen never overwrites a secret.
    assert!(
        !signalbox(&[
            "policy",
            "keygen",
            "--kid",
            "x",
            "--secret-out",
            &p("old.secret")
        ])
        .status
        .success()
    );
    let secret = std::fs::read_to_string(dir.join("old.secret")).unwrap();
    assert!(
        !stdout(&signalbox(&[
            "policy",
            "keygen",
            "--kid",
            "y",
            "--secret-out",
            &p("y.secret")
        ]))
        .contains(&secret[20..40])
    );

    let golden =
        std::fs::read_to_string(root().join("tests/scenarios/bundles/golden.yaml")).unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        format!("{golden}\nexpires_at: \"2027-06-01T00:00:00Z\"\n"),
    )
    .unwrap();
    for kid in ["old", "new"] {
        let out = signalbox(&[
            "policy",
            "sign",
            &p("b.yaml"),
            "--key",
            &p(&format!("{kid}.secret")),
            "-o",
            &p(&format!("{kid}.signed.json")),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = signalbox(&[
            "policy",
            "verify",
            &p(&format!("{kid}.signed.json")),
            "--keys",
            &p("keys.json"),
            "--now",
            "1795392000",
        ]);
        assert!(
            out.status.success() && stdout(&out).contains("ok, revision 7"),
            "{}",
            stdout(&out)
        );
    }
    // The prepared form: made only from a bundle that verifies, verified like it.
    let out = signalbox(&[
        "policy",
        "prepare",
        &p("old.signed.json"),
        "--keys",
        &p("keys.json"),
        "--now",
        "1795392000",
        "-o",
        &p("old.prepared"),
    ]);
    assert!(
        out.status.success()
            && stdout(&out).contains("revision 7")
            && stdout(&out).contains("signed with old"),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let verified = stdout(&signalbox(&[
        "policy",
        "verify",
        &p("old.signed.json"),
        "--keys",
        &p("keys.json"),
        "--now",
        "1795392000",
    ]));
    let out = signalbox(&[
        "policy",
        "verify",
        &p("old.prepared"),
        "--keys",
        &p("keys.json"),
        "--now",
        "1795392000",
    ]);
    // Same revision and digest as the envelope it came from.
    assert_eq!(
        stdout(&out).split_once(": ").map(|(_, r)| r.to_owned()),
        verified.split_once(": ").map(|(_, r)| r.to_owned())
    );
    let mut tampered = std::fs::read(dir.join("old.signed.json")).unwrap();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(dir.join("tampered.json"), &tampered).unwrap();
    let out = signalbox(&[
        "policy",
        "prepare",
        &p("tampered.json"),
        "--keys",
        &p("keys.json"),
        "--now",
        "1795392000",
        "-o",
        &p("tampered.prepared"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(!dir.join("tampered.prepared").exists());
    // Retire the old key: its signatures are refused for an unknown kid.
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keys.json")).unwrap()).unwrap();
    let only_new = serde_json::json!({"keys": [keys["keys"][1].clone()]});
    std::fs::write(dir.join("new-only.json"), only_new.to_string()).unwrap();
    let out = signalbox(&[
        "policy",
        "verify",
        &p("old.signed.json"),
        "--keys",
        &p("new-only.json"),
        "--now",
        "1795392000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("unknown key id \"old\""),
        "{}",
        stdout(&out)
    );
    let out = signalbox(&[
        "policy",
        "verify",
        &p("old.prepared"),
        "--keys",
        &p("new-only.json"),
        "--now",
        "1795392000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("unknown key id \"old\""),
        "{}",
        stdout(&out)
    );
    // Lower revision and expiry are refused.
    let out = signalbox(&[
        "policy",
        "verify",
        &p("new.signed.json"),
        "--keys",
        &p("keys.json"),
        "--now",
        "1795392000",
        "--active-revision",
        "8",
    ]);
    assert!(
        stdout(&out).contains("lower than the active revision 8"),
        "{}",
        stdout(&out)
    );
    let out = signalbox(&[
        "policy",
        "verify",
        &p("new.signed.json"),
        "--keys",
        &p("keys.json"),
        "--now",
        "1900000000",
    ]);
    assert!(stdout(&out).contains("expired"), "{}", stdout(&out));
    // Signing needs an expiry.
    assert!(
        !signalbox(&[
            "policy",
            "sign",
            "tests/scenarios/bundles/golden.yaml",
            "--key",
            &p("new.secret"),
            "-o",
            &p("x.json")
        ])
        .status
        .success()
    );
}

#[test]
fn diff_counts_flips_by_decision_pair() {
    let dir = scratch_dir("diff");
    let golden =
        std::fs::read_to_string(root().join("tests/scenarios/bundles/golden.yaml")).unwrap();
    let heavier = golden.replace("ip_lists: { hosting: 25", "ip_lists: { hosting: 45");
    assert_ne!(golden, heavier);
    std::fs::write(dir.join("new.yaml"), heavier).unwrap();
    let out = signalbox(&[
        "policy",
        "diff",
        "tests/scenarios/bundles/golden.yaml",
        dir.join("new.yaml").to_str().unwrap(),
        "--requests",
        "policy/examples/requests.jsonl",
        "--now",
        "1795392000",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("1 of 12 verdicts flip"), "{text}");
    assert!(
        text.contains("challenge -> block     1") && text.contains("campanella GET /signup"),
        "{text}"
    );
}

#[test]
fn lint_warns_about_stale_crawler_ranges_at_a_pinned_now() {
    // The shipped ranges are dated 2026-10-05 and the default bundle allows 90 days.
    let fresh = signalbox(&[
        "policy",
        "lint",
        "policy/examples/default.yaml",
        "--now",
        "1795392000", // 2026-11-24
    ]);
    assert!(fresh.status.success(), "{}", stdout(&fresh));
    assert!(
        !stdout(&fresh).contains("lists.googlebot"),
        "{}",
        stdout(&fresh)
    );
    let stale = signalbox(&[
        "policy",
        "lint",
        "policy/examples/default.yaml",
        "--now",
        "1801440000", // 2027-02-01
    ]);
    let text = stdout(&stale);
    assert!(
        stale.status.success(),
        "stale ranges are a warning, not an error: {text}"
    );
    assert!(
        text.contains("warning: lists.googlebot: ranges dated 2026-10-05 (119 days old)"),
        "{text}"
    );
}
