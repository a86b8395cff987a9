//! The two evaluation phases: [`Policy::assess`] (local signals, and whether the score cache is
//! worth asking) and [`Policy::decide`] (remote context, rules, the verdict).
//!
//! The score is a capped sum: `score = clamp(Σ risk points − Σ trust points, 0, 100)`. Each
//! signal's points are its bundle weight, so the reasons add up to the number (before the cap)
//! and a security engineer can tune a bundle with integers. Risk points are never negative, so
//! an added risk signal can never lower the score; only trust signals (a verified crawler)
//! subtract. A valid clearance is not a trust signal: it changes no score and no decision but
//! one, a challenge that asks no more work than the clearance was earned with becomes a pass.

use std::net::IpAddr;

use ipnet::Ipv6Net;

use crate::facts::{
    Clearance, Facts, ManualDecisions, RecordedIp, RemoteContext, SubjectContext, path_has_prefix,
};
use crate::policy::{
    ClientClass, Conditions, CrawlerCategory, Mode, NamedList, Policy, SubjectKind,
};
use crate::ua::{self, Browser};
use crate::verdict::{
    Client, DecidedBy, Decision, Level, Reason, ReasonCode, RemoteStatus, RuleMatch, Verdict,
};

/// Why the assessment asks the score cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupReason {
    /// The local score is in the bundle's lookup band.
    GrayZone,
    /// The route is sensitive.
    SensitiveRoute,
    /// A subject the bundle always looks up is present.
    Always,
}

/// A wanted score-cache lookup: which subjects, keyed as the cache stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Why.
    pub reason: LookupReason,
    /// The client IP key (IPv4 address, or the IPv6 prefix), if IP is looked up.
    pub ip: Option<String>,
    /// The user key, if present and looked up.
    pub user: Option<String>,
    /// The device key, if present and looked up.
    pub device: Option<String>,
}

/// The result of the local phase, handed to [`Policy::decide`].
#[derive(Debug, Clone)]
pub struct Assessment {
    risk: u32,
    trust: u32,
    reasons: Vec<Reason>,
    client: Client,
    sensitive: bool,
    route: Option<usize>,
    /// The difficulty of the valid clearance the request carries, if any.
    clearance_difficulty: Option<u8>,
    /// Rules whose conditions other than `min_level` matched, in rule order.
    rule_candidates: Vec<usize>,
    lookup: Option<Lookup>,
    /// The adapter's manual decisions for the request's subjects.
    manual: ManualDecisions,
}

impl Assessment {
    /// The local score, 0..=100.
    pub fn local_score(&self) -> u8 {
        capped(self.risk, self.trust)
    }

    /// The local contributions.
    pub fn reasons(&self) -> &[Reason] {
        &self.reasons
    }

    /// The score-cache lookup the engine wants, if any.
    pub fn lookup(&self) -> Option<&Lookup> {
        self.lookup.as_ref()
    }

    /// What the client is.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the request is on a sensitive route.
    pub fn sensitive_route(&self) -> bool {
        self.sensitive
    }
}

fn capped(risk: u32, trust: u32) -> u8 {
    u8::try_from(risk.saturating_sub(trust).min(100)).unwrap_or(100)
}

/// Accumulates points and reasons.
struct Tally {
    risk: u32,
    trust: u32,
    reasons: Vec<Reason>,
}

impl Tally {
    fn risk(&mut self, code: ReasonCode, points: u8) {
        if points > 0 {
            self.risk += u32::from(points);
            self.reasons.push(Reason {
                code,
                points: i16::from(points),
            });
        }
    }

    fn trust(&mut self, code: ReasonCode, points: u8) {
        if points > 0 {
            self.trust += u32::from(points);
            self.reasons.push(Reason {
                code,
                points: -i16::from(points),
            });
        }
    }
}

/// A tool token found beside a crawler token.
#[derive(Clone, Copy)]
enum Tool {
    Headless,
    Automation,
}

