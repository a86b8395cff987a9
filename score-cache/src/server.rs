//! The HTTP service (axum on tokio): routes, bearer-token scopes, limits, errors, metrics.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /v1/context?ip=&user=&device=` | view | the wire context answer for a request's subjects |
//! | `POST /v1/events` | ingest | a batch of events (all or nothing; ids make retries idempotent) |
//! | `POST /v1/decisions` | admin | a manual decision |
//! | `DELETE /v1/decisions/{id}` | admin | lift it |
//! | `GET /v1/decisions` | view | the decisions in force |
//! | `GET /v1/decisions/stream?since=CURSOR` | view | changes since a cursor (`0`: a snapshot) |
//! | `DELETE /v1/subjects/{scope}/{key}` | admin | erase a subject's data |
//! | `POST /v1/rate` | read | edge workers' rate-bucket counts; each bucket's total in its window |
//! | `GET /metrics`, `/healthz`, `/readyz` | none | Prometheus text, liveness, readiness |
//! | `/ui/…` | a session from a view, read or admin token | the dashboard (`crate::ui`) |
//!
//! `view` allows every `GET` and nothing else (people who look); `read` is an edge's: `view`
//! and its reports (fleet, decision log, rate counts); `admin` allows everything.
//!
//! Every error is JSON, `{"error": code, "message": …, "field": …}`, and never carries a
//! store's own message (those go to the log).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{BoxError, Json, Router};
use serde::Deserialize;
use signalbox_policy::Policy;
use signalbox_policy::scoring::ScoringSettings;
use signalbox_wire::{ContextAnswerV1, ScopeV1, StreamDecisionV1, SubjectContextV1};
use tokio::sync::{Mutex, RwLock};
use tower::ServiceBuilder;

use crate::active::ActiveSet;
use crate::auth::{Scope, Tokens};
use crate::metrics::Metrics;
use crate::model::{self, FieldError, IpKeying, SubjectKey};
use crate::store::{Store, StoreError};

/// How the service behaves (everything but the store and the bundle).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Who may call what.
    pub tokens: Tokens,
    /// How IP subjects are keyed.
    pub ip: IpKeying,
    /// Raw events are kept this many days.
    pub retention_days: u32,
    /// Log entries of lifted or expired decisions are kept this many days (a client whose
    /// cursor is older gets `410` and resyncs).
    pub tombstone_days: u32,
    /// Largest stream page, bytes of JSON (about).
    pub max_page_bytes: usize,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// Requests in flight at once; more are shed with 503.
    pub concurrency: usize,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Serve `GET /v1/noop` (the load run's baseline on the same stack).
    pub bench_routes: bool,
    /// Keys a pushed bundle must be signed with.
    pub bundle_keys: signalbox_policy::signing::TrustedKeys,
    /// Accept pushed bundles that are not signed (development only).
    pub allow_unsigned_bundles: bool,
    /// An edge that has not reported for this long is stale in `/v1/fleet`.
    pub fleet_stale_seconds: u64,
    /// Edges' verdict records are kept this many days.
    pub log_retention_days: u32,
    /// The dashboard's session cookie is `Secure` (the cache serves TLS).
    pub secure_cookies: bool,
    /// The origin browsers reach the dashboard at, behind a proxy (`--public-origin`).
    pub public_origin: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tokens: Tokens::default(),
            ip: IpKeying {
                ipv6_prefix: 64,
                hash_key: None,
            },
            retention_days: 30,
            tombstone_days: 7,
            max_page_bytes: 1 << 20,
            request_timeout: Duration::from_secs(10),
            concurrency: 1024,
            body_limit: 1 << 20,
            bench_routes: false,
            bundle_keys: signalbox_policy::signing::TrustedKeys::default(),
            allow_unsigned_bundles: false,
            fleet_stale_seconds: 120,
            log_retention_days: 14,
            secure_cookies: false,
            public_origin: None,
        }
    }
}

