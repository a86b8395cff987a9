//! The compiled policy: a validated bundle in the form the engine runs on, and the
//! `TryFrom<BundleV1>` that builds it, naming the field path of every problem.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::iprange::IpRangeSet;
use crate::ua::{BotPattern, BrowserFamily, UaScanner};
use crate::verdict::{Decision, Level};
use crate::wire::{self, BundleV1};

/// This engine's version; bundles may require a minimum.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One problem in a bundle, with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `signals.ua_automation.weight`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Not JSON of the bundle's shape (wrong type, unknown field, missing field).
    #[error("{0}")]
    Parse(FieldError),
    /// Well-formed but invalid; every problem found is listed.
    #[error("{}", join_errors(.0))]
    Invalid(Vec<FieldError>),
}

impl BundleError {
    /// Every problem, each with its field path.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            BundleError::Parse(e) => std::slice::from_ref(e),
            BundleError::Invalid(errors) => errors,
        }
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses bundle JSON into wire types, naming the path of a shape error.
pub fn parse_wire(json: &[u8]) -> Result<BundleV1, BundleError> {
    crate::json::from_slice_with_path(json).map_err(|e| {
        BundleError::Parse(FieldError {
            path: if e.path == "." {
                "(bundle)".to_owned()
            } else {
                e.path
            },
            message: e.message,
        })
    })
}

/// Enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decisions are enforced.
    Enforce,
    /// Everything passes; the would-be decision is reported.
    Shadow,
}

/// Subjects the score cache knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    /// The client IP (IPv6 at the subject prefix).
    Ip,
    /// The user key.
    User,
    /// The device key.
    Device,
}

/// Crawler categories.
pub type CrawlerCategory = wire::CrawlerCategoryV1;
/// Client classes, as verdicts and rules name them.
pub type ClientClass = wire::ClientClassV1;

/// A range list that crawlers verify against and that is too old to prove anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleRanges {
    /// The list's name.
    pub list: String,
    /// Its `as_of` date, if it has one.
    pub as_of: Option<String>,
    /// Days since `as_of` (`None` without one).
    pub age_days: Option<i64>,
    /// The catalogue crawlers that use it.
    pub crawlers: Vec<String>,
}

/// A named prefix list.
#[derive(Debug, Clone)]
pub struct NamedList {
    /// Name in the bundle.
    pub name: Arc<str>,
    /// Reason code when it scores: `ip.<name>`.
    pub(crate) code: Arc<str>,
    /// The prefixes.
    pub set: IpRangeSet,
    /// Julian day of `as_of`.
    pub(crate) as_of_day: Option<i32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Crawler {
    pub(crate) name: Arc<str>,
    pub(crate) category: CrawlerCategory,
    pub(crate) ranges: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) code: Arc<str>,
    pub(crate) path_prefix: String,
    pub(crate) methods: Vec<String>,
    pub(crate) weight: u8,
    pub(crate) sensitive: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Conditions {
    pub(crate) path_prefix: Option<String>,
    pub(crate) methods: Vec<String>,
    pub(crate) countries: Vec<[u8; 2]>,
    pub(crate) asns: Vec<u32>,
    pub(crate) ip_list: Option<usize>,
    pub(crate) client_class: Vec<ClientClass>,
    pub(crate) crawler_category: Vec<CrawlerCategory>,
    pub(crate) min_level: Option<Level>,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) id: Arc<str>,
    pub(crate) when: Conditions,
    pub(crate) action: Decision,
    pub(crate) dry_run: bool,
    pub(crate) at_least: bool,
}

/// A token-bucket budget (counted by the adapters with the trust primitives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateBudget {
    /// Stable name.
    pub name: String,
    /// What it counts per.
    pub key: wire::RateKeyV1,
    /// Only on this route (index into the routes), if set.
    pub route: Option<usize>,
    /// Requests per window.
    pub requests: u32,
    /// Window, seconds.
    pub per_seconds: u32,
    /// Bucket size.
    pub burst: u32,
    /// Percent of the budget left per level (low, medium, high, critical).
    pub level_percent: [u8; 4],
}

/// Score-cache settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Subjects to ask about when a lookup is wanted.
    pub lookup: Vec<SubjectKind>,
    /// Subjects looked up on every request where present.
    pub always_lookup: Vec<SubjectKind>,
    /// Lookup timeout, milliseconds.
    pub timeout_ms: u32,
    /// Raise to this when the cache is unavailable (fail closed), or `None` (fail open).
    pub fail_closed_action: Option<Decision>,
    /// Breaker: failure rate percent that opens it.
    pub breaker_failure_rate_percent: u8,
    /// Breaker: fewest lookups before the rate counts.
    pub breaker_min_requests: u32,
    /// Breaker: window, seconds.
    pub breaker_window_seconds: u32,
    /// Breaker: how long it stays open, seconds.
    pub breaker_open_seconds: u32,
}

/// Challenge and clearance settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeSettings {
    /// Difficulty (leading zero bits) per level.
    pub difficulty_bits: [u8; 4],
    /// Seconds to solve an issued challenge.
    pub challenge_ttl_seconds: u32,
    /// Clearance lifetime, seconds.
    pub clearance_ttl_seconds: u32,
    /// The reserved verify path.
    pub verify_path: String,
}

