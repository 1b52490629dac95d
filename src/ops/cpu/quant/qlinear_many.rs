//! Several projections of the same activations in one parallel region: decode's q/k/v and
//! gate/up (and, with [`TaskHooks`], any projection with its LoRA expands). A decode step is
//! latency-bound on the number of fork-joins, not on arithmetic, so the matrices' output rows are
//! dealt out as one set of tasks, and the activations are quantized once per distinct pairing
//! (not once per matrix). Every element is computed by the same kernel
//! call as in [`qlinear`](super::qlinear), so the result is bit-identical to separate calls.

use super::qlinear::{qlinear, run, task_rows, Acts};
use super::qmatrix::QMatrix;
use super::tile::{Block, ROW_BLOCK};
use super::Isa;
use rayon::prelude::*;
use std::sync::Mutex;

/// One projection: its weights and optional bias.
pub type QProj<'a> = (&'a QMatrix, Option<&'a [f32]>);

/// `ys[p] = x[m, in] · W_pᵀ + b_p` for every projection `p` (all read `x`, so all have `in` columns).
/// Returns one `[m, out_p]` buffer per projection.
pub fn qlinear_many(x: &[f32], m: usize, projs: &[QProj]) -> Vec<Vec<f32>> {
    qlinear_many_with(x, m, projs, None::<&NoHooks>)
}

/// What a task of [`qlinear_many_with`] does around its products.
pub trait TaskHooks: Sync {
    /// Before the products of a decode-size task that owns columns `j0..j0 + len` of projection
    /// `p` (every row): a chance to ask for what [`Self::finish`] will read (a prefetch), so that
    /// it arrives while the products stream the weights. Changes no value.
    fn start(&self, _p: usize, _j0: usize, _len: usize) {}
    /// On every finished stretch `y` of output row `i` of projection `p` (columns `j0..`, bias
    /// added), inside the task that computed it. Returns `false` to be called again on the same
    /// stretch after every task has finished (what it needs is being made by another task);
    /// that second call must return `true`.
    fn finish(&self, p: usize, i: usize, j0: usize, y: &mut [f32]) -> bool;
}

/// No hooks.
pub struct NoHooks;

impl TaskHooks for NoHooks {
    fn finish(&self, _: usize, _: usize, _: usize, _: &mut [f32]) -> bool {
        true
    }
}

/// [`qlinear_many`], also running `hooks` (if any) in each task: [`TaskHooks::start`] before
/// its products, [`TaskHooks::finish`] on every finished stretch of an output row (decode's
/// LoRA: the expands, the shrinks computed by the first task that needs them; one fork-join in
/// all). At prefill sizes `finish` runs over whole rows after the products.
pub fn qlinear_many_with<H: TaskHooks>(
    x: &[f32],
    m: usize,
    projs: &[QProj],
    hooks: Option<&H>,
) -> Vec<Vec<f32>> {
    let mut ys: Vec<Vec<f32>> = projs
        .iter()
        .map(|(w, _)| vec![0f32; m * w.rows()])
        .collect();
    if m >= ROW_BLOCK || (projs.len() < 2 && hooks.is_none()) {
        // Prefill: each product is big enough to fill the pool on its own.
        for ((w, b), y) in projs.iter().zip(&mut ys) {
            qlinear(x, m, w, *b, y);
        }
        if let Some(hooks) = hooks {
            let mut rows = Vec::new();
            for (p, ((w, _), y)) in projs.iter().zip(&mut ys).enumerate() {
                rows.extend(
                    y.chunks_exact_mut(w.rows())
                        .enumerate()
                        .map(|(i, r)| (p, i, r)),
                );
            }
            rows.into_par_iter().for_each(|(p, i, r)| {
                // Each (projection, row) has one task here, so nothing is made elsewhere.
                let done = hooks.finish(p, i, 0, r);
                assert!(done, "qlinear_many_with: a whole row's hooks deferred");
            });
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
    // hooks' `finish` on its stretch of every output row.
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
    // Stretches whose hooks asked to finish after the region: `(p, row, j0, len)`.
    let deferred = Mutex::new(Vec::new());
    tasks.into_par_iter().for_each(|((p, j0), outs)| {
        {
            let (w, bias) = projs[p];
            let acts = &acts[which[p]];
            let (planes, len) = (acts.planes(), outs[0].len());
            if let Some(hooks) = hooks {
                hooks.start(p, j0, len);
            }
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
                if let Some(hooks) = hooks {
                    if !hooks.finish(p, i, j0, out) {
                        let mut d = deferred.lock().unwrap_or_else(|e| e.into_inner());
                        d.push((p, i, j0, out.len()));
                    }
                }
            }
        }
    });
    if let Some(hooks) = hooks {
        for (p, i, j0, len) in deferred.into_inner().unwrap_or_else(|e| e.into_inner()) {
            let start = i * projs[p].0.rows() + j0;
            let done = hooks.finish(p, i, j0, &mut ys[p][start..start + len]);
            assert!(done, "qlinear_many_with: hooks deferred twice");
        }
    }
    ys
}

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

    /// Hooks that decline every stretch once, then add the stretch's row and column indices.
    struct DeferOnce {
        seen: Mutex<std::collections::HashSet<(usize, usize, usize)>>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl TaskHooks for DeferOnce {
        fn finish(&self, p: usize, i: usize, j0: usize, y: &mut [f32]) -> bool {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.seen.lock().unwrap().insert((p, i, j0)) {
                return false;
            }
            for (j, v) in (j0..).zip(y.iter_mut()) {
                *v += (1000 * p + 100 * i + j) as f32;
            }
            true
        }
    }

    /// A stretch whose hooks decline in its task is finished after the region, on the same
    /// columns of the same row: every element gets its addition exactly once.
    #[test]
    fn deferred_stretches_are_finished_after_the_region() {
        let (mut rng, seed) = rng();
        let k = 256;
        let ws: Vec<QMatrix> = [40usize, 96]
            .iter()
            .map(|&n| QMatrix::quantize(&data(&mut rng, n * k), n, k, WeightFormat::Q4_1).unwrap())
            .collect();
        let projs: Vec<QProj> = ws.iter().map(|w| (w, None)).collect();
        for m in [1usize, 3] {
            let x = data(&mut rng, m * k);
            let hooks = DeferOnce {
                seen: Mutex::new(Default::default()),
                calls: Default::default(),
            };
            let got = qlinear_many_with(&x, m, &projs, Some(&hooks));
            let stretches = hooks.seen.lock().unwrap().len();
            assert_eq!(hooks.calls.into_inner(), 2 * stretches, "m={m}");
            for (p, (w, _)) in projs.iter().enumerate() {
                let n = w.rows();
                let mut want = vec![0f32; m * n];
                qlinear(&x, m, w, None, &mut want);
                for (i, row) in want.chunks_exact_mut(n).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v += (1000 * p + 100 * i + j) as f32;
                    }
                }
                assert!(bits_eq(&got[p], &want), "m={m} proj {p} (seed {seed})");
            }
        }
    }
}
