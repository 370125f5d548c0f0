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
//! slots `tail + N > i >= head`: the IOrec's words, then, with a `Release` store, the
//! slot's *stamp* (the IOrec's `reserved` word: the low 32 bits of `i + 1`), then, after
//! a batch, `head` with a `Release` store. The consumer finds IOrec `i` by the stamp of its
//! slot alone (`Acquire`; the slot still holds stamp `i + 1 - N` until it is written),
//! so it reads one cache line per IOrec and not the head's too; it copies each slot out
//! once with a volatile read, and publishes `tail` with `Release` after its copies (so
//! the producer never overwrites a slot being read).
//!
//! The head count is still published, for the event indexes and as a check: when the
//! consumer finds the next slot unstamped (before it sleeps, and on every 64th empty
//! poll, [`HEAD_CHECK_POLLS`]; a poller otherwise watches the stamp alone) it reads
//! `head` and checks it ([`Error::BadCount`]): never backwards, never more than the ring
//! past `tail`, and never behind `tail` by more than the ring (an honest head may lag the
//! stamps by up to one batch, since the stamps are written first). A head past `tail`
//! whose slot is not stamped is a lie too ([`Error::BadStamp`]): the stamps are written
//! before the head, so an `Acquire` read of the head makes them visible. A producer that
//! forges stamps gets its forged IOrecs read, and the receiver validates those as any
//! other.
//!
//! A producer asks for the cache lines of a batch's slots with `PREFETCHW` before writing
//! them, so their ownership requests overlap instead of following one another in store
//! order (the consumer has just read those lines; each store would otherwise wait its turn).
//!
//! Waking follows [`crate::event`]: a waiter publishes an event index in its own memory,
//! then a `SeqCst` fence, then re-reads the stamp (or the count); a publisher stores its
//! stamps and count, then a `SeqCst` fence, then reads the index. Either the waiter sees
//! the new stamp or the publisher sees the index (the store-load order both fences give),
//! so no wake-up is lost.

use std::sync::atomic::{Ordering, fence};

use crate::event::{NOT_WAITING, need_event};
use crate::iorec::STAMP_OFFSET;
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

/// The stamp of the slot holding IOrec `seq`: the low 32 bits of `seq + 1`, so the zeroed
/// slots of a new ring hold no valid stamp, and a slot's next stamp always differs from
/// the one it holds (`slots` is far below 2^32).
#[inline]
fn stamp(seq: u64) -> u32 {
    seq.wrapping_add(1) as u32
}

#[inline]
fn slot_at(seq: u64, slots: usize) -> usize {
    SLOT_BASE + (seq & (slots as u64 - 1)) as usize * SLOT_BYTES
}

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

    /// Free slots, enough for `want` or as many as there are: from the consumer's tail
    /// as last read, re-read (and checked) only when that leaves fewer than `want`.
    #[inline]
    pub fn room(&mut self, want: usize) -> Result<usize, Error> {
        let free = self.slots - self.head.wrapping_sub(self.tail) as usize;
        if free >= want {
            return Ok(free);
        }
        self.free()
    }

    /// Pushes as many of `recs` as fit and publishes them with one head update.
    /// Returns how many were pushed and whether the consumer asked to be woken.
    #[inline]
    pub fn push(&mut self, recs: &[IoRec]) -> Result<(usize, bool), Error> {
        let n = self.room(recs.len())?.min(recs.len());
        if n == 0 {
            return Ok((0, false));
        }
        let (old, slots) = (self.head, self.slots);
        // Every slot's ownership requested at once, not one store at a time.
        for i in 0..n {
            self.mine
                .prefetch_write(slot_at(old.wrapping_add(i as u64), slots));
        }
        for (i, rec) in recs[..n].iter().enumerate() {
            let seq = old.wrapping_add(i as u64);
            // Release: the IOrec's words become visible before its stamp.
            self.mine.publish_line(slot_at(seq, slots), rec, stamp(seq));
        }
        self.head = old.wrapping_add(n as u64);
        // Release: the stamped slots become visible before the new head.
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
    /// Polls that found the next slot unstamped ([`Consumer::poll`]).
    unstamped_polls: u32,
}

