//! The bundle's `scoring` section, compiled: how the score cache turns a subject's events into
//! its score. Only the score cache reads it; the arithmetic lives there (edges never score
//! events), the settings live here so one bundle, validated once, carries both.

use crate::policy::Errors;
use crate::wire;

/// A velocity pattern: at least `at_least` events of `event_type` within `within_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VelocityRule {
    /// Factor code suffix (`velocity.<code>`).
    pub code: String,
    /// The event type counted.
    pub event_type: String,
    /// How many events.
    pub at_least: u32,
    /// Within how many seconds.
    pub within_seconds: u32,
    /// Points the factor adds.
    pub points: u8,
}

/// A sequence pattern: `event_types` in order for one subject within `within_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceRule {
    /// Factor code suffix (`sequence.<code>`).
    pub code: String,
    /// The types, in order (2 to 8).
    pub event_types: Vec<String>,
    /// From the first to the last, seconds.
    pub within_seconds: u32,
    /// Points the factor adds.
    pub points: u8,
}

/// How the score cache scores events (see [`wire::ScoringV1`] for each field's meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoringSettings {
    /// An event's points halve every this many seconds (≥ 1).
    pub half_life_seconds: u32,
    /// Half-life of the trend's short rate, seconds (≥ 1, below `half_life_seconds`).
    pub trend_half_life_seconds: u32,
    /// Rising at or above this percent of the long rate.
    pub rising_ratio_percent: u32,
    /// Falling at or below this percent of the long rate.
    pub falling_ratio_percent: u32,
    /// A batch that raises the score by at least this much is a spike.
    pub spike_delta: u8,
    /// How long an edge may keep a context answer, seconds.
    pub context_ttl_seconds: u32,
    /// Default points by severity: low, medium, high, critical.
    pub severity_points: [u8; 4],
    /// Velocity patterns.
    pub velocity: Vec<VelocityRule>,
    /// Sequence patterns.
    pub sequences: Vec<SequenceRule>,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        let mut errors = Errors::default();
        compile(&mut errors, &wire::ScoringV1::default())
    }
}

/// The most events a velocity pattern may count: the cache keeps this many recent events per
/// subject, which bounds a subject's hot state.
pub const MAX_VELOCITY_COUNT: u32 = 32;

/// Compiles and validates `scoring`, pushing field errors.
pub(crate) fn compile(errors: &mut Errors, s: &wire::ScoringV1) -> ScoringSettings {
    let positive = |errors: &mut Errors, path: &str, v: u32| {
        if v == 0 {
            errors.push(path, "must be at least 1");
        }
        v.max(1)
    };
    let half_life_seconds = positive(errors, "scoring.half_life_seconds", s.half_life_seconds);
    let trend_half_life_seconds = positive(
        errors,
        "scoring.trend_half_life_seconds",
        s.trend_half_life_seconds,
    );
    if trend_half_life_seconds >= half_life_seconds {
        errors.push(
            "scoring.trend_half_life_seconds",
            "must be below scoring.half_life_seconds (the trend compares a short rate with the long one)",
        );
    }
    if s.falling_ratio_percent >= s.rising_ratio_percent {
        errors.push(
            "scoring.falling_ratio_percent",
            "must be below scoring.rising_ratio_percent",
        );
    }
    let spike_delta = errors.points("scoring.spike_delta", s.spike_delta);
    let sp = &s.severity_points;
    let severity_points = [
        errors.points("scoring.severity_points.low", sp.low),
        errors.points("scoring.severity_points.medium", sp.medium),
        errors.points("scoring.severity_points.high", sp.high),
        errors.points("scoring.severity_points.critical", sp.critical),
    ];
    let mut codes = std::collections::BTreeSet::new();
    let velocity = s
        .velocity
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let path = format!("scoring.velocity[{i}]");
            errors.non_empty_name(format!("{path}.code"), &v.code);
            if !codes.insert(format!("velocity.{}", v.code)) {
                errors.push(format!("{path}.code"), "used twice");
            }
            errors.non_empty_name(format!("{path}.event_type"), &v.event_type);
            if !(1..=MAX_VELOCITY_COUNT).contains(&v.at_least) {
                errors.push(
                    format!("{path}.at_least"),
                    format!("must be 1..={MAX_VELOCITY_COUNT}"),
                );
            }
            VelocityRule {
                code: v.code.clone(),
                event_type: v.event_type.clone(),
                at_least: v.at_least.clamp(1, MAX_VELOCITY_COUNT),
                within_seconds: positive(
                    errors,
                    &format!("{path}.within_seconds"),
                    v.within_seconds,
                ),
                points: errors.points(format!("{path}.points"), v.points),
            }
        })
        .collect();
    let sequences = s
        .sequences
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let path = format!("scoring.sequences[{i}]");
            errors.non_empty_name(format!("{path}.code"), &q.code);
            if !codes.insert(format!("sequence.{}", q.code)) {
                errors.push(format!("{path}.code"), "used twice");
            }
            if !(2..=8).contains(&q.event_types.len()) {
                errors.push(
                    format!("{path}.event_types"),
                    "must list 2 to 8 event types",
                );
            }
            for (j, t) in q.event_types.iter().enumerate() {
                errors.non_empty_name(format!("{path}.event_types[{j}]"), t);
            }
            SequenceRule {
                code: q.code.clone(),
                event_types: q.event_types.clone(),
                within_seconds: positive(
                    errors,
                    &format!("{path}.within_seconds"),
                    q.within_seconds,
                ),
                points: errors.points(format!("{path}.points"), q.points),
            }
        })
        .collect();
    ScoringSettings {
        half_life_seconds,
        trend_half_life_seconds,
        rising_ratio_percent: s.rising_ratio_percent,
        falling_ratio_percent: s.falling_ratio_percent,
        spike_delta,
        context_ttl_seconds: s.context_ttl_seconds,
        severity_points,
        velocity,
        sequences,
    }
}
