//! Rate buckets in proxy-wasm shared data, shared by every worker VM of the plugin.
//!
//! Shared data never deletes, so the keyspace is bounded: a rate key hashes to one of
//! `rate_limit_slots` slots (`signalbox.rl.<slot>`). A slot holds the key's 8-byte fingerprint
//! and its 12-byte bucket. A slot held by another key is taken over once that key's bucket has
//! refilled (idle); otherwise the two keys share the bucket until then — a collision can only
//! make limits stricter, never looser. Updates use compare-and-swap with a few retries; when
//! CAS keeps losing, the request is allowed and counted (fail open).

use std::hash::{DefaultHasher, Hasher};

use signalbox_policy::ratelimit::{BucketState, Budget, Step, step};

/// How many CAS attempts before giving up.
pub const CAS_ATTEMPTS: usize = 8;

/// Slot key and fingerprint of a rate key. The hash is std's SipHash-1-3 with its fixed keys:
/// every worker VM of one build agrees on it, which is all shared data needs (a new build may
/// move keys to other slots; their buckets then start full, once). It replaced SHA-256, which
/// cost more than the rest of the bucket step: a cryptographic hash buys nothing here, since
/// with a few thousand slots anyone can find keys that share one, and sharing only makes a
/// limit stricter.
pub fn slot_of(key: &str, slots: u32) -> (String, [u8; 8]) {
    let mut hasher = DefaultHasher::new();
    hasher.write(key.as_bytes());
    let hash = hasher.finish();
    let slot = hash % u64::from(slots.max(1));
    let mut key = String::with_capacity(SLOT_PREFIX.len() + 10);
    key.push_str(SLOT_PREFIX);
    push_decimal(&mut key, slot);
    (key, hash.to_be_bytes())
}

/// The shared-data key prefix of a rate slot.
const SLOT_PREFIX: &str = "signalbox.rl.";

/// Appends `n` in decimal (what `format!` would write, without its machinery).
pub(crate) fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let mut rest = n;
    loop {
        if let Some(d) = digits.get_mut(len) {
            *d = b'0' + (rest % 10) as u8;
        }
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for d in digits.iter().take(len).rev() {
        out.push(char::from(*d));
    }
}

/// Decodes a slot value into (fingerprint, state).
pub fn decode(value: &[u8]) -> Option<([u8; 8], BucketState)> {
    let fp: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some((fp, BucketState::from_bytes(value.get(8..)?)?))
}

/// Encodes a slot value.
pub fn encode(fp: [u8; 8], state: BucketState) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&fp);
    out.extend_from_slice(&state.to_bytes());
    out
}

/// One bucket step against the stored slot value: the state to start from is the slot's own
/// (same fingerprint), a fresh bucket (slot empty, or another key's idle bucket), or the other
/// key's bucket (collision while it is busy).
pub fn step_slot(stored: Option<&[u8]>, fp: [u8; 8], now_ms: u64, budget: Budget) -> Step {
    let state = match stored.and_then(decode) {
        Some((owner, state)) if owner == fp => Some(state),
        Some((_, state)) => {
            let idle_ms = u64::from(budget.per_seconds) * 1000;
            (now_ms.saturating_sub(state.updated_ms) < idle_ms).then_some(state)
        }
        None => None,
    };
    step(state, now_ms, 1, budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_what_format_writes() {
        for n in [
            0,
            7,
            10,
            99,
            100,
            4095,
            65_536,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut s = String::new();
            push_decimal(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn slots_are_bounded_and_stable() {
        let (a, fa) = slot_of("per-ip|ip|1.2.3.4", 16);
        assert_eq!(slot_of("per-ip|ip|1.2.3.4", 16), (a.clone(), fa));
        let n: std::collections::BTreeSet<String> =
            (0..1000).map(|i| slot_of(&format!("k{i}"), 16).0).collect();
        assert_eq!(n.len(), 16);
    }

    #[test]
    fn own_bucket_drains_and_idle_foreign_slot_is_taken_over() {
        let budget = Budget {
            capacity: 2,
            requests: 2,
            per_seconds: 60,
        };
        let (_, mine) = slot_of("a", 4);
        let s1 = step_slot(None, mine, 1000, budget);
        let v1 = encode(mine, s1.state);
        let s2 = step_slot(Some(&v1), mine, 1000, budget);
        let v2 = encode(mine, s2.state);
        assert!(s1.allowed && s2.allowed);
        assert!(!step_slot(Some(&v2), mine, 1000, budget).allowed);
        let other = [9u8; 8];
        assert!(
            !step_slot(Some(&v2), other, 2000, budget).allowed,
            "busy foreign bucket is shared"
        );
        assert!(
            step_slot(Some(&v2), other, 1000 + 60_000, budget).allowed,
            "idle foreign bucket is taken over"
        );
        assert!(step_slot(Some(b"garbage"), mine, 0, budget).allowed);
    }
}
