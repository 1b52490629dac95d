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
        let err = plan_memory(&model, &cfg, 3, 1e-12, None).unwrap_err();
        assert!(
            err.to_string().contains("no memory left for the KV cache"),
            "{err}"
        );
    }
}