/// What the UA says the client is.
enum UaKind {
    Missing,
    /// A catalogue crawler; `tool` when the User-Agent also names a headless browser or an
    /// HTTP tool (then only a verified crawler stays a crawler).
    Crawler {
        index: usize,
        tool: Option<Tool>,
    },
    Headless,
    Automation,
    Declared,
    Browser(Browser),
    Unknown,
}

const JULIAN_DAY_OF_UNIX_EPOCH: i64 = 2_440_588;

impl Policy {
    /// Phase 1: scores the local signals of a request at `now` (unix seconds) and says
    /// whether richer context from the score cache is worth asking for.
    pub fn assess(&self, facts: &Facts, now: u64) -> Assessment {
        let s = &self.signals;
        let mut tally = Tally {
            risk: 0,
            trust: 0,
            reasons: Vec::with_capacity(8),
        };
        let ip = Address::of(facts);
        if !ip.present() {
            tally.risk(ReasonCode::Fixed("ip.missing"), s.ip_missing);
        }
        let ua = facts
            .header("user-agent")
            .map(<[u8]>::trim_ascii)
            .filter(|v| !v.is_empty());

        // User-Agent: what the client is.
        let client = match self.classify_ua(ua) {
            UaKind::Missing => {
                tally.risk(ReasonCode::Fixed("ua.missing"), s.ua_missing);
                Client::of(ClientClass::Unknown)
            }
            UaKind::Headless => {
                tally.risk(ReasonCode::Fixed("ua.headless"), s.ua_headless);
                Client::of(ClientClass::Automation)
            }
            UaKind::Automation => {
                tally.risk(ReasonCode::Fixed("ua.automation"), s.ua_automation);
                Client::of(ClientClass::Automation)
            }
            UaKind::Crawler { index, tool } => {
                // A crawler name beside a tool's ("curl/8 Slackbot") is a tool wearing a
                // crawler's name, unless the crawler proves itself from its ranges.
                let mut trial = Tally {
                    risk: 0,
                    trust: 0,
                    reasons: Vec::new(),
                };
                let client = self.score_crawler(&mut trial, index, ip, now);
                match tool {
                    Some(tool) if client.class != ClientClass::VerifiedBot => {
                        match tool {
                            Tool::Headless => {
                                tally.risk(ReasonCode::Fixed("ua.headless"), s.ua_headless);
                            }
                            Tool::Automation => {
                                tally.risk(ReasonCode::Fixed("ua.automation"), s.ua_automation);
                            }
                        }
                        Client::of(ClientClass::Automation)
                    }
                    _ => {
                        tally.risk += trial.risk;
                        tally.trust += trial.trust;
                        tally.reasons.extend(trial.reasons);
                        client
                    }
                }
            }
            UaKind::Declared => {
                self.score_category(&mut tally, CrawlerCategory::Other);
                Client {
                    class: ClientClass::DeclaredBot,
                    bot: None,
                    category: Some(CrawlerCategory::Other),
                }
            }
            UaKind::Browser(b) => {
                self.score_browser(&mut tally, &b, facts);
                Client::of(ClientClass::Browser)
            }
            UaKind::Unknown => {
                tally.risk(ReasonCode::Fixed("ua.unknown"), s.ua_unknown);
                Client::of(ClientClass::Unknown)
            }
        };
        if let Some(al) = facts.header("accept-language")
            && al.trim_ascii().is_empty()
        {
            tally.risk(
                ReasonCode::Fixed("headers.empty_accept_language"),
                s.empty_accept_language,
            );
        }

        // IP lists, geography, TLS.
        for &(list, points) in &s.ip_lists {
            if let Some(l) = self.lists.get(list)
                && points > 0
                && ip.in_list(l)
            {
                tally.risk(ReasonCode::Named(l.code.clone()), points);
            }
        }
        if let Some(points) = facts.country.and_then(|c| s.country.get(&c)) {
            tally.risk(ReasonCode::Fixed("geo.country"), *points);
        }
        if let Some(points) = facts.asn.and_then(|a| s.asn.get(&a)) {
            tally.risk(ReasonCode::Fixed("geo.asn"), *points);
        }
        if let Some(fp) = &facts.tls_fingerprint
            && s.tls_fingerprints.iter().any(|bad| bad == fp)
        {
            tally.risk(ReasonCode::Fixed("tls.fingerprint"), s.tls_fingerprint);
        }

        // Route.
        let route_index = self.routes.iter().position(|r| {
            path_has_prefix(&facts.route_path, &r.path_prefix)
                && method_in(&facts.method, &r.methods)
        });
        let route = route_index.and_then(|i| self.routes.get(i));
        let sensitive = route.is_some_and(|r| r.sensitive) || facts.route_sensitive;
        if let Some(r) = route {
            tally.risk(ReasonCode::Named(r.code.clone()), r.weight);
        }

        // Clearance: a failed one is a risk signal; a valid one only matters in `decide`.
        let clearance_difficulty = match facts.clearance {
            Clearance::Valid { difficulty } => Some(difficulty),
            Clearance::Invalid => {
                tally.risk(ReasonCode::Fixed("clearance.invalid"), s.clearance_invalid);
                None
            }
            Clearance::Absent | Clearance::Presented(_) => None,
        };

        let rule_facts = RuleFacts {
            facts,
            path: &facts.route_path,
            ip,
            client: &client,
        };
        let rule_candidates = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| self.conditions_hold(&r.when, &rule_facts))
            .map(|(i, _)| i)
            .collect();

