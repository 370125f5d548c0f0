//! Control areas: single-producer, single-consumer rings of IOrecs in shared memory.
//!
//! A control area is two regions, each written by exactly one side and mapped read-only
//! by the other, so neither side can scribble on what the other publishes:
//!
//! ```text
//! producer memory (producer writes)         consumer memory (consumer writes)
//!   0   head         count of IOrecs pushed    0   tail        count of IOrecs popped
//!  64   space_event  "wake me when tail > E"  64   data_event  "wake me when head > E"
//! 128   magic, slots                          128  magic
//! 256   slots[N]     IOrecs, 64 bytes each
//! ```
//!
//! Counts are free-running `u64`s; slot `i` lives at `i & (N - 1)`. The producer writes
//! slots `tail + N > i >= head`, then publishes `head` with a `Release` store; the consumer
//! reads `head` with `Acquire`, copies each slot out once with a volatile read, and
//! publishes `tail` with `Release` after its copies (so the producer never overwrites a
//! slot being read). A count read from the peer is checked before use: it may never go
//! backwards or claim more than the ring holds ([`Error::BadCount`]).
//!
//! Waking follows [`crate::event`]: a waiter publishes an event index in its own memory,
//! then a `SeqCst` fence, then re-reads the count; a publisher stores its count, then a
//! `SeqCst` fence, then reads the index. Either the waiter sees the new count or the
//! publisher sees the index (the store-load order both fences give), so no wake-up is lost.

use std::sync::atomic::{Ordering, fence};

use crate::event::{NOT_WAITING, need_event};
use crate::shm::{PAGE_BYTES, PagePolicy, Region};
use crate::{Error, IoRec};

/// Most slots a ring may have.
pub const MAX_SLOTS: usize = 1 << 20;

const HEAD: usize = 0;
const SPACE_EVENT: usize = 64;
const PRODUCER_MAGIC_AT: usize = 128;
const SLOT_COUNT_AT: usize = 136;
const SLOT_BASE: usize = 256;
const SLOT_BYTES: usize = std::mem::size_of::<IoRec>();

const TAIL: usize = 0;
const DATA_EVENT: usize = 64;
const CONSUMER_MAGIC_AT: usize = 128;

const PRODUCER_MAGIC: u64 = u64::from_le_bytes(*b"rbufprod");
const CONSUMER_MAGIC: u64 = u64::from_le_bytes(*b"rbufcons");

/// Bytes of the producer's memory for a ring of `slots` (page-rounded, as mapped).
pub fn producer_bytes(slots: usize) -> usize {
    (SLOT_BASE + slots * SLOT_BYTES).next_multiple_of(PAGE_BYTES)
}

/// Bytes of the consumer's memory.
pub const CONSUMER_BYTES: usize = PAGE_BYTES;

fn check_slots(slots: usize) -> Result<(), Error> {
    if slots.is_power_of_two() && (2..=MAX_SLOTS).contains(&slots) {
        Ok(())
    } else {
        Err(Error::InvalidRing { slots })
    }
}

/// Creates the producer's memory of a ring of `slots` IOrecs.
pub fn create_producer_memory(slots: usize) -> Result<Region, Error> {
    check_slots(slots)?;
    let region = Region::create(c"rbuf-ring", producer_bytes(slots), PagePolicy::Shmem)?;
    region
        .atomic_u64(SPACE_EVENT)
        .store(NOT_WAITING, Ordering::Relaxed);
    region
        .atomic_u64(PRODUCER_MAGIC_AT)
        .store(PRODUCER_MAGIC, Ordering::Relaxed);
    region
        .atomic_u64(SLOT_COUNT_AT)
        .store(slots as u64, Ordering::Relaxed);
    Ok(region)
}

