//! The worker's link to the score cache beyond lookups, for an instance that serves many
//! requests (a JS isolate): it polls `GET /v1/bundle` every `bundle_poll_ms` (verify, then
//! swap; never an older revision) and follows `GET /v1/decisions/stream` every
//! `decisions_poll_ms` (bans, challenges, allows applied locally on every request, as the Envoy
//! filter's workers do). Runtimes have no timers between requests, so the calls are due when a
//! request comes: [`Worker::link_calls`] hands the adapter what is due, the adapter makes the
//! calls in the background (`ctx.waitUntil` on Workers) and hands each answer to
//! [`Worker::link_answer`]. A host that makes a fresh instance per request gets nothing from
//! this (each instance would poll once and die); see `edge-worker/README.md`.

use std::rc::Rc;

use signalbox_pipeline::config::Replacement;
use signalbox_pipeline::decisions::ActiveDecisions;
use signalbox_pipeline::link::{self, BundleAnswer, StreamAnswer};
use signalbox_pipeline::{LogLevel, Pipeline};

use crate::Worker;

/// Which call a [`LinkCall`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// `GET /v1/bundle`.
    Bundle,
    /// `GET /v1/decisions/stream`.
    Decisions,
    /// `POST /v1/rate` (the rate buckets' counts).
    Rate,
    /// `POST /v1/fleet` (this instance's report, after each bundle poll).
    Fleet,
    /// `POST /v1/decisions/log` (a batch of decision records).
    Log,
}

impl LinkKind {
    /// Its name in the JS plans: `bundle`, `decisions`, `rate`, `fleet`, `log`.
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Bundle => "bundle",
            LinkKind::Decisions => "decisions",
            LinkKind::Rate => "rate",
            LinkKind::Fleet => "fleet",
            LinkKind::Log => "log",
        }
    }

    /// The kind a [`LinkKind::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "bundle" => Some(LinkKind::Bundle),
            "decisions" => Some(LinkKind::Decisions),
            "rate" => Some(LinkKind::Rate),
            "fleet" => Some(LinkKind::Fleet),
            "log" => Some(LinkKind::Log),
            _ => None,
        }
    }
}

/// A background call to the score cache.
#[derive(Debug, Clone)]
pub struct LinkCall {
    /// Which one (hand it back with the answer).
    pub kind: LinkKind,
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Full URL.
    pub url: String,
    /// Request headers (no pseudo-headers).
    pub headers: Vec<(String, String)>,
    /// The body (JSON), for a `POST`.
    pub body: Option<Vec<u8>>,
    /// Milliseconds before the adapter gives up (then answer with status 0).
    pub timeout_ms: u32,
}

/// A pipeline link call (pseudo-headers, a cluster) as the adapter makes it: a full URL on the
/// cache's base, the method, the other headers and the body.
fn edge_call(base: &crate::BaseUrl, kind: LinkKind, call: link::LinkCall) -> LinkCall {
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let path = header(":path");
    let method = if header(":method") == "POST" {
        "POST"
    } else {
        "GET"
    };
    LinkCall {
        kind,
        method,
        url: format!("{}://{}{}{}", base.scheme, base.authority, base.path, path),
        headers: call
            .headers
            .iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .cloned()
            .collect(),
        body: call.body,
        timeout_ms: call.timeout_ms,
    }
}

