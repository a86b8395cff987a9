//! The edge's copy of the score cache's manual decisions (bans, challenges, throttles, allows
//! by ip, range, user, device, AS number or country), so a decision reaches every request
//! without a call.
//!
//! One worker per process (the leader) follows `GET /v1/decisions/stream` and publishes the
//! set as one **blob** in shared data; every worker reads the blob only when its generation
//! changes, and keeps it as its index: the blob is a header and sorted fixed-size records,
//! searched in place (no second copy, no per-entry allocation). A request costs a few binary
//! searches: one per distinct IP prefix length present, one per user, device, ASN, country.
//!
//! Record (32 bytes): `kind u8 | prefix u8 | action u8 | 0 u8 | expires_at u32 LE | key u128
//! BE | id u64 LE`, sorted by kind, prefix (longest first), key, then id. IPv4 addresses are
//! IPv4-mapped IPv6 (`/24` is prefix 120). User and device keys are a 64-bit SipHash of the
//! key (the same hash the leader and every worker compute); an IPv6 `ip` decision covers the
//! address's subject prefix, as the cache keys it.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use signalbox_policy::{ManualAction, ManualDecision, ManualDecisions};
use signalbox_wire::{DecisionPageV1, ManualActionV1, ScopeV1, StreamDecisionV1};

/// The blob's first bytes.
pub const MAGIC: &[u8; 4] = b"SBD1";
/// Bytes per record.
pub const RECORD_BYTES: usize = 32;

/// What a record is about, in sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Kind {
    Network = 0,
    User = 1,
    Device = 2,
    Asn = 3,
    Country = 4,
}

const KINDS: usize = 5;

/// One decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    /// Longest first within a kind (sorted by `Reverse` of it).
    prefix_rev: u8,
    key: u128,
    id: u64,
    action: ManualAction,
    expires_at: u32,
}

impl Entry {
    /// The records' order.
    fn order(&self) -> (Kind, u8, u128, u64) {
        (self.kind, self.prefix_rev, self.key, self.id)
    }

    fn prefix(&self) -> u8 {
        255 - self.prefix_rev
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.push(self.prefix());
        out.push(action_byte(self.action));
        out.push(0);
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        out.extend_from_slice(&self.key.to_be_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let kind = match *bytes.first()? {
            0 => Kind::Network,
            1 => Kind::User,
            2 => Kind::Device,
            3 => Kind::Asn,
            4 => Kind::Country,
            _ => return None,
        };
        let prefix = *bytes.get(1)?;
        let action = match *bytes.get(2)? {
            0 => ManualAction::Ban,
            1 => ManualAction::Challenge,
            2 => ManualAction::Throttle,
            3 => ManualAction::Allow,
            _ => return None,
        };
        Some(Entry {
            kind,
            prefix_rev: 255 - prefix,
            expires_at: u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?),
            key: u128::from_be_bytes(bytes.get(8..24)?.try_into().ok()?),
            id: u64::from_le_bytes(bytes.get(24..32)?.try_into().ok()?),
            action,
        })
    }
}

fn action_byte(action: ManualAction) -> u8 {
    match action {
        ManualAction::Ban => 0,
        ManualAction::Challenge => 1,
        ManualAction::Throttle => 2,
        ManualAction::Allow => 3,
    }
}

/// 64-bit SipHash (fixed keys) of a user or device key, as records store it.
pub fn key_hash(kind_tag: &str, key: &str) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    kind_tag.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

fn mapped(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(key: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => key,
        p => key & (u128::MAX << (128 - u32::from(p))),
    }
}

