//! What the cargo-fuzz targets in `policy/fuzz/fuzz_targets/` do with an input, shared with the
//! stable replay test `policy/tests/fuzz_corpus.rs`, so a corpus file means the same thing to
//! libFuzzer and to `cargo test`. Plain Rust: no libfuzzer, no `arbitrary`, nothing beyond
//! `signalbox-policy` and `serde_json` (already one of its dependencies).
//!
//! - [`bundle_parse`]: fuzz bytes are bundle JSON. A bundle that loads is evaluated against one
//!   fixed request (with and without remote context), and its wire form must survive a JSON
//!   round trip unchanged.
//! - [`evaluate`]: fuzz bytes are a request (see [`Input::decode`] for the layout), evaluated
//!   against one of the fixed bundles [`EVALUATE_BUNDLES`] with and without remote context.
//!
//! Both check the verdict's invariants ([`check_verdict`]); any panic is a finding, since the
//! library promises that no function panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use signalbox_policy::{
    Clearance, EdgeHeaderNames, Facts, ManualAction, ManualDecision, Mode, Policy, RemoteContext,
    RemoteStatus, SubjectContext, Verdict,
};

/// `now` of the fixed request in [`bundle_parse`] (2025-11-24).
pub const NOW: u64 = 1_764_000_000;

/// Loads fuzz bytes as a bundle; if they load, evaluates the fixed request against the policy
/// and round-trips its wire form through JSON. Returns whether the bundle loaded.
pub fn bundle_parse(data: &[u8]) -> bool {
    let Ok(policy) = Policy::from_json_slice(data) else {
        return false;
    };
    let facts = fixed_request();
    let remote = fixed_remote(NOW);
    let without = policy.evaluate(&facts, None, NOW);
    check_verdict(&policy, &without);
    let with = policy.evaluate(&facts, Some(&remote), NOW);
    check_verdict(&policy, &with);
    assert_eq!(with.remote, RemoteStatus::Used);

    // `signalbox policy build` writes bundles by serialising the wire types: what loaded once
    // must load again from its own serialisation, to the same wire value and the same verdict.
    let wire = signalbox_policy::parse_wire(data);
    assert!(wire.is_ok(), "a bundle that compiled must parse: {wire:?}");
    if let Ok(wire) = wire {
        let json = serde_json::to_vec(&wire);
        assert!(json.is_ok(), "wire bundle does not serialise: {json:?}");
        if let Ok(json) = json {
            let again = signalbox_policy::parse_wire(&json);
            assert_eq!(
                again.as_ref().ok(),
                Some(&wire),
                "wire round trip changed the bundle: {again:?}"
            );
            let reloaded = Policy::from_json_slice(&json);
            assert!(
                reloaded.is_ok(),
                "re-serialised bundle no longer loads: {reloaded:?}"
            );
            if let Ok(reloaded) = reloaded {
                assert_eq!(reloaded.evaluate(&facts, None, NOW), without);
                assert_eq!(reloaded.evaluate(&facts, Some(&remote), NOW), with);
            }
        }
    }
    true
}

/// The request [`bundle_parse`] evaluates: a Chrome UA with client hints, a clearance cookie,
/// edge headers and a user, posting to `/login` from an IPv6 client.
pub fn fixed_request() -> Facts {
    let headers: [(&str, &[u8]); 12] = [
        (":authority", b"shop.example"),
        (
            "User-Agent",
            b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
              Chrome/118.0.0.0 Safari/537.36 Googlebot",
        ),
        ("accept-language", b""),
        ("accept-encoding", b"gzip, br"),
        (
            "sec-ch-ua",
            b"\"Chromium\";v=\"119\", \"Not_A Brand\";v=\"24\"",
        ),
        ("sec-ch-ua-mobile", b"?1"),
        ("sec-ch-ua-platform", b"\"macOS\""),
        ("cookie", b"a=1; __Host-signalbox-clearance=abc.def"),
        ("cf-ipcountry", b"ru"),
        ("x-signalbox-edge-asn", b"AS14061"),
        (
            "x-signalbox-edge-ja4",
            b"t13d1516h2_8daaf6152771_02713d6af862",
        ),
        ("x-signalbox-edge-user", b"u-42"),
    ];
    Facts::from_parts(
        "POST",
        "//api/../Login/%73tep?next=/",
        headers,
        Some(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0xa11, 7, 0, 0, 0, 1,
        ))),
        &EdgeHeaderNames::conventional(),
    )
}

