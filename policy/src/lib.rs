//! # signalbox-policy
//!
//! The pure core of Signalbox, shared by the Envoy filter, the edge worker and the `signalbox`
//! CLI: the policy bundle format (v1), the request signals, the score and the decision. Its
//! public API is the engine; the CLI (`signalbox-cli`) and the case, request-log and bench
//! tooling (`signalbox-test-kit`) live in their own crates, so an adapter never pulls them in.
//!
//! Nothing in here does I/O, reads a clock or the environment, spawns threads or draws random
//! numbers: time (unix seconds) and the score cache's answer are arguments, so every adapter
//! and every test gets the same verdict for the same inputs. No function panics on any input.
//!
//! Evaluation has two phases, so an adapter can pause a request and ask the score cache only
//! when it helps:
//!
//! 1. [`Policy::assess`] scores the local signals and says whether a lookup is wanted
//!    ([`Assessment::lookup`]: gray-zone score, sensitive route, or a subject the bundle
//!    always looks up) and for which subjects.
//! 2. [`Policy::decide`] folds in the remote context (or its absence: fail open or closed, as
//!    the bundle says) and returns the [`Verdict`].
//!
//! ```
//! use signalbox_policy::{EdgeHeaderNames, Facts, Policy, Decision};
//!
//! let bundle = br#"{
//!   "format_version": 1, "revision": 1, "min_engine_version": "0.1.0",
//!   "signals": { "ua_automation": { "weight": 90, "tokens": ["curl/"] } }
//! }"#;
//! let policy = Policy::from_json_slice(bundle).unwrap();
//! let facts = Facts::from_parts(
//!     "GET", "/", [("user-agent", "curl/8.5.0")],
//!     "203.0.113.7".parse().ok(), &EdgeHeaderNames::default(),
//! );
//! let assessment = policy.assess(&facts, 1_764_000_000);
//! assert!(assessment.lookup().is_none()); // 90 is above the default lookup band 30..=70
//! let verdict = policy.decide(assessment, None, 1_764_000_000);
//! assert_eq!(verdict.decision, Decision::Block);
//! assert_eq!(verdict.reasons[0].code.as_str(), "ua.automation");
//! ```
//!
//! The bundle format is documented in `policy/README.md`; the default bundle is
//! `policy/examples/default.yaml`.

mod engine;
mod facts;
mod iprange;
pub mod json;
pub mod page;
mod policy;
pub mod prepared;
pub mod ratelimit;
pub mod scoring;
pub mod signing;
pub mod trust;
pub mod ua;
mod verdict;
pub mod wire;

pub use engine::{Assessment, Lookup, LookupReason};
pub use facts::{
    CLEARANCE_COOKIE, Clearance, EdgeHeaderNames, Facts, ManualAction, ManualDecision,
    ManualDecisions, PLAIN_HTTP_CLEARANCE_COOKIE, RecordedIp, RemoteContext, SIGNAL_HEADERS,
    SubjectContext, normalize_path, path_has_prefix,
};
pub use iprange::{BadPrefix, IpRangeSet};
pub use policy::{
    BundleError, CacheSettings, ChallengeSettings, ClientClass, CrawlerCategory, ENGINE_VERSION,
    FieldError, Mode, NamedList, Policy, RateBudget, StaleRanges, SubjectKind, UaMatcherBuild,
    parse_wire,
};
pub use verdict::{
    Client, DecidedBy, Decision, Level, Reason, ReasonCode, RemoteStatus, RuleMatch, Verdict,
    VerdictLine,
};
