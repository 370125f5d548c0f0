//! IOrecs: a header and `(offset, len)` extents into one data area, one cache line each.
//!
//! The layout is the wire format between processes (and what the driver turns into DMA
//! descriptors), so it is `#[repr(C)]`, little-endian, and pinned by a test:
//!
//! ```text
//! offset  size  field
//!      0     2  count     number of valid extents, 0..=MAX_EXTENTS
//!      2     2  flags     opaque to rbuf (users define bits, e.g. "RX error")
//!      4     4  reserved  zero in an IOrec; in a ring slot, the slot's sequence stamp
//!      8     8  tag       opaque 64-bit value; the master's buffer id
//!     16  6x8   extents   { offset: u32, len: u32 }, offsets into the data area
//! ```
//!
//! The header is padded to 16 bytes, twice the length of a pair, as in the Nemesis design;
//! six 8-byte pairs make the IOrec exactly 64 bytes, so a ring slot is one cache line.
//! Offsets are 32-bit: a data area is at most 4 GiB ([`crate::MAX_AREA_BYTES`]).

use crate::IoRecError;

/// Most extents one IOrec can carry.
pub const MAX_EXTENTS: usize = 6;

/// One `(offset, len)` pair into a data area. Stored little-endian.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Extent {
    offset: u32,
    len: u32,
}

impl Extent {
    /// An extent of `len_bytes` at `offset` into the data area.
    pub const fn new(offset: u32, len_bytes: u32) -> Extent {
        Extent {
            offset: offset.to_le(),
            len: len_bytes.to_le(),
        }
    }

    /// Offset into the data area.
    pub const fn offset(&self) -> u32 {
        u32::from_le(self.offset)
    }

    /// Length in bytes.
    pub const fn len(&self) -> u32 {
        u32::from_le(self.len)
    }

    /// Whether the extent is zero bytes long.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One past the last byte, computed without overflow.
    pub const fn end(&self) -> u64 {
        self.offset() as u64 + self.len() as u64
    }
}

impl std::fmt::Debug for Extent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}+{}", self.offset(), self.len())
    }
}

/// The extent count that marks a *run return* (never a valid count): "the oldest `tag`
/// buffers lent to me" (see [`crate::channel::Peer::release`]).
const RUN_COUNT: u16 = u16::MAX;

/// Offset of the `reserved` word, which a ring slot uses as its sequence stamp
/// (see [`crate::ring`]): where a line published by the ring carries it.
pub(crate) const STAMP_OFFSET: usize = crate::shm::LINE_STAMP_AT;

/// An IOrec: up to [`MAX_EXTENTS`] extents into one data area, a tag and flags.
///
/// Values of this type are always copies: the ring code reads a slot once with a volatile
/// read and hands out the copy, which the receiver then validates
/// ([`IoRec::validate`]) before using any extent.
#[repr(C, align(64))]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct IoRec {
    count: u16,
    flags: u16,
    reserved: u32,
    tag: u64,
    extents: [Extent; MAX_EXTENTS],
}

impl IoRec {
    /// An IOrec with no extent.
    pub const fn new(tag: u64) -> IoRec {
        IoRec {
            count: 0,
            flags: 0,
            reserved: 0,
            tag: tag.to_le(),
            extents: [Extent::new(0, 0); MAX_EXTENTS],
        }
    }

    /// An IOrec of a single extent.
    pub const fn single(tag: u64, extent: Extent) -> IoRec {
        let mut rec = IoRec::new(tag);
        rec.count = 1u16.to_le();
        rec.extents[0] = extent;
        rec
    }

    /// Builds an IOrec from extents; fails if there are more than [`MAX_EXTENTS`].
    pub fn from_extents(tag: u64, extents: &[Extent]) -> Result<IoRec, IoRecError> {
        let mut rec = IoRec::new(tag);
        for &e in extents {
            rec.push(e)?;
        }
        Ok(rec)
    }

    /// Appends an extent.
    pub fn push(&mut self, extent: Extent) -> Result<(), IoRecError> {
        let n = usize::from(u16::from_le(self.count));
        if n >= MAX_EXTENTS {
            return Err(IoRecError::TooManyExtents {
                count: (n + 1) as u16,
            });
        }
        self.extents[n] = extent;
        self.count = ((n + 1) as u16).to_le();
        Ok(())
    }

    /// The opaque tag (the master's buffer id).
    pub const fn tag(&self) -> u64 {
        u64::from_le(self.tag)
    }

    /// Sets the tag.
    pub fn set_tag(&mut self, tag: u64) {
        self.tag = tag.to_le();
    }

    /// The opaque flags.
    pub const fn flags(&self) -> u16 {
        u16::from_le(self.flags)
    }

    /// Sets the flags.
    pub fn set_flags(&mut self, flags: u16) {
        self.flags = flags.to_le();
    }

    /// The extent count as stored, which may exceed [`MAX_EXTENTS`] in an unvalidated copy.
    pub const fn raw_count(&self) -> u16 {
        u16::from_le(self.count)
    }

    /// The valid extents (clamped to [`MAX_EXTENTS`] for an unvalidated copy).
    pub fn extents(&self) -> &[Extent] {
        let n = usize::from(self.raw_count()).min(MAX_EXTENTS);
        &self.extents[..n]
    }

