//! # signalbox-filter
//!
//! Signalbox as a proxy-wasm (ABI 0.2.1) HTTP filter for Envoy, built for `wasm32-wasip1`
//! (it also builds for `wasm32-unknown-unknown`). It only performs host calls: everything a
//! request goes through — stripping, client IP, facts, clearance, assess, decide, the reply —
//! is [`signalbox_pipeline`], shared with every other adapter and unit-tested natively. This
//! crate reads the host's data (headers, properties, time, the body), applies the pipeline's
//! effects (header edits, metrics, logs), counts rate buckets in shared data (its CAS loop),
//! and sends replies. The proxy-wasm trait impls stay thin, because the SDK's context methods
//! cannot be mocked. Configuration is described in `envoy/README.md`;
//! `filter/examples/plugin-config.json` is a working example.
//!
//! Nothing here panics: host calls go through `proxy_wasm::hostcalls` and every `Result` is
//! handled (the SDK's `Context` convenience methods unwrap, so they are not used); headers are
//! read as bytes. The SDK itself still panics on a status the ABI does not allow for a call,
//! which Envoy never returns.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action, BufferType, ContextType, GrpcStatusCode, MapType, MetricType, Status,
};
use signalbox_pipeline::decisions::ActiveDecisions;
use signalbox_pipeline::link::{self, LinkCall, StreamAnswer};
use signalbox_pipeline::{
    BucketTake, Effects, Event, LogLevel, LookupAnswer, Outcome, Pending, PendingVerify, Pipeline,
    Reply, Request, Step, breaker, buckets, config, request, rollback,
};
use signalbox_policy::Decision;

/// The module's entry point: one root context per worker VM.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)]
mod entry {
    use super::{RootContext, SignalboxRoot};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
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
    cache_unavailable: u32,
    stream_failures: u32,
    lookups_coalesced: u32,
    records_shipped: u32,
    records_dropped: u32,
    contexts_cached: u32,
    decisions_active: u32,
    decisions_unmatched: u32,
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
            cache_unavailable: m(MetricType::Counter, "signalbox.cache.unavailable"),
            stream_failures: m(MetricType::Counter, "signalbox.decisions.stream_failures"),
            lookups_coalesced: m(MetricType::Counter, "signalbox.cache.lookups_coalesced"),
            records_shipped: m(MetricType::Counter, "signalbox.decision_log.shipped"),
            records_dropped: m(MetricType::Counter, "signalbox.decision_log.dropped"),
            contexts_cached: m(MetricType::Counter, "signalbox.cache.answers_reused"),
            decisions_active: m(MetricType::Gauge, "signalbox.decisions.active"),
            decisions_unmatched: m(MetricType::Gauge, "signalbox.decisions.unmatched"),
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

    /// One pipeline event.
    fn event(&self, event: Event) {
        match event {
            Event::ClientIpMissing => Self::count(self.client_ip_missing),
            Event::BundleExpired => Self::count(self.bundle_expired),
            Event::CrawlerRangesStale(n) => {
                if self.crawler_ranges_stale != 0 {
                    let _ = hostcalls::record_metric(self.crawler_ranges_stale, n);
                }
            }
            Event::Decision(d) => Self::count(match d {
                Decision::Pass => self.pass,
                Decision::Challenge => self.challenge,
                Decision::Throttle => self.throttle,
                Decision::Block => self.block,
            }),
            Event::ShadowNonPass => Self::count(self.shadow_non_pass),
            Event::ChallengeSolved => Self::count(self.challenges_solved),
            Event::ChallengeFailed => Self::count(self.challenges_failed),
            Event::CacheUnavailable => Self::count(self.cache_unavailable),
            Event::ContextCached => Self::count(self.contexts_cached),
        }
    }
}

/// What every stream of a worker shares.
struct Worker {
    /// The pipeline new streams start with; replaced when a newer bundle arrives.
    pipeline: std::cell::RefCell<Rc<Pipeline>>,
    metrics: Metrics,
    /// Requests seen, for sampling the timing histograms.
    requests: Cell<u64>,
    /// The circuit breaker's shared-data key, per plugin (two plugins in one VM have two).
    breaker_key: String,
    /// The plugin's name, which every link key carries.
    lineage: String,
    /// Lookups in flight and the streams waiting on them.
    coalescing: std::cell::RefCell<Coalescing>,
    /// The shared queue for decision records, when they are shipped.
    records_queue: Option<u32>,
    /// The canary rolling out, if any: its pipeline (a second compiled bundle) and share.
    canary: std::cell::RefCell<Option<Canary>>,
}

/// A canary as a worker serves it.
#[derive(Clone)]
struct Canary {
    pipeline: Rc<Pipeline>,
    revision: u64,
    percent: u8,
}

impl Worker {
    /// The pipeline new streams start with (`None` only while it is being replaced, which
    /// never overlaps a callback in one thread).
    fn pipeline(&self) -> Option<Rc<Pipeline>> {
        self.pipeline.try_borrow().ok().map(|p| Rc::clone(&p))
    }

    /// The canary, if one rolls out.
    fn canary(&self) -> Option<Canary> {
        self.canary.try_borrow().ok().and_then(|c| c.clone())
    }

    /// Serves `next` to new streams from now on.
    fn replace_pipeline(&self, next: Pipeline) {
        if let Ok(mut p) = self.pipeline.try_borrow_mut() {
            *p = Rc::new(next);
        }
    }