/// What the link knows between requests.
#[derive(Debug, Default)]
pub(crate) struct LinkState {
    bundle_etag: Option<String>,
    /// When each call is due next (unix ms; 0: at once).
    bundle_due_ms: u64,
    decisions_due_ms: u64,
    /// A call handed out and not answered yet, with when it was handed out: a call whose
    /// answer never comes (an instance reset under it) is handed out again after a timeout.
    bundle_in_flight: Option<u64>,
    decisions_in_flight: Option<u64>,
    /// The stream said 410: the next page starts a new set.
    decisions_restart: bool,
    /// A snapshot (or catch-up) arriving in several pages: applied here until its last page,
    /// then swapped in whole, so requests never see half a set.
    decisions_staged: Option<ActiveDecisions>,
    /// Bundles the link refused.
    pub(crate) bundles_refused: u64,
    /// This instance in fleet reports: the configured node id and the instance's first poll
    /// time (hex ms), so each isolate is a node.
    instance_id: Option<String>,
    /// A fleet report is due (after a bundle poll answered).
    fleet_due: bool,
    fleet_in_flight: Option<u64>,
    /// Decision records waiting to ship, oldest first, and how many were dropped for room.
    pub(crate) records: std::collections::VecDeque<Vec<u8>>,
    pub(crate) records_dropped: u64,
    records_in_flight: Option<(u64, Vec<Vec<u8>>)>,
    records_due_ms: u64,
    /// The last refusal or failure, for logs and tests.
    pub(crate) last_error: Option<String>,
}

/// How long an unanswered call blocks the next one of its kind.
const IN_FLIGHT_LIMIT_MS: u64 = 30_000;

/// Decision records per `POST /v1/decisions/log`, at most.
const RECORDS_PER_BATCH: usize = 500;

impl Worker {
    /// The background calls due at `now_ms` (none without a score cache, or with its polls
    /// off). Each is handed out once until [`Worker::link_answer`] gets its answer.
    pub fn link_calls(&self, now_ms: u64) -> Vec<LinkCall> {
        let pipeline = self.pipeline();
        let (Some(settings), Some(base)) = (&pipeline.settings().score_cache, &self.cache) else {
            return Vec::new();
        };
        let Ok(mut state) = self.link.try_borrow_mut() else {
            return Vec::new();
        };
        let free = |in_flight: Option<u64>| {
            in_flight.is_none_or(|at| now_ms.saturating_sub(at) > IN_FLIGHT_LIMIT_MS)
        };
        let make = |kind: LinkKind, call: link::LinkCall| edge_call(base, kind, call);
        let mut calls = Vec::new();
        if settings.bundle_poll_ms > 0
            && now_ms >= state.bundle_due_ms
            && free(state.bundle_in_flight)
        {
            state.bundle_in_flight = Some(now_ms);
            calls.push(make(
                LinkKind::Bundle,
                link::bundle_call(settings, state.bundle_etag.as_deref()),
            ));
        }
        if settings.decisions_poll_ms > 0
            && now_ms >= state.decisions_due_ms
            && free(state.decisions_in_flight)
        {
            state.decisions_in_flight = Some(now_ms);
            let cursor = match (&state.decisions_staged, state.decisions_restart) {
                (Some(staged), _) => staged.cursor().to_owned(),
                (None, true) => "0".to_owned(),
                (None, false) => pipeline.decisions_cursor(),
            };
            calls.push(make(
                LinkKind::Decisions,
                link::stream_call(settings, &cursor),
            ));
        }
        // Named on the first call, so the first poll time identifies the instance.
        if state.instance_id.is_none() {
            state.instance_id = Some(format!("{}/{now_ms:x}", settings.node_id));
        }
        if state.fleet_due && free(state.fleet_in_flight) {
            let instance = state.instance_id.clone().unwrap_or_default();
            state.fleet_due = false;
            state.fleet_in_flight = Some(now_ms);
            let report = signalbox_wire::FleetReportV1 {
                node_id: instance,
                stable_revision: pipeline.settings().policy.revision(),
                canary_revision: None,
                last_error: state.last_error.clone(),
                clock_skew_ms: 0,
                reported_at: now_ms / 1_000,
            };
            calls.push(make(LinkKind::Fleet, link::fleet_call(settings, &report)));
        }
        if let Some(log) = &settings.decision_log
            && !state.records.is_empty()
            && now_ms >= state.records_due_ms
            && free(state.records_in_flight.as_ref().map(|(at, _)| *at))
        {
            // An unanswered batch past the limit goes back to the front of the queue.
            if let Some((_, stale)) = state.records_in_flight.take() {
                requeue(&mut state, stale);
            }
            let n = state.records.len().min(RECORDS_PER_BATCH);
            let batch: Vec<Vec<u8>> = state.records.drain(..n).collect();
            calls.push(make(LinkKind::Log, link::log_call(settings, &batch)));
            state.records_in_flight = Some((now_ms, batch));
            state.records_due_ms = now_ms.saturating_add(u64::from(log.flush_ms));
        }
        drop(state);
        if self.rate_counting.get() == crate::RateCounting::Background
            && let Some(body) = self
                .fleet_buckets
                .try_borrow_mut()
                .ok()
                .and_then(|mut f| f.report(now_ms, false))
            && let Some(call) = self.rate_call(&pipeline, body)
        {
            calls.push(call);
        }
        calls
    }

