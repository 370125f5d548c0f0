//! The VFIO calls `vfio-ioctls` does not make (or makes without reporting errors), as thin
//! wrappers over `ioctl(2)` with the `vfio-bindings` structures. One of the crate's few
//! modules with `unsafe`; every call here checks its return value and reports `errno`.
//!
//! - `VFIO_IOMMU_MAP_DMA` with per-direction flags (vfio-ioctls always maps read+write);
//! - `VFIO_IOMMU_UNMAP_DMA` reporting how much was unmapped;
//! - `VFIO_IOMMU_GET_INFO` with its capability chain (valid IOVA ranges, DMA-entry limit);
//! - `VFIO_DEVICE_GET_INFO`, `VFIO_DEVICE_GET_REGION_INFO` and `VFIO_DEVICE_RESET`
//!   returning errors;
//! - borrowing the descriptors `vfio-ioctls` and `vmm-sys-util` own, for `pread`/`mmap`/`poll`.

use std::io;
use std::mem::size_of;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, BorrowedFd};

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, VFIO_TYPE, vfio_device_info, vfio_iommu_type1_dma_map,
    vfio_iommu_type1_dma_unmap, vfio_iommu_type1_info, vfio_region_info,
};
use vfio_ioctls::{VfioContainer, VfioDevice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: VFIO ioctls carry no size or direction bits.
const fn vfio_io(nr: u32) -> std::os::raw::c_ulong {
    ((VFIO_TYPE as std::os::raw::c_ulong) << 8) | (VFIO_BASE + nr) as std::os::raw::c_ulong
}

const VFIO_DEVICE_GET_INFO: std::os::raw::c_ulong = vfio_io(7);
const VFIO_DEVICE_GET_REGION_INFO: std::os::raw::c_ulong = vfio_io(8);
const VFIO_DEVICE_RESET: std::os::raw::c_ulong = vfio_io(11);
const VFIO_IOMMU_GET_INFO: std::os::raw::c_ulong = vfio_io(12);
const VFIO_IOMMU_MAP_DMA: std::os::raw::c_ulong = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: std::os::raw::c_ulong = vfio_io(14);

/// The device's file descriptor.
pub(crate) fn device_fd(device: &VfioDevice) -> BorrowedFd<'_> {
    // SAFETY: `VfioDevice` owns its device file until it is dropped, which cannot happen
    // while the returned borrow (tied to `&device`) lives.
    unsafe { BorrowedFd::borrow_raw(device.as_raw_fd()) }
}

/// The container's file descriptor.
pub(crate) fn container_fd(container: &VfioContainer) -> BorrowedFd<'_> {
    // SAFETY: `VfioContainer` owns `/dev/vfio/vfio` until it is dropped, which cannot
    // happen while the returned borrow lives.
    unsafe { BorrowedFd::borrow_raw(container.as_raw_fd()) }
}

/// An eventfd's file descriptor.
pub(crate) fn eventfd_fd(event: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: `EventFd` owns its descriptor until it is dropped, which cannot happen while
    // the returned borrow lives.
    unsafe { BorrowedFd::borrow_raw(event.as_raw_fd()) }
}

fn check(ret: i32) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What `VFIO_DEVICE_GET_INFO` says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceInfo {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

pub(crate) fn device_info(device: BorrowedFd<'_>) -> io::Result<DeviceInfo> {
    let mut info = vfio_device_info {
        argsz: size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: `info` is a properly sized, writable `vfio_device_info` whose `argsz` tells
    // the kernel how much it may write; the descriptor is a VFIO device.
    check(unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_GET_INFO, &mut info) })?;
    Ok(DeviceInfo {
        flags: info.flags,
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
    })
}

/// What `VFIO_DEVICE_GET_REGION_INFO` says about one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RegionInfo {
    pub flags: u32,
    pub size: u64,
    pub offset: u64,
}

pub(crate) fn region_info(device: BorrowedFd<'_>, index: u32) -> io::Result<RegionInfo> {
    let mut info = vfio_region_info {
        argsz: size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: `info` is a writable `vfio_region_info` of `argsz` bytes; capabilities that
    // do not fit are not written (the kernel only raises `argsz`).
    check(unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_GET_REGION_INFO, &mut info) })?;
    Ok(RegionInfo {
        flags: info.flags,
        size: info.size,
        offset: info.offset,
    })
}