/// A validated, compiled policy bundle. Build it with [`Policy::from_json_slice`] or
/// `Policy::try_from(BundleV1)`; evaluate with [`Policy::assess`] and [`Policy::decide`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) revision: u64,
    pub(crate) expires_at: Option<u64>,
    pub(crate) digest: Option<[u8; 32]>,
    pub(crate) min_engine_version: String,
    pub(crate) mode: Mode,
    pub(crate) thresholds: [u8; 3],
    pub(crate) actions: [Decision; 4],
    pub(crate) sensitive_actions: [Decision; 4],
    pub(crate) lookup_band: (u8, u8),
    pub(crate) signals: Signals,
    pub(crate) lists: Vec<NamedList>,
    /// One-pass matcher of crawler, headless, automation and browser tokens.
    pub(crate) ua_scanner: UaScanner,
    pub(crate) crawlers: Vec<Crawler>,
    pub(crate) crawler_max_age_days: u32,
    pub(crate) crawler_verified_trust: u8,
    pub(crate) crawler_spoofed_weight: u8,
    pub(crate) crawler_category_weights: BTreeMap<CrawlerCategory, u8>,
    pub(crate) routes: Vec<Route>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) rate_budgets: Vec<RateBudget>,
    pub(crate) cache: CacheSettings,
    pub(crate) challenge: ChallengeSettings,
    pub(crate) scoring: crate::scoring::ScoringSettings,
    pub(crate) ipv6_prefix: u8,
    pub(crate) warnings: Vec<FieldError>,
}

#[derive(Debug, Clone)]
pub(crate) struct Signals {
    pub(crate) ua_missing: u8,
    pub(crate) ua_automation: u8,
    pub(crate) ua_headless: u8,
    pub(crate) ua_outdated: u8,
    pub(crate) min_major: Vec<(BrowserFamily, u32)>,
    pub(crate) ua_client_hints_mismatch: u8,
    pub(crate) missing_accept_language: u8,
    pub(crate) empty_accept_language: u8,
    pub(crate) missing_accept_encoding: u8,
    pub(crate) missing_sec_fetch: u8,
    pub(crate) partial_sec_fetch: u8,
    pub(crate) missing_client_hints: u8,
    pub(crate) missing_accept: u8,
    pub(crate) navigation_accept: u8,
    pub(crate) ua_unknown: u8,
    /// (list index, points)
    pub(crate) ip_lists: Vec<(usize, u8)>,
    pub(crate) country: HashMap<[u8; 2], u8>,
    pub(crate) asn: HashMap<u32, u8>,
    pub(crate) tls_fingerprint: u8,
    pub(crate) tls_fingerprints: Vec<Vec<u8>>,
    pub(crate) remote_score_percent: u8,
    pub(crate) clearance_invalid: u8,
    pub(crate) ip_missing: u8,
}

impl Policy {
    /// Parses and validates bundle JSON. The digest of these exact bytes is kept.
    ///
    /// ```
    /// let policy = signalbox_policy::Policy::from_json_slice(
    ///     br#"{"format_version":1,"revision":3,"min_engine_version":"0.1.0"}"#,
    /// ).unwrap();
    /// assert_eq!(policy.revision(), 3);
    /// ```
    pub fn from_json_slice(json: &[u8]) -> Result<Self, BundleError> {
        let mut policy = Policy::try_from(parse_wire(json)?)?;
        policy.set_digest(json);
        Ok(policy)
    }

    /// Records the SHA-256 of the bytes the policy was loaded from.
    pub(crate) fn set_digest(&mut self, json: &[u8]) {
        self.digest = Some(Sha256::digest(json).into());
    }

    /// Records a digest computed elsewhere (a prepared bundle carries its payload's).
    pub(crate) fn set_digest_value(&mut self, digest: [u8; 32]) {
        self.digest = Some(digest);
    }

    /// The bundle's revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The digest as lower-case hex (empty when the policy was not loaded from bytes).
    pub fn digest_hex(&self) -> String {
        self.digest
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default()
    }

