//! Scoring of one subject (an IP, a user or a device) from its risk events: the score that
//! decays over time, the trend of its event rate, spikes, velocity and sequence patterns.
//!
//! Everything here is pure arithmetic on a [`SubjectState`]: no I/O and no clock. The caller
//! passes the time (`now_ms`, Unix milliseconds) and the bundle's compiled
//! [`ScoringSettings`], and stores the state's [`SubjectState::encode`]d bytes between calls.
//!
//! How a subject is scored:
//!
//! * Every event adds its points to the factor `event.<type>`; a factor's points halve every
//!   `half_life_seconds`. The score is the sum of the factors now, rounded, capped at 100.
//!   Each stored sum is kept referenced to the time of the last update, so applying events in
//!   any order, or split into batches arriving at the same time, gives the same score.
//! * Velocity rules ("at least N events of one type within W") and sequence rules ("types A,
//!   then B, then C within W") add their points to `velocity.<code>` and `sequence.<code>`
//!   when they match, at most once per window.
//! * The trend compares the event rate decayed with `trend_half_life_seconds` with the one
//!   decayed with `half_life_seconds`.
//! * A batch that raises the score by at least `spike_delta` is a spike: the subject carries
//!   the factor `spike` for `trend_half_life_seconds`.

use std::f64::consts::LN_2;

use signalbox_policy::scoring::{MAX_VELOCITY_COUNT, ScoringSettings};
use signalbox_wire::TrendV1;

/// The first byte of [`SubjectState::encode`]'s output.
const FORMAT_VERSION: u8 = 1;
/// The most distinct factors a subject keeps; the smallest goes first.
const MAX_FACTORS: usize = 16;
/// The most recent events a subject keeps for velocity and sequence rules.
const MAX_RECENT_EVENTS: usize = MAX_VELOCITY_COUNT as usize;
/// The highest score (and the highest points a single factor reports).
const MAX_SCORE: f64 = 100.0;
/// A factor whose decayed points fall below this is forgotten: it can no longer move the score.
const FORGOTTEN_POINTS: f64 = 0.005;
/// Below this many decayed events the trend has nothing to compare: steady, and the subject
/// may be idle.
const MIN_TREND_COUNT: f64 = 0.01;
/// The factor code of a recent spike.
const SPIKE_FACTOR: &str = "spike";
/// The most names (event types and rule codes) one subject's state can refer to.
const MAX_NAMES: usize = u16::MAX as usize;

/// One event as the scorer sees it (validated elsewhere).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    /// The event's type, e.g. `failed_login`; its factor is `event.<type>`.
    pub event_type: &'a str,
    /// The points the event adds to the score (before decay).
    pub points: u8,
    /// When the event happened, Unix milliseconds. A time after `now` counts as `now`.
    pub at_ms: u64,
}

/// What a subject looks like at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreView {
    /// `min(100, round(sum of decayed contributions))`.
    pub score: u8,
    /// Whether the subject's events are coming faster or slower than usual.
    pub trend: TrendV1,
    /// `(code, decayed points now)`, largest first (ties by code); each rounded and capped at
    /// 100, factors that round to 0 left out. Codes: `event.<type>`, `velocity.<code>`,
    /// `sequence.<code>`, and `spike` (points 0, last) while a spike is recent.
    pub factors: Vec<(String, u8)>,
    /// When the subject's latest event happened (clamped to the time it arrived), if any.
    pub last_event_ms: Option<u64>,
}

/// A subject's hot scoring state, small enough to read and rewrite on every batch.
///
/// Encoded ([`SubjectState::encode`]), a typical subject — 3 factors, 10 recent events of 3
/// types, within the last hour, a recent spike — takes 124 bytes, 42 of them the three type
/// names (measured by the test `typical_subject_encodes_small`, which asserts at most 128).
/// Recent events are kept only while some rule's window can still count them, so with no
/// velocity or sequence rule configured the same subject takes about 40 bytes less. The worst
/// case is bounded: at most 16 factors, 32 recent events, one firing per configured rule, and
/// each distinct event type or rule code stored once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubjectState {
    /// The time every decayed sum below is referenced to (the latest `now` applied).
    updated_ms: u64,
    /// Event types and rule codes, referred to by index from the lists below.
    names: Vec<String>,
    /// Decayed points per factor at `updated_ms`, largest first.
    factors: Vec<Factor>,
    /// Events counted 1 each, decayed with the trend's short half-life, at `updated_ms`.
    short_count: f32,
    /// Events counted 1 each, decayed with the score's half-life, at `updated_ms`.
    long_count: f32,
    /// The latest event's time.
    last_event_ms: Option<u64>,
    /// When the latest spike was recorded.
    spike_at_ms: Option<u64>,
    /// The newest events, oldest first (sorted by time: the encoding relies on it), for
    /// velocity and sequence rules.
    recent: Vec<RecentEvent>,
    /// When each velocity or sequence rule last fired, while that still holds it back.
    firings: Vec<RuleFiring>,
}

/// Which kind of factor, and so which code prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FactorKind {
    /// `event.<type>`.
    Event,
    /// `velocity.<code>`.
    Velocity,
    /// `sequence.<code>`.
    Sequence,
}

impl FactorKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Event => "event.",
            Self::Velocity => "velocity.",
            Self::Sequence => "sequence.",
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Self::Event => 0,
            Self::Velocity => 1,
            Self::Sequence => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Event),
            1 => Some(Self::Velocity),
            2 => Some(Self::Sequence),
            _ => None,
        }
    }
}

/// One factor's decayed points.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Factor {
    kind: FactorKind,
    /// Index into `names`: the event type or the rule code.
    name: u16,
    /// Decayed points at `updated_ms`.
    points: f32,
}

/// One recent event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecentEvent {
    /// Index into `names`.
    event_type: u16,
    at_ms: u64,
}

/// When a velocity or sequence rule last fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RuleFiring {
    /// [`FactorKind::Velocity`] or [`FactorKind::Sequence`].
    kind: FactorKind,
    /// Index into `names`: the rule's code.
    code: u16,
    at_ms: u64,
}

/// A recent event while a batch is applied: whether it came in this batch.
#[derive(Debug, Clone, Copy)]
struct WindowEvent {
    event: RecentEvent,
    in_batch: bool,
}

/// What remains of 1 after `age_ms` with a half-life of `half_life_seconds`.
fn decay(age_ms: u64, half_life_seconds: u32) -> f64 {
    let half_life_ms = f64::from(half_life_seconds.max(1)) * 1000.0;
    (-(age_ms as f64) / half_life_ms).exp2()
}