/// The service's state.
pub struct App<S> {
    store: S,
    /// The bundle whose thresholds and `scoring` apply: `--bundle` at start, then the pushed
    /// stable bundle once it is newer (every node adopts it on its follow tick).
    active_policy: std::sync::RwLock<(Arc<Policy>, Arc<ScoringSettings>)>,
    settings: Settings,
    active: RwLock<ActiveSet>,
    follow: Mutex<()>,
    /// Edge workers' rate-bucket counts (`POST /v1/rate`).
    rates: std::sync::Mutex<crate::rates::RateCounts>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Metrics,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl<S: Store> App<S> {
    /// The state for a store, a bundle (its thresholds and `scoring`) and settings.
    pub fn new(store: S, policy: Policy, settings: Settings) -> Arc<Self> {
        let scoring = Arc::new(policy.scoring().clone());
        Arc::new(Self {
            store,
            active_policy: std::sync::RwLock::new((Arc::new(policy), scoring)),
            settings,
            active: RwLock::new(ActiveSet::default()),
            follow: Mutex::new(()),
            rates: std::sync::Mutex::new(crate::rates::RateCounts::default()),
            metrics: Metrics::default(),
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The bundle in force here.
    pub fn policy(&self) -> Arc<Policy> {
        match self.active_policy.read() {
            Ok(g) => Arc::clone(&g.0),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().0),
        }
    }

    /// Its `scoring` settings.
    pub fn scoring(&self) -> Arc<ScoringSettings> {
        match self.active_policy.read() {
            Ok(g) => Arc::clone(&g.1),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().1),
        }
    }

    /// Adopts the pushed stable bundle when it is newer than the one in force (verified again,
    /// as every bundle this node uses is). Called after a push or promote and on every follow
    /// tick, so every node on one store moves to it.
    pub async fn adopt_pushed_bundle(&self) -> Result<(), ApiError> {
        let (_, state) = self.bundle_state().await?;
        let Some(stable) = state.stable else {
            return Ok(());
        };
        if stable.revision <= self.policy().revision() {
            return Ok(());
        }
        match crate::bundles::verify(
            &stable.text,
            &self.settings.bundle_keys,
            self.settings.allow_unsigned_bundles,
            now_ms() / 1000,
            0,
        ) {
            Ok((_, policy)) => {
                let scoring = Arc::new(policy.scoring().clone());
                let revision = policy.revision();
                if let Ok(mut g) = self.active_policy.write() {
                    *g = (Arc::new(policy), scoring);
                }
                tracing::info!(
                    revision,
                    "scoring and thresholds now from the pushed stable bundle"
                );
            }
            Err(why) => {
                tracing::warn!(%why, "the stored stable bundle no longer verifies here; keeping the one in force")
            }
        }
        Ok(())
    }

    /// Brings the in-memory decisions up to the store's log (after a compaction the client
    /// was behind, from scratch).
    pub async fn follow(&self) -> Result<(), StoreError> {
        let _one = self.follow.lock().await;
        let bounds = self.store.log_bounds().await?;
        let mut from = self.active.read().await.applied_seq;
        if from < bounds.compacted_through {
            *self.active.write().await = ActiveSet::default();
            from = 0;
        }
        loop {
            let page = self.store.log_after(from, 10_000).await?;
            let mut active = self.active.write().await;
            active.apply(&page.entries);
            from = active.applied_seq;
            if !page.more {
                active.caught_up_to(bounds.last_seq);
                break;
            }
        }
        self.metrics
            .set_active_decisions(self.active.read().await.len());
        Ok(())
    }

    /// One retention sweep.
    pub async fn purge(&self) -> Result<crate::store::PurgeOutcome, StoreError> {
        let now = now_ms();
        let day_ms = 86_400_000u64;
        let records = self
            .store
            .purge_records(now.saturating_sub(u64::from(self.settings.log_retention_days) * day_ms))
            .await?;
        if records > 0 {
            tracing::info!(records, "decision log records past retention removed");
        }
        self.store
            .purge(
                now.saturating_sub(u64::from(self.settings.retention_days) * day_ms),
                (now / 1000).saturating_sub(u64::from(self.settings.tombstone_days) * 86_400),
            )
            .await
    }
}

/// Follows the log every `every` and sweeps retention hourly, until the process ends.
pub fn spawn_background<S: Store>(app: &Arc<App<S>>, every: Duration) {
    let follower = Arc::clone(app);
    tokio::spawn(async move {
        loop {
            if let Err(e) = follower.follow().await {
                tracing::warn!(error = %e, "following the decision log failed");
            }
            if let Err(e) = follower.adopt_pushed_bundle().await {
                tracing::warn!(error = ?e, "reading the pushed bundle failed");
            }
            tokio::time::sleep(every).await;
        }
    });
    let sweeper = Arc::clone(app);
    tokio::spawn(async move {
        loop {
            match sweeper.purge().await {
                Ok(o) => tracing::info!(
                    events = o.events,
                    log_entries = o.log_entries,
                    "retention sweep"
                ),
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
            tokio::time::sleep(Duration::from_secs(3_600)).await;
        }
    });
}

/// Every error a client can see.
#[derive(Debug)]
pub enum ApiError {
    /// 400 naming the field.
    BadRequest(FieldError),
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden(Scope),
    /// 404.
    NotFound(&'static str),
    /// 410: the cursor is older than the log keeps.
    Gone,
    /// 413.
    TooLarge,
    /// 409: a pushed bundle was refused (its reason), or there is no canary to promote.
    Conflict(String),
    /// 503: the store failed (logged), or the service is shedding load.
    Unavailable(&'static str),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store");
        ApiError::Unavailable("the store is unavailable; retry")
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::BadRequest(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, field) = match self {
            ApiError::BadRequest(e) => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                e.message,
                Some(e.field),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required".to_owned(),
                None,
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this token lacks the {} scope", scope.as_str()),
                None,
            ),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such {what}"),
                None,
            ),
            ApiError::Gone => (
                StatusCode::GONE,
                "cursor_too_old",
                "the log no longer reaches this cursor; resync from since=0".to_owned(),
                None,
            ),
            ApiError::Conflict(why) => (StatusCode::CONFLICT, "refused", why, None),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the request body is too large".to_owned(),
                None,
            ),
            ApiError::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                why.to_owned(),
                None,
            ),
        };
        let body = match field {
            Some(f) => serde_json::json!({"error": code, "message": message, "field": f}),
            None => serde_json::json!({"error": code, "message": message}),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Parses a JSON body, naming the field that failed.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        let inner = e.into_inner();
        ApiError::BadRequest(FieldError::new(field, inner.to_string()))
    })
}

fn body_of(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        _ => ApiError::BadRequest(FieldError::new("body", "unreadable request body")),
    })
}

/// The largest bundle push (`PUT /v1/bundle`, `PUT /v1/bundle/canary`), bytes: read only
/// after the token is checked for admin scope, so an anonymous request costs no more than the
/// API's own limit.
pub const BUNDLE_BODY_LIMIT: usize = 64 << 20;

/// A bundle push's body, read only now (after the caller's scope was checked).
async fn push_body(body: axum::body::Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, BUNDLE_BODY_LIMIT)
        .await
        .map_err(|_| ApiError::TooLarge)
}