    /// Mutable access to the valid extents (to shorten a received length, say).
    pub fn extents_mut(&mut self) -> &mut [Extent] {
        let n = usize::from(self.raw_count()).min(MAX_EXTENTS);
        &mut self.extents[..n]
    }

    /// A run return of `n` buffers: the oldest `n` the master lent to the peer and it has
    /// not returned yet, in the order the master sent them (TMM only).
    pub const fn run_return(n: u64) -> IoRec {
        let mut rec = IoRec::new(n);
        rec.count = RUN_COUNT.to_le();
        rec
    }

    /// How many buffers this IOrec returns if it is a run return.
    pub const fn run_len(&self) -> Option<u64> {
        if self.raw_count() == RUN_COUNT {
            Some(self.tag())
        } else {
            None
        }
    }

    /// Zeroes the `reserved` word (a copy read out of a ring slot carries the slot's
    /// stamp there).
    pub(crate) fn clear_stamp(&mut self) {
        self.reserved = 0;
    }

    /// Sum of the extent lengths.
    pub fn total_len(&self) -> u64 {
        self.extents().iter().map(|e| u64::from(e.len())).sum()
    }

    /// Checks the count and that every extent lies inside a data area of `area_bytes`.
    pub fn validate(&self, area_bytes: usize) -> Result<(), IoRecError> {
        let count = self.raw_count();
        if usize::from(count) > MAX_EXTENTS {
            return Err(IoRecError::TooManyExtents { count });
        }
        if count == 0 {
            return Err(IoRecError::NoExtent);
        }
        for (index, e) in self.extents().iter().enumerate() {
            if e.end() > area_bytes as u64 {
                return Err(IoRecError::OutOfBounds {
                    index,
                    offset: e.offset(),
                    len_bytes: e.len(),
                    area_bytes,
                });
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for IoRec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoRec")
            .field("tag", &format_args!("{:#x}", self.tag()))
            .field("flags", &format_args!("{:#x}", self.flags()))
            .field("count", &self.raw_count())
            .field("extents", &self.extents())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layout_is_pinned() {
        assert_eq!(size_of::<Extent>(), 8);
        assert_eq!(offset_of!(Extent, offset), 0);
        assert_eq!(offset_of!(Extent, len), 4);
        assert_eq!(size_of::<IoRec>(), 64);
        assert_eq!(align_of::<IoRec>(), 64);
        assert_eq!(offset_of!(IoRec, count), 0);
        assert_eq!(offset_of!(IoRec, flags), 2);
        assert_eq!(offset_of!(IoRec, reserved), 4);
        assert_eq!(offset_of!(IoRec, tag), 8);
        assert_eq!(offset_of!(IoRec, extents), 16);
        assert_eq!(offset_of!(IoRec, reserved), STAMP_OFFSET);
    }

    #[test]
    fn bytes_are_little_endian() {
        let mut rec = IoRec::single(0x0102_0304_0506_0708, Extent::new(0x1122_3344, 0x600));
        rec.set_flags(0xa55a);
        // SAFETY: `IoRec` is plain old data of 64 bytes with no padding between fields.
        let bytes: [u8; 64] = unsafe { std::mem::transmute(rec) };
        assert_eq!(&bytes[0..2], &[1, 0]);
        assert_eq!(&bytes[2..4], &[0x5a, 0xa5]);
        assert_eq!(&bytes[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&bytes[20..24], &[0x00, 0x06, 0, 0]);
    }

    #[test]
    fn validation_refuses_bad_counts_and_bounds() {
        let good = IoRec::from_extents(1, &[Extent::new(0, 100), Extent::new(4000, 96)]).unwrap();
        assert_eq!(good.validate(4096), Ok(()));
        assert_eq!(good.total_len(), 196);
        assert_eq!(
            good.validate(4095),
            Err(IoRecError::OutOfBounds {
                index: 1,
                offset: 4000,
                len_bytes: 96,
                area_bytes: 4095
            })
        );
        // offset + len overflows u32 but not the u64 check.
        let wrap = IoRec::single(1, Extent::new(u32::MAX, u32::MAX));
        assert!(matches!(wrap.validate(usize::MAX), Ok(())));
        assert!(matches!(
            wrap.validate(1 << 32),
            Err(IoRecError::OutOfBounds { .. })
        ));
        let mut forged = good;
        forged.count = 7u16.to_le();
        assert_eq!(
            forged.validate(4096),
            Err(IoRecError::TooManyExtents { count: 7 })
        );
        assert_eq!(forged.extents().len(), MAX_EXTENTS);
        assert_eq!(IoRec::new(0).validate(4096), Err(IoRecError::NoExtent));
        // A run return is never a valid IOrec to a receiver.
        let run = IoRec::run_return(5);
        assert_eq!(run.run_len(), Some(5));
        assert_eq!(good.run_len(), None);
        assert!(matches!(
            run.validate(4096),
            Err(IoRecError::TooManyExtents { .. })
        ));
        let mut full = IoRec::new(0);
        for i in 0..MAX_EXTENTS as u32 {
            full.push(Extent::new(i, 1)).unwrap();
        }
        assert!(full.push(Extent::new(0, 1)).is_err());
    }
}
