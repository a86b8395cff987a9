//! The shape of every answer: local replies (block, throttle, challenge page / JSON / gRPC), the
//! headers a passed request carries to origin, and the debug verdict header.

use std::net::IpAddr;

use base64::Engine as _;
use signalbox_policy::Verdict;
use signalbox_policy::trust::HmacKeys;

use crate::Final;
use crate::config::Settings;
use crate::request::ClientKind;

/// A local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u32,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// For gRPC clients: the gRPC status to send instead.
    pub grpc_status: Option<i32>,
}

/// `json` and `text` build the body for API and browser clients; only the one used runs.
fn reply(
    status: u32,
    kind: ClientKind,
    json: impl FnOnce() -> serde_json::Value,
    text: impl FnOnce() -> String,
    request_id: &str,
) -> Reply {
    let (content_type, body) = match kind {
        ClientKind::Api | ClientKind::Grpc => ("application/json", json().to_string().into_bytes()),
        ClientKind::BrowserNavigation => ("text/plain; charset=utf-8", text().into_bytes()),
    };
    Reply {
        status,
        headers: vec![
            ("content-type".into(), content_type.into()),
            ("cache-control".into(), "no-store".into()),
            ("x-signalbox-request-id".into(), request_id.into()),
        ],
        body,
        grpc_status: None,
    }
}

/// 403 with the request id.
pub fn block_reply(kind: ClientKind, request_id: &str) -> Reply {
    let mut r = reply(
        403,
        kind,
        || serde_json::json!({"error": "blocked", "request_id": request_id}),
        || format!("Access denied.\nRequest id: {request_id}\n"),
        request_id,
    );
    if kind == ClientKind::Grpc {
        r.grpc_status = Some(7); // PERMISSION_DENIED
    }
    r
}

/// 429 with `retry-after`.
pub fn throttle_reply(kind: ClientKind, request_id: &str, retry_after: u32) -> Reply {
    let mut r = reply(
        429,
        kind,
        || serde_json::json!({"error": "throttled", "retry_after": retry_after, "request_id": request_id}),
        || format!("Too many requests. Retry in {retry_after} s.\nRequest id: {request_id}\n"),
        request_id,
    );
    r.headers
        .push(("retry-after".into(), retry_after.max(1).to_string()));
    if kind == ClientKind::Grpc {
        r.grpc_status = Some(8); // RESOURCE_EXHAUSTED
    }
    r
}

/// The challenge: the HTML page for browser navigations, JSON for everything else.
pub fn challenge_reply(
    kind: ClientKind,
    request_id: &str,
    page: &signalbox_policy::page::ChallengePage<'_>,
) -> Reply {
    let mut headers: Vec<(String, String)> = match kind {
        ClientKind::BrowserNavigation => signalbox_policy::page::html_headers(page.csp_nonce),
        ClientKind::Api | ClientKind::Grpc => signalbox_policy::page::json_headers(),
    }
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    headers.push(("x-signalbox-request-id".into(), request_id.into()));
    let body = match kind {
        ClientKind::BrowserNavigation => page.html(),
        ClientKind::Api | ClientKind::Grpc => page.json(),
    };
    Reply {
        status: 403,
        headers,
        body: body.into_bytes(),
        grpc_status: (kind == ClientKind::Grpc).then_some(7),
    }
}

/// The `x-signalbox-*` headers added to a request that passes: decision, level, request id and
/// the client (`x-signalbox-client: verified_bot;bot="googlebot";category=search_engine`, an
/// RFC 8941 item) always; score, reasons and the client IP when configured. `client_ip` is the
/// address the filter resolved (sent as `x-signalbox-client-ip` when configured and known).
/// `last` is the action the request ends with (in shadow mode a rate-limit refusal shows as
/// the shadow decision).
pub fn origin_headers(
    settings: &Settings,
    verdict: &Verdict,
    last: Final,
    request_id: &str,
    client_ip: Option<IpAddr>,
) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "x-signalbox-decision".to_owned(),
            last.decision.as_str().to_owned(),
        ),
        (
            "x-signalbox-level".to_owned(),
            verdict.level.as_str().to_owned(),
        ),
        ("x-signalbox-request-id".to_owned(), request_id.to_owned()),
        (
            "x-signalbox-client".to_owned(),
            verdict.client.header_value(),
        ),
    ];
    if let Some(shadow) = last.shadow_decision {
        out.push((
            "x-signalbox-shadow-decision".to_owned(),
            shadow.as_str().to_owned(),
        ));
    }
    if settings.origin_headers.score {
        out.push(("x-signalbox-score".to_owned(), verdict.score.to_string()));
    }
    if settings.origin_headers.reasons {
        let reasons: Vec<String> = verdict
            .reasons
            .iter()
            .map(|r| format!("{}={}", r.code.as_str(), r.points))
            .collect();
        out.push(("x-signalbox-reasons".to_owned(), reasons.join(",")));
    }
    if let Some(ip) = client_ip.filter(|_| settings.origin_headers.client_ip) {
        out.push(("x-signalbox-client-ip".to_owned(), ip.to_string()));
    }
    out
}

/// The whole verdict as one header value (JSON), for `debug_verdict_header`.
/// `last` is the action the request ends with (a rate-limit throttle shows here, not in the
/// verdict).
pub fn verdict_header(id: &str, verdict: &Verdict, last: Final) -> String {
    let mut line = signalbox_policy::VerdictLine::new(id, verdict);
    line.decision = last.decision;
    line.shadow_decision = last.shadow_decision;
    serde_json::to_string(&line).unwrap_or_default()
}

/// A nonce as URL-safe base64 (for CSP).
pub fn nonce_text(keys: &HmacKeys, input: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(keys.derive_nonce(input))
}
