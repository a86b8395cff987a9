//! Signed bundles: an Ed25519 signature over the exact bundle bytes, and the checks an edge
//! makes before it swaps bundles.
//!
//! Envelope: `{"kid": "...", "payload": "<base64 of the exact bundle bytes>", "sig": "<base64
//! Ed25519 signature of those bytes>"}`. The bytes are signed as they are — there is no
//! canonicalisation step to get wrong. The payload carries `revision`, `min_engine_version`
//! and `expires_at`, so a stale signed bundle cannot be replayed to an edge that restarted.
//!
//! Key rotation: add the new public key to every edge's trusted set, sign with the new key,
//! then retire the old public key (see `policy/README.md`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::policy::{BundleError, Policy, needs_newer_engine, parse_wire};

/// The signed envelope, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Id of the signing key.
    pub kid: String,
    /// Base64 (standard, padded) of the exact bundle JSON bytes.
    pub payload: String,
    /// Base64 of the 64-byte Ed25519 signature over those bytes.
    pub sig: String,
}

/// Why a bundle was refused; each reason has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The envelope is not of the envelope's shape, or not base64.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The key id is not in the trusted set.
    #[error("unknown key id {0:?}")]
    UnknownKid(String),
    /// The signature does not verify over the payload (tampered, or signed by another key).
    #[error("signature does not verify (kid {0:?})")]
    BadSignature(String),
    /// Not signed, and unsigned bundles are not allowed here.
    #[error("bundle is not signed and unsigned bundles are not allowed")]
    UnsignedNotAllowed,
    /// A signed bundle must say when it expires.
    #[error("signed bundle has no expires_at")]
    MissingExpiry,
    /// The revision is lower than the one being served.
    #[error("revision {got} is lower than the active revision {active}")]
    RevisionRegressed {
        /// Revision served now.
        active: u64,
        /// Revision offered.
        got: u64,
    },
    /// The bundle has expired.
    #[error("bundle expired at {expires_at} (now {now})")]
    Expired {
        /// Its `expires_at`, unix seconds.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// The bundle needs a newer engine.
    #[error("bundle needs engine {needs}, this is {have}")]
    EngineTooOld {
        /// Its `min_engine_version`.
        needs: String,
        /// This engine's version.
        have: &'static str,
    },
    /// Signed and fresh, but not a valid bundle.
    #[error("invalid bundle: {0}")]
    Invalid(BundleError),
}

/// The public keys an edge trusts, by key id (several, for rotation).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

/// A public key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {kid:?}: not a base64 Ed25519 public key")]
pub struct BadKey {
    /// The key id.
    pub kid: String,
}

impl TrustedKeys {
    /// Builds the set from `(kid, base64 public key)` pairs.
    pub fn from_base64<'a>(
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, BadKey> {
        let mut out = Vec::new();
        for (kid, b64) in keys {
            let bad = || BadKey {
                kid: kid.to_owned(),
            };
            let bytes: [u8; 32] = STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            out.push((
                kid.to_owned(),
                VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?,
            ));
        }
        Ok(Self { keys: out })
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `kid` is a trusted key id.
    pub fn contains(&self, kid: &str) -> bool {
        self.get(kid).is_some()
    }

    fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key)
    }
}

/// What the loading edge knows: the time, the revision it serves, whether unsigned bundles
/// are allowed (only where a config says so explicitly).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadContext {
    /// Unix seconds.
    pub now: u64,
    /// Revision currently served, if any.
    pub active_revision: Option<u64>,
    /// Accept bundles that are not in a signed envelope.
    pub allow_unsigned: bool,
}

/// Signs bundle bytes as they are.
pub fn sign(bundle_json: &[u8], kid: &str, key: &SigningKey) -> Envelope {
    Envelope {
        kid: kid.to_owned(),
        payload: STANDARD.encode(bundle_json),
        sig: STANDARD.encode(key.sign(bundle_json).to_bytes()),
    }
}

/// The base64 public key of a signing key.
pub fn public_key_base64(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().to_bytes())
}

/// A signing key from its 32-byte seed in base64.
pub fn signing_key_from_base64(b64: &str) -> Option<SigningKey> {
    let seed: [u8; 32] = STANDARD.decode(b64.trim()).ok()?.try_into().ok()?;
    Some(SigningKey::from_bytes(&seed))
}

