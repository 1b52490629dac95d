//! The loop nest shared by every kernel: a task owns a contiguous range of weight rows (output
//! features) and computes them for all `m` activation rows, in micro-tiles of `R` activation rows
//! × `C` weight rows so each loaded weight block serves `R` rows and each activation block `C`
//! weight rows. A [`Tile`] computes every element of a tile exactly as it would alone, so the
//! choice of tile never changes a bit of the output.

use std::ops::Range;

/// Activation rows per micro-tile when the batch has at least that many.
const R: usize = 4;
/// Weight rows per micro-tile with `R` activation rows.
const C: usize = 2;
/// Weight rows per micro-tile for a batch of fewer than `R` rows (decode): more independent chains.
const C_NARROW: usize = 4;
/// Activation rows per cache block: the weight rows of a task are swept once per block.
const ROW_BLOCK: usize = 64;

/// A kernel for one (weight format, instruction set).
pub(crate) trait Tile {
    /// `out[r][c]` = element (activation row `i + r`, weight row `j + c`).
    ///
    /// # Safety
    /// The CPU supports the kernel's instruction set, and the rows exist.
    unsafe fn tile<const TR: usize, const TC: usize>(&self, i: usize, j: usize) -> [[f32; TC]; TR];
}

/// Computes weight rows `rows` for activation rows `0..m` into `out[(j - rows.start) * m + i]`.
///
/// # Safety
/// As [`Tile::tile`], for every row in `rows` and `0..m`.
#[inline(always)]
pub(crate) unsafe fn drive<K: Tile>(k: &K, m: usize, rows: Range<usize>, out: &mut [f32]) {
    let j0 = rows.start;
    let mut put = |i: usize, j: usize, v: &[f32]| {
        for (c, &x) in v.iter().enumerate() {
            out[(j + c - j0) * m + i] = x;
        }
    };
    // SAFETY (all calls below): forwarded from the caller; i, j stay within 0..m and `rows`.
    if m < R {
        let mut j = j0;
        while j + C_NARROW <= rows.end {
            for i in 0..m {
                put(i, j, &unsafe { k.tile::<1, C_NARROW>(i, j) }[0]);
            }
            j += C_NARROW;
        }
        for j in j..rows.end {
            for i in 0..m {
                put(i, j, &unsafe { k.tile::<1, 1>(i, j) }[0]);
            }
        }
        return;
    }
    for i0 in (0..m).step_by(ROW_BLOCK) {
        let i1 = (i0 + ROW_BLOCK).min(m);
        let full = i0 + (i1 - i0) / R * R;
        let mut j = j0;
        while j + C <= rows.end {
            for i in (i0..full).step_by(R) {
                let t = unsafe { k.tile::<R, C>(i, j) };
                t.iter().enumerate().for_each(|(r, v)| put(i + r, j, v));
            }
            for i in full..i1 {
                put(i, j, &unsafe { k.tile::<1, C>(i, j) }[0]);
            }
            j += C;
        }
        for j in j..rows.end {
            for i in (i0..full).step_by(R) {
                let t = unsafe { k.tile::<R, 1>(i, j) };
                t.iter().enumerate().for_each(|(r, v)| put(i + r, j, v));
            }
            for i in full..i1 {
                put(i, j, &unsafe { k.tile::<1, 1>(i, j) }[0]);
            }
        }
    }
}
