//! The dashboard (`/ui`): server-rendered pages for the people who run Signalbox, over the same
//! API edges and tools use.
//!
//! Every page reads through the JSON API in-process (`tower::ServiceExt::oneshot` on the API
//! router, with the session's bearer token), so the dashboard sees exactly what the API
//! answers and the same scopes apply: a `view` token sees everything and changes nothing;
//! adding or removing a decision needs an admin token. No front-end build step and no
//! third-party network access: the HTML, its few lines of CSS and the charts (inline SVG,
//! drawn here; no chart library) come from this module.
//!
//! Every answer forbids framing and any script or outside resource (`Content-Security-Policy`,
//! `X-Frame-Options: DENY`) and is never cached. The charts are inline SVG drawn here rather
//! than a vendored library: no script runs in the dashboard at all, nothing is fetched from
//! elsewhere, and each bar carries its category and count as attributes the tests read.
//!
//! Login is a form: the token is posted once, checked against the tokens file, and kept in
//! memory on the server; the browser gets only a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to `/ui` (`Secure` when the cache serves TLS), so the token
//! never lands in a URL, a page or browser storage. Sessions last 8 hours and end at logout or
//! restart. Forms that change anything carry the session's CSRF token (compared in constant
//! time), and a request whose `Origin` is another origin (or `null`) is refused. Behind a proxy
//! that terminates TLS or rewrites `Host`, `--public-origin` names the origin browsers use.
//!
//! The dashboard has its own bounds, apart from the API's: at most [`MAX_IN_FLIGHT`] requests
//! at once (more are answered 503), the API's request deadline, small form bodies, and at most
//! [`FAILED_LOGINS_PER_MINUTE`] refused logins a minute from one client address (more are
//! answered 429 before the token is even looked at).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tower::ServiceExt;

use crate::auth::{Scope, Tokens};
// HTML-escapes text for element content and quoted attributes (the challenge page's escaper).
use crate::server::{PeerAddr, now_ms};
use signalbox_policy::page::escape_html as esc;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "signalbox_session";
/// How long a session lasts.
const SESSION_MS: u64 = 8 * 3600 * 1000;
/// Sessions per token, at most (a leaked view token cannot fill the server's memory).
const MAX_SESSIONS_PER_TOKEN: usize = 20;
/// Sessions in all, at most.
const MAX_SESSIONS: usize = 1_000;
/// Decision log records the overview charts read, at most (the newest hour).
const OVERVIEW_RECORDS: usize = 2_000;
/// Dashboard requests in flight at once, at most; more are answered 503. Each page makes a
/// few API calls in-process, so this also bounds the dashboard's share of the API.
pub const MAX_IN_FLIGHT: usize = 32;
/// Largest form body, bytes (a login or a decision is a few hundred).
const FORM_BODY_LIMIT: usize = 16 * 1024;
/// Refused logins one client (an IPv4 address, an IPv6 /64) may make in a window of a minute
/// from its first; more are answered 429 until the window ends.
pub const FAILED_LOGINS_PER_MINUTE: u32 = 10;
const LOGIN_WINDOW_MS: u64 = 60_000;
/// Clients the login limiter remembers, at most; beyond them, new clients share one window.
const MAX_LOGIN_CLIENTS: usize = 10_000;
/// The window the clients beyond [`MAX_LOGIN_CLIENTS`] share (no client has this address).
const OVERFLOW_CLIENT: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// How the dashboard is reached and bounded.
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// Who may log in, with which scopes.
    pub tokens: Tokens,
    /// The session cookie is `Secure` (the cache serves TLS, or the public origin is https).
    pub secure_cookies: bool,
    /// The origin browsers reach the dashboard at (`https://signalbox.example.com`), when a
    /// proxy in front rewrites `Host` or terminates TLS: form posts must come from it. `None`:
    /// from the request's own `Host`.
    pub public_origin: Option<String>,
    /// A dashboard request's deadline (the API's).
    pub request_timeout: Duration,
}

#[derive(Clone)]
struct Session {
    token: String,
    admin: bool,
    csrf: String,
    expires_ms: u64,
}