/// The (kind, prefix, key) a stream decision is about, or `None` for one this edge cannot
/// match locally (a hashed IP key, an unparsable key).
fn subject_of(scope: ScopeV1, key: &str, ipv6_prefix: u8) -> Option<(Kind, u8, u128)> {
    match scope {
        ScopeV1::Ip | ScopeV1::Range => {
            let (addr, prefix) = match key.split_once('/') {
                Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
                None => {
                    let a = key.parse::<IpAddr>().ok()?;
                    let p = match a.to_canonical() {
                        IpAddr::V4(_) => 32,
                        IpAddr::V6(_) => ipv6_prefix,
                    };
                    (a, p)
                }
            };
            let prefix = match addr.to_canonical() {
                IpAddr::V4(_) => 96u8.checked_add(prefix.min(32))?,
                IpAddr::V6(_) => prefix.min(128),
            };
            Some((Kind::Network, prefix, mask(mapped(addr), prefix)))
        }
        ScopeV1::User => Some((Kind::User, 0, u128::from(key_hash("user", key)))),
        ScopeV1::Device => Some((Kind::Device, 0, u128::from(key_hash("device", key)))),
        ScopeV1::Asn => Some((
            Kind::Asn,
            0,
            u128::from(
                key.trim_start_matches(['A', 'S', 'a', 's'])
                    .parse::<u32>()
                    .ok()?,
            ),
        )),
        ScopeV1::Country => {
            let b = key.as_bytes();
            (b.len() == 2).then(|| {
                let upper = [
                    b.first().copied().unwrap_or(0).to_ascii_uppercase(),
                    b.get(1).copied().unwrap_or(0).to_ascii_uppercase(),
                ];
                (Kind::Country, 0, u128::from(u16::from_be_bytes(upper)))
            })
        }
    }
}

fn manual_action(action: ManualActionV1) -> ManualAction {
    match action {
        ManualActionV1::Ban => ManualAction::Ban,
        ManualActionV1::Challenge => ManualAction::Challenge,
        ManualActionV1::Throttle => ManualAction::Throttle,
        ManualActionV1::Allow => ManualAction::Allow,
    }
}

/// The set as published: generation, the stream cursor it reflects, and the records.
/// Cloning is cheap: the blob and the IPv4 index are shared (a canary's pipeline and a
/// successor pipeline hold the same copy as the one serving).
#[derive(Debug, Clone, Default)]
pub struct ActiveDecisions {
    blob: Arc<Vec<u8>>,
    /// Where the records start in `blob`.
    records_at: usize,
    generation: u64,
    cursor: String,
    /// Record index ranges per kind.
    kinds: [(usize, usize); KINDS],
    /// For `Network`: (prefix, start, end, may hold an IPv4 address) per distinct prefix,
    /// longest first.
    prefixes: Vec<(u8, usize, usize, bool)>,
    /// For IPv4 addresses: per /16, a bit per prefix length (`prefix - 96`, 0..=32) that has a
    /// record covering some address of that /16. A miss usually costs one load: no search.
    /// Empty when the set has no IPv4 network records (then 512 KiB are not spent).
    ipv4_index: Arc<Vec<u64>>,
}

/// `::ffff:0:0/96`, where IPv4 addresses live as IPv4-mapped IPv6.
const V4_MAPPED: u128 = 0xffff_0000_0000;

/// Why a blob was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlob(pub &'static str);

impl ActiveDecisions {
    /// Reads a published blob (a bad one is refused; the caller keeps the set it has).
    pub fn decode(blob: Vec<u8>) -> Result<Self, BadBlob> {
        let header = |r: std::ops::Range<usize>| blob.get(r).ok_or(BadBlob("truncated header"));
        if header(0..4)? != MAGIC {
            return Err(BadBlob("not a decision set"));
        }
        let generation = u64::from_le_bytes(
            header(4..12)?
                .try_into()
                .map_err(|_| BadBlob("truncated header"))?,
        );
        let cursor_len = usize::from(u16::from_le_bytes(
            header(12..14)?
                .try_into()
                .map_err(|_| BadBlob("truncated header"))?,
        ));
        let cursor = String::from_utf8(header(14..14 + cursor_len)?.to_vec())
            .map_err(|_| BadBlob("cursor is not UTF-8"))?;
        let records_at = 14 + cursor_len;
        let body = blob.get(records_at..).ok_or(BadBlob("truncated"))?;
        if body.len() % RECORD_BYTES != 0 {
            return Err(BadBlob("records are not whole"));
        }
        let mut set = ActiveDecisions {
            records_at,
            generation,
            cursor,
            ..ActiveDecisions::default()
        };
        let count = body.len() / RECORD_BYTES;
        let mut ipv4_index: Vec<u64> = Vec::new();
        let mut previous: Option<Entry> = None;
        for i in 0..count {
            let e = record(body, i).ok_or(BadBlob("bad record"))?;
            if previous.is_some_and(|p| p.order() > e.order()) {
                return Err(BadBlob("records out of order"));
            }
            previous = Some(e);
            let slot = set
                .kinds
                .get_mut(e.kind as usize)
                .ok_or(BadBlob("bad kind"))?;
            if slot.1 == 0 {
                *slot = (i, i + 1);
            } else {
                slot.1 = i + 1;
            }
            if e.kind == Kind::Network {
                let holds_v4 =
                    mask(V4_MAPPED, e.prefix().min(96)) == mask(e.key, e.prefix().min(96));
                match set.prefixes.last_mut() {
                    Some(last) if last.0 == e.prefix() => {
                        last.2 = i + 1;
                        last.3 |= holds_v4;
                    }
                    _ => set.prefixes.push((e.prefix(), i, i + 1, holds_v4)),
                }
                if holds_v4 && e.prefix() >= 96 {
                    if ipv4_index.is_empty() {
                        ipv4_index = vec![0; 1 << 16];
                    }
                    let bit = 1u64 << (e.prefix() - 96);
                    // The /16s the record covers: one for /16 and longer, 2^(16-len) otherwise.
                    let v4 = u32::try_from(e.key & 0xffff_ffff).unwrap_or(0);
                    let len = u32::from(e.prefix() - 96);
                    let first = usize::try_from(v4 >> 16).unwrap_or(0);
                    let count = if len >= 16 { 1 } else { 1usize << (16 - len) };
                    for slot in ipv4_index.iter_mut().skip(first).take(count) {
                        *slot |= bit;
                    }
                }
            }
        }
        set.blob = Arc::new(blob);
        set.ipv4_index = Arc::new(ipv4_index);
        Ok(set)
    }

