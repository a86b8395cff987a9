//! Criterion benches: `assess` + `decide` for a browser and a bot request with 100k CIDR
//! prefixes loaded (goal: at most 2 µs each, native), and loading such a bundle.
//! Also prints the bytes per prefix of the compact range store.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use signalbox_policy::{EdgeHeaderNames, Facts, Policy};

const NOW: u64 = 1_795_392_000;

/// 100k distinct prefixes: 90k IPv4 /24s and 10k IPv6 /48s, spread by a fixed LCG.
fn prefixes(n: usize) -> Vec<String> {
    let mut state: u64 = 0x5eed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 16
    };
    (0..n)
        .map(|i| {
            let r = next();
            if i % 10 == 9 {
                format!(
                    "2a0{}:{:x}:{:x}::/48",
                    r % 10,
                    (r >> 8) & 0xffff,
                    (r >> 24) & 0xffff
                )
            } else {
                format!(
                    "{}.{}.{}.0/24",
                    1 + (r % 223),
                    (r >> 8) % 256,
                    (r >> 16) % 256
                )
            }
        })
        .collect()
}

fn bundle_json(n: usize) -> Vec<u8> {
    let mut hosting = prefixes(n);
    hosting.push("167.99.0.0/16".to_owned());
    serde_json::json!({
        "format_version": 1, "revision": 1, "min_engine_version": "0.1.0",
        "signals": {
            "ua_missing": {"weight": 50},
            "ua_automation": {"weight": 45, "tokens": ["curl/", "python-requests", "Go-http-client", "okhttp", "axios/", "Java/", "Scrapy", "Wget/", "libwww-perl", "node-fetch"]},
            "ua_headless": {"weight": 60, "tokens": ["HeadlessChrome", "PhantomJS", "Puppeteer"]},
            "ua_outdated": {"weight": 20, "min_major": {"chrome": 120, "firefox": 115, "safari": 15, "edge": 120}},
            "ua_client_hints_mismatch": {"weight": 30},
            "headers_missing_accept_language": {"weight": 20},
            "headers_empty_accept_language": {"weight": 20},
            "headers_missing_accept_encoding": {"weight": 15},
            "headers_missing_sec_fetch": {"weight": 10},
            "ip_lists": {"hosting": 25, "tor": 45},
            "remote_score": {"weight": 60}
        },
        "lists": {"hosting": {"cidrs": hosting}, "tor": {"cidrs": ["2.26.97.42/32"]}, "googlebot": {"cidrs": ["66.249.64.0/19"], "as_of": "2026-11-01"}},
        "crawlers": {"catalogue": [
            {"name": "googlebot", "category": "search_engine", "ua_tokens": ["Googlebot"], "ranges": "googlebot"},
            {"name": "ahrefs", "category": "seo", "ua_tokens": ["AhrefsBot"]},
            {"name": "gptbot", "category": "ai_crawler", "ua_tokens": ["GPTBot"]}
        ]},
        "routes": [
            {"name": "login", "path_prefix": "/login", "methods": ["POST"], "weight": 15, "sensitive": true},
            {"name": "signup", "path_prefix": "/signup", "weight": 10, "sensitive": true},
            {"name": "checkout", "path_prefix": "/checkout", "weight": 10, "sensitive": true}
        ],
        "rules": [
            {"id": "tor-checkout", "when": {"path_prefix": "/checkout", "ip_list": "tor"}, "action": "challenge"},
            {"id": "ai", "when": {"crawler_category": ["ai_crawler"]}, "action": "block", "dry_run": true}
        ]
    })
    .to_string()
    .into_bytes()
}

fn browser() -> Facts {
    Facts::from_parts(
        "GET",
        "/signup",
        [
            ("host", "shop.example"),
            (
                "user-agent",
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            ),
            ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
            ("accept-encoding", "gzip, deflate, br, zstd"),
            ("accept-language", "fr-CH, fr;q=0.9, en;q=0.8"),
            ("sec-fetch-site", "none"),
            ("sec-fetch-mode", "navigate"),
            (
                "sec-ch-ua",
                "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
            ),
            ("sec-ch-ua-mobile", "?0"),
            ("sec-ch-ua-platform", "\"macOS\""),
            ("cookie", "session=abc; cart=1"),
        ],
        "81.62.10.4".parse().ok(),
        &EdgeHeaderNames::default(),
    )
}

fn bot() -> Facts {
    Facts::from_parts(
        "POST",
        "/login",
        [
            ("host", "shop.example"),
            ("user-agent", "python-requests/2.32.3"),
            ("accept", "*/*"),
            ("accept-encoding", "gzip, deflate"),
        ],
        "167.99.134.20".parse().ok(),
        &EdgeHeaderNames::default(),
    )
}

fn benches(c: &mut Criterion) {
    let json = bundle_json(100_000);
    let policy = Policy::from_json_slice(&json).unwrap();
    for list in policy.lists() {
        eprintln!("list {}: {}", list.name, list.set);
    }
    let (browser, bot) = (browser(), bot());
    assert_eq!(
        policy.evaluate(&browser, None, NOW).decision.as_str(),
        "pass"
    );
    assert_eq!(policy.evaluate(&bot, None, NOW).decision.as_str(), "block");

    let mut group = c.benchmark_group("evaluate_100k_prefixes");
    group.bench_function("browser", |b| {
        b.iter(|| policy.decide(policy.assess(black_box(&browser), NOW), None, NOW))
    });
    group.bench_function("bot", |b| {
        b.iter(|| policy.decide(policy.assess(black_box(&bot), NOW), None, NOW))
    });
    group.finish();

    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("bundle_100k_prefixes", |b| {
        b.iter(|| Policy::from_json_slice(black_box(&json)).unwrap())
    });
    group.finish();
}

criterion_group!(evaluate, benches);
criterion_main!(evaluate);
