//! What the engine knows about a request: facts an adapter extracts from its host, and the
//! remote context the score cache may add.

use std::net::IpAddr;

/// Names of the headers an edge in front of us (CDN, load balancer) sets with what it knows.
/// The default names none: a header is read only where the operator configured its name for
/// requests that really arrive through the edge that sets it (anywhere else a client can send
/// any header). An empty name matches no header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeHeaderNames {
    /// ISO 3166-1 alpha-2 country (Cloudflare's `cf-ipcountry` by default).
    pub country: String,
    /// Decimal AS number.
    pub asn: String,
    /// TLS fingerprint (JA3/JA4).
    pub tls_fingerprint: String,
    /// A user id set by a trusted authentication layer.
    pub user: String,
}

impl EdgeHeaderNames {
    /// The names the scenario cases and examples use for a trusted edge: Cloudflare's
    /// `cf-ipcountry`, and `x-signalbox-edge-asn`, `x-signalbox-edge-ja4`,
    /// `x-signalbox-edge-user`.
    pub fn conventional() -> Self {
        Self {
            country: "cf-ipcountry".to_owned(),
            asn: "x-signalbox-edge-asn".to_owned(),
            tls_fingerprint: "x-signalbox-edge-ja4".to_owned(),
            user: "x-signalbox-edge-user".to_owned(),
        }
    }

    /// The configured names (empty ones left out).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [&self.country, &self.asn, &self.tls_fingerprint, &self.user]
            .into_iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }
}

/// The clearance cookie's name over HTTPS (the `__Host-` prefix pins it to this host,
/// `Secure`, `Path=/`).
pub const CLEARANCE_COOKIE: &str = "__Host-signalbox-clearance";

/// The clearance cookie's name over plain HTTP, where browsers drop `Secure` cookies.
/// Adapters read it only from plain-HTTP requests.
pub const PLAIN_HTTP_CLEARANCE_COOKIE: &str = "signalbox-clearance";

/// The clearance cookie as the adapter found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Clearance {
    /// No cookie.
    #[default]
    Absent,
    /// A cookie the adapter has not verified (no keys configured yet): neutral.
    Presented(Vec<u8>),
    /// Verified and unexpired: the client solved a challenge of `difficulty` bits. It
    /// satisfies a challenge that asks no more, and changes nothing else.
    Valid {
        /// Leading zero bits of the solved challenge.
        difficulty: u8,
    },
    /// Present but failed verification (forged, expired, other binding).
    Invalid,
}

/// The request headers the engine reads (besides the edge headers an operator names, which
/// become [`Facts`] fields). A decision record carries these and no others, so a replay sees
/// what the engine saw; `policy/tests/engine.rs` checks that dropping every other header
/// changes no verdict (a property test over the header sets the scenario cases use).
pub const SIGNAL_HEADERS: [&str; 10] = [
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
];

/// A client address as a decision record keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedIp {
    /// The keyed hash the record carries: it stands in for the address as the subject key
    /// when a replay asks whether the score cache would have been asked.
    pub key: String,
    /// The names of the bundle lists that held the address.
    pub lists: Vec<String>,
}

/// Request facts, owned, with header names in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Request method, as sent.
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// [`normalize_path`] of `path`, computed once by [`Facts::from_parts`]: what `routes` and
    /// the challenge's verify path match. Whoever changes `path` afterwards recomputes it.
    pub route_path: String,
    /// `:authority` or `host`.
    pub authority: String,
    /// Headers in order; names lower case, values raw bytes; a name may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The resolved client IP (the adapter decides which hops it trusts); `None` when the
    /// host gave no usable address. Without one no IP list matches, IP-keyed rate budgets
    /// and score-cache lookups are skipped, `ip.missing` adds its weight, and the clearance
    /// binds to "no address".
    pub client_ip: Option<IpAddr>,
    /// Replaying a logged verdict only: the client had an address, known now only by its
    /// keyed hash and the bundle lists it was in when the verdict was recorded (decision
    /// records never hold raw IPs). With `client_ip` `None` and this `Some`, the address
    /// counts as present and a list holds it exactly when its name is recorded. `None` for
    /// live traffic.
    pub recorded_ip: Option<RecordedIp>,
    /// Country from the edge header, upper case.
    pub country: Option<[u8; 2]>,
    /// AS number from the edge header.
    pub asn: Option<u32>,
    /// TLS fingerprint from the edge header.
    pub tls_fingerprint: Option<Vec<u8>>,
    /// A user key from a trusted source.
    pub user: Option<String>,
    /// A device key (e.g. from a device cookie the adapter is configured to read).
    pub device: Option<String>,
    /// The clearance cookie.
    pub clearance: Clearance,
    /// Manual decisions in force for this request's subjects, from the adapter's copy of the
    /// score cache's decision stream (no call). A decision in the cache's answer, when there
    /// is one for the same subject, takes its place.
    pub manual_decisions: ManualDecisions,
    /// The host marks this route sensitive (e.g. Envoy route names listed in the plugin
    /// configuration), in addition to the bundle's `routes`.
    pub route_sensitive: bool,
    /// The client reached the edge over plain HTTP. Browsers send `sec-fetch-*` (and client
    /// hints) only to secure origins, so their absence is no signal then. Default `false`
    /// (HTTPS), the common case at an edge.
    pub plain_http: bool,
}

