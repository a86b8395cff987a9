//! The prepared form of a bundle (`signalbox_policy::prepared`): it compiles to the policy the
//! signed envelope compiles to, and it is refused for every reason the envelope would be.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use signalbox_policy::Policy;
use signalbox_policy::prepared::{MAGIC, load_prepared, prepare};
use signalbox_policy::signing::load_bundle;
use signalbox_policy::signing::{
    LoadContext, SignatureError, TrustedKeys, public_key_base64, sign,
};

const NOW: u64 = 1_795_392_000;

fn bundle(revision: u64, lists: &[(&str, Vec<String>)]) -> Vec<u8> {
    let lists: serde_json::Map<String, serde_json::Value> = lists
        .iter()
        .map(|(name, cidrs)| {
            (
                (*name).to_owned(),
                serde_json::json!({"source": "test", "as_of": "2026-11-01", "cidrs": cidrs}),
            )
        })
        .collect();
    let weights: serde_json::Map<String, serde_json::Value> =
        lists.keys().map(|k| (k.clone(), 20.into())).collect();
    serde_json::json!({
        "format_version": 1, "revision": revision, "min_engine_version": "0.1.0",
        "expires_at": "2027-06-01T00:00:00Z",
        "lists": lists,
        "signals": {"ip_lists": weights},
    })
    .to_string()
    .into_bytes()
}

fn key() -> (ed25519_dalek::SigningKey, TrustedKeys) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let public = public_key_base64(&key);
    let trusted = TrustedKeys::from_base64([("2026-11", public.as_str())]).unwrap();
    (key, trusted)
}

fn ctx(active_revision: Option<u64>) -> LoadContext {
    LoadContext {
        now: NOW,
        active_revision,
        allow_unsigned: false,
    }
}

fn envelope(json: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&sign(json, "2026-11", &key().0)).unwrap()
}

fn cidrs() -> impl Strategy<Value = Vec<String>> {
    let v4 = (any::<u32>(), 8u8..=32).prop_map(|(a, len)| format!("{}/{len}", Ipv4Addr::from(a)));
    let v6 =
        (any::<u128>(), 16u8..=128).prop_map(|(a, len)| format!("{}/{len}", Ipv6Addr::from(a)));
    let mapped = (any::<u32>(), 120u8..=128)
        .prop_map(|(a, len)| format!("::ffff:{}/{len}", Ipv4Addr::from(a)));
    proptest::collection::vec(prop_oneof![4 => v4, 2 => v6, 1 => mapped], 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Any lists: the prepared policy holds an address in exactly the lists the envelope's
    /// policy does, scores it the same, and carries the same revision and digest.
    #[test]
    fn prepared_lists_hold_what_the_envelope_holds(
        a in cidrs(), b in cidrs(),
        probes in proptest::collection::vec(prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        ], 1..30),
    ) {
        let (_, keys) = key();
        let signed = envelope(&bundle(4, &[("alpha", a.clone()), ("beta", b.clone())]));
        let original = load_bundle(&signed, &keys, &ctx(None)).unwrap();
        let prepared = load_prepared(&prepare(&signed, &keys, &ctx(None)).unwrap(), &keys, &ctx(None)).unwrap();
        prop_assert_eq!(prepared.signed_by.as_deref(), Some("2026-11"));
        let prepared = prepared.policy;
        prop_assert_eq!(prepared.revision(), original.revision());
        prop_assert_eq!(prepared.digest(), original.digest());
        // Probe the lists' own network addresses too, so hits are common.
        let edges = a.iter().chain(&b).filter_map(|c| c.split('/').next()?.parse::<IpAddr>().ok());
        for ip in probes.into_iter().chain(edges) {
            prop_assert_eq!(prepared.lists_holding(ip), original.lists_holding(ip), "{}", ip);
        }
    }
}

#[test]
fn refused_like_the_envelope() {
    let (_, keys) = key();
    let signed = envelope(&bundle(5, &[("alpha", vec!["10.0.0.0/8".into()])]));
    let prepared = prepare(&signed, &keys, &ctx(None)).unwrap();
    assert!(prepared.starts_with(MAGIC));

    // Preparing verifies: a tampered envelope is not prepared.
    let mut tampered: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    let other = bundle(5, &[("alpha", vec!["0.0.0.0/0".into()])]);
    tampered["payload"] =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &other).into();
    let tampered = serde_json::to_vec(&tampered).unwrap();
    assert!(matches!(
        prepare(&tampered, &keys, &ctx(None)),
        Err(SignatureError::BadSignature(_))
    ));

    // An edge that trusts other keys refuses it.
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let other_public = public_key_base64(&other_key);
    let other_keys = TrustedKeys::from_base64([("2027-01", other_public.as_str())]).unwrap();
    assert_eq!(
        load_prepared(&prepared, &other_keys, &ctx(None)).unwrap_err(),
        SignatureError::UnknownKid("2026-11".into())
    );
    // Never back to an older revision; expiry holds.
    assert_eq!(
        load_prepared(&prepared, &keys, &ctx(Some(6))).unwrap_err(),
        SignatureError::RevisionRegressed { active: 6, got: 5 }
    );
    let late = LoadContext {
        now: 1_900_000_000,
        ..ctx(None)
    };
    assert!(matches!(
        load_prepared(&prepared, &keys, &late),
        Err(SignatureError::Expired { .. })
    ));
    // An unsigned bundle prepares only where unsigned ones are allowed, and loads likewise.
    let plain = bundle(5, &[]);
    assert_eq!(
        prepare(&plain, &keys, &ctx(None)).unwrap_err(),
        SignatureError::UnsignedNotAllowed
    );
    let allow = LoadContext {
        allow_unsigned: true,
        ..ctx(None)
    };
    let unsigned = prepare(&plain, &keys, &allow).unwrap();
    assert_eq!(
        load_prepared(&unsigned, &keys, &ctx(None)).unwrap_err(),
        SignatureError::UnsignedNotAllowed
    );
    let loaded = load_prepared(&unsigned, &keys, &allow).unwrap();
    assert_eq!(loaded.signed_by, None);
    assert_eq!(
        loaded.policy.digest(),
        Policy::from_json_slice(&plain).unwrap().digest()
    );
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let (_, keys) = key();
    let signed = envelope(&bundle(
        5,
        &[("alpha", vec!["10.0.0.0/8".into(), "2001:db8::/32".into()])],
    ));
    let prepared = prepare(&signed, &keys, &ctx(None)).unwrap();
    assert!(matches!(
        load_prepared(&signed, &keys, &ctx(None)),
        Err(SignatureError::Malformed(m)) if m.contains("SBXPREP1")
    ));
    for cut in 0..prepared.len() {
        assert!(
            load_prepared(&prepared[..cut], &keys, &ctx(None)).is_err(),
            "cut at {cut}"
        );
    }
    for at in MAGIC.len()..prepared.len() {
        let mut flipped = prepared.clone();
        flipped[at] ^= 0x55;
        // Some flips land in values (a range bound, a JSON character) and still load:
        // this only asks that none panics.
        let _ = load_prepared(&flipped, &keys, &ctx(None));
    }
}
