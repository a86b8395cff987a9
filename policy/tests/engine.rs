//! Properties of the scorer and the decision (bounds, monotonicity, precedence) and of
//! bundle validation (every error named by its field path).

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use signalbox_policy::wire::*;
use signalbox_policy::*;

const NOW: u64 = 1_795_392_000;

fn base_bundle() -> BundleV1 {
    serde_json::from_value(serde_json::json!({
        "format_version": 1, "revision": 1, "min_engine_version": "0.1.0"
    }))
    .unwrap()
}

/// How many weights `weighted_bundle` takes.
const SIGNAL_WEIGHTS: usize = 17;

/// A bundle with every risk signal's weight taken from `w` (cycled).
fn weighted_bundle(w: &[u32]) -> BundleV1 {
    let mut b = base_bundle();
    let mut i = 0;
    let mut next = || {
        let weight = w[i % w.len()];
        i += 1;
        weight
    };
    let s = &mut b.signals;
    s.ua_missing.weight = next();
    s.ua_automation = UaTokensV1 {
        weight: next(),
        tokens: vec!["curl/".into(), "python".into()],
    };
    s.ua_headless = UaTokensV1 {
        weight: next(),
        tokens: vec!["HeadlessChrome".into()],
    };
    s.ua_outdated = UaOutdatedV1 {
        weight: next(),
        min_major: BTreeMap::from([("chrome".into(), 120)]),
    };
    s.ua_client_hints_mismatch.weight = next();
    s.headers_missing_accept_language.weight = next();
    s.headers_empty_accept_language.weight = next();
    s.headers_missing_accept_encoding.weight = next();
    s.headers_missing_sec_fetch.weight = next();
    s.ip_lists = BTreeMap::from([("hosting".into(), next()), ("tor".into(), next())]);
    s.country.scores = BTreeMap::from([("KP".into(), next())]);
    s.asn.scores = BTreeMap::from([("14061".into(), next())]);
    s.tls_fingerprint = TlsFingerprintsV1 {
        weight: next(),
        fingerprints: vec!["bad".into()],
    };
    s.remote_score.weight = next();
    s.clearance = ClearanceSignalV1 {
        trust: 0,
        invalid_weight: next(),
    };
    b.lists = BTreeMap::from([
        (
            "hosting".into(),
            IpListV1 {
                cidrs: vec!["167.99.0.0/16".into(), "2a03:b0c0::/32".into()],
                ..Default::default()
            },
        ),
        (
            "tor".into(),
            IpListV1 {
                cidrs: vec!["2.26.97.42".into()],
                ..Default::default()
            },
        ),
    ]);
    b.routes = vec![RouteV1 {
        name: "login".into(),
        path_prefix: "/login".into(),
        methods: vec![],
        weight: next(),
        sensitive: true,
    }];
    b
}

fn ua_strategy() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        Just(Some(b"curl/8.5.0".to_vec())),
        Just(Some(b"Mozilla/5.0 (Linux; Android 7.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Mobile Safari/537.36".to_vec())),
        Just(Some(b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36".to_vec())),
        Just(Some(b"HeadlessChrome/120".to_vec())),
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(Some),
    ]
}

