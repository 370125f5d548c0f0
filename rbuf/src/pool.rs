//! The master's allocator: which buffers of a data area exist, and where each one is.
//!
//! The master (the originator in TMM, the receiver in RMM) decides where data goes. Its
//! pool cuts the data area into buffers, either fixed-size slots (packets) or extents of
//! any length (bulk data), and names each by a [`BufId`], which travels as the IOrec's
//! tag. At every moment a buffer is in exactly one of three places:
//!
//! - **free** in the pool,
//! - **local**: held by the master's own code (being filled, or received and being read),
//! - **lent** to one or more peers (in a control area or held by the peer), recorded in
//!   the [`LendSet`] of each link, with a reference count in the pool for multicast.
//!
//! An IOrec coming back from a peer is accepted only if its tag names a buffer lent to
//! *that* peer and its extents lie inside that buffer; everything else is a protocol
//! error of the peer. When a peer dies, its lend set gives every buffer back.
//! [`Pool::audit`] checks all of this; tests call it after every scenario.

use crate::{AllocError, Extent, IoRec, IoRecError};

/// A buffer's name in its pool; the IOrec tag.
pub type BufId = u32;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    offset: u32,
    len: u32,
    /// Number of peers holding it.
    refs: u32,
    /// Held by the master.
    local: bool,
    /// The id names a buffer (always true for slots; for extents, the id is in use).
    live: bool,
}

#[derive(Debug)]
enum Kind {
    Slots {
        slot_bytes: u32,
    },
    Extents {
        granule_bytes: u32,
        /// Free `(offset, len)` ranges, sorted and never touching (freed bytes merge).
        ranges: Vec<(u32, u32)>,
        /// Where the last allocation ended: the next one searches from here (next fit).
        next: u32,
    },
}

/// Counts of where the buffers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Accounting {
    /// Buffers that exist (slots: all; extents: allocated ones plus none for free bytes).
    pub total: usize,
    /// Free in the pool (slots only; an extent pool counts free bytes instead).
    pub free: usize,
    /// Held by the master.
    pub local: usize,
    /// Lent to at least one peer.
    pub lent: usize,
    /// Free bytes (extent pools).
    pub free_bytes: u64,
}

/// The set of buffers lent to one peer.
///
/// Each buffer id has one word: 0 when the buffer is not lent to this peer, else the
/// number of its lending, which the master's lending order uses to tell a live entry from
/// a stale one (`u64::MAX` for a lending outside a lending order: RMM, or one made with
/// [`Pool::lend`]). Membership and number are one load, so the run-return path reads one
/// word per buffer.
#[derive(Debug, Clone)]
pub struct LendSet {
    at: Vec<u64>,
    count: usize,
}

/// The number of a lending that is not in a lending order (RMM, or a lending made with
/// [`Pool::lend`]).
pub(crate) const LENT_UNNUMBERED: u64 = u64::MAX;

impl LendSet {
    /// An empty set for a pool of `capacity` buffer ids.
    pub fn new(capacity: usize) -> LendSet {
        LendSet {
            at: vec![0; capacity],
            count: 0,
        }
    }

    /// Number of buffers the peer holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the peer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of buffer ids the set covers.
    pub(crate) fn capacity(&self) -> usize {
        self.at.len()
    }

    /// Whether the peer holds `id`.
    pub fn contains(&self, id: BufId) -> bool {
        self.number(id) != 0
    }

    /// The number of the lending of `id` to this peer: 0 if it is not lent.
    #[inline]
    pub(crate) fn number(&self, id: BufId) -> u64 {
        self.at.get(id as usize).copied().unwrap_or(0)
    }

    /// Numbers the lending of `id` (lent to this peer): `n` is neither 0 nor
    /// [`LENT_UNNUMBERED`].
    #[inline]
    pub(crate) fn set_number(&mut self, id: BufId, n: u64) {
        debug_assert!(self.contains(id) && n != 0 && n != LENT_UNNUMBERED);
        self.at[id as usize] = n;
    }

    fn remove(&mut self, id: BufId) {
        self.at[id as usize] = 0;
        self.count -= 1;
    }

    fn iter(&self) -> impl Iterator<Item = BufId> + '_ {
        (0..self.at.len() as BufId).filter(|&id| self.at[id as usize] != 0)
    }
}

