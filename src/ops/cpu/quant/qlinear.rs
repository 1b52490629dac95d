//! `y[m, out] = x[m, in] · Wᵀ + b` for a [`QMatrix`] in any format. Each activation row is
//! quantized once per call to the format its weights pair with (Q8 32-value blocks for `Q4_0`,
//! `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`; Q8_K for the k-quants; f32 for float weights); tasks on the
//! rayon pool own contiguous ranges of output features. Every output element is computed with
//! the arithmetic of [`super::scalar`], whatever the batch, the row's position, the tiling, the
//! thread count or the instruction set: a row's result is bit-identical alone and in any batch.

use super::acts::{Q8Acts, Q8KActs};
use super::format::WeightFormat;
use super::qmatrix::QMatrix;
use super::scalar;
use super::tile::{drive, Block, Tile, ROW_BLOCK};
use rayon::prelude::*;
use std::sync::OnceLock;

/// The instruction set a kernel runs with. Every choice gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust: the reference, and the fallback off x86-64.
    Scalar,
    /// AVX2 + FMA + F16C (required by the build on x86-64).
    Avx2,
    /// AVX2 plus AVX-512 VNNI dot products on 256-bit registers (detected at run time).
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set this CPU and build support (detected once).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            [Isa::Avx512Vnni, Isa::Avx2]
                .into_iter()
                .find(|i| i.available())
                .unwrap_or(Isa::Scalar)
        })
    }

    /// Whether this CPU and build can run kernels of this instruction set.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(all(
                target_arch = "x86_64",
                target_feature = "avx2",
                target_feature = "fma"
            ))]
            Isa::Avx2 => true,
            #[cfg(all(
                target_arch = "x86_64",
                target_feature = "avx2",
                target_feature = "fma"
            ))]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// The activations of one call, in the form the weight format pairs with.
pub(crate) enum Acts<'a> {
    F32 { x: &'a [f32], k: usize },
    Q8(Q8Acts),
    Q8K(Q8KActs),
}

/// Which activation form a weight format pairs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ActsKind {
    F32,
    Q8,
    Q8K,
}

impl ActsKind {
    fn of(f: WeightFormat) -> Self {
        match f {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => ActsKind::F32,
            WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K => ActsKind::Q8K,
            _ => ActsKind::Q8,
        }
    }
}

impl<'a> Acts<'a> {
    /// `m` rows of `x` as the kernels of `w` read them (its format's pairing, its precision).
    pub fn quantize(w: &QMatrix, x: &'a [f32], m: usize, k: usize) -> Self {
        let planes = w.act_precision().planes();
        match ActsKind::of(w.format()) {
            ActsKind::F32 => Acts::F32 { x, k },
            ActsKind::Q8K => Acts::Q8K(Q8KActs::quantize(x, m, k, planes)),
            ActsKind::Q8 => Acts::Q8(Q8Acts::quantize(x, m, k, planes)),
        }
    }

    /// Activation rows per input row: the kernels' rows `planes * i ..` add up to input row `i`.
    pub fn planes(&self) -> usize {
        match self {
            Acts::F32 { .. } => 1,
            Acts::Q8(a) => a.planes,
            Acts::Q8K(a) => a.planes,
        }
    }

    /// Whether matrices `a` and `b` read the same quantized activations.
    pub fn pairs_alike(a: &QMatrix, b: &QMatrix) -> bool {
        let key = |w: &QMatrix| match ActsKind::of(w.format()) {
            ActsKind::F32 => (ActsKind::F32, 1),
            kind => (kind, w.act_precision().planes()),
        };
        key(a) == key(b)
    }
}

/// Sums each input row's `planes` consecutive rows of `[m * planes, n]` products into `y`
/// (`[m, n]`), in plane order.
pub(crate) fn fold_planes(planes: usize, n: usize, parts: &[f32], y: &mut [f32]) {
    for (row, p) in y.chunks_exact_mut(n).zip(parts.chunks_exact(planes * n)) {
        row.copy_from_slice(&p[..n]);
        for plane in p[n..].chunks_exact(n) {
            row.iter_mut().zip(plane).for_each(|(v, d)| *v += d);
        }
    }
}

/// `y[m, rows] = x[m, cols] · wᵀ + bias` with the best instruction set.
pub fn qlinear(x: &[f32], m: usize, w: &QMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    qlinear_with(Isa::best(), x, m, w, bias, y)
}

