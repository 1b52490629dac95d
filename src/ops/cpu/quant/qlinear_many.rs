//! Several projections of the same activations in one parallel region: decode's q/k/v and
//! gate/up (and, with an epilogue, any projection with its LoRA expands). A decode step is latency-bound on the number of fork-joins, not on arithmetic, so the
//! matrices' output rows are dealt out as one set of tasks, and the activations are quantized
//! once per distinct pairing (not once per matrix). Every element is computed by the same kernel
//! call as in [`qlinear`](super::qlinear), so the result is bit-identical to separate calls.

use super::qlinear::{qlinear, run, task_rows, Acts};
use super::qmatrix::QMatrix;
use super::tile::{Block, ROW_BLOCK};
use super::Isa;
use rayon::prelude::*;

/// One projection: its weights and optional bias.
pub type QProj<'a> = (&'a QMatrix, Option<&'a [f32]>);

/// `ys[p] = x[m, in] · W_pᵀ + b_p` for every projection `p` (all read `x`, so all have `in` columns).
/// Returns one `[m, out_p]` buffer per projection.
pub fn qlinear_many(x: &[f32], m: usize, projs: &[QProj]) -> Vec<Vec<f32>> {
    qlinear_many_with(x, m, projs, None::<Epilogue>)
}

/// [`qlinear_many`], also running `epilogue(p, row, j0, y)` (if any) on every finished stretch
/// `y` of an output row (columns `j0..`, bias added) inside the task that computed it (decode's
/// LoRA: the expands, the shrinks computed by the first task that needs them; one fork-join in
/// all). At prefill sizes the epilogue runs over whole rows after the products.
pub fn qlinear_many_with<E>(
    x: &[f32],
    m: usize,
    projs: &[QProj],
    epilogue: Option<E>,
) -> Vec<Vec<f32>>
where
    E: Fn(usize, usize, usize, &mut [f32]) + Sync,
{
    let mut ys: Vec<Vec<f32>> = projs
        .iter()
        .map(|(w, _)| vec![0f32; m * w.rows()])
        .collect();
    if m >= ROW_BLOCK || (projs.len() < 2 && epilogue.is_none()) {
        // Prefill: each product is big enough to fill the pool on its own.
        for ((w, b), y) in projs.iter().zip(&mut ys) {
            qlinear(x, m, w, *b, y);
        }
        if let Some(epilogue) = epilogue {
            let mut rows = Vec::new();
            for (p, ((w, _), y)) in projs.iter().zip(&mut ys).enumerate() {
                rows.extend(
                    y.chunks_exact_mut(w.rows())
                        .enumerate()
                        .map(|(i, r)| (p, i, r)),
                );
            }
            rows.into_par_iter()
                .for_each(|(p, i, r)| epilogue(p, i, 0, r));
        }
        return ys;
    }
    let isa = Isa::best();
    let k = projs[0].0.cols();
    assert!(
        projs.iter().all(|(w, _)| w.cols() == k),
        "qlinear_many: widths differ"
    );
    assert_eq!(x.len(), m * k, "qlinear_many: x is not [m, in]");
    // Activations once per pairing: `which[p]` indexes `acts`.
    let mut acts: Vec<Acts> = Vec::new();
    let mut which = Vec::with_capacity(projs.len());
    for (w, _) in projs {
        let at = match projs[..which.len()]
            .iter()
            .position(|(v, _)| Acts::pairs_alike(v, w))
        {
            Some(p) => which[p],
            None => {
                acts.push(Acts::quantize(w, x, m, k));
                acts.len() - 1
            }
        };
        which.push(at);
    }
    // Output rows of all matrices dealt out as one set of tasks; each task computes its weight
    // rows transposed into a buffer of its own, then folds the planes, adds the bias and runs the
    // epilogue on its stretch of every output row.
    let rows: usize = projs.iter().map(|(w, _)| w.rows()).sum();
    let per_task = task_rows(rows);
    // Every product task's stretches, task after task: one per output row (`m`), all in one
    // buffer so that dealing out costs no allocation per task.
    let mut parts: Vec<&mut [f32]> = Vec::new();
    let mut heads: Vec<(usize, usize)> = Vec::new();
    for (p, ((w, _), y)) in projs.iter().zip(&mut ys).enumerate() {
        let n = w.rows();
        let mut rows_of: Vec<_> = y
            .chunks_exact_mut(n)
            .map(|r| r.chunks_mut(per_task))
            .collect();
        for j0 in (0..n).step_by(per_task) {
            parts.extend(
                rows_of
                    .iter_mut()
                    .map(|r| r.next().expect("a stretch per task")),
            );
            heads.push((p, j0));
        }
    }
    let tasks: Vec<_> = heads.into_iter().zip(parts.chunks_mut(m)).collect();
    tasks.into_par_iter().for_each(|((p, j0), outs)| {
        {
            let (w, bias) = projs[p];
            let acts = &acts[which[p]];
            let (planes, len) = (acts.planes(), outs[0].len());
            let am = m * planes;
            // The transposed products: on the stack at decode sizes.
            let mut stack = [0f32; 512];
            let mut heap;
            let yt: &mut [f32] = match am * len <= stack.len() {
                true => &mut stack[..am * len],
                false => {
                    heap = vec![0f32; am * len];
                    &mut heap
                }
            };
            let b = Block {
                is: 0..am,
                js: j0..j0 + len,
                out: yt,
                si: 1,
                sj: am,
            };
            run(isa, w, acts, b);
            for (i, out) in outs.iter_mut().enumerate() {
                // As `fold_planes`: the first plane, then each further plane added in order.
                let cols = yt
                    .chunks_exact(am)
                    .map(|c| &c[i * planes..(i + 1) * planes]);
                for (v, ps) in out.iter_mut().zip(cols) {
                    *v = ps[1..].iter().fold(ps[0], |s, p| s + p);
                }
                if let Some(b) = bias {
                    out.iter_mut().zip(&b[j0..]).for_each(|(v, b)| *v += b);
                }
                if let Some(epilogue) = &epilogue {
                    epilogue(p, i, j0, out);
                }
            }
        }
    });
    ys
}