/// Takes `want` bytes out of an extent pool's sorted free ranges, next fit: the first
/// free bytes at or after `next` that have room, else the first from the start of the
/// area. Returns their offset. A range may be split in two around the bytes taken; free
/// ranges still alternate with allocated ones, so there is never more than one free
/// range per allocated extent, plus one.
fn take_range(ranges: &mut Vec<(u32, u32)>, next: u32, want: u32) -> Option<u32> {
    let from = ranges.partition_point(|&(offset, len)| offset + len <= next);
    let after_next = (from..ranges.len()).map(|i| (i, ranges[i].0.max(next)));
    let wrapped = (0..ranges.len().min(from + 1)).map(|i| (i, ranges[i].0));
    let (at, offset) = after_next
        .chain(wrapped)
        .find(|&(i, offset)| ranges[i].0 + ranges[i].1 - offset >= want)?;
    let (start, len) = ranges[at];
    let (before, after) = (offset - start, start + len - (offset + want));
    match (before > 0, after > 0) {
        (false, false) => {
            ranges.remove(at);
        }
        (false, true) => ranges[at] = (offset + want, after),
        (true, false) => ranges[at] = (start, before),
        (true, true) => {
            ranges[at] = (start, before);
            ranges.insert(at + 1, (offset + want, after));
        }
    }
    Some(offset)
}

/// Gives `len` bytes at `offset` back to an extent pool's sorted free ranges, merged with
/// the free bytes on either side.
fn give_range(ranges: &mut Vec<(u32, u32)>, offset: u32, len: u32) {
    let at = ranges.partition_point(|&(o, _)| o < offset);
    let merges_next = at < ranges.len() && offset + len == ranges[at].0;
    let merges_prev = at > 0 && ranges[at - 1].0 + ranges[at - 1].1 == offset;
    match (merges_prev, merges_next) {
        (true, true) => {
            ranges[at - 1].1 += len + ranges[at].1;
            ranges.remove(at);
        }
        (true, false) => ranges[at - 1].1 += len,
        (false, true) => ranges[at] = (offset, len + ranges[at].1),
        (false, false) => ranges.insert(at, (offset, len)),
    }
}

/// The master's pool over one data area.
#[derive(Debug)]
pub struct Pool {
    area_bytes: usize,
    kind: Kind,
    entries: Vec<Entry>,
    /// Slots: free buffer ids. Extents: unused ids.
    free_ids: Vec<BufId>,
    local: usize,
    lent: usize,
}

impl Pool {
    /// A pool of fixed slots of `slot_bytes` (a multiple of 64) covering `area_bytes`.
    pub fn slots(area_bytes: usize, slot_bytes: u32) -> Pool {
        assert!(
            slot_bytes >= 64 && slot_bytes.is_multiple_of(64),
            "slot size {slot_bytes}"
        );
        let count =
            (area_bytes.min(crate::MAX_AREA_BYTES) / slot_bytes as usize).min(u32::MAX as usize);
        let entries = (0..count)
            .map(|i| Entry {
                offset: (i as u64 * u64::from(slot_bytes)) as u32,
                len: slot_bytes,
                live: true,
                ..Entry::default()
            })
            .collect();
        Pool {
            area_bytes,
            kind: Kind::Slots { slot_bytes },
            entries,
            free_ids: (0..count as BufId).rev().collect(),
            local: 0,
            lent: 0,
        }
    }

    /// A pool of extents of any length (rounded up to `granule_bytes`, a power of two),
    /// at most `max_buffers` allocated at once, covering `area_bytes`.
    ///
    /// Allocation is *next fit*: each search starts where the previous allocation ended
    /// and wraps around, so a stream of buffers cycles through the whole area. The
    /// buffer a peer has just handed back, whose lines still sit in the cache of the
    /// core that read it, is taken again last, not first: writing it at once would have
    /// to take every line back from that core. (`rbufnic bench ipc --only bulk`, three
    /// alternating runs each: 1 MiB buffers moved at 0.88-0.93 of the bare hand-over
    /// with first fit, 0.98-1.02 with next fit.)
    pub fn extents(area_bytes: usize, granule_bytes: u32, max_buffers: usize) -> Pool {
        assert!(granule_bytes.is_power_of_two() && granule_bytes >= 64);
        let usable = (area_bytes.min(crate::MAX_AREA_BYTES - granule_bytes as usize)
            / granule_bytes as usize
            * granule_bytes as usize) as u32;
        // Free ranges alternate with allocated ones, so this capacity is never exceeded
        // and the fast path never reallocates.
        let mut ranges = Vec::with_capacity(max_buffers + 1);
        ranges.push((0, usable));
        Pool {
            area_bytes,
            kind: Kind::Extents {
                granule_bytes,
                ranges,
                next: 0,
            },
            entries: vec![Entry::default(); max_buffers],
            free_ids: (0..max_buffers as BufId).rev().collect(),
            local: 0,
            lent: 0,
        }
    }

