//! Compact IP prefix sets: sorted, merged, inclusive ranges searched by bisection.
//!
//! A node-per-prefix trie costs tens of bytes per prefix; a bundle with 100k prefixes is copied
//! into every worker VM, so this store keeps one `(start, end)` pair per merged range: 8 bytes
//! for IPv4 and 32 for IPv6. Parsing and aggregation use the `ipnet` crate; lookups are a
//! `partition_point` over the sorted starts.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A set of IPv4 and IPv6 prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRangeSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    prefixes: usize,
}

/// A prefix that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IP prefix: {text:?}")]
pub struct BadPrefix {
    /// The text, cut to 64 bytes.
    pub text: String,
}

impl std::fmt::Display for IpRangeSet {
    /// `N prefixes -> M ranges, B bytes (X bytes/prefix)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7} prefixes -> {:>7} ranges, {:>8} bytes ({:.1} bytes/prefix)",
            self.prefix_count(),
            self.range_count(),
            self.heap_bytes(),
            self.bytes_per_prefix()
        )
    }
}

impl IpRangeSet {
    /// Builds a set from CIDR strings (a bare address is a host prefix). IPv4-mapped IPv6
    /// prefixes (`::ffff:0:0/96` and longer) are stored as IPv4.
    pub fn from_cidrs<S: AsRef<str>>(cidrs: &[S]) -> Result<Self, (usize, BadPrefix)> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (index, text) in cidrs.iter().enumerate() {
            let text = text.as_ref().trim();
            let net = parse_prefix(text).ok_or_else(|| {
                (
                    index,
                    BadPrefix {
                        text: text.chars().take(64).collect(),
                    },
                )
            })?;
            match net {
                IpNet::V4(n) => v4.push(n),
                IpNet::V6(n) => match v4_mapped(&n) {
                    Some(n4) => v4.push(n4),
                    None => v6.push(n),
                },
            }
        }
        Ok(Self {
            prefixes: cidrs.len(),
            v4: Ipv4Net::aggregate(&v4)
                .into_iter()
                .map(|n| (u32::from(n.network()), u32::from(n.broadcast())))
                .collect(),
            v6: Ipv6Net::aggregate(&v6)
                .into_iter()
                .map(|n| (u128::from(n.network()), u128::from(n.broadcast())))
                .collect(),
        }
        .merged())
    }

    /// Joins adjacent aggregated prefixes into single ranges.
    fn merged(mut self) -> Self {
        self.v4 = merge_adjacent(std::mem::take(&mut self.v4));
        self.v6 = merge_adjacent(std::mem::take(&mut self.v6));
        self
    }

    /// Whether the address is in the set. IPv4-mapped IPv6 addresses match IPv4 prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => range_contains(&self.v4, u32::from(a)),
            IpAddr::V6(a) => range_contains(&self.v6, u128::from(a)),
        }
    }

    /// Number of prefixes the set was built from.
    pub fn prefix_count(&self) -> usize {
        self.prefixes
    }

    /// Number of merged ranges stored.
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Heap bytes per prefix the set was built from.
    pub fn bytes_per_prefix(&self) -> f64 {
        self.heap_bytes() as f64 / self.prefixes.max(1) as f64
    }

    /// The merged IPv4 ranges (inclusive), sorted and disjoint.
    pub fn v4_ranges(&self) -> &[(u32, u32)] {
        &self.v4
    }

    /// The merged IPv6 ranges (inclusive), sorted and disjoint.
    pub fn v6_ranges(&self) -> &[(u128, u128)] {
        &self.v6
    }

    /// A set from ranges as [`v4_ranges`](Self::v4_ranges) and [`v6_ranges`](Self::v6_ranges)
    /// give them; `None` unless each family's ranges are sorted, disjoint and non-empty
    /// (`start <= end`), which lookups rely on.
    pub fn from_ranges(
        v4: Vec<(u32, u32)>,
        v6: Vec<(u128, u128)>,
        prefixes: usize,
    ) -> Option<Self> {
        fn ordered<T: Ord + Copy>(ranges: &[(T, T)]) -> bool {
            ranges.iter().all(|(start, end)| start <= end)
                && ranges.windows(2).all(|w| match w {
                    [(_, end), (next, _)] => end < next,
                    _ => true,
                })
        }
        (ordered(&v4) && ordered(&v6)).then_some(Self { v4, v6, prefixes })
    }

    /// Heap bytes the ranges take.
    pub fn heap_bytes(&self) -> usize {
        self.v4.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.v6.capacity() * std::mem::size_of::<(u128, u128)>()
    }
}

