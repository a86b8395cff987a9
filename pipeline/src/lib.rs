//! # signalbox-pipeline
//!
//! Everything an edge does with a request that is not a host call, in one host-independent
//! crate shared by every adapter (the Envoy filter today; the Spin component and the JS worker
//! next): strip client-sent `x-signalbox-*` headers, resolve the client IP by the configured
//! mode, build the facts (with the clearance verified), assess, say which rate buckets to count,
//! decide, and choose the answer — pass with origin headers, a challenge page / JSON / gRPC
//! status, the verify path, a throttle or a block — with the decision-log line.
//!
//! A step API: [`Pipeline::start`] takes a request's headers and the time and returns an
//! [`Outcome`]: effects for the adapter to apply (headers to strip and add, metric events, log
//! lines) and a [`Step`] — forward, respond, count these rate buckets and
//! [`Pipeline::resume_buckets`], or hand over the body and [`Pipeline::on_body`]. An adapter
//! only performs host calls and feeds their results back. Nothing here reads a clock, the
//! environment or shared data, and nothing changes a `Verdict` or `Facts` after the core built
//! them: a rate-limit refusal becomes the [`Final`] action beside the verdict.
//!
//! The adapter configuration parses here too ([`config::parse`]), once, with field paths in
//! its errors. The per-worker state (warned-once flags, the decision-log budget, the nonce
//! counter) lives in [`Pipeline`] as `Cell`s: one `Pipeline` per worker, one thread.

pub mod breaker;
pub mod buckets;
pub mod canary;
pub mod config;
pub mod context_cache;
pub mod decisions;
pub mod link;
pub mod record;
pub mod reply;
pub mod request;
pub mod rollback;
pub mod subjects;
pub mod verify;

#[cfg(test)]
mod translate_tests;

use std::cell::Cell;
use std::net::IpAddr;

use signalbox_policy::page::ChallengePage;
use signalbox_policy::ratelimit::Budget;
use signalbox_policy::trust::{
    Binding, ChallengeParams, clearance_set_cookie, is_safe_return_path, issue_challenge,
    issue_clearance, verify_solution,
};
use signalbox_policy::{Decision, Facts, Verdict};

pub use crate::config::{ConfigError, Settings};
pub use crate::reply::Reply;
pub use crate::request::{ClientKind, Headers};
pub use crate::verify::VerifyRefusal;

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Decision lines, loads.
    Info,
    /// Something an operator should fix.
    Warn,
}

/// Something for the adapter's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request without a usable client address.
    ClientIpMissing,
    /// The bundle is past its `expires_at` (once per worker).
    BundleExpired,
    /// How many crawler range lists are stale now (a gauge; checked once a minute).
    CrawlerRangesStale(u64),
    /// The enforced decision of a request.
    Decision(Decision),
    /// Shadow mode would not have passed this request.
    ShadowNonPass,
    /// A challenge was solved on the verify path.
    ChallengeSolved,
    /// A verify attempt failed.
    ChallengeFailed,
    /// A request decided without the score cache's context it wanted (no answer, an error,
    /// a timeout, a body that is not a context answer, or the breaker open).
    CacheUnavailable,
    /// A lookup answered from this worker's context cache (no call).
    ContextCached,
}

/// What the adapter applies before it acts on the [`Step`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Request headers to remove (client-sent `x-signalbox-*`, untrusted edge headers).
    pub strip_request_headers: Vec<String>,
    /// Request headers to set for origin (a passed request's annotations).
    pub set_request_headers: Vec<(String, String)>,
    /// A header for the response origin sends back (`x-signalbox-verdict` in debug mode).
    pub response_header: Option<(String, String)>,
    /// `decision level score` for the host's request properties (access logs).
    pub verdict_summary: Option<String>,
    /// Metric events.
    pub events: Vec<Event>,
    /// Log lines.
    pub logs: Vec<(LogLevel, String)>,
    /// Decision records (JSON `DecisionRecordV1`) for the score cache's decision log.
    pub records: Vec<Vec<u8>>,
}

/// What the adapter does next.
#[derive(Debug)]
pub enum Step {
    /// Let the request go on to origin.
    Forward,
    /// Answer locally with this reply (the request never reaches origin).
    Respond(Reply),
    /// Take one token from each bucket in shared data ([`BucketTake::apply`] inside the
    /// host's compare-and-swap loop), then call [`Pipeline::resume_buckets`] with the longest
    /// `retry-after` of the refusals, if any.
    TakeBuckets(Vec<BucketTake>, Pending),
    /// Let the headers go on, hold the body, and call [`Pipeline::on_body`] as it arrives
    /// (a verify request with its solution in a form body).
    ReadBody(PendingVerify),
    /// Ask the score cache: send this call (pausing the request), then call
    /// [`Pipeline::resume_lookup`] with its answer, or with `None` when it failed or timed out.
    Lookup(LookupCall, Pending),
}