/// Verifies an envelope's signature and returns the exact payload bytes.
pub fn verify_envelope(envelope: &Envelope, keys: &TrustedKeys) -> Result<Vec<u8>, SignatureError> {
    let key = keys
        .get(&envelope.kid)
        .ok_or_else(|| SignatureError::UnknownKid(envelope.kid.clone()))?;
    let payload = STANDARD
        .decode(envelope.payload.trim())
        .map_err(|e| SignatureError::Malformed(format!("payload: {e}")))?;
    let sig: [u8; 64] = STANDARD
        .decode(envelope.sig.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SignatureError::Malformed("sig: not 64 bytes of base64".to_owned()))?;
    // verify_strict rejects weak keys and non-canonical signatures; its comparisons do not
    // depend on secret data.
    key.verify_strict(&payload, &Signature::from_bytes(&sig))
        .map_err(|_| SignatureError::BadSignature(envelope.kid.clone()))?;
    Ok(payload)
}

/// Loads a bundle an edge was sent: a signed envelope (verified against `keys`), or — only
/// when `ctx.allow_unsigned` — plain bundle JSON. Refuses, each with its own error: an unknown
/// key id, a bad signature, a revision below the active one, an expired bundle, a bundle for
/// a newer engine, and a signed bundle without `expires_at`.
pub fn load_bundle(
    bytes: &[u8],
    keys: &TrustedKeys,
    ctx: &LoadContext,
) -> Result<Policy, SignatureError> {
    load_opened(&open_bundle(bytes, keys, ctx)?, ctx)
}

/// The first half of [`load_bundle`]: a signed envelope's payload once its signature verifies
/// against `keys`, or — only when `ctx.allow_unsigned` — plain bundle JSON as it is.
pub fn open_bundle<'a>(
    bytes: &'a [u8],
    keys: &TrustedKeys,
    ctx: &LoadContext,
) -> Result<Opened<'a>, SignatureError> {
    /// Whether the top level has `sig` and `payload`, skipping everything else without
    /// building it (a plain bundle can be megabytes of lists).
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        sig: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        payload: Option<serde::de::IgnoredAny>,
    }
    let looks_signed = serde_json::from_slice::<Probe>(bytes)
        .is_ok_and(|p| p.sig.is_some() && p.payload.is_some());
    if looks_signed {
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        Ok(Opened {
            payload: verify_envelope(&envelope, keys)?.into(),
            signed_by: Some(envelope.kid),
        })
    } else if ctx.allow_unsigned {
        Ok(Opened {
            payload: bytes.into(),
            signed_by: None,
        })
    } else {
        Err(SignatureError::UnsignedNotAllowed)
    }
}

/// A bundle's payload after [`open_bundle`]: the exact bytes that were signed, and the key id
/// that signed them (`None`: an unsigned bundle, where allowed).
#[derive(Debug)]
pub struct Opened<'a> {
    /// The bundle JSON.
    pub payload: std::borrow::Cow<'a, [u8]>,
    /// The signing key id.
    pub signed_by: Option<String>,
}

