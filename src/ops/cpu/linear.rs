//! Dense `y = x · Wᵀ (+ b)` with a fixed per-element reduction order: `y[i][j]` is `dot(x[i], w[j])`
//! whatever `m` is, which makes every caller batch-invariant. Parallel over output features.

use rayon::prelude::*;

const LANES: usize = 16;

/// Dot product with 16 independent lanes (vectorised as two AVX registers, fused multiply-add),
/// reduced in a fixed tree, then the tail in order. Deterministic for a given length.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let chunks = a.len() / LANES;
    for c in 0..chunks {
        let a = &a[c * LANES..c * LANES + LANES];
        let b = &b[c * LANES..c * LANES + LANES];
        for l in 0..LANES {
            acc[l] = a[l].mul_add(b[l], acc[l]);
        }
    }
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            acc[l] += acc[l + half];
        }
        half /= 2;
    }
    let mut s = acc[0];
    for t in chunks * LANES..a.len() {
        s = a[t].mul_add(b[t], s);
    }
    s
}

/// Four dot products of `w` with four rows, sharing each load of `w`. Each result is computed
/// with exactly the arithmetic of [`dot`] (same lanes, same tree, same tail), so it is
/// bit-identical to `dot(xs[r], w)`.
#[inline(always)]
fn dot4(xs: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    let mut acc = [[0f32; LANES]; 4];
    let chunks = w.len() / LANES;
    for c in 0..chunks {
        let wc = &w[c * LANES..c * LANES + LANES];
        for r in 0..4 {
            let xc = &xs[r][c * LANES..c * LANES + LANES];
            for l in 0..LANES {
                acc[r][l] = xc[l].mul_add(wc[l], acc[r][l]);
            }
        }
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        let a = &mut acc[r];
        let mut half = LANES / 2;
        while half > 0 {
            for l in 0..half {
                a[l] += a[l + half];
            }
            half /= 2;
        }
        let mut s = a[0];
        for t in chunks * LANES..w.len() {
            s = xs[r][t].mul_add(w[t], s);
        }
        out[r] = s;
    }
    out
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ + bias[n]`. `w` is in the HF/PyTorch `[out, in]` layout.
pub fn linear(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.len(), n * k);
    debug_assert_eq!(y.len(), m * n);
    if m == 0 {
        return;
    }
    // Work in the transposed output so that each task owns a contiguous slab of whole output
    // features; each weight row is read once per call and reused across all m input rows.
    let cols_per_task = (n / (rayon::current_num_threads() * 8)).clamp(4, 256);
    let mut yt = vec![0f32; m * n];
    yt.par_chunks_mut(cols_per_task * m)
        .enumerate()
        .for_each(|(task, out)| {
            let j0 = task * cols_per_task;
            for (jj, out_j) in out.chunks_mut(m).enumerate() {
                let wj = &w[(j0 + jj) * k..(j0 + jj + 1) * k];
                let row = |i: usize| &x[i * k..(i + 1) * k];
                let quads = m / 4 * 4;
                for i in (0..quads).step_by(4) {
                    out_j[i..i + 4]
                        .copy_from_slice(&dot4([row(i), row(i + 1), row(i + 2), row(i + 3)], wj));
                }
                for i in quads..m {
                    out_j[i] = dot(row(i), wj);
                }
            }
        });
    for i in 0..m {
        let row = &mut y[i * n..(i + 1) * n];
        for (j, v) in row.iter_mut().enumerate() {
            *v = yt[j * m + i] + bias.map_or(0.0, |b| b[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_f64_reference_and_is_batch_invariant() {
        let (m, n, k) = (7, 37, 83);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let mut y = vec![0f32; m * n];
        linear(&x, m, &w, n, k, Some(&b), &mut y);
        for i in 0..m {
            for j in 0..n {
                let r: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum::<f64>()
                    + b[j] as f64;
                assert!(
                    (y[i * n + j] as f64 - r).abs() < 1e-3 * (1.0 + r.abs()),
                    "{i},{j}"
                );
            }
            let mut alone = vec![0f32; n];
            linear(&x[i * k..(i + 1) * k], 1, &w, n, k, Some(&b), &mut alone);
            assert_eq!(
                alone,
                y[i * n..(i + 1) * n].to_vec(),
                "row {i} differs alone vs batched"
            );
        }
    }
}
