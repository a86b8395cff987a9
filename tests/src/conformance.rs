//! The scenario cases (`tests/scenarios/`) as every runner sees them: loaded once, each with
//! its bundle resolved to the JSON an edge receives (list and declared-bot includes inlined),
//! and the checks a runner's observation must pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use signalbox_test_kit::cases::{BundleRef, Case};

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::root;

/// A case ready to run anywhere.
#[derive(Debug, Clone)]
pub struct LoadedCase {
    /// Its name (the file name without extension unless it says otherwise).
    pub name: String,
    /// The case.
    pub case: Case,
    /// Its bundle as edges receive it.
    pub bundle: Value,
    /// A stable key for that bundle (runners share one proxy per bundle).
    pub bundle_key: String,
}

/// Reads a YAML or JSON file.
fn read_value(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Inlines a bundle's includes (`lists.*.include`, `crawlers.declared.include`) relative to
/// `base`, as `signalbox policy build` does.
pub fn resolve_includes(mut bundle: Value, base: &Path) -> Result<Value> {
    if let Some(lists) = bundle.get_mut("lists").and_then(Value::as_object_mut) {
        for list in lists.values_mut() {
            if let Some(rel) = list.get("include").and_then(Value::as_str) {
                *list = read_value(&base.join(rel))?;
            }
        }
    }
    if let Some(declared) = bundle
        .get_mut("crawlers")
        .and_then(|c| c.get_mut("declared"))
        && let Some(rel) = declared.get("include").and_then(Value::as_str)
    {
        *declared = read_value(&base.join(rel))?;
    }
    Ok(bundle)
}

/// A bundle file, includes inlined.
pub fn bundle_file(path: &Path) -> Result<Value> {
    resolve_includes(read_value(path)?, path.parent().unwrap_or(Path::new(".")))
}

/// Every case of `tests/scenarios/cases` (golden and inline bundles) and
/// `tests/scenarios/default` (the real default bundle), sorted by directory and name.
pub fn load_cases() -> Result<Vec<LoadedCase>> {
    let default_bundle = root().join("policy/examples/default.yaml");
    let mut out = Vec::new();
    for (dir, fallback) in [
        ("tests/scenarios/cases", None),
        ("tests/scenarios/default", Some(&default_bundle)),
    ] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "yaml" | "yml")
                )
            })
            .collect();
        paths.sort();
        for path in paths {
            let case: Case = serde_json::from_value(read_value(&path)?)
                .with_context(|| format!("{}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            let (bundle, bundle_key) = match (&case.bundle, fallback) {
                (Some(BundleRef::Path(rel)), _) => {
                    let file = base.join(rel);
                    (bundle_file(&file)?, file.display().to_string())
                }
                (Some(BundleRef::Inline(map)), _) => (
                    resolve_includes(Value::Object(map.clone()), base)?,
                    path.display().to_string(),
                ),
                (None, Some(file)) => (bundle_file(file)?, file.display().to_string()),
                (None, None) => bail!("{}: names no bundle", path.display()),
            };
            let name = case.name.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            out.push(LoadedCase {
                name: format!("{dir}/{name}"),
                case,
                bundle,
                bundle_key,
            });
        }
    }
    Ok(out)
}

/// What one runner did with every case: ran and agreed, skipped (with the case's reason),
/// or failed (with why).
#[derive(Debug, Default)]
pub struct Tally {
    /// Cases that ran and agreed.
    pub agreed: usize,
    /// Cases skipped with a reason the case gives.
    pub skipped: BTreeMap<String, String>,
    /// Failures: case → what went wrong.
    pub failed: BTreeMap<String, String>,
}

impl Tally {
    /// Records a skip: allowed only when the case lists this runner with a reason.
    pub fn skip(&mut self, case: &LoadedCase, runner: &str, why_here: &str) {
        match case.case.skip.get(runner) {
            Some(reason) => {
                self.skipped.insert(case.name.clone(), reason.clone());
            }
            None => {
                self.failed.insert(
                    case.name.clone(),
                    format!("{runner} cannot run it ({why_here}) and the case lists no skip reason for {runner}"),
                );
            }
        }
    }

    /// Records a result.
    pub fn result(&mut self, case: &LoadedCase, problems: Vec<String>) {
        if problems.is_empty() {
            self.agreed += 1;
        } else {
            self.failed.insert(case.name.clone(), problems.join("; "));
        }
    }
}

/// A stub score cache for real proxies (Envoy, the edge workers): a loopback HTTP/1.1 server that answers every call
/// with the current case's `remote` (200, JSON), or 503 when the case has none.
pub struct StubCache {
    /// Its loopback port.
    pub port: u16,
    answer: Arc<Mutex<Option<Vec<u8>>>>,
}

impl StubCache {
    /// Starts it on a free loopback port.
    pub fn start() -> Result<StubCache> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let answer: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let current = Arc::clone(&answer);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    }
                }
                let body = current.lock().map(|b| b.clone()).unwrap_or_default();
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("503 Service Unavailable", b"no context".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Ok(StubCache { port, answer })
    }

    /// Answers with `case`'s `remote` from now on.
    pub fn serve(&self, case: &LoadedCase) {
        let answer = case
            .case
            .remote
            .as_ref()
            .and_then(|r| serde_json::to_vec(r).ok());
        if let Ok(mut current) = self.answer.lock() {
            *current = answer;
        }
    }
}

/// A case's request as a proxy behind one trusted load balancer receives it: its headers
/// (with `host` when it has none), the client address appended to `x-forwarded-for`, the
/// scheme in `x-forwarded-proto`, and the user in the trusted edge header when it has one.
pub fn proxied_headers(case: &LoadedCase) -> Vec<(String, Vec<u8>)> {
    let request = &case.case.request;
    let mut headers: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
        .collect();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        headers.insert(0, ("host".into(), b"shop.example".to_vec()));
    }
    if let Some(ip) = request.client_ip {
        headers.push(("x-forwarded-for".into(), ip.to_string().into_bytes()));
    }
    if let Some(user) = &request.user {
        headers.push(("x-signalbox-edge-user".into(), user.clone().into_bytes()));
    }
    let plain = request.scheme == Some(signalbox_test_kit::requests::Scheme::Http);
    headers.push((
        "x-forwarded-proto".into(),
        if plain {
            b"http".to_vec()
        } else {
            b"https".to_vec()
        },
    ));
    headers
}

/// The edge headers configuration runners use: trusted when the case has edge headers or a
/// user, else configured but untrusted (stripped, never read).
pub fn edge_headers_config(case: &LoadedCase) -> Value {
    let trusted = case.case.edge_headers.is_some() || case.case.request.user.is_some();
    serde_json::json!({"trusted": trusted, "country": "cf-ipcountry", "asn": "x-signalbox-edge-asn", "tls_fingerprint": "x-signalbox-edge-ja4", "user": "x-signalbox-edge-user"})
}
