//! The `signalbox-cache` binary as a real process on loopback, for both stores: it serves,
//! survives `kill -9` without losing or doubling an acknowledged write, and rides out Redis
//! being killed under load (503 while it is down, 200 again once it is back).
//!
//! CI runs quick versions. The full runs are the same tests with more rounds:
//! `SIGNALBOX_CRASH_ROUNDS=30 SIGNALBOX_CRASH_CLIENTS=8 cargo test --release -p signalbox-score-cache --test process -- --nocapture`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN, CacheProcess, INGEST, READ};
use serde_json::{Value, json};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn serves_the_api(cache: &CacheProcess) {
    let port = cache.port;
    let events = json!({"events": [
        {"id": "p1", "subject": {"scope": "ip", "key": "203.0.113.9"}, "type": "abuse_report", "severity": "high"},
        {"id": "p2", "subject": {"scope": "user", "key": "carol"}, "type": "failed_login", "severity": "low"}
    ]});
    let (s, body) = common::post(port, "/v1/events", INGEST, &events.to_string()).unwrap();
    assert_eq!(s, 200, "{body}");
    let (s, body) = common::post(
        port,
        "/v1/decisions",
        ADMIN,
        &json!({"action": "ban", "scope": "country", "key": "ch", "duration_seconds": 600})
            .to_string(),
    )
    .unwrap();
    assert_eq!(s, 201, "{body}");
    let (s, body) = common::get(port, "/v1/context?ip=203.0.113.9&user=carol", Some(READ)).unwrap();
    assert_eq!(s, 200, "{body}");
    let answer: signalbox_wire::ContextAnswerV1 = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer.ip.unwrap().score,
        30,
        "high severity: the bundle's 30 points"
    );
    assert_eq!(answer.user.unwrap().score, 5);
    let (s, body) = common::get(port, "/v1/decisions/stream?since=0", Some(READ)).unwrap();
    assert_eq!(s, 200);
    let page: signalbox_wire::DecisionPageV1 = serde_json::from_str(&body).unwrap();
    assert_eq!(page.decisions.len(), 1);
    assert_eq!(page.decisions[0].key, "CH");
    let (s, body) = common::get(port, "/metrics", None).unwrap();
    assert_eq!(s, 200);
    assert!(body.contains("signalbox_cache_requests_total"), "{body}");
    assert!(
        body.contains("signalbox_cache_events_total{outcome=\"accepted\"} 2"),
        "{body}"
    );
    assert_eq!(common::get(port, "/readyz", None).unwrap().0, 200);
    let (s, body) = common::get(port, "/v1/context?ip=1.2.3.4", None).unwrap();
    assert_eq!(
        (s, json_of(&body)["error"].as_str()),
        (401, Some("unauthorized"))
    );
}

#[test]
fn serves_on_loopback_embedded() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let cache = CacheProcess::start(work.path(), &["--data".into(), data.display().to_string()]);
    serves_the_api(&cache);
}

#[test]
fn serves_on_loopback_redis() {
    let redis = common::Redis::start();
    let work = tempfile::tempdir().unwrap();
    let cache = CacheProcess::start(work.path(), &["--redis".into(), redis.url()]);
    serves_the_api(&cache);
}

/// What clients got acknowledged while the process was being killed.
#[derive(Default)]
struct Acknowledged {
    /// Subjects of acknowledged events (one event of 10 points per subject).
    events: BTreeSet<String>,
    /// Ids of acknowledged decisions.
    decisions: BTreeSet<String>,
}

/// Clients ingest events (one per subject, retried with the same id until acknowledged) and
/// post decisions while `kill` strikes `rounds` times; then every acknowledged write must be
/// there exactly once: each subject scores exactly 10 (0: lost, 20: counted twice) and each
/// acknowledged decision is in the stream once.
fn crash_run(port: u16, rounds: usize, clients: usize, mut kill: impl FnMut()) {
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (acked, stop, refused) = (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&refused));
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let subject = format!("c{c}-s{n}");
                    let body = json!({"events": [{"id": format!("{subject}-e"), "subject": {"scope": "user", "key": subject},
                        "type": "failed_login", "severity": "low", "impact": 10}]})
                    .to_string();
                    // Retry the same event id until acknowledged (the producer's contract).
                    loop {
                        match common::post(port, "/v1/events", INGEST, &body) {
                            Ok((200, _)) => {
                                acked.lock().unwrap().events.insert(subject.clone());
                                break;
                            }
                            _ => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                if stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    if n % 5 == 0 {
                        let d = json!({"action": "challenge", "scope": "user", "key": subject, "duration_seconds": 86_400});
                        if let Ok((201, body)) = common::post(port, "/v1/decisions", ADMIN, &d.to_string()) {
                            let id = json_of(&body)["decision"]["id"].as_str().unwrap().to_owned();
                            acked.lock().unwrap().decisions.insert(id);
                        }
                    }
                }
            })
        })
        .collect();
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(300));
        kill();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap();
    assert!(
        acked.events.len() > rounds,
        "the clients got too little through to mean anything"
    );
    // Every acknowledged event: exactly once.
    let subjects: Vec<&String> = acked.events.iter().collect();
    for chunk in subjects.chunks(1) {
        let subject = chunk[0];
        let (s, body) =
            common::get(port, &format!("/v1/context?user={subject}"), Some(READ)).unwrap();
        assert_eq!(s, 200, "{body}");
        let score = json_of(&body)["user"]["score"].as_u64();
        assert_eq!(
            score,
            Some(10),
            "{subject}: 0 means lost, 20 counted twice ({body})"
        );
    }
    // Every acknowledged decision: in the stream, once.
    let mut seen = Vec::new();
    let mut cursor = "0".to_owned();
    loop {
        let (s, body) = common::get(
            port,
            &format!("/v1/decisions/stream?since={cursor}"),
            Some(READ),
        )
        .unwrap();
        assert_eq!(s, 200, "{body}");
        let page: signalbox_wire::DecisionPageV1 = serde_json::from_str(&body).unwrap();
        seen.extend(page.decisions.into_iter().map(|d| d.id));
        cursor = page.cursor;
        if !page.more {
            break;
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a decision appeared twice");
    for id in &acked.decisions {
        assert!(unique.contains(id), "acknowledged decision {id} lost");
    }
    println!(
        "crash run: {rounds} kills, {} events and {} decisions acknowledged, {} attempts refused while down; all present once",
        acked.events.len(),
        acked.decisions.len(),
        refused.load(Ordering::Relaxed)
    );
}

#[test]
fn kill_9_loses_no_acknowledged_write_embedded() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut cache =
        CacheProcess::start(work.path(), &["--data".into(), data.display().to_string()]);
    let port = cache.port;
    let rounds = env_number("SIGNALBOX_CRASH_ROUNDS", 3);
    let clients = env_number("SIGNALBOX_CRASH_CLIENTS", 4);
    crash_run(port, rounds, clients, || cache.kill_and_restart());
}

