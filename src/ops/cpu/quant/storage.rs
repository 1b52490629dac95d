//! The bytes behind a [`super::QMatrix`]: a range of a shared memory map (a GGUF file's tensor data,
//! never copied) or an owned buffer whose start is 32-byte aligned. Either way the bytes are
//! immutable once built and `as_bytes()` is the same slice for the storage's whole life.

use bytemuck::{Pod, Zeroable};
use memmap2::Mmap;
use std::ops::Range;
use std::sync::Arc;

/// One 32-byte aligned chunk; owned buffers are vectors of these.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(32))]
struct Align32([u8; 32]);

/// Immutable bytes, mapped or owned; cloning shares them.
#[derive(Clone)]
pub struct QStorage(Inner);

#[derive(Clone)]
enum Inner {
    /// `range` of a memory map shared with other tensors of the same file.
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    /// An owned, 32-byte aligned buffer of `len` bytes.
    Owned { buf: Arc<[Align32]>, len: usize },
}

impl QStorage {
    /// `range` of `map`. Panics if the range lies outside the map.
    pub fn mapped(map: Arc<Mmap>, range: Range<usize>) -> Self {
        assert!(
            range.start <= range.end && range.end <= map.len(),
            "range outside the map"
        );
        Self(Inner::Mapped { map, range })
    }

    /// A 32-byte aligned copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::build(bytes.len(), |dst| dst.copy_from_slice(bytes))
    }

    /// An owned buffer of `len` bytes, zeroed and then filled by `fill`.
    pub fn build(len: usize, fill: impl FnOnce(&mut [u8])) -> Self {
        let mut buf = vec![Align32([0; 32]); len.div_ceil(32)];
        fill(&mut bytemuck::cast_slice_mut(&mut buf)[..len]);
        Self(Inner::Owned {
            buf: buf.into(),
            len,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Inner::Mapped { map, range } => &map[range.clone()],
            Inner::Owned { buf, len } => &bytemuck::cast_slice::<Align32, u8>(buf)[..*len],
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the mapped pages of this range from the process's resident set (a no-op for owned
    /// bytes): after a matrix is repacked into an owned copy its file pages are not read again, and
    /// while other tensors keep the map alive they would otherwise still count as resident. Reading
    /// the range later simply faults the file's pages back in.
    pub fn release_pages(&self) {
        let Inner::Mapped { map, range } = &self.0 else {
            return;
        };
        let page = 4096;
        let (start, end) = (range.start.next_multiple_of(page), range.end / page * page);
        if start < end {
            // SAFETY: `map` is a read-only file mapping (`Mmap`, never written through), so
            // MADV_DONTNEED only unmaps our copies of unchanged file pages: later reads see the same
            // bytes, faulted in again. Errors only mean the hint was not taken.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// Whether the bytes live in a memory map (file-backed, shared, paged in on demand).
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Inner::Mapped { .. })
    }
}

impl From<Vec<u8>> for QStorage {
    fn from(v: Vec<u8>) -> Self {
        Self::copy_from(&v)
    }
}

impl std::fmt::Debug for QStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "QStorage({kind}, {} bytes)", self.len())
    }
}
