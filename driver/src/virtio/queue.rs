//! A split virtqueue (2.7) in driver-owned DMA memory: descriptor table, available ring
//! (driver area) and used ring (device area) in one mapping.
//!
//! ```text
//! offset 0            desc[size]      16 bytes each: addr le64, len le32, flags le16, next le16
//! 16 * size           avail           flags le16, idx le16, ring[size] le16, used_event le16
//! align4(...)         used            flags le16, idx le16, ring[size] {id le32, len le32},
//!                                     avail_event le16
//! ```
//!
//! Ownership (STYLE rule 8): the driver writes descriptors and the available ring; the
//! device writes the used ring. Both `idx` fields are free-running 16-bit counters; a ring
//! slot is the counter modulo `size` (a power of two, so the 2^16 wrap keeps slots in
//! order). The driver publishes with a Release store of `avail.idx`, then a full fence
//! before it reads `avail_event` and decides whether to notify; it reads `used.idx` with
//! Acquire before the entries it covers. The device's memory is never behind a
//! reference: every access is an atomic on [`DmaMemory`].
//!
//! Descriptors are handed out from a free list, so chains of any length up to the free
//! count can be in flight and complete in any order the device chooses.

#![forbid(unsafe_code)]

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use crate::Error;
use crate::dma::{DmaMapping, DmaMemory, Iommu};
use crate::vfio::Iova;

use super::regs::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// Smallest queue this driver builds.
pub const MIN_QUEUE: u16 = 8;
/// Largest split queue (2.7: `Queue Size` up to 32768).
pub const MAX_QUEUE: u16 = 32768;

const DESC_BYTES: usize = 16;

/// `vring_need_event` (2.7.10): whether the other side asked to be notified when the index
/// moves from `old` to `new`, having set its event index to `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Byte offsets of the three parts for a queue of `size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Entries.
    pub size: u16,
    /// Start of the available ring (driver area).
    pub avail: usize,
    /// Start of the used ring (device area), 4-byte aligned (2.7: alignment 4).
    pub used: usize,
    /// Total bytes.
    pub len_bytes: usize,
}

impl Layout {
    /// The layout of a queue of `size` entries.
    pub fn new(size: u16) -> Layout {
        let n = usize::from(size);
        let avail = DESC_BYTES * n;
        let used = (avail + 4 + 2 * n + 2).next_multiple_of(4);
        Layout {
            size,
            avail,
            used,
            len_bytes: used + 4 + 8 * n + 2,
        }
    }

    fn avail_idx(&self) -> usize {
        self.avail + 2
    }

    fn avail_ring(&self, slot: u16) -> usize {
        self.avail + 4 + 2 * usize::from(slot)
    }

    fn used_event(&self) -> usize {
        self.avail + 4 + 2 * usize::from(self.size)
    }

    fn used_idx(&self) -> usize {
        self.used + 2
    }

    fn used_elem(&self, slot: u16) -> usize {
        self.used + 4 + 8 * usize::from(slot)
    }

    fn avail_event(&self) -> usize {
        self.used + 4 + 8 * usize::from(self.size)
    }
}

/// One buffer of a chain: device address, length, and whether the device writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Where the device finds it.
    pub iova: u64,
    /// Its length.
    pub len: u32,
    /// Device-writable (receive) rather than device-readable (transmit).
    pub device_writes: bool,
}

/// An entry of the used ring: which chain the device finished, and how many bytes it
/// wrote into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor of the chain.
    pub id: u16,
    /// Bytes the device wrote (receive) or 0.
    pub len: u32,
}

/// A used entry the device should never have written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("used ring entry names descriptor {id}, which is not the head of a chain in flight")]
pub struct BadUsed {
    /// The `id` the device wrote.
    pub id: u32,
}

