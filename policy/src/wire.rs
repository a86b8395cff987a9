//! Bundle format v1 as it travels: plain serde structs, JSON on the wire.
//!
//! These types only describe the shape. [`crate::Policy::try_from`] validates them and compiles
//! the domain form the engine runs on. Every struct rejects unknown fields, so a typo in a
//! bundle is an error with a field path, never a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole policy bundle, format version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleV1 {
    /// Must be `1`.
    pub format_version: u32,
    /// Monotonic revision: an edge never goes back to a lower one.
    pub revision: u64,
    /// The oldest engine (`major.minor.patch`) that understands this bundle.
    pub min_engine_version: String,
    /// After this instant (RFC 3339, e.g. `2027-01-31T00:00:00Z`) the bundle is refused, so an
    /// old signed bundle cannot be replayed forever. Required for signed bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// What this bundle is for, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `enforce` or `shadow` (decide, log the would-be decision, always pass).
    #[serde(default)]
    pub mode: ModeV1,
    /// Score thresholds of the levels.
    #[serde(default)]
    pub thresholds: ThresholdsV1,
    /// Level → action, and the raised map for sensitive routes.
    #[serde(default)]
    pub actions: ActionsV1,
    /// Scores for which a score-cache lookup is worth its latency.
    #[serde(default)]
    pub lookup_band: LookupBandV1,
    /// Signal weights and parameters.
    #[serde(default)]
    pub signals: SignalsV1,
    /// Named IP prefix lists (hosting, tor, crawler ranges, allow, deny, ...).
    #[serde(default)]
    pub lists: BTreeMap<String, IpListV1>,
    /// Declared crawlers and how their published ranges verify them.
    #[serde(default)]
    pub crawlers: CrawlersV1,
    /// Route sensitivity by method and path prefix.
    #[serde(default)]
    pub routes: Vec<RouteV1>,
    /// Ordered rules; the first matching rule that is not a dry run decides.
    #[serde(default)]
    pub rules: Vec<RuleV1>,
    /// Token-bucket budgets the adapters count (enforced by the trust primitives).
    #[serde(default)]
    pub rate_budgets: Vec<RateBudgetV1>,
    /// Score-cache behaviour.
    #[serde(default)]
    pub cache: CacheV1,
    /// Challenge and clearance settings.
    #[serde(default)]
    pub challenge: ChallengeV1,
    /// How subjects (client IPs) are keyed.
    #[serde(default)]
    pub subjects: SubjectsV1,
    /// How the score cache turns events into a subject's score (decay, trend, spikes,
    /// velocity and sequence patterns). Edges ignore it.
    #[serde(default)]
    pub scoring: ScoringV1,
}

/// Enforcement mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeV1 {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Everything passes; the would-be decision is reported.
    Shadow,
}

/// Level thresholds: a score at or above `critical` is critical, and so on down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdsV1 {
    /// Lowest medium score.
    pub medium: u32,
    /// Lowest high score.
    pub high: u32,
    /// Lowest critical score.
    pub critical: u32,
}

impl Default for ThresholdsV1 {
    fn default() -> Self {
        Self {
            medium: 40,
            high: 70,
            critical: 85,
        }
    }
}

/// An action name as written in a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionV1 {
    /// Let it through (in a rule: an explicit allow that wins over the score).
    Pass,
    /// Proof-of-work challenge, then a clearance cookie.
    Challenge,
    /// 429 with `retry-after`.
    Throttle,
    /// 403.
    Block,
}

/// The level → action map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsV1 {
    /// Action for low scores.
    pub low: ActionV1,
    /// Action for medium scores.
    pub medium: ActionV1,
    /// Action for high scores.
    pub high: ActionV1,
    /// Action for critical scores.
    pub critical: ActionV1,
    /// On a sensitive route: the action per level, where it is raised (never lowered).
    pub sensitive_routes: SensitiveActionsV1,
}

impl Default for ActionsV1 {
    fn default() -> Self {
        Self {
            low: ActionV1::Pass,
            medium: ActionV1::Pass,
            high: ActionV1::Challenge,
            critical: ActionV1::Block,
            sensitive_routes: SensitiveActionsV1::default(),
        }
    }
}