fn facts_strategy() -> impl Strategy<Value = Facts> {
    (
        ua_strategy(),
        proptest::option::of(prop_oneof![Just(b"".to_vec()), Just(b"en".to_vec())]),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just("167.99.1.2"),
            Just("2.26.97.42"),
            Just("81.62.10.4"),
            Just("2a03:b0c0::9"),
            Just("::ffff:167.99.3.4")
        ],
        prop_oneof![
            Just("/"),
            Just("/login"),
            Just("/LOGIN/x"),
            Just("/a/../login?x")
        ],
        proptest::option::of(prop_oneof![Just("KP"), Just("CH")]),
        proptest::option::of(Just("bad")),
        prop_oneof![
            Just(Clearance::Absent),
            (1u8..=32).prop_map(|difficulty| Clearance::Valid { difficulty }),
            Just(Clearance::Invalid)
        ],
    )
        .prop_map(|(ua, al, ae, hints, ip, path, country, tls, clearance)| {
            let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
            if let Some(ua) = ua {
                headers.push(("user-agent".into(), ua));
            }
            if let Some(al) = al {
                headers.push(("accept-language".into(), al));
            }
            if ae {
                headers.push(("accept-encoding".into(), b"gzip".to_vec()));
            }
            if hints {
                headers.push(("sec-ch-ua".into(), br#""Chromium";v="99""#.to_vec()));
            }
            if let Some(c) = country {
                headers.push(("cf-ipcountry".into(), c.as_bytes().to_vec()));
            }
            headers.push(("x-signalbox-edge-asn".into(), b"14061".to_vec()));
            if let Some(t) = tls {
                headers.push(("x-signalbox-edge-ja4".into(), t.as_bytes().to_vec()));
            }
            let mut f = Facts::from_parts(
                "POST",
                path,
                headers,
                ip.parse().ok(),
                &EdgeHeaderNames::conventional(),
            );
            f.clearance = clearance;
            f
        })
}

fn score(bundle: &BundleV1, facts: &Facts, remote: Option<&RemoteContext>) -> Verdict {
    Policy::try_from(bundle.clone())
        .unwrap()
        .evaluate(facts, remote, NOW)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A clearance means "solved a challenge", never more: with and without a valid one the
    /// score and the decision are identical, except that a challenge becomes a pass when the
    /// clearance was earned at no less than the difficulty this challenge asks.
    #[test]
    fn a_clearance_only_satisfies_a_challenge(
        weights in proptest::collection::vec(0u32..=100, 1..20),
        facts in facts_strategy(),
        difficulty in 1u8..=32,
        remote_score in proptest::option::of(0u32..=100),
        manual in proptest::option::of(prop_oneof![
            Just(ManualAction::Ban), Just(ManualAction::Challenge),
            Just(ManualAction::Throttle), Just(ManualAction::Allow)
        ]),
        use_golden in any::<bool>(),
    ) {
        let policy = if use_golden { golden() } else { Policy::try_from(weighted_bundle(&weights)).unwrap() };
        let remote = remote_score.map(|score| RemoteContext {
            ip: Some(SubjectContext {
                score,
                decision: manual.map(|action| ManualDecision { action, expires_at: NOW + 60 }),
            }),
            user: None,
            device: None,
        });
        let mut without = facts.clone();
        without.clearance = Clearance::Absent;
        let mut with = facts;
        with.clearance = Clearance::Valid { difficulty };
        let a = policy.evaluate(&without, remote.as_ref(), NOW);
        let b = policy.evaluate(&with, remote.as_ref(), NOW);
        prop_assert_eq!(a.score, b.score);
        prop_assert_eq!(a.level, b.level);
        let satisfied = a.intended_decision() == Decision::Challenge
            && difficulty >= policy.challenge_difficulty(a.level);
        if satisfied {
            prop_assert_eq!(b.intended_decision(), Decision::Pass);
        } else {
            prop_assert_eq!(a.intended_decision(), b.intended_decision());
        }
    }

    /// The score is within 0..=100 and, before the cap, equals the sum of the reported points.
    #[test]
    fn score_is_bounded_and_explained(
        weights in proptest::collection::vec(0u32..=100, 1..20),
        facts in facts_strategy(),
        remote_score in proptest::option::of(0u32..=1000),
    ) {
        let remote = remote_score.map(|s| RemoteContext { ip: Some(SubjectContext { score: s, decision: None }), user: None, device: None });
        let v = score(&weighted_bundle(&weights), &facts, remote.as_ref());
        prop_assert!(v.score <= 100);
        let sum: i32 = v.reasons.iter().map(|r| i32::from(r.points)).sum();
        prop_assert_eq!(i32::from(v.score), sum.clamp(0, 100));
        // Every reason carries points, except the note that a clearance satisfied a challenge.
        prop_assert!(v.reasons.iter().all(|r| r.points != 0 || r.code.as_str() == "clearance.valid"));
    }

    /// Raising any risk weight never lowers the score of the same request.
    #[test]
    fn raising_a_risk_weight_never_lowers_the_score(
        weights in proptest::collection::vec(0u32..=100, 1..20),
        bump_at in 0usize..20,
        bump in 1u32..=100,
        facts in facts_strategy(),
    ) {
        let mut raised = weights.clone();
        let i = bump_at % raised.len();
        raised[i] = (raised[i] + bump).min(100);
        let before = score(&weighted_bundle(&weights), &facts, None).score;
        let after = score(&weighted_bundle(&raised), &facts, None).score;
        prop_assert!(after >= before, "{} -> {}", before, after);
    }

    /// Adding the client's address to a scored list, or a higher remote score, never lowers it.
    #[test]
    fn an_added_risk_signal_never_lowers_the_score(
        weights in proptest::collection::vec(0u32..=100, 1..20),
        facts in facts_strategy(),
        remote_a in 0u32..=100,
        remote_b in 0u32..=100,
    ) {
        let bundle = weighted_bundle(&weights);
        let mut listed = bundle.clone();
        listed.lists.get_mut("tor").unwrap().cidrs.push(facts.client_ip.unwrap().to_string());
        prop_assert!(score(&listed, &facts, None).score >= score(&bundle, &facts, None).score);
        let (lo, hi) = (remote_a.min(remote_b), remote_a.max(remote_b));
        let ctx = |s| RemoteContext { ip: Some(SubjectContext { score: s, decision: None }), user: None, device: None };
        prop_assert!(score(&bundle, &facts, Some(&ctx(hi))).score >= score(&bundle, &facts, Some(&ctx(lo))).score);
        prop_assert!(score(&bundle, &facts, Some(&ctx(lo))).score >= score(&bundle, &facts, None).score);
    }

    /// Any mix of valid weights loads; any weight above 100 is refused with its path.
    #[test]
    fn weights_are_validated(weights in proptest::collection::vec(0u32..=300, SIGNAL_WEIGHTS)) {
        let bundle = weighted_bundle(&weights);
        match Policy::try_from(bundle) {
            Ok(_) => prop_assert!(weights.iter().all(|w| *w <= 100)),
            Err(e) => {
                prop_assert!(weights.iter().any(|w| *w > 100));
                prop_assert!(e.field_errors().iter().all(|f| f.message == "must be 0..=100" && !f.path.is_empty()));
            }
        }
    }
}

fn policy_from(json: serde_json::Value) -> Result<Policy, BundleError> {
    Policy::from_json_slice(json.to_string().as_bytes())
}

#[test]
fn validation_collects_every_error_with_paths() {
    let err = policy_from(serde_json::json!({
        "format_version": 2, "revision": 1, "min_engine_version": "99.0.0",
        "thresholds": {"medium": 50, "high": 40, "critical": 90},
        "lookup_band": {"min": 80, "max": 20},
        "signals": {"ua_outdated": {"weight": 5, "min_major": {"netscape": 4}}, "country": {"scores": {"ch": 5}}},
        "lists": {"a": {"as_of": "2026-13-01", "cidrs": ["1.2.3.0/24", "nope"]}},
        "crawlers": {"catalogue": [{"name": "g", "category": "search_engine", "ua_tokens": [], "ranges": "missing"}]},
        "routes": [{"name": "r", "path_prefix": "login", "methods": ["get"]}],
        "rules": [{"id": "x", "when": {}, "action": "block"}, {"id": "x", "when": {"ip_list": "zzz"}, "action": "pass"}],
        "rate_budgets": [{"name": "b", "key": "route", "route": "nope", "requests": 0, "per_seconds": 60}],
        "cache": {"timeout_ms": 0},
        "challenge": {"difficulty_bits": 64, "verify_path": "verify"},
        "subjects": {"ipv6_prefix": 200}
    }))
    .unwrap_err();
    let paths: Vec<&str> = err.field_errors().iter().map(|f| f.path.as_str()).collect();
    for expected in [
        "format_version",
        "min_engine_version",
        "thresholds",
        "lookup_band",
        "signals.ua_outdated.min_major.netscape",
        "signals.country.scores.ch",
        "lists.a.as_of",
        "lists.a.cidrs[1]",
        "crawlers.catalogue[0].ua_tokens",
        "crawlers.catalogue[0].ranges",
        "routes[0].path_prefix",
        "routes[0].methods[0]",
        "rules[0].when",
        "rules[1].id",
        "rules[1].when.ip_list",
        "rate_budgets[0].requests",
        "rate_budgets[0].route",
        "cache.timeout_ms",
        "challenge.difficulty_bits",
        "challenge.verify_path",
        "subjects.ipv6_prefix",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn shape_errors_name_the_field() {
    let err = policy_from(serde_json::json!({
        "format_version": 1, "revision": 1, "min_engine_version": "0.1.0",
        "signals": {"ua_automation": {"weight": "high", "tokens": []}}
    }))
    .unwrap_err();
    assert_eq!(err.field_errors()[0].path, "signals.ua_automation.weight");
    let err = policy_from(serde_json::json!({
        "format_version": 1, "revision": 1, "min_engine_version": "0.1.0",
        "routes": [{"name": "a", "path_prefix": "/", "colour": "red"}]
    }))
    .unwrap_err();
    assert_eq!(err.field_errors()[0].path, "routes[0].colour");
    assert!(err.to_string().contains("unknown field `colour`"));
    assert!(Policy::from_json_slice(b"\xff\xfe").is_err());
    assert!(Policy::from_json_slice(b"").is_err());
}

fn golden() -> Policy {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/scenarios/bundles/golden.yaml"
    ))
    .unwrap();
    let value: serde_json::Value = serde_norway::from_str(&text).unwrap();
    Policy::from_json_slice(value.to_string().as_bytes()).unwrap()
}

fn cam(clearance: Clearance) -> Facts {
    let mut f = Facts::from_parts(
        "GET",
        "/signup",
        [
            ("user-agent", &b"Mozilla/5.0 (Linux; Android 7.0; SM-G930F Build/NRD90M) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Mobile Safari/537.36 Puffin/7.1.2.18064AP"[..]),
            ("accept", b"text/html,*/*;q=0.8"),
            ("accept-encoding", b"gzip"),
            ("accept-language", b""),
        ],
        "167.99.134.20".parse().ok(),
        &EdgeHeaderNames::default(),
    );
    f.clearance = clearance;
    f
}

#[test]
fn valid_clearance_satisfies_a_challenge_and_invalid_adds_risk() {
    let p = golden();
    let none = p.evaluate(&cam(Clearance::Absent), None, NOW);
    assert_eq!(none.decision, Decision::Challenge);
    let valid = p.evaluate(&cam(Clearance::Valid { difficulty: 12 }), None, NOW);
    assert_eq!(valid.decision, Decision::Pass);
    assert_eq!(
        valid.score, none.score,
        "a clearance never lowers the score"
    );
    assert!(
        valid
            .reasons
            .iter()
            .any(|r| r.code.as_str() == "clearance.valid" && r.points == 0)
    );
    // Earned at a lower difficulty than this challenge asks: asked again.
    let easier = p.evaluate(&cam(Clearance::Valid { difficulty: 11 }), None, NOW);
    assert_eq!(easier.decision, Decision::Challenge);
    let invalid = p.evaluate(&cam(Clearance::Invalid), None, NOW);
    assert_eq!(invalid.score, none.score + 10);
    assert_eq!(
        invalid.decision,
        Decision::Block,
        "75 + 10 = 85 is critical"
    );
}

#[test]
fn assess_asks_for_lookups_only_when_useful() {
    let p = golden();
    // Sensitive route: lookup wanted for the IP.
    let a = p.assess(&cam(Clearance::Absent), NOW);
    let lookup = a.lookup().unwrap();
    assert_eq!(lookup.reason, LookupReason::SensitiveRoute);
    assert_eq!(lookup.ip.as_deref(), Some("167.99.134.20"));
    assert_eq!(lookup.user, None);
    // Low score, plain route: none.
    let low = Facts::from_parts(
        "GET",
        "/",
        [
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            ),
            ("accept", "text/html,*/*;q=0.8"),
            ("accept-language", "en"),
            ("accept-encoding", "gzip"),
            ("sec-fetch-site", "none"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ],
        "81.62.10.4".parse().ok(),
        &EdgeHeaderNames::default(),
    );
    assert!(p.assess(&low, NOW).lookup().is_none());
    // Gray zone, IPv6 keyed at /64, user key passed through.
    let mut gray = Facts::from_parts(
        "GET",
        "/",
        [("user-agent", "curl/8")],
        "2001:db8:1:2:3:4:5:6".parse().ok(),
        &EdgeHeaderNames::default(),
    );
    gray.user = Some("u-7".into());
    let a = p.assess(&gray, NOW);
    let lookup = a.lookup().unwrap();
    assert_eq!(lookup.reason, LookupReason::GrayZone);
    assert_eq!(lookup.ip.as_deref(), Some("2001:db8:1:2::/64"));
    assert_eq!(lookup.user.as_deref(), Some("u-7"));
}

#[test]
fn crawler_ranges_go_stale() {
    let p = golden();
    let gb = |ip: &str| {
        Facts::from_parts(
            "GET",
            "/",
            [("user-agent", "Googlebot/2.1")],
            ip.parse().ok(),
            &EdgeHeaderNames::default(),
        )
    };
    // The fixture's googlebot ranges are as of 2026-11-01; ten years later they are stale.
    let fresh = p.evaluate(&gb("198.51.100.1"), None, NOW);
    assert!(
        fresh
            .reasons
            .iter()
            .any(|r| r.code.as_str() == "crawler.spoofed")
    );
    assert_eq!(fresh.client.class, ClientClass::SpoofedBot);
    assert_eq!(fresh.decision, Decision::Block);
    assert_eq!(
        p.evaluate(&gb("66.249.66.1"), None, NOW).client.class,
        ClientClass::VerifiedBot
    );
    // Stale ranges prove nothing either way: from outside them or inside them, a Googlebot is
    // only a declared search engine, and never passes (the golden bundle challenges it).
    let later = NOW + 3_700 * 86_400;
    for ip in ["198.51.100.1", "66.249.66.1"] {
        let stale = p.evaluate(&gb(ip), None, later);
        assert!(
            stale
                .reasons
                .iter()
                .any(|r| r.code.as_str() == "crawler.ranges_stale"),
            "{ip}: {stale:?}"
        );
        assert_eq!(stale.client.class, ClientClass::DeclaredBot, "{ip}");
        assert_eq!(stale.decision, Decision::Challenge, "{ip}");
    }
    let stale: Vec<_> = p
        .stale_ranges(later)
        .into_iter()
        .map(|s| (s.list, s.as_of, s.age_days, s.crawlers))
        .collect();
    assert_eq!(
        stale,
        [
            (
                "googlebot".to_owned(),
                Some("2026-11-01".to_owned()),
                Some((NOW / 86_400 + 3_700) as i64 - 20_758),
                vec!["googlebot".to_owned()]
            ),
            (
                "oldbot".to_owned(),
                Some("2010-01-01".to_owned()),
                Some((NOW / 86_400 + 3_700) as i64 - 14_610),
                vec!["oldbot".to_owned()]
            )
        ]
    );
    assert_eq!(
        p.stale_ranges(NOW).len(),
        1,
        "only oldbot's are stale today"
    );
}

#[test]
fn no_panic_on_extreme_inputs() {
    let p = golden();
    let long = vec![b'A'; 64 * 1024];
    let headers = vec![
        ("user-agent".to_string(), long.clone()),
        ("accept-language".to_string(), vec![0xff; 10]),
        (
            "cookie".to_string(),
            b"=;;==;__Host-signalbox-clearance".to_vec(),
        ),
        ("cf-ipcountry".to_string(), vec![0xc3, 0x28]),
        (
            "x-signalbox-edge-asn".to_string(),
            b"99999999999999999999".to_vec(),
        ),
        ("sec-ch-ua".to_string(), b"\"Chromium\";v=\"".to_vec()),
    ];
    let path = String::from_utf8_lossy(&long).into_owned() + "/%%%/../..";
    for ip in [
        "0.0.0.0",
        "255.255.255.255",
        "::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ] {
        let f = Facts::from_parts(
            "\u{0}",
            &path,
            headers.clone(),
            ip.parse().ok(),
            &EdgeHeaderNames::default(),
        );
        let remote = RemoteContext {
            ip: Some(SubjectContext {
                score: u32::MAX,
                decision: Some(ManualDecision {
                    action: ManualAction::Ban,
                    expires_at: u64::MAX,
                }),
            }),
            user: None,
            device: None,
        };
        assert_eq!(
            p.evaluate(&f, Some(&remote), u64::MAX - 1).decision,
            Decision::Block
        );
        let _ = p.evaluate(&f, None, 0);
    }
}

#[test]
fn rate_keys_follow_subjects_routes_and_levels() {
    let mut b = base_bundle();
    b.routes = vec![RouteV1 {
        name: "login".into(),
        path_prefix: "/login".into(),
        methods: vec![],
        weight: 0,
        sensitive: false,
    }];
    b.signals.ua_automation = UaTokensV1 {
        weight: 75,
        tokens: vec!["curl/".into()],
    };
    b.rate_budgets = vec![
        RateBudgetV1 {
            name: "per-ip".into(),
            key: RateKeyV1::Ip,
            route: None,
            requests: 100,
            per_seconds: 60,
            burst: None,
            level_percent: BTreeMap::from([(LevelV1::High, 50)]),
        },
        RateBudgetV1 {
            name: "login".into(),
            key: RateKeyV1::Route,
            route: Some("login".into()),
            requests: 10,
            per_seconds: 60,
            burst: Some(5),
            level_percent: BTreeMap::new(),
        },
        RateBudgetV1 {
            name: "per-user".into(),
            key: RateKeyV1::User,
            route: None,
            requests: 1000,
            per_seconds: 3600,
            burst: None,
            level_percent: BTreeMap::new(),
        },
    ];
    let p = Policy::try_from(b).unwrap();
    let facts = |ua: &str, path: &str, ip: &str| {
        Facts::from_parts(
            "POST",
            path,
            [("user-agent", ua)],
            ip.parse().ok(),
            &EdgeHeaderNames::default(),
        )
    };

    let browser = facts("Mozilla/5.0", "/login", "2001:db8:1:2::7");
    let keys = p.rate_keys(&browser, &p.evaluate(&browser, None, NOW));
    let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        names,
        [
            "per-ip|ip|2001:db8:1:2::/64",
            "login|route|2001:db8:1:2::/64"
        ]
    );
    assert_eq!(keys[0].budget.capacity, 100);
    assert_eq!(keys[1].budget.capacity, 5);

    let mut bot = facts("curl/8", "/", "198.51.100.9");
    bot.user = Some("u-9".into());
    let verdict = p.evaluate(&bot, None, NOW);
    assert_eq!(verdict.level, Level::High);
    let keys = p.rate_keys(&bot, &verdict);
    let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(names, ["per-ip|ip|198.51.100.9", "per-user|user|u-9"]);
    assert_eq!(
        (keys[0].budget.capacity, keys[0].budget.requests),
        (50, 50),
        "high level halves the budget"
    );
}

