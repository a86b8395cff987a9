//! Rate buckets counted across a fleet of edge instances by the score cache
//! (`POST /v1/rate`), for runtimes where instances share no memory: JS isolates (Workers KV is
//! eventually consistent, so it cannot count) and WASI instances.
//!
//! Each bucket is counted in fixed windows of its budget's `per_seconds`; a window allows the
//! budget's `requests` (its refill, not the token bucket's burst). An instance that lives
//! across requests pre-aggregates: it decides from the cache's last total plus its own
//! requests not yet reported, and reports them in the background when a bucket has a
//! twentieth of its budget unreported or a second has passed ([`Worker::link_calls`]); the
//! fleet can overshoot a budget by what its instances count between reports. A fresh instance
//! per request (WASIp2 hosts) cannot pre-aggregate: it reports its one request and decides from
//! the answer before it goes on, one call per request a budget covers. When the cache does not
//! answer, an instance decides from its own counts (a fresh instance: allows) and reports them
//! later.

use std::collections::HashMap;

use signalbox_pipeline::BucketTake;
use signalbox_wire::{RateCountV1, RateCountsV1, RateTotalsV1};

/// How often an instance reports counts that did not reach a twentieth of their budget.
pub const REPORT_EVERY_MS: u64 = 1_000;

/// Buckets in one report, at most (the cache's limit).
const MAX_REPORTED: usize = 1_000;

/// The most one report may add to a bucket (the cache's limit).
const MAX_COUNT_PER_REPORT: u64 = 1_000_000;

/// The longest window the cache counts (`POST /v1/rate` refuses longer ones): a budget with a
/// longer window is counted by the instance alone.
pub const MAX_REPORTED_WINDOW_SECONDS: u32 = 2_592_000;

#[derive(Debug, Clone)]
struct Bucket {
    limit: u64,
    window: u64,
    /// The cache's total for this window, at its last answer.
    fleet: u64,
    /// Requests counted here and not reported yet.
    unreported: u64,
    /// Requests in a report without an answer yet.
    reporting: u64,
}

impl Bucket {
    /// Requests counted against this window: the fleet's last total, and this instance's own
    /// since.
    fn used(&self) -> u64 {
        self.fleet
            .saturating_add(self.unreported)
            .saturating_add(self.reporting)
    }
}

/// A bucket's key: the pipeline's fingerprint of budget and subject, and the window length.
type Key = ([u8; 8], u32);

/// This instance's view of its buckets.
#[derive(Debug, Default)]
pub(crate) struct FleetBuckets {
    buckets: HashMap<Key, Bucket>,
    /// The keys of the report in flight, in its order, with the window each count is from.
    in_flight: Option<Vec<(Key, u64)>>,
    last_report_ms: u64,
    /// When ended windows were last swept (unix seconds).
    swept_at: u64,
    /// Some reportable bucket has unreported requests, and one has reached a twentieth of its
    /// budget: kept as requests are counted, so asking whether a report is due (on every
    /// request) is not a walk over every bucket.
    unreported: bool,
    threshold_reached: bool,
}

