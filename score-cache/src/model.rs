//! What the score cache stores and accepts: subjects, events, manual decisions and the
//! decision log, with the validation that turns a request body into them. Every rejection
//! names the field (`events[3].subject.key`), and a batch is checked whole before anything
//! of it is stored.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use signalbox_wire::{ManualActionV1, ManualDecisionV1, ScopeV1, StreamDecisionV1};

/// Most events in one `POST /v1/events`.
pub const MAX_BATCH: usize = 1_000;
/// Most bytes of an event's `details` (as JSON).
pub const MAX_DETAILS_BYTES: usize = 2_048;
/// Longest subject key, event id, type, reason or origin.
pub const MAX_KEY_BYTES: usize = 256;

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Where, e.g. `events[3].subject.key`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A subject risk is kept for: an IP (IPv4 address, or the IPv6 prefix at the bundle's subject
/// length), a user key or a device key, as the edge sends them (user and device keys may be
/// keyed hashes; see the README).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubjectKey {
    /// `ip`, `user` or `device`.
    pub scope: ScopeV1,
    /// The key.
    pub key: String,
}

impl SubjectKey {
    /// The storage key: `<scope>:<key>`.
    pub fn storage_key(&self) -> String {
        format!("{}:{}", scope_name(self.scope), self.key)
    }
}

impl SubjectKey {
    /// Parses a storage key (`<scope>:<key>`).
    pub fn from_storage_key(text: &str) -> Option<Self> {
        let (scope, key) = text.split_once(':')?;
        let scope = match scope {
            "ip" => ScopeV1::Ip,
            "user" => ScopeV1::User,
            "device" => ScopeV1::Device,
            _ => return None,
        };
        Some(Self {
            scope,
            key: key.to_owned(),
        })
    }
}

/// The wire name of a scope.
pub fn scope_name(scope: ScopeV1) -> &'static str {
    match scope {
        ScopeV1::Ip => "ip",
        ScopeV1::Range => "range",
        ScopeV1::User => "user",
        ScopeV1::Device => "device",
        ScopeV1::Country => "country",
        ScopeV1::Asn => "asn",
    }
}

/// How IP subjects are keyed: the canonical address (IPv4, or the IPv6 prefix), optionally
/// replaced by a keyed hash so the store never holds a raw address.
#[derive(Debug, Clone)]
pub struct IpKeying {
    /// IPv6 addresses are keyed at this prefix length.
    pub ipv6_prefix: u8,
    /// When set, IP subject keys are `hex(HMAC-SHA256(key, "ip:" + canonical))[..32]`.
    pub hash_key: Option<Vec<u8>>,
}

impl IpKeying {
    /// The subject key of an `ip` parameter or event key: an address (`81.62.10.4`,
    /// `2001:db8::1`) or an IPv6 prefix as edges send it (`2001:db8::/64`).
    pub fn key_of(&self, raw: &str) -> Result<String, String> {
        let canonical = match raw.parse::<IpAddr>() {
            Ok(ip) => self.canonical(ip),
            Err(_) => match raw.parse::<IpNet>() {
                Ok(IpNet::V6(net)) if net.prefix_len() >= self.ipv6_prefix => {
                    self.canonical(IpAddr::V6(net.addr()))
                }
                Ok(_) => {
                    return Err(format!(
                        "an IP subject is an address or an IPv6 /{} prefix",
                        self.ipv6_prefix
                    ));
                }
                Err(_) => return Err("not an IP address".to_owned()),
            },
        };
        Ok(match &self.hash_key {
            Some(secret) => signalbox_pipeline::subjects::hashed("ip", &canonical, secret),
            None => canonical,
        })
    }

    fn canonical(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, self.ipv6_prefix)
                .map(|n| n.trunc().to_string())
                .unwrap_or_else(|_| v6.to_string()),
        }
    }
}

/// Event severity: the default points when an event does not say its impact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Index into the bundle's `severity_points`.
    pub fn index(self) -> usize {
        match self {
            Severity::Low => 0,
            Severity::Medium => 1,
            Severity::High => 2,
            Severity::Critical => 3,
        }
    }
}

/// A subject as an event names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectIn {
    /// `ip`, `user` or `device`.
    pub scope: String,
    /// The key.
    pub key: String,
}