/// Raised actions for sensitive routes; a missing level keeps the normal action.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensitiveActionsV1 {
    /// Raised action for low scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low: Option<ActionV1>,
    /// Raised action for medium scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<ActionV1>,
    /// Raised action for high scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high: Option<ActionV1>,
    /// Raised action for critical scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<ActionV1>,
}

/// Local scores in `min..=max` ask the score cache for more context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupBandV1 {
    /// Lowest score of the band.
    pub min: u32,
    /// Highest score of the band.
    pub max: u32,
}

impl Default for LookupBandV1 {
    fn default() -> Self {
        Self { min: 30, max: 70 }
    }
}

/// A signal that is just a weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightV1 {
    /// Points added when the signal fires (0..=100).
    pub weight: u32,
}

/// A signal that fires when any token appears in the User-Agent (ASCII case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaTokensV1 {
    /// Points added when the signal fires (0..=100).
    pub weight: u32,
    /// Substrings to look for.
    pub tokens: Vec<String>,
}

/// Browser versions older than the minimum of their family.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaOutdatedV1 {
    /// Points added when the signal fires (0..=100).
    pub weight: u32,
    /// Family (`chrome`, `edge`, `firefox`, `safari`, `opera`, `samsung`) → lowest current major.
    pub min_major: BTreeMap<String, u32>,
}

/// Points per country (ISO 3166-1 alpha-2) or per ASN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreTableV1 {
    /// Key → points (0..=100).
    pub scores: BTreeMap<String, u32>,
}

/// Known-bad TLS fingerprints (JA3/JA4 strings as the edge header carries them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFingerprintsV1 {
    /// Points added when the fingerprint is listed (0..=100).
    pub weight: u32,
    /// Fingerprints, compared exactly.
    pub fingerprints: Vec<String>,
}

/// Clearance cookie as a signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClearanceSignalV1 {
    /// Ignored (loads with a warning unless 0). A valid clearance used to take these points
    /// off the score; now it only satisfies a challenge that asks no more work than it was
    /// earned with, and never lowers a score, a block, a throttle or a manual ban.
    pub trust: u32,
    /// Risk points for a clearance that fails verification (0..=100).
    pub invalid_weight: u32,
}

impl Default for ClearanceSignalV1 {
    fn default() -> Self {
        Self {
            trust: 0,
            invalid_weight: 10,
        }
    }
}

/// All signals. Every signal is off (weight 0) unless the bundle sets it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsV1 {
    /// No User-Agent header, or an empty one.
    pub ua_missing: WeightV1,
    /// HTTP libraries and tools (curl, python-requests, Go-http-client, ...).
    pub ua_automation: UaTokensV1,
    /// Headless browsers and browser automation.
    pub ua_headless: UaTokensV1,
    /// Browser major version older than the family minimum.
    pub ua_outdated: UaOutdatedV1,
    /// `sec-ch-ua*` client hints that contradict the User-Agent.
    pub ua_client_hints_mismatch: WeightV1,
    /// A browser UA without `accept-language`.
    pub headers_missing_accept_language: WeightV1,
    /// An empty `accept-language` (any client).
    pub headers_empty_accept_language: WeightV1,
    /// A browser UA without `accept-encoding`.
    pub headers_missing_accept_encoding: WeightV1,
    /// A browser recent enough to always send `sec-fetch-*`, without them (over HTTPS).
    pub headers_missing_sec_fetch: WeightV1,
    /// A Chromium browser (89 or later, not on iOS) without `sec-ch-ua` over HTTPS: Chromium
    /// sends its low-entropy client hints on every secure request.
    pub headers_missing_client_hints: WeightV1,
    /// Some `sec-fetch-*` headers but not all of `sec-fetch-site`, `-mode` and `-dest`
    /// (browsers send the three together, or none).
    pub headers_partial_sec_fetch: WeightV1,
    /// A browser UA without `accept` (browsers send one on every request).
    pub headers_missing_accept: WeightV1,
    /// A navigation (`sec-fetch-dest: document` or `iframe`) whose `accept` does not ask for
    /// `text/html` (every browser does).
    pub headers_navigation_accept: WeightV1,
    /// A User-Agent that is neither a known browser nor matches any token (crawler, declared
    /// bot, headless, automation): a client that names itself in a way no list knows.
    pub ua_unknown: WeightV1,
    /// List name → points when the client IP is in that list (reason `ip.<name>`).
    pub ip_lists: BTreeMap<String, u32>,
    /// Country scores.
    pub country: ScoreTableV1,
    /// ASN scores (keys are decimal AS numbers).
    pub asn: ScoreTableV1,
    /// Known-bad TLS fingerprints.
    pub tls_fingerprint: TlsFingerprintsV1,
    /// Percent of the cache's 0..=100 score that counts as points, per subject.
    pub remote_score: WeightV1,
    /// The clearance cookie.
    pub clearance: ClearanceSignalV1,
    /// The adapter could resolve no client address (a misconfigured listener or client-IP
    /// mode): no IP list can match, so this weight stands in for them.
    pub ip_missing: WeightV1,
}