    /// Whether this request records the timing histograms (one in [`TIMING_SAMPLE`]).
    fn next_is_timed(&self) -> bool {
        let n = self.requests.get();
        self.requests.set(n.wrapping_add(1));
        n.is_multiple_of(TIMING_SAMPLE)
    }
}

/// One request in this many records the timing histograms (each record is host calls).
const TIMING_SAMPLE: u64 = 16;

fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Info => proxy_wasm::types::LogLevel::Info,
        LogLevel::Warn => proxy_wasm::types::LogLevel::Warn,
    };
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

/// The root context: loads the configuration per worker, and runs the worker's side of the
/// link to the score cache on its timer.
#[derive(Default)]
pub struct SignalboxRoot {
    worker: Option<Rc<Worker>>,
    metrics: Option<Metrics>,
    link: Link,
    /// The plugin configuration as Envoy gave it (a polled bundle replaces only its bundle).
    config: Vec<u8>,
}

/// This worker's side of the link: its id, and — while it leads — the stream call.
#[derive(Default)]
struct Link {
    /// Unique among the process's workers (from a shared counter); 0 before the first tick.
    worker_id: u64,
    /// The stream call in flight (its token).
    stream_call: Option<u32>,
    /// When the leader polls next, unix ms.
    next_poll_ms: u64,
    /// After `410`: the next page starts a new set.
    restart: bool,
    /// A snapshot being read page by page, published when its last page arrives.
    staging: Option<ActiveDecisions>,
    /// The last stream failure was logged (log once per outage).
    failing: bool,
    /// The bundle poll in flight, then the fleet report.
    bundle_call: Option<u32>,
    fleet_call: Option<u32>,
    /// When the leader polls the bundle next, unix ms.
    next_bundle_poll_ms: u64,
    /// The ETag of the last envelope seen.
    etag: Option<String>,
    /// The last refused bundle or failed poll, for the fleet report.
    last_error: Option<String>,
    /// This edge's clock minus the cache's, from the last answer's `date`.
    clock_skew_ms: i64,
    /// Decision records taken off the shared queue, oldest first, waiting to ship.
    records: std::collections::VecDeque<Vec<u8>>,
    /// The batch being shipped, and its call.
    records_in_flight: Vec<Vec<u8>>,
    log_call: Option<u32>,
    /// When the leader ships next, unix ms.
    next_flush_ms: u64,
}

/// A shared-data value (`None`: absent, or shared data failed).
fn shared_value(key: &str) -> Option<Vec<u8>> {
    hostcalls::get_shared_data(key).ok().and_then(|(v, _)| v)
}

/// The link's shared-data key for this plugin.
fn link_key(base: &str, lineage: &str) -> String {
    format!("{base}.{lineage}")
}

impl SignalboxRoot {
    /// The worker, the pipeline serving now and the score cache it links to.
    fn linked(&self) -> Option<(Rc<Worker>, Rc<Pipeline>, config::ScoreCache)> {
        let worker = self.worker.clone()?;
        let pipeline = worker.pipeline()?;
        let cache = pipeline.settings().score_cache.clone()?;
        Some((worker, pipeline, cache))
    }

    /// Starts the timer when the configuration follows the decision stream or polls bundles.
    fn start_link(&mut self) {
        let Some(cache) = self
            .worker
            .as_ref()
            .and_then(|w| w.pipeline())
            .and_then(|p| p.settings().score_cache.clone())
        else {
            return;
        };
        let flush = cache.decision_log.as_ref().map_or(0, |l| l.flush_ms);
        let tick = [cache.decisions_poll_ms, cache.bundle_poll_ms, flush]
            .into_iter()
            .filter(|&ms| ms > 0)
            .min()
            .map(|ms| (ms / 4).max(50));
        let Some(tick) = tick else {
            return;
        };
        let _ = hostcalls::set_tick_period(Duration::from_millis(u64::from(tick)));
    }

