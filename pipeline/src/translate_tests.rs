//! Unit tests of the request, reply, verify and record functions.

use std::net::IpAddr;

use signalbox_policy::trust::{TokenError, VerifiedClearance};
use signalbox_policy::{Clearance, Decision};

use crate::Final;
use crate::config::{ClientIpMode, ClientIpV1, Settings, parse};
use crate::record::*;
use crate::reply::*;
use crate::request::*;
use crate::verify::*;

fn settings_with(edge_headers: serde_json::Value) -> Settings {
    let cfg = serde_json::json!({
        "bundle": {"format_version": 1, "revision": 1, "min_engine_version": "0.1.0"},
        "allow_unsigned": true,
        "edge_headers": edge_headers
    });
    parse(cfg.to_string().as_bytes(), 1_795_392_000, |_| None).unwrap()
}

fn settings() -> Settings {
    settings_with(serde_json::json!(
        {"trusted": true, "country": "cf-ipcountry", "user": "x-signalbox-user"}
    ))
}

fn h(pairs: &[(&str, &[u8])]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect()
}

#[test]
fn strips_client_signalbox_headers_but_keeps_configured_edge_ones() {
    let headers = h(&[
        ("x-signalbox-decision", b"pass"),
        ("X-Signalbox-Score", b"0"),
        ("x-signalbox-user", b"u1"),
        ("x-signalbox-edge-asn", b"1"),
        ("accept", b"*/*"),
    ]);
    assert_eq!(
        headers_to_strip(&headers, &settings()),
        [
            "x-signalbox-decision",
            "x-signalbox-edge-asn",
            "x-signalbox-score",
        ]
    );
}

#[test]
fn untrusted_edge_headers_are_stripped_and_never_read() {
    let untrusted = settings_with(serde_json::json!(
        {"trusted": false, "country": "cf-ipcountry", "user": "x-auth-user"}
    ));
    let headers = h(&[
        (":method", b"GET"),
        (":path", b"/"),
        ("cf-ipcountry", b"KP"),
        ("X-Auth-User", b"vip"),
        ("x-signalbox-user", b"vip"),
    ]);
    assert_eq!(
        headers_to_strip(&headers, &untrusted),
        ["cf-ipcountry", "x-auth-user", "x-signalbox-user"]
    );
    // Even if a copy got through, the facts never read it: a client-sent user header can
    // never become a user key (and so never match a manual `allow` for that user).
    let f = facts(
        &untrusted,
        headers.clone(),
        "81.62.10.4".parse().ok(),
        0,
        false,
    );
    assert_eq!((f.user, f.country), (None, None));
    // With no edge headers configured nothing is read either (the core trusts none).
    let none = settings_with(serde_json::json!({}));
    let f = facts(&none, headers.clone(), "81.62.10.4".parse().ok(), 0, false);
    assert_eq!((f.user, f.country), (None, None));
    // Trusted on this listener: read.
    let trusted = settings_with(serde_json::json!(
        {"trusted": true, "country": "cf-ipcountry", "user": "x-auth-user"}
    ));
    assert_eq!(
        headers_to_strip(&headers, &trusted),
        ["x-signalbox-user"],
        "trusted names are kept"
    );
    let f = facts(&trusted, headers, "81.62.10.4".parse().ok(), 0, false);
    assert_eq!((f.user.as_deref(), f.country), (Some("vip"), Some(*b"KP")));
}

#[test]
fn only_a_forged_clearance_is_a_risk_signal() {
    assert_eq!(
        clearance_of(Ok(VerifiedClearance {
            expires_at: 9,
            difficulty: 16
        })),
        Clearance::Valid { difficulty: 16 }
    );
    for forged in [TokenError::BadMac, TokenError::Malformed] {
        assert_eq!(clearance_of(Err(forged)), Clearance::Invalid);
    }
    for stale in [
        TokenError::Expired,
        TokenError::WrongBinding,
        TokenError::UnknownKey,
    ] {
        assert_eq!(clearance_of(Err(stale)), Clearance::Absent);
    }
}

#[test]
fn https_as_the_browser_sees_it() {
    assert!(is_https(&h(&[("x-forwarded-proto", b"https")])));
    assert!(is_https(&h(&[(":scheme", b"https")])));
    assert!(!is_https(&h(&[
        ("x-forwarded-proto", b"http"),
        (":scheme", b"https")
    ])));
    assert!(!is_https(&h(&[(":scheme", b"http")])));
    assert!(!is_https(&h(&[])));
}

