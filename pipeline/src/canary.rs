//! Which clients a canary bundle serves. The canary key is the user key when there is one,
//! else the client IP's /24 (IPv6 /48) — so a client sees one revision across requests and
//! addresses of one network move together — hashed with the fleet's secret and the canary's
//! revision (a new canary picks a different set of clients). A client is in the canary when its
//! bucket (0..10,000) is below `percent × 100`. Every edge computes the same answer.

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The canary key of a client: `user:<key>`, else `net:<the IP's /24 or /48>`.
pub fn canary_key(user: Option<&str>, ip: Option<IpAddr>) -> Option<String> {
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        return Some(format!("user:{u}"));
    }
    let net = match ip?.to_canonical() {
        IpAddr::V4(v4) => ipnet::Ipv4Net::new(v4, 24).ok()?.trunc().to_string(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 48).ok()?.trunc().to_string(),
    };
    Some(format!("net:{net}"))
}

/// The client's bucket, 0..10,000, for the canary of `revision`.
pub fn bucket(key: &str, secret: &[u8], revision: u64) -> u32 {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return u32::MAX;
    };
    mac.update(b"canary:");
    mac.update(&revision.to_be_bytes());
    mac.update(key.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    for (o, b) in first.iter_mut().zip(digest.iter()) {
        *o = *b;
    }
    u32::try_from(u64::from_be_bytes(first) % 10_000).unwrap_or(u32::MAX)
}

/// Whether the client with `key` gets the canary of `revision` at `percent`.
pub fn in_canary(key: &str, secret: &[u8], revision: u64, percent: u8) -> bool {
    bucket(key, secret, revision) < u32::from(percent.min(100)) * 100
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &[u8] = b"the fleet's canary secret, 32 b!";

    #[test]
    fn ten_percent_of_ten_thousand_clients_each_stable() {
        let clients: Vec<String> = (0..5_000u32)
            .map(|i| canary_key(Some(&format!("user-{i}")), None).unwrap())
            .chain((0..5_000u32).map(|i| {
                let ip: IpAddr = format!("10.{}.{}.7", i / 250, i % 250).parse().unwrap();
                canary_key(None, Some(ip)).unwrap()
            }))
            .collect();
        let served = clients
            .iter()
            .filter(|k| in_canary(k, SECRET, 42, 10))
            .count();
        let share = served as f64 / clients.len() as f64 * 100.0;
        assert!((8.5..=11.5).contains(&share), "{share}% of 10,000 clients");
        // Stable: the same client, asked again, gets the same answer.
        for k in clients.iter().take(500) {
            assert_eq!(in_canary(k, SECRET, 42, 10), in_canary(k, SECRET, 42, 10));
        }
        // 0% serves nobody, 100% everybody.
        assert!(!clients.iter().any(|k| in_canary(k, SECRET, 42, 0)));
        assert!(clients.iter().all(|k| in_canary(k, SECRET, 42, 100)));
    }

    #[test]
    fn a_network_moves_together_and_a_user_key_wins() {
        let a = canary_key(None, Some("81.62.10.4".parse().unwrap()));
        let b = canary_key(None, Some("81.62.10.200".parse().unwrap()));
        assert_eq!(a, b);
        assert_eq!(a.as_deref(), Some("net:81.62.10.0/24"));
        let v6 = canary_key(None, Some("2001:db8:1:2::9".parse().unwrap()));
        assert_eq!(v6.as_deref(), Some("net:2001:db8:1::/48"));
        assert_eq!(
            canary_key(Some("alice"), Some("81.62.10.4".parse().unwrap())).as_deref(),
            Some("user:alice")
        );
        assert_eq!(canary_key(None, None), None);
    }

    #[test]
    fn raising_the_percent_only_adds_clients() {
        for i in 0..2_000 {
            let k = format!("user:{i}");
            if in_canary(&k, SECRET, 7, 10) {
                assert!(in_canary(&k, SECRET, 7, 50));
            }
        }
    }
}