/// A named IP prefix list with its provenance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpListV1 {
    /// Where the data came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The data's licence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    /// Date of the data, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
    /// Prefixes in CIDR notation, IPv4 or IPv6 (a bare address is a /32 or /128).
    pub cidrs: Vec<String>,
    /// The list's ranges, already parsed and merged (from a prepared bundle,
    /// [`crate::prepared`]): compiled in place of `cidrs`. Never part of bundle JSON.
    #[serde(skip)]
    pub prepared: Option<crate::IpRangeSet>,
}

/// Crawler category as written in a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrawlerCategoryV1 {
    /// Search engines (Googlebot, Bingbot, ...).
    SearchEngine,
    /// AI training and answer crawlers (GPTBot, ClaudeBot, ...).
    AiCrawler,
    /// Uptime and performance monitors.
    Monitor,
    /// SEO tools (AhrefsBot, SemrushBot, ...).
    Seo,
    /// Link previews (Slackbot, facebookexternalhit, ...).
    Preview,
    /// Feed readers.
    Feed,
    /// Web archivers.
    Archiver,
    /// Anything else that declares itself a bot.
    Other,
}

impl CrawlerCategoryV1 {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CrawlerCategoryV1::SearchEngine => "search_engine",
            CrawlerCategoryV1::AiCrawler => "ai_crawler",
            CrawlerCategoryV1::Monitor => "monitor",
            CrawlerCategoryV1::Seo => "seo",
            CrawlerCategoryV1::Preview => "preview",
            CrawlerCategoryV1::Feed => "feed",
            CrawlerCategoryV1::Archiver => "archiver",
            CrawlerCategoryV1::Other => "other",
        }
    }
}

/// Crawler verification settings and the catalogue of declared crawlers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrawlersV1 {
    /// Range lists older than this many days prove nothing: a crawler claimed from them is
    /// neither verified nor spoofed, only declared (its category's weight and rules apply).
    pub max_ranges_age_days: u32,
    /// Trust points for a crawler whose IP is in its published ranges (0..=100).
    pub verified_trust: u32,
    /// Risk points for a crawler UA from outside fresh published ranges (0..=100).
    pub spoofed_weight: u32,
    /// Risk points for a crawler UA from outside stale ranges (0..=100).
    pub unverified_weight: u32,
    /// Points for a declared crawler without published ranges, by category (0..=100).
    pub category_weights: BTreeMap<CrawlerCategoryV1, u32>,
    /// Known crawlers.
    pub catalogue: Vec<CrawlerV1>,
    /// Patterns of declared bots outside the catalogue (category `other`), e.g. a maintained
    /// list (`{ include: lists/declared-bots.json }`).
    #[serde(skip_serializing_if = "DeclaredBotsV1::is_empty")]
    pub declared: DeclaredBotsV1,
}