/// Creates the consumer's memory of a ring.
pub fn create_consumer_memory() -> Result<Region, Error> {
    let region = Region::create(c"rbuf-ring", CONSUMER_BYTES, PagePolicy::Shmem)?;
    region
        .atomic_u64(DATA_EVENT)
        .store(NOT_WAITING, Ordering::Relaxed);
    region
        .atomic_u64(CONSUMER_MAGIC_AT)
        .store(CONSUMER_MAGIC, Ordering::Relaxed);
    Ok(region)
}

fn check_magic(region: &Region, at: usize, magic: u64, what: &str) -> Result<(), Error> {
    let found = region.atomic_u64(at).load(Ordering::Relaxed);
    if found == magic {
        Ok(())
    } else {
        Err(Error::Handshake(format!(
            "{what} memory has magic {found:#018x}, expected {magic:#018x}"
        )))
    }
}

/// The writing end of a ring.
#[derive(Debug)]
pub struct Producer {
    mine: Region,
    peer: Region,
    slots: usize,
    head: u64,
    tail: u64,
}

impl Producer {
    /// Joins our memory (from [`create_producer_memory`]) with the consumer's read-only view.
    pub fn new(mine: Region, peer: Region, slots: usize) -> Result<Producer, Error> {
        check_slots(slots)?;
        if mine.len() != producer_bytes(slots) || peer.len() != CONSUMER_BYTES {
            return Err(Error::InvalidRing { slots });
        }
        check_magic(&peer, CONSUMER_MAGIC_AT, CONSUMER_MAGIC, "consumer")?;
        let head = mine.atomic_u64(HEAD).load(Ordering::Relaxed);
        Ok(Producer {
            mine,
            peer,
            slots,
            head,
            tail: head,
        })
    }

    /// Ring size in IOrecs.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Our own memory (see [`raw`]).
    pub fn memory(&self) -> &Region {
        &self.mine
    }

    /// IOrecs pushed so far.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// IOrecs the consumer has taken, as last read.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Re-reads the consumer's tail; checks it moved forward and not past our head.
    fn refresh_tail(&mut self) -> Result<(), Error> {
        let now = self.peer.atomic_u64(TAIL).load(Ordering::Acquire);
        if now.wrapping_sub(self.tail) > self.head.wrapping_sub(self.tail) {
            return Err(Error::BadCount {
                which: "tail",
                previous: self.tail,
                now,
                slots: self.slots,
            });
        }
        self.tail = now;
        Ok(())
    }

    /// Free slots right now.
    pub fn free(&mut self) -> Result<usize, Error> {
        self.refresh_tail()?;
        Ok(self.slots - self.head.wrapping_sub(self.tail) as usize)
    }

    /// Pushes as many of `recs` as fit and publishes them with one head update.
    /// Returns how many were pushed and whether the consumer asked to be woken.
    pub fn push(&mut self, recs: &[IoRec]) -> Result<(usize, bool), Error> {
        let mut free = self.slots - self.head.wrapping_sub(self.tail) as usize;
        if free < recs.len() {
            free = self.free()?;
        }
        let n = free.min(recs.len());
        if n == 0 {
            return Ok((0, false));
        }
        let mask = self.slots as u64 - 1;
        for (i, rec) in recs[..n].iter().enumerate() {
            let slot = (self.head.wrapping_add(i as u64) & mask) as usize;
            self.mine
                .write_volatile(SLOT_BASE + slot * SLOT_BYTES, *rec);
        }
        let old = self.head;
        self.head = old.wrapping_add(n as u64);
        // Release: the slot writes above become visible before the new head.
        self.mine
            .atomic_u64(HEAD)
            .store(self.head, Ordering::Release);
        // Store-load order against the consumer's event index (see the module doc).
        fence(Ordering::SeqCst);
        let event = self.peer.atomic_u64(DATA_EVENT).load(Ordering::Relaxed);
        Ok((n, need_event(event, self.head, old)))
    }

