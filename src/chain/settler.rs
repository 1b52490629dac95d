//! `Settler`: one signer talking to one deployment of the contracts over JSON-RPC (HTTP).
//! Every state-changing method waits for the transaction's receipt and fails unless it succeeded;
//! contract reverts come back decoded (`ChainError::BatchAlreadySettled`, `ChainError::Reverted`).

use alloy::network::ReceiptResponse;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use std::time::Duration;

use super::contracts::{
    AdapterRegistry::{self, AdapterRegistryInstance},
    DatanetRegistry::{self, DatanetRegistryInstance},
    Settlement::{self, SettlementInstance},
};
use super::ChainError;

/// The native token, as Settlement keys it in its per-token mappings.
pub const NATIVE: Address = Address::ZERO;

/// Addresses of one deployment of the three contracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployment {
    pub settlement: Address,
    pub adapter_registry: Address,
    pub datanet_registry: Address,
}

/// Constructor arguments of `Settlement` (the registries take none but each other).
#[derive(Debug, Clone, Copy)]
pub struct DeployConfig {
    /// Owner of Settlement; `None` = the deploying signer.
    pub owner: Option<Address>,
    pub fee_recipient: Address,
    /// At most 1000 (10%).
    pub protocol_fee_bps: u16,
    /// In [60, 30 days].
    pub withdrawal_delay_secs: u64,
}

/// A native-token settlement batch as the server builds it (see contracts/README.md, "Batches").
/// `credits` must sum to `total_debits() - protocol_fee(total_debits(), bps)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: B256,
    pub receipts_root: B256,
    pub call_count: u64,
    pub debits: Vec<(Address, U256)>,
    pub credits: Vec<(Address, U256)>,
}

impl Batch {
    pub fn total_debits(&self) -> U256 {
        self.debits.iter().map(|(_, d)| *d).sum()
    }

    pub fn total_credits(&self) -> U256 {
        self.credits.iter().map(|(_, c)| *c).sum()
    }

    fn to_sol(&self) -> Settlement::Batch {
        Settlement::Batch {
            batchId: self.id,
            receiptsRoot: self.receipts_root,
            callCount: self.call_count,
            token: NATIVE,
            payers: self.debits.iter().map(|(a, _)| *a).collect(),
            debits: self.debits.iter().map(|(_, d)| *d).collect(),
            recipients: self.credits.iter().map(|(a, _)| *a).collect(),
            credits: self.credits.iter().map(|(_, c)| *c).collect(),
        }
    }
}

/// The fee Settlement takes from a batch: `total * bps / 10_000`, rounded down.
pub fn protocol_fee(total_debits: U256, bps: u16) -> U256 {
    total_debits * U256::from(bps) / U256::from(10_000u64)
}

/// What a settled batch cost and where it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettledBatch {
    pub tx_hash: B256,
    pub block_number: Option<u64>,
    pub gas_used: u64,
}

/// Native-token balances of one account inside Settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balances {
    /// Deposited and not yet debited (a payer's side).
    pub escrow: U256,
    /// Credited by batches and not yet claimed (a recipient's side).
    pub earnings: U256,
}

/// How long a write waits for its receipt unless told otherwise.
pub const DEFAULT_RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// One signer bound to one deployment. Send one transaction at a time per signer: nonces come
/// from the node's pending count.
#[derive(Clone)]
pub struct Settler {
    provider: DynProvider,
    signer: Address,
    deployment: Deployment,
    receipt_timeout: Duration,
}

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settler")
            .field("signer", &self.signer)
            .field("deployment", &self.deployment)
            .finish()
    }
}

fn provider_for(rpc_url: &str, signer_key: &str) -> Result<(DynProvider, Address), ChainError> {
    let signer: PrivateKeySigner = signer_key
        .trim()
        .parse()
        .map_err(|e| ChainError::InvalidKey(format!("{e}")))?;
    let address = signer.address();
    let url = rpc_url
        .parse()
        .map_err(|e| ChainError::InvalidUrl(format!("{rpc_url}: {e}")))?;
    // Simple nonce management (pending count from the node for every transaction), not alloy's
    // default cache: a cached nonce is consumed even when gas estimation reverts (e.g. a batch id
    // already settled), and the next transaction would then wait forever behind a nonce gap.
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(signer)
        .connect_http(url)
        .erased();
    Ok((provider, address))
}