    /// Size of the data area the pool covers.
    pub fn area_bytes(&self) -> usize {
        self.area_bytes
    }

    /// Number of buffer ids (the capacity a [`LendSet`] needs).
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Buffers that can be allocated right now (slots), or unused ids (extents).
    pub fn available(&self) -> usize {
        self.free_ids.len()
    }

    // The per-buffer steps (alloc, check, lend, free, end of a lending) are `#[inline]`,
    // so the batch loops over them (a sender's allocations, `Master::send` and
    // `Master::reclaim`) run without a call per buffer.

    /// Allocates a buffer of at least `len_bytes`; the master holds it.
    #[inline]
    pub fn alloc(&mut self, len_bytes: usize) -> Result<BufId, AllocError> {
        let Kind::Slots { slot_bytes } = self.kind else {
            return self.alloc_extent(len_bytes);
        };
        if len_bytes > slot_bytes as usize {
            return Err(AllocError::TooLarge {
                len_bytes,
                max_bytes: slot_bytes,
            });
        }
        let id = self.free_ids.pop().ok_or(AllocError::Exhausted)?;
        self.entries[id as usize].local = true;
        self.local += 1;
        Ok(id)
    }

    /// [`Pool::alloc`] for an extent pool: a search of the free ranges, not inlined.
    fn alloc_extent(&mut self, len_bytes: usize) -> Result<BufId, AllocError> {
        let Kind::Extents {
            granule_bytes,
            ranges,
            next,
        } = &mut self.kind
        else {
            unreachable!("called for extent pools only");
        };
        let want = len_bytes.max(1).next_multiple_of(*granule_bytes as usize);
        if want > u32::MAX as usize {
            return Err(AllocError::TooLarge {
                len_bytes,
                max_bytes: u32::MAX,
            });
        }
        let want = want as u32;
        let Some(&id) = self.free_ids.last() else {
            return Err(AllocError::Exhausted);
        };
        let offset = take_range(ranges, *next, want).ok_or(AllocError::Exhausted)?;
        self.free_ids.pop();
        *next = offset + want;
        self.entries[id as usize] = Entry {
            offset,
            len: want,
            refs: 0,
            local: true,
            live: true,
        };
        self.local += 1;
        Ok(id)
    }

    /// The whole extent of buffer `id` (offset and capacity).
    #[inline]
    pub fn extent(&self, id: BufId) -> Extent {
        let e = &self.entries[id as usize];
        Extent::new(e.offset, e.len)
    }

    /// An IOrec naming the whole of buffer `id`, tagged with it (an empty RMM buffer, or a
    /// full TMM buffer once its length is set).
    pub fn iorec(&self, id: BufId) -> IoRec {
        IoRec::single(u64::from(id), self.extent(id))
    }

    /// Frees a buffer the master holds.
    #[inline]
    pub fn free(&mut self, id: BufId) {
        let e = &mut self.entries[id as usize];
        assert!(
            e.live && e.local,
            "free of buffer {id} that the master does not hold"
        );
        e.local = false;
        self.local -= 1;
        if e.refs == 0 {
            self.release(id);
        }
    }

    #[inline]
    fn release(&mut self, id: BufId) {
        if let Kind::Extents { ranges, .. } = &mut self.kind {
            let e = &mut self.entries[id as usize];
            e.live = false;
            give_range(ranges, e.offset, e.len);
        }
        self.free_ids.push(id);
    }

    /// Checks that `rec` names buffer `rec.tag()` held by the master, with every extent
    /// inside it (the master's own mistake otherwise, reported the same way).
    #[inline]
    pub fn check_local(&self, rec: &IoRec) -> Result<BufId, IoRecError> {
        let id = self.lookup(rec.tag())?;
        if !self.entries[id as usize].local {
            return Err(IoRecError::NotHeld { tag: rec.tag() });
        }
        self.check_inside(id, rec)?;
        Ok(id)
    }