/// The router with every route, limit and the metrics layer.
pub fn router<S: Store>(app: Arc<App<S>>) -> Router {
    let settings = &app.settings;
    let mut v1 = Router::new()
        .route("/v1/context", get(context::<S>))
        .route(
            "/v1/decisions",
            post(add_decision::<S>).get(list_decisions::<S>),
        )
        .route("/v1/decisions/{id}", delete(delete_decision::<S>))
        .route("/v1/decisions/stream", get(stream::<S>))
        // A signed bundle with its lists is megabytes (the default one: ~1.6 MB): bundle
        // pushes read their body themselves, up to BUNDLE_BODY_LIMIT, after the admin check.
        .route("/v1/bundle", get(get_bundle::<S>).put(put_bundle::<S>))
        .route(
            "/v1/bundle/canary",
            axum::routing::put(put_canary::<S>).delete(abort_canary::<S>),
        )
        .route("/v1/bundle/promote", post(promote_canary::<S>))
        .route("/v1/fleet", get(fleet::<S>).post(report::<S>))
        .route(
            "/v1/decisions/log",
            get(read_log::<S>).post(append_log::<S>),
        )
        .route("/v1/scores", get(scores::<S>))
        .route(
            "/v1/subjects/{scope}/{key}",
            get(subject::<S>).delete(erase_subject::<S>),
        )
        .route("/v1/events", get(list_events::<S>).post(events::<S>))
        .route("/v1/rate", post(rate::<S>));
    if settings.bench_routes {
        v1 = v1.route("/v1/noop", get(noop::<S>));
    }
    let limits = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|e: BoxError| async move {
            if e.is::<tower::timeout::error::Elapsed>() {
                ApiError::Unavailable("the request took too long")
            } else {
                ApiError::Unavailable("overloaded; retry")
            }
        }))
        .load_shed()
        .concurrency_limit(settings.concurrency.max(1))
        .timeout(settings.request_timeout);
    let ui = crate::ui::UiSettings {
        tokens: settings.tokens.clone(),
        secure_cookies: settings.secure_cookies
            || settings
                .public_origin
                .as_deref()
                .is_some_and(|o| o.starts_with("https://")),
        public_origin: settings.public_origin.clone(),
        request_timeout: settings.request_timeout,
    };
    let api = v1
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(limits)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            observe::<S>,
        ))
        .with_state(app);
    // The dashboard reads through the API router itself (crate::ui).
    api.clone().merge(crate::ui::routes(api, ui))
}

/// A connection's client address, as the listener saw it (plain TCP or TLS): serve the router
/// with `into_make_service_with_connect_info::<PeerAddr>()` and handlers find it in
/// `ConnectInfo<PeerAddr>` (the dashboard's login limiter does).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The origin a `--public-origin` value names, normalised as browsers send `Origin` (lower
/// case, no default port: `https://host[:port]`), or why it is not one: http or https, a host,
/// no path, query or user.
pub fn public_origin_of(raw: &str) -> Result<String, String> {
    let uri: axum::http::Uri = raw
        .parse()
        .map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("{raw:?}: an origin is http:// or https://"));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{raw:?}: an origin names a host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("{raw:?}: an origin has no user part"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{raw:?}: an origin has no path or query (the dashboard is at /ui under it)"
        ));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = match authority.port_u16() {
        Some(port) if port != default_port => format!(":{port}"),
        _ => String::new(),
    };
    Ok(format!(
        "{scheme}://{}{port}",
        authority.host().to_ascii_lowercase()
    ))
}

async fn observe<S: Store>(
    State(app): State<Arc<App<S>>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    app.metrics
        .observe_request(&route, response.status().as_u16(), started.elapsed());
    response
}

impl<S: Store> App<S> {
    fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        match self.settings.tokens.scopes_of(presented.trim()) {
            None => Err(ApiError::Unauthorized),
            Some(scopes) if scopes.allows(scope) => Ok(()),
            Some(_) => Err(ApiError::Forbidden(scope)),
        }
    }

    fn subject_context(
        &self,
        state: Option<&crate::scoring::SubjectState>,
        decision: Option<&model::Decision>,
        now_ms: u64,
    ) -> SubjectContextV1 {
        let view = state.map(|s| s.view(now_ms, &self.scoring()));
        let score = view.as_ref().map_or(0, |v| v.score);
        SubjectContextV1 {
            score: u32::from(score),
            level: Some(self.policy().level_of(score).as_str().to_owned()),
            trend: view.as_ref().map(|v| v.trend),
            factors: view
                .map(|v| v.factors.into_iter().map(|(code, _)| code).collect())
                .unwrap_or_default(),
            decision: decision.map(model::Decision::manual),
        }
    }
}

/// `POST /v1/rate`: edge workers' counts per rate bucket (`crate::rates`). An edge's report:
/// `read` scope (a `view` token, a person's, cannot post counts).
async fn rate<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<signalbox_wire::RateTotalsV1>, ApiError> {
    app.authorize(&headers, Scope::Read)?;
    let asked: signalbox_wire::RateCountsV1 = parse_json(&body_of(body)?)?;
    if asked.counts.len() > 1_000 {
        return Err(FieldError::new("counts", "at most 1,000 buckets per report").into());
    }
    for (i, c) in asked.counts.iter().enumerate() {
        if c.key.is_empty() || c.key.len() > 64 {
            return Err(FieldError::new(format!("counts[{i}].key"), "1..=64 bytes").into());
        }
        if c.per_seconds == 0 || c.per_seconds > 2_592_000 {
            return Err(FieldError::new(
                format!("counts[{i}].per_seconds"),
                "1..=2592000 (30 days)",
            )
            .into());
        }
        // An edge reports what it counted since its last report: one request at least, and
        // never millions at once.
        if c.count == 0 || c.count > 1_000_000 {
            return Err(FieldError::new(format!("counts[{i}].count"), "1..=1000000").into());
        }
    }
    let now = now_ms();
    let mut rates = app
        .rates
        .lock()
        .map_err(|_| ApiError::Unavailable("rate counts unavailable"))?;
    let (totals, window_left_ms) = asked
        .counts
        .iter()
        .map(|c| rates.add(&c.key, c.per_seconds, c.count, now))
        .unzip();
    Ok(Json(signalbox_wire::RateTotalsV1 {
        totals,
        window_left_ms,
    }))
}

