//! Criterion bench: the whole pipeline for one request natively — `start` (strip, client IP,
//! facts with the clearance cookie, assess, decide) and `resume_buckets` (the reply and origin
//! headers) — on the real default bundle, beside `assess` + `decide` alone, so the pipeline's
//! own share of a request shows.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use signalbox_pipeline::{Headers, Pipeline, Request, Step, config};

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

criterion_group!(start, benches);
criterion_main!(start);
