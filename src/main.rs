//! The `openlora` command line: `serve`, `generate` (one prompt, streamed to stdout), `train` (a LoRA
//! adapter from chat JSONL), `download` (hub ids into the local cache) and `bench`.

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
        /// A .gguf file, an HF model folder, or a hub id (`org/name[@rev]`, `org/name:file.gguf`).
        #[arg(long)]
        model: String,
        /// The GGUF file of a hub repo given as `--model org/name`.
        #[arg(long)]
        gguf_file: Option<String>,
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
    /// Fine-tune a LoRA adapter on chat-format JSONL; writes a PEFT adapter folder.
    Train(cli::train::TrainArgs),
    /// Fetch models and adapters by hub id into the local hub cache, then exit.
    Download(cli::download::DownloadArgs),
    /// Decode throughput: batch 1 vs batch N with N distinct adapters, in one run.
    Bench(cli::bench::BenchArgs),
    /// The device executor on random weights made on the device (GPU run, stage d).
    #[command(hide = true)]
    BenchDevice(cli::bench_device::BenchDeviceArgs),
    /// The device executor vs the CPU f32 executor: greedy tokens and logits (GPU run, stage b).
    #[command(hide = true)]
    CompareDevices(cli::compare_devices::CompareArgs),
    /// Proof of Attribution: suffix-array build time and per-call attribution latency.
    BenchAttribution(openlora::ledger::attribution_bench::AttributionBenchArgs),
    /// Print the weights hash of a PEFT adapter folder (keccak256 of adapter_model.safetensors):
    /// the `weightsHash` to register in AdapterRegistry.
    AdapterHash {
        /// The adapter folder.
        dir: PathBuf,
    },
    /// Development chain tools: deploy the contracts, read balances (anvil, demos, tests).
    DevChain(cli::chain_tools::DevChainArgs),
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
            gguf_file,
            adapters,
            prompt,
            chat,
            max_tokens,
            temperature,
            seed,
            runtime,
        } => {
            runtime.init_threads()?;
            let source = openlora::hub::resolve_model(&model, gguf_file.as_deref())?;
            let model = Arc::new(Model::load_with(&source.path, &runtime.load_options()?)?);
            let engine_cfg = runtime.engine_config(EngineConfig::default())?;
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
                t.render(&[ChatMessage::text("user", prompt)], true)?
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
            let started = std::time::Instant::now();
            let (mut first, mut usage) = (None, (0, 0));
            while let Some(ev) = stream.blocking_next() {
                first.get_or_insert_with(std::time::Instant::now);
                usage = (ev.prompt_tokens, ev.completion_tokens);
                write!(out, "{}", ev.text)?;
                out.flush()?;
                if ev.finish.is_some() {
                    break;
                }
            }
            writeln!(out)?;
            report_speed(started, first, usage);
        }
        Cmd::Bench(args) => cli::bench::run(args)?,
        Cmd::BenchDevice(args) => cli::bench_device::bench_device(args)?,
        Cmd::CompareDevices(args) => cli::compare_devices::run(args)?,
        Cmd::BenchAttribution(args) => openlora::ledger::attribution_bench::run(args)?,
        Cmd::Serve(args) => cli::serve::run(args)?,
        Cmd::Train(args) => cli::train::run(args)?,
        Cmd::Download(args) => cli::download::run(args)?,
        Cmd::AdapterHash { dir } => cli::chain_tools::adapter_hash(&dir)?,
        Cmd::DevChain(args) => cli::chain_tools::dev_chain(args)?,
        Cmd::DatanetRoot { file } => cli::chain_tools::datanet_root(&file)?,
    }
    Ok(())
}

/// `generate`'s closing line on stderr: time to first token and decode tokens/s.
fn report_speed(
    started: std::time::Instant,
    first: Option<std::time::Instant>,
    (prompt, completion): (usize, usize),
) {
    let total = started.elapsed().as_secs_f64();
    let ttft = first.map_or(total, |f| (f - started).as_secs_f64());
    let decode = (total - ttft).max(1e-9);
    eprintln!(
        "openlora: {prompt} prompt tokens, {completion} generated in {total:.2}s (first token {ttft:.2}s, {:.1} tokens/s after it)",
        completion.saturating_sub(1) as f64 / decode
    );
}