/// Rounds decayed points to a score (or factor) value, 0 to 100.
fn to_points(points: f64) -> u8 {
    // A float-to-int `as` saturates (and maps NaN to 0), and the value is clamped anyway.
    points.round().clamp(0.0, MAX_SCORE) as u8
}

fn seconds_to_ms(seconds: u32) -> u64 {
    u64::from(seconds).saturating_mul(1000)
}

/// How far back any rule looks, milliseconds; `None` when no rule is configured.
fn rule_horizon_ms(settings: &ScoringSettings) -> Option<u64> {
    let velocity = settings.velocity.iter().map(|rule| rule.within_seconds);
    let sequences = settings.sequences.iter().map(|rule| rule.within_seconds);
    velocity.chain(sequences).max().map(seconds_to_ms)
}

/// The window of the rule of this kind and code, milliseconds, if the settings still have it.
fn rule_window_ms(settings: &ScoringSettings, kind: FactorKind, code: &str) -> Option<u64> {
    let within_seconds = match kind {
        FactorKind::Event => None,
        FactorKind::Velocity => settings
            .velocity
            .iter()
            .find(|rule| rule.code == code)
            .map(|rule| rule.within_seconds),
        FactorKind::Sequence => settings
            .sequences
            .iter()
            .find(|rule| rule.code == code)
            .map(|rule| rule.within_seconds),
    };
    within_seconds.map(seconds_to_ms)
}

impl SubjectState {
    /// Decodes stored bytes (None when unreadable: the caller treats it as a fresh subject).
    ///
    /// Never panics; rejects an unknown version, truncated or trailing bytes, out-of-range
    /// references, more factors or recent events than a state keeps, and negative or
    /// non-finite sums.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader { rest: bytes };
        if reader.byte()? != FORMAT_VERSION {
            return None;
        }
        let updated_ms = reader.varint()?;
        let flags = reader.byte()?;
        if flags & !0b11 != 0 {
            return None;
        }
        let last_event_ms = if flags & 0b01 != 0 {
            Some(updated_ms.checked_sub(reader.varint()?)?)
        } else {
            None
        };
        let spike_at_ms = if flags & 0b10 != 0 {
            Some(updated_ms.checked_sub(reader.varint()?)?)
        } else {
            None
        };
        let short_count = reader.sum()?;
        let long_count = reader.sum()?;

