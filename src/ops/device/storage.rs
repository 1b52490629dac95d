//! Access to a custom op's host operands: the contiguous elements a `Layout` names, checked.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, WithDType};

/// The elements of a contiguous operand.
pub fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("custom op operand must be contiguous, got {:?}", l)
    };
    Ok(&s.as_slice::<T>()?[a..b])
}

/// The elements of a contiguous in-place f32 operand.
pub fn slice_mut_f32<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("custom op operand must be contiguous, got {:?}", l)
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        other => bail!("expected f32 storage, got {:?}", other.dtype()),
    }
}
