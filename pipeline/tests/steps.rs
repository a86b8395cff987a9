//! The pipeline's steps, natively, on the golden bundle: every branch of `start`,
//! `resume_buckets` and `on_body`, the effects each carries, and a property test of the reply
//! choice (never HTML to anything but a browser navigation, the status from the decision).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::{Value, json};
use signalbox_pipeline::{
    BucketTake, Event, Headers, LogLevel, Outcome, Pipeline, Reply, Request, Step, config,
};
use signalbox_policy::Decision;

const NOW: u64 = 1_795_392_000;
const NANOS: u128 = NOW as u128 * 1_000_000_000;
const SECRET: &str = "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
const CHROME: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/scenarios/bundles/golden.yaml"
    );
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pipeline_with(bundle: Value, extra: Value, secret: bool) -> Pipeline {
    let mut config = json!({
        "bundle": bundle,
        "allow_unsigned": true,
        "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 0},
        "sensitive_route_names": ["account"],
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let settings = config::parse(config.to_string().as_bytes(), NOW, |var| {
        (secret && var == "SIGNALBOX_SECRET").then(|| SECRET.to_owned())
    })
    .unwrap();
    Pipeline::new(settings)
}

fn pipeline() -> Pipeline {
    pipeline_with(golden(), json!({}), true)
}

fn request(method: &str, path: &str, ip: &str, headers: &[(&str, &str)]) -> Request {
    let mut all: Headers = vec![
        (":method".into(), method.as_bytes().to_vec()),
        (":path".into(), path.as_bytes().to_vec()),
        (":authority".into(), b"shop.example".to_vec()),
        (":scheme".into(), b"https".to_vec()),
        ("x-forwarded-for".into(), ip.as_bytes().to_vec()),
        ("x-request-id".into(), b"r-1".to_vec()),
    ];
    all.extend(
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
    );
    Request {
        headers: all,
        source: "10.0.0.1".parse().ok(),
        route_name: None,
        end_of_stream: true,
    }
}

/// A real browser's navigation.
fn chrome_navigation(path: &str, ip: &str) -> Request {
    request(
        "GET",
        path,
        ip,
        &[
            ("user-agent", CHROME),
            ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
            ("accept-language", "fr-CH, fr;q=0.9"),
            ("accept-encoding", "gzip, br"),
            (
                "sec-ch-ua",
                "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
            ),
            ("sec-ch-ua-mobile", "?0"),
            ("sec-ch-ua-platform", "\"macOS\""),
            ("sec-fetch-site", "none"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ],
    )
}

/// Takes every bucket against an in-memory store, as an adapter's CAS loop would.
fn take_all(
    store: &mut std::collections::HashMap<String, Vec<u8>>,
    takes: &[BucketTake],
) -> Option<u32> {
    takes
        .iter()
        .filter_map(|t| {
            let (write, refused) = t.apply(store.get(&t.slot).map(Vec::as_slice), NOW * 1000);
            store.insert(t.slot.clone(), write);
            refused
        })
        .max()
}

/// Runs a request to its final outcome against `store`, collecting every step's effects.
fn run(
    p: &Pipeline,
    req: Request,
    store: &mut std::collections::HashMap<String, Vec<u8>>,
) -> (Vec<Outcome>, Step) {
    let mut seen = Vec::new();
    let mut outcome = p.start(req, NANOS);
    loop {
        match outcome.step {
            Step::TakeBuckets(takes, pending) => {
                assert!(!takes.is_empty());
                let refused = take_all(store, &takes);
                seen.push(Outcome {
                    effects: outcome.effects,
                    step: Step::Forward,
                });
                outcome = p.resume_buckets(pending, refused, NANOS);
            }
            step => {
                seen.push(Outcome {
                    effects: outcome.effects,
                    step: Step::Forward,
                });
                return (seen, step);
            }
        }
    }
}

fn respond(step: Step) -> Reply {
    match step {
        Step::Respond(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn events(seen: &[Outcome]) -> Vec<Event> {
    seen.iter().flat_map(|o| o.effects.events.clone()).collect()
}

#[test]
fn a_browser_passes_through_its_buckets_with_origin_headers() {
    let p = pipeline();
    // golden: /burst has a route budget, so the request waits for its bucket.
    let mut req = chrome_navigation("/burst", "81.62.10.4");
    req.headers
        .push(("x-signalbox-decision".into(), b"block".to_vec()));
    let mut store = Default::default();
    let (seen, step) = run(&p, req, &mut store);
    assert!(matches!(step, Step::Forward), "{step:?}");
    assert_eq!(
        seen[0].effects.strip_request_headers,
        ["x-signalbox-decision"],
        "client-sent x-signalbox-* is stripped"
    );
    let last = &seen.last().unwrap().effects;
    let set: Vec<&str> = last
        .set_request_headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        set,
        [
            "x-signalbox-decision",
            "x-signalbox-level",
            "x-signalbox-request-id",
            "x-signalbox-client"
        ]
    );
    assert!(last.events.contains(&Event::Decision(Decision::Pass)));
    assert_eq!(last.verdict_summary.as_deref(), Some("pass low 0"));
    assert_eq!(seen.len(), 2, "start, then resume_buckets");
    assert!(
        seen.iter()
            .flat_map(|o| o.effects.logs.iter())
            .all(|(level, _)| *level == LogLevel::Warn),
        "passes are not logged"
    );
}

#[test]
fn a_refused_bucket_throttles_without_changing_the_verdict() {
    let p = pipeline();
    let mut store = Default::default();
    // golden: /burst allows 5 per minute per route.
    for _ in 0..5 {
        let (_, step) = run(&p, chrome_navigation("/burst", "81.62.10.4"), &mut store);
        assert!(matches!(step, Step::Forward));
    }
    let (seen, step) = run(&p, chrome_navigation("/burst", "81.62.10.4"), &mut store);
    let reply = respond(step);
    assert_eq!(reply.status, 429);
    assert!(header(&reply, "retry-after").is_some_and(|r| r.parse::<u32>().unwrap() > 0));
    let last = &seen.last().unwrap().effects;
    assert!(last.events.contains(&Event::Decision(Decision::Throttle)));
    assert_eq!(last.logs.len(), 1);
    assert!(
        last.logs[0].1.contains("\"decision\":\"throttle\""),
        "{:?}",
        last.logs
    );
}

#[test]
fn shadow_mode_forwards_what_it_would_throttle() {
    let mut bundle = golden();
    bundle["mode"] = json!("shadow");
    let p = pipeline_with(bundle, json!({}), true);
    let mut store = Default::default();
    for _ in 0..5 {
        run(&p, chrome_navigation("/burst", "81.62.10.4"), &mut store);
    }
    let (seen, step) = run(&p, chrome_navigation("/burst", "81.62.10.4"), &mut store);
    assert!(matches!(step, Step::Forward));
    let last = &seen.last().unwrap().effects;
    assert!(last.events.contains(&Event::ShadowNonPass));
    assert!(last.events.contains(&Event::Decision(Decision::Pass)));
    assert_eq!(last.verdict_summary.as_deref(), Some("throttle low 0"));
    // Origin learns what shadow mode would have done.
    assert!(
        last.set_request_headers.contains(&(
            "x-signalbox-shadow-decision".to_owned(),
            "throttle".to_owned()
        )),
        "{:?}",
        last.set_request_headers
    );
    assert!(
        last.set_request_headers
            .contains(&("x-signalbox-decision".to_owned(), "pass".to_owned()))
    );
}

#[test]
fn block_challenge_and_no_secret_replies() {
    let p = pipeline();
    let mut store = Default::default();
    // golden: 198.51.100.66 is on the deny list.
    let (_, step) = run(&p, chrome_navigation("/", "198.51.100.66"), &mut store);
    assert_eq!(respond(step).status, 403);
    // curl is challenged (automation rule): JSON with a token for an API client.
    let curl = || {
        request(
            "GET",
            "/",
            "81.62.10.5",
            &[("user-agent", "curl/8.5.0"), ("accept", "*/*")],
        )
    };
    let (seen, step) = run(&p, curl(), &mut store);
    let reply = respond(step);
    assert_eq!(
        (reply.status, header(&reply, "content-type")),
        (403, Some("application/json"))
    );
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(
        body["challenge"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(events(&seen).contains(&Event::Decision(Decision::Challenge)));
    // The same challenge as a page for a browser navigation (HTML, with a CSP nonce).
    let nav = request(
        "GET",
        "/",
        "81.62.10.5",
        &[("user-agent", "curl/8.5.0"), ("accept", "text/html")],
    );
    let reply = respond(run(&p, nav, &mut store).1);
    assert_eq!(
        header(&reply, "content-type"),
        Some("text/html; charset=utf-8")
    );
    // Without a secret no challenge can be served: a block instead.
    let no_secret = pipeline_with(golden(), json!({}), false);
    let reply = respond(run(&no_secret, curl(), &mut store).1);
    assert_eq!(reply.status, 403);
    assert!(!String::from_utf8_lossy(&reply.body).contains("challenge"));
}

#[test]
fn a_host_route_name_marks_the_route_sensitive() {
    let p = pipeline();
    assert!(p.wants_route_name());
    // A browser at medium (outdated, empty accept-language, no accept-encoding) passes…
    let medium = |route: Option<&str>| {
        let mut req = request(
            "GET",
            "/account/orders",
            "81.62.10.6",
            &[
                (
                    "user-agent",
                    "Mozilla/5.0 (X11; Linux x86_64; rv:100.0) Gecko/20100101 Firefox/100.0",
                ),
                ("accept", "text/html"),
                ("accept-language", ""),
                ("sec-fetch-site", "none"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document"),
            ],
        );
        req.route_name = route.map(|r| r.as_bytes().to_vec());
        req
    };
    let mut store = Default::default();
    assert!(matches!(run(&p, medium(None), &mut store).1, Step::Forward));
    // …but is challenged on a route the host names as sensitive.
    assert_eq!(
        respond(run(&p, medium(Some("account")), &mut store).1).status,
        403
    );
}

#[test]
fn warnings_are_logged_once_and_counted_every_time() {
    let p = pipeline();
    let mut store = Default::default();
    let no_address = || {
        let mut req = chrome_navigation("/", "not-an-address");
        req.source = None;
        req
    };
    let (first, _) = run(&p, no_address(), &mut store);
    let (second, _) = run(&p, no_address(), &mut store);
    assert!(events(&first).contains(&Event::ClientIpMissing));
    assert!(events(&second).contains(&Event::ClientIpMissing));
    let warned = |seen: &[Outcome]| {
        seen.iter()
            .flat_map(|o| o.effects.logs.iter())
            .filter(|(level, line)| *level == LogLevel::Warn && line.contains("client address"))
            .count()
    };
    assert_eq!((warned(&first), warned(&second)), (1, 0));
    // The golden bundle's oldbot ranges are stale: a gauge on the first request of a minute.
    assert!(
        events(&first)
            .iter()
            .any(|e| matches!(e, Event::CrawlerRangesStale(n) if *n >= 1))
    );
    assert!(
        !events(&second)
            .iter()
            .any(|e| matches!(e, Event::CrawlerRangesStale(_)))
    );
}

#[test]
fn an_expired_bundle_warns_once_and_keeps_serving() {
    let mut bundle = golden();
    bundle["expires_at"] = json!("2026-11-24T00:00:01Z");
    let p = pipeline_with(bundle, json!({}), true);
    let later = NANOS + 2 * 86_400 * 1_000_000_000;
    let first = p.start(chrome_navigation("/", "81.62.10.4"), later);
    let second = p.start(chrome_navigation("/", "81.62.10.4"), later);
    assert!(
        first.effects.events.contains(&Event::BundleExpired),
        "{:?} {:?}",
        first.effects,
        p.settings().policy.expires_at()
    );
    assert!(!second.effects.events.contains(&Event::BundleExpired));
    assert!(matches!(first.step, Step::Forward), "still serving");
}

#[test]
fn decision_lines_keep_to_their_budget_per_second() {
    let p = pipeline_with(golden(), json!({"decision_log_per_second": 2}), true);
    let mut store = Default::default();
    let lines: usize = (0..5)
        .map(|_| {
            let (seen, _) = run(&p, chrome_navigation("/", "198.51.100.66"), &mut store);
            seen.iter()
                .flat_map(|o| o.effects.logs.iter())
                .filter(|(level, _)| *level == LogLevel::Info)
                .count()
        })
        .sum();
    assert_eq!(lines, 2);
}

#[test]
fn the_verify_path_end_to_end() {
    let p = pipeline();
    let mut store = Default::default();
    // Get a challenge as an API client, solve it, post the solution in the query.
    let curl = [("user-agent", "curl/8.5.0"), ("accept", "*/*")];
    let reply = respond(
        run(
            &p,
            request("GET", "/signup?x=1", "81.62.10.7", &curl),
            &mut store,
        )
        .1,
    );
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    let token = body["challenge"].as_str().unwrap().to_owned();
    let counter = signalbox_policy::trust::solve(&token, 1 << 24).unwrap();
    let verify = |path: &str, site: &str, end: bool| {
        let headers = [("user-agent", "curl/8.5.0"), ("sec-fetch-site", site)];
        let mut req = request("POST", path, "81.62.10.7", &headers);
        req.end_of_stream = end;
        req
    };
    let path = format!("/.signalbox/verify?challenge={token}&counter={counter}");
    let (seen, step) = run(&p, verify(&path, "same-origin", true), &mut store);
    let reply = respond(step);
    assert_eq!(
        reply.status,
        303,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(header(&reply, "location"), Some("/signup?x=1"));
    assert!(
        header(&reply, "set-cookie").is_some_and(|c| c.starts_with("__Host-signalbox-clearance="))
    );
    assert!(events(&seen).contains(&Event::ChallengeSolved));

    // Cross-site: refused before anything else.
    let (_, step) = run(
        &p,
        verify("/.signalbox/verify", "cross-site", true),
        &mut store,
    );
    assert_eq!(respond(step).status, 403);
    // No form anywhere and no body to come: a bad form.
    let (seen, step) = run(
        &p,
        verify("/.signalbox/verify", "same-origin", true),
        &mut store,
    );
    assert_eq!(respond(step).status, 400);
    assert!(!events(&seen).contains(&Event::ChallengeSolved));
    // A body to come: the headers go on, the body is read when whole.
    let (_, step) = run(
        &p,
        verify("/.signalbox/verify", "same-origin", false),
        &mut store,
    );
    let Step::ReadBody(pending) = step else {
        panic!("expected ReadBody, got {step:?}")
    };
    assert!(
        p.on_body(&pending, 10, false, || panic!("not read before the end"))
            .is_none()
    );
    let form = format!("challenge={token}&counter={}", counter + 1);
    let outcome = p
        .on_body(&pending, form.len(), true, || form.clone().into_bytes())
        .unwrap();
    assert!(outcome.effects.events.contains(&Event::ChallengeFailed));
    assert_eq!(respond(outcome.step).status, 403);
    let too_large = p
        .on_body(&pending, 5000, false, || panic!("never read"))
        .unwrap();
    assert_eq!(respond(too_large.step).status, 413);
    // Ten verify attempts a minute per client, then 429.
    let statuses: Vec<u32> = (0..12)
        .map(|_| {
            respond(
                run(
                    &p,
                    verify("/.signalbox/verify", "same-origin", true),
                    &mut store,
                )
                .1,
            )
            .status
        })
        .collect();
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

#[test]
fn origin_cannot_echo_our_headers() {
    let p = pipeline();
    let stripped = p.response_headers_to_strip(
        ["X-Signalbox-Score", "content-type", "x-signalbox-verdict"]
            .into_iter()
            .map(str::to_owned),
    );
    assert_eq!(stripped, ["X-Signalbox-Score", "x-signalbox-verdict"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the request looks like, a local reply is HTML only for a GET/HEAD browser
    /// navigation that accepts HTML, a gRPC status only for gRPC, and its status says the
    /// decision (403 block or challenge, 429 throttle).
    #[test]
    fn the_reply_fits_the_client(
        method in prop::sample::select(vec!["GET", "HEAD", "POST", "PUT"]),
        accept in prop::sample::select(vec!["", "text/html", "*/*", "application/json", "text/html,*/*"]),
        mode in prop::sample::select(vec!["", "navigate", "cors", "no-cors"]),
        grpc in any::<bool>(),
        upgrade in any::<bool>(),
        xhr in any::<bool>(),
        denied in any::<bool>(),
    ) {
        let p = pipeline();
        let mut headers = vec![("user-agent", "curl/8.5.0")];
        if !accept.is_empty() { headers.push(("accept", accept)); }
        if !mode.is_empty() {
            headers.extend([("sec-fetch-mode", mode), ("sec-fetch-site", "none"), ("sec-fetch-dest", "document")]);
        }
        if grpc { headers.push(("content-type", "application/grpc")); }
        if upgrade { headers.push(("upgrade", "websocket")); }
        if xhr { headers.push(("x-requested-with", "XMLHttpRequest")); }
        let ip = if denied { "198.51.100.66" } else { "81.62.10.8" };
        let mut store = Default::default();
        let reply = respond(run(&p, request(method, "/", ip, &headers), &mut store).1);
        let html = header(&reply, "content-type").is_some_and(|c| c.starts_with("text/html"));
        let navigation = (method == "GET" || method == "HEAD")
            && accept.contains("text/html")
            && !grpc && !upgrade && !xhr
            && (mode.is_empty() || mode == "navigate");
        prop_assert!(!html || navigation, "HTML to a non-navigation: {headers:?}");
        prop_assert_eq!(reply.grpc_status.is_some(), grpc);
        prop_assert_eq!(reply.status, 403);
    }
}

#[test]
fn lookups_carry_the_configured_subjects_hashed_in_privacy_mode() {
    use base64::Engine as _;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let user_secret = b"0123456789abcdef0123456789abcdef";
    let mut bundle = golden();
    bundle["cache"]["lookup"] = json!(["ip", "user", "device"]);
    let config = |privacy: bool| {
        let mut subjects = json!({
            "user_cookie": {"name": "signed_user", "secret_env": "USER_COOKIE_SECRET"},
            "device_cookie": "device",
        });
        if privacy {
            subjects["privacy_key_env"] = json!("PRIVACY_KEY");
        }
        json!({
            "bundle": bundle,
            "allow_unsigned": true,
            "client_ip": {"mode": "x_forwarded_for", "trusted_hops": 0},
            "score_cache": {"cluster": "cache", "token_env": "CACHE_TOKEN"},
            "subjects": subjects,
        })
    };
    let env = |var: &str| match var {
        "USER_COOKIE_SECRET" => Some(b64(user_secret)),
        "PRIVACY_KEY" => Some(b64(b"another secret, 32 bytes long!!!")),
        "CACHE_TOKEN" => Some("t0ken".to_owned()),
        _ => None,
    };
    let cookie = format!(
        "signed_user={}; device=d-77",
        signalbox_pipeline::subjects::sign_user("u-1001", user_secret).unwrap()
    );
    let path_of = |privacy: bool| {
        let settings = config::parse(config(privacy).to_string().as_bytes(), NOW, env).unwrap();
        let p = Pipeline::new(settings);
        let mut req = chrome_navigation("/signup", "81.62.10.4");
        req.headers
            .push(("cookie".into(), cookie.clone().into_bytes()));
        match p.start(req, NANOS).step {
            Step::Lookup(call, _) => {
                assert!(
                    call.headers
                        .contains(&("authorization".to_owned(), "Bearer t0ken".to_owned()))
                );
                call.headers
                    .iter()
                    .find(|(n, _)| n == ":path")
                    .unwrap()
                    .1
                    .clone()
            }
            other => panic!("expected a lookup, got {other:?}"),
        }
    };
    assert_eq!(
        path_of(false),
        "/v1/context?ip=81.62.10.4&user=u-1001&device=d-77"
    );
    let private = path_of(true);
    assert!(
        !private.contains("u-1001") && !private.contains("d-77"),
        "{private}"
    );
    assert!(
        private.starts_with("/v1/context?ip=81.62.10.4&user="),
        "{private}"
    );
    // A missing secret is a refused configuration that names the field.
    let err = config::parse(config(false).to_string().as_bytes(), NOW, |_| None).unwrap_err();
    assert!(
        err.0.contains("subjects.user_cookie.secret_env"),
        "{}",
        err.0
    );
}

#[test]
fn only_a_failing_cache_counts_against_the_breaker() {
    use signalbox_pipeline::LookupAnswer;
    let answer = |status: u32, body: &str| LookupAnswer {
        status,
        body: body.as_bytes().to_vec(),
    };
    assert!(Pipeline::lookup_healthy(Some(&answer(
        200,
        r#"{"ip":{"score":1}}"#
    ))));
    assert!(
        Pipeline::lookup_healthy(Some(&answer(400, "bad key"))),
        "a 4xx is about the request: a client must not open the breaker for everyone"
    );
    assert!(
        !Pipeline::lookup_healthy(Some(&answer(200, "<html>"))),
        "misrouted"
    );
    assert!(!Pipeline::lookup_healthy(Some(&answer(503, ""))));
    assert!(!Pipeline::lookup_healthy(None));
}