    /// Every worker: pick up a newer published decision set and a newer verified bundle. The
    /// leader: follow the stream and poll the bundle when due.
    fn tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        self.refresh_bundle(&worker);
        self.refresh_canary(&worker);
        // After the refresh: the pipeline serving now.
        let Some((worker, pipeline, cache)) = self.linked() else {
            return;
        };
        let now_ms = u64::try_from(now_nanos() / 1_000_000).unwrap_or(0);
        self.refresh_decisions(&worker, &pipeline);
        if self.link.worker_id == 0 {
            self.link.worker_id = update_shared_data(link::WORKER_IDS_KEY, |stored| {
                let (write, id) = link::next_worker_id(stored);
                (Some(write), id)
            })
            .unwrap_or(0);
            if self.link.worker_id == 0 {
                return;
            }
        }
        let slowest = u64::from(cache.decisions_poll_ms.max(cache.bundle_poll_ms.min(2_000)));
        let leads = update_shared_data(&link_key(link::LEADER_KEY, &worker.lineage), |stored| {
            link::lead(
                stored,
                self.link.worker_id,
                now_ms,
                slowest.saturating_mul(3).max(1_000),
            )
        })
        .unwrap_or(false);
        if !leads {
            // Leadership moved on (this worker's heartbeat went stale, e.g. a busy worker):
            // the decision records it still holds go back on the shared queue for the new
            // leader, so none is stranded here. A batch in flight comes back on failure and
            // is handed over on the next tick.
            if let Some(queue) = worker.records_queue
                && self.link.log_call.is_none()
            {
                for record in self.link.records.drain(..) {
                    let _ = hostcalls::enqueue_shared_queue(queue, Some(&record));
                }
            }
            return;
        }
        // Up to a tenth of an interval of jitter, from the clock's low bits.
        let jitter = |interval: u64| {
            u64::try_from(now_nanos() % 1_000).unwrap_or(0) * (interval / 10) / 1_000
        };
        let poll = u64::from(cache.decisions_poll_ms);
        if poll > 0 && self.link.stream_call.is_none() && now_ms >= self.link.next_poll_ms {
            self.link.next_poll_ms = now_ms + poll + jitter(poll);
            self.poll_stream(&pipeline, &cache);
        }
        let bundle_poll = u64::from(cache.bundle_poll_ms);
        if bundle_poll > 0
            && self.link.bundle_call.is_none()
            && self.link.fleet_call.is_none()
            && now_ms >= self.link.next_bundle_poll_ms
        {
            self.link.next_bundle_poll_ms = now_ms + bundle_poll + jitter(bundle_poll);
            self.link.bundle_call = dispatch(&link::bundle_call(&cache, self.link.etag.as_deref()));
            if self.link.bundle_call.is_none() {
                self.link.last_error = Some("the bundle poll could not be sent".to_owned());
            }
        }
        self.ship_records(&worker, &cache, now_ms);
    }

    /// The leader takes the workers' records off the shared queue into its bounded buffer
    /// (dropping the oldest beyond it), and ships a batch when due and none is in flight.
    fn ship_records(&mut self, worker: &Worker, cache: &config::ScoreCache, now_ms: u64) {
        let (Some(queue), Some(log)) = (worker.records_queue, cache.decision_log.as_ref()) else {
            return;
        };
        let bound = usize::try_from(log.max_buffered).unwrap_or(usize::MAX);
        let mut dropped = 0u64;
        while let Ok(Some(record)) = hostcalls::dequeue_shared_queue(queue) {
            self.link.records.push_back(record);
            if self.link.records.len() + self.link.records_in_flight.len() > bound {
                self.link.records.pop_front();
                dropped += 1;
            }
        }
        if dropped > 0 && worker.metrics.records_dropped != 0 {
            let _ = hostcalls::increment_metric(
                worker.metrics.records_dropped,
                i64::try_from(dropped).unwrap_or(i64::MAX),
            );
        }
        if self.link.log_call.is_some()
            || self.link.records.is_empty()
            || now_ms < self.link.next_flush_ms
        {
            return;
        }
        self.link.next_flush_ms = now_ms + u64::from(log.flush_ms);
        let n = self.link.records.len().min(link::RECORDS_PER_BATCH);
        let batch: Vec<Vec<u8>> = self.link.records.drain(..n).collect();
        self.link.log_call = dispatch(&link::log_call(cache, &batch));
        if self.link.log_call.is_some() {
            self.link.records_in_flight = batch;
        } else {
            for record in batch.into_iter().rev() {
                self.link.records.push_front(record);
            }
        }
    }

    /// A batch's answer: shipped; refused as malformed (dropped, counted: it would never
    /// pass); or not answered (back to the front of the buffer, for the next flush).
    fn on_log_answer(&mut self, status: u32) {
        let batch = std::mem::take(&mut self.link.records_in_flight);
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let count = |id: u32, n: usize| {
            if id != 0 {
                let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        };
        match status {
            200..=299 => count(worker.metrics.records_shipped, batch.len()),
            400..=499 if status != 401 && status != 403 && status != 429 => {
                count(worker.metrics.records_dropped, batch.len());
                log(
                    LogLevel::Warn,
                    &format!(
                        "signalbox: the score cache refused a batch of {} decision records ({status}); dropped",
                        batch.len()
                    ),
                );
            }
            _ => {
                for record in batch.into_iter().rev() {
                    self.link.records.push_front(record);
                }
            }
        }
    }

    fn poll_stream(&mut self, pipeline: &Pipeline, cache: &config::ScoreCache) {
        let cursor = match &self.link.staging {
            Some(staged) => staged.cursor().to_owned(),
            None if self.link.restart => "0".to_owned(),
            None => pipeline.decisions_cursor(),
        };
        self.link.stream_call = dispatch(&link::stream_call(cache, &cursor));
    }

    /// Reads the published decision set when its generation moved.
    fn refresh_decisions(&self, worker: &Worker, pipeline: &Pipeline) {
        let generation = shared_value(&link_key(link::DECISIONS_GENERATION_KEY, &worker.lineage))
            .map_or(0, |v| link::generation_of(Some(&v)));
        if generation == 0 || generation == pipeline.decisions_generation() {
            return;
        }
        let Some(blob) = shared_value(&link_key(link::DECISIONS_KEY, &worker.lineage)) else {
            return;
        };
        match ActiveDecisions::decode(blob) {
            Ok(set) => {
                if worker.metrics.decisions_active != 0 {
                    let _ = hostcalls::record_metric(
                        worker.metrics.decisions_active,
                        u64::try_from(set.len()).unwrap_or(u64::MAX),
                    );
                }
                if let Some(canary) = worker.canary() {
                    canary.pipeline.replace_decisions(set.clone());
                }
                pipeline.replace_decisions(set);
            }
            Err(e) => log(
                LogLevel::Warn,
                &format!("signalbox: published decision set refused: {}", e.0),
            ),
        }
    }

    /// Follows the published canary: compiles a new one, changes the share, or ends it (also
    /// when the stable bundle caught up with it: promoted).
    fn refresh_canary(&self, worker: &Worker) {
        let Some(stable) = worker.pipeline() else {
            return;
        };
        let (revision, percent) = link::canary_of(
            shared_value(&link_key(link::CANARY_REVISION_KEY, &worker.lineage)).as_deref(),
        );
        let current = worker.canary();
        let active = stable.settings().policy.revision();
        let next = if revision <= active || percent == 0 {
            None
        } else if let Some(c) = current.as_ref().filter(|c| c.revision == revision) {
            Some(Canary {
                percent,
                ..c.clone()
            })
        } else {
            let Some(bytes) = shared_value(&link_key(link::CANARY_KEY, &worker.lineage)) else {
                return;
            };
            match settings_with(&self.config, &bytes, active) {
                Ok(settings) if settings.policy.revision() == revision => {
                    log(
                        LogLevel::Info,
                        &format!(
                            "signalbox: canary revision {revision} serves {percent}% of clients"
                        ),
                    );
                    Some(Canary {
                        pipeline: Rc::new(stable.successor(settings)),
                        revision,
                        percent,
                    })
                }
                Ok(_) => return,
                Err(e) => {
                    Metrics::count(worker.metrics.bundles_rejected);
                    log(
                        LogLevel::Warn,
                        &format!("signalbox: canary bundle refused: {e}"),
                    );
                    None
                }
            }
        };
        if let Ok(mut slot) = worker.canary.try_borrow_mut() {
            *slot = next;
        }
    }

    /// Serves the polled bundle in shared data when it is newer than the one serving (the
    /// leader verified it; every worker verifies it again as it compiles it).
    fn refresh_bundle(&self, worker: &Worker) {
        let Some(pipeline) = worker.pipeline() else {
            return;
        };
        let active = pipeline.settings().policy.revision();
        let polled = shared_value(&link_key(link::BUNDLE_REVISION_KEY, &worker.lineage))
            .map_or(0, |v| link::revision_of(Some(&v)));
        if polled <= active {
            return;
        }
        let Some(bytes) = shared_value(&link_key(link::BUNDLE_KEY, &worker.lineage)) else {
            return;
        };
        match settings_with(&self.config, &bytes, active) {
            Ok(settings) => {
                let revision = settings.policy.revision();
                let _ = record_revision(&worker.lineage, revision);
                worker.replace_pipeline(pipeline.successor(settings));
                log(
                    LogLevel::Info,
                    &format!(
                        "signalbox: bundle revision {revision} from the score cache serves now (was {active})"
                    ),
                );
            }
            Err(e) => {
                Metrics::count(worker.metrics.bundles_rejected);
                log(
                    LogLevel::Warn,
                    &format!("signalbox: polled bundle refused: {e}"),
                );
            }
        }
    }

    /// The leader publishes the envelope's canary for every worker (after verifying it), or
    /// its end.
    fn publish_canary(&mut self, worker: &Worker, canary: Option<&link::CanaryV1>) {
        let revision_key = link_key(link::CANARY_REVISION_KEY, &worker.lineage);
        let Some(canary) = canary else {
            let _ =
                hostcalls::set_shared_data(&revision_key, Some(&link::canary_bytes(0, 0)), None);
            return;
        };
        let Some(stable) = worker.pipeline() else {
            return;
        };
        match settings_with(
            &self.config,
            canary.bundle.as_bytes(),
            stable.settings().policy.revision(),
        ) {
            Ok(settings) => {
                let published = hostcalls::set_shared_data(
                    &link_key(link::CANARY_KEY, &worker.lineage),
                    Some(canary.bundle.as_bytes()),
                    None,
                )
                .and_then(|()| {
                    hostcalls::set_shared_data(
                        &revision_key,
                        Some(&link::canary_bytes(
                            settings.policy.revision(),
                            canary.percent,
                        )),
                        None,
                    )
                });
                if published.is_err() {
                    self.link.last_error = Some("the canary could not be shared".to_owned());
                }
            }
            Err(e) => {
                Metrics::count(worker.metrics.bundles_rejected);
                log(
                    LogLevel::Warn,
                    &format!("signalbox: the score cache's canary was refused: {e}"),
                );
                self.link.last_error = Some(format!("canary refused: {e}"));
            }
        }
    }

    /// The leader's bundle poll answered: verify a newer stable bundle and publish it for every
    /// worker, then report to the fleet.
    fn on_bundle_answer(&mut self, status: u32, body: &[u8], etag: Option<String>) {
        let Some((worker, pipeline, cache)) = self.linked() else {
            return;
        };
        let active = pipeline.settings().policy.revision();
        match link::bundle_answer(status, body, etag) {
            link::BundleAnswer::Envelope(envelope, etag) => {
                self.publish_canary(&worker, envelope.canary.as_ref());
                let now = u64::try_from(now_nanos() / 1_000_000_000).unwrap_or(0);
                let polled = config::parse_replacement(
                    &self.config,
                    config::Replacement {
                        bundle: envelope.stable.as_bytes(),
                        above_revision: active,
                    },
                    now,
                    |var| std::env::var(var).ok(),
                );
                match polled {
                    Ok(Some(settings)) => {
                        let revision = settings.policy.revision();
                        let published = hostcalls::set_shared_data(
                            &link_key(link::BUNDLE_KEY, &worker.lineage),
                            Some(envelope.stable.as_bytes()),
                            None,
                        )
                        .and_then(|()| {
                            hostcalls::set_shared_data(
                                &link_key(link::BUNDLE_REVISION_KEY, &worker.lineage),
                                Some(&revision.to_le_bytes()),
                                None,
                            )
                        });
                        if published.is_ok() {
                            self.link.last_error = None;
                            self.link.etag = etag;
                            self.refresh_bundle(&worker);
                        }
                    }
                    // The bundle serving now: nothing to do.
                    Ok(None) => {
                        self.link.last_error = None;
                        self.link.etag = etag;
                    }
                    Err(e) => {
                        Metrics::count(worker.metrics.bundles_rejected);
                        log(
                            LogLevel::Warn,
                            &format!(
                                "signalbox: the score cache's bundle was refused, revision {active} keeps serving: {e}"
                            ),
                        );
                        self.link.last_error = Some(format!("bundle refused: {e}"));
                        // Asked again only when it changes.
                        self.link.etag = etag;
                    }
                }
            }
            link::BundleAnswer::Unchanged => {}
            link::BundleAnswer::Failed(why) => {
                self.link.last_error = Some(format!("bundle poll failed: {why}"));
            }
        }
        let now_ms = u64::try_from(now_nanos() / 1_000_000).unwrap_or(0);
        let serving = worker
            .pipeline()
            .map_or(active, |p| p.settings().policy.revision());
        let report = link::FleetReportV1 {
            node_id: format!("{}/{}", cache.node_id, worker.lineage),
            stable_revision: serving,
            canary_revision: worker.canary().map(|c| c.revision),
            last_error: self.link.last_error.clone(),
            clock_skew_ms: self.link.clock_skew_ms,
            reported_at: now_ms / 1_000,
        };
        self.link.fleet_call = dispatch(&link::fleet_call(&cache, &report));
    }

    /// The leader's stream answer: apply, publish, ask again at once when there is more.
    fn on_stream_answer(&mut self, status: u32, body: &[u8]) {
        let Some((worker, pipeline, cache)) = self.linked() else {
            return;
        };
        let now = u64::try_from(now_nanos() / 1_000_000_000).unwrap_or(0);
        match link::stream_answer(status, body) {
            // Nothing new: the set and every worker's copy stay as they are (publishing would
            // make every worker copy the whole blob and drop its cached context answers).
            StreamAnswer::Page(page)
                if page.decisions.is_empty()
                    && !page.more
                    && self.link.staging.is_none()
                    && !self.link.restart =>
            {
                self.link.failing = false;
            }
            StreamAnswer::Page(page) => {
                self.link.failing = false;
                let prefix = pipeline.settings().policy.ipv6_prefix();
                let applied = match self.link.staging.take() {
                    Some(staged) => staged.apply(&page, prefix, now),
                    None => match pipeline.apply_decisions_page(&page, now, self.link.restart) {
                        Some(a) => a,
                        None => return,
                    },
                };
                self.link.restart = false;
                if worker.metrics.decisions_unmatched != 0 {
                    let _ = hostcalls::record_metric(
                        worker.metrics.decisions_unmatched,
                        u64::try_from(applied.unmatched).unwrap_or(u64::MAX),
                    );
                }
                let Ok(set) = ActiveDecisions::decode(applied.blob) else {
                    return;
                };
                if page.more {
                    self.link.staging = Some(set);
                    self.poll_stream(&pipeline, &cache);
                    return;
                }
                let published = hostcalls::set_shared_data(
                    &link_key(link::DECISIONS_KEY, &worker.lineage),
                    Some(set.bytes()),
                    None,
                )
                .and_then(|()| {
                    hostcalls::set_shared_data(
                        &link_key(link::DECISIONS_GENERATION_KEY, &worker.lineage),
                        Some(&set.generation().to_le_bytes()),
                        None,
                    )
                });
                if published.is_ok() {
                    pipeline.replace_decisions(set);
                }
            }
            StreamAnswer::Unchanged => self.link.failing = false,
            StreamAnswer::Gone => {
                self.link.staging = None;
                self.link.restart = true;
                self.poll_stream(&pipeline, &cache);
            }
            StreamAnswer::Failed(why) => {
                self.link.staging = None;
                Metrics::count(worker.metrics.stream_failures);
                if !self.link.failing {
                    self.link.failing = true;
                    log(
                        LogLevel::Warn,
                        &format!(
                            "signalbox: the score cache's decision stream failed ({why}); the last set keeps applying, counted in signalbox.decisions.stream_failures"
                        ),
                    );
                }
            }
        }
    }
}

