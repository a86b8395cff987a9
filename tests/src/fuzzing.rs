//! Fuzzing the filter through the host: raw bytes → a request Envoy could hand the filter,
//! shared by the cargo-fuzz target (`tests/fuzz`) and the corpus replay that runs in CI
//! (`tests/tests/host_fuzz_corpus.rs`), so a corpus file means the same request in both.
//!
//! Layout: the first byte picks the method; the rest is split on NUL into the path, the
//! `source.address` value, the route name (empty: none), the body, then header name / value
//! pairs. Header names become lower-case token characters (what Envoy's codec lets through);
//! values keep every byte except CR, LF (HTTP cannot carry them) and NUL (the separator).

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::host::{Filter, Request, SharedData, VmOptions, compile};
use crate::replay::replay_config;

const METHODS: [&str; 7] = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"];

/// Decodes fuzz input into a request (never fails: every input is some request).
pub fn request_from_bytes(data: &[u8]) -> Request {
    let (first, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let method = METHODS
        .get(usize::from(first) % METHODS.len())
        .copied()
        .unwrap_or("GET");
    let mut fields = rest.split(|b| *b == 0);
    let mut next = || fields.next().unwrap_or_default().to_vec();
    let clean = |v: Vec<u8>| -> Vec<u8> {
        v.into_iter()
            .filter(|b| *b != b'\r' && *b != b'\n')
            .collect()
    };
    let path = clean(next());
    let source = String::from_utf8_lossy(&next()).into_owned();
    let route = String::from_utf8_lossy(&next()).into_owned();
    let body = next();
    let mut headers = vec![
        (":method".to_owned(), method.as_bytes().to_vec()),
        (
            ":path".to_owned(),
            if path.is_empty() { b"/".to_vec() } else { path },
        ),
        (":authority".to_owned(), b"shop.example".to_vec()),
    ];
    loop {
        let name = next();
        if name.is_empty() {
            break;
        }
        let name: String = name
            .iter()
            .map(|b| b.to_ascii_lowercase())
            .filter(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(b))
            .map(char::from)
            .collect();
        let value = clean(next());
        if !name.is_empty() {
            headers.push((name, value));
        }
    }
    Request {
        headers,
        body,
        source_address: source,
        upstream_status: 200,
        route_name: (!route.is_empty()).then_some(route),
    }
}

/// The filter as the fuzz target and the corpus replay run it: the golden bundle of
/// `filter/examples/plugin-config.json`, a sensitive route named `account`, a small rate-limit
/// keyspace, the debug verdict header on.
pub fn start_filter(engine: &wasmtime::Engine) -> Result<Filter> {
    let root = crate::root();
    let wasm = std::fs::read(root.join("target/wasm32-wasip1/wasm-release/signalbox_filter.wasm"))
        .context("build the filter: cargo build -p signalbox-filter --target wasm32-wasip1 --profile wasm-release")?;
    let module = compile(engine, &wasm)?;
    let example = std::fs::read(root.join("filter/examples/plugin-config.json"))?;
    let mut config: Value = serde_json::from_slice(&replay_config(&example, None)?)?;
    let fields = config
        .as_object_mut()
        .context("the plugin configuration is an object")?;
    fields.insert("sensitive_route_names".into(), json!(["account"]));
    fields.insert("rate_limit_slots".into(), json!(64));
    Filter::start(
        engine,
        &module,
        &VmOptions {
            plugin_config: serde_json::to_vec(&config)?,
            shared: SharedData::default(),
            ..VmOptions::default()
        },
    )
}

/// Runs one input; an error means the filter trapped (the VM failed) or the host refused it.
pub fn run_one(filter: &mut Filter, data: &[u8]) -> Result<()> {
    let request = request_from_bytes(data);
    filter.request(&request)?;
    if let Some(why) = filter.failure() {
        anyhow::bail!("the filter trapped on {request:?}: {why}");
    }
    Ok(())
}
