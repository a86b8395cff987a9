//! Replaying `signalbox eval` request lines through a filter `.wasm` in the in-process host,
//! reading each verdict from the filter's `x-signalbox-verdict` debug header.

use std::net::IpAddr;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::host::{Filter, Request};

/// The edge header names `signalbox eval` reads; replay configures the filter the same way so
/// the two can be diffed.
pub const EVAL_EDGE_HEADERS: &str = r#"{"trusted":true,"country":"cf-ipcountry","asn":"x-signalbox-edge-asn","tls_fingerprint":"x-signalbox-edge-ja4","user":"x-signalbox-edge-user"}"#;

/// Turns a plugin configuration into one replay can read verdicts from: the debug verdict
/// header on, the edge headers of `signalbox eval`, and optionally another (unsigned) bundle.
pub fn replay_config(config: &[u8], bundle: Option<Value>) -> Result<Vec<u8>> {
    let mut cfg: Value =
        serde_json::from_slice(config).context("plugin configuration is not JSON")?;
    let obj = cfg
        .as_object_mut()
        .context("plugin configuration is not an object")?;
    obj.insert("debug_verdict_header".into(), Value::Bool(true));
    obj.insert(
        "edge_headers".into(),
        serde_json::from_str(EVAL_EDGE_HEADERS)?,
    );
    if let Some(b) = bundle {
        obj.insert("bundle".into(), b);
        obj.insert("allow_unsigned".into(), Value::Bool(true));
    }
    Ok(serde_json::to_vec(&cfg)?)
}

/// A request line as Envoy would hand it to the filter: `host` becomes `:authority`, the id
/// becomes `x-request-id`, the user key the eval user header, the client IP `source.address`.
pub fn request_from_line(line: &Value) -> Result<(String, Request)> {
    let id = line["id"].as_str().context("id")?.to_owned();
    let method = line["method"].as_str().context("method")?;
    let path = line["path"].as_str().context("path")?;
    let ip: IpAddr = line["client_ip"]
        .as_str()
        .context("client_ip")?
        .parse()
        .context("client_ip")?;
    let mut authority = b"shop.example".to_vec();
    let mut rest = Vec::new();
    for pair in line["headers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = pair
            .get(0)
            .and_then(Value::as_str)
            .context("header name")?
            .to_ascii_lowercase();
        let value = match pair.get(1) {
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(Value::Array(bytes)) => bytes
                .iter()
                .map(|b| b.as_u64().unwrap_or(0) as u8)
                .collect(),
            _ => Vec::new(),
        };
        if name == "host" || name == ":authority" {
            authority = value;
        } else {
            rest.push((name, value));
        }
    }
    // The line's scheme (`https` unless it says `http`), as Envoy would give it.
    let scheme = line["scheme"].as_str().unwrap_or("https");
    let mut headers = vec![
        (":method".to_owned(), method.as_bytes().to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":authority".to_owned(), authority),
        (":scheme".to_owned(), scheme.as_bytes().to_vec()),
        ("x-request-id".to_owned(), id.clone().into_bytes()),
    ];
    headers.extend(rest);
    if let Some(user) = line["user"].as_str() {
        headers.push(("x-signalbox-edge-user".to_owned(), user.as_bytes().to_vec()));
    }
    let source_address = match ip {
        IpAddr::V4(a) => format!("{a}:40000"),
        IpAddr::V6(a) => format!("[{a}]:40000"),
    };
    Ok((
        id,
        Request {
            headers,
            body: Vec::new(),
            source_address,
            upstream_status: 200,
            ..Request::default()
        },
    ))
}

/// Replays one line; returns the verdict line exactly as the filter wrote it (so it diffs
/// cleanly against `signalbox eval`).
pub fn replay_line_text(filter: &mut Filter, line: &Value) -> Result<String> {
    let (id, request) = request_from_line(line)?;
    let response = filter.request(&request)?;
    let header = response
        .header("x-signalbox-verdict")
        .with_context(|| format!("{id}: no verdict header on the reply"))?;
    Ok(String::from_utf8_lossy(header).into_owned())
}

/// Replays one line; returns the verdict line parsed.
pub fn replay_line(filter: &mut Filter, line: &Value) -> Result<Value> {
    Ok(serde_json::from_str(&replay_line_text(filter, line)?)?)
}