/// A list of declared-bot patterns with its provenance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeclaredBotsV1 {
    /// Where the patterns came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Date of the data, `YYYY-MM-DD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
    /// The patterns.
    pub patterns: Vec<BotPatternV1>,
    /// Source patterns the refresh could not express as tokens, with why (documentation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_translated: Vec<NotTranslatedV1>,
}

impl DeclaredBotsV1 {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// One declared-bot pattern: a token (ASCII case-insensitive) and where it may stand. A word
/// boundary is any byte that is not an ASCII letter or digit, or the end of the value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BotPatternV1 {
    /// The literal to find.
    pub token: String,
    /// Only at the start of the User-Agent.
    #[serde(skip_serializing_if = "is_false")]
    pub at_start: bool,
    /// Only after a word boundary.
    #[serde(skip_serializing_if = "is_false")]
    pub word_start: bool,
    /// Only before a word boundary.
    #[serde(skip_serializing_if = "is_false")]
    pub word_end: bool,
    /// Only before an ASCII digit.
    #[serde(skip_serializing_if = "is_false")]
    pub digit_after: bool,
    /// Not right after any of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_preceded_by: Vec<String>,
    /// Not right before any of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_followed_by: Vec<String>,
    /// The source pattern it was translated from (documentation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// A source pattern the refresh left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotTranslatedV1 {
    /// The source pattern.
    pub from: String,
    /// Why it is not a token.
    pub why: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for CrawlersV1 {
    fn default() -> Self {
        Self {
            max_ranges_age_days: 90,
            verified_trust: 100,
            spoofed_weight: 60,
            unverified_weight: 10,
            category_weights: BTreeMap::new(),
            catalogue: Vec::new(),
            declared: DeclaredBotsV1::default(),
        }
    }
}

/// One declared crawler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrawlerV1 {
    /// Stable name (`googlebot`).
    pub name: String,
    /// What kind of crawler it is.
    pub category: CrawlerCategoryV1,
    /// UA substrings that declare it (ASCII case-insensitive).
    pub ua_tokens: Vec<String>,
    /// Name of the list in `lists` holding its published ranges, if it publishes any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<String>,
}

/// A route whose requests weigh more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteV1 {
    /// Stable name; the reason code is `route.<name>`.
    pub name: String,
    /// Path prefix, matched on whole segments, ASCII case-insensitive, after normalisation.
    pub path_prefix: String,
    /// Methods (upper case); empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Points added on this route (0..=100).
    #[serde(default)]
    pub weight: u32,
    /// A sensitive route asks the score cache and may raise the action.
    #[serde(default)]
    pub sensitive: bool,
}

/// What the engine concludes the client is, from its User-Agent, headers and IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientClassV1 {
    /// A known browser.
    Browser,
    /// A bot from the catalogue whose IP is in its family's published ranges (fresh).
    VerifiedBot,
    /// A bot that says so (catalogue token or declared-bot pattern) and is not verified.
    DeclaredBot,
    /// An HTTP library, tool or headless browser.
    Automation,
    /// Claims a catalogue family that publishes ranges, from outside them.
    SpoofedBot,
    /// No User-Agent, or one nothing recognises.
    Unknown,
}

impl ClientClassV1 {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientClassV1::Browser => "browser",
            ClientClassV1::VerifiedBot => "verified_bot",
            ClientClassV1::DeclaredBot => "declared_bot",
            ClientClassV1::Automation => "automation",
            ClientClassV1::SpoofedBot => "spoofed_bot",
            ClientClassV1::Unknown => "unknown",
        }
    }
}

/// User-Agent class, for rules written before client classes (`when.ua_class`; loads with a
/// warning and is read as the client classes it maps to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UaClassV1 {
    /// No or empty User-Agent.
    Missing,
    /// A recognised browser.
    Browser,
    /// An HTTP library or tool.
    Automation,
    /// A headless browser.
    Headless,
    /// A declared crawler (verified or not).
    Crawler,
    /// A declared crawler whose IP is in its published ranges.
    VerifiedCrawler,
    /// None of the above.
    Unknown,
}

