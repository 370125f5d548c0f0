//! Shared-memory regions: one memfd each, size-sealed, mapped shared and pre-faulted.
//!
//! This module and `area.rs`'s byte views are where the crate's `unsafe` lives: `mmap`,
//! `munmap` and raw accesses into mappings that another process (or a device) may write at
//! any time. Nothing outside hands out a Rust reference into such memory except
//! `AtomicU64`s and `AtomicU32`s (atomic access is sound under concurrent writes) and the
//! explicitly `unsafe` byte views of [`crate::DataArea`].
//!
//! Write protection of a receiver's view is enforced by the kernel, twice:
//! - the receiver gets a file descriptor opened `O_RDONLY` (a re-open through
//!   `/proc/self/fd`), so `mmap(PROT_WRITE, MAP_SHARED)` fails with `EACCES`;
//! - the memfd carries `F_SEAL_FUTURE_WRITE` once the writer has mapped it, so even a
//!   re-open of the memfd as `O_RDWR` cannot produce a new writable mapping (`EPERM`), and
//!   `mprotect` cannot upgrade a read-only mapping.
//!
//! `F_SEAL_SHRINK | F_SEAL_GROW` fix the size, so a peer can never truncate the area under
//! us (which would turn our next access into `SIGBUS`); the side that maps a region it did
//! not create checks those seals before mapping.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::Error;

/// Size of a 2 MiB huge page, the granule of hugetlb data areas.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Size of a base page.
pub const PAGE_BYTES: usize = 4096;

/// What backs a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// 2 MiB hugetlb pages (never swapped, few TLB entries, what a NIC wants).
    HugeTlb2M,
    /// Ordinary shmem in 4 KiB pages.
    Shmem,
}

/// Which backing a creator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PagePolicy {
    /// Hugetlb when the pool has pages, shmem otherwise (reported once through `log`).
    #[default]
    PreferHuge,
    /// Hugetlb or fail.
    RequireHuge,
    /// Shmem only (small control areas).
    Shmem,
}

/// The seals every region carries before it is shared.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

static SHMEM_FALLBACK_REPORTED: AtomicBool = AtomicBool::new(false);

/// The word [`Region::read_volatile`] copies with: 16 bytes where SSE2 has them (every
/// x86_64), 8 elsewhere.
#[cfg(target_arch = "x86_64")]
type Word = std::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Word = u64;

/// Where a line published with [`Region::publish_line`] carries its `u32` stamp.
pub(crate) const LINE_STAMP_AT: usize = 4;

/// Whether a `T` is made of whole `W`s and aligned for them (so it can be copied `W` by
/// `W`).
const fn words_of<T, W>() -> bool {
    std::mem::size_of::<T>().is_multiple_of(std::mem::size_of::<W>())
        && std::mem::align_of::<T>() >= std::mem::align_of::<W>()
}

/// A mapped memfd region. Writable only in the process that created it.
#[derive(Debug)]
pub struct Region {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    backing: Backing,
}

// SAFETY: `Region` owns its mapping and file descriptor; the raw pointer is only used for
// atomic and volatile accesses (or through `unsafe` views whose callers uphold aliasing), so
// moving or sharing the handle between threads is as safe as sharing the memory itself,
// which other processes already do.
unsafe impl Send for Region {}
// SAFETY: see `Send`: every access through `&Region` is atomic, volatile or a copy.
unsafe impl Sync for Region {}

