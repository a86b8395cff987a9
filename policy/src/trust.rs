//! Stateless trust primitives any edge node can verify: the proof-of-work challenge and the
//! clearance token, both HMAC-SHA256 tokens bound to the client.
//!
//! **Binding.** A token is bound to the client's IP prefix (/24 for IPv4, /48 for IPv6, so a
//! phone moving between addresses of one network keeps its clearance), a hash of its
//! User-Agent and the host: `SHA-256(prefix 0x00 user-agent 0x00 host)`, first 16 bytes. The
//! host is the authority without its port, lower case: browsers scope cookies to the host, not
//! the port, so every listener and process serving one host agrees. A request without a client
//! address binds to the marker `-` instead of a prefix: such a clearance is good only for other
//! requests without an address (never for one that has an address, and the reverse).
//!
//! **Tokens.** `base64url(payload) "." base64url(HMAC-SHA256(secret, domain || payload))`. The
//! payload starts with a version byte and the key id, so verification picks the secret by id:
//! the current or the previous one (rotation), nothing else. MACs are compared in constant
//! time (`Mac::verify_slice`). Edges may disagree on the clock by up to
//! [`CLOCK_SKEW_SECONDS`].
//!
//! **Challenge.** The server issues a token carrying the binding, a nonce from the caller,
//! the expiry, the difficulty and the return path. The client finds a counter such that
//! `SHA-256(token ":" counter)` (counter in decimal) starts with `difficulty` zero bits, and
//! posts both back. Verifying needs no server state: the MAC proves the server issued it.
//! A solved challenge can be replayed until it expires (minutes); that only earns another
//! clearance for the same binding.
//!
//! **Clearance.** After a solved challenge: a token over key id, binding, issued-at, expiry and
//! the difficulty the challenge asked, set as the cookie [`crate::CLEARANCE_COOKIE`] (see
//! [`clearance_set_cookie`]). A clearance means "solved a challenge of this difficulty", never
//! more: the engine lets it satisfy a challenge that asks no more work, and nothing else.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use ipnet::{Ipv4Net, Ipv6Net};
use sha2::{Digest, Sha256};

use crate::facts::{CLEARANCE_COOKIE, PLAIN_HTTP_CLEARANCE_COOKIE};

/// Edges may disagree on the time by this much.
pub const CLOCK_SKEW_SECONDS: u64 = 60;
/// Shortest accepted HMAC secret.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest accepted return path.
pub const MAX_RETURN_PATH: usize = 2048;

const VERSION: u8 = 1;
const DOMAIN_CHALLENGE: &[u8] = b"signalbox challenge v1\0";
// v2 carries the difficulty it was earned at; a v1 clearance (none did) no longer verifies.
const DOMAIN_CLEARANCE: &[u8] = b"signalbox clearance v2\0";

type HmacSha256 = Hmac<Sha256>;

/// One HMAC secret with its id. `Debug` never shows the secret.
#[derive(Clone)]
pub struct HmacKey {
    kid: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKey")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The current secret and, during rotation, the previous one.
#[derive(Debug, Clone)]
pub struct HmacKeys {
    current: HmacKey,
    previous: Option<HmacKey>,
}

/// A secret that cannot be used. Neither the message nor `Debug` shows the key id: when an
/// operator swaps the two halves of `kid:secret`, the "key id" is the secret.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Shorter than [`MIN_SECRET_BYTES`].
    #[error("the secret is shorter than {MIN_SECRET_BYTES} bytes")]
    TooShort,
    /// Key ids must be 1..=32 bytes of `[A-Za-z0-9._-]`.
    #[error(
        "the key id must be 1 to 32 characters of A-Z a-z 0-9 . _ - (the form is <kid>:<base64 secret>)"
    )]
    BadKid,
    /// The current and the previous secret have the same key id.
    #[error("the current and the previous secret have the same key id")]
    SameKid,
}

