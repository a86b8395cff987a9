//! # signalbox-wire
//!
//! What Signalbox edges (the Envoy filter, the edge worker) and the score cache say to each
//! other, as serde types only — no I/O, builds for `wasm32` — so both sides compile against
//! one definition. Every type is versioned like the bundle format (`…V1`); a field added
//! later is optional, and unknown fields are errors (a mismatch shows, it is not guessed).
//!
//! - [`ContextAnswerV1`]: `GET /v1/context?ip=…&user=…&device=…` → what the cache knows about
//!   a request's subjects (score, level, trend, factor codes, active manual decisions) and how
//!   long an edge may keep the answer.
//! - [`DecisionPageV1`]: one page of `GET /v1/decisions/stream?after=CURSOR` — manual
//!   decisions (bans, challenges, throttles, allows by ip / range / user / country / asn /
//!   device) added or removed since a cursor.
//! - [`BundleEnvelopeV1`]: the bundle an edge polls (`GET /v1/bundle`), stable and canary.
//! - [`FleetReportV1`]: what an edge says about itself when it polls.
//! - [`DecisionRecordV1`]: one verdict as edges log it to the cache (`POST
//!   /v1/decisions/log`), with the facts a replay needs (IPs keyed-hashed, never raw).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A subject the cache keys risk by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeV1 {
    /// A client IP (IPv4 address, or the IPv6 prefix at the bundle's subject length).
    Ip,
    /// A CIDR range.
    Range,
    /// A user key.
    User,
    /// A device key.
    Device,
    /// An ISO 3166-1 alpha-2 country.
    Country,
    /// An AS number.
    Asn,
}

/// What a manual decision does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualActionV1 {
    /// Block.
    Ban,
    /// Challenge.
    Challenge,
    /// Throttle.
    Throttle,
    /// Pass, whatever the score.
    Allow,
}

/// A manual decision on a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualDecisionV1 {
    /// What it does.
    pub action: ManualActionV1,
    /// Unix seconds after which it no longer applies.
    pub expires_at: u64,
    /// Why, as the operator wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which way a subject's score is moving (short vs long decayed event rates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrendV1 {
    /// More events lately than usual.
    Rising,
    /// About as usual.
    Steady,
    /// Fewer.
    Falling,
}

/// What the cache knows about one subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectContextV1 {
    /// Decayed risk score, 0..=100.
    #[serde(default)]
    pub score: u32,
    /// The score's level under the cache's bundle (`low`, `medium`, `high`, `critical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Which way it is moving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend: Option<TrendV1>,
    /// Codes of what made the score (`event.failed_login`, …), largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub factors: Vec<String>,
    /// The active manual decision, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ManualDecisionV1>,
}

/// The answer to `GET /v1/context`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextAnswerV1 {
    /// About the client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<SubjectContextV1>,
    /// About the user key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<SubjectContextV1>,
    /// About the device key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<SubjectContextV1>,
    /// How long an edge may keep this answer, seconds.
    #[serde(default)]
    pub ttl_seconds: u32,
}

/// A manual decision as the decision stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDecisionV1 {
    /// The decision's id.
    pub id: String,
    /// What it applies to.
    pub scope: ScopeV1,
    /// The subject's key (an address, a CIDR, a user key, `CH`, `14061`, …).
    pub key: String,
    /// The decision (absent when `removed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ManualDecisionV1>,
    /// The decision was lifted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// One page of the decision stream. Edges apply `decisions` in order and ask again with
/// `cursor`; a `410 Gone` means the cursor is too old: resync from the start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionPageV1 {
    /// Changes since the asked cursor, oldest first.
    pub decisions: Vec<StreamDecisionV1>,
    /// Where the next page starts.
    pub cursor: String,
    /// More pages are waiting now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// The bundles an edge serves: the stable one and, during a rollout, a canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEnvelopeV1 {
    /// The signed stable bundle (the envelope `signalbox policy sign` writes), as JSON text.
    pub stable: String,
    /// A signed canary bundle and the share of clients (per user key, else the client IP's
    /// /24 or /48, keyed-hashed) that get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryV1>,
}

/// A canary rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryV1 {
    /// The signed canary bundle, as JSON text.
    pub bundle: String,
    /// Percent of clients, 0..=100.
    pub percent: u8,
}

/// `POST /v1/rate`: an edge's request counts per rate bucket since its last report. Keys are
/// the edge's bucket fingerprints (hex of a 64-bit hash of budget and subject; never a raw
/// address), counted by the cache in fixed windows of `per_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateCountsV1 {
    /// One entry per bucket, at most 1,000.
    pub counts: Vec<RateCountV1>,
}

/// One bucket's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateCountV1 {
    /// The bucket's fingerprint, 1..=64 bytes.
    pub key: String,
    /// The budget's window, seconds (1..=2,592,000: 30 days).
    pub per_seconds: u32,
    /// Requests counted since the edge's last report (1..=1,000,000).
    pub count: u32,
}

/// The answer to `POST /v1/rate`: each bucket's total in its current window, the edge's count
/// included, in the order asked; and how many milliseconds are left of each window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateTotalsV1 {
    /// Totals, in the order of `counts`.
    pub totals: Vec<u64>,
    /// Milliseconds until each bucket's window ends.
    pub window_left_ms: Vec<u64>,
}