impl Region {
    /// Creates a region of at least `len_bytes` (rounded up to the page size), maps it
    /// writable and pre-faulted, and seals its size and future writable mappings.
    pub fn create(name: &CStr, len_bytes: usize, policy: PagePolicy) -> Result<Region, Error> {
        if len_bytes == 0 {
            return Err(Error::InvalidSize { len_bytes });
        }
        if policy != PagePolicy::Shmem {
            match Self::create_with(name, len_bytes, Backing::HugeTlb2M) {
                Ok(region) => return Ok(region),
                Err(err) if policy == PagePolicy::RequireHuge => return Err(err),
                Err(err) => {
                    if !SHMEM_FALLBACK_REPORTED.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "no 2 MiB hugetlb pages for data areas ({err}); using shmem in 4 KiB pages \
                             (echo N > /proc/sys/vm/nr_hugepages to fix)"
                        );
                    }
                }
            }
        }
        Self::create_with(name, len_bytes, Backing::Shmem)
    }

    fn create_with(name: &CStr, len_bytes: usize, backing: Backing) -> Result<Region, Error> {
        let (flags, granule) = match backing {
            Backing::HugeTlb2M => (
                MemfdFlags::CLOEXEC
                    | MemfdFlags::ALLOW_SEALING
                    | MemfdFlags::HUGETLB
                    | MemfdFlags::HUGE_2MB,
                HUGE_PAGE_BYTES,
            ),
            Backing::Shmem => (MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING, PAGE_BYTES),
        };
        let len = len_bytes
            .checked_next_multiple_of(granule)
            .ok_or(Error::InvalidSize { len_bytes })?;
        let fd =
            rustix::fs::memfd_create(name, flags).map_err(|e| Error::sys("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(|e| Error::sys("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS).map_err(|e| Error::sys("F_ADD_SEALS", e))?;
        let ptr = map(&fd, len, true)?;
        let region = Region {
            fd,
            ptr,
            len,
            writable: true,
            backing,
        };
        // From now on nobody can map the memfd writable again; our own mapping stays so.
        rustix::fs::fcntl_add_seals(&region.fd, SealFlags::FUTURE_WRITE | SealFlags::SEAL)
            .map_err(|e| Error::sys("F_ADD_SEALS", e))?;
        Ok(region)
    }

    /// Maps a region received from a peer read-only, after checking that its size is
    /// `len_bytes` and sealed (so the peer cannot truncate it under us).
    pub fn map_readonly(fd: OwnedFd, len_bytes: usize) -> Result<Region, Error> {
        let stat = rustix::fs::fstat(&fd).map_err(|e| Error::sys("fstat", e))?;
        if stat.st_size as u64 != len_bytes as u64 || len_bytes == 0 {
            return Err(Error::RegionSize {
                expected_bytes: len_bytes,
                actual_bytes: stat.st_size as u64,
            });
        }
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| Error::sys("F_GET_SEALS", e))?;
        if !seals.contains(SIZE_SEALS) {
            return Err(Error::NotSealed);
        }
        let ptr = map(&fd, len_bytes, false)?;
        let backing = if stat.st_blksize as usize >= HUGE_PAGE_BYTES {
            Backing::HugeTlb2M
        } else {
            Backing::Shmem
        };
        Ok(Region {
            fd,
            ptr,
            len: len_bytes,
            writable: false,
            backing,
        })
    }

    /// A new file descriptor for this region that can only ever be mapped read-only:
    /// opened `O_RDONLY`, on a memfd sealed against future writable mappings.
    pub fn readonly_fd(&self) -> Result<OwnedFd, Error> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        rustix::fs::open(
            path.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys("open /proc/self/fd (read-only)", e))
    }

    /// The memfd itself (for DMA mapping by fd, or `fstat`).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Length in bytes of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: regions have a non-zero size.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether this process may write the region.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// What backs the region.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Base address of the mapping in this process (for `VFIO_IOMMU_MAP_DMA`).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The 64-bit atomic word at `offset` (8-byte aligned, inside the region).
    ///
    /// Atomic loads are sound on read-only mappings on x86_64 (aligned 8-byte loads are
    /// plain `mov`s); stores through a read-only mapping would fault, so the internal
    /// writers only store into regions they created.
    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len,
            "atomic_u64 at {offset}"
        );
        // SAFETY: in bounds and aligned (checked above); the mapping lives as long as
        // `self`; `AtomicU64` tolerates concurrent writes by other processes.
        unsafe { &*(self.ptr.as_ptr().add(offset) as *const AtomicU64) }
    }

    /// The 32-bit atomic word at `offset` (4-byte aligned, inside the region); the same
    /// rules as [`Region::atomic_u64`] (aligned 4-byte loads are plain `mov`s too).
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "atomic_u32 at {offset}"
        );
        // SAFETY: in bounds and aligned (checked above); the mapping lives as long as
        // `self`; `AtomicU32` tolerates concurrent writes by other processes.
        unsafe { &*(self.ptr.as_ptr().add(offset) as *const AtomicU32) }
    }

    /// Loads the 64-bit word at `offset` (8-byte aligned) with `order`.
    pub fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        self.atomic_u64(offset).load(order)
    }

    /// Stores the 64-bit word at `offset` (8-byte aligned) with `order`; the region must
    /// be this process's writable one.
    pub fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        assert!(self.writable, "store into a read-only region");
        self.atomic_u64(offset).store(value, order)
    }

    /// Copies a `T` out of the region with volatile reads (no reference into shared
    /// memory is ever made, so a concurrent writer cannot change what we validated).
    /// A `T` of whole words is read a word at a time (16-byte words on x86_64): a
    /// volatile read of a struct would otherwise be split field by field.
    #[inline]
    pub(crate) fn read_volatile<T: Copy>(&self, offset: usize) -> T {
        assert!(
            offset.is_multiple_of(std::mem::align_of::<T>())
                && offset + std::mem::size_of::<T>() <= self.len,
            "read_volatile at {offset}"
        );
        let src = self.ptr.as_ptr().wrapping_add(offset);
        let mut out = std::mem::MaybeUninit::<T>::uninit();
        if words_of::<T, Word>() {
            let (src, dst) = (src as *const Word, out.as_mut_ptr() as *mut Word);
            for i in 0..std::mem::size_of::<T>() / std::mem::size_of::<Word>() {
                // SAFETY: word `i` lies inside `T`, so inside the region (checked above)
                // and inside `out`; both are aligned for `Word` (`T`'s alignment is at
                // least `Word`'s, `words_of`).
                unsafe { dst.add(i).write(std::ptr::read_volatile(src.add(i))) };
            }
        } else {
            // SAFETY: in bounds and aligned (checked above).
            out.write(unsafe { std::ptr::read_volatile(src as *const T) });
        }
        // SAFETY: every byte of `out` was written; `T: Copy` is plain data for every
        // caller in this crate (IOrecs, integers), valid for any bit pattern.
        unsafe { out.assume_init() }
    }

    /// Writes a `T` into the region with one volatile write.
    pub(crate) fn write_volatile<T: Copy>(&self, offset: usize, value: T) {
        assert!(self.writable, "write to a read-only region");
        assert!(
            offset.is_multiple_of(std::mem::align_of::<T>())
                && offset + std::mem::size_of::<T>() <= self.len,
            "write_volatile at {offset}"
        );
        // SAFETY: in bounds, aligned and mapped writable (checked above).
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(offset) as *mut T, value) }
    }

    /// Publishes a 64-byte line `value` at `offset` (64-byte aligned) to a reader that
    /// polls the `u32` at byte [`LINE_STAMP_AT`] of the line, its stamp: bytes 0..4 and
    /// 8..64 go first, with volatile writes (whole `Word`s from byte 16 on), then `stamp`
    /// with a `Release` store, so a reader that acquires the stamp sees the whole line.
    /// Whatever `value` holds at bytes 4..8 is not written. One check covers the line (a
    /// ring producer publishes one per IOrec).
    #[inline]
    pub(crate) fn publish_line<T: Copy>(&self, offset: usize, value: &T, stamp: u32) {
        const { assert!(std::mem::size_of::<T>() == 64 && words_of::<T, Word>()) };
        assert!(
            self.writable && offset.is_multiple_of(64) && offset + 64 <= self.len,
            "publish_line at {offset}"
        );
        let src = value as *const T as *const u8;
        let dst = self.ptr.as_ptr().wrapping_add(offset);
        // SAFETY: `dst..dst + 64` is inside the region, 64-byte aligned and mapped
        // writable (checked above); `src` is a 64-byte, 64-byte aligned `T` (checked at
        // compile time), so every read and write below is in bounds and aligned.
        unsafe {
            for at in (16..64).step_by(std::mem::size_of::<Word>()) {
                let word = (src.add(at) as *const Word).read();
                std::ptr::write_volatile(dst.add(at) as *mut Word, word);
            }
            std::ptr::write_volatile(dst.add(8) as *mut u64, (src.add(8) as *const u64).read());
            std::ptr::write_volatile(dst as *mut u32, (src as *const u32).read());
            (*(dst.add(LINE_STAMP_AT) as *const AtomicU32)).store(stamp, Ordering::Release);
        }
    }

    /// Asks the CPU to fetch the cache line at `offset` for writing (x86 `PREFETCHW`), so
    /// its ownership request goes out now rather than when a store reaches it. A hint:
    /// it never faults and changes no memory; out-of-bounds offsets are ignored.
    #[inline]
    pub fn prefetch_write(&self, offset: usize) {
        if offset >= self.len {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: PREFETCHW is a hint: it reads nothing, writes nothing and never faults;
        // the address is inside our mapping anyway (checked above).
        unsafe {
            std::arch::asm!(
                "prefetchw [{p}]",
                p = in(reg) self.ptr.as_ptr().add(offset),
                options(nostack, preserves_flags, readonly)
            );
        }
    }

    /// Copies `dst.len()` bytes from `offset` out of the region. The caller checked bounds.
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset
                .checked_add(dst.len())
                .is_some_and(|end| end <= self.len)
        );
        // SAFETY: the source range is inside the mapping (checked above) and cannot overlap
        // `dst`, which is ordinary memory borrowed mutably. A concurrent writer can only
        // change which bytes we copy, and any byte value is a valid `u8`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Copies `src` into the region at `offset`. The caller checked bounds.
    pub(crate) fn copy_in(&self, offset: usize, src: &[u8]) {
        assert!(self.writable, "write to a read-only region");
        assert!(
            offset
                .checked_add(src.len())
                .is_some_and(|end| end <= self.len)
        );
        // SAFETY: the destination range is inside a writable mapping (checked above) and
        // cannot overlap `src`, which is ordinary memory.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        }
    }

    /// A shared view of `len` bytes at `offset`.
    ///
    /// # Safety
    /// Nobody (this process, a peer, a device) may write those bytes while the slice lives.
    pub(crate) unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (checked above); the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    /// An exclusive view of `len` bytes at `offset`.
    ///
    /// # Safety
    /// Nobody else may read or write those bytes while the slice lives, and no other view
    /// of them may exist in this process.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(self.writable, "write to a read-only region");
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds of a writable mapping (checked above); the caller guarantees
        // exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is the mapping `map` returned and nothing borrows it any
        // more (every view borrows `self`).
        if let Err(err) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
            log::error!("munmap of a {}-byte region failed: {err}", self.len);
        }
    }
}

