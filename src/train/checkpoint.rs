//! Checkpoints of a run: `checkpoint-NNNNNN/` (N = steps done) holding the adapter as PEFT files,
//! the AdamW moments (`optimizer.safetensors`) and `trainer_state.json` (step, settings and data
//! fingerprints). A checkpoint is written under a temporary name and renamed when complete, so a
//! folder named `checkpoint-*` is always whole; the last `KEEP` are kept. Resuming checks the
//! settings and data are the run's own, then continues exactly where the run stopped.

use super::lora_params::LoraParams;
use super::tensor_io::{cerr, write_atomic, write_safetensors};
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::model::safetensors_file::to_f32;
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

const KEEP: usize = 2;
const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const PREFIX: &str = "checkpoint-";

/// FNV-1a over the examples' ids and loss masks.
fn data_fingerprint(t: &Trainer<'_>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        h ^= x;
        h = h.wrapping_mul(0x100_0000_01b3);
    };
    for e in &t.data {
        eat(e.ids.len() as u64);
        e.ids
            .iter()
            .zip(&e.loss)
            .for_each(|(&i, &l)| eat(((i as u64) << 1) | l as u64));
    }
    format!("{h:016x}")
}

/// The complete checkpoints under `out`, oldest first.
pub fn checkpoints(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix(PREFIX)?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

impl Trainer<'_> {
    /// Writes a checkpoint of the steps done so far into `out`; returns its folder.
    pub fn save_checkpoint(&self, out: &Path, base_model: &str) -> Result<PathBuf> {
        let name = format!("{PREFIX}{:06}", self.step);
        let (dir, tmp) = (out.join(&name), out.join(format!(".{name}.partial")));
        let _ = std::fs::remove_dir_all(&tmp);
        self.params.save_peft(&tmp, base_model)?;
        let mut moments = Vec::new();
        for (i, (n, v)) in self.params.named().into_iter().enumerate() {
            // The moments live on the host (AdamW runs there), whatever the training device.
            let t = |x: &Vec<f32>| Tensor::from_slice(x, v.shape(), &Device::Cpu).map_err(cerr);
            moments.push((format!("m.{n}"), t(&self.opt.m[i])?));
            moments.push((format!("v.{n}"), t(&self.opt.v[i])?));
        }
        write_safetensors(&tmp.join(OPTIMIZER_FILE), &moments)?;
        let state = serde_json::json!({
            "step": self.step,
            "total_steps": self.total_steps(),
            "adamw_t": self.opt.t,
            "config": self.cfg.fingerprint(),
            "data": data_fingerprint(self),
        });
        write_atomic(&tmp.join(STATE_FILE), state.to_string().as_bytes())?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        let all = checkpoints(out);
        for (_, old) in &all[..all.len().saturating_sub(KEEP)] {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(dir)
    }

    /// Continues from the checkpoint in `dir` (written by this run's settings and data).
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let bad = |m: &str| Error::invalid("resume", format!("{}: {m}", dir.display()));
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| bad("unreadable trainer state"))?;
        if state["config"].as_str() != Some(&self.cfg.fingerprint()) {
            return Err(bad("the checkpoint was written with other settings"));
        }
        if state["data"].as_str() != Some(&data_fingerprint(self)) {
            return Err(bad("the checkpoint was written for other training data"));
        }
        let step = state["step"].as_u64().ok_or_else(|| bad("no step"))? as usize;
        if step > self.total_steps() {
            return Err(bad("the checkpoint is past this run's last step"));
        }
        let params = LoraParams::load_peft(
            dir,
            self.model.config(),
            self.cfg.lora.clone(),
            self.model.device(),
        )?;
        let path = dir.join(OPTIMIZER_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let st =
            SafeTensors::deserialize(&bytes).map_err(|e| Error::file("safetensors", &path, e))?;
        let read = |name: &str, len: usize| -> Result<Vec<f32>> {
            let v = st
                .tensor(name)
                .map_err(|_| bad(&format!("optimizer state lacks `{name}`")))?;
            to_f32(v.dtype(), v.data())
                .filter(|x| x.len() == len)
                .ok_or_else(|| bad(&format!("optimizer state `{name}` has the wrong size")))
        };
        for (i, (n, v)) in params.named().into_iter().enumerate() {
            self.opt.m[i] = read(&format!("m.{n}"), v.elem_count())?;
            self.opt.v[i] = read(&format!("v.{n}"), v.elem_count())?;
        }
        self.opt.t = state["adamw_t"].as_u64().ok_or_else(|| bad("no adamw_t"))?;
        self.params = params;
        self.step = step;
        Ok(())
    }
}
