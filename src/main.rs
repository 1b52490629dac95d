//! The `openlora` command line: `generate` (one prompt, streamed to stdout) and `bench`.

mod cli;

use clap::{Parser, Subcommand};
use openlora::config::EngineConfig;
use openlora::engine::{EngineHandle, GenerateRequest, LlmEngine, SamplingParams};
use openlora::lora::AdapterRegistry;
use openlora::model::{ChatMessage, Model};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "openlora",
    version,
    about = "One base LLM, thousands of LoRA adapters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Cmd {
    /// Generate a completion for one prompt, streaming text to stdout.
    Generate {
        /// A .gguf file or an HF model folder.
        #[arg(long)]
        model: PathBuf,
        /// `name=path` of a PEFT adapter folder; repeatable. The first one is used.
        #[arg(long = "adapter")]
        adapters: Vec<String>,
        #[arg(long)]
        prompt: String,
        /// Apply the model's chat template (prompt = one user message).
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        runtime: cli::runtime_args::RuntimeArgs,
    },
    /// Serve the OpenAI-compatible HTTP API.
    Serve(cli::serve::ServeArgs),
    /// Decode throughput: batch 1 vs batch N with N distinct adapters, in one run.
    Bench(cli::bench::BenchArgs),
    /// Proof of Attribution: suffix-array build time and per-call attribution latency.
    BenchAttribution(openlora::ledger::attribution_bench::AttributionBenchArgs),
    /// Print the weights hash of a PEFT adapter folder (keccak256 of adapter_model.safetensors):
    /// the `weightsHash` to register in AdapterRegistry.
    AdapterHash {
        /// The adapter folder.
        dir: PathBuf,
    },
    /// Print the records root of a datanet `.jsonl` file: the `recordsRoot` to register in
    /// DatanetRegistry.
    DatanetRoot {
        /// The datanet file.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Generate {
            model,
            adapters,
            prompt,
            chat,
            max_tokens,
            temperature,
            seed,
            runtime,
        } => {
            runtime.init_threads()?;
            let model = Arc::new(Model::load_with(&model, &runtime.load_options()?)?);
            let engine_cfg = EngineConfig {
                kv_dtype: runtime.kv_dtype()?,
                ..Default::default()
            };
            let registry = AdapterRegistry::new(model.config().clone());
            let mut mix = Vec::new();
            for spec in &adapters {
                let (name, path) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--adapter expects name=path, got `{spec}`"))?;
                registry.register(name, std::path::Path::new(path))?;
                if mix.is_empty() {
                    mix.push((registry.resolve(name)?, 1.0));
                }
            }
            let tok = model.tokenizer()?;
            let text = if chat {
                let t = model
                    .template
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("this model has no chat template"))?;
                t.render(
                    &[ChatMessage {
                        role: "user".into(),
                        content: prompt,
                    }],
                    true,
                )?
            } else {
                prompt
            };
            let prompt_ids = tok.encode(&text, false)?;
            let params = SamplingParams {
                max_tokens,
                temperature,
                seed,
                ..Default::default()
            };
            let handle = EngineHandle::spawn(LlmEngine::new(model.clone(), engine_cfg)?);
            let mut stream = handle.submit_blocking(GenerateRequest {
                prompt_ids,
                adapters: mix,
                params,
            })?;
            let mut out = std::io::stdout().lock();
            while let Some(ev) = stream.blocking_next() {
                write!(out, "{}", ev.text)?;
                out.flush()?;
                if ev.finish.is_some() {
                    break;
                }
            }
            writeln!(out)?;
        }
        Cmd::Bench(args) => cli::bench::run(args)?,
        Cmd::BenchAttribution(args) => openlora::ledger::attribution_bench::run(args)?,
        Cmd::Serve(args) => cli::serve::run(args)?,
        Cmd::AdapterHash { dir } => cli::chain_tools::adapter_hash(&dir)?,
        Cmd::DatanetRoot { file } => cli::chain_tools::datanet_root(&file)?,
    }
    Ok(())
}