    /// Unix seconds after which the bundle is refused, if it expires.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// SHA-256 of the JSON bytes the policy was loaded from, if loaded from bytes.
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.digest
    }

    /// Fields that loaded but mean nothing any more, with what to change (`policy lint` prints
    /// them; adapters log them).
    pub fn warnings(&self) -> &[FieldError] {
        &self.warnings
    }

    /// The crawler range lists that are too old at `now` (unix seconds) to verify or expose
    /// anyone: crawlers that claim their families count as declared bots of their category
    /// until the lists are refreshed. `policy lint` warns about them; adapters count them.
    pub fn stale_ranges(&self, now: u64) -> Vec<StaleRanges> {
        let today = i64::try_from(now / 86_400).unwrap_or(i64::MAX / 2) + 2_440_588;
        let mut out: Vec<StaleRanges> = Vec::new();
        for crawler in &self.crawlers {
            let Some(index) = crawler.ranges else {
                continue;
            };
            if self.ranges_fresh(index, now) {
                continue;
            }
            let Some(list) = self.lists.get(index) else {
                continue;
            };
            match out.iter_mut().find(|s| s.list == *list.name) {
                Some(stale) => stale.crawlers.push(crawler.name.to_string()),
                None => out.push(StaleRanges {
                    list: list.name.to_string(),
                    as_of: list.as_of_day.map(date_of_julian_day),
                    age_days: list.as_of_day.map(|day| today - i64::from(day)),
                    crawlers: vec![crawler.name.to_string()],
                }),
            }
        }
        out
    }

    /// Whether the bundle needs a score cache: with `cache.on_unavailable: fail_closed` and
    /// no cache, every request the bundle wants context for would be raised to the
    /// fail-closed action. Adapters without a configured cache refuse such a bundle.
    pub fn requires_score_cache(&self) -> bool {
        self.cache.fail_closed_action.is_some()
    }

    /// The minimum engine version the bundle asked for.
    pub fn min_engine_version(&self) -> &str {
        &self.min_engine_version
    }

    /// Enforce or shadow.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The named IP lists, for reporting.
    pub fn lists(&self) -> &[NamedList] {
        &self.lists
    }

    /// The names of the bundle's IP lists that hold `ip`, in bundle order: what a decision
    /// record keeps instead of the address.
    pub fn lists_holding(&self, ip: std::net::IpAddr) -> Vec<String> {
        let ip = ip.to_canonical();
        self.lists
            .iter()
            .filter(|l| l.set.contains(ip))
            .map(|l| l.name.to_string())
            .collect()
    }

    /// The name of the route at `index` (a verdict's `route`).
    pub fn route_name(&self, index: usize) -> Option<&str> {
        self.routes.get(index).map(|r| &*r.name)
    }

    /// Rate budgets.
    pub fn rate_budgets(&self) -> &[RateBudget] {
        &self.rate_budgets
    }

    /// Score-cache settings.
    pub fn cache(&self) -> &CacheSettings {
        &self.cache
    }

    /// Challenge settings.
    pub fn challenge(&self) -> &ChallengeSettings {
        &self.challenge
    }

    /// How the score cache scores events (`scoring`).
    pub fn scoring(&self) -> &crate::scoring::ScoringSettings {
        &self.scoring
    }

    /// IPv6 subject prefix length.
    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }

    /// The level of a score under this bundle's thresholds.
    pub fn level_of(&self, score: u8) -> Level {
        let [medium, high, critical] = self.thresholds;
        if score >= critical {
            Level::Critical
        } else if score >= high {
            Level::High
        } else if score >= medium {
            Level::Medium
        } else {
            Level::Low
        }
    }
}

/// Collects field errors while a bundle is validated.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A 0..=100 points value.
    pub(crate) fn points(&mut self, path: impl Into<String>, value: u32) -> u8 {
        match u8::try_from(value) {
            Ok(v) if v <= 100 => v,
            _ => {
                self.push(path, "must be 0..=100");
                0
            }
        }
    }

    pub(crate) fn non_empty_name(&mut self, path: impl Into<String>, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            self.push(path, "must be 1..=64 characters of [A-Za-z0-9._-]");
        }
    }

    fn tokens(&mut self, path: &str, tokens: &[String]) {
        for (i, t) in tokens.iter().enumerate() {
            if t.trim().is_empty() {
                self.push(format!("{path}[{i}]"), "must not be empty");
            }
        }
    }

    fn path_prefix(&mut self, path: impl Into<String>, prefix: &str) {
        if !prefix.starts_with('/') {
            self.push(path, "must start with '/'");
        }
    }

    fn methods(&mut self, path: &str, methods: &[String]) -> Vec<String> {
        for (i, m) in methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                self.push(format!("{path}[{i}]"), "must be an upper-case method name");
            }
        }
        methods.to_vec()
    }
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// RFC 3339 → unix seconds (not before 1970).
pub(crate) fn parse_rfc3339(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// Whether `min_engine_version` is newer than this engine (unparsable counts as newer).
pub(crate) fn needs_newer_engine(min_engine_version: &str) -> bool {
    match (
        parse_version(min_engine_version),
        parse_version(ENGINE_VERSION),
    ) {
        (Some(wanted), Some(ours)) => wanted > ours,
        _ => true,
    }
}

/// Julian day number → `YYYY-MM-DD`.
fn date_of_julian_day(day: i32) -> String {
    time::Date::from_julian_day(day)
        .map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
        .unwrap_or_default()
}

/// `YYYY-MM-DD` → Julian day number.
pub(crate) fn julian_day(date: &str) -> Option<i32> {
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    let date = time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()?;
    Some(date.to_julian_day())
}

fn decision(action: wire::ActionV1) -> Decision {
    match action {
        wire::ActionV1::Pass => Decision::Pass,
        wire::ActionV1::Challenge => Decision::Challenge,
        wire::ActionV1::Throttle => Decision::Throttle,
        wire::ActionV1::Block => Decision::Block,
    }
}

fn level(level: wire::LevelV1) -> Level {
    match level {
        wire::LevelV1::Low => Level::Low,
        wire::LevelV1::Medium => Level::Medium,
        wire::LevelV1::High => Level::High,
        wire::LevelV1::Critical => Level::Critical,
    }
}

fn subject(kind: wire::SubjectKindV1) -> SubjectKind {
    match kind {
        wire::SubjectKindV1::Ip => SubjectKind::Ip,
        wire::SubjectKindV1::User => SubjectKind::User,
        wire::SubjectKindV1::Device => SubjectKind::Device,
    }
}

impl TryFrom<BundleV1> for Policy {
    type Error = BundleError;

    /// Compiles for many requests per instance ([`UaMatcherBuild::ForThroughput`]).
    fn try_from(bundle: BundleV1) -> Result<Self, BundleError> {
        Policy::compile(bundle, UaMatcherBuild::ForThroughput)
    }
}

/// How the User-Agent matcher (one Aho-Corasick automaton over every crawler, declared-bot,
/// headless, automation and browser token) is built: a trade between the cost of building it
/// once per instance and the cost of each scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UaMatcherBuild {
    /// A DFA: the fastest scans, the slowest build (about 4 ms native for the default
    /// bundle's catalogue). For hosts that keep an instance for many requests (Envoy, JS
    /// isolates).
    #[default]
    ForThroughput,
    /// A contiguous NFA: builds about 2.5 times faster and scans a few hundred nanoseconds
    /// slower per request. For hosts that make a fresh instance per request (prepared
    /// bundles).
    ForStartup,
}