        let local = capped(tally.risk, tally.trust);
        let lookup = self.lookup_for(facts, ip, local, sensitive);
        Assessment {
            risk: tally.risk,
            trust: tally.trust,
            reasons: tally.reasons,
            client,
            sensitive,
            route: route_index,
            clearance_difficulty,
            rule_candidates,
            lookup,
            manual: facts.manual_decisions,
        }
    }

    /// Phase 2: folds in the score cache's answer (`None` when it was not asked, is down,
    /// timed out or its breaker is open), applies manual decisions, rules and the level → action
    /// map, and returns the verdict.
    pub fn decide(
        &self,
        assessment: Assessment,
        remote: Option<&RemoteContext>,
        now: u64,
    ) -> Verdict {
        let Assessment {
            mut risk,
            trust,
            mut reasons,
            sensitive,
            route,
            clearance_difficulty,
            rule_candidates,
            lookup,
            client,
            manual: local_manual,
        } = assessment;

        let remote_status = match (remote, &lookup) {
            (Some(_), _) => RemoteStatus::Used,
            (None, None) => RemoteStatus::NotWanted,
            (None, Some(_)) if self.cache.fail_closed_action.is_some() => {
                RemoteStatus::UnavailableFailClosed
            }
            (None, Some(_)) => RemoteStatus::UnavailableFailOpen,
        };
        if let Some(ctx) = remote {
            for (name, subject) in [
                ("user", ctx.user.as_ref()),
                ("ip", ctx.ip.as_ref()),
                ("device", ctx.device.as_ref()),
            ] {
                let Some(subject) = subject else { continue };
                let points = self.remote_points(subject);
                if points > 0 {
                    risk += u32::from(points);
                    let code = match name {
                        "user" => "remote.user_score",
                        "device" => "remote.device_score",
                        _ => "remote.ip_score",
                    };
                    reasons.push(Reason {
                        code: ReasonCode::Fixed(code),
                        points: i16::from(points),
                    });
                }
            }
        }
        // One manual decision applies: the user's (a key from a trusted source) over the IP's,
        // the IP's over the device's (a device key is a cookie any client can set, so a
        // device's `allow` must never beat an IP's ban). For each subject the cache's answer,
        // when it has one, is fresher than the adapter's copy of the stream.
        let answered = |pick: fn(&RemoteContext) -> Option<&SubjectContext>| {
            remote.and_then(pick).and_then(|s| s.decision)
        };
        let manual = [
            ("user", answered(|c| c.user.as_ref()), local_manual.user),
            ("ip", answered(|c| c.ip.as_ref()), local_manual.ip),
            (
                "device",
                answered(|c| c.device.as_ref()),
                local_manual.device,
            ),
        ]
        .into_iter()
        .find_map(|(name, from_answer, local)| {
            from_answer
                .or(local)
                .filter(|d| now < d.expires_at)
                .map(|d| (name, manual_decision(d.action)))
        });

        let score = capped(risk, trust);
        let level = self.level_of(score);
        let by_level = if sensitive {
            &self.sensitive_actions
        } else {
            &self.actions
        };
        let mut decision = by_level
            .get(level as usize)
            .copied()
            .unwrap_or(Decision::Block);
        let mut decided_by = DecidedBy::Score;

        // Rules in order: a dry run is only reported; an `at_least` rule raises the decision
        // to its action (the floor later rules keep) and goes on; any other sets it and stops.
        let mut rules = Vec::new();
        let mut rule_decided = false;
        let mut floor = Decision::Pass;
        for rule in rule_candidates.iter().filter_map(|&i| self.rules.get(i)) {
            if rule.when.min_level.is_some_and(|min| level < min) {
                continue;
            }
            rules.push(RuleMatch {
                id: rule.id.clone(),
                action: rule.action,
                dry_run: rule.dry_run,
            });
            if rule.dry_run {
                continue;
            }
            if rule.at_least {
                floor = floor.max(rule.action);
                if rule.action > decision {
                    decision = rule.action;
                    decided_by = DecidedBy::Rule(rule.id.clone());
                }
                continue;
            }
            decision = rule.action.max(floor);
            decided_by = DecidedBy::Rule(rule.id.clone());
            rule_decided = true;
            break;
        }

        if let Some((subject, action)) = manual {
            decision = action;
            decided_by = DecidedBy::Manual(subject);
        } else if !rule_decided
            && remote_status == RemoteStatus::UnavailableFailClosed
            && let Some(floor) = self.cache.fail_closed_action
            && floor > decision
        {
            decision = floor;
            decided_by = DecidedBy::FailClosed;
        }
        // A valid clearance proves the client solved a challenge of its difficulty: it
        // satisfies a challenge that asks no more, and nothing else (never a block, a
        // throttle or a ban).
        if decision == Decision::Challenge
            && clearance_difficulty.is_some_and(|d| d >= self.challenge_difficulty(level))
        {
            decision = Decision::Pass;
            decided_by = DecidedBy::Clearance;
            reasons.push(Reason {
                code: ReasonCode::Fixed("clearance.valid"),
                points: 0,
            });
        }

        let (decision, shadow_decision) = match self.mode {
            Mode::Enforce => (decision, None),
            Mode::Shadow => (Decision::Pass, Some(decision)),
        };
        Verdict {
            decision,
            shadow_decision,
            score,
            level,
            reasons,
            rules,
            decided_by,
            remote: remote_status,
            client,
            revision: self.revision,
            route,
        }
    }

    /// Leading zero bits a challenge at `level` asks for.
    pub fn challenge_difficulty(&self, level: Level) -> u8 {
        self.challenge
            .difficulty_bits
            .get(level as usize)
            .copied()
            .unwrap_or(32)
    }

    /// Both phases without remote context (no score cache), for tools and tests.
    pub fn evaluate(&self, facts: &Facts, remote: Option<&RemoteContext>, now: u64) -> Verdict {
        self.decide(self.assess(facts, now), remote, now)
    }

    /// The key the score cache and rate buckets use for a client IP: the IPv4 address, or the
    /// IPv6 address truncated to the bundle's subject prefix (`2001:db8:1:2::/64`).
    pub fn ip_subject_key(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => dotted_quad(v4),
            IpAddr::V6(v6) => Ipv6Net::new(v6, self.ipv6_prefix)
                .map(|n| n.trunc().to_string())
                .unwrap_or_else(|_| v6.to_string()),
        }
    }

    fn classify_ua(&self, ua: Option<&[u8]>) -> UaKind {
        let Some(ua) = ua else { return UaKind::Missing };
        let scan = self.ua_scanner.scan(ua);
        let tool = if scan.headless {
            Some(Tool::Headless)
        } else if scan.automation {
            Some(Tool::Automation)
        } else {
            None
        };
        if let Some(index) = scan.crawler {
            UaKind::Crawler { index, tool }
        } else if scan.headless {
            UaKind::Headless
        } else if scan.automation {
            UaKind::Automation
        } else if scan.declared {
            UaKind::Declared
        } else {
            scan.browser(ua).map_or(UaKind::Unknown, UaKind::Browser)
        }
    }

    /// Whether the range list at `list` is recent enough to prove anything at `now`.
    pub(crate) fn ranges_fresh(&self, list: usize, now: u64) -> bool {
        let today = i64::try_from(now / 86_400).unwrap_or(i64::MAX / 2) + JULIAN_DAY_OF_UNIX_EPOCH;
        self.lists.get(list).is_some_and(|l| {
            l.as_of_day
                .is_some_and(|day| today - i64::from(day) <= i64::from(self.crawler_max_age_days))
        })
    }

    fn score_category(&self, tally: &mut Tally, category: CrawlerCategory) {
        let points = self
            .crawler_category_weights
            .get(&category)
            .copied()
            .unwrap_or(0);
        tally.risk(ReasonCode::Fixed(category_code(category)), points);
    }

    /// Scores a catalogue crawler and says what the client is: verified (its IP is in its
    /// family's fresh published ranges), spoofed (fresh ranges, IP outside them) or declared
    /// (no ranges, or ranges too old to prove anything either way: stale ranges never verify,
    /// and the category's weight and rules apply).
    fn score_crawler(&self, tally: &mut Tally, index: usize, ip: Address<'_>, now: u64) -> Client {
        let Some(crawler) = self.crawlers.get(index) else {
            return Client::of(ClientClass::Unknown);
        };
        let named = |class| Client {
            class,
            bot: Some(crawler.name.clone()),
            category: Some(crawler.category),
        };
        let Some(list) = crawler.ranges else {
            self.score_category(tally, crawler.category);
            return named(ClientClass::DeclaredBot);
        };
        if !self.ranges_fresh(list, now) {
            tally.reasons.push(Reason {
                code: ReasonCode::Fixed("crawler.ranges_stale"),
                points: 0,
            });
            self.score_category(tally, crawler.category);
            return named(ClientClass::DeclaredBot);
        }
        if self.lists.get(list).is_some_and(|l| ip.in_list(l)) {
            tally.trust(
                ReasonCode::Fixed("crawler.verified"),
                self.crawler_verified_trust,
            );
            named(ClientClass::VerifiedBot)
        } else {
            tally.risk(
                ReasonCode::Fixed("crawler.spoofed"),
                self.crawler_spoofed_weight,
            );
            named(ClientClass::SpoofedBot)
        }
    }

    fn score_browser(&self, tally: &mut Tally, b: &Browser, facts: &Facts) {
        let s = &self.signals;
        if let Some(&(_, min)) = s.min_major.iter().find(|(f, _)| *f == b.family)
            && b.major < min
        {
            tally.risk(ReasonCode::Fixed("ua.outdated_browser"), s.ua_outdated);
        }
        if ua::client_hints_contradict(
            b,
            facts.header("sec-ch-ua"),
            facts.header("sec-ch-ua-mobile"),
            facts.header("sec-ch-ua-platform"),
        ) {
            tally.risk(
                ReasonCode::Fixed("ua.client_hints_mismatch"),
                s.ua_client_hints_mismatch,
            );
        }
        if facts.header("accept-language").is_none() {
            tally.risk(
                ReasonCode::Fixed("headers.no_accept_language"),
                s.missing_accept_language,
            );
        }
        let blank = |name: &str| facts.header(name).is_none_or(|v| v.trim_ascii().is_empty());
        if blank("accept-encoding") {
            tally.risk(
                ReasonCode::Fixed("headers.no_accept_encoding"),
                s.missing_accept_encoding,
            );
        }
        let https = !facts.plain_http;
        let site = facts.header("sec-fetch-site");
        let mode = facts.header("sec-fetch-mode");
        let dest = facts.header("sec-fetch-dest");
        if b.sends_sec_fetch() && https && site.is_none() && mode.is_none() && dest.is_none() {
            tally.risk(
                ReasonCode::Fixed("headers.no_sec_fetch"),
                s.missing_sec_fetch,
            );
        }
        // Browsers send the three together with values from the Fetch standard, or none.
        let any = site.is_some() || mode.is_some() || dest.is_some();
        let valid = site.is_some_and(|v| {
            matches!(
                v.trim_ascii(),
                b"same-origin" | b"same-site" | b"cross-site" | b"none"
            )
        }) && mode.is_some_and(|v| {
            matches!(
                v.trim_ascii(),
                b"navigate" | b"cors" | b"no-cors" | b"same-origin" | b"websocket"
            )
        }) && dest.is_some_and(|v| {
            let v = v.trim_ascii();
            !v.is_empty() && v.iter().all(|b| b.is_ascii_lowercase() || *b == b'-')
        });
        if any && !valid {
            tally.risk(
                ReasonCode::Fixed("headers.partial_sec_fetch"),
                s.partial_sec_fetch,
            );
        }
        if b.sends_client_hints() && https && facts.header("sec-ch-ua").is_none() {
            tally.risk(
                ReasonCode::Fixed("headers.no_client_hints"),
                s.missing_client_hints,
            );
        }
        let accept = facts
            .header("accept")
            .filter(|v| !v.trim_ascii().is_empty());
        if accept.is_none() {
            tally.risk(ReasonCode::Fixed("headers.no_accept"), s.missing_accept);
        }
        let navigation = dest.is_some_and(|d| {
            let d = d.trim_ascii();
            d.eq_ignore_ascii_case(b"document") || d.eq_ignore_ascii_case(b"iframe")
        });
        if navigation && accept.is_some_and(|a| ua::find(a, b"text/html").is_none()) {
            tally.risk(
                ReasonCode::Fixed("headers.navigation_accept"),
                s.navigation_accept,
            );
        }
    }

    fn remote_points(&self, subject: &SubjectContext) -> u8 {
        let score = subject.score.min(100);
        u8::try_from(score * u32::from(self.signals.remote_score_percent) / 100).unwrap_or(100)
    }

    fn conditions_hold(&self, c: &Conditions, f: &RuleFacts<'_>) -> bool {
        c.path_prefix
            .as_deref()
            .is_none_or(|p| path_has_prefix(f.path, p))
            && (c.methods.is_empty() || method_in(&f.facts.method, &c.methods))
            && (c.countries.is_empty() || f.facts.country.is_some_and(|x| c.countries.contains(&x)))
            && (c.asns.is_empty() || f.facts.asn.is_some_and(|a| c.asns.contains(&a)))
            && c.ip_list
                .is_none_or(|i| self.lists.get(i).is_some_and(|l| f.ip.in_list(l)))
            && (c.client_class.is_empty() || c.client_class.contains(&f.client.class))
            && (c.crawler_category.is_empty()
                || f.client
                    .category
                    .is_some_and(|cat| c.crawler_category.contains(&cat)))
    }

    fn lookup_for(
        &self,
        facts: &Facts,
        ip: Address<'_>,
        local: u8,
        sensitive: bool,
    ) -> Option<Lookup> {
        let present = |k: &SubjectKind| match k {
            SubjectKind::Ip => ip.present(),
            SubjectKind::User => facts.user.is_some(),
            SubjectKind::Device => facts.device.is_some(),
        };
        let reason = if self.cache.always_lookup.iter().any(present) {
            LookupReason::Always
        } else if sensitive {
            LookupReason::SensitiveRoute
        } else if (self.lookup_band.0..=self.lookup_band.1).contains(&local) {
            LookupReason::GrayZone
        } else {
            return None;
        };
        let wants = |kind: SubjectKind| {
            self.cache.lookup.contains(&kind)
                || (reason == LookupReason::Always && self.cache.always_lookup.contains(&kind))
        };
        let ip_key = wants(SubjectKind::Ip)
            .then(|| ip.subject_key(self))
            .flatten();
        let user_key = facts.user.clone().filter(|_| wants(SubjectKind::User));
        let device_key = facts.device.clone().filter(|_| wants(SubjectKind::Device));
        (ip_key.is_some() || user_key.is_some() || device_key.is_some()).then_some(Lookup {
            reason,
            ip: ip_key,
            user: user_key,
            device: device_key,
        })
    }
}

