//! `policy keygen`, `policy sign` and `policy verify`: key files and envelopes on disk.
//!
//! Secret key file: `{"kid": "2026-11", "secret": "<base64 32-byte Ed25519 seed>"}`, mode 0600.
//! Trusted keys file: `{"keys": [{"kid": "2026-11", "public": "<base64 32 bytes>"}]}` — the
//! same shape the filter's plugin configuration takes.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use signalbox_policy::prepared;
use signalbox_policy::signing::{
    LoadContext, TrustedKeys, load_bundle, public_key_base64, sign as sign_bytes,
    signing_key_from_base64,
};

use crate::files;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyFile {
    kid: String,
    secret: String,
}

/// A trusted public key.
#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyEntry {
    kid: String,
    public: String,
}

/// A trusted-keys file.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    keys: Vec<PublicKeyEntry>,
}

pub fn keygen(kid: &str, secret_out: &Path, public_out: Option<&Path>) -> Result<ExitCode> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let secret = SecretKeyFile {
        kid: kid.to_owned(),
        secret: STANDARD.encode(seed),
    };
    let key = signing_key_from_base64(&secret.secret).context("seed")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(secret_out)
        .with_context(|| format!("creating {} (it must not exist)", secret_out.display()))?;
    file.write_all(serde_json::to_string_pretty(&secret)?.as_bytes())?;
    let public = public_key_base64(&key);
    if let Some(path) = public_out {
        let mut keys: KeysFile = if path.exists() {
            files::read_yaml_or_json(path)?
        } else {
            KeysFile::default()
        };
        if keys.keys.iter().any(|k| k.kid == kid) {
            bail!("{} already has a key {kid:?}", path.display());
        }
        keys.keys.push(PublicKeyEntry {
            kid: kid.to_owned(),
            public: public.clone(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&keys)?)?;
    }
    println!(
        "kid {kid}\npublic {public}\nsecret written to {}",
        secret_out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn sign(file: &Path, key_path: &Path, output: &Path) -> Result<ExitCode> {
    let secret: SecretKeyFile = files::read_yaml_or_json(key_path)?;
    let key = signing_key_from_base64(&secret.secret)
        .context("secret key file: not a base64 32-byte seed")?;
    let json = files::bundle_json(file)?;
    let policy = files::compile(file, &json)?;
    if policy.expires_at().is_none() {
        bail!("{}: a signed bundle must set expires_at", file.display());
    }
    let envelope = sign_bytes(&json, &secret.kid, &key);
    std::fs::write(output, serde_json::to_vec(&envelope)?)?;
    println!(
        "{}: revision {} signed with {}",
        output.display(),
        policy.revision(),
        secret.kid
    );
    Ok(ExitCode::SUCCESS)
}

/// `signalbox policy prepare`: verify, then write the prepared form.
pub fn prepare(
    file: &Path,
    keys_path: &Path,
    allow_unsigned: bool,
    now: u64,
    output: &Path,
) -> Result<ExitCode> {
    let keys = load_trusted(keys_path)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let ctx = LoadContext {
        now,
        active_revision: None,
        allow_unsigned,
    };
    let out = match prepared::prepare(&bytes, &keys, &ctx) {
        Ok(out) => out,
        Err(e) => {
            println!("{}: refused: {e}", file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let loaded = prepared::load_prepared(&out, &keys, &ctx)
        .context("the prepared form does not load back")?;
    std::fs::write(output, &out).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "{}: revision {}, sha256:{}, {} lists, {} bytes (from {} bytes){}",
        output.display(),
        loaded.policy.revision(),
        loaded.policy.digest_hex(),
        loaded.policy.lists().len(),
        out.len(),
        bytes.len(),
        loaded
            .signed_by
            .map(|kid| format!(", signed with {kid}"))
            .unwrap_or_else(|| ", unsigned".to_owned()),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn load_trusted(path: &Path) -> Result<TrustedKeys> {
    let file: KeysFile = files::read_yaml_or_json(path)?;
    Ok(TrustedKeys::from_base64(
        file.keys
            .iter()
            .map(|k| (k.kid.as_str(), k.public.as_str())),
    )?)
}

pub fn verify(
    file: &Path,
    keys_path: &Path,
    active_revision: Option<u64>,
    allow_unsigned: bool,
    now: u64,
) -> Result<ExitCode> {
    let keys = load_trusted(keys_path)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let ctx = LoadContext {
        now,
        active_revision,
        allow_unsigned,
    };
    let loaded = if bytes.starts_with(prepared::MAGIC) {
        prepared::load_prepared(&bytes, &keys, &ctx).map(|p| p.policy)
    } else {
        load_bundle(&bytes, &keys, &ctx)
    };
    match loaded {
        Ok(policy) => {
            let digest = policy.digest_hex();
            println!(
                "{}: ok, revision {}, sha256:{digest}",
                file.display(),
                policy.revision()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}: refused: {e}", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}