impl Facts {
    /// Builds facts from request parts, reading the edge headers and the clearance cookie.
    /// Header names are lower-cased; nothing here fails, whatever the bytes.
    pub fn from_parts<N, V>(
        method: &str,
        path: &str,
        headers: impl IntoIterator<Item = (N, V)>,
        client_ip: Option<IpAddr>,
        edge: &EdgeHeaderNames,
    ) -> Self
    where
        N: Into<String>,
        V: Into<Vec<u8>>,
    {
        // Lower-cased in place: an adapter's owned names (already lower case from Envoy) are
        // not copied.
        let headers: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .map(|(n, v)| {
                let mut name: String = n.into();
                name.make_ascii_lowercase();
                (name, v.into())
            })
            .collect();
        let mut facts = Facts {
            method: method.to_owned(),
            path: path.to_owned(),
            route_path: normalize_path(path),
            authority: String::new(),
            headers,
            client_ip: client_ip.map(|ip| ip.to_canonical()),
            recorded_ip: None,
            country: None,
            asn: None,
            tls_fingerprint: None,
            user: None,
            device: None,
            clearance: Clearance::Absent,
            manual_decisions: ManualDecisions::default(),
            route_sensitive: false,
            plain_http: false,
        };
        facts.authority = facts
            .header(":authority")
            .or_else(|| facts.header("host"))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        // An edge header repeated: the last value, the one the nearest hop added (an edge that
        // appends instead of overwriting leaves a client's copy first).
        facts.country = facts.last_header(&edge.country).and_then(parse_country);
        facts.asn = facts.last_header(&edge.asn).and_then(parse_asn);
        facts.tls_fingerprint = facts
            .last_header(&edge.tls_fingerprint)
            .map(|v| v.trim_ascii().to_vec())
            .filter(|v| !v.is_empty());
        facts.user = facts
            .last_header(&edge.user)
            .and_then(|v| std::str::from_utf8(v.trim_ascii()).ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        facts.read_clearance(true);
        facts
    }

    /// Reads the clearance cookie for the request's transport: [`CLEARANCE_COOKIE`] over
    /// HTTPS, [`PLAIN_HTTP_CLEARANCE_COOKIE`] over plain HTTP.
    pub fn read_clearance(&mut self, https: bool) {
        let name = if https {
            CLEARANCE_COOKIE
        } else {
            PLAIN_HTTP_CLEARANCE_COOKIE
        };
        self.clearance = match self.cookie(name) {
            Some(value) => Clearance::Presented(value.to_vec()),
            None => Clearance::Absent,
        };
    }

    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        if name.is_empty() {
            return None;
        }
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The last value of a header (name in lower case).
    pub fn last_header(&self, name: &str) -> Option<&[u8]> {
        if name.is_empty() {
            return None;
        }
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// A cookie's value, searching every `cookie` header (HTTP/1 may send several, HTTP/2
    /// joins them with `; `). The first occurrence wins.
    pub fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                let (key, value) = pair.split_at(eq);
                (key.trim_ascii() == name.as_bytes()).then(|| value.get(1..).unwrap_or_default())
            })
    }
}

fn parse_country(value: &[u8]) -> Option<[u8; 2]> {
    match value.trim_ascii() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

fn parse_asn(value: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(value.trim_ascii()).ok()?;
    let digits = text
        .strip_prefix("AS")
        .or_else(|| text.strip_prefix("as"))
        .unwrap_or(text);
    digits.parse().ok()
}

/// A manual decision an operator recorded in the score cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualAction {
    /// Block until expiry.
    Ban,
    /// Challenge until expiry.
    Challenge,
    /// Throttle until expiry.
    Throttle,
    /// Pass until expiry, whatever the score.
    Allow,
}

/// A manual decision with its expiry (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualDecision {
    /// What to do.
    pub action: ManualAction,
    /// Unix seconds after which it no longer applies.
    pub expires_at: u64,
}

/// The manual decision in force for each subject of a request, as an adapter found it in its
/// copy of the decision stream. The IP's is the most specific one covering the address: its
/// own, else the longest range's, else its AS number's, else its country's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ManualDecisions {
    /// For the user key.
    pub user: Option<ManualDecision>,
    /// For the client IP (or a range, AS number or country that holds it).
    pub ip: Option<ManualDecision>,
    /// For the device key.
    pub device: Option<ManualDecision>,
}

/// What the score cache knows about one subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectContext {
    /// Decayed risk score, 0..=100 (larger values are clamped).
    #[serde(default)]
    pub score: u32,
    /// A manual decision, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ManualDecision>,
}

/// The score cache's answer for a request's subjects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteContext {
    /// About the client IP (or its IPv6 prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<SubjectContext>,
    /// About the user key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<SubjectContext>,
    /// About the device key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<SubjectContext>,
}

