//! Entry points of the x86-64 kernels: one per instruction set, each dispatching on the weight
//! format. The VNNI entry is compiled with `avx512vnni` + `avx512vl` and must only be called after
//! run-time detection; everything it inlines is the same code as the AVX2 entry, with the u8×i8
//! dot product encoded as `vpdpbusd`. Packed matrices (`super::packed`) run the group kernels of
//! [`super::simdp`]; everything else the row kernels.

use super::format::WeightFormat as F;
use super::qlinear::{Acts, ScalarTile};
use super::qmatrix::QMatrix;
use super::simd32::{Simd32, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use super::simdf::SimdFloat;
use super::simdk::{SimdK, Q4K, Q5K, Q6K};
use super::simdp::{self, SimdPacked, SimdPackedK, SimdPackedQ6};
use super::tile::{drive, drive_groups, Block};
use std::marker::PhantomData;

/// Runs weight rows `rows` of `qm` against `acts`.
///
/// # Safety
/// AVX2 + FMA (and with `VNNI`, avx512vnni + avx512vl) are supported by the CPU.
#[inline(always)]
pub(crate) unsafe fn run<const VNNI: bool>(qm: &QMatrix, acts: &Acts, b: Block) {
    let (f, w) = (qm.format(), qm.as_bytes());
    // SAFETY (every arm): forwarded from the caller.
    unsafe {
        match (qm.is_packed(), f, acts) {
            (true, F::Q4_0, Acts::Q8(a)) => drive_groups(&packed::<simdp::Q4_0, VNNI>(w, a), b),
            (true, F::Q4_1, Acts::Q8(a)) => drive_groups(&packed::<simdp::Q4_1, VNNI>(w, a), b),
            (true, F::Q8_0, Acts::Q8(a)) => drive_groups(&packed::<simdp::Q8_0, VNNI>(w, a), b),
            (true, F::Q4_K, Acts::Q8K(a)) => {
                drive_groups(&SimdPackedK::<VNNI, false> { w, acts: a }, b)
            }
            (true, F::Q5_K, Acts::Q8K(a)) => {
                drive_groups(&SimdPackedK::<VNNI, true> { w, acts: a }, b)
            }
            (true, F::Q6_K, Acts::Q8K(a)) => {
                drive_groups(&SimdPackedQ6::<VNNI> { w, acts: a }, b)
            }
            (true, ..) => drive(&ScalarTile::new(qm, acts), b),
            (false, f, acts) => run_rows::<VNNI>(qm, f, w, acts, b),
        }
    }
}

/// [`run`] for a matrix in ggml's row layout.
///
/// # Safety
/// As [`run`].
#[inline(always)]
unsafe fn run_rows<const VNNI: bool>(qm: &QMatrix, f: F, w: &[u8], acts: &Acts, b: Block) {
    // SAFETY (every arm): forwarded from the caller.
    unsafe {
        match (f, acts) {
            (_, Acts::F32 { x, k }) => drive(&SimdFloat { f, w, x, k: *k }, b),
            (F::Q4_0, Acts::Q8(a)) => drive(&q32::<Q4_0, VNNI>(w, a), b),
            (F::Q4_1, Acts::Q8(a)) => drive(&q32::<Q4_1, VNNI>(w, a), b),
            (F::Q5_0, Acts::Q8(a)) => drive(&q32::<Q5_0, VNNI>(w, a), b),
            (F::Q5_1, Acts::Q8(a)) => drive(&q32::<Q5_1, VNNI>(w, a), b),
            (F::Q8_0, Acts::Q8(a)) => drive(&q32::<Q8_0, VNNI>(w, a), b),
            (F::Q4_K, Acts::Q8K(a)) => drive(&qk::<Q4K, VNNI>(w, a), b),
            (F::Q5_K, Acts::Q8K(a)) => drive(&qk::<Q5K, VNNI>(w, a), b),
            (F::Q6_K, Acts::Q8K(a)) => drive(&qk::<Q6K, VNNI>(w, a), b),
            _ => drive(&ScalarTile::new(qm, acts), b),
        }
    }
}

fn packed<'a, K, const VNNI: bool>(
    w: &'a [u8],
    a: &'a super::acts::Q8Acts,
) -> SimdPacked<'a, K, VNNI> {
    SimdPacked {
        w,
        acts: a,
        _f: PhantomData,
    }
}

fn q32<'a, K, const VNNI: bool>(w: &'a [u8], a: &'a super::acts::Q8Acts) -> Simd32<'a, K, VNNI> {
    Simd32 {
        w,
        acts: a,
        _f: PhantomData,
    }
}

fn qk<'a, K, const VNNI: bool>(w: &'a [u8], a: &'a super::acts::Q8KActs) -> SimdK<'a, K, VNNI> {
    SimdK {
        w,
        acts: a,
        _f: PhantomData,
    }
}

/// [`run`] compiled with AVX-512 VNNI.
///
/// # Safety
/// The CPU supports avx512vnni and avx512vl (and AVX2 + FMA).
#[target_feature(enable = "avx512vnni,avx512vl")]
pub(crate) unsafe fn run_vnni(qm: &QMatrix, acts: &Acts, b: Block) {
    // SAFETY: forwarded from the caller.
    unsafe { run::<true>(qm, acts, b) }
}