/// One event as producers post it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Makes retries idempotent: an id already stored is acknowledged and not counted again.
    pub id: String,
    /// Whom it is about.
    pub subject: SubjectIn,
    /// What happened (`failed_login`, `password_reset`, …): `[a-z0-9_.-]`, 1–64 bytes.
    #[serde(rename = "type")]
    pub event_type: String,
    /// How bad.
    pub severity: Severity,
    /// Points it adds (0–100); the bundle's points for its severity when absent.
    #[serde(default)]
    pub impact: Option<u32>,
    /// When it happened, unix milliseconds; arrival time when absent.
    #[serde(default)]
    pub occurred_at_ms: Option<u64>,
    /// Free-form context for people (size-capped).
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

/// The body of `POST /v1/events`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatchIn {
    /// The events, at most [`MAX_BATCH`].
    pub events: Vec<EventIn>,
}

/// A validated event, ready to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The producer's id.
    pub id: String,
    /// The subject (IP keys canonical, or hashed).
    pub subject: SubjectKey,
    /// Its type.
    pub event_type: String,
    /// Severity.
    pub severity: Severity,
    /// Points.
    pub points: u8,
    /// When it happened (unix ms, never after arrival).
    pub at_ms: u64,
    /// When it arrived (unix ms).
    pub received_ms: u64,
    /// Details as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

fn check_name(field: String, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be 1..=64 characters of [a-z0-9_.-]",
        ))
    }
}

fn check_key(field: String, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > MAX_KEY_BYTES || value.chars().any(char::is_control) {
        Err(FieldError::new(
            field,
            format!("must be 1..={MAX_KEY_BYTES} bytes without control characters"),
        ))
    } else {
        Ok(())
    }
}

/// A subject of an event or a context question: `ip`, `user` or `device`.
pub fn subject_of(
    field: &str,
    scope: &str,
    key: &str,
    ip: &IpKeying,
) -> Result<SubjectKey, FieldError> {
    let scope = match scope {
        "ip" => ScopeV1::Ip,
        "user" => ScopeV1::User,
        "device" => ScopeV1::Device,
        other => {
            return Err(FieldError::new(
                format!("{field}.scope"),
                format!("unknown scope {other:?}; events are about an ip, a user or a device"),
            ));
        }
    };
    check_key(format!("{field}.key"), key)?;
    let key = if scope == ScopeV1::Ip {
        ip.key_of(key)
            .map_err(|m| FieldError::new(format!("{field}.key"), m))?
    } else {
        key.to_owned()
    };
    Ok(SubjectKey { scope, key })
}

/// A subject as a reader names it: as [`subject_of`], and when IP keys are hashed, also by its
/// stored key (the hex hash `/v1/scores` lists), so a listed IP subject can be looked up or
/// erased. Events and decisions still take addresses only.
pub fn stored_subject_of(
    field: &str,
    scope: &str,
    key: &str,
    ip: &IpKeying,
) -> Result<SubjectKey, FieldError> {
    if scope == "ip" && ip.hash_key.is_some() && is_hashed_key(key) {
        return Ok(SubjectKey {
            scope: ScopeV1::Ip,
            key: key.to_owned(),
        });
    }
    subject_of(field, scope, key, ip)
}