    /// The generation (0: nothing published yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The stream cursor this set reflects (`"0"` before the first snapshot).
    pub fn cursor(&self) -> &str {
        if self.cursor.is_empty() {
            "0"
        } else {
            &self.cursor
        }
    }

    /// Records held (expired ones included until the next publish drops them).
    pub fn len(&self) -> usize {
        self.blob.len().saturating_sub(self.records_at) / RECORD_BYTES
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The blob's bytes (what is published).
    pub fn bytes(&self) -> &[u8] {
        &self.blob
    }

    fn records(&self) -> &[u8] {
        self.blob.get(self.records_at..).unwrap_or_default()
    }

    /// Finds the decision for `key` among records `[start, end)` (all of one kind and prefix,
    /// sorted by key): of several, the one that lasts longest; expired ones never.
    fn find(&self, start: usize, end: usize, key: u128, now: u64) -> Option<ManualDecision> {
        let body = self.records();
        let (mut lo, mut hi) = (start, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match key_at(body, mid) {
                Some(k) if k < key => lo = mid + 1,
                Some(_) => hi = mid,
                None => return None,
            }
        }
        if key_at(body, lo) != Some(key) {
            return None;
        }
        let mut best: Option<Entry> = None;
        for i in lo..end {
            let Some(e) = record(body, i) else { break };
            if e.key != key {
                break;
            }
            if u64::from(e.expires_at) > now && best.is_none_or(|b| e.expires_at > b.expires_at) {
                best = Some(e);
            }
        }
        best.map(|e| ManualDecision {
            action: e.action,
            expires_at: u64::from(e.expires_at),
        })
    }

    fn find_kind(&self, kind: Kind, key: u128, now: u64) -> Option<ManualDecision> {
        let (start, end) = self.kinds.get(kind as usize).copied().unwrap_or((0, 0));
        if start == end {
            return None;
        }
        self.find(start, end, key, now)
    }

    /// The decisions in force at `now` (unix seconds) for a request's subjects. The IP's is
    /// its own or the longest range's, else its AS number's, else its country's.
    pub fn lookup(
        &self,
        ip: Option<IpAddr>,
        user: Option<&str>,
        device: Option<&str>,
        asn: Option<u32>,
        country: Option<[u8; 2]>,
        now: u64,
    ) -> ManualDecisions {
        if self.is_empty() {
            return ManualDecisions::default();
        }
        let network = ip.and_then(|ip| {
            let key = mapped(ip);
            let v4 = ip.to_canonical().is_ipv4();
            // An IPv4 address: only the prefix lengths its /16 has records for.
            let bits = if v4 && !self.ipv4_index.is_empty() {
                let slot = usize::try_from((key >> 16) & 0xffff).unwrap_or(0);
                self.ipv4_index.get(slot).copied().unwrap_or(0)
            } else {
                u64::MAX
            };
            self.prefixes
                .iter()
                .filter(|&&(prefix, _, _, holds_v4)| {
                    if !v4 {
                        return true;
                    }
                    holds_v4 && (prefix < 96 || bits & (1u64 << (prefix - 96)) != 0)
                })
                .find_map(|&(prefix, start, end, _)| self.find(start, end, mask(key, prefix), now))
        });
        let ip_decision = network
            .or_else(|| asn.and_then(|a| self.find_kind(Kind::Asn, u128::from(a), now)))
            .or_else(|| {
                country.and_then(|c| {
                    self.find_kind(Kind::Country, u128::from(u16::from_be_bytes(c)), now)
                })
            });
        ManualDecisions {
            user: user
                .and_then(|u| self.find_kind(Kind::User, u128::from(key_hash("user", u)), now)),
            ip: ip_decision,
            device: device
                .and_then(|d| self.find_kind(Kind::Device, u128::from(key_hash("device", d)), now)),
        }
    }

    /// Applies one page of the stream: the next set to publish (generation + 1, the page's
    /// cursor), with expired records dropped. `ipv6_prefix` is the bundle's subject prefix
    /// (what an IPv6 `ip` decision covers). Decisions this edge cannot match locally (hashed
    /// IP keys) are counted in the result and left to lookups.
    pub fn apply(&self, page: &DecisionPageV1, ipv6_prefix: u8, now: u64) -> Applied {
        // The page's decisions, the last one per id winning, sorted; then one merge walk over
        // the published records, copied as bytes: no decoded copy of the whole set (at 100k
        // decisions that was 4.8 MB on top of the old and the new blob).
        let mut skipped = 0usize;
        let mut touched = std::collections::HashSet::new();
        let mut added: Vec<Entry> = Vec::new();
        for d in page.decisions.iter().rev() {
            let id = key_hash("id", &d.id);
            if !touched.insert(id) {
                continue;
            }
            if let Some(e) = entry_of(d, id, ipv6_prefix, now) {
                added.push(e);
            } else if !d.removed && d.decision.is_some() {
                skipped += 1;
            }
        }
        added.sort_unstable_by_key(Entry::order);
        let body = self.records();
        let cursor = page
            .cursor
            .get(..page.cursor.len().min(1024))
            .unwrap_or_default();
        let mut out = Vec::with_capacity(
            14 + cursor.len() + body.len() + added.len().saturating_mul(RECORD_BYTES),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.generation.wrapping_add(1).to_le_bytes());
        out.extend_from_slice(&u16::try_from(cursor.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(cursor.as_bytes());
        let mut added = added.into_iter().peekable();
        for raw in body.chunks_exact(RECORD_BYTES) {
            let Some(e) = Entry::decode(raw) else {
                continue;
            };
            if u64::from(e.expires_at) <= now || touched.contains(&e.id) {
                continue;
            }
            while let Some(a) = added.next_if(|a| a.order() <= e.order()) {
                a.encode(&mut out);
            }
            out.extend_from_slice(raw);
        }
        for a in added {
            a.encode(&mut out);
        }
        Applied {
            blob: out,
            unmatched: skipped,
        }
    }

    /// An empty set that starts the stream over (after `410 Gone`), keeping the generation
    /// rising.
    pub fn restart(&self) -> Self {
        ActiveDecisions {
            generation: self.generation,
            ..ActiveDecisions::default()
        }
    }
}

/// A page applied.
#[derive(Debug)]
pub struct Applied {
    /// The next blob to publish.
    pub blob: Vec<u8>,
    /// Decisions the edge cannot match locally (hashed IP keys, bad keys).
    pub unmatched: usize,
}

fn entry_of(d: &StreamDecisionV1, id: u64, ipv6_prefix: u8, now: u64) -> Option<Entry> {
    if d.removed {
        return None;
    }
    let decision = d.decision.as_ref()?;
    if decision.expires_at <= now {
        return None;
    }
    let (kind, prefix, key) = subject_of(d.scope, &d.key, ipv6_prefix)?;
    Some(Entry {
        kind,
        prefix_rev: 255 - prefix,
        key,
        id,
        action: manual_action(decision.action),
        expires_at: u32::try_from(decision.expires_at).unwrap_or(u32::MAX),
    })
}

/// Only the key of record `i` (what a search compares).
fn key_at(body: &[u8], i: usize) -> Option<u128> {
    let at = i.checked_mul(RECORD_BYTES)?.checked_add(8)?;
    Some(u128::from_be_bytes(
        body.get(at..at.checked_add(16)?)?.try_into().ok()?,
    ))
}

fn record(body: &[u8], i: usize) -> Option<Entry> {
    let at = i.checked_mul(RECORD_BYTES)?;
    Entry::decode(body.get(at..at.checked_add(RECORD_BYTES)?)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;
    use signalbox_wire::ManualDecisionV1;

    const NOW: u64 = 1_795_392_000;

    fn decision(id: &str, scope: ScopeV1, key: &str, action: ManualActionV1) -> StreamDecisionV1 {
        StreamDecisionV1 {
            id: id.into(),
            scope,
            key: key.into(),
            decision: Some(ManualDecisionV1 {
                action,
                expires_at: NOW + 3_600,
                reason: None,
            }),
            removed: false,
        }
    }

    fn page(cursor: &str, decisions: Vec<StreamDecisionV1>) -> DecisionPageV1 {
        DecisionPageV1 {
            decisions,
            cursor: cursor.into(),
            more: false,
        }
    }

    fn applied(set: &ActiveDecisions, p: &DecisionPageV1) -> ActiveDecisions {
        ActiveDecisions::decode(set.apply(p, 64, NOW).blob).unwrap()
    }

    fn ip_action(set: &ActiveDecisions, ip: &str) -> Option<ManualAction> {
        set.lookup(ip.parse().ok(), None, None, None, None, NOW)
            .ip
            .map(|d| d.action)
    }

    #[test]
    fn the_most_specific_network_decision_applies_and_users_beat_nothing_here() {
        let set = applied(
            &ActiveDecisions::default(),
            &page(
                "c1",
                vec![
                    decision("1", ScopeV1::Range, "203.0.113.0/24", ManualActionV1::Ban),
                    decision("2", ScopeV1::Ip, "203.0.113.7", ManualActionV1::Allow),
                    decision(
                        "3",
                        ScopeV1::Ip,
                        "2001:db8:1:2::9",
                        ManualActionV1::Challenge,
                    ),
                    decision("4", ScopeV1::User, "mallory", ManualActionV1::Ban),
                    decision("5", ScopeV1::Country, "kp", ManualActionV1::Ban),
                    decision("6", ScopeV1::Asn, "AS64500", ManualActionV1::Throttle),
                ],
            ),
        );
        assert_eq!(set.generation(), 1);
        assert_eq!(set.cursor(), "c1");
        assert_eq!(set.len(), 6);
        assert_eq!(ip_action(&set, "203.0.113.7"), Some(ManualAction::Allow));
        assert_eq!(ip_action(&set, "203.0.113.8"), Some(ManualAction::Ban));
        assert_eq!(
            ip_action(&set, "::ffff:203.0.113.9"),
            Some(ManualAction::Ban)
        );
        assert_eq!(ip_action(&set, "203.0.114.1"), None);
        // An IPv6 `ip` decision covers its /64.
        assert_eq!(
            ip_action(&set, "2001:db8:1:2::77"),
            Some(ManualAction::Challenge)
        );
        assert_eq!(ip_action(&set, "2001:db8:1:3::9"), None);
        let m = set.lookup(
            "198.51.100.1".parse().ok(),
            Some("mallory"),
            Some("mallory"),
            Some(64_500),
            Some(*b"KP"),
            NOW,
        );
        assert_eq!(m.user.map(|d| d.action), Some(ManualAction::Ban));
        assert_eq!(m.device, None, "a device key is not a user key");
        assert_eq!(
            m.ip.map(|d| d.action),
            Some(ManualAction::Throttle),
            "ASN before country"
        );
        let m = set.lookup(
            "198.51.100.1".parse().ok(),
            None,
            None,
            None,
            Some(*b"KP"),
            NOW,
        );
        assert_eq!(m.ip.map(|d| d.action), Some(ManualAction::Ban));
        // Expired: nothing.
        let later = set.lookup(
            "203.0.113.8".parse().ok(),
            None,
            None,
            None,
            None,
            NOW + 3_600,
        );
        assert_eq!(later.ip, None);
    }

    #[test]
    fn tombstones_remove_and_a_restart_keeps_the_generation_rising() {
        let set = applied(
            &ActiveDecisions::default(),
            &page(
                "c1",
                vec![decision("1", ScopeV1::Ip, "192.0.2.1", ManualActionV1::Ban)],
            ),
        );
        let mut gone = decision("1", ScopeV1::Ip, "192.0.2.1", ManualActionV1::Ban);
        gone.removed = true;
        gone.decision = None;
        let set = applied(&set, &page("c2", vec![gone]));
        assert_eq!(set.len(), 0);
        assert_eq!(ip_action(&set, "192.0.2.1"), None);
        assert_eq!(set.generation(), 2);
        let fresh = set.restart();
        assert_eq!(fresh.cursor(), "0");
        assert_eq!(applied(&fresh, &page("c9", vec![])).generation(), 3);
    }

    #[test]
    fn hashed_ip_keys_are_left_to_lookups_and_bad_blobs_are_refused() {
        let out = ActiveDecisions::default().apply(
            &page(
                "c1",
                vec![decision(
                    "1",
                    ScopeV1::Ip,
                    "9f86d081884c7d659a2feaa0c55ad015",
                    ManualActionV1::Ban,
                )],
            ),
            64,
            NOW,
        );
        assert_eq!(out.unmatched, 1);
        assert!(ActiveDecisions::decode(b"nope".to_vec()).is_err());
        let mut blob = out.blob.clone();
        blob.push(1);
        assert!(ActiveDecisions::decode(blob).is_err());
    }

    proptest! {
        /// Against a plain scan: the most specific unexpired network decision, whatever the
        /// mix of addresses and ranges.
        #[test]
        fn lookup_matches_a_scan(
            ranges in proptest::collection::vec((any::<u32>(), 8u8..=32, 0u8..4), 0..60),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let decisions: Vec<StreamDecisionV1> = ranges
                .iter()
                .enumerate()
                .map(|(i, (addr, len, action))| {
                    let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(*addr), *len).unwrap().trunc();
                    let action = [ManualActionV1::Ban, ManualActionV1::Challenge, ManualActionV1::Throttle, ManualActionV1::Allow][usize::from(*action)];
                    let mut d = decision(&i.to_string(), ScopeV1::Range, &net.to_string(), action);
                    d.decision.as_mut().unwrap().expires_at = NOW + 1 + i as u64;
                    d
                })
                .collect();
            let set = applied(&ActiveDecisions::default(), &page("c", decisions.clone()));
            for probe in probes {
                let ip = std::net::Ipv4Addr::from(probe);
                let expected = decisions
                    .iter()
                    .filter(|d| d.key.parse::<ipnet::Ipv4Net>().unwrap().contains(&ip))
                    .max_by_key(|d| (d.key.parse::<ipnet::Ipv4Net>().unwrap().prefix_len(), d.decision.as_ref().unwrap().expires_at))
                    .map(|d| manual_action(d.decision.as_ref().unwrap().action));
                prop_assert_eq!(ip_action(&set, &ip.to_string()), expected);
            }
        }

        /// Pages applied one after another (adds, replacements, tombstones, in any order)
        /// hold exactly what a plain model holds: per id, the last unremoved decision, sorted.
        #[test]
        fn pages_merge_like_a_model(
            pages in proptest::collection::vec(
                proptest::collection::vec((0u8..24, any::<u8>(), 0u8..4, any::<bool>()), 0..30),
                1..6,
            ),
        ) {
            let mut set = ActiveDecisions::default();
            let mut model: std::collections::BTreeMap<String, StreamDecisionV1> = Default::default();
            for (n, changes) in pages.iter().enumerate() {
                let decisions: Vec<StreamDecisionV1> = changes
                    .iter()
                    .map(|(id, host, action, removed)| {
                        let action = [ManualActionV1::Ban, ManualActionV1::Challenge, ManualActionV1::Throttle, ManualActionV1::Allow][usize::from(*action)];
                        let mut d = decision(&id.to_string(), ScopeV1::Ip, &format!("192.0.2.{host}"), action);
                        if *removed {
                            d.removed = true;
                            d.decision = None;
                        }
                        d
                    })
                    .collect();
                for d in &decisions {
                    if d.removed {
                        model.remove(&d.id);
                    } else {
                        model.insert(d.id.clone(), d.clone());
                    }
                }
                set = applied(&set, &page(&format!("c{n}"), decisions));
            }
            let mut expected: Vec<Entry> = model
                .values()
                .filter_map(|d| entry_of(d, key_hash("id", &d.id), 64, NOW))
                .collect();
            expected.sort_unstable_by_key(Entry::order);
            let held: Vec<Entry> = set.records().chunks_exact(RECORD_BYTES).filter_map(Entry::decode).collect();
            prop_assert_eq!(held, expected);
            prop_assert_eq!(set.generation(), pages.len() as u64);
        }
    }
}