/// A call to the score cache. `Debug` leaves out the `authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct LookupCall {
    /// The host's cluster.
    pub cluster: String,
    /// Request headers, pseudo-headers first (`:method`, `:path`, `:authority`).
    pub headers: Vec<(String, String)>,
    /// How long to wait, milliseconds (the bundle's `cache.timeout_ms`).
    pub timeout_ms: u32,
}

impl LookupCall {
    /// What the call asks (its `:path`): the context cache's and the coalescing key.
    pub fn key(&self) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map_or("", |(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for LookupCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if k == "authorization" {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("LookupCall")
            .field("cluster", &self.cluster)
            .field("headers", &headers)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// What came back from the score cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupAnswer {
    /// HTTP status.
    pub status: u32,
    /// Body.
    pub body: Vec<u8>,
}

/// One step's output.
#[derive(Debug)]
pub struct Outcome {
    /// Apply these first.
    pub effects: Effects,
    /// Then this.
    pub step: Step,
}

/// A rate-bucket token to take from shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketTake {
    /// The shared-data key of the bucket's slot.
    pub slot: String,
    /// The fingerprint of the bucket's key in that slot.
    pub fingerprint: [u8; 8],
    /// Its budget.
    pub budget: Budget,
}

impl BucketTake {
    /// One step of the bucket against the slot's stored bytes at `now_ms`: what to write back
    /// and, when the token is refused, the `retry-after` seconds.
    pub fn apply(&self, stored: Option<&[u8]>, now_ms: u64) -> (Vec<u8>, Option<u32>) {
        let step = buckets::step_slot(stored, self.fingerprint, now_ms, self.budget);
        (
            buckets::encode(self.fingerprint, step.state),
            (!step.allowed).then_some(step.retry_after_seconds),
        )
    }
}

/// A request waiting for its rate buckets.
#[derive(Debug)]
pub struct Pending(PendingKind);

#[derive(Debug)]
enum PendingKind {
    Lookup(Box<Assessed>),
    Verdict(Box<Decided>),
    Verify {
        verify: PendingVerify,
        form: Option<verify::Form>,
        end_of_stream: bool,
    },
}

#[derive(Debug)]
struct Assessed {
    facts: Facts,
    assessment: signalbox_policy::Assessment,
    request_id: String,
    now: u64,
    /// The lookup's key, when one was wanted (to keep the answer).
    lookup_key: Option<String>,
}

impl Assessed {
    /// The verdict, with the score cache's context if there is any.
    fn decide(
        self,
        policy: &signalbox_policy::Policy,
        remote: Option<&signalbox_policy::RemoteContext>,
    ) -> Decided {
        let Assessed {
            facts,
            assessment,
            request_id,
            now,
            lookup_key,
        } = self;
        Decided {
            verdict: policy.decide(assessment, remote, now),
            facts,
            request_id,
            now,
            context_asked: lookup_key.is_some() || remote.is_some(),
            context: remote.copied(),
        }
    }
}

#[derive(Debug)]
struct Decided {
    facts: Facts,
    verdict: Verdict,
    request_id: String,
    now: u64,
    /// The score cache was asked (or its cached answer used).
    context_asked: bool,
    /// What it answered.
    context: Option<signalbox_policy::RemoteContext>,
}

/// A verify request waiting for its body.
#[derive(Debug)]
pub struct PendingVerify {
    binding: Binding,
    now: u64,
    /// The request came over HTTPS (chooses the clearance cookie).
    https: bool,
}

/// The action a request ends with: the verdict's decision, or a throttle when its rate
/// buckets refused it (the verdict itself is never changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    /// The enforced decision.
    pub decision: Decision,
    /// In shadow mode, the decision that would have been enforced.
    pub shadow_decision: Option<Decision>,
}

impl Final {
    /// The action for `verdict` when its rate buckets `refused` the request, or not.
    pub fn of(verdict: &Verdict, refused: bool) -> Self {
        let mut f = Final {
            decision: verdict.decision,
            shadow_decision: verdict.shadow_decision,
        };
        if refused {
            match f.shadow_decision {
                Some(_) => f.shadow_decision = Some(Decision::Throttle),
                None => f.decision = Decision::Throttle,
            }
        }
        f
    }