/// A split virtqueue and the driver's bookkeeping of it.
pub struct Virtqueue {
    // Dropped before `memory`: unmap from the IOMMU first, then free.
    mapping: DmaMapping,
    memory: DmaMemory,
    layout: Layout,
    /// Free descriptor indices.
    free: Vec<u16>,
    /// The driver's copy of each descriptor's `next` (never read back from DMA memory).
    next: Vec<u16>,
    /// Chain length per head descriptor; 0 when the descriptor heads no chain in flight.
    chain_len: Vec<u8>,
    /// Next `avail.idx` value (free-running).
    avail_idx: u16,
    /// `avail.idx` the device was last told about (or decided it needs no notification).
    kicked_idx: u16,
    /// Next used entry to look at (free-running).
    last_used: u16,
    /// Chains in flight.
    in_flight: u16,
    event_idx: bool,
}

impl Virtqueue {
    /// Allocates and maps (device-writable) a zeroed queue of `size` entries, a power of
    /// two. `event_idx`: whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub fn new(
        iommu: &Arc<dyn Iommu>,
        name: &CStr,
        size: u16,
        event_idx: bool,
    ) -> Result<Virtqueue, Error> {
        if !(MIN_QUEUE..=MAX_QUEUE).contains(&size) || !size.is_power_of_two() {
            return Err(Error::BadConfig {
                what: "virtqueue size",
                value: u64::from(size),
                expected: "a power of two from 8 to 32768",
            });
        }
        let layout = Layout::new(size);
        let memory = DmaMemory::new(name, layout.len_bytes)?;
        let mapping = DmaMapping::of_memory(iommu, &memory)?;
        Ok(Virtqueue {
            mapping,
            memory,
            layout,
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)],
            chain_len: vec![0; usize::from(size)],
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            in_flight: 0,
            event_idx,
        })
    }

    /// Entries.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains the device holds.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// IOVA of the descriptor table (`queue_desc`).
    pub fn desc_iova(&self) -> Iova {
        self.mapping.iova()
    }

    /// IOVA of the available ring (`queue_driver`).
    pub fn driver_iova(&self) -> Iova {
        self.mapping.iova().add(self.layout.avail as u64)
    }

    /// IOVA of the used ring (`queue_device`).
    pub fn device_iova(&self) -> Iova {
        self.mapping.iova().add(self.layout.used as u64)
    }

    /// Where the queue's memory is mapped, and how long it is.
    pub fn mapped(&self) -> (Iova, usize) {
        (self.mapping.iova(), self.mapping.len_bytes())
    }

    /// Writes a chain of `bufs` into free descriptors and its head into the next available
    /// slot, without publishing it (see [`Virtqueue::publish`]). `None` (nothing written)
    /// when fewer than `bufs.len()` descriptors are free or `bufs` is empty or too long.
    pub fn add(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > self.free.len() || bufs.len() > usize::from(u8::MAX) {
            return None;
        }
        // Checked above: enough free descriptors for every pop below.
        let head = self.free.pop()?;
        let mut id = head;
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let next = if last { 0 } else { self.free.pop()? };
            let mut flags = if b.device_writes {
                VIRTQ_DESC_F_WRITE
            } else {
                0
            };
            if !last {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.next[usize::from(id)] = next;
            let at = usize::from(id) * DESC_BYTES;
            self.memory.store_u64(at, b.iova, Ordering::Relaxed);
            self.memory.store_u64(
                at + 8,
                u64::from(b.len) | (u64::from(flags) << 32) | (u64::from(next) << 48),
                Ordering::Relaxed,
            );
            id = next;
        }
        self.chain_len[usize::from(head)] = bufs.len() as u8;
        let slot = self.avail_idx & (self.layout.size - 1);
        self.memory
            .store_u16(self.layout.avail_ring(slot), head, Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.in_flight += 1;
        Some(head)
    }

    /// Makes the chains added since the last call visible to the device (Release store of
    /// `avail.idx`) and says whether the device wants a notification for them: always
    /// without EVENT_IDX, otherwise when `avail_event` falls in the new range (2.7.10).
    pub fn publish(&mut self) -> bool {
        if self.avail_idx == self.kicked_idx {
            return false;
        }
        self.memory
            .store_u16(self.layout.avail_idx(), self.avail_idx, Ordering::Release);
        // The device may be reading `avail.idx` and writing `avail_event` right now: the
        // store above must be globally visible before `avail_event` is read.
        fence(Ordering::SeqCst);
        let old = self.kicked_idx;
        self.kicked_idx = self.avail_idx;
        if !self.event_idx {
            // VIRTQ_USED_F_NO_NOTIFY is only a hint; notify always (cheap under QEMU).
            return true;
        }
        let event = self
            .memory
            .load_u16(self.layout.avail_event(), Ordering::Acquire);
        need_event(event, self.avail_idx, old)
    }

    /// Whether the device has returned chains the driver has not taken yet.
    pub fn has_used(&self) -> bool {
        self.memory
            .load_u16(self.layout.used_idx(), Ordering::Acquire)
            != self.last_used
    }

    /// The oldest used entry not yet taken, without taking it. Read after `used.idx`
    /// (Acquire), so the entry the device wrote before moving the index is complete.
    pub fn peek_used(&self) -> Result<Option<Used>, BadUsed> {
        if !self.has_used() {
            return Ok(None);
        }
        let slot = self.last_used & (self.layout.size - 1);
        let at = self.layout.used_elem(slot);
        let id = self.memory.load_u32(at, Ordering::Acquire);
        let len = self.memory.load_u32(at + 4, Ordering::Acquire);
        // Device input: the id must name a chain in flight.
        match u16::try_from(id) {
            Ok(head) if head < self.layout.size && self.chain_len[usize::from(head)] > 0 => {
                Ok(Some(Used { id: head, len }))
            }
            _ => Err(BadUsed { id }),
        }
    }

    /// Takes the entry [`Virtqueue::peek_used`] returned: frees its descriptors.
    pub fn pop_used(&mut self, used: Used) {
        let head = usize::from(used.id);
        let n = self.chain_len[head];
        self.chain_len[head] = 0;
        let mut id = used.id;
        for _ in 0..n {
            self.free.push(id);
            id = self.next[usize::from(id)];
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight -= 1;
    }

    /// With EVENT_IDX: asks the device to interrupt once it has returned `ahead + 1` more
    /// chains (0: at the next one). Followed by a full fence, so a caller that checks
    /// [`Virtqueue::has_used`] afterwards cannot miss a completion that raced with it.
    pub fn set_used_event(&self, ahead: u16) {
        if !self.event_idx {
            return;
        }
        self.memory.store_u16(
            self.layout.used_event(),
            self.last_used.wrapping_add(ahead),
            Ordering::Release,
        );
        fence(Ordering::SeqCst);
    }

    /// Test hooks: play the device.
    #[cfg(test)]
    pub(crate) fn memory(&self) -> &DmaMemory {
        &self.memory
    }

    #[cfg(test)]
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }
}

impl std::fmt::Debug for Virtqueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Virtqueue")
            .field("size", &self.layout.size)
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_the_spec_alignment() {
        let l = Layout::new(256);
        assert_eq!(l.avail, 4096);
        assert_eq!(l.used, (4096 + 4 + 512 + 2usize).next_multiple_of(4));
        assert_eq!(l.used % 4, 0);
        assert_eq!(l.len_bytes, l.used + 4 + 8 * 256 + 2);
        let l = Layout::new(8);
        assert_eq!((l.avail, l.used, l.len_bytes), (128, 152, 152 + 70));
    }

    #[test]
    fn need_event_matches_the_spec_formula() {
        // The device asked for a notification once entry 5 is made available.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(5, 5, 3)); // 5 not yet made available
        assert!(!need_event(5, 9, 6)); // already past it before this batch
        // Across the 16-bit wrap.
        assert!(need_event(0xffff, 2, 0xfffe));
        assert!(need_event(1, 3, 0xfff0));
        assert!(!need_event(0xfff0, 3, 0xfff8));
        // Nothing new: never.
        assert!(!need_event(7, 7, 7));
    }
}
