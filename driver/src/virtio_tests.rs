//! Tests of the split virtqueue against a device played by the test, through the fake
//! IOMMU (kept out of `virtio::queue`, which forbids `unsafe`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::dma::Iommu;
use crate::fake::FakeIommu;
use crate::virtio::queue::*;
use crate::virtio::regs::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use proptest::prelude::*;

fn queue(size: u16, event_idx: bool) -> Virtqueue {
    // SAFETY: the queue's memory outlives its mapping (the queue owns both).
    let iommu: Arc<dyn Iommu> = unsafe { FakeIommu::new() };
    Virtqueue::new(&iommu, c"test-vq", size, event_idx).unwrap()
}

/// A descriptor as the device reads it: addr, len, flags.
type Desc = (u64, u32, u16);

/// The device side, reading and writing the queue memory as the spec lays it out.
struct Device {
    last_avail: u16,
    used_idx: u16,
}

impl Device {
    fn new() -> Device {
        Device {
            last_avail: 0,
            used_idx: 0,
        }
    }

    /// Takes the next available chain: its descriptors (addr, len, flags).
    fn take(&mut self, q: &Virtqueue) -> Option<(u16, Vec<Desc>)> {
        let (m, l) = (q.memory(), q.layout());
        if m.load_u16(l.avail + 2, Ordering::Acquire) == self.last_avail {
            return None;
        }
        let slot = self.last_avail % l.size;
        let head = m.load_u16(l.avail + 4 + 2 * usize::from(slot), Ordering::Relaxed);
        self.last_avail = self.last_avail.wrapping_add(1);
        let mut descs = Vec::new();
        let mut id = head;
        loop {
            let at = usize::from(id) * 16;
            let addr = m.load_u64(at, Ordering::Relaxed);
            let w = m.load_u64(at + 8, Ordering::Relaxed);
            let flags = (w >> 32) as u16;
            descs.push((addr, w as u32, flags));
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            id = (w >> 48) as u16;
            assert!(descs.len() <= usize::from(l.size), "descriptor loop");
        }
        Some((head, descs))
    }

    fn complete(&mut self, q: &Virtqueue, head: u16, len: u32) {
        let (m, l) = (q.memory(), q.layout());
        let at = l.used + 4 + 8 * usize::from(self.used_idx % l.size);
        m.store_u32(at, u32::from(head), Ordering::Relaxed);
        m.store_u32(at + 4, len, Ordering::Relaxed);
        self.used_idx = self.used_idx.wrapping_add(1);
        m.store_u16(l.used + 2, self.used_idx, Ordering::Release);
    }

    fn used_event(&self, q: &Virtqueue) -> u16 {
        let l = q.layout();
        q.memory()
            .load_u16(l.avail + 4 + 2 * usize::from(l.size), Ordering::Acquire)
    }

    fn set_avail_event(&self, q: &Virtqueue, v: u16) {
        let l = q.layout();
        q.memory()
            .store_u16(l.used + 4 + 8 * usize::from(l.size), v, Ordering::Release);
    }
}

#[test]
fn chains_carry_flags_and_links_and_descriptors_come_back() {
    let mut q = queue(8, false);
    let bufs = [
        Buf {
            iova: 0x1000,
            len: 12,
            device_writes: false,
        },
        Buf {
            iova: 0x2000,
            len: 100,
            device_writes: false,
        },
        Buf {
            iova: 0x3000,
            len: 200,
            device_writes: false,
        },
    ];
    let head = q.add(&bufs).unwrap();
    let rx = q
        .add(&[Buf {
            iova: 0x8000,
            len: 2048,
            device_writes: true,
        }])
        .unwrap();
    assert_eq!(q.free_descriptors(), 4);
    assert!(q.publish(), "always notify without EVENT_IDX");
    assert!(!q.publish(), "nothing new");
    let mut dev = Device::new();
    let (h, descs) = dev.take(&q).unwrap();
    assert_eq!(h, head);
    assert_eq!(
        descs,
        [
            (0x1000, 12, VIRTQ_DESC_F_NEXT),
            (0x2000, 100, VIRTQ_DESC_F_NEXT),
            (0x3000, 200, 0)
        ]
    );
    let (h2, descs) = dev.take(&q).unwrap();
    assert_eq!(h2, rx);
    assert_eq!(descs, [(0x8000, 2048, VIRTQ_DESC_F_WRITE)]);
    assert!(dev.take(&q).is_none());
    // Out of order completion is fine.
    assert_eq!(q.peek_used(), Ok(None));
    dev.complete(&q, rx, 1000);
    dev.complete(&q, head, 0);
    let u = q.peek_used().unwrap().unwrap();
    assert_eq!(u, Used { id: rx, len: 1000 });
    q.pop_used(u);
    let u = q.peek_used().unwrap().unwrap();
    assert_eq!(u.id, head);
    q.pop_used(u);
    assert_eq!(q.free_descriptors(), 8);
    assert_eq!(q.in_flight(), 0);
    assert!(
        q.add(
            &[Buf {
                iova: 1,
                len: 1,
                device_writes: false
            }; 9]
        )
        .is_none()
    );
}

