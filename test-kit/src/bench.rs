//! One evaluation loop, run the same way natively (`signalbox bench-eval`) and inside a wasm
//! VM (the `tests/fixtures/eval-bench` module that `signalbox-harness bench` times), so the
//! two measurements differ only in where the code runs.
//!
//! The request lines are turned into [`Facts`] once, up front; [`EvalLoop::run`] then
//! evaluates every request (`assess` + `decide`, no remote context) a number of rounds and
//! folds each verdict into a checksum. Equal checksums on both sides say they computed the
//! same verdicts, so the timings compare like with like.

use crate::requests::RequestLine;
use signalbox_policy::Verdict;
use signalbox_policy::{BundleError, Policy};
use signalbox_policy::{EdgeHeaderNames, Facts};

/// Why an [`EvalLoop`] could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalLoopError {
    /// The bundle was refused.
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    /// A request line is not a request (1-based line number).
    #[error("request line {line}: {message}")]
    RequestLine {
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// A policy, the facts of a fixed set of requests, and the evaluation time.
#[derive(Debug)]
pub struct EvalLoop {
    policy: Policy,
    facts: Vec<Facts>,
    now: u64,
}

impl EvalLoop {
    /// Parses a bundle (canonical JSON, as `policy build` writes it) and request lines (the
    /// `signalbox eval` JSONL; blank lines are skipped), reading edge headers by their default
    /// names as `signalbox eval` does.
    pub fn new(bundle_json: &[u8], requests_jsonl: &[u8], now: u64) -> Result<Self, EvalLoopError> {
        let policy = Policy::from_json_slice(bundle_json)?;
        let edge = EdgeHeaderNames::conventional();
        let mut facts = Vec::new();
        for (index, line) in requests_jsonl.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let request: RequestLine =
                serde_json::from_slice(line).map_err(|e| EvalLoopError::RequestLine {
                    line: index.saturating_add(1),
                    message: e.to_string(),
                })?;
            facts.push(request.to_facts(&edge));
        }
        Ok(EvalLoop { policy, facts, now })
    }

    /// Number of requests evaluated per round.
    pub fn len(&self) -> usize {
        self.facts.len()
    }

    /// Whether there is no request to evaluate.
    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// Evaluates every request `rounds` times; returns the checksum of all the verdicts
    /// (order-sensitive, so two runs agree only if every verdict agrees).
    pub fn run(&self, rounds: u32) -> u64 {
        let mut checksum = FNV_OFFSET;
        for _ in 0..rounds {
            for facts in &self.facts {
                let facts = std::hint::black_box(facts);
                let verdict = self.policy.evaluate(facts, None, self.now);
                checksum = fold_verdict(checksum, &verdict);
            }
        }
        checksum
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fold_bytes(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash = (hash ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
    }
    hash
}

/// FNV-1a over what a verdict line shows: decision, shadow decision, score, level, reasons
/// and matched rules.
fn fold_verdict(hash: u64, verdict: &Verdict) -> u64 {
    let mut hash = fold_bytes(hash, verdict.decision.as_str().as_bytes());
    if let Some(shadow) = verdict.shadow_decision {
        hash = fold_bytes(hash, shadow.as_str().as_bytes());
    }
    hash = fold_bytes(hash, &[verdict.score]);
    hash = fold_bytes(hash, verdict.level.as_str().as_bytes());
    for reason in &verdict.reasons {
        hash = fold_bytes(hash, reason.code.as_str().as_bytes());
        hash = fold_bytes(hash, &reason.points.to_le_bytes());
    }
    for rule in &verdict.rules {
        hash = fold_bytes(hash, rule.id.as_bytes());
        hash = fold_bytes(hash, &[u8::from(rule.dry_run)]);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &[u8] = br#"{
      "format_version": 1, "revision": 1, "min_engine_version": "0.1.0",
      "signals": { "ua_automation": { "weight": 90, "tokens": ["curl/"] } }
    }"#;
    const REQUESTS: &[u8] = b"{\"id\":\"a\",\"method\":\"GET\",\"path\":\"/\",\"headers\":[[\"user-agent\",\"curl/8\"]],\"client_ip\":\"203.0.113.7\"}\n\n{\"id\":\"b\",\"method\":\"GET\",\"path\":\"/\",\"client_ip\":\"203.0.113.8\"}\n";

    #[test]
    fn checksum_depends_on_verdicts_and_rounds() {
        let bench = EvalLoop::new(BUNDLE, REQUESTS, 1_764_000_000).unwrap();
        assert_eq!(bench.len(), 2);
        assert_eq!(bench.run(0), FNV_OFFSET);
        assert_eq!(bench.run(2), bench.run(2));
        assert_ne!(bench.run(1), bench.run(2));
        let one = EvalLoop::new(BUNDLE, &REQUESTS[..REQUESTS.len() / 2], 0);
        assert!(matches!(
            one,
            Err(EvalLoopError::RequestLine { line: 1, .. })
        ));
        let quiet = EvalLoop::new(
            BUNDLE,
            b"{\"id\":\"b\",\"method\":\"GET\",\"path\":\"/\",\"client_ip\":\"203.0.113.8\"}",
            0,
        )
        .unwrap();
        assert_ne!(quiet.run(1), bench.run(1));
    }

    #[test]
    fn a_bad_bundle_is_an_error() {
        assert!(matches!(
            EvalLoop::new(b"{}", REQUESTS, 0),
            Err(EvalLoopError::Bundle(_))
        ));
    }
}