/// What an edge says about itself when it polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetReportV1 {
    /// A stable id of the edge node (e.g. host name and Envoy plugin name).
    pub node_id: String,
    /// The stable bundle revision it serves.
    pub stable_revision: u64,
    /// The canary revision it serves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<u64>,
    /// The last error (a refused bundle with its reason, a failing poll), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its clock minus the cache's, milliseconds, as measured on the last poll.
    #[serde(default)]
    pub clock_skew_ms: i64,
    /// Unix seconds of this report.
    pub reported_at: u64,
}

/// One reason in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordReasonV1 {
    /// The reason code.
    pub code: String,
    /// Its points (risk > 0, trust < 0).
    pub points: i32,
}

/// One verdict as an edge logs it: what was decided and why, and the facts `policy diff --log`
/// needs to replay it against another bundle. IPs are keyed-hashed, with the lists they were
/// in; never raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecordV1 {
    /// The request id.
    pub request_id: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The edge that decided.
    pub node_id: String,
    /// The bundle revision that decided.
    pub revision: u64,
    /// The enforced decision (`pass`, `challenge`, `throttle`, `block`).
    pub decision: String,
    /// In shadow mode, the would-be decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<String>,
    /// Score and level.
    pub score: u8,
    /// The level.
    pub level: String,
    /// Reasons in order.
    pub reasons: Vec<RecordReasonV1>,
    /// Rule ids that matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// The client, as `x-signalbox-client` says it.
    pub client: String,
    /// Method and path (no query).
    pub method: String,
    /// The path.
    pub path: String,
    /// The matched route's name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The client IP, keyed-hashed (hex), if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_hash: Option<String>,
    /// The bundle lists the IP was in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_lists: Vec<String>,
    /// A rate budget was spent: the enforced decision is the budget's throttle, which a replay
    /// cannot reproduce (bucket state is not recorded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_limited: bool,
    /// An operator's manual decision decided the request: the scope it was on (`ip`, `user`,
    /// `device`). It overrides any bundle, so `policy diff --log` keeps it as it was. New in
    /// this version: a score cache older than its edges refuses their records (unknown field),
    /// so upgrade the cache first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_decision: Option<String>,
    /// The rest of what the engine saw, for `policy diff --log`. Records without it are
    /// listed but not replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<RecordFactsV1>,
}

/// What a [`DecisionRecordV1`] keeps of a request beyond its method, path and address: the
/// headers the engine reads (`signalbox_policy::SIGNAL_HEADERS`, first value each; never
/// cookies or credentials), the edge facts, keyed hashes of the user and device keys, the
/// clearance's state (never the token) and the score cache's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordFactsV1 {
    /// Header name (lower case) to its first value (invalid UTF-8 replaced).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Country from the trusted edge header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// AS number from the trusted edge header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// TLS fingerprint from the trusted edge header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// The user key, keyed-hashed (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_hash: Option<String>,
    /// The device key, keyed-hashed (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_hash: Option<String>,
    /// The clearance cookie's state; absent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clearance: Option<RecordClearanceV1>,
    /// The host marked the route sensitive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub route_sensitive: bool,
    /// The client came over plain HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
    /// The edge asked the score cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub context_asked: bool,
    /// What the score cache answered (scores and decisions in force), if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextAnswerV1>,
}

/// A clearance cookie's state in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RecordClearanceV1 {
    /// Present, not verified (no keys configured).
    Presented,
    /// Present and failed verification.
    Invalid,
    /// Verified, for a challenge of `difficulty` bits.
    Valid {
        /// Leading zero bits of the solved challenge.
        difficulty: u8,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_answer_reads_as_the_cache_writes_it() {
        let text = r#"{"ip":{"score":80,"level":"high","trend":"rising","factors":["event.failed_login"],"decision":{"action":"ban","expires_at":1900000000,"reason":"stuffing"}},"user":{"score":0},"ttl_seconds":30}"#;
        let answer: ContextAnswerV1 = serde_json::from_str(text).unwrap();
        assert_eq!(answer.ip.as_ref().unwrap().trend, Some(TrendV1::Rising));
        assert_eq!(
            answer
                .ip
                .as_ref()
                .unwrap()
                .decision
                .as_ref()
                .unwrap()
                .action,
            ManualActionV1::Ban
        );
        assert_eq!(answer.device, None);
        assert_eq!(serde_json::to_string(&answer).unwrap(), text);
        assert!(
            serde_json::from_str::<ContextAnswerV1>(r#"{"ip":{"score":1,"extra":2}}"#).is_err()
        );
    }

    #[test]
    fn the_other_types_round_trip() {
        let page = DecisionPageV1 {
            decisions: vec![StreamDecisionV1 {
                id: "d1".into(),
                scope: ScopeV1::Range,
                key: "203.0.113.0/24".into(),
                decision: Some(ManualDecisionV1 {
                    action: ManualActionV1::Challenge,
                    expires_at: 1,
                    reason: None,
                }),
                removed: false,
            }],
            cursor: "c2".into(),
            more: true,
        };
        let text = serde_json::to_string(&page).unwrap();
        assert_eq!(serde_json::from_str::<DecisionPageV1>(&text).unwrap(), page);
        let report = FleetReportV1 {
            node_id: "edge-1".into(),
            stable_revision: 7,
            canary_revision: Some(8),
            last_error: None,
            clock_skew_ms: -12,
            reported_at: 1_795_392_000,
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(
            serde_json::from_str::<FleetReportV1>(&text).unwrap(),
            report
        );
    }
}