#[derive(Debug, Deserialize)]
struct ContextQuery {
    ip: Option<String>,
    user: Option<String>,
    device: Option<String>,
}

async fn context<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    query: Result<Query<ContextQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ContextAnswerV1>, ApiError> {
    app.authorize(&headers, Scope::View)?;
    let Query(q) =
        query.map_err(|e| ApiError::BadRequest(FieldError::new("query", e.body_text())))?;
    if q.ip.is_none() && q.user.is_none() && q.device.is_none() {
        return Err(FieldError::new("ip", "ask about at least one of ip, user, device").into());
    }
    let ip =
        q.ip.as_deref()
            .map(|raw| model::subject_of("ip", "ip", raw, &app.settings.ip).map(|k| (raw, k)))
            .transpose()
            .map_err(|e| FieldError::new("ip", e.message))?;
    let user = q
        .user
        .as_deref()
        .map(|k| model::subject_of("user", "user", k, &app.settings.ip))
        .transpose()
        .map_err(|e| FieldError::new("user", e.message))?;
    let device = q
        .device
        .as_deref()
        .map(|k| model::subject_of("device", "device", k, &app.settings.ip))
        .transpose()
        .map_err(|e| FieldError::new("device", e.message))?;
    let keys: Vec<SubjectKey> = [ip.as_ref().map(|(_, k)| k), user.as_ref(), device.as_ref()]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut states = app.store.subjects(keys).await?.into_iter();
    let now = now_ms();
    let now_s = now / 1000;
    let active = app.active.read().await;
    let mut answer = ContextAnswerV1 {
        ttl_seconds: app.scoring().context_ttl_seconds,
        ..ContextAnswerV1::default()
    };
    if let Some((raw, key)) = &ip {
        let state = states.next().flatten();
        let addr = raw
            .parse::<std::net::IpAddr>()
            .ok()
            .or_else(|| raw.parse::<ipnet::IpNet>().ok().map(|n| n.addr()));
        let decision = active.for_ip(addr, &key.key, now_s);
        answer.ip = Some(app.subject_context(state.as_ref(), decision, now));
    }
    if let Some(key) = &user {
        let state = states.next().flatten();
        let decision = active.for_key(ScopeV1::User, &key.key, now_s);
        answer.user = Some(app.subject_context(state.as_ref(), decision, now));
    }
    if let Some(key) = &device {
        let state = states.next().flatten();
        let decision = active.for_key(ScopeV1::Device, &key.key, now_s);
        answer.device = Some(app.subject_context(state.as_ref(), decision, now));
    }
    Ok(Json(answer))
}

async fn noop<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    _query: Query<ContextQuery>,
) -> Result<Json<ContextAnswerV1>, ApiError> {
    app.authorize(&headers, Scope::View)?;
    Ok(Json(ContextAnswerV1 {
        ip: Some(SubjectContextV1::default()),
        ttl_seconds: app.scoring().context_ttl_seconds,
        ..ContextAnswerV1::default()
    }))
}

async fn events<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::Ingest)?;
    let batch: model::EventBatchIn = parse_json(&body_of(body)?)?;
    let now = now_ms();
    let events =
        model::validate_batch(batch, now, app.scoring().severity_points, &app.settings.ip)?;
    let outcome = app
        .store
        .ingest(events, now, Arc::clone(&app.scoring()))
        .await?;
    app.metrics
        .count_events(outcome.accepted, outcome.duplicates);
    Ok(Json(serde_json::json!({
        "accepted": outcome.accepted,
        "duplicates": outcome.duplicates,
    })))
}

/// A new decision id: time-ordered, 128 bits.
fn new_id(now_ms: u64) -> Result<String, ApiError> {
    let mut random = [0u8; 10];
    getrandom::fill(&mut random).map_err(|_| ApiError::Unavailable("no randomness"))?;
    let tail: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{now_ms:012x}{tail}"))
}

async fn add_decision<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    app.authorize(&headers, Scope::Admin)?;
    let input: model::DecisionIn = parse_json(&body_of(body)?)?;
    let now = now_ms();
    let decision = model::validate_decision(input, new_id(now)?, now / 1000, &app.settings.ip)?;
    let seq = app.store.add_decision(decision.clone()).await?;
    if let Err(e) = app.follow().await {
        tracing::warn!(error = %e, "following after a write");
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"seq": seq, "decision": decision})),
    ))
}

async fn delete_decision<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::Admin)?;
    let seq = app
        .store
        .delete_decision(id.clone(), now_ms() / 1000)
        .await?
        .ok_or(ApiError::NotFound("active decision"))?;
    if let Err(e) = app.follow().await {
        tracing::warn!(error = %e, "following after a write");
    }
    Ok(Json(
        serde_json::json!({"id": id, "seq": seq, "removed": true}),
    ))
}

async fn list_decisions<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::View)?;
    app.follow().await?;
    let now = now_ms() / 1000;
    let active = app.active.read().await;
    let list: Vec<&model::Decision> = active
        .all()
        .map(|(_, d)| d)
        .filter(|d| d.expires_at > now)
        .collect();
    Ok(Json(serde_json::json!({"decisions": list})))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    since: Option<String>,
}

/// A stream cursor: a log position, or a snapshot being paged (`snapshot.<at>.<after>`: the
/// snapshot reflects log position `at`, and decisions added up to `after` were sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// After this log sequence.
    Log(u64),
    /// Paging a snapshot taken at `at`, sent through add sequence `after`.
    Snapshot {
        /// The snapshot's log position.
        at: u64,
        /// Sent through this add sequence.
        after: u64,
    },
}

