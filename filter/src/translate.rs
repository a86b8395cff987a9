//! Plain functions between host data and the core, unit-tested natively: header stripping,
//! client IP resolution, request facts, clearance, the shape of each local reply, origin
//! annotations, the verify endpoint's form and the masked decision log.

use std::net::IpAddr;

use base64::Engine as _;
use signalbox_policy::trust::{Binding, HmacKeys, TokenError, VerifiedClearance, verify_clearance};
use signalbox_policy::{Clearance, Decision, Facts, Verdict};

use crate::config::{ClientIpMode, ClientIpV1, Settings};

/// Prefix of every header Signalbox owns.
pub const PREFIX: &str = "x-signalbox-";
/// Longest verify-request body accepted.
pub const MAX_VERIFY_BODY: usize = 4096;

/// Request headers as the host gives them: lower-case names, raw values.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The names of client-sent headers to remove: every `x-signalbox-*` header except the edge
/// headers trusted on this listener (the edge in front sets those), and every edge header
/// configured but not trusted here.
pub fn headers_to_strip(headers: &Headers, settings: &Settings) -> Vec<String> {
    let mut names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .filter(|n| {
            (n.starts_with(PREFIX) && !settings.edge.names().any(|t| t == n))
                || settings.untrusted_edge_headers.contains(n)
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The header's first value.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Parses Envoy's `source.address` (`ip:port`, `[v6]:port`, or a bare address).
pub fn parse_source_address(value: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        // `[fe80::1%1]:0`: Envoy keeps the IPv6 zone; the policy has no use for it.
        let inside = rest.split(']').next()?;
        return inside.split('%').next()?.parse().ok();
    }
    text.rsplit_once(':')?.0.parse().ok()
}

/// The client IP: `source.address` by default; with `x_forwarded_for`, the entry
/// `trusted_hops` places from the right of all `x-forwarded-for` values (each trusted proxy
/// appends one), falling back to the source address when there are too few or it is not an
/// address. Never trusts more of the header than configured.
///
/// It reads the header as Envoy's connection manager does with `xff_num_trusted_hops`
/// (`Http::Utility::getLastAddressFromXFF`, `Network::Utility::parseInternetAddressNoThrow`):
/// repeated headers are one list (Envoy joins them with `,`, dropping empty ones); entries are
/// split on `,` only and trimmed of ` \t\f\v\n\r`; an entry is a bare IPv4 address or a bare
/// IPv6 address with an optional numeric zone (`fe80::1%2`, dropped here). An entry with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:80`) or in brackets is not an address to Envoy either, so
/// both fall back (to the peer, which is what `source` then is). Envoy also accepts an
/// interface name as zone (`fe80::1%eth0`) when the host has that interface; that depends on
/// the host, so here it is not an address. With `use_remote_address: true` Envoy has appended
/// one entry before any filter runs: see envoy/README.md for the `trusted_hops` to use.
pub fn client_ip(mode: &ClientIpV1, headers: &Headers, source: Option<IpAddr>) -> Option<IpAddr> {
    /// Envoy's `StringUtil::WhitespaceChars`.
    fn trim(v: &[u8]) -> &[u8] {
        let ws = |b: &u8| matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\n' | b'\r');
        let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
        let end = v.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
        v.get(start..end).unwrap_or_default()
    }
    /// `inet_pton(AF_INET)`, else `getaddrinfo(AI_NUMERICHOST, AF_INET6)` with a numeric zone.
    fn address(entry: &[u8]) -> Option<IpAddr> {
        let text = std::str::from_utf8(trim(entry)).ok()?;
        if let Ok(v4) = text.parse::<std::net::Ipv4Addr>() {
            return Some(IpAddr::V4(v4));
        }
        let (v6, zone) = match text.split_once('%') {
            Some((v6, zone)) => (v6, Some(zone)),
            None => (text, None),
        };
        if let Some(zone) = zone {
            // glibc: a decimal number up to u32::MAX (`+1`, ` 1`, `` are not).
            let numeric = !zone.is_empty() && zone.bytes().all(|b| b.is_ascii_digit());
            if !numeric || zone.parse::<u32>().is_err() {
                return None;
            }
        }
        v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
    }
    if mode.mode == ClientIpMode::SourceAddress {
        return source;
    }
    let entries: Vec<&[u8]> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, v)| trim(v))
        .filter(|v| !v.is_empty())
        .flat_map(|v| v.split(|&b| b == b','))
        .collect();
    let hops = usize::try_from(mode.trusted_hops).unwrap_or(usize::MAX);
    entries
        .len()
        .checked_sub(hops.saturating_add(1))
        .and_then(|i| entries.get(i))
        .and_then(|entry| address(entry))
        .or(source)
}