    #[inline]
    fn lookup(&self, tag: u64) -> Result<BufId, IoRecError> {
        match self.entries.get(tag as usize) {
            Some(e) if tag <= u64::from(u32::MAX) && e.live => Ok(tag as BufId),
            _ => Err(IoRecError::UnknownBuffer { tag }),
        }
    }

    #[inline]
    fn check_inside(&self, id: BufId, rec: &IoRec) -> Result<(), IoRecError> {
        let count = rec.raw_count();
        if usize::from(count) > crate::MAX_EXTENTS {
            return Err(IoRecError::TooManyExtents { count });
        }
        let e = &self.entries[id as usize];
        let (start, end) = (u64::from(e.offset), u64::from(e.offset) + u64::from(e.len));
        for (index, x) in rec.extents().iter().enumerate() {
            if u64::from(x.offset()) < start || x.end() > end {
                return Err(IoRecError::OutsideBuffer {
                    tag: rec.tag(),
                    index,
                    offset: x.offset(),
                    len_bytes: x.len(),
                });
            }
        }
        Ok(())
    }

    /// Lends the buffer `rec` names to the peer of `set` as its lending number `number`
    /// ([`LENT_UNNUMBERED`] outside a lending order), dropping the master's hold unless
    /// `keep_hold`: [`Pool::check_local`], [`Pool::lend`] and [`Pool::unhold`] in one
    /// step, a sender's work per IOrec. It refuses what those refuse (a tag that names
    /// no buffer, an extent outside it, a buffer the master does not hold or has lent to
    /// this peer already), and then changes nothing.
    #[inline]
    pub(crate) fn lend_rec(
        &mut self,
        rec: &IoRec,
        set: &mut LendSet,
        number: u64,
        keep_hold: bool,
    ) -> Result<BufId, IoRecError> {
        let id = self.lookup(rec.tag())?;
        self.check_inside(id, rec)?;
        self.lend_live(id, set, number)?;
        if !keep_hold {
            // Never the last hold: the peer's is there now.
            self.entries[id as usize].local = false;
            self.local -= 1;
        }
        Ok(id)
    }

    /// Lends buffer `id` (held by the master) to the peer of `set`, keeping the master's
    /// hold: a buffer lent to several peers, as multicast does through
    /// [`crate::Master::offer`], is then given up with [`Pool::unhold`].
    pub fn lend(&mut self, id: BufId, set: &mut LendSet) -> Result<(), IoRecError> {
        if !self.entries[id as usize].live {
            return Err(IoRecError::NotHeld { tag: u64::from(id) });
        }
        self.lend_live(id, set, LENT_UNNUMBERED)
    }

    /// The lending itself, for [`Pool::lend`] and [`Pool::lend_rec`]: live buffer `id`,
    /// which the master must hold and the peer of `set` must not, is lent to that peer as
    /// lending number `number`.
    #[inline]
    fn lend_live(&mut self, id: BufId, set: &mut LendSet, number: u64) -> Result<(), IoRecError> {
        debug_assert_ne!(number, 0);
        let e = &mut self.entries[id as usize];
        let lending = set.at.get_mut(id as usize).filter(|n| **n == 0);
        let (true, Some(lending)) = (e.local, lending) else {
            return Err(IoRecError::NotHeld { tag: u64::from(id) });
        };
        *lending = number;
        set.count += 1;
        if e.refs == 0 {
            self.lent += 1;
        }
        e.refs += 1;
        Ok(())
    }

    /// Undoes [`Pool::lend`] for a buffer that could not be sent after all.
    pub fn unlend(&mut self, id: BufId, set: &mut LendSet) {
        assert!(set.contains(id), "unlend of buffer {id} not lent");
        self.drop_lend(id, set);
    }

    /// Removes `id` (lent to the peer of `set`) from the set and drops that reference.
    #[inline]
    fn drop_lend(&mut self, id: BufId, set: &mut LendSet) {
        set.remove(id);
        let e = &mut self.entries[id as usize];
        e.refs -= 1;
        if e.refs == 0 {
            self.lent -= 1;
        }
    }

    /// Gives the master a hold again on a buffer it lent and let go of (undoing
    /// [`Pool::unhold`] while a peer still holds it).
    pub(crate) fn hold(&mut self, id: BufId) {
        let e = &mut self.entries[id as usize];
        assert!(
            e.live && !e.local && e.refs > 0,
            "hold of buffer {id} that is not lent"
        );
        e.local = true;
        self.local += 1;
    }

