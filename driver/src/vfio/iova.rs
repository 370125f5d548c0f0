//! IOVA allocation: where in the device's address space each DMA mapping goes.
//!
//! Process addresses do not fit in the IOMMU's address width (QEMU's emulated Intel IOMMU
//! is 39-bit, user addresses are `0x7f..`), so IOVAs are allocated here, inside the ranges
//! the kernel reports as valid (`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`), never at or near 0
//! (a null buffer address means "skip" to some NICs) and never in the x86 MSI window.

#![forbid(unsafe_code)]

use std::fmt;
use std::ops::RangeInclusive;

/// An I/O virtual address: what a device puts on the bus, translated by the IOMMU.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Iova(pub u64);

impl Iova {
    /// The IOVA `bytes` further on.
    pub const fn add(self, bytes: u64) -> Iova {
        Iova(self.0 + bytes)
    }
}

impl fmt::Debug for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iova({:#x})", self.0)
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Address width assumed when the kernel reports no IOVA ranges (QEMU's intel-iommu).
pub const DEFAULT_ADDRESS_BITS: u32 = 39;
/// The x86 interrupt-message window, never usable for DMA.
pub const MSI_WINDOW: RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;
/// IOVAs below this are never handed out (keeps buffer addresses far from 0).
pub const LOW_RESERVED_BYTES: u64 = 1 << 20;
/// Largest alignment the allocator uses: 2 MiB lets the IOMMU use large pages.
pub const MAX_ALIGN_BYTES: u64 = 2 << 20;

/// First-fit allocator over free IOVA ranges (sorted, disjoint, half-open).
#[derive(Clone, Debug)]
pub struct IovaAllocator {
    free: Vec<(u64, u64)>,
    page_bytes: u64,
}

impl IovaAllocator {
    /// An allocator over the `valid` ranges (inclusive ends, as VFIO reports them), or over
    /// `[0, 2^DEFAULT_ADDRESS_BITS)` if there are none, minus the low reserve and the MSI
    /// window. `page_bytes` (a power of two) is the IOMMU's smallest page.
    pub fn new(valid: &[RangeInclusive<u64>], page_bytes: u64) -> IovaAllocator {
        let page_bytes = page_bytes.max(1).next_power_of_two();
        let default = [0..=(1u64 << DEFAULT_ADDRESS_BITS) - 1];
        let valid = if valid.is_empty() {
            &default[..]
        } else {
            valid
        };
        let mut free: Vec<(u64, u64)> = Vec::new();
        for r in valid {
            let (start, end) = (*r.start(), r.end().saturating_add(1));
            if start < end {
                free.push((start, end));
            }
        }
        free.sort_unstable();
        let mut alloc = IovaAllocator { free, page_bytes };
        alloc.remove(0, LOW_RESERVED_BYTES);
        alloc.remove(*MSI_WINDOW.start(), MSI_WINDOW.end() + 1);
        // Keep only whole pages.
        let page = alloc.page_bytes;
        alloc.free = alloc
            .free
            .iter()
            .filter_map(|&(s, e)| {
                let s = s.checked_next_multiple_of(page)?;
                let e = e / page * page;
                (s < e).then_some((s, e))
            })
            .collect();
        alloc
    }

    /// The IOMMU page size allocations are rounded to.
    pub fn page_bytes(&self) -> u64 {
        self.page_bytes
    }

    /// Free bytes left.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }

    /// Allocates `len_bytes` (rounded up to pages), aligned to the size's power of two up
    /// to 2 MiB. `None` when no free range can hold it.
    pub fn alloc(&mut self, len_bytes: u64) -> Option<Iova> {
        if len_bytes == 0 {
            return None;
        }
        let len = len_bytes.checked_next_multiple_of(self.page_bytes)?;
        let align = len
            .checked_next_power_of_two()
            .unwrap_or(MAX_ALIGN_BYTES)
            .clamp(self.page_bytes, MAX_ALIGN_BYTES.max(self.page_bytes));
        for &(s, e) in &self.free {
            let Some(start) = s.checked_next_multiple_of(align) else {
                continue;
            };
            if start.checked_add(len).is_some_and(|end| end <= e) {
                self.remove(start, start + len);
                return Some(Iova(start));
            }
        }
        None
    }

    /// Returns a range given out by [`IovaAllocator::alloc`] with the same length.
    pub fn free(&mut self, iova: Iova, len_bytes: u64) {
        let Some(len) = len_bytes.checked_next_multiple_of(self.page_bytes) else {
            return;
        };
        let (mut s, mut e) = (iova.0, iova.0.saturating_add(len));
        let at = self.free.partition_point(|&(fs, _)| fs < s);
        // Merge with the neighbours.
        let mut remove_from = at;
        let mut remove_to = at;
        if at > 0 && self.free[at - 1].1 >= s {
            s = s.min(self.free[at - 1].0);
            e = e.max(self.free[at - 1].1);
            remove_from = at - 1;
        }
        while remove_to < self.free.len() && self.free[remove_to].0 <= e {
            e = e.max(self.free[remove_to].1);
            remove_to += 1;
        }
        self.free.splice(remove_from..remove_to, [(s, e)]);
    }

    /// Takes `[start, end)` out of the free ranges.
    fn remove(&mut self, start: u64, end: u64) {
        let mut out = Vec::with_capacity(self.free.len() + 1);
        for &(s, e) in &self.free {
            if e <= start || s >= end {
                out.push((s, e));
                continue;
            }
            if s < start {
                out.push((s, start));
            }
            if e > end {
                out.push((end, e));
            }
        }
        self.free = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_ranges_fit_a_39_bit_iommu_and_avoid_zero_and_msi() {
        let mut a = IovaAllocator::new(&[], 4096);
        let first = a.alloc(4096).unwrap();
        assert_eq!(first, Iova(LOW_RESERVED_BYTES));
        assert_eq!(
            a.free_bytes() + 4096,
            (1u64 << 39) - LOW_RESERVED_BYTES - (MSI_WINDOW.end() - MSI_WINDOW.start() + 1)
        );
        // Nothing is ever handed out inside the MSI window or above 2^39.
        let mut big = Vec::new();
        while let Some(iova) = a.alloc(1 << 30) {
            assert!(iova.0 + (1 << 30) <= 1 << 39);
            assert!(iova.0 + (1 << 30) <= *MSI_WINDOW.start() || iova.0 > *MSI_WINDOW.end());
            big.push(iova);
        }
        assert!(big.len() > 500);
    }

    #[test]
    fn honours_reported_ranges() {
        // What VFIO reports on x86 with intel-iommu: two ranges around the MSI window.
        let valid = [0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff];
        let mut a = IovaAllocator::new(&valid, 4096);
        let x = a.alloc(3 << 20).unwrap();
        assert_eq!(x.0 % MAX_ALIGN_BYTES, 0);
        assert!(x.0 >= LOW_RESERVED_BYTES);
        // A range too small for the request is skipped.
        let mut tiny =
            IovaAllocator::new(&[0x10_0000..=0x10_0fff, 0x4000_0000..=0x4fff_ffff], 4096);
        assert_eq!(tiny.alloc(8192), Some(Iova(0x4000_0000)));
        assert_eq!(tiny.alloc(4096), Some(Iova(0x10_0000)));
        // Nothing at all: only the low reserve and the MSI window.
        let mut none = IovaAllocator::new(&[0..=0xfff, 0xfee0_0000..=0xfeef_ffff], 4096);
        assert_eq!(none.alloc(4096), None);
        assert_eq!(none.free_bytes(), 0);
    }

    #[test]
    fn free_coalesces_so_the_space_comes_back() {
        let mut a = IovaAllocator::new(&[0..=(1 << 30) - 1], 4096);
        let before = a.free_bytes();
        let xs: Vec<_> = (0..64)
            .map(|i| (a.alloc(4096 * (i % 5 + 1)).unwrap(), 4096 * (i % 5 + 1)))
            .collect();
        for (iova, len) in xs.iter().rev().step_by(2) {
            a.free(*iova, *len);
        }
        for (iova, len) in xs.iter().rev().skip(1).step_by(2) {
            a.free(*iova, *len);
        }
        assert_eq!(a.free_bytes(), before);
        assert_eq!(a.free.len(), 1);
        assert_eq!(a.alloc(0), None);
    }

    proptest! {
        #[test]
        fn allocations_never_overlap_and_stay_valid(sizes in proptest::collection::vec(1u64..(8 << 20), 1..60),
                                                    frees in proptest::collection::vec(any::<bool>(), 60)) {
            let valid = [0..=0xfedf_ffff, 0xfef0_0000..=(1u64 << 33) - 1];
            let mut a = IovaAllocator::new(&valid, 4096);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (i, len) in sizes.iter().enumerate() {
                if let Some(iova) = a.alloc(*len) {
                    let end = iova.0 + len.next_multiple_of(4096);
                    prop_assert!(iova.0 >= LOW_RESERVED_BYTES);
                    prop_assert!(valid.iter().any(|r| r.contains(&iova.0) && r.contains(&(end - 1))));
                    prop_assert!(end <= *MSI_WINDOW.start() || iova.0 > *MSI_WINDOW.end());
                    for &(s, e) in &live {
                        prop_assert!(end <= s || iova.0 >= e, "overlap");
                    }
                    live.push((iova.0, end));
                }
                if frees[i] && !live.is_empty() {
                    let (s, e) = live.remove(i % live.len());
                    a.free(Iova(s), e - s);
                }
            }
        }
    }
}