impl std::fmt::Debug for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl HmacKeys {
    /// Builds the key set. Secrets must be at least [`MIN_SECRET_BYTES`] long.
    pub fn new(current: (&str, &[u8]), previous: Option<(&str, &[u8])>) -> Result<Self, KeyError> {
        let make = |(kid, secret): (&str, &[u8])| {
            let kid_ok = (1..=32).contains(&kid.len())
                && kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !kid_ok {
                return Err(KeyError::BadKid);
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(KeyError::TooShort);
            }
            Ok(HmacKey {
                kid: kid.to_owned(),
                secret: secret.to_vec(),
            })
        };
        let current = make(current)?;
        let previous = previous.map(make).transpose()?;
        if previous.as_ref().is_some_and(|p| p.kid == current.kid) {
            return Err(KeyError::SameKid);
        }
        Ok(Self { current, previous })
    }

    /// The current key id.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    fn by_kid(&self, kid: &[u8]) -> Option<&HmacKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.kid.as_bytes() == kid)
    }
}

/// What a token is bound to: a hash of the client's IP prefix, User-Agent and host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding(pub [u8; 16]);

impl Binding {
    /// The binding of a request: its client address (none when the adapter could not resolve
    /// one), User-Agent and authority (`host[:port]`; the port is ignored).
    pub fn of(ip: Option<IpAddr>, user_agent: &[u8], authority: &str) -> Self {
        let prefix = match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(a)) => Ipv4Net::new(a, 24)
                .map(|n| n.trunc().to_string())
                .unwrap_or_default(),
            Some(IpAddr::V6(a)) => Ipv6Net::new(a, 48)
                .map(|n| n.trunc().to_string())
                .unwrap_or_default(),
            None => "-".to_owned(),
        };
        let mut h = Sha256::new();
        h.update(prefix.as_bytes());
        h.update([0]);
        h.update(user_agent);
        h.update([0]);
        h.update(host_of(authority).to_ascii_lowercase().as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let mut out = [0u8; 16];
        out.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
        Binding(out)
    }
}

/// The host of an authority: `shop.example:8443` → `shop.example`, `[::1]:80` → `[::1]`.
pub fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this kind (bad base64, wrong version, truncated).
    #[error("malformed token")]
    Malformed,
    /// Signed with a key id that is neither the current nor the previous one.
    #[error("unknown key id")]
    UnknownKey,
    /// The MAC does not verify.
    #[error("bad MAC")]
    BadMac,
    /// Issued for another client, network or host.
    #[error("bound to another client")]
    WrongBinding,
    /// Past its expiry (beyond the clock skew), or issued in the future.
    #[error("expired or not yet valid")]
    Expired,
    /// The proof of work does not reach the difficulty.
    #[error("insufficient work")]
    InsufficientWork,
}

/// Why a challenge could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    /// The return path is not a safe relative path (open-redirect guard).
    #[error("return path must be a relative path on this host")]
    UnsafeReturnPath,
    /// Difficulty outside 1..=32.
    #[error("difficulty must be 1..=32")]
    BadDifficulty,
}

/// Whether a return path is safe to redirect to: starts with one `/` (not `//` or `/\`,
/// which browsers treat as another host), printable ASCII without quotes, angle brackets,
/// backslashes or spaces, at most [`MAX_RETURN_PATH`] bytes.
pub fn is_safe_return_path(path: &str) -> bool {
    let b = path.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && b.len() <= MAX_RETURN_PATH
        && b.iter()
            .all(|&c| c.is_ascii_graphic() && !b"\"'<>\\`".contains(&c))
}

fn mac(key: &HmacKey, domain: &[u8], payload: &[u8]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(&key.secret).ok()?;
    m.update(domain);
    m.update(payload);
    Some(m)
}