impl Policy {
    /// Compiles a parsed bundle, with the User-Agent matcher built as `ua_matcher` says.
    /// Errors list every field that is wrong, with its path.
    pub fn compile(bundle: BundleV1, ua_matcher: UaMatcherBuild) -> Result<Self, BundleError> {
        let BundleV1 {
            format_version,
            revision,
            min_engine_version,
            expires_at,
            description: _,
            mode,
            thresholds,
            actions,
            lookup_band,
            mut signals,
            lists,
            crawlers,
            routes,
            rules,
            rate_budgets,
            cache,
            challenge,
            subjects,
            scoring,
        } = bundle;
        let mut errors = Errors::default();

        if format_version != 1 {
            errors.push(
                "format_version",
                format!("unsupported format {format_version}; this engine reads 1"),
            );
        }
        match (
            parse_version(&min_engine_version),
            parse_version(ENGINE_VERSION),
        ) {
            (Some(wanted), Some(ours)) if wanted > ours => errors.push(
                "min_engine_version",
                format!("bundle needs engine {min_engine_version}, this is {ENGINE_VERSION}"),
            ),
            (None, _) => errors.push("min_engine_version", "must be MAJOR.MINOR.PATCH"),
            _ => {}
        }

        let expires_at = expires_at.as_deref().and_then(|text| {
            let parsed = parse_rfc3339(text);
            if parsed.is_none() {
                errors.push(
                    "expires_at",
                    "must be an RFC 3339 time after 1970, e.g. 2027-01-31T00:00:00Z",
                );
            }
            parsed
        });
        let thresholds = compile_thresholds(&mut errors, &thresholds);
        let (actions, sensitive_actions) = compile_actions(&actions);
        let lookup_band = (
            errors.points("lookup_band.min", lookup_band.min),
            errors.points("lookup_band.max", lookup_band.max),
        );
        if lookup_band.0 > lookup_band.1 {
            errors.push("lookup_band", "min must not exceed max");
        }

        // Lists first: signals, crawlers and rules refer to them by name.
        let mut compiled_lists = Vec::with_capacity(lists.len());
        for (name, list) in lists {
            let path = format!("lists.{name}");
            errors.non_empty_name(&path, &name);
            let wire::IpListV1 {
                source: _,
                licence: _,
                as_of,
                cidrs,
                prepared,
            } = list;
            let as_of_day = as_of.as_deref().and_then(|d| {
                let day = julian_day(d);
                if day.is_none() {
                    errors.push(format!("{path}.as_of"), "must be a date YYYY-MM-DD");
                }
                day
            });
            let set = match prepared {
                Some(set) => set,
                None => IpRangeSet::from_cidrs(&cidrs).unwrap_or_else(|(i, e)| {
                    errors.push(format!("{path}.cidrs[{i}]"), e.to_string());
                    IpRangeSet::default()
                }),
            };
            compiled_lists.push(NamedList {
                name: Arc::from(name.as_str()),
                code: Arc::from(format!("ip.{name}")),
                set,
                as_of_day,
            });
        }
        let list_index = |errors: &mut Errors, path: String, name: &str| -> Option<usize> {
            let found = compiled_lists.iter().position(|l| &*l.name == name);
            if found.is_none() {
                errors.push(path, format!("no list named {name:?} in lists"));
            }
            found
        };

        let headless_tokens = std::mem::take(&mut signals.ua_headless.tokens);
        let automation_tokens = std::mem::take(&mut signals.ua_automation.tokens);
        errors.tokens("signals.ua_headless.tokens", &headless_tokens);
        errors.tokens("signals.ua_automation.tokens", &automation_tokens);
        let mut warnings = Vec::new();
        if signals.clearance.trust != 0 {
            warnings.push(FieldError {
                path: "signals.clearance.trust".to_owned(),
                message: "ignored: a valid clearance no longer lowers the score; it only \
                          satisfies a challenge that asks no more work than it was earned \
                          with. Remove the field."
                    .to_owned(),
            });
        }
        let signals = compile_signals(&mut errors, signals, &mut |e, p, n| list_index(e, p, n));

        // Crawlers.
        let wire::CrawlersV1 {
            max_ranges_age_days,
            verified_trust,
            spoofed_weight,
            unverified_weight,
            category_weights,
            catalogue,
            declared,
        } = crawlers;
        if unverified_weight != wire::CrawlersV1::default().unverified_weight {
            warnings.push(FieldError {
                path: "crawlers.unverified_weight".to_owned(),
                message: "ignored: a crawler claimed from ranges older than \
                          max_ranges_age_days is now a declared bot of its category (its \
                          category weight and rules apply; it is never verified). Remove \
                          the field."
                    .to_owned(),
            });
        }
        let declared_patterns = compile_declared(&mut errors, declared);
        let mut crawler_patterns = Vec::new();
        let mut compiled_crawlers = Vec::with_capacity(catalogue.len());
        for (i, c) in catalogue.iter().enumerate() {
            let path = format!("crawlers.catalogue[{i}]");
            errors.non_empty_name(format!("{path}.name"), &c.name);
            if c.ua_tokens.is_empty() {
                errors.push(format!("{path}.ua_tokens"), "must list at least one token");
            }
            for (j, t) in c.ua_tokens.iter().enumerate() {
                if t.trim().is_empty() {
                    errors.push(format!("{path}.ua_tokens[{j}]"), "must not be empty");
                }
                crawler_patterns.push((t.clone(), i));
            }
            let ranges = c
                .ranges
                .as_deref()
                .and_then(|name| list_index(&mut errors, format!("{path}.ranges"), name));
            if let Some(list) = ranges.and_then(|r| compiled_lists.get(r))
                && list.as_of_day.is_none()
            {
                warnings.push(FieldError {
                    path: format!("{path}.ranges"),
                    message: format!(
                        "list {:?} has no as_of date, so it can never verify {}: give the \
                         list the date of its data",
                        list.name, c.name
                    ),
                });
            }
            compiled_crawlers.push(Crawler {
                name: Arc::from(c.name.as_str()),
                category: c.category,
                ranges,
            });
        }
        let ua_scanner = UaScanner::new(
            &crawler_patterns,
            declared_patterns,
            &headless_tokens,
            &automation_tokens,
            ua_matcher == UaMatcherBuild::ForStartup,
        );
        let crawler_category_weights = category_weights
            .iter()
            .map(|(cat, w)| {
                let key = serde_json::to_value(cat).ok();
                let key = key.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
                (
                    *cat,
                    errors.points(format!("crawlers.category_weights.{key}"), *w),
                )
            })
            .collect();

        // Routes.
        let mut compiled_routes = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            let wire::RouteV1 {
                name,
                path_prefix,
                methods,
                weight,
                sensitive,
            } = r;
            errors.non_empty_name(format!("{path}.name"), name);
            errors.path_prefix(format!("{path}.path_prefix"), path_prefix);
            compiled_routes.push(Route {
                name: Arc::from(name.as_str()),
                code: Arc::from(format!("route.{name}")),
                path_prefix: path_prefix.clone(),
                methods: errors.methods(&format!("{path}.methods"), methods),
                weight: errors.points(format!("{path}.weight"), *weight),
                sensitive: *sensitive,
            });
        }