impl Cursor {
    /// Parses a cursor as `since` carries it.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(rest) = text.strip_prefix("snapshot.") {
            let (at, after) = rest.split_once('.')?;
            return Some(Cursor::Snapshot {
                at: at.parse().ok()?,
                after: after.parse().ok()?,
            });
        }
        text.parse().ok().map(Cursor::Log)
    }

    /// As the page's `cursor`.
    pub fn render(self) -> String {
        match self {
            Cursor::Log(n) => n.to_string(),
            Cursor::Snapshot { at, after } => format!("snapshot.{at}.{after}"),
        }
    }
}

/// A stream page being written: each decision is serialized once, straight into the body
/// (a `DecisionPageV1` in JSON), until about `max_bytes` (at least one decision per page).
struct PageWriter {
    body: Vec<u8>,
    count: usize,
    max_bytes: usize,
}

impl PageWriter {
    fn new(max_bytes: usize) -> Self {
        let mut body = Vec::with_capacity(max_bytes.min(4 << 20) + 256);
        body.extend_from_slice(b"{\"decisions\":[");
        Self {
            body,
            count: 0,
            max_bytes,
        }
    }

    /// Adds entries until the page is full: the last sequence added, and whether any was left.
    fn fill(
        &mut self,
        entries: impl Iterator<Item = (u64, StreamDecisionV1)>,
    ) -> (Option<u64>, bool) {
        let mut last = None;
        for (seq, d) in entries {
            if self.count > 0 && self.body.len() >= self.max_bytes {
                return (last, true);
            }
            if self.count > 0 {
                self.body.push(b',');
            }
            if serde_json::to_writer(&mut self.body, &d).is_err() {
                continue;
            }
            self.count += 1;
            last = Some(seq);
        }
        (last, false)
    }

    fn finish(mut self, cursor: &str, more: bool) -> Vec<u8> {
        self.body.extend_from_slice(b"],\"cursor\":");
        let _ = serde_json::to_writer(&mut self.body, cursor);
        if more {
            self.body.extend_from_slice(b",\"more\":true");
        }
        self.body.push(b'}');
        self.body
    }
}

async fn stream<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    app.authorize(&headers, Scope::View)?;
    let cursor = match q.since.as_deref() {
        None => Cursor::Log(0),
        Some(text) => Cursor::parse(text)
            .ok_or_else(|| FieldError::new("since", "a cursor from a previous page, or 0"))?,
    };
    let bounds = app.store.log_bounds().await?;
    let etag = format!("\"{}-{}\"", cursor.render(), bounds.last_seq);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let max = app.settings.max_page_bytes;
    let mut page = PageWriter::new(max);
    let more;
    let next = match cursor {
        Cursor::Log(0) | Cursor::Snapshot { .. } => {
            let (at, after) = match cursor {
                Cursor::Snapshot { at, after } => (at, after),
                Cursor::Log(_) => {
                    app.follow().await?;
                    (app.active.read().await.applied_seq, 0)
                }
            };
            if at < bounds.compacted_through {
                return Err(ApiError::Gone);
            }
            let active = app.active.read().await;
            let now = now_ms() / 1000;
            let entries = active
                .added_between(after, at)
                .filter(|(_, d)| d.expires_at > now)
                .map(|(seq, d)| {
                    let wire = StreamDecisionV1 {
                        id: d.id.clone(),
                        scope: d.scope,
                        key: d.key.clone(),
                        decision: Some(d.manual()),
                        removed: false,
                    };
                    (seq, wire)
                });
            let (last, left) = page.fill(entries);
            more = left;
            if more {
                Cursor::Snapshot {
                    at,
                    after: last.unwrap_or(after),
                }
            } else {
                Cursor::Log(at)
            }
        }
        Cursor::Log(after) => {
            if after < bounds.compacted_through || after > bounds.last_seq {
                return Err(ApiError::Gone);
            }
            let log = app.store.log_after(after, 1_000).await?;
            let entries = log.entries.iter().map(|e| (e.seq, e.to_wire()));
            let (last, left) = page.fill(entries);
            more = left || log.more;
            Cursor::Log(last.unwrap_or(after))
        }
    };
    let body = page.finish(&next.render(), more);
    Ok((
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        body,
    )
        .into_response())
}

async fn erase_subject<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Path((scope, key)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::Admin)?;
    let subject = model::stored_subject_of("subject", &scope, &key, &app.settings.ip)?;
    let erased = app.store.erase_subject(subject).await?;
    Ok(Json(serde_json::json!({"erased": erased})))
}

async fn readyz<S: Store>(State(app): State<Arc<App<S>>>) -> Result<&'static str, ApiError> {
    app.store.ping().await?;
    Ok("ready\n")
}

async fn metrics<S: Store>(State(app): State<Arc<App<S>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

impl<S: Store> App<S> {
    async fn bundle_state(
        &self,
    ) -> Result<(Option<Vec<u8>>, crate::bundles::BundleState), ApiError> {
        let raw = self
            .store
            .get_blob(crate::bundles::STATE_KEY.to_owned())
            .await?;
        let state = match &raw {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| StoreError::Format(format!("bundle state: {e}")))?,
            None => crate::bundles::BundleState::default(),
        };
        Ok((raw, state))
    }

    /// Changes the bundle state with compare-and-swap (another node may change it at once).
    async fn update_bundles(
        &self,
        change: impl Fn(&crate::bundles::BundleState) -> Result<crate::bundles::BundleState, ApiError>,
    ) -> Result<crate::bundles::BundleState, ApiError> {
        for _ in 0..8 {
            let (raw, state) = self.bundle_state().await?;
            let next = change(&state)?;
            let bytes = serde_json::to_vec(&next)
                .map_err(|e| StoreError::Format(format!("bundle state: {e}")))?;
            if self
                .store
                .swap_blob(crate::bundles::STATE_KEY.to_owned(), raw, bytes)
                .await?
            {
                return Ok(next);
            }
        }
        Err(ApiError::Unavailable("bundle state contended; retry"))
    }

    fn verify_pushed(
        &self,
        text: &str,
        above: u64,
    ) -> Result<crate::bundles::StoredBundle, ApiError> {
        crate::bundles::verify(
            text,
            &self.settings.bundle_keys,
            self.settings.allow_unsigned_bundles,
            now_ms() / 1000,
            above,
        )
        .map(|(stored, _)| stored)
        .map_err(ApiError::Conflict)
    }
}