fn seal(key: &HmacKey, domain: &[u8], payload: &[u8]) -> String {
    let tag = mac(key, domain, payload)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// Decodes a token and verifies its MAC with the key its payload names. Returns the payload
/// after the version and key id.
fn open(keys: &HmacKeys, domain: &[u8], token: &[u8]) -> Result<Vec<u8>, TokenError> {
    let dot = token
        .iter()
        .position(|&b| b == b'.')
        .ok_or(TokenError::Malformed)?;
    let (payload_b64, tag_b64) = (
        token.get(..dot).unwrap_or_default(),
        token.get(dot + 1..).unwrap_or_default(),
    );
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag_b64)
        .map_err(|_| TokenError::Malformed)?;
    let mut r = Reader(&payload);
    if r.u8()? != VERSION {
        return Err(TokenError::Malformed);
    }
    let kid_len = usize::from(r.u8()?);
    let kid = r.bytes(kid_len)?;
    let key = keys.by_kid(kid).ok_or(TokenError::UnknownKey)?;
    mac(key, domain, &payload)
        .ok_or(TokenError::BadMac)?
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadMac)?;
    Ok(r.0.to_vec())
}

fn header(key: &HmacKey) -> Vec<u8> {
    let mut p = Vec::with_capacity(96);
    p.push(VERSION);
    p.push(u8::try_from(key.kid.len()).unwrap_or(0));
    p.extend_from_slice(key.kid.as_bytes());
    p
}

/// A bounds-checked reader over a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let head = self.0.get(..n).ok_or(TokenError::Malformed)?;
        self.0 = self.0.get(n..).unwrap_or_default();
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.bytes(1)?.first().copied().unwrap_or(0))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        self.bytes(N)?.try_into().map_err(|_| TokenError::Malformed)
    }
    fn u64(&mut self) -> Result<u64, TokenError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

impl HmacKeys {
    /// 16 unpredictable bytes derived from `input` with the current secret (HMAC as a PRF),
    /// for challenge and CSP nonces in hosts without a random source. Callers make `input`
    /// unique (request id, time, a counter).
    pub fn derive_nonce(&self, input: &[u8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        if let Some(m) = mac(&self.current, b"signalbox nonce v1\0", input) {
            let tag = m.finalize().into_bytes();
            out.copy_from_slice(tag.get(..16).unwrap_or(&[0; 16]));
        }
        out
    }
}

/// Issues a clearance token valid for `ttl_seconds` from `now`, for a solved challenge of
/// `difficulty` bits.
pub fn issue_clearance(
    keys: &HmacKeys,
    binding: &Binding,
    now: u64,
    ttl_seconds: u32,
    difficulty: u8,
) -> String {
    let mut p = header(&keys.current);
    p.extend_from_slice(&binding.0);
    p.extend_from_slice(&now.to_be_bytes());
    p.extend_from_slice(&now.saturating_add(u64::from(ttl_seconds)).to_be_bytes());
    p.push(difficulty);
    seal(&keys.current, DOMAIN_CLEARANCE, &p)
}

/// A verified clearance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedClearance {
    /// Unix seconds it expires at.
    pub expires_at: u64,
    /// The difficulty of the challenge solved to earn it.
    pub difficulty: u8,
}

/// Verifies a clearance token for this binding at `now` (± [`CLOCK_SKEW_SECONDS`]).
pub fn verify_clearance(
    keys: &HmacKeys,
    token: &[u8],
    binding: &Binding,
    now: u64,
) -> Result<VerifiedClearance, TokenError> {
    let rest = open(keys, DOMAIN_CLEARANCE, token)?;
    let mut r = Reader(&rest);
    let bound: [u8; 16] = r.array()?;
    let (issued_at, expires_at) = (r.u64()?, r.u64()?);
    let difficulty = r.u8()?;
    if !r.0.is_empty() {
        return Err(TokenError::Malformed);
    }
    if bound != binding.0 {
        return Err(TokenError::WrongBinding);
    }
    if issued_at > now.saturating_add(CLOCK_SKEW_SECONDS)
        || now > expires_at.saturating_add(CLOCK_SKEW_SECONDS)
    {
        return Err(TokenError::Expired);
    }
    Ok(VerifiedClearance {
        expires_at,
        difficulty,
    })
}