        // Rules.
        let mut compiled_rules = Vec::with_capacity(rules.len());
        let mut seen_ids = std::collections::BTreeSet::new();
        for (i, r) in rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            let wire::RuleV1 {
                id,
                when,
                action,
                dry_run,
                at_least,
            } = r;
            errors.non_empty_name(format!("{path}.id"), id);
            if !seen_ids.insert(id.as_str()) {
                errors.push(format!("{path}.id"), format!("duplicate rule id {id:?}"));
            }
            let wire::ConditionsV1 {
                path_prefix,
                methods,
                countries,
                asns,
                ip_list,
                client_class,
                ua_class,
                crawler_category,
                min_level,
            } = when;
            let mut client_class = client_class.clone();
            if !ua_class.is_empty() && !client_class.is_empty() {
                errors.push(
                    format!("{path}.when.ua_class"),
                    "a rule takes client_class or the old ua_class, not both: move the classes \
                     into client_class",
                );
            }
            if !ua_class.is_empty() {
                warnings.push(FieldError {
                    path: format!("{path}.when.ua_class"),
                    message: "renamed client_class (browser, verified_bot, declared_bot, \
                              automation, spoofed_bot, unknown); read as the classes it maps \
                              to, which can match more than before: missing and unknown → \
                              unknown (any unrecognised User-Agent too), headless and \
                              automation → automation (both), browser → browser, crawler → \
                              verified_bot, declared_bot and spoofed_bot, verified_crawler → \
                              verified_bot"
                        .to_owned(),
                });
                for class in ua_class.iter().flat_map(|c| client_classes_of(*c)) {
                    if !client_class.contains(class) {
                        client_class.push(*class);
                    }
                }
            }
            if *when == wire::ConditionsV1::default() {
                errors.push(format!("{path}.when"), "must set at least one condition");
            }
            if let Some(p) = path_prefix {
                errors.path_prefix(format!("{path}.when.path_prefix"), p);
            }
            let countries = countries
                .iter()
                .enumerate()
                .filter_map(|(j, c)| match c.as_bytes() {
                    [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Some([*a, *b]),
                    _ => {
                        errors.push(
                            format!("{path}.when.countries[{j}]"),
                            "must be ISO 3166-1 alpha-2, upper case",
                        );
                        None
                    }
                })
                .collect();
            let ip_list = ip_list
                .as_deref()
                .and_then(|n| list_index(&mut errors, format!("{path}.when.ip_list"), n));
            compiled_rules.push(Rule {
                id: Arc::from(id.as_str()),
                when: Conditions {
                    path_prefix: path_prefix.clone(),
                    methods: errors.methods(&format!("{path}.when.methods"), methods),
                    countries,
                    asns: asns.clone(),
                    ip_list,
                    client_class,
                    crawler_category: crawler_category.clone(),
                    min_level: min_level.map(level),
                },
                action: decision(*action),
                dry_run: *dry_run,
                at_least: *at_least,
            });
        }

