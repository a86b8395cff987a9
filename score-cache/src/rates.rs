//! Rate-bucket counts for edges that cannot share counters among themselves (edge workers in
//! CDN runtimes: each JS isolate or WASI instance sees only its own requests). Edges report
//! their counts per bucket in batches (`POST /v1/rate`) and get back each bucket's total in its
//! current fixed window of `per_seconds`.
//!
//! The counts live in this process's memory, not in the store: they are worth seconds to
//! minutes, and a restart (or a second cache node behind a balancer) only makes limits looser
//! for one window. Windows that ended are dropped as new counts come, and the map is bounded:
//! beyond [`MAX_BUCKETS`] live buckets, new ones are counted as if empty (a limit looser, never
//! a request refused for memory).

use std::collections::HashMap;

/// Live buckets kept at most.
pub const MAX_BUCKETS: usize = 1_000_000;

/// The counts of every live bucket.
#[derive(Debug, Default)]
pub struct RateCounts {
    /// (key, per_seconds) -> (window index, total).
    buckets: HashMap<(String, u32), (u64, u64)>,
    /// When windows were last swept, unix seconds.
    swept_at: u64,
}

impl RateCounts {
    /// Adds `count` to the bucket's current window at `now_ms` and returns its total and the
    /// milliseconds left of the window.
    pub fn add(&mut self, key: &str, per_seconds: u32, count: u32, now_ms: u64) -> (u64, u64) {
        let per = u64::from(per_seconds.max(1));
        let now_s = now_ms / 1_000;
        let window = now_s / per;
        let left_ms = ((window + 1) * per * 1_000).saturating_sub(now_ms);
        self.sweep(now_s);
        let full = self.buckets.len() >= MAX_BUCKETS;
        let slot = (key.to_owned(), per_seconds);
        match self.buckets.get_mut(&slot) {
            Some((w, total)) if *w == window => {
                *total = total.saturating_add(u64::from(count));
                (*total, left_ms)
            }
            Some(entry) => {
                *entry = (window, u64::from(count));
                (u64::from(count), left_ms)
            }
            None if full => (u64::from(count), left_ms),
            None => {
                self.buckets.insert(slot, (window, u64::from(count)));
                (u64::from(count), left_ms)
            }
        }
    }

    /// Live buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Drops buckets whose window ended, at most once a second.
    fn sweep(&mut self, now_s: u64) {
        if now_s == self.swept_at {
            return;
        }
        self.swept_at = now_s;
        self.buckets.retain(|(_, per), (window, _)| {
            let per = u64::from((*per).max(1));
            *window >= now_s / per
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_within_a_window_and_restart_in_the_next() {
        let mut r = RateCounts::default();
        let t = 1_795_392_000_000; // a multiple of 60 s
        assert_eq!(r.add("a", 60, 3, t), (3, 60_000));
        assert_eq!(r.add("a", 60, 4, t + 1_500), (7, 58_500));
        assert_eq!(r.add("b", 60, 1, t + 1_500).0, 1, "another key");
        assert_eq!(r.add("a", 10, 1, t + 1_500).0, 1, "another window length");
        assert_eq!(
            r.add("a", 60, 2, t + 60_000),
            (2, 60_000),
            "the next window"
        );
        // Ended windows are swept: `b` (60 s) ended, `a` (60 s) restarted, `a`/10 ended.
        assert_eq!(r.len(), 1);
    }
}
