//! The manual decisions in force, held in memory by every cache node and kept current by
//! following the store's decision log (so two nodes on one Redis agree within one follow
//! tick). Context answers read it; the stream's snapshot pages come from it.
//!
//! **Precedence** when several decisions cover one request's IP: a decision on the exact
//! address (`ip`) beats any `range`; among ranges the longest prefix wins; between decisions
//! on the same key the latest wins. Users and devices match their key exactly. Across
//! subjects the core ranks user over IP over device (`policy/README.md`). Country and ASN
//! decisions reach edges through the stream only (the cache does not know a request's
//! country or AS); an edge applies them below IP decisions.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use signalbox_wire::ScopeV1;

use crate::model::{Decision, LogEntry};

/// The decisions in force, indexed for lookups.
#[derive(Debug, Default, Clone)]
pub struct ActiveSet {
    /// The log position this set reflects.
    pub applied_seq: u64,
    /// Every active decision by id, with the sequence that added it.
    by_id: HashMap<String, (u64, Decision)>,
    /// Add sequence → id, for snapshot pages in log order.
    by_seq: BTreeMap<u64, String>,
    /// (scope, key) → ids.
    by_key: HashMap<(ScopeV1, String), Vec<String>>,
    /// Range decisions: prefix length → truncated network → ids.
    ranges: BTreeMap<u8, HashMap<IpNet, Vec<String>>>,
}

impl ActiveSet {
    /// Applies log entries in order (entries at or below `applied_seq` are skipped).
    pub fn apply(&mut self, entries: &[LogEntry]) {
        for e in entries {
            if e.seq <= self.applied_seq {
                continue;
            }
            self.applied_seq = e.seq;
            match &e.decision {
                Some(d) => self.insert(e.seq, d.clone()),
                None => self.remove(&e.id),
            }
        }
    }

    /// Records that the log has nothing new up to `seq`.
    pub fn caught_up_to(&mut self, seq: u64) {
        self.applied_seq = self.applied_seq.max(seq);
    }

    fn insert(&mut self, seq: u64, d: Decision) {
        self.remove(&d.id);
        if d.scope == ScopeV1::Range {
            if let Ok(net) = d.key.parse::<IpNet>() {
                self.ranges
                    .entry(net.prefix_len())
                    .or_default()
                    .entry(net)
                    .or_default()
                    .push(d.id.clone());
            }
        } else {
            self.by_key
                .entry((d.scope, d.key.clone()))
                .or_default()
                .push(d.id.clone());
        }
        self.by_seq.insert(seq, d.id.clone());
        self.by_id.insert(d.id.clone(), (seq, d));
    }

    fn remove(&mut self, id: &str) {
        let Some((seq, d)) = self.by_id.remove(id) else {
            return;
        };
        self.by_seq.remove(&seq);
        let drop_id = |ids: &mut Vec<String>| ids.retain(|i| i != id);
        if d.scope == ScopeV1::Range {
            if let Ok(net) = d.key.parse::<IpNet>()
                && let Some(nets) = self.ranges.get_mut(&net.prefix_len())
            {
                if let Some(ids) = nets.get_mut(&net) {
                    drop_id(ids);
                    if ids.is_empty() {
                        nets.remove(&net);
                    }
                }
                if nets.is_empty() {
                    self.ranges.remove(&net.prefix_len());
                }
            }
        } else if let Some(ids) = self.by_key.get_mut(&(d.scope, d.key.clone())) {
            drop_id(ids);
            if ids.is_empty() {
                self.by_key.remove(&(d.scope, d.key));
            }
        }
    }

    /// How many decisions are held (expired ones included until the log drops them).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The latest unexpired decision among `ids`.
    fn latest<'a>(&'a self, ids: Option<&'a Vec<String>>, now: u64) -> Option<&'a Decision> {
        ids?.iter()
            .filter_map(|id| self.by_id.get(id))
            .filter(|(_, d)| d.expires_at > now)
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, d)| d)
    }

    /// The decision in force for a user or device key (or an `ip` subject key).
    pub fn for_key(&self, scope: ScopeV1, key: &str, now: u64) -> Option<&Decision> {
        self.latest(self.by_key.get(&(scope, key.to_owned())), now)
    }

    /// The decision in force for a client IP: its `ip` decision (keyed as the store keys IP
    /// subjects, `ip_key`), else the longest range that contains `ip`.
    pub fn for_ip(&self, ip: Option<IpAddr>, ip_key: &str, now: u64) -> Option<&Decision> {
        if let Some(d) = self.for_key(ScopeV1::Ip, ip_key, now) {
            return Some(d);
        }
        let ip = ip?.to_canonical();
        self.ranges.iter().rev().find_map(|(len, nets)| {
            let net = IpNet::new(ip, *len).ok()?.trunc();
            self.latest(nets.get(&net), now)
        })
    }

    /// The active decisions added after `after` and at or below `through`, oldest first.
    pub fn added_between(
        &self,
        after: u64,
        through: u64,
    ) -> impl Iterator<Item = (u64, &Decision)> {
        self.by_seq
            .range(after.saturating_add(1)..=through.max(after))
            .filter(move |_| through > after)
            .filter_map(|(seq, id)| self.by_id.get(id).map(|(_, d)| (*seq, d)))
    }

    /// Every active decision, oldest first.
    pub fn all(&self) -> impl Iterator<Item = (u64, &Decision)> {
        self.added_between(0, u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use signalbox_wire::ManualActionV1;

    fn add(seq: u64, id: &str, scope: ScopeV1, key: &str, action: ManualActionV1) -> LogEntry {
        LogEntry {
            seq,
            id: id.into(),
            scope,
            key: key.into(),
            at: 0,
            decision: Some(Decision {
                id: id.into(),
                action,
                scope,
                key: key.into(),
                created_at: 0,
                expires_at: 1_000,
                reason: None,
                origin: None,
            }),
        }
    }

    #[test]
    fn the_most_specific_decision_wins_for_an_ip() {
        let mut set = ActiveSet::default();
        set.apply(&[
            add(1, "wide", ScopeV1::Range, "81.0.0.0/8", ManualActionV1::Ban),
            add(
                2,
                "narrow",
                ScopeV1::Range,
                "81.62.0.0/16",
                ManualActionV1::Challenge,
            ),
            add(3, "exact", ScopeV1::Ip, "81.62.10.4", ManualActionV1::Allow),
        ]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let at = |set: &ActiveSet, s: &str| set.for_ip(ip(s), s, 10).map(|d| d.id.clone());
        let at = |s: &str, set: &ActiveSet| at(set, s);
        assert_eq!(at("81.62.10.4", &set).as_deref(), Some("exact"));
        assert_eq!(at("81.62.10.5", &set).as_deref(), Some("narrow"));
        assert_eq!(at("81.1.1.1", &set).as_deref(), Some("wide"));
        assert_eq!(at("82.1.1.1", &set), None);
        assert_eq!(
            set.for_ip(ip("81.1.1.1"), "81.1.1.1", 5_000),
            None,
            "expired"
        );
        set.apply(&[LogEntry {
            decision: None,
            ..add(
                4,
                "narrow",
                ScopeV1::Range,
                "81.62.0.0/16",
                ManualActionV1::Ban,
            )
        }]);
        assert_eq!(at("81.62.10.5", &set).as_deref(), Some("wide"));
        assert_eq!(set.len(), 2);
    }
}
