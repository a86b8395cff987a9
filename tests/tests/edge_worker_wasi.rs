//! The edge worker's WASI HTTP component (`edge-worker/`, wasm32-wasip2) served by our
//! wasi-http host (`signalbox_tests::wasi_http`, wasmtime-wasi-http, a fresh instance per
//! request as Spin gives WASIp2 components) on loopback, in front of a real origin and the real
//! score cache (`signalbox-cache`, embedded store) behind a relay that can make it slow:
//!
//! - a browser passes to origin with the `x-signalbox-*` annotations; the client's own copies,
//!   the runtime's address header and hop-by-hop headers never reach origin, and origin's
//!   `x-signalbox-*` headers never reach the client;
//! - automation is challenged, a denied address blocked, without reaching origin;
//! - a sensitive route asks the cache: an event ingested for the address makes its next
//!   request challenged, a manual ban in the cache's answer blocks it;
//! - with the cache slow (400 ms against the bundle's 50 ms) or stopped, requests pass
//!   (fail-open bundle) without waiting for it.
//!
//! Needs the component (`cargo build -p signalbox-edge-worker --target wasm32-wasip2
//! --profile wasm-release`; `scripts/test` builds it) and the debug `signalbox-cache`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signalbox_tests::http::{Response, send};
use signalbox_tests::root;
use signalbox_tests::score_cache::{
    ADMIN_TOKEN, EDGE_TOKEN, ORIGIN_TOKEN, ScoreCache, SlowRelay, golden_json,
};
use signalbox_tests::wasi_http::Server;

const GIO_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const SECRET: &str = "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

fn component() -> PathBuf {
    let path = root().join("target/wasm32-wasip2/wasm-release/signalbox_edge_worker.wasm");
    assert!(
        path.exists(),
        "no {}: cargo build -p signalbox-edge-worker --target wasm32-wasip2 --profile wasm-release",
        path.display()
    );
    path
}

