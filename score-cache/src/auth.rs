//! Bearer tokens and their scopes, from a file the operator writes:
//!
//! ```yaml
//! tokens:
//!   - name: edges                 # for logs and metrics; never the token
//!     sha256: 9f86d081884c7d65…   # hex SHA-256 of the token (`signalbox-cache token`)
//!     scopes: [read]
//!   - name: origin
//!     token_env: SIGNALBOX_ORIGIN_TOKEN   # or the token itself from the environment
//!     scopes: [ingest]
//!   - name: soc
//!     sha256: …
//!     scopes: [admin]
//!   - name: analysts            # the dashboard, `signalbox fleet`, `policy diff --log`
//!     sha256: …
//!     scopes: [view]
//! ```
//!
//! Scopes: `view` (people who look: every `GET`, nothing else), `read` (edges: `view`, and
//! what edges report: fleet reports, decision-log records, rate-bucket counts), `ingest`
//! (producers: events), `admin` (decisions, bundles, erasure; implies the others). The file holds digests, not tokens; a presented
//! token is hashed and compared with every digest in constant time (`subtle`), so neither the
//! comparison nor which entry matched shows in the timing.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// People who look: everything the API answers to `GET`, and nothing else.
    View,
    /// Edges: what `view` allows, and their reports (fleet, decision log, rate buckets).
    Read,
    /// Producers: events.
    Ingest,
    /// Operators: decisions, erasure, everything.
    Admin,
}

impl Scope {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::View => "view",
            Scope::Read => "read",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }
}

/// The scopes of one token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Whether they allow `wanted` (`admin` allows everything, `read` also `view`).
    pub fn allows(&self, wanted: Scope) -> bool {
        self.0.iter().any(|s| {
            *s == wanted || *s == Scope::Admin || (*s == Scope::Read && wanted == Scope::View)
        })
    }
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    digest: [u8; 32],
    scopes: Scopes,
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens(Vec<Entry>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|e| e.name.as_str()).collect();
        f.debug_tuple("Tokens").field(&names).finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    tokens: Vec<EntryV1>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryV1 {
    name: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    scopes: Vec<Scope>,
}

/// The SHA-256 of a token, hex (what the tokens file holds).
pub fn digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(bytes.get(2 * i..2 * i + 2)?).ok()?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Reads a tokens file (YAML or JSON); `env` looks up `token_env` variables.
    pub fn from_file(path: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::parse(&text, env).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses a tokens file's text.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let de = serde_norway::Deserializer::from_str(text);
        let file: FileV1 = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))?;
        let mut entries = Vec::new();
        for (i, e) in file.tokens.into_iter().enumerate() {
            let digest = match (&e.sha256, &e.token_env) {
                (Some(hex), None) => parse_hex(&hex.to_ascii_lowercase()).ok_or_else(|| {
                    anyhow::anyhow!("tokens[{i}].sha256: 64 hex digits (signalbox-cache token)")
                })?,
                (None, Some(var)) => {
                    let token = env(var)
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| {
                            anyhow::anyhow!("tokens[{i}].token_env: {var} is not set")
                        })?;
                    Sha256::digest(token.as_bytes()).into()
                }
                _ => anyhow::bail!("tokens[{i}]: give exactly one of sha256, token_env"),
            };
            if e.scopes.is_empty() {
                anyhow::bail!("tokens[{i}].scopes: at least one of view, read, ingest, admin");
            }
            entries.push(Entry {
                name: e.name,
                digest,
                scopes: Scopes(e.scopes),
            });
        }
        Ok(Tokens(entries))
    }

    /// One token with `scopes` (tests, and `serve --dev-token`).
    pub fn single(name: &str, token: &str, scopes: &[Scope]) -> Self {
        Tokens(vec![Entry {
            name: name.to_owned(),
            digest: Sha256::digest(token.as_bytes()).into(),
            scopes: Scopes(scopes.to_vec()),
        }])
    }

    /// Adds the entries of `other`.
    pub fn extend(&mut self, other: Tokens) {
        self.0.extend(other.0);
    }

    /// The scopes of a presented token; every entry is compared, in constant time.
    pub fn scopes_of(&self, presented: &str) -> Option<Scopes> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for e in &self.0 {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(e.scopes.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_come_from_digests_or_the_environment() {
        let file = format!(
            "tokens:\n  - name: edges\n    sha256: {}\n    scopes: [read]\n  - name: soc\n    token_env: SOC\n    scopes: [admin]\n",
            digest_hex("edge-secret")
        );
        let tokens =
            Tokens::parse(&file, |v| (v == "SOC").then(|| "soc-secret".to_owned())).unwrap();
        let edge = tokens.scopes_of("edge-secret").unwrap();
        assert!(edge.allows(Scope::Read) && !edge.allows(Scope::Admin));
        assert!(
            tokens
                .scopes_of("soc-secret")
                .unwrap()
                .allows(Scope::Ingest)
        );
        assert!(tokens.scopes_of("guess").is_none());
        assert!(edge.allows(Scope::View));
        let viewer = Tokens::parse(
            &format!(
                "tokens:\n  - {{name: analysts, sha256: {}, scopes: [view]}}\n",
                digest_hex("look")
            ),
            |_| None,
        )
        .unwrap()
        .scopes_of("look")
        .unwrap();
        assert!(viewer.allows(Scope::View));
        for more in [Scope::Read, Scope::Ingest, Scope::Admin] {
            assert!(!viewer.allows(more), "{more:?}");
        }
        let err =
            Tokens::parse("tokens:\n  - name: x\n    scopes: [read]\n", |_| None).unwrap_err();
        assert!(err.to_string().contains("tokens[0]"), "{err}");
        let err = Tokens::parse(
            "tokens:\n  - name: x\n    sha256: ab\n    scopes: [root]\n",
            |_| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("scopes"), "{err}");
    }
}