    /// `POST /v1/rate` with `body`, within the bundle's cache timeout (at least 50 ms).
    pub(crate) fn rate_call(&self, pipeline: &Pipeline, body: Vec<u8>) -> Option<LinkCall> {
        let (settings, base) = (
            pipeline.settings().score_cache.as_ref()?,
            self.cache.as_ref()?,
        );
        let timeout_ms = pipeline.settings().policy.cache().timeout_ms.max(50);
        Some(edge_call(
            base,
            LinkKind::Rate,
            link::rate_call(settings, body, timeout_ms),
        ))
    }

    /// A background call's answer (`status` 0: it failed or timed out; `etag`: the answer's
    /// `ETag`). Returns lines to log.
    pub fn link_answer(
        &self,
        kind: LinkKind,
        status: u16,
        etag: Option<String>,
        body: &[u8],
        now_ms: u64,
    ) -> Vec<(LogLevel, String)> {
        let pipeline = self.pipeline();
        let Some(settings) = pipeline.settings().score_cache.clone() else {
            return Vec::new();
        };
        let now = now_ms / 1_000;
        let mut logs = Vec::new();
        match kind {
            LinkKind::Fleet => {
                self.with_state(|s| s.fleet_in_flight = None);
            }
            LinkKind::Log => {
                // Answered (200, or a 4xx that a retry cannot fix): the batch is done. No
                // answer or a 5xx: it goes back to the front of the queue.
                let retry = status == 0 || status >= 500;
                self.with_state(|s| {
                    if let Some((_, batch)) = s.records_in_flight.take()
                        && retry
                    {
                        requeue(s, batch);
                        trim_records(s, settings.decision_log.as_ref());
                    }
                });
            }
            LinkKind::Rate => {
                if let Ok(mut f) = self.fleet_buckets.try_borrow_mut() {
                    f.answer(status, body);
                }
            }
            LinkKind::Bundle => {
                let answer = link::bundle_answer(u32::from(status), body, etag);
                let swapped = match answer {
                    BundleAnswer::Envelope(envelope, etag) => {
                        self.with_state(|s| s.bundle_etag = etag);
                        self.offer_bundle(&pipeline, envelope.stable.as_bytes(), now, &mut logs)
                    }
                    BundleAnswer::Unchanged => None,
                    BundleAnswer::Failed(why) => {
                        self.with_state(|s| s.last_error = Some(format!("bundle poll: {why}")));
                        None
                    }
                };
                if let Some(next) = swapped
                    && let Ok(mut serving) = self.pipeline.try_borrow_mut()
                {
                    *serving = Rc::new(next);
                }
                self.with_state(|s| {
                    s.bundle_in_flight = None;
                    s.bundle_due_ms = now_ms.saturating_add(u64::from(settings.bundle_poll_ms));
                    s.fleet_due = true;
                });
            }
            LinkKind::Decisions => {
                let mut again_at_once = false;
                match link::stream_answer(u32::from(status), body) {
                    StreamAnswer::Page(page) => {
                        let (restart, staged) = self
                            .with_state(|s| (s.decisions_restart, s.decisions_staged.take()))
                            .unwrap_or((false, None));
                        // Nothing new: the set stays (replacing it would drop the cached
                        // context answers on every poll).
                        let nothing_new =
                            page.decisions.is_empty() && !page.more && staged.is_none() && !restart;
                        if !nothing_new {
                            let prefix = pipeline.settings().policy.ipv6_prefix();
                            let applied = match staged {
                                Some(staged) => Some(staged.apply(&page, prefix, now)),
                                None => pipeline.apply_decisions_page(&page, now, restart),
                            }
                            .map(|a| ActiveDecisions::decode(a.blob));
                            match applied {
                                Some(Ok(set)) if page.more => {
                                    self.with_state(|s| {
                                        s.decisions_restart = false;
                                        s.decisions_staged = Some(set);
                                    });
                                    again_at_once = true;
                                }
                                Some(Ok(set)) => {
                                    pipeline.replace_decisions(set);
                                    self.with_state(|s| s.decisions_restart = false);
                                }
                                _ => logs.push((
                                    LogLevel::Warn,
                                    "signalbox: a decision page could not be applied".to_owned(),
                                )),
                            }
                        }
                    }
                    StreamAnswer::Unchanged => {}
                    StreamAnswer::Gone => {
                        self.with_state(|s| {
                            s.decisions_restart = true;
                            s.decisions_staged = None;
                        });
                        again_at_once = true;
                    }
                    StreamAnswer::Failed(why) => {
                        self.with_state(|s| {
                            s.last_error = Some(format!("decision stream: {why}"));
                        });
                    }
                }
                self.with_state(|s| {
                    s.decisions_in_flight = None;
                    s.decisions_due_ms = if again_at_once {
                        now_ms
                    } else {
                        now_ms.saturating_add(u64::from(settings.decisions_poll_ms))
                    };
                });
            }
        }
        logs
    }

