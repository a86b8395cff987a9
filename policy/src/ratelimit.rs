//! Token buckets as a pure step function, and the keys a request is counted under.
//!
//! The state is 12 bytes ([`BucketState::to_bytes`]), so an adapter can keep it in proxy-wasm
//! shared data (with compare-and-swap) or a key-value store. Tokens are counted in thousandths
//! and refill continuously at `requests / per_seconds`; time that did not yet earn a whole
//! thousandth is carried over, never lost or double-counted. A budget may shrink as the risk
//! level rises (`level_percent`): risky clients get less.

use std::net::IpAddr;

use crate::facts::Facts;
use crate::policy::{Policy, RateBudget};
use crate::verdict::{Level, Verdict};
use crate::wire::RateKeyV1;

/// A bucket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Tokens left, in thousandths.
    pub milli_tokens: u32,
    /// Unix milliseconds the tokens were counted at.
    pub updated_ms: u64,
}

impl BucketState {
    /// 12 bytes, big-endian.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        let (a, b) = out.split_at_mut(4);
        a.copy_from_slice(&self.milli_tokens.to_be_bytes());
        b.copy_from_slice(&self.updated_ms.to_be_bytes());
        out
    }

    /// From [`BucketState::to_bytes`]; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let milli_tokens = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let updated_ms = u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
        (bytes.len() == 12).then_some(Self {
            milli_tokens,
            updated_ms,
        })
    }
}

/// A bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bucket size, in requests.
    pub capacity: u32,
    /// Refill: `requests` per `per_seconds`.
    pub requests: u32,
    /// Refill window, seconds (at least 1).
    pub per_seconds: u32,
}

impl Budget {
    /// A bundle budget at a risk level: capacity and refill scaled by `level_percent`.
    pub fn at_level(budget: &RateBudget, level: Level) -> Self {
        let pct = u64::from(
            budget
                .level_percent
                .get(level as usize)
                .copied()
                .unwrap_or(100),
        );
        let scale = |v: u32| u32::try_from(u64::from(v) * pct / 100).unwrap_or(u32::MAX);
        Budget {
            capacity: scale(budget.burst),
            requests: scale(budget.requests),
            per_seconds: budget.per_seconds.max(1),
        }
    }
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Whether the request may go.
    pub allowed: bool,
    /// The state to store.
    pub state: BucketState,
    /// When refused: seconds until it would be allowed (at least 1).
    pub retry_after_seconds: u32,
}

/// Takes `cost` tokens from a bucket at `now_ms`, if it has them. A missing state is a full
/// bucket. A clock that went backwards (another edge's) refills nothing.
pub fn step(state: Option<BucketState>, now_ms: u64, cost: u32, budget: Budget) -> Step {
    let capacity_milli = u64::from(budget.capacity) * 1000;
    let per_ms = u64::from(budget.per_seconds.max(1)) * 1000; // ms per `requests` tokens
    let requests = u64::from(budget.requests);
    let (mut milli, mut updated) = match state {
        Some(s) => (u64::from(s.milli_tokens).min(capacity_milli), s.updated_ms),
        None => (capacity_milli, now_ms),
    };
    let elapsed = now_ms.saturating_sub(updated);
    if requests > 0 && elapsed > 0 {
        // thousandths earned: elapsed_ms * requests * 1000 / (per_seconds * 1000)
        let earned = u128::from(elapsed) * u128::from(requests) * 1000 / u128::from(per_ms);
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        if milli.saturating_add(earned) >= capacity_milli {
            milli = capacity_milli;
            updated = now_ms;
        } else {
            milli += earned;
            // Advance only by the time those thousandths took; the rest carries over.
            let used =
                (u128::from(earned) * u128::from(per_ms)).div_ceil(u128::from(requests) * 1000);
            updated = updated
                .saturating_add(u64::try_from(used).unwrap_or(elapsed))
                .min(now_ms);
        }
    } else if elapsed > 0 && milli >= capacity_milli {
        updated = now_ms;
    }
    let cost_milli = u64::from(cost) * 1000;
    let allowed = milli >= cost_milli;
    let retry_after_seconds = if allowed {
        0
    } else if requests == 0 || cost_milli > capacity_milli {
        budget.per_seconds.max(1)
    } else {
        let missing = cost_milli - milli;
        let ms = (u128::from(missing) * u128::from(per_ms)).div_ceil(u128::from(requests) * 1000);
        u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1)
    };
    if allowed {
        milli -= cost_milli;
    }
    Step {
        allowed,
        state: BucketState {
            milli_tokens: u32::try_from(milli).unwrap_or(u32::MAX),
            updated_ms: updated,
        },
        retry_after_seconds,
    }
}

/// One bucket a request is counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateKey {
    /// `"<budget>|ip|<subject>"`, `"<budget>|user|<key>"` or `"<budget>|route|<subject>"`.
    pub key: String,
    /// The budget at the verdict's level.
    pub budget: Budget,
}