        let name_count = reader.count(MAX_NAMES)?;
        let mut names: Vec<String> = Vec::new();
        for _ in 0..name_count {
            let length = reader.count(usize::MAX)?;
            let name = std::str::from_utf8(reader.take(length)?).ok()?;
            if names.iter().any(|known| known == name) {
                return None;
            }
            names.push(name.to_owned());
        }
        let name_index = |reader: &mut Reader<'_>| -> Option<u16> {
            let index = u16::try_from(reader.varint()?).ok()?;
            (usize::from(index) < names.len()).then_some(index)
        };

        let factor_count = reader.count(MAX_FACTORS)?;
        let mut factors: Vec<Factor> = Vec::with_capacity(factor_count);
        for _ in 0..factor_count {
            let kind = FactorKind::from_byte(reader.byte()?)?;
            let name = name_index(&mut reader)?;
            let points = reader.sum()?;
            if factors.iter().any(|f| f.kind == kind && f.name == name) {
                return None;
            }
            factors.push(Factor { kind, name, points });
        }

        let recent_count = reader.count(MAX_RECENT_EVENTS)?;
        let mut recent = Vec::with_capacity(recent_count);
        let mut previous_ms: Option<u64> = None;
        for _ in 0..recent_count {
            let event_type = name_index(&mut reader)?;
            let offset_ms = reader.varint()?;
            let at_ms = match previous_ms {
                None => updated_ms.checked_sub(offset_ms)?,
                Some(previous_ms) => previous_ms
                    .checked_add(offset_ms)
                    .filter(|at_ms| *at_ms <= updated_ms)?,
            };
            previous_ms = Some(at_ms);
            recent.push(RecentEvent { event_type, at_ms });
        }

        let firing_count = reader.count(usize::MAX)?;
        let mut firings: Vec<RuleFiring> = Vec::new();
        for _ in 0..firing_count {
            let kind = FactorKind::from_byte(reader.byte()?)?;
            if kind == FactorKind::Event {
                return None;
            }
            let code = name_index(&mut reader)?;
            let at_ms = updated_ms.checked_sub(reader.varint()?)?;
            if firings.iter().any(|f| f.kind == kind && f.code == code) {
                return None;
            }
            firings.push(RuleFiring { kind, code, at_ms });
        }

        if !reader.rest.is_empty() {
            return None;
        }
        Some(Self {
            updated_ms,
            names,
            factors,
            short_count,
            long_count,
            last_event_ms,
            spike_at_ms,
            recent,
            firings,
        })
    }

    /// The bytes to store; starts with a format version byte (1).
    ///
    /// Layout (integers are unsigned LEB128 varints unless said otherwise; times other than
    /// `updated_ms` are stored as milliseconds before it, except that each recent event after
    /// the first (oldest) is stored as milliseconds after the one before it):
    /// version `u8`, `updated_ms`, flags `u8` (bit 0: last event, bit 1: spike), \[last event],
    /// \[spike], short count `f32` LE, long count `f32` LE, names (count, then length and UTF-8
    /// bytes each), factors (count, then kind `u8`, name index, points `f32` LE each), recent
    /// events (count, then type index and time each), rule firings (count, then kind `u8`,
    /// code index and time each).
    pub fn encode(&self) -> Vec<u8> {
        let names_length: usize = self.names.iter().map(|name| name.len() + 1).sum();
        let mut out =
            Vec::with_capacity(32 + names_length + 6 * self.factors.len() + 5 * self.recent.len());
        out.push(FORMAT_VERSION);
        put_varint(&mut out, self.updated_ms);
        let flags =
            u8::from(self.last_event_ms.is_some()) | (u8::from(self.spike_at_ms.is_some()) << 1);
        out.push(flags);
        for at_ms in [self.last_event_ms, self.spike_at_ms].into_iter().flatten() {
            put_varint(&mut out, self.updated_ms.saturating_sub(at_ms));
        }
        out.extend_from_slice(&self.short_count.to_le_bytes());
        out.extend_from_slice(&self.long_count.to_le_bytes());

        put_length(&mut out, self.names.len());
        for name in &self.names {
            put_length(&mut out, name.len());
            out.extend_from_slice(name.as_bytes());
        }
        put_length(&mut out, self.factors.len());
        for factor in &self.factors {
            out.push(factor.kind.to_byte());
            put_varint(&mut out, u64::from(factor.name));
            out.extend_from_slice(&factor.points.to_le_bytes());
        }
        put_length(&mut out, self.recent.len());
        let mut previous_ms: Option<u64> = None;
        for event in &self.recent {
            put_varint(&mut out, u64::from(event.event_type));
            let offset_ms = match previous_ms {
                None => self.updated_ms.saturating_sub(event.at_ms),
                Some(previous_ms) => event.at_ms.saturating_sub(previous_ms),
            };
            put_varint(&mut out, offset_ms);
            previous_ms = Some(event.at_ms);
        }
        put_length(&mut out, self.firings.len());
        for firing in &self.firings {
            out.push(firing.kind.to_byte());
            put_varint(&mut out, u64::from(firing.code));
            put_varint(&mut out, self.updated_ms.saturating_sub(firing.at_ms));
        }
        out
    }

    /// Applies one batch of this subject's new events (any order) that arrived at `now_ms`.
    ///
    /// A `now_ms` before the state's latest update counts as that update's time (sums never
    /// grow backwards in time). Events dated after `now_ms` count as `now_ms`.
    ///
    /// Velocity and sequence rules are checked after the whole batch is added. A sequence
    /// fires only when its last step is an event of this batch, so earlier steps arriving in a
    /// later batch than the last one do not complete it.
    pub fn apply(&mut self, events: &[Event<'_>], now_ms: u64, settings: &ScoringSettings) {
        let now_ms = now_ms.max(self.updated_ms);
        let score_before = to_points(self.total_points_at(now_ms, settings));
        self.decay_to(now_ms, settings);

        // A fixed order within the batch, so the result does not depend on the caller's.
        let mut batch: Vec<(u64, &str, u8)> = events
            .iter()
            .map(|event| (event.at_ms.min(now_ms), event.event_type, event.points))
            .collect();
        batch.sort_unstable();

        let mut window: Vec<WindowEvent> = self
            .recent
            .iter()
            .map(|&event| WindowEvent {
                event,
                in_batch: false,
            })
            .collect();
        let mut short_count = f64::from(self.short_count);
        let mut long_count = f64::from(self.long_count);
        for (at_ms, event_type, points) in batch {
            let Some(type_index) = self.intern(event_type) else {
                continue;
            };
            let age_ms = now_ms.saturating_sub(at_ms);
            let long_decay = decay(age_ms, settings.half_life_seconds);
            if points > 0 {
                self.add_points(
                    FactorKind::Event,
                    type_index,
                    f64::from(points) * long_decay,
                );
            }
            short_count += decay(age_ms, settings.trend_half_life_seconds);
            long_count += long_decay;
            self.last_event_ms = Some(self.last_event_ms.map_or(at_ms, |last| last.max(at_ms)));
            window.push(WindowEvent {
                event: RecentEvent {
                    event_type: type_index,
                    at_ms,
                },
                in_batch: true,
            });
        }
        self.short_count = short_count as f32;
        self.long_count = long_count as f32;

        // Oldest first; stable, so on a tie a stored event stays before a new one.
        window.sort_by(|a, b| {
            a.event.at_ms.cmp(&b.event.at_ms).then_with(|| {
                self.name(a.event.event_type)
                    .cmp(self.name(b.event.event_type))
            })
        });
        let excess = window.len().saturating_sub(MAX_RECENT_EVENTS);
        window.drain(..excess);

        self.fire_velocity_rules(&window, now_ms, settings);
        self.fire_sequence_rules(&window, now_ms, settings);
        self.forget(window, now_ms, settings);

        let score_after = to_points(self.total_points_at(now_ms, settings));
        if settings.spike_delta > 0
            && score_after.saturating_sub(score_before) >= settings.spike_delta
        {
            self.spike_at_ms = Some(now_ms);
        }
    }

    /// What the subject looks like at `now_ms` (a time before the latest update counts as it).
    pub fn view(&self, now_ms: u64, settings: &ScoringSettings) -> ScoreView {
        let now_ms = now_ms.max(self.updated_ms);
        let points_decay = decay(now_ms - self.updated_ms, settings.half_life_seconds);
        let mut ranked: Vec<(f64, String)> = self
            .factors
            .iter()
            .map(|factor| {
                let code = format!("{}{}", factor.kind.prefix(), self.name(factor.name));
                (f64::from(factor.points) * points_decay, code)
            })
            .collect();
        let total: f64 = ranked.iter().map(|(points, _)| points).sum();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut factors: Vec<(String, u8)> = ranked
            .into_iter()
            .map(|(points, code)| (code, to_points(points)))
            .filter(|(_, points)| *points > 0)
            .collect();
        if self.spike_is_recent(now_ms, settings) {
            factors.push((SPIKE_FACTOR.to_owned(), 0));
        }
        ScoreView {
            score: to_points(total),
            trend: self.trend_at(now_ms, settings),
            factors,
            last_event_ms: self.last_event_ms,
        }
    }

    /// True when nothing is left worth keeping (score 0 after decay, no recent events): the store may delete it.
    ///
    /// Precisely: the score rounds to 0, fewer than [`MIN_TREND_COUNT`] decayed events remain
    /// for the trend, no spike is recent, no recent event is still inside a rule's window and
    /// no rule firing still holds its rule back.
    pub fn is_idle(&self, now_ms: u64, settings: &ScoringSettings) -> bool {
        let now_ms = now_ms.max(self.updated_ms);
        let age_ms = now_ms - self.updated_ms;
        let long_count = f64::from(self.long_count) * decay(age_ms, settings.half_life_seconds);
        let horizon_ms = rule_horizon_ms(settings);
        let recent_event_matters = self.recent.iter().any(|event| {
            horizon_ms.is_some_and(|horizon| now_ms.saturating_sub(event.at_ms) <= horizon)
        });
        let firing_holds = self.firings.iter().any(|firing| {
            rule_window_ms(settings, firing.kind, self.name(firing.code))
                .is_some_and(|window| now_ms.saturating_sub(firing.at_ms) < window)
        });
        to_points(self.total_points_at(now_ms, settings)) == 0
            && long_count < MIN_TREND_COUNT
            && !self.spike_is_recent(now_ms, settings)
            && !recent_event_matters
            && !firing_holds
    }

    /// The sum of every factor's decayed points at `now_ms` (not before `updated_ms`).
    fn total_points_at(&self, now_ms: u64, settings: &ScoringSettings) -> f64 {
        let points_decay = decay(
            now_ms.saturating_sub(self.updated_ms),
            settings.half_life_seconds,
        );
        let stored: f64 = self.factors.iter().map(|f| f64::from(f.points)).sum();
        stored * points_decay
    }

    fn spike_is_recent(&self, now_ms: u64, settings: &ScoringSettings) -> bool {
        self.spike_at_ms.is_some_and(|spike_at_ms| {
            now_ms.saturating_sub(spike_at_ms) < seconds_to_ms(settings.trend_half_life_seconds)
        })
    }

    fn trend_at(&self, now_ms: u64, settings: &ScoringSettings) -> TrendV1 {
        let age_ms = now_ms.saturating_sub(self.updated_ms);
        let short_half_life = f64::from(settings.trend_half_life_seconds.max(1));
        let long_half_life = f64::from(settings.half_life_seconds.max(1));
        let short_count =
            f64::from(self.short_count) * decay(age_ms, settings.trend_half_life_seconds);
        let long_count = f64::from(self.long_count) * decay(age_ms, settings.half_life_seconds);
        if short_count < MIN_TREND_COUNT && long_count < MIN_TREND_COUNT {
            return TrendV1::Steady;
        }
        // Events per second: a steady rate r leaves a decayed count of r · half_life / ln 2.
        let short_rate = short_count * LN_2 / short_half_life;
        let long_rate = long_count * LN_2 / long_half_life;
        if short_rate >= long_rate * f64::from(settings.rising_ratio_percent) / 100.0 {
            TrendV1::Rising
        } else if short_rate <= long_rate * f64::from(settings.falling_ratio_percent) / 100.0 {
            TrendV1::Falling
        } else {
            TrendV1::Steady
        }
    }

    /// Decays every stored sum to `now_ms` (not before `updated_ms`) and references them there.
    fn decay_to(&mut self, now_ms: u64, settings: &ScoringSettings) {
        let age_ms = now_ms.saturating_sub(self.updated_ms);
        let long_decay = decay(age_ms, settings.half_life_seconds);
        for factor in &mut self.factors {
            factor.points = (f64::from(factor.points) * long_decay) as f32;
        }
        self.long_count = (f64::from(self.long_count) * long_decay) as f32;
        self.short_count =
            (f64::from(self.short_count) * decay(age_ms, settings.trend_half_life_seconds)) as f32;
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    fn name(&self, index: u16) -> &str {
        self.names
            .get(usize::from(index))
            .map_or("", String::as_str)
    }

    fn find_name(&self, name: &str) -> Option<u16> {
        let index = self.names.iter().position(|known| known == name)?;
        u16::try_from(index).ok()
    }

    /// The index of `name`, added when new; `None` only when the table is full.
    fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(index) = self.find_name(name) {
            return Some(index);
        }
        if self.names.len() >= MAX_NAMES {
            return None;
        }
        let index = u16::try_from(self.names.len()).ok()?;
        self.names.push(name.to_owned());
        Some(index)
    }

    fn add_points(&mut self, kind: FactorKind, name: u16, points: f64) {
        match self
            .factors
            .iter_mut()
            .find(|factor| factor.kind == kind && factor.name == name)
        {
            Some(factor) => factor.points = (f64::from(factor.points) + points) as f32,
            None => self.factors.push(Factor {
                kind,
                name,
                points: points as f32,
            }),
        }
    }

    fn fired_within(&self, kind: FactorKind, code: &str, now_ms: u64, window_ms: u64) -> bool {
        let Some(code) = self.find_name(code) else {
            return false;
        };
        self.firings.iter().any(|firing| {
            firing.kind == kind
                && firing.code == code
                && now_ms.saturating_sub(firing.at_ms) < window_ms
        })
    }

    /// Adds a rule's points to its factor and remembers that it fired at `now_ms`.
    fn fire(&mut self, kind: FactorKind, code: &str, points: u8, now_ms: u64) {
        let Some(code) = self.intern(code) else {
            return;
        };
        if points > 0 {
            self.add_points(kind, code, f64::from(points));
        }
        match self
            .firings
            .iter_mut()
            .find(|firing| firing.kind == kind && firing.code == code)
        {
            Some(firing) => firing.at_ms = now_ms,
            None => self.firings.push(RuleFiring {
                kind,
                code,
                at_ms: now_ms,
            }),
        }
    }

    fn fire_velocity_rules(
        &mut self,
        window: &[WindowEvent],
        now_ms: u64,
        settings: &ScoringSettings,
    ) {
        for rule in &settings.velocity {
            let within_ms = seconds_to_ms(rule.within_seconds);
            if self.fired_within(FactorKind::Velocity, &rule.code, now_ms, within_ms) {
                continue;
            }
            let Some(event_type) = self.find_name(&rule.event_type) else {
                continue;
            };
            let count = window
                .iter()
                .filter(|w| {
                    w.event.event_type == event_type
                        && now_ms.saturating_sub(w.event.at_ms) <= within_ms
                })
                .count();
            let at_least = usize::try_from(rule.at_least.max(1)).unwrap_or(usize::MAX);
            if count >= at_least {
                self.fire(FactorKind::Velocity, &rule.code, rule.points, now_ms);
            }
        }
    }

    fn fire_sequence_rules(
        &mut self,
        window: &[WindowEvent],
        now_ms: u64,
        settings: &ScoringSettings,
    ) {
        for rule in &settings.sequences {
            let within_ms = seconds_to_ms(rule.within_seconds);
            if rule.event_types.is_empty()
                || self.fired_within(FactorKind::Sequence, &rule.code, now_ms, within_ms)
            {
                continue;
            }
            let steps: Option<Vec<u16>> = rule
                .event_types
                .iter()
                .map(|event_type| self.find_name(event_type))
                .collect();
            let Some(steps) = steps else {
                continue;
            };
            if sequence_completed_in_batch(window, &steps, within_ms) {
                self.fire(FactorKind::Sequence, &rule.code, rule.points, now_ms);
            }
        }
    }

    /// Keeps only what later batches or views can use: recent events inside the widest rule
    /// window, firings that still hold their rule back, the 16 largest factors that still
    /// count, and the names those refer to.
    fn forget(&mut self, window: Vec<WindowEvent>, now_ms: u64, settings: &ScoringSettings) {
        let horizon_ms = rule_horizon_ms(settings);
        self.recent = window
            .into_iter()
            .map(|w| w.event)
            .filter(|event| {
                horizon_ms.is_some_and(|horizon| now_ms.saturating_sub(event.at_ms) <= horizon)
            })
            .collect();

        let names = &self.names;
        self.firings.retain(|firing| {
            let code = names
                .get(usize::from(firing.code))
                .map_or("", String::as_str);
            rule_window_ms(settings, firing.kind, code)
                .is_some_and(|window_ms| now_ms.saturating_sub(firing.at_ms) < window_ms)
        });

        self.factors
            .retain(|factor| f64::from(factor.points) >= FORGOTTEN_POINTS);
        self.factors.sort_by(|a, b| {
            b.points
                .total_cmp(&a.points)
                .then_with(|| a.kind.cmp(&b.kind))
                .then_with(|| {
                    let a_name = names.get(usize::from(a.name));
                    let b_name = names.get(usize::from(b.name));
                    a_name.cmp(&b_name)
                })
        });
        self.factors.truncate(MAX_FACTORS);

        self.compact_names();
    }

    /// Drops names nothing refers to any more and renumbers the references.
    fn compact_names(&mut self) {
        let old_names = std::mem::take(&mut self.names);
        let mut new_names: Vec<String> = Vec::new();
        let mut relabel = |index: &mut u16| -> bool {
            let Some(name) = old_names.get(usize::from(*index)) else {
                return false;
            };
            let position = match new_names.iter().position(|known| known == name) {
                Some(position) => position,
                None => {
                    new_names.push(name.clone());
                    new_names.len() - 1
                }
            };
            match u16::try_from(position) {
                Ok(new_index) => {
                    *index = new_index;
                    true
                }
                Err(_) => false,
            }
        };
        self.factors.retain_mut(|factor| relabel(&mut factor.name));
        self.recent
            .retain_mut(|event| relabel(&mut event.event_type));
        self.firings.retain_mut(|firing| relabel(&mut firing.code));
        self.names = new_names;
    }
}

