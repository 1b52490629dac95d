//! The training engine on the tiny fixture Llama (GQA, tied embeddings): every LoRA parameter's
//! gradient against central finite differences (f64, dropout on, a padded two-row batch); the
//! generic device path (the one CUDA takes) against the CPU path (same loss and gradients); the
//! training forward against the inference engine's f32 executor (base and adapter); a trained
//! adapter saved as PEFT files, loaded by the engine's own loader, giving the logits of the
//! in-memory adapter; padding that changes no row's loss; seeded runs that repeat, a resumed run
//! equal to an uninterrupted one, and a validation loss that falls.

mod common;
use candle_core::{DType, Tensor};
use common::*;
use openlora::lora::AdapterRegistry;
use openlora::model::{Model, Proj};
use openlora::train::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn tiny() -> Arc<Model> {
    Arc::new(Model::load_with(&fixtures().join("tiny/model"), &f32_weights()).unwrap())
}

fn settings(rank: usize, dropout: f32) -> LoraSettings {
    LoraSettings {
        rank,
        alpha: 2.0 * rank as f64,
        targets: Proj::ALL.to_vec(),
        dropout,
    }
}

/// Random ids with the loss on a suffix (as if the tail were the assistant's turn).
fn example(rng: &mut StdRng, len: usize, vocab: u32) -> TrainExample {
    let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab)).collect();
    let loss = (0..len).map(|i| i >= len / 3).collect();
    TrainExample { ids, loss }
}

/// Sets every LoRA value to U(-0.5, 0.5) (B = 0 at init would zero A's gradient).
fn randomize(params: &LoraParams, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for (_, v) in params.named() {
        let vals: Vec<f64> = (0..v.elem_count())
            .map(|_| rng.random_range(-0.5..0.5))
            .collect();
        let t = Tensor::from_vec(vals, v.shape(), v.device())
            .unwrap()
            .to_dtype(v.dtype())
            .unwrap();
        v.set(&t).unwrap();
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Random rank-2 pairs of `dtype` on every target (dropout 0.1) and a padded two-row batch.
fn gradient_setup(model: &Model, dtype: DType) -> (LoraParams, Batch) {
    let params = LoraParams::init_as(model.config(), settings(2, 0.1), 7, dtype).unwrap();
    randomize(&params, 8);
    let mut rng = StdRng::seed_from_u64(9);
    let (a, b) = (example(&mut rng, 9, 256), example(&mut rng, 6, 256));
    (params, Batch::new(&[&a, &b], 0))
}

#[test]
fn every_lora_gradient_matches_finite_differences() {
    let model = tiny();
    let tm = TrainModel::with_dtype(model.config(), &model.weights, DType::F64).unwrap();
    let (params, batch) = gradient_setup(&model, DType::F64);
    let loss = |p: &LoraParams| {
        let mut d = Dropout::new(0.1, 11);
        tm.loss(&batch, Some(p), Some(&mut d)).unwrap()
    };
    let grads = loss(&params).backward().unwrap();
    let h = 1e-5;
    let (mut checked, mut worst) = (0, 0f64);
    for (name, var) in params.named() {
        let g = values(
            grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient reaches {name}")),
        );
        let base = values(var.as_tensor());
        assert!(g.iter().any(|&x| x != 0.0), "{name}: gradient is all zero");
        for i in 0..base.len() {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
                    .unwrap();
                values(&loss(&params))[0]
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let err = (fd - g[i]).abs() / (1.0 + fd.abs());
            assert!(
                err < 1e-6,
                "{name}[{i}]: finite difference {fd} vs autograd {}",
                g[i]
            );
            worst = worst.max(err);
            checked += 1;
        }
        var.set(&Tensor::from_vec(base, var.shape(), var.device()).unwrap())
            .unwrap();
    }
    assert_eq!(checked, params.num_params());
    eprintln!("{checked} LoRA gradients checked, worst relative error {worst:.2e}");
}

/// The generic (device) path, the one CUDA takes (plain matmul with constant frozen weights), run
/// on the CPU gives the CPU path's loss and every LoRA gradient (f32, dropout on, padded batch).
#[test]
fn the_device_path_matches_the_cpu_path() {
    let model = tiny();
    let (cfg, w) = (model.config(), &model.weights);
    let cpu = TrainModel::with_dtype(cfg, w, DType::F32).unwrap();
    let generic = TrainModel::generic_on_cpu(cfg, w, DType::F32).unwrap();
    let (params, batch) = gradient_setup(&model, DType::F32);
    let run = |tm: &TrainModel| {
        let mut d = Dropout::new(0.1, 11);
        let loss = tm.loss(&batch, Some(&params), Some(&mut d)).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Vec<f64>> = params
            .named()
            .iter()
            .map(|(n, v)| values(grads.get(v).unwrap_or_else(|| panic!("no gradient: {n}"))))
            .collect();
        (values(&loss)[0], g)
    };
    let ((l_cpu, g_cpu), (l_gen, g_gen)) = (run(&cpu), run(&generic));
    assert!(
        (l_cpu - l_gen).abs() <= 1e-5 * (1.0 + l_cpu.abs()),
        "loss: cpu {l_cpu} vs device path {l_gen}"
    );
    let mut worst = 0f64;
    for ((name, _), (gc, gg)) in params.named().iter().zip(g_cpu.iter().zip(&g_gen)) {
        assert!(gc.iter().any(|&x| x != 0.0), "{name}: gradient is all zero");
        for (i, (x, y)) in gc.iter().zip(gg).enumerate() {
            let err = (x - y).abs() / (1e-3 + x.abs());
            assert!(err < 1e-5, "{name}[{i}]: cpu {x} vs device path {y}");
            worst = worst.max(err);
        }
    }
    eprintln!("loss {l_cpu} vs {l_gen}; worst gradient relative error {worst:.2e}");
}

#[test]
fn training_forward_matches_the_inference_engine_and_peft_round_trip() {
    let model = tiny();
    let tm = TrainModel::new(model.config(), &model.weights).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let data: Vec<TrainExample> = (0..8).map(|i| example(&mut rng, 6 + i, 256)).collect();
    let mut cfg = TrainConfig::new(settings(4, 0.05));
    cfg.lora.targets = vec![Proj::Q, Proj::V, Proj::O, Proj::Down];
    cfg.lr = 5e-3;
    cfg.epochs = 1;
    cfg.batch_size = 2;
    let mut trainer = Trainer::new(&tm, cfg, data, 0).unwrap();
    while !trainer.done() {
        trainer.train_step().unwrap();
    }
    let prompt: Vec<u32> = (0..12).map(|_| rng.random_range(0..256)).collect();
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len());
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{what}: max |logit diff| {d}");
    };
    // Base model: the training forward is the engine's f32 forward.
    close(
        &tm.logits(&prompt, None).unwrap(),
        &prefill_logits(&model, &prompt, None, 0),
        "base",
    );
    // The trained adapter, saved as PEFT files and loaded by the engine's registry.
    let scratch = Scratch::new("train-roundtrip");
    let dir = scratch.0.join("adapter");
    trainer.params().save_peft(&dir, "tiny").unwrap();
    let reg = AdapterRegistry::new(model.config().clone());
    reg.register("trained", &dir).unwrap();
    let loaded = reg.load("trained").unwrap();
    let in_memory = Arc::new(trainer.params().to_adapter("in-memory").unwrap());
    let from_files = prefill_logits(&model, &prompt, Some(&loaded), 0);
    let ours = tm.logits(&prompt, Some(trainer.params())).unwrap();
    close(
        &from_files,
        &prefill_logits(&model, &prompt, Some(&in_memory), 0),
        "saved vs in-memory",
    );
    close(&from_files, &ours, "engine vs training forward");
    let base = prefill_logits(&model, &prompt, None, 0);
    let moved = from_files
        .iter()
        .zip(&base)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-3,
        "training did not change the adapter's logits ({moved})"
    );
    let config: serde_json::Value = load_json(&dir.join("adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["down_proj", "o_proj", "q_proj", "v_proj"])
    );
}

