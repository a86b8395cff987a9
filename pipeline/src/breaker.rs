//! The score-cache circuit breaker: a pure step over a few bytes of state that every worker
//! of a plugin shares (the adapter keeps them in shared data and updates them with
//! compare-and-swap, like the rate buckets).
//!
//! Closed: lookups go out and each result counts in a window of `window_seconds`. When the
//! window has seen at least `min_requests` lookups and `failure_rate_percent` of them failed
//! (an error status, a reset, a timeout — a slow cache is a failed one), the breaker opens
//! for `open_seconds`: no lookup goes out and every request decides without context (the
//! bundle's fail-open / fail-closed choice). Then it is half open: one lookup goes out as a
//! probe; its success closes the breaker, its failure opens it again. A probe that never
//! reports (its worker died) frees the next one after another `open_seconds`.

use signalbox_policy::CacheSettings;

/// The shared-data key of the breaker.
pub const KEY: &str = "signalbox.breaker";

/// The breaker's state, 25 bytes in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerState {
    /// Start of the current counting window (unix seconds).
    pub window_start: u64,
    /// Lookups counted in it.
    pub requests: u32,
    /// Failures among them.
    pub failures: u32,
    /// Open until then (unix seconds); 0: closed.
    pub open_until: u64,
    /// A half-open probe is out (since `open_until`).
    pub probing: bool,
}

impl BreakerState {
    /// Reads the stored bytes; anything unreadable is a closed breaker.
    pub fn decode(stored: Option<&[u8]>) -> Self {
        let Some(b) = stored.filter(|b| b.len() == 25) else {
            return Self::default();
        };
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        };
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map_or(0, u32::from_be_bytes)
        };
        BreakerState {
            window_start: u64_at(0),
            requests: u32_at(8),
            failures: u32_at(12),
            open_until: u64_at(16),
            probing: b.get(24) == Some(&1),
        }
    }

    /// The bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25);
        out.extend_from_slice(&self.window_start.to_be_bytes());
        out.extend_from_slice(&self.requests.to_be_bytes());
        out.extend_from_slice(&self.failures.to_be_bytes());
        out.extend_from_slice(&self.open_until.to_be_bytes());
        out.push(u8::from(self.probing));
        out
    }
}

/// Whether a lookup may go out at `now`, and the state to store when it changes.
pub fn admit(
    state: BreakerState,
    now: u64,
    settings: &CacheSettings,
) -> (bool, Option<BreakerState>) {
    if state.open_until == 0 {
        return (true, None);
    }
    if now < state.open_until {
        return (false, None);
    }
    // Half open: one probe at a time; a probe that never reported frees the next one after
    // another open period.
    let probe_stale = now
        >= state
            .open_until
            .saturating_add(u64::from(settings.breaker_open_seconds));
    if state.probing && !probe_stale {
        return (false, None);
    }
    let mut next = state;
    next.probing = true;
    if probe_stale {
        next.open_until = now;
    }
    (true, Some(next))
}

/// Counts one lookup's result at `now` (`ok`: the cache answered in time).
pub fn record(state: BreakerState, now: u64, ok: bool, settings: &CacheSettings) -> BreakerState {
    if state.open_until != 0 {
        if now < state.open_until {
            // A lookup that went out before the breaker opened: nothing more to learn.
            return state;
        }
        // The half-open probe's result decides.
        return if ok {
            BreakerState {
                window_start: now,
                ..BreakerState::default()
            }
        } else {
            BreakerState {
                open_until: now.saturating_add(u64::from(settings.breaker_open_seconds)),
                ..BreakerState::default()
            }
        };
    }
    let mut next = state;
    if now
        >= state
            .window_start
            .saturating_add(u64::from(settings.breaker_window_seconds))
    {
        next = BreakerState {
            window_start: now,
            ..BreakerState::default()
        };
    }
    next.requests = next.requests.saturating_add(1);
    if !ok {
        next.failures = next.failures.saturating_add(1);
    }
    let rate_reached = u64::from(next.failures) * 100
        >= u64::from(next.requests) * u64::from(settings.breaker_failure_rate_percent);
    if next.requests >= settings.breaker_min_requests && !ok && rate_reached {
        next = BreakerState {
            open_until: now.saturating_add(u64::from(settings.breaker_open_seconds)),
            ..BreakerState::default()
        };
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CacheSettings {
        CacheSettings {
            lookup: Vec::new(),
            always_lookup: Vec::new(),
            timeout_ms: 50,
            fail_closed_action: None,
            breaker_failure_rate_percent: 50,
            breaker_min_requests: 4,
            breaker_window_seconds: 10,
            breaker_open_seconds: 30,
        }
    }

    #[test]
    fn opens_on_the_failure_rate_then_probes_once_and_closes_or_reopens() {
        let s = settings();
        let mut state = BreakerState::default();
        for (i, ok) in [true, false, false, false].into_iter().enumerate() {
            assert!(admit(state, 100, &s).0, "closed: lookup {i} goes out");
            state = record(state, 100, ok, &s);
        }
        assert_eq!(state.open_until, 130, "3 of 4 failed (50%): open for 30 s");
        assert_eq!(admit(state, 129, &s), (false, None));
        // Half open: one probe.
        let (allowed, next) = admit(state, 130, &s);
        assert!(allowed);
        let probing = next.unwrap();
        assert!(probing.probing);
        assert_eq!(
            admit(probing, 131, &s),
            (false, None),
            "one probe at a time"
        );
        // A failed probe reopens; a successful one closes.
        assert_eq!(record(probing, 132, false, &s).open_until, 162);
        let closed = record(probing, 132, true, &s);
        assert_eq!((closed.open_until, closed.requests), (0, 0));
        assert!(admit(closed, 133, &s).0);
        // A probe that never reported frees the next after another open period.
        assert!(admit(probing, 160, &s).0);
        // Bytes round-trip; garbage is a closed breaker.
        assert_eq!(BreakerState::decode(Some(&probing.encode())), probing);
        assert_eq!(BreakerState::decode(Some(b"junk")), BreakerState::default());
    }

    #[test]
    fn a_window_of_few_lookups_or_old_failures_does_not_open_it() {
        let s = settings();
        let mut state = BreakerState::default();
        for _ in 0..3 {
            state = record(state, 100, false, &s);
        }
        assert_eq!(state.open_until, 0, "fewer than min_requests");
        // The window moved on: the old failures no longer count.
        state = record(state, 111, false, &s);
        assert_eq!(
            (state.requests, state.failures, state.open_until),
            (1, 1, 0)
        );
    }
}