#[test]
fn a_host_marked_sensitive_route_raises_the_action_and_asks_the_cache() {
    let p = golden();
    // A browser missing most of its headers: medium (55), which passes on a plain route.
    let mut curl = Facts::from_parts(
        "GET",
        "/account",
        [
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            ),
            ("accept", "text/html"),
        ],
        "198.51.100.9".parse().ok(),
        &EdgeHeaderNames::default(),
    );
    let plain = p.evaluate(&curl, None, NOW);
    assert_eq!(
        (plain.decision, plain.level),
        (Decision::Pass, Level::Medium)
    );
    curl.route_sensitive = true;
    let a = p.assess(&curl, NOW);
    assert_eq!(a.lookup().unwrap().reason, LookupReason::SensitiveRoute);
    assert_eq!(
        p.decide(a, None, NOW).decision,
        Decision::Challenge,
        "medium on a sensitive route is challenged"
    );
}

#[test]
fn a_rule_takes_client_class_or_the_old_ua_class_not_both() {
    let mut bundle = base_bundle();
    bundle.rules = vec![RuleV1 {
        id: "both".into(),
        when: ConditionsV1 {
            client_class: vec![ClientClassV1::Browser],
            ua_class: vec![UaClassV1::Automation],
            ..ConditionsV1::default()
        },
        action: ActionV1::Block,
        dry_run: false,
        at_least: false,
    }];
    let err = Policy::try_from(bundle).unwrap_err();
    assert!(
        err.field_errors()
            .iter()
            .any(|e| e.path == "rules[0].when.ua_class" && e.message.contains("not both")),
        "{err:?}"
    );
}

