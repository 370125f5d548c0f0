//! Descriptor rings: free-running indices over a power-of-two ring, and the ring memory.
//!
//! Ownership (STYLE rule 8): descriptors in `[head, tail)` belong to the NIC, the rest to
//! the driver. The driver publishes new descriptors by writing the tail register after a
//! fence; the NIC hands one back by setting its DD bit, which the driver reads with
//! Acquire before it looks at anything else in the descriptor. As on all 8254x rings,
//! head == tail means "empty", so at most `size - 1` descriptors are ever handed out.

#![forbid(unsafe_code)]

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use crate::Error;
use crate::dma::{DmaMapping, DmaMemory, Iommu};
use crate::vfio::Iova;

use super::desc::DESC_BYTES;

/// Smallest ring: RDLEN/TDLEN must be a multiple of 128 bytes (8 descriptors).
pub const MIN_RING: u32 = 8;
/// Largest ring this driver builds.
pub const MAX_RING: u32 = 4096;

/// Free-running counters: `head` counts descriptors the NIC gave back, `tail` the ones
/// handed to it. Both only grow; a slot is a counter masked by the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Indices {
    size: u64,
    head: u64,
    tail: u64,
}

impl Indices {
    /// Counters for a ring of `size` slots (a power of two).
    pub fn new(size: u32) -> Indices {
        debug_assert!(size.is_power_of_two());
        Indices {
            size: u64::from(size),
            head: 0,
            tail: 0,
        }
    }

    /// Counters starting at `start` (tests use this to cross the 2^64 wrap).
    #[cfg(test)]
    pub fn starting_at(size: u32, start: u64) -> Indices {
        Indices {
            size: u64::from(size),
            head: start,
            tail: start,
        }
    }

    /// Descriptors owned by the NIC.
    pub fn in_flight(&self) -> u64 {
        self.tail.wrapping_sub(self.head)
    }

    /// Descriptors the driver may still hand out (one slot always stays empty).
    pub fn space(&self) -> usize {
        (self.size - 1 - self.in_flight()) as usize
    }

    /// Ring slot of counter value `i`.
    pub fn slot(&self, i: u64) -> usize {
        (i & (self.size - 1)) as usize
    }

    /// The oldest descriptor still owned by the NIC.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The next descriptor to hand out.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Hands the descriptor at `tail` to the NIC.
    pub fn push(&mut self) {
        debug_assert!(self.space() > 0);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Takes back `n` descriptors from `head`.
    pub fn pop(&mut self, n: u64) {
        debug_assert!(n <= self.in_flight());
        self.head = self.head.wrapping_add(n);
    }

    /// The value for the hardware tail register.
    pub fn hw_tail(&self) -> u32 {
        self.slot(self.tail) as u32
    }
}

/// A ring of 16-byte descriptors in DMA memory, mapped device-writable.
pub struct DescRing {
    // Dropped before `memory`: unmap from the IOMMU first, then free.
    mapping: DmaMapping,
    memory: DmaMemory,
    size: u32,
}

impl DescRing {
    /// Allocates and maps a zeroed ring of `size` descriptors.
    pub fn new(iommu: &Arc<dyn Iommu>, name: &CStr, size: u32) -> Result<DescRing, Error> {
        if !(MIN_RING..=MAX_RING).contains(&size) || !size.is_power_of_two() {
            return Err(Error::BadConfig {
                what: "ring size",
                value: u64::from(size),
                expected: "a power of two from 8 to 4096",
            });
        }
        let memory = DmaMemory::new(name, size as usize * DESC_BYTES)?;
        let mapping = DmaMapping::of_memory(iommu, &memory)?;
        Ok(DescRing {
            mapping,
            memory,
            size,
        })
    }

    /// Number of descriptors.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Bytes the NIC is told the ring has (RDLEN/TDLEN).
    pub fn len_bytes(&self) -> u32 {
        self.size * DESC_BYTES as u32
    }

    /// Where the NIC finds the ring.
    pub fn iova(&self) -> Iova {
        self.mapping.iova()
    }

    /// Writes a whole descriptor for the NIC (published later by the tail write).
    pub fn write(&self, slot: usize, words: [u64; 2]) {
        let at = slot * DESC_BYTES;
        self.memory.store_u64(at + 8, words[1], Ordering::Relaxed);
        self.memory.store_u64(at, words[0], Ordering::Relaxed);
    }

    /// Reads the second (status) word with Acquire: if DD is set in it, what the NIC
    /// wrote before setting DD is visible to loads that follow.
    pub fn status_word(&self, slot: usize) -> u64 {
        self.memory
            .load_u64(slot * DESC_BYTES + 8, Ordering::Acquire)
    }

    /// Reads a whole descriptor (after DD was seen).
    pub fn read(&self, slot: usize) -> [u64; 2] {
        let at = slot * DESC_BYTES;
        [
            self.memory.load_u64(at, Ordering::Acquire),
            self.memory.load_u64(at + 8, Ordering::Acquire),
        ]
    }

    /// Zeroes every descriptor.
    pub fn clear(&self) {
        self.memory.clear();
    }
}

/// Orders descriptor writes before the doorbell (tail register) write that publishes
/// them. A full fence: on x86 it also keeps the compiler from sinking the descriptor
/// stores past the volatile MMIO write.
pub fn doorbell_fence() {
    fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_slot_always_stays_empty() {
        let mut i = Indices::new(8);
        assert_eq!(i.space(), 7);
        for _ in 0..7 {
            i.push();
        }
        assert_eq!(i.space(), 0);
        assert_eq!(i.in_flight(), 7);
        assert_eq!(i.hw_tail(), 7);
        i.pop(3);
        assert_eq!(i.space(), 3);
        i.push();
        assert_eq!(i.hw_tail(), 0);
        assert_eq!(i.slot(i.head()), 3);
    }

    #[test]
    fn counters_cross_the_u64_wrap() {
        let mut i = Indices::starting_at(16, u64::MAX - 5);
        for _ in 0..12 {
            i.push();
        }
        assert_eq!(i.in_flight(), 12);
        assert_eq!(i.space(), 3);
        assert_eq!(
            i.slot(i.tail()),
            ((u64::MAX - 5).wrapping_add(12) & 15) as usize
        );
        i.pop(12);
        assert_eq!(i.in_flight(), 0);
        assert_eq!(i.space(), 15);
    }

    proptest! {
        /// Against a model: any sequence of pushes and pops keeps 0 <= in_flight < size
        /// and slots cycle in order.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((any::<bool>(), 1u64..20), 1..200),
                           size_log in 3u32..8, start in any::<u64>()) {
            let size = 1u32 << size_log;
            let mut i = Indices::starting_at(size, start);
            let mut model: std::collections::VecDeque<usize> = Default::default();
            let mut next_slot = i.slot(start);
            for (push, n) in ops {
                for _ in 0..n {
                    if push && i.space() > 0 {
                        prop_assert_eq!(i.slot(i.tail()), next_slot);
                        model.push_back(next_slot);
                        next_slot = (next_slot + 1) % size as usize;
                        i.push();
                    } else if !push && i.in_flight() > 0 {
                        prop_assert_eq!(Some(i.slot(i.head())), model.pop_front());
                        i.pop(1);
                    }
                }
                prop_assert_eq!(i.in_flight() as usize, model.len());
                prop_assert!(i.in_flight() < u64::from(size));
                prop_assert_eq!(i.space(), size as usize - 1 - model.len());
            }
        }
    }
}
