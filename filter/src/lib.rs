//! # signalbox-filter
//!
//! Signalbox as a proxy-wasm (ABI 0.2.1) HTTP filter for Envoy, built for `wasm32-wasip1`
//! (it also builds for `wasm32-unknown-unknown`). It only translates: host data → facts →
//! [`signalbox_policy`] → host action. The translations are plain functions in [`translate`],
//! [`config`] and [`buckets`], unit-tested natively; the proxy-wasm trait impls below stay
//! thin, because the SDK's context methods cannot be mocked.
//!
//! Per request: remove client-sent `x-signalbox-*` headers, resolve the client IP, read the
//! clearance cookie, `assess` + `decide`, count rate buckets in shared data, then pass (with
//! `x-signalbox-decision`, `-level`, `-request-id` for origin), challenge, throttle or block.
//! `x-signalbox-*` headers from origin's responses are removed. Configuration is described in
//! `envoy/README.md`; `filter/examples/plugin-config.json` is a working example.
//!
//! Nothing here panics: host calls go through `proxy_wasm::hostcalls` and every `Result` is
//! handled (the SDK's `Context` convenience methods unwrap, so they are not used); headers are
//! read as bytes. The SDK itself still panics on a status the ABI does not allow for a call,
//! which Envoy never returns.

pub mod buckets;
pub mod config;
pub mod rollback;
pub mod translate;

use std::cell::Cell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action, BufferType, ContextType, GrpcStatusCode, LogLevel, MapType, MetricType, Status,
};
use signalbox_policy::page::ChallengePage;
use signalbox_policy::ratelimit::Budget;
use signalbox_policy::trust::{
    Binding, ChallengeParams, clearance_set_cookie, is_safe_return_path, issue_challenge,
    issue_clearance, verify_solution,
};
use signalbox_policy::{Decision, Verdict};

use crate::config::Settings;
use crate::translate::{ClientKind, Headers, Reply};

/// The module's entry point: one root context per worker VM.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)]
mod entry {
    use super::{LogLevel, RootContext, SignalboxRoot};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(SignalboxRoot::default()) });
    }}
}

/// Metric ids (0 when a metric could not be defined; incrementing it then fails quietly).
#[derive(Debug, Default, Clone, Copy)]
struct Metrics {
    pass: u32,
    challenge: u32,
    throttle: u32,
    block: u32,
    shadow_non_pass: u32,
    challenges_solved: u32,
    challenges_failed: u32,
    bundles_rejected: u32,
    rate_cas_gave_up: u32,
    client_ip_missing: u32,
    bundle_expired: u32,
    crawler_ranges_stale: u32,
    eval_micros: u32,
    rate_limit_micros: u32,
    request_micros: u32,
}

impl Metrics {
    fn define() -> Self {
        let m = |t, name: &str| hostcalls::define_metric(t, name).unwrap_or(0);
        Metrics {
            pass: m(MetricType::Counter, "signalbox.decisions.pass"),
            challenge: m(MetricType::Counter, "signalbox.decisions.challenge"),
            throttle: m(MetricType::Counter, "signalbox.decisions.throttle"),
            block: m(MetricType::Counter, "signalbox.decisions.block"),
            shadow_non_pass: m(MetricType::Counter, "signalbox.shadow.non_pass"),
            challenges_solved: m(MetricType::Counter, "signalbox.challenges.solved"),
            challenges_failed: m(MetricType::Counter, "signalbox.challenges.failed"),
            bundles_rejected: m(MetricType::Counter, "signalbox.bundles.rejected"),
            rate_cas_gave_up: m(MetricType::Counter, "signalbox.rate_limit.cas_gave_up"),
            client_ip_missing: m(MetricType::Counter, "signalbox.client_ip.missing"),
            bundle_expired: m(MetricType::Counter, "signalbox.bundle.expired"),
            crawler_ranges_stale: m(MetricType::Gauge, "signalbox.crawler_ranges.stale"),
            eval_micros: m(MetricType::Histogram, "signalbox.eval_micros"),
            rate_limit_micros: m(MetricType::Histogram, "signalbox.rate_limit_micros"),
            request_micros: m(MetricType::Histogram, "signalbox.request_micros"),
        }
    }

