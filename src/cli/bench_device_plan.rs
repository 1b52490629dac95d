//! The decode workload of `openlora bench-device` as `StepPlan`s: `batch` sequences, each one row
//! per step at a fixed context of `ctx` tokens in its own KV blocks, and — with adapters — a
//! stream of requests: each row's request lives `lifetime` tokens, then a new request with an
//! adapter drawn Zipf(1.0) from `n` takes the row. An adapter not in a device slot is put into the
//! least recently used slot no current row reads (the pager's device tier, reduced to LRU); the
//! executor pages it in at the next step, inside the timed region.

use openlora::exec::StepPlan;
use openlora::lora::{AdapterSlot, LoraAdapter, SlotTable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;

/// Blocks of `block_size` one sequence of `ctx + 1` tokens needs.
pub fn blocks_per_seq(ctx: usize, block_size: usize) -> usize {
    (ctx + 1).div_ceil(block_size)
}

/// Zipf(1.0) over `0..n`: P(k) ∝ 1 / (k + 1).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize) -> Self {
        let mut acc = 0.0;
        let cdf = (0..n)
            .map(|k| {
                acc += 1.0 / (k + 1) as f64;
                acc
            })
            .collect();
        Zipf { cdf }
    }

    pub fn draw(&self, rng: &mut StdRng) -> usize {
        let u = rng.random::<f64>() * self.cdf.last().copied().unwrap_or(0.0);
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// One row's request: its adapter (`None`: base model) and the tokens it has left.
struct Row {
    adapter: Option<usize>,
    left: usize,
}

pub struct Workload {
    pub batch: usize,
    vocab: usize,
    ctx: usize,
    block_size: usize,
    lifetime: usize,
    zipf: Option<Zipf>,
    rows: Vec<Row>,
    rng: StdRng,
    /// Adapter id -> its slot; slot -> (occupant, last step that used it).
    resident: HashMap<usize, AdapterSlot>,
    occupant: Vec<Option<(usize, u64)>>,
    /// Host weights: adapter `id` uses `host[id % host.len()]` (the copy costs the same bytes).
    host: Vec<Arc<LoraAdapter>>,
    step: u64,
    /// Slots filled with a new occupant so far (each is paged in by the next step).
    pub fills: u64,
}

impl Workload {
    /// `n` adapters (0: every row on the base model) over `host` weight sets.
    pub fn new(
        batch: usize,
        (ctx, block_size, lifetime, vocab): (usize, usize, usize, usize),
        n: usize,
        host: Vec<Arc<LoraAdapter>>,
        seed: u64,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let zipf = (n > 0).then(|| Zipf::new(n));
        let rows = (0..batch)
            .map(|i| Row {
                adapter: zipf.as_ref().map(|z| z.draw(&mut rng)),
                // Staggered, so about batch / lifetime rows turn over each step.
                left: 1 + (i * lifetime) / batch.max(1),
            })
            .collect();
        Workload {
            batch,
            vocab,
            ctx,
            block_size,
            lifetime,
            zipf,
            rows,
            rng,
            resident: HashMap::new(),
            occupant: Vec::new(),
            host,
            step: 0,
            fills: 0,
        }
    }

    /// A slot for adapter `id`: its own if resident, else the LRU slot not read this step, filled.
    fn slot_for(&mut self, id: usize, table: &SlotTable, busy: &[bool]) -> AdapterSlot {
        if self.occupant.is_empty() {
            // A fresh workload owns the whole table: earlier runs' occupants go.
            (0..table.capacity()).for_each(|s| table.clear(AdapterSlot(s as u32)));
            self.occupant = vec![None; table.capacity()];
        }
        if let Some(&s) = self.resident.get(&id) {
            self.occupant[s.0 as usize] = Some((id, self.step));
            return s;
        }
        let victim = (0..self.occupant.len())
            .filter(|&s| !busy[s])
            .min_by_key(|&s| self.occupant[s].map_or(0, |(_, used)| used + 1))
            .expect("bench-device: --slots must be at least the batch size");
        let slot = AdapterSlot(victim as u32);
        if let Some((old, _)) = self.occupant[victim] {
            self.resident.remove(&old);
            table.clear(slot);
        }
        table.fill(slot, self.host[id % self.host.len()].clone());
        self.fills += 1;
        self.resident.insert(id, slot);
        self.occupant[victim] = Some((id, self.step));
        slot
    }

    /// The next decode step: rows whose request ended get a new one (a new Zipf draw).
    pub fn next_plan(&mut self, table: &SlotTable) -> StepPlan {
        self.step += 1;
        for r in &mut self.rows {
            if r.left == 0 {
                r.adapter = self.zipf.as_ref().map(|z| z.draw(&mut self.rng));
                r.left = self.lifetime;
            }
            r.left -= 1;
        }
        // Slots of adapters this step reads are never the victims of its other rows' fills.
        let mut busy = vec![false; table.capacity()];
        for r in &self.rows {
            if let Some(s) = r.adapter.and_then(|id| self.resident.get(&id)) {
                busy[s.0 as usize] = true;
            }
        }
        let mut order: Vec<(Option<AdapterSlot>, usize)> = Vec::with_capacity(self.batch);
        for i in 0..self.rows.len() {
            let slot = self.rows[i].adapter.map(|id| {
                let s = self.slot_for(id, table, &busy);
                busy[s.0 as usize] = true;
                s
            });
            order.push((slot, i));
        }
        // Rows of one adapter adjacent: one LoRA segment per adapter, as the engine's batches.
        order.sort();
        let (bs, nb) = (self.block_size, blocks_per_seq(self.ctx, self.block_size));
        let mut plan = StepPlan::default();
        for (slot, i) in order {
            let table: Vec<u32> = (0..nb).map(|b| (i * nb + b) as u32).collect();
            let mix: Vec<(AdapterSlot, f32)> = slot.map(|s| (s, 1.0)).into_iter().collect();
            let token = ((i * 7919 + self.step as usize * 31) % self.vocab.min(1000)) as u32;
            plan.push_seq(
                &[token],
                self.ctx,
                |pos| table[pos / bs] as usize * bs + pos % bs,
                &table,
                &mix,
                true,
            );
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openlora::lora::random_adapter;
    use openlora::model::ModelConfig;

    #[test]
    fn every_row_reads_a_slot_holding_its_own_adapter() {
        let cfg = ModelConfig::from_hf(&serde_json::json!({"model_type": "llama", "vocab_size": 32,
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}))
        .unwrap();
        let host: Vec<_> = (0..3)
            .map(|i| Arc::new(random_adapter("h", &cfg, 2, i)))
            .collect();
        let table = SlotTable::new(8);
        let mut w = Workload::new(8, (16, 16, 4, 32), 50, host.clone(), 1);
        for _ in 0..300 {
            let plan = w.next_plan(&table);
            assert_eq!(plan.rows(), 8);
            let mut seen: HashMap<AdapterSlot, usize> = HashMap::new();
            for r in &w.rows {
                let id = r.adapter.unwrap();
                let slot = w.resident[&id];
                let held = table.get(slot).expect("a read slot is filled").adapter;
                assert!(
                    Arc::ptr_eq(&held, &host[id % 3]),
                    "slot {slot:?} holds another adapter"
                );
                assert_eq!(
                    *seen.entry(slot).or_insert(id),
                    id,
                    "two adapters in one slot"
                );
            }
            let segs: usize = plan.lora.iter().map(|s| s.rows.len()).sum();
            assert_eq!(segs, 8, "every row has its segment");
        }
        assert!(
            w.fills > 16,
            "a Zipf stream over 50 adapters refills slots ({})",
            w.fills
        );
    }

    #[test]
    fn zipf_draws_follow_one_over_k() {
        let (z, mut rng) = (Zipf::new(10), StdRng::seed_from_u64(1));
        let mut hist = [0usize; 10];
        for _ in 0..100_000 {
            hist[z.draw(&mut rng)] += 1;
        }
        // P(0) / P(1) = 2 and P(0) / P(9) = 10, within sampling noise.
        let r = |a: usize, b: usize| hist[a] as f64 / hist[b] as f64;
        assert!((r(0, 1) - 2.0).abs() < 0.1, "{hist:?}");
        assert!((r(0, 9) - 10.0).abs() < 1.0, "{hist:?}");
    }
}
