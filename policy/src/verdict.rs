//! What the engine concludes: decisions, levels, reasons and the verdict.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::wire::{ClientClassV1, CrawlerCategoryV1};

/// What happens to the request. Ordered by severity: `pass < throttle < challenge < block`
/// (a throttle only slows a client down; a challenge asks it to prove work before anything
/// more goes through), so "raise to at least" is a `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Forward to origin, annotated.
    Pass,
    /// 429 with `retry-after`.
    Throttle,
    /// Proof-of-work challenge.
    Challenge,
    /// 403.
    Block,
}

impl Decision {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Throttle => "throttle",
            Decision::Challenge => "challenge",
            Decision::Block => "block",
        }
    }
}

/// Risk level of a score under the bundle's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Below `thresholds.medium`.
    Low = 0,
    /// From `thresholds.medium`.
    Medium = 1,
    /// From `thresholds.high`.
    High = 2,
    /// From `thresholds.critical`.
    Critical = 3,
}

impl Level {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }
}

/// A stable reason code, e.g. `ip.hosting` or `ua.automation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReasonCode {
    /// A code fixed by the engine.
    Fixed(&'static str),
    /// A code made from a bundle name (`ip.<list>`, `route.<name>`).
    Named(Arc<str>),
}

impl ReasonCode {
    /// The code as text.
    pub fn as_str(&self) -> &str {
        match self {
            ReasonCode::Fixed(s) => s,
            ReasonCode::Named(s) => s,
        }
    }
}

impl Serialize for ReasonCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One signal's contribution: positive points add risk, negative points are trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Stable code.
    pub code: ReasonCode,
    /// Points (risk > 0, trust < 0).
    pub points: i16,
}

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    /// Rule id.
    pub id: Arc<str>,
    /// Its action.
    pub action: Decision,
    /// Reported only, not acted on.
    pub dry_run: bool,
}

/// What settled the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "detail")]
pub enum DecidedBy {
    /// The level → action map.
    Score,
    /// A rule (its id).
    Rule(Arc<str>),
    /// An operator's decision in the score cache (`ip` or `user`).
    Manual(&'static str),
    /// The cache was unavailable and the bundle fails closed.
    FailClosed,
    /// A valid clearance satisfied a challenge.
    Clearance,
}

/// What the engine concludes the client is: its class, and for bots the catalogue name (when a
/// catalogue family matched) and category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Client {
    /// The class.
    pub class: ClientClassV1,
    /// The catalogue family (`googlebot`), for bots the catalogue names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bot: Option<Arc<str>>,
    /// The bot category, for verified, declared and spoofed bots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<CrawlerCategoryV1>,
}

impl Client {
    /// A client of `class` that names no bot.
    pub fn of(class: ClientClassV1) -> Self {
        Self {
            class,
            bot: None,
            category: None,
        }
    }

    /// As an HTTP structured-field item: `verified_bot;bot=googlebot;category=search_engine`
    /// (the class is a token; catalogue names are bundle names, sent as strings).
    pub fn header_value(&self) -> String {
        let mut out = self.class.as_str().to_owned();
        if let Some(bot) = &self.bot {
            out.push_str(";bot=\"");
            out.extend(
                bot.chars()
                    .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\'),
            );
            out.push('"');
        }
        if let Some(category) = self.category {
            out.push_str(";category=");
            out.push_str(category.as_str());
        }
        out
    }
}

/// Whether remote context played a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteStatus {
    /// No lookup was wanted and none was given.
    NotWanted,
    /// Remote context was used.
    Used,
    /// Wanted but unavailable (down, timed out, breaker open); decided fail-open.
    UnavailableFailOpen,
    /// Wanted but unavailable; decided fail-closed.
    UnavailableFailClosed,
}

/// The engine's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The enforced decision (always `pass` in shadow mode).
    pub decision: Decision,
    /// In shadow mode: the decision that would have been enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<Decision>,
    /// Composite score 0..=100.
    pub score: u8,
    /// Level of the score.
    pub level: Level,
    /// Every contribution to the score, in evaluation order.
    pub reasons: Vec<Reason>,
    /// Matched rules, in order (dry runs included).
    pub rules: Vec<RuleMatch>,
    /// What settled the decision.
    pub decided_by: DecidedBy,
    /// Whether remote context was used.
    pub remote: RemoteStatus,
    /// What the client is.
    pub client: Client,
    /// The bundle revision that decided.
    pub revision: u64,
    /// Index of the matched route in the bundle's `routes` (rate budgets per route use it).
    #[serde(skip)]
    pub route: Option<usize>,
}

impl Verdict {
    /// The decision the bundle reached, enforced or not (shadow mode).
    pub fn intended_decision(&self) -> Decision {
        self.shadow_decision.unwrap_or(self.decision)
    }
}

/// One verdict as the JSONL tools print it and the filter's debug header carries it:
/// `{"id":"r1","decision":"challenge","score":72,"level":"high","reasons":[…],"client":{…},"revision":"7"}`
/// followed by `rules`, `shadow_decision` and `remote` where they say something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerdictLine<'a> {
    /// The request's id.
    pub id: &'a str,
    /// Enforced decision.
    pub decision: Decision,
    /// Score 0..=100.
    pub score: u8,
    /// Level.
    pub level: Level,
    /// Contributions.
    pub reasons: &'a [Reason],
    /// What the client is.
    pub client: &'a Client,
    /// Bundle revision, as text.
    pub revision: String,
    /// Matched rules, if any.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub rules: &'a [RuleMatch],
    /// Would-be decision in shadow mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<Decision>,
    /// Remote-context status, unless no lookup was wanted.
    #[serde(skip_serializing_if = "is_not_wanted")]
    pub remote: RemoteStatus,
}

fn is_not_wanted(status: &RemoteStatus) -> bool {
    *status == RemoteStatus::NotWanted
}

impl<'a> VerdictLine<'a> {
    /// The line for a verdict.
    pub fn new(id: &'a str, v: &'a Verdict) -> Self {
        VerdictLine {
            id,
            decision: v.decision,
            score: v.score,
            level: v.level,
            reasons: &v.reasons,
            client: &v.client,
            revision: v.revision.to_string(),
            rules: &v.rules,
            shadow_decision: v.shadow_decision,
            remote: v.remote,
        }
    }
}