/// The dashboard's state: the API it reads through, its settings, the sessions.
pub struct Ui {
    api: Router,
    settings: UiSettings,
    sessions: Mutex<HashMap<String, Session>>,
    /// Login attempts per client (see [`login_client`]) that were not given back by a
    /// successful login: (start of its window, count).
    login_attempts: Mutex<HashMap<IpAddr, (u64, u32)>>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Ui {
    /// The dashboard over `api`, with no sessions yet.
    fn new(api: Router, settings: UiSettings) -> Self {
        Ui {
            api,
            settings,
            sessions: Mutex::new(HashMap::new()),
            login_attempts: Mutex::new(HashMap::new()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

/// The `/ui` routes, reading through `api` (the API router, with its state).
pub fn routes(api: Router, settings: UiSettings) -> Router {
    let ui = Arc::new(Ui::new(api, settings));
    let bounds = axum::middleware::from_fn_with_state(Arc::clone(&ui), bound);
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/subjects", get(subjects))
        .route("/ui/subjects/{scope}/{key}", get(subject_by_path))
        .route("/ui/subject", get(subject_by_query))
        .route("/ui/decisions", get(decisions).post(add_decision))
        .route("/ui/decisions/{id}/remove", post(remove_decision))
        .route("/ui/log", get(log))
        .layer(DefaultBodyLimit::max(FORM_BODY_LIMIT))
        .layer(bounds)
        .layer(axum::middleware::map_response(protect))
        .with_state(ui)
}

/// The dashboard's bounds on every request: [`MAX_IN_FLIGHT`] at once (503 beyond, at once),
/// and the API's deadline (503 after it). One semaphore for all `/ui` routes.
async fn bound(
    State(ui): State<Arc<Ui>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = Arc::clone(&ui.in_flight).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "the dashboard is busy; retry",
        )
            .into_response();
    };
    match tokio::time::timeout(ui.settings.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the page took too long; retry",
        )
            .into_response(),
    }
}

/// What every dashboard answer carries: no scripts, styles or forms from anywhere else, never
/// framed (clickjacking), never cached, no referrer to other sites.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on the dashboard's own form
        // posts, which the origin check must refuse.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn random_hex(bytes: usize) -> Option<String> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).ok()?;
    Some(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved).
fn enc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Percent-encodes a path segment, `.` and `..` too (which [`enc`] keeps, and a URL would
/// otherwise resolve as "this" and "parent" folder).
fn enc_segment(text: &str) -> String {
    match text {
        "." => "%2E".to_owned(),
        ".." => "%2E%2E".to_owned(),
        other => enc(other),
    }
}

/// A link to one subject's page. Its key goes in the query: browsers resolve a `..` path
/// segment (even `%2E%2E`) before sending it, so no key can be lost that way.
fn subject_link(scope: &str, key: &str) -> String {
    format!("/ui/subject?scope={}&key={}", enc(scope), enc(key))
}

/// A JSON object's field, `null` when absent (indexing without the panic lint's doubt).
trait Field {
    fn f(&self, name: &str) -> &Value;
}

impl Field for Value {
    fn f(&self, name: &str) -> &Value {
        self.get(name).unwrap_or(&Value::Null)
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn time_of(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Whether a post comes from the dashboard's own origin: no `Origin` (an older client), or
/// the public origin when one is set, else one naming this request's `Host`; `null` and other
/// origins are refused.
fn same_origin(headers: &HeaderMap, public_origin: Option<&str>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    match public_origin {
        Some(public) => origin.eq_ignore_ascii_case(public),
        None => headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|host| {
                origin.eq_ignore_ascii_case(&format!("http://{host}"))
                    || origin.eq_ignore_ascii_case(&format!("https://{host}"))
            }),
    }
}

/// The client address of a request, as the listener saw it (`None` in-process).
fn peer_of(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(addr))| addr.ip().to_canonical())
}

/// Who the login limiter counts an address as: an IPv4 address itself, an IPv6 address by its
/// /64 (one site's share: a /64 holds 2^64 addresses to rotate through).
fn login_client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            ipnet::Ipv6Net::new(v6, 64).map_or(IpAddr::V6(v6), |net| IpAddr::V6(net.trunc().addr()))
        }
        v4 => v4,
    }
}

impl Ui {
    /// The session id the request's cookie names (whether or not it is a live session).
    fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .map(|(_, value)| value.to_owned())
    }

    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = self.session_id(headers)?;
        let sessions = self.sessions.lock().ok()?;
        sessions
            .get(&id)
            .filter(|s| s.expires_ms > now_ms())
            .cloned()
            .map(|s| (id, s))
    }

    /// One API call with the session's token: the status and the JSON answer.
    async fn call(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", session.token));
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let Ok(request) = request.body(body) else {
            return (StatusCode::BAD_REQUEST, Value::Null);
        };
        let Ok(response) = self.api.clone().oneshot(request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
            .await
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// [`Ui::get`], with a failure noted in `errors` (shown on the page) and `null` in its place.
    async fn get_or_note(&self, session: &Session, path: &str, errors: &mut Vec<String>) -> Value {
        self.get(session, path).await.unwrap_or_else(|e| {
            errors.push(e);
            Value::Null
        })
    }

    async fn get(&self, session: &Session, path: &str) -> Result<Value, String> {
        let (status, answer) = self.call(session, Method::GET, path, None).await;
        if status.is_success() {
            Ok(answer)
        } else {
            Err(format!("{path}: {status} {}", text_of(answer.f("message"))))
        }
    }

    /// Whether a form post may change anything: the session's CSRF token, and no other origin.
    fn form_allowed(&self, headers: &HeaderMap, session: &Session, csrf: &str) -> bool {
        let same_token = bool::from(session.csrf.as_bytes().ct_eq(csrf.as_bytes()));
        same_token && same_origin(headers, self.settings.public_origin.as_deref())
    }

    /// Takes one login attempt of `client`'s current window: the key it was counted under, or
    /// the seconds until the window ends when none is left. Checking and counting are one step
    /// under the lock, so concurrent posts cannot slip past the limit; a login that succeeds
    /// gives its attempt back ([`Ui::give_back_login_attempt`]), so only refusals add up.
    fn take_login_attempt(&self, client: IpAddr, now: u64) -> Result<IpAddr, u64> {
        let mut attempts = self
            .login_attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut key = client;
        if attempts.len() >= MAX_LOGIN_CLIENTS && !attempts.contains_key(&client) {
            attempts.retain(|_, (start, _)| start.saturating_add(LOGIN_WINDOW_MS) > now);
            if attempts.len() >= MAX_LOGIN_CLIENTS {
                // Still full of live windows: forget the oldest that is not limited now, else
                // count this client in the shared overflow window (a flood of addresses can
                // neither grow the map nor clear a limited client's window).
                match attempts
                    .iter()
                    .filter(|(ip, (_, count))| {
                        **ip != OVERFLOW_CLIENT && *count < FAILED_LOGINS_PER_MINUTE
                    })
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(ip, _)| *ip)
                {
                    Some(oldest) => {
                        attempts.remove(&oldest);
                    }
                    None => key = OVERFLOW_CLIENT,
                }
            }
        }
        let window = attempts.entry(key).or_insert((now, 0));
        let ends = window.0.saturating_add(LOGIN_WINDOW_MS);
        if ends <= now {
            *window = (now, 0);
        } else if window.1 >= FAILED_LOGINS_PER_MINUTE {
            return Err(ends.saturating_sub(now).div_ceil(1000).max(1));
        }
        window.1 = window.1.saturating_add(1);
        Ok(key)
    }

    /// Gives back the attempt a successful login took under `key`.
    fn give_back_login_attempt(&self, key: IpAddr) {
        let mut attempts = self
            .login_attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(window) = attempts.get_mut(&key) {
            window.1 = window.1.saturating_sub(1);
        }
    }
}