    /// Drops the master's hold on a buffer it lent; frees it if nobody took it.
    #[inline]
    pub fn unhold(&mut self, id: BufId) {
        self.free(id)
    }

    /// Takes back a buffer the peer of `set` returned (validated), and gives the master a
    /// hold on it. Fails, changing nothing, if the IOrec does not name a buffer lent to
    /// that peer or an extent leaves the buffer.
    #[inline]
    pub fn take_back(&mut self, rec: &IoRec, set: &mut LendSet) -> Result<BufId, IoRecError> {
        let id = self.lookup(rec.tag())?;
        if !set.contains(id) {
            return Err(IoRecError::NotLent { tag: rec.tag() });
        }
        self.check_inside(id, rec)?;
        self.take_back_id(id, set);
        Ok(id)
    }

    /// Takes buffer `id`, lent to the peer of `set`, back into the master's hands: the
    /// end of [`Pool::take_back`], for a buffer the master's own records name (a run
    /// return's), which has nothing to check.
    #[inline]
    pub(crate) fn take_back_id(&mut self, id: BufId, set: &mut LendSet) {
        self.drop_lend(id, set);
        let e = &mut self.entries[id as usize];
        if !e.local {
            e.local = true;
            self.local += 1;
        }
    }

    /// Takes back every buffer lent to a peer that is gone; returns how many. Buffers
    /// nobody else holds become free (or stay with the master if it holds them).
    pub fn reclaim(&mut self, set: &mut LendSet) -> usize {
        let ids: Vec<BufId> = set.iter().collect();
        for &id in &ids {
            self.end_lend(id, set);
        }
        ids.len()
    }

    /// Ends the lending of buffer `id` to the peer of `set` (which holds it): the buffer
    /// becomes free once no peer and not the master holds it.
    #[inline]
    pub(crate) fn end_lend(&mut self, id: BufId, set: &mut LendSet) {
        assert!(
            set.contains(id),
            "end of a lending of buffer {id} that is not lent"
        );
        self.drop_lend(id, set);
        let e = &self.entries[id as usize];
        if e.refs == 0 && !e.local {
            self.release(id);
        }
    }

