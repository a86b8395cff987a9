//! Criterion bench: the whole pipeline for one request natively — `start` (strip, client IP,
//! facts with the clearance cookie, assess, decide) and `resume_buckets` (the reply and origin
//! headers) — on the real default bundle, beside `assess` + `decide` alone, so the pipeline's
//! own share of a request shows.
//!
//! `decisions_100k`: what the manual-decision check costs per request with 100,000 decisions
//! in force (a realistic mix, see [`decision_mix`]): `ActiveDecisions::lookup` for a client
//! that matches nothing (the common case) and for one that matches, and `Pipeline::start` for
//! Giovanni's request with an empty set and with the 100k set. It prints the blob's size (what
//! every worker keeps) once, and times what a worker pays when a new set is published
//! (`decode`) and what the leader pays to apply a page of the stream (one decision; none).

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use signalbox_pipeline::decisions::ActiveDecisions;
use signalbox_pipeline::{Headers, Pipeline, Request, Step, config};
use signalbox_wire::{DecisionPageV1, ManualActionV1, ManualDecisionV1, ScopeV1, StreamDecisionV1};

const NOW: u64 = 1_795_392_000;

fn default_bundle() -> Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/examples");
    let read = |rel: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(rel)).unwrap()).unwrap()
    };
    let mut bundle: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("default.yaml")).unwrap())
            .unwrap();
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
    bundle
}

