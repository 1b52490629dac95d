//! What the integrity gate has said about an adapter's weights, as the adapter listing shows it.
//! What always holds: `Verified` only with a gate configured and the weights resident (every
//! page-in checks the bytes it installs); a refusal by the gate is `Refused`, any other failed
//! page-in `Failing` (retried after its backoff); reasons name the adapter, never a path.

use super::Tier;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// No gate (no on-chain registry): weights are not checked against a registered hash.
    Off,
    /// Gated, not paged in since registration (checked at the next page-in).
    Unchecked,
    /// Gated and resident: the bytes in memory passed the check.
    Verified,
    /// The gate refused the adapter at its last page-in.
    Refused(String),
    /// The last page-in failed for another reason.
    Failing(String),
}

impl Integrity {
    /// From whether a gate is set, where the weights are, and the last failed page-in
    /// (refused by the gate?, reason) when it has not succeeded since.
    pub fn of(gated: bool, tier: Tier, failure: Option<(bool, String)>) -> Self {
        match (failure, gated, tier) {
            (Some((true, why)), _, _) => Integrity::Refused(why),
            (Some((false, why)), _, _) => Integrity::Failing(why),
            (None, false, _) => Integrity::Off,
            (None, true, Tier::Disk) => Integrity::Unchecked,
            (None, true, _) => Integrity::Verified,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Integrity::Off => "off",
            Integrity::Unchecked => "unchecked",
            Integrity::Verified => "verified",
            Integrity::Refused(_) => "refused",
            Integrity::Failing(_) => "failing",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Integrity::Refused(r) | Integrity::Failing(r) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_needs_a_gate_and_resident_weights() {
        assert_eq!(Integrity::of(false, Tier::Device, None), Integrity::Off);
        assert_eq!(Integrity::of(true, Tier::Disk, None), Integrity::Unchecked);
        assert_eq!(Integrity::of(true, Tier::Host, None), Integrity::Verified);
        assert_eq!(Integrity::of(true, Tier::Device, None), Integrity::Verified);
        let refused = Integrity::of(true, Tier::Disk, Some((true, "hash".into())));
        assert_eq!(
            (refused.as_str(), refused.reason()),
            ("refused", Some("hash"))
        );
        let failing = Integrity::of(false, Tier::Disk, Some((false, "io".into())));
        assert_eq!(
            (failing.as_str(), failing.reason()),
            ("failing", Some("io"))
        );
    }
}
