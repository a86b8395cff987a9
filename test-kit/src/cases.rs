//! The scenario case format shared by every runner (native `policy test`, the wasmtime host,
//! real Envoy, the edge runtimes), and the native check of a verdict against a case.
//!
//! A case is a request line, a bundle (a path relative to the case file, or inline), optional
//! remote context (absent means the score cache did not answer), and what to expect. Fields
//! under `host` are for runners that drive a real proxy; the native runner ignores them.
//! `tests/scenarios/README.md` documents the format for people.

use serde::{Deserialize, Serialize};

use crate::requests::RequestLine;
use signalbox_policy::{Decision, Level, RemoteStatus, Verdict};
use signalbox_policy::{EdgeHeaderNames, RemoteContext};

/// Unix time used when a case does not set `now`: 2026-11-23T00:00:00Z.
pub const DEFAULT_CASE_NOW: u64 = 1_795_392_000;

/// One scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Name (default: the file name without extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the case shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The bundle: a path relative to the case file, or an inline bundle. Absent: the runner's
    /// `--bundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleRef>,
    /// Unix seconds at evaluation (default [`DEFAULT_CASE_NOW`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<u64>,
    /// Edge headers this case trusts (as if the request arrived through an edge that sets
    /// them); absent: none, as at a listener without a trusted edge in front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_headers: Option<CaseEdgeHeaders>,
    /// The request.
    pub request: RequestLine,
    /// The score cache's answer; absent means it was not asked or did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteContext>,
    /// What the verdict must say.
    pub expect: Expect,
    /// Expectations only a proxy runner can check (status, headers, cache calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<serde_json::Value>,
    /// Runners that cannot run this case yet (`host`, `envoy`), each with why. The
    /// conformance runner fails on any case a runner skips without a reason here.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub skip: std::collections::BTreeMap<String, String>,
}

/// The edge header names a case trusts; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseEdgeHeaders {
    /// Country header (e.g. `cf-ipcountry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// AS number header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<String>,
    /// TLS fingerprint header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// User key header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Case {
    /// The edge header names to read the request with: only those the case trusts.
    pub fn edge_header_names(&self) -> EdgeHeaderNames {
        let e = self.edge_headers.clone().unwrap_or_default();
        let lower = |v: Option<String>| v.map(|s| s.to_ascii_lowercase()).unwrap_or_default();
        EdgeHeaderNames {
            country: lower(e.country),
            asn: lower(e.asn),
            tls_fingerprint: lower(e.tls_fingerprint),
            user: lower(e.user),
        }
    }
}

/// A bundle reference in a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BundleRef {
    /// A path relative to the case file.
    Path(String),
    /// An inline bundle (same shape as a bundle file).
    Inline(serde_json::Map<String, serde_json::Value>),
}

/// Expected verdict; only `decision` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Enforced decision.
    pub decision: Decision,
    /// Level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Reason codes that must appear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Reason codes that must not appear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_reasons: Vec<String>,
    /// Inclusive score bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreRange>,
    /// Would-be decision (shadow mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<Decision>,
    /// Rule ids that must have matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// Remote-context status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteStatus>,
    /// Client class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_class: Option<signalbox_policy::wire::ClientClassV1>,
    /// Catalogue bot name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<String>,
}

/// Inclusive score bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRange {
    /// Lowest allowed.
    #[serde(default)]
    pub min: u8,
    /// Highest allowed.
    #[serde(default = "hundred")]
    pub max: u8,
}

fn hundred() -> u8 {
    100
}

/// What a runner observed: the verdict as the core returns it, or as a proxy wrote it in its
/// `x-signalbox-verdict` line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Enforced decision.
    pub decision: String,
    /// Would-be decision in shadow mode.
    pub shadow_decision: Option<String>,
    /// Level.
    pub level: String,
    /// Score.
    pub score: u8,
    /// Reason codes in order.
    pub reasons: Vec<String>,
    /// Ids of the rules that matched.
    pub rules: Vec<String>,
    /// Remote-context status (`not_wanted` when the line leaves it out).
    pub remote: String,
    /// Client class.
    pub client_class: String,
    /// Catalogue bot name.
    pub bot: Option<String>,
}