/// Giovanni's navigation as Envoy hands it to the filter (behind a load balancer).
fn giovanni() -> Headers {
    [
        (":authority", "shop.example"),
        (":path", "/products/42"),
        (":method", "GET"),
        (":scheme", "https"),
        ("user-agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "fr-CH, fr;q=0.9, en;q=0.8"),
        ("sec-ch-ua", "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\""),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", "\"macOS\""),
        ("sec-fetch-site", "none"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("cookie", "session=abc; cart=1"),
        ("x-forwarded-for", "81.62.10.4, 10.0.0.2"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "0f6c1c8e-7f0a-4c55-9d4b-3a1f1e2d3c4b"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
    .collect()
}

fn benches(c: &mut Criterion) {
    let config = json!({
        "bundle": default_bundle(),
        "allow_unsigned": true,
        "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 1},
    });
    let settings = config::parse(config.to_string().as_bytes(), NOW, |_| None).unwrap();
    let pipeline = Pipeline::new(settings);
    let nanos = u128::from(NOW) * 1_000_000_000;
    let headers = giovanni();
    let request = || Request {
        headers: headers.clone(),
        source: None,
        route_name: None,
        end_of_stream: true,
    };
    // The request passes after its per-IP bucket (granted here).
    let run = || match pipeline.start(request(), nanos).step {
        Step::TakeBuckets(_, pending) => pipeline.resume_buckets(pending, None, nanos),
        other => panic!("expected buckets, got {other:?}"),
    };
    assert!(matches!(run().step, Step::Forward));

    let mut group = c.benchmark_group("pipeline_default_bundle");
    group.bench_function("clone_headers_only", |b| b.iter(|| black_box(request())));
    group.bench_function("start_and_resume", |b| b.iter(|| black_box(run())));
    let facts = signalbox_policy::Facts::from_parts(
        "GET",
        "/products/42",
        headers.clone(),
        "81.62.10.4".parse().ok(),
        &signalbox_policy::EdgeHeaderNames::default(),
    );
    let policy = &pipeline.settings().policy;
    group.bench_function("assess_and_decide", |b| {
        b.iter(|| policy.decide(policy.assess(black_box(&facts), NOW), None, NOW))
    });
    group.finish();
}

/// 100,000 decisions in force, as an operator's set could look: 90,000 IPv4 `ip` bans, 5,000
/// ranges from /16 to /28, 3,000 users, 1,000 IPv6 addresses (each covers its /64), 960
/// devices, 30 AS numbers and 10 countries; mostly bans, some challenges, throttles and allows.
/// No network decision covers Giovanni's ISP (81.62.0.0/16). Deterministic.
fn decision_mix() -> Vec<StreamDecisionV1> {
    const ACTIONS: [ManualActionV1; 4] = [
        ManualActionV1::Ban,
        ManualActionV1::Challenge,
        ManualActionV1::Throttle,
        ManualActionV1::Allow,
    ];
    // A bijection on u32 (odd multiplier), so the addresses are distinct and spread out.
    let spread = |i: u32| i.wrapping_mul(0x9E37_79B1).wrapping_add(0x7F4A_7C15);
    let outside_giovannis_isp = |a: u32| a >> 16 != 0x513E; // 81.62.0.0/16
    let mut out = Vec::with_capacity(100_000);
    let mut push = |scope: ScopeV1, key: String, n: usize| {
        let id = out.len();
        out.push(StreamDecisionV1 {
            id: format!("d{id}"),
            scope,
            key,
            decision: Some(ManualDecisionV1 {
                // 1 in 10 not a ban.
                action: ACTIONS[if n % 10 == 9 { 1 + n / 10 % 3 } else { 0 }],
                expires_at: NOW + 3_600 + (n as u64 % 86_400),
                reason: None,
            }),
            removed: false,
        });
    };
    let mut i = 0u32;
    let mut addresses = Vec::with_capacity(90_000);
    while addresses.len() < 90_000 {
        let a = spread(i);
        i += 1;
        if outside_giovannis_isp(a) {
            addresses.push(a);
        }
    }
    for (n, a) in addresses.iter().enumerate() {
        push(ScopeV1::Ip, std::net::Ipv4Addr::from(*a).to_string(), n);
    }
    let mut n = 0;
    while n < 5_000 {
        let a = spread(i);
        i += 1;
        if !outside_giovannis_isp(a) {
            continue;
        }
        let prefix = 16 + (n % 13) as u8;
        let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), prefix)
            .unwrap()
            .trunc();
        push(ScopeV1::Range, net.to_string(), n);
        n += 1;
    }
    for n in 0..3_000 {
        push(ScopeV1::User, format!("user-{n:05}"), n);
    }
    for n in 0..1_000 {
        let a = spread(i).to_be_bytes();
        i += 1;
        let key = format!(
            "2a02:{:x}{:02x}:{:x}{:02x}:{n:x}::1",
            a[0], a[1], a[2], a[3]
        );
        push(ScopeV1::Ip, key, n);
    }
    for n in 0..960 {
        push(ScopeV1::Device, format!("device-{n:04}"), n);
    }
    for n in 0..30 {
        push(ScopeV1::Asn, format!("AS{}", 64_512 + n), n);
    }
    for (n, c) in ["KP", "IR", "SY", "CU", "RU", "BY", "VE", "MM", "AF", "SD"]
        .iter()
        .enumerate()
    {
        push(ScopeV1::Country, (*c).to_owned(), n);
    }
    assert_eq!(out.len(), 100_000);
    out
}

fn decisions(c: &mut Criterion) {
    let config = json!({
        "bundle": default_bundle(),
        "allow_unsigned": true,
        "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 1},
    });
    let settings = || config::parse(config.to_string().as_bytes(), NOW, |_| None).unwrap();
    let mix = decision_mix();
    let page = DecisionPageV1 {
        decisions: mix.clone(),
        cursor: "snapshot.1795392000.100000".into(),
        more: false,
    };
    let applied = ActiveDecisions::default().apply(&page, 64, NOW);
    assert_eq!(applied.unmatched, 0);
    let blob = applied.blob;
    let set = ActiveDecisions::decode(blob.clone()).unwrap();
    assert_eq!(set.len(), 100_000);
    println!(
        "decisions_100k: blob {} bytes ({:.2} MiB) for {} records: every worker keeps one copy, shared data one more",
        blob.len(),
        blob.len() as f64 / (1024.0 * 1024.0),
        set.len()
    );

    let giovanni_ip: Option<std::net::IpAddr> = "81.62.10.4".parse().ok();
    let banned_ip: Option<std::net::IpAddr> = mix[12_345].key.parse().ok();
    let range_key: ipnet::Ipv4Net = mix[90_000 + 7].key.parse().unwrap(); // a /23
    let in_range: Option<std::net::IpAddr> =
        Some(std::net::IpAddr::V4(range_key.hosts().nth(1).unwrap()));
    // Every subject the filter can have, none of them in the set.
    let miss = set.lookup(
        giovanni_ip,
        Some("giovanni"),
        Some("dev-gio"),
        Some(3303),
        Some(*b"CH"),
        NOW,
    );
    assert_eq!(miss, signalbox_policy::ManualDecisions::default());
    assert!(
        set.lookup(banned_ip, None, None, None, None, NOW)
            .ip
            .is_some()
    );
    assert!(
        set.lookup(in_range, None, None, None, None, NOW)
            .ip
            .is_some()
    );
    let both = set.lookup(banned_ip, Some("user-00042"), None, None, None, NOW);
    assert!(both.ip.is_some() && both.user.is_some());

    let mut group = c.benchmark_group("decisions_100k");
    group.bench_function("lookup_miss_ip_only", |b| {
        b.iter(|| set.lookup(black_box(giovanni_ip), None, None, None, None, NOW))
    });
    group.bench_function("lookup_miss_all_subjects", |b| {
        b.iter(|| {
            set.lookup(
                black_box(giovanni_ip),
                black_box(Some("giovanni")),
                black_box(Some("dev-gio")),
                black_box(Some(3303)),
                black_box(Some(*b"CH")),
                NOW,
            )
        })
    });
    group.bench_function("lookup_hit_ip", |b| {
        b.iter(|| set.lookup(black_box(banned_ip), None, None, None, None, NOW))
    });
    group.bench_function("lookup_hit_range_23", |b| {
        b.iter(|| set.lookup(black_box(in_range), None, None, None, None, NOW))
    });
    group.bench_function("lookup_hit_ip_and_user", |b| {
        b.iter(|| {
            set.lookup(
                black_box(banned_ip),
                black_box(Some("user-00042")),
                None,
                None,
                None,
                NOW,
            )
        })
    });
    let empty = ActiveDecisions::default();
    group.bench_function("lookup_empty_set", |b| {
        b.iter(|| empty.lookup(black_box(giovanni_ip), None, None, None, None, NOW))
    });
    // The same set without its 5,000 ranges: a network lookup is one binary search per
    // distinct prefix length, so this shows what the 13 range lengths cost.
    let no_ranges = ActiveDecisions::decode(
        ActiveDecisions::default()
            .apply(
                &DecisionPageV1 {
                    decisions: mix
                        .iter()
                        .filter(|d| d.scope != ScopeV1::Range)
                        .cloned()
                        .collect(),
                    cursor: "c".into(),
                    more: false,
                },
                64,
                NOW,
            )
            .blob,
    )
    .unwrap();
    group.bench_function("lookup_miss_ip_only_without_ranges", |b| {
        b.iter(|| no_ranges.lookup(black_box(giovanni_ip), None, None, None, None, NOW))
    });

    // The whole start of Giovanni's request (81.62.10.4 is in no decision), without and with
    // the set.
    let headers = giovanni();
    let request = || Request {
        headers: headers.clone(),
        source: None,
        route_name: None,
        end_of_stream: true,
    };
    let nanos = u128::from(NOW) * 1_000_000_000;
    let without = Pipeline::new(settings());
    let with = Pipeline::new(settings());
    with.replace_decisions(set.clone());
    assert_eq!(with.decisions_generation(), 1);
    for p in [&without, &with] {
        assert!(matches!(
            p.start(request(), nanos).step,
            Step::TakeBuckets(..)
        ));
    }
    group.bench_function("start_empty_set", |b| {
        b.iter(|| black_box(without.start(request(), nanos)))
    });
    group.bench_function("start_100k_set", |b| {
        b.iter(|| black_box(with.start(request(), nanos)))
    });
    group.finish();

    // When the set changes: every worker decodes the new blob (it checks the order of every
    // record), the leader applies the page to its copy (re-sorts the whole set). An empty
    // page (what a poll with nothing new answers) costs the leader the same as one decision.
    let mut group = c.benchmark_group("decisions_100k_change");
    group.sample_size(20);
    group.bench_function("decode", |b| {
        b.iter_batched(
            || blob.clone(),
            |bytes| ActiveDecisions::decode(bytes).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    let one_more = DecisionPageV1 {
        decisions: vec![StreamDecisionV1 {
            id: "one-more".into(),
            scope: ScopeV1::Ip,
            key: "198.51.100.77".into(),
            decision: Some(ManualDecisionV1 {
                action: ManualActionV1::Ban,
                expires_at: NOW + 3_600,
                reason: None,
            }),
            removed: false,
        }],
        cursor: "c2".into(),
        more: false,
    };
    group.bench_function("apply_one_decision", |b| {
        b.iter(|| set.apply(black_box(&one_more), 64, NOW))
    });
    let nothing_new = DecisionPageV1 {
        decisions: Vec::new(),
        cursor: "snapshot.1795392000.100000".into(),
        more: false,
    };
    group.bench_function("apply_empty_page", |b| {
        b.iter(|| set.apply(black_box(&nothing_new), 64, NOW))
    });
    group.finish();
}

criterion_group!(start, benches, decisions);
criterion_main!(start);