fn map(fd: &OwnedFd, len: usize, writable: bool) -> Result<NonNull<u8>, Error> {
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a fresh mapping at an address the kernel chooses; it aliases no Rust object.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            MapFlags::SHARED | MapFlags::POPULATE,
            fd,
            0,
        )
    }
    .map_err(|e| Error::sys("mmap", e))?;
    NonNull::new(ptr.cast()).ok_or(Error::Sys {
        call: "mmap",
        source: std::io::Error::from_raw_os_error(rustix::io::Errno::FAULT.raw_os_error()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_map_writable(fd: &OwnedFd, len: usize) -> rustix::io::Result<()> {
        // SAFETY: a fresh mapping that aliases nothing; unmapped right away.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        // SAFETY: the mapping made just above.
        unsafe { rustix::mm::munmap(ptr, len) }
    }

    #[test]
    fn readonly_fd_cannot_be_mapped_writable_even_after_reopen() {
        let region = Region::create(c"t", 8192, PagePolicy::Shmem).unwrap();
        region.copy_in(0, b"hello");
        let ro = region.readonly_fd().unwrap();
        assert_eq!(try_map_writable(&ro, 8192), Err(rustix::io::Errno::ACCESS));
        // A re-open for writing through /proc succeeds, but the seal still refuses a
        // writable mapping.
        let rw = rustix::fs::open(
            format!("/proc/self/fd/{}", ro.as_raw_fd()).as_str(),
            OFlags::RDWR,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(try_map_writable(&rw, 8192), Err(rustix::io::Errno::PERM));
        let view = Region::map_readonly(ro, 8192).unwrap();
        let mut buf = [0u8; 5];
        view.copy_out(0, &mut buf);
        assert_eq!(&buf, b"hello");
        assert!(!view.is_writable());
    }

    #[test]
    fn size_is_sealed() {
        let region = Region::create(c"t", 4096, PagePolicy::Shmem).unwrap();
        assert_eq!(
            rustix::fs::ftruncate(&region.fd, 0),
            Err(rustix::io::Errno::PERM)
        );
        assert_eq!(
            rustix::fs::ftruncate(&region.fd, 1 << 20),
            Err(rustix::io::Errno::PERM)
        );
    }

    #[test]
    fn map_readonly_checks_size_and_seals() {
        let region = Region::create(c"t", 4096, PagePolicy::Shmem).unwrap();
        let err = Region::map_readonly(region.readonly_fd().unwrap(), 8192).unwrap_err();
        assert!(matches!(
            err,
            Error::RegionSize {
                expected_bytes: 8192,
                actual_bytes: 4096
            }
        ));
        let unsealed = rustix::fs::memfd_create(c"u", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        assert!(matches!(
            Region::map_readonly(unsealed, 4096),
            Err(Error::NotSealed)
        ));
    }

    #[test]
    fn length_rounds_up_to_the_page() {
        let region = Region::create(c"t", 1, PagePolicy::Shmem).unwrap();
        assert_eq!(region.len(), PAGE_BYTES);
        assert!(matches!(
            Region::create(c"t", 0, PagePolicy::Shmem),
            Err(Error::InvalidSize { len_bytes: 0 })
        ));
    }

    #[test]
    fn prefetch_for_writing_changes_nothing_and_never_faults() {
        let region = Region::create(c"t", 8192, PagePolicy::Shmem).unwrap();
        region.write_volatile(64, 0x1122_3344_5566_7788u64);
        let view = Region::map_readonly(region.readonly_fd().unwrap(), region.len()).unwrap();
        // Every line of ours, of a read-only view, and offsets past the end (ignored).
        for offset in (0..8192).step_by(64).chain([8192, usize::MAX]) {
            region.prefetch_write(offset);
            view.prefetch_write(offset);
        }
        assert_eq!(view.read_volatile::<u64>(64), 0x1122_3344_5566_7788);
        assert_eq!(view.read_volatile::<u64>(128), 0);
    }

    /// A cache line of eight words, as the ring copies one.
    #[repr(C, align(64))]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Line([u64; 8]);

    #[test]
    fn a_line_is_read_word_by_word_as_written() {
        let region = Region::create(c"t", 8192, PagePolicy::Shmem).unwrap();
        let words: [u64; 8] = std::array::from_fn(|i| 0x0101_0101_0101_0101 * (i as u64 + 1));
        for (i, &w) in words.iter().enumerate() {
            region.write_volatile(128 + 8 * i, w);
        }
        let view = Region::map_readonly(region.readonly_fd().unwrap(), region.len()).unwrap();
        assert_eq!(view.read_volatile::<Line>(128), Line(words));
        assert_eq!(view.read_volatile::<Line>(192), Line([0; 8]));
    }

    #[test]
    fn a_published_line_carries_its_stamp_and_every_other_byte() {
        let region = Region::create(c"t", 8192, PagePolicy::Shmem).unwrap();
        let line = Line(std::array::from_fn(|i| {
            0x0101_0101_0101_0101 * (i as u64 + 1)
        }));
        region.publish_line(192, &line, 0xdead_beef);
        let view = Region::map_readonly(region.readonly_fd().unwrap(), region.len()).unwrap();
        // The stamp replaces bytes 4..8 (the high half of the first little-endian word).
        let mut expected = line;
        expected.0[0] = (expected.0[0] & 0xffff_ffff) | (0xdead_beef << 32);
        assert_eq!(view.read_volatile::<Line>(192), expected);
        // Nothing outside the line.
        assert_eq!(view.read_volatile::<Line>(128), Line([0; 8]));
        assert_eq!(view.read_volatile::<Line>(256), Line([0; 8]));
    }

    #[test]
    #[should_panic(expected = "publish_line")]
    fn a_line_is_not_published_into_a_read_only_view() {
        let region = Region::create(c"t", 4096, PagePolicy::Shmem).unwrap();
        let view = Region::map_readonly(region.readonly_fd().unwrap(), region.len()).unwrap();
        view.publish_line(0, &Line([1; 8]), 1);
    }
}

#[cfg(test)]
mod hugetlb_tests {
    use super::*;

    /// Free 2 MiB pages in the pool, from /proc/meminfo.
    fn free_huge_pages() -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn hugetlb_region_is_sealed_and_readonly_for_receivers() {
        // .ci/run sets vm.nr_hugepages and RBUF_REQUIRE_HUGEPAGES=1, so there this test
        // cannot skip; elsewhere an empty pool skips it with a note.
        if free_huge_pages() < 2 {
            assert!(
                std::env::var_os("RBUF_REQUIRE_HUGEPAGES").is_none(),
                "RBUF_REQUIRE_HUGEPAGES is set but the hugetlb pool is empty"
            );
            eprintln!("skipped: no free 2 MiB pages (echo 8 > /proc/sys/vm/nr_hugepages)");
            return;
        }
        let region = Region::create(c"h", 1, PagePolicy::RequireHuge).unwrap();
        assert_eq!(region.backing(), Backing::HugeTlb2M);
        assert_eq!(region.len(), HUGE_PAGE_BYTES);
        region.copy_in(HUGE_PAGE_BYTES - 3, b"end");
        let ro = region.readonly_fd().unwrap();
        let view = Region::map_readonly(ro, HUGE_PAGE_BYTES).unwrap();
        assert_eq!(view.backing(), Backing::HugeTlb2M);
        let mut buf = [0u8; 3];
        view.copy_out(HUGE_PAGE_BYTES - 3, &mut buf);
        assert_eq!(&buf, b"end");
        let rw = rustix::fs::open(
            format!("/proc/self/fd/{}", region.fd().as_raw_fd()).as_str(),
            OFlags::RDWR,
            Mode::empty(),
        )
        .unwrap();
        // SAFETY: a fresh mapping attempt that aliases nothing (it must fail).
        let attempt = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                HUGE_PAGE_BYTES,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &rw,
                0,
            )
        };
        assert_eq!(attempt.err(), Some(rustix::io::Errno::PERM));
        assert_eq!(rustix::fs::ftruncate(&rw, 0), Err(rustix::io::Errno::PERM));
    }
}