/// A poll that finds the next slot unstamped reads and checks the producer's head once
/// every this many times ([`Consumer::poll`]).
pub const HEAD_CHECK_POLLS: u32 = 64;

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
            unstamped_polls: 0,
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

    /// Whether the slot of IOrec `seq` carries its stamp (the producer wrote it).
    #[inline]
    fn stamped(&self, seq: u64) -> bool {
        // Acquire: the IOrec's words, written before the stamp, are visible after it.
        self.peer
            .atomic_u32(slot_at(seq, self.slots) + STAMP_OFFSET)
            .load(Ordering::Acquire)
            == stamp(seq)
    }

    /// Re-reads the producer's head and checks it: not backwards from the last one read,
    /// not more than the ring past `tail`, and not behind `tail` by more than the ring
    /// (it may lag the stamps we already consumed by up to one batch).
    fn refresh_head(&mut self) -> Result<(), Error> {
        let now = self.peer.atomic_u64(HEAD).load(Ordering::Acquire);
        let slots = self.slots as i64;
        // Positions relative to the tail; the head seen last can have fallen more than
        // the ring behind it since, and an honest head never does.
        let old = (self.head.wrapping_sub(self.tail) as i64).max(-slots);
        let new = now.wrapping_sub(self.tail) as i64;
        if new < old || new > slots {
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

    /// Whether an IOrec is waiting, from the next slot's stamp; if it has none, the head
    /// is read and checked, and a head that claims the slot anyway is refused.
    pub fn ready(&mut self) -> Result<bool, Error> {
        if self.next_stamped() {
            return Ok(true);
        }
        Ok(self.head_claims()? > 0)
    }

    /// Whether the next slot carries its stamp: [`Consumer::ready`] without reading and
    /// checking the head.
    #[inline]
    pub fn next_stamped(&self) -> bool {
        self.stamped(self.tail)
    }

    /// Whether an IOrec is waiting, for a poller: the next slot's stamp, and every
    /// [`HEAD_CHECK_POLLS`]th time it is unstamped, [`Consumer::ready`]'s read and check
    /// of the head as well. A poller watches one cache line, not two: the head is only a
    /// check on the producer (nothing is read before its slot is stamped), and reading it
    /// on every empty poll would take its line from the producer, whose next head store
    /// then waits to get it back.
    #[inline]
    pub fn poll(&mut self) -> Result<bool, Error> {
        if self.next_stamped() {
            return Ok(true);
        }
        self.unstamped_poll()
    }

    /// The rest of a [`Consumer::poll`] that found the next slot unstamped: counts it,
    /// and every [`HEAD_CHECK_POLLS`]th time reads and checks the head.
    #[inline]
    fn unstamped_poll(&mut self) -> Result<bool, Error> {
        self.unstamped_polls = self.unstamped_polls.wrapping_add(1);
        if !self.unstamped_polls.is_multiple_of(HEAD_CHECK_POLLS) {
            return Ok(false);
        }
        self.ready()
    }

    /// IOrecs waiting right now: as many as the producer's head (read and checked) says,
    /// and at least one when the next slot is stamped.
    pub fn pending(&mut self) -> Result<usize, Error> {
        let claimed = self.head_claims()?;
        Ok(claimed.max(usize::from(self.stamped(self.tail))))
    }

    /// Reads and checks the head; returns how many IOrecs it claims past the tail, after
    /// checking that the first of them is stamped (its `Acquire` read made every stamp
    /// written before it visible).
    fn head_claims(&mut self) -> Result<usize, Error> {
        self.refresh_head()?;
        let claimed = self.head.wrapping_sub(self.tail) as i64;
        if claimed <= 0 {
            return Ok(0);
        }
        if self.stamped(self.tail) {
            return Ok(claimed as usize);
        }
        let at = slot_at(self.tail, self.slots) + STAMP_OFFSET;
        Err(Error::BadStamp {
            seq: self.tail,
            head: self.head,
            found: self.peer.atomic_u32(at).load(Ordering::Relaxed),
            expected: stamp(self.tail),
        })
    }

    /// Copies out the stamped slots from the tail on, up to `out.len()`.
    #[inline]
    fn take_stamped(&self, out: &mut [IoRec]) -> usize {
        let max = out.len().min(self.slots);
        let mut n = 0;
        while n < max {
            let seq = self.tail.wrapping_add(n as u64);
            if !self.stamped(seq) {
                break;
            }
            out[n] = self.peer.read_volatile(slot_at(seq, self.slots));
            out[n].clear_stamp();
            n += 1;
        }
        n
    }

    /// Pops up to `out.len()` IOrecs (copies, unvalidated) and releases their slots with
    /// one tail update. Returns how many and whether the producer asked to be woken.
    /// Finding nothing stamped, it counts as an empty [`Consumer::poll`] (which reads and
    /// checks the producer's head every [`HEAD_CHECK_POLLS`]th time).
    #[inline]
    pub fn pop(&mut self, out: &mut [IoRec]) -> Result<(usize, bool), Error> {
        let mut n = self.take_stamped(out);
        if n == 0 && !out.is_empty() {
            // `take_stamped` found the next slot unstamped: the rest of a poll.
            if !self.unstamped_poll()? {
                return Ok((0, false));
            }
            n = self.take_stamped(out);
        }
        if n == 0 {
            return Ok((0, false));
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
        self.ready()
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

    /// Overwrites the slot of IOrec `index` in producer memory and stamps it as the
    /// producer would (without publishing the head).
    pub fn store_slot(producer_memory: &Region, slots: usize, index: u64, rec: IoRec) {
        let at = slot_at(index, slots);
        producer_memory.write_volatile(at, rec);
        store_stamp(producer_memory, slots, index, stamp(index));
    }

    /// Overwrites the stamp of the slot of IOrec `index` with any value.
    pub fn store_stamp(producer_memory: &Region, slots: usize, index: u64, value: u32) {
        producer_memory
            .atomic_u32(slot_at(index, slots) + STAMP_OFFSET)
            .store(value, Ordering::Release);
    }

    /// The stamp the slot of IOrec `index` carries once the producer wrote it.
    pub fn stamp_of(index: u64) -> u32 {
        stamp(index)
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
        assert!(!c.next_stamped());
        assert_eq!(p.push(&recs).unwrap().0, 4);
        assert!(c.next_stamped());
        assert_eq!(p.push(&recs).unwrap().0, 0);
        let mut out = [IoRec::default(); 2];
        assert_eq!(c.pop(&mut out).unwrap().0, 2);
        assert_eq!(p.push(&recs).unwrap().0, 2);
        assert_eq!(c.pop(&mut [IoRec::default(); 4]).unwrap().0, 4);
        assert!(!c.next_stamped());
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

    /// Pops with nothing stamped until a pop reads and checks the head: the
    /// [`HEAD_CHECK_POLLS`]th empty poll does (and none before it), whether it is the
    /// `pop` of a receiver or the `poll` of a spinning waiter.
    fn empty_polls_until_checked(c: &mut Consumer) -> Result<usize, Error> {
        let mut out = [IoRec::default(); 4];
        for i in 1..HEAD_CHECK_POLLS {
            let checked = if i % 2 == 0 {
                c.pop(&mut out).map(|(n, _)| n)
            } else {
                c.poll().map(usize::from)
            };
            assert!(
                matches!(checked, Ok(0)),
                "poll {i} read the head: {checked:?}"
            );
        }
        c.pop(&mut out).map(|(n, _)| n)
    }

    /// A consumer whose producer memory the test writes raw, as a hostile producer would.
    fn victim(slots: usize) -> (Region, Consumer) {
        let pmem = create_producer_memory(slots).unwrap();
        let cmem = create_consumer_memory().unwrap();
        let pview = Region::map_readonly(pmem.readonly_fd().unwrap(), pmem.len()).unwrap();
        (pmem, Consumer::new(cmem, pview, slots).unwrap())
    }

    #[test]
    fn bad_counts_from_the_peer_are_detected() {
        let (pmem, mut c) = victim(8);
        raw::store_head(&pmem, 9);
        assert!(matches!(
            c.pending(),
            Err(Error::BadCount {
                which: "head",
                now: 9,
                ..
            })
        ));
        for i in 0..3 {
            raw::store_slot(&pmem, 8, i, rec(i));
        }
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
        // The same checks on empty polls, every HEAD_CHECK_POLLS-th of them.
        let mut out = [IoRec::default(); 8];
        assert_eq!(c.pop(&mut out).unwrap().0, 3);
        raw::store_head(&pmem, 3 + 9);
        assert!(matches!(
            empty_polls_until_checked(&mut c),
            Err(Error::BadCount { now: 12, .. })
        ));
        raw::store_head(&pmem, u64::MAX);
        assert!(matches!(
            empty_polls_until_checked(&mut c),
            Err(Error::BadCount { .. })
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
    fn stamps_from_a_hostile_producer() {
        let (pmem, mut c) = victim(8);
        let mut out = [IoRec::default(); 32];
        // A head published over unstamped slots is refused, by a wait and by a poll.
        {
            let (pmem, mut c) = victim(8);
            raw::store_head(&pmem, 2);
            let unstamped = |r: Result<bool, Error>| {
                matches!(
                    r,
                    Err(Error::BadStamp {
                        seq: 0,
                        head: 2,
                        found: 0,
                        expected: 1
                    })
                )
            };
            assert!(unstamped(c.ready()));
            assert!(unstamped(empty_polls_until_checked(&mut c).map(|n| n > 0)));
            assert!(c.pending().is_err());
        }
        // A stamp of the wrong lap or a random one is not an IOrec.
        raw::store_stamp(&pmem, 8, 0, raw::stamp_of(0).wrapping_sub(8));
        assert_eq!(c.pop(&mut out).unwrap().0, 0);
        raw::store_stamp(&pmem, 8, 0, 0xdead_beef);
        assert_eq!(c.pop(&mut out).unwrap().0, 0);
        // A stamp further on without the ones before it is not read either.
        raw::store_slot(&pmem, 8, 1, rec(1));
        assert_eq!(c.pop(&mut out).unwrap().0, 0);
        // A forged stamp over junk is read (once, as a copy without the stamp): the
        // receiver's validation refuses the junk.
        let junk = IoRec::from_extents(u64::MAX, &[Extent::new(u32::MAX, u32::MAX)]).unwrap();
        raw::store_slot(&pmem, 8, 0, junk);
        assert_eq!(c.pop(&mut out).unwrap().0, 2);
        assert_eq!(out[0], junk);
        assert!(out[0].validate(1 << 20).is_err());
        assert_eq!(out[1], rec(1));
        // Slots stamped before the head is published are taken (an honest producer's
        // head lags its stamps); a head that lags by more than the ring is a lie.
        for i in 2..10 {
            raw::store_slot(&pmem, 8, i, rec(i));
        }
        assert_eq!(c.pop(&mut out).unwrap().0, 8);
        assert_eq!(c.tail(), 10);
        raw::store_head(&pmem, 2);
        assert!(!c.ready().unwrap(), "head 2 trails tail 10 by 8: allowed");
        raw::store_slot(&pmem, 8, 10, rec(10));
        assert_eq!(c.pop(&mut out).unwrap().0, 1);
        assert!(
            matches!(
                c.ready(),
                Err(Error::BadCount {
                    which: "head",
                    now: 2,
                    ..
                })
            ),
            "head 2 trails tail 11 by 9"
        );
        // Never more than one lap in one pop: slot `tail + slots` is slot `tail`, whose
        // stamp cannot be both.
        let (pmem, mut c) = victim(4);
        for i in 0..4 {
            raw::store_slot(&pmem, 4, i, rec(i));
        }
        assert_eq!(c.pop(&mut out).unwrap().0, 4);
        assert_eq!(c.pop(&mut out).unwrap().0, 0);
    }

    #[test]
    fn two_threads_stream_in_order() {
        const N: u64 = 200_000;
        let (mut p, mut c) = pair(16).unwrap();
        let producer = std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut batch = Vec::new();
            while sent < N {
                let want = ((sent % 23) + 1).min(N - sent);
                batch.clear();
                batch.extend((sent..sent + want).map(rec));
                let (n, _) = p.push(&batch).unwrap();
                sent += n as u64;
                if n == 0 {
                    std::hint::spin_loop();
                }
            }
        });
        let mut out = [IoRec::default(); 32];
        let mut got = 0u64;
        while got < N {
            let want = (got % 29 + 1) as usize;
            let (m, _) = c.pop(&mut out[..want]).unwrap();
            for r in &out[..m] {
                assert_eq!(*r, rec(got));
                got += 1;
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pending().unwrap(), 0);
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