    fn count(id: u32) {
        if id != 0 {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    /// Records the microseconds since `since` (nanoseconds) in a histogram; `since == 0`
    /// means this request is not sampled.
    fn micros_since(id: u32, since: u128) {
        if id != 0 && since != 0 {
            let micros =
                u64::try_from(now_nanos().saturating_sub(since) / 1000).unwrap_or(u64::MAX);
            let _ = hostcalls::record_metric(id, micros);
        }
    }

    fn decision(&self, d: Decision) {
        Self::count(match d {
            Decision::Pass => self.pass,
            Decision::Challenge => self.challenge,
            Decision::Throttle => self.throttle,
            Decision::Block => self.block,
        });
    }
}

/// What every stream of a worker shares.
struct Worker {
    settings: Settings,
    metrics: Metrics,
    /// (second, lines logged in it) for the decision-log rate limit.
    log_window: Cell<(u64, u32)>,
    /// Makes derived nonces unique within this worker.
    nonce_counter: Cell<u64>,
    /// Requests seen, for sampling the timing histograms.
    requests: Cell<u64>,
    /// Logged once: a request had no usable client address.
    warned_no_address: Cell<bool>,
    /// Logged once: the bundle expired while serving.
    warned_expired: Cell<bool>,
    /// When the crawler range lists' age was last checked (unix seconds; once a minute), and
    /// whether stale ones were logged.
    ranges_checked_at: Cell<u64>,
    warned_stale_ranges: Cell<bool>,
}

/// One request in this many records the timing histograms (each record is host calls).
const TIMING_SAMPLE: u64 = 16;

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now_nanos() -> u128 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A read-modify-write of one shared-data key: reads it, lets `step` say what to write back
/// (`None`: nothing) and what to answer, and writes with the CAS it read, reading again when
/// another worker wrote first. `None` when shared data failed or every attempt lost the race.
fn update_shared_data<T>(
    key: &str,
    mut step: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Option<T> {
    for _ in 0..buckets::CAS_ATTEMPTS {
        let (stored, cas) = hostcalls::get_shared_data(key).ok()?;
        let (write, answer) = step(stored.as_deref());
        let Some(bytes) = write else {
            return Some(answer);
        };
        match hostcalls::set_shared_data(key, Some(&bytes), cas) {
            Ok(()) => return Some(answer),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Records `revision` as the highest served for `lineage` in shared data, or refuses it when a
/// higher one was served (see [`rollback`]). Gives up quietly when shared data fails (the
/// check is then skipped, never the bundle).
fn record_revision(lineage: &str, revision: u64) -> Result<(), rollback::Rollback> {
    update_shared_data(&rollback::key(lineage), |stored| {
        match rollback::check(stored, revision) {
            Ok(write) => (write.map(|b| b.to_vec()), Ok(())),
            Err(refused) => (None, Err(refused)),
        }
    })
    .unwrap_or(Ok(()))
}

/// The root context: loads the configuration per worker.
#[derive(Default)]
pub struct SignalboxRoot {
    worker: Option<Rc<Worker>>,
    metrics: Option<Metrics>,
}

impl Context for SignalboxRoot {}

impl RootContext for SignalboxRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let metrics = *self.metrics.get_or_insert_with(Metrics::define);
        let config = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let now = u64::try_from(now_nanos() / 1_000_000_000).unwrap_or(0);
        let parsed = config::parse(&config, now, |var| std::env::var(var).ok()).and_then(|s| {
            let lineage = hostcalls::get_property(vec!["plugin_name"])
                .ok()
                .flatten()
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .unwrap_or_default();
            record_revision(&lineage, s.policy.revision())
                .map_err(|r| config::ConfigError(r.to_string()))?;
            Ok(s)
        });
        match parsed {
            Ok(settings) => {
                for warning in settings.policy.warnings() {
                    log(LogLevel::Warn, &format!("signalbox: bundle: {warning}"));
                }
                if settings.keys.is_none() {
                    log(
                        LogLevel::Warn,
                        "signalbox: no challenge secret in the VM environment: challenges are served as blocks",
                    );
                }
                log(
                    LogLevel::Info,
                    &format!(
                        "signalbox: bundle revision {} loaded",
                        settings.policy.revision()
                    ),
                );
                self.worker = Some(Rc::new(Worker {
                    settings,
                    metrics,
                    log_window: Cell::new((0, 0)),
                    nonce_counter: Cell::new(0),
                    requests: Cell::new(0),
                    warned_no_address: Cell::new(false),
                    warned_expired: Cell::new(false),
                    ranges_checked_at: Cell::new(0),
                    warned_stale_ranges: Cell::new(false),
                }));
                true
            }
            Err(e) => {
                Metrics::count(metrics.bundles_rejected);
                log(
                    LogLevel::Error,
                    &format!("signalbox: configuration refused: {e}"),
                );
                false
            }
        }
    }

    /// Always a context: the SDK (proxy-wasm 0.2.5) traps the VM when this returns `None`,
    /// and a trapped VM fails every later request. A root context without a configuration
    /// (its `on_configure` refused one) answers 503 instead.
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match self.worker.clone() {
            Some(worker) => Box::new(SignalboxHttp {
                worker,
                local_reply: false,
                verdict_header: None,
                verify: None,
            }),
            None => Box::new(Unconfigured),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The stream of a root context that has no configuration: fails closed.
struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::send_http_response(
            503,
            vec![("cache-control", "no-store")],
            Some(b"signalbox: not configured\n"),
        );
        Action::Pause
    }
}

/// A pending verify request: waiting for its body.
struct PendingVerify {
    binding: Binding,
    now: u64,
    /// The request came over HTTPS (chooses the clearance cookie).
    https: bool,
}

/// One HTTP stream.
pub struct SignalboxHttp {
    worker: Rc<Worker>,
    /// We answered with a local reply (its headers are ours, not origin's).
    local_reply: bool,
    /// `x-signalbox-verdict` for the reply, when `debug_verdict_header` is on.
    verdict_header: Option<String>,
    verify: Option<PendingVerify>,
}

impl Context for SignalboxHttp {}

impl SignalboxHttp {
    fn send(&mut self, reply: Reply) -> Action {
        self.local_reply = true;
        let mut headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Some(v) = &self.verdict_header {
            headers.push(("x-signalbox-verdict", v));
        }
        match reply.grpc_status {
            Some(code) => {
                let status = if code == 8 {
                    GrpcStatusCode::ResourceExhausted
                } else {
                    GrpcStatusCode::PermissionDenied
                };
                let metadata: Vec<(&str, &[u8])> =
                    headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
                let _ = hostcalls::send_grpc_response(status, Some("signalbox"), metadata);
            }
            None => {
                let _ = hostcalls::send_http_response(reply.status, headers, Some(&reply.body));
            }
        }
        Action::Pause
    }

    fn nonce_input(&self, request_id: &str) -> Vec<u8> {
        let n = self.worker.nonce_counter.get().wrapping_add(1);
        self.worker.nonce_counter.set(n);
        format!("{request_id}|{}|{n}", now_nanos()).into_bytes()
    }

    /// Counts the request in its rate buckets; returns the retry-after of the first refusal.
    fn rate_limit(
        &self,
        facts: &signalbox_policy::Facts,
        verdict: &Verdict,
        now_ms: u64,
    ) -> Option<u32> {
        let w = &self.worker;
        let mut refused = None;
        for key in w.settings.policy.rate_keys(facts, verdict) {
            if let Some(retry) = self.take_token(&key.key, key.budget, now_ms) {
                refused = Some(refused.map_or(retry, |r: u32| r.max(retry)));
            }
        }
        refused
    }

    /// One token from a shared-data bucket (CAS loop); `Some(retry_after)` when refused.
    fn take_token(&self, key: &str, budget: Budget, now_ms: u64) -> Option<u32> {
        let (slot, fp) = buckets::slot_of(key, self.worker.settings.rate_limit_slots);
        let refused = update_shared_data(&slot, |stored| {
            let step = buckets::step_slot(stored, fp, now_ms, budget);
            (
                Some(buckets::encode(fp, step.state)),
                (!step.allowed).then_some(step.retry_after_seconds),
            )
        });
        refused.unwrap_or_else(|| {
            Metrics::count(self.worker.metrics.rate_cas_gave_up);
            None
        })
    }

    /// Logs a decision line unless this second's budget is spent; the line is only built
    /// when it will be written (attack traffic is when both the lines and the budget run out).
    fn log_decision(&self, line: impl FnOnce() -> String, now: u64) {
        let (second, count) = self.worker.log_window.get();
        let (second, count) = if second == now {
            (second, count)
        } else {
            (now, 0)
        };
        if count < self.worker.settings.decision_log_per_second {
            log(LogLevel::Info, &line());
        }
        self.worker
            .log_window
            .set((second, count.saturating_add(1)));
    }

    fn on_verify_headers(
        &mut self,
        headers: &Headers,
        facts: &signalbox_policy::Facts,
        now: u64,
        end_of_stream: bool,
    ) -> Action {
        if let Err(refusal) = translate::check_verify_headers(headers) {
            return self.send(translate::verify_refused_reply(Some(refusal)));
        }
        // Verify attempts are rate-limited per client, whatever the bundle says.
        let verify_budget = Budget {
            capacity: 10,
            requests: 10,
            per_seconds: 60,
        };
        // Requests without a client address share one verify budget.
        let key = format!(
            "verify|{}",
            facts.client_ip.map_or_else(
                || "-".to_owned(),
                |ip| self.worker.settings.policy.ip_subject_key(ip)
            )
        );
        if let Some(retry) = self.take_token(&key, verify_budget, now.saturating_mul(1000)) {
            return self.send(translate::throttle_reply(ClientKind::Api, "-", retry));
        }
        let pending = PendingVerify {
            binding: translate::binding_of(facts),
            now,
            https: !facts.plain_http,
        };
        // The challenge page posts its solution in the query (`?challenge=…&counter=…`, empty
        // body): answered here, from the headers, so the request never reaches origin and no
        // body can arrive after origin has answered.
        if let Some(form) = translate::verify_form_in_query(&facts.path) {
            return self.finish_verify(pending, form);
        }
        if end_of_stream {
            return self.send(translate::verify_refused_reply(Some(
                translate::VerifyRefusal::BadForm,
            )));
        }
        self.verify = Some(pending);
        // The solution in a form body (API clients). Envoy turns a paused request-headers
        // callback into StopAllIteration: the body would never reach this filter. Let the
        // headers go on; the body is held below (Pause from the body callback buffers it) and
        // the local reply resets the upstream request before any of the body reaches origin.
        Action::Continue
    }

    fn finish_verify(
        &mut self,
        pending: PendingVerify,
        form: Result<(Vec<u8>, u64), translate::VerifyRefusal>,
    ) -> Action {
        let w = Rc::clone(&self.worker);
        let Some(keys) = &w.settings.keys else {
            return self.send(translate::verify_refused_reply(None));
        };
        let outcome = form.map_err(Some).and_then(|(token, counter)| {
            verify_solution(keys, &token, counter, &pending.binding, pending.now).map_err(|_| None)
        });
        match outcome {
            Ok(solved) => {
                Metrics::count(w.metrics.challenges_solved);
                let ttl = w.settings.policy.challenge().clearance_ttl_seconds;
                let token =
                    issue_clearance(keys, &pending.binding, pending.now, ttl, solved.difficulty);
                self.send(translate::verified_reply(
                    &solved.return_path,
                    clearance_set_cookie(&token, ttl, pending.https),
                ))
            }
            Err(refusal) => {
                Metrics::count(w.metrics.challenges_failed);
                self.send(translate::verify_refused_reply(refusal))
            }
        }
    }

    fn challenge(
        &mut self,
        headers: &Headers,
        facts: &signalbox_policy::Facts,
        verdict: &Verdict,
        request_id: &str,
        now: u64,
    ) -> Action {
        let w = Rc::clone(&self.worker);
        let kind = translate::client_kind(headers);
        let Some(keys) = &w.settings.keys else {
            return self.send(translate::block_reply(kind, request_id));
        };
        let settings = w.settings.policy.challenge();
        let return_path = if is_safe_return_path(&facts.path) {
            facts.path.as_str()
        } else {
            "/"
        };
        let params = ChallengeParams {
            binding: translate::binding_of(facts),
            nonce: keys.derive_nonce(&self.nonce_input(request_id)),
            now,
            ttl_seconds: settings.challenge_ttl_seconds,
            difficulty: settings
                .difficulty_bits
                .get(verdict.level as usize)
                .copied()
                .unwrap_or(16),
            return_path,
        };
        let Ok(token) = issue_challenge(keys, &params) else {
            return self.send(translate::block_reply(kind, request_id));
        };
        let csp_nonce = translate::nonce_text(keys, &self.nonce_input(request_id));
        let page = ChallengePage {
            challenge: &token,
            difficulty: params.difficulty,
            verify_path: &settings.verify_path,
            ttl_seconds: settings.challenge_ttl_seconds,
            csp_nonce: &csp_nonce,
        };
        self.send(translate::challenge_reply(kind, request_id, &page))
    }
}

impl HttpContext for SignalboxHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let w = Rc::clone(&self.worker);
        let settings = &w.settings;
        let mut headers: Headers =
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let stripped = translate::headers_to_strip(&headers, settings);
        for name in &stripped {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        headers.retain(|(n, _)| !stripped.iter().any(|s| s.eq_ignore_ascii_case(n)));

        let started = now_nanos();
        let now = u64::try_from(started / 1_000_000_000).unwrap_or(0);
        let source = hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .and_then(|v| translate::parse_source_address(&v));
        // No usable address (a listener on a Unix socket, a client-IP mode that finds
        // nothing): never a made-up one that all such clients would share. The core then
        // matches no IP list and adds `ip.missing`; IP budgets are skipped.
        let ip = translate::client_ip(&settings.client_ip, &headers, source);
        if ip.is_none() {
            Metrics::count(w.metrics.client_ip_missing);
            if !w.warned_no_address.replace(true) {
                log(
                    LogLevel::Warn,
                    "signalbox: a request without a usable client address (check client_ip and the listener); counted in signalbox.client_ip.missing",
                );
            }
        }
        if settings
            .policy
            .expires_at()
            .is_some_and(|expires_at| now >= expires_at)
            && !w.warned_expired.replace(true)
        {
            Metrics::count(w.metrics.bundle_expired);
            log(
                LogLevel::Warn,
                &format!(
                    "signalbox: bundle revision {} expired while serving; it keeps serving until a newer one is configured",
                    settings.policy.revision()
                ),
            );
        }
        if now >= w.ranges_checked_at.get().saturating_add(60) {
            w.ranges_checked_at.set(now);
            let stale = settings.policy.stale_ranges(now);
            if w.metrics.crawler_ranges_stale != 0 {
                let _ = hostcalls::record_metric(
                    w.metrics.crawler_ranges_stale,
                    u64::try_from(stale.len()).unwrap_or(u64::MAX),
                );
            }
            if !stale.is_empty() && !w.warned_stale_ranges.replace(true) {
                let lists: Vec<String> = stale
                    .iter()
                    .map(|s| format!("{} ({})", s.list, s.as_of.as_deref().unwrap_or("no date")))
                    .collect();
                log(
                    LogLevel::Warn,
                    &format!(
                        "signalbox: crawler ranges older than crawlers.max_ranges_age_days: {}; crawlers claiming these families count as declared bots (never verified, never shown spoofed) until a bundle with fresh lists arrives; gauge signalbox.crawler_ranges.stale",
                        lists.join(", ")
                    ),
                );
            }
        }
        let request_id = translate::header(&headers, "x-request-id")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "-".to_owned());
        let mut facts = translate::facts(settings, headers, ip, now);
        if !settings.sensitive_route_names.is_empty() {
            // `xds.route_name` (Envoy ≥ 1.28); `route_name` is the older spelling.
            let route = [vec!["xds", "route_name"], vec!["route_name"]]
                .into_iter()
                .find_map(|path| hostcalls::get_property(path).ok().flatten())
                .unwrap_or_default();
            facts.route_sensitive = settings
                .sensitive_route_names
                .iter()
                .any(|n| n.as_bytes() == route.as_slice());
        }

        let facts = facts;
        let headers = &facts.headers;
        if signalbox_policy::normalize_path(&facts.path) == settings.policy.challenge().verify_path
        {
            return self.on_verify_headers(headers, &facts, now, end_of_stream);
        }

        let n = w.requests.get();
        w.requests.set(n.wrapping_add(1));
        let timed = n.is_multiple_of(TIMING_SAMPLE);
        let sample = || if timed { now_nanos() } else { 0 };
        let eval_started = sample();
        let assessment = settings.policy.assess(&facts, now);
        let mut verdict = settings.policy.decide(assessment, None, now);
        Metrics::micros_since(w.metrics.eval_micros, eval_started);
        if verdict.intended_decision() == Decision::Pass {
            let now_ms = u64::try_from(started / 1_000_000).unwrap_or(0);
            let rate_started = sample();
            let refused = self.rate_limit(&facts, &verdict, now_ms);
            Metrics::micros_since(w.metrics.rate_limit_micros, rate_started);
            if let Some(retry) = refused {
                match verdict.shadow_decision {
                    Some(_) => verdict.shadow_decision = Some(Decision::Throttle),
                    None => verdict.decision = Decision::Throttle,
                }
                if verdict.decision == Decision::Throttle {
                    self.verdict_header = settings
                        .debug_verdict_header
                        .then(|| translate::verdict_header(&request_id, &verdict));
                    w.metrics.decision(Decision::Throttle);
                    self.log_decision(
                        || translate::decision_log_line(&request_id, &facts, &verdict),
                        now,
                    );
                    return self.send(translate::throttle_reply(
                        translate::client_kind(headers),
                        &request_id,
                        retry,
                    ));
                }
            }
        }
        Metrics::micros_since(w.metrics.request_micros, if timed { started } else { 0 });
        w.metrics.decision(verdict.decision);
        if verdict.shadow_decision.is_some_and(|d| d != Decision::Pass) {
            Metrics::count(w.metrics.shadow_non_pass);
        }
        let summary = format!(
            "{} {} {}",
            verdict.intended_decision().as_str(),
            verdict.level.as_str(),
            verdict.score
        );
        let _ = hostcalls::set_property(vec!["signalbox_verdict"], Some(summary.as_bytes()));
        if verdict.intended_decision() != Decision::Pass {
            self.log_decision(
                || translate::decision_log_line(&request_id, &facts, &verdict),
                now,
            );
        }
        if settings.debug_verdict_header {
            self.verdict_header = Some(translate::verdict_header(&request_id, &verdict));
        }

        match verdict.decision {
            Decision::Pass => {
                for (name, value) in
                    translate::origin_headers(settings, &verdict, &request_id, facts.client_ip)
                {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, &name, Some(&value));
                }
                Action::Continue
            }
            Decision::Block => self.send(translate::block_reply(
                translate::client_kind(headers),
                &request_id,
            )),
            Decision::Throttle => self.send(translate::throttle_reply(
                translate::client_kind(headers),
                &request_id,
                60,
            )),
            Decision::Challenge => self.challenge(headers, &facts, &verdict, &request_id, now),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.verify.is_none() {
            return Action::Continue;
        }
        if body_size > translate::MAX_VERIFY_BODY {
            self.verify = None;
            return self.send(translate::verify_refused_reply(Some(
                translate::VerifyRefusal::TooLarge,
            )));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match self.verify.take() {
            Some(pending) => self.finish_verify(pending, translate::parse_verify_form(&body)),
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.local_reply {
            // No scoring oracle: origin (or anything upstream) must not echo our headers.
            let headers =
                hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default();
            for (name, _) in headers {
                if name.to_ascii_lowercase().starts_with(translate::PREFIX) {
                    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, &name, None);
                }
            }
            if let Some(v) = &self.verdict_header {
                let _ = hostcalls::set_map_value(
                    MapType::HttpResponseHeaders,
                    "x-signalbox-verdict",
                    Some(v),
                );
            }
        }
        if self.verify.take().is_some() {
            // Origin answered the verify path before the request body ended. Envoy delivers no
            // more of the body once the response has begun, so the verify cannot finish: it
            // counts as failed and origin's answer goes on, stripped like any other (holding
            // it would leave the client waiting for nothing). The challenge page posts its
            // solution in the query, answered from the headers, so people never meet this.
            Metrics::count(self.worker.metrics.challenges_failed);
        }
        Action::Continue
    }
}