    /// Loads `bundle` (a signed envelope, or plain JSON where the configuration allows it)
    /// with the worker's configuration, above the revision serving: the pipeline to swap in,
    /// or `None` (the same revision, or refused: logged and counted).
    fn offer_bundle(
        &self,
        serving: &Pipeline,
        bundle: &[u8],
        now: u64,
        logs: &mut Vec<(LogLevel, String)>,
    ) -> Option<Pipeline> {
        let active = serving.settings().policy.revision();
        let variables = &self.reload.variables;
        let loaded = signalbox_pipeline::config::parse_replacement(
            self.reload.config_json.as_bytes(),
            Replacement {
                bundle,
                above_revision: active,
            },
            now,
            |name| variables.get(name).cloned(),
        );
        match loaded {
            Ok(Some(settings)) => {
                let revision = settings.policy.revision();
                logs.push((
                    LogLevel::Info,
                    format!("signalbox: bundle revision {revision} pushed by the score cache now serves (was {active})"),
                ));
                self.with_state(|s| s.last_error = None);
                Some(serving.successor(settings))
            }
            // The revision serving now: nothing to do.
            Ok(None) => None,
            Err(e) => {
                logs.push((
                    LogLevel::Warn,
                    format!("signalbox: the score cache's bundle was refused, revision {active} keeps serving: {e}"),
                ));
                self.with_state(|s| {
                    s.bundles_refused += 1;
                    s.last_error = Some(format!("bundle refused: {e}"));
                });
                None
            }
        }
    }

    /// Bundles refused by the link so far, and the last refusal or failure.
    pub fn link_status(&self) -> (u64, Option<String>) {
        self.link
            .try_borrow()
            .map(|s| (s.bundles_refused, s.last_error.clone()))
            .unwrap_or_default()
    }

