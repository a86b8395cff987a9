//! Rollback protection: the highest bundle revision this Envoy process has served, per bundle
//! lineage, kept in shared data so that a configuration update carrying an older bundle — even
//! one still inside its `expires_at` and signed by a trusted key — is refused while the one in
//! force keeps serving.
//!
//! A lineage is the Envoy plugin name (`config.name`, the `plugin_name` property): each plugin
//! in a VM (`vm_id`) has its own. Shared data lives as long as the VM: it survives
//! configuration updates (Envoy reuses the VM), not an Envoy restart — after a restart the
//! inline bundle is trusted again until the score cache's bundle push (a later issue) answers.

/// The shared-data key of a lineage.
pub fn key(lineage: &str) -> String {
    format!("signalbox.highest_revision.{lineage}")
}

/// A bundle older than one already served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollback {
    /// The revision offered.
    pub offered: u64,
    /// The highest revision this process has served for the lineage.
    pub highest: u64,
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bundle: revision {} is older than revision {} already served by this Envoy \
             process; refusing a rollback (publish the change as a revision above {})",
            self.offered, self.highest, self.highest
        )
    }
}

/// Checks `offered` against the stored highest revision (8 bytes, big-endian; anything else is
/// treated as nothing stored). `Ok(Some(bytes))`: store these (a new highest); `Ok(None)`:
/// nothing to store.
pub fn check(stored: Option<&[u8]>, offered: u64) -> Result<Option<[u8; 8]>, Rollback> {
    let highest = stored
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    match highest {
        Some(highest) if offered < highest => Err(Rollback { offered, highest }),
        Some(highest) if offered == highest => Ok(None),
        _ => Ok(Some(offered.to_be_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back() {
        assert_eq!(check(None, 5), Ok(Some(5u64.to_be_bytes())));
        let five = 5u64.to_be_bytes();
        assert_eq!(check(Some(&five), 5), Ok(None), "the same revision reloads");
        assert_eq!(check(Some(&five), 6), Ok(Some(6u64.to_be_bytes())));
        let refused = check(Some(&five), 4).unwrap_err();
        assert_eq!(
            refused,
            Rollback {
                offered: 4,
                highest: 5
            }
        );
        assert!(
            refused
                .to_string()
                .contains("revision 4 is older than revision 5")
        );
        assert_eq!(check(Some(b"junk"), 1), Ok(Some(1u64.to_be_bytes())));
    }
}