/// The `set-cookie` value for a clearance token. Over HTTPS: the `__Host-` prefix (this host
/// only, `Secure`, `Path=/`, no `Domain`), `HttpOnly`, `SameSite=Lax`, `Max-Age` = the
/// clearance lifetime. Over plain HTTP browsers drop `Secure` cookies, so the cookie is
/// [`crate::PLAIN_HTTP_CLEARANCE_COOKIE`] without `Secure` (adapters accept that name only on
/// plain-HTTP requests).
pub fn clearance_set_cookie(token: &str, ttl_seconds: u32, https: bool) -> String {
    if https {
        format!(
            "{CLEARANCE_COOKIE}={token}; Max-Age={ttl_seconds}; Path=/; Secure; HttpOnly; SameSite=Lax"
        )
    } else {
        format!(
            "{PLAIN_HTTP_CLEARANCE_COOKIE}={token}; Max-Age={ttl_seconds}; Path=/; HttpOnly; SameSite=Lax"
        )
    }
}

/// What a challenge asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeParams<'a> {
    /// The client's binding.
    pub binding: Binding,
    /// Randomness from the caller.
    pub nonce: [u8; 16],
    /// Unix seconds.
    pub now: u64,
    /// Seconds the challenge may be solved in.
    pub ttl_seconds: u32,
    /// Leading zero bits required (1..=32).
    pub difficulty: u8,
    /// Where to send the client after it is solved (a safe relative path).
    pub return_path: &'a str,
}

/// Issues a challenge token.
pub fn issue_challenge(keys: &HmacKeys, c: &ChallengeParams<'_>) -> Result<String, ChallengeError> {
    if !is_safe_return_path(c.return_path) {
        return Err(ChallengeError::UnsafeReturnPath);
    }
    if !(1..=32).contains(&c.difficulty) {
        return Err(ChallengeError::BadDifficulty);
    }
    let path_len =
        u16::try_from(c.return_path.len()).map_err(|_| ChallengeError::UnsafeReturnPath)?;
    let mut p = header(&keys.current);
    p.extend_from_slice(&c.binding.0);
    p.extend_from_slice(&c.nonce);
    p.extend_from_slice(&c.now.saturating_add(u64::from(c.ttl_seconds)).to_be_bytes());
    p.push(c.difficulty);
    p.extend_from_slice(&path_len.to_be_bytes());
    p.extend_from_slice(c.return_path.as_bytes());
    Ok(seal(&keys.current, DOMAIN_CHALLENGE, &p))
}

/// A verified, solved challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolvedChallenge {
    /// The signed return path.
    pub return_path: String,
    /// The difficulty that was solved.
    pub difficulty: u8,
}

/// Verifies a solved challenge without server state: the MAC, the expiry, the binding, then
/// the work (one SHA-256).
pub fn verify_solution(
    keys: &HmacKeys,
    token: &[u8],
    counter: u64,
    binding: &Binding,
    now: u64,
) -> Result<SolvedChallenge, TokenError> {
    let rest = open(keys, DOMAIN_CHALLENGE, token)?;
    let mut r = Reader(&rest);
    let bound: [u8; 16] = r.array()?;
    let _nonce: [u8; 16] = r.array()?;
    let expires_at = r.u64()?;
    let difficulty = r.u8()?;
    let path_len = usize::from(u16::from_be_bytes(r.array()?));
    let return_path = std::str::from_utf8(r.bytes(path_len)?).map_err(|_| TokenError::Malformed)?;
    if !r.0.is_empty() || !is_safe_return_path(return_path) {
        return Err(TokenError::Malformed);
    }
    if bound != binding.0 {
        return Err(TokenError::WrongBinding);
    }
    if now > expires_at.saturating_add(CLOCK_SKEW_SECONDS) {
        return Err(TokenError::Expired);
    }
    if !work_reaches(token, counter, difficulty) {
        return Err(TokenError::InsufficientWork);
    }
    Ok(SolvedChallenge {
        return_path: return_path.to_owned(),
        difficulty,
    })
}

