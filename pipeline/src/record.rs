//! What an edge writes down about a verdict: the decision-log line (one JSON object per
//! non-pass verdict, client IP masked) and the decision record it ships to the score cache
//! ([`signalbox_wire::DecisionRecordV1`]), which keeps what a replay against another bundle
//! needs and no raw address, user key, cookie or credential. [`replay_facts`] turns a record
//! back into the facts the engine saw.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use signalbox_policy::{
    Clearance, DecidedBy, Decision, Facts, ManualAction, Policy, RecordedIp, RemoteContext,
    SIGNAL_HEADERS, Verdict,
};
use signalbox_wire::{
    ContextAnswerV1, DecisionRecordV1, ManualActionV1, ManualDecisionV1, RecordClearanceV1,
    RecordFactsV1, RecordReasonV1, SubjectContextV1,
};

use crate::Final;
use crate::request::masked_ip;

/// A decision-log line's fields, in the (alphabetical) order the line has always had.
#[derive(serde::Serialize)]
struct DecisionLog<'a> {
    client: String,
    client_class: String,
    decision: &'static str,
    level: &'static str,
    method: &'a str,
    msg: &'static str,
    path: &'a str,
    reasons: Vec<LoggedReason<'a>>,
    request_id: &'a str,
    revision: u64,
    rules: Vec<&'a str>,
    score: u8,
    shadow_decision: Option<&'static str>,
}

#[derive(serde::Serialize)]
struct LoggedReason<'a> {
    code: &'a str,
    points: i16,
}

