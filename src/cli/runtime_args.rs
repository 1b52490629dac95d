//! The flags that choose how the model runs, shared by `serve`, `generate` and `bench`: weight
//! format in memory, load-time quantization, KV cache element type, compute threads, the executor's
//! device. Parsed once into library types; a bad value is a clear error naming the flag.

use anyhow::Context;
use openlora::config::EngineConfig;
use openlora::exec::{DeviceKind, KvDtype, LoraDtype};
use openlora::model::{ActivationMode, LoadOptions, WeightDtype};
use openlora::ops::cpu::quant::WeightFormat;

#[derive(clap::Args, Debug, Default, Clone)]
pub struct RuntimeArgs {
    /// Weights in memory: `auto` keeps the file's formats (GGUF quant blocks computed on directly,
    /// HF 16-bit tensors as they are); `f32` dequantizes everything (the exact reference path).
    #[arg(long, env = "OPENLORA_DTYPE")]
    pub dtype: Option<String>,
    /// Quantize the projections at load (`q8_0` or `q4_k`), like mistral.rs ISQ.
    #[arg(long, env = "OPENLORA_QUANTIZE")]
    pub quantize: Option<String>,
    /// Activations against block-quantized weights: `auto` (= `int16`, the accurate one: two
    /// 8-bit planes, ~15 bits, answers like the f32 model) or `int8` (ggml's rounding, as
    /// llama.cpp; faster, loses answers on small models). Float weights always see f32.
    #[arg(long, env = "OPENLORA_ACTIVATIONS")]
    pub activations: Option<String>,
    /// KV cache element type: `auto` (f16; f32 with `--dtype f32`), `f16`, `bf16` or `f32`.
    #[arg(long, env = "OPENLORA_KV_CACHE_DTYPE")]
    pub kv_cache_dtype: Option<String>,
    /// Compute threads (default: the machine's cores).
    #[arg(long, env = "OPENLORA_THREADS")]
    pub threads: Option<usize>,
    /// Executor: `auto` (CUDA when built with it and a GPU answers, else `cpu`), `cpu`,
    /// `cuda` / `cuda:N`, or `candle-cpu` (the CUDA path's code on the CPU: a test vehicle).
    #[arg(long, env = "OPENLORA_DEVICE")]
    pub device: Option<String>,
    /// Largest adapter rank the device executor's adapter slot pool takes (default 16, as vLLM;
    /// the pool is allocated up front at this rank).
    #[arg(long, env = "OPENLORA_MAX_LORA_RANK")]
    pub max_lora_rank: Option<usize>,
    /// Element type adapters are read in: `auto` (f32 next to float weights — the exact path;
    /// int8 next to block-quantized weights: a quarter of the bytes per token), `f32`, `bf16` or
    /// `int8`.
    #[arg(long, env = "OPENLORA_LORA_DTYPE")]
    pub lora_dtype: Option<String>,
    /// Device executor only: keep GGUF block-quantized projections quantized on the device and
    /// multiply with candle's `QMatMul` (a quarter to half the weight memory; candle rounds the
    /// activations to 8 bits, so answers can differ from the default dequantized path).
    #[arg(long, env = "OPENLORA_QMATMUL")]
    pub qmatmul: bool,
}

impl RuntimeArgs {
    /// Fills unset fields from `other` (e.g. a config file).
    pub fn or(self, other: RuntimeArgs) -> RuntimeArgs {
        RuntimeArgs {
            dtype: self.dtype.or(other.dtype),
            quantize: self.quantize.or(other.quantize),
            activations: self.activations.or(other.activations),
            kv_cache_dtype: self.kv_cache_dtype.or(other.kv_cache_dtype),
            threads: self.threads.or(other.threads),
            device: self.device.or(other.device),
            max_lora_rank: self.max_lora_rank.or(other.max_lora_rank),
            lora_dtype: self.lora_dtype.or(other.lora_dtype),
            qmatmul: self.qmatmul || other.qmatmul,
        }
    }

    pub fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let dtype = match self.dtype.as_deref().unwrap_or("auto") {
            "auto" => WeightDtype::Auto,
            "f32" | "float32" => WeightDtype::F32,
            other => anyhow::bail!("--dtype `{other}`: expected auto or f32"),
        };
        let quantize = match self.quantize.as_deref() {
            None | Some("none") => None,
            Some(q) => match WeightFormat::from_name(q) {
                Some(f @ (WeightFormat::Q8_0 | WeightFormat::Q4_K)) => Some(f),
                _ => anyhow::bail!("--quantize `{q}`: expected q8_0 or q4_k"),
            },
        };
        anyhow::ensure!(
            !(quantize.is_some() && dtype == WeightDtype::F32),
            "--quantize and --dtype f32 exclude each other"
        );
        let activations = ActivationMode::parse(self.activations.as_deref().unwrap_or("auto"))
            .context("--activations")?;
        Ok(LoadOptions {
            dtype,
            quantize,
            activations,
        })
    }

    pub fn kv_dtype(&self) -> anyhow::Result<KvDtype> {
        KvDtype::parse(self.kv_cache_dtype.as_deref().unwrap_or("auto")).context("--kv-cache-dtype")
    }

    pub fn device(&self) -> anyhow::Result<DeviceKind> {
        DeviceKind::parse(self.device.as_deref().unwrap_or("auto")).context("--device")
    }

    /// `base` with the KV dtype, device and adapter rank limit these flags choose.
    pub fn engine_config(&self, base: EngineConfig) -> anyhow::Result<EngineConfig> {
        Ok(EngineConfig {
            kv_dtype: self.kv_dtype()?,
            device: self.device()?,
            max_lora_rank: self.max_lora_rank.unwrap_or(base.max_lora_rank),
            lora_dtype: LoraDtype::parse(self.lora_dtype.as_deref().unwrap_or("auto"))
                .context("--lora-dtype")?,
            qmatmul: self.qmatmul,
            ..base
        })
    }

    /// Sizes the global compute pool once (before any parallel work); returns its thread count.
    pub fn init_threads(&self) -> anyhow::Result<usize> {
        let n = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        anyhow::ensure!(n > 0, "--threads must be > 0");
        // Fails only if the pool was already built (then it keeps its size).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
        Ok(rayon::current_num_threads())
    }
}