impl Settler {
    /// Bind `signer_key` (hex private key) to an existing deployment reachable at `rpc_url`.
    pub async fn connect(
        rpc_url: &str,
        signer_key: &str,
        deployment: Deployment,
    ) -> Result<Self, ChainError> {
        let (provider, signer) = provider_for(rpc_url, signer_key)?;
        // Fail early on a wrong URL or a node that is not up.
        provider
            .get_chain_id()
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))?;
        Ok(Self {
            provider,
            signer,
            deployment,
            receipt_timeout: DEFAULT_RECEIPT_TIMEOUT,
        })
    }

    /// Like [`Self::connect`] without contacting the node: for a server that must start (and keep
    /// serving) while the RPC is down. The chain id is fetched with the first transaction.
    pub fn connect_lazy(
        rpc_url: &str,
        signer_key: &str,
        deployment: Deployment,
    ) -> Result<Self, ChainError> {
        let (provider, signer) = provider_for(rpc_url, signer_key)?;
        Ok(Self {
            provider,
            signer,
            deployment,
            receipt_timeout: DEFAULT_RECEIPT_TIMEOUT,
        })
    }

    /// Deploy DatanetRegistry, AdapterRegistry and Settlement from `signer_key`; returns a Settler
    /// for that signer (the owner unless `cfg.owner` says otherwise).
    pub async fn deploy_all(
        rpc_url: &str,
        signer_key: &str,
        cfg: &DeployConfig,
    ) -> Result<Self, ChainError> {
        let (provider, signer) = provider_for(rpc_url, signer_key)?;
        let datanets = DatanetRegistry::deploy(provider.clone())
            .await
            .map_err(ChainError::from_contract)?;
        let adapters = AdapterRegistry::deploy(provider.clone(), *datanets.address())
            .await
            .map_err(ChainError::from_contract)?;
        let settlement = Settlement::deploy(
            provider.clone(),
            cfg.owner.unwrap_or(signer),
            cfg.fee_recipient,
            cfg.protocol_fee_bps,
            cfg.withdrawal_delay_secs,
        )
        .await
        .map_err(ChainError::from_contract)?;
        let deployment = Deployment {
            settlement: *settlement.address(),
            adapter_registry: *adapters.address(),
            datanet_registry: *datanets.address(),
        };
        Ok(Self {
            provider,
            signer,
            deployment,
            receipt_timeout: DEFAULT_RECEIPT_TIMEOUT,
        })
    }

    /// Wait at most `timeout` for each write's receipt (default [`DEFAULT_RECEIPT_TIMEOUT`]).
    pub fn with_receipt_timeout(mut self, timeout: Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    pub fn signer_address(&self) -> Address {
        self.signer
    }

    pub fn deployment(&self) -> Deployment {
        self.deployment
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    pub fn settlement(&self) -> SettlementInstance<DynProvider> {
        Settlement::new(self.deployment.settlement, self.provider.clone())
    }

    pub fn adapter_registry(&self) -> AdapterRegistryInstance<DynProvider> {
        AdapterRegistry::new(self.deployment.adapter_registry, self.provider.clone())
    }

    pub fn datanet_registry(&self) -> DatanetRegistryInstance<DynProvider> {
        DatanetRegistry::new(self.deployment.datanet_registry, self.provider.clone())
    }

    /// Owner only: allow or forbid `operator` to settle batches.
    pub async fn set_operator(&self, operator: Address, enabled: bool) -> Result<B256, ChainError> {
        let s = self.settlement();
        let call = s.setOperator(operator, enabled);
        self.confirm(call.send().await).await.map(|s| s.tx_hash)
    }

    /// Deposit `amount` wei of the native token into the signer's escrow.
    pub async fn deposit(&self, amount: U256) -> Result<B256, ChainError> {
        let s = self.settlement();
        let call = s.deposit().value(amount);
        self.confirm(call.send().await).await.map(|s| s.tx_hash)
    }

    /// Deposit `amount` wei of the native token into `payer`'s escrow.
    pub async fn deposit_for(&self, payer: Address, amount: U256) -> Result<B256, ChainError> {
        let s = self.settlement();
        let call = s.depositFor(payer).value(amount);
        self.confirm(call.send().await).await.map(|s| s.tx_hash)
    }

    /// Operator only: settle `batch`. A batch id already on chain gives
    /// `ChainError::BatchAlreadySettled` (also detectable up front with [`Self::batch_settled`]).
    pub async fn settle_batch(&self, batch: &Batch) -> Result<SettledBatch, ChainError> {
        let s = self.settlement();
        let call = s.settleBatch(batch.to_sol());
        self.confirm(call.send().await).await
    }

    /// Runs `batch` as an `eth_call` from the signer without sending it: `Ok` if it would settle
    /// now, `ChainError::Reverted` with the decoded reason if not (no gas spent).
    pub async fn simulate_batch(&self, batch: &Batch) -> Result<(), ChainError> {
        self.settlement()
            .settleBatch(batch.to_sol())
            .from(self.signer)
            .call()
            .await
            .map(|_| ())
            .map_err(ChainError::from_contract)
    }

    /// Recipient: claim all native earnings of the signer; returns the transaction hash.
    pub async fn claim(&self) -> Result<B256, ChainError> {
        let s = self.settlement();
        let call = s.claim(NATIVE);
        self.confirm(call.send().await).await.map(|s| s.tx_hash)
    }

    pub async fn batch_settled(&self, id: B256) -> Result<bool, ChainError> {
        self.settlement()
            .batchSettled(id)
            .call()
            .await
            .map_err(ChainError::from_contract)
    }

    /// The receipts root stored for batch `id`, `None` if it has not settled.
    pub async fn batch_root(&self, id: B256) -> Result<Option<B256>, ChainError> {
        let root = self
            .settlement()
            .batchRoot(id)
            .call()
            .await
            .map_err(ChainError::from_contract)?;
        Ok((root != B256::ZERO).then_some(root))
    }

    pub async fn balances(&self, account: Address) -> Result<Balances, ChainError> {
        let s = self.settlement();
        let escrow = s
            .escrowOf(NATIVE, account)
            .call()
            .await
            .map_err(ChainError::from_contract)?;
        let earnings = s
            .earningsOf(NATIVE, account)
            .call()
            .await
            .map_err(ChainError::from_contract)?;
        Ok(Balances { escrow, earnings })
    }

    pub async fn protocol_fee_bps(&self) -> Result<u16, ChainError> {
        self.settlement()
            .protocolFeeBps()
            .call()
            .await
            .map_err(ChainError::from_contract)
    }

    /// Whether `leaf` (see `merkle::Receipt::leaf`) is in settled batch `batch_id`.
    pub async fn verify_receipt(
        &self,
        batch_id: B256,
        leaf: B256,
        proof: &[B256],
    ) -> Result<bool, ChainError> {
        self.settlement()
            .verifyReceipt(batch_id, leaf, proof.to_vec())
            .call()
            .await
            .map_err(ChainError::from_contract)
    }

    async fn confirm<N>(
        &self,
        sent: Result<alloy::providers::PendingTransactionBuilder<N>, alloy::contract::Error>,
    ) -> Result<SettledBatch, ChainError>
    where
        N: alloy::network::Network,
    {
        self.confirm_sent(sent.map_err(ChainError::from_contract))
            .await
    }

    /// Waits for the receipt of a sent write (send errors already decoded by the caller); fails
    /// unless the transaction succeeded.
    pub(super) async fn confirm_sent<N>(
        &self,
        sent: Result<alloy::providers::PendingTransactionBuilder<N>, ChainError>,
    ) -> Result<SettledBatch, ChainError>
    where
        N: alloy::network::Network,
    {
        let pending = sent?.with_timeout(Some(self.receipt_timeout));
        let receipt = pending
            .get_receipt()
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))?;
        let tx_hash = receipt.transaction_hash();
        if !receipt.status() {
            return Err(ChainError::TxFailed(tx_hash));
        }
        Ok(SettledBatch {
            tx_hash,
            block_number: receipt.block_number(),
            gas_used: receipt.gas_used(),
        })
    }
}