/// Whether the client reached us over HTTPS, as the browser sees it: `x-forwarded-proto`
/// (Envoy's connection manager sets it from the connection at an edge listener,
/// `use_remote_address: true`, and keeps a trusted proxy's value behind one), else `:scheme`.
/// It only chooses the clearance cookie's name and `Secure` flag: a client that lies about it
/// gets a cookie its browser drops, or a less protected one, and nothing else.
pub fn is_https(headers: &Headers) -> bool {
    let proto = header(headers, "x-forwarded-proto").or_else(|| header(headers, ":scheme"));
    proto.is_some_and(|p| {
        p.split(|&b| b == b',')
            .next()
            .is_some_and(|first| first.trim_ascii().eq_ignore_ascii_case(b"https"))
    })
}

/// Facts for the core, with the clearance verified when secrets are configured: the
/// `__Host-` cookie over HTTPS, the plain one over plain HTTP.
/// Takes the headers by value: they become `Facts::headers` (read them from there after).
pub fn facts(settings: &Settings, headers: Headers, ip: Option<IpAddr>, now: u64) -> Facts {
    let method = header(&headers, ":method")
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    let path = header(&headers, ":path")
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let https = is_https(&headers);
    let mut facts = Facts::from_parts(&method, &path, headers, ip, &settings.edge);
    if !https {
        facts.plain_http = true;
        facts.read_clearance(false);
    }
    facts.clearance = match (&facts.clearance, &settings.keys) {
        (Clearance::Presented(token), Some(keys)) => {
            let binding = binding_of(&facts);
            clearance_of(verify_clearance(keys, token, &binding, now))
        }
        (other, _) => other.clone(),
    };
    facts
}

/// What a presented clearance means. Only a forged or mangled one is a risk signal; a stale
/// one — expired, earned on another network, User-Agent or host, or under a retired secret —
/// is what a person's own old cookie looks like after a move, a browser update or a rotation,
/// so it counts as no cookie (the challenge then replaces it) and never pushes a challenge
/// into a block.
pub fn clearance_of(verified: Result<VerifiedClearance, TokenError>) -> Clearance {
    match verified {
        Ok(v) => Clearance::Valid {
            difficulty: v.difficulty,
        },
        Err(TokenError::BadMac | TokenError::Malformed) => Clearance::Invalid,
        Err(_) => Clearance::Absent,
    }
}

/// The client binding of a request.
pub fn binding_of(facts: &Facts) -> Binding {
    Binding::of(
        facts.client_ip,
        facts.header("user-agent").unwrap_or_default(),
        &facts.authority,
    )
}

/// How a client should be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A top-level browser navigation (GET/HEAD, accepts HTML, not XHR, not an upgrade).
    BrowserNavigation,
    /// gRPC.
    Grpc,
    /// Anything else: JSON.
    Api,
}

/// Classifies the request for the reply format. Never HTML to XHR, gRPC, non-GET or upgrades.
pub fn client_kind(headers: &Headers) -> ClientKind {
    let has = |name: &str, needle: &[u8]| {
        header(headers, name).is_some_and(|v| {
            v.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
        })
    };
    if has("content-type", b"application/grpc") {
        return ClientKind::Grpc;
    }
    let method = header(headers, ":method").unwrap_or_default();
    let navigation = (method == b"GET" || method == b"HEAD")
        && has("accept", b"text/html")
        && header(headers, "upgrade").is_none()
        && header(headers, "x-requested-with").is_none()
        && header(headers, "sec-fetch-mode").is_none_or(|m| m == b"navigate");
    if navigation {
        ClientKind::BrowserNavigation
    } else {
        ClientKind::Api
    }
}

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

