//! Bundles the cache hands to edges, and the fleet of edges that poll for them.
//!
//! `PUT /v1/bundle` accepts only a bundle that verifies against the trusted keys and carries a
//! higher revision than the stable one; `PUT /v1/bundle/canary {bundle, percent}` stages a
//! higher one for a share of clients (`signalbox_pipeline::canary` picks them, the same way on
//! every edge); `POST /v1/bundle/promote` makes the canary stable; `DELETE /v1/bundle/canary`
//! aborts it, never lowering the stable revision. The state is one value in the store, changed
//! with compare-and-swap, so two cache nodes cannot interleave a push and a promote.

use serde::{Deserialize, Serialize};
use signalbox_policy::signing::{LoadContext, TrustedKeys, load_bundle};
use signalbox_wire::{BundleEnvelopeV1, CanaryV1, FleetReportV1};

/// The store key of the bundle state.
pub const STATE_KEY: &str = "bundles";
/// The store key prefix of fleet reports (`fleet/<node id>`).
pub const FLEET_PREFIX: &str = "fleet/";

/// One stored bundle: its revision and its text as pushed (a signed envelope, or plain JSON
/// where unsigned bundles are allowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBundle {
    /// Its revision.
    pub revision: u64,
    /// The text edges receive.
    pub text: String,
}

/// The stable bundle and the canary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleState {
    /// Served to every client not in the canary.
    #[serde(default)]
    pub stable: Option<StoredBundle>,
    /// The canary and its percent.
    #[serde(default)]
    pub canary: Option<(StoredBundle, u8)>,
    /// The highest revision ever accepted, an aborted canary's included: edges may have
    /// served it, so a later bundle must be above it.
    #[serde(default)]
    pub offered: u64,
}

impl BundleState {
    /// What `GET /v1/bundle` answers, if a stable bundle exists.
    pub fn envelope(&self) -> Option<BundleEnvelopeV1> {
        let stable = self.stable.as_ref()?;
        Some(BundleEnvelopeV1 {
            stable: stable.text.clone(),
            canary: self.canary.as_ref().map(|(b, percent)| CanaryV1 {
                bundle: b.text.clone(),
                percent: *percent,
            }),
        })
    }

    /// The ETag of the envelope: changes whenever the stable or canary revision or the
    /// percent does.
    pub fn etag(&self) -> String {
        format!(
            "\"{}-{}-{}\"",
            self.stable.as_ref().map_or(0, |b| b.revision),
            self.canary.as_ref().map_or(0, |(b, _)| b.revision),
            self.canary.as_ref().map_or(0, |(_, p)| *p)
        )
    }

    /// The highest revision ever accepted here (a new bundle must be above it).
    pub fn highest(&self) -> u64 {
        self.stable
            .as_ref()
            .map_or(0, |b| b.revision)
            .max(self.canary.as_ref().map_or(0, |(b, _)| b.revision))
            .max(self.offered)
    }
}

/// Verifies a pushed bundle: signature (unless unsigned ones are allowed), validity, expiry,
/// engine version, and a revision above `above`. The error is the reason, for the pusher.
pub fn verify(
    text: &str,
    keys: &TrustedKeys,
    allow_unsigned: bool,
    now: u64,
    above: u64,
) -> Result<(StoredBundle, signalbox_policy::Policy), String> {
    let ctx = LoadContext {
        now,
        active_revision: Some(above),
        allow_unsigned,
    };
    let policy = load_bundle(text.as_bytes(), keys, &ctx).map_err(|e| match e {
        signalbox_policy::signing::SignatureError::Invalid(b) => {
            let fields: Vec<String> = b.field_errors().iter().map(ToString::to_string).collect();
            if fields.is_empty() {
                format!("invalid bundle: {b}")
            } else {
                format!("invalid bundle: {}", fields.join("; "))
            }
        }
        other => other.to_string(),
    })?;
    if policy.revision() <= above {
        return Err(format!(
            "revision {} is not above the revision already served ({above})",
            policy.revision()
        ));
    }
    Ok((
        StoredBundle {
            revision: policy.revision(),
            text: text.to_owned(),
        },
        policy,
    ))
}

/// A fleet report as stored: what the edge said and when the cache heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEntry {
    /// The edge's report.
    pub report: FleetReportV1,
    /// When the cache received it, unix seconds.
    pub received_at: u64,
}