#[test]
fn a_used_entry_naming_no_chain_is_refused() {
    let mut q = queue(8, false);
    let head = q
        .add(&[Buf {
            iova: 0x1000,
            len: 64,
            device_writes: true,
        }])
        .unwrap();
    q.publish();
    let mut dev = Device::new();
    dev.complete(&q, head + 1, 10);
    assert_eq!(
        q.peek_used(),
        Err(BadUsed {
            id: u32::from(head) + 1
        })
    );
    let mut q = queue(8, false);
    let mut dev = Device::new();
    dev.complete(&q, 100, 10);
    assert_eq!(q.peek_used(), Err(BadUsed { id: 100 }));
    assert!(
        q.add(&[Buf {
            iova: 1,
            len: 1,
            device_writes: true
        }])
        .is_some()
    );
}

#[test]
fn event_idx_suppresses_notifications_and_sets_used_event() {
    let mut q = queue(8, true);
    let mut dev = Device::new();
    let buf = Buf {
        iova: 0x1000,
        len: 64,
        device_writes: true,
    };
    // The device wants to hear about entry 0 (avail_event = 0 initially).
    q.add(&[buf]).unwrap();
    assert!(q.publish());
    // It has not moved avail_event: no notification for entries 1 and 2.
    q.add(&[buf]).unwrap();
    q.add(&[buf]).unwrap();
    assert!(!q.publish());
    // It asks for entry 4; entry 3 alone does not reach it, 3 and 4 do.
    dev.set_avail_event(&q, 4);
    q.add(&[buf]).unwrap();
    assert!(!q.publish());
    q.add(&[buf]).unwrap();
    assert!(q.publish());
    // used_event: interrupt at the next completion, or after 3 more.
    for _ in 0..5 {
        let (h, _) = dev.take(&q).unwrap();
        dev.complete(&q, h, 60);
    }
    for _ in 0..2 {
        let u = q.peek_used().unwrap().unwrap();
        q.pop_used(u);
    }
    q.set_used_event(0);
    assert_eq!(dev.used_event(&q), 2);
    q.set_used_event(3);
    assert_eq!(dev.used_event(&q), 5);
}

#[test]
fn indices_cross_the_16_bit_wrap() {
    let mut q = queue(8, true);
    let mut dev = Device::new();
    let mut next_len = 0u32;
    let mut expect = std::collections::VecDeque::new();
    // 70,000 chains through an 8-entry queue: avail.idx and used.idx wrap past 65535.
    for round in 0..70_000u32 {
        let n = (round % 3) as usize + 1;
        let bufs = vec![
            Buf {
                iova: u64::from(round) << 12,
                len: 64,
                device_writes: false,
            };
            n
        ];
        while q.free_descriptors() < n {
            let (h, d) = dev.take(&q).unwrap();
            assert_eq!(d[0].0, expect.pop_front().unwrap());
            dev.complete(&q, h, next_len);
            let u = q.peek_used().unwrap().unwrap();
            assert_eq!((u.id, u.len), (h, next_len));
            q.pop_used(u);
            next_len += 1;
        }
        q.add(&bufs).unwrap();
        q.publish();
        expect.push_back(u64::from(round) << 12);
    }
    // Both free-running indices went past 65535 and kept the slots in order.
    let l = q.layout();
    let avail = q.memory().load_u16(l.avail + 2, Ordering::Relaxed);
    assert_eq!(avail, (70_000 - 65_536) as u16);
    assert_eq!(dev.used_idx, avail.wrapping_sub(q.in_flight()));
    assert!(next_len > 65_536);
}

proptest! {
    /// Against a model: any interleaving of adds (1-7 descriptors) and in-order
    /// completions keeps the free count and in-flight count exact, and the device
    /// always sees the chains in the order they were added.
    #[test]
    fn matches_a_model(ops in proptest::collection::vec((any::<bool>(), 1usize..8), 1..300)) {
        let mut q = queue(16, false);
        let mut dev = Device::new();
        let mut model = std::collections::VecDeque::new();
        let mut device_holds = std::collections::VecDeque::new();
        let mut free = 16usize;
        let mut tag = 0u64;
        for (add, n) in ops {
            if add {
                let bufs = vec![Buf { iova: tag, len: n as u32, device_writes: false }; n];
                let got = q.add(&bufs);
                prop_assert_eq!(got.is_some(), n <= free);
                if got.is_some() {
                    q.publish();
                    free -= n;
                    model.push_back((tag, n));
                    tag += 1;
                }
            } else if let Some((h, d)) = dev.take(&q) {
                let (t, n) = model.pop_front().unwrap();
                prop_assert_eq!(d.len(), n);
                prop_assert!(d.iter().all(|x| x.0 == t));
                device_holds.push_back((h, n));
                let (h, n) = device_holds.pop_front().unwrap();
                dev.complete(&q, h, 0);
                let u = q.peek_used().unwrap().unwrap();
                prop_assert_eq!(u.id, h);
                q.pop_used(u);
                free += n;
            }
            prop_assert_eq!(q.free_descriptors(), free);
            prop_assert_eq!(usize::from(q.in_flight()), model.len() + device_holds.len());
        }
    }
}