/// One structured decision-log line (non-pass verdicts), client IP masked; `client_class` is
/// the verdict's client as origin sees it in `x-signalbox-client`.
/// `last` is the action the request ends with (a rate-limit throttle shows here).
pub fn decision_log_line(
    request_id: &str,
    facts: &Facts,
    verdict: &Verdict,
    last: Final,
) -> String {
    let line = DecisionLog {
        client: facts.client_ip.map_or_else(|| "-".to_owned(), masked_ip),
        client_class: verdict.client.header_value(),
        decision: last.decision.as_str(),
        level: verdict.level.as_str(),
        method: &facts.method,
        msg: "signalbox decision",
        path: facts.path.split('?').next().unwrap_or_default(),
        reasons: verdict
            .reasons
            .iter()
            .map(|r| LoggedReason {
                code: r.code.as_str(),
                points: r.points,
            })
            .collect(),
        request_id,
        revision: verdict.revision,
        rules: verdict.rules.iter().map(|r| &*r.id).collect(),
        score: verdict.score,
        shadow_decision: last.shadow_decision.map(Decision::as_str),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// A recorded header value is cut to this many bytes (a User-Agent is rarely longer).
pub const MAX_RECORDED_HEADER_BYTES: usize = 1_024;

/// `hex(HMAC-SHA256(key, "<scope>:" + value))`, first 32 hex digits: the keyed hash a record
/// keeps instead of an address or key. With the score cache's `--ip-hash-key-env` set to the
/// same key, a record's `ip_hash` is the cache's subject key for that IP.
pub fn keyed_hash(key: &[u8], scope: &str, value: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(scope.as_bytes());
    mac.update(b":");
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(32);
    for b in digest.iter().take(16) {
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// Who wrote a record, and with which hash key.
#[derive(Debug, Clone, Copy)]
pub struct Recorder<'a> {
    /// The edge's node id.
    pub node_id: &'a str,
    /// The keyed hash's key for addresses, user and device keys.
    pub hash_key: &'a [u8],
}

/// One verdict as it happened, for [`decision_record`].
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// What the engine saw.
    pub facts: &'a Facts,
    /// What it decided.
    pub verdict: &'a Verdict,
    /// The action the request ended with.
    pub last: crate::Final,
    /// Its rate buckets refused the request (`last` is their throttle).
    pub rate_limited: bool,
    /// The edge asked the score cache.
    pub context_asked: bool,
    /// What the cache answered, if it did.
    pub context: Option<&'a RemoteContext>,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// The decision record for one verdict of the bundle `policy` (the one that decided).
pub fn decision_record(
    recorder: Recorder<'_>,
    policy: &Policy,
    d: Decided<'_>,
) -> DecisionRecordV1 {
    let facts = d.facts;
    let mut headers = std::collections::BTreeMap::new();
    for name in SIGNAL_HEADERS {
        if let Some(value) = facts.header(name) {
            let cut = value.get(..MAX_RECORDED_HEADER_BYTES).unwrap_or(value);
            headers.insert(name.to_owned(), String::from_utf8_lossy(cut).into_owned());
        }
    }
    let hash = |scope: &str, value: &str| keyed_hash(recorder.hash_key, scope, value);
    let recorded_facts = RecordFactsV1 {
        headers,
        country: facts
            .country
            .map(|c| String::from_utf8_lossy(&c).into_owned()),
        asn: facts.asn,
        tls_fingerprint: facts
            .tls_fingerprint
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        user_hash: facts.user.as_deref().map(|u| hash("user", u)),
        device_hash: facts.device.as_deref().map(|k| hash("device", k)),
        clearance: match facts.clearance {
            Clearance::Absent => None,
            Clearance::Presented(_) => Some(RecordClearanceV1::Presented),
            Clearance::Invalid => Some(RecordClearanceV1::Invalid),
            Clearance::Valid { difficulty } => Some(RecordClearanceV1::Valid { difficulty }),
        },
        route_sensitive: facts.route_sensitive,
        plain_http: facts.plain_http,
        context_asked: d.context_asked,
        context: d.context.map(context_answer_of),
    };
    let route = d
        .verdict
        .route
        .and_then(|i| policy.route_name(i))
        .map(str::to_owned);
    DecisionRecordV1 {
        request_id: d.request_id.to_owned(),
        at_ms: d.at_ms,
        node_id: recorder.node_id.to_owned(),
        revision: d.verdict.revision,
        decision: d.last.decision.as_str().to_owned(),
        shadow_decision: d.last.shadow_decision.map(|s| s.as_str().to_owned()),
        score: d.verdict.score,
        level: d.verdict.level.as_str().to_owned(),
        reasons: d
            .verdict
            .reasons
            .iter()
            .map(|r| RecordReasonV1 {
                code: r.code.as_str().to_owned(),
                points: i32::from(r.points),
            })
            .collect(),
        rules: d.verdict.rules.iter().map(|r| r.id.to_string()).collect(),
        client: d.verdict.client.header_value(),
        method: facts.method.clone(),
        path: facts.path.split('?').next().unwrap_or_default().to_owned(),
        route,
        ip_hash: facts
            .client_ip
            .map(|ip| hash("ip", &policy.ip_subject_key(ip))),
        ip_lists: facts
            .client_ip
            .map(|ip| policy.lists_holding(ip))
            .unwrap_or_default(),
        rate_limited: d.rate_limited,
        manual_decision: match &d.verdict.decided_by {
            DecidedBy::Manual(scope) => Some((*scope).to_owned()),
            _ => None,
        },
        facts: Some(recorded_facts),
    }
}

/// What a replay of a record starts from.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The facts the engine saw (headers, edge facts, the address as its lists).
    pub facts: Facts,
    /// The edge asked the score cache.
    pub context_asked: bool,
    /// What the cache answered, if it did.
    pub context: Option<RemoteContext>,
    /// Unix seconds.
    pub now: u64,
}

/// The facts a record kept, or `None` for a record without them.
pub fn replay_facts(record: &DecisionRecordV1) -> Option<Replay> {
    let kept = record.facts.as_ref()?;
    let mut facts = Facts::from_parts(
        &record.method,
        &record.path,
        kept.headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes())),
        None,
        &signalbox_policy::EdgeHeaderNames::default(),
    );
    facts.recorded_ip = record.ip_hash.as_ref().map(|key| RecordedIp {
        key: key.clone(),
        lists: record.ip_lists.clone(),
    });
    facts.country = kept.country.as_deref().and_then(|c| {
        let b = c.as_bytes();
        Some([*b.first()?, *b.get(1)?]).filter(|_| b.len() == 2)
    });
    facts.asn = kept.asn;
    facts.tls_fingerprint = kept
        .tls_fingerprint
        .as_ref()
        .map(|t| t.clone().into_bytes());
    facts.user = kept.user_hash.clone();
    facts.device = kept.device_hash.clone();
    facts.clearance = match kept.clearance {
        None => Clearance::Absent,
        Some(RecordClearanceV1::Presented) => Clearance::Presented(Vec::new()),
        Some(RecordClearanceV1::Invalid) => Clearance::Invalid,
        Some(RecordClearanceV1::Valid { difficulty }) => Clearance::Valid { difficulty },
    };
    facts.route_sensitive = kept.route_sensitive;
    facts.plain_http = kept.plain_http;
    Some(Replay {
        facts,
        context_asked: kept.context_asked,
        context: kept.context.as_ref().map(crate::remote_context),
        now: record.at_ms / 1_000,
    })
}

