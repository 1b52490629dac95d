//! What the integrity gate has said about an adapter's weights, as the adapter listing shows it.
//! What always holds: `Verified` only when the bytes installed at the last successful page-in
//! hashed to the gate's registered hash; a refusal by the gate is `Refused`, any other failed
//! page-in `Failing` (retried after its backoff), both until a page-in succeeds; reasons name the
//! adapter, never a path.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// No gate (no on-chain registry): weights are not checked against a registered hash.
    Off,
    /// Gated, not paged in since registration (checked at the next page-in).
    Unchecked,
    /// The last page-in's bytes hashed to the registered weights hash.
    Verified,
    /// Served without a registration to check against (the gate allowed any weights).
    Unregistered,
    /// The gate refused the adapter at its last page-in.
    Refused(String),
    /// The last page-in failed for another reason.
    Failing(String),
}

impl Integrity {
    /// From whether a gate is set, what the last successful page-in checked (a registered hash?)
    /// and the last failed page-in (refused by the gate?, reason) when none succeeded since.
    pub fn of(gated: bool, checked: Option<bool>, failure: Option<(bool, String)>) -> Self {
        match (failure, gated, checked) {
            (Some((true, why)), _, _) => Integrity::Refused(why),
            (Some((false, why)), _, _) => Integrity::Failing(why),
            (None, false, _) => Integrity::Off,
            (None, true, None) => Integrity::Unchecked,
            (None, true, Some(true)) => Integrity::Verified,
            (None, true, Some(false)) => Integrity::Unregistered,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Integrity::Off => "off",
            Integrity::Unchecked => "unchecked",
            Integrity::Verified => "verified",
            Integrity::Unregistered => "unregistered",
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
    fn verified_needs_a_gate_and_a_checked_hash() {
        assert_eq!(Integrity::of(false, Some(true), None), Integrity::Off);
        assert_eq!(Integrity::of(true, None, None), Integrity::Unchecked);
        assert_eq!(Integrity::of(true, Some(true), None), Integrity::Verified);
        assert_eq!(
            Integrity::of(true, Some(false), None),
            Integrity::Unregistered
        );
        let refused = Integrity::of(true, Some(true), Some((true, "hash".into())));
        assert_eq!(
            (refused.as_str(), refused.reason()),
            ("refused", Some("hash"))
        );
        let failing = Integrity::of(false, None, Some((false, "io".into())));
        assert_eq!(
            (failing.as_str(), failing.reason()),
            ("failing", Some("io"))
        );
    }
}
