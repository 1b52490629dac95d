//! `openlora download`: fetches base models and adapters by hub id into the local hub cache
//! (`HF_HUB_CACHE`/`HF_HOME`) and exits, printing each local path on stdout. Same rules, limits and
//! progress as `serve --model org/name` and `--hub-adapter`; what is cached already is not fetched
//! again. Used by the Helm chart's init container, after which `serve` can run with
//! `HF_HUB_OFFLINE=1`.

use anyhow::Context;
use openlora::hub::{self, ModelRef};

#[derive(clap::Args, Debug)]
pub struct DownloadArgs {
    /// Model hub ids: `org/name[@rev]` (safetensors, sharded or not) or `org/name[@rev]:file.gguf`;
    /// repeatable or comma-separated.
    #[arg(
        long = "model",
        env = "OPENLORA_DOWNLOAD_MODELS",
        value_delimiter = ','
    )]
    pub models: Vec<String>,
    /// Adapter hub ids (`org/name[@rev]`); repeatable or comma-separated.
    #[arg(
        long = "adapter",
        env = "OPENLORA_DOWNLOAD_ADAPTERS",
        value_delimiter = ','
    )]
    pub adapters: Vec<String>,
}

pub fn run(args: DownloadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.models.is_empty() || !args.adapters.is_empty(),
        "nothing to download: pass --model and/or --adapter hub ids"
    );
    let cache = hub::cache_from_env();
    let endpoint = hub::endpoint_from_env();
    for id in args.models.iter().filter(|s| !s.is_empty()) {
        let r = ModelRef::parse(id, None)?;
        let path = hub::fetch_model(&cache, &endpoint, &r)
            .with_context(|| format!("downloading model {id}"))?;
        println!("{}", path.display());
    }
    for id in args.adapters.iter().filter(|s| !s.is_empty()) {
        let path = openlora::lora::hub::fetch_into(&cache, &endpoint, id)
            .with_context(|| format!("downloading adapter {id}"))?;
        println!("{}", path.display());
    }
    Ok(())
}