/// `VFIO_DEVICE_RESET`.
pub(crate) fn reset(device: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: this ioctl takes no argument.
    check(unsafe { ioctl(&device, VFIO_DEVICE_RESET) })
}

/// What `VFIO_IOMMU_GET_INFO` says about the container's IOMMU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IommuInfo {
    /// Bitmap of supported IOMMU page sizes (bit n set = 2^n bytes).
    pub page_sizes: u64,
    /// Valid IOVA ranges (inclusive ends); empty if the kernel does not report them.
    pub ranges: Vec<RangeInclusive<u64>>,
    /// How many more DMA mappings the container accepts, if reported.
    pub dma_avail: Option<u32>,
}

impl IommuInfo {
    /// The smallest supported IOMMU page, 4 KiB if unknown.
    pub fn min_page_bytes(&self) -> u64 {
        if self.page_sizes == 0 {
            4096
        } else {
            1 << self.page_sizes.trailing_zeros()
        }
    }
}

pub(crate) fn iommu_info(container: BorrowedFd<'_>) -> io::Result<IommuInfo> {
    let mut head = vfio_iommu_type1_info {
        argsz: size_of::<vfio_iommu_type1_info>() as u32,
        ..Default::default()
    };
    // SAFETY: `head` is a writable `vfio_iommu_type1_info` of `argsz` bytes; the kernel
    // writes no capability beyond `argsz` (it reports the size it needs instead).
    check(unsafe { ioctl_with_mut_ref(&container, VFIO_IOMMU_GET_INFO, &mut head) })?;
    let needed = head.argsz as usize;
    if head.flags & VFIO_IOMMU_INFO_CAPS == 0 || needed <= size_of::<vfio_iommu_type1_info>() {
        return Ok(IommuInfo {
            page_sizes: if head.flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
                head.iova_pgsizes
            } else {
                0
            },
            ranges: Vec::new(),
            dma_avail: None,
        });
    }
    // Second call with room for the capability chain, in an 8-byte aligned buffer.
    let mut buf = vec![0u64; needed.div_ceil(8)];
    // The header's first field is `argsz`; everything else starts at zero.
    let mut first = [0u8; 8];
    first[..4].copy_from_slice(&((buf.len() * 8) as u32).to_ne_bytes());
    buf[0] = u64::from_ne_bytes(first);
    // SAFETY: `buf` is writable, 8-byte aligned, starts with a `vfio_iommu_type1_info`
    // header and is `argsz` bytes long, so the kernel writes inside it only.
    check(unsafe {
        ioctl_with_ptr(
            &container,
            VFIO_IOMMU_GET_INFO,
            buf.as_mut_ptr().cast::<vfio_iommu_type1_info>(),
        )
    })?;
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(parse_iommu_info(&bytes))
}

/// Parses a `vfio_iommu_type1_info` and its capability chain from the bytes the kernel
/// wrote. Out-of-range offsets end the walk (never a panic).
pub(crate) fn parse_iommu_info(bytes: &[u8]) -> IommuInfo {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    let mut info = IommuInfo::default();
    let flags = u32_at(4).unwrap_or(0);
    if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
        info.page_sizes = u64_at(8).unwrap_or(0);
    }
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return info;
    }
    let mut at = u32_at(16).unwrap_or(0) as usize;
    for _ in 0..64 {
        if at == 0 {
            break;
        }
        let (Some(id), Some(next)) = (u16_at(at), u32_at(at + 4)) else {
            break;
        };
        match u32::from(id) {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let n = u32_at(at + 8).unwrap_or(0) as usize;
                for i in 0..n.min(4096) {
                    let o = at + 16 + 16 * i;
                    match (u64_at(o), u64_at(o + 8)) {
                        (Some(s), Some(e)) if s <= e => info.ranges.push(s..=e),
                        _ => break,
                    }
                }
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => info.dma_avail = u32_at(at + 8),
            _ => {}
        }
        at = next as usize;
    }
    info
}

/// Direction flags for [`map_dma`], from the device's side.
pub(crate) const DMA_READ: u32 = vfio_bindings::bindings::vfio::VFIO_DMA_MAP_FLAG_READ;
/// The device may write the mapping.
pub(crate) const DMA_WRITE: u32 = vfio_bindings::bindings::vfio::VFIO_DMA_MAP_FLAG_WRITE;

