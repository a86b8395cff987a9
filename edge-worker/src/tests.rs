//! Unit tests of the host-independent worker (the runtimes are tested in `tests/`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;

const NOW: u64 = 1_795_392_000;
const GIO_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fn golden() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/scenarios/bundles/golden.yaml"
    );
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn env_with(config: serde_json::Value, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.insert(CONFIG_VAR.to_owned(), config.to_string());
    env
}

fn worker(extra_config: serde_json::Value) -> Worker {
    let mut config = serde_json::json!({"bundle": golden(), "allow_unsigned": true});
    if let (Some(c), Some(extra)) = (config.as_object_mut(), extra_config.as_object()) {
        c.extend(extra.clone());
    }
    let env = env_with(
        config,
        &[
            (ORIGIN_URL_VAR, "http://127.0.0.1:8080"),
            (CACHE_URL_VAR, "http://127.0.0.1:7700/"),
        ],
    );
    Worker::new(EdgeSettings::from_env(|k| env.get(k).cloned(), NOW).unwrap())
}

fn request(path: &str, ua: &str, client: &str) -> signalbox_pipeline::Headers {
    [
        (":method", "GET"),
        (":path", path),
        (":authority", "shop.example"),
        (":scheme", "http"),
        ("user-agent", ua),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "it-IT,it;q=0.9,en;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "none"),
        ("sec-fetch-dest", "document"),
        ("x-signalbox-decision", "pass"),
        ("spin-client-addr", client),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
    .collect()
}

const T: u128 = NOW as u128 * 1_000_000_000;

#[test]
fn base_urls_parse_and_bad_ones_name_their_variable() {
    assert_eq!(
        BaseUrl::parse("X", "https://origin.internal:8443/app/").unwrap(),
        BaseUrl {
            scheme: "https".into(),
            authority: "origin.internal:8443".into(),
            path: "/app".into()
        }
    );
    assert_eq!(BaseUrl::parse("X", "http://o").unwrap().path, "");
    for bad in ["origin", "ftp://o", "http://", "http://u@o"] {
        let e = BaseUrl::parse("SIGNALBOX_ORIGIN_URL", bad).unwrap_err();
        assert!(e.starts_with("SIGNALBOX_ORIGIN_URL: "), "{bad}: {e}");
    }
}

#[test]
fn settings_errors_name_the_variable_or_the_field() {
    let missing = EdgeSettings::from_env(|_| None, NOW).unwrap_err();
    assert_eq!(missing, "SIGNALBOX_CONFIG is not set");
    let env = env_with(
        serde_json::json!({"bundle": golden(), "allow_unsigned": true, "client_ip": {"mode": "carrier_pigeon"}}),
        &[(ORIGIN_URL_VAR, "http://o")],
    );
    let bad = EdgeSettings::from_env(|k| env.get(k).cloned(), NOW).unwrap_err();
    // The field path where the pipeline is built with `field-paths` (a workspace build);
    // serde_json's position in the edge builds, which leave it out.
    assert!(
        bad.starts_with("SIGNALBOX_CONFIG: client_ip.mode")
            || bad.starts_with("SIGNALBOX_CONFIG: line 1 column "),
        "{bad}"
    );
    assert!(bad.contains("unknown variant `carrier_pigeon`"), "{bad}");
    // A score cache in the configuration needs its URL.
    let env = env_with(
        serde_json::json!({"bundle": golden(), "allow_unsigned": true, "score_cache": {"cluster": "cache"}}),
        &[(ORIGIN_URL_VAR, "http://o")],
    );
    let no_url = EdgeSettings::from_env(|k| env.get(k).cloned(), NOW).unwrap_err();
    assert!(no_url.starts_with("SIGNALBOX_CACHE_URL"), "{no_url}");
}

#[test]
fn a_browser_is_forwarded_annotated_with_client_headers_stripped() {
    let w = worker(serde_json::json!({}));
    let Next::Forward(effects) = w.start(request("/products/1", GIO_UA, "81.62.0.1:50000"), T)
    else {
        panic!("not forwarded");
    };
    // The client's own x-signalbox-* header and the runtime's address header go.
    assert!(!forwards_request_header("x-signalbox-decision", &effects));
    assert!(!forwards_request_header("spin-client-addr", &effects));
    assert!(!forwards_request_header("connection", &effects));
    assert!(!forwards_request_header("host", &effects));
    assert!(forwards_request_header("accept-language", &effects));
    let decision = effects
        .set_request_headers
        .iter()
        .find(|(n, _)| n == "x-signalbox-decision")
        .map(|(_, v)| v.as_str());
    assert_eq!(decision, Some("pass"));
    assert!(!forwards_response_header("X-Signalbox-Score"));
    assert!(forwards_response_header("content-type"));
}

#[test]
fn the_runtime_s_address_header_is_the_client_ip() {
    let w = worker(serde_json::json!({}));
    // 198.51.100.66 is on golden's deny list: blocked before any lookup.
    match w.start(request("/", GIO_UA, "198.51.100.66:1234"), T) {
        Next::Respond(reply, _) => assert_eq!(reply.status, 403),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sensitive_route_asks_the_cache_at_its_url_and_fails_open_without_an_answer() {
    let w = worker(serde_json::json!({"score_cache": {"cluster": "signalbox_cache"}}));
    let Next::Lookup {
        url,
        pending,
        effects,
        call,
    } = w.start(request("/signup", GIO_UA, "81.62.0.1:1"), T)
    else {
        panic!("no lookup");
    };
    assert!(
        url.starts_with("http://127.0.0.1:7700/v1/context?"),
        "{url}"
    );
    assert_eq!(call.timeout_ms, 50);
    match w.resume_lookup(effects, pending, None, T) {
        Next::Forward(effects) => {
            let remote = effects
                .set_request_headers
                .iter()
                .any(|(n, _)| n == "x-signalbox-decision");
            assert!(remote, "{effects:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rate_buckets_are_counted_by_the_instance() {
    let w = worker(serde_json::json!({}));
    let decisions: Vec<u16> = (0..8)
        .map(
            |_| match w.start(request("/burst", GIO_UA, "81.62.0.1:1"), T) {
                Next::Forward(_) => 200,
                Next::Respond(reply, _) => u16::try_from(reply.status).unwrap(),
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(decisions, [200, 200, 200, 200, 200, 429, 429, 429]);
}

/// The link's bundle poll: due once per interval and handed out once until answered; a newer
/// bundle swaps in (a request already paused keeps its pipeline), the same or an older
/// revision changes nothing, a bundle that does not load is refused and counted, and the
/// decision stream's calls carry the worker's cursor.
#[test]
fn link_polls_swap_newer_bundles_and_refuse_the_rest() {
    let w = worker(serde_json::json!({
        "score_cache": {"cluster": "c", "bundle_poll_ms": 1000, "decisions_poll_ms": 500}
    }));
    let now_ms = NOW * 1_000;
    let calls = w.link_calls(now_ms);
    let kinds: Vec<LinkKind> = calls.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [LinkKind::Bundle, LinkKind::Decisions]);
    assert_eq!(calls[0].url, "http://127.0.0.1:7700/v1/bundle");
    assert!(
        calls[1]
            .url
            .starts_with("http://127.0.0.1:7700/v1/decisions/stream?since=0")
    );
    assert!(w.link_calls(now_ms + 5_000).is_empty(), "handed out twice");

    let serving = w.pipeline().settings().policy.revision();
    let envelope = |revision: u64| {
        let mut b = golden();
        b["revision"] = revision.into();
        serde_json::json!({"stable": b.to_string()}).to_string()
    };
    // A lookup paused on the old pipeline resumes on it.
    let paused = match w.start(
        request("/login", "curl/8.5.0", "203.0.113.9"),
        u128::from(NOW) * 1_000_000_000,
    ) {
        Next::Lookup { pending, .. } => pending,
        other => panic!("expected a lookup, got {other:?}"),
    };
    let logs = w.link_answer(
        LinkKind::Bundle,
        200,
        Some("\"e1\"".into()),
        envelope(serving + 1).as_bytes(),
        now_ms,
    );
    assert_eq!(
        w.pipeline().settings().policy.revision(),
        serving + 1,
        "{logs:?}"
    );
    assert_eq!(paused.pipeline.settings().policy.revision(), serving);
    // Due again one interval later, with the ETag.
    assert!(
        w.link_calls(now_ms + 999)
            .iter()
            .all(|c| c.kind != LinkKind::Bundle)
    );
    let again = w.link_calls(now_ms + 1_000);
    let bundle = again.iter().find(|c| c.kind == LinkKind::Bundle).unwrap();
    assert!(
        bundle
            .headers
            .contains(&("if-none-match".into(), "\"e1\"".into()))
    );

    // The same revision, an older one, and garbage: nothing swaps; the last two are refused.
    for (body, refused) in [
        (envelope(serving + 1), 0),
        (envelope(serving), 1),
        ("{\"stable\": \"not a bundle\"}".to_owned(), 2),
    ] {
        let logs = w.link_answer(LinkKind::Bundle, 200, None, body.as_bytes(), now_ms);
        assert_eq!(w.pipeline().settings().policy.revision(), serving + 1);
        assert_eq!(w.link_status().0, refused, "{logs:?}");
    }
    // A dead cache: nothing changes, the error is kept.
    w.link_answer(LinkKind::Bundle, 0, None, b"", now_ms);
    assert!(w.link_status().1.is_some_and(|e| e.contains("no answer")));
}

/// With a score cache, a fresh instance per request reports each request a budget covers and
/// decides on the fleet's total; an instance that lives counts locally and reports later.
#[test]
fn rate_budgets_are_counted_by_the_score_cache() {
    let w = worker(serde_json::json!({"score_cache": {"cluster": "c"}}));
    w.set_rate_counting(RateCounting::PerRequest);
    let at = u128::from(NOW) * 1_000_000_000;
    let next = w.start(request("/burst", GIO_UA, "81.62.0.9"), at);
    let Next::CountRates {
        call,
        takes,
        pending,
        effects,
    } = next
    else {
        panic!("expected a rate report, got {next:?}");
    };
    assert_eq!(call.url, "http://127.0.0.1:7700/v1/rate");
    let sent: signalbox_wire::RateCountsV1 =
        serde_json::from_slice(call.body.as_deref().unwrap()).unwrap();
    assert_eq!(sent.counts[0].count, 1);
    // The fleet is over the budget: throttled.
    let over = format!(
        r#"{{"totals":[{}],"window_left_ms":[1000]}}"#,
        takes[0].budget.requests + 1
    );
    match w.resume_rates(effects, pending, &takes, 200, over.as_bytes(), at) {
        Next::Respond(reply, _) => assert_eq!(reply.status, 429),
        other => panic!("expected a 429, got {other:?}"),
    }
    // No answer, in a fresh instance: allowed (a budget never blocks traffic for an outage).
    let w = worker(serde_json::json!({"score_cache": {"cluster": "c"}}));
    w.set_rate_counting(RateCounting::PerRequest);
    let Next::CountRates {
        takes,
        pending,
        effects,
        ..
    } = w.start(request("/burst", GIO_UA, "81.62.0.9"), at)
    else {
        panic!("expected a rate report");
    };
    assert!(matches!(
        w.resume_rates(effects, pending, &takes, 0, b"", at),
        Next::Forward(_)
    ));
}

/// The decision stream: a snapshot in several pages applies only once whole, a ban then blocks
/// a request that never asks the cache, and an empty page changes nothing.
#[test]
fn decision_pages_apply_whole_and_ban_locally() {
    let w = worker(serde_json::json!({
        "score_cache": {"cluster": "c", "bundle_poll_ms": 0, "decisions_poll_ms": 500}
    }));
    let now_ms = NOW * 1_000;
    let at = u128::from(NOW) * 1_000_000_000;
    let ban = |id: &str, ip: &str| {
        serde_json::json!({"id": id, "scope": "ip", "key": ip,
            "decision": {"action": "ban", "expires_at": NOW + 600}})
    };
    let page = |decisions: Vec<serde_json::Value>, cursor: &str, more: bool| {
        serde_json::json!({"decisions": decisions, "cursor": cursor, "more": more}).to_string()
    };
    let gio = |ip: &str| match w.start(request("/products/1", GIO_UA, ip), at) {
        Next::Forward(_) => "pass",
        Next::Respond(reply, _) if reply.status == 403 => "block",
        other => panic!("unexpected {other:?}"),
    };
    let calls = w.link_calls(now_ms);
    assert_eq!(calls.len(), 1);
    assert!(calls[0].url.ends_with("since=0"));
    w.link_answer(
        LinkKind::Decisions,
        200,
        None,
        page(vec![ban("d1", "81.62.0.1")], "c1", true).as_bytes(),
        now_ms,
    );
    assert_eq!(gio("81.62.0.1"), "pass", "half a snapshot is not applied");
    // The next page is asked for at once, from the staged cursor.
    let calls = w.link_calls(now_ms);
    assert!(calls[0].url.ends_with("since=c1"), "{calls:?}");
    w.link_answer(
        LinkKind::Decisions,
        200,
        None,
        page(vec![ban("d2", "81.62.0.2")], "c2", false).as_bytes(),
        now_ms,
    );
    assert_eq!(gio("81.62.0.1"), "block");
    assert_eq!(gio("81.62.0.2"), "block");
    assert_eq!(gio("81.62.0.3"), "pass");
    // Nothing new: still banned, and the next poll waits for the interval.
    w.link_answer(
        LinkKind::Decisions,
        200,
        None,
        page(vec![], "c2", false).as_bytes(),
        now_ms,
    );
    assert_eq!(gio("81.62.0.1"), "block");
    assert!(w.link_calls(now_ms + 100).is_empty());
    // 410: the next poll starts over from a snapshot.
    let calls = w.link_calls(now_ms + 500);
    w.link_answer(calls[0].kind, 410, None, b"", now_ms + 500);
    assert!(w.link_calls(now_ms + 500)[0].url.ends_with("since=0"));
}

/// Decision records ship in batches after the flush interval; a batch the cache did not take
/// goes back to the front; the oldest are dropped (and counted) beyond `max_buffered`.
#[test]
fn decision_records_ship_in_bounded_batches() {
    let config = serde_json::json!({"bundle": golden(), "allow_unsigned": true,
        "score_cache": {"cluster": "c", "bundle_poll_ms": 0, "decisions_poll_ms": 0,
            "decision_log": {"flush_ms": 1000, "max_buffered": 3, "pass_sample_percent": 0}}});
    let env = env_with(
        config,
        &[
            (ORIGIN_URL_VAR, "http://127.0.0.1:8080"),
            (CACHE_URL_VAR, "http://127.0.0.1:7700/"),
            (
                "SIGNALBOX_RECORD_KEY",
                "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=",
            ),
        ],
    );
    let w = Worker::new(EdgeSettings::from_env(|k| env.get(k).cloned(), NOW).unwrap());
    let now_ms = NOW * 1_000;
    let at = u128::from(NOW) * 1_000_000_000;
    // Five automation requests, each challenged: a record each; two are dropped for room.
    for i in 0..5 {
        let mut next = w.start(
            request("/products/1", "curl/8.5.0", &format!("203.0.113.{i}")),
            at,
        );
        // The cache does not answer the lookups these ask for.
        while let Next::Lookup {
            pending, effects, ..
        } = next
        {
            next = w.resume_lookup(effects, pending, None, at);
        }
    }
    assert_eq!(w.records_status(), (3, 2));
    let calls = w.link_calls(now_ms);
    let log = calls
        .iter()
        .find(|c| c.kind == LinkKind::Log)
        .expect("a log batch");
    assert_eq!(log.method, "POST");
    let body: serde_json::Value = serde_json::from_slice(log.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["records"].as_array().map(Vec::len), Some(3));
    assert_eq!(w.records_status().0, 0);
    // The cache failed: the batch is queued again, and sent after the interval.
    w.link_answer(LinkKind::Log, 503, None, b"", now_ms);
    assert_eq!(w.records_status().0, 3);
    assert!(
        w.link_calls(now_ms + 10)
            .iter()
            .all(|c| c.kind != LinkKind::Log)
    );
    assert!(
        w.link_calls(now_ms + 1_000)
            .iter()
            .any(|c| c.kind == LinkKind::Log)
    );
    w.link_answer(LinkKind::Log, 200, None, b"{}", now_ms + 1_000);
    assert_eq!(w.records_status(), (0, 2));
}

/// The fresh-instance bundle poll (the `spin` build): only for a worker serving a prepared
/// file; due per the stored state (a due time far ahead counts as due), claimed before the
/// call; a newer bundle prepared for the store (and loadable in place of the packaged one);
/// the same revision, an older one, or one below the stored floor never kept.
#[test]
fn stored_polls_keep_only_newer_bundles_prepared() {
    let now_ms = NOW * 1_000;
    let serving = golden()["revision"].as_u64().unwrap();
    let dir = std::env::temp_dir().join(format!("signalbox-stored-poll-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let packaged = dir.join("packaged.prepared");
    std::fs::write(
        &packaged,
        signalbox_policy::prepared::prepare(
            golden().to_string().as_bytes(),
            &signalbox_policy::signing::TrustedKeys::default(),
            &signalbox_policy::signing::LoadContext {
                now: NOW,
                allow_unsigned: true,
                ..Default::default()
            },
        )
        .unwrap(),
    )
    .unwrap();
    let env = env_with(
        serde_json::json!({"allow_unsigned": true,
            "score_cache": {"cluster": "c", "bundle_poll_ms": 1000, "node_id": "spin-eu"}}),
        &[
            (ORIGIN_URL_VAR, "http://127.0.0.1:8080"),
            (CACHE_URL_VAR, "http://127.0.0.1:7700/"),
            (PREPARED_BUNDLE_VAR, packaged.to_str().unwrap()),
        ],
    );
    let load = |pushed: Option<&[u8]>| {
        EdgeSettings::from_env_with_pushed(|k| env.get(k).cloned(), NOW, pushed).unwrap()
    };
    let w = Worker::new(load(None).0);
    assert_eq!(w.pipeline().settings().policy.revision(), serving);
    // An inline bundle has nothing a stored one could replace: no poll.
    assert!(
        worker(serde_json::json!({"score_cache": {"cluster": "c", "bundle_poll_ms": 1000}}))
            .stored_poll_call(&StoredPoll::default(), now_ms)
            .is_none()
    );

    let (call, claimed) = w
        .stored_poll_call(&StoredPoll::from_stored(None), now_ms)
        .expect("due at once with nothing stored");
    assert_eq!(call.url, "http://127.0.0.1:7700/v1/bundle");
    assert_eq!(claimed.due_ms, now_ms + 1_000);
    let stored = StoredPoll::from_stored(Some(&claimed.to_stored()));
    assert_eq!(stored, claimed);
    assert!(
        w.stored_poll_call(&stored, now_ms + 999).is_none(),
        "claimed"
    );
    let far = StoredPoll {
        due_ms: now_ms + 10_000_000,
        ..StoredPoll::default()
    };
    assert!(
        w.stored_poll_call(&far, now_ms).is_some(),
        "a clock that jumped back"
    );
    assert!(
        w.stored_poll_call(&StoredPoll::from_stored(Some(b"garbage")), now_ms)
            .is_some(),
        "an unreadable state polls at once"
    );

    let envelope = |revision: u64| {
        let mut b = golden();
        b["revision"] = revision.into();
        serde_json::json!({"stable": b.to_string()}).to_string()
    };
    let newer = w.stored_poll_answer(
        claimed.clone(),
        200,
        Some("\"e2\"".into()),
        envelope(serving + 1).as_bytes(),
        now_ms,
    );
    let (revision, prepared) = newer.keep.expect("a newer bundle is kept");
    assert_eq!(revision, serving + 1);
    assert_eq!(newer.poll.etag.as_deref(), Some("\"e2\""));
    assert_eq!(newer.poll.floor, serving + 1);
    assert!(newer.last_error.is_none());
    let fleet = w
        .stored_fleet_call(revision, None, now_ms)
        .expect("a fleet report");
    assert_eq!(fleet.url, "http://127.0.0.1:7700/v1/fleet");
    let report: serde_json::Value = serde_json::from_slice(fleet.body.as_deref().unwrap()).unwrap();
    assert_eq!(report["node_id"], "spin-eu");
    assert_eq!(report["stable_revision"], serving + 1);

    // The kept bytes load as the settings of the next instance; a damaged copy is refused and
    // the packaged file serves.
    let (settings, outcome) = load(Some(&prepared));
    assert_eq!(outcome, PushedBundle::Served(serving + 1));
    assert_eq!(settings.pipeline.policy.revision(), serving + 1);
    let (settings, outcome) = load(Some(prepared.get(..prepared.len() / 2).unwrap()));
    assert!(matches!(outcome, PushedBundle::Refused(_)), "{outcome:?}");
    assert_eq!(settings.pipeline.policy.revision(), serving);
    // One at the packaged revision or below is not above it: the file serves.
    let (_, outcome) = load(Some(&std::fs::read(&packaged).unwrap()));
    assert_eq!(outcome, PushedBundle::NotAbove(serving, serving));
    let _ = std::fs::remove_dir_all(&dir);

    // The revision serving: nothing kept, no refusal. An older one: refused.
    let same = w.stored_poll_answer(
        claimed.clone(),
        200,
        None,
        envelope(serving).as_bytes(),
        now_ms,
    );
    assert!(
        same.keep.is_none() && same.last_error.is_none(),
        "{:?}",
        same.logs
    );
    let older = w.stored_poll_answer(
        claimed.clone(),
        200,
        None,
        envelope(serving - 1).as_bytes(),
        now_ms,
    );
    assert!(older.keep.is_none());
    assert!(older.last_error.unwrap().contains("bundle refused"));
    // Above the serving revision but below the floor (the stored bundle was lost): refused.
    let floored = StoredPoll {
        floor: serving + 2,
        ..claimed.clone()
    };
    let below_floor =
        w.stored_poll_answer(floored, 200, None, envelope(serving + 1).as_bytes(), now_ms);
    assert!(below_floor.keep.is_none());
    assert!(below_floor.last_error.unwrap().contains("below revision"));
    // No answer: the claimed state stays, nothing kept.
    let dead = w.stored_poll_answer(claimed.clone(), 0, None, b"", now_ms);
    assert!(dead.keep.is_none());
    assert_eq!(dead.poll, claimed);
    assert_eq!(claimed.fetch_again().floor, claimed.floor);
    assert_eq!(claimed.fetch_again().etag, None);
}
