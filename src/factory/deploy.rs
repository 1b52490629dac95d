//! Deployment of a finished job: the adapter's PEFT files are copied from the work folder into
//! `<data dir>/adapters/.<name>.partial/` with the job's terms as `manifest.json` (the pricing
//! module's format) and the folder is renamed to `<name>/` whole; the training records that name
//! a contributor become the datanet `<data dir>/datanets/<id>.jsonl` (`{"text", "contributor"}`
//! per assistant reply), indexed into the meter so answers attribute to those contributors; then,
//! under the factory's finish lock and only if the job is still running (not cancelled), the
//! adapter is registered hot — the registry call `/v1/load_lora_adapter` makes — and the job
//! marked succeeded with its `fine_tuned_model`: `<base>:<adapter name>`, the `base:adapter` form
//! a request's `model` already accepts. With the on-chain registry, the adapter and its datanet
//! are registered on chain between installing and serving (`onchain`).

use super::file_store::contributor_of;
use super::job_spec::DatanetSpec;
use super::store::JobRow;
use super::Factory;
use crate::error::{Error, Result};
use crate::ledger::attribution::Datanet;
use crate::train::tensor_io::write_atomic;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ADAPTER_FILES: [&str; 3] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "train_results.json",
];

/// The registered adapter name of a job: `ft-<suffix>-<8 hex of the job id>`.
pub fn adapter_name(job: &JobRow) -> String {
    let suffix = job.spec.suffix.as_deref().unwrap_or("model");
    format!("ft-{suffix}-{}", &job.id.hex()[..8])
}

/// (contributor, assistant reply) of every training line that names a contributor.
fn records(text: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(Some(who)) = contributor_of(line) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for m in v["messages"].as_array().into_iter().flatten() {
            if m["role"] == "assistant" {
                if let Some(c) = m["content"].as_str() {
                    out.push((format!("{who:#x}"), c.to_string()));
                }
            }
        }
    }
    out
}

/// A datanet whose contributors get a share needs records that name them.
pub fn check_contributors(text: &str, d: &DatanetSpec) -> Result<()> {
    if d.fee_split_bps[1] > 0 && records(text).is_empty() {
        return Err(Error::invalid(
            "datanet",
            "the contributors' share needs training lines that name their `contributor`",
        ));
    }
    Ok(())
}

fn manifest(d: &DatanetSpec) -> Value {
    json!({
        "owner": d.owner,
        "price_per_million_input_tokens": d.price_per_million_input_tokens,
        "price_per_million_output_tokens": d.price_per_million_output_tokens,
        "datanets": [{"id": d.id, "weight_bps": 10000}],
        "fee_split_bps": {"owner": d.fee_split_bps[0], "contributors": d.fee_split_bps[1], "operator": d.fee_split_bps[2]},
    })
}

impl Factory {
    fn adapter_dir(&self, name: &str) -> PathBuf {
        self.opts.data_dir.join("adapters").join(name)
    }

    pub(super) fn datanet_path(&self, id: &str) -> PathBuf {
        self.opts
            .data_dir
            .join("datanets")
            .join(format!("{id}.jsonl"))
    }

    /// Copies the trained adapter into its final folder (whole or not at all).
    fn install_adapter(&self, job: &JobRow, name: &str) -> Result<PathBuf> {
        let dir = self.adapter_dir(name);
        let parent = dir.parent().expect("under the data dir");
        let tmp = parent.join(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let work = self.work_dir(&job.id);
        for f in ADAPTER_FILES {
            std::fs::copy(work.join(f), tmp.join(f)).map_err(|e| Error::io(work.join(f), e))?;
        }
        if let Some(d) = &job.spec.datanet {
            let text = serde_json::to_string_pretty(&manifest(d))
                .map_err(|e| Error::Internal(e.to_string()))?;
            write_atomic(&tmp.join("manifest.json"), text.as_bytes())?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// Writes the job's datanet file (once) and indexes it into the meter.
    fn index_datanet(&self, job: &JobRow) -> Result<()> {
        let (Some(d), Some(meter)) = (&job.spec.datanet, &self.meter) else {
            return Ok(());
        };
        let path = self.datanet_path(&d.id);
        if !path.exists() {
            let f = self.file(&job.spec.training_file)?;
            let lines: Vec<String> = records(&self.files.read_text(&f.id)?)
                .into_iter()
                .map(|(who, text)| json!({"text": text, "contributor": who}).to_string())
                .collect();
            let parent = path.parent().expect("under the data dir");
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            write_atomic(&path, (lines.join("\n") + "\n").as_bytes())?;
        }
        index(meter, &d.id, &path, self.model.tokenizer.as_ref())
    }

    /// Deploys a finished job (see the module header); an error fails the job.
    pub(super) fn deploy(&self, job: &JobRow, tokens: u64) -> Result<()> {
        let name = adapter_name(job);
        let dir = self.install_adapter(job, &name)?;
        self.index_datanet(job)?;
        if !self.register_on_chain(job, &name, &dir, true)? {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        let fine_tuned = self.fine_tuned_name(job);
        let _finish = self.finish.lock().unwrap_or_else(|p| p.into_inner());
        let running = self
            .store
            .job(&job.id)?
            .is_some_and(|j| j.status == super::JobStatus::Running);
        if !running {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        self.registry.register(&name, &dir)?;
        self.metrics
            .adapters_registered
            .set(self.registry.len() as i64);
        if !self.store.succeed(&job.id, &fine_tuned, tokens)? {
            let _ = self.registry.unregister(&name);
            return Ok(());
        }
        self.event(
            &job.id,
            "message",
            &format!("New fine-tuned model created: {fine_tuned}"),
            None,
        );
        self.event(
            &job.id,
            "message",
            "The job has successfully completed",
            None,
        );
        Ok(())
    }

    /// Registers a succeeded job's adapter again (start-up); `chain_reachable` as in
    /// `recheck_on_chain`.
    pub(super) fn redeploy(&self, job: &JobRow, chain_reachable: &mut bool) -> Result<()> {
        let name = adapter_name(job);
        self.index_datanet(job)?;
        let dir = self.adapter_dir(&name);
        self.recheck_on_chain(job, &name, &dir, chain_reachable);
        if self.registry.get_id(&name).is_none() {
            self.registry.register(&name, &dir)?;
            self.metrics
                .adapters_registered
                .set(self.registry.len() as i64);
        }
        Ok(())
    }
}

fn index(
    meter: &Arc<crate::ledger::Meter>,
    id: &str,
    path: &Path,
    tokenizer: Option<&crate::model::Tokenizer>,
) -> Result<()> {
    let d = Datanet::load(id, path, tokenizer)?;
    meter.add_datanet(Arc::new(d));
    Ok(())
}