fn bundle_summary(state: &crate::bundles::BundleState) -> serde_json::Value {
    serde_json::json!({
        "stable_revision": state.stable.as_ref().map(|b| b.revision),
        "canary_revision": state.canary.as_ref().map(|(b, _)| b.revision),
        "canary_percent": state.canary.as_ref().map(|(_, p)| *p),
    })
}

async fn get_bundle<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize(&headers, Scope::View)?;
    let (_, state) = app.bundle_state().await?;
    let etag = state.etag();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let envelope = state
        .envelope()
        .ok_or(ApiError::NotFound("bundle (none pushed yet)"))?;
    Ok(([(header::ETAG, etag)], Json(envelope)).into_response())
}

async fn put_bundle<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::Admin)?;
    let body = push_body(body).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| FieldError::new("body", "a bundle is UTF-8 JSON"))?
        .to_owned();
    let state = app
        .update_bundles(|state| {
            let stored = app.verify_pushed(&text, state.highest())?;
            Ok(crate::bundles::BundleState {
                offered: stored.revision,
                stable: Some(stored),
                canary: None,
            })
        })
        .await?;
    tracing::info!(revision = ?state.stable.as_ref().map(|b| b.revision), "stable bundle pushed");
    app.adopt_pushed_bundle().await?;
    Ok(Json(bundle_summary(&state)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryIn {
    bundle: serde_json::Value,
    percent: u8,
}

async fn put_canary<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::Admin)?;
    let input: CanaryIn = parse_json(&push_body(body).await?)?;
    if !(1..=100).contains(&input.percent) {
        return Err(FieldError::new("percent", "must be 1..=100").into());
    }
    let text = match input.bundle {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    let state = app
        .update_bundles(|state| {
            let Some(stable) = &state.stable else {
                return Err(ApiError::Conflict(
                    "push a stable bundle before a canary".into(),
                ));
            };
            let stored = app.verify_pushed(&text, state.highest().max(stable.revision))?;
            Ok(crate::bundles::BundleState {
                offered: stored.revision,
                stable: state.stable.clone(),
                canary: Some((stored, input.percent)),
            })
        })
        .await?;
    Ok(Json(bundle_summary(&state)))
}

async fn promote_canary<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::Admin)?;
    let state = app
        .update_bundles(|state| match &state.canary {
            Some((canary, _)) => Ok(crate::bundles::BundleState {
                stable: Some(canary.clone()),
                canary: None,
                offered: state.highest(),
            }),
            None => Err(ApiError::Conflict("no canary to promote".into())),
        })
        .await?;
    app.adopt_pushed_bundle().await?;
    Ok(Json(bundle_summary(&state)))
}

async fn abort_canary<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::Admin)?;
    let state = app
        .update_bundles(|state| {
            if state.canary.is_none() {
                return Err(ApiError::Conflict("no canary to abort".into()));
            }
            Ok(crate::bundles::BundleState {
                stable: state.stable.clone(),
                canary: None,
                offered: state.highest(),
            })
        })
        .await?;
    Ok(Json(bundle_summary(&state)))
}

async fn report<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<StatusCode, ApiError> {
    app.authorize(&headers, Scope::Read)?;
    let report: signalbox_wire::FleetReportV1 = parse_json(&body_of(body)?)?;
    if report.node_id.is_empty() || report.node_id.len() > model::MAX_KEY_BYTES {
        return Err(FieldError::new("node_id", "1..=256 bytes").into());
    }
    if report.last_error.as_ref().is_some_and(|e| e.len() > 2_048) {
        return Err(FieldError::new("last_error", "at most 2,048 bytes").into());
    }
    let key = format!("{}{}", crate::bundles::FLEET_PREFIX, report.node_id);
    let entry = crate::bundles::FleetEntry {
        report,
        received_at: now_ms() / 1000,
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| StoreError::Format(e.to_string()))?;
    for _ in 0..8 {
        let current = app.store.get_blob(key.clone()).await?;
        if app
            .store
            .swap_blob(key.clone(), current, bytes.clone())
            .await?
        {
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    Err(ApiError::Unavailable("fleet report contended; retry"))
}

async fn fleet<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::View)?;
    let now = now_ms() / 1000;
    let (_, state) = app.bundle_state().await?;
    let nodes: Vec<serde_json::Value> = app
        .store
        .list_blobs(crate::bundles::FLEET_PREFIX.to_owned())
        .await?
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice::<crate::bundles::FleetEntry>(&bytes).ok())
        .map(|e| {
            let stale = now.saturating_sub(e.received_at) > app.settings.fleet_stale_seconds;
            serde_json::json!({
                "node_id": e.report.node_id,
                "stable_revision": e.report.stable_revision,
                "canary_revision": e.report.canary_revision,
                "last_error": e.report.last_error,
                "clock_skew_ms": e.report.clock_skew_ms,
                "reported_at": e.report.reported_at,
                "last_seen": e.received_at,
                "stale": stale,
            })
        })
        .collect();
    let mut out = bundle_summary(&state);
    if let Some(map) = out.as_object_mut() {
        map.insert("nodes".into(), serde_json::Value::Array(nodes));
    }
    Ok(Json(out))
}

type Params = std::collections::HashMap<String, String>;

/// A query parameter parsed as `T`, naming it when it does not parse.
fn param<T: std::str::FromStr>(
    params: &Params,
    name: &str,
    what: &str,
) -> Result<Option<T>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| ApiError::BadRequest(FieldError::new(name, format!("must be {what}"))))
        })
        .transpose()
}

