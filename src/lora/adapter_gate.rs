//! The integrity gate between an adapter's files and serving them: a policy (`AdapterGate`, e.g.
//! the on-chain `AdapterRegistry`) says, per adapter name, whether it may be served and which
//! weights hash its files must have. What always holds:
//! - the canonical weights hash of an adapter is `keccak256` of its `adapter_model.safetensors`
//!   file, byte for byte (`weights_hash`; `openlora adapter-hash DIR` prints it);
//! - with a gate, an adapter is checked when registered and again at every page-in from its bytes
//!   as read, so swapping the file after registration cannot serve other weights;
//! - a refusal is `Error::AdapterRefused` (never retried by the pager until its backoff ends);
//!   a gate that cannot decide now (chain unreachable) answers `Error::Unavailable`.

use crate::error::{Error, Result};
use alloy::primitives::{keccak256, B256};

/// When the gate is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateStage {
    /// At registration: a gate that cannot decide now may let the adapter register (the page-in
    /// check is the binding one).
    Register,
    /// Validating a start-up folder (`AdapterRegistry::validate_pending`): as `Register`, except
    /// that an answer already cached (the chain sync's batched read at start) is used as is.
    StartUp,
    /// Before weights are installed for serving.
    PageIn,
}

/// What an adapter's weights must hash to before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Any weights (no registration that binds them).
    Any,
    /// Exactly this `weights_hash`.
    Hash(B256),
}

/// Decides whether adapter `name` may be served, and against which hash.
pub trait AdapterGate: Send + Sync {
    /// `Ok(Expected)`, `Err(Error::AdapterRefused)` when it must not be served, or
    /// `Err(Error::Unavailable)` when the answer is not known now.
    fn expected(&self, name: &str, stage: GateStage) -> Result<Expected>;

    /// Called when the files of `name` did not match (for metrics and logs).
    fn mismatch(&self, _name: &str, _expected: B256, _actual: B256) {}
}

/// The canonical weights hash: keccak256 over the safetensors file's bytes.
pub fn weights_hash(safetensors_bytes: &[u8]) -> B256 {
    keccak256(safetensors_bytes)
}

/// Checks `bytes` (the adapter's safetensors file of `name`) against `expected` (what `gate`
/// answered); a mismatch is reported to the gate and refused.
pub fn check_weights(
    gate: &dyn AdapterGate,
    name: &str,
    expected: Expected,
    bytes: &[u8],
) -> Result<()> {
    match expected {
        Expected::Any => Ok(()),
        Expected::Hash(want) => {
            let got = weights_hash(bytes);
            if got == want {
                return Ok(());
            }
            gate.mismatch(name, want, got);
            Err(Error::AdapterRefused {
                name: name.to_string(),
                reason: format!(
                    "its weights hash {got} does not match the weightsHash {want} registered on chain"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Expected);
    impl AdapterGate for Fixed {
        fn expected(&self, _: &str, _: GateStage) -> Result<Expected> {
            Ok(self.0)
        }
    }

    #[test]
    fn one_changed_byte_is_refused() {
        let bytes = b"some safetensors bytes".to_vec();
        let gate = Fixed(Expected::Hash(weights_hash(&bytes)));
        let want = gate.expected("a", GateStage::PageIn).unwrap();
        check_weights(&gate, "a", want, &bytes).unwrap();
        let mut other = bytes.clone();
        other[3] ^= 1;
        let e = check_weights(&gate, "a", want, &other).unwrap_err();
        assert!(matches!(e, Error::AdapterRefused { .. }), "{e}");
        check_weights(&gate, "a", Expected::Any, &other).unwrap();
    }
}
