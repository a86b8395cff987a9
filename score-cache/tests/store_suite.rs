//! One test suite, run against both stores: the embedded redb store in a temporary directory
//! and a real `redis-server` (Debian's package) in a temporary directory. Each test goes
//! through the router in-process (`oneshot`), as an edge, a producer and an operator would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use signalbox_score_cache::server::{self, App, Settings};
use signalbox_score_cache::store::embedded::EmbeddedStore;
use signalbox_score_cache::store::redis::RedisStore;
use signalbox_score_cache::store::{AnyStore, Store};
use tower::ServiceExt;

/// A store under test and whatever keeps it alive.
struct Fixture {
    app: Arc<App<AnyStore>>,
    _dir: Option<tempfile::TempDir>,
    _redis: Option<common::Redis>,
}

impl Fixture {
    fn router(&self) -> Router {
        server::router(Arc::clone(&self.app))
    }
}

fn settings() -> Settings {
    Settings {
        tokens: common::tokens(),
        max_page_bytes: 600,
        ..Settings::default()
    }
}

fn embedded() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    Fixture {
        app: App::new(AnyStore::Embedded(store), common::policy(), settings()),
        _dir: Some(dir),
        _redis: None,
    }
}

fn redis() -> Fixture {
    let redis = common::Redis::start();
    let store = RedisStore::open(&redis.url(), "t", Duration::from_millis(500), 30).unwrap();
    Fixture {
        app: App::new(AnyStore::Redis(store), common::policy(), settings()),
        _dir: None,
        _redis: Some(redis),
    }
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let response = router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, headers)
}

fn event(id: &str, scope: &str, key: &str, kind: &str, impact: u32) -> Value {
    json!({"id": id, "subject": {"scope": scope, "key": key}, "type": kind, "severity": "medium", "impact": impact})
}

async fn post_events(router: &Router, events: Vec<Value>) -> (StatusCode, Value) {
    let (s, v, _) = call(
        router,
        "POST",
        "/v1/events",
        Some(common::INGEST),
        Some(json!({"events": events})),
    )
    .await;
    (s, v)
}