    /// The decision the bundle meant: the shadow decision in shadow mode, else the enforced one.
    pub fn intended(&self) -> Decision {
        self.shadow_decision.unwrap_or(self.decision)
    }
}

/// A request's headers as the host gives them.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Every request header, pseudo-headers included, lower-case names, raw values.
    pub headers: Headers,
    /// The connection's peer address, as the host reports it.
    pub source: Option<IpAddr>,
    /// The host's name for the matched route, when the adapter reads one (Envoy's
    /// `xds.route_name`); only asked for when [`Pipeline::wants_route_name`].
    pub route_name: Option<Vec<u8>>,
    /// No body follows.
    pub end_of_stream: bool,
}

/// Verify attempts are rate-limited per client, whatever the bundle says.
const VERIFY_BUDGET: Budget = Budget {
    capacity: 10,
    requests: 10,
    per_seconds: 60,
};

/// The pipeline of one worker: its settings and its per-worker state.
#[derive(Debug)]
pub struct Pipeline {
    settings: Settings,
    /// (second, lines logged in it) for the decision-log rate limit.
    log_window: Cell<(u64, u32)>,
    /// Makes derived nonces unique within this worker.
    nonce_counter: Cell<u64>,
    warned_no_address: Cell<bool>,
    warned_expired: Cell<bool>,
    ranges_checked_at: Cell<u64>,
    warned_stale_ranges: Cell<bool>,
    /// This worker's copy of the score cache's manual decisions.
    decisions: std::cell::RefCell<decisions::ActiveDecisions>,
    /// The score cache's recent answers.
    contexts: std::cell::RefCell<context_cache::ContextCache>,
    /// Passed requests seen, for sampling their records.
    passes_seen: Cell<u64>,
}

impl Pipeline {
    /// A worker's pipeline over parsed settings.
    pub fn new(settings: Settings) -> Self {
        Pipeline {
            settings,
            log_window: Cell::new((0, 0)),
            nonce_counter: Cell::new(0),
            warned_no_address: Cell::new(false),
            warned_expired: Cell::new(false),
            ranges_checked_at: Cell::new(0),
            warned_stale_ranges: Cell::new(false),
            decisions: std::cell::RefCell::new(decisions::ActiveDecisions::default()),
            contexts: std::cell::RefCell::new(context_cache::ContextCache::default()),
            passes_seen: Cell::new(0),
        }
    }

    /// Whether a verdict that ends in `decision` is recorded: every non-pass one, and
    /// `percent` of every hundred passes.
    fn records_this(&self, decision: Decision, percent: u8) -> bool {
        if decision != Decision::Pass {
            return true;
        }
        let n = self.passes_seen.get();
        self.passes_seen.set(n.wrapping_add(1));
        n % 100 < u64::from(percent)
    }

    /// The pipeline that takes over from this one with new settings (a newer bundle): it
    /// keeps this worker's copy of the manual decisions.
    pub fn successor(&self, settings: Settings) -> Pipeline {
        let next = Pipeline::new(settings);
        if let Ok(d) = self.decisions.try_borrow() {
            next.replace_decisions(d.clone());
        }
        next
    }

    /// Replaces this worker's copy of the manual decisions (a newer published set). The
    /// cached context answers go too: they carry the decisions of their time, and a lifted
    /// ban must not outlive its stream entry in an answer's TTL.
    pub fn replace_decisions(&self, set: decisions::ActiveDecisions) {
        if let Ok(mut d) = self.decisions.try_borrow_mut() {
            *d = set;
        }
        if let Ok(mut c) = self.contexts.try_borrow_mut() {
            *c = context_cache::ContextCache::default();
        }
    }

    /// The generation of this worker's copy of the manual decisions (0: none yet).
    pub fn decisions_generation(&self) -> u64 {
        self.decisions.try_borrow().map_or(0, |d| d.generation())
    }

    /// Applies a page of the decision stream to this worker's copy: the blob to publish.
    /// `None` while the copy is in use (never, in one thread).
    pub fn apply_decisions_page(
        &self,
        page: &signalbox_wire::DecisionPageV1,
        now: u64,
        restart: bool,
    ) -> Option<decisions::Applied> {
        let d = self.decisions.try_borrow().ok()?;
        let prefix = self.settings.policy.ipv6_prefix();
        Some(if restart {
            d.restart().apply(page, prefix, now)
        } else {
            d.apply(page, prefix, now)
        })
    }