    /// Declares that we will sleep until `want` slots are free; returns `true` if they
    /// already are (then do not sleep).
    pub fn arm(&mut self, want: usize) -> Result<bool, Error> {
        let want = want.clamp(1, self.slots) as u64;
        // Free slots reach `want` when tail reaches head + want - slots, i.e. passes
        // that value minus one.
        let target = self.head.wrapping_add(want).wrapping_sub(self.slots as u64);
        self.mine
            .atomic_u64(SPACE_EVENT)
            .store(target.wrapping_sub(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.free()? as u64 >= want)
    }

    /// Withdraws a sleep declaration.
    pub fn disarm(&mut self) {
        self.mine
            .atomic_u64(SPACE_EVENT)
            .store(NOT_WAITING, Ordering::Relaxed);
    }
}

/// The reading end of a ring.
#[derive(Debug)]
pub struct Consumer {
    mine: Region,
    peer: Region,
    slots: usize,
    head: u64,
    tail: u64,
}

impl Consumer {
    /// Joins our memory (from [`create_consumer_memory`]) with the producer's read-only view.
    pub fn new(mine: Region, peer: Region, slots: usize) -> Result<Consumer, Error> {
        check_slots(slots)?;
        if mine.len() != CONSUMER_BYTES || peer.len() != producer_bytes(slots) {
            return Err(Error::InvalidRing { slots });
        }
        check_magic(&peer, PRODUCER_MAGIC_AT, PRODUCER_MAGIC, "producer")?;
        let announced = peer.atomic_u64(SLOT_COUNT_AT).load(Ordering::Relaxed);
        if announced != slots as u64 {
            return Err(Error::Handshake(format!(
                "producer memory announces {announced} slots, expected {slots}"
            )));
        }
        let tail = mine.atomic_u64(TAIL).load(Ordering::Relaxed);
        Ok(Consumer {
            mine,
            peer,
            slots,
            head: tail,
            tail,
        })
    }

    /// Ring size in IOrecs.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Our own memory (see [`raw`]).
    pub fn memory(&self) -> &Region {
        &self.mine
    }

    /// IOrecs popped so far.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Re-reads the producer's head; checks it moved forward and not past the ring.
    fn refresh_head(&mut self) -> Result<(), Error> {
        let now = self.peer.atomic_u64(HEAD).load(Ordering::Acquire);
        let old_fill = self.head.wrapping_sub(self.tail);
        let new_fill = now.wrapping_sub(self.tail);
        if new_fill < old_fill || new_fill > self.slots as u64 {
            return Err(Error::BadCount {
                which: "head",
                previous: self.head,
                now,
                slots: self.slots,
            });
        }
        self.head = now;
        Ok(())
    }

    /// IOrecs waiting right now.
    pub fn pending(&mut self) -> Result<usize, Error> {
        self.refresh_head()?;
        Ok(self.head.wrapping_sub(self.tail) as usize)
    }

    /// Pops up to `out.len()` IOrecs (copies, unvalidated) and releases their slots with
    /// one tail update. Returns how many and whether the producer asked to be woken.
    pub fn pop(&mut self, out: &mut [IoRec]) -> Result<(usize, bool), Error> {
        let mut ready = self.head.wrapping_sub(self.tail) as usize;
        if ready < out.len() {
            ready = self.pending()?;
        }
        let n = ready.min(out.len());
        if n == 0 {
            return Ok((0, false));
        }
        let mask = self.slots as u64 - 1;
        for (i, rec) in out[..n].iter_mut().enumerate() {
            let slot = (self.tail.wrapping_add(i as u64) & mask) as usize;
            *rec = self.peer.read_volatile(SLOT_BASE + slot * SLOT_BYTES);
        }
        let old = self.tail;
        self.tail = old.wrapping_add(n as u64);
        // Release: our slot reads complete before the producer may reuse the slots.
        self.mine
            .atomic_u64(TAIL)
            .store(self.tail, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.peer.atomic_u64(SPACE_EVENT).load(Ordering::Relaxed);
        Ok((n, need_event(event, self.tail, old)))
    }

    /// Declares that we will sleep until an IOrec arrives; returns `true` if one already
    /// has (then do not sleep).
    pub fn arm(&mut self) -> Result<bool, Error> {
        self.mine
            .atomic_u64(DATA_EVENT)
            .store(self.tail, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.pending()? > 0)
    }

    /// Withdraws a sleep declaration.
    pub fn disarm(&mut self) {
        self.mine
            .atomic_u64(DATA_EVENT)
            .store(NOT_WAITING, Ordering::Relaxed);
    }
}

/// Test and tooling access to the raw memory of a ring, as a hostile peer would use it.
pub mod raw {
    use super::*;