/// The cache's answer as the core used it (scores and decisions in force).
fn context_answer_of(context: &RemoteContext) -> ContextAnswerV1 {
    let subject = |s: &Option<signalbox_policy::SubjectContext>| {
        s.as_ref().map(|s| SubjectContextV1 {
            score: s.score,
            decision: s.decision.map(|d| ManualDecisionV1 {
                action: match d.action {
                    ManualAction::Ban => ManualActionV1::Ban,
                    ManualAction::Challenge => ManualActionV1::Challenge,
                    ManualAction::Throttle => ManualActionV1::Throttle,
                    ManualAction::Allow => ManualActionV1::Allow,
                },
                expires_at: d.expires_at,
                reason: None,
            }),
            ..SubjectContextV1::default()
        })
    };
    ContextAnswerV1 {
        ip: subject(&context.ip),
        user: subject(&context.user),
        device: subject(&context.device),
        ..ContextAnswerV1::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use signalbox_policy::{EdgeHeaderNames, SubjectContext};

    const NOW: u64 = 1_795_392_000;

    fn golden() -> Policy {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/scenarios/bundles/golden.yaml"
        ))
        .unwrap();
        let value: serde_json::Value = serde_norway::from_str(&text).unwrap();
        Policy::from_json_slice(value.to_string().as_bytes()).unwrap()
    }

    fn request(ip: &str, headers: &[(&str, &str)]) -> Facts {
        Facts::from_parts(
            "POST",
            "/login?next=/account",
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            ip.parse().ok(),
            &EdgeHeaderNames::conventional(),
        )
    }

    #[test]
    fn a_record_keeps_no_address_key_or_cookie_and_replays_to_its_verdict() {
        let policy = golden();
        let mut facts = request(
            "167.99.1.2",
            &[
                (
                    "User-Agent",
                    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
                ),
                ("Accept", "text/html"),
                ("Accept-Language", "de-CH"),
                (
                    "Cookie",
                    "session=very-secret; __Host-signalbox-clearance=tok",
                ),
                ("Authorization", "Bearer also-secret"),
                ("cf-ipcountry", "CH"),
                ("x-signalbox-edge-user", "gio@example.com"),
            ],
        );
        facts.clearance = Clearance::Valid { difficulty: 14 };
        let context = RemoteContext {
            ip: Some(SubjectContext {
                score: 40,
                decision: None,
            }),
            ..RemoteContext::default()
        };
        let verdict = policy.evaluate(&facts, Some(&context), NOW);
        let record = decision_record(
            Recorder {
                node_id: "edge-1",
                hash_key: b"record key",
            },
            &policy,
            Decided {
                request_id: "r1",
                facts: &facts,
                verdict: &verdict,
                last: crate::Final::of(&verdict, false),
                rate_limited: false,
                context_asked: true,
                context: Some(&context),
                at_ms: NOW * 1_000 + 250,
            },
        );
        let text = serde_json::to_string(&record).unwrap();
        for secret in [
            "167.99",
            "very-secret",
            "also-secret",
            "gio@example.com",
            "tok",
            "next=",
        ] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
        assert_eq!(record.ip_lists, ["hosting"]);
        assert_eq!(record.ip_hash.as_deref().map(str::len), Some(32));
        assert_eq!(record.route.as_deref(), Some("login"));
        let back: DecisionRecordV1 = serde_json::from_str(&text).unwrap();
        let replay = replay_facts(&back).unwrap();
        assert_eq!(replay.now, NOW);
        assert!(replay.context_asked);
        let again = policy.evaluate(&replay.facts, replay.context.as_ref(), replay.now);
        assert_eq!(again, verdict);
    }

    #[test]
    fn a_record_names_the_manual_decision_that_decided_it() {
        let policy = golden();
        let browser = [
            (
                "User-Agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            ),
            ("Accept", "text/html"),
            ("Accept-Language", "de-CH"),
        ];
        let record_of = |facts: &Facts| {
            let verdict = policy.evaluate(facts, None, NOW);
            decision_record(
                Recorder {
                    node_id: "edge-1",
                    hash_key: b"record key",
                },
                &policy,
                Decided {
                    request_id: "r1",
                    facts,
                    verdict: &verdict,
                    last: crate::Final::of(&verdict, false),
                    rate_limited: false,
                    context_asked: false,
                    context: None,
                    at_ms: NOW * 1_000,
                },
            )
        };
        let mut banned = request("81.62.10.4", &browser);
        banned.manual_decisions.ip = Some(signalbox_policy::ManualDecision {
            action: ManualAction::Ban,
            expires_at: NOW + 60,
        });
        let record = record_of(&banned);
        assert_eq!(record.decision, "block");
        assert_eq!(record.manual_decision.as_deref(), Some("ip"));
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(r#""manual_decision":"ip""#), "{text}");

        let plain = record_of(&request("81.62.10.4", &browser));
        assert_eq!(plain.manual_decision, None);
        assert!(
            !serde_json::to_string(&plain)
                .unwrap()
                .contains("manual_decision")
        );
    }

    #[test]
    fn the_keyed_hash_depends_on_key_scope_and_value() {
        let h = keyed_hash(b"k", "ip", "192.0.2.1");
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(h, keyed_hash(b"k2", "ip", "192.0.2.1"));
        assert_ne!(h, keyed_hash(b"k", "user", "192.0.2.1"));
        assert_ne!(h, keyed_hash(b"k", "ip", "192.0.2.2"));
        assert_eq!(h, keyed_hash(b"k", "ip", "192.0.2.1"));
    }
}