/// Settings from the plugin configuration with `bundle` in place of its inline one, which
/// must be above `active`.
fn settings_with(
    config_bytes: &[u8],
    bundle: &[u8],
    active: u64,
) -> Result<config::Settings, config::ConfigError> {
    let now = u64::try_from(now_nanos() / 1_000_000_000).unwrap_or(0);
    config::parse_with_bundle(
        config_bytes,
        Some(config::Replacement {
            bundle,
            above_revision: active,
        }),
        now,
        |var| std::env::var(var).ok(),
    )
}

/// Sends a link call from the current context; its token, or `None` when the host refused.
fn dispatch(call: &LinkCall) -> Option<u32> {
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    hostcalls::dispatch_http_call(
        &call.cluster,
        headers,
        call.body.as_deref(),
        Vec::new(),
        Duration::from_millis(u64::from(call.timeout_ms)),
    )
    .ok()
}

impl Context for SignalboxRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let (status, body) = call_response(num_headers, body_size);
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        if status != 0
            && let Some(skew) = header("date").and_then(|d| {
                link::clock_skew_ms(&d, u64::try_from(now_nanos() / 1_000_000).unwrap_or(0))
            })
        {
            self.link.clock_skew_ms = skew;
        }
        if self.link.stream_call == Some(token_id) {
            self.link.stream_call = None;
            self.on_stream_answer(status, &body);
        } else if self.link.bundle_call == Some(token_id) {
            self.link.bundle_call = None;
            self.on_bundle_answer(status, &body, header("etag"));
        } else if self.link.fleet_call == Some(token_id) {
            self.link.fleet_call = None;
        } else if self.link.log_call == Some(token_id) {
            self.link.log_call = None;
            self.on_log_answer(status);
        }
    }
}