#[test]
fn source_address_forms() {
    assert_eq!(
        parse_source_address(b"81.62.10.4:5555"),
        "81.62.10.4".parse().ok()
    );
    assert_eq!(
        parse_source_address(b"[2001:db8::1]:443"),
        "2001:db8::1".parse().ok()
    );
    assert_eq!(
        parse_source_address(b"2001:db8::1"),
        "2001:db8::1".parse().ok()
    );
    assert_eq!(
        parse_source_address(b"[fe80::1%1]:0"),
        "fe80::1".parse().ok(),
        "Envoy reports a zoned address from x-forwarded-for so"
    );
    assert_eq!(
        parse_source_address(b"[fe80::1%lo]:0"),
        "fe80::1".parse().ok()
    );
    assert_eq!(parse_source_address(b"\xff"), None);
    assert_eq!(parse_source_address(b"nonsense:1"), None);
}

#[test]
fn x_forwarded_for_trusts_only_the_configured_hops() {
    let src = "10.0.0.1".parse().ok();
    let headers = h(&[
        ("x-forwarded-for", b"1.1.1.1, 2.2.2.2"),
        ("X-Forwarded-For", b"3.3.3.3"),
    ]);
    let mode = |hops| ClientIpV1 {
        mode: ClientIpMode::XForwardedFor,
        trusted_hops: hops,
    };
    assert_eq!(client_ip(&mode(0), &headers, src), "3.3.3.3".parse().ok());
    assert_eq!(client_ip(&mode(1), &headers, src), "2.2.2.2".parse().ok());
    assert_eq!(client_ip(&mode(2), &headers, src), "1.1.1.1".parse().ok());
    assert_eq!(
        client_ip(&mode(3), &headers, src),
        src,
        "too few entries: fall back"
    );
    assert_eq!(
        client_ip(&ClientIpV1::default(), &headers, src),
        src,
        "default ignores the header"
    );
    let spoofed = h(&[("x-forwarded-for", b"evil, 2.2.2.2")]);
    assert_eq!(client_ip(&mode(1), &spoofed, src), src);
}

/// `client_ip` with `x_forwarded_for` and `hops` on one `x-forwarded-for` value; the
/// source is 10.0.0.1.
fn xff(value: &[u8], hops: u32) -> Option<IpAddr> {
    let mode = ClientIpV1 {
        mode: ClientIpMode::XForwardedFor,
        trusted_hops: hops,
    };
    client_ip(
        &mode,
        &h(&[("x-forwarded-for", value)]),
        "10.0.0.1".parse().ok(),
    )
}

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

#[test]
fn x_forwarded_for_ports_and_brackets_are_not_addresses_as_in_envoy() {
    // Envoy parses an entry without a port (inet_pton / numeric getaddrinfo): with one it
    // falls back to the peer, and so does the filter.
    let src = ip("10.0.0.1");
    assert_eq!(xff(b"1.2.3.4:5678", 0), src);
    assert_eq!(xff(b"1.2.3.4:5678, 5.6.7.8", 1), src);
    assert_eq!(xff(b"[2001:db8::1]:80", 0), src);
    assert_eq!(xff(b"[2001:db8::1]", 0), src);
    assert_eq!(xff(b"1.2.3.4, [2001:db8::1]:80, 5.6.7.8", 1), src);
    assert_eq!(xff(b"1.2.3.4, [2001:db8::1]:80, 5.6.7.8", 2), ip("1.2.3.4"));
    // Bare IPv6 is an address; `::1:80` is the IPv6 address ::0.1.0.128, not ::1 port 80.
    assert_eq!(xff(b"::1", 0), ip("::1"));
    assert_eq!(xff(b"::1:80", 0), ip("::0.1.0.128"));
    assert_eq!(xff(b"2001:DB8::A, 2001:db8::b", 1), ip("2001:db8::a"));
    assert_eq!(xff(b"::ffff:198.51.100.1", 0), ip("::ffff:198.51.100.1"));
}