/// A page in the dashboard's frame: navigation, who is signed in, the logout form.
fn page(title: &str, session: Option<&Session>, body: &str) -> Html<String> {
    let nav = match session {
        Some(s) => format!(
            r#"<nav><a href="/ui">Overview</a> <a href="/ui/subjects">Subjects</a> <a href="/ui/decisions">Decisions</a> <a href="/ui/log">Decision log</a>
<span class="who">{role}</span>
<form method="post" action="/ui/logout" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button>Log out</button></form></nav>"#,
            role = if s.admin { "admin" } else { "read-only" },
            csrf = esc(&s.csrf),
        ),
        None => String::new(),
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · Signalbox</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}}
header{{background:#1d2330;color:#fff;padding:10px 20px}} header b{{margin-right:16px}}
nav{{display:inline}} nav a{{color:#cfe0ff;margin-right:14px;text-decoration:none}}
nav .who{{margin:0 10px;color:#9aa4b5}} form.inline{{display:inline}}
main{{padding:16px 20px;max-width:1200px}} h1{{font-size:20px}} h2{{font-size:16px;margin-top:24px}}
table{{border-collapse:collapse;background:#fff;width:100%}} td,th{{border-bottom:1px solid #e2e5ea;padding:5px 8px;text-align:left;vertical-align:top}}
.card{{background:#fff;border:1px solid #e2e5ea;border-radius:6px;padding:12px;margin:10px 0}}
.error{{color:#a40000}} .muted{{color:#6b7385}} .pass{{color:#2e7d32}} .challenge{{color:#b26a00}} .throttle{{color:#1f5fbf}} .block{{color:#a40000}}
label{{margin-right:10px}} input,select{{margin-left:4px}}
.legend{{margin-right:12px;font-size:12px}} .legend i{{display:inline-block;width:10px;height:10px;margin-right:4px}}
</style></head>
<body><header><b>Signalbox</b>{nav}</header><main><h1>{title}</h1>
{body}
</main></body></html>"#,
        title = esc(title),
    ))
}

fn error_block(errors: &[String]) -> String {
    errors
        .iter()
        .map(|e| format!(r#"<p class="error" data-error>{}</p>"#, esc(e)))
        .collect()
}

fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

async fn login_form() -> Html<String> {
    login_page(None)
}

fn login_page(problem: Option<&str>) -> Html<String> {
    let problem = problem
        .map(|p| format!(r#"<p class="error" id="login-error">{}</p>"#, esc(p)))
        .unwrap_or_default();
    page(
        "Log in",
        None,
        &format!(
            r#"{problem}<form method="post" action="/ui/login" class="card">
<p>Paste a token from the score cache's tokens file: a view token shows everything; an admin token can also add and remove decisions.</p>
<label>Token <input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Log in</button></form>"#
        ),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers, ui.settings.public_origin.as_deref()) {
        return (
            StatusCode::FORBIDDEN,
            "login refused: posted from another origin",
        )
            .into_response();
    }
    // In-process callers (tests) have no address: they share one limit.
    let peer = peer_of(&extensions).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let attempt = match ui.take_login_attempt(login_client(peer), now_ms()) {
        Ok(key) => key,
        Err(wait) => {
            let mut refused = login_page(Some(&format!(
                "Too many refused logins from this address; try again in {wait} s."
            )))
            .into_response();
            *refused.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
                refused.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return refused;
        }
    };
    let scopes = ui.settings.tokens.scopes_of(form.token.trim());
    let Some(scopes) = scopes.filter(|s| s.allows(Scope::View)) else {
        tracing::info!(client = %peer, "dashboard login refused");
        let mut refused = login_page(Some(
            "That token is not accepted here (a view, read or admin token is).",
        ))
        .into_response();
        *refused.status_mut() = StatusCode::UNAUTHORIZED;
        return refused;
    };
    ui.give_back_login_attempt(attempt);
    let (Some(id), Some(csrf)) = (random_hex(32), random_hex(32)) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no randomness").into_response();
    };
    let session = Session {
        token: form.token.trim().to_owned(),
        admin: scopes.allows(Scope::Admin),
        csrf,
        expires_ms: now_ms().saturating_add(SESSION_MS),
    };
    if let Ok(mut sessions) = ui.sessions.lock() {
        // The session this browser had ends here (no fixation, no pile of stale ids); a token
        // keeps at most MAX_SESSIONS_PER_TOKEN and the map MAX_SESSIONS, the oldest going first.
        if let Some(old) = ui.session_id(&headers) {
            sessions.remove(&old);
        }
        let now = now_ms();
        sessions.retain(|_, s| s.expires_ms > now);
        let mut same_token: Vec<(u64, String)> = sessions
            .iter()
            .filter(|(_, s)| s.token == session.token)
            .map(|(id, s)| (s.expires_ms, id.clone()))
            .collect();
        same_token.sort();
        for (_, old) in same_token
            .iter()
            .take((same_token.len() + 1).saturating_sub(MAX_SESSIONS_PER_TOKEN))
        {
            sessions.remove(old);
        }
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
    }
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_MS / 1000,
        if ui.settings.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some((id, session)) = ui.session(&headers)
        && ui.form_allowed(&headers, &session, &form.csrf)
        && let Ok(mut sessions) = ui.sessions.lock()
    {
        sessions.remove(&id);
    }
    let mut response = to_login();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The colour of a decision in charts.
fn colour(decision: &str) -> &'static str {
    match decision {
        "pass" => "#4caf50",
        "challenge" => "#f0a020",
        "throttle" => "#3b7ddd",
        _ => "#d32f2f",
    }
}

const DECISIONS: [&str; 4] = ["pass", "challenge", "throttle", "block"];

/// A client class's name in a record (`spoofed_bot;bot="googlebot"` → `spoofed_bot`).
fn class_of(record: &Value) -> String {
    text_of(record.f("client"))
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Colours for client classes, in rank order.
const CLASS_COLOURS: [&str; 6] = [
    "#3b7ddd", "#8e44ad", "#16a085", "#e67e22", "#7f8c8d", "#c0392b",
];

/// Records per time bucket over `[from, to)`, stacked by category, as SVG bars: one
/// `<g data-bucket>` per bucket, one `<rect data-{attr}="…" data-count>` per category with any.
/// `category` names a record's category; `colour` gives each a colour; a record whose category
/// is not in `categories` is left out.
#[allow(clippy::too_many_arguments)]
fn time_chart(
    id: &str,
    attr: &str,
    records: &[Value],
    (from_ms, to_ms): (u64, u64),
    buckets: usize,
    categories: &[String],
    category: impl Fn(&Value) -> String,
    colour: impl Fn(usize, &str) -> String,
) -> String {
    let span = to_ms.saturating_sub(from_ms).max(1);
    let mut counts = vec![vec![0u64; categories.len()]; buckets];
    for r in records {
        let at = r.f("at_ms").as_u64().unwrap_or(0);
        if at < from_ms || at >= to_ms {
            continue;
        }
        let bucket = usize::try_from((at - from_ms) * buckets as u64 / span).unwrap_or(0);
        let name = category(r);
        let Some(kind) = categories.iter().position(|c| *c == name) else {
            continue;
        };
        if let Some(slot) = counts.get_mut(bucket).and_then(|c| c.get_mut(kind)) {
            *slot += 1;
        }
    }
    let max = counts
        .iter()
        .map(|c| c.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, bar) = (720u64, 180u64, 720 / buckets.max(1) as u64);
    let mut svg = format!(
        r##"<svg id="{id}" viewBox="0 0 {width} {h}" width="{width}" height="{h}" role="img"><rect width="{width}" height="{height}" fill="#fff"/>"##,
        h = height + 20
    );
    for (i, c) in counts.iter().enumerate() {
        let x = i as u64 * bar;
        let _ = write!(svg, r#"<g data-bucket="{i}">"#);
        let mut y = height;
        for (k, n) in c.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let h = (n * (height - 10) / max).max(1);
            y = y.saturating_sub(h);
            let name = categories.get(k).map_or("", String::as_str);
            let _ = write!(
                svg,
                r#"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}" data-{attr}="{name}" data-count="{n}"><title>{name}: {n}</title></rect>"#,
                w = bar.saturating_sub(2).max(1),
                fill = colour(k, name),
                name = esc(name),
            );
        }
        svg.push_str("</g>");
    }
    let _ = write!(
        svg,
        r#"<text x="0" y="{y}" font-size="11">{from}</text><text x="{width}" y="{y}" font-size="11" text-anchor="end">{to}</text></svg>"#,
        y = height + 15,
        from = esc(&time_of(from_ms)),
        to = esc(&time_of(to_ms)),
    );
    let legend: String = categories
        .iter()
        .enumerate()
        .map(|(k, name)| {
            format!(
                r#"<span class="legend"><i style="background:{}"></i>{}</span> "#,
                colour(k, name),
                esc(name)
            )
        })
        .collect();
    format!("{svg}<p>{legend}</p>")
}

/// Horizontal bars of `(label, count)` pairs.
/// Horizontal bars, one per row, the `k`th filled with `fill(k)`.
fn bars(id: &str, rows: &[(String, u64)], fill: impl Fn(usize) -> &'static str) -> String {
    let max = rows.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let height = rows.len() as u64 * 22 + 4;
    let mut svg = format!(
        r#"<svg id="{id}" viewBox="0 0 520 {height}" width="520" height="{height}" role="img">"#
    );
    for (i, (label, n)) in rows.iter().enumerate() {
        let y = i as u64 * 22;
        let w = n * 300 / max;
        let _ = write!(
            svg,
            r##"<g data-label="{l}" data-count="{n}"><text x="0" y="{ty}" font-size="12">{l}</text><rect x="200" y="{y}" width="{w}" height="16" fill="{f}"/><text x="{tx}" y="{ty}" font-size="12">{n}</text></g>"##,
            l = esc(label),
            f = fill(i),
            ty = y + 12,
            tx = 205 + w,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn ranked(counts: HashMap<String, u64>, top: usize) -> Vec<(String, u64)> {
    let mut rows: Vec<(String, u64)> = counts.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(top);
    rows
}

async fn overview(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let Some((_, session)) = ui.session(&headers) else {
        return to_login();
    };
    let mut errors = Vec::new();
    let to = now_ms();
    let from = to.saturating_sub(3_600_000);
    let mut records: Vec<Value> = Vec::new();
    let mut total = 0;
    for page_no in 1..=(OVERVIEW_RECORDS / 200) {
        match ui
            .get(
                &session,
                &format!("/v1/decisions/log?from={from}&to={to}&limit=200&page={page_no}"),
            )
            .await
        {
            Ok(answer) => {
                total = answer.f("total").as_u64().unwrap_or(0);
                let rows = answer.f("records").as_array().cloned().unwrap_or_default();
                let done = rows.len() < 200;
                records.extend(rows);
                if done {
                    break;
                }
            }
            Err(e) => {
                errors.push(e);
                break;
            }
        }
    }
    let mut by_decision: HashMap<String, u64> = HashMap::new();
    let mut by_class: HashMap<String, u64> = HashMap::new();
    let mut by_reason: HashMap<String, u64> = HashMap::new();
    for r in &records {
        *by_decision.entry(text_of(r.f("decision"))).or_default() += 1;
        *by_class.entry(class_of(r)).or_default() += 1;
        for reason in r.f("reasons").as_array().into_iter().flatten() {
            *by_reason.entry(text_of(reason.f("code"))).or_default() += 1;
        }
    }
    let fleet = ui.get_or_note(&session, "/v1/fleet", &mut errors).await;
    let mut body = error_block(&errors);
    let _ = write!(
        body,
        r#"<div class="card" id="bundle"><b>Bundle</b>: stable revision <span id="stable-revision">{stable}</span>; canary <span id="canary">{canary}</span></div>"#,
        stable = match fleet.f("stable_revision").as_u64() {
            Some(rev) => rev.to_string(),
            None => "— (none pushed yet; the cache's --bundle applies)".to_owned(),
        },
        canary = match fleet.f("canary_revision").as_u64() {
            Some(rev) => format!(
                "revision {rev} for {}% of clients",
                esc(&text_of(fleet.f("canary_percent")))
            ),
            None => "none".to_owned(),
        },
    );
    let counts: String = DECISIONS
        .iter()
        .map(|d| {
            format!(
                r#"<span class="{d}" data-decision-total="{d}">{d} {}</span> "#,
                by_decision.get(*d).copied().unwrap_or(0)
            )
        })
        .collect();
    let _ = write!(
        body,
        r#"<h2>Decisions, last hour</h2><p id="decision-totals">{shown} of {total} records: {counts}</p><p class="muted">Edges record every challenge, throttle and block, and a sample of passes (their <code>decision_log.pass_sample_percent</code>, 1% by default), so passes are undercounted here.</p>{chart}
<h2>By client class, last hour</h2>{classes}<h2>Top reasons</h2>{reasons}"#,
        shown = records.len(),
        chart = time_chart(
            "decisions-chart",
            "decision",
            &records,
            (from, to),
            12,
            &DECISIONS.map(str::to_owned),
            |r| text_of(r.f("decision")),
            |_, d| colour(d).to_owned(),
        ),
        classes = {
            let top = ranked(by_class, CLASS_COLOURS.len());
            let names: Vec<String> = top.iter().map(|(name, _)| name.clone()).collect();
            format!(
                "{}{}",
                time_chart(
                    "class-time-chart",
                    "class",
                    &records,
                    (from, to),
                    12,
                    &names,
                    class_of,
                    |k, _| CLASS_COLOURS
                        .get(k)
                        .copied()
                        .unwrap_or("#7f8c8d")
                        .to_owned(),
                ),
                // The same colour per class as the chart above.
                bars("class-chart", &top, |k| {
                    CLASS_COLOURS.get(k).copied().unwrap_or("#7f8c8d")
                })
            )
        },
        reasons = bars("reason-chart", &ranked(by_reason, 10), |_| "#3b7ddd"),
    );
    body.push_str(r#"<h2>Fleet</h2><table id="fleet"><tr><th>node</th><th>stable</th><th>canary</th><th>last report</th><th>last error</th></tr>"#);
    for node in fleet.f("nodes").as_array().into_iter().flatten() {
        let _ = write!(
            body,
            r#"<tr data-node="{id}"{stale}><td>{id}</td><td>{stable}</td><td>{canary}</td><td>{seen}</td><td>{error}</td></tr>"#,
            id = esc(&text_of(node.f("node_id"))),
            stale = if node.f("stale").as_bool() == Some(true) {
                r#" class="muted""#
            } else {
                ""
            },
            stable = esc(&text_of(node.f("stable_revision"))),
            canary = esc(&text_of(node.f("canary_revision"))),
            seen = esc(&time_of(node.f("last_seen").as_u64().unwrap_or(0) * 1000)),
            error = esc(&text_of(node.f("last_error"))),
        );
    }
    body.push_str("</table>");
    page("Overview", Some(&session), &body).into_response()
}

/// Builds a query string from the filters in `params` that `allowed` names.
fn passthrough(params: &HashMap<String, String>, allowed: &[&str]) -> String {
    allowed
        .iter()
        .filter_map(|k| {
            params
                .get(*k)
                .filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", enc(v)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn filter_inputs(params: &HashMap<String, String>, fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, label)| {
            format!(
                r#"<label>{label} <input name="{name}" value="{value}" size="10"></label>"#,
                value = esc(params.get(*name).map_or("", String::as_str))
            )
        })
        .collect()
}

async fn subjects(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some((_, session)) = ui.session(&headers) else {
        return to_login();
    };
    let filters = [
        "min_score",
        "max_score",
        "level",
        "trend",
        "search",
        "scope",
        "page",
    ];
    let query = passthrough(&params, &filters);
    let mut errors = Vec::new();
    let answer = ui
        .get_or_note(
            &session,
            &format!("/v1/scores?limit=50&{query}"),
            &mut errors,
        )
        .await;
    let mut body = error_block(&errors);
    let _ = write!(
        body,
        r#"<form method="get" class="card">{inputs}<button>Filter</button></form><p>{total} {noun}; average score {avg:.1}; high risk {high}, critical {critical}</p>
<table id="subjects"><tr><th>subject</th><th>score</th><th>level</th><th>trend</th><th>factors</th></tr>"#,
        inputs = filter_inputs(
            &params,
            &[
                ("search", "search"),
                ("min_score", "min score"),
                ("max_score", "max score"),
                ("level", "level"),
                ("trend", "trend")
            ]
        ),
        total = esc(&text_of(answer.f("total"))),
        noun = if answer.f("total").as_u64() == Some(1) {
            "subject"
        } else {
            "subjects"
        },
        avg = answer
            .f("summary")
            .f("average_score")
            .as_f64()
            .unwrap_or(0.0),
        high = esc(&text_of(answer.f("summary").f("high_risk"))),
        critical = esc(&text_of(answer.f("summary").f("critical_risk"))),
    );
    for s in answer.f("subjects").as_array().into_iter().flatten() {
        let (scope, key) = (text_of(s.f("scope")), text_of(s.f("key")));
        let factors: Vec<String> = s
            .f("factors")
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| format!("{} {}", text_of(f.f("code")), text_of(f.f("points"))))
            .collect();
        let _ = write!(
            body,
            r#"<tr data-subject="{scope}:{k}"><td><a href="{link}">{scope}:{k}</a></td><td data-score>{score}</td><td>{level}</td><td>{trend}</td><td>{factors}</td></tr>"#,
            scope = esc(&scope),
            k = esc(&key),
            link = esc(&subject_link(&scope, &key)),
            score = esc(&text_of(s.f("score"))),
            level = esc(&text_of(s.f("level"))),
            trend = esc(&text_of(s.f("trend"))),
            factors = esc(&factors.join(", ")),
        );
    }
    body.push_str("</table>");
    page("Subjects by risk", Some(&session), &body).into_response()
}

/// A subject's score history as an SVG line (one `<circle data-score>` per point).
fn history_chart(history: &[Value]) -> String {
    let points: Vec<(u64, u64)> = history
        .iter()
        .filter_map(|p| Some((p.f("at_ms").as_u64()?, p.f("score").as_u64()?)))
        .collect();
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return r#"<p class="muted" id="history-chart">No history.</p>"#.to_owned();
    };
    let span = last.0.saturating_sub(first.0).max(1);
    let (width, height) = (720u64, 160u64);
    let xy = |(at, score): (u64, u64)| {
        (
            10 + at.saturating_sub(first.0).min(span) * (width - 20) / span,
            height - 10 - score.min(100) * (height - 20) / 100,
        )
    };
    let line: Vec<String> = points
        .iter()
        .map(|p| {
            let (x, y) = xy(*p);
            format!("{x},{y}")
        })
        .collect();
    let mut svg = format!(
        r##"<svg id="history-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="Score history"><rect width="{width}" height="{height}" fill="#fff"/><polyline fill="none" stroke="#d32f2f" stroke-width="2" points="{}"/>"##,
        line.join(" ")
    );
    for p in &points {
        let (x, y) = xy(*p);
        let _ = write!(
            svg,
            r##"<circle cx="{x}" cy="{y}" r="3" fill="#d32f2f" data-score="{}"><title>{}: {}</title></circle>"##,
            p.1,
            esc(&time_of(p.0)),
            p.1
        );
    }
    svg.push_str("</svg>");
    svg
}

/// `/ui/subjects/{scope}/{key}`: one subject (a link anyone can type).
async fn subject_by_path(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Path((scope, key)): Path<(String, String)>,
) -> Response {
    subject(&ui, &headers, &scope, &key).await
}

#[derive(Deserialize)]
struct SubjectQuery {
    scope: String,
    key: String,
}

/// `/ui/subject?scope=&key=`: one subject, whatever its key (the lists link here).
async fn subject_by_query(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Query(q): Query<SubjectQuery>,
) -> Response {
    subject(&ui, &headers, &q.scope, &q.key).await
}

/// One subject's page: score, history chart, factors, events, any manual decision.
async fn subject(ui: &Ui, headers: &HeaderMap, scope: &str, key: &str) -> Response {
    let Some((_, session)) = ui.session(headers) else {
        return to_login();
    };
    let answer = match ui
        .get(
            &session,
            &format!("/v1/subjects/{}/{}", enc_segment(scope), enc_segment(key)),
        )
        .await
    {
        Ok(a) => a,
        Err(e) => {
            return page("Subject", Some(&session), &error_block(&[e])).into_response();
        }
    };
    let mut body = format!(
        r#"<div class="card"><b id="subject-score">{score}</b> ({level}, trend <span id="subject-trend">{trend}</span>){decision}</div><h2>Score history</h2>{chart}<h2>Factors</h2><table id="factors"><tr><th>factor</th><th>points</th></tr>"#,
        score = esc(&text_of(answer.f("score"))),
        level = esc(&text_of(answer.f("level"))),
        trend = esc(&text_of(answer.f("trend"))),
        decision = if answer.f("decision").is_null() {
            String::new()
        } else {
            format!(
                "; manual decision: {}",
                esc(&text_of(answer.f("decision").f("action")))
            )
        },
        chart = history_chart(
            answer
                .f("history")
                .as_array()
                .map_or(&[][..], Vec::as_slice)
        ),
    );
    for f in answer.f("factors").as_array().into_iter().flatten() {
        let _ = write!(
            body,
            r#"<tr data-factor="{c}"><td>{c}</td><td>{p}</td></tr>"#,
            c = esc(&text_of(f.f("code"))),
            p = esc(&text_of(f.f("points"))),
        );
    }
    body.push_str(r#"</table><h2>Events</h2><table id="events"><tr><th>when</th><th>event</th><th>severity</th><th>points</th></tr>"#);
    for e in answer.f("events").as_array().into_iter().flatten() {
        let _ = write!(
            body,
            r#"<tr data-event="{t}"><td>{at}</td><td>{t}</td><td>{severity}</td><td>{points}</td></tr>"#,
            at = esc(&time_of(e.f("at_ms").as_u64().unwrap_or(0))),
            t = esc(&text_of(e.f("event_type"))),
            severity = esc(&text_of(e.f("severity"))),
            points = esc(&text_of(e.f("points"))),
        );
    }
    body.push_str("</table>");
    page(&format!("{scope}:{key}"), Some(&session), &body).into_response()
}

async fn decisions(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let Some((_, session)) = ui.session(&headers) else {
        return to_login();
    };
    decisions_page(&ui, &session, &[]).await
}

async fn decisions_page(ui: &Ui, session: &Session, problems: &[String]) -> Response {
    let mut errors = problems.to_vec();
    let answer = ui.get_or_note(session, "/v1/decisions", &mut errors).await;
    let mut body = error_block(&errors);
    if session.admin {
        let _ = write!(
            body,
            r#"<form method="post" action="/ui/decisions" class="card" id="add-decision"><input type="hidden" name="csrf" value="{csrf}">
<label>Action <select name="action"><option>ban</option><option>challenge</option><option>throttle</option><option>allow</option></select></label>
<label>Scope <select name="scope"><option>ip</option><option>range</option><option>user</option><option>device</option><option>country</option><option>asn</option></select></label>
<label>Key <input name="key" required></label>
<label>Duration <input name="duration_seconds" value="1h" size="8" title="seconds, or with a unit: 10m, 1h, 7d"></label>
<label>Reason <input name="reason" required></label>
<button type="submit">Add decision</button></form>"#,
            csrf = esc(&session.csrf)
        );
    } else {
        body.push_str(r#"<p class="muted" id="read-only">Read-only: an admin token can add and remove decisions.</p>"#);
    }
    let in_force = answer.f("decisions").as_array().map_or(0, Vec::len);
    if in_force == 0 && errors.is_empty() {
        body.push_str(r#"<p id="no-decisions">No manual decisions in force. (Lifted and expired ones leave this list; edges drop them within a poll.)</p>"#);
    }
    body.push_str(r#"<table id="decisions"><tr><th>action</th><th>subject</th><th>reason</th><th>expires</th><th></th></tr>"#);
    for d in answer.f("decisions").as_array().into_iter().flatten() {
        let id = text_of(d.f("id"));
        let remove = if session.admin {
            format!(
                r#"<form method="post" action="/ui/decisions/{id_enc}/remove" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button>Remove</button></form>"#,
                id_enc = enc(&id),
                csrf = esc(&session.csrf)
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            r#"<tr data-decision-id="{id}"><td>{action}</td><td>{scope}:{key}</td><td>{reason}</td><td>{expires}</td><td>{remove}</td></tr>"#,
            id = esc(&id),
            action = esc(&text_of(d.f("action"))),
            scope = esc(&text_of(d.f("scope"))),
            key = esc(&text_of(d.f("key"))),
            reason = esc(&text_of(d.f("reason"))),
            expires = esc(&time_of(d.f("expires_at").as_u64().unwrap_or(0) * 1000)),
        );
    }
    body.push_str("</table>");
    page("Manual decisions", Some(session), &body).into_response()
}

/// A duration as people write it: seconds (`600`), or a number with a unit (`90s`, `10m`,
/// `1h`, `7d`), as `signalbox decisions add --duration` takes it.
fn duration_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (at, c) if c.is_ascii_alphabetic() => (text.get(..at)?, c),
        _ => (text, 's'),
    };
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    number.trim().parse::<u64>().ok()?.checked_mul(per)
}

#[derive(Deserialize)]
struct DecisionForm {
    csrf: String,
    action: String,
    scope: String,
    key: String,
    duration_seconds: String,
    reason: String,
}

async fn add_decision(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Form(form): Form<DecisionForm>,
) -> Response {
    let Some((_, session)) = ui.session(&headers) else {
        return to_login();
    };
    if !ui.form_allowed(&headers, &session, &form.csrf) {
        return (
            StatusCode::FORBIDDEN,
            "form refused: stale page or another origin",
        )
            .into_response();
    }
    let Some(duration) = duration_seconds(&form.duration_seconds) else {
        return decisions_page(
            &ui,
            &session,
            &["duration: seconds, or a number with a unit (10m, 1h, 7d)".to_owned()],
        )
        .await;
    };
    let decision = serde_json::json!({
        "action": form.action, "scope": form.scope, "key": form.key.trim(),
        "duration_seconds": duration, "reason": form.reason,
    });
    let (status, answer) = ui
        .call(&session, Method::POST, "/v1/decisions", Some(decision))
        .await;
    if status.is_success() {
        return Redirect::to("/ui/decisions").into_response();
    }
    let why = format!(
        "not added: {} {}",
        text_of(answer.f("field")),
        text_of(answer.f("message"))
    );
    let mut response = decisions_page(&ui, &session, &[why]).await;
    *response.status_mut() = status;
    response
}

async fn remove_decision(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some((_, session)) = ui.session(&headers) else {
        return to_login();
    };
    if !ui.form_allowed(&headers, &session, &form.csrf) {
        return (
            StatusCode::FORBIDDEN,
            "form refused: stale page or another origin",
        )
            .into_response();
    }
    let (status, answer) = ui
        .call(
            &session,
            Method::DELETE,
            &format!("/v1/decisions/{}", enc(&id)),
            None,
        )
        .await;
    if status.is_success() {
        return Redirect::to("/ui/decisions").into_response();
    }
    let mut response = decisions_page(
        &ui,
        &session,
        &[format!("not removed: {}", text_of(answer.f("message")))],
    )
    .await;
    *response.status_mut() = status;
    response
}

async fn log(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some((_, session)) = ui.session(&headers) else {
        return to_login();
    };
    let query = passthrough(
        &params,
        &["decision", "reason", "class", "route", "revision", "page"],
    );
    let mut errors = Vec::new();
    let answer = ui
        .get_or_note(
            &session,
            &format!("/v1/decisions/log?limit=100&{query}"),
            &mut errors,
        )
        .await;
    let mut body = error_block(&errors);
    let _ = write!(
        body,
        r#"<form method="get" class="card">{inputs}<button>Filter</button></form><p id="log-total">{total} records</p>
<table id="log"><tr><th>when</th><th>decision</th><th>score</th><th>class</th><th>request</th><th>revision</th><th>why</th></tr>"#,
        inputs = filter_inputs(
            &params,
            &[
                ("decision", "decision"),
                ("reason", "reason"),
                ("class", "class"),
                ("route", "route"),
                ("revision", "revision")
            ]
        ),
        total = esc(&text_of(answer.f("total"))),
    );
    for r in answer.f("records").as_array().into_iter().flatten() {
        let reasons: String = r
            .f("reasons")
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                format!(
                    r#"<li data-reason="{c}">{c} <b>{p:+}</b></li>"#,
                    c = esc(&text_of(x.f("code"))),
                    p = x.f("points").as_i64().unwrap_or(0)
                )
            })
            .collect();
        let rules: Vec<String> = r
            .f("rules")
            .as_array()
            .into_iter()
            .flatten()
            .map(text_of)
            .collect();
        let decision = text_of(r.f("decision"));
        let _ = write!(
            body,
            r#"<tr data-request="{id}"><td>{at}</td><td class="{d}">{d}</td><td>{score}</td><td>{class}</td><td>{method} {path}</td><td>{rev}</td>
<td><details><summary>explain</summary><ul>{reasons}</ul><p>rules: {rules}</p><p>decided by {by} on {node}; level {level}{shadow}{limited}</p></details></td></tr>"#,
            id = esc(&text_of(r.f("request_id"))),
            at = esc(&time_of(r.f("at_ms").as_u64().unwrap_or(0))),
            d = esc(&decision),
            score = esc(&text_of(r.f("score"))),
            class = esc(text_of(r.f("client")).split(';').next().unwrap_or_default()),
            method = esc(&text_of(r.f("method"))),
            path = esc(&text_of(r.f("path"))),
            rev = esc(&text_of(r.f("revision"))),
            rules = esc(&if rules.is_empty() {
                "none".to_owned()
            } else {
                rules.join(", ")
            }),
            node = esc(&text_of(r.f("node_id"))),
            by = match r.f("manual_decision").as_str() {
                Some(scope) => format!(
                    r#"<span data-manual="{s}">a manual decision on the {s}</span> (revision {rev} serving)"#,
                    s = esc(scope),
                    rev = esc(&text_of(r.f("revision"))),
                ),
                None => format!("revision {}", esc(&text_of(r.f("revision")))),
            },
            limited = if r.f("rate_limited").as_bool() == Some(true) {
                "; throttled by a rate budget"
            } else {
                ""
            },
            level = esc(&text_of(r.f("level"))),
            shadow = match r.f("shadow_decision").as_str() {
                Some(s) => format!("; shadow decision {}", esc(s)),
                None => String::new(),
            },
        );
    }
    body.push_str("</table>");
    page("Decision log", Some(&session), &body).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A dashboard router with one route that waits until `gate` has permits, behind the same
    /// [`bound`] every `/ui` route has.
    fn held(timeout: Duration, gate: Arc<tokio::sync::Semaphore>) -> Router {
        let ui = Arc::new(Ui::new(
            Router::new(),
            UiSettings {
                tokens: Tokens::default(),
                secure_cookies: false,
                public_origin: None,
                request_timeout: timeout,
            },
        ));
        Router::new()
            .route(
                "/ui/held",
                get(move || async move {
                    let _passed = gate.acquire().await;
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(ui, bound))
    }

    fn request() -> Request<Body> {
        Request::builder()
            .uri("/ui/held")
            .body(Body::empty())
            .unwrap()
    }

    /// Sends one request; fails the test rather than hang if it is held.
    async fn status_of(router: &Router) -> StatusCode {
        tokio::time::timeout(Duration::from_secs(10), router.clone().oneshot(request()))
            .await
            .expect("held: the bound let it through")
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_bound_are_answered_503_at_once() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let router = held(Duration::from_secs(3600), Arc::clone(&gate));
        let held_requests: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|_| tokio::spawn(router.clone().oneshot(request())))
            .collect();
        // Let every spawned request reach the handler (and hold its permit).
        for _ in 0..1_000 {
            tokio::task::yield_now().await;
        }
        let shed = tokio::time::timeout(Duration::from_secs(10), router.clone().oneshot(request()))
            .await
            .expect("held: the bound let it through")
            .unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        gate.add_permits(MAX_IN_FLIGHT + 1);
        for r in held_requests {
            assert_eq!(r.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        // The permits came back.
        assert_eq!(status_of(&router).await, StatusCode::OK);
    }

    #[test]
    fn durations_are_read_as_people_write_them() {
        assert_eq!(duration_seconds("600"), Some(600));
        assert_eq!(duration_seconds(" 10m "), Some(600));
        assert_eq!(duration_seconds("1h"), Some(3_600));
        assert_eq!(duration_seconds("7d"), Some(604_800));
        assert_eq!(duration_seconds("90s"), Some(90));
        for bad in ["", "h", "10x", "-5m", "1.5h", "99999999999999999999d"] {
            assert_eq!(duration_seconds(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_request_past_the_deadline_is_answered_503() {
        // The handler never finishes: whatever the machine's speed, the deadline answers.
        let router = held(
            Duration::from_millis(50),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        assert_eq!(status_of(&router).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
