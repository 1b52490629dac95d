//! `openlora train`: fine-tunes a LoRA adapter on a chat-format JSONL file (OpenAI's fine-tuning
//! format) and writes it as a PEFT adapter folder that `serve`/`generate --adapter` load as is.
//! Progress on stderr (an indicatif bar with step, loss, tokens/s and ETA on a terminal, a line per
//! step otherwise); checkpoints under `--out`; `--resume` continues from the last one; `--device`
//! trains on the CPU (default) or a CUDA device.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use openlora::exec::DeviceKind;
use openlora::model::{Model, Proj};
use openlora::train::{
    load_examples, training_device, AdamWConfig, Decay, JobEvent, LoraSettings, StepReport,
    TrainConfig, TrainJob,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The base model: a .gguf file, an HF model folder or a hub id.
    #[arg(long)]
    pub model: String,
    /// The GGUF file of a hub repo given as `--model org/name`.
    #[arg(long)]
    pub gguf_file: Option<String>,
    /// Training data: JSONL, one `{"messages": [...]}` per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation data (same format): its loss is reported before and after training.
    #[arg(long)]
    pub validation: Option<PathBuf>,
    /// Output folder: the PEFT adapter, checkpoints and `train_results.json`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Target projections, comma-separated: q,k,v,o,gate,up,down.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    pub targets: String,
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f32,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Forward passes per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// `linear`, `cosine` or `constant` after the warm-up.
    #[arg(long, default_value = "linear")]
    pub lr_scheduler: String,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the gradients' global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Tokens per example (longer ones are truncated).
    #[arg(long, default_value_t = 1024)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Save a checkpoint every N steps (0: at the end of each epoch).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue from the last checkpoint under `--out`.
    #[arg(long)]
    pub resume: bool,
    /// Where to train: `cpu` or `cuda[:N]` (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl TrainArgs {
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let lora = LoraSettings {
            rank: self.rank,
            alpha: self.alpha,
            targets: LoraSettings::parse_targets(&self.targets)?,
            dropout: self.dropout,
        };
        let mut cfg = TrainConfig::new(lora);
        cfg.epochs = self.epochs;
        cfg.batch_size = self.batch_size;
        cfg.grad_accum = self.grad_accum;
        cfg.lr = self.lr;
        cfg.warmup_ratio = self.warmup_ratio;
        cfg.decay = Decay::parse(&self.lr_scheduler)?;
        cfg.adamw = AdamWConfig {
            weight_decay: self.weight_decay,
            ..AdamWConfig::default()
        };
        cfg.max_grad_norm = self.max_grad_norm;
        cfg.max_seq_len = self.max_seq_len;
        cfg.seed = self.seed;
        cfg.checkpoint_every = self.checkpoint_every;
        Ok(cfg.checked()?)
    }
}

/// Sizes both thread pools (candle's matmul reads `RAYON_NUM_THREADS`; the rest uses rayon's).
fn init_threads(n: Option<usize>) -> anyhow::Result<usize> {
    let n = n.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    anyhow::ensure!(n > 0, "--threads must be > 0");
    // Set before any other thread exists (first thing `run` does).
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(n)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let threads = init_threads(args.threads)?;
    let cfg = args.config()?;
    let device = training_device(DeviceKind::parse(&args.device)?)?;
    let source = openlora::hub::resolve_model(&args.model, args.gguf_file.as_deref())?;
    let model = Arc::new(Model::load(&source.path)?);
    let (train, dropped) =
        load_examples(&model, &read(&args.data)?, "training_file", cfg.max_seq_len)?;
    let valid = match &args.validation {
        Some(p) => Some(load_examples(&model, &read(p)?, "validation_file", cfg.max_seq_len)?.0),
        None => None,
    };
    if dropped > 0 {
        eprintln!(
            "openlora: {dropped} examples have no assistant token within {} tokens: skipped",
            cfg.max_seq_len
        );
    }
    let bar = StepBar::new();
    let mut on = |ev: JobEvent| match ev {
        JobEvent::Started {
            examples,
            steps,
            first_step,
            params,
        } => {
            let targets: Vec<&str> = cfg
                .lora
                .targets
                .iter()
                .map(|p: &Proj| p.module_name())
                .collect();
            eprintln!(
                "openlora: training {params} LoRA values (rank {}, alpha {}, {}) on {examples} examples, {steps} steps from step {first_step}, {threads} threads",
                cfg.lora.rank, cfg.lora.alpha, targets.join(",")
            );
            bar.start(steps, first_step);
        }
        JobEvent::ValidationBefore(l) => {
            eprintln!(
                "openlora: validation loss before: {l:.4} (perplexity {:.2})",
                l.exp()
            )
        }
        JobEvent::Step {
            report,
            tokens_per_s,
        } => bar.update(report, tokens_per_s),
        JobEvent::Checkpoint(dir) => tracing::debug!("checkpoint {}", dir.display()),
    };
    let job = TrainJob {
        model: &model,
        cfg: cfg.clone(),
        train,
        valid,
        out: args.out.clone(),
        resume: args.resume,
        device,
    };
    let summary = job
        .run(&mut on, &AtomicBool::new(false))?
        .context("training was cancelled")?;
    bar.finish();
    if let (Some(b), Some(a)) = (summary.validation_before, summary.validation_after) {
        eprintln!(
            "openlora: validation loss {b:.4} -> {a:.4} (perplexity {:.2} -> {:.2})",
            b.exp(),
            a.exp()
        );
    }
    eprintln!(
        "openlora: {} tokens in {:.1}s ({:.1} tokens/s); adapter written to {}",
        summary.tokens,
        summary.seconds,
        summary.tokens_per_second(),
        args.out.display()
    );
    Ok(())
}

/// The step bar: indicatif on a terminal, a line per step otherwise.
struct StepBar(Option<ProgressBar>);

impl StepBar {
    fn new() -> Self {
        StepBar(openlora::progress::interactive().then(|| {
            let b = ProgressBar::hidden();
            b.set_style(
                ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
                    .expect("static template"),
            );
            b
        }))
    }

    fn start(&self, total: usize, done: usize) {
        if let Some(b) = &self.0 {
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.reset_eta();
        }
    }

    fn update(&self, r: &StepReport, tokens_per_s: f64) {
        let msg = format!(
            "loss {:.4} lr {:.2e} {:.0} tokens/s",
            r.loss, r.lr, tokens_per_s
        );
        match &self.0 {
            Some(b) => {
                b.set_position(r.step as u64);
                b.set_message(msg);
            }
            None => eprintln!(
                "openlora: step {}/{} epoch {} {msg}",
                r.step, r.total_steps, r.epoch
            ),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish();
        }
    }
}
