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