struct RuleFacts<'a> {
    facts: &'a Facts,
    path: &'a str,
    ip: Address<'a>,
    client: &'a Client,
}

/// The client's address as the engine tests it: an IP (live traffic), the lists it was
/// recorded in (a replayed decision record), or none.
#[derive(Clone, Copy)]
enum Address<'a> {
    Missing,
    Ip(IpAddr),
    Recorded(&'a RecordedIp),
}

impl<'a> Address<'a> {
    fn of(facts: &'a Facts) -> Self {
        match (facts.client_ip, &facts.recorded_ip) {
            (Some(ip), _) => Address::Ip(ip.to_canonical()),
            (None, Some(recorded)) => Address::Recorded(recorded),
            (None, None) => Address::Missing,
        }
    }

    fn present(self) -> bool {
        !matches!(self, Address::Missing)
    }

    /// The subject key the score cache knows the address by.
    fn subject_key(self, policy: &Policy) -> Option<String> {
        match self {
            Address::Missing => None,
            Address::Ip(ip) => Some(policy.ip_subject_key(ip)),
            Address::Recorded(recorded) => Some(recorded.key.clone()),
        }
    }

    fn in_list(self, list: &NamedList) -> bool {
        match self {
            Address::Missing => false,
            Address::Ip(ip) => list.set.contains(ip),
            Address::Recorded(recorded) => recorded.lists.iter().any(|n| **n == *list.name),
        }
    }
}

