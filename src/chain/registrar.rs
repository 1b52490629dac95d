//! `Registrar`: puts an adapter and the datanet it was trained on into `AdapterRegistry` and
//! `DatanetRegistry` (the Model Factory's deployment step), signing with the server's key.
//!
//! What always holds:
//! - every `ensure_*` reads the chain first and writes only what is missing, so calling it again
//!   (a resumed job, a restart, a retry after a timeout whose transaction did land) registers
//!   nothing twice: `Registration::AlreadyThere` when the chain already holds exactly these terms;
//! - an id the chain holds with other terms (another adapter's weights, another owner, price,
//!   split or datanets; a datanet with another records root) is `ChainError::Conflict`, never
//!   overwritten;
//! - the adapter is registered with `registerFor(owner, ..)`: the owner the job named owns it on
//!   chain (its share, price updates, deactivation), not the signing server;
//! - a write returns only once its receipt says it succeeded (`Settler::confirm`).

use super::contracts::AdapterRegistry::{AdapterRegistryErrors, DatanetWeight, FeeSplit};
use super::contracts::DatanetRegistry::{DatanetRegistryErrors, DatanetRegistryInstance};
use super::{catalog::registered, ChainError, Deployment, Listing, OnChainAdapter, Settler};
use alloy::primitives::{keccak256, Address, B256, U256};
use alloy::providers::DynProvider;
use std::time::Duration;

/// A datanet as it is to be registered: id `keccak256(name)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatanetEntry {
    pub name: String,
    pub records_root: B256,
    /// (contributor, shares), each contributor once, shares > 0.
    pub contributors: Vec<(Address, U256)>,
}

/// An adapter as it is to be registered: id `keccak256(name)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterEntry {
    pub name: String,
    pub terms: OnChainAdapter,
}

/// What an `ensure_*` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Written now, in this transaction.
    Sent(B256),
    /// The chain already held exactly these terms.
    AlreadyThere,
}

pub struct Registrar {
    settler: Settler,
    datanets: tokio::sync::OnceCell<Address>,
}

fn adapter_revert(e: alloy::contract::Error) -> ChainError {
    match e.as_decoded_interface_error::<AdapterRegistryErrors>() {
        Some(err) => ChainError::Reverted(format!("AdapterRegistry: {err:?}")),
        None => ChainError::from_contract(e),
    }
}

fn datanet_revert(e: alloy::contract::Error) -> ChainError {
    match e.as_decoded_interface_error::<DatanetRegistryErrors>() {
        Some(err) => ChainError::Reverted(format!("DatanetRegistry: {err:?}")),
        None => ChainError::from_contract(e),
    }
}

/// The first way `have` differs from `want`, if any.
fn difference(have: &OnChainAdapter, want: &OnChainAdapter) -> Option<String> {
    let checks = [
        (have.owner != want.owner, "owner", have.owner.to_string()),
        (
            have.weights_hash != want.weights_hash,
            "weights hash",
            have.weights_hash.to_string(),
        ),
        (
            (have.price_per_m_input, have.price_per_m_output)
                != (want.price_per_m_input, want.price_per_m_output),
            "price",
            format!("{}/{}", have.price_per_m_input, have.price_per_m_output),
        ),
        (
            have.split_bps != want.split_bps,
            "fee split",
            format!("{:?}", have.split_bps),
        ),
        (
            have.trained_on != want.trained_on,
            "datanets",
            format!("{:?}", have.trained_on),
        ),
    ];
    checks
        .into_iter()
        .find(|(differs, ..)| *differs)
        .map(|(_, what, v)| format!("its {what} there is {v}"))
}

impl Registrar {
    /// A client signing with `signer_key` for the `AdapterRegistry` at `adapter_registry` (and
    /// the `DatanetRegistry` it names); contacts nothing yet.
    pub fn connect_lazy(
        rpc_url: &str,
        signer_key: &str,
        adapter_registry: Address,
    ) -> Result<Self, ChainError> {
        let deployment = Deployment {
            settlement: Address::ZERO,
            adapter_registry,
            datanet_registry: Address::ZERO,
        };
        let settler = Settler::connect_lazy(rpc_url, signer_key, deployment)?
            .with_receipt_timeout(Duration::from_secs(30));
        Ok(Registrar {
            settler,
            datanets: tokio::sync::OnceCell::new(),
        })
    }

    pub fn signer_address(&self) -> Address {
        self.settler.signer_address()
    }