    /// Queues a request's decision records to ship (only with a decision log configured),
    /// dropping the oldest beyond its `max_buffered`.
    pub(crate) fn keep_records(&self, pipeline: &Pipeline, records: Vec<Vec<u8>>) {
        let Some(log) = pipeline
            .settings()
            .score_cache
            .as_ref()
            .and_then(|c| c.decision_log.as_ref())
        else {
            return;
        };
        // A fresh instance per request cannot ship later (see the README).
        if records.is_empty()
            || self.cache.is_none()
            || self.rate_counting.get() == crate::RateCounting::PerRequest
        {
            return;
        }
        self.with_state(|s| {
            s.records.extend(records);
            trim_records(s, Some(log));
        });
    }

    /// Decision records waiting to ship, and how many were dropped for room.
    pub fn records_status(&self) -> (usize, u64) {
        self.link
            .try_borrow()
            .map(|s| (s.records.len(), s.records_dropped))
            .unwrap_or_default()
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut LinkState) -> T) -> Option<T> {
        self.link.try_borrow_mut().ok().map(|mut s| f(&mut s))
    }
}

/// Puts a batch that did not ship back at the front of the queue, in its order.
fn requeue(s: &mut LinkState, batch: Vec<Vec<u8>>) {
    for r in batch.into_iter().rev() {
        s.records.push_front(r);
    }
}

/// Drops the oldest records beyond the log's `max_buffered`, counting them.
fn trim_records(s: &mut LinkState, log: Option<&signalbox_pipeline::config::DecisionLog>) {
    let max = log.map_or(0, |l| usize::try_from(l.max_buffered).unwrap_or(usize::MAX));
    while s.records.len() > max {
        s.records.pop_front();
        s.records_dropped += 1;
    }
}

/// The bundle poll of a host that makes a fresh instance per request and keeps state in a
/// store (the `spin` build: Spin's key-value store), between the instances that take turns
/// making it: when the next poll is due, the `ETag` of the last bundle answer, and the highest
/// revision ever kept in the store (never gone below, even when the stored bundle is lost).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredPoll {
    /// Unix ms when the next poll is due (0: at once).
    pub due_ms: u64,
    /// The `ETag` of the last answer with a bundle.
    pub etag: Option<String>,
    /// The highest revision kept so far: a bundle below it is refused.
    #[serde(default)]
    pub floor: u64,
}