    /// The stream cursor of this worker's copy (`"0"`: start with a snapshot).
    pub fn decisions_cursor(&self) -> String {
        self.decisions
            .try_borrow()
            .map_or_else(|_| "0".to_owned(), |d| d.cursor().to_owned())
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether a lookup's result shows a healthy cache, for the breaker: it answered, below
    /// 500, and a 200 carries a context answer. A 4xx is about the request, not the cache's
    /// health (a client must not open the breaker for everyone with keys the cache refuses);
    /// a 200 that is not a context answer is a misrouted or mismatched cache.
    pub fn lookup_healthy(answer: Option<&LookupAnswer>) -> bool {
        answer.is_some_and(|a| {
            a.status < 500 && (a.status != 200 || context_answer(&a.body).is_some())
        })
    }

    /// Before a lookup goes out: whether the circuit breaker (its state under
    /// [`breaker::KEY`] in shared data) lets it, and the state to write back when it changes.
    pub fn breaker_admit(&self, stored: Option<&[u8]>, now_nanos: u128) -> (bool, Option<Vec<u8>>) {
        let now = u64::try_from(now_nanos / 1_000_000_000).unwrap_or(0);
        let (allowed, next) = breaker::admit(
            breaker::BreakerState::decode(stored),
            now,
            self.settings.policy.cache(),
        );
        (allowed, next.map(|s| s.encode()))
    }

    /// After a lookup: its result (`ok`: the cache answered 200 in time) counted into the
    /// breaker's state.
    pub fn breaker_record(&self, stored: Option<&[u8]>, now_nanos: u128, ok: bool) -> Vec<u8> {
        let now = u64::try_from(now_nanos / 1_000_000_000).unwrap_or(0);
        breaker::record(
            breaker::BreakerState::decode(stored),
            now,
            ok,
            self.settings.policy.cache(),
        )
        .encode()
    }

    /// Whether the client IP needs the connection's peer address ([`Request::source`]): always
    /// in `source_address` mode, else only when `x-forwarded-for` names no client. An adapter
    /// skips the host lookup (a formatted property in Envoy) when it does not.
    pub fn needs_source_address(&self, headers: &Headers) -> bool {
        request::client_ip(&self.settings.client_ip, headers, None).is_none()
    }

    /// The client's canary key (`user:<key>`, else `net:<the IP's /24 or /48>`), read from the
    /// request as this pipeline would (client IP mode, edge headers, user cookie, privacy
    /// hashing); only worth its cost while a canary rolls out.
    pub fn canary_key(
        &self,
        headers: &Headers,
        source: Option<std::net::IpAddr>,
    ) -> Option<String> {
        let ip = request::client_ip(&self.settings.client_ip, headers, source);
        let mut facts = Facts::from_parts("", "", headers.iter().cloned(), ip, &self.settings.edge);
        subjects::apply(&self.settings.subjects, &mut facts);
        canary::canary_key(facts.user.as_deref(), ip)
    }

    /// Whether the client with `key` gets the canary of `revision` at `percent`.
    pub fn in_canary(&self, key: &str, revision: u64, percent: u8) -> bool {
        let secret = self
            .settings
            .score_cache
            .as_ref()
            .map_or(config::DEFAULT_CANARY_SECRET, |c| {
                c.canary_secret.as_slice()
            });
        canary::in_canary(key, secret, revision, percent)
    }

    /// Whether [`Request::route_name`] matters (sensitive route names are configured).
    pub fn wants_route_name(&self) -> bool {
        !self.settings.sensitive_route_names.is_empty()
    }

    /// The lines to log when the configuration loads.
    pub fn load_logs(&self) -> Vec<(LogLevel, String)> {
        let mut logs: Vec<(LogLevel, String)> = self
            .settings
            .policy
            .warnings()
            .iter()
            .map(|w| (LogLevel::Warn, format!("signalbox: bundle: {w}")))
            .collect();
        if self.settings.keys.is_none() {
            logs.push((
                LogLevel::Warn,
                "signalbox: no challenge secret in the VM environment: challenges are served as blocks"
                    .to_owned(),
            ));
        }
        logs.push((
            LogLevel::Info,
            format!(
                "signalbox: bundle revision {} loaded",
                self.settings.policy.revision()
            ),
        ));
        logs
    }

    /// A request's headers arrived, at `now_nanos` (unix nanoseconds).
    pub fn start(&self, request: Request, now_nanos: u128) -> Outcome {
        let settings = &self.settings;
        let now = u64::try_from(now_nanos / 1_000_000_000).unwrap_or(0);
        let mut effects = Effects::default();
        let Request {
            mut headers,
            source,
            route_name,
            end_of_stream,
        } = request;
        let stripped = request::headers_to_strip(&headers, settings);
        headers.retain(|(n, _)| !stripped.iter().any(|s| s.eq_ignore_ascii_case(n)));
        effects.strip_request_headers = stripped;

        // No usable address (a listener on a Unix socket, a client-IP mode that finds
        // nothing): never a made-up one that all such clients would share. The core then
        // matches no IP list and adds `ip.missing`; IP budgets are skipped.
        let ip = request::client_ip(&settings.client_ip, &headers, source);
        if ip.is_none() {
            effects.events.push(Event::ClientIpMissing);
            if !self.warned_no_address.replace(true) {
                effects.logs.push((
                    LogLevel::Warn,
                    "signalbox: a request without a usable client address (check client_ip and the listener); counted in signalbox.client_ip.missing".to_owned(),
                ));
            }
        }
        self.watch_bundle(now, &mut effects);

        let request_id = request::header(&headers, "x-request-id")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "-".to_owned());
        let route_sensitive = route_name.is_some_and(|route| {
            settings
                .sensitive_route_names
                .iter()
                .any(|n| n.as_bytes() == route.as_slice())
        });
        let mut facts = request::facts(settings, headers, ip, now, route_sensitive);
        if let Ok(d) = self.decisions.try_borrow() {
            facts.manual_decisions = d.lookup(
                facts.client_ip,
                facts.user.as_deref(),
                facts.device.as_deref(),
                facts.asn,
                facts.country,
                now,
            );
        }
        if facts.route_path == settings.policy.challenge().verify_path {
            let step = self.start_verify(&facts, now, end_of_stream);
            return Outcome { effects, step };
        }

        let assessment = settings.policy.assess(&facts, now);
        let call = assessment
            .lookup()
            .zip(settings.score_cache.as_ref())
            .map(|(lookup, cache)| lookup_call(cache, lookup, settings.policy.cache().timeout_ms));
        let mut assessed = Assessed {
            facts,
            assessment,
            request_id,
            now,
            lookup_key: None,
        };
        let Some(call) = call else {
            return self.decided(assessed.decide(&settings.policy, None), now_nanos, effects);
        };
        let now_ms = u64::try_from(now_nanos / 1_000_000).unwrap_or(0);
        let cached = self
            .contexts
            .try_borrow()
            .ok()
            .and_then(|c| c.get(call.key(), now_ms));
        if let Some(context) = cached {
            effects.events.push(Event::ContextCached);
            let decided = assessed.decide(&settings.policy, Some(&context));
            return self.decided(decided, now_nanos, effects);
        }
        assessed.lookup_key = Some(call.key().to_owned());
        Outcome {
            effects,
            step: Step::Lookup(call, Pending(PendingKind::Lookup(Box::new(assessed)))),
        }
    }

