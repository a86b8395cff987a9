//! # signalbox-score-cache
//!
//! The score cache: what the rest of the system knows about an IP, a user or a device —
//! failed logins, password resets, chargebacks, abuse reports, posted as events by origin and
//! other tools, decayed over time, with trend, velocity and sequence patterns — and the
//! security team's manual decisions (ban, challenge, throttle, allow). Edges ask it for a
//! request's context ([`signalbox_wire::ContextAnswerV1`]) when a request is in the gray zone
//! or on a sensitive route, and follow its decision stream.
//!
//! - [`scoring`]: the pure arithmetic (decay, trend, spikes, velocity, sequences).
//! - [`model`]: subjects, events and decisions, and their validation.
//! - [`store`]: one storage trait, two implementations: embedded redb (default, group-commit)
//!   and Redis (several nodes sharing state).
//! - [`active`]: the decisions in force, in memory, following the store's log.
//! - [`server`]: the HTTP API (axum): routes, auth scopes, limits, errors.
//! - [`auth`], [`metrics`]: bearer tokens; Prometheus text.
//! - [`ui`]: the dashboard at `/ui`, server-rendered over the same API.
//!
//! The `signalbox-cache` binary (`src/main.rs`) serves it.

pub mod active;
pub mod auth;
pub mod bundles;
pub mod metrics;
pub mod model;
pub mod rates;
pub mod scoring;
pub mod server;
pub mod store;
pub mod tls;
pub mod ui;