/// Normalises a request path for prefix matching: drops the query and fragment, decodes
/// percent-escapes of unreserved characters, merges repeated slashes and resolves `.` and
/// `..` segments, so `/a/../LOGIN` and `//%6Cogin` cannot slip past a `/login` prefix.
/// Case is kept; matching compares ASCII case-insensitively.
pub fn normalize_path(raw: &str) -> String {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    let decoded = decode_unreserved(path.as_bytes());
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || (decoded.ends_with(b"/") && !segments.is_empty()) {
        out.push(b'/');
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_unreserved(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            let hex = input
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(decoded) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
                && (decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded))
            {
                out.push(decoded);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// Whether `path` (normalised) is under `prefix`, on whole segments, ASCII case-insensitive.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let (p, q) = (path.as_bytes(), prefix.as_bytes());
    let Some(head) = p.get(..q.len()) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(q) {
        return false;
    }
    q.ends_with(b"/") || matches!(p.get(q.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_with(headers: &[(&str, &[u8])], edge: &EdgeHeaderNames) -> Facts {
        Facts::from_parts(
            "GET",
            "/",
            headers.iter().map(|(n, v)| (*n, v.to_vec())),
            "203.0.113.7".parse().ok(),
            edge,
        )
    }

    fn facts(headers: &[(&str, &[u8])]) -> Facts {
        facts_with(headers, &EdgeHeaderNames::conventional())
    }

    #[test]
    fn cookies_across_headers() {
        let f = facts(&[
            ("Cookie", b"a=1; b=2"),
            ("cookie", b"__Host-signalbox-clearance=tok.en; c=3"),
        ]);
        assert_eq!(f.cookie("b"), Some(&b"2"[..]));
        assert_eq!(f.clearance, Clearance::Presented(b"tok.en".to_vec()));
        assert_eq!(f.cookie("missing"), None);
        let mut plain = facts(&[(
            "cookie",
            b"signalbox-clearance=p; __Host-signalbox-clearance=s",
        )]);
        assert_eq!(plain.clearance, Clearance::Presented(b"s".to_vec()));
        plain.read_clearance(false);
        assert_eq!(plain.clearance, Clearance::Presented(b"p".to_vec()));
        assert_eq!(facts(&[("cookie", b"x")]).cookie("x"), None);
    }

    #[test]
    fn edge_headers() {
        let f = facts(&[
            ("cf-ipcountry", b" ch "),
            ("x-signalbox-edge-asn", b"AS3303"),
            ("host", b"shop.example"),
            ("x-signalbox-edge-user", b"u-42"),
        ]);
        assert_eq!(f.country, Some(*b"CH"));
        assert_eq!(f.asn, Some(3303));
        assert_eq!(f.authority, "shop.example");
        assert_eq!(f.user.as_deref(), Some("u-42"));
        let bad = facts(&[("cf-ipcountry", b"XXX"), ("x-signalbox-edge-asn", &[0xff])]);
        assert_eq!((bad.country, bad.asn), (None, None));
        let twice = facts(&[("cf-ipcountry", b"KP"), ("cf-ipcountry", b"CH")]);
        assert_eq!(twice.country, Some(*b"CH"), "the nearest hop's value");
    }

    #[test]
    fn the_default_trusts_no_edge_header() {
        let f = facts_with(
            &[
                ("cf-ipcountry", b"CH"),
                ("x-signalbox-edge-asn", b"3303"),
                ("x-signalbox-edge-ja4", b"t13d"),
                ("x-signalbox-edge-user", b"vip"),
                ("", b"x"),
            ],
            &EdgeHeaderNames::default(),
        );
        assert_eq!(
            (f.country, f.asn, &f.tls_fingerprint, &f.user),
            (None, None, &None, &None)
        );
        assert_eq!(EdgeHeaderNames::default().names().count(), 0);
    }

    #[test]
    fn mapped_ipv6_client_is_ipv4() {
        let f = Facts::from_parts(
            "GET",
            "/",
            Vec::<(&str, Vec<u8>)>::new(),
            "::ffff:81.62.10.4".parse().ok(),
            &EdgeHeaderNames::default(),
        );
        assert_eq!(f.client_ip, "81.62.10.4".parse::<IpAddr>().ok());
    }

    #[test]
    fn path_normalisation() {
        assert_eq!(normalize_path("/login?next=/x"), "/login");
        assert_eq!(normalize_path("//%6Cogin"), "/login");
        assert_eq!(normalize_path("/a/../b/./c/"), "/b/c/");
        assert_eq!(normalize_path("/../.."), "/");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/%2F%zz%"), "/%2F%zz%");
        assert!(path_has_prefix("/LOGIN/step", "/login"));
        assert!(path_has_prefix("/login", "/login"));
        assert!(!path_has_prefix("/loginx", "/login"));
        assert!(path_has_prefix("/api/v1", "/api/"));
        assert!(path_has_prefix("/anything", "/"));
    }
}
