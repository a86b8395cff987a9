//! Criterion benches: `assess` + `decide` with the real default bundle (its lists, catalogue,
//! 200 declared-bot patterns and rules) plus 100k more CIDR prefixes (goal: at most 2 µs each,
//! native) for a browser, a tool, a declared crawler and a script wearing Chrome's user agent;
//! and loading such a bundle. Also prints the bytes per prefix of the compact range store.

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

/// The real default bundle (its lists, catalogue, declared-bot patterns and rules) with `n`
/// more prefixes in its hosting list: what an edge runs, plus room to grow.
fn bundle_json(n: usize) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let read = |rel: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(rel)).unwrap()).unwrap()
    };
    let yaml = std::fs::read_to_string(dir.join("default.yaml")).unwrap();
    let mut bundle: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    for list in bundle["lists"].as_object_mut().unwrap().values_mut() {
        if let Some(rel) = list["include"].as_str() {
            *list = read(rel);
        }
    }
    let declared = bundle["crawlers"]["declared"]["include"]
        .as_str()
        .unwrap()
        .to_owned();
    bundle["crawlers"]["declared"] = read(&declared);
    let hosting = bundle["lists"]["hosting"]["cidrs"].as_array_mut().unwrap();
    hosting.extend(prefixes(n).into_iter().map(serde_json::Value::from));
    bundle.to_string().into_bytes()
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
            ("sec-fetch-dest", "document"),
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

fn request(method: &str, path: &str, headers: &[(&str, &str)], ip: &str) -> Facts {
    Facts::from_parts(
        method,
        path,
        headers.iter().copied(),
        ip.parse().ok(),
        &EdgeHeaderNames::default(),
    )
}

fn benches(c: &mut Criterion) {
    let json = bundle_json(100_000);
    let policy = Policy::from_json_slice(&json).unwrap();
    for list in policy.lists() {
        eprintln!("list {}: {}", list.name, list.set);
    }
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let prefixes: usize = value["lists"]
        .as_object()
        .unwrap()
        .values()
        .map(|l| l["cidrs"].as_array().map_or(0, Vec::len))
        .sum();
    eprintln!("{prefixes} prefixes loaded");
    let crawler = request(
        "GET",
        "/products/1842",
        &[
            ("host", "shop.example"),
            (
                "user-agent",
                "Mozilla/5.0 (compatible; SeekportBot; +https://bot.seekport.com)",
            ),
            ("accept", "*/*"),
        ],
        "167.99.134.21",
    );
    let scripted = request(
        "GET",
        "/",
        &[
            ("host", "shop.example"),
            (
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            ),
            ("accept", "*/*"),
            ("accept-encoding", "gzip, deflate"),
        ],
        "81.62.10.9",
    );
    let cases = [
        ("browser", browser(), "pass"),
        ("bot", bot(), "block"),
        ("declared_crawler", crawler, "challenge"),
        ("scripted", scripted, "challenge"),
    ];
    let mut group = c.benchmark_group("evaluate_default_bundle_plus_100k_prefixes");
    for (name, facts, want) in &cases {
        assert_eq!(
            policy.evaluate(facts, None, NOW).decision.as_str(),
            *want,
            "{name}"
        );
        group.bench_function(*name, |b| {
            b.iter(|| policy.decide(policy.assess(black_box(facts), NOW), None, NOW))
        });
    }
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
