//! From host data to the core's facts: which client-sent headers to strip, the client IP by
//! the configured mode (Envoy's `x-forwarded-for` semantics), the scheme, the facts with the
//! clearance verified, and what kind of client should be answered how.

use std::net::IpAddr;

use signalbox_policy::trust::{Binding, TokenError, VerifiedClearance, verify_clearance};
use signalbox_policy::{Clearance, Facts};

use crate::config::{ClientIpMode, ClientIpV1, Settings};

/// Prefix of every header Signalbox owns.
pub const PREFIX: &str = "x-signalbox-";

/// Request headers as the host gives them: lower-case names, raw values.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The names of client-sent headers to remove: every `x-signalbox-*` header except the edge
/// headers trusted on this listener (the edge in front sets those), and every edge header
/// configured but not trusted here.
pub fn headers_to_strip(headers: &Headers, settings: &Settings) -> Vec<String> {
    // Compared without allocating: most requests strip nothing.
    let mut names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| {
            let signalbox_owned = n
                .get(..PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX));
            (signalbox_owned && !settings.edge.names().any(|t| t.eq_ignore_ascii_case(n)))
                || settings
                    .untrusted_edge_headers
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(n))
        })
        .map(str::to_ascii_lowercase)
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
/// `route_sensitive`: the host's route is one of the configured sensitive route names.
pub fn facts(
    settings: &Settings,
    headers: Headers,
    ip: Option<IpAddr>,
    now: u64,
    route_sensitive: bool,
) -> Facts {
    let method = header(&headers, ":method")
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    let path = header(&headers, ":path")
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let https = is_https(&headers);
    let mut facts = Facts::from_parts(&method, &path, headers, ip, &settings.edge);
    facts.route_sensitive = route_sensitive;
    crate::subjects::apply(&settings.subjects, &mut facts);
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
