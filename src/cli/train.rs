//! `openlora train`: fine-tunes a LoRA adapter on a chat-format JSONL file (OpenAI's fine-tuning
//! format) and writes it as a PEFT adapter folder that `serve`/`generate --adapter` load as is.
//! Progress on stderr (an indicatif bar with step, loss, tokens/s and ETA on a terminal, a line per
//! step otherwise); checkpoints under `--out`; `--resume` continues from the last one.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use openlora::model::{Model, Proj};
use openlora::train::{
    checkpoints, load_examples, AdamWConfig, Decay, LoraSettings, StepReport, TrainConfig,
    TrainModel, Trainer,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
    let tm = TrainModel::new(model.config(), &model.weights)?;
    let pad = model.eos_ids.first().copied().unwrap_or(0);
    let mut trainer = Trainer::new(&tm, cfg.clone(), train, pad)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    if args.resume {
        match checkpoints(&args.out).last() {
            Some((_, dir)) => {
                trainer.resume(dir)?;
                eprintln!(
                    "openlora: resumed from {} (step {})",
                    dir.display(),
                    trainer.steps_done()
                );
            }
            None => eprintln!(
                "openlora: no checkpoint under {}: starting afresh",
                args.out.display()
            ),
        }
    }
    eprintln!(
        "openlora: training {} LoRA values (rank {}, alpha {}, {}) on {} examples, {} steps, {threads} threads",
        trainer.params().num_params(),
        cfg.lora.rank,
        cfg.lora.alpha,
        cfg.lora.targets.iter().map(|p: &Proj| p.module_name()).collect::<Vec<_>>().join(","),
        trainer.examples(),
        trainer.total_steps(),
    );
    let valid_before = valid.as_ref().map(|v| trainer.eval_loss(v)).transpose()?;
    if let Some(l) = valid_before {
        eprintln!(
            "openlora: validation loss before: {l:.4} (perplexity {:.2})",
            l.exp()
        );
    }
    let started = Instant::now();
    let (mut tokens, mut history) = (0usize, Vec::new());
    let bar = StepBar::new(trainer.total_steps(), trainer.steps_done());
    while !trainer.done() {
        let r = trainer.train_step()?;
        tokens += r.tokens;
        bar.update(&r, tokens as f64 / started.elapsed().as_secs_f64());
        history.push(serde_json::json!({"step": r.step, "epoch": r.epoch, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm}));
        let every = cfg.checkpoint_every;
        if (every > 0 && r.step % every == 0) || (every == 0 && trainer.at_epoch_end()) {
            trainer.save_checkpoint(&args.out, &model.name)?;
        }
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    trainer.params().save_peft(&args.out, &model.name)?;
    let valid_after = valid.as_ref().map(|v| trainer.eval_loss(v)).transpose()?;
    if let (Some(b), Some(a)) = (valid_before, valid_after) {
        eprintln!(
            "openlora: validation loss {b:.4} -> {a:.4} (perplexity {:.2} -> {:.2})",
            b.exp(),
            a.exp()
        );
    }
    let results = serde_json::json!({
        "base_model": model.name,
        "steps": trainer.total_steps(),
        "train_tokens": tokens,
        "seconds": secs,
        "tokens_per_second": tokens as f64 / secs.max(1e-9),
        "threads": threads,
        "validation_loss_before": valid_before,
        "validation_loss_after": valid_after,
        "history": history,
    });
    std::fs::write(
        args.out.join("train_results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!(
        "openlora: {tokens} tokens in {secs:.1}s ({:.1} tokens/s); adapter written to {}",
        tokens as f64 / secs.max(1e-9),
        args.out.display()
    );
    Ok(())
}

/// The step bar: indicatif on a terminal, a line per step otherwise.
struct StepBar(Option<ProgressBar>);

impl StepBar {
    fn new(total: usize, done: usize) -> Self {
        let bar = openlora::progress::interactive().then(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
                    .expect("static template"),
            );
            b.set_position(done as u64);
            b
        });
        StepBar(bar)
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