async fn context(router: &Router, query: &str) -> Value {
    let (s, v, _) = call(
        router,
        "GET",
        &format!("/v1/context?{query}"),
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn events_score_and_retries_count_once(f: Fixture) {
    let r = f.router();
    let (s, v) = post_events(
        &r,
        vec![
            event("e1", "user", "u-1", "failed_login", 10),
            event("e2", "user", "u-1", "chargeback", 25),
            event("e3", "ip", "81.62.10.4", "abuse_report", 40),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"accepted": 3, "duplicates": 0}));
    // The same batch again (a producer's retry): acknowledged, not counted.
    let (_, v) = post_events(&r, vec![event("e1", "user", "u-1", "failed_login", 10)]).await;
    assert_eq!(v, json!({"accepted": 0, "duplicates": 1}));
    let c = context(&r, "user=u-1&ip=81.62.10.4&device=d-unknown").await;
    assert_eq!(c["user"]["score"], 35);
    // One batch added 35 points, above the bundle's spike delta (30).
    assert_eq!(
        c["user"]["factors"],
        json!(["event.chargeback", "event.failed_login", "spike"])
    );
    assert_eq!(c["ip"]["score"], 40);
    assert_eq!(c["ip"]["level"], "medium");
    assert_eq!(c["device"]["score"], 0);
    assert_eq!(c["ttl_seconds"], 15);
    // An IPv4-mapped address is the same subject.
    let c = context(&r, "ip=::ffff:81.62.10.4").await;
    assert_eq!(c["ip"]["score"], 40);
}

async fn patterns_add_their_factors(f: Fixture) {
    let r = f.router();
    let burst: Vec<Value> = (0..3)
        .map(|i| event(&format!("b{i}"), "user", "victim", "failed_login", 1))
        .collect();
    post_events(&r, burst).await;
    for (i, kind) in ["password_reset", "email_change", "mfa_disabled"]
        .iter()
        .enumerate()
    {
        post_events(&r, vec![event(&format!("s{i}"), "user", "victim", kind, 1)]).await;
    }
    let c = context(&r, "user=victim").await;
    let factors = c["user"]["factors"].as_array().unwrap();
    let codes: Vec<&str> = factors.iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(codes.first(), Some(&"sequence.account_takeover"), "{c}");
    assert!(codes.contains(&"velocity.login_burst"), "{c}");
    // 3 + 3 event points, 20 velocity, 50 sequence.
    assert_eq!(c["user"]["score"], 76, "{c}");
    assert!(codes.contains(&"spike"), "{c}");
}

async fn a_bad_batch_is_refused_whole_naming_the_field(f: Fixture) {
    let r = f.router();
    let (s, v) = post_events(
        &r,
        vec![
            event("ok-1", "user", "u-2", "failed_login", 10),
            json!({"id": "bad", "subject": {"scope": "planet", "key": "x"}, "type": "t", "severity": "low"}),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["field"], "events[1].subject.scope");
    let (s, v, _) = call(
        &r,
        "POST",
        "/v1/events",
        Some(common::INGEST),
        Some(json!({"events": [{"id": 1}]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["field"], "events[0].id", "{v}");
    let (s, v) = post_events(&r, vec![event("big", "user", "u-2", "failed_login", 101)]).await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("events[0].impact"))
    );
    let too_many: Vec<Value> = (0..1_001)
        .map(|i| event(&format!("m{i}"), "user", "u-2", "failed_login", 1))
        .collect();
    let (s, v) = post_events(&r, too_many).await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("events"))
    );
    let huge = json!({"events": [event("h", "user", "u-2", "failed_login", 1)], "pad": "x".repeat(1_100_000)});
    let (s, v, _) = call(&r, "POST", "/v1/events", Some(common::INGEST), Some(huge)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    let (s, v, _) = call(
        &r,
        "POST",
        "/v1/events",
        Some(common::INGEST),
        Some(json!("not an object")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Nothing of the refused batches was stored.
    assert_eq!(context(&r, "user=u-2").await["user"]["score"], 0);
    let (s, v, _) = call(
        &r,
        "GET",
        "/v1/context?ip=300.1.1.1",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ip"))
    );
}

async fn tokens_and_scopes(f: Fixture) {
    let r = f.router();
    let (s, v, _) = call(&r, "GET", "/v1/context?ip=1.2.3.4", None, None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (s, _, _) = call(&r, "GET", "/v1/context?ip=1.2.3.4", Some("guess"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // An edge's read token cannot post events or decisions.
    let (s, v, _) = call(
        &r,
        "POST",
        "/v1/events",
        Some(common::READ),
        Some(json!({"events": []})),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let body = json!({"action": "ban", "scope": "ip", "key": "1.2.3.4", "duration_seconds": 60});
    let (s, _, _) = call(
        &r,
        "POST",
        "/v1/decisions",
        Some(common::INGEST),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = call(&r, "POST", "/v1/decisions", Some(common::ADMIN), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED);
}

async fn add_decision(r: &Router, action: &str, scope: &str, key: &str) -> String {
    let body = json!({"action": action, "scope": scope, "key": key, "duration_seconds": 3600, "reason": "test", "origin": "suite"});
    let (s, v, _) = call(r, "POST", "/v1/decisions", Some(common::ADMIN), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["decision"]["id"].as_str().unwrap().to_owned()
}

async fn decisions_reach_context_by_precedence(f: Fixture) {
    let r = f.router();
    add_decision(&r, "ban", "range", "81.62.0.0/16").await;
    let allow = add_decision(&r, "allow", "ip", "81.62.10.4").await;
    add_decision(&r, "challenge", "user", "u-3").await;
    let c = context(&r, "ip=81.62.10.4&user=u-3").await;
    assert_eq!(c["ip"]["decision"]["action"], "allow");
    assert_eq!(c["user"]["decision"]["action"], "challenge");
    assert_eq!(
        context(&r, "ip=81.62.99.1").await["ip"]["decision"]["action"],
        "ban"
    );
    let (s, _, _) = call(
        &r,
        "DELETE",
        &format!("/v1/decisions/{allow}"),
        Some(common::ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        context(&r, "ip=81.62.10.4").await["ip"]["decision"]["action"],
        "ban"
    );
    let (s, v, _) = call(
        &r,
        "DELETE",
        &format!("/v1/decisions/{allow}"),
        Some(common::ADMIN),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, v, _) = call(
        &r,
        "POST",
        "/v1/decisions",
        Some(common::ADMIN),
        Some(json!({"action": "ban", "scope": "range", "key": "10.0.0.0/40", "duration_seconds": 60})),
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("key"))
    );
    let (s, v, _) = call(&r, "GET", "/v1/decisions", Some(common::READ), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["decisions"].as_array().unwrap().len(), 2);
}

/// Follows the stream from `cursor` to the end: the client's set of decision ids.
async fn follow_stream(
    r: &Router,
    mut cursor: String,
    mut held: std::collections::BTreeSet<String>,
) -> (String, std::collections::BTreeSet<String>) {
    for _ in 0..10_000 {
        let (s, page, _) = call(
            r,
            "GET",
            &format!("/v1/decisions/stream?since={cursor}"),
            Some(common::READ),
            None,
        )
        .await;
        if s == StatusCode::GONE {
            held.clear();
            cursor = "0".into();
            continue;
        }
        assert_eq!(s, StatusCode::OK, "{page}");
        for d in page["decisions"].as_array().unwrap() {
            let id = d["id"].as_str().unwrap().to_owned();
            if d["removed"].as_bool() == Some(true) {
                held.remove(&id);
            } else {
                held.insert(id);
            }
        }
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if page["more"].as_bool() != Some(true) {
            return (cursor, held);
        }
    }
    panic!("the stream never ended");
}

async fn active_ids(r: &Router) -> std::collections::BTreeSet<String> {
    let (_, v, _) = call(r, "GET", "/v1/decisions", Some(common::READ), None).await;
    v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn the_stream_pages_snapshots_deltas_and_etags(f: Fixture) {
    let r = f.router();
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(add_decision(&r, "ban", "ip", &format!("192.0.2.{i}")).await);
    }
    // A snapshot in several pages (600-byte pages in these tests).
    let (s, first, headers) = call(
        &r,
        "GET",
        "/v1/decisions/stream?since=0",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(first["more"], true, "{first}");
    assert!(first["cursor"].as_str().unwrap().starts_with("snapshot."));
    assert!(headers.get("etag").is_some());
    let (cursor, held) = follow_stream(&r, "0".into(), Default::default()).await;
    assert_eq!(held, active_ids(&r).await);
    // Nothing new: the same ETag gives 304.
    let (s, _, headers) = call(
        &r,
        "GET",
        &format!("/v1/decisions/stream?since={cursor}"),
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let req = Request::builder()
        .uri(format!("/v1/decisions/stream?since={cursor}"))
        .header("authorization", format!("Bearer {}", common::READ))
        .header("if-none-match", &etag)
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        r.clone().oneshot(req).await.unwrap().status(),
        StatusCode::NOT_MODIFIED
    );
    // Deltas: a removal and an addition after the cursor.
    call(
        &r,
        "DELETE",
        &format!("/v1/decisions/{}", ids[3]),
        Some(common::ADMIN),
        None,
    )
    .await;
    add_decision(&r, "throttle", "user", "u-9").await;
    let (_, held) = follow_stream(&r, cursor, held).await;
    assert_eq!(held, active_ids(&r).await);
    assert!(!held.contains(&ids[3]));
    let (s, v, _) = call(
        &r,
        "GET",
        "/v1/decisions/stream?since=banana",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("since"))
    );
    let (s, _, _) = call(
        &r,
        "GET",
        "/v1/decisions/stream?since=999999",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::GONE);
}

async fn compaction_sends_old_cursors_back_to_a_snapshot(f: Fixture) {
    let r = f.router();
    let a = add_decision(&r, "ban", "ip", "198.51.100.1").await;
    add_decision(&r, "ban", "ip", "198.51.100.2").await;
    let (cursor, held) = follow_stream(&r, "0".into(), Default::default()).await;
    call(
        &r,
        "DELETE",
        &format!("/v1/decisions/{a}"),
        Some(common::ADMIN),
        None,
    )
    .await;
    // Tombstones older than "now + 1 minute" go (the other decision lasts an hour).
    let purged = f
        .app
        .store()
        .purge(0, server::now_ms() / 1000 + 60)
        .await
        .unwrap();
    assert_eq!(
        purged.log_entries, 2,
        "the lifted decision's add and its tombstone"
    );
    let (s, _, _) = call(
        &r,
        "GET",
        &format!("/v1/decisions/stream?since={cursor}"),
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::GONE, "the old cursor would miss the removal");
    let (_, held_after) = follow_stream(&r, cursor, held).await;
    assert_eq!(held_after, active_ids(&r).await);
    assert_eq!(held_after.len(), 1);
}

async fn erasure_and_history(f: Fixture) {
    let r = f.router();
    post_events(&r, vec![event("h1", "device", "dev-1", "abuse_report", 30)]).await;
    post_events(&r, vec![event("h2", "device", "dev-1", "failed_login", 5)]).await;
    let key = signalbox_score_cache::model::SubjectKey {
        scope: signalbox_wire::ScopeV1::Device,
        key: "dev-1".into(),
    };
    let history = f.app.store().events_of(key.clone(), 10).await.unwrap();
    assert_eq!(history.len(), 2);
    let (s, v, _) = call(
        &r,
        "DELETE",
        "/v1/subjects/device/dev-1",
        Some(common::ADMIN),
        None,
    )
    .await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({"erased": true})));
    assert_eq!(context(&r, "device=dev-1").await["device"]["score"], 0);
    assert!(f.app.store().events_of(key, 10).await.unwrap().is_empty());
}

async fn people_read_scores_subjects_and_events(f: Fixture) {
    let r = f.router();
    post_events(
        &r,
        vec![
            event("q1", "user", "alice", "chargeback", 60),
            event("q2", "user", "alice", "failed_login", 25),
            event("q3", "user", "bob", "failed_login", 10),
            event("q4", "ip", "192.0.2.77", "abuse_report", 40),
        ],
    )
    .await;
    let (s, v, _) = call(
        &r,
        "GET",
        "/v1/scores?min_score=30",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let keys: Vec<&str> = v["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["alice", "192.0.2.77"],
        "ranked by score, bob filtered out"
    );
    assert_eq!(v["total"], 2);
    assert_eq!(v["summary"]["critical_risk"], 1, "{v}");
    assert_eq!(v["summary"]["average_score"], 62.5);
    let (_, v, _) = call(
        &r,
        "GET",
        "/v1/scores?search=BO&limit=1",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(v["subjects"][0]["key"], "bob");
    let (_, v, _) = call(
        &r,
        "GET",
        "/v1/scores?level=critical",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(v["total"], 1);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("min_score=x", "min_score"),
        ("level=red", "level"),
        ("trend=up", "trend"),
        ("page=0", "page"),
    ] {
        let (s, v, _) = call(
            &r,
            "GET",
            &format!("/v1/scores?{query}"),
            Some(common::READ),
            None,
        )
        .await;
        assert_eq!(
            (s, v["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{query}"
        );
    }
    add_decision(&r, "challenge", "user", "alice").await;
    let (s, v, _) = call(
        &r,
        "GET",
        "/v1/subjects/user/alice",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["score"], 85);
    assert_eq!(
        v["factors"][0],
        json!({"code": "event.chargeback", "points": 60})
    );
    assert_eq!(v["history"].as_array().unwrap().len(), 2);
    assert_eq!(v["history"][1]["score"], 85);
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    assert_eq!(v["decision"]["action"], "challenge");
    let (_, v, _) = call(
        &r,
        "GET",
        "/v1/events?subject=user:alice&type=chargeback",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["events"][0]["id"], "q1");
    let (_, v, _) = call(
        &r,
        "GET",
        "/v1/events?type=failed_login&limit=1",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(
        (v["total"].as_u64(), v["events"].as_array().unwrap().len()),
        (Some(2), 1)
    );
    let (s, v, _) = call(
        &r,
        "GET",
        "/v1/events?severity=urgent",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("severity"))
    );
    let (s, v, _) = call(
        &r,
        "GET",
        "/v1/events?from=yesterday",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("from"))
    );
}

fn record(id: &str, at_ms: u64, decision: &str, class: &str, reason: &str, revision: u64) -> Value {
    json!({"request_id": id, "at_ms": at_ms, "node_id": "edge-1", "revision": revision,
        "decision": decision, "score": 70, "level": "high",
        "reasons": [{"code": reason, "points": 25}], "client": class,
        "method": "GET", "path": "/login", "route": "login", "ip_hash": "ab12", "ip_lists": ["hosting"]})
}

async fn the_decision_log_keeps_filters_and_expires_records(f: Fixture) {
    let r = f.router();
    let now = server::now_ms();
    let batch = json!({"records": [
        record("r1", now - 3_000, "challenge", "automation", "ua.automation", 7),
        record("r2", now - 2_000, "block", "spoofed_bot;bot=\"googlebot\"", "crawler.spoofed", 7),
        record("r3", now - 1_000, "pass", "browser", "ip.hosting", 8),
        record("old", now - 30 * 86_400_000, "block", "automation", "ua.automation", 6),
    ]});
    let (s, v, _) = call(
        &r,
        "POST",
        "/v1/decisions/log",
        Some(common::READ),
        Some(batch),
    )
    .await;
    assert_eq!(
        (s, v["accepted"].as_u64()),
        (StatusCode::OK, Some(4)),
        "{v}"
    );
    let ids = |v: &Value| -> Vec<String> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["request_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, v, _) = call(
        &r,
        "GET",
        &format!("/v1/decisions/log?from={}", now - 10_000),
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(ids(&v), ["r3", "r2", "r1"], "newest first");
    let (_, v, _) = call(
        &r,
        "GET",
        "/v1/decisions/log?decision=block",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(ids(&v), ["r2", "old"]);
    let (_, v, _) = call(
        &r,
        "GET",
        "/v1/decisions/log?class=spoofed_bot",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(ids(&v), ["r2"]);
    let (_, v, _) = call(
        &r,
        "GET",
        "/v1/decisions/log?reason=ua.automation&revision=7",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(ids(&v), ["r1"]);
    let (_, v, _) = call(
        &r,
        "GET",
        "/v1/decisions/log?route=login&limit=1&page=2",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(
        (ids(&v), v["total"].as_u64()),
        (vec!["r2".to_owned()], Some(4))
    );
    let (s, v, _) = call(
        &r,
        "GET",
        "/v1/decisions/log?decision=maybe",
        Some(common::READ),
        None,
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("decision"))
    );
    let bad = json!({"records": [record("ok", now, "pass", "browser", "x", 1), record("bad", now, "allow", "browser", "x", 1)]});
    let (s, v, _) = call(
        &r,
        "POST",
        "/v1/decisions/log",
        Some(common::READ),
        Some(bad),
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("records[1].decision"))
    );
    // Retention (14 days by default): the month-old record goes, and nothing of the refused batch was stored.
    f.app.purge().await.unwrap();
    let (_, v, _) = call(&r, "GET", "/v1/decisions/log", Some(common::READ), None).await;
    assert_eq!(ids(&v), ["r3", "r2", "r1"]);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod embedded_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::embedded()).await })*
        }
        mod redis_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::redis()).await })*
        }
    };
}

suite!(
    events_score_and_retries_count_once,
    patterns_add_their_factors,
    a_bad_batch_is_refused_whole_naming_the_field,
    tokens_and_scopes,
    decisions_reach_context_by_precedence,
    the_stream_pages_snapshots_deltas_and_etags,
    compaction_sends_old_cursors_back_to_a_snapshot,
    erasure_and_history,
    people_read_scores_subjects_and_events,
    the_decision_log_keeps_filters_and_expires_records,
);

/// One step of the property test: add a decision, lift one, or let a client follow.
#[derive(Debug, Clone)]
enum Op {
    Add,
    Lift(usize),
    Follow(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(Op::Add),
            2 => any::<usize>().prop_map(Op::Lift),
            2 => (0usize..3).prop_map(Op::Follow),
        ],
        1..40,
    )
}

/// Three clients join at different times and follow from their own cursors; each ends with
/// exactly the decisions in force.
async fn clients_converge(f: Fixture, ops: Vec<Op>) {
    let r = f.router();
    let mut live: Vec<String> = Vec::new();
    let mut clients: Vec<Option<(String, std::collections::BTreeSet<String>)>> = vec![None; 3];
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Add => {
                live.push(add_decision(&r, "ban", "ip", &format!("203.0.113.{}", n % 250)).await)
            }
            Op::Lift(i) if !live.is_empty() => {
                let id = live.remove(i % live.len());
                call(
                    &r,
                    "DELETE",
                    &format!("/v1/decisions/{id}"),
                    Some(common::ADMIN),
                    None,
                )
                .await;
            }
            Op::Lift(_) => {}
            Op::Follow(c) => {
                let (cursor, held) = clients[c]
                    .take()
                    .unwrap_or(("0".into(), Default::default()));
                clients[c] = Some(follow_stream(&r, cursor, held).await);
            }
        }
    }
    let expected: std::collections::BTreeSet<String> = live.into_iter().collect();
    assert_eq!(active_ids(&r).await, expected);
    for c in clients.iter_mut() {
        let (cursor, held) = c.take().unwrap_or(("0".into(), Default::default()));
        let (_, held) = follow_stream(&r, cursor, held).await;
        assert_eq!(held, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn stream_clients_converge_embedded(ops in ops()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { clients_converge(embedded(), ops).await });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn stream_clients_converge_redis(ops in ops()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { clients_converge(redis(), ops).await });
    }
}

/// Two cache nodes on one Redis: a decision posted to one is in the other's stream and
/// context answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_redis() {
    let redis = common::Redis::start();
    let node = || {
        let store = RedisStore::open(&redis.url(), "t", Duration::from_millis(500), 30).unwrap();
        App::new(AnyStore::Redis(store), common::policy(), settings())
    };
    let (a, b) = (node(), node());
    let (ra, rb) = (
        server::router(Arc::clone(&a)),
        server::router(Arc::clone(&b)),
    );
    let id = add_decision(&ra, "ban", "user", "mallory").await;
    let (_, held) = follow_stream(&rb, "0".into(), Default::default()).await;
    assert!(held.contains(&id));
    b.follow().await.unwrap();
    assert_eq!(
        context(&rb, "user=mallory").await["user"]["decision"]["action"],
        "ban"
    );
    post_events(&rb, vec![event("x1", "user", "mallory", "chargeback", 33)]).await;
    assert_eq!(context(&ra, "user=mallory").await["user"]["score"], 33);
}

mod bundles {
    use super::*;
    use signalbox_policy::signing::{
        TrustedKeys, public_key_base64, sign, signing_key_from_base64,
    };

    const SEED: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

    fn signed(revision: u64, expires: &str) -> String {
        let key = signing_key_from_base64(SEED).unwrap();
        let bundle = json!({"format_version": 1, "revision": revision, "min_engine_version": "0.1.0", "expires_at": expires});
        serde_json::to_string(&sign(bundle.to_string().as_bytes(), "k1", &key)).unwrap()
    }

    async fn put(r: &Router, path: &str, body: String) -> (StatusCode, Value) {
        let req = Request::builder()
            .method("PUT")
            .uri(path)
            .header("authorization", format!("Bearer {}", common::ADMIN))
            .body(Body::from(body))
            .unwrap();
        let response = r.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn keyed(settings: Settings) -> Settings {
        let key = signing_key_from_base64(SEED).unwrap();
        let public = public_key_base64(&key);
        Settings {
            bundle_keys: TrustedKeys::from_base64([("k1", public.as_str())]).unwrap(),
            ..settings
        }
    }

    pub(super) fn embedded_keyed() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        Fixture {
            app: App::new(
                AnyStore::Embedded(store),
                common::policy(),
                keyed(settings()),
            ),
            _dir: Some(dir),
            _redis: None,
        }
    }

    pub(super) fn redis_keyed() -> Fixture {
        let redis = common::Redis::start();
        let store = RedisStore::open(&redis.url(), "t", Duration::from_millis(500), 30).unwrap();
        Fixture {
            app: App::new(AnyStore::Redis(store), common::policy(), keyed(settings())),
            _dir: None,
            _redis: Some(redis),
        }
    }

    pub(super) async fn push_canary_promote_abort(f: Fixture) {
        let r = f.router();
        let future = "2099-01-01T00:00:00Z";
        let (s, _, _) = call(&r, "GET", "/v1/bundle", Some(common::READ), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(
            context(&r, "user=someone").await["ttl_seconds"],
            15,
            "the start bundle's"
        );
        // Unsigned, tampered, expired: refused with the reason.
        let plain =
            json!({"format_version": 1, "revision": 5, "min_engine_version": "0.1.0"}).to_string();
        let (s, v) = put(&r, "/v1/bundle", plain).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert!(v["message"].as_str().unwrap().contains("not signed"), "{v}");
        let mut tampered: Value = serde_json::from_str(&signed(5, future)).unwrap();
        let other: Value = serde_json::from_str(&signed(50, future)).unwrap();
        tampered["payload"] = other["payload"].clone();
        let (s, v) = put(&r, "/v1/bundle", tampered.to_string()).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert!(
            v["message"].as_str().unwrap().contains("does not verify"),
            "{v}"
        );
        let (s, v) = put(&r, "/v1/bundle", signed(5, "2020-01-01T00:00:00Z")).await;
        assert!(
            s == StatusCode::CONFLICT && v["message"].as_str().unwrap().contains("expired"),
            "{v}"
        );
        // A good one.
        let (s, v) = put(&r, "/v1/bundle", signed(7, future)).await;
        assert_eq!(
            (s, v["stable_revision"].as_u64()),
            (StatusCode::OK, Some(7)),
            "{v}"
        );
        // Never back, never sideways.
        let (s, v) = put(&r, "/v1/bundle", signed(6, future)).await;
        assert!(
            s == StatusCode::CONFLICT && v["message"].as_str().unwrap().contains("lower"),
            "{v}"
        );
        let (s, _) = put(&r, "/v1/bundle", signed(7, future)).await;
        assert_eq!(s, StatusCode::CONFLICT);
        // A 10% canary, seen by edges with an ETag.
        let body = json!({"bundle": signed(8, future), "percent": 10}).to_string();
        let (s, v) = put(&r, "/v1/bundle/canary", body).await;
        assert_eq!(
            (s, v["canary_revision"].as_u64()),
            (StatusCode::OK, Some(8)),
            "{v}"
        );
        let (s, env, headers) = call(&r, "GET", "/v1/bundle", Some(common::READ), None).await;
        assert_eq!(s, StatusCode::OK);
        let envelope: signalbox_wire::BundleEnvelopeV1 = serde_json::from_value(env).unwrap();
        assert_eq!(envelope.canary.as_ref().unwrap().percent, 10);
        let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
        let req = Request::builder()
            .uri("/v1/bundle")
            .header("authorization", format!("Bearer {}", common::READ))
            .header("if-none-match", &etag)
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            r.clone().oneshot(req).await.unwrap().status(),
            StatusCode::NOT_MODIFIED
        );
        // Abort: the stable revision stays 7.
        let (s, v, _) = call(&r, "DELETE", "/v1/bundle/canary", Some(common::ADMIN), None).await;
        assert_eq!(
            (
                s,
                v["stable_revision"].as_u64(),
                v["canary_revision"].as_u64()
            ),
            (StatusCode::OK, Some(7), None)
        );
        // A canary below the highest revision ever offered (8) is refused; 9 goes, then promote.
        let (s, _) = put(
            &r,
            "/v1/bundle/canary",
            json!({"bundle": signed(8, future), "percent": 10}).to_string(),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _) = put(
            &r,
            "/v1/bundle/canary",
            json!({"bundle": signed(9, future), "percent": 101}).to_string(),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = put(
            &r,
            "/v1/bundle/canary",
            json!({"bundle": signed(9, future), "percent": 25}).to_string(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, v, _) = call(&r, "POST", "/v1/bundle/promote", Some(common::ADMIN), None).await;
        assert_eq!(
            (
                s,
                v["stable_revision"].as_u64(),
                v["canary_revision"].as_u64()
            ),
            (StatusCode::OK, Some(9), None)
        );
        let (s, _, _) = call(&r, "POST", "/v1/bundle/promote", Some(common::ADMIN), None).await;
        assert_eq!(s, StatusCode::CONFLICT, "nothing left to promote");
        // The cache itself now scores by the promoted bundle (revision 9, default scoring:
        // a 30 s context TTL instead of the start bundle's 15 s).
        assert_eq!(f.app.policy().revision(), 9);
        assert_eq!(context(&r, "user=someone").await["ttl_seconds"], 30);
        // Edges cannot push.
        let req = Request::builder()
            .method("PUT")
            .uri("/v1/bundle")
            .header("authorization", format!("Bearer {}", common::READ))
            .body(Body::from(signed(10, future)))
            .unwrap();
        assert_eq!(
            r.clone().oneshot(req).await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
    }

    pub(super) async fn fleet_reports_and_staleness(f: Fixture) {
        let r = f.router();
        for (node, stable, error) in [
            ("edge-a", 7, None),
            ("edge-b", 6, Some("bundle revision 5 refused: lower")),
        ] {
            let report = json!({"node_id": node, "stable_revision": stable, "last_error": error,
                "clock_skew_ms": -12, "reported_at": server::now_ms() / 1000});
            let (s, v, _) = call(&r, "POST", "/v1/fleet", Some(common::READ), Some(report)).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        }
        // A node last heard from ten minutes ago (written as the store keeps it).
        let old = signalbox_score_cache::bundles::FleetEntry {
            report: signalbox_wire::FleetReportV1 {
                node_id: "edge-old".into(),
                stable_revision: 3,
                canary_revision: None,
                last_error: None,
                clock_skew_ms: 0,
                reported_at: server::now_ms() / 1000 - 600,
            },
            received_at: server::now_ms() / 1000 - 600,
        };
        let stored = f
            .app
            .store()
            .swap_blob(
                "fleet/edge-old".into(),
                None,
                serde_json::to_vec(&old).unwrap(),
            )
            .await
            .unwrap();
        assert!(stored);
        let (s, v, _) = call(&r, "GET", "/v1/fleet", Some(common::READ), None).await;
        assert_eq!(s, StatusCode::OK);
        let nodes = v["nodes"].as_array().unwrap();
        let by = |id: &str| nodes.iter().find(|n| n["node_id"] == id).unwrap().clone();
        assert_eq!(nodes.len(), 3);
        assert_eq!(by("edge-a")["stale"], false);
        assert_eq!(
            by("edge-b")["last_error"],
            "bundle revision 5 refused: lower"
        );
        assert_eq!(by("edge-old")["stale"], true);
        let (s, v, _) = call(
            &r,
            "POST",
            "/v1/fleet",
            Some(common::READ),
            Some(json!({"node_id": "", "stable_revision": 1, "reported_at": 1})),
        )
        .await;
        assert_eq!(
            (s, v["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("node_id"))
        );
    }
}

mod bundles_embedded_store {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn push_canary_promote_abort() {
        super::bundles::push_canary_promote_abort(super::bundles::embedded_keyed()).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fleet_reports_and_staleness() {
        super::bundles::fleet_reports_and_staleness(super::bundles::embedded_keyed()).await
    }
}

mod bundles_redis_store {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn push_canary_promote_abort() {
        super::bundles::push_canary_promote_abort(super::bundles::redis_keyed()).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fleet_reports_and_staleness() {
        super::bundles::fleet_reports_and_staleness(super::bundles::redis_keyed()).await
    }
}