#[test]
fn x_forwarded_for_splits_trims_and_joins_as_envoy_does() {
    let src = ip("10.0.0.1");
    // Envoy trims " \t\f\v\n\r" around each entry (its HTTP/1 codec refuses \v and \f in a
    // header, but another host may pass them).
    assert_eq!(xff(b" 1.2.3.4 ,\t5.6.7.8\t", 1), ip("1.2.3.4"));
    assert_eq!(xff(b"1.2.3.4,\x0b5.6.7.8\x0c", 0), ip("5.6.7.8"));
    // Empty entries count as entries, and are not addresses.
    assert_eq!(xff(b"1.2.3.4,,5.6.7.8", 1), src);
    assert_eq!(xff(b"1.2.3.4,,5.6.7.8", 2), ip("1.2.3.4"));
    assert_eq!(xff(b"1.2.3.4, 5.6.7.8,", 0), src);
    assert_eq!(xff(b"1.2.3.4, 5.6.7.8,", 1), ip("5.6.7.8"));
    assert_eq!(xff(b",5.6.7.8", 1), src);
    assert_eq!(xff(b"", 0), src);
    // Repeated headers are one list; Envoy drops empty ones when it joins them.
    let mode = |hops| ClientIpV1 {
        mode: ClientIpMode::XForwardedFor,
        trusted_hops: hops,
    };
    let joined = h(&[
        ("x-forwarded-for", b"1.1.1.1"),
        ("x-forwarded-for", b""),
        ("x-forwarded-for", b" "),
        ("x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
    ]);
    assert_eq!(client_ip(&mode(1), &joined, src), ip("2.2.2.2"));
    assert_eq!(client_ip(&mode(2), &joined, src), ip("1.1.1.1"));
    assert_eq!(client_ip(&mode(3), &joined, src), src);
    let trailing_empty = h(&[("x-forwarded-for", b"1.1.1.1"), ("x-forwarded-for", b"")]);
    assert_eq!(client_ip(&mode(0), &trailing_empty, src), ip("1.1.1.1"));
    // No header, or too few entries for the hops: the source address (Envoy: the peer).
    assert_eq!(client_ip(&mode(0), &h(&[]), src), src);
    assert_eq!(client_ip(&mode(0), &h(&[]), None), None);
    assert_eq!(xff(b"1.2.3.4", 1), src);
    assert_eq!(xff(b"1.2.3.4", u32::MAX), src);
}

#[test]
fn x_forwarded_for_addresses_are_what_inet_pton_and_getaddrinfo_accept() {
    let src = ip("10.0.0.1");
    for garbage in [
        &b"unknown"[..],
        b"_hidden",
        b"198.051.100.1",
        b"1.2.3",
        b"203.0.113.7.",
        b"0x7f.0.0.1",
        b"256.1.1.1",
        b"1.2.3.4%1",
        b"::ffff:1.2.3.04",
        b"12345::1",
        b"203.0.113.7\xa0",
        b"1.2.3.4 5.6.7.8",
    ] {
        assert_eq!(
            xff(garbage, 0),
            src,
            "{:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    assert_eq!(xff(b"0.0.0.0", 0), ip("0.0.0.0"));
    assert_eq!(xff(b"::", 0), ip("::"));
    assert_eq!(xff(b"1:2:3:4:5:6:7::", 0), ip("1:2:3:4:5:6:7:0"));
    // A numeric zone (decimal, at most u32::MAX) is accepted and dropped; an interface
    // name depends on the host's interfaces, so it is not an address here.
    assert_eq!(xff(b"fe80::1%1", 0), ip("fe80::1"));
    assert_eq!(xff(b"fe80::1%01", 0), ip("fe80::1"));
    assert_eq!(xff(b"2001:db8::1%4294967295", 0), ip("2001:db8::1"));
    for zone in [
        &b"fe80::1%"[..],
        b"fe80::1%4294967296",
        b"fe80::1%+1",
        b"fe80::1%-1",
        b"fe80::1% 1",
        b"fe80::1%1%2",
        b"fe80::1%eth0",
    ] {
        assert_eq!(xff(zone, 0), src, "{:?}", String::from_utf8_lossy(zone));
    }
}

#[test]
fn reply_format_by_client() {
    let nav = h(&[(":method", b"GET"), ("accept", b"text/html,*/*")]);
    assert_eq!(client_kind(&nav), ClientKind::BrowserNavigation);
    let xhr = h(&[
        (":method", b"GET"),
        ("accept", b"text/html"),
        ("sec-fetch-mode", b"cors"),
    ]);
    assert_eq!(client_kind(&xhr), ClientKind::Api);
    let post = h(&[(":method", b"POST"), ("accept", b"text/html")]);
    assert_eq!(client_kind(&post), ClientKind::Api);
    let ws = h(&[
        (":method", b"GET"),
        ("accept", b"text/html"),
        ("upgrade", b"websocket"),
    ]);
    assert_eq!(client_kind(&ws), ClientKind::Api);
    let grpc = h(&[
        (":method", b"POST"),
        ("content-type", b"application/grpc+proto"),
    ]);
    assert_eq!(client_kind(&grpc), ClientKind::Grpc);
    let r = block_reply(ClientKind::Grpc, "rid");
    assert_eq!((r.status, r.grpc_status), (403, Some(7)));
    let t = throttle_reply(ClientKind::Api, "rid", 7);
    assert!(t.headers.contains(&("retry-after".into(), "7".into())));
    assert!(
        t.headers
            .contains(&("cache-control".into(), "no-store".into()))
    );
}

#[test]
fn verify_request_checks() {
    let ok = h(&[
        (":method", b"POST"),
        (":authority", b"shop.example"),
        ("origin", b"https://shop.example"),
        ("sec-fetch-site", b"same-origin"),
    ]);
    assert_eq!(check_verify_headers(&ok), Ok(()));
    let get = h(&[(":method", b"GET")]);
    assert_eq!(check_verify_headers(&get), Err(VerifyRefusal::Method));
    let cross = h(&[
        (":method", b"POST"),
        (":authority", b"shop.example"),
        ("origin", b"https://evil.example"),
    ]);
    assert_eq!(check_verify_headers(&cross), Err(VerifyRefusal::CrossSite));
    // `Origin: null`: a sandboxed frame or a `no-referrer` page, on any site.
    let null = h(&[
        (":method", b"POST"),
        (":authority", b"shop.example"),
        ("origin", b"null"),
    ]);
    assert_eq!(check_verify_headers(&null), Err(VerifyRefusal::CrossSite));
    let site = h(&[(":method", b"POST"), ("sec-fetch-site", b"cross-site")]);
    assert_eq!(check_verify_headers(&site), Err(VerifyRefusal::CrossSite));
    let big = h(&[(":method", b"POST"), ("content-length", b"100000")]);
    assert_eq!(check_verify_headers(&big), Err(VerifyRefusal::TooLarge));
    assert_eq!(
        parse_verify_form(b"challenge=a.b&counter=42"),
        Ok((b"a.b".to_vec(), 42))
    );
    assert_eq!(
        parse_verify_form(b"challenge=a%2Eb&counter=1&x=y"),
        Ok((b"a.b".to_vec(), 1))
    );
    assert_eq!(parse_verify_form(b"counter=x"), Err(VerifyRefusal::BadForm));
    assert_eq!(
        verify_form_in_query("/.signalbox/verify?challenge=a%2Eb&counter=7"),
        Some(Ok((b"a.b".to_vec(), 7)))
    );
    assert_eq!(
        verify_form_in_query("/.signalbox/verify?counter=x"),
        Some(Err(VerifyRefusal::BadForm))
    );
    assert_eq!(verify_form_in_query("/.signalbox/verify"), None);
    assert_eq!(verify_form_in_query("/.signalbox/verify?utm=1"), None);
    assert_eq!(
        parse_verify_form(&[b'a'; 5000]),
        Err(VerifyRefusal::TooLarge)
    );
}

#[test]
fn decision_log_lines_keep_their_format() {
    let example = include_bytes!("../../filter/examples/plugin-config.json");
    let settings = parse(example, 1_795_392_000, |_| None).unwrap();
    let headers = h(&[
        (":method", b"GET"),
        (":path", b"/signup?ref=x"),
        (":authority", b"shop.example"),
        ("user-agent", b"curl/8.5.0"),
    ]);
    let ip = "167.99.134.20".parse().ok();
    let facts = facts(&settings, headers, ip, 1_795_392_000, false);
    let verdict = settings.policy.decide(
        settings.policy.assess(&facts, 1_795_392_000),
        None,
        1_795_392_000,
    );
    assert!(!verdict.reasons.is_empty());
    // The line as it was first written (a serde_json::Value: keys sorted).
    let reasons: Vec<serde_json::Value> = verdict
        .reasons
        .iter()
        .map(|r| serde_json::json!({"code": r.code.as_str(), "points": r.points}))
        .collect();
    let expected = serde_json::json!({
        "msg": "signalbox decision",
        "request_id": "r-1",
        "decision": verdict.decision.as_str(),
        "shadow_decision": verdict.shadow_decision.map(Decision::as_str),
        "score": verdict.score,
        "level": verdict.level.as_str(),
        "reasons": reasons,
        "rules": verdict.rules.iter().map(|r| r.id.to_string()).collect::<Vec<_>>(),
        "revision": verdict.revision,
        "client": "167.99.134.0/24",
        "client_class": "automation",
        "method": "GET",
        "path": "/signup",
    })
    .to_string();
    let last = Final::of(&verdict, false);
    assert_eq!(decision_log_line("r-1", &facts, &verdict, last), expected);
    // A rate-limit refusal shows as the line's decision; the verdict is not changed.
    let throttled = decision_log_line("r-1", &facts, &verdict, Final::of(&verdict, true));
    assert!(
        throttled.contains("\"decision\":\"throttle\""),
        "{throttled}"
    );
}

#[test]
fn masks_ips() {
    assert_eq!(masked_ip("81.62.10.4".parse().unwrap()), "81.62.10.0/24");
    assert_eq!(
        masked_ip("2001:db8:1:2::1".parse().unwrap()),
        "2001:db8:1::/48"
    );
    assert_eq!(
        masked_ip("::ffff:81.62.10.4".parse().unwrap()),
        "81.62.10.0/24"
    );
}

mod context_cache_and_decisions {
    use super::h;
    use crate::decisions::ActiveDecisions;
    use crate::{Event, LookupAnswer, Pipeline, Request, Step, config::parse};

    const NOW: u128 = 1_795_392_000 * 1_000_000_000;

    fn pipeline() -> Pipeline {
        let cfg = serde_json::json!({
            "bundle": {"format_version": 1, "revision": 1, "min_engine_version": "0.1.0",
                       "cache": {"lookup": ["ip"], "always_lookup": ["ip"]}},
            "allow_unsigned": true,
            "score_cache": {"cluster": "cache", "decisions_poll_ms": 0, "bundle_poll_ms": 0}
        });
        Pipeline::new(parse(cfg.to_string().as_bytes(), 1_795_392_000, |_| None).unwrap())
    }

    fn request() -> Request {
        Request {
            headers: h(&[
                (":method", b"GET"),
                (":path", b"/"),
                (":authority", b"shop.example"),
                ("user-agent", b"curl/8.5.0"),
            ]),
            source: "192.0.2.9".parse().ok(),
            route_name: None,
            end_of_stream: true,
        }
    }

    fn is_block(step: &Step) -> bool {
        matches!(step, Step::Respond(reply) if reply.status == 403)
    }

    /// An answer is reused within its TTL without a call, and dropped when a new decision set
    /// arrives (a ban lifted in the stream must not live on in a cached answer).
    #[test]
    fn answers_are_reused_until_the_decision_set_changes() {
        let p = pipeline();
        let Step::Lookup(_, pending) = p.start(request(), NOW).step else {
            panic!("a lookup was expected");
        };
        let banned = br#"{"ip":{"score":0,"decision":{"action":"ban","expires_at":1900000000}},"ttl_seconds":30}"#;
        let answer = LookupAnswer {
            status: 200,
            body: banned.to_vec(),
        };
        assert!(is_block(&p.resume_lookup(pending, Some(answer), NOW).step));

        let again = p.start(request(), NOW + 1_000_000_000);
        assert!(again.effects.events.contains(&Event::ContextCached));
        assert!(is_block(&again.step), "the cached answer decides, no call");

        let empty = ActiveDecisions::default().apply(
            &signalbox_wire::DecisionPageV1 {
                decisions: Vec::new(),
                cursor: "c1".into(),
                more: false,
            },
            64,
            1_795_392_000,
        );
        p.replace_decisions(ActiveDecisions::decode(empty.blob).unwrap());
        assert!(matches!(
            p.start(request(), NOW + 2_000_000_000).step,
            Step::Lookup(..)
        ));
    }
}