    /// The score cache answered (`None`: it failed, timed out, or the host could not call it;
    /// the bundle's fail-open / fail-closed choice applies). A non-200 status or a body that is
    /// not a context answer counts as no answer.
    pub fn resume_lookup(
        &self,
        pending: Pending,
        answer: Option<LookupAnswer>,
        now_nanos: u128,
    ) -> Outcome {
        let PendingKind::Lookup(assessed) = pending.0 else {
            return self.resume_buckets(pending, None, now_nanos);
        };
        let answered = answer
            .filter(|a| a.status == 200)
            .and_then(|a| context_answer(&a.body));
        let remote = answered.as_ref().map(remote_context);
        if let (Some(answer), Some(context), Some(key)) = (&answered, remote, &assessed.lookup_key)
            && let Ok(mut cache) = self.contexts.try_borrow_mut()
        {
            let now_ms = u64::try_from(now_nanos / 1_000_000).unwrap_or(0);
            cache.insert(key, context, answer.ttl_seconds, now_ms);
        }
        let mut effects = Effects::default();
        if remote.is_none() {
            effects.events.push(Event::CacheUnavailable);
        }
        let decided = assessed.decide(&self.settings.policy, remote.as_ref());
        self.decided(decided, now_nanos, effects)
    }

    /// After the verdict: a passing request counts its rate buckets first.
    fn decided(&self, decided: Decided, now_nanos: u128, effects: Effects) -> Outcome {
        let settings = &self.settings;
        if decided.verdict.intended_decision() == Decision::Pass {
            let takes: Vec<BucketTake> = settings
                .policy
                .rate_keys(&decided.facts, &decided.verdict)
                .into_iter()
                .map(|k| self.take(&k.key, k.budget))
                .collect();
            if !takes.is_empty() {
                return Outcome {
                    effects,
                    step: Step::TakeBuckets(
                        takes,
                        Pending(PendingKind::Verdict(Box::new(decided))),
                    ),
                };
            }
        }
        self.finish(decided, None, now_nanos, effects)
    }