#[test]
fn header_values_not_only_names_must_be_a_browser_s() {
    let p = golden();
    let chrome = |extra: &[(&str, &str)]| {
        let mut headers = vec![
            (
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            ),
            ("accept", "text/html,*/*;q=0.8"),
            ("accept-language", "en"),
            ("accept-encoding", "gzip, br"),
            (
                "sec-ch-ua",
                "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
            ),
            ("sec-fetch-site", "none"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ];
        for (name, value) in extra {
            headers.retain(|(n, _)| n != name);
            headers.push((name, value));
        }
        let facts = Facts::from_parts(
            "GET",
            "/",
            headers,
            "81.62.10.4".parse().ok(),
            &EdgeHeaderNames::default(),
        );
        let v = p.evaluate(&facts, None, NOW);
        v.reasons
            .iter()
            .map(|r| r.code.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        chrome(&[]).is_empty(),
        "a real header set: {:?}",
        chrome(&[])
    );
    assert!(chrome(&[("sec-fetch-mode", "x")]).contains(&"headers.partial_sec_fetch".to_owned()));
    assert!(chrome(&[("sec-fetch-site", "")]).contains(&"headers.partial_sec_fetch".to_owned()));
    assert!(chrome(&[("sec-ch-ua", "x")]).contains(&"ua.client_hints_mismatch".to_owned()));
    assert!(chrome(&[("accept", "")]).contains(&"headers.no_accept".to_owned()));
    assert!(chrome(&[("accept-encoding", " ")]).contains(&"headers.no_accept_encoding".to_owned()));
}

proptest! {
    /// A decision record keeps only [`SIGNAL_HEADERS`] and, for the address, its lists: a
    /// replay from those must reach the verdict the live request got, with and without
    /// context from the score cache.
    #[test]
    fn a_recorded_request_replays_to_the_same_verdict(facts in facts_strategy(), score in 0u32..=100) {
        let policy = golden();
        let mut recorded = facts.clone();
        recorded.headers.retain(|(name, _)| SIGNAL_HEADERS.contains(&name.as_str()));
        recorded.recorded_ip = recorded.client_ip.take().map(|ip| RecordedIp {
            key: "hash".to_owned(),
            lists: policy.lists_holding(ip),
        });
        let remote = RemoteContext {
            ip: Some(SubjectContext { score, decision: None }),
            ..RemoteContext::default()
        };
        for context in [None, Some(&remote)] {
            let live = policy.evaluate(&facts, context, NOW);
            let replayed = policy.evaluate(&recorded, context, NOW);
            prop_assert_eq!(&live, &replayed);
            prop_assert_eq!(
                policy.assess(&facts, NOW).lookup().is_some(),
                policy.assess(&recorded, NOW).lookup().is_some()
            );
        }
    }
}

#[test]
fn lists_holding_names_the_lists_an_address_is_in() {
    let policy = golden();
    let held = |ip: &str| policy.lists_holding(ip.parse().unwrap());
    assert_eq!(held("167.99.1.2"), ["hosting"]);
    assert_eq!(held("::ffff:2.26.97.42"), ["tor"]);
    assert_eq!(held("2001:4860:4801::1"), ["googlebot"]);
    assert!(held("8.8.8.8").is_empty());
}

#[test]
fn manual_decisions_from_the_stream_apply_without_a_call_and_the_answer_wins_per_subject() {
    let policy = golden();
    let gio = |manual: ManualDecisions| {
        let mut f = Facts::from_parts(
            "GET",
            "/",
            [
                (
                    "user-agent",
                    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                ),
                ("accept", "text/html"),
                ("accept-language", "it-CH"),
                ("accept-encoding", "gzip, br"),
            ],
            "81.62.10.4".parse().ok(),
            &EdgeHeaderNames::conventional(),
        );
        f.manual_decisions = manual;
        f
    };
    let until = |action| {
        Some(ManualDecision {
            action,
            expires_at: NOW + 60,
        })
    };
    let ban = ManualDecisions {
        ip: until(ManualAction::Ban),
        ..ManualDecisions::default()
    };
    assert_eq!(
        policy
            .evaluate(&gio(ManualDecisions::default()), None, NOW)
            .decision,
        Decision::Pass
    );
    let v = policy.evaluate(&gio(ban), None, NOW);
    assert_eq!(v.decision, Decision::Block);
    assert_ne!(v.remote, RemoteStatus::Used, "no answer was used");
    // An allow for the user beats the IP's ban.
    let allowed = ManualDecisions {
        user: until(ManualAction::Allow),
        ..ban
    };
    assert_eq!(
        policy.evaluate(&gio(allowed), None, NOW).decision,
        Decision::Pass
    );
    // Expired: no longer applies.
    let expired = ManualDecisions {
        ip: Some(ManualDecision {
            action: ManualAction::Ban,
            expires_at: NOW,
        }),
        ..ManualDecisions::default()
    };
    assert_eq!(
        policy.evaluate(&gio(expired), None, NOW).decision,
        Decision::Pass
    );
    // The cache's answer for the IP replaces the local copy's (lifted there already).
    let answer = RemoteContext {
        ip: Some(SubjectContext {
            score: 0,
            decision: until(ManualAction::Challenge),
        }),
        ..RemoteContext::default()
    };
    assert_eq!(
        policy.evaluate(&gio(ban), Some(&answer), NOW).decision,
        Decision::Challenge
    );
}
