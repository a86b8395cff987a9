//! The prepared form of a verified bundle: what a host that makes a fresh instance per request
//! (Spin serving a WASIp2 component) loads instead of the signed envelope.
//!
//! Loading an envelope costs base64, an Ed25519 check over the whole payload (SHA-512 of
//! megabytes), JSON, and parsing and merging every list prefix: about 50 ms per instance for
//! the default bundle in wasm, dominated by its lists. [`prepare`] does all of that once, on the
//! operator's machine (`signalbox policy prepare`): it verifies the envelope exactly as an edge
//! would ([`load_bundle`]), then writes the bundle JSON without its prefixes plus every list's
//! merged ranges in binary ([postcard]), with the signed payload's revision, SHA-256 digest and
//! key id. [`load_prepared`] reads that back with the same revision, engine and expiry checks
//! and no list parsing, and builds the User-Agent matcher for startup
//! ([`crate::UaMatcherBuild::ForStartup`]).
//!
//! Trust: the prepared file is produced only from a bundle that verified, and reaches the
//! edge the way its code does (packaged with the component). It carries no signature of its
//! own; the loader checks its key id against the edge's trusted keys so a prepared file from
//! another signer is refused, and newer bundles pushed to the edge are signed envelopes again.
//!
//! [postcard]: https://docs.rs/postcard

use serde::{Deserialize, Serialize};

use crate::policy::{Policy, needs_newer_engine, parse_wire};
use crate::signing::{LoadContext, SignatureError, TrustedKeys, load_opened, open_bundle};
use crate::{IpRangeSet, wire};

/// The first bytes of every prepared bundle, so a wrong file is named as such.
pub const MAGIC: &[u8; 8] = b"SBXPREP1";