fn fixed_remote(now: u64) -> RemoteContext {
    RemoteContext {
        ip: Some(SubjectContext {
            score: 55,
            decision: None,
        }),
        user: Some(SubjectContext {
            score: 250,
            decision: Some(ManualDecision {
                action: ManualAction::Challenge,
                expires_at: now + 60,
            }),
        }),
        device: None,
    }
}

/// The bundles the `evaluate` target runs requests against: [0] a rich enforcing bundle, [1] a
/// shadow-mode, fail-closed one with other thresholds and subjects. Every section is set.
pub const EVALUATE_BUNDLES: [&str; 2] = [
    r#"{
  "format_version": 1, "revision": 7, "min_engine_version": "0.1.0",
  "description": "fuzz: rich enforcing bundle", "mode": "enforce",
  "thresholds": { "medium": 40, "high": 70, "critical": 85 },
  "actions": { "low": "pass", "medium": "pass", "high": "challenge", "critical": "block",
               "sensitive_routes": { "medium": "challenge", "high": "block" } },
  "lookup_band": { "min": 30, "max": 70 },
  "signals": {
    "ua_missing": { "weight": 50 },
    "ua_automation": { "weight": 45, "tokens": ["curl/", "Wget/", "python-requests", "Go-http-client",
      "okhttp", "axios/", "Java/", "libwww-perl", "Scrapy", "HTTPie"] },
    "ua_headless": { "weight": 60, "tokens": ["HeadlessChrome", "PhantomJS", "Puppeteer", "Playwright",
      "Selenium", "webdriver", "Electron/"] },
    "ua_outdated": { "weight": 20, "min_major": { "chrome": 120, "edge": 120, "firefox": 115,
      "safari": 15, "opera": 100, "samsung": 20 } },
    "ua_client_hints_mismatch": { "weight": 30 },
    "headers_missing_accept_language": { "weight": 20 },
    "headers_empty_accept_language": { "weight": 20 },
    "headers_missing_accept_encoding": { "weight": 15 },
    "headers_missing_sec_fetch": { "weight": 10 },
    "ip_lists": { "hosting": 25, "tor": 45, "vpn": 15 },
    "country": { "scores": { "KP": 40, "RU": 15, "CN": 10 } },
    "asn": { "scores": { "14061": 20, "16509": 15, "4134": 10 } },
    "tls_fingerprint": { "weight": 40, "fingerprints": ["t13d1516h2_8daaf6152771_02713d6af862",
      "771,4865-4866-4867,0-23-65281,29-23-24,0"] },
    "remote_score": { "weight": 60 },
    "clearance": { "trust": 40, "invalid_weight": 10 }
  },
  "lists": {
    "allow": { "source": "operator", "cidrs": ["198.51.100.0/24", "2001:db8:a11::/48"] },
    "deny": { "source": "operator", "cidrs": ["203.0.113.66", "2001:db8:dead::/48", "::ffff:192.0.2.0/120"] },
    "hosting": { "source": "fuzz", "licence": "CC0-1.0", "as_of": "2025-11-01",
      "cidrs": ["3.0.0.0/9", "34.64.0.0/10", "104.16.0.0/13", "2600:1f00::/24", "2a05:d000::/25"] },
    "tor": { "as_of": "2025-11-20", "cidrs": ["185.220.100.0/22", "192.42.116.0/22", "2a0b:f4c2::/40"] },
    "vpn": { "cidrs": ["89.187.160.0/19", "2a02:6ea0::/29"] },
    "googlebot": { "as_of": "2025-11-15", "cidrs": ["66.249.64.0/19", "2001:4860:4801::/48"] },
    "gptbot": { "as_of": "2024-01-01", "cidrs": ["20.15.240.64/28", "52.230.152.0/24"] },
    "applebot": { "cidrs": ["17.0.0.0/8"] }
  },
  "crawlers": {
    "max_ranges_age_days": 90, "verified_trust": 100, "spoofed_weight": 60, "unverified_weight": 10,
    "category_weights": { "search_engine": 0, "ai_crawler": 10, "monitor": 0, "seo": 15, "preview": 0,
      "feed": 0, "archiver": 5, "other": 10 },
    "catalogue": [
      { "name": "googlebot", "category": "search_engine", "ua_tokens": ["Googlebot", "Google-InspectionTool"],
        "ranges": "googlebot" },
      { "name": "bingbot", "category": "search_engine", "ua_tokens": ["bingbot", "BingPreview"] },
      { "name": "applebot", "category": "search_engine", "ua_tokens": ["Applebot"], "ranges": "applebot" },
      { "name": "gptbot", "category": "ai_crawler", "ua_tokens": ["GPTBot", "ChatGPT-User"], "ranges": "gptbot" },
      { "name": "claudebot", "category": "ai_crawler", "ua_tokens": ["ClaudeBot"] },
      { "name": "ahrefsbot", "category": "seo", "ua_tokens": ["AhrefsBot"] },
      { "name": "previews", "category": "preview", "ua_tokens": ["Slackbot", "Twitterbot"] },
      { "name": "monitors", "category": "monitor", "ua_tokens": ["UptimeRobot"] },
      { "name": "feeds", "category": "feed", "ua_tokens": ["Feedly"] },
      { "name": "archive", "category": "archiver", "ua_tokens": ["ia_archiver"] },
      { "name": "misc", "category": "other", "ua_tokens": ["bot.html"] }
    ]
  },
  "routes": [
    { "name": "login", "path_prefix": "/login", "methods": ["POST"], "weight": 15, "sensitive": true },
    { "name": "signup", "path_prefix": "/signup", "weight": 10, "sensitive": true },
    { "name": "checkout", "path_prefix": "/checkout", "weight": 10, "sensitive": true },
    { "name": "cart-api", "path_prefix": "/api/cart", "methods": ["POST", "PUT"], "weight": 5 },
    { "name": "api", "path_prefix": "/api/" }
  ],
  "rules": [
    { "id": "deny-list", "when": { "ip_list": "deny" }, "action": "block" },
    { "id": "allow-list", "when": { "ip_list": "allow" }, "action": "pass" },
    { "id": "tor-checkout", "when": { "path_prefix": "/checkout", "ip_list": "tor" }, "action": "challenge" },
    { "id": "automation-search", "when": { "path_prefix": "/search", "methods": ["GET", "HEAD"],
      "ua_class": ["automation", "headless"] }, "action": "throttle" },
    { "id": "geo-admin", "when": { "path_prefix": "/admin", "countries": ["KP", "RU"] }, "action": "block" },
    { "id": "asn-high", "when": { "asns": [14061, 16509], "min_level": "high" }, "action": "block" },
    { "id": "odd-api", "when": { "path_prefix": "/api/", "ua_class": ["missing", "unknown", "crawler"] },
      "action": "challenge", "dry_run": true },
    { "id": "verified-crawlers", "when": { "ua_class": ["verified_crawler"] }, "action": "pass" },
    { "id": "block-ai", "when": { "crawler_category": ["ai_crawler", "seo"] }, "action": "block", "dry_run": true },
    { "id": "browser-medium", "when": { "ua_class": ["browser"], "min_level": "medium" }, "action": "challenge" }
  ],
  "rate_budgets": [
    { "name": "per-ip", "key": "ip", "requests": 300, "per_seconds": 60,
      "level_percent": { "high": 50, "critical": 20 } },
    { "name": "login-per-ip", "key": "route", "route": "login", "requests": 10, "per_seconds": 60, "burst": 20,
      "level_percent": { "medium": 50, "high": 20 } },
    { "name": "per-user", "key": "user", "requests": 1000, "per_seconds": 3600 }
  ],
  "cache": { "lookup": ["ip", "user"], "always_lookup": [], "timeout_ms": 50, "on_unavailable": "fail_open",
    "fail_closed_action": "challenge",
    "breaker": { "failure_rate_percent": 15, "min_requests": 20, "window_seconds": 10, "open_seconds": 30 } },
  "challenge": { "difficulty_bits": 16, "difficulty_by_level": { "high": 17, "critical": 18 },
    "challenge_ttl_seconds": 300, "clearance_ttl_seconds": 3600, "verify_path": "/.signalbox/verify" },
  "subjects": { "ipv6_prefix": 64 }
}"#,
    r#"{
  "format_version": 1, "revision": 8, "min_engine_version": "0.0.1", "mode": "shadow",
  "thresholds": { "medium": 30, "high": 55, "critical": 75 },
  "actions": { "low": "pass", "medium": "challenge", "high": "throttle", "critical": "block",
               "sensitive_routes": { "low": "challenge", "high": "block" } },
  "lookup_band": { "min": 20, "max": 60 },
  "signals": {
    "ua_missing": { "weight": 70 },
    "ua_automation": { "weight": 45, "tokens": ["curl/", "python", "Go-http-client"] },
    "ua_headless": { "weight": 60, "tokens": ["HeadlessChrome", "Playwright"] },
    "ua_outdated": { "weight": 35, "min_major": { "chrome": 130, "firefox": 128, "safari": 17 } },
    "ua_client_hints_mismatch": { "weight": 50 },
    "headers_missing_accept_language": { "weight": 25 },
    "headers_empty_accept_language": { "weight": 25 },
    "headers_missing_accept_encoding": { "weight": 25 },
    "headers_missing_sec_fetch": { "weight": 25 },
    "ip_lists": { "hosting": 35, "deny": 100 },
    "country": { "scores": { "ZZ": 100 } },
    "asn": { "scores": { "0": 5, "4294967295": 100 } },
    "tls_fingerprint": { "weight": 100, "fingerprints": ["bad"] },
    "remote_score": { "weight": 100 },
    "clearance": { "trust": 100, "invalid_weight": 100 }
  },
  "lists": {
    "deny": { "cidrs": ["0.0.0.0/8", "::/128"] },
    "hosting": { "cidrs": ["10.0.0.0/8", "fd00::/8", "::ffff:172.16.0.0/108"] },
    "bots": { "as_of": "1999-01-01", "cidrs": ["192.0.2.0/24", "2001:db8::/32"] }
  },
  "crawlers": {
    "max_ranges_age_days": 0, "verified_trust": 50, "spoofed_weight": 100, "unverified_weight": 100,
    "category_weights": { "other": 100 },
    "catalogue": [
      { "name": "bots", "category": "other", "ua_tokens": ["bot", "spider", "crawl"], "ranges": "bots" },
      { "name": "seo", "category": "seo", "ua_tokens": ["SemrushBot"] }
    ]
  },
  "routes": [
    { "name": "root", "path_prefix": "/", "methods": ["GET"], "weight": 1 },
    { "name": "admin", "path_prefix": "/admin/", "weight": 100, "sensitive": true }
  ],
  "rules": [
    { "id": "critical-only", "when": { "min_level": "critical" }, "action": "throttle" },
    { "id": "bots", "when": { "ua_class": ["crawler"], "crawler_category": ["other"] }, "action": "pass" }
  ],
  "rate_budgets": [ { "name": "all", "key": "ip", "requests": 1, "per_seconds": 1, "burst": 0 } ],
  "cache": { "lookup": ["ip"], "always_lookup": ["user"], "timeout_ms": 10000, "on_unavailable": "fail_closed",
    "fail_closed_action": "block",
    "breaker": { "failure_rate_percent": 100, "min_requests": 0, "window_seconds": 1, "open_seconds": 0 } },
  "challenge": { "difficulty_bits": 1, "difficulty_by_level": { "low": 32 }, "challenge_ttl_seconds": 1,
    "clearance_ttl_seconds": 1, "verify_path": "/v" },
  "subjects": { "ipv6_prefix": 48 }
}"#,
];

