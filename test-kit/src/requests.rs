//! The JSONL formats every Signalbox tool shares: one request per line in, one verdict per
//! line out.
//!
//! Request: `{"id":"r1","method":"GET","path":"/login","headers":[["user-agent","…"]],"client_ip":"203.0.113.7"}`
//! (a header value may also be an array of byte values, for non-UTF-8 bytes; `user` is an
//! optional user key).
//!
//! Verdict: `{"id":"r1","decision":"challenge","score":72,"level":"high","reasons":[{"code":"ip.hosting","points":25}],"revision":"7"}`
//! followed by `rules`, `shadow_decision` and `remote` where they say something.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use signalbox_policy::{EdgeHeaderNames, Facts};

/// A header value: text, or raw bytes as an array of numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl HeaderValue {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HeaderValue::Text(t) => t.as_bytes(),
            HeaderValue::Bytes(b) => b,
        }
    }
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    /// Caller's id, echoed in the verdict.
    pub id: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers in order.
    #[serde(default)]
    pub headers: Vec<(String, HeaderValue)>,
    /// Resolved client IP; absent when the host gave none (see [`Facts::client_ip`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    /// Optional user key (as a trusted authentication layer would set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Optional device key (as a configured device cookie would give it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// How the client reached the edge: `https` (default) or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
}

/// The client's transport to the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS.
    Https,
}

impl RequestLine {
    /// Facts for the engine, reading edge headers by the given names.
    pub fn to_facts(&self, edge: &EdgeHeaderNames) -> Facts {
        let mut facts = Facts::from_parts(
            &self.method,
            &self.path,
            self.headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes().to_vec())),
            self.client_ip,
            edge,
        );
        if self.user.is_some() {
            facts.user.clone_from(&self.user);
        }
        if self.device.is_some() {
            facts.device.clone_from(&self.device);
        }
        if self.scheme == Some(Scheme::Http) {
            facts.plain_http = true;
            facts.read_clearance(false);
        }
        facts
    }
}

/// One verdict line (the core's [`VerdictLine`], re-exported: the filter writes the same
/// record).
pub use signalbox_policy::VerdictLine;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_round_trip_with_bytes() {
        let line = r#"{"id":"r1","method":"GET","path":"/login","headers":[["user-agent","curl/8"],["x-raw",[255,0,65]]],"client_ip":"203.0.113.7"}"#;
        let req: RequestLine = serde_json::from_str(line).unwrap();
        assert_eq!(req.headers[1].1.as_bytes(), &[255, 0, 65]);
        let facts = req.to_facts(&EdgeHeaderNames::default());
        assert_eq!(facts.header("user-agent"), Some(&b"curl/8"[..]));
        assert!(
            serde_json::from_str::<RequestLine>(
                r#"{"id":"x","method":"GET","path":"/","client_ip":"1.2.3.4","extra":1}"#
            )
            .is_err()
        );
    }
}