#[test]
fn kill_9_of_redis_loses_no_acknowledged_write() {
    let mut redis = common::Redis::start();
    let work = tempfile::tempdir().unwrap();
    let cache = CacheProcess::start(work.path(), &["--redis".into(), redis.url()]);
    let rounds = env_number("SIGNALBOX_CRASH_ROUNDS", 3);
    let clients = env_number("SIGNALBOX_CRASH_CLIENTS", 4);
    crash_run(cache.port, rounds, clients, || redis.restart());
}

/// Redis killed under load: the cache answers 503 (with `retry-after`) while it is down —
/// never a hang past the store deadline, never a crash — and serves again once it is back.
#[test]
fn redis_killed_under_load() {
    let mut redis = common::Redis::start();
    let work = tempfile::tempdir().unwrap();
    let cache = CacheProcess::start(
        work.path(),
        &[
            "--redis".into(),
            redis.url(),
            "--store-timeout-ms".into(),
            "200".into(),
        ],
    );
    let port = cache.port;
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::<(u16, Duration)>::new()));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (stop, statuses) = (Arc::clone(&stop), Arc::clone(&statuses));
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let started = Instant::now();
                    let status = common::get(
                        port,
                        &format!("/v1/context?ip=10.{i}.{}.{}", n / 250 % 250, n % 250),
                        Some(READ),
                    )
                    .map_or(0, |(s, _)| s);
                    statuses.lock().unwrap().push((status, started.elapsed()));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    std::thread::sleep(Duration::from_millis(800));
    let during: Vec<(u16, Duration)> = statuses.lock().unwrap().drain(..).collect();
    redis.restart();
    // Back: within a few seconds every answer is 200 again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut recovered = false;
    while Instant::now() < deadline && !recovered {
        std::thread::sleep(Duration::from_millis(200));
        let recent: Vec<u16> = statuses.lock().unwrap().drain(..).map(|(s, _)| s).collect();
        recovered = !recent.is_empty() && recent.iter().all(|s| *s == 200);
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    let unavailable: Vec<&(u16, Duration)> = during.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        !unavailable.is_empty(),
        "no 503 while Redis was down: {during:?}"
    );
    assert!(
        during.iter().all(|(s, _)| *s == 200 || *s == 503),
        "only 200 (before the kill) or 503: {:?}",
        during
            .iter()
            .filter(|(s, _)| *s != 200 && *s != 503)
            .collect::<Vec<_>>()
    );
    assert!(
        recovered,
        "the cache did not serve again after Redis came back"
    );
    let mut slow: Vec<Duration> = unavailable.iter().map(|(_, d)| *d).collect();
    slow.sort();
    println!(
        "Redis down: {} answers, {} of them 503; 503 latency p50 {:?}, max {:?}",
        during.len(),
        unavailable.len(),
        slow[slow.len() / 2],
        slow[slow.len() - 1]
    );
    assert_eq!(
        common::get(port, "/healthz", None).unwrap().0,
        200,
        "the process is alive"
    );
}

fn curl(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `--tls-cert` / `--tls-key`: HTTPS with a certificate a client verifies (made here with the
/// `openssl` command), plain HTTP refused on that port.
#[test]
fn serves_https_with_a_certificate() {
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let data = work.path().join("data");
    let cache = CacheProcess::start(
        work.path(),
        &[
            "--data".into(),
            data.display().to_string(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
    );
    let base = format!("https://127.0.0.1:{}", cache.port);
    let cacert = cert.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&["--cacert", &cacert, &format!("{base}/healthz")]).0 != 0 {
        assert!(Instant::now() < deadline, "no HTTPS answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let auth = format!("authorization: Bearer {READ}");
    let (code, body) = curl(&[
        "--cacert",
        &cacert,
        "-H",
        &auth,
        &format!("{base}/v1/context?ip=192.0.2.1"),
    ]);
    assert_eq!(code, 0, "{body}");
    let answer: signalbox_wire::ContextAnswerV1 = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.ip.unwrap().score, 0);
    // Without the certificate as a root, curl refuses the server (exit 60): it is really TLS.
    let (code, body) = curl(&["-H", &auth, &format!("{base}/v1/context?ip=192.0.2.1")]);
    assert_eq!(code, 60, "{body}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let (code, _) = curl(&[&format!("http://127.0.0.1:{}/healthz", cache.port)]);
    assert_ne!(code, 0);
}
