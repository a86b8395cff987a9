//! The reserved verify path: the checks on its headers (same-site, no `Origin: null`), the
//! solution in the query or a small form body, and its replies.

use crate::reply::Reply;
use crate::request::{Headers, header};

/// Longest verify-request body accepted.
pub const MAX_VERIFY_BODY: usize = 4096;

/// A verify form: the challenge token and the counter, or why it is refused.
pub type Form = Result<(Vec<u8>, u64), VerifyRefusal>;

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