/// A call's status (0: no answer) and body.
fn call_response(num_headers: usize, body_size: usize) -> (u32, Vec<u8>) {
    if num_headers == 0 {
        return (0, Vec::new());
    }
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok())
        .unwrap_or(0);
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, body)
}

impl RootContext for SignalboxRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let metrics = *self.metrics.get_or_insert_with(Metrics::define);
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let now = u64::try_from(now_nanos() / 1_000_000_000).unwrap_or(0);
        let lineage = hostcalls::get_property(vec!["plugin_name"])
            .ok()
            .flatten()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .unwrap_or_default();
        let parsed = config::parse(&config, now, |var| std::env::var(var).ok()).and_then(|s| {
            record_revision(&lineage, s.policy.revision())
                .map_err(|r| config::ConfigError(r.to_string()))?;
            Ok(s)
        });
        match parsed {
            Ok(settings) => {
                // A bundle polled from the score cache before this configuration arrived, if
                // it is newer: a configuration push never rolls the fleet back.
                let polled = shared_value(&link_key(link::BUNDLE_KEY, &lineage))
                    .filter(|_| settings.score_cache.is_some());
                let inline_revision = settings.policy.revision();
                let settings = match polled.map(|b| settings_with(&config, &b, inline_revision)) {
                    Some(Ok(newer)) => {
                        log(
                            LogLevel::Info,
                            &format!(
                                "signalbox: bundle revision {} polled from the score cache serves instead of the inline revision {inline_revision}",
                                newer.policy.revision()
                            ),
                        );
                        newer
                    }
                    _ => settings,
                };
                let records_queue = settings
                    .score_cache
                    .as_ref()
                    .and_then(|c| c.decision_log.as_ref())
                    .and_then(|_| {
                        hostcalls::register_shared_queue(&link_key(link::RECORDS_QUEUE, &lineage))
                            .ok()
                    });
                let pipeline = Pipeline::new(settings);
                for (level, line) in pipeline.load_logs() {
                    log(level, &line);
                }
                self.worker = Some(Rc::new(Worker {
                    pipeline: std::cell::RefCell::new(Rc::new(pipeline)),
                    metrics,
                    requests: Cell::new(0),
                    breaker_key: format!("{}.{lineage}", breaker::KEY),
                    lineage: lineage.clone(),
                    coalescing: std::cell::RefCell::default(),
                    records_queue,
                    canary: std::cell::RefCell::new(None),
                }));
                self.config = config;
                self.start_link();
                true
            }
            Err(e) => {
                Metrics::count(metrics.bundles_rejected);
                let _ = hostcalls::log(
                    proxy_wasm::types::LogLevel::Error,
                    &format!("signalbox: configuration refused: {e}"),
                );
                false
            }
        }
    }

    /// Always a context: the SDK (proxy-wasm 0.2.5) traps the VM when this returns `None`,
    /// and a trapped VM fails every later request. A root context without a configuration
    /// (its `on_configure` refused one) answers 503 instead.
    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let pipeline = self.worker.as_ref().and_then(|w| w.pipeline());
        Some(match (self.worker.clone(), pipeline) {
            (Some(worker), Some(pipeline)) => Box::new(SignalboxHttp {
                worker,
                pipeline,
                context_id,
                shared: Rc::default(),
                verify: None,
                lookup: None,
                timed: false,
            }),
            _ => Box::new(Unconfigured),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn on_tick(&mut self) {
        self.tick();
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

/// What a stream's later callbacks need from the steps that ran, which may have run in
/// another stream's callback (a coalesced lookup is finished by the stream whose call it was).
#[derive(Default)]
struct StreamShared {
    /// We answered with a local reply (its headers are ours, not origin's).
    local_reply: Cell<bool>,
    /// A header for origin's response (`x-signalbox-verdict` in debug mode).
    response_header: std::cell::RefCell<Option<(String, String)>>,
}

/// A stream waiting for another stream's identical lookup.
struct Parked {
    pipeline: Rc<Pipeline>,
    pending: Pending,
    shared: Rc<StreamShared>,
}

/// Lookups in flight per key (the streams waiting on each), and the waiting streams' state:
/// one call per subject at a time in a worker.
#[derive(Default)]
struct Coalescing {
    in_flight: HashMap<String, Vec<u32>>,
    parked: HashMap<u32, Parked>,
}

/// One HTTP stream: host calls around the pipeline's steps.
pub struct SignalboxHttp {
    worker: Rc<Worker>,
    /// The pipeline this stream started with (a newer bundle serves the next streams).
    pipeline: Rc<Pipeline>,
    /// Envoy's id of this stream's context.
    context_id: u32,
    shared: Rc<StreamShared>,
    /// A verify request waiting for its body.
    verify: Option<PendingVerify>,
    /// A request paused for its score-cache call: the call's token and key.
    lookup: Option<(u32, Pending, String)>,
    /// This request records the timing histograms (sampled when its headers arrived; the
    /// rate-bucket timer may run later, after a lookup).
    timed: bool,
}

impl Context for SignalboxHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some((token, pending, key)) = self.lookup.take() else {
            return;
        };
        if token != token_id {
            self.lookup = Some((token, pending, key));
            return;
        }
        // No headers: the call failed (reset, no upstream); Envoy reports timeouts and
        // connect failures as 504 / 503, which the pipeline treats as no answer.
        let answer = (num_headers > 0)
            .then(|| {
                let status =
                    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
                        .ok()
                        .flatten()
                        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok())?;
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                Some(LookupAnswer { status, body })
            })
            .flatten();
        let now = now_nanos();
        self.record_lookup(answer.as_ref(), now);
        let outcome = self.pipeline.resume_lookup(pending, answer.clone(), now);
        if self.act(outcome, now) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
        wake_parked(&self.worker, &key, answer.as_ref(), now);
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

impl Drop for SignalboxHttp {
    /// A stream reset while parked leaves the queue; one reset while its own lookup was in
    /// flight (Envoy cancels the call) must not strand the streams waiting on it: they are
    /// decided as if the cache had not answered.
    fn drop(&mut self) {
        if let Ok(mut c) = self.worker.coalescing.try_borrow_mut() {
            c.parked.remove(&self.context_id);
        }
        if let Some((_, _, key)) = self.lookup.take() {
            wake_parked(&self.worker, &key, None, now_nanos());
        }
    }
}

/// Finishes the streams parked on `key` with `answer`, each in its own context.
fn wake_parked(worker: &Worker, key: &str, answer: Option<&LookupAnswer>, now: u128) {
    let waiting = worker
        .coalescing
        .try_borrow_mut()
        .ok()
        .and_then(|mut c| c.in_flight.remove(key))
        .unwrap_or_default();
    for id in waiting {
        let Some(parked) = worker
            .coalescing
            .try_borrow_mut()
            .ok()
            .and_then(|mut c| c.parked.remove(&id))
        else {
            continue;
        };
        if hostcalls::set_effective_context(id).is_err() {
            continue;
        }
        let outcome = parked
            .pipeline
            .resume_lookup(parked.pending, answer.cloned(), now);
        match drive(
            worker,
            &parked.pipeline,
            &parked.shared,
            outcome,
            now,
            false,
        ) {
            Driven::Done(Action::Pause) => {}
            // A lookup or a body cannot follow a lookup; pass on what the pipeline decided.
            Driven::Done(_) | Driven::ReadBody(_) | Driven::Lookup(..) => {
                let _ = hostcalls::resume_http_request();
            }
        }
    }
}

/// Where driving a stream's steps stopped.
enum Driven {
    /// The action to return (or to resume with).
    Done(Action),
    /// The stream must wait for its body.
    ReadBody(PendingVerify),
    /// The stream needs the score cache.
    Lookup(signalbox_pipeline::LookupCall, Pending),
}

/// Applies effects and performs steps (taking rate buckets and resuming as often as the
/// pipeline asks) until the stream forwards, answers, or needs a body or a lookup. Host
/// calls go to the current effective context. `now` is the request's time.
fn drive(
    worker: &Worker,
    pipeline: &Pipeline,
    shared: &StreamShared,
    mut outcome: Outcome,
    now: u128,
    timed: bool,
) -> Driven {
    loop {
        apply(worker, shared, outcome.effects);
        match outcome.step {
            Step::Forward => return Driven::Done(Action::Continue),
            Step::Respond(reply) => return Driven::Done(send(shared, reply)),
            Step::ReadBody(pending) => return Driven::ReadBody(pending),
            Step::Lookup(call, pending) => return Driven::Lookup(call, pending),
            Step::TakeBuckets(takes, pending) => {
                let started = if timed { now_nanos() } else { 0 };
                let now_ms = u64::try_from(now / 1_000_000).unwrap_or(0);
                let refused = takes
                    .iter()
                    .filter_map(|take| take_token(worker, take, now_ms))
                    .max();
                Metrics::micros_since(worker.metrics.rate_limit_micros, started);
                outcome = pipeline.resume_buckets(pending, refused, now);
            }
        }
    }
}

fn apply(worker: &Worker, shared: &StreamShared, effects: Effects) {
    let Effects {
        strip_request_headers,
        set_request_headers,
        response_header,
        verdict_summary,
        events,
        logs,
        records,
    } = effects;
    if let Some(queue) = worker.records_queue {
        for record in &records {
            let _ = hostcalls::enqueue_shared_queue(queue, Some(record));
        }
    }
    for name in &strip_request_headers {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }
    for (name, value) in &set_request_headers {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }
    if response_header.is_some()
        && let Ok(mut slot) = shared.response_header.try_borrow_mut()
    {
        *slot = response_header;
    }
    if let Some(summary) = verdict_summary {
        let _ = hostcalls::set_property(vec!["signalbox_verdict"], Some(summary.as_bytes()));
    }
    for event in events {
        worker.metrics.event(event);
    }
    for (level, line) in logs {
        log(level, &line);
    }
}

fn send(shared: &StreamShared, reply: Reply) -> Action {
    shared.local_reply.set(true);
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
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

/// One token from a shared-data bucket (CAS loop); `Some(retry_after)` when refused.
fn take_token(worker: &Worker, take: &BucketTake, now_ms: u64) -> Option<u32> {
    update_shared_data(&take.slot, |stored| {
        let (write, refused) = take.apply(stored, now_ms);
        (Some(write), refused)
    })
    .unwrap_or_else(|| {
        Metrics::count(worker.metrics.rate_cas_gave_up);
        None
    })
}

impl SignalboxHttp {
    /// Drives the pipeline's steps for this stream; a lookup goes out (or joins one in
    /// flight for the same key). `now` is the request's time (unix nanoseconds), read once.
    fn act(&mut self, mut outcome: Outcome, now: u128) -> Action {
        loop {
            match drive(
                &self.worker,
                &self.pipeline,
                &self.shared,
                outcome,
                now,
                self.timed,
            ) {
                Driven::Done(action) => return action,
                Driven::ReadBody(pending) => {
                    self.verify = Some(pending);
                    return Action::Continue;
                }
                Driven::Lookup(call, pending) => {
                    let pipeline = Rc::clone(&self.pipeline);
                    // The circuit breaker, shared by the plugin's workers: while it is open
                    // no lookup goes out (shared data failing never blocks one).
                    let admitted = update_shared_data(&self.worker.breaker_key, |stored| {
                        let (allowed, write) = pipeline.breaker_admit(stored, now);
                        (write, allowed)
                    })
                    .unwrap_or(true);
                    if !admitted {
                        outcome = pipeline.resume_lookup(pending, None, now);
                        continue;
                    }
                    let key = call.key().to_owned();
                    // The same lookup is in flight in this worker: wait for its answer.
                    if let Ok(mut c) = self.worker.coalescing.try_borrow_mut()
                        && let Some(waiting) = c.in_flight.get_mut(&key)
                    {
                        waiting.push(self.context_id);
                        c.parked.insert(
                            self.context_id,
                            Parked {
                                pipeline,
                                pending,
                                shared: Rc::clone(&self.shared),
                            },
                        );
                        Metrics::count(self.worker.metrics.lookups_coalesced);
                        return Action::Pause;
                    }
                    let headers: Vec<(&str, &str)> = call
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    match hostcalls::dispatch_http_call(
                        &call.cluster,
                        headers,
                        None,
                        Vec::new(),
                        Duration::from_millis(u64::from(call.timeout_ms)),
                    ) {
                        Ok(token) => {
                            if let Ok(mut c) = self.worker.coalescing.try_borrow_mut() {
                                c.in_flight.insert(key.clone(), Vec::new());
                            }
                            self.lookup = Some((token, pending, key));
                            return Action::Pause;
                        }
                        // The host could not even send it (unknown cluster): no answer.
                        Err(_) => {
                            self.record_lookup(None, now);
                            outcome = pipeline.resume_lookup(pending, None, now);
                        }
                    }
                }
            }
        }
    }

    /// Counts a lookup's result into the shared circuit breaker.
    fn record_lookup(&self, answer: Option<&LookupAnswer>, now: u128) {
        let ok = Pipeline::lookup_healthy(answer);
        let pipeline = &self.pipeline;
        let _ = update_shared_data(&self.worker.breaker_key, |stored| {
            (Some(pipeline.breaker_record(stored, now, ok)), ())
        });
    }
}

impl HttpContext for SignalboxHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let w = Rc::clone(&self.worker);
        let mut p = Rc::clone(&self.pipeline);
        let started = now_nanos();
        let timed = w.next_is_timed();
        self.timed = timed;
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let source = p
            .needs_source_address(&headers)
            .then(|| {
                hostcalls::get_property(vec!["source", "address"])
                    .ok()
                    .flatten()
            })
            .flatten()
            .and_then(|v| request::parse_source_address(&v));
        // `xds.route_name` (Envoy ≥ 1.28); `route_name` is the older spelling.
        let route_name = p
            .wants_route_name()
            .then(|| {
                [vec!["xds", "route_name"], vec!["route_name"]]
                    .into_iter()
                    .find_map(|path| hostcalls::get_property(path).ok().flatten())
            })
            .flatten();
        // A canary rolling out: the client's stable keyed hash picks the bundle.
        if let Some(canary) = w.canary()
            && let Some(key) = p.canary_key(&headers, source)
            && p.in_canary(&key, canary.revision, canary.percent)
        {
            p = canary.pipeline;
            self.pipeline = Rc::clone(&p);
        }
        let outcome = p.start(
            Request {
                headers,
                source,
                route_name,
                end_of_stream,
            },
            started,
        );
        Metrics::micros_since(w.metrics.eval_micros, if timed { started } else { 0 });
        let action = self.act(outcome, started);
        Metrics::micros_since(w.metrics.request_micros, if timed { started } else { 0 });
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(pending) = &self.verify else {
            return Action::Continue;
        };
        let outcome = self
            .pipeline
            .on_body(pending, body_size, end_of_stream, || {
                hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            });
        match outcome {
            None => Action::Pause,
            Some(outcome) => {
                self.verify = None;
                self.act(outcome, now_nanos())
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.shared.local_reply.get() {
            // No scoring oracle: origin (or anything upstream) must not echo our headers.
            let names = hostcalls::get_map_bytes(MapType::HttpResponseHeaders)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, _)| name);
            for name in self.pipeline.response_headers_to_strip(names) {
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, &name, None);
            }
            if let Ok(slot) = self.shared.response_header.try_borrow()
                && let Some((name, value)) = slot.as_ref()
            {
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
            }
        }
        if self.verify.take().is_some() {
            // Origin answered the verify path before the request body ended (see
            // `Pipeline::verify_overtaken`): counted as failed, origin's answer goes on.
            self.worker.metrics.event(self.pipeline.verify_overtaken());
        }
        Action::Continue
    }
}
