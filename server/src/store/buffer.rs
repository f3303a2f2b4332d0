//! Where objects' bytes live: aligned heap memory, page-locked memory, or a spill file's
//! mapping. All of the store's `unsafe` is here; it keeps no accounts.

use std::alloc::Layout;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use prism_kernels::cuda::PinnedBytes;

/// Heap memory aligned to 64 bytes (a cache line, and enough for any element type and
/// SIMD loads), zero-initialised by the allocator.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

const ALIGN: usize = 64;

// SAFETY: `AlignedBuf` owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes, or `None` when the allocator refuses (no abort).
    pub fn zeroed(len: usize) -> Option<Self> {
        if len == 0 {
            return Some(AlignedBuf {
                ptr: NonNull::new(ALIGN as *mut u8).expect("non-zero"),
                len: 0,
            });
        }
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| AlignedBuf { ptr, len })
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised (zeroed) bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            let layout = Layout::from_size_align(self.len, ALIGN).expect("made from this layout");
            // SAFETY: allocated in `zeroed` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// An object's memory: page-locked when a GPU is present (so copies from it to a card can
/// be direct DMA), aligned heap memory otherwise.
pub enum Buffer {
    Heap(AlignedBuf),
    Pinned(PinnedBytes),
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Buffer::Heap(b) => b,
            Buffer::Pinned(b) => b,
        }
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Buffer::Heap(b) => b,
            Buffer::Pinned(b) => b,
        }
    }
}

/// Where an object's bytes are.
pub enum Data {
    Memory(Buffer),
    /// A spill file, mapped read-only, and its path.
    Mapped(memmap2::Mmap, PathBuf),
}

impl Data {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Data::Memory(b) => b,
            Data::Mapped(m, _) => m,
        }
    }
}

/// Writes `bytes` to a new file at `path` and maps it; removes what it wrote on failure.
pub fn write_spill_file(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<memmap2::Mmap> {
    let write = || -> std::io::Result<memmap2::Mmap> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create_new(path)?;
        f.write_all(bytes)?;
        map_file(path)
    };
    write().inspect_err(|e| {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(path);
        }
    })
}

fn map_file(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let f = std::fs::File::open(path)?;
    // SAFETY: spill files are written by this process under its own spill directory and
    // never modified after they are mapped; they are unlinked only when no longer read
    // through the store (a mapping outlives the unlink).
    unsafe { memmap2::Mmap::map(&f) }
}

/// Bytes free to an unprivileged user on the file system that holds `dir` (or its
/// nearest existing ancestor: the spill folder is made when first needed); `None` when
/// it cannot be asked.
pub fn free_space(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = dir.ancestors().find(|p| p.exists())?;
    let path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is written by the call before it is read.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: the call succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}
