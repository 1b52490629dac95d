//! Metering settings: `openlora serve` flags (`--ledger`, `--chain-rpc`, ...), the same keys in
//! the TOML file's `[metering]` table, merged and checked once into a `MeterConfig`. Metering is
//! off unless `--ledger` is given; settlement is off unless `--chain-rpc` is given too. The
//! operator's signer key is read from `--operator-key-file` or `$OPENLORA_OPERATOR_KEY` and is
//! never printed (`ChainConfig`'s `Debug` hides it).

use super::pricing::Price;
use crate::error::{Error, Result};
use alloy::primitives::{Address, U256};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Default)]
pub struct MeteringArgs {
    /// SQLite file of the usage ledger; turns metering on.
    #[arg(long, env = "OPENLORA_LEDGER")]
    pub ledger: Option<PathBuf>,
    /// JSON-RPC URL of the chain that holds the Settlement contract; turns settlement on.
    #[arg(long, env = "OPENLORA_CHAIN_RPC")]
    pub chain_rpc: Option<String>,
    /// Address of the Settlement contract.
    #[arg(long, env = "OPENLORA_SETTLEMENT_ADDRESS")]
    pub settlement_address: Option<Address>,
    /// File holding the operator's hex private key (else `$OPENLORA_OPERATOR_KEY`).
    #[arg(long, env = "OPENLORA_OPERATOR_KEY_FILE")]
    pub operator_key_file: Option<PathBuf>,
    /// Records per settlement batch (default 100).
    #[arg(long, env = "OPENLORA_SETTLE_MAX_RECORDS")]
    pub settle_max_records: Option<usize>,
    /// Seconds after which pending records settle even if fewer than a batch (default 30).
    #[arg(long, env = "OPENLORA_SETTLE_INTERVAL_SECS")]
    pub settle_interval_secs: Option<u64>,
    /// Seconds between re-reads of payers' deposits (default 5).
    #[arg(long, env = "OPENLORA_DEPOSIT_REFRESH_SECS")]
    pub deposit_refresh_secs: Option<u64>,
    /// Price in wei per 1M prompt tokens of the base model and of adapters without a manifest.
    #[arg(long, env = "OPENLORA_DEFAULT_PRICE_INPUT")]
    pub default_price_input: Option<U256>,
    /// Price in wei per 1M completion tokens (same scope).
    #[arg(long, env = "OPENLORA_DEFAULT_PRICE_OUTPUT")]
    pub default_price_output: Option<U256>,
    /// Folder of datanets: `<datanet id>.jsonl`, one `{"text"|"tokens", "contributor"}` per line.
    #[arg(long, env = "OPENLORA_DATANETS_DIR")]
    pub datanets_dir: Option<PathBuf>,
    /// Shortest output span (tokens) that counts as drawn from a datanet record (default 8).
    #[arg(long, env = "OPENLORA_ATTRIBUTION_MIN_SPAN")]
    pub attribution_min_span: Option<usize>,
    /// Address of the AdapterRegistry: adapters are verified against their on-chain weights
    /// hash and priced from chain (manifests ignored); datanets are checked against the roots in
    /// its DatanetRegistry. Needs --chain-rpc.
    #[arg(long, env = "OPENLORA_ADAPTER_REGISTRY_ADDRESS")]
    pub adapter_registry_address: Option<Address>,
    /// Serve only adapters registered in the AdapterRegistry (default: unregistered adapters are
    /// served at the default price).
    #[arg(long, env = "OPENLORA_REQUIRE_ONCHAIN_ADAPTERS")]
    pub require_onchain_adapters: bool,
    /// Seconds between re-reads of adapters' on-chain terms and datanet roots (default 5).
    #[arg(long, env = "OPENLORA_CHAIN_REFRESH_SECS")]
    pub chain_refresh_secs: Option<u64>,
    /// How old (seconds) the last known deposit of a payer may be and still admit its calls
    /// while the chain is unreachable, also across restarts (default 300).
    #[arg(long, env = "OPENLORA_DEPOSIT_MAX_STALENESS_SECS")]
    pub deposit_max_staleness_secs: Option<u64>,
    /// Seconds an unsettleable record waits for its cause to go (e.g. a new deposit: it is then
    /// retried) before it is written off and no longer counts against its payer (default 604800).
    #[arg(long, env = "OPENLORA_WRITE_OFF_AFTER_SECS")]
    pub write_off_after_secs: Option<u64>,
}

/// The `[metering]` table of the config file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct MeteringFile {
    ledger: Option<PathBuf>,
    chain_rpc: Option<String>,
    settlement_address: Option<Address>,
    operator_key_file: Option<PathBuf>,
    settle_max_records: Option<usize>,
    settle_interval_secs: Option<u64>,
    deposit_refresh_secs: Option<u64>,
    default_price_input: Option<String>,
    default_price_output: Option<String>,
    datanets_dir: Option<PathBuf>,
    attribution_min_span: Option<usize>,
    adapter_registry_address: Option<Address>,
    #[serde(default)]
    require_onchain_adapters: bool,
    chain_refresh_secs: Option<u64>,
    deposit_max_staleness_secs: Option<u64>,
    write_off_after_secs: Option<u64>,
}