/// [`load_bundle`] after [`open_bundle`]: the checks on the payload itself (engine version,
/// revision, expiry, a signed bundle's `expires_at`), then the compiled policy with the
/// payload's digest.
pub fn load_opened(opened: &Opened<'_>, ctx: &LoadContext) -> Result<Policy, SignatureError> {
    let (payload, signed) = (&opened.payload, opened.signed_by.is_some());
    let wire = parse_wire(payload).map_err(SignatureError::Invalid)?;
    if needs_newer_engine(&wire.min_engine_version) {
        return Err(SignatureError::EngineTooOld {
            needs: wire.min_engine_version,
            have: crate::policy::ENGINE_VERSION,
        });
    }
    let revision = wire.revision;
    if let Some(active) = ctx.active_revision.filter(|a| revision < *a) {
        return Err(SignatureError::RevisionRegressed {
            active,
            got: revision,
        });
    }
    let mut policy = Policy::try_from(wire).map_err(SignatureError::Invalid)?;
    match policy.expires_at() {
        Some(expires_at) if ctx.now >= expires_at => {
            return Err(SignatureError::Expired {
                expires_at,
                now: ctx.now,
            });
        }
        None if signed => return Err(SignatureError::MissingExpiry),
        _ => {}
    }
    policy.set_digest(payload);
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_392_000;

    fn bundle(revision: u64, engine: &str, expires: Option<&str>) -> Vec<u8> {
        let mut v = serde_json::json!({"format_version": 1, "revision": revision, "min_engine_version": engine});
        if let Some(e) = expires {
            v["expires_at"] = e.into();
        }
        v.to_string().into_bytes()
    }

    fn keys() -> (SigningKey, SigningKey, TrustedKeys) {
        let a = SigningKey::from_bytes(&[7; 32]);
        let b = SigningKey::from_bytes(&[9; 32]);
        let pa = public_key_base64(&a);
        let trusted = TrustedKeys::from_base64([("2026-11", pa.as_str())]).unwrap();
        (a, b, trusted)
    }

    fn ctx() -> LoadContext {
        LoadContext {
            now: NOW,
            active_revision: Some(5),
            allow_unsigned: false,
        }
    }

    fn signed(bytes: &[u8], kid: &str, key: &SigningKey) -> Vec<u8> {
        serde_json::to_vec(&sign(bytes, kid, key)).unwrap()
    }

    #[test]
    fn good_bundle_loads() {
        let (a, _, trusted) = keys();
        let b = bundle(6, "0.1.0", Some("2027-01-01T00:00:00Z"));
        let policy = load_bundle(&signed(&b, "2026-11", &a), &trusted, &ctx()).unwrap();
        assert_eq!(policy.revision(), 6);
        assert_eq!(policy.expires_at(), Some(1_798_761_600));
    }

    #[test]
    fn each_refusal_has_its_own_error() {
        let (a, other, trusted) = keys();
        let good = bundle(6, "0.1.0", Some("2027-01-01T00:00:00Z"));

        let mut envelope = sign(&good, "2026-11", &a);
        envelope.payload = STANDARD.encode(bundle(7, "0.1.0", Some("2027-01-01T00:00:00Z")));
        let tampered = serde_json::to_vec(&envelope).unwrap();
        assert!(matches!(
            load_bundle(&tampered, &trusted, &ctx()),
            Err(SignatureError::BadSignature(_))
        ));

        let by_other_key = signed(&good, "2026-11", &other);
        assert!(matches!(
            load_bundle(&by_other_key, &trusted, &ctx()),
            Err(SignatureError::BadSignature(_))
        ));

        let unknown = signed(&good, "2025-01", &a);
        assert_eq!(
            load_bundle(&unknown, &trusted, &ctx()).unwrap_err(),
            SignatureError::UnknownKid("2025-01".into())
        );

        let old = signed(
            &bundle(4, "0.1.0", Some("2027-01-01T00:00:00Z")),
            "2026-11",
            &a,
        );
        assert_eq!(
            load_bundle(&old, &trusted, &ctx()).unwrap_err(),
            SignatureError::RevisionRegressed { active: 5, got: 4 }
        );

        let expired = signed(
            &bundle(6, "0.1.0", Some("2026-01-01T00:00:00Z")),
            "2026-11",
            &a,
        );
        assert!(matches!(
            load_bundle(&expired, &trusted, &ctx()),
            Err(SignatureError::Expired { .. })
        ));

        let too_new = signed(
            &bundle(6, "99.0.0", Some("2027-01-01T00:00:00Z")),
            "2026-11",
            &a,
        );
        assert!(matches!(
            load_bundle(&too_new, &trusted, &ctx()),
            Err(SignatureError::EngineTooOld { .. })
        ));

        let no_expiry = signed(&bundle(6, "0.1.0", None), "2026-11", &a);
        assert_eq!(
            load_bundle(&no_expiry, &trusted, &ctx()).unwrap_err(),
            SignatureError::MissingExpiry
        );

        assert_eq!(
            load_bundle(&good, &trusted, &ctx()).unwrap_err(),
            SignatureError::UnsignedNotAllowed
        );
        let allow = LoadContext {
            allow_unsigned: true,
            ..ctx()
        };
        assert_eq!(load_bundle(&good, &trusted, &allow).unwrap().revision(), 6);

        let invalid = signed(br#"{"format_version":1,"revision":6,"min_engine_version":"0.1.0","expires_at":"2027-01-01T00:00:00Z","thresholds":{"high":500}}"#, "2026-11", &a);
        assert!(matches!(
            load_bundle(&invalid, &trusted, &ctx()),
            Err(SignatureError::Invalid(_))
        ));

        assert!(matches!(
            load_bundle(br#"{"kid":"x","payload":"!!","sig":""}"#, &trusted, &ctx()),
            Err(SignatureError::UnknownKid(_))
        ));
        assert!(matches!(
            load_bundle(
                br#"{"kid":"2026-11","payload":"!!","sig":""}"#,
                &trusted,
                &ctx()
            ),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn rotation_accepts_both_trusted_keys() {
        let (a, b, _) = keys();
        let (pa, pb) = (public_key_base64(&a), public_key_base64(&b));
        let both = TrustedKeys::from_base64([("old", pa.as_str()), ("new", pb.as_str())]).unwrap();
        let good = bundle(6, "0.1.0", Some("2027-01-01T00:00:00Z"));
        assert!(load_bundle(&signed(&good, "old", &a), &both, &ctx()).is_ok());
        assert!(load_bundle(&signed(&good, "new", &b), &both, &ctx()).is_ok());
        // A key id pointing at the other key's signature fails.
        assert!(load_bundle(&signed(&good, "new", &a), &both, &ctx()).is_err());
    }
}
