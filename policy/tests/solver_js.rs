//! The challenge page's JavaScript solver, run in Node.js against a real challenge: the
//! counter it submits must verify with the native verifier. (Node ships on our machines;
//! a browser runs the same script.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use signalbox_policy::page::SOLVER_JS;
use signalbox_policy::trust::{
    Binding, ChallengeParams, HmacKeys, issue_challenge, verify_solution, work_bits,
};

/// Return paths of several lengths move the end of `<challenge>:` across SHA-256 block
/// boundaries (the solver hashes the whole blocks of that prefix once).
#[test]
fn js_solver_finds_a_counter_the_server_accepts() {
    let long = format!("/search?q={}", "a".repeat(300));
    for return_path in [
        "/",
        "/signup",
        "/signup?plan=pro&ref=x",
        "/a/b/c/d/e/f/g/h",
        &long,
    ] {
        solve_in_node(return_path);
    }
}

fn solve_in_node(return_path: &str) {
    let keys = HmacKeys::new(("k1", &[5; 32]), None).unwrap();
    let binding = Binding::of("81.62.10.4".parse().ok(), b"Mozilla/5.0", "shop.example");
    let now = 1_795_392_000;
    let token = issue_challenge(
        &keys,
        &ChallengeParams {
            binding,
            nonce: [3; 16],
            now,
            ttl_seconds: 300,
            difficulty: 12,
            return_path,
        },
    )
    .unwrap();
    let config = serde_json::json!({"challenge": token, "difficulty": 12}).to_string();
    let harness = format!(
        r#"
        const elements = {{
          "sb-challenge": {{ textContent: {config:?} }},
          "sb-progress": {{ textContent: "" }},
          "sb-working": {{ hidden: true }},
          "sb-form": {{
            action: "",
            getAttribute(name) {{ return name === "action" ? "/.signalbox/verify" : null; }},
            submit() {{ console.log("ACTION=" + this.action); }},
          }},
        }};
        globalThis.document = {{ getElementById: (id) => elements[id] }};
        {SOLVER_JS}
        "#
    );
    let out = Command::new("node")
        .arg("-e")
        .arg(&harness)
        .output()
        .expect("node (Node.js) must be installed to test the challenge page's solver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page posts to `/.signalbox/verify?challenge=<token>&counter=<n>` (empty body).
    let action = stdout.trim().strip_prefix("ACTION=").unwrap();
    let query = action.strip_prefix("/.signalbox/verify?").unwrap();
    let (challenge, counter) = query.split_once('&').unwrap();
    assert_eq!(challenge.strip_prefix("challenge=").unwrap(), token);
    let counter: u64 = counter.strip_prefix("counter=").unwrap().parse().unwrap();
    assert!(work_bits(token.as_bytes(), counter) >= 12);
    let solved = verify_solution(&keys, token.as_bytes(), counter, &binding, now + 5).unwrap();
    assert_eq!(solved.return_path, return_path);
}
