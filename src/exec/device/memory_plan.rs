//! vLLM-style sizing of the paged KV cache (`--gpu-memory-utilization F`): of the device's
//! `total` bytes, the engine may use `F · total`; the weights and the adapter slot pool come first
//! and the KV cache gets the rest, in whole blocks (optionally capped by `--kv-cache-mb`). Pure
//! arithmetic, so CI tests it; the totals come from the driver on CUDA and from a stand-in on the
//! CPU twin (`exec::device::device_memory`). Nothing left for one KV block is an error at start-up.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPlan {
    pub total: usize,
    pub utilization: f64,
    pub weights: usize,
    pub adapters: usize,
    pub block_bytes: usize,
    pub blocks: usize,
    /// The adapter pool's shape, `(slots, max rank)`, for the log line (`(0, 0)` when not given).
    pub pool_shape: (usize, usize),
}

impl MemoryPlan {
    /// The plan for a device of `total` bytes; `kv_cap` bounds the KV bytes when given.
    pub fn new(
        total: usize,
        utilization: f64,
        weights: usize,
        adapters: usize,
        block_bytes: usize,
        kv_cap: Option<usize>,
    ) -> Result<Self> {
        if !(utilization > 0.0 && utilization <= 1.0) {
            return Err(Error::invalid(
                "gpu_memory_utilization",
                format!("{utilization} (expected a fraction in (0, 1])"),
            ));
        }
        let budget = (total as f64 * utilization) as usize;
        let used = weights + adapters;
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let left = budget.saturating_sub(used);
        let kv = kv_cap.map_or(left, |c| c.min(left));
        let blocks = kv / block_bytes.max(1);
        if blocks == 0 {
            return Err(Error::Unavailable(format!(
                "no memory left for the KV cache: {utilization} x {:.0} MiB = {:.0} MiB, of which weights take {:.0} MiB and the adapter slot pool {:.0} MiB; one KV block needs {:.2} MiB (raise --gpu-memory-utilization, lower --max-loras / --max-lora-rank, or use a smaller --dtype)",
                mib(total), mib(budget), mib(weights), mib(adapters), mib(block_bytes)
            )));
        }
        Ok(MemoryPlan {
            total,
            utilization,
            weights,
            adapters,
            block_bytes,
            blocks,
            pool_shape: (0, 0),
        })
    }

    pub fn kv_bytes(&self) -> usize {
        self.blocks * self.block_bytes
    }

    /// What the plan leaves unused of `total`.
    pub fn free(&self) -> usize {
        self.total - self.weights - self.adapters - self.kv_bytes()
    }

    /// The start-up log line: weights / adapter pool (slots x rank) / KV / free.
    pub fn describe(&self) -> String {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let (slots, rank) = self.pool_shape;
        format!(
            "device memory {:.0} MiB at utilization {}: weights {:.0} MiB / adapter pool {:.0} MiB ({slots} slots x rank {rank}) / KV cache {:.0} MiB ({} blocks) / free {:.0} MiB",
            mib(self.total), self.utilization, mib(self.weights), mib(self.adapters),
            mib(self.kv_bytes()), self.blocks, mib(self.free())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryPlan;

    #[test]
    fn kv_gets_what_the_weights_and_pool_leave_of_the_budget() {
        // 80 GiB at 0.9 = 72 GiB; 16 GiB weights + 1 GiB pool leave 55 GiB = 27.5 blocks of 2 GiB.
        let g = 1usize << 30;
        let p = MemoryPlan::new(80 * g, 0.9, 16 * g, g, 2 * g, None).unwrap();
        let budget = (80.0 * g as f64 * 0.9) as usize;
        assert_eq!(p.blocks, (budget - 17 * g) / (2 * g));
        assert_eq!(p.blocks, 27);
        assert_eq!(p.free(), 80 * g - 17 * g - 54 * g);
        // A cap bounds the KV bytes.
        assert_eq!(
            MemoryPlan::new(80 * g, 0.9, 16 * g, g, 2 * g, Some(5 * g))
                .unwrap()
                .blocks,
            2
        );
        // The same model at 0.5: 40 - 17 = 23 GiB = 11 blocks.
        assert_eq!(
            MemoryPlan::new(80 * g, 0.5, 16 * g, g, 2 * g, None)
                .unwrap()
                .blocks,
            11
        );
    }

    #[test]
    fn nothing_left_for_one_block_or_a_bad_fraction_is_an_error() {
        let g = 1usize << 30;
        let e = MemoryPlan::new(16 * g, 0.9, 14 * g, g, g / 2, None).unwrap_err();
        assert!(
            e.to_string().contains("no memory left for the KV cache"),
            "{e}"
        );
        assert!(MemoryPlan::new(16 * g, 0.9, 20 * g, 0, 1, None).is_err());
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(
                MemoryPlan::new(16 * g, bad, g, 0, 1, None).is_err(),
                "{bad}"
            );
        }
    }
}