/// Compiles [`EVALUATE_BUNDLES`].
pub fn evaluate_policies() -> Result<Vec<Policy>, signalbox_policy::BundleError> {
    EVALUATE_BUNDLES
        .iter()
        .map(|b| Policy::from_json_slice(b.as_bytes()))
        .collect()
}

/// Decodes a request from fuzz bytes and evaluates it against one of `policies` (from
/// [`evaluate_policies`]): `assess`, then `decide` without and with the decoded remote context.
pub fn evaluate(policies: &[Policy], data: &[u8]) {
    let input = Input::decode(data);
    let Some(policy) = policies.get(input.bundle % policies.len().max(1)) else {
        return;
    };
    let facts = input.facts();
    let now = input.now;

    let assessment = policy.assess(&facts, now);
    assert!(assessment.local_score() <= 100);
    if let Some(lookup) = assessment.lookup() {
        if let Some(ip) = &lookup.ip {
            assert_eq!(
                Some(ip.clone()),
                facts.client_ip.map(|a| policy.ip_subject_key(a))
            );
        }
        if let Some(user) = &lookup.user {
            assert_eq!(Some(user), facts.user.as_ref());
        }
    }
    let without = policy.decide(assessment.clone(), None, now);
    check_verdict(policy, &without);
    assert_eq!(
        without.remote == RemoteStatus::NotWanted,
        assessment.lookup().is_none()
    );
    let with = policy.decide(assessment, Some(&input.remote), now);
    check_verdict(policy, &with);
    assert_eq!(with.remote, RemoteStatus::Used);
    // Pure: the one-call form agrees with the two phases.
    assert_eq!(policy.evaluate(&facts, None, now), without);
}