/// Whether `key` has the form of a hashed subject key (32 lower-case hex digits).
fn is_hashed_key(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Validates a whole batch; the first error rejects all of it.
pub fn validate_batch(
    batch: EventBatchIn,
    now_ms: u64,
    severity_points: [u8; 4],
    ip: &IpKeying,
) -> Result<Vec<Event>, FieldError> {
    if batch.events.is_empty() {
        return Err(FieldError::new("events", "must hold at least one event"));
    }
    if batch.events.len() > MAX_BATCH {
        return Err(FieldError::new(
            "events",
            format!("at most {MAX_BATCH} events per batch"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = |f: &str| format!("events[{i}].{f}");
            check_key(at("id"), &e.id)?;
            if !seen.insert(e.id.clone()) {
                return Err(FieldError::new(at("id"), "repeated within the batch"));
            }
            let subject = subject_of(&at("subject"), &e.subject.scope, &e.subject.key, ip)?;
            check_name(at("type"), &e.event_type)?;
            let points = match e.impact {
                Some(p) => u8::try_from(p)
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| FieldError::new(at("impact"), "must be 0..=100"))?,
                None => severity_points
                    .get(e.severity.index())
                    .copied()
                    .unwrap_or(0),
            };
            if let Some(d) = &e.details {
                let size = serde_json::to_vec(d).map_or(usize::MAX, |v| v.len());
                if size > MAX_DETAILS_BYTES {
                    return Err(FieldError::new(
                        at("details"),
                        format!("at most {MAX_DETAILS_BYTES} bytes as JSON"),
                    ));
                }
            }
            Ok(Event {
                id: e.id,
                subject,
                event_type: e.event_type,
                severity: e.severity,
                points,
                at_ms: e.occurred_at_ms.unwrap_or(now_ms).min(now_ms),
                received_ms: now_ms,
                details: e.details,
            })
        })
        .collect()
}

/// The body of `POST /v1/decisions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionIn {
    /// `ban`, `challenge`, `throttle` or `allow`.
    pub action: String,
    /// `ip`, `range`, `user`, `device`, `country` or `asn`.
    pub scope: String,
    /// An address, a CIDR, a user or device key, an ISO country (`CH`), an AS number.
    pub key: String,
    /// How long, seconds (1 s to 10 years).
    pub duration_seconds: u64,
    /// Why, for people.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who or what made it (`cli`, `ui`, `soc-playbook-7`, …).
    #[serde(default)]
    pub origin: Option<String>,
}

/// A manual decision as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Its id.
    pub id: String,
    /// What it does.
    pub action: ManualActionV1,
    /// What it applies to.
    pub scope: ScopeV1,
    /// The key, canonical (ranges truncated, countries upper case).
    pub key: String,
    /// Unix seconds it was made.
    pub created_at: u64,
    /// Unix seconds it ends.
    pub expires_at: u64,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl Decision {
    /// As the context answer carries it.
    pub fn manual(&self) -> ManualDecisionV1 {
        ManualDecisionV1 {
            action: self.action,
            expires_at: self.expires_at,
            reason: self.reason.clone(),
        }
    }
}

/// The longest a decision may last.
pub const MAX_DURATION_SECONDS: u64 = 10 * 365 * 86_400;

/// Validates a decision; `id` and `now` (unix seconds) come from the server.
pub fn validate_decision(
    d: DecisionIn,
    id: String,
    now: u64,
    ip: &IpKeying,
) -> Result<Decision, FieldError> {
    let action = match d.action.as_str() {
        "ban" => ManualActionV1::Ban,
        "challenge" => ManualActionV1::Challenge,
        "throttle" => ManualActionV1::Throttle,
        "allow" => ManualActionV1::Allow,
        other => {
            return Err(FieldError::new(
                "action",
                format!("unknown action {other:?}; one of ban, challenge, throttle, allow"),
            ));
        }
    };
    check_key("key".to_owned(), &d.key)?;
    let (scope, key) = match d.scope.as_str() {
        "ip" => (
            ScopeV1::Ip,
            ip.key_of(&d.key).map_err(|m| FieldError::new("key", m))?,
        ),
        "range" => {
            let net: IpNet = d
                .key
                .parse()
                .map_err(|_| FieldError::new("key", "not a CIDR range (e.g. 203.0.113.0/24)"))?;
            (ScopeV1::Range, net.trunc().to_string())
        }
        "user" => (ScopeV1::User, d.key.clone()),
        "device" => (ScopeV1::Device, d.key.clone()),
        "country" => {
            let ok = d.key.len() == 2 && d.key.bytes().all(|b| b.is_ascii_alphabetic());
            if !ok {
                return Err(FieldError::new(
                    "key",
                    "an ISO 3166-1 alpha-2 country code (e.g. CH)",
                ));
            }
            (ScopeV1::Country, d.key.to_ascii_uppercase())
        }
        "asn" => {
            let n: u32 = d
                .key
                .trim_start_matches("AS")
                .parse()
                .map_err(|_| FieldError::new("key", "an AS number (e.g. 14061 or AS14061)"))?;
            (ScopeV1::Asn, n.to_string())
        }
        other => {
            return Err(FieldError::new(
                "scope",
                format!("unknown scope {other:?}; one of ip, range, user, device, country, asn"),
            ));
        }
    };
    if !(1..=MAX_DURATION_SECONDS).contains(&d.duration_seconds) {
        return Err(FieldError::new(
            "duration_seconds",
            format!("must be 1..={MAX_DURATION_SECONDS}"),
        ));
    }
    for (field, value) in [("reason", &d.reason), ("origin", &d.origin)] {
        if let Some(v) = value
            && v.len() > MAX_KEY_BYTES
        {
            return Err(FieldError::new(
                field,
                format!("at most {MAX_KEY_BYTES} bytes"),
            ));
        }
    }
    Ok(Decision {
        id,
        action,
        scope,
        key,
        created_at: now,
        expires_at: now.saturating_add(d.duration_seconds),
        reason: d.reason,
        origin: d.origin,
    })
}

/// One entry of the decision log: a decision added, or one lifted (a tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its place in the log (monotonic, from 1).
    pub seq: u64,
    /// The decision's id.
    pub id: String,
    /// Scope of the decision.
    pub scope: ScopeV1,
    /// Key of the decision.
    pub key: String,
    /// The decision, or `None` for a tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// When it was written, unix seconds (a tombstone: when the decision was lifted).
    pub at: u64,
}