/// Risk level name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelV1 {
    /// Below `thresholds.medium`.
    Low,
    /// From `thresholds.medium`.
    Medium,
    /// From `thresholds.high`.
    High,
    /// From `thresholds.critical`.
    Critical,
}

/// Conditions of a rule; all that are set must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConditionsV1 {
    /// Path prefix (same matching as routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Any of these methods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Any of these countries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Any of these AS numbers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub asns: Vec<u32>,
    /// Client IP in this list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_list: Option<String>,
    /// Any of these client classes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_class: Vec<ClientClassV1>,
    /// Deprecated: any of these UA classes (read as `client_class`, with a warning).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ua_class: Vec<UaClassV1>,
    /// A bot (verified, declared or spoofed) of any of these categories.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crawler_category: Vec<CrawlerCategoryV1>,
    /// Final level at least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_level: Option<LevelV1>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleV1 {
    /// Stable id, reported in verdicts.
    pub id: String,
    /// Conditions (at least one).
    pub when: ConditionsV1,
    /// What to do on a match; `pass` is an explicit allow.
    pub action: ActionV1,
    /// Report the match but do not act on it.
    #[serde(default)]
    pub dry_run: bool,
    /// Raise the decision to at least `action` and go on to the next rule, instead of
    /// setting it and stopping: the score, a later rule or a manual decision can still make
    /// it stricter, never milder.
    #[serde(default, skip_serializing_if = "is_false")]
    pub at_least: bool,
}

/// What a rate budget counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKeyV1 {
    /// Client IP (IPv6 at the subject prefix).
    Ip,
    /// User key.
    User,
    /// Client IP and matched route.
    Route,
}

/// A token-bucket budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateBudgetV1 {
    /// Stable name.
    pub name: String,
    /// What to count per.
    pub key: RateKeyV1,
    /// Only requests on this route (by name), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Requests allowed per `per_seconds`.
    pub requests: u32,
    /// Window length in seconds.
    pub per_seconds: u32,
    /// Bucket size (default: `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Level → percent of the budget left at that level (risk-adaptive throttling).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub level_percent: BTreeMap<LevelV1, u32>,
}

/// Subject kinds the score cache knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKindV1 {
    /// Client IP (IPv6 at the subject prefix).
    Ip,
    /// User key.
    User,
    /// Device key.
    Device,
}

/// What to do when the score cache cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailableV1 {
    /// Decide on the local score.
    #[default]
    FailOpen,
    /// Raise the decision to `fail_closed_action`.
    FailClosed,
}

/// Circuit breaker around the score cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerV1 {
    /// Open when this percent of recent lookups failed.
    pub failure_rate_percent: u32,
    /// Fewest lookups in the window before the rate counts.
    pub min_requests: u32,
    /// Window over which the rate is taken, seconds.
    pub window_seconds: u32,
    /// How long the breaker stays open, seconds.
    pub open_seconds: u32,
}

impl Default for BreakerV1 {
    fn default() -> Self {
        Self {
            failure_rate_percent: 15,
            min_requests: 20,
            window_seconds: 10,
            open_seconds: 30,
        }
    }
}

/// Score-cache behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheV1 {
    /// Subjects to ask about when a lookup is wanted.
    pub lookup: Vec<SubjectKindV1>,
    /// Subjects to look up on every request where present.
    pub always_lookup: Vec<SubjectKindV1>,
    /// Lookup timeout, milliseconds.
    pub timeout_ms: u32,
    /// Fail open or closed.
    pub on_unavailable: OnUnavailableV1,
    /// Lowest action when failing closed.
    pub fail_closed_action: ActionV1,
    /// Circuit breaker.
    pub breaker: BreakerV1,
}

impl Default for CacheV1 {
    fn default() -> Self {
        Self {
            lookup: vec![SubjectKindV1::Ip, SubjectKindV1::User],
            always_lookup: Vec::new(),
            timeout_ms: 50,
            on_unavailable: OnUnavailableV1::FailOpen,
            fail_closed_action: ActionV1::Challenge,
            breaker: BreakerV1::default(),
        }
    }
}

