//! The dashboard (`/ui`) in-process against the embedded store: login by form (the session
//! cookie's attributes, refused tokens), each page showing the seeded data, read-only sessions
//! that cannot change anything, and CSRF and origin checks on the forms. The browser suite
//! (`tests/browser/dashboard.test.mjs`) drives the same pages in Chromium.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use signalbox_score_cache::server::{self, App, Settings};
use signalbox_score_cache::store::AnyStore;
use signalbox_score_cache::store::embedded::EmbeddedStore;
use tower::ServiceExt;

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

async fn send(router: &Router, request: Request<Body>) -> Page {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn api(router: &Router, method: &str, uri: &str, token: &str, body: Option<Value>) -> Value {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    serde_json::from_str(&send(router, request).await.text).unwrap_or(Value::Null)
}

/// Logs in with `token`: the session cookie (`name=value`).
async fn login(router: &Router, token: &str) -> Page {
    let request = Request::builder()
        .method("POST")
        .uri("/ui/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .unwrap();
    send(router, request).await
}

fn cookie_of(page: &Page) -> String {
    let set = page.headers[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn get(router: &Router, uri: &str, cookie: &str) -> Page {
    let request = Request::builder()
        .uri(uri)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    send(router, request).await
}

async fn post_form(
    router: &Router,
    uri: &str,
    cookie: &str,
    origin: Option<&str>,
    form: &str,
) -> Page {
    let mut request = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::HOST, "cache.test")
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(o) = origin {
        request = request.header(header::ORIGIN, o);
    }
    send(router, request.body(Body::from(form.to_owned())).unwrap()).await
}

fn csrf_of(page: &Page) -> String {
    let at = page
        .text
        .find(r#"name="csrf" value=""#)
        .expect("no csrf field")
        + 19;
    page.text[at..].split('"').next().unwrap().to_owned()
}

fn router() -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let settings = Settings {
        tokens: common::tokens(),
        ..Settings::default()
    };
    let app = App::new(AnyStore::Embedded(store), common::policy(), settings);
    (server::router(Arc::clone(&app)), dir)
}

fn record(id: &str, at_ms: u64, decision: &str, class: &str, reason: &str) -> Value {
    json!({"request_id": id, "at_ms": at_ms, "node_id": "edge-1", "revision": 7,
        "decision": decision, "score": 70, "level": "high",
        "reasons": [{"code": reason, "points": 25}], "rules": ["deny-curl"], "client": class,
        "method": "GET", "path": "/login", "route": "login", "ip_hash": "ab12"})
}

#[tokio::test]
async fn the_dashboard_shows_what_the_api_holds_and_only_admins_change_it() {
    let (r, _dir) = router();
    let now = server::now_ms();
    // Seed: six verdicts of the last minutes, a subject with events, a fleet report.
    let records: Vec<Value> = [
        ("r1", "challenge", "automation", "ua.automation"),
        ("r2", "challenge", "automation", "ua.automation"),
        ("r3", "challenge", "browser", "ip.hosting"),
        (
            "r4",
            "block",
            "spoofed_bot;bot=\"googlebot\"",
            "crawler.spoofed",
        ),
        ("r5", "block", "automation", "ua.automation"),
        ("r6", "pass", "browser", "ip.hosting"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (id, d, class, reason))| record(id, now - 60_000 * (i as u64 + 1), d, class, reason))
    .collect();
    api(
        &r,
        "POST",
        "/v1/decisions/log",
        common::READ,
        Some(json!({"records": records})),
    )
    .await;
    // Traffic decides what these fields hold: markup must come out as text. (Two hours old:
    // outside the overview's hour, so its counts stay those of the six above.)
    let mut hostile = record(
        "r7",
        now - 7_200_000,
        "challenge",
        "automation",
        "ua.automation",
    );
    hostile["path"] = json!("/<script>alert(1)</script>");
    hostile["node_id"] = json!("edge\"><img src=x onerror=alert(1)>");
    let taken = api(
        &r,
        "POST",
        "/v1/decisions/log",
        common::READ,
        Some(json!({"records": [hostile]})),
    )
    .await;
    assert_eq!(taken["accepted"], 1, "{taken}");
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("e{i}"), "subject": {"scope": "user", "key": "mallory"}, "type": "failed_login", "severity": "medium", "impact": 10}))
        .collect();
    api(
        &r,
        "POST",
        "/v1/events",
        common::INGEST,
        Some(json!({"events": events})),
    )
    .await;
    api(&r, "POST", "/v1/fleet", common::READ, Some(json!({"node_id": "edge-eu-1", "stable_revision": 7, "last_error": null, "clock_skew_ms": 0, "reported_at": now / 1000}))).await;

    // Not logged in: to the login form. A token without read scope: refused.
    let anonymous = get(&r, "/ui", "").await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers[header::LOCATION], "/ui/login");
    assert_eq!(
        login(&r, common::INGEST).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&r, "no-such-token").await.status,
        StatusCode::UNAUTHORIZED
    );

    // A read-only login: an HttpOnly, SameSite=Strict session cookie; no token anywhere.
    let viewer_login = login(&r, common::READ).await;
    assert_eq!(viewer_login.status, StatusCode::SEE_OTHER);
    let set = viewer_login.headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(
        !set.contains(common::READ)
            && !viewer_login.headers[header::LOCATION]
                .to_str()
                .unwrap()
                .contains(common::READ)
    );
    let viewer = cookie_of(&viewer_login);

    let overview = get(&r, "/ui", &viewer).await;
    assert_eq!(overview.status, StatusCode::OK);
    let csp = overview.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(overview.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(overview.headers[header::CACHE_CONTROL], "no-store");
    let class_bars: u64 = overview
        .text
        .match_indices(r#"data-class="automation" data-count=""#)
        .map(|(at, m)| {
            overview.text[at + m.len()..]
                .split('"')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(class_bars, 3, "the class chart's automation bars add up");
    assert!(
        overview.text.contains("6 of 6 records"),
        "{}",
        overview.text
    );
    for (decision, n) in [("pass", 1), ("challenge", 3), ("throttle", 0), ("block", 2)] {
        assert!(
            overview.text.contains(&format!(
                r#"data-decision-total="{decision}">{decision} {n}<"#
            )),
            "{decision} {n}"
        );
    }
    let bars: u64 = overview
        .text
        .match_indices(r#"data-decision="challenge" data-count=""#)
        .map(|(at, m)| {
            overview.text[at + m.len()..]
                .split('"')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(bars, 3, "the chart's challenge bars add up to the total");
    assert!(
        overview
            .text
            .contains(r#"data-label="ua.automation" data-count="3""#)
    );
    assert!(
        overview
            .text
            .contains(r#"data-label="automation" data-count="3""#)
    );
    assert!(overview.text.contains(r#"data-node="edge-eu-1""#));
    assert!(
        !overview.text.contains(common::READ),
        "the token is not in the page"
    );

    let subjects = get(&r, "/ui/subjects", &viewer).await;
    assert!(
        subjects.text.contains(r#"data-subject="user:mallory""#),
        "{}",
        subjects.text
    );
    let subject = get(&r, "/ui/subjects/user/mallory", &viewer).await;
    assert!(subject.text.contains(r#"id="history-chart""#));
    assert_eq!(
        subject.text.matches(r#"data-event="failed_login""#).count(),
        3
    );
    assert!(
        subject
            .text
            .contains(r#"data-factor="velocity.login_burst""#),
        "{}",
        subject.text
    );

    let all = get(&r, "/ui/log", &viewer).await;
    assert!(
        all.text.contains("/&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the path escaped"
    );
    assert!(
        all.text
            .contains("edge&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
        "the node escaped"
    );
    assert!(!all.text.contains("<script>alert") && !all.text.contains("<img src=x"));
    let log = get(&r, "/ui/log?decision=block", &viewer).await;
    assert!(
        log.text.contains(r#"<p id="log-total">2 records"#),
        "{}",
        log.text
    );
    assert!(
        log.text.contains(r#"data-reason="crawler.spoofed""#) && log.text.contains("deny-curl")
    );
    let filtered = get(&r, "/ui/log?class=browser&reason=ip.hosting", &viewer).await;
    assert!(filtered.text.contains(r#"<p id="log-total">2 records"#));

    // Read-only: no forms, and a forged add is refused by the API's scope.
    let page = get(&r, "/ui/decisions", &viewer).await;
    assert!(page.text.contains(r#"id="read-only""#) && !page.text.contains(r#"id="add-decision""#));
    let csrf = csrf_of(&page);
    let forged = post_form(
        &r,
        "/ui/decisions",
        &viewer,
        None,
        &format!("csrf={csrf}&action=ban&scope=ip&key=203.0.113.7&duration_seconds=600&reason=x"),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let listed = api(&r, "GET", "/v1/decisions", common::ADMIN, None).await;
    assert_eq!(listed["decisions"].as_array().unwrap().len(), 0);

    // Admin: the form adds a decision that the edges' stream carries; CSRF and origin checked.
    let admin = cookie_of(&login(&r, common::ADMIN).await);
    let page = get(&r, "/ui/decisions", &admin).await;
    assert!(page.text.contains(r#"id="add-decision""#));
    let csrf = csrf_of(&page);
    let form = |csrf: &str| {
        format!(
            "csrf={csrf}&action=ban&scope=ip&key=203.0.113.7&duration_seconds=600&reason=card+testing"
        )
    };
    assert_eq!(
        post_form(&r, "/ui/decisions", &admin, None, &form("wrong"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post_form(
            &r,
            "/ui/decisions",
            &admin,
            Some("https://evil.example"),
            &form(&csrf)
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post_form(&r, "/ui/decisions", &admin, Some("null"), &form(&csrf))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post_form(&r, "/ui/decisions", &viewer, None, &form(&csrf))
            .await
            .status,
        StatusCode::FORBIDDEN,
        "another session's token"
    );
    let added = post_form(
        &r,
        "/ui/decisions",
        &admin,
        Some("http://cache.test"),
        &form(&csrf),
    )
    .await;
    assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.text);
    let stream = api(
        &r,
        "GET",
        "/v1/decisions/stream?since=0",
        common::READ,
        None,
    )
    .await;
    assert!(stream.to_string().contains("203.0.113.7"), "{stream}");
    let page = get(&r, "/ui/decisions", &admin).await;
    let id = page
        .text
        .split(r#"data-decision-id=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let removed = post_form(
        &r,
        &format!("/ui/decisions/{id}/remove"),
        &admin,
        None,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER);
    let listed = api(&r, "GET", "/v1/decisions", common::ADMIN, None).await;
    assert_eq!(listed["decisions"].as_array().unwrap().len(), 0);

    // Logging out ends the session.
    post_form(&r, "/ui/logout", &admin, None, &format!("csrf={csrf}")).await;
    assert_eq!(get(&r, "/ui", &admin).await.status, StatusCode::SEE_OTHER);
}

/// Bundle pushes take megabytes, but only from an admin: the body is read after the token.
#[tokio::test]
async fn bundle_pushes_read_megabytes_only_after_the_admin_check() {
    let (r, _dir) = router();
    let big = format!("{{\"padding\": \"{}\"}}", "x".repeat(3 << 20));
    let push = |token: Option<&str>| {
        let mut request = Request::builder().method("PUT").uri("/v1/bundle");
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        request.body(Body::from(big.clone())).unwrap()
    };
    assert_eq!(send(&r, push(None)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(&r, push(Some(common::READ))).await.status,
        StatusCode::FORBIDDEN
    );
    // From an admin, 3 MiB is read (over the API's 1 MiB) and judged as a bundle.
    let admin = send(&r, push(Some(common::ADMIN))).await;
    assert_eq!(admin.status, StatusCode::CONFLICT, "{}", admin.text);
    assert!(admin.text.contains("not signed"), "{}", admin.text);
}

/// A token keeps at most 20 sessions; logging in again ends the browser's previous session; a
/// login posted from another origin is refused.
#[tokio::test]
async fn sessions_are_bounded_and_replaced() {
    let (r, _dir) = router();
    let first = cookie_of(&login(&r, common::READ).await);
    assert_eq!(get(&r, "/ui", &first).await.status, StatusCode::OK);
    // The same browser logs in again: its old session ends.
    let request = Request::builder()
        .method("POST")
        .uri("/ui/login")
        .header(header::COOKIE, &first)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={}", common::READ)))
        .unwrap();
    let second = cookie_of(&send(&r, request).await);
    assert_eq!(get(&r, "/ui", &first).await.status, StatusCode::SEE_OTHER);
    assert_eq!(get(&r, "/ui", &second).await.status, StatusCode::OK);
    let mut cookies = vec![second];
    for _ in 0..25 {
        cookies.push(cookie_of(&login(&r, common::READ).await));
    }
    let mut live = 0;
    for c in &cookies {
        if get(&r, "/ui", c).await.status == StatusCode::OK {
            live += 1;
        }
    }
    assert_eq!(live, 20, "a token keeps its 20 newest sessions");
    assert_eq!(
        get(&r, "/ui", cookies.last().unwrap()).await.status,
        StatusCode::OK
    );
    let cross = Request::builder()
        .method("POST")
        .uri("/ui/login")
        .header(header::HOST, "cache.test")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={}", common::READ)))
        .unwrap();
    assert_eq!(send(&r, cross).await.status, StatusCode::FORBIDDEN);
}

fn router_with(settings: Settings) -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let settings = Settings {
        tokens: common::tokens(),
        ..settings
    };
    let app = App::new(AnyStore::Embedded(store), common::policy(), settings);
    (server::router(Arc::clone(&app)), dir)
}

/// A login post from `origin` to a cache whose `Host` is `host`.
fn login_from(host: &str, origin: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/ui/login")
        .header(header::HOST, host)
        .header(header::ORIGIN, origin)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={}", common::ADMIN)))
        .unwrap()
}

/// Behind a proxy (`--public-origin https://dash.example.com`, the cache on plain HTTP): posts
/// from the public origin are taken whatever `Host` the proxy sends, posts naming the cache's
/// own address are not, and the session cookie is `Secure`.
#[tokio::test]
async fn a_public_origin_names_where_posts_may_come_from() {
    // Normalised as browsers send `Origin`: lower case, no default port.
    for (given, origin) in [
        ("https://Dash.Example.com/", "https://dash.example.com"),
        ("http://10.0.0.5:8080", "http://10.0.0.5:8080"),
        ("https://dash.example.com:443", "https://dash.example.com"),
        ("http://[2001:DB8::1]:80/", "http://[2001:db8::1]"),
        ("https://dash.example.com:80", "https://dash.example.com:80"),
    ] {
        assert_eq!(server::public_origin_of(given).unwrap(), origin, "{given}");
    }
    for bad in [
        "dash.example.com",
        "ftp://dash.example.com",
        "https://dash.example.com/ui",
        "https://dash.example.com/?a=1",
        "https://admin@dash.example.com",
    ] {
        assert!(server::public_origin_of(bad).is_err(), "{bad} taken");
    }

    let (r, _dir) = router_with(Settings {
        public_origin: Some("https://dash.example.com".into()),
        ..Settings::default()
    });
    let taken = send(&r, login_from("127.0.0.1:7900", "https://dash.example.com")).await;
    assert_eq!(taken.status, StatusCode::SEE_OTHER, "{}", taken.text);
    let cookie = taken.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let direct = send(&r, login_from("127.0.0.1:7900", "http://127.0.0.1:7900")).await;
    assert_eq!(direct.status, StatusCode::FORBIDDEN);

    // The session's forms follow the same rule.
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = get(&r, "/ui/decisions", &session).await;
    let csrf = csrf_of(&page);
    let form =
        format!("csrf={csrf}&action=ban&scope=ip&key=192.0.2.7&duration_seconds=600&reason=t");
    let own = post_form(
        &r,
        "/ui/decisions",
        &session,
        Some("https://dash.example.com"),
        &form,
    )
    .await;
    assert_eq!(own.status, StatusCode::SEE_OTHER, "{}", own.text);
    let listed = get(&r, "/ui/decisions", &session).await;
    assert!(listed.text.contains("192.0.2.7"), "{}", listed.text);
    let host_named = post_form(
        &r,
        "/ui/decisions",
        &session,
        Some("http://cache.test"),
        &form.replace("192.0.2.7", "192.0.2.8"),
    )
    .await;
    assert_eq!(host_named.status, StatusCode::FORBIDDEN);

    // Without a public origin the cookie is not `Secure` on plain HTTP.
    let (plain, _dir) = router();
    let page = login(&plain, common::READ).await;
    let cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
}

/// Links from the subjects list reach every subject's page: IP subjects when the cache keys
/// them by hash (the list shows the hash), and keys a URL path would resolve away (`..`).
/// Events still take addresses only.
#[tokio::test]
async fn every_listed_subject_has_a_working_page() {
    let (r, _dir) = router_with(Settings {
        ip: signalbox_score_cache::model::IpKeying {
            ipv6_prefix: 64,
            hash_key: Some(b"a privacy key of 32 bytes or so!".to_vec()),
        },
        ..Settings::default()
    });
    let events = json!({"events": [
        {"id": "e1", "subject": {"scope": "ip", "key": "81.62.10.4"}, "type": "failed_login", "severity": "high"},
        {"id": "e2", "subject": {"scope": "user", "key": ".."}, "type": "failed_login", "severity": "high"},
        {"id": "e3", "subject": {"scope": "user", "key": "."}, "type": "failed_login", "severity": "medium"},
    ]});
    let taken = api(&r, "POST", "/v1/events", common::INGEST, Some(events)).await;
    assert_eq!(taken["accepted"], 3, "{taken}");
    let cookie = cookie_of(&login(&r, common::READ).await);
    let list = get(&r, "/ui/subjects", &cookie).await;
    let links: Vec<String> = list
        .text
        .split(r#"<a href=""#)
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|href| href.starts_with("/ui/subject?"))
        .map(|href| href.replace("&amp;", "&"))
        .collect();
    assert_eq!(links.len(), 3, "{}", list.text);
    assert!(!list.text.contains("81.62.10.4"), "a raw address listed");
    for link in &links {
        let page = get(&r, link, &cookie).await;
        assert_eq!(page.status, StatusCode::OK, "{link}");
        assert!(!page.text.contains("data-error"), "{link}: {}", page.text);
        assert!(page.text.contains(r#"id="subject-score""#), "{link}");
        assert!(page.text.contains(r#"data-event="failed_login""#), "{link}");
    }
    assert!(links.iter().any(|l| l.ends_with("key=..")), "{links:?}");
    // A hash is a name to look a subject up by, not an address to send events about.
    let hash = links
        .iter()
        .find_map(|l| l.strip_prefix("/ui/subject?scope=ip&key="))
        .unwrap();
    assert_eq!(hash.len(), 32);
    let event = Request::builder()
        .method("POST")
        .uri("/v1/events")
        .header("authorization", format!("Bearer {}", common::INGEST))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"events": [{"id": "e4", "subject": {"scope": "ip", "key": hash}, "type": "failed_login", "severity": "high"}]})
                .to_string(),
        ))
        .unwrap();
    let refused = send(&r, event).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert!(
        refused.text.contains("not an IP address"),
        "{}",
        refused.text
    );
    // An admin erases the subject by the hash the list shows.
    let erase = Request::builder()
        .method("DELETE")
        .uri(format!("/v1/subjects/ip/{hash}"))
        .header("authorization", format!("Bearer {}", common::ADMIN))
        .body(Body::empty())
        .unwrap();
    let erased = send(&r, erase).await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    let after = get(&r, &format!("/ui/subject?scope=ip&key={hash}"), &cookie).await;
    assert!(
        !after.text.contains(r#"data-event="failed_login""#),
        "{}",
        after.text
    );
}

/// A log record a manual decision decided says so in its explanation.
#[tokio::test]
async fn the_log_names_the_manual_decision_that_decided() {
    let (r, _dir) = router();
    let now = server::now_ms();
    let mut banned = record("m1", now - 1_000, "block", "browser", "ua.browser");
    banned["manual_decision"] = json!("ip");
    let plain = record("m2", now - 2_000, "block", "automation", "ua.automation");
    let taken = api(
        &r,
        "POST",
        "/v1/decisions/log",
        common::READ,
        Some(json!({"records": [banned, plain]})),
    )
    .await;
    assert_eq!(taken["accepted"], 2, "{taken}");
    let cookie = cookie_of(&login(&r, common::READ).await);
    let log = get(&r, "/ui/log", &cookie).await;
    let row = |id: &str| {
        let at = log.text.find(&format!(r#"data-request="{id}""#)).unwrap();
        log.text[at..].split("</tr>").next().unwrap().to_owned()
    };
    assert!(
        row("m1").contains(r#"<span data-manual="ip">a manual decision on the ip</span>"#),
        "{}",
        row("m1")
    );
    assert!(row("m2").contains("decided by revision 7"), "{}", row("m2"));
    assert!(!row("m2").contains("data-manual"), "{}", row("m2"));
}

/// A login post as if from `peer` (what the listener records for a real connection).
fn login_as(peer: &str, token: &str) -> Request<Body> {
    let mut request = Request::builder()
        .method("POST")
        .uri("/ui/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(server::PeerAddr(
            peer.parse().unwrap(),
        )));
    request
}

/// The limiter counts an IPv6 client by its /64 (rotating through a network's addresses buys
/// nothing), and concurrent posts cannot slip past it: of 30 refused logins sent at once,
/// exactly 10 are looked at. Successful logins do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_login_limit_counts_a_network_and_holds_under_concurrency() {
    let (r, _dir) = router();
    for i in 0..25 {
        let ok = send(
            &r,
            login_as(&format!("[2001:db8:0:7::{i}]:4000"), common::READ),
        )
        .await;
        assert_eq!(ok.status, StatusCode::SEE_OTHER, "successful login {i}");
    }
    for i in 0..10 {
        let refused = send(&r, login_as(&format!("[2001:db8:0:7::{i}]:4000"), "wrong")).await;
        assert_eq!(
            refused.status,
            StatusCode::UNAUTHORIZED,
            "refused login {i}"
        );
    }
    let same_net = send(&r, login_as("[2001:db8:0:7:ffff::1]:4000", common::READ)).await;
    assert_eq!(same_net.status, StatusCode::TOO_MANY_REQUESTS);
    let other_net = send(&r, login_as("[2001:db8:0:8::1]:4000", common::READ)).await;
    assert_eq!(other_net.status, StatusCode::SEE_OTHER);

    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { send(&r, login_as("192.0.2.9:5000", "wrong")).await.status })
        })
        .collect();
    let mut looked_at = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::UNAUTHORIZED => looked_at += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(looked_at, 10);
}

/// Dashboard forms are small: a body over 16 KiB is refused before it is read.
#[tokio::test]
async fn dashboard_forms_are_small() {
    let (r, _dir) = router();
    let request = Request::builder()
        .method("POST")
        .uri("/ui/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={}", "x".repeat(17 * 1024))))
        .unwrap();
    assert_eq!(
        send(&r, request).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

/// One raw login post to a real cache, from the local address `from`: the status and any
/// `Retry-After`.
async fn login_over_tcp(port: u16, from: &str, token: &str) -> (u16, Option<String>) {
    use std::io::{Read, Write};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    // Plain blocking I/O from here (the cache is another process).
    let mut stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    let body = format!("token={token}");
    let request = format!(
        "POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let retry = answer
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .map(str::to_owned);
    (status, retry)
}

/// A real `signalbox-cache` answers the 11th refused login in a minute from one address with
/// 429 (even with a good token: it is not looked at), while another address still logs in.
#[tokio::test]
async fn refused_logins_are_limited_per_client_address() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let cache =
        common::CacheProcess::start(work.path(), &["--data".into(), data.display().to_string()]);
    for i in 0..10 {
        let (status, _) = login_over_tcp(cache.port, "127.0.0.1", "wrong-token").await;
        assert_eq!(status, 401, "refused login {i}");
    }
    let (status, retry) = login_over_tcp(cache.port, "127.0.0.1", "wrong-token").await;
    assert_eq!(status, 429);
    let wait: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let (status, _) = login_over_tcp(cache.port, "127.0.0.1", common::ADMIN).await;
    assert_eq!(status, 429, "a limited address logs in with a good token");
    let (status, _) = login_over_tcp(cache.port, "127.0.0.2", common::ADMIN).await;
    assert_eq!(status, 303, "another address must not share the limit");
}

/// A `view` token (a person who only looks) reads every `GET` the API has and the whole
/// dashboard, and can report nothing an edge reports: no log records, fleet reports or rate
/// counts (a `read` token, an edge's, can), and no events or decisions.
#[tokio::test]
async fn a_view_token_reads_everything_and_writes_nothing() {
    let (r, _dir) = router();
    let status = |method: &str, uri: &str, token: &str, body: Option<Value>| {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let r = r.clone();
        async move { send(&r, request).await.status }
    };
    for uri in [
        "/v1/context?ip=192.0.2.1",
        "/v1/decisions",
        "/v1/decisions/stream",
        "/v1/fleet",
        "/v1/scores",
        "/v1/subjects/user/mallory",
        "/v1/events?scope=user&key=mallory",
        "/v1/decisions/log",
    ] {
        let got = status("GET", uri, common::VIEW, None).await;
        assert!(
            got != StatusCode::UNAUTHORIZED && got != StatusCode::FORBIDDEN,
            "GET {uri}: {got}"
        );
    }
    let now = server::now_ms();
    let reports = [
        (
            "/v1/decisions/log",
            json!({"records": [record("v1", now, "block", "browser", "ua.browser")]}),
        ),
        (
            "/v1/fleet",
            json!({"node_id": "forged", "stable_revision": 1, "last_error": null, "clock_skew_ms": 0, "reported_at": now / 1000}),
        ),
        (
            "/v1/rate",
            json!({"counts": [{"key": "k", "per_seconds": 60, "count": 1}]}),
        ),
        (
            "/v1/events",
            json!({"events": [{"id": "v", "subject": {"scope": "user", "key": "u"}, "type": "failed_login", "severity": "high"}]}),
        ),
        (
            "/v1/decisions",
            json!({"action": "ban", "scope": "ip", "key": "192.0.2.1", "duration_seconds": 60, "reason": "v"}),
        ),
    ];
    for (uri, body) in &reports {
        assert_eq!(
            status("POST", uri, common::VIEW, Some(body.clone())).await,
            StatusCode::FORBIDDEN,
            "POST {uri}"
        );
    }
    // An edge's token still reports.
    for (uri, body) in &reports[..3] {
        let got = status("POST", uri, common::READ, Some(body.clone())).await;
        assert!(got.is_success(), "edge POST {uri}: {got}");
    }
    // The dashboard: a read-only session with every page and no forms that change anything.
    let cookie = cookie_of(&login(&r, common::VIEW).await);
    for page in ["/ui", "/ui/subjects", "/ui/decisions", "/ui/log"] {
        let got = get(&r, page, &cookie).await;
        assert_eq!(got.status, StatusCode::OK, "{page}");
        assert!(!got.text.contains("data-error"), "{page}: {}", got.text);
        assert!(got.text.contains("read-only"), "{page}");
    }
    assert!(
        !get(&r, "/ui/decisions", &cookie)
            .await
            .text
            .contains(r#"action="/ui/decisions""#)
    );
}