fn hex(fp: &[u8; 8]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

impl FleetBuckets {
    /// Takes one request from each bucket at `now_ms`: `None` if allowed (counted), else the
    /// `retry-after` seconds of the longest refusal (nothing counted). At most `max_buckets`
    /// live buckets are kept; beyond that a new bucket's request is allowed uncounted.
    pub fn take(&mut self, takes: &[BucketTake], now_ms: u64, max_buckets: usize) -> Option<u32> {
        let mut refused: Option<u32> = None;
        let now_s = now_ms / 1_000;
        if self.buckets.len() >= max_buckets && now_s != self.swept_at {
            // At most once a second: a full map is not scanned on every request.
            self.swept_at = now_s;
            self.buckets
                .retain(|(_, per), b| b.window >= now_s / u64::from((*per).max(1)));
        }
        for take in takes {
            let per = take.budget.per_seconds.max(1);
            let (window, left_ms) = window_of(per, now_ms);
            let Some(b) = self.bucket(take, window, max_buckets) else {
                continue;
            };
            // A budget of 0 (a level at 0 %) refuses everything, as the local bucket does.
            if b.used() >= b.limit {
                let seconds = u32::try_from(left_ms.div_ceil(1_000)).unwrap_or(u32::MAX);
                refused = Some(refused.map_or(seconds, |r| r.max(seconds)).max(1));
            }
        }
        if refused.is_none() {
            for take in takes {
                let per = take.budget.per_seconds.max(1);
                let (window, _) = window_of(per, now_ms);
                if let Some(b) = self.bucket(take, window, max_buckets) {
                    b.unreported += 1;
                    if per <= MAX_REPORTED_WINDOW_SECONDS {
                        let threshold = b.unreported >= (b.limit / 20).max(1);
                        self.unreported = true;
                        self.threshold_reached |= threshold;
                    }
                }
            }
        }
        refused
    }

    fn bucket(
        &mut self,
        take: &BucketTake,
        window: u64,
        max_buckets: usize,
    ) -> Option<&mut Bucket> {
        let key = (take.fingerprint, take.budget.per_seconds.max(1));
        let limit = u64::from(take.budget.requests);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= max_buckets {
            return None;
        }
        let b = self.buckets.entry(key).or_insert(Bucket {
            limit,
            window,
            fleet: 0,
            unreported: 0,
            reporting: 0,
        });
        if b.window != window {
            *b = Bucket {
                limit,
                window,
                fleet: 0,
                unreported: 0,
                reporting: 0,
            };
        }
        b.limit = limit;
        Some(b)
    }

    /// Whether a bucket is over its budget with the requests counted here (after a report of
    /// this request was answered): the `retry-after` seconds of the longest refusal.
    pub fn over(&self, takes: &[BucketTake], now_ms: u64) -> Option<u32> {
        let mut refused: Option<u32> = None;
        for take in takes {
            let per = take.budget.per_seconds.max(1);
            let (window, left_ms) = window_of(per, now_ms);
            let Some(b) = self.buckets.get(&(take.fingerprint, per)) else {
                continue;
            };
            if b.window == window && b.fleet.max(b.unreported.saturating_add(b.reporting)) > b.limit
            {
                let seconds = u32::try_from(left_ms.div_ceil(1_000)).unwrap_or(u32::MAX);
                refused = Some(refused.map_or(seconds, |r| r.max(seconds)).max(1));
            }
        }
        refused
    }

    /// The report due at `now_ms`, if any (JSON body of `POST /v1/rate`); its counts move to
    /// "reporting" until [`FleetBuckets::answer`].
    pub fn report(&mut self, now_ms: u64, force: bool) -> Option<Vec<u8>> {
        if self.in_flight.is_some() {
            return None;
        }
        let due = force
            || self.threshold_reached
            || (self.unreported && now_ms.saturating_sub(self.last_report_ms) >= REPORT_EVERY_MS);
        if !due {
            return None;
        }
        let mut keys = Vec::new();
        let mut counts = Vec::new();
        // What this report cannot take (beyond its bucket or count caps) waits for the next.
        let mut left = false;
        for (key, b) in &mut self.buckets {
            if b.unreported == 0 || key.1 > MAX_REPORTED_WINDOW_SECONDS {
                continue;
            }
            if keys.len() >= MAX_REPORTED {
                left = true;
                continue;
            }
            // The cache takes at most a million per bucket and report; the rest waits.
            let count = b.unreported.min(MAX_COUNT_PER_REPORT);
            counts.push(RateCountV1 {
                key: hex(&key.0),
                per_seconds: key.1,
                count: u32::try_from(count).unwrap_or(u32::MAX),
            });
            b.reporting = b.reporting.saturating_add(count);
            b.unreported -= count;
            left |= b.unreported > 0;
            keys.push((*key, b.window));
        }
        self.unreported = left;
        self.threshold_reached = false;
        if keys.is_empty() {
            return None;
        }
        self.last_report_ms = now_ms;
        self.in_flight = Some(keys);
        serde_json::to_vec(&RateCountsV1 { counts }).ok()
    }

    /// The cache's answer to the report in flight (`status` 0: none). A failed report's counts
    /// go back to "unreported", to be sent with the next one.
    pub fn answer(&mut self, status: u16, body: &[u8]) {
        let Some(keys) = self.in_flight.take() else {
            return;
        };
        let totals = (status == 200)
            .then(|| serde_json::from_slice::<RateTotalsV1>(body).ok())
            .flatten()
            .filter(|t| t.totals.len() == keys.len());
        for (i, (key, counted_in)) in keys.iter().enumerate() {
            let Some(b) = self.buckets.get_mut(key) else {
                continue;
            };
            // The bucket moved to a new window meanwhile: the answer is about the old one.
            if b.window != *counted_in {
                continue;
            }
            match totals.as_ref().and_then(|t| t.totals.get(i)) {
                Some(total) => {
                    b.fleet = (*total).max(b.fleet);
                    b.reporting = 0;
                }
                None => {
                    b.unreported = b.unreported.saturating_add(b.reporting);
                    b.reporting = 0;
                    self.unreported = true;
                }
            }
        }
    }
}

/// The window index and the milliseconds left of it.
fn window_of(per_seconds: u32, now_ms: u64) -> (u64, u64) {
    let per_ms = u64::from(per_seconds.max(1)) * 1_000;
    let window = now_ms / per_ms;
    (window, (window + 1) * per_ms - now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalbox_policy::ratelimit::Budget;

    fn take(fp: u8, requests: u32) -> BucketTake {
        BucketTake {
            slot: String::new(),
            fingerprint: [fp; 8],
            budget: Budget {
                capacity: requests,
                requests,
                per_seconds: 60,
            },
        }
    }

    #[test]
    fn local_counts_then_fleet_totals_decide() {
        let t = 1_795_392_000_000;
        let mut f = FleetBuckets::default();
        // The first count is reported at once.
        assert_eq!(f.take(&[take(1, 100)], t, 10), None);
        let _ = f.report(t, false).unwrap();
        f.answer(200, br#"{"totals":[1],"window_left_ms":[60000]}"#);
        // 100 per minute: then the twentieth (5) makes a report due within the second.
        for _ in 0..4 {
            assert_eq!(f.take(&[take(1, 100)], t, 10), None);
        }
        assert!(f.report(t + 10, false).is_none(), "not due yet");
        assert_eq!(f.take(&[take(1, 100)], t, 10), None);
        let body = f.report(t + 10, false).unwrap();
        let sent: RateCountsV1 = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent.counts[0].count, 5);
        assert_eq!(sent.counts[0].key, "0101010101010101");
        // The fleet has used 98 of 100: one more here, then refused until the window ends.
        f.answer(200, br#"{"totals":[98],"window_left_ms":[50000]}"#);
        assert_eq!(f.take(&[take(1, 100)], t + 30, 10), None);
        assert_eq!(f.take(&[take(1, 100)], t + 30, 10), None);
        assert_eq!(f.take(&[take(1, 100)], t + 30, 10), Some(60));
        // A failed report puts its counts back.
        let _ = f.report(t + 2_000, false).unwrap();
        f.answer(0, b"");
        let again: RateCountsV1 =
            serde_json::from_slice(&f.report(t + 4_000, false).unwrap()).unwrap();
        assert_eq!(again.counts[0].count, 2);
        // The next window starts empty.
        assert_eq!(f.take(&[take(1, 100)], t + 60_000, 10), None);
    }

    #[test]
    fn an_answer_about_an_ended_window_is_dropped_and_zero_budgets_refuse() {
        let t = 1_795_392_000_000 + 59_900; // 100 ms before a minute ends
        let mut f = FleetBuckets::default();
        assert_eq!(f.take(&[take(1, 100)], t, 10), None);
        let _ = f.report(t, false).unwrap();
        // The next window starts before the answer about the old one lands.
        assert_eq!(f.take(&[take(1, 100)], t + 200, 10), None);
        f.answer(200, br#"{"totals":[99],"window_left_ms":[100]}"#);
        assert_eq!(
            f.take(&[take(1, 100)], t + 300, 10),
            None,
            "the old total counted"
        );
        assert_eq!(
            f.take(&[take(2, 0)], t, 10),
            Some(1),
            "the window ends in 100 ms"
        );
    }

    #[test]
    fn buckets_are_bounded() {
        let t = 1_795_392_000_000;
        let mut f = FleetBuckets::default();
        for fp in 0..50u8 {
            assert_eq!(f.take(&[take(fp, 1)], t, 8), None);
        }
        assert!(f.buckets.len() <= 8);
    }
}