/// Challenge and clearance settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengeV1 {
    /// Proof-of-work difficulty in leading zero bits.
    pub difficulty_bits: u32,
    /// Raised difficulty per level.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub difficulty_by_level: BTreeMap<LevelV1, u32>,
    /// How long an issued challenge may be solved, seconds.
    pub challenge_ttl_seconds: u32,
    /// Lifetime of the clearance cookie, seconds.
    pub clearance_ttl_seconds: u32,
    /// Reserved path the solved challenge is posted to.
    pub verify_path: String,
}

impl Default for ChallengeV1 {
    fn default() -> Self {
        Self {
            difficulty_bits: 16,
            difficulty_by_level: BTreeMap::new(),
            challenge_ttl_seconds: 300,
            clearance_ttl_seconds: 3600,
            verify_path: "/.signalbox/verify".to_owned(),
        }
    }
}

/// How client IPs are keyed as subjects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectsV1 {
    /// IPv6 addresses are keyed at this prefix length (reputation and rate counting).
    pub ipv6_prefix: u32,
}

impl Default for SubjectsV1 {
    fn default() -> Self {
        Self { ipv6_prefix: 64 }
    }
}

/// How the score cache scores a subject from its events: each event adds its points, which
/// halve every `half_life_seconds`; the score is their sum, capped at 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringV1 {
    /// An event's points halve every this many seconds.
    pub half_life_seconds: u32,
    /// The short window of the trend: events are also counted with this half-life, and the
    /// trend compares that short rate with the long one (`half_life_seconds`).
    pub trend_half_life_seconds: u32,
    /// Rising when the short rate is at least this percent of the long rate.
    pub rising_ratio_percent: u32,
    /// Falling when the short rate is at most this percent of the long rate.
    pub falling_ratio_percent: u32,
    /// A spike: one batch of events raises the score by at least this much. The subject then
    /// carries the `spike` factor for `trend_half_life_seconds`.
    pub spike_delta: u32,
    /// How long an edge may keep a context answer, seconds.
    pub context_ttl_seconds: u32,
    /// Points of an event that does not say its own impact, by severity.
    pub severity_points: SeverityPointsV1,
    /// "At least N events of one type within W": each adds a factor with its own code.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub velocity: Vec<VelocityV1>,
    /// "Types A, then B, then C for one subject within W" (e.g. password reset, email change,
    /// MFA disabled): each adds a factor with its own code.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<SequenceV1>,
}

impl Default for ScoringV1 {
    fn default() -> Self {
        Self {
            half_life_seconds: 86_400,
            trend_half_life_seconds: 3_600,
            rising_ratio_percent: 200,
            falling_ratio_percent: 50,
            spike_delta: 30,
            context_ttl_seconds: 30,
            severity_points: SeverityPointsV1::default(),
            velocity: Vec::new(),
            sequences: Vec::new(),
        }
    }
}

/// Default points per event severity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityPointsV1 {
    /// `low`.
    pub low: u32,
    /// `medium`.
    pub medium: u32,
    /// `high`.
    pub high: u32,
    /// `critical`.
    pub critical: u32,
}

impl Default for SeverityPointsV1 {
    fn default() -> Self {
        Self {
            low: 5,
            medium: 15,
            high: 30,
            critical: 60,
        }
    }
}

/// A velocity pattern: at least `at_least` events of `event_type` within `within_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelocityV1 {
    /// The factor's code (`velocity.<code>`).
    pub code: String,
    /// The event type counted.
    pub event_type: String,
    /// How many events.
    pub at_least: u32,
    /// Within how many seconds.
    pub within_seconds: u32,
    /// Points the factor adds (decaying like an event's).
    pub points: u32,
}

/// A sequence pattern: `event_types` in this order for one subject within `within_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceV1 {
    /// The factor's code (`sequence.<code>`).
    pub code: String,
    /// The event types, in order (2 to 8).
    pub event_types: Vec<String>,
    /// Within how many seconds from the first to the last.
    pub within_seconds: u32,
    /// Points the factor adds (decaying like an event's).
    pub points: u32,
}
