//! Several projections of the same activations in one parallel region: decode's q/k/v and
//! gate/up. A decode step is latency-bound on the number of fork-joins, not on arithmetic, so the
//! matrices' output rows are dealt out as one set of tasks, and the activations are quantized
//! once per distinct pairing (not once per matrix). Every element is computed by the same kernel
//! call as in [`qlinear`](super::qlinear), so the result is bit-identical to separate calls.

use super::qlinear::{fold_planes, qlinear, run, task_rows, Acts};
use super::qmatrix::QMatrix;
use super::tile::{Block, ROW_BLOCK};
use super::Isa;
use rayon::prelude::*;

/// One projection: its weights and optional bias.
pub type QProj<'a> = (&'a QMatrix, Option<&'a [f32]>);

/// `ys[p] = x[m, in] · W_pᵀ + b_p` for every projection `p` (all read `x`, so all have `in` columns).
/// Returns one `[m, out_p]` buffer per projection.
pub fn qlinear_many(x: &[f32], m: usize, projs: &[QProj]) -> Vec<Vec<f32>> {
    qlinear_many_with(x, m, projs, Vec::<fn()>::new())
}

/// [`qlinear_many`], also running the independent `side` jobs as tasks of the same parallel
/// region (decode's LoRA shrinks: one fork-join for the products and the jobs). The jobs run
/// before this returns; at prefill sizes they run in a region of their own first.
pub fn qlinear_many_with<F: FnOnce() + Send>(
    x: &[f32],
    m: usize,
    projs: &[QProj],
    side: Vec<F>,
) -> Vec<Vec<f32>> {
    let mut ys: Vec<Vec<f32>> = projs
        .iter()
        .map(|(w, _)| vec![0f32; m * w.rows()])
        .collect();
    if m >= ROW_BLOCK || (projs.len() < 2 && side.is_empty()) {
        // Prefill: each product is big enough to fill the pool on its own.
        side.into_par_iter().for_each(|job| job());
        for ((w, b), y) in projs.iter().zip(&mut ys) {
            qlinear(x, m, w, *b, y);
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
    // Output rows of all matrices dealt out as one set of tasks, written transposed.
    let rows: usize = projs.iter().map(|(w, _)| w.rows()).sum();
    let per_task = task_rows(rows);
    // Activation rows of each projection (`planes` per input row).
    let am: Vec<usize> = which.iter().map(|&a| m * acts[a].planes()).collect();
    let mut yts: Vec<Vec<f32>> = projs
        .iter()
        .zip(&am)
        .map(|((w, _), &am)| vec![0f32; am * w.rows()])
        .collect();
    // Side jobs first, so they start while the products are dealt out.
    let mut tasks: Vec<Task<F>> = side.into_iter().map(Task::Side).collect();
    for (p, yt) in yts.iter_mut().enumerate() {
        for (t, out) in yt.chunks_mut(per_task * am[p]).enumerate() {
            tasks.push(Task::Product(p, t * per_task, out));
        }
    }
    tasks.into_par_iter().for_each(|task| match task {
        Task::Side(job) => job(),
        Task::Product(p, j0, out) => {
            let js = j0..j0 + out.len() / am[p];
            let b = Block {
                is: 0..am[p],
                js,
                out,
                si: 1,
                sj: am[p],
            };
            run(isa, projs[p].0, &acts[which[p]], b);
        }
    });
    for ((((_, bias), yt), y), &am) in projs.iter().zip(&yts).zip(&mut ys).zip(&am) {
        let n = yt.len() / am;
        let mut parts = vec![0f32; am * n];
        for (i, row) in parts.chunks_exact_mut(n).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = yt[j * am + i];
            }
        }
        fold_planes(am / m, n, &parts, y);
        if let Some(b) = bias {
            y.chunks_exact_mut(n)
                .for_each(|row| row.iter_mut().zip(*b).for_each(|(v, b)| *v += b));
        }
    }
    ys
}

/// One task of the region: a side job, or output rows `j0..` of projection `p` (transposed).
enum Task<'a, F> {
    Side(F),
    Product(usize, usize, &'a mut [f32]),
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
            // Side jobs in the region change nothing and all run, also with one projection.
            let ran = std::sync::atomic::AtomicUsize::new(0);
            let bump = || {
                ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            };
            let with = qlinear_many_with(&x, m, &projs, vec![bump; 3]);
            let one = qlinear_many_with(&x, m, &projs[..1], vec![bump; 2]);
            assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 5);
            assert!(
                bits_eq(&one[0], &got[0]),
                "m={m} one projection with jobs (seed {seed})"
            );
            for (g, w) in got.iter().zip(&with) {
                assert!(bits_eq(g, w), "m={m} with side jobs (seed {seed})");
            }
            for (p, (w, b)) in projs.iter().enumerate() {
                let mut want = vec![0f32; m * w.rows()];
                qlinear(&x, m, w, *b, &mut want);
                assert!(bits_eq(&got[p], &want), "m={m} proj {p} (seed {seed})");
            }
        }
    }
}
