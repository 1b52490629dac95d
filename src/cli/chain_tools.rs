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