impl LogEntry {
    /// As the stream carries it.
    pub fn to_wire(&self) -> StreamDecisionV1 {
        StreamDecisionV1 {
            id: self.id.clone(),
            scope: self.scope,
            key: self.key.clone(),
            decision: self.decision.as_ref().map(Decision::manual),
            removed: self.decision.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keying() -> IpKeying {
        IpKeying {
            ipv6_prefix: 64,
            hash_key: None,
        }
    }

    #[test]
    fn ip_keys_are_canonical() {
        let k = keying();
        assert_eq!(k.key_of("81.62.10.4").unwrap(), "81.62.10.4");
        assert_eq!(k.key_of("::ffff:81.62.10.4").unwrap(), "81.62.10.4");
        assert_eq!(k.key_of("2001:db8:1:2:3::9").unwrap(), "2001:db8:1:2::/64");
        assert_eq!(k.key_of("2001:db8:1:2::/64").unwrap(), "2001:db8:1:2::/64");
        assert!(k.key_of("2001:db8::/32").is_err());
        assert!(k.key_of("not-an-ip").is_err());
        let hashed = IpKeying {
            hash_key: Some(b"a privacy key of 32 bytes or so!".to_vec()),
            ..keying()
        };
        let h = hashed.key_of("81.62.10.4").unwrap();
        assert_eq!(h.len(), 32);
        assert_eq!(h, hashed.key_of("::ffff:81.62.10.4").unwrap());
    }

    #[test]
    fn a_bad_event_rejects_the_batch_and_names_the_field() {
        let batch: EventBatchIn = serde_json::from_value(serde_json::json!({"events": [
            {"id": "a", "subject": {"scope": "user", "key": "u1"}, "type": "failed_login", "severity": "low"},
            {"id": "b", "subject": {"scope": "ip", "key": "999.1.1.1"}, "type": "failed_login", "severity": "low"},
        ]}))
        .unwrap();
        let err = validate_batch(batch, 1_000, [5, 15, 30, 60], &keying()).unwrap_err();
        assert_eq!(err.field, "events[1].subject.key");
    }

    #[test]
    fn severity_gives_default_points_and_future_events_count_as_now() {
        let batch: EventBatchIn = serde_json::from_value(serde_json::json!({"events": [
            {"id": "a", "subject": {"scope": "user", "key": "u1"}, "type": "chargeback", "severity": "high", "occurred_at_ms": 9_999_999},
        ]}))
        .unwrap();
        let events = validate_batch(batch, 1_000, [5, 15, 30, 60], &keying()).unwrap();
        assert_eq!(events[0].points, 30);
        assert_eq!(events[0].at_ms, 1_000);
    }

    #[test]
    fn decisions_are_canonical() {
        let d = |scope: &str, key: &str| DecisionIn {
            action: "ban".into(),
            scope: scope.into(),
            key: key.into(),
            duration_seconds: 60,
            reason: None,
            origin: None,
        };
        let k = keying();
        let v = |scope, key| validate_decision(d(scope, key), "x".into(), 100, &k);
        assert_eq!(v("range", "203.0.113.7/24").unwrap().key, "203.0.113.0/24");
        assert_eq!(v("country", "ch").unwrap().key, "CH");
        assert_eq!(v("asn", "AS14061").unwrap().key, "14061");
        assert_eq!(v("range", "203.0.113.0/33").unwrap_err().field, "key");
        assert_eq!(v("planet", "earth").unwrap_err().field, "scope");
        assert_eq!(v("ip", "81.62.10.4").unwrap().expires_at, 160);
    }
}