fn page_and_limit(params: &Params) -> Result<(usize, usize), ApiError> {
    let page = param::<usize>(params, "page", "a page number from 1")?.unwrap_or(1);
    let limit = param::<usize>(params, "limit", "1..=200")?.unwrap_or(50);
    if page == 0 {
        return Err(FieldError::new("page", "must be a page number from 1").into());
    }
    if !(1..=200).contains(&limit) {
        return Err(FieldError::new("limit", "must be 1..=200").into());
    }
    Ok((page, limit))
}

fn trend_name(t: signalbox_wire::TrendV1) -> &'static str {
    match t {
        signalbox_wire::TrendV1::Rising => "rising",
        signalbox_wire::TrendV1::Steady => "steady",
        signalbox_wire::TrendV1::Falling => "falling",
    }
}

/// `GET /v1/scores`: subjects ranked by risk, filtered, paged, with a summary of all that
/// match. A full scan of the subjects (fine for thousands; an index is future work).
async fn scores<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::View)?;
    let min = param::<u8>(&params, "min_score", "0..=100")?.unwrap_or(0);
    let max = param::<u8>(&params, "max_score", "0..=100")?.unwrap_or(100);
    if min > 100 || max > 100 || min > max {
        return Err(FieldError::new("min_score", "0..=100 and not above max_score").into());
    }
    let level = params.get("level").map(String::as_str);
    if let Some(l) = level
        && !["low", "medium", "high", "critical"].contains(&l)
    {
        return Err(FieldError::new("level", "one of low, medium, high, critical").into());
    }
    let trend = params.get("trend").map(String::as_str);
    if let Some(t) = trend
        && !["rising", "steady", "falling"].contains(&t)
    {
        return Err(FieldError::new("trend", "one of rising, steady, falling").into());
    }
    let search = params.get("search").map(|s| s.to_ascii_lowercase());
    let (page, limit) = page_and_limit(&params)?;
    let now = now_ms();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut scored: Vec<(u8, serde_json::Value)> = app
        .store
        .all_subjects()
        .await?
        .into_iter()
        .filter_map(|(key, state)| {
            let view = state.view(now, &app.scoring());
            let lvl = app.policy().level_of(view.score).as_str();
            let keep = view.score >= min
                && view.score <= max
                && level.is_none_or(|l| l == lvl)
                && trend.is_none_or(|t| t == trend_name(view.trend))
                && search
                    .as_ref()
                    .is_none_or(|q| key.key.to_ascii_lowercase().contains(q.as_str()));
            keep.then(|| {
                (
                    view.score,
                    serde_json::json!({
                        "scope": model::scope_name(key.scope), "key": key.key, "score": view.score,
                        "level": lvl, "trend": trend_name(view.trend),
                        "factors": view.factors.iter().map(|(c, p)| serde_json::json!({"code": c, "points": p})).collect::<Vec<_>>(),
                        "last_event_ms": view.last_event_ms,
                    }),
                )
            })
        })
        .collect();
    scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    let total = scored.len();
    let sum: u64 = scored.iter().map(|(s, _)| u64::from(*s)).sum();
    let count_level = |l: &str| {
        scored
            .iter()
            .filter(|(s, _)| app.policy().level_of(*s).as_str() == l)
            .count()
    };
    let (high, critical) = (count_level("high"), count_level("critical"));
    rows.extend(
        scored
            .into_iter()
            .skip((page - 1).saturating_mul(limit))
            .take(limit)
            .map(|(_, v)| v),
    );
    Ok(Json(serde_json::json!({
        "subjects": rows,
        "page": page, "limit": limit, "total": total,
        "summary": {
            "average_score": if total == 0 { 0.0 } else { sum as f64 / total as f64 },
            "high_risk": high, "critical_risk": critical,
        },
    })))
}

/// `GET /v1/subjects/{scope}/{key}`: score, factors with points, score history (the score
/// just after each stored event, replayed), recent events and the decision in force.
async fn subject<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Path((scope, key)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::View)?;
    let subject = model::stored_subject_of("subject", &scope, &key, &app.settings.ip)?;
    let state = app
        .store
        .subjects(vec![subject.clone()])
        .await?
        .into_iter()
        .next()
        .flatten();
    let mut events = app.store.events_of(subject.clone(), 500).await?;
    let now = now_ms();
    let view = state.unwrap_or_default().view(now, &app.scoring());
    events.sort_by_key(|e| (e.at_ms, e.received_ms));
    let mut replay = crate::scoring::SubjectState::default();
    let history: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            let one = [crate::scoring::Event {
                event_type: &e.event_type,
                points: e.points,
                at_ms: e.at_ms,
            }];
            replay.apply(&one, e.at_ms, &app.scoring());
            serde_json::json!({"at_ms": e.at_ms, "score": replay.view(e.at_ms, &app.scoring()).score})
        })
        .collect();
    events.reverse();
    events.truncate(50);
    let active = app.active.read().await;
    let decision = match subject.scope {
        ScopeV1::Ip => active.for_ip(key.parse().ok(), &subject.key, now / 1000),
        other => active.for_key(other, &subject.key, now / 1000),
    };
    Ok(Json(serde_json::json!({
        "scope": model::scope_name(subject.scope), "key": subject.key,
        "score": view.score, "level": app.policy().level_of(view.score).as_str(),
        "trend": trend_name(view.trend),
        "factors": view.factors.iter().map(|(c, p)| serde_json::json!({"code": c, "points": p})).collect::<Vec<_>>(),
        "history": history,
        "events": events,
        "decision": decision,
    })))
}