/// [`qlinear`] with a chosen instruction set (panics if it is not [`Isa::available`]).
pub fn qlinear_with(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (n, k) = (w.rows(), w.cols());
    assert!(
        isa.available(),
        "{isa:?} is not available on this CPU/build"
    );
    assert_eq!(x.len(), m * k, "qlinear: x is not [m, in]");
    assert_eq!(y.len(), m * n, "qlinear: y is not [m, out]");
    assert!(
        bias.is_none_or(|b| b.len() == n),
        "qlinear: bias is not [out]"
    );
    if m == 0 || n == 0 {
        return;
    }
    let acts = Acts::quantize(w, x, m, k);
    let planes = acts.planes();
    if planes == 1 {
        products(isa, w, &acts, m, y);
    } else {
        let mut parts = vec![0f32; planes * m * n];
        products(isa, w, &acts, planes * m, &mut parts);
        fold_planes(planes, n, &parts, y);
    }
    if let Some(b) = bias {
        y.chunks_exact_mut(n)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
    }
}

/// `y[m, n]` = the kernel's products of the `m` activation rows of `acts` with every row of `w`.
fn products(isa: Isa, w: &QMatrix, acts: &Acts, m: usize, y: &mut [f32]) {
    let n = w.rows();
    if m >= ROW_BLOCK {
        // Prefill: tasks own blocks of activation rows, i.e. contiguous rows of `y`, and sweep
        // all weight rows (which stay in cache across the block's micro-tiles).
        y.par_chunks_mut(ROW_BLOCK * n)
            .enumerate()
            .for_each(|(t, out)| {
                let is = t * ROW_BLOCK..t * ROW_BLOCK + out.len() / n;
                run(
                    isa,
                    w,
                    &acts,
                    Block {
                        is,
                        js: 0..n,
                        out,
                        si: n,
                        sj: 1,
                    },
                );
            });
    } else {
        // Decode: tasks own ranges of weight rows (output features), written transposed.
        let per_task = task_rows(n);
        let mut yt = vec![0f32; m * n];
        yt.par_chunks_mut(per_task * m)
            .enumerate()
            .for_each(|(t, out)| {
                let js = t * per_task..t * per_task + out.len() / m;
                run(
                    isa,
                    w,
                    &acts,
                    Block {
                        is: 0..m,
                        js,
                        out,
                        si: 1,
                        sj: m,
                    },
                );
            });
        for (i, row) in y.chunks_exact_mut(n).enumerate() {
            row.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = yt[j * m + i]);
        }
    }
}

/// Weight rows per task when tasks own output features: about 8 tasks per thread, a multiple of
/// a packed group (8 rows).
pub(crate) fn task_rows(n: usize) -> usize {
    (n / (rayon::current_num_threads() * 8)).clamp(8, 256) / 8 * 8
}

/// Computes the elements of `b`.
pub(crate) fn run(isa: Isa, w: &QMatrix, acts: &Acts, b: Block) {
    match isa {
        // SAFETY: the scalar kernel has no instruction-set requirement; rows are in range.
        Isa::Scalar => unsafe { drive(&ScalarTile::new(w, acts), b) },
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        // SAFETY: AVX2 + FMA are compile-time features of this build.
        Isa::Avx2 => unsafe { super::x86::run::<false>(w, acts, b) },
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        // SAFETY: `qlinear_with` checked `Isa::available`, i.e. run-time detection of VNNI + VL.
        Isa::Avx512Vnni => unsafe { super::x86::run_vnni(w, acts, b) },
        #[allow(unreachable_patterns)]
        _ => unreachable!("{isa:?} checked available"),
    }
}

/// Every element through the [`scalar`] reference functions (either layout: rows are read as
/// ggml's bytes).
pub(crate) struct ScalarTile<'a> {
    pub w: &'a QMatrix,
    pub acts: &'a Acts<'a>,
}

impl<'a> ScalarTile<'a> {
    pub fn new(w: &'a QMatrix, acts: &'a Acts<'a>) -> Self {
        Self { w, acts }
    }

    fn one(&self, i: usize, j: usize) -> f32 {
        let (f, w) = (self.w.format(), &*self.w.row(j));
        match self.acts {
            Acts::F32 { x, k } => scalar::dot_float(f, w, &x[i * k..(i + 1) * k]),
            Acts::Q8(a) => scalar::dot32(f, w, a.row(i)),
            Acts::Q8K(a) if f == WeightFormat::Q6_K => scalar::dot_q6k(w, a.row(i)),
            Acts::Q8K(a) => scalar::dot_k(f, w, a.row(i)),
        }
    }
}