impl Policy {
    /// The buckets this request is counted in, with budgets at the verdict's level. IPv6
    /// clients are counted per subject prefix (default /64); requests without a user key skip
    /// user budgets, requests without a client address skip IP and route budgets (they are
    /// per client: one shared bucket would let one client throttle everyone without an
    /// address); route budgets apply only on their route.
    pub fn rate_keys(&self, facts: &Facts, verdict: &Verdict) -> Vec<RateKey> {
        let ip: Option<IpAddr> = facts.client_ip;
        self.rate_budgets
            .iter()
            .filter(|b| b.route.is_none() || b.route == verdict.route)
            .filter_map(|b| {
                let subject = match b.key {
                    RateKeyV1::Ip | RateKeyV1::Route => self.ip_subject_key(ip?),
                    RateKeyV1::User => facts.user.clone()?,
                };
                let kind = match b.key {
                    RateKeyV1::Ip => "ip",
                    RateKeyV1::User => "user",
                    RateKeyV1::Route => "route",
                };
                // Joined without `format!`: this runs for every passing request.
                let mut key = String::with_capacity(b.name.len() + kind.len() + subject.len() + 2);
                key.push_str(&b.name);
                key.push('|');
                key.push_str(kind);
                key.push('|');
                key.push_str(&subject);
                Some(RateKey {
                    key,
                    budget: Budget::at_level(b, verdict.level),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn budget(capacity: u32, requests: u32, per_seconds: u32) -> Budget {
        Budget {
            capacity,
            requests,
            per_seconds,
        }
    }

    #[test]
    fn drains_then_refills() {
        let b = budget(3, 1, 1);
        let mut s = None;
        for _ in 0..3 {
            let st = step(s, 1_000, 1, b);
            assert!(st.allowed);
            s = Some(st.state);
        }
        let refused = step(s, 1_000, 1, b);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_seconds, 1);
        assert!(step(Some(refused.state), 2_000, 1, b).allowed);
    }

    #[test]
    fn slow_rates_accumulate_across_frequent_calls() {
        // 1 request per 3 s, probed every millisecond: the fractions must add up.
        let b = budget(1, 1, 3);
        let mut s = Some(step(None, 0, 1, b).state);
        let mut allowed_at = None;
        for t in 1..=3_001u64 {
            let st = step(s, t, 1, b);
            s = Some(st.state);
            if st.allowed {
                allowed_at = Some(t);
                break;
            }
        }
        assert_eq!(allowed_at, Some(3_000));
    }

    #[test]
    fn state_round_trips_in_12_bytes() {
        let s = BucketState {
            milli_tokens: 123_456,
            updated_ms: 1_795_392_000_123,
        };
        assert_eq!(BucketState::from_bytes(&s.to_bytes()), Some(s));
        assert_eq!(BucketState::from_bytes(&[0; 11]), None);
        assert_eq!(BucketState::from_bytes(&[0; 13]), None);
    }

    #[test]
    fn zero_and_oversized_budgets() {
        let zero = budget(0, 0, 60);
        let st = step(None, 0, 1, zero);
        assert!(!st.allowed);
        assert_eq!(st.retry_after_seconds, 60);
        assert!(!step(None, 0, 5, budget(4, 4, 1)).allowed);
        assert!(
            step(
                Some(BucketState {
                    milli_tokens: 0,
                    updated_ms: u64::MAX
                }),
                0,
                1,
                budget(1, 1, 1)
            )
            .retry_after_seconds
                >= 1
        );
    }

    proptest! {
        /// Over any window, a bucket never allows more than its capacity plus what the window
        /// refills.
        #[test]
        fn never_more_than_the_budget(
            capacity in 1u32..20, requests in 1u32..20, per_seconds in 1u32..30,
            gaps in proptest::collection::vec(0u64..3_000, 1..300),
        ) {
            let b = budget(capacity, requests, per_seconds);
            let mut s = None;
            let mut now = 1_000_000u64;
            let mut allowed = Vec::new();
            for gap in gaps {
                now += gap;
                let st = step(s, now, 1, b);
                s = Some(st.state);
                if st.allowed {
                    allowed.push(now);
                }
            }
            for (i, &start) in allowed.iter().enumerate() {
                for (j, &end) in allowed.iter().enumerate().skip(i) {
                    let window_ms = end - start;
                    let refill = (u128::from(window_ms) * u128::from(requests)).div_ceil(u128::from(per_seconds) * 1000);
                    let bound = u128::from(capacity) + refill;
                    prop_assert!((j - i + 1) as u128 <= bound, "{} allowed in {} ms, bound {}", j - i + 1, window_ms, bound);
                }
            }
        }

        /// A full bucket allows exactly its capacity at one instant.
        #[test]
        fn burst_is_the_capacity(capacity in 0u32..50) {
            let b = budget(capacity, 1, 60);
            let mut s = None;
            let mut n = 0;
            for _ in 0..60 {
                let st = step(s, 5_000, 1, b);
                s = Some(st.state);
                n += u32::from(st.allowed);
            }
            prop_assert_eq!(n, capacity);
        }
    }
}