/// A prepared bundle as stored, after [`MAGIC`].
#[derive(Debug, Serialize, Deserialize)]
struct PreparedBundleV1 {
    /// Revision of the signed bundle.
    revision: u64,
    /// SHA-256 of the signed payload (what verdicts, records and fleet reports name).
    digest: [u8; 32],
    /// The key id that signed it; `None` for an unsigned bundle.
    signed_by: Option<String>,
    /// The bundle as JSON with every list's `cidrs` emptied.
    bundle_json: String,
    /// Each list's merged ranges, by name.
    lists: Vec<PreparedListV1>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PreparedListV1 {
    name: String,
    prefixes: u64,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// A loaded prepared bundle.
#[derive(Debug)]
pub struct Prepared {
    /// The compiled bundle (its digest is the signed payload's).
    pub policy: Policy,
    /// The key id that signed the bundle it was prepared from (`None`: unsigned).
    pub signed_by: Option<String>,
}

/// Verifies `bytes` (a signed envelope, or plain bundle JSON when `ctx.allow_unsigned`) as an
/// edge would and returns its prepared form.
pub fn prepare(
    bytes: &[u8],
    keys: &TrustedKeys,
    ctx: &LoadContext,
) -> Result<Vec<u8>, SignatureError> {
    // Verified once: the same checks as load_bundle, on the payload it opened.
    let opened = open_bundle(bytes, keys, ctx)?;
    let policy = load_opened(&opened, ctx)?;
    let digest = policy
        .digest()
        .ok_or_else(|| SignatureError::Malformed("the verified bundle has no digest".to_owned()))?;
    let mut wire = parse_wire(&opened.payload).map_err(SignatureError::Invalid)?;
    let mut lists = Vec::with_capacity(policy.lists().len());
    for list in policy.lists() {
        lists.push(PreparedListV1 {
            name: list.name.to_string(),
            prefixes: list.set.prefix_count() as u64,
            v4: list.set.v4_ranges().to_vec(),
            v6: list.set.v6_ranges().to_vec(),
        });
    }
    for list in wire.lists.values_mut() {
        list.cidrs = Vec::new();
    }
    let bundle_json = serde_json::to_string(&wire)
        .map_err(|e| SignatureError::Malformed(format!("re-encoding the bundle: {e}")))?;
    let prepared = PreparedBundleV1 {
        revision: policy.revision(),
        digest,
        signed_by: opened.signed_by.clone(),
        bundle_json,
        lists,
    };
    let mut out = MAGIC.to_vec();
    out.extend(
        postcard::to_allocvec(&prepared)
            .map_err(|e| SignatureError::Malformed(format!("encoding: {e}")))?,
    );
    Ok(out)
}

/// The revision a prepared bundle carries in its header, read without decoding the rest
/// (`None`: not a prepared bundle). What a host comparing two prepared bundles reads first.
pub fn prepared_revision(bytes: &[u8]) -> Option<u64> {
    let body = bytes.strip_prefix(MAGIC.as_slice())?;
    // `revision` is the first field: a postcard varint.
    postcard::take_from_bytes::<u64>(body)
        .ok()
        .map(|(revision, _)| revision)
}

/// Loads a prepared bundle with the checks [`load_bundle`] makes after the signature: a
/// revision below `ctx.active_revision`, a newer engine, expiry, a signed bundle without
/// `expires_at`. `keys` must hold the key id it was signed with (an unsigned one needs
/// `ctx.allow_unsigned`).
pub fn load_prepared(
    bytes: &[u8],
    keys: &TrustedKeys,
    ctx: &LoadContext,
) -> Result<Prepared, SignatureError> {
    let malformed = |what: String| SignatureError::Malformed(format!("prepared bundle: {what}"));
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| malformed("does not start with SBXPREP1 (not from `signalbox policy prepare`, or another format version)".to_owned()))?;
    let prepared: PreparedBundleV1 =
        postcard::from_bytes(body).map_err(|e| malformed(e.to_string()))?;
    match &prepared.signed_by {
        Some(kid) if !keys.contains(kid) => return Err(SignatureError::UnknownKid(kid.clone())),
        None if !ctx.allow_unsigned => return Err(SignatureError::UnsignedNotAllowed),
        _ => {}
    }
    let mut wire = parse_wire(prepared.bundle_json.as_bytes()).map_err(SignatureError::Invalid)?;
    if needs_newer_engine(&wire.min_engine_version) {
        return Err(SignatureError::EngineTooOld {
            needs: wire.min_engine_version,
            have: crate::policy::ENGINE_VERSION,
        });
    }
    if wire.revision != prepared.revision {
        return Err(malformed(format!(
            "revision {} in its header, {} in its bundle",
            prepared.revision, wire.revision
        )));
    }
    if let Some(active) = ctx.active_revision.filter(|a| wire.revision < *a) {
        return Err(SignatureError::RevisionRegressed {
            active,
            got: wire.revision,
        });
    }
    for PreparedListV1 {
        name,
        prefixes,
        v4,
        v6,
    } in prepared.lists
    {
        let list: &mut wire::IpListV1 = wire.lists.get_mut(&name).ok_or_else(|| {
            malformed(format!("ranges for list {name:?}, which the bundle lacks"))
        })?;
        let set = IpRangeSet::from_ranges(v4, v6, usize::try_from(prefixes).unwrap_or(usize::MAX))
            .ok_or_else(|| malformed(format!("list {name:?}: ranges not sorted and disjoint")))?;
        list.prepared = Some(set);
    }
    if let Some((name, _)) = wire.lists.iter().find(|(_, l)| l.prepared.is_none()) {
        return Err(malformed(format!("no ranges for list {name:?}")));
    }
    // Prepared bundles serve hosts that make a fresh instance per request: build the
    // User-Agent matcher for startup.
    let mut policy = Policy::compile(wire, crate::UaMatcherBuild::ForStartup)
        .map_err(SignatureError::Invalid)?;
    match policy.expires_at() {
        Some(expires_at) if ctx.now >= expires_at => {
            return Err(SignatureError::Expired {
                expires_at,
                now: ctx.now,
            });
        }
        None if prepared.signed_by.is_some() => return Err(SignatureError::MissingExpiry),
        _ => {}
    }
    policy.set_digest_value(prepared.digest);
    Ok(Prepared {
        policy,
        signed_by: prepared.signed_by,
    })
}
