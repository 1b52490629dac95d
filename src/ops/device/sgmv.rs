//! SGMV/BGMV over the adapter slot pool as a candle in-place op: `y[rows] += Σ coeff · (x·Aᵀ)·Bᵀ`
//! per segment of rows sharing one adapter mix (a one-row segment is BGMV). Each slot holds its
//! adapter's pairs at their own rank (mixed ranks in one call); a mix is weighted `(slot, weight)`
//! terms applied in order with `coeff = scale · weight`; rows in no segment are left as they are.
//! The segments come from the step's index upload (`encode_lora_index`). `cpu_fwd` is
//! `ops::cpu::sgmv`, the CPU executor's own LoRA op.

use super::storage::{slice, slice_mut_f32};
use crate::ops::cpu::{sgmv, LoraSegment, LoraTerm};
use candle_core::{bail, CpuStorage, InplaceOp2, Layout, Result, Storage, Tensor};
use std::ops::Range;

/// One adapter's pair for one projection of one layer: `a` `[rank, in]`, `b` `[out, rank]`.
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub rank: usize,
    /// PEFT's alpha/r (or alpha/sqrt(r)).
    pub scale: f32,
}

/// One occupied slot: per layer, per projection (`Proj::index()`), the pair if targeted.
pub type SlotLora = Vec<[Option<LoraPair>; 7]>;

/// Appends one segment to a LoRA index: `row_start, row_end, n_terms, (slot, weight bits)…`.
pub fn encode_lora_index(out: &mut Vec<u32>, rows: Range<usize>, terms: &[(u32, f32)]) {
    out.extend([rows.start as u32, rows.end as u32, terms.len() as u32]);
    for &(slot, w) in terms {
        out.extend([slot, w.to_bits()]);
    }
}

type Segment = (Range<usize>, Vec<(usize, f32)>);

fn decode(idx: &[u32], batch_rows: usize) -> Result<Vec<Segment>> {
    let (mut segs, mut i) = (Vec::new(), 0);
    while i < idx.len() {
        let Some(h) = idx.get(i..i + 3) else {
            bail!("sgmv: truncated index at {i}")
        };
        let (rows, n) = (h[0] as usize..h[1] as usize, h[2] as usize);
        let Some(t) = idx.get(i + 3..i + 3 + 2 * n) else {
            bail!("sgmv: truncated terms at {i}")
        };
        if rows.end > batch_rows || rows.start > rows.end {
            bail!("sgmv: segment rows {rows:?} in a batch of {batch_rows}");
        }
        segs.push((
            rows,
            t.chunks(2)
                .map(|p| (p[0] as usize, f32::from_bits(p[1])))
                .collect(),
        ));
        i += 3 + 2 * n;
    }
    Ok(segs)
}

pub struct Sgmv<'a> {
    /// The step's LoRA index (a view of its index upload).
    pub index: &'a Tensor,
    /// The slot pool: `pool[slot]` is the occupant's pairs.
    pub pool: &'a [Option<SlotLora>],
    pub layer: usize,
    pub proj: usize,
}

fn host<'g>(g: &'g Storage, l: &Layout) -> Result<&'g [f32]> {
    match g {
        Storage::Cpu(c) => slice::<f32>(c, l),
        _ => bail!("sgmv: adapter weights are not in host memory"),
    }
}

impl InplaceOp2 for Sgmv<'_> {
    fn name(&self) -> &'static str {
        "sgmv"
    }

    fn cpu_fwd(
        &self,
        ys: &mut CpuStorage,
        yl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<()> {
        let (x, y) = (slice::<f32>(xs, xl)?, slice_mut_f32(ys, yl)?);
        let (rows, in_dim, out_dim) = (xl.dims()[0], xl.dims()[1], yl.dims()[1]);
        if yl.dims()[0] != rows {
            bail!("sgmv: x {:?} vs y {:?}", xl.dims(), yl.dims());
        }
        let segs = decode(&self.index.to_vec1::<u32>()?, rows)?;
        // The targeted pairs of every term, then their host storage (guards held while used).
        let mut picked: Vec<(usize, &LoraPair, f32)> = Vec::new();
        for (s, (_, terms)) in segs.iter().enumerate() {
            for &(slot, w) in terms {
                let Some(Some(lora)) = self.pool.get(slot) else {
                    bail!("sgmv: adapter slot {slot} is empty")
                };
                if let Some(p) = &lora[self.layer][self.proj] {
                    if p.a.dims() != [p.rank, in_dim] || p.b.dims() != [out_dim, p.rank] {
                        bail!(
                            "sgmv: pair {:?}/{:?} for x {:?} y {:?}",
                            p.a.dims(),
                            p.b.dims(),
                            xl.dims(),
                            yl.dims()
                        );
                    }
                    picked.push((s, p, w));
                }
            }
        }
        let guards: Vec<_> = picked
            .iter()
            .map(|(_, p, _)| (p.a.storage_and_layout(), p.b.storage_and_layout()))
            .collect();
        let mut segments: Vec<LoraSegment> = segs
            .iter()
            .map(|(r, _)| LoraSegment {
                rows: r.clone(),
                terms: vec![],
            })
            .collect();
        for ((s, p, w), ((ga, la), (gb, lb))) in picked.iter().zip(&guards) {
            segments[*s].terms.push(LoraTerm {
                a: host(ga, la)?,
                b: host(gb, lb)?,
                rank: p.rank,
                coeff: p.scale * w,
            });
        }
        sgmv(x, in_dim, &segments, out_dim, y);
        Ok(())
    }
}