/// Whether `window` (oldest first) holds the types `steps` in order, not necessarily adjacent,
/// with the last one an event of this batch and at most `within_ms` from the first to the last.
fn sequence_completed_in_batch(window: &[WindowEvent], steps: &[u16], within_ms: u64) -> bool {
    let Some(last_step) = steps.len().checked_sub(1) else {
        return false;
    };
    // For each step, the latest start time of a match of the steps up to it: the latest start
    // gives the shortest span for any later end.
    let mut latest_start: Vec<Option<u64>> = vec![None; steps.len()];
    for w in window {
        // Backwards, so one event never fills two consecutive steps.
        for (step, &event_type) in steps.iter().enumerate().rev() {
            if w.event.event_type != event_type {
                continue;
            }
            let start = match step.checked_sub(1) {
                None => Some(w.event.at_ms),
                Some(previous) => latest_start.get(previous).copied().flatten(),
            };
            let Some(start) = start else {
                continue;
            };
            if step == last_step {
                if w.in_batch && w.event.at_ms.saturating_sub(start) <= within_ms {
                    return true;
                }
            } else if let Some(slot) = latest_start.get_mut(step) {
                *slot = Some(slot.map_or(start, |known| known.max(start)));
            }
        }
    }
    false
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_length(out: &mut Vec<u8>, length: usize) {
    put_varint(out, u64::try_from(length).unwrap_or(u64::MAX));
}

/// Reads [`SubjectState::encode`]'s output; every method returns `None` past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(length)?;
        self.rest = rest;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return None;
            }
            value |= bits.checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }

    /// A length or count, at most `max`.
    fn count(&mut self, max: usize) -> Option<usize> {
        let count = usize::try_from(self.varint()?).ok()?;
        (count <= max).then_some(count)
    }

    /// A decayed sum: `f32` LE, finite and not negative.
    fn sum(&mut self) -> Option<f32> {
        let bytes: [u8; 4] = self.take(4)?.try_into().ok()?;
        let value = f32::from_le_bytes(bytes);
        (value.is_finite() && value >= 0.0).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;
    use signalbox_policy::scoring::{SequenceRule, VelocityRule};

    const HOUR_MS: u64 = 3_600_000;
    const DAY_MS: u64 = 24 * HOUR_MS;
    /// A realistic "now": 2026, Unix milliseconds.
    const T0: u64 = 1_780_000_000_000;
    const TYPES: [&str; 5] = [
        "failed_login",
        "password_reset",
        "email_change",
        "mfa_disabled",
        "chargeback",
    ];

    fn event(event_type: &str, points: u8, at_ms: u64) -> Event<'_> {
        Event {
            event_type,
            points,
            at_ms,
        }
    }

    /// The bundle defaults: half-life 1 day, trend half-life 1 hour, rising at 200 %, falling
    /// at 50 %, spike at 30 points.
    fn settings() -> ScoringSettings {
        ScoringSettings::default()
    }

    fn velocity_rule(
        code: &str,
        event_type: &str,
        at_least: u32,
        within_seconds: u32,
    ) -> VelocityRule {
        VelocityRule {
            code: code.to_owned(),
            event_type: event_type.to_owned(),
            at_least,
            within_seconds,
            points: 20,
        }
    }

    fn sequence_rule(code: &str, event_types: &[&str], within_seconds: u32) -> SequenceRule {
        SequenceRule {
            code: code.to_owned(),
            event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
            within_seconds,
            points: 40,
        }
    }

    fn settings_with_rules() -> ScoringSettings {
        ScoringSettings {
            velocity: vec![velocity_rule("login_burst", "failed_login", 5, 600)],
            sequences: vec![sequence_rule(
                "takeover",
                &["password_reset", "email_change", "mfa_disabled"],
                3_600,
            )],
            ..settings()
        }
    }

    fn factor_points(view: &ScoreView, code: &str) -> Option<u8> {
        view.factors
            .iter()
            .find(|(known, _)| known == code)
            .map(|(_, points)| *points)
    }

    fn arbitrary_events() -> impl Strategy<Value = Vec<(usize, u8, u64)>> {
        prop::collection::vec((0..TYPES.len(), 0..=60u8, 0..2 * DAY_MS), 0..24)
    }

    fn to_events(raw: &[(usize, u8, u64)], base_ms: u64) -> Vec<Event<'static>> {
        raw.iter()
            .map(|&(type_index, points, offset)| event(TYPES[type_index], points, base_ms + offset))
            .collect()
    }

    #[test]
    fn fresh_subject_is_empty_steady_and_idle() {
        let state = SubjectState::default();
        let view = state.view(T0, &settings());
        assert_eq!(view.score, 0);
        assert_eq!(view.trend, TrendV1::Steady);
        assert!(view.factors.is_empty());
        assert_eq!(view.last_event_ms, None);
        assert!(state.is_idle(T0, &settings()));
    }

    #[test]
    fn one_event_halves_after_one_half_life() {
        let settings = settings();
        let mut state = SubjectState::default();
        state.apply(&[event("chargeback", 60, T0)], T0, &settings);
        let now = state.view(T0, &settings);
        assert_eq!(now.score, 60);
        // 60 points at once is also a spike (spike_delta 30).
        assert_eq!(
            now.factors,
            vec![("event.chargeback".to_owned(), 60), ("spike".to_owned(), 0)]
        );
        assert_eq!(now.last_event_ms, Some(T0));
        let later = state.view(T0 + DAY_MS, &settings);
        assert!(later.score.abs_diff(30) <= 1, "{later:?}");
        let two_later = state.view(T0 + 2 * DAY_MS, &settings);
        assert!(two_later.score.abs_diff(15) <= 1, "{two_later:?}");
        assert!(!state.is_idle(T0 + DAY_MS, &settings));
        assert!(state.is_idle(T0 + 30 * DAY_MS, &settings));
    }

    #[test]
    fn old_event_counts_decayed_and_future_event_counts_as_now() {
        let settings = settings();
        let mut old = SubjectState::default();
        old.apply(&[event("chargeback", 60, T0 - DAY_MS)], T0, &settings);
        assert!(old.view(T0, &settings).score.abs_diff(30) <= 1);

        let mut future = SubjectState::default();
        future.apply(&[event("chargeback", 60, T0 + DAY_MS)], T0, &settings);
        let view = future.view(T0, &settings);
        assert_eq!(view.score, 60);
        assert_eq!(view.last_event_ms, Some(T0));
    }

    #[test]
    fn score_is_capped_at_100() {
        let settings = settings();
        let mut state = SubjectState::default();
        let events: Vec<Event<'_>> = (0..10).map(|_| event("chargeback", 60, T0)).collect();
        state.apply(&events, T0, &settings);
        let view = state.view(T0, &settings);
        assert_eq!(view.score, 100);
        assert_eq!(view.factors[0], ("event.chargeback".to_owned(), 100));
    }

    #[test]
    fn factors_are_largest_first_and_capped_at_16() {
        let settings = settings();
        let names: Vec<String> = (0..20).map(|i| format!("type_{i:02}")).collect();
        let events: Vec<Event<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, name)| event(name, u8::try_from(i + 1).unwrap(), T0))
            .collect();
        let mut state = SubjectState::default();
        state.apply(&events, T0, &settings);
        let view = state.view(T0, &settings);
        // 16 event factors, then the spike.
        assert_eq!(view.factors.len(), 17);
        assert_eq!(view.factors[16], ("spike".to_owned(), 0));
        assert_eq!(view.factors[0], ("event.type_19".to_owned(), 20));
        assert_eq!(view.factors[15], ("event.type_04".to_owned(), 5));
        // The dropped ones are gone from the stored state too.
        let decoded = SubjectState::decode(&state.encode()).unwrap();
        assert_eq!(decoded.names.len(), 16);
    }

    #[test]
    fn earlier_now_does_not_undo_decay() {
        let settings = settings();
        let mut state = SubjectState::default();
        state.apply(&[event("chargeback", 60, T0)], T0, &settings);
        state.apply(&[], T0 + DAY_MS, &settings);
        // A late caller with an older clock: the state stays referenced at the later time.
        state.apply(&[event("chargeback", 0, T0)], T0, &settings);
        assert!(state.view(T0, &settings).score.abs_diff(30) <= 1);
    }

    #[test]
    fn trend_rising_on_burst_after_quiet_history() {
        let settings = settings();
        let mut state = SubjectState::default();
        // One event a day for 20 days.
        for day in 0..20 {
            let at = T0 + day * DAY_MS;
            state.apply(&[event("failed_login", 1, at)], at, &settings);
        }
        let now = T0 + 20 * DAY_MS;
        assert_ne!(state.view(now, &settings).trend, TrendV1::Rising);
        let burst: Vec<Event<'_>> = (0..10)
            .map(|i| event("failed_login", 1, now - i * 60_000))
            .collect();
        state.apply(&burst, now, &settings);
        assert_eq!(state.view(now, &settings).trend, TrendV1::Rising);
    }

    #[test]
    fn trend_steady_then_falling_after_silence() {
        let settings = settings();
        let mut state = SubjectState::default();
        // One event every 10 minutes for 3 days.
        let step = 10 * 60_000;
        let mut now = T0;
        while now < T0 + 3 * DAY_MS {
            state.apply(&[event("failed_login", 1, now)], now, &settings);
            now += step;
        }
        assert_eq!(state.view(now, &settings).trend, TrendV1::Steady);
        // Silence for four short half-lives.
        assert_eq!(
            state.view(now + 4 * HOUR_MS, &settings).trend,
            TrendV1::Falling
        );
        // Long after, too little is left to compare.
        assert_eq!(
            state.view(now + 60 * DAY_MS, &settings).trend,
            TrendV1::Steady
        );
    }

    #[test]
    fn velocity_fires_once_at_the_nth_event_within_the_window() {
        let settings = settings_with_rules(); // login_burst: 5 failed_login within 600 s.
        let mut state = SubjectState::default();
        for i in 0..4 {
            let at = T0 + i * 10_000;
            state.apply(&[event("failed_login", 1, at)], at, &settings);
            assert_eq!(
                factor_points(&state.view(at, &settings), "velocity.login_burst"),
                None
            );
        }
        let fifth = T0 + 40_000;
        state.apply(&[event("failed_login", 1, fifth)], fifth, &settings);
        let view = state.view(fifth, &settings);
        assert_eq!(factor_points(&view, "velocity.login_burst"), Some(20));
        // More events within the window do not fire it again.
        for i in 5..15 {
            let at = T0 + i * 10_000;
            state.apply(&[event("failed_login", 1, at)], at, &settings);
        }
        let view = state.view(T0 + 150_000, &settings);
        assert_eq!(factor_points(&view, "velocity.login_burst"), Some(20));
        // A new burst after the window fires it again.
        let later = T0 + HOUR_MS;
        let burst: Vec<Event<'_>> = (0..5)
            .map(|i| event("failed_login", 1, later - i))
            .collect();
        state.apply(&burst, later, &settings);
        let points = factor_points(&state.view(later, &settings), "velocity.login_burst").unwrap();
        assert!(points >= 39, "{points}");
    }

    #[test]
    fn velocity_needs_the_events_inside_the_window() {
        let settings = settings_with_rules();
        let mut state = SubjectState::default();
        // Five events, but 4 minutes apart: never five within 10 minutes.
        for i in 0..5 {
            let at = T0 + i * 240_000;
            state.apply(&[event("failed_login", 1, at)], at, &settings);
        }
        let view = state.view(T0 + 960_000, &settings);
        assert_eq!(factor_points(&view, "velocity.login_burst"), None);
    }

    #[test]
    fn sequence_in_order_fires() {
        let settings = settings_with_rules();
        let mut state = SubjectState::default();
        let steps = [
            ("password_reset", 0),
            ("email_change", 600_000),
            ("mfa_disabled", 1_200_000),
        ];
        for (event_type, offset) in steps {
            state.apply(
                &[event(event_type, 10, T0 + offset)],
                T0 + offset,
                &settings,
            );
        }
        let view = state.view(T0 + 1_200_000, &settings);
        assert_eq!(factor_points(&view, "sequence.takeover"), Some(40));
        // Not adjacent is fine; a repeat of the last step within the window does not fire again.
        state.apply(
            &[event("mfa_disabled", 0, T0 + 1_300_000)],
            T0 + 1_300_000,
            &settings,
        );
        let view = state.view(T0 + 1_300_000, &settings);
        assert_eq!(factor_points(&view, "sequence.takeover"), Some(40));
    }

    #[test]
    fn sequence_with_other_events_between_fires_in_one_batch() {
        let settings = settings_with_rules();
        let mut state = SubjectState::default();
        let events = [
            event("mfa_disabled", 0, T0 + 4),
            event("password_reset", 0, T0),
            event("failed_login", 0, T0 + 1),
            event("email_change", 0, T0 + 2),
            event("chargeback", 0, T0 + 3),
        ];
        state.apply(&events, T0 + 5, &settings);
        assert_eq!(
            factor_points(&state.view(T0 + 5, &settings), "sequence.takeover"),
            Some(40)
        );
    }

    #[test]
    fn sequence_in_reverse_order_does_not_fire() {
        let settings = settings_with_rules();
        let mut state = SubjectState::default();
        let steps = [
            ("mfa_disabled", 0),
            ("email_change", 600_000),
            ("password_reset", 1_200_000),
        ];
        for (event_type, offset) in steps {
            state.apply(
                &[event(event_type, 10, T0 + offset)],
                T0 + offset,
                &settings,
            );
        }
        let view = state.view(T0 + 1_200_000, &settings);
        assert_eq!(factor_points(&view, "sequence.takeover"), None);
    }

    #[test]
    fn sequence_too_slow_does_not_fire() {
        let settings = settings_with_rules(); // takeover: within 1 hour.
        let mut state = SubjectState::default();
        let steps = [
            ("password_reset", 0),
            ("email_change", 1_800_000),
            ("mfa_disabled", 3_700_000),
        ];
        for (event_type, offset) in steps {
            state.apply(
                &[event(event_type, 10, T0 + offset)],
                T0 + offset,
                &settings,
            );
        }
        let view = state.view(T0 + 3_700_000, &settings);
        assert_eq!(factor_points(&view, "sequence.takeover"), None);
    }

    #[test]
    fn spike_is_recorded_when_one_batch_adds_spike_delta() {
        let settings = settings(); // spike_delta 30, trend half-life 1 hour.
        let mut state = SubjectState::default();
        state.apply(&[event("failed_login", 10, T0)], T0, &settings);
        state.apply(
            &[event("failed_login", 10, T0 + 1_000)],
            T0 + 1_000,
            &settings,
        );
        assert_eq!(
            factor_points(&state.view(T0 + 1_000, &settings), "spike"),
            None
        );

        let at = T0 + 2_000;
        state.apply(
            &[event("chargeback", 20, at), event("failed_login", 10, at)],
            at,
            &settings,
        );
        let view = state.view(at, &settings);
        assert_eq!(view.factors.last(), Some(&("spike".to_owned(), 0)));
        assert!(!state.is_idle(at, &settings));
        // The spike is shown for one trend half-life.
        assert_eq!(
            factor_points(&state.view(at + HOUR_MS - 1, &settings), "spike"),
            Some(0)
        );
        assert_eq!(
            factor_points(&state.view(at + HOUR_MS, &settings), "spike"),
            None
        );
    }

    #[test]
    fn no_spike_when_spike_delta_is_zero() {
        let settings = ScoringSettings {
            spike_delta: 0,
            ..settings()
        };
        let mut state = SubjectState::default();
        state.apply(&[event("chargeback", 60, T0)], T0, &settings);
        assert_eq!(factor_points(&state.view(T0, &settings), "spike"), None);
    }

    #[test]
    fn idle_waits_for_rule_state() {
        let settings = settings_with_rules();
        let mut state = SubjectState::default();
        state.apply(&[event("failed_login", 0, T0)], T0, &settings);
        // Score 0, but the event still counts for the trend and the velocity window.
        assert!(!state.is_idle(T0 + 60_000, &settings));
        assert!(state.is_idle(T0 + 30 * DAY_MS, &settings));
    }

    #[test]
    fn typical_subject_encodes_small() {
        let settings = settings_with_rules();
        let mut state = SubjectState::default();
        let events: Vec<Event<'_>> = (0..10u64)
            .map(|i| {
                let event_type = match i {
                    0..6 => "failed_login",
                    6..8 => "password_reset",
                    _ => "email_change",
                };
                event(event_type, 5, T0 - 3_000_000 + i * 300_000)
            })
            .collect();
        state.apply(&events, T0, &settings);
        let view = state.view(T0, &settings);
        let factors: Vec<&str> = view.factors.iter().map(|(code, _)| code.as_str()).collect();
        assert_eq!(
            factors,
            [
                "event.failed_login",
                "event.email_change",
                "event.password_reset",
                "spike"
            ]
        );
        assert_eq!(state.recent.len(), 10);
        let bytes = state.encode();
        println!("typical subject: {} bytes", bytes.len());
        assert!(bytes.len() <= 128, "{} bytes", bytes.len());
        assert_eq!(SubjectState::decode(&bytes), Some(state));
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert_eq!(SubjectState::decode(&[]), None);
        assert_eq!(SubjectState::decode(&[2]), None);
        let mut state = SubjectState::default();
        state.apply(&[event("failed_login", 5, T0)], T0, &settings_with_rules());
        let mut bytes = state.encode();
        assert!(SubjectState::decode(&bytes).is_some());
        bytes.push(0);
        assert_eq!(SubjectState::decode(&bytes), None);
        bytes.truncate(bytes.len() - 2);
        assert_eq!(SubjectState::decode(&bytes), None);
        // A negative sum.
        let default_bytes = SubjectState::default().encode();
        let mut negative = default_bytes.clone();
        negative[3..7].copy_from_slice(&(-1.0f32).to_le_bytes());
        assert_eq!(
            SubjectState::decode(&default_bytes),
            Some(SubjectState::default())
        );
        assert_eq!(SubjectState::decode(&negative), None);
    }

    #[test]
    fn huge_timestamps_do_not_panic() {
        let settings = settings_with_rules();
        let mut state = SubjectState::default();
        state.apply(&[event("failed_login", 60, u64::MAX)], u64::MAX, &settings);
        state.apply(&[event("password_reset", 60, 0)], u64::MAX, &settings);
        state.apply(&[event("email_change", 60, u64::MAX)], 0, &settings);
        let view = state.view(u64::MAX, &settings);
        assert_eq!(view.score, 100);
        let _ = state.view(0, &settings);
        let _ = state.is_idle(u64::MAX, &settings);
        assert_eq!(SubjectState::decode(&state.encode()), Some(state));
    }

    proptest! {
        #[test]
        fn score_never_increases_without_events(
            raw in arbitrary_events(),
            later in prop::collection::vec(0..40 * DAY_MS, 1..8),
        ) {
            let settings = settings_with_rules();
            let now = T0 + 2 * DAY_MS;
            let mut state = SubjectState::default();
            state.apply(&to_events(&raw, T0), now, &settings);
            let mut times = later;
            times.sort_unstable();
            let mut previous = state.view(now, &settings).score;
            prop_assert!(previous <= 100);
            for offset in times {
                let score = state.view(now + offset, &settings).score;
                prop_assert!(score <= previous);
                previous = score;
            }
        }

        #[test]
        fn score_at_most_100(
            batches in prop::collection::vec((arbitrary_events(), 0..DAY_MS), 1..6),
        ) {
            let settings = settings_with_rules();
            let mut state = SubjectState::default();
            let mut now = T0;
            for (raw, step) in batches {
                now += step;
                state.apply(&to_events(&raw, now - DAY_MS), now, &settings);
                let view = state.view(now, &settings);
                prop_assert!(view.score <= 100);
                prop_assert!(view.factors.iter().all(|(_, points)| *points <= 100));
            }
        }

        #[test]
        fn order_and_batching_do_not_change_the_score(
            (raw, shuffled) in prop::collection::vec((0..TYPES.len(), 0..=60u8, 0..2 * DAY_MS), 0..24)
                .prop_flat_map(|raw| (Just(raw.clone()), Just(raw).prop_shuffle())),
            cuts in prop::collection::vec(any::<bool>(), 24),
        ) {
            // A velocity rule as well: it fires at most once at the same `now` either way.
            let settings = ScoringSettings {
                velocity: vec![velocity_rule("burst", "failed_login", 3, DAY_MS as u32 / 1000)],
                ..settings()
            };
            let now = T0 + 2 * DAY_MS;
            let mut at_once = SubjectState::default();
            at_once.apply(&to_events(&raw, T0), now, &settings);

            let mut in_batches = SubjectState::default();
            let shuffled_events = to_events(&shuffled, T0);
            let mut batch = Vec::new();
            for (event, cut) in shuffled_events.into_iter().zip(cuts.iter().chain(std::iter::repeat(&false))) {
                batch.push(event);
                if *cut {
                    in_batches.apply(&batch, now, &settings);
                    batch.clear();
                }
            }
            in_batches.apply(&batch, now, &settings);

            let a = at_once.view(now, &settings);
            let b = in_batches.view(now, &settings);
            prop_assert!(a.score.abs_diff(b.score) <= 1, "{a:?} vs {b:?}");
            prop_assert_eq!(a.last_event_ms, b.last_event_ms);
            prop_assert_eq!(a.trend, b.trend);
            let later = now + 3 * HOUR_MS;
            prop_assert!(at_once.view(later, &settings).score.abs_diff(in_batches.view(later, &settings).score) <= 1);
        }

        #[test]
        fn encode_decode_round_trip(
            batches in prop::collection::vec((arbitrary_events(), 0..HOUR_MS), 0..6),
        ) {
            let settings = ScoringSettings {
                velocity: vec![velocity_rule("burst", "failed_login", 2, 7_200)],
                sequences: vec![sequence_rule("reset_change", &["password_reset", "email_change"], 86_400)],
                spike_delta: 10,
                ..settings()
            };
            let mut state = SubjectState::default();
            let mut now = T0;
            for (raw, step) in batches {
                now += step;
                state.apply(&to_events(&raw, now - DAY_MS), now, &settings);
                let bytes = state.encode();
                let decoded = SubjectState::decode(&bytes);
                prop_assert_eq!(decoded.as_ref(), Some(&state));
                prop_assert_eq!(decoded.map(|d| d.encode()), Some(bytes));
            }
        }

        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut with_version = bytes.clone();
            with_version.insert(0, FORMAT_VERSION);
            for input in [bytes, with_version] {
                if let Some(mut state) = SubjectState::decode(&input) {
                    let settings = settings_with_rules();
                    let _ = state.view(T0, &settings);
                    state.apply(&[event("failed_login", 5, T0)], T0, &settings);
                    let _ = state.is_idle(T0, &settings);
                }
            }
        }

        #[test]
        fn decode_corrupted_state_never_panics(
            raw in arbitrary_events(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let settings = settings_with_rules();
            let mut state = SubjectState::default();
            state.apply(&to_events(&raw, T0), T0 + DAY_MS, &settings);
            let mut bytes = state.encode();
            for (position, value) in edits {
                let index = position % bytes.len();
                bytes[index] = value;
            }
            bytes.truncate(bytes.len() - cut % 3);
            if let Some(mut decoded) = SubjectState::decode(&bytes) {
                let _ = decoded.view(u64::MAX, &settings);
                decoded.apply(&to_events(&raw, T0), T0 + 2 * DAY_MS, &settings);
                let _ = decoded.is_idle(T0, &settings);
                prop_assert_eq!(SubjectState::decode(&decoded.encode()), Some(decoded));
            }
        }

        #[test]
        fn any_times_never_panic(
            raw in prop::collection::vec((0..TYPES.len(), any::<u8>(), any::<u64>()), 0..12),
            nows in prop::collection::vec(any::<u64>(), 1..4),
        ) {
            let settings = settings_with_rules();
            let mut state = SubjectState::default();
            let events: Vec<Event<'_>> = raw
                .iter()
                .map(|&(type_index, points, at_ms)| event(TYPES[type_index], points, at_ms))
                .collect();
            for now in nows {
                state.apply(&events, now, &settings);
                prop_assert!(state.view(now, &settings).score <= 100);
                let _ = state.is_idle(now, &settings);
            }
            prop_assert_eq!(SubjectState::decode(&state.encode()), Some(state));
        }
    }
}