    /// The buckets of [`Step::TakeBuckets`] were counted: `refused` is the longest
    /// `retry-after` of the refusals (`None`: every token was granted, or shared data failed,
    /// which never blocks a request).
    pub fn resume_buckets(
        &self,
        pending: Pending,
        refused: Option<u32>,
        now_nanos: u128,
    ) -> Outcome {
        match pending.0 {
            PendingKind::Lookup(_) => self.resume_lookup(pending, None, now_nanos),
            PendingKind::Verdict(decided) => {
                self.finish(*decided, refused, now_nanos, Effects::default())
            }
            PendingKind::Verify {
                verify,
                form,
                end_of_stream,
            } => {
                let mut effects = Effects::default();
                let step = match (refused, form) {
                    (Some(retry), _) => {
                        Step::Respond(reply::throttle_reply(ClientKind::Api, "-", retry))
                    }
                    (None, Some(form)) => self.finish_verify(&verify, form, &mut effects),
                    (None, None) if end_of_stream => {
                        Step::Respond(verify::verify_refused_reply(Some(VerifyRefusal::BadForm)))
                    }
                    // The solution in a form body (API clients). Envoy turns a paused
                    // request-headers callback into StopAllIteration: the body would never
                    // arrive. The headers go on; the body is held (the adapter pauses its body
                    // callback) and the local reply resets the upstream request before any of
                    // the body reaches origin.
                    (None, None) => Step::ReadBody(verify),
                };
                Outcome { effects, step }
            }
        }
    }

    /// More of a verify request's body: `body_size` bytes so far, `end_of_stream` when it is
    /// whole. Returns `None` to keep waiting (the adapter holds the body), else the outcome;
    /// `read_body` is called only when the whole body is there and small enough.
    pub fn on_body(
        &self,
        pending: &PendingVerify,
        body_size: usize,
        end_of_stream: bool,
        read_body: impl FnOnce() -> Vec<u8>,
    ) -> Option<Outcome> {
        let mut effects = Effects::default();
        let step = if body_size > verify::MAX_VERIFY_BODY {
            Step::Respond(verify::verify_refused_reply(Some(VerifyRefusal::TooLarge)))
        } else if !end_of_stream {
            return None;
        } else {
            self.finish_verify(
                pending,
                verify::parse_verify_form(&read_body()),
                &mut effects,
            )
        };
        Some(Outcome { effects, step })
    }

    /// Origin answered a verify request before its body ended: the verify cannot finish (Envoy
    /// delivers no more of the body once the response has begun), so it counts as failed and
    /// origin's answer goes on, stripped like any other.
    pub fn verify_overtaken(&self) -> Event {
        Event::ChallengeFailed
    }

    /// Response header names to remove from origin's answer (origin must not echo ours: no
    /// scoring oracle).
    pub fn response_headers_to_strip(
        &self,
        names: impl IntoIterator<Item = String>,
    ) -> Vec<String> {
        names
            .into_iter()
            .filter(|n| n.to_ascii_lowercase().starts_with(request::PREFIX))
            .collect()
    }

    fn take(&self, key: &str, budget: Budget) -> BucketTake {
        let (slot, fingerprint) = buckets::slot_of(key, self.settings.rate_limit_slots);
        BucketTake {
            slot,
            fingerprint,
            budget,
        }
    }

    /// Once per worker: the bundle expired; once a minute: the stale crawler range lists.
    fn watch_bundle(&self, now: u64, effects: &mut Effects) {
        let policy = &self.settings.policy;
        if policy.expires_at().is_some_and(|at| now >= at) && !self.warned_expired.replace(true) {
            effects.events.push(Event::BundleExpired);
            effects.logs.push((
                LogLevel::Warn,
                format!(
                    "signalbox: bundle revision {} expired while serving; it keeps serving until a newer one is configured",
                    policy.revision()
                ),
            ));
        }
        if now >= self.ranges_checked_at.get().saturating_add(60) {
            self.ranges_checked_at.set(now);
            let stale = policy.stale_ranges(now);
            effects.events.push(Event::CrawlerRangesStale(
                u64::try_from(stale.len()).unwrap_or(u64::MAX),
            ));
            if !stale.is_empty() && !self.warned_stale_ranges.replace(true) {
                let lists: Vec<String> = stale
                    .iter()
                    .map(|s| format!("{} ({})", s.list, s.as_of.as_deref().unwrap_or("no date")))
                    .collect();
                effects.logs.push((
                    LogLevel::Warn,
                    format!(
                        "signalbox: crawler ranges older than crawlers.max_ranges_age_days: {}; crawlers claiming these families count as declared bots (never verified, never shown spoofed) until a bundle with fresh lists arrives; gauge signalbox.crawler_ranges.stale",
                        lists.join(", ")
                    ),
                ));
            }
        }
    }

