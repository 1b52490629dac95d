//! `openlora adapter-hash DIR` and `openlora datanet-root FILE.jsonl`: the values to register on
//! chain (`AdapterRegistry.register(.., weightsHash, ..)`, `DatanetRegistry.createDatanet(..,
//! recordsRoot, ..)`), computed exactly as the server checks them.

use anyhow::Context;
use openlora::lora::{weights_hash, WEIGHTS_FILE};
use std::path::Path;

/// Prints the canonical weights hash of the PEFT adapter folder `dir`.
pub fn adapter_hash(dir: &Path) -> anyhow::Result<()> {
    let file = dir.join(WEIGHTS_FILE);
    let bytes = openlora::lora::regular_file::read(&file)
        .with_context(|| format!("reading {}", file.display()))?;
    println!("{}", weights_hash(&bytes));
    Ok(())
}

/// Prints the records root of the datanet file `path`.
pub fn datanet_root(path: &Path) -> anyhow::Result<()> {
    let root = openlora::ledger::datanet_root::records_root_of_file(path)
        .with_context(|| format!("reading {}", path.display()))?;
    println!("{root}");
    Ok(())
}

/// `openlora dev-chain`: contracts and balances on a development chain (anvil), for demos and
/// the SDK tests. The signer key is read from `--key-file` (never a flag value).
#[derive(clap::Args, Debug)]
pub struct DevChainArgs {
    #[command(subcommand)]
    pub cmd: DevChainCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum DevChainCmd {
    /// Deploy DatanetRegistry, AdapterRegistry and Settlement, enable `--operator`, fund payers;
    /// prints the addresses as JSON.
    Deploy {
        #[arg(long)]
        rpc: String,
        /// File holding the deployer's hex private key (it owns the contracts).
        #[arg(long)]
        key_file: std::path::PathBuf,
        /// The server's settlement signer.
        #[arg(long)]
        operator: alloy::primitives::Address,
        #[arg(long)]
        fee_recipient: alloy::primitives::Address,
        #[arg(long, default_value_t = 250)]
        fee_bps: u16,
        /// `payer=wei` deposits made for payers (repeatable).
        #[arg(long = "deposit")]
        deposits: Vec<String>,
    },
    /// Prints each account's escrow and earnings in Settlement as JSON.
    Balances {
        #[arg(long)]
        rpc: String,
        #[arg(long)]
        settlement: alloy::primitives::Address,
        accounts: Vec<alloy::primitives::Address>,
    },
}

pub fn dev_chain(args: DevChainArgs) -> anyhow::Result<()> {
    use openlora::chain::{DeployConfig, Deployment, Settler};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.cmd {
            DevChainCmd::Deploy {
                rpc,
                key_file,
                operator,
                fee_recipient,
                fee_bps,
                deposits,
            } => {
                let key = std::fs::read_to_string(&key_file)
                    .with_context(|| format!("reading {}", key_file.display()))?;
                let cfg = DeployConfig {
                    owner: None,
                    fee_recipient,
                    protocol_fee_bps: fee_bps,
                    withdrawal_delay_secs: 86_400,
                };
                let s = Settler::deploy_all(&rpc, key.trim(), &cfg).await?;
                s.set_operator(operator, true).await?;
                for d in &deposits {
                    let (who, wei) = d.split_once('=').context("--deposit payer=wei")?;
                    s.deposit_for(who.parse()?, wei.parse()?).await?;
                }
                let d = s.deployment();
                let out = serde_json::json!({"settlement": d.settlement,
                    "adapter_registry": d.adapter_registry, "datanet_registry": d.datanet_registry});
                println!("{out}");
            }
            DevChainCmd::Balances {
                rpc,
                settlement,
                accounts,
            } => {
                // A throwaway signer: balances are reads.
                let key = format!("0x{}", "11".repeat(32));
                let deployment = Deployment {
                    settlement,
                    adapter_registry: alloy::primitives::Address::ZERO,
                    datanet_registry: alloy::primitives::Address::ZERO,
                };
                let s = Settler::connect(&rpc, &key, deployment).await?;
                let mut out = serde_json::Map::new();
                for a in accounts {
                    let b = s.balances(a).await?;
                    out.insert(
                        format!("{a:#x}"),
                        serde_json::json!({"escrow": b.escrow.to_string(), "earnings": b.earnings.to_string()}),
                    );
                }
                println!("{}", serde_json::Value::Object(out));
            }
        }
        Ok(())
    })
}