    /// The `DatanetRegistry` the adapter registry checks datanets against (read once).
    pub async fn datanet_registry(
        &self,
    ) -> Result<DatanetRegistryInstance<DynProvider>, ChainError> {
        let addr = self
            .datanets
            .get_or_try_init(|| async {
                let r = self.settler.adapter_registry();
                r.datanets().call().await.map_err(adapter_revert)
            })
            .await?;
        Ok(DatanetRegistryInstance::new(
            *addr,
            self.settler.provider().clone(),
        ))
    }

    /// Creates datanet `d` unless the chain holds it with the same records root.
    pub async fn ensure_datanet(&self, d: &DatanetEntry) -> Result<Registration, ChainError> {
        let registry = self.datanet_registry().await?;
        let id = keccak256(d.name.as_bytes());
        match registry.getDatanet(id).call().await {
            Ok(have) if have.recordsRoot == d.records_root => {
                return Ok(Registration::AlreadyThere)
            }
            Ok(have) => {
                return Err(ChainError::Conflict(format!(
                    "datanet `{}` ({id}) is on chain with records root {}, not {}",
                    d.name, have.recordsRoot, d.records_root
                )))
            }
            Err(e) => match e.as_decoded_interface_error::<DatanetRegistryErrors>() {
                Some(DatanetRegistryErrors::UnknownDatanet(_)) => {}
                _ => return Err(datanet_revert(e)),
            },
        }
        let (who, shares): (Vec<Address>, Vec<U256>) = d.contributors.iter().copied().unzip();
        let call = registry.createDatanet(id, d.records_root, who, shares);
        let sent = call.send().await.map_err(datanet_revert);
        Ok(Registration::Sent(
            self.settler.confirm_sent(sent).await?.tx_hash,
        ))
    }

    /// Registers adapter `a` for its owner unless the chain holds it with the same terms.
    pub async fn ensure_adapter(&self, a: &AdapterEntry) -> Result<Registration, ChainError> {
        let registry = self.settler.adapter_registry();
        let id = keccak256(a.name.as_bytes());
        let listing = match registry.getAdapter(id).call().await {
            Ok(have) => {
                let trained = registry
                    .getTrainedOn(id)
                    .call()
                    .await
                    .map_err(adapter_revert)?;
                registered(have, trained)
            }
            Err(e) => match e.as_decoded_interface_error::<AdapterRegistryErrors>() {
                Some(AdapterRegistryErrors::UnknownAdapter(_)) => Listing::Unregistered,
                _ => return Err(adapter_revert(e)),
            },
        };
        if let Listing::Registered(have) = listing {
            return match difference(&have, &a.terms) {
                None => Ok(Registration::AlreadyThere),
                Some(d) => Err(ChainError::Conflict(format!(
                    "adapter `{}` ({id}) is already registered on chain with other terms: {d}",
                    a.name
                ))),
            };
        }
        let t = &a.terms;
        let price = |p: U256| -> Result<u128, ChainError> {
            u128::try_from(p)
                .map_err(|_| ChainError::Conflict(format!("price {p} exceeds uint128")))
        };
        let trained: Vec<DatanetWeight> = t
            .trained_on
            .iter()
            .map(|(d, w)| DatanetWeight {
                datanetId: *d,
                weightBps: *w,
            })
            .collect();
        let split = FeeSplit {
            ownerBps: t.split_bps.0,
            contributorsBps: t.split_bps.1,
            operatorBps: t.split_bps.2,
        };
        let call = registry.registerFor(
            t.owner,
            id,
            t.weights_hash,
            price(t.price_per_m_input)?,
            price(t.price_per_m_output)?,
            trained,
            split,
        );
        let sent = call.send().await.map_err(adapter_revert);
        Ok(Registration::Sent(
            self.settler.confirm_sent(sent).await?.tx_hash,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> OnChainAdapter {
        OnChainAdapter {
            owner: Address::repeat_byte(0xE1),
            active: true,
            weights_hash: B256::repeat_byte(7),
            price_per_m_input: U256::from(1u64),
            price_per_m_output: U256::from(3u64),
            split_bps: (5000, 4000, 1000),
            trained_on: vec![(B256::repeat_byte(9), 10_000)],
        }
    }

    #[test]
    fn any_differing_term_is_named() {
        let want = terms();
        assert_eq!(difference(&terms(), &want), None);
        let mut other = terms();
        other.weights_hash = B256::repeat_byte(8);
        assert!(difference(&other, &want).unwrap().contains("weights hash"));
        let mut other = terms();
        other.owner = Address::repeat_byte(1);
        assert!(difference(&other, &want).unwrap().contains("owner"));
        let mut other = terms();
        other.trained_on = vec![];
        assert!(difference(&other, &want).unwrap().contains("datanets"));
        let mut other = terms();
        other.split_bps = (6000, 3000, 1000);
        assert!(difference(&other, &want).unwrap().contains("fee split"));
    }
}
