//! The loop nest shared by every kernel: a task computes a block of output elements (activation
//! rows × weight rows) in micro-tiles of `R` activation rows × `C` weight rows, so each loaded
//! weight block serves `R` rows and each activation block `C` weight rows. A [`Tile`] computes
//! every element of a tile exactly as it would alone, so the choice of tile never changes a bit.

use std::ops::Range;

/// Activation rows per micro-tile when the batch has at least that many.
const R: usize = 4;
/// Weight rows per micro-tile with `R` activation rows.
const C: usize = 2;
/// Weight rows per micro-tile for a batch of fewer than `R` rows (decode): more independent chains.
const C_NARROW: usize = 4;
/// Activation rows per cache block: the weight rows of a task are swept once per block.
pub(crate) const ROW_BLOCK: usize = 64;

/// A kernel for one (weight format, instruction set).
pub(crate) trait Tile {
    /// `out[r][c]` = element (activation row `i + r`, weight row `j + c`).
    ///
    /// # Safety
    /// The CPU supports the kernel's instruction set, and the rows exist.
    unsafe fn tile<const TR: usize, const TC: usize>(&self, i: usize, j: usize) -> [[f32; TC]; TR];
}

/// Where a task writes: element (i, j) goes to `out[(i - is.start) * si + (j - js.start) * sj]`.
pub(crate) struct Block<'a> {
    pub is: Range<usize>,
    pub js: Range<usize>,
    pub out: &'a mut [f32],
    pub si: usize,
    pub sj: usize,
}

impl Block<'_> {
    #[inline(always)]
    fn put<const TR: usize, const TC: usize>(&mut self, i: usize, j: usize, t: [[f32; TC]; TR]) {
        for (r, row) in t.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let at = (i + r - self.is.start) * self.si + (j + c - self.js.start) * self.sj;
                self.out[at] = v;
            }
        }
    }
}

/// Computes every element of `b`.
///
/// # Safety
/// As [`Tile::tile`], for every row of `b.is` and `b.js`.
#[inline(always)]
pub(crate) unsafe fn drive<K: Tile>(k: &K, mut b: Block) {
    let (is, js) = (b.is.clone(), b.js.clone());
    // SAFETY (all tile calls below): forwarded from the caller; i, j stay within `is` and `js`.
    if is.len() < R {
        let mut j = js.start;
        while j + C_NARROW <= js.end {
            is.clone()
                .for_each(|i| b.put(i, j, unsafe { k.tile::<1, C_NARROW>(i, j) }));
            j += C_NARROW;
        }
        for j in j..js.end {
            is.clone()
                .for_each(|i| b.put(i, j, unsafe { k.tile::<1, 1>(i, j) }));
        }
        return;
    }
    for i0 in is.clone().step_by(ROW_BLOCK) {
        let i1 = (i0 + ROW_BLOCK).min(is.end);
        let full = i0 + (i1 - i0) / R * R;
        let mut j = js.start;
        while j + C <= js.end {
            (i0..full)
                .step_by(R)
                .for_each(|i| b.put(i, j, unsafe { k.tile::<R, C>(i, j) }));
            (full..i1).for_each(|i| b.put(i, j, unsafe { k.tile::<1, C>(i, j) }));
            j += C;
        }
        for j in j..js.end {
            (i0..full)
                .step_by(R)
                .for_each(|i| b.put(i, j, unsafe { k.tile::<R, 1>(i, j) }));
            (full..i1).for_each(|i| b.put(i, j, unsafe { k.tile::<1, 1>(i, j) }));
        }
    }
}

/// A kernel over a packed matrix: one tile is `R` activation rows × one group of 8 weight rows.
pub(crate) trait GroupTile {
    /// `out[r][l]` = element (activation row `i + r`, weight row `8 g + l`); lanes past the
    /// matrix's last row are padding.
    ///
    /// # Safety
    /// The CPU supports the kernel's instruction set, and the rows and the group exist.
    unsafe fn tile<const TR: usize>(&self, i: usize, g: usize) -> [[f32; 8]; TR];
}

/// Writes tile `t` (activation rows `i..`, group `g`) into `b`, lanes past `b.js` dropped. A
/// function, not a closure: the closure was not inlined into the kernels.
#[inline(always)]
fn put_group(b: &mut Block, i: usize, g: usize, t: &[[f32; 8]]) {
    let lanes = b.js.end.min(8 * g + 8) - 8 * g;
    for (r, row) in t.iter().enumerate() {
        for (l, &v) in row.iter().enumerate().take(lanes) {
            let at = (i + r - b.is.start) * b.si + (8 * g + l - b.js.start) * b.sj;
            b.out[at] = v;
        }
    }
}

/// Computes every element of `b` with a packed-matrix kernel; `b.js` starts on a group.
///
/// # Safety
/// As [`GroupTile::tile`], for every row of `b.is` and every group overlapping `b.js`.
#[inline(always)]
pub(crate) unsafe fn drive_groups<K: GroupTile>(k: &K, mut b: Block) {
    let (is, js) = (b.is.clone(), b.js.clone());
    assert!(js.start.is_multiple_of(8), "packed tasks start on a group");
    let put = put_group;
    for i0 in is.clone().step_by(ROW_BLOCK) {
        let i1 = (i0 + ROW_BLOCK).min(is.end);
        for g in js.start / 8..js.end.div_ceil(8) {
            let mut i = i0;
            // SAFETY (all tile calls): forwarded from the caller; rows i.. stay within `is`.
            while i + R <= i1 {
                put(&mut b, i, g, &unsafe { k.tile::<R>(i, g) });
                i += R;
            }
            match i1 - i {
                3 => put(&mut b, i, g, &unsafe { k.tile::<3>(i, g) }),
                2 => put(&mut b, i, g, &unsafe { k.tile::<2>(i, g) }),
                1 => put(&mut b, i, g, &unsafe { k.tile::<1>(i, g) }),
                _ => {}
            }
        }
    }
}