/// `GET /v1/events?subject=scope:key&type=&severity=&from=&to=&page=&limit=`, newest first.
async fn list_events<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::View)?;
    let subjects: Vec<SubjectKey> = match params.get("subject") {
        Some(text) => {
            let (scope, key) = text
                .split_once(':')
                .ok_or_else(|| FieldError::new("subject", "scope:key, e.g. user:alice"))?;
            vec![
                model::subject_of("subject", scope, key, &app.settings.ip)
                    .map_err(|e| FieldError::new("subject", e.message))?,
            ]
        }
        None => app
            .store
            .all_subjects()
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect(),
    };
    let severity = params.get("severity").map(String::as_str);
    if let Some(sv) = severity
        && !["low", "medium", "high", "critical"].contains(&sv)
    {
        return Err(FieldError::new("severity", "one of low, medium, high, critical").into());
    }
    let from = param::<u64>(&params, "from", "unix milliseconds")?.unwrap_or(0);
    let to = param::<u64>(&params, "to", "unix milliseconds")?.unwrap_or(u64::MAX);
    let kind = params.get("type");
    let (page, limit) = page_and_limit(&params)?;
    let mut found = Vec::new();
    for s in subjects {
        for e in app.store.events_of(s, 10_000).await? {
            let sev = serde_json::to_value(e.severity).ok();
            let keep = e.at_ms >= from
                && e.at_ms <= to
                && kind.is_none_or(|k| *k == e.event_type)
                && severity.is_none_or(|sv| sev.as_ref().and_then(|v| v.as_str()) == Some(sv));
            if keep {
                found.push(e);
            }
        }
    }
    found.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then_with(|| a.id.cmp(&b.id)));
    let total = found.len();
    let rows: Vec<model::Event> = found
        .into_iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .collect();
    Ok(Json(
        serde_json::json!({"events": rows, "page": page, "limit": limit, "total": total}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsIn {
    records: Vec<signalbox_wire::DecisionRecordV1>,
}

const DECISIONS: [&str; 4] = ["pass", "challenge", "throttle", "block"];

/// `POST /v1/decisions/log`: edges ship their verdict records (non-pass verdicts and a sample
/// of passes) in batches of at most 1,000; all or nothing.
async fn append_log<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::Read)?;
    let input: RecordsIn = parse_json(&body_of(body)?)?;
    if input.records.len() > model::MAX_BATCH {
        return Err(FieldError::new("records", "at most 1000 records per batch").into());
    }
    for (i, r) in input.records.iter().enumerate() {
        let at = |f: &str| format!("records[{i}].{f}");
        if r.request_id.is_empty() || r.request_id.len() > model::MAX_KEY_BYTES {
            return Err(FieldError::new(at("request_id"), "1..=256 bytes").into());
        }
        if r.node_id.is_empty() || r.node_id.len() > model::MAX_KEY_BYTES {
            return Err(FieldError::new(at("node_id"), "1..=256 bytes").into());
        }
        if !DECISIONS.contains(&r.decision.as_str()) {
            return Err(
                FieldError::new(at("decision"), "one of pass, challenge, throttle, block").into(),
            );
        }
        if r.path.len() > 2_048 || r.reasons.len() > 64 || r.rules.len() > 64 {
            return Err(FieldError::new(
                at("path"),
                "a record is capped: path 2 KiB, 64 reasons, 64 rules",
            )
            .into());
        }
        if r.ip_lists.len() > 64 || r.ip_lists.iter().any(|l| l.len() > model::MAX_KEY_BYTES) {
            return Err(
                FieldError::new(at("ip_lists"), "at most 64 names of 1..=256 bytes").into(),
            );
        }
        if let Some(facts) = &r.facts {
            for (name, value) in &facts.headers {
                if !signalbox_policy::SIGNAL_HEADERS.contains(&name.as_str()) {
                    return Err(FieldError::new(
                        at(&format!("facts.headers.{name}")),
                        "only the headers the engine reads are recorded",
                    )
                    .into());
                }
                if value.len() > 4_096 {
                    return Err(FieldError::new(
                        at(&format!("facts.headers.{name}")),
                        "at most 4 KiB",
                    )
                    .into());
                }
            }
        }
    }
    let n = input.records.len();
    app.store.append_records(input.records).await?;
    Ok(Json(serde_json::json!({"accepted": n})))
}

/// `GET /v1/decisions/log?decision=&reason=&class=&route=&revision=&from=&to=&page=&limit=`,
/// newest first.
async fn read_log<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&headers, Scope::View)?;
    let decision = params.get("decision").map(String::as_str);
    if let Some(d) = decision
        && !DECISIONS.contains(&d)
    {
        return Err(FieldError::new("decision", "one of pass, challenge, throttle, block").into());
    }
    let reason = params.get("reason");
    let class = params.get("class");
    let route = params.get("route");
    let revision = param::<u64>(&params, "revision", "a revision number")?;
    let from = param::<u64>(&params, "from", "unix milliseconds")?.unwrap_or(0);
    let to = param::<u64>(&params, "to", "unix milliseconds")?.unwrap_or(u64::MAX / 2);
    let (page, limit) = page_and_limit(&params)?;
    let all = app.store.records(from, to, 1_000_000).await?;
    let matching: Vec<&signalbox_wire::DecisionRecordV1> = all
        .iter()
        .filter(|r| {
            decision.is_none_or(|d| r.decision == d)
                && reason.is_none_or(|code| r.reasons.iter().any(|x| &x.code == code))
                && class.is_none_or(|c| r.client.split(';').next() == Some(c.as_str()))
                && route.is_none_or(|name| r.route.as_ref() == Some(name))
                && revision.is_none_or(|rev| r.revision == rev)
        })
        .collect();
    let total = matching.len();
    let rows: Vec<&signalbox_wire::DecisionRecordV1> = matching
        .into_iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .collect();
    Ok(Json(
        serde_json::json!({"records": rows, "page": page, "limit": limit, "total": total}),
    ))
}