    fn start_verify(&self, facts: &Facts, now: u64, end_of_stream: bool) -> Step {
        if let Err(refusal) = verify::check_verify_headers(&facts.headers) {
            return Step::Respond(verify::verify_refused_reply(Some(refusal)));
        }
        let pending = PendingVerify {
            binding: request::binding_of(facts),
            now,
            https: !facts.plain_http,
        };
        // The challenge page posts its solution in the query (`?challenge=…&counter=…`, empty
        // body): answered from the headers, so the request never reaches origin and no body
        // can arrive after origin has answered.
        let form = verify::verify_form_in_query(&facts.path);
        // Requests without a client address share one verify budget.
        let key = format!(
            "verify|{}",
            facts.client_ip.map_or_else(
                || "-".to_owned(),
                |ip| self.settings.policy.ip_subject_key(ip)
            )
        );
        Step::TakeBuckets(
            vec![self.take(&key, VERIFY_BUDGET)],
            Pending(PendingKind::Verify {
                verify: pending,
                form,
                end_of_stream,
            }),
        )
    }

    fn finish_verify(
        &self,
        pending: &PendingVerify,
        form: verify::Form,
        effects: &mut Effects,
    ) -> Step {
        let Some(keys) = &self.settings.keys else {
            return Step::Respond(verify::verify_refused_reply(None));
        };
        let outcome = form.map_err(Some).and_then(|(token, counter)| {
            verify_solution(keys, &token, counter, &pending.binding, pending.now).map_err(|_| None)
        });
        effects.events.push(if outcome.is_ok() {
            Event::ChallengeSolved
        } else {
            Event::ChallengeFailed
        });
        Step::Respond(match outcome {
            Ok(solved) => {
                let ttl = self.settings.policy.challenge().clearance_ttl_seconds;
                let token =
                    issue_clearance(keys, &pending.binding, pending.now, ttl, solved.difficulty);
                verify::verified_reply(
                    &solved.return_path,
                    clearance_set_cookie(&token, ttl, pending.https),
                )
            }
            Err(refusal) => verify::verify_refused_reply(refusal),
        })
    }

    fn finish(
        &self,
        decided: Decided,
        refused: Option<u32>,
        now_nanos: u128,
        mut effects: Effects,
    ) -> Outcome {
        let settings = &self.settings;
        let Decided {
            facts,
            verdict,
            request_id,
            now,
            context_asked,
            context,
        } = decided;
        let last = Final::of(&verdict, refused.is_some());
        if let Some(log) = settings
            .score_cache
            .as_ref()
            .and_then(|c| Some((c, c.decision_log.as_ref()?)))
            && self.records_this(last.intended(), log.1.pass_sample_percent)
        {
            let record = record::decision_record(
                record::Recorder {
                    node_id: &log.0.node_id,
                    hash_key: &log.1.key,
                },
                &settings.policy,
                record::Decided {
                    request_id: &request_id,
                    facts: &facts,
                    verdict: &verdict,
                    last,
                    rate_limited: refused.is_some(),
                    context_asked,
                    context: context.as_ref(),
                    at_ms: u64::try_from(now_nanos / 1_000_000).unwrap_or(0),
                },
            );
            if let Ok(bytes) = serde_json::to_vec(&record) {
                effects.records.push(bytes);
            }
        }
        let kind = request::client_kind(&facts.headers);
        effects.events.push(Event::Decision(last.decision));
        if last.shadow_decision.is_some_and(|d| d != Decision::Pass) {
            effects.events.push(Event::ShadowNonPass);
        }
        effects.verdict_summary = Some(verdict_summary(last.intended(), &verdict));
        if last.intended() != Decision::Pass
            && let Some(line) = self.decision_line(&request_id, &facts, &verdict, last, now)
        {
            effects.logs.push((LogLevel::Info, line));
        }
        let debug = settings
            .debug_verdict_header
            .then(|| reply::verdict_header(&request_id, &verdict, last));
        let step = match last.decision {
            Decision::Pass => {
                effects.set_request_headers =
                    reply::origin_headers(settings, &verdict, last, &request_id, facts.client_ip);
                effects.response_header = debug.map(|v| ("x-signalbox-verdict".to_owned(), v));
                return Outcome {
                    effects,
                    step: Step::Forward,
                };
            }
            Decision::Block => reply::block_reply(kind, &request_id),
            Decision::Throttle => reply::throttle_reply(kind, &request_id, refused.unwrap_or(60)),
            Decision::Challenge => {
                self.challenge(kind, &facts, &verdict, &request_id, now, now_nanos)
            }
        };
        let step = Step::Respond(with_header(step, debug));
        Outcome { effects, step }
    }

    /// A decision-log line unless this second's budget is spent; built only when written
    /// (attack traffic is when both the lines and the budget run out).
    fn decision_line(
        &self,
        request_id: &str,
        facts: &Facts,
        verdict: &Verdict,
        last: Final,
        now: u64,
    ) -> Option<String> {
        let (second, count) = self.log_window.get();
        let (second, count) = if second == now {
            (second, count)
        } else {
            (now, 0)
        };
        self.log_window.set((second, count.saturating_add(1)));
        (count < self.settings.decision_log_per_second)
            .then(|| record::decision_log_line(request_id, facts, verdict, last))
    }