fn parse_prefix(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

fn v4_mapped(net: &Ipv6Net) -> Option<Ipv4Net> {
    if net.prefix_len() < 96 {
        return None;
    }
    let v4 = net.network().to_ipv4_mapped()?;
    Ipv4Net::new(v4, net.prefix_len() - 96).ok()
}

fn merge_adjacent<T>(ranges: Vec<(T, T)>) -> Vec<(T, T)>
where
    T: Copy + Ord + num_like::Successor,
{
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.successor() == Some(start) || last.1 >= start => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

fn range_contains<T: Copy + Ord>(ranges: &[(T, T)], value: T) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= value);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|&(_, end)| value <= end)
}

mod num_like {
    pub trait Successor: Sized {
        fn successor(self) -> Option<Self>;
    }
    impl Successor for u32 {
        fn successor(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Successor for u128 {
        fn successor(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(cidrs: &[&str]) -> IpRangeSet {
        IpRangeSet::from_cidrs(cidrs).unwrap()
    }

    #[test]
    fn matches_v4_v6_and_mapped() {
        let s = set(&["167.99.0.0/16", "2001:db8::/32", "10.0.0.1"]);
        assert!(s.contains("167.99.134.20".parse().unwrap()));
        assert!(s.contains("::ffff:167.99.134.20".parse().unwrap()));
        assert!(!s.contains("167.100.0.0".parse().unwrap()));
        assert!(s.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!s.contains("2001:db9::1".parse().unwrap()));
        assert!(s.contains("10.0.0.1".parse().unwrap()));
        assert!(!s.contains("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn mapped_prefix_is_stored_as_v4() {
        let s = set(&["::ffff:192.0.2.0/120"]);
        assert!(s.contains("192.0.2.77".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_truncated_and_adjacent_ranges_merge() {
        let s = set(&["192.0.2.5/24", "192.0.3.0/24", "192.0.2.0/25"]);
        assert_eq!(s.range_count(), 1);
        assert_eq!(s.prefix_count(), 3);
        assert!(s.contains("192.0.3.255".parse().unwrap()));
    }

    #[test]
    fn bad_prefix_names_its_index() {
        let err = IpRangeSet::from_cidrs(&["10.0.0.0/8", "10.0.0.0/33"]).unwrap_err();
        assert_eq!(err.0, 1);
    }

    #[test]
    fn extreme_ranges() {
        let s = set(&["0.0.0.0/0", "::/0"]);
        assert!(s.contains("255.255.255.255".parse().unwrap()));
        assert!(s.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()));
        let empty = set(&[]);
        assert!(!empty.contains("0.0.0.0".parse().unwrap()));
    }

    proptest! {
        /// The set agrees with a naive scan over the prefixes it was built from.
        #[test]
        fn agrees_with_naive_scan(
            nets in proptest::collection::vec((any::<u32>(), 8u8..=32), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 0..40),
        ) {
            let nets: Vec<Ipv4Net> = nets
                .into_iter()
                .map(|(a, len)| Ipv4Net::new(a.into(), len).unwrap().trunc())
                .collect();
            let texts: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            let s = IpRangeSet::from_cidrs(&texts).unwrap();
            let mut all_probes = probes;
            for n in &nets {
                all_probes.push(u32::from(n.network()));
                all_probes.push(u32::from(n.broadcast()));
                all_probes.push(u32::from(n.broadcast()).wrapping_add(1));
            }
            for p in all_probes {
                let addr = std::net::Ipv4Addr::from(p);
                let naive = nets.iter().any(|n| n.contains(&addr));
                prop_assert_eq!(s.contains(addr.into()), naive, "probe {}", addr);
            }
        }
    }
}