/// `VFIO_IOMMU_MAP_DMA` of `[vaddr, vaddr + len)` at `iova` with `flags`.
///
/// # Safety
/// The range must be mapped in this process (with `PROT_WRITE` if `flags` has
/// [`DMA_WRITE`]), and until it is unmapped from the IOMMU, no Rust reference may exist to
/// memory the device can write: the device reads and writes it at any time, so only
/// volatile or atomic accesses (or copies into other memory) are sound.
pub(crate) unsafe fn map_dma(
    container: BorrowedFd<'_>,
    iova: u64,
    vaddr: *mut u8,
    len: u64,
    flags: u32,
) -> io::Result<()> {
    let map = vfio_iommu_type1_dma_map {
        argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags,
        vaddr: vaddr as u64,
        iova,
        size: len,
    };
    // SAFETY: `map` is a valid, readable `vfio_iommu_type1_dma_map`; what the kernel does
    // with the memory it names is the caller's contract.
    check(unsafe { ioctl_with_ref(&container, VFIO_IOMMU_MAP_DMA, &map) })
}

/// `VFIO_IOMMU_UNMAP_DMA` of `[iova, iova + len)`; returns the number of bytes unmapped.
pub(crate) fn unmap_dma(container: BorrowedFd<'_>, iova: u64, len: u64) -> io::Result<u64> {
    let mut unmap = vfio_iommu_type1_dma_unmap {
        argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
        flags: 0,
        iova,
        size: len,
        ..Default::default()
    };
    // SAFETY: `unmap` is a writable `vfio_iommu_type1_dma_unmap` of `argsz` bytes (no
    // dirty bitmap requested, so the kernel reads and writes only its fixed fields).
    check(unsafe { ioctl_with_mut_ref(&container, VFIO_IOMMU_UNMAP_DMA, &mut unmap) })?;
    Ok(unmap.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // From <linux/vfio.h>: _IO(';', 100 + n).
        assert_eq!(VFIO_DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_IOMMU_GET_INFO, 0x3b70);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    #[test]
    fn parses_the_capability_chain() {
        // What a 6.1 kernel returns for intel-iommu: page sizes, DMA_AVAIL, two IOVA ranges.
        let mut b = vec![0u8; 24 + 16 + 16 + 2 * 16];
        let total = b.len() as u32;
        put32(&mut b, 0, total);
        put32(&mut b, 4, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
        put64(&mut b, 8, 0x4020_1000); // 4K | 2M | 1G
        put32(&mut b, 16, 24);
        // cap at 24: DMA_AVAIL, next 40
        b[24..26].copy_from_slice(&(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as u16).to_ne_bytes());
        put32(&mut b, 28, 40);
        put32(&mut b, 32, 65535);
        // cap at 40: IOVA_RANGE, next 0
        b[40..42].copy_from_slice(&(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16).to_ne_bytes());
        put32(&mut b, 44, 0);
        put32(&mut b, 48, 2);
        put64(&mut b, 56, 0);
        put64(&mut b, 64, 0xfedf_ffff);
        put64(&mut b, 72, 0xfef0_0000);
        put64(&mut b, 80, 0x7f_ffff_ffff);
        let info = parse_iommu_info(&b);
        assert_eq!(info.min_page_bytes(), 4096);
        assert_eq!(info.dma_avail, Some(65535));
        assert_eq!(
            info.ranges,
            vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff]
        );
    }

    #[test]
    fn a_broken_chain_ends_the_walk() {
        let mut b = vec![0u8; 40];
        put32(&mut b, 4, VFIO_IOMMU_INFO_CAPS);
        put32(&mut b, 16, 24);
        b[24..26].copy_from_slice(&(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16).to_ne_bytes());
        put32(&mut b, 28, 24); // points at itself
        put32(&mut b, 32, 1000); // claims 1000 ranges, none present
        let info = parse_iommu_info(&b);
        assert!(info.ranges.is_empty());
        assert_eq!(info.min_page_bytes(), 4096);
        assert_eq!(parse_iommu_info(&[]), IommuInfo::default());
    }
}
