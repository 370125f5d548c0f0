//! The crate's error type: every variant keeps the values involved.

use std::io;

/// Why the master's pool could not give a buffer. Small and `Copy`: an allocation
/// returns it in registers, where a `Result` carrying the whole [`Error`] goes through
/// memory and must be dropped (a sender allocates once per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No free buffer (slots), or no free id or free range large enough (extents).
    #[error("pool exhausted")]
    Exhausted,
    /// A buffer larger than the pool can give.
    #[error("{len_bytes}-byte buffer asked of a pool of {max_bytes}-byte buffers")]
    TooLarge {
        /// Size asked for.
        len_bytes: usize,
        /// Largest size available.
        max_bytes: u32,
    },
}

/// Why an IOrec from the other side was refused. Each one is counted by the endpoint that
/// saw it and never makes it touch memory outside its mappings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoRecError {
    /// The extent count in the header is larger than [`crate::MAX_EXTENTS`].
    #[error("IOrec claims {count} extents (at most {max})", max = crate::MAX_EXTENTS)]
    TooManyExtents {
        /// The count read from shared memory.
        count: u16,
    },
    /// An IOrec that must carry data carries no extent.
    #[error("IOrec has no extent")]
    NoExtent,
    /// An extent reaches outside the data area.
    #[error("extent {index} ({offset:#x}+{len_bytes}) outside the {area_bytes}-byte data area")]
    OutOfBounds {
        /// Position of the extent in the IOrec.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        len_bytes: u32,
        /// Size of the data area.
        area_bytes: usize,
    },
    /// The tag does not name a buffer of the master's pool.
    #[error("tag {tag:#x} names no buffer of the pool")]
    UnknownBuffer {
        /// The tag read from shared memory.
        tag: u64,
    },
    /// The tag names a buffer the master has not handed to this peer.
    #[error("buffer {tag:#x} was not lent to the peer")]
    NotLent {
        /// The tag read from shared memory.
        tag: u64,
    },
    /// The master tried to send a buffer it does not hold (freed, or sent twice).
    #[error("buffer {tag:#x} is not held by the master")]
    NotHeld {
        /// The buffer id.
        tag: u64,
    },
    /// A run return names more buffers than the peer holds.
    #[error("run return of {count} buffers, but the peer holds only {held}")]
    RunTooLong {
        /// Buffers the run returns (with those of earlier runs not yet received).
        count: u64,
        /// Buffers lent to the peer.
        held: usize,
    },
    /// A returned extent does not lie inside the buffer the master lent.
    #[error("extent {index} ({offset:#x}+{len_bytes}) outside lent buffer {tag:#x}")]
    OutsideBuffer {
        /// The tag read from shared memory.
        tag: u64,
        /// Position of the extent in the IOrec.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        len_bytes: u32,
    },
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{call}: {source}")]
    Sys {
        /// What was called.
        call: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A region or area size that cannot be used.
    #[error("invalid size: {len_bytes} bytes")]
    InvalidSize {
        /// The size asked for.
        len_bytes: usize,
    },
    /// A ring geometry that cannot be used.
    #[error("invalid ring: {slots} slots (a power of two from 2 to 2^20)")]
    InvalidRing {
        /// The slot count asked for.
        slots: usize,
    },
    /// A region received from a peer has the wrong size.
    #[error("region is {actual_bytes} bytes, expected {expected_bytes}")]
    RegionSize {
        /// Size announced in the handshake.
        expected_bytes: usize,
        /// Size of the file received.
        actual_bytes: u64,
    },
    /// A region received from a peer could still be resized by it.
    #[error("region from the peer is not sealed against shrinking and growing")]
    NotSealed,
    /// An IOrec from the other side failed validation.
    #[error("bad IOrec from the peer: {0}")]
    BadIoRec(#[from] IoRecError),
    /// A count published by the peer went backwards or past the ring.
    #[error("peer's {which} count moved from {previous} to {now} on a {slots}-slot ring")]
    BadCount {
        /// Which count (`head` or `tail`).
        which: &'static str,
        /// The last valid value.
        previous: u64,
        /// The value read now.
        now: u64,
        /// Ring size.
        slots: usize,
    },
    /// The producer's head claims an IOrec whose ring slot it never stamped.
    #[error(
        "peer's head {head} claims IOrec {seq}, whose slot holds stamp {found:#x}, not {expected:#x}"
    )]
    BadStamp {
        /// The IOrec's sequence number (our tail).
        seq: u64,
        /// The head read.
        head: u64,
        /// The stamp found in the slot.
        found: u32,
        /// The stamp the slot should hold.
        expected: u32,
    },
    /// Run returns exist only in TMM (an RMM master needs each buffer's filled length).
    #[error("run returns are for TMM channels only")]
    RunInRmm,
    /// The master's pool could not give a buffer.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A data access outside a buffer.
    #[error("access {offset:#x}+{len_bytes} outside the {area_bytes}-byte data area")]
    OutOfBounds {
        /// Offset asked for.
        offset: usize,
        /// Length asked for.
        len_bytes: usize,
        /// Size of the area.
        area_bytes: usize,
    },
    /// Connection set-up failed: the peer speaks another protocol or asks for other sizes.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer closed its end of the connection or died.
    #[error("peer disconnected")]
    PeerGone,
    /// This side disconnected the peer because it broke the protocol.
    #[error("peer disconnected after {errors} protocol errors (last: {last})")]
    PeerEvicted {
        /// Errors counted before eviction.
        errors: u64,
        /// The last error seen.
        last: String,
    },
    /// A blocking wait ran out of time.
    #[error("timed out after {timeout_ms} ms")]
    Timeout {
        /// The timeout that elapsed.
        timeout_ms: u64,
    },
}

impl Error {
    pub(crate) fn sys(call: &'static str, errno: rustix::io::Errno) -> Error {
        Error::Sys {
            call,
            source: io::Error::from_raw_os_error(errno.raw_os_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_result_fits_in_two_registers() {
        assert!(std::mem::size_of::<Result<crate::BufId, AllocError>>() <= 16);
        let e: Error = AllocError::Exhausted.into();
        assert_eq!(e.to_string(), "pool exhausted");
        let e: Error = AllocError::TooLarge {
            len_bytes: 4097,
            max_bytes: 2048,
        }
        .into();
        assert_eq!(
            e.to_string(),
            "4097-byte buffer asked of a pool of 2048-byte buffers"
        );
    }
}