impl Tile for ScalarTile<'_> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(&self, i: usize, j: usize) -> [[f32; C]; R] {
        std::array::from_fn(|r| std::array::from_fn(|c| self.one(i + r, j + c)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::ActPrecision;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A fresh seed, printed so that a failure can be replayed.
    pub(crate) fn rng() -> (StdRng, u64) {
        let seed: u64 = rand::rng().random();
        eprintln!("seed {seed}");
        (StdRng::seed_from_u64(seed), seed)
    }

    /// Values with varied magnitudes per block (exercises the per-block scales).
    pub(crate) fn data(rng: &mut StdRng, len: usize) -> Vec<f32> {
        let mut scale = 1.0f32;
        (0..len)
            .map(|i| {
                if i % 32 == 0 {
                    scale = rng.random_range(0.05f32..2.0);
                }
                rng.random_range(-1.0f32..1.0) * scale
            })
            .collect()
    }

    fn isas() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    fn cols_for(f: WeightFormat) -> usize {
        f.block_len().max(32) * 3
    }

    /// The activation rows the kernels see, dequantized (f32 rows for float weights).
    fn seen(f: WeightFormat, x: &[f32], m: usize, k: usize) -> Vec<f32> {
        let w = QMatrix::quantize(&vec![0.0; k], 1, k, f).unwrap();
        match Acts::quantize(&w, x, m, k) {
            Acts::F32 { x, .. } => x.to_vec(),
            Acts::Q8(a) => (0..m).flat_map(|i| a.row(i).dequantize()).collect(),
            Acts::Q8K(a) => (0..m).flat_map(|i| a.row(i).dequantize()).collect(),
        }
    }

    /// Largest possible effect of quantizing `x` (each value moves by at most amax/254 of its
    /// block) on a dot product with `w`.
    fn act_bound(f: WeightFormat, x: &[f32], w: &[f32]) -> f64 {
        if f.is_float() {
            return 0.0;
        }
        let bl = if f.block_len() == QK_K_ { QK_K_ } else { 32 };
        x.chunks(bl)
            .zip(w.chunks(bl))
            .map(|(xb, wb)| {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                amax / 254.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>()
            })
            .sum()
    }
    const QK_K_: usize = super::super::format::QK_K;

    /// Every ISA this CPU has, each with `w` in the plain and the packed layout.
    fn variants(w: &QMatrix) -> Vec<(Isa, QMatrix)> {
        let layouts = [w.clone(), w.clone().packed()];
        isas()
            .into_iter()
            .flat_map(|i| layouts.iter().map(move |w| (i, w.clone())))
            .collect()
    }

    #[test]
    fn every_format_matches_the_f64_reference_on_every_isa() {
        let (mut rng, seed) = rng();
        for f in WeightFormat::ALL {
            let (m, n, k) = (5, 19, cols_for(f));
            let w = QMatrix::quantize(&data(&mut rng, n * k), n, k, f).unwrap();
            let (x, b) = (data(&mut rng, m * k), data(&mut rng, n));
            let (wf, xs) = (w.to_f32(), seen(f, &x, m, k));
            let mut first: Option<Vec<f32>> = None;
            for (isa, w) in &variants(&w) {
                let (isa, w) = (*isa, w);
                let mut y = vec![0f32; m * n];
                qlinear_with(isa, &x, m, w, Some(&b), &mut y);
                for i in 0..m {
                    for j in 0..n {
                        let (xr, wr) = (&xs[i * k..][..k], &wf[j * k..][..k]);
                        let r: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mag: f64 = xr.iter().zip(wr).map(|(a, b)| (a * b).abs() as f64).sum();
                        let got = (y[i * n + j] - b[j]) as f64;
                        assert!(
                            (got - r).abs() <= 2e-6 * mag + 1e-6,
                            "{f} {isa:?} {i},{j}: {got} vs {r} (seed {seed})"
                        );
                        // Against the unquantized activations: within the quantization bound.
                        let xo = &x[i * k..][..k];
                        let plain: f64 =
                            xo.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let bound = act_bound(f, xo, wr) * 1.001 + 2e-6 * mag + 1e-6;
                        assert!(
                            (got - plain).abs() <= bound,
                            "{f} {isa:?} {i},{j}: {got} vs plain {plain} (seed {seed})"
                        );
                    }
                }
                match &first {
                    None => first = Some(y),
                    Some(y0) => assert!(
                        bits_eq(y0, &y),
                        "{f}: {isa:?} (packed: {}) differs from Scalar (seed {seed})",
                        w.is_packed()
                    ),
                }
            }
        }
    }

    pub(crate) fn bits_eq(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn two_planes_are_within_the_15_bit_bound_and_the_same_bits_everywhere() {
        let (mut rng, seed) = rng();
        for f in WeightFormat::ALL.into_iter().filter(|f| !f.is_float()) {
            let (m, n, k) = (5, 19, cols_for(f));
            let w = QMatrix::quantize(&data(&mut rng, n * k), n, k, f)
                .unwrap()
                .with_act_precision(ActPrecision::Int16);
            let (x, wf) = (data(&mut rng, m * k), w.to_f32());
            let mut first: Option<Vec<f32>> = None;
            for (isa, w) in &variants(&w) {
                let (isa, w) = (*isa, w);
                let mut y = vec![0f32; m * n];
                qlinear_with(isa, &x, m, w, None, &mut y);
                for i in 0..m {
                    for j in 0..n {
                        let (xo, wr) = (&x[i * k..][..k], &wf[j * k..][..k]);
                        let plain: f64 =
                            xo.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mag: f64 = xo.iter().zip(wr).map(|(a, b)| (a * b).abs() as f64).sum();
                        // Each value moves by at most amax/254² of its block (vs amax/254).
                        let bound = act_bound(f, xo, wr) / 254.0 * 1.001 + 4e-6 * mag + 1e-6;
                        let got = y[i * n + j] as f64;
                        assert!(
                            (got - plain).abs() <= bound,
                            "{f} {isa:?} {i},{j}: {got} vs plain {plain}, bound {bound} (seed {seed})"
                        );
                    }
                }
                match &first {
                    None => first = Some(y),
                    Some(y0) => assert!(bits_eq(y0, &y), "{f}: {isa:?} differs (seed {seed})"),
                }
            }
        }
    }

    #[test]
    fn a_row_is_bit_identical_alone_and_in_any_batch_and_thread_count() {
        let (mut rng, seed) = rng();
        let precisions = [ActPrecision::Int8, ActPrecision::Int16];
        for (f, act) in WeightFormat::ALL
            .into_iter()
            .flat_map(|f| precisions.map(|a| (f, a)))
        {
            let (n, k) = (37, cols_for(f));
            let w = QMatrix::quantize(&data(&mut rng, n * k), n, k, f)
                .unwrap()
                .with_act_precision(act);
            // 70 rows: two row blocks, the second one partial (the prefill path).
            let x = data(&mut rng, 70 * k);
            let mut all = vec![0f32; 70 * n];
            qlinear(&x, 70, &w, None, &mut all);
            for m in [1usize, 3, 7, 33, 70] {
                // Row t of the big batch goes to position (t * 5 + 1) % m of a batch of m rows.
                for t in [0usize, 4, 17, 32, 69] {
                    let pos = (t * 5 + 1) % m;
                    let mut xb = data(&mut rng, m * k);
                    xb[pos * k..(pos + 1) * k].copy_from_slice(&x[t * k..(t + 1) * k]);
                    let threads = 1 + t % 3;
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut y = vec![0f32; m * n];
                    // Alternate layouts: the packed matrix gives the plain one's bits.
                    let wl = if t % 2 == 0 {
                        w.clone().packed()
                    } else {
                        w.clone()
                    };
                    pool.install(|| qlinear(&xb, m, &wl, None, &mut y));
                    let got = &y[pos * n..(pos + 1) * n];
                    assert!(
                        bits_eq(got, &all[t * n..(t + 1) * n]),
                        "{f} {act:?}: row {t} at {pos} of {m} on {threads} threads (seed {seed})"
                    );
                }
            }
        }
    }

    #[test]
    fn odd_shapes_one_block_and_ragged_outputs() {
        let (mut rng, seed) = rng();
        for f in WeightFormat::ALL {
            let k = if f.is_float() { 13 } else { f.block_len() };
            for (m, n) in [(1, 1), (2, 3), (5, 7), (9, 5)] {
                let w = QMatrix::quantize(&data(&mut rng, n * k), n, k, f).unwrap();
                let x = data(&mut rng, m * k);
                let mut want = vec![0f32; m * n];
                qlinear_with(Isa::Scalar, &x, m, &w, None, &mut want);
                let packed = w.clone().packed();
                for isa in isas() {
                    for w in [&w, &packed] {
                        let mut y = vec![0f32; m * n];
                        qlinear_with(isa, &x, m, w, None, &mut y);
                        assert!(
                            bits_eq(&y, &want),
                            "{f} {isa:?} packed {} m={m} n={n} k={k} (seed {seed})",
                            w.is_packed()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f32_weights_give_exactly_ops_linear() {
        let (mut rng, seed) = rng();
        let (m, n, k) = (6, 21, 75);
        let wd = data(&mut rng, n * k);
        let (x, b) = (data(&mut rng, m * k), data(&mut rng, n));
        let w = QMatrix::quantize(&wd, n, k, WeightFormat::F32).unwrap();
        let (mut y, mut want) = (vec![0f32; m * n], vec![0f32; m * n]);
        crate::ops::cpu::linear(&x, m, &wd, n, k, Some(&b), &mut want);
        qlinear(&x, m, &w, Some(&b), &mut y);
        assert!(bits_eq(&y, &want), "seed {seed}");
    }
}
