//! `/metrics` in the Prometheus / OpenMetrics text format, with the official
//! `prometheus-client` crate: requests and latencies per route and status, events accepted and
//! duplicated, decisions in force, and the embedded store's commits (count, writes carried,
//! time, queue depth).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::embedded::CommitStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    outcome: &'static str,
}

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    events: Family<EventLabels, Counter>,
    active_decisions: Gauge,
    commits: Counter,
    commit_writes: Counter,
    commit_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    queue_depth: Gauge,
    commit_stats: std::sync::OnceLock<Arc<CommitStats>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("signalbox_cache");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let events = Family::<EventLabels, Counter>::default();
        let active_decisions = Gauge::default();
        let (commits, commit_writes) = (Counter::default(), Counter::default());
        let commit_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let queue_depth = Gauge::default();
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "request_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "events",
            "Events stored (accepted) or skipped as already stored (duplicate)",
            events.clone(),
        );
        registry.register(
            "active_decisions",
            "Manual decisions held in memory",
            active_decisions.clone(),
        );
        registry.register(
            "commits",
            "Embedded store commits (each one fsync)",
            commits.clone(),
        );
        registry.register(
            "commit_writes",
            "Writes carried by embedded store commits",
            commit_writes.clone(),
        );
        registry.register(
            "commit_seconds_total",
            "Time spent committing, seconds",
            commit_seconds.clone(),
        );
        registry.register(
            "write_queue_depth",
            "Writes waiting for the embedded store's writer",
            queue_depth.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            events,
            active_decisions,
            commits,
            commit_writes,
            commit_seconds,
            queue_depth,
            commit_stats: std::sync::OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Reports the embedded store's commit statistics from now on.
    pub fn watch_commits(&self, stats: Arc<CommitStats>) {
        let _ = self.commit_stats.set(stats);
    }

    /// One request answered.
    pub fn observe_request(&self, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Events stored and skipped.
    pub fn count_events(&self, accepted: usize, duplicates: usize) {
        let add = |outcome, n: usize| {
            self.events
                .get_or_create(&EventLabels { outcome })
                .inc_by(n as u64);
        };
        add("accepted", accepted);
        add("duplicate", duplicates);
    }

    /// Decisions held.
    pub fn set_active_decisions(&self, n: usize) {
        self.active_decisions
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        if let Some(stats) = self.commit_stats.get() {
            let commits = stats.commits.load(Relaxed);
            self.commits
                .inc_by(commits.saturating_sub(self.commits.get()));
            let writes = stats.writes.load(Relaxed);
            self.commit_writes
                .inc_by(writes.saturating_sub(self.commit_writes.get()));
            self.commit_seconds
                .set(stats.commit_micros.load(Relaxed) as f64 / 1e6);
            self.queue_depth.set(stats.queued.load(Relaxed));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