/// The type of an absent epilogue.
type Epilogue = fn(usize, usize, usize, &mut [f32]);

#[cfg(test)]
mod tests {
    use super::super::format::WeightFormat;
    use super::super::qlinear::tests::{bits_eq, data, rng};
    use super::super::ActPrecision;
    use super::*;

    #[test]
    fn equals_separate_calls_bit_for_bit_with_mixed_formats() {
        let (mut rng, seed) = rng();
        let k = 512;
        let fs = [
            WeightFormat::Q4_1,
            WeightFormat::Q8_0,
            WeightFormat::Q4_K,
            WeightFormat::Q6_K,
            WeightFormat::F16,
            WeightFormat::Q4_1,
        ];
        let ws: Vec<QMatrix> = fs
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let n = 13 + 7 * i;
                // Both activation precisions, mixed in one call.
                let act = [ActPrecision::Int8, ActPrecision::Int16][i % 2];
                QMatrix::quantize(&data(&mut rng, n * k), n, k, f)
                    .unwrap()
                    .with_act_precision(act)
            })
            .collect();
        let bs: Vec<Vec<f32>> = ws.iter().map(|w| data(&mut rng, w.rows())).collect();
        for m in [1usize, 3, 7, 70] {
            let x = data(&mut rng, m * k);
            let projs: Vec<QProj> = ws
                .iter()
                .zip(&bs)
                .enumerate()
                .map(|(i, (w, b))| (w, (i % 2 == 0).then_some(b.as_slice())))
                .collect();
            let got = qlinear_many(&x, m, &projs);
            for (p, (w, b)) in projs.iter().enumerate() {
                let mut want = vec![0f32; m * w.rows()];
                qlinear(&x, m, w, *b, &mut want);
                assert!(bits_eq(&got[p], &want), "m={m} proj {p} (seed {seed})");
            }
        }
    }
}