fn reply(
    status: u32,
    kind: ClientKind,
    json: serde_json::Value,
    text: String,
    request_id: &str,
) -> Reply {
    let (content_type, body) = match kind {
        ClientKind::Api | ClientKind::Grpc => ("application/json", json.to_string().into_bytes()),
        ClientKind::BrowserNavigation => ("text/plain; charset=utf-8", text.into_bytes()),
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
        serde_json::json!({"error": "blocked", "request_id": request_id}),
        format!("Access denied.\nRequest id: {request_id}\n"),
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
        serde_json::json!({"error": "throttled", "retry_after": retry_after, "request_id": request_id}),
        format!("Too many requests. Retry in {retry_after} s.\nRequest id: {request_id}\n"),
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
pub fn origin_headers(
    settings: &Settings,
    verdict: &Verdict,
    request_id: &str,
    client_ip: Option<IpAddr>,
) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "x-signalbox-decision".to_owned(),
            verdict.decision.as_str().to_owned(),
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
    if let Some(shadow) = verdict.shadow_decision {
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
pub fn verdict_header(id: &str, verdict: &Verdict) -> String {
    serde_json::to_string(&signalbox_policy::VerdictLine::new(id, verdict)).unwrap_or_default()
}

/// Why a verify request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyRefusal {
    /// Not POST.
    Method,
    /// Body over [`MAX_VERIFY_BODY`].
    TooLarge,
    /// `sec-fetch-site` or `origin` says another site posted it.
    CrossSite,
    /// The form lacks `challenge` or `counter`.
    BadForm,
}

/// Checks a verify request's headers: POST, declared size, same-site.
pub fn check_verify_headers(headers: &Headers) -> Result<(), VerifyRefusal> {
    if header(headers, ":method") != Some(b"POST") {
        return Err(VerifyRefusal::Method);
    }
    let declared = header(headers, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_VERIFY_BODY) {
        return Err(VerifyRefusal::TooLarge);
    }
    if let Some(site) = header(headers, "sec-fetch-site")
        && !matches!(site, b"same-origin" | b"none")
    {
        return Err(VerifyRefusal::CrossSite);
    }
    if let Some(origin) = header(headers, "origin") {
        let host = origin
            .splitn(2, |&b| b == b':')
            .nth(1)
            .map(|r| r.trim_ascii_start())
            .unwrap_or_default();
        let host = host.strip_prefix(b"//").unwrap_or(host);
        let authority = header(headers, ":authority")
            .or_else(|| header(headers, "host"))
            .unwrap_or_default();
        if origin == b"null" || !host.eq_ignore_ascii_case(authority) {
            return Err(VerifyRefusal::CrossSite);
        }
    }
    Ok(())
}

/// The solution in the request's query (`/.signalbox/verify?challenge=…&counter=…`), as the
/// challenge page posts it; `None` when the query has neither field (the form body then
/// carries them).
pub fn verify_form_in_query(path: &str) -> Option<Result<(Vec<u8>, u64), VerifyRefusal>> {
    let query = path.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    let named = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    (named("challenge") || named("counter")).then(|| parse_verify_form(query.as_bytes()))
}

/// Parses `challenge=…&counter=…` (URL-encoded form).
pub fn parse_verify_form(body: &[u8]) -> Result<(Vec<u8>, u64), VerifyRefusal> {
    if body.len() > MAX_VERIFY_BODY {
        return Err(VerifyRefusal::TooLarge);
    }
    let (mut challenge, mut counter) = (None, None);
    for pair in body.split(|&b| b == b'&') {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (
                pair.get(..i).unwrap_or_default(),
                pair.get(i + 1..).unwrap_or_default(),
            ),
            None => (pair, &b""[..]),
        };
        match key {
            b"challenge" => challenge = Some(percent_decode(value)),
            b"counter" => {
                counter = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
            }
            _ => {}
        }
    }
    match (challenge, counter) {
        (Some(c), Some(n)) if !c.is_empty() => Ok((c, n)),
        _ => Err(VerifyRefusal::BadForm),
    }
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let hex = input
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// 303 to the signed return path, setting the clearance cookie.
pub fn verified_reply(return_path: &str, set_cookie: String) -> Reply {
    Reply {
        status: 303,
        headers: vec![
            ("location".into(), return_path.into()),
            ("set-cookie".into(), set_cookie),
            ("cache-control".into(), "no-store".into()),
        ],
        body: Vec::new(),
        grpc_status: None,
    }
}

/// A refused verify request.
pub fn verify_refused_reply(refusal: Option<VerifyRefusal>) -> Reply {
    let (status, why) = match refusal {
        Some(VerifyRefusal::Method) => (405, "method_not_allowed"),
        Some(VerifyRefusal::TooLarge) => (413, "too_large"),
        Some(VerifyRefusal::CrossSite) => (403, "cross_site"),
        Some(VerifyRefusal::BadForm) => (400, "bad_form"),
        None => (403, "challenge_failed"),
    };
    let mut headers = vec![
        ("content-type".into(), "application/json".into()),
        ("cache-control".into(), "no-store".into()),
    ];
    if status == 405 {
        headers.push(("allow".into(), "POST".into()));
    }
    Reply {
        status,
        headers,
        body: serde_json::json!({"error": why}).to_string().into_bytes(),
        grpc_status: None,
    }
}

/// The client IP with host bits cleared (/24 IPv4, /48 IPv6), for logs.
pub fn masked_ip(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let [x, y, z, _] = a.octets();
            format!("{x}.{y}.{z}.0/24")
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// A decision-log line's fields, in the (alphabetical) order the line has always had.
#[derive(serde::Serialize)]
struct DecisionLog<'a> {
    client: String,
    client_class: String,
    decision: &'static str,
    level: &'static str,
    method: &'a str,
    msg: &'static str,
    path: &'a str,
    reasons: Vec<LoggedReason<'a>>,
    request_id: &'a str,
    revision: u64,
    rules: Vec<&'a str>,
    score: u8,
    shadow_decision: Option<&'static str>,
}

#[derive(serde::Serialize)]
struct LoggedReason<'a> {
    code: &'a str,
    points: i16,
}

/// One structured decision-log line (non-pass verdicts), client IP masked; `client_class` is
/// the verdict's client as origin sees it in `x-signalbox-client`.
pub fn decision_log_line(request_id: &str, facts: &Facts, verdict: &Verdict) -> String {
    let line = DecisionLog {
        client: facts.client_ip.map_or_else(|| "-".to_owned(), masked_ip),
        client_class: verdict.client.header_value(),
        decision: verdict.decision.as_str(),
        level: verdict.level.as_str(),
        method: &facts.method,
        msg: "signalbox decision",
        path: facts.path.split('?').next().unwrap_or_default(),
        reasons: verdict
            .reasons
            .iter()
            .map(|r| LoggedReason {
                code: r.code.as_str(),
                points: r.points,
            })
            .collect(),
        request_id,
        revision: verdict.revision,
        rules: verdict.rules.iter().map(|r| &*r.id).collect(),
        score: verdict.score,
        shadow_decision: verdict.shadow_decision.map(Decision::as_str),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// A nonce as URL-safe base64 (for CSP).
pub fn nonce_text(keys: &HmacKeys, input: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(keys.derive_nonce(input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn settings_with(edge_headers: serde_json::Value) -> Settings {
        let cfg = serde_json::json!({
            "bundle": {"format_version": 1, "revision": 1, "min_engine_version": "0.1.0"},
            "allow_unsigned": true,
            "edge_headers": edge_headers
        });
        parse(cfg.to_string().as_bytes(), 1_795_392_000, |_| None).unwrap()
    }

    fn settings() -> Settings {
        settings_with(serde_json::json!(
            {"trusted": true, "country": "cf-ipcountry", "user": "x-signalbox-user"}
        ))
    }

    fn h(pairs: &[(&str, &[u8])]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn strips_client_signalbox_headers_but_keeps_configured_edge_ones() {
        let headers = h(&[
            ("x-signalbox-decision", b"pass"),
            ("X-Signalbox-Score", b"0"),
            ("x-signalbox-user", b"u1"),
            ("x-signalbox-edge-asn", b"1"),
            ("accept", b"*/*"),
        ]);
        assert_eq!(
            headers_to_strip(&headers, &settings()),
            [
                "x-signalbox-decision",
                "x-signalbox-edge-asn",
                "x-signalbox-score",
            ]
        );
    }

    #[test]
    fn untrusted_edge_headers_are_stripped_and_never_read() {
        let untrusted = settings_with(serde_json::json!(
            {"trusted": false, "country": "cf-ipcountry", "user": "x-auth-user"}
        ));
        let headers = h(&[
            (":method", b"GET"),
            (":path", b"/"),
            ("cf-ipcountry", b"KP"),
            ("X-Auth-User", b"vip"),
            ("x-signalbox-user", b"vip"),
        ]);
        assert_eq!(
            headers_to_strip(&headers, &untrusted),
            ["cf-ipcountry", "x-auth-user", "x-signalbox-user"]
        );
        // Even if a copy got through, the facts never read it: a client-sent user header can
        // never become a user key (and so never match a manual `allow` for that user).
        let f = facts(&untrusted, headers.clone(), "81.62.10.4".parse().ok(), 0);
        assert_eq!((f.user, f.country), (None, None));
        // With no edge headers configured nothing is read either (the core trusts none).
        let none = settings_with(serde_json::json!({}));
        let f = facts(&none, headers.clone(), "81.62.10.4".parse().ok(), 0);
        assert_eq!((f.user, f.country), (None, None));
        // Trusted on this listener: read.
        let trusted = settings_with(serde_json::json!(
            {"trusted": true, "country": "cf-ipcountry", "user": "x-auth-user"}
        ));
        assert_eq!(
            headers_to_strip(&headers, &trusted),
            ["x-signalbox-user"],
            "trusted names are kept"
        );
        let f = facts(&trusted, headers, "81.62.10.4".parse().ok(), 0);
        assert_eq!((f.user.as_deref(), f.country), (Some("vip"), Some(*b"KP")));
    }

    #[test]
    fn only_a_forged_clearance_is_a_risk_signal() {
        assert_eq!(
            clearance_of(Ok(VerifiedClearance {
                expires_at: 9,
                difficulty: 16
            })),
            Clearance::Valid { difficulty: 16 }
        );
        for forged in [TokenError::BadMac, TokenError::Malformed] {
            assert_eq!(clearance_of(Err(forged)), Clearance::Invalid);
        }
        for stale in [
            TokenError::Expired,
            TokenError::WrongBinding,
            TokenError::UnknownKey,
        ] {
            assert_eq!(clearance_of(Err(stale)), Clearance::Absent);
        }
    }

    #[test]
    fn https_as_the_browser_sees_it() {
        assert!(is_https(&h(&[("x-forwarded-proto", b"https")])));
        assert!(is_https(&h(&[(":scheme", b"https")])));
        assert!(!is_https(&h(&[
            ("x-forwarded-proto", b"http"),
            (":scheme", b"https")
        ])));
        assert!(!is_https(&h(&[(":scheme", b"http")])));
        assert!(!is_https(&h(&[])));
    }

    #[test]
    fn source_address_forms() {
        assert_eq!(
            parse_source_address(b"81.62.10.4:5555"),
            "81.62.10.4".parse().ok()
        );
        assert_eq!(
            parse_source_address(b"[2001:db8::1]:443"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(
            parse_source_address(b"2001:db8::1"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(
            parse_source_address(b"[fe80::1%1]:0"),
            "fe80::1".parse().ok(),
            "Envoy reports a zoned address from x-forwarded-for so"
        );
        assert_eq!(
            parse_source_address(b"[fe80::1%lo]:0"),
            "fe80::1".parse().ok()
        );
        assert_eq!(parse_source_address(b"\xff"), None);
        assert_eq!(parse_source_address(b"nonsense:1"), None);
    }

    #[test]
    fn x_forwarded_for_trusts_only_the_configured_hops() {
        let src = "10.0.0.1".parse().ok();
        let headers = h(&[
            ("x-forwarded-for", b"1.1.1.1, 2.2.2.2"),
            ("X-Forwarded-For", b"3.3.3.3"),
        ]);
        let mode = |hops| ClientIpV1 {
            mode: ClientIpMode::XForwardedFor,
            trusted_hops: hops,
        };
        assert_eq!(client_ip(&mode(0), &headers, src), "3.3.3.3".parse().ok());
        assert_eq!(client_ip(&mode(1), &headers, src), "2.2.2.2".parse().ok());
        assert_eq!(client_ip(&mode(2), &headers, src), "1.1.1.1".parse().ok());
        assert_eq!(
            client_ip(&mode(3), &headers, src),
            src,
            "too few entries: fall back"
        );
        assert_eq!(
            client_ip(&ClientIpV1::default(), &headers, src),
            src,
            "default ignores the header"
        );
        let spoofed = h(&[("x-forwarded-for", b"evil, 2.2.2.2")]);
        assert_eq!(client_ip(&mode(1), &spoofed, src), src);
    }

    /// `client_ip` with `x_forwarded_for` and `hops` on one `x-forwarded-for` value; the
    /// source is 10.0.0.1.
    fn xff(value: &[u8], hops: u32) -> Option<IpAddr> {
        let mode = ClientIpV1 {
            mode: ClientIpMode::XForwardedFor,
            trusted_hops: hops,
        };
        client_ip(
            &mode,
            &h(&[("x-forwarded-for", value)]),
            "10.0.0.1".parse().ok(),
        )
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn x_forwarded_for_ports_and_brackets_are_not_addresses_as_in_envoy() {
        // Envoy parses an entry without a port (inet_pton / numeric getaddrinfo): with one it
        // falls back to the peer, and so does the filter.
        let src = ip("10.0.0.1");
        assert_eq!(xff(b"1.2.3.4:5678", 0), src);
        assert_eq!(xff(b"1.2.3.4:5678, 5.6.7.8", 1), src);
        assert_eq!(xff(b"[2001:db8::1]:80", 0), src);
        assert_eq!(xff(b"[2001:db8::1]", 0), src);
        assert_eq!(xff(b"1.2.3.4, [2001:db8::1]:80, 5.6.7.8", 1), src);
        assert_eq!(xff(b"1.2.3.4, [2001:db8::1]:80, 5.6.7.8", 2), ip("1.2.3.4"));
        // Bare IPv6 is an address; `::1:80` is the IPv6 address ::0.1.0.128, not ::1 port 80.
        assert_eq!(xff(b"::1", 0), ip("::1"));
        assert_eq!(xff(b"::1:80", 0), ip("::0.1.0.128"));
        assert_eq!(xff(b"2001:DB8::A, 2001:db8::b", 1), ip("2001:db8::a"));
        assert_eq!(xff(b"::ffff:198.51.100.1", 0), ip("::ffff:198.51.100.1"));
    }

    #[test]
    fn x_forwarded_for_splits_trims_and_joins_as_envoy_does() {
        let src = ip("10.0.0.1");
        // Envoy trims " \t\f\v\n\r" around each entry (its HTTP/1 codec refuses \v and \f in a
        // header, but another host may pass them).
        assert_eq!(xff(b" 1.2.3.4 ,\t5.6.7.8\t", 1), ip("1.2.3.4"));
        assert_eq!(xff(b"1.2.3.4,\x0b5.6.7.8\x0c", 0), ip("5.6.7.8"));
        // Empty entries count as entries, and are not addresses.
        assert_eq!(xff(b"1.2.3.4,,5.6.7.8", 1), src);
        assert_eq!(xff(b"1.2.3.4,,5.6.7.8", 2), ip("1.2.3.4"));
        assert_eq!(xff(b"1.2.3.4, 5.6.7.8,", 0), src);
        assert_eq!(xff(b"1.2.3.4, 5.6.7.8,", 1), ip("5.6.7.8"));
        assert_eq!(xff(b",5.6.7.8", 1), src);
        assert_eq!(xff(b"", 0), src);
        // Repeated headers are one list; Envoy drops empty ones when it joins them.
        let mode = |hops| ClientIpV1 {
            mode: ClientIpMode::XForwardedFor,
            trusted_hops: hops,
        };
        let joined = h(&[
            ("x-forwarded-for", b"1.1.1.1"),
            ("x-forwarded-for", b""),
            ("x-forwarded-for", b" "),
            ("x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
        ]);
        assert_eq!(client_ip(&mode(1), &joined, src), ip("2.2.2.2"));
        assert_eq!(client_ip(&mode(2), &joined, src), ip("1.1.1.1"));
        assert_eq!(client_ip(&mode(3), &joined, src), src);
        let trailing_empty = h(&[("x-forwarded-for", b"1.1.1.1"), ("x-forwarded-for", b"")]);
        assert_eq!(client_ip(&mode(0), &trailing_empty, src), ip("1.1.1.1"));
        // No header, or too few entries for the hops: the source address (Envoy: the peer).
        assert_eq!(client_ip(&mode(0), &h(&[]), src), src);
        assert_eq!(client_ip(&mode(0), &h(&[]), None), None);
        assert_eq!(xff(b"1.2.3.4", 1), src);
        assert_eq!(xff(b"1.2.3.4", u32::MAX), src);
    }

    #[test]
    fn x_forwarded_for_addresses_are_what_inet_pton_and_getaddrinfo_accept() {
        let src = ip("10.0.0.1");
        for garbage in [
            &b"unknown"[..],
            b"_hidden",
            b"198.051.100.1",
            b"1.2.3",
            b"203.0.113.7.",
            b"0x7f.0.0.1",
            b"256.1.1.1",
            b"1.2.3.4%1",
            b"::ffff:1.2.3.04",
            b"12345::1",
            b"203.0.113.7\xa0",
            b"1.2.3.4 5.6.7.8",
        ] {
            assert_eq!(
                xff(garbage, 0),
                src,
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        assert_eq!(xff(b"0.0.0.0", 0), ip("0.0.0.0"));
        assert_eq!(xff(b"::", 0), ip("::"));
        assert_eq!(xff(b"1:2:3:4:5:6:7::", 0), ip("1:2:3:4:5:6:7:0"));
        // A numeric zone (decimal, at most u32::MAX) is accepted and dropped; an interface
        // name depends on the host's interfaces, so it is not an address here.
        assert_eq!(xff(b"fe80::1%1", 0), ip("fe80::1"));
        assert_eq!(xff(b"fe80::1%01", 0), ip("fe80::1"));
        assert_eq!(xff(b"2001:db8::1%4294967295", 0), ip("2001:db8::1"));
        for zone in [
            &b"fe80::1%"[..],
            b"fe80::1%4294967296",
            b"fe80::1%+1",
            b"fe80::1%-1",
            b"fe80::1% 1",
            b"fe80::1%1%2",
            b"fe80::1%eth0",
        ] {
            assert_eq!(xff(zone, 0), src, "{:?}", String::from_utf8_lossy(zone));
        }
    }

    #[test]
    fn reply_format_by_client() {
        let nav = h(&[(":method", b"GET"), ("accept", b"text/html,*/*")]);
        assert_eq!(client_kind(&nav), ClientKind::BrowserNavigation);
        let xhr = h(&[
            (":method", b"GET"),
            ("accept", b"text/html"),
            ("sec-fetch-mode", b"cors"),
        ]);
        assert_eq!(client_kind(&xhr), ClientKind::Api);
        let post = h(&[(":method", b"POST"), ("accept", b"text/html")]);
        assert_eq!(client_kind(&post), ClientKind::Api);
        let ws = h(&[
            (":method", b"GET"),
            ("accept", b"text/html"),
            ("upgrade", b"websocket"),
        ]);
        assert_eq!(client_kind(&ws), ClientKind::Api);
        let grpc = h(&[
            (":method", b"POST"),
            ("content-type", b"application/grpc+proto"),
        ]);
        assert_eq!(client_kind(&grpc), ClientKind::Grpc);
        let r = block_reply(ClientKind::Grpc, "rid");
        assert_eq!((r.status, r.grpc_status), (403, Some(7)));
        let t = throttle_reply(ClientKind::Api, "rid", 7);
        assert!(t.headers.contains(&("retry-after".into(), "7".into())));
        assert!(
            t.headers
                .contains(&("cache-control".into(), "no-store".into()))
        );
    }

    #[test]
    fn verify_request_checks() {
        let ok = h(&[
            (":method", b"POST"),
            (":authority", b"shop.example"),
            ("origin", b"https://shop.example"),
            ("sec-fetch-site", b"same-origin"),
        ]);
        assert_eq!(check_verify_headers(&ok), Ok(()));
        let get = h(&[(":method", b"GET")]);
        assert_eq!(check_verify_headers(&get), Err(VerifyRefusal::Method));
        let cross = h(&[
            (":method", b"POST"),
            (":authority", b"shop.example"),
            ("origin", b"https://evil.example"),
        ]);
        assert_eq!(check_verify_headers(&cross), Err(VerifyRefusal::CrossSite));
        // `Origin: null`: a sandboxed frame or a `no-referrer` page, on any site.
        let null = h(&[
            (":method", b"POST"),
            (":authority", b"shop.example"),
            ("origin", b"null"),
        ]);
        assert_eq!(check_verify_headers(&null), Err(VerifyRefusal::CrossSite));
        let site = h(&[(":method", b"POST"), ("sec-fetch-site", b"cross-site")]);
        assert_eq!(check_verify_headers(&site), Err(VerifyRefusal::CrossSite));
        let big = h(&[(":method", b"POST"), ("content-length", b"100000")]);
        assert_eq!(check_verify_headers(&big), Err(VerifyRefusal::TooLarge));
        assert_eq!(
            parse_verify_form(b"challenge=a.b&counter=42"),
            Ok((b"a.b".to_vec(), 42))
        );
        assert_eq!(
            parse_verify_form(b"challenge=a%2Eb&counter=1&x=y"),
            Ok((b"a.b".to_vec(), 1))
        );
        assert_eq!(parse_verify_form(b"counter=x"), Err(VerifyRefusal::BadForm));
        assert_eq!(
            verify_form_in_query("/.signalbox/verify?challenge=a%2Eb&counter=7"),
            Some(Ok((b"a.b".to_vec(), 7)))
        );
        assert_eq!(
            verify_form_in_query("/.signalbox/verify?counter=x"),
            Some(Err(VerifyRefusal::BadForm))
        );
        assert_eq!(verify_form_in_query("/.signalbox/verify"), None);
        assert_eq!(verify_form_in_query("/.signalbox/verify?utm=1"), None);
        assert_eq!(
            parse_verify_form(&[b'a'; 5000]),
            Err(VerifyRefusal::TooLarge)
        );
    }

    #[test]
    fn decision_log_lines_keep_their_format() {
        let example = include_bytes!("../examples/plugin-config.json");
        let settings = parse(example, 1_795_392_000, |_| None).unwrap();
        let headers = h(&[
            (":method", b"GET"),
            (":path", b"/signup?ref=x"),
            (":authority", b"shop.example"),
            ("user-agent", b"curl/8.5.0"),
        ]);
        let ip = "167.99.134.20".parse().ok();
        let facts = facts(&settings, headers, ip, 1_795_392_000);
        let verdict = settings.policy.decide(
            settings.policy.assess(&facts, 1_795_392_000),
            None,
            1_795_392_000,
        );
        assert!(!verdict.reasons.is_empty());
        // The line as it was first written (a serde_json::Value: keys sorted).
        let reasons: Vec<serde_json::Value> = verdict
            .reasons
            .iter()
            .map(|r| serde_json::json!({"code": r.code.as_str(), "points": r.points}))
            .collect();
        let expected = serde_json::json!({
            "msg": "signalbox decision",
            "request_id": "r-1",
            "decision": verdict.decision.as_str(),
            "shadow_decision": verdict.shadow_decision.map(Decision::as_str),
            "score": verdict.score,
            "level": verdict.level.as_str(),
            "reasons": reasons,
            "rules": verdict.rules.iter().map(|r| r.id.to_string()).collect::<Vec<_>>(),
            "revision": verdict.revision,
            "client": "167.99.134.0/24",
            "client_class": "automation",
            "method": "GET",
            "path": "/signup",
        })
        .to_string();
        assert_eq!(decision_log_line("r-1", &facts, &verdict), expected);
    }

    #[test]
    fn masks_ips() {
        assert_eq!(masked_ip("81.62.10.4".parse().unwrap()), "81.62.10.0/24");
        assert_eq!(
            masked_ip("2001:db8:1:2::1".parse().unwrap()),
            "2001:db8:1::/48"
        );
        assert_eq!(
            masked_ip("::ffff:81.62.10.4".parse().unwrap()),
            "81.62.10.0/24"
        );
    }
}
