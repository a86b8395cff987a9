//! File access for the CLI: YAML or JSON bundles, list includes, canonical JSON.
//!
//! A list in a bundle file may be `{ include: lists/hosting.json }`: the file (relative to the
//! bundle, JSON or YAML) holds the list itself (`source`, `licence`, `as_of`, `cidrs`); so may
//! `crawlers.declared` (the declared-bot patterns, `lists/declared-bots.json`). Large
//! real data stays out of the hand-written bundle, and `policy build` inlines it, so the wire
//! bundle is always one self-contained JSON document.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;
use signalbox_policy::Policy;
use signalbox_test_kit::cases::BundleRef;

/// Reads a YAML (`.yaml`, `.yml`) or JSON file into a value.
fn read_value(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    ) {
        serde_norway::from_str(&text).with_context(|| format!("parsing YAML {}", path.display()))
    } else {
        serde_json::from_str(&text).with_context(|| format!("parsing JSON {}", path.display()))
    }
}

/// Reads a YAML or JSON file into a typed value, naming the field on error.
pub fn read_yaml_or_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let value = read_value(path)?;
    serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))
}

/// Resolves `include`s of a bundle value relative to `base`.
fn resolve_includes(mut bundle: Value, base: &Path) -> Result<Value> {
    if let Some(lists) = bundle.get_mut("lists").and_then(Value::as_object_mut) {
        for (name, list) in lists.iter_mut() {
            let Some(include) = list.get("include") else {
                continue;
            };
            let Some(rel) = include.as_str() else {
                bail!("lists.{name}.include: must be a file path");
            };
            if list.as_object().is_some_and(|o| o.len() > 1) {
                bail!("lists.{name}: an included list takes no other fields");
            }
            let path = base.join(rel);
            *list = read_value(&path).with_context(|| format!("lists.{name}.include"))?;
        }
    }
    if let Some(declared) = bundle
        .get_mut("crawlers")
        .and_then(|c| c.get_mut("declared"))
        && let Some(include) = declared.get("include")
    {
        let Some(rel) = include.as_str() else {
            bail!("crawlers.declared.include: must be a file path");
        };
        if declared.as_object().is_some_and(|o| o.len() > 1) {
            bail!("crawlers.declared: an included pattern list takes no other fields");
        }
        let path = base.join(rel);
        *declared = read_value(&path).context("crawlers.declared.include")?;
    }
    Ok(bundle)
}

/// Canonical JSON (sorted keys, compact) of a bundle value.
fn canonical(value: &Value) -> Result<Vec<u8>> {
    // serde_json's map is ordered by key (no `preserve_order`), so this is canonical.
    Ok(serde_json::to_vec(value)?)
}

/// A bundle file (YAML or JSON, with includes) as canonical JSON bytes.
pub fn bundle_json(path: &Path) -> Result<Vec<u8>> {
    let base = path.parent().unwrap_or(Path::new("."));
    canonical(&resolve_includes(read_value(path)?, base)?)
}

/// Loads and validates a bundle file.
pub fn load_policy(path: &Path) -> Result<Policy> {
    compile(path, &bundle_json(path)?)
}

/// Validates the JSON of the bundle file at `path`, listing every error with its field path.
pub fn compile(path: &Path, json: &[u8]) -> Result<Policy> {
    Policy::from_json_slice(json).map_err(|e| {
        let lines: Vec<String> = e.field_errors().iter().map(|f| format!("  {f}")).collect();
        anyhow::anyhow!("{}: invalid bundle:\n{}", path.display(), lines.join("\n"))
    })
}

/// The policy a case names, with a cache key (its path, or the case's path for inline ones).
pub fn case_policy(case_path: &Path, reference: &BundleRef) -> Result<(PathBuf, Policy)> {
    let base = case_path.parent().unwrap_or(Path::new("."));
    match reference {
        BundleRef::Path(rel) => {
            let path = base.join(rel);
            let key = path.canonicalize().unwrap_or_else(|_| path.clone());
            Ok((key, load_policy(&path)?))
        }
        BundleRef::Inline(map) => {
            let json = canonical(&resolve_includes(Value::Object(map.clone()), base)?)?;
            let policy = Policy::from_json_slice(&json)
                .map_err(|e| anyhow::anyhow!("{}: inline bundle: {e}", case_path.display()))?;
            Ok((case_path.to_path_buf(), policy))
        }
    }
}

/// Non-empty lines of a text file.
pub fn lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}