        // Rate budgets.
        let mut compiled_budgets = Vec::with_capacity(rate_budgets.len());
        for (i, b) in rate_budgets.iter().enumerate() {
            let path = format!("rate_budgets[{i}]");
            let wire::RateBudgetV1 {
                name,
                key,
                route,
                requests,
                per_seconds,
                burst,
                level_percent,
            } = b;
            errors.non_empty_name(format!("{path}.name"), name);
            if *requests == 0 {
                errors.push(format!("{path}.requests"), "must be at least 1");
            }
            if *per_seconds == 0 {
                errors.push(format!("{path}.per_seconds"), "must be at least 1");
            }
            let route = route.as_deref().and_then(|name| {
                let found = routes.iter().position(|r| r.name == name);
                if found.is_none() {
                    errors.push(format!("{path}.route"), format!("no route named {name:?}"));
                }
                found
            });
            let mut percent = [100u8; 4];
            for (lvl, p) in level_percent {
                let idx = level(*lvl) as usize;
                let v = errors.points(format!("{path}.level_percent"), *p);
                if let Some(slot) = percent.get_mut(idx) {
                    *slot = v;
                }
            }
            compiled_budgets.push(RateBudget {
                name: name.clone(),
                key: *key,
                route,
                requests: *requests,
                per_seconds: *per_seconds,
                burst: burst.unwrap_or(*requests),
                level_percent: percent,
            });
        }

        let cache = compile_cache(&mut errors, &cache);
        let challenge = compile_challenge(&mut errors, &challenge);
        let scoring = crate::scoring::compile(&mut errors, &scoring);
        let ipv6_prefix = match u8::try_from(subjects.ipv6_prefix) {
            Ok(p) if (32..=128).contains(&p) => p,
            _ => {
                errors.push("subjects.ipv6_prefix", "must be 32..=128");
                64
            }
        };

        let crawler_verified_trust = errors.points("crawlers.verified_trust", verified_trust);
        let crawler_spoofed_weight = errors.points("crawlers.spoofed_weight", spoofed_weight);
        errors.points("crawlers.unverified_weight", unverified_weight);

        let ua_scanner = match ua_scanner {
            Ok(scanner) if errors.0.is_empty() => scanner,
            Ok(_) => return Err(BundleError::Invalid(errors.0)),
            Err(e) => {
                errors.push(
                    "signals",
                    format!("cannot build the User-Agent matcher: {e}"),
                );
                return Err(BundleError::Invalid(errors.0));
            }
        };
        Ok(Policy {
            revision,
            expires_at,
            digest: None,
            min_engine_version,
            mode: match mode {
                wire::ModeV1::Enforce => Mode::Enforce,
                wire::ModeV1::Shadow => Mode::Shadow,
            },
            thresholds,
            actions,
            sensitive_actions,
            lookup_band,
            signals,
            lists: compiled_lists,
            ua_scanner,
            crawlers: compiled_crawlers,
            crawler_max_age_days: max_ranges_age_days,
            crawler_verified_trust,
            crawler_spoofed_weight,
            crawler_category_weights,
            routes: compiled_routes,
            rules: compiled_rules,
            rate_budgets: compiled_budgets,
            cache,
            challenge,
            scoring,
            ipv6_prefix,
            warnings,
        })
    }
}

/// The client classes a deprecated `ua_class` value stands for.
fn client_classes_of(ua_class: wire::UaClassV1) -> &'static [ClientClass] {
    use wire::UaClassV1 as U;
    match ua_class {
        U::Missing | U::Unknown => &[ClientClass::Unknown],
        U::Browser => &[ClientClass::Browser],
        U::Automation | U::Headless => &[ClientClass::Automation],
        U::Crawler => &[
            ClientClass::VerifiedBot,
            ClientClass::DeclaredBot,
            ClientClass::SpoofedBot,
        ],
        U::VerifiedCrawler => &[ClientClass::VerifiedBot],
    }
}