/// The difficulty a challenge token asks for, read without verifying it (for pages and
/// solvers; the server verifies on the way back).
pub fn challenge_difficulty(token: &str) -> Option<u8> {
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let kid_len = usize::from(*payload.get(1)?);
    payload.get(2 + kid_len + 16 + 16 + 8).copied()
}

/// Leading zero bits of `SHA-256(token ":" counter)`.
pub fn work_bits(token: &[u8], counter: u64) -> u32 {
    let mut h = Sha256::new();
    h.update(token);
    h.update(b":");
    h.update(counter.to_string().as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let mut bits = 0;
    for byte in digest {
        bits += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    bits
}

fn work_reaches(token: &[u8], counter: u64, difficulty: u8) -> bool {
    work_bits(token, counter) >= u32::from(difficulty)
}

/// The native solver: the first counter from 0 whose hash reaches the token's difficulty,
/// trying at most `max_tries` counters.
pub fn solve(token: &str, max_tries: u64) -> Option<u64> {
    let difficulty = challenge_difficulty(token)?;
    (0..max_tries).find(|&c| work_reaches(token.as_bytes(), c, difficulty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_795_392_000;

    fn keys() -> HmacKeys {
        HmacKeys::new(("k2", &[2; 32]), Some(("k1", &[1; 32]))).unwrap()
    }

    fn binding() -> Binding {
        Binding::of(
            Some("81.62.10.4".parse().unwrap()),
            b"Mozilla/5.0 Chrome/131",
            "shop.example",
        )
    }

    fn params(return_path: &str, difficulty: u8) -> ChallengeParams<'_> {
        ChallengeParams {
            binding: binding(),
            nonce: [9; 16],
            now: NOW,
            ttl_seconds: 300,
            difficulty,
            return_path,
        }
    }

    #[test]
    fn binding_covers_the_network_not_the_host() {
        let ua = b"UA";
        let a = Binding::of(Some("81.62.10.4".parse().unwrap()), ua, "shop.example");
        assert_eq!(
            a,
            Binding::of(Some("81.62.10.200".parse().unwrap()), ua, "SHOP.example")
        );
        assert_ne!(
            a,
            Binding::of(Some("81.62.11.4".parse().unwrap()), ua, "shop.example")
        );
        assert_ne!(
            a,
            Binding::of(Some("81.62.10.4".parse().unwrap()), b"UA2", "shop.example")
        );
        assert_ne!(
            a,
            Binding::of(Some("81.62.10.4".parse().unwrap()), ua, "other.example")
        );
        let v6 = Binding::of(Some("2001:db8:1:2::1".parse().unwrap()), ua, "h");
        assert_eq!(
            v6,
            Binding::of(Some("2001:db8:1:ffff::9".parse().unwrap()), ua, "h")
        );
        assert_eq!(
            Binding::of(
                Some("::ffff:81.62.10.4".parse().unwrap()),
                ua,
                "shop.example"
            ),
            a
        );
    }

    #[test]
    fn return_paths() {
        for ok in ["/", "/checkout?step=2", "/a/b#c"] {
            assert!(is_safe_return_path(ok), "{ok}");
        }
        for bad in [
            "",
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "evil",
            "/a b",
            "/\"><script>",
            "/\u{e9}",
        ] {
            assert!(!is_safe_return_path(bad), "{bad}");
        }
        assert_eq!(
            issue_challenge(&keys(), &params("//evil", 8)),
            Err(ChallengeError::UnsafeReturnPath)
        );
        assert_eq!(
            issue_challenge(&keys(), &params("/", 0)),
            Err(ChallengeError::BadDifficulty)
        );
    }

    #[test]
    fn challenge_round_trip() {
        let token = issue_challenge(&keys(), &params("/checkout", 8)).unwrap();
        assert_eq!(challenge_difficulty(&token), Some(8));
        let counter = solve(&token, 1 << 20).unwrap();
        let solved =
            verify_solution(&keys(), token.as_bytes(), counter, &binding(), NOW + 10).unwrap();
        assert_eq!(
            solved,
            SolvedChallenge {
                return_path: "/checkout".into(),
                difficulty: 8
            }
        );
        let other = Binding::of(
            Some("81.62.11.4".parse().unwrap()),
            b"Mozilla/5.0 Chrome/131",
            "shop.example",
        );
        assert_eq!(
            verify_solution(&keys(), token.as_bytes(), counter, &other, NOW),
            Err(TokenError::WrongBinding)
        );
        assert_eq!(
            verify_solution(
                &keys(),
                token.as_bytes(),
                counter,
                &binding(),
                NOW + 300 + CLOCK_SKEW_SECONDS + 1
            ),
            Err(TokenError::Expired)
        );
        let lazy = (0..).find(|&c| work_bits(token.as_bytes(), c) < 8).unwrap();
        assert_eq!(
            verify_solution(&keys(), token.as_bytes(), lazy, &binding(), NOW),
            Err(TokenError::InsufficientWork)
        );
        // A clearance token is not a challenge token, and the reverse.
        let clearance = issue_clearance(&keys(), &binding(), NOW, 3600, 8);
        assert!(verify_solution(&keys(), clearance.as_bytes(), 0, &binding(), NOW).is_err());
        assert!(verify_clearance(&keys(), token.as_bytes(), &binding(), NOW).is_err());
    }

    #[test]
    fn cookie_attributes() {
        let c = clearance_set_cookie("tok", 3600, true);
        assert!(c.starts_with("__Host-signalbox-clearance=tok;"));
        for attr in [
            "Max-Age=3600",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
        ] {
            assert!(c.contains(attr), "{attr}");
        }
        assert!(!c.contains("Domain"));
        let plain = clearance_set_cookie("tok", 3600, false);
        assert!(plain.starts_with("signalbox-clearance=tok;"), "{plain}");
        assert!(
            !plain.contains("Secure") && plain.contains("HttpOnly"),
            "{plain}"
        );
    }

    #[test]
    fn binding_ignores_the_port_and_keeps_ipv6_hosts() {
        assert_eq!(host_of("shop.example:8443"), "shop.example");
        assert_eq!(host_of("shop.example"), "shop.example");
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
        assert_eq!(host_of("a:b"), "a:b");
        let ip = Some("81.62.10.4".parse().unwrap());
        assert_eq!(
            Binding::of(ip, b"UA", "shop.example:10443"),
            Binding::of(ip, b"UA", "SHOP.example")
        );
    }

    #[test]
    fn no_address_binds_apart_from_every_address() {
        let none = Binding::of(None, b"UA", "shop.example");
        assert_eq!(none, Binding::of(None, b"UA", "shop.example"));
        for ip in ["0.0.0.0", "0.0.0.1", "::", "81.62.10.4"] {
            assert_ne!(
                none,
                Binding::of(Some(ip.parse().unwrap()), b"UA", "shop.example"),
                "{ip}"
            );
        }
    }

    #[test]
    fn clearance_records_its_difficulty() {
        let token = issue_clearance(&keys(), &binding(), NOW, 3600, 18);
        let verified = verify_clearance(&keys(), token.as_bytes(), &binding(), NOW).unwrap();
        assert_eq!(
            verified,
            VerifiedClearance {
                expires_at: NOW + 3600,
                difficulty: 18
            }
        );
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert_eq!(
            HmacKeys::new(("k", &[1; 8]), None).unwrap_err(),
            KeyError::TooShort
        );
        assert_eq!(
            HmacKeys::new(("bad kid", &[1; 32]), None).unwrap_err(),
            KeyError::BadKid
        );
        assert_eq!(
            HmacKeys::new(("k", &[1; 32]), Some(("k", &[2; 32]))).unwrap_err(),
            KeyError::SameKid
        );
        // An operator who swaps `kid:secret` gets an error that never shows the secret.
        let secret = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
        let err = HmacKeys::new((secret, b"k1"), None).unwrap_err();
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("QUFB"), "{shown}");
        }
        let printed = format!("{:?}", HmacKeys::new(("k", &[0x41; 32]), None).unwrap());
        assert!(
            !printed.contains("65") && printed.contains("redacted"),
            "{printed}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A clearance verifies only with its binding, only with the current or previous
        /// secret, and only between issue - skew and expiry + skew.
        #[test]
        fn clearance_never_verifies_out_of_bounds(
            ip in any::<u32>(), other_ip in any::<u32>(),
            ua in proptest::collection::vec(any::<u8>(), 0..40),
            issued in 1_000_000u64..2_000_000_000, ttl in 1u32..100_000, offset in -200_000i64..200_000,
            secret in proptest::collection::vec(any::<u8>(), 32..48),
            signer in 0usize..3,
        ) {
            let b = Binding::of(Some(std::net::Ipv4Addr::from(ip).into()), &ua, "h");
            let other = Binding::of(Some(std::net::Ipv4Addr::from(other_ip).into()), &ua, "h");
            let stranger = HmacKeys::new(("k0", &secret), None).unwrap();
            let current = HmacKeys::new(("k2", &[2; 32]), None).unwrap();
            let previous = HmacKeys::new(("k1", &[1; 32]), None).unwrap();
            let verifier = keys(); // current k2, previous k1
            let issuer = [&current, &previous, &stranger][signer];
            let token = issue_clearance(issuer, &b, issued, ttl, 16);
            let now = issued.saturating_add_signed(offset);
            let result = verify_clearance(&verifier, token.as_bytes(), &b, now);
            let in_time = now + CLOCK_SKEW_SECONDS >= issued && now <= issued + u64::from(ttl) + CLOCK_SKEW_SECONDS;
            prop_assert_eq!(result.is_ok(), signer < 2 && in_time);
            if other != b {
                prop_assert!(verify_clearance(&verifier, token.as_bytes(), &other, now).is_err());
            }
            // A token signed with a secret of the right id but another value never verifies.
            let impostor = HmacKeys::new(("k2", &secret), None).unwrap();
            if secret != vec![2u8; 32] {
                let forged = issue_clearance(&impostor, &b, issued, ttl, 16);
                prop_assert_eq!(verify_clearance(&verifier, forged.as_bytes(), &b, now), Err(TokenError::BadMac));
            }
            // Any flipped byte breaks it.
            let mut tampered = token.into_bytes();
            let i = (issued as usize) % tampered.len();
            tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
            prop_assert!(verify_clearance(&verifier, &tampered, &b, now).is_err());
        }

        /// A solved challenge verifies for its binding once its work is done, never for another.
        #[test]
        fn solved_challenge_verifies_only_for_its_binding(
            ip in any::<u32>(), other_ip in any::<u32>(), nonce in any::<[u8; 16]>(), difficulty in 1u8..=8,
        ) {
            let b = Binding::of(Some(std::net::Ipv4Addr::from(ip).into()), b"ua", "h");
            let other = Binding::of(Some(std::net::Ipv4Addr::from(other_ip).into()), b"ua", "h");
            let token = issue_challenge(&keys(), &ChallengeParams { binding: b, nonce, now: NOW, ttl_seconds: 60, difficulty, return_path: "/" }).unwrap();
            let counter = solve(&token, 1 << 16).unwrap();
            prop_assert!(verify_solution(&keys(), token.as_bytes(), counter, &b, NOW).is_ok());
            if other != b {
                prop_assert_eq!(verify_solution(&keys(), token.as_bytes(), counter, &other, NOW), Err(TokenError::WrongBinding));
            }
        }

        /// Arbitrary bytes never verify and never panic.
        #[test]
        fn garbage_tokens_are_refused(token in proptest::collection::vec(any::<u8>(), 0..200), counter in any::<u64>()) {
            prop_assert!(verify_clearance(&keys(), &token, &binding(), NOW).is_err());
            prop_assert!(verify_solution(&keys(), &token, counter, &binding(), NOW).is_err());
        }
    }
}
