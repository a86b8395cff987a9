//! Envoy's HTTP connection manager as far as the filter can tell: which address it reports as
//! `source.address`, and what it does to `x-forwarded-for`, for its `use_remote_address` and
//! `xff_num_trusted_hops` settings. `tests/tests/client_ip_envoy.rs` holds this to real Envoy,
//! row by row.

use std::net::IpAddr;

/// The connection manager's client-address settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionManager {
    /// `use_remote_address`.
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`.
    pub xff_num_trusted_hops: u32,
}

/// Envoy's `StringUtil::WhitespaceChars`.
fn trim(v: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\n' | b'\r');
    let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or_default()
}

/// An `x-forwarded-for` entry as Envoy reads it: `inet_pton(AF_INET)`, else an IPv6 address
/// with at most a numeric zone (kept, as Envoy prints it).
fn entry_address(entry: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(trim(entry)).ok()?;
    if let Ok(v4) = text.parse::<std::net::Ipv4Addr>() {
        return Some(format!("{v4}:0"));
    }
    let (v6, zone) = match text.split_once('%') {
        Some((v6, zone)) => (v6, Some(zone)),
        None => (text, None),
    };
    let v6: std::net::Ipv6Addr = v6.parse().ok()?;
    match zone {
        Some(zone) => {
            let numeric = !zone.is_empty() && zone.bytes().all(|b| b.is_ascii_digit());
            let zone: u32 = zone.parse().ok().filter(|_| numeric)?;
            Some(format!("[{v6}%{zone}]:0"))
        }
        None => Some(format!("[{v6}]:0")),
    }
}

/// The entry `hops` places from the right of every `x-forwarded-for` value, if it is an address.
fn from_xff(headers: &[(String, Vec<u8>)], hops: u32) -> Option<String> {
    let entries: Vec<&[u8]> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, v)| trim(v))
        .filter(|v| !v.is_empty())
        .flat_map(|v| v.split(|&b| b == b','))
        .collect();
    let hops = usize::try_from(hops).ok()?;
    entries
        .len()
        .checked_sub(hops.checked_add(1)?)
        .and_then(|i| entries.get(i))
        .and_then(|e| entry_address(e))
}

impl ConnectionManager {
    /// The `source.address` Envoy reports and the request headers the filter sees, for a
    /// request from `peer` (`ip:port`): without `use_remote_address` the entry
    /// `xff_num_trusted_hops` from the right of `x-forwarded-for` (the peer when there is
    /// none), the header untouched; with it, the entry one place nearer (the peer itself
    /// with no trusted hops), and the peer appended to the header.
    pub fn apply(
        &self,
        headers: &[(String, Vec<u8>)],
        peer: &str,
    ) -> (Vec<(String, Vec<u8>)>, String) {
        let mut out = headers.to_vec();
        let source = if self.use_remote_address {
            let source = match self.xff_num_trusted_hops {
                0 => None,
                n => from_xff(headers, n - 1),
            };
            let peer_ip = peer
                .rsplit_once(':')
                .map_or(peer, |(ip, _)| ip)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let last = out
                .iter_mut()
                .rev()
                .find(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"));
            let appended = match last {
                Some((_, value)) => {
                    if !trim(value).is_empty() {
                        value.extend_from_slice(b",");
                    }
                    value.extend_from_slice(peer_ip.as_bytes());
                    true
                }
                None => false,
            };
            if !appended {
                out.push(("x-forwarded-for".to_owned(), peer_ip.as_bytes().to_vec()));
            }
            source
        } else {
            from_xff(headers, self.xff_num_trusted_hops)
        };
        (out, source.unwrap_or_else(|| peer.to_owned()))
    }
}

/// The address a `source.address` value names (for tests).
pub fn address_of(source: &str) -> Option<IpAddr> {
    let host = source.rsplit_once(':').map_or(source, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.split('%').next()?.parse().ok()
}
