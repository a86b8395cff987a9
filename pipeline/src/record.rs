//! The decision-log line: one JSON object per non-pass verdict, client IP masked.

use signalbox_policy::{Decision, Facts, Verdict};

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