/// Checks and compiles the declared-bot patterns.
fn compile_declared(errors: &mut Errors, declared: wire::DeclaredBotsV1) -> Vec<BotPattern> {
    let wire::DeclaredBotsV1 {
        source: _,
        as_of,
        patterns,
        not_translated: _,
    } = declared;
    if let Some(d) = as_of.as_deref()
        && julian_day(d).is_none()
    {
        errors.push("crawlers.declared.as_of", "must be a date YYYY-MM-DD");
    }
    let mut out = Vec::with_capacity(patterns.len());
    for (i, p) in patterns.into_iter().enumerate() {
        let path = format!("crawlers.declared.patterns[{i}]");
        let wire::BotPatternV1 {
            token,
            at_start,
            word_start,
            word_end,
            digit_after,
            not_preceded_by,
            not_followed_by,
            from: _,
        } = p;
        if token.is_empty() {
            errors.push(format!("{path}.token"), "must not be empty");
            continue;
        }
        if !token.is_ascii() {
            errors.push(format!("{path}.token"), "must be ASCII");
        }
        for (field, list) in [
            ("not_preceded_by", &not_preceded_by),
            ("not_followed_by", &not_followed_by),
        ] {
            for (j, t) in list.iter().enumerate() {
                if t.is_empty() || !t.is_ascii() {
                    errors.push(format!("{path}.{field}[{j}]"), "must be non-empty ASCII");
                }
            }
        }
        out.push(BotPattern {
            token,
            at_start,
            word_start,
            word_end,
            digit_after,
            not_preceded_by,
            not_followed_by,
        });
    }
    out
}

fn compile_thresholds(errors: &mut Errors, t: &wire::ThresholdsV1) -> [u8; 3] {
    let wire::ThresholdsV1 {
        medium,
        high,
        critical,
    } = *t;
    let out = [
        errors.points("thresholds.medium", medium),
        errors.points("thresholds.high", high),
        errors.points("thresholds.critical", critical),
    ];
    if !(0 < out[0] && out[0] < out[1] && out[1] < out[2]) {
        errors.push(
            "thresholds",
            "must satisfy 0 < medium < high < critical <= 100",
        );
    }
    out
}

fn compile_actions(a: &wire::ActionsV1) -> ([Decision; 4], [Decision; 4]) {
    let wire::ActionsV1 {
        low,
        medium,
        high,
        critical,
        sensitive_routes,
    } = a;
    let base = [
        decision(*low),
        decision(*medium),
        decision(*high),
        decision(*critical),
    ];
    let wire::SensitiveActionsV1 {
        low: sl,
        medium: sm,
        high: sh,
        critical: sc,
    } = sensitive_routes;
    let raised = [*sl, *sm, *sh, *sc];
    let mut sensitive = base;
    for (slot, raise) in sensitive.iter_mut().zip(raised) {
        if let Some(r) = raise {
            // Raise only: a sensitive route never lowers an action.
            *slot = (*slot).max(decision(r));
        }
    }
    (base, sensitive)
}

type ListLookup<'a> = dyn FnMut(&mut Errors, String, &str) -> Option<usize> + 'a;

fn compile_signals(
    errors: &mut Errors,
    s: wire::SignalsV1,
    list_index: &mut ListLookup<'_>,
) -> Signals {
    let wire::SignalsV1 {
        ua_missing,
        ua_automation,
        ua_headless,
        ua_outdated,
        ua_client_hints_mismatch,
        headers_missing_accept_language,
        headers_empty_accept_language,
        headers_missing_accept_encoding,
        headers_missing_sec_fetch,
        headers_missing_client_hints,
        headers_partial_sec_fetch,
        headers_missing_accept,
        headers_navigation_accept,
        ua_unknown,
        ip_lists,
        country,
        asn,
        tls_fingerprint,
        remote_score,
        clearance,
        ip_missing,
    } = s;
    let mut min_major = Vec::new();
    for (family, major) in &ua_outdated.min_major {
        match BrowserFamily::from_key(family) {
            Some(f) => min_major.push((f, *major)),
            None => errors.push(
                format!("signals.ua_outdated.min_major.{family}"),
                "unknown browser family (chrome, edge, firefox, safari, opera, samsung)",
            ),
        }
    }
    let mut ip_list_weights = Vec::new();
    for (name, weight) in &ip_lists {
        let path = format!("signals.ip_lists.{name}");
        let w = errors.points(path.clone(), *weight);
        if let Some(i) = list_index(errors, path, name) {
            ip_list_weights.push((i, w));
        }
    }
    let mut countries = HashMap::new();
    for (code, points) in &country.scores {
        let path = format!("signals.country.scores.{code}");
        let p = errors.points(path.clone(), *points);
        match code.as_bytes() {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => {
                countries.insert([*a, *b], p);
            }
            _ => errors.push(path, "must be ISO 3166-1 alpha-2, upper case"),
        }
    }
    let mut asns = HashMap::new();
    for (key, points) in &asn.scores {
        let path = format!("signals.asn.scores.{key}");
        let p = errors.points(path.clone(), *points);
        match key.parse::<u32>() {
            Ok(n) => {
                asns.insert(n, p);
            }
            Err(_) => errors.push(path, "key must be a decimal AS number"),
        }
    }
    Signals {
        ua_missing: errors.points("signals.ua_missing.weight", ua_missing.weight),
        ua_automation: errors.points("signals.ua_automation.weight", ua_automation.weight),
        ua_headless: errors.points("signals.ua_headless.weight", ua_headless.weight),
        ua_outdated: errors.points("signals.ua_outdated.weight", ua_outdated.weight),
        min_major,
        ua_client_hints_mismatch: errors.points(
            "signals.ua_client_hints_mismatch.weight",
            ua_client_hints_mismatch.weight,
        ),
        missing_accept_language: errors.points(
            "signals.headers_missing_accept_language.weight",
            headers_missing_accept_language.weight,
        ),
        empty_accept_language: errors.points(
            "signals.headers_empty_accept_language.weight",
            headers_empty_accept_language.weight,
        ),
        missing_accept_encoding: errors.points(
            "signals.headers_missing_accept_encoding.weight",
            headers_missing_accept_encoding.weight,
        ),
        missing_sec_fetch: errors.points(
            "signals.headers_missing_sec_fetch.weight",
            headers_missing_sec_fetch.weight,
        ),
        partial_sec_fetch: errors.points(
            "signals.headers_partial_sec_fetch.weight",
            headers_partial_sec_fetch.weight,
        ),
        missing_client_hints: errors.points(
            "signals.headers_missing_client_hints.weight",
            headers_missing_client_hints.weight,
        ),
        missing_accept: errors.points(
            "signals.headers_missing_accept.weight",
            headers_missing_accept.weight,
        ),
        navigation_accept: errors.points(
            "signals.headers_navigation_accept.weight",
            headers_navigation_accept.weight,
        ),
        ua_unknown: errors.points("signals.ua_unknown.weight", ua_unknown.weight),
        ip_lists: ip_list_weights,
        country: countries,
        asn: asns,
        tls_fingerprint: errors.points("signals.tls_fingerprint.weight", tls_fingerprint.weight),
        tls_fingerprints: tls_fingerprint
            .fingerprints
            .iter()
            .map(|f| f.as_bytes().to_vec())
            .collect(),
        remote_score_percent: errors.points("signals.remote_score.weight", remote_score.weight),
        clearance_invalid: errors
            .points("signals.clearance.invalid_weight", clearance.invalid_weight),
        ip_missing: errors.points("signals.ip_missing.weight", ip_missing.weight),
    }
}