    /// Recounts where every buffer is and checks it against the pool's counters, the free
    /// lists and the lend sets of all peers (each buffer's reference count must equal the
    /// number of sets holding it). Returns the counts, or what is inconsistent.
    pub fn audit(&self, sets: &[&LendSet]) -> Result<Accounting, String> {
        let mut acc = Accounting::default();
        let mut on_free_list = vec![false; self.entries.len()];
        for &id in &self.free_ids {
            let slot = on_free_list
                .get_mut(id as usize)
                .ok_or(format!("free list holds unknown id {id}"))?;
            if *slot {
                return Err(format!("buffer {id} is on the free list twice"));
            }
            *slot = true;
        }
        for (id, e) in self.entries.iter().enumerate() {
            let holders = sets.iter().filter(|s| s.contains(id as BufId)).count();
            if holders != e.refs as usize {
                return Err(format!(
                    "buffer {id}: {} references but {holders} peers hold it",
                    e.refs
                ));
            }
            let idle = !e.local && e.refs == 0;
            let free_slot = matches!(self.kind, Kind::Slots { .. }) && idle;
            let unused_id = matches!(self.kind, Kind::Extents { .. }) && !e.live;
            if on_free_list[id] != (free_slot || unused_id) {
                return Err(format!(
                    "buffer {id}: free list {} but state {e:?}",
                    on_free_list[id]
                ));
            }
            if !e.live {
                continue;
            }
            if matches!(self.kind, Kind::Extents { .. }) && idle {
                return Err(format!("extent {id} is allocated but held by nobody"));
            }
            acc.total += 1;
            match (free_slot, e.local, e.refs > 0) {
                (true, _, _) => acc.free += 1,
                (false, true, _) => acc.local += 1,
                (false, false, true) => acc.lent += 1,
                (false, false, false) => unreachable!("idle buffers are free"),
            }
        }
        let lent_total = self.entries.iter().filter(|e| e.live && e.refs > 0).count();
        let local_total = self.entries.iter().filter(|e| e.live && e.local).count();
        if lent_total != self.lent || local_total != self.local {
            return Err(format!(
                "counters say {} lent, {} local; entries say {lent_total}, {local_total}",
                self.lent, self.local
            ));
        }
        if let Kind::Extents { ranges, .. } = &self.kind {
            acc.free_bytes = ranges.iter().map(|&(_, l)| u64::from(l)).sum();
            for w in ranges.windows(2) {
                if w[0].0 + w[0].1 >= w[1].0 {
                    return Err(format!(
                        "free ranges {:?} and {:?} overlap or touch",
                        w[0], w[1]
                    ));
                }
            }
            // Free ranges and live extents tile part of the area, never overlapping.
            let kind = |free: bool| if free { "free range" } else { "extent" };
            let mut spans: Vec<(u64, u64, bool)> = ranges
                .iter()
                .map(|&(o, l)| (u64::from(o), u64::from(l), true))
                .chain(
                    self.entries
                        .iter()
                        .filter(|e| e.live)
                        .map(|e| (u64::from(e.offset), u64::from(e.len), false)),
                )
                .collect();
            spans.sort_unstable();
            for w in spans.windows(2) {
                let ((o0, l0, f0), (o1, l1, f1)) = (w[0], w[1]);
                if o0 + l0 > o1 {
                    return Err(format!(
                        "{} {o0}+{l0} overlaps {} {o1}+{l1}",
                        kind(f0),
                        kind(f1)
                    ));
                }
            }
            let usable = self.area_bytes.min(crate::MAX_AREA_BYTES - 1) as u64;
            if let Some(&(o, l, f)) = spans.last()
                && o + l > usable
            {
                return Err(format!("{} {o}+{l} leaves the area", kind(f)));
            }
        }
        Ok(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_move_between_places() {
        let mut pool = Pool::slots(8 * 2048, 2048);
        let mut peer = LendSet::new(pool.capacity());
        let a = pool.alloc(100).unwrap();
        let b = pool.alloc(2048).unwrap();
        assert!(matches!(pool.alloc(2049), Err(AllocError::TooLarge { .. })));
        pool.lend(a, &mut peer).unwrap();
        pool.unhold(a);
        assert_eq!(
            pool.audit(&[&peer]).unwrap(),
            Accounting {
                total: 8,
                free: 6,
                local: 1,
                lent: 1,
                free_bytes: 0
            }
        );
        // A forged return (not lent) and an extent outside the buffer are refused.
        assert_eq!(
            pool.take_back(&pool.iorec(b), &mut peer),
            Err(IoRecError::NotLent { tag: b as u64 })
        );
        let mut outside = pool.iorec(a);
        outside.extents_mut()[0] = Extent::new(pool.extent(a).offset() + 1, 2048);
        assert!(matches!(
            pool.take_back(&outside, &mut peer),
            Err(IoRecError::OutsideBuffer { .. })
        ));
        assert_eq!(
            pool.take_back(&IoRec::single(99, Extent::new(0, 1)), &mut peer),
            Err(IoRecError::UnknownBuffer { tag: 99 })
        );
        let rec_a = pool.iorec(a);
        assert_eq!(pool.take_back(&rec_a, &mut peer), Ok(a));
        pool.free(a);
        pool.free(b);
        assert_eq!(pool.audit(&[&peer]).unwrap().free, 8);
    }

    #[test]
    fn multicast_references_and_reclaim() {
        let mut pool = Pool::slots(4 * 64, 64);
        let mut peers = [LendSet::new(4), LendSet::new(4), LendSet::new(4)];
        let id = pool.alloc(64).unwrap();
        for p in &mut peers {
            pool.lend(id, p).unwrap();
        }
        pool.unhold(id);
        assert_eq!(
            pool.audit(&[&peers[0], &peers[1], &peers[2]]).unwrap().lent,
            1
        );
        let rec = pool.iorec(id);
        pool.take_back(&rec, &mut peers[0]).unwrap();
        pool.free(id);
        assert_eq!(pool.reclaim(&mut peers[1]), 1);
        assert_eq!(
            pool.audit(&[&peers[0], &peers[1], &peers[2]]).unwrap().lent,
            1
        );
        assert_eq!(pool.reclaim(&mut peers[2]), 1);
        assert_eq!(
            pool.audit(&[&peers[0], &peers[1], &peers[2]]).unwrap().free,
            4
        );
    }

    #[test]
    fn extents_are_taken_in_turn() {
        const MIB: u32 = 1 << 20;
        let mut pool = Pool::extents(4 * MIB as usize, 4096, 4);
        let offset = |pool: &Pool, id| pool.extent(id).offset() / MIB;
        // One buffer at a time, freed at once: the stream still cycles through the area.
        let turns: Vec<u32> = (0..6)
            .map(|_| {
                let id = pool.alloc(MIB as usize).unwrap();
                let at = offset(&pool, id);
                pool.free(id);
                at
            })
            .collect();
        assert_eq!(turns, [0, 1, 2, 3, 0, 1]);
        // The search goes on from where the last one ended, and wraps around.
        let ids: Vec<BufId> = (0..4).map(|_| pool.alloc(MIB as usize).unwrap()).collect();
        let at: Vec<u32> = ids.iter().map(|&id| offset(&pool, id)).collect();
        assert_eq!(at, [2, 3, 0, 1]);
        // Given back in the order 0, 3: the one past the last allocation comes first.
        pool.free(ids[2]);
        pool.free(ids[1]);
        let again = pool.alloc(MIB as usize).unwrap();
        assert_eq!(offset(&pool, again), 3);
        let wrapped = pool.alloc(MIB as usize).unwrap();
        assert_eq!(offset(&pool, wrapped), 0);
        assert!(matches!(pool.alloc(1), Err(AllocError::Exhausted)));
        for id in [ids[0], ids[3], again, wrapped] {
            pool.free(id);
        }
        let acc = pool.audit(&[]).unwrap();
        assert_eq!((acc.total, acc.free_bytes), (0, 4 * u64::from(MIB)));
    }

    #[test]
    fn extents_coalesce() {
        let mut pool = Pool::extents(1 << 20, 4096, 16);
        let a = pool.alloc(5000).unwrap();
        let b = pool.alloc(4096).unwrap();
        let c = pool.alloc(1).unwrap();
        assert_eq!(pool.extent(a), Extent::new(0, 8192));
        assert_eq!(pool.extent(b), Extent::new(8192, 4096));
        assert_eq!(pool.extent(c), Extent::new(12288, 4096));
        pool.free(a);
        pool.free(c);
        pool.free(b);
        let acc = pool.audit(&[]).unwrap();
        assert_eq!((acc.total, acc.free_bytes), (0, 1 << 20));
        assert!(matches!(
            pool.alloc((1 << 20) + 1),
            Err(AllocError::Exhausted)
        ));
        let whole = pool.alloc(1 << 20).unwrap();
        assert_eq!(pool.extent(whole), Extent::new(0, 1 << 20));
    }

    proptest! {
        /// Any interleaving of alloc / lend / return / free / peer death keeps every buffer
        /// in exactly one place.
        #[test]
        fn accounting_holds(ops in proptest::collection::vec((0u8..6, 0usize..64, 1usize..20000), 1..300),
                            extents in any::<bool>()) {
            let mut pool = if extents { Pool::extents(256 << 10, 1024, 32) } else { Pool::slots(32 * 2048, 2048) };
            let mut peers = [LendSet::new(pool.capacity()), LendSet::new(pool.capacity())];
            let mut local: Vec<BufId> = Vec::new();
            for (op, pick, len) in ops {
                match op {
                    0 => if let Ok(id) = pool.alloc(if extents { len } else { len % 2048 }) { local.push(id) },
                    1 | 2 if !local.is_empty() => {
                        let id = local.swap_remove(pick % local.len());
                        pool.lend(id, &mut peers[(op - 1) as usize]).unwrap();
                        pool.unhold(id);
                    }
                    3 => {
                        let p = pick % 2;
                        let held = peers[p].iter().nth(pick / 2 % 8);
                        if let Some(id) = held {
                            let rec = pool.iorec(id);
                            prop_assert_eq!(pool.take_back(&rec, &mut peers[p]), Ok(id));
                            local.push(id);
                        }
                    }
                    4 if !local.is_empty() => pool.free(local.swap_remove(pick % local.len())),
                    5 => { pool.reclaim(&mut peers[pick % 2]); }
                    _ => {}
                }
                let acc = pool.audit(&[&peers[0], &peers[1]]).map_err(TestCaseError::fail)?;
                prop_assert_eq!(acc.local, local.len());
                prop_assert_eq!(acc.lent, peers[0].len() + peers[1].len());
            }
        }
    }
}
