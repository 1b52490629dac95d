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
    /// An owned, 32-byte aligned buffer of `len` bytes (a `Vec`, so building it moves no bytes:
    /// `Arc<[T]>::from(Vec)` would copy them into a fresh, unadvised allocation).
    Owned { buf: Arc<Vec<Align32>>, len: usize },
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
        let n = len.div_ceil(32);
        // Reserved, not yet touched, so the advice applies to every page the zeroing faults in.
        let mut buf: Vec<Align32> = Vec::with_capacity(n);
        advise_huge_pages(buf.as_ptr() as usize, n * 32);
        buf.resize(n, Align32([0; 32]));
        fill(&mut bytemuck::cast_slice_mut(&mut buf)[..len]);
        Self(Inner::Owned {
            buf: Arc::new(buf),
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

/// Buffers at least this long ask for transparent huge pages.
const HUGE_PAGE_MIN: usize = 4 << 20;
/// The size of a transparent huge page on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB pages of the `len` bytes at `at` with transparent huge
/// pages (`MADV_HUGEPAGE`; this machine class's kernels enable THP only where asked). A decode
/// step streams every weight byte once: a plain two-thread read of 2 GiB ran 8% faster on huge
/// pages here, though the effect on decode was within the noise (benches/RESULTS.md). Call it
/// before the first write, while the pages are still untouched.
#[cfg(target_os = "linux")]
fn advise_huge_pages(at: usize, len: usize) {
    if len < HUGE_PAGE_MIN {
        return;
    }
    let (start, end) = (
        at.next_multiple_of(HUGE_PAGE),
        (at + len) / HUGE_PAGE * HUGE_PAGE,
    );
    if start < end {
        // SAFETY: [start, end) lies inside an allocation this process owns (`len` bytes at `at`);
        // MADV_HUGEPAGE only changes how the kernel backs those pages, never their contents.
        // Errors (a kernel without THP) only mean the hint was not taken.
        let _ =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

/// Elsewhere: nothing to ask.
#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_at: usize, _len: usize) {}

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
