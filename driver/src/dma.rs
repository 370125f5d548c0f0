//! DMA: the [`Iommu`] a device's accesses go through, [`DmaMapping`]s that unmap
//! themselves, and [`DmaMemory`] for descriptor rings.
//!
//! One of the crate's few modules with `unsafe`. The rule it keeps (STYLE rule 7): memory
//! a device can write is never behind a Rust reference. Descriptor words are accessed only
//! through atomics on raw pointers; data areas only through `rbuf`'s copying accessors.

use std::ffi::CStr;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use rbuf::DataArea;
use rbuf::shm::Region;

use crate::Error;
use crate::vfio::Iova;

/// What a device may do with a mapping. Named from the device's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaAccess {
    /// The device may only read (transmit buffers): a NIC can never write them.
    DeviceReads,
    /// The device may read and write (receive buffers, descriptor rings).
    DeviceWrites,
}

/// An IOMMU domain: maps process memory at IOVAs the device can use.
pub trait Iommu: Send + Sync + fmt::Debug {
    /// Maps `[vaddr, vaddr + len_bytes)` at a newly allocated IOVA and returns it.
    ///
    /// # Safety
    /// The range must be mapped in this process (writable if `access` is
    /// [`DmaAccess::DeviceWrites`]) and stay so until [`Iommu::unmap`] succeeds, or its
    /// pages must be pinned by the mapping (as VFIO type1 does). While mapped, no Rust
    /// reference may exist to memory the device can write: only atomic or volatile
    /// accesses, copies, and system calls that are sound whatever the contents.
    unsafe fn map(
        &self,
        vaddr: *mut u8,
        len_bytes: usize,
        access: DmaAccess,
    ) -> Result<Iova, Error>;

    /// Removes a mapping made by [`Iommu::map`] (same IOVA and length). Once it returns
    /// `Ok`, the device can no longer reach the memory.
    fn unmap(&self, iova: Iova, len_bytes: usize) -> Result<(), Error>;
}

/// A live IOMMU mapping; unmapped when dropped.
///
/// Owners drop it only after the device can no longer use it: a NIC driver disables
/// receive and transmit and clears bus mastering first (see `E1000`'s `Drop`), and keeps
/// its mappings in fields that drop after that.
pub struct DmaMapping {
    iommu: Arc<dyn Iommu>,
    iova: Iova,
    len_bytes: usize,
    access: DmaAccess,
}

impl DmaMapping {
    /// Maps a whole data area. The IOMMU pins the pages, so the device never reaches
    /// memory that was given back to the system, even if the area is dropped first.
    pub fn of_area(
        iommu: &Arc<dyn Iommu>,
        area: &DataArea,
        access: DmaAccess,
    ) -> Result<DmaMapping, Error> {
        if access == DmaAccess::DeviceWrites && !area.is_writable() {
            return Err(Error::AreaNotWritable {
                len_bytes: area.len(),
            });
        }
        // SAFETY: a `DataArea` is a shared mapping of `len()` bytes that is writable here
        // when `is_writable()` (checked above for device-writable mappings). `rbuf` never
        // hands out references into it except through its `unsafe` byte views, whose
        // contract already forbids any concurrent writer (a device included); everything
        // else is volatile or a copy. The pages stay pinned by the IOMMU until unmap.
        let iova = unsafe { iommu.map(area.as_ptr(), area.len(), access)? };
        Ok(DmaMapping {
            iommu: Arc::clone(iommu),
            iova,
            len_bytes: area.len(),
            access,
        })
    }

    /// Maps descriptor memory device-writable.
    pub fn of_memory(iommu: &Arc<dyn Iommu>, memory: &DmaMemory) -> Result<DmaMapping, Error> {
        DmaMapping::of_memory_with(iommu, memory, DmaAccess::DeviceWrites)
    }

    /// Maps driver memory with the given device access (device-read-only for memory the
    /// device must never write, such as virtio-net's transmit header).
    pub fn of_memory_with(
        iommu: &Arc<dyn Iommu>,
        memory: &DmaMemory,
        access: DmaAccess,
    ) -> Result<DmaMapping, Error> {
        // SAFETY: `DmaMemory` is a writable shared mapping that it only ever accesses
        // through atomics on raw pointers; it outlives the mapping in every owner here
        // (rings drop their mapping first), and VFIO pins the pages in any case.
        let iova = unsafe { iommu.map(memory.ptr.as_ptr(), memory.len_bytes, access)? };
        Ok(DmaMapping {
            iommu: Arc::clone(iommu),
            iova,
            len_bytes: memory.len_bytes,
            access,
        })
    }

    /// Where the device sees the start of the memory.
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// Size of the mapping in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    /// What the device may do.
    pub fn access(&self) -> DmaAccess {
        self.access
    }
}

impl fmt::Debug for DmaMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaMapping")
            .field("iova", &self.iova)
            .field("len_bytes", &self.len_bytes)
            .field("access", &self.access)
            .finish()
    }
}

impl Drop for DmaMapping {
    fn drop(&mut self) {
        if let Err(err) = self.iommu.unmap(self.iova, self.len_bytes) {
            // Nothing else to do in a destructor: the IOVA stays reserved (never reused)
            // and the pages stay pinned until the container goes away.
            log::error!(
                "DMA unmap of {} at {} failed: {err}",
                self.len_bytes,
                self.iova
            );
        }
    }
}

/// Driver-owned memory a device reads and writes (descriptor rings): shared memory
/// accessed only through 64-bit atomics, never through references.
pub struct DmaMemory {
    ptr: NonNull<u8>,
    len_bytes: usize,
    // Owns the mapping `ptr` points into; declared last so it is unmapped last.
    _region: Region,
}

