//! Dense `y = x · Wᵀ (+ b)` with a fixed per-element reduction order: `y[i][j]` is `dot(x[i], w[j])`
//! whatever `m` is, which makes every caller batch-invariant. Parallel over output features.

use rayon::prelude::*;

/// Accumulator lanes per output element: one AVX register of f32.
pub(crate) const LANES: usize = 8;
/// Input rows per micro-tile.
const MR: usize = 4;
/// Weight rows (output features) per micro-tile: MR x NR accumulators stay in registers.
const NR: usize = 2;

/// Sums the lanes in a fixed tree, then adds the tail `a[from..]·b[from..]` in order.
#[inline(always)]
fn finish(mut acc: [f32; LANES], a: &[f32], b: &[f32], from: usize) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            acc[l] += acc[l + half];
        }
        half /= 2;
    }
    let mut s = acc[0];
    for t in from..a.len() {
        s = a[t].mul_add(b[t], s);
    }
    s
}

/// `R x C` dot products of `xs[r]` with `ws[c]`, every one computed with exactly the arithmetic of
/// [`dot`] (same lanes, same order over k, same tree, same tail): the tile shape never changes a
/// result. Each loaded chunk of a weight row is reused for R input rows and vice versa. The
/// reference; the AVX2 build runs [`super::linear_x86::tile`], its bits in 256-bit registers.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
#[inline(always)]
fn tile_scalar<const R: usize, const C: usize>(xs: [&[f32]; R], ws: [&[f32]; C]) -> [[f32; C]; R] {
    let k = ws[0].len();
    let chunks = k / LANES;
    // Every chunk slice has exactly `chunks` entries, so the loop below needs no bounds checks.
    let xc: [&[[f32; LANES]]; R] = xs.map(|x| &x.as_chunks::<LANES>().0[..chunks]);
    let wc: [&[[f32; LANES]]; C] = ws.map(|w| &w.as_chunks::<LANES>().0[..chunks]);
    let mut acc = [[[0f32; LANES]; C]; R];
    for c in 0..chunks {
        let wv: [[f32; LANES]; C] = std::array::from_fn(|j| wc[j][c]);
        for r in 0..R {
            let xv = xc[r][c];
            for j in 0..C {
                for l in 0..LANES {
                    acc[r][j][l] = xv[l].mul_add(wv[j][l], acc[r][j][l]);
                }
            }
        }
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|j| finish(acc[r][j], xs[r], ws[j], chunks * LANES))
    })
}

/// [`tile_scalar`] with the build's best instructions (the same bits).
#[inline(always)]
fn tile<const R: usize, const C: usize>(xs: [&[f32]; R], ws: [&[f32]; C]) -> [[f32; C]; R] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        super::linear_x86::tile(xs, ws)
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        tile_scalar(xs, ws)
    }
}

/// Dot product with 8 independent FMA lanes reduced in a fixed tree, then the tail in order.
/// Deterministic for a given length; [`linear`] computes every element exactly like this.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    tile::<1, 1>([a], [b])[0][0]
}

/// `[dot(xs[0], w), ..]`: each exactly [`dot`], with `w`'s loads shared by the `R` rows.
#[inline]
pub(crate) fn dot_rows<const R: usize>(xs: [&[f32]; R], w: &[f32]) -> [f32; R] {
    tile::<R, 1>(xs, [w]).map(|r| r[0])
}

/// Writes `out[j * m + i] = dot(x[i], w[j0 + j])` for the weight rows of one task.
fn task_tile(x: &[f32], m: usize, w: &[f32], k: usize, j0: usize, out: &mut [f32]) {
    let cols = out.len() / m;
    let row = |i: usize| &x[i * k..(i + 1) * k];
    let wrow = |j: usize| &w[(j0 + j) * k..(j0 + j + 1) * k];
    let full_r = m / MR * MR;
    let full_c = cols / NR * NR;
    for j in (0..full_c).step_by(NR) {
        let ws: [&[f32]; NR] = std::array::from_fn(|c| wrow(j + c));
        for i in (0..full_r).step_by(MR) {
            let t = tile::<MR, NR>(std::array::from_fn(|r| row(i + r)), ws);
            for (r, tr) in t.iter().enumerate() {
                for (c, v) in tr.iter().enumerate() {
                    out[(j + c) * m + i + r] = *v;
                }
            }
        }
        for i in full_r..m {
            let t = tile::<1, NR>([row(i)], ws);
            for (c, v) in t[0].iter().enumerate() {
                out[(j + c) * m + i] = *v;
            }
        }
    }
    for j in full_c..cols {
        let wj = wrow(j);
        for i in (0..full_r).step_by(MR) {
            let t = tile::<MR, 1>(std::array::from_fn(|r| row(i + r)), [wj]);
            for (r, tr) in t.iter().enumerate() {
                out[j * m + i + r] = tr[0];
            }
        }
        for i in full_r..m {
            out[j * m + i] = dot(row(i), wj);
        }
    }
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
    let cols_per_task = (n / (rayon::current_num_threads() * 8)).clamp(NR, 255) / NR * NR;
    let mut yt = vec![0f32; m * n];
    yt.par_chunks_mut(cols_per_task * m)
        .enumerate()
        .for_each(|(task, out)| task_tile(x, m, w, k, task * cols_per_task, out));
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
        let (m, n, k) = (11, 37, 83);
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
            for j in 0..n {
                let d = dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]) + b[j];
                assert_eq!(
                    d.to_bits(),
                    y[i * n + j].to_bits(),
                    "tile != dot at {i},{j}"
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

    /// The build's tile is the reference's bits for every tile shape, length class and tail.
    #[test]
    fn tile_is_the_scalar_reference_bit_for_bit() {
        for k in [1usize, 7, 8, 64, 83, 576] {
            let v = |n: usize, s: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * s % 113) as f32 - 56.0) / 17.0)
                    .collect()
            };
            let (x, w) = (v(4 * k, 31), v(2 * k, 47));
            let xs: [&[f32]; 4] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
            let ws: [&[f32]; 2] = std::array::from_fn(|c| &w[c * k..(c + 1) * k]);
            let bits = |t: &[[f32; 2]]| t.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&tile(xs, ws)), bits(&tile_scalar(xs, ws)), "4x2 k={k}");
            let one = |a: &[f32], b: &[f32]| (tile([a], [b])[0][0], tile_scalar([a], [b])[0][0]);
            let (a, b) = one(xs[3], ws[1]);
            assert_eq!(a.to_bits(), b.to_bits(), "1x1 k={k}");
        }
    }
}