/// Invariants of every verdict: the reasons add up to the score (before the cap), the level
/// is the score's level, shadow mode always passes, at most the last matched rule acted.
pub fn check_verdict(policy: &Policy, verdict: &Verdict) {
    let sum: i64 = verdict.reasons.iter().map(|r| i64::from(r.points)).sum();
    assert_eq!(
        i64::from(verdict.score),
        sum.clamp(0, 100),
        "reasons do not add up: {verdict:?}"
    );
    assert_eq!(verdict.level, policy.level_of(verdict.score));
    assert_eq!(verdict.revision, policy.revision());
    match policy.mode() {
        Mode::Enforce => assert!(verdict.shadow_decision.is_none()),
        Mode::Shadow => {
            assert_eq!(verdict.decision, signalbox_policy::Decision::Pass);
            assert!(verdict.shadow_decision.is_some());
        }
    }
    let acted = verdict.rules.iter().filter(|r| !r.dry_run).count();
    assert!(acted <= 1, "more than one rule acted: {verdict:?}");
    assert!(acted == 0 || verdict.rules.last().is_some_and(|r| !r.dry_run));
}

/// A request decoded from fuzz bytes. Every byte string decodes to some input; missing bytes
/// read as zero.
///
/// Layout:
///
/// | bytes | meaning |
/// |---|---|
/// | 1 | flags: bit 0 IPv6 client; bit 1 bundle 1 (else 0); bits 2-3 clearance (1 valid, 2 invalid, else as the cookie says); bit 4 remote IP context; bit 5 remote user context |
/// | 8 | `now`, u64 little-endian |
/// | 4 or 16 | client IP, network order |
/// | 9 per remote subject (IP, then user, as flagged) | score u32 LE; manual action (1 ban, 2 challenge, 3 throttle, 4 allow, else none); expiry as an i32 LE offset from `now` |
/// | rest | fields separated by `0xFF`: method, path, then header name, value, name, value, ... (`0xFF 0x00` is a literal `0xFF` byte). Method, path and names are read as lossy UTF-8; values stay raw bytes. |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Index into [`EVALUATE_BUNDLES`].
    pub bundle: usize,
    /// Unix seconds.
    pub now: u64,
    /// Client IP.
    pub client_ip: IpAddr,
    /// Clearance verdict the adapter reached, if it overrides what `Facts::from_parts` found.
    pub clearance: Option<Clearance>,
    /// The score cache's answer, for `decide` with remote context.
    pub remote: RemoteContext,
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names and raw values, as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Input {
    /// Decodes fuzz bytes (see the layout above). Never fails.
    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader(data);
        let [flags] = r.take::<1>();
        let now = u64::from_le_bytes(r.take());
        let client_ip = if flags & 1 != 0 {
            IpAddr::V6(Ipv6Addr::from(r.take::<16>()))
        } else {
            IpAddr::V4(Ipv4Addr::from(r.take::<4>()))
        };
        let clearance = match (flags >> 2) & 3 {
            1 => Some(Clearance::Valid { difficulty: 16 }),
            2 => Some(Clearance::Invalid),
            _ => None,
        };
        let ip = (flags & 0x10 != 0).then(|| r.subject(now));
        let user = (flags & 0x20 != 0).then(|| r.subject(now));

        let mut fields = split_fields(r.0).into_iter();
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        let method = fields.next().map(text).unwrap_or_default();
        let path = fields.next().map(text).unwrap_or_default();
        let mut headers = Vec::new();
        while let Some(name) = fields.next() {
            headers.push((text(name), fields.next().unwrap_or_default()));
        }
        Input {
            bundle: usize::from(flags >> 1 & 1),
            now,
            client_ip,
            clearance,
            remote: RemoteContext {
                ip,
                user,
                device: None,
            },
            method,
            path,
            headers,
        }
    }

    /// The request facts, as an adapter would build them.
    pub fn facts(&self) -> Facts {
        let mut facts = Facts::from_parts(
            &self.method,
            &self.path,
            self.headers.iter().map(|(n, v)| (n.as_str(), v.clone())),
            Some(self.client_ip),
            &EdgeHeaderNames::conventional(),
        );
        if let Some(clearance) = &self.clearance {
            facts.clearance = clearance.clone();
        }
        facts
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    /// The next `N` bytes, zero-padded past the end.
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, tail) = self.0.split_at_checked(N).unwrap_or((self.0, &[]));
        let mut out = [0; N];
        for (o, b) in out.iter_mut().zip(head) {
            *o = *b;
        }
        self.0 = tail;
        out
    }

    fn subject(&mut self, now: u64) -> SubjectContext {
        let score = u32::from_le_bytes(self.take());
        let [action] = self.take::<1>();
        let offset = i32::from_le_bytes(self.take());
        let action = match action {
            1 => Some(ManualAction::Ban),
            2 => Some(ManualAction::Challenge),
            3 => Some(ManualAction::Throttle),
            4 => Some(ManualAction::Allow),
            _ => None,
        };
        SubjectContext {
            score,
            decision: action.map(|action| ManualDecision {
                action,
                expires_at: now.saturating_add_signed(i64::from(offset)),
            }),
        }
    }
}

/// Splits on `0xFF`; `0xFF 0x00` stands for a literal `0xFF`.
fn split_fields(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = Vec::new();
    let mut current = Vec::new();
    let mut iter = bytes.iter().copied().peekable();
    while let Some(b) = iter.next() {
        if b != 0xFF {
            current.push(b);
        } else if iter.next_if_eq(&0x00).is_some() {
            current.push(0xFF);
        } else {
            fields.push(std::mem::take(&mut current));
        }
    }
    fields.push(current);
    fields
}
