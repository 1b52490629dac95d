//! `--qmatmul` on the CPU twin: the demo GGUF (SmolLM2-135M-Instruct, Q4_1) with its
//! block-quantized projections kept as candle `QTensor`s and multiplied by candle's `QMatMul`,
//! against the default device path (the same blocks dequantized at load, f32). candle rounds the
//! activations to q8_1 for its integer kernels, so the two differ (issue 22); this test bounds by
//! how much on the README's question, checks the greedy answer still names Paris, and checks the
//! weight bytes it plans are the bytes it places. The measured numbers are printed
//! (`--nocapture`) and recorded in benches/RESULTS.md.

mod common;
use common::*;
use openlora::config::EngineConfig;
use openlora::engine::{LlmEngine, SeqId};
use openlora::exec::device::{planned_bytes, DeviceExecutor};
use openlora::exec::{self, DeviceKind, ExecConfig, KvDtype, StepPlan};
use openlora::kv_cache::BlockAllocator;
use openlora::lora::SlotTable;
use openlora::model::{ActivationMode, ChatMessage, LoadOptions, Model};
use openlora::ops::cpu::quant::ActPrecision;
use std::sync::Arc;

fn exec_cfg(qmatmul: bool, blocks: usize) -> ExecConfig {
    ExecConfig {
        num_blocks: blocks,
        block_size: 16,
        kv_dtype: KvDtype::Auto,
        device: DeviceKind::CandleCpu,
        max_lora_rank: 16,
        lora_dtype: Default::default(),
        qmatmul,
    }
}

/// Every row's logits of one prefill of `ids` on the twin.
fn prefill(model: &Arc<Model>, ids: &[u32], qmatmul: bool) -> Vec<f32> {
    let alloc = BlockAllocator::new(ids.len().div_ceil(16), 16);
    let cfg = exec_cfg(qmatmul, alloc.num_blocks());
    let mut ex = exec::create(model, &cfg, Arc::new(SlotTable::new(1))).unwrap();
    let mut table = alloc.new_table();
    assert!(table.reserve(ids.len()));
    let mut plan = StepPlan::default();
    plan.push_seq(ids, 0, |p| table.slot(p), table.ids(), &[], true);
    plan.logit_rows = (0..ids.len()).collect();
    ex.step(&plan).unwrap()
}

fn greedy(model: &Arc<Model>, ids: &[u32], qmatmul: bool, n: usize) -> Vec<u32> {
    greedy_on(DeviceKind::CandleCpu, model, ids, qmatmul, n)
}

fn greedy_on(
    device: DeviceKind,
    model: &Arc<Model>,
    ids: &[u32],
    qmatmul: bool,
    n: usize,
) -> Vec<u32> {
    let cfg = EngineConfig {
        device,
        num_blocks: 64,
        qmatmul,
        ..Default::default()
    };
    let mut engine = LlmEngine::new(model.clone(), cfg).unwrap();
    let arrivals = vec![vec![(SeqId(0), request(ids, vec![], greedy_params(n)))]];
    let (out, _) = run_engine(&mut engine, arrivals);
    out[&SeqId(0)].clone()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

#[test]
fn qmatmul_on_the_demo_gguf_stays_near_the_dequantized_path() {
    let model = Arc::new(Model::load(&smollm2_path()).unwrap());
    let msg = ChatMessage::text("user", "What is the capital of France?");
    let chat = model
        .template
        .as_ref()
        .unwrap()
        .render(&[msg], true)
        .unwrap();
    let tok = model.tokenizer().unwrap();
    let ids = tok.encode(&chat, false).unwrap();

    // Planned weight bytes are the placed bytes, and the blocks take less than dense f32.
    let (cfg_q, cfg_d) = (exec_cfg(true, 4), exec_cfg(false, 4));
    let (wq, _, _) = planned_bytes(&model, true, &cfg_q, 1);
    let (wd, _, _) = planned_bytes(&model, true, &cfg_d, 1);
    let slots = Arc::new(SlotTable::new(1));
    let ex = DeviceExecutor::new(&model, &cfg_q, slots, candle_core::Device::Cpu).unwrap();
    assert_eq!(ex.weight_bytes(), wq);
    assert!(wq < wd, "quantized {wq} vs dense {wd}");
    drop(ex);

    let (lq, ld) = (prefill(&model, &ids, true), prefill(&model, &ids, false));
    assert_eq!(lq.len(), ld.len());
    let vocab = model.config().vocab_size;
    let (mut max_err, mut agree) = (0f32, 0);
    for (rq, rd) in lq.chunks(vocab).zip(ld.chunks(vocab)) {
        let err = rq
            .iter()
            .zip(rd)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        max_err = max_err.max(err);
        agree += usize::from(argmax(rq) == argmax(rd));
    }
    let rows = ids.len();
    eprintln!("qmatmul vs dequantized, {rows} prompt rows: max |logit error| {max_err:.3}, argmax agrees on {agree}/{rows} rows");
    // Bounds from the measurement (2026-12-07: max error 2.22, argmax 34/37 rows) with margin: a
    // broken QMatMul path (wrong block layout, wrong shape) is off by far more than this.
    assert!(
        max_err.is_finite() && max_err < 4.0,
        "max logit error {max_err}"
    );
    assert!(agree * 10 >= rows * 8, "argmax agreement {agree}/{rows}");

    // Greedy: the dequantized path answers the README's question; candle's q8_1 activations lose
    // that answer the way the CPU executor's own int8 activations do (issue 22), an independent
    // implementation of the same rounding: both start the same wrong answer.
    let n = 16;
    let (gq, gd) = (
        greedy(&model, &ids, true, n),
        greedy(&model, &ids, false, n),
    );
    let int8 = LoadOptions {
        activations: ActivationMode::Fixed(ActPrecision::Int8),
        ..Default::default()
    };
    let m8 = Arc::new(Model::load_with(&smollm2_path(), &int8).unwrap());
    let g8 = greedy_on(DeviceKind::Cpu, &m8, &ids, false, n);
    let common = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let text = |g: &[u32]| tok.decode(g, true).unwrap();
    eprintln!(
        "greedy {n} tokens: qmatmul {:?} / dequantized {:?} / CPU executor int8 activations {:?}; qmatmul shares {} leading tokens with dequantized, {} with int8",
        text(&gq), text(&gd), text(&g8), common(&gq, &gd), common(&gq, &g8)
    );
    assert!(
        text(&gd).contains("Paris"),
        "the dequantized path: {:?}",
        text(&gd)
    );
    assert!(
        common(&gq, &g8) >= 3,
        "qmatmul {:?} vs int8 {:?}",
        text(&gq),
        text(&g8)
    );
}
