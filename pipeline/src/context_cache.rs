//! A worker's cache of the score cache's answers, keyed by the lookup (`/v1/context?ip=…&user=…`)
//! and kept for the TTL the cache answered (`ttl_seconds`, at most [`MAX_TTL_SECONDS`]). A
//! request whose lookup is cached is decided without a call. Bounded: when full, expired
//! entries go first, then everything (a burst of distinct subjects must not grow a VM).

use std::collections::HashMap;

use signalbox_policy::RemoteContext;

/// Entries one worker keeps.
pub const CAPACITY: usize = 10_000;
/// The longest an answer is kept, whatever the cache says.
pub const MAX_TTL_SECONDS: u32 = 300;

/// The cache.
#[derive(Debug, Default)]
pub struct ContextCache {
    entries: HashMap<String, (RemoteContext, u64)>,
}

impl ContextCache {
    /// The answer for `key` if it has not expired at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<RemoteContext> {
        self.entries
            .get(key)
            .filter(|(_, until)| now_ms < *until)
            .map(|(c, _)| *c)
    }

    /// Keeps `context` for `ttl_seconds` (0: not kept).
    pub fn insert(&mut self, key: &str, context: RemoteContext, ttl_seconds: u32, now_ms: u64) {
        if ttl_seconds == 0 {
            return;
        }
        if self.entries.len() >= CAPACITY && !self.entries.contains_key(key) {
            self.entries.retain(|_, (_, until)| now_ms < *until);
            if self.entries.len() >= CAPACITY {
                self.entries.clear();
            }
        }
        let until = now_ms.saturating_add(u64::from(ttl_seconds.min(MAX_TTL_SECONDS)) * 1_000);
        self.entries.insert(key.to_owned(), (context, until));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalbox_policy::SubjectContext;

    fn ctx(score: u32) -> RemoteContext {
        RemoteContext {
            ip: Some(SubjectContext {
                score,
                decision: None,
            }),
            ..RemoteContext::default()
        }
    }

    #[test]
    fn answers_live_for_their_ttl_and_the_cache_stays_bounded() {
        let mut c = ContextCache::default();
        c.insert("a", ctx(40), 30, 1_000);
        assert_eq!(c.get("a", 30_999), Some(ctx(40)));
        assert_eq!(c.get("a", 31_000), None);
        c.insert("b", ctx(1), 0, 1_000);
        assert_eq!(c.get("b", 1_000), None, "ttl 0 is not kept");
        c.insert("c", ctx(1), 86_400, 0);
        assert_eq!(c.get("c", 300_000), None, "capped at five minutes");
        for i in 0..CAPACITY + 10 {
            c.insert(&i.to_string(), ctx(2), 60, 0);
        }
        assert!(c.len() <= CAPACITY);
    }
}