fn method_in(method: &str, methods: &[String]) -> bool {
    methods.is_empty() || methods.iter().any(|m| m.eq_ignore_ascii_case(method))
}

fn manual_decision(action: crate::facts::ManualAction) -> Decision {
    use crate::facts::ManualAction;
    match action {
        ManualAction::Ban => Decision::Block,
        ManualAction::Challenge => Decision::Challenge,
        ManualAction::Throttle => Decision::Throttle,
        ManualAction::Allow => Decision::Pass,
    }
}

fn category_code(category: CrawlerCategory) -> &'static str {
    match category {
        CrawlerCategory::SearchEngine => "crawler.search_engine",
        CrawlerCategory::AiCrawler => "crawler.ai_crawler",
        CrawlerCategory::Monitor => "crawler.monitor",
        CrawlerCategory::Seo => "crawler.seo",
        CrawlerCategory::Preview => "crawler.preview",
        CrawlerCategory::Feed => "crawler.feed",
        CrawlerCategory::Archiver => "crawler.archiver",
        CrawlerCategory::Other => "crawler.other",
    }
}

/// Level is also usable as an index into per-level tables.
impl From<Level> for usize {
    fn from(level: Level) -> usize {
        level as usize
    }
}

/// `a.b.c.d`, as `Ipv4Addr`'s `Display` writes it, without the formatting machinery (this runs
/// for every rate-limited request).
fn dotted_quad(ip: std::net::Ipv4Addr) -> String {
    let mut out = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn dotted_quad_writes_what_display_writes(bits in any::<u32>()) {
            let ip = std::net::Ipv4Addr::from(bits);
            prop_assert_eq!(super::dotted_quad(ip), ip.to_string());
        }
    }
}
