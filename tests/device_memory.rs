//! The device executor's memory plan against what it really allocates, on the CPU twin: for
//! every weight/KV dtype choice the planned weight, adapter-pool and KV-block bytes equal the
//! bytes of the tensors `DeviceExecutor::new` creates (the KV cache used to be sized as f16 and
//! allocated as f32 on candle-cpu), and a utilization that leaves nothing for the KV cache is a
//! clear start-up error.

mod common;
use common::*;
use openlora::exec::device::{plan_memory, planned_bytes, DeviceExecutor};
use openlora::exec::{DeviceKind, ExecConfig, KvDtype};
use openlora::lora::SlotTable;
use openlora::model::{LoadOptions, Model};
use std::sync::Arc;

#[test]
fn planned_bytes_are_the_allocated_bytes() {
    let dir = fixtures().join("tiny/model");
    for (opts, kv) in [
        (LoadOptions::default(), KvDtype::Auto),
        (f32_weights(), KvDtype::Auto),
        (LoadOptions::default(), KvDtype::F16),
        (LoadOptions::default(), KvDtype::BF16),
    ] {
        let model = Arc::new(Model::load_with(&dir, &opts).unwrap());
        let cfg = ExecConfig {
            num_blocks: 7,
            block_size: 16,
            kv_dtype: kv,
            device: DeviceKind::CandleCpu,
            max_lora_rank: 8,
            lora_dtype: Default::default(),
            qmatmul: false,
        };
        let (weights, pool, block) = planned_bytes(&model, true, &cfg, 3);
        let slots = Arc::new(SlotTable::new(3));
        let ex = DeviceExecutor::new(&model, &cfg, slots, candle_core::Device::Cpu).unwrap();
        let what = format!("{:?} weights, {kv:?} KV", opts.dtype);
        assert_eq!(ex.kv_bytes(), 7 * block, "{what}");
        assert_eq!(ex.pool().bytes(), pool, "{what}");
        assert_eq!(ex.weight_bytes(), weights, "{what}");
        // The plan's blocks fit what it budgets.
        let plan = plan_memory(&model, &cfg, 3, 0.9, Some(5 * block + 1)).unwrap();
        assert_eq!(plan.blocks, 5, "{what}");
        // The start-up split names the pool's shape next to its bytes.
        assert_eq!(plan.adapters, pool, "{what}");
        assert!(
            plan.describe().contains("(3 slots x rank 8)"),
            "{}",
            plan.describe()
        );
        let err = plan_memory(&model, &cfg, 3, 1e-12, None).unwrap_err();
        assert!(
            err.to_string().contains("no memory left for the KV cache"),
            "{err}"
        );
    }
}

/// The device executor's pool is allocated at `--max-lora-rank`: a request naming an adapter of a
/// higher rank is a client error at admission (it used to reach the step and panic the engine),
/// one at or below it runs; the CPU executor, which reads adapters as loaded, takes any rank.
#[test]
fn an_adapter_above_max_lora_rank_is_refused_at_admission_on_the_device_executor() {
    use openlora::config::EngineConfig;
    use openlora::engine::{LlmEngine, SeqId};
    use openlora::lora::AdapterRegistry;
    let dir = fixtures().join("tiny");
    let model = Arc::new(Model::load(&dir.join("model")).unwrap());
    let reg = AdapterRegistry::new(model.config().clone());
    let load = |n: &str| {
        reg.register(n, &dir.join("adapters").join(n)).unwrap();
        reg.load(n).unwrap()
    };
    let (a8, a16) = (load("a8"), load("a16"));
    for device in [DeviceKind::CandleCpu, DeviceKind::Cpu] {
        let cfg = EngineConfig {
            device,
            max_lora_rank: 8,
            ..Default::default()
        };
        let mut engine = LlmEngine::new(model.clone(), cfg).unwrap();
        let req = |a: &Arc<openlora::lora::LoraAdapter>| {
            request(&[1, 2, 3], vec![(a.clone(), 1.0)], greedy_params(2))
        };
        engine.add_request(SeqId(0), req(&a8)).unwrap();
        let high = engine.add_request(SeqId(1), req(&a16));
        match device {
            DeviceKind::Cpu => assert!(high.is_ok(), "{high:?}"),
            _ => {
                let e = high.unwrap_err();
                assert!(
                    matches!(e, openlora::error::Error::Unsupported { .. }),
                    "{e:?}"
                );
                assert!(e.to_string().contains("--max-lora-rank 8"), "{e}");
            }
        }
        let (out, _) = run_engine(&mut engine, vec![]);
        assert_eq!(out[&SeqId(0)].len(), 2, "{device:?}");
    }
}