pub struct ChainConfig {
    pub rpc_url: String,
    pub settlement: Address,
    pub operator_key: String,
    pub max_records: usize,
    pub interval: Duration,
    pub deposit_refresh: Duration,
    /// Test hook (`OPENLORA_TEST_PAUSE_AFTER_SUBMIT=1`): see `SettleConfig::pause_after_submit`.
    pub pause_after_submit: bool,
    /// The on-chain registry as the source of truth (`None`: manifests, no integrity check).
    pub registry: Option<RegistryConfig>,
    pub deposit_max_staleness: Duration,
    /// How long an unsettleable record may wait for a retry before it is written off.
    pub write_off_after: Duration,
}

/// `--adapter-registry-address` and what goes with it.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub adapter_registry: Address,
    pub require_onchain: bool,
    pub refresh: Duration,
}

impl std::fmt::Debug for ChainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainConfig")
            .field("rpc_url", &self.rpc_url)
            .field("settlement", &self.settlement)
            .field("operator_key", &"<hidden>")
            .field("max_records", &self.max_records)
            .field("interval", &self.interval)
            .field("registry", &self.registry)
            .finish()
    }
}

#[derive(Debug)]
pub struct MeterConfig {
    pub ledger: PathBuf,
    pub default_price: Price,
    pub datanets_dir: Option<PathBuf>,
    pub min_span: usize,
    pub chain: Option<ChainConfig>,
}

fn wei(v: Option<String>, name: &str) -> Result<Option<U256>> {
    v.map(|s| {
        s.parse::<U256>()
            .map_err(|e| Error::invalid(name, e.to_string()))
    })
    .transpose()
}

impl MeterConfig {
    /// Flags over file; `Ok(None)` when no ledger is configured (metering off).
    pub fn merge(a: MeteringArgs, f: MeteringFile) -> Result<Option<Self>> {
        let Some(ledger) = a.ledger.or(f.ledger) else {
            if a.chain_rpc.is_some() || f.chain_rpc.is_some() {
                return Err(Error::invalid("chain_rpc", "settlement needs --ledger"));
            }
            return Ok(None);
        };
        let default_price = Price {
            per_m_input: a
                .default_price_input
                .or(wei(f.default_price_input, "default_price_input")?)
                .unwrap_or(U256::ZERO),
            per_m_output: a
                .default_price_output
                .or(wei(f.default_price_output, "default_price_output")?)
                .unwrap_or(U256::ZERO),
        };
        let chain = match a.chain_rpc.or(f.chain_rpc) {
            None if a.adapter_registry_address.is_some()
                || f.adapter_registry_address.is_some() =>
            {
                return Err(Error::invalid(
                    "adapter_registry_address",
                    "the on-chain registry needs --chain-rpc",
                ))
            }
            None => None,
            Some(rpc_url) => {
                let settlement =
                    a.settlement_address
                        .or(f.settlement_address)
                        .ok_or_else(|| {
                            Error::invalid("settlement_address", "required with --chain-rpc")
                        })?;
                let operator_key = match a.operator_key_file.or(f.operator_key_file) {
                    Some(p) => std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?,
                    None => std::env::var("OPENLORA_OPERATOR_KEY").map_err(|_| {
                        Error::invalid(
                            "operator_key_file",
                            "settlement needs the operator key: --operator-key-file or $OPENLORA_OPERATOR_KEY",
                        )
                    })?,
                };
                let registry = a
                    .adapter_registry_address
                    .or(f.adapter_registry_address)
                    .map(|adapter_registry| RegistryConfig {
                        adapter_registry,
                        require_onchain: a.require_onchain_adapters || f.require_onchain_adapters,
                        refresh: Duration::from_secs(
                            a.chain_refresh_secs
                                .or(f.chain_refresh_secs)
                                .unwrap_or(5)
                                .max(1),
                        ),
                    });
                let max_records = a.settle_max_records.or(f.settle_max_records).unwrap_or(100);
                if max_records == 0 {
                    return Err(Error::invalid("settle_max_records", "must be > 0"));
                }
                Some(ChainConfig {
                    rpc_url,
                    settlement,
                    operator_key: operator_key.trim().to_string(),
                    max_records,
                    interval: Duration::from_secs(
                        a.settle_interval_secs
                            .or(f.settle_interval_secs)
                            .unwrap_or(30),
                    ),
                    deposit_refresh: Duration::from_secs(
                        a.deposit_refresh_secs
                            .or(f.deposit_refresh_secs)
                            .unwrap_or(5),
                    ),
                    pause_after_submit: std::env::var("OPENLORA_TEST_PAUSE_AFTER_SUBMIT")
                        .is_ok_and(|v| v == "1"),
                    registry,
                    deposit_max_staleness: Duration::from_secs(
                        a.deposit_max_staleness_secs
                            .or(f.deposit_max_staleness_secs)
                            .unwrap_or(300),
                    ),
                    write_off_after: Duration::from_secs(
                        a.write_off_after_secs
                            .or(f.write_off_after_secs)
                            .unwrap_or(7 * 86_400),
                    ),
                })
            }
        };
        Ok(Some(MeterConfig {
            ledger,
            default_price,
            datanets_dir: a.datanets_dir.or(f.datanets_dir),
            min_span: a
                .attribution_min_span
                .or(f.attribution_min_span)
                .unwrap_or(8)
                .max(1),
            chain,
        }))
    }
}