impl Observed {
    /// From the core's verdict.
    pub fn of(v: &Verdict) -> Self {
        let text = |x: &dyn erased::Name| x.name();
        Observed {
            decision: v.decision.as_str().to_owned(),
            shadow_decision: v.shadow_decision.map(|d| d.as_str().to_owned()),
            level: v.level.as_str().to_owned(),
            score: v.score,
            reasons: v
                .reasons
                .iter()
                .map(|r| r.code.as_str().to_owned())
                .collect(),
            rules: v.rules.iter().map(|r| r.id.to_string()).collect(),
            remote: text(&v.remote),
            client_class: v.client.class.as_str().to_owned(),
            bot: v.client.bot.as_deref().map(str::to_owned),
        }
    }

    /// From a verdict line (`VerdictLine` JSON, as the filter's debug header carries it);
    /// `None` when it is not one.
    pub fn of_line(line: &serde_json::Value) -> Option<Self> {
        let at = |path: &[&str]| -> Option<&serde_json::Value> {
            path.iter().try_fold(line, |v, key| v.get(key))
        };
        let text = |path: &[&str]| at(path).and_then(|v| v.as_str()).map(str::to_owned);
        let list = |name: &str, key: &str| -> Vec<String> {
            at(&[name])
                .and_then(|v| v.as_array())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|r| r.get(key).and_then(|v| v.as_str()).map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        at(&["reasons"])?.as_array()?;
        Some(Observed {
            decision: text(&["decision"])?,
            shadow_decision: text(&["shadow_decision"]),
            level: text(&["level"])?,
            score: u8::try_from(at(&["score"])?.as_u64()?).ok()?,
            reasons: list("reasons", "code"),
            rules: list("rules", "id"),
            remote: text(&["remote"]).unwrap_or_else(|| "not_wanted".to_owned()),
            client_class: text(&["client", "class"])?,
            bot: text(&["client", "bot"]),
        })
    }
}

mod erased {
    /// A serde enum's wire name.
    pub trait Name {
        fn name(&self) -> String;
    }
    impl<T: serde::Serialize> Name for T {
        fn name(&self) -> String {
            serde_json::to_value(self)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        }
    }
}

impl Expect {
    /// Every way the verdict differs from the expectation, one line each; empty when it holds.
    pub fn mismatches(&self, v: &Verdict) -> Vec<String> {
        self.mismatches_observed(&Observed::of(v))
    }

    /// The same check on what a runner observed.
    pub fn mismatches_observed(&self, v: &Observed) -> Vec<String> {
        let mut out = Vec::new();
        if v.decision != self.decision.as_str() {
            out.push(format!(
                "decision: expected {}, got {}",
                self.decision.as_str(),
                v.decision
            ));
        }
        if let Some(level) = self.level.filter(|l| l.as_str() != v.level) {
            out.push(format!(
                "level: expected {}, got {}",
                level.as_str(),
                v.level
            ));
        }
        for code in &self.reasons {
            if !v.reasons.contains(code) {
                out.push(format!(
                    "reasons: expected {code}, got [{}]",
                    v.reasons.join(", ")
                ));
            }
        }
        for code in &self.not_reasons {
            if v.reasons.contains(code) {
                out.push(format!("reasons: {code} must not appear"));
            }
        }
        if let Some(r) = self.score.filter(|r| !(r.min..=r.max).contains(&v.score)) {
            out.push(format!(
                "score: expected {}..={}, got {}",
                r.min, r.max, v.score
            ));
        }
        if let Some(shadow) = self.shadow_decision
            && v.shadow_decision.as_deref() != Some(shadow.as_str())
        {
            out.push(format!(
                "shadow_decision: expected {:?}, got {:?}",
                Some(shadow.as_str()),
                v.shadow_decision
            ));
        }
        for id in &self.rules {
            if !v.rules.contains(id) {
                out.push(format!("rules: expected {id} to match"));
            }
        }
        if let Some(remote) = self.remote {
            let want = erased::Name::name(&remote);
            if want != v.remote {
                out.push(format!("remote: expected {want}, got {}", v.remote));
            }
        }
        if let Some(class) = self.client_class.filter(|c| c.as_str() != v.client_class) {
            out.push(format!(
                "client_class: expected {}, got {}",
                class.as_str(),
                v.client_class
            ));
        }
        if let Some(bot) = self.bot.as_deref()
            && v.bot.as_deref() != Some(bot)
        {
            out.push(format!("bot: expected {bot}, got {:?}", v.bot));
        }
        out
    }
}