fn work(name: &str) -> PathBuf {
    let dir = root().join("target/e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An origin that answers every request with the request head it received (one line per
/// header) and sets an `x-signalbox-score` header of its own, which must never reach the
/// client. Keeps the last request head for the test to read.
struct EchoOrigin {
    port: u16,
    last: Arc<Mutex<Vec<(String, String)>>>,
}

impl EchoOrigin {
    fn start() -> EchoOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let last: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = last.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut head = Vec::new();
                        let mut line = String::new();
                        let mut length = 0usize;
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            if let Some((n, v)) = l.split_once(':') {
                                let (n, v) = (n.trim().to_ascii_lowercase(), v.trim().to_owned());
                                if n == "content-length" {
                                    length = v.parse().unwrap_or(0);
                                }
                                head.push((n, v));
                            } else {
                                head.push((":request".into(), l.to_owned()));
                            }
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let text: String =
                            head.iter().map(|(n, v)| format!("{n}: {v}\n")).collect();
                        *seen.lock().unwrap() = head;
                        let mut w = &conn;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-signalbox-score: 0\r\nx-origin: yes\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if w.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoOrigin { port, last }
    }

    fn last(&self) -> Vec<(String, String)> {
        self.last.lock().unwrap().clone()
    }
}

fn browser(ip: &str) -> Vec<(String, Vec<u8>)> {
    [
        ("host", "shop.example"),
        ("user-agent", GIO_UA),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "it-IT,it;q=0.9,en;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "none"),
        ("sec-fetch-dest", "document"),
        ("x-forwarded-for", ip),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
    .collect()
}

fn verdict(r: &Response) -> Value {
    r.header("x-signalbox-verdict")
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_else(|| panic!("no verdict header (status {}): {}", r.status, r.text()))
}

#[test]
fn the_component_scores_forwards_answers_and_asks_the_cache() {
    let dir = work("edge-worker-wasi");
    let origin = EchoOrigin::start();
    let mut cache =
        ScoreCache::start(&dir.join("cache"), &golden_json(&dir, |_| {}).unwrap()).unwrap();
    let relay = SlowRelay::start(cache.port).unwrap();
    let golden: Value = serde_json::from_slice(
        &std::fs::read(golden_json(&dir.join("edge"), |_| {}).unwrap()).unwrap(),
    )
    .unwrap();
    // Behind one trusted load balancer: the client is the last x-forwarded-for entry (the
    // runtime's own address header is the fallback).
    let config = json!({
        "bundle": golden,
        "allow_unsigned": true,
        "debug_verdict_header": true,
        "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 0},
        "score_cache": {"cluster": "signalbox_cache"},
    });
    let env: Vec<(String, String)> = [
        ("SIGNALBOX_CONFIG", config.to_string()),
        (
            "SIGNALBOX_ORIGIN_URL",
            format!("http://127.0.0.1:{}", origin.port),
        ),
        (
            "SIGNALBOX_CACHE_URL",
            format!("http://127.0.0.1:{}", relay.port),
        ),
        ("SIGNALBOX_CACHE_TOKEN", EDGE_TOKEN.to_owned()),
        ("SIGNALBOX_SECRET", SECRET.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let server = Server::start(&component(), &env, &dir.join("worker.log")).unwrap();

    // A browser passes to origin, annotated; forged and runtime headers stay behind.
    let mut headers = browser("81.62.0.1");
    headers.push(("x-signalbox-decision".into(), b"pass-forged".to_vec()));
    headers.push(("connection".into(), b"keep-alive, x-hop".to_vec()));
    let r = send(server.port, "GET", "/products/1?color=red", &headers, b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(verdict(&r)["decision"], "pass");
    assert_eq!(r.header("x-origin").as_deref(), Some("yes"));
    assert_eq!(
        r.header("x-signalbox-score"),
        None,
        "origin's own x-signalbox-* header leaked"
    );
    let seen = origin.last();
    let at_origin = |name: &str| -> Vec<String> {
        seen.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        at_origin(":request"),
        ["GET /products/1?color=red HTTP/1.1"]
    );
    assert_eq!(at_origin("x-signalbox-decision"), ["pass"], "{seen:?}");
    assert!(at_origin("spin-client-addr").is_empty(), "{seen:?}");
    assert!(
        at_origin("x-hop").is_empty() && at_origin("connection").is_empty(),
        "{seen:?}"
    );
    assert_eq!(at_origin("accept-language"), ["it-IT,it;q=0.9,en;q=0.8"]);

    // Automation is challenged and a denied address blocked; neither reaches origin.
    let mut curl = browser("81.62.0.2");
    curl.retain(|(n, _)| n == "host" || n == "x-forwarded-for");
    curl.push(("user-agent".into(), b"curl/8.5.0".to_vec()));
    curl.push(("accept".into(), b"*/*".to_vec()));
    let r = send(server.port, "GET", "/products/1", &curl, b"").unwrap();
    assert_eq!(verdict(&r)["decision"], "challenge", "{}", r.text());
    assert_ne!(r.header("x-origin").as_deref(), Some("yes"));
    let r = send(server.port, "GET", "/", &browser("198.51.100.66"), b"").unwrap();
    assert_eq!(
        (r.status, verdict(&r)["decision"].as_str()),
        (403, Some("block"))
    );

    // A sensitive route asks the cache (which answers through the relay).
    let ip = "81.62.0.50";
    let r = send(server.port, "GET", "/signup", &browser(ip), b"").unwrap();
    let v = verdict(&r);
    assert_eq!(
        (v["decision"].as_str(), v["remote"].as_str()),
        (Some("pass"), Some("used")),
        "{v}"
    );
    // Chargebacks reported for the address: its next request is challenged.
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("cb-{i}"), "subject": {"scope": "ip", "key": ip}, "type": "chargeback", "severity": "critical", "impact": 100}))
        .collect();
    let (status, answer) = cache
        .call(
            "POST",
            "/v1/events",
            ORIGIN_TOKEN,
            Some(&json!({"events": events})),
        )
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let r = send(server.port, "GET", "/signup", &browser(ip), b"").unwrap();
    assert_ne!(verdict(&r)["decision"], "pass", "{}", verdict(&r));
    // A manual ban comes back in the cache's answer for another address: blocked.
    let banned = "81.62.0.51";
    let (status, _) = cache
        .call(
            "POST",
            "/v1/decisions",
            ADMIN_TOKEN,
            Some(&json!({"action": "ban", "scope": "ip", "key": banned, "duration_seconds": 600})),
        )
        .unwrap();
    assert_eq!(status, 201);
    let r = send(server.port, "GET", "/signup", &browser(banned), b"").unwrap();
    assert_eq!(
        (r.status, verdict(&r)["decision"].as_str()),
        (403, Some("block"))
    );

    // The cache slow: requests pass (fail-open) without its answer, so without waiting for it.
    relay.set_delay(Duration::from_millis(400));
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let started = Instant::now();
        let r = send(
            server.port,
            "GET",
            "/signup",
            &browser(&format!("81.62.1.{i}")),
            b"",
        )
        .unwrap();
        slowest = slowest.max(started.elapsed());
        let v = verdict(&r);
        assert_eq!(
            (v["decision"].as_str(), v["remote"].as_str()),
            (Some("pass"), Some("unavailable_fail_open")),
            "{v}"
        );
    }
    println!("cache slow (400 ms, timeout 50 ms): 5 requests passed, slowest {slowest:?}");
    relay.set_delay(Duration::ZERO);

    // The cache stopped: the same.
    cache.stop();
    let r = send(server.port, "GET", "/signup", &browser("81.62.2.1"), b"").unwrap();
    let v = verdict(&r);
    assert_eq!(
        (v["decision"].as_str(), v["remote"].as_str()),
        (Some("pass"), Some("unavailable_fail_open")),
        "{v}"
    );
    assert_eq!(server.failures(), 0, "the host saw guest failures");
    server.stop();
}