#[test]
fn padding_changes_no_rows_loss() {
    let model = tiny();
    let tm = TrainModel::new(model.config(), &model.weights).unwrap();
    let params = LoraParams::init(model.config(), settings(4, 0.0), 3).unwrap();
    randomize(&params, 4);
    let mut rng = StdRng::seed_from_u64(5);
    let (short, long) = (example(&mut rng, 5, 256), example(&mut rng, 13, 256));
    let loss = |ex: &[&TrainExample]| {
        values(&tm.loss(&Batch::new(ex, 3), Some(&params), None).unwrap())[0]
    };
    let together = loss(&[&short, &long]);
    let apart = loss(&[&short]) + loss(&[&long]);
    assert!(
        (together - apart).abs() < 1e-4 * apart.abs(),
        "{together} vs {apart}"
    );
}

fn run(
    tm: &TrainModel,
    data: &[TrainExample],
    cfg: &TrainConfig,
    stop_at: Option<(usize, &std::path::Path)>,
) -> Vec<Vec<f32>> {
    let mut t = Trainer::new(tm, cfg.clone(), data.to_vec(), 0).unwrap();
    if let Some((_, dir)) = stop_at {
        if let Some((_, ck)) = checkpoints(dir).last() {
            t.resume(ck).unwrap();
        }
    }
    while !t.done() {
        t.train_step().unwrap();
        if let Some((n, dir)) = stop_at {
            if t.steps_done() == n {
                t.save_checkpoint(dir, "tiny").unwrap();
                return vec![];
            }
        }
    }
    t.params()
        .named()
        .iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn seeded_runs_repeat_and_resume_equals_uninterrupted() {
    let model = tiny();
    let tm = TrainModel::new(model.config(), &model.weights).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let data: Vec<TrainExample> = (0..10).map(|i| example(&mut rng, 5 + i % 4, 256)).collect();
    let mut cfg = TrainConfig::new(settings(4, 0.1));
    cfg.batch_size = 2;
    cfg.grad_accum = 2;
    cfg.epochs = 2;
    cfg.lr = 1e-2;
    let straight = run(&tm, &data, &cfg, None);
    assert_eq!(
        straight,
        run(&tm, &data, &cfg, None),
        "same seed, same adapter"
    );
    let scratch = Scratch::new("train-resume");
    assert!(run(&tm, &data, &cfg, Some((4, &scratch.0))).is_empty());
    assert_eq!(checkpoints(&scratch.0).len(), 1);
    assert_eq!(
        straight,
        run(&tm, &data, &cfg, Some((usize::MAX, &scratch.0))),
        "resumed run differs"
    );
    let mut other = cfg.clone();
    other.seed += 1;
    assert_ne!(
        straight,
        run(&tm, &data, &other, None),
        "another seed gives another run"
    );
    // A checkpoint of other settings is refused.
    let mut t = Trainer::new(&tm, other, data.clone(), 0).unwrap();
    let err = t
        .resume(&checkpoints(&scratch.0)[0].1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn validation_loss_falls() {
    let model = tiny();
    let tm = TrainModel::new(model.config(), &model.weights).unwrap();
    // Replies that always start with the same three tokens, after random prompts.
    let mut rng = StdRng::seed_from_u64(6);
    let mut make = |n: usize| -> Vec<TrainExample> {
        (0..n)
            .map(|_| {
                let mut ids: Vec<u32> = (0..6).map(|_| rng.random_range(10..256)).collect();
                let prompt_len = ids.len();
                ids.extend([7, 8, 9]);
                let loss = (0..ids.len()).map(|i| i >= prompt_len).collect();
                TrainExample { ids, loss }
            })
            .collect()
    };
    let (train, valid) = (make(24), make(8));
    let mut cfg = TrainConfig::new(settings(4, 0.0));
    cfg.lr = 2e-2;
    cfg.epochs = 4;
    cfg.decay = Decay::Cosine;
    let mut t = Trainer::new(&tm, cfg, train, 0).unwrap();
    let before = t.eval_loss(&valid).unwrap();
    while !t.done() {
        t.train_step().unwrap();
    }
    let after = t.eval_loss(&valid).unwrap();
    assert!(after < 0.5 * before, "validation loss {before} -> {after}");
}

#[test]
fn a_cancelled_job_leaves_no_adapter_and_resumes_to_the_same_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let model = tiny();
    let mut rng = StdRng::seed_from_u64(12);
    let train: Vec<TrainExample> = (0..8).map(|i| example(&mut rng, 5 + i % 3, 256)).collect();
    let valid: Vec<TrainExample> = (0..3).map(|_| example(&mut rng, 7, 256)).collect();
    let mut cfg = TrainConfig::new(settings(2, 0.0));
    cfg.batch_size = 2;
    cfg.checkpoint_every = 1;
    cfg.lr = 1e-2;
    let job = |out: &std::path::Path, resume: bool| TrainJob {
        model: &model,
        cfg: cfg.clone(),
        train: train.clone(),
        valid: Some(valid.clone()),
        out: out.to_path_buf(),
        resume,
        device: candle_core::Device::Cpu,
    };
    let weights =
        |dir: &std::path::Path| std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let straight = Scratch::new("train-job-straight");
    let done = job(&straight.0, false)
        .run(&mut |_| {}, &AtomicBool::new(false))
        .unwrap()
        .unwrap();
    assert_eq!(done.steps, 12);
    // Random validation data: its loss is only reported (it falls in `validation_loss_falls`).
    assert!(
        done.validation_before.unwrap().is_finite() && done.validation_after.unwrap().is_finite()
    );
    let cut = Scratch::new("train-job-cancelled");
    let cancel = AtomicBool::new(false);
    let mut on_step = |ev: JobEvent| {
        if let JobEvent::Step { report, .. } = ev {
            if report.step == 5 {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    };
    assert!(job(&cut.0, false)
        .run(&mut on_step, &cancel)
        .unwrap()
        .is_none());
    assert!(
        !cut.0.join("adapter_model.safetensors").exists(),
        "a cancelled run wrote an adapter"
    );
    assert!(!cut.0.join("adapter_config.json").exists());
    assert_eq!(checkpoints(&cut.0).last().unwrap().0, 5);
    let resumed = job(&cut.0, true)
        .run(&mut |_| {}, &AtomicBool::new(false))
        .unwrap()
        .unwrap();
    assert_eq!(resumed.history.len(), 7, "steps 6..=12 after the resume");
    assert_eq!(
        weights(&straight.0),
        weights(&cut.0),
        "resumed job's adapter differs"
    );
}