    /// Overwrites the published head in producer memory.
    pub fn store_head(producer_memory: &Region, head: u64) {
        producer_memory
            .atomic_u64(HEAD)
            .store(head, Ordering::Release);
    }

    /// Overwrites a slot in producer memory.
    pub fn store_slot(producer_memory: &Region, slots: usize, index: u64, rec: IoRec) {
        let slot = (index & (slots as u64 - 1)) as usize;
        producer_memory.write_volatile(SLOT_BASE + slot * SLOT_BYTES, rec);
    }

    /// Overwrites the published tail in consumer memory.
    pub fn store_tail(consumer_memory: &Region, tail: u64) {
        consumer_memory
            .atomic_u64(TAIL)
            .store(tail, Ordering::Release);
    }
}

/// A producer and consumer joined in one process, sharing memory the way two processes
/// do (each side's view of the other's memory is a read-only mapping).
pub fn pair(slots: usize) -> Result<(Producer, Consumer), Error> {
    let pmem = create_producer_memory(slots)?;
    let cmem = create_consumer_memory()?;
    let pview = Region::map_readonly(pmem.readonly_fd()?, pmem.len())?;
    let cview = Region::map_readonly(cmem.readonly_fd()?, cmem.len())?;
    Ok((
        Producer::new(pmem, cview, slots)?,
        Consumer::new(cmem, pview, slots)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Extent;
    use proptest::prelude::*;

    fn rec(i: u64) -> IoRec {
        IoRec::single(i, Extent::new(i as u32, 1))
    }

    #[test]
    fn push_pop_wraps_many_times() {
        let (mut p, mut c) = pair(8).unwrap();
        let mut out = [IoRec::default(); 8];
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..1000u64 {
            let batch: Vec<IoRec> = (0..(round % 7 + 1)).map(|i| rec(next_in + i)).collect();
            let (n, _) = p.push(&batch).unwrap();
            next_in += n as u64;
            let (m, _) = c.pop(&mut out[..(round % 5 + 1) as usize]).unwrap();
            for r in &out[..m] {
                assert_eq!(r.tag(), next_out);
                next_out += 1;
            }
        }
        assert!(next_out > 2000);
    }

    #[test]
    fn full_ring_refuses_more() {
        let (mut p, mut c) = pair(4).unwrap();
        let recs: Vec<IoRec> = (0..6).map(rec).collect();
        assert_eq!(p.push(&recs).unwrap().0, 4);
        assert_eq!(p.push(&recs).unwrap().0, 0);
        let mut out = [IoRec::default(); 2];
        assert_eq!(c.pop(&mut out).unwrap().0, 2);
        assert_eq!(p.push(&recs).unwrap().0, 2);
    }

    #[test]
    fn notifications_only_when_armed() {
        let (mut p, mut c) = pair(4).unwrap();
        let mut out = [IoRec::default(); 4];
        assert_eq!(p.push(&[rec(0)]).unwrap(), (1, false));
        assert!(c.arm().unwrap(), "data already there");
        c.pop(&mut out).unwrap();
        assert!(!c.arm().unwrap());
        assert_eq!(p.push(&[rec(1)]).unwrap(), (1, true));
        assert_eq!(
            p.push(&[rec(2)]).unwrap(),
            (1, false),
            "one wake-up per sleep"
        );
        c.disarm();
        // The ring is full (4 in flight); the producer sleeps until 3 slots are free, so
        // the third pop wakes it and no other does.
        assert_eq!(p.push(&[rec(3), rec(4)]).unwrap().0, 2);
        assert!(!p.arm(3).unwrap());
        assert_eq!(c.pop(&mut out[..2]).unwrap(), (2, false));
        assert_eq!(c.pop(&mut out[..1]).unwrap(), (1, true));
        assert_eq!(c.pop(&mut out[..1]).unwrap(), (1, false));
    }

    #[test]
    fn bad_counts_from_the_peer_are_detected() {
        let pmem = create_producer_memory(8).unwrap();
        let cmem = create_consumer_memory().unwrap();
        let pview = Region::map_readonly(pmem.readonly_fd().unwrap(), pmem.len()).unwrap();
        // The producer's memory is our hostile peer: we keep a handle to write it raw.
        let mut c = Consumer::new(cmem, pview, 8).unwrap();
        raw::store_head(&pmem, 9);
        assert!(matches!(
            c.pending(),
            Err(Error::BadCount {
                which: "head",
                now: 9,
                ..
            })
        ));
        raw::store_head(&pmem, 3);
        assert_eq!(c.pending().unwrap(), 3);
        raw::store_head(&pmem, 2);
        assert!(matches!(
            c.pending(),
            Err(Error::BadCount {
                which: "head",
                previous: 3,
                now: 2,
                ..
            })
        ));

        // And a hostile consumer moving the tail past our head.
        let pmem2 = create_producer_memory(8).unwrap();
        let cmem2 = create_consumer_memory().unwrap();
        let cview2 = Region::map_readonly(cmem2.readonly_fd().unwrap(), cmem2.len()).unwrap();
        let mut p = Producer::new(pmem2, cview2, 8).unwrap();
        p.push(&[rec(0), rec(1)]).unwrap();
        raw::store_tail(&cmem2, 5);
        assert!(matches!(
            p.free(),
            Err(Error::BadCount {
                which: "tail",
                now: 5,
                ..
            })
        ));
    }

    #[test]
    fn geometry_is_checked() {
        assert!(matches!(pair(3), Err(Error::InvalidRing { slots: 3 })));
        assert!(matches!(pair(1), Err(Error::InvalidRing { slots: 1 })));
        let pmem = create_producer_memory(8).unwrap();
        let cmem = create_consumer_memory().unwrap();
        let pview = Region::map_readonly(pmem.readonly_fd().unwrap(), pmem.len()).unwrap();
        // The consumer expects 16 slots but the producer made 8.
        assert!(Consumer::new(cmem, pview, 16).is_err());
    }

    proptest! {
        #[test]
        fn fifo_order_under_any_batching(ops in proptest::collection::vec((1usize..20, 1usize..20), 1..200),
                                         slots_log in 1u32..6) {
            let slots = 1usize << slots_log;
            let (mut p, mut c) = pair(slots).unwrap();
            let mut out = vec![IoRec::default(); 32];
            let (mut sent, mut got) = (0u64, 0u64);
            for (push_n, pop_n) in ops {
                let batch: Vec<IoRec> = (0..push_n as u64).map(|i| rec(sent + i)).collect();
                let (n, _) = p.push(&batch).unwrap();
                prop_assert!(n <= push_n);
                sent += n as u64;
                prop_assert!(sent - got <= slots as u64);
                let (m, _) = c.pop(&mut out[..pop_n]).unwrap();
                for r in &out[..m] {
                    prop_assert_eq!(r.tag(), got);
                    got += 1;
                }
            }
            let (m, _) = c.pop(&mut out).unwrap();
            prop_assert_eq!(got + m as u64, sent);
        }
    }
}