// SAFETY: the memory is only accessed through atomics (`load_u64`/`store_u64`), which are
// sound from any thread; the `Region` owning it is `Send + Sync`.
unsafe impl Send for DmaMemory {}
// SAFETY: see `Send`.
unsafe impl Sync for DmaMemory {}

impl DmaMemory {
    /// Allocates `len_bytes` (rounded up to 4 KiB) of zeroed memory.
    pub fn new(name: &CStr, len_bytes: usize) -> Result<DmaMemory, Error> {
        let region =
            Region::create(name, len_bytes, rbuf::PagePolicy::Shmem).map_err(|source| {
                Error::Alloc {
                    what: "descriptor ring",
                    source,
                }
            })?;
        let ptr = NonNull::new(region.as_ptr()).ok_or(Error::BadConfig {
            what: "descriptor memory address",
            value: 0,
            expected: "a mapping",
        })?;
        Ok(DmaMemory {
            ptr,
            len_bytes: region.len(),
            _region: region,
        })
    }

    /// Size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len_bytes,
            "descriptor word {offset:#x} outside {} bytes",
            self.len_bytes
        );
        // SAFETY: in bounds and 8-byte aligned (checked above; the mapping is page
        // aligned); the memory lives as long as `self`, and every access to it, by this
        // process, is atomic. A device writing it concurrently is what atomics are for.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast::<u64>()) }
    }

    fn checked(&self, offset: usize, width: usize) -> *mut u8 {
        assert!(
            offset.is_multiple_of(width) && offset + width <= self.len_bytes,
            "descriptor field {offset:#x} ({width} bytes) outside {} bytes or misaligned",
            self.len_bytes
        );
        // SAFETY: in bounds (checked above) of the mapping `ptr` starts.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// Reads the little-endian 16-bit field at `offset` (2-byte aligned) with `order`.
    pub fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        let p = self.checked(offset, 2).cast::<u16>();
        // SAFETY: in bounds and aligned (`checked`); the memory lives as long as `self`
        // and is only ever accessed atomically by this process.
        u16::from_le(unsafe { AtomicU16::from_ptr(p) }.load(order))
    }

    /// Writes the little-endian 16-bit field at `offset` (2-byte aligned) with `order`.
    pub fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        let p = self.checked(offset, 2).cast::<u16>();
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU16::from_ptr(p) }.store(value.to_le(), order);
    }

    /// Reads the little-endian 32-bit field at `offset` (4-byte aligned) with `order`.
    pub fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        let p = self.checked(offset, 4).cast::<u32>();
        // SAFETY: as in `load_u16`.
        u32::from_le(unsafe { AtomicU32::from_ptr(p) }.load(order))
    }

    /// Writes the little-endian 32-bit field at `offset` (4-byte aligned) with `order`.
    pub fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        let p = self.checked(offset, 4).cast::<u32>();
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU32::from_ptr(p) }.store(value.to_le(), order);
    }

    /// Reads the little-endian 64-bit word at `offset` with `order`.
    pub fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        u64::from_le(self.word(offset).load(order))
    }

    /// Writes the little-endian 64-bit word at `offset` with `order`.
    pub fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        self.word(offset).store(value.to_le(), order);
    }

    /// Zeroes the whole memory.
    pub fn clear(&self) {
        for offset in (0..self.len_bytes).step_by(8) {
            self.store_u64(offset, 0, Ordering::Relaxed);
        }
    }

    /// The base address, for an IOMMU that emulates a device in this process (tests).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl fmt::Debug for DmaMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaMemory")
            .field("len_bytes", &self.len_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_zeroed_page_rounded_and_word_addressed() {
        let m = DmaMemory::new(c"test-ring", 100).unwrap();
        assert_eq!(m.len_bytes(), 4096);
        assert_eq!(m.load_u64(4088, Ordering::Relaxed), 0);
        m.store_u64(8, 0x0102_0304_0506_0708, Ordering::Release);
        assert_eq!(m.load_u64(8, Ordering::Acquire), 0x0102_0304_0506_0708);
        // Little-endian in memory, whatever the host.
        // SAFETY: reading one byte of our own mapping, no concurrent writer in this test.
        let first = unsafe { m.as_ptr().add(8).read_volatile() };
        assert_eq!(first, 0x08);
        m.clear();
        assert_eq!(m.load_u64(8, Ordering::Relaxed), 0);
    }

    #[test]
    fn narrow_fields_are_little_endian_and_do_not_touch_neighbours() {
        let m = DmaMemory::new(c"test-ring", 64).unwrap();
        m.store_u64(0, u64::MAX, Ordering::Relaxed);
        m.store_u16(2, 0x1234, Ordering::Release);
        assert_eq!(m.load_u64(0, Ordering::Relaxed), 0xffff_ffff_1234_ffff);
        assert_eq!(m.load_u16(2, Ordering::Acquire), 0x1234);
        m.store_u32(4, 0xa1b2_c3d4, Ordering::Release);
        assert_eq!(m.load_u64(0, Ordering::Relaxed), 0xa1b2_c3d4_1234_ffff);
        assert_eq!(m.load_u32(4, Ordering::Acquire), 0xa1b2_c3d4);
    }

    #[test]
    #[should_panic(expected = "misaligned")]
    fn misaligned_narrow_fields_are_a_bug() {
        let m = DmaMemory::new(c"test-ring", 64).unwrap();
        m.load_u16(3, Ordering::Relaxed);
    }

    #[test]
    #[should_panic(expected = "outside 4096 bytes")]
    fn out_of_bounds_words_are_a_bug() {
        let m = DmaMemory::new(c"test-ring", 4096).unwrap();
        m.load_u64(4096, Ordering::Relaxed);
    }
}
