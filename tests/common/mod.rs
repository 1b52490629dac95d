//! Shared test helpers: fixture paths, the cached SmolLM2 GGUF, and direct model calls.
#![allow(dead_code)]

pub mod minihub;
pub mod op_inputs;
pub mod serve;

use openlora::config::EngineConfig;
use openlora::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqEvent, SeqId};
use openlora::exec::{self, DeviceKind, ExecConfig, KvDtype, StepPlan};
use openlora::kv_cache::BlockAllocator;
use openlora::lora::{AdapterSlot, LoraAdapter, SlotTable};
use openlora::model::Model;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A scratch folder removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("openlora-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The SmolLM2 GGUF, fetched once into the shared cache by scripts/fetch-model.sh.
pub fn smollm2_path() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-model.sh"))
        .output()
        .expect("run scripts/fetch-model.sh");
    assert!(
        out.status.success(),
        "fetch-model.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub fn load_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs `$check(device)` as one test per executor — the CPU executor and the device executor on
/// candle's CPU device (its CUDA code's twin) — so both must pass the same test code.
#[macro_export]
macro_rules! per_device {
    ($name:ident, $check:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$check(openlora::exec::DeviceKind::Cpu)
            }
            #[test]
            fn candle_cpu() {
                super::$check(openlora::exec::DeviceKind::CandleCpu)
            }
            /// On a GPU (a cuda build); without one it prints why and returns.
            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                if let Some(why) = super::common::no_gpu() {
                    eprintln!("skipped: {why}");
                    return;
                }
                super::$check(openlora::exec::DeviceKind::Cuda(0))
            }
        }
    };
}

/// Why CUDA device 0 cannot be used here (no GPU answers, or a build without CUDA), if it cannot.
pub fn no_gpu() -> Option<String> {
    match openlora::exec::device::open_device(Some(0)) {
        Ok(_) => None,
        Err(e) => Some(format!("no GPU answers ({e})")),
    }
}

/// Last-position logits of `prompt` in one prefill, computed directly through the CPU executor.
pub fn prompt_logits(
    model: &Arc<Model>,
    prompt: &[u32],
    adapter: Option<&Arc<LoraAdapter>>,
) -> Vec<f32> {
    prompt_logits_on(DeviceKind::Cpu, model, prompt, adapter)
}

/// [`prompt_logits`] through the executor `device` names.
pub fn prompt_logits_on(
    device: DeviceKind,
    model: &Arc<Model>,
    prompt: &[u32],
    adapter: Option<&Arc<LoraAdapter>>,
) -> Vec<f32> {
    prefill_logits_on(device, model, prompt, adapter, prompt.len() - 1)
}

/// Logits of every row from `first_row` to the end of `tokens`, in one prefill through the CPU
/// executor (`[tokens.len() - first_row, vocab]`).
pub fn prefill_logits(
    model: &Arc<Model>,
    tokens: &[u32],
    adapter: Option<&Arc<LoraAdapter>>,
    first_row: usize,
) -> Vec<f32> {
    prefill_logits_on(DeviceKind::Cpu, model, tokens, adapter, first_row)
}

/// [`prefill_logits`] through the executor `device` names.
pub fn prefill_logits_on(
    device: DeviceKind,
    model: &Arc<Model>,
    tokens: &[u32],
    adapter: Option<&Arc<LoraAdapter>>,
    first_row: usize,
) -> Vec<f32> {
    let alloc = BlockAllocator::new(tokens.len().div_ceil(16), 16);
    let slots = Arc::new(SlotTable::new(1));
    let mut mix = vec![];
    if let Some(a) = adapter {
        slots.fill(AdapterSlot(0), a.clone());
        mix.push((AdapterSlot(0), 1.0));
    }
    let cfg = ExecConfig {
        num_blocks: alloc.num_blocks(),
        block_size: 16,
        kv_dtype: KvDtype::Auto,
        device,
        max_lora_rank: 64,
        lora_dtype: Default::default(),
        qmatmul: false,
    };
    let mut ex = exec::create(model, &cfg, slots).unwrap();
    let mut table = alloc.new_table();
    assert!(table.reserve(tokens.len()));
    let mut plan = StepPlan::default();
    plan.push_seq(tokens, 0, |p| table.slot(p), table.ids(), &mix, true);
    plan.logit_rows = (first_row..tokens.len()).collect();
    ex.step(&plan).unwrap()
}

pub fn greedy_params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

pub fn request(
    prompt: &[u32],
    adapters: Vec<(Arc<LoraAdapter>, f32)>,
    params: SamplingParams,
) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt.to_vec(),
        adapters: adapters.into_iter().map(|(a, w)| (a.into(), w)).collect(),
        params,
    }
}

/// Drives a synchronous engine until idle; `arrivals[step]` are requests added before that step.
/// Returns every sequence's tokens and the peak number of sequences sampled in one step.
pub fn run_engine(
    engine: &mut LlmEngine,
    mut arrivals: Vec<Vec<(SeqId, GenerateRequest)>>,
) -> (HashMap<SeqId, Vec<u32>>, usize) {
    let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut peak = 0;
    let mut step = 0;
    loop {
        if step < arrivals.len() {
            for (id, req) in std::mem::take(&mut arrivals[step]) {
                engine.add_request(id, req).unwrap();
            }
        }
        if !engine.has_work() && step >= arrivals.len() {
            break;
        }
        let events: Vec<(SeqId, SeqEvent)> = engine.step();
        peak = peak.max(events.len());
        for (id, ev) in events {
            out.entry(id).or_default().extend(ev.token);
        }
        step += 1;
        assert!(step < 100_000, "engine did not finish");
    }
    (out, peak)
}

/// Greedy tokens of one request run alone.
pub fn run_alone(model: &Arc<Model>, req: GenerateRequest) -> Vec<u32> {
    run_alone_with(model, req, KvDtype::Auto)
}

/// Greedy tokens of one request run alone with a KV cache of `kv_dtype`.
pub fn run_alone_with(model: &Arc<Model>, req: GenerateRequest, kv_dtype: KvDtype) -> Vec<u32> {
    run_alone_on(
        EngineConfig {
            kv_dtype,
            ..Default::default()
        },
        model,
        req,
    )
}

/// Greedy tokens of one request run alone on an engine configured like `cfg` (its device, KV dtype).
pub fn run_alone_on(cfg: EngineConfig, model: &Arc<Model>, req: GenerateRequest) -> Vec<u32> {
    let mut engine = LlmEngine::new(model.clone(), cfg).unwrap();
    let (out, _) = run_engine(&mut engine, vec![vec![(SeqId(0), req)]]);
    out[&SeqId(0)].clone()
}

/// The exact reference path: weights dequantized to f32 (and, by default with them, an f32 KV cache).
pub fn f32_weights() -> openlora::model::LoadOptions {
    openlora::model::LoadOptions {
        dtype: openlora::model::WeightDtype::F32,
        ..Default::default()
    }
}

/// The default engine configuration on `device`.
pub fn on(device: DeviceKind) -> EngineConfig {
    EngineConfig {
        device,
        ..Default::default()
    }
}