impl StoredPoll {
    /// Reads the stored text (`None` or unreadable: a poll at once).
    pub fn from_stored(bytes: Option<&[u8]>) -> StoredPoll {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    /// The text to store.
    pub fn to_stored(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The same state with the next poll due at once and without an `ETag`, so the cache's
    /// bundle is fetched and checked again (the floor stays).
    pub fn fetch_again(&self) -> StoredPoll {
        StoredPoll {
            due_ms: 0,
            etag: None,
            floor: self.floor,
        }
    }
}

/// What a stored bundle poll's answer leads to ([`Worker::stored_poll_answer`]).
#[derive(Debug, Default)]
pub struct StoredPollOutcome {
    /// A newer bundle, prepared, to keep in the store for the instances after this one: its
    /// revision and bytes. Store it only when the store does not hold a higher revision by now.
    pub keep: Option<(u64, Vec<u8>)>,
    /// The poll state to store once `keep` is stored (or when there is nothing to keep). When
    /// `keep` could not be stored, store [`StoredPoll::fetch_again`] of it instead.
    pub poll: StoredPoll,
    /// A refusal or a failed poll, for the fleet report.
    pub last_error: Option<String>,
    /// Lines to log.
    pub logs: Vec<(LogLevel, String)>,
}

impl Worker {
    /// For a fresh instance serving a prepared bundle (`SIGNALBOX_PREPARED_BUNDLE`): the bundle
    /// poll to make at `now_ms`, or `None` (not due per the stored state, no score cache, polls
    /// off, or no prepared bundle to replace). A due time further ahead than one interval (a
    /// clock that jumped back) counts as due. When it returns a call, store the returned state
    /// at once: it claims the poll, so the instances that start meanwhile do not all make it.
    pub fn stored_poll_call(
        &self,
        stored: &StoredPoll,
        now_ms: u64,
    ) -> Option<(LinkCall, StoredPoll)> {
        let pipeline = self.pipeline();
        let (settings, base) = (
            pipeline.settings().score_cache.as_ref()?,
            self.cache.as_ref()?,
        );
        let interval = u64::from(settings.bundle_poll_ms);
        let too_far = stored.due_ms > now_ms.saturating_add(interval);
        if !self.reload.prepared || interval == 0 || (now_ms < stored.due_ms && !too_far) {
            return None;
        }
        let call = edge_call(
            base,
            LinkKind::Bundle,
            link::bundle_call(settings, stored.etag.as_deref()),
        );
        let claimed = StoredPoll {
            due_ms: now_ms.saturating_add(interval),
            ..stored.clone()
        };
        Some((call, claimed))
    }

    /// The answer to [`Worker::stored_poll_call`]'s call (`status` 0: it failed or timed out):
    /// a newer bundle is verified with the configuration's keys and prepared once here, for
    /// the store; one below the revision serving or below the stored floor, or one that does
    /// not verify, is refused (logged, and named in the fleet report); the same revision
    /// changes nothing.
    pub fn stored_poll_answer(
        &self,
        claimed: StoredPoll,
        status: u16,
        etag: Option<String>,
        body: &[u8],
        now_ms: u64,
    ) -> StoredPollOutcome {
        let pipeline = self.pipeline();
        let mut outcome = StoredPollOutcome {
            poll: claimed,
            ..StoredPollOutcome::default()
        };
        let active = pipeline.settings().policy.revision();
        match link::bundle_answer(u32::from(status), body, etag) {
            BundleAnswer::Envelope(envelope, etag) => {
                // Taken or refused, this answer is not fetched again until it changes.
                outcome.poll.etag = etag;
                let prepared = signalbox_pipeline::config::prepare_replacement(
                    self.reload.config_json.as_bytes(),
                    Replacement {
                        bundle: envelope.stable.as_bytes(),
                        above_revision: active,
                    },
                    now_ms / 1_000,
                );
                let refused = match prepared {
                    Ok(Some((revision, _))) if revision < outcome.poll.floor => Some(format!(
                        "revision {revision} is below revision {}, which this deployment has served",
                        outcome.poll.floor
                    )),
                    Ok(Some((revision, bytes))) => {
                        outcome.logs.push((
                            LogLevel::Info,
                            format!("signalbox: bundle revision {revision} pushed by the score cache is kept for the next instances (was {active})"),
                        ));
                        outcome.poll.floor = outcome.poll.floor.max(revision);
                        outcome.keep = Some((revision, bytes));
                        None
                    }
                    Ok(None) => None,
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = refused {
                    outcome.logs.push((
                        LogLevel::Warn,
                        format!("signalbox: the score cache's bundle was refused, revision {active} keeps serving: {why}"),
                    ));
                    outcome.last_error = Some(format!("bundle refused: {why}"));
                }
            }
            BundleAnswer::Unchanged => {}
            BundleAnswer::Failed(why) => outcome.last_error = Some(format!("bundle poll: {why}")),
        }
        outcome
    }

    /// This deployment's fleet report (`POST /v1/fleet`, as `score_cache.node_id`: instances
    /// are not nodes) after a stored poll: the revision the next instances serve and the
    /// poll's error.
    pub fn stored_fleet_call(
        &self,
        serving: u64,
        last_error: Option<String>,
        now_ms: u64,
    ) -> Option<LinkCall> {
        let pipeline = self.pipeline();
        let (settings, base) = (
            pipeline.settings().score_cache.as_ref()?,
            self.cache.as_ref()?,
        );
        let report = signalbox_wire::FleetReportV1 {
            node_id: settings.node_id.clone(),
            stable_revision: serving,
            canary_revision: None,
            last_error,
            clock_skew_ms: 0,
            reported_at: now_ms / 1_000,
        };
        Some(edge_call(
            base,
            LinkKind::Fleet,
            link::fleet_call(settings, &report),
        ))
    }
}
