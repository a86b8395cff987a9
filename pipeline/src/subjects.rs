//! Where a request's user and device keys come from, configured once for every adapter
//! (`subjects` in the plugin configuration): the user from a trusted edge header (read with
//! the facts) or else a signed cookie origin set at login, verified in constant time; the
//! device from a cookie. In privacy mode both are replaced by a keyed hash before anything
//! leaves the edge, so the score cache, rate keys and logs never see them.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use signalbox_policy::Facts;

use crate::config::Subjects;

type HmacSha256 = Hmac<Sha256>;

/// Longest device key read from its cookie.
const MAX_DEVICE_KEY: usize = 128;

/// The user key a signed cookie carries, when its MAC verifies: `<key>.<base64url MAC>`.
pub fn verified_user(cookie: &[u8], secret: &[u8]) -> Option<String> {
    let dot = cookie.iter().rposition(|&b| b == b'.')?;
    let (key, mac) = (cookie.get(..dot)?, cookie.get(dot + 1..)?);
    if key.is_empty() {
        return None;
    }
    let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(mac)
        .ok()?;
    let mut expected = HmacSha256::new_from_slice(secret).ok()?;
    expected.update(key);
    expected.verify_slice(&mac).ok()?;
    String::from_utf8(key.to_vec()).ok()
}

/// The signed cookie value for `user` (what origin sets; for tests and tools).
pub fn sign_user(user: &str, secret: &[u8]) -> Option<String> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(user.as_bytes());
    let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Some(format!("{user}.{tag}"))
}

/// A keyed hash of a subject key (hex, 128 bits), different per kind.
pub fn hashed(kind: &str, key: &str, secret: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(kind.as_bytes());
    mac.update(b":");
    mac.update(key.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Fills in the user and device keys the configuration says where to find, then hashes them
/// in privacy mode.
pub fn apply(subjects: &Subjects, facts: &mut Facts) {
    if facts.user.is_none()
        && let Some((name, secret)) = &subjects.user_cookie
    {
        facts.user = facts
            .cookie(name)
            .and_then(|value| verified_user(value, secret));
    }
    if let Some(name) = &subjects.device_cookie {
        facts.device = facts
            .cookie(name)
            .filter(|v| !v.is_empty() && v.len() <= MAX_DEVICE_KEY)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned);
    }
    if let Some(secret) = &subjects.privacy_key {
        facts.user = facts.user.take().map(|u| hashed("user", &u, secret));
        facts.device = facts.device.take().map(|d| hashed("device", &d, secret));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalbox_policy::EdgeHeaderNames;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn facts(cookie: &str) -> Facts {
        Facts::from_parts(
            "GET",
            "/",
            [("cookie", cookie)],
            None,
            &EdgeHeaderNames::default(),
        )
    }

    #[test]
    fn a_signed_user_cookie_verifies_and_a_forged_one_does_not() {
        let good = sign_user("u-1001", SECRET).unwrap();
        assert_eq!(
            verified_user(good.as_bytes(), SECRET).as_deref(),
            Some("u-1001")
        );
        let forged = good.replace("u-1001", "u-1002");
        assert_eq!(verified_user(forged.as_bytes(), SECRET), None);
        assert_eq!(verified_user(b"u-1001", SECRET), None, "no MAC");
        assert_eq!(verified_user(b".abc", SECRET), None, "no key");
        assert_eq!(
            verified_user(good.as_bytes(), b"another secret, 32 bytes long!!!"),
            None
        );
    }

    #[test]
    fn subjects_come_from_their_cookies_and_are_hashed_in_privacy_mode() {
        let cookie = format!(
            "sid=x; signed_user={}; device=d-77",
            sign_user("u-1001", SECRET).unwrap()
        );
        let mut subjects = Subjects {
            user_cookie: Some(("signed_user".to_owned(), SECRET.to_vec())),
            device_cookie: Some("device".to_owned()),
            privacy_key: None,
        };
        let mut f = facts(&cookie);
        apply(&subjects, &mut f);
        assert_eq!(
            (f.user.as_deref(), f.device.as_deref()),
            (Some("u-1001"), Some("d-77"))
        );
        // A trusted edge header's user wins over the cookie.
        let mut f = facts(&cookie);
        f.user = Some("from-edge".to_owned());
        apply(&subjects, &mut f);
        assert_eq!(f.user.as_deref(), Some("from-edge"));
        // Privacy mode: keyed hashes, stable, different per kind and per key.
        subjects.privacy_key = Some(b"another secret, 32 bytes long!!!".to_vec());
        let mut f = facts(&cookie);
        apply(&subjects, &mut f);
        let user = f.user.clone().unwrap();
        assert_eq!(user.len(), 32);
        assert_ne!(user, "u-1001");
        assert_eq!(
            user,
            hashed("user", "u-1001", b"another secret, 32 bytes long!!!")
        );
        assert_ne!(
            hashed("device", "u-1001", SECRET),
            hashed("user", "u-1001", SECRET)
        );
        // No cookie, no key; a device cookie that is too long is ignored.
        let mut f = facts(&format!("device={}", "d".repeat(200)));
        apply(&subjects, &mut f);
        assert_eq!((f.user, f.device), (None, None));
    }
}