fn compile_cache(errors: &mut Errors, c: &wire::CacheV1) -> CacheSettings {
    let wire::CacheV1 {
        lookup,
        always_lookup,
        timeout_ms,
        on_unavailable,
        fail_closed_action,
        breaker,
    } = c;
    let wire::BreakerV1 {
        failure_rate_percent,
        min_requests,
        window_seconds,
        open_seconds,
    } = breaker;
    if !(1..=10_000).contains(timeout_ms) {
        errors.push("cache.timeout_ms", "must be 1..=10000");
    }
    if *failure_rate_percent == 0 {
        errors.push("cache.breaker.failure_rate_percent", "must be 1..=100");
    }
    if *window_seconds == 0 {
        errors.push("cache.breaker.window_seconds", "must be at least 1");
    }
    let fail_closed_action = match on_unavailable {
        wire::OnUnavailableV1::FailOpen => None,
        wire::OnUnavailableV1::FailClosed => Some(decision(*fail_closed_action)),
    };
    CacheSettings {
        lookup: lookup.iter().copied().map(subject).collect(),
        always_lookup: always_lookup.iter().copied().map(subject).collect(),
        timeout_ms: *timeout_ms,
        fail_closed_action,
        breaker_failure_rate_percent: errors
            .points("cache.breaker.failure_rate_percent", *failure_rate_percent),
        breaker_min_requests: *min_requests,
        breaker_window_seconds: *window_seconds,
        breaker_open_seconds: *open_seconds,
    }
}

fn compile_challenge(errors: &mut Errors, c: &wire::ChallengeV1) -> ChallengeSettings {
    let wire::ChallengeV1 {
        difficulty_bits,
        difficulty_by_level,
        challenge_ttl_seconds,
        clearance_ttl_seconds,
        verify_path,
    } = c;
    let bits = |errors: &mut Errors, path: String, v: u32| match u8::try_from(v) {
        Ok(b) if (1..=32).contains(&b) => b,
        _ => {
            errors.push(path, "must be 1..=32 bits");
            16
        }
    };
    let base = bits(
        errors,
        "challenge.difficulty_bits".to_owned(),
        *difficulty_bits,
    );
    let mut per_level = [base; 4];
    for (lvl, v) in difficulty_by_level {
        let b = bits(errors, "challenge.difficulty_by_level".to_owned(), *v);
        if let Some(slot) = per_level.get_mut(level(*lvl) as usize) {
            *slot = b;
        }
    }
    if *challenge_ttl_seconds == 0 {
        errors.push("challenge.challenge_ttl_seconds", "must be at least 1");
    }
    if *clearance_ttl_seconds == 0 {
        errors.push("challenge.clearance_ttl_seconds", "must be at least 1");
    }
    if !verify_path.starts_with("/") || verify_path.contains(['?', '#']) {
        errors.push(
            "challenge.verify_path",
            "must be an absolute path without query",
        );
    }
    ChallengeSettings {
        difficulty_bits: per_level,
        challenge_ttl_seconds: *challenge_ttl_seconds,
        clearance_ttl_seconds: *clearance_ttl_seconds,
        verify_path: verify_path.clone(),
    }
}