    fn nonce_input(&self, request_id: &str, now_nanos: u128) -> Vec<u8> {
        let n = self.nonce_counter.get().wrapping_add(1);
        self.nonce_counter.set(n);
        format!("{request_id}|{now_nanos}|{n}").into_bytes()
    }

    fn challenge(
        &self,
        kind: ClientKind,
        facts: &Facts,
        verdict: &Verdict,
        request_id: &str,
        now: u64,
        now_nanos: u128,
    ) -> Reply {
        let Some(keys) = &self.settings.keys else {
            return reply::block_reply(kind, request_id);
        };
        let settings = self.settings.policy.challenge();
        let return_path = if is_safe_return_path(&facts.path) {
            facts.path.as_str()
        } else {
            "/"
        };
        let params = ChallengeParams {
            binding: request::binding_of(facts),
            nonce: keys.derive_nonce(&self.nonce_input(request_id, now_nanos)),
            now,
            ttl_seconds: settings.challenge_ttl_seconds,
            difficulty: self.settings.policy.challenge_difficulty(verdict.level),
            return_path,
        };
        let Ok(token) = issue_challenge(keys, &params) else {
            return reply::block_reply(kind, request_id);
        };
        let csp_nonce = reply::nonce_text(keys, &self.nonce_input(request_id, now_nanos));
        let page = ChallengePage {
            challenge: &token,
            difficulty: params.difficulty,
            verify_path: &settings.verify_path,
            ttl_seconds: settings.challenge_ttl_seconds,
            csp_nonce: &csp_nonce,
        };
        reply::challenge_reply(kind, request_id, &page)
    }
}

/// The score-cache call for a wanted lookup: `GET /v1/context?ip=…&user=…`.
fn lookup_call(
    cache: &config::ScoreCache,
    lookup: &signalbox_policy::Lookup,
    timeout_ms: u32,
) -> LookupCall {
    let mut query = Vec::new();
    if let Some(ip) = &lookup.ip {
        query.push(format!("ip={}", percent_encode(ip)));
    }
    if let Some(user) = &lookup.user {
        query.push(format!("user={}", percent_encode(user)));
    }
    if let Some(device) = &lookup.device {
        query.push(format!("device={}", percent_encode(device)));
    }
    let mut headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (
            ":path".to_owned(),
            format!("/v1/context?{}", query.join("&")),
        ),
        (":authority".to_owned(), cache.authority.clone()),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    if let Some(token) = &cache.token {
        headers.push(("authorization".to_owned(), format!("Bearer {token}")));
    }
    LookupCall {
        cluster: cache.cluster.clone(),
        headers,
        timeout_ms,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (query values of calls to
/// the score cache).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The body of a 200 as a context answer, if it is one.
fn context_answer(body: &[u8]) -> Option<signalbox_wire::ContextAnswerV1> {
    serde_json::from_slice(body).ok()
}

/// The core's remote context from the cache's answer.
pub fn remote_context(answer: &signalbox_wire::ContextAnswerV1) -> signalbox_policy::RemoteContext {
    use signalbox_policy::{ManualAction, ManualDecision, SubjectContext};
    use signalbox_wire::ManualActionV1;
    let subject = |s: &Option<signalbox_wire::SubjectContextV1>| {
        s.as_ref().map(|s| SubjectContext {
            score: s.score,
            decision: s.decision.as_ref().map(|d| ManualDecision {
                action: match d.action {
                    ManualActionV1::Ban => ManualAction::Ban,
                    ManualActionV1::Challenge => ManualAction::Challenge,
                    ManualActionV1::Throttle => ManualAction::Throttle,
                    ManualActionV1::Allow => ManualAction::Allow,
                },
                expires_at: d.expires_at,
            }),
        })
    };
    signalbox_policy::RemoteContext {
        ip: subject(&answer.ip),
        user: subject(&answer.user),
        device: subject(&answer.device),
    }
}

/// `<decision> <level> <score>` for the `signalbox_verdict` property (access logs), built without
/// `format!`: it runs for every request.
fn verdict_summary(decision: Decision, verdict: &Verdict) -> String {
    let (decision, level) = (decision.as_str(), verdict.level.as_str());
    let mut out = String::with_capacity(decision.len() + level.len() + 5);
    out.push_str(decision);
    out.push(' ');
    out.push_str(level);
    out.push(' ');
    buckets::push_decimal(&mut out, u64::from(verdict.score));
    out
}

fn with_header(mut reply: Reply, header: Option<String>) -> Reply {
    if let Some(v) = header {
        reply.headers.push(("x-signalbox-verdict".to_owned(), v));
    }
    reply
}
