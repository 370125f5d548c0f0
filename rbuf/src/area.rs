//! Data areas: the shared memory that packets live in, mapped in every process of a channel.
//!
//! The originator (the side that writes data: the driver for RX, the app for TX) creates
//! the area and maps it writable; receivers map it read-only from a file descriptor that
//! the kernel will never map writable (see [`crate::shm`]). Offsets into an area are `u32`,
//! so an area is at most [`MAX_AREA_BYTES`].

use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::shm::{Backing, PagePolicy, Region};
use crate::{Error, Extent};

/// Largest data area: IOrec offsets are 32-bit.
pub const MAX_AREA_BYTES: usize = 1 << 32;

/// Most bytes of an extent [`DataArea::prefetch_write`] asks for.
pub const PREFETCH_BYTES: usize = 512;

/// A data area: one sealed memfd, mapped shared and pre-faulted.
#[derive(Debug)]
pub struct DataArea {
    region: Region,
}

impl DataArea {
    /// Creates a writable area of at least `len_bytes` (rounded up to the page size: 2 MiB
    /// with hugetlb pages, 4 KiB with shmem).
    pub fn create(len_bytes: usize, policy: PagePolicy) -> Result<DataArea, Error> {
        Self::create_named(c"rbuf-data", len_bytes, policy)
    }

    /// As [`DataArea::create`], with the memfd name shown in `/proc/PID/maps`.
    pub fn create_named(
        name: &CStr,
        len_bytes: usize,
        policy: PagePolicy,
    ) -> Result<DataArea, Error> {
        if len_bytes > MAX_AREA_BYTES {
            return Err(Error::InvalidSize { len_bytes });
        }
        let region = Region::create(name, len_bytes, policy)?;
        if region.len() > MAX_AREA_BYTES {
            return Err(Error::InvalidSize {
                len_bytes: region.len(),
            });
        }
        Ok(DataArea { region })
    }

    /// Maps an area received from its originator read-only.
    pub fn open_readonly(fd: OwnedFd, len_bytes: usize) -> Result<DataArea, Error> {
        if len_bytes > MAX_AREA_BYTES {
            return Err(Error::InvalidSize { len_bytes });
        }
        Ok(DataArea {
            region: Region::map_readonly(fd, len_bytes)?,
        })
    }

    /// A file descriptor for receivers: it can only be mapped read-only.
    pub fn readonly_fd(&self) -> Result<OwnedFd, Error> {
        self.region.readonly_fd()
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Never true: areas have a non-zero size.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether this process may write the area.
    pub fn is_writable(&self) -> bool {
        self.region.is_writable()
    }

    /// What backs the area.
    pub fn backing(&self) -> Backing {
        self.region.backing()
    }

    /// Base address in this process, for DMA mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// The underlying region (for 64-bit atomic words inside the area).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Checks that `offset..offset+len_bytes` lies inside the area.
    pub fn check(&self, offset: usize, len_bytes: usize) -> Result<(), Error> {
        match offset.checked_add(len_bytes) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len_bytes,
                area_bytes: self.len(),
            }),
        }
    }

    /// Hints that the caller is about to fill `e`: asks the CPU for its first cache lines
    /// (at most [`PREFETCH_BYTES`]) for writing now, so filling a batch of small buffers
    /// waits for their ownership once rather than once per buffer. Changes no memory;
    /// parts outside the area are ignored.
    #[inline]
    pub fn prefetch_write(&self, e: Extent) {
        let start = e.offset() as usize;
        let end = start + (e.len() as usize).min(PREFETCH_BYTES);
        // From the line holding the first byte, so an unaligned extent's last line counts.
        for line in (start & !63..end).step_by(64) {
            self.region.prefetch_write(line);
        }
    }

    /// Copies `src` into the area at `offset` (writable areas only).
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        self.check(offset, src.len())?;
        if !self.is_writable() {
            return Err(Error::Sys {
                call: "write to a read-only data area",
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
        self.region.copy_in(offset, src);
        Ok(())
    }

    /// Copies bytes at `offset` into `dst`. Safe whatever a peer does meanwhile: a
    /// concurrent writer can only change which bytes arrive.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.check(offset, dst.len())?;
        self.region.copy_out(offset, dst);
        Ok(())
    }

    /// Copies the bytes of every extent of an IOrec, in order, into `dst`; returns the
    /// number of bytes copied (at most `dst.len()`).
    pub fn gather(&self, extents: &[Extent], dst: &mut [u8]) -> Result<usize, Error> {
        let mut at = 0;
        for e in extents {
            let n = (e.len() as usize).min(dst.len() - at);
            self.read(e.offset() as usize, &mut dst[at..at + n])?;
            at += n;
        }
        Ok(at)
    }

    /// A view of the bytes of `extent`, without copying.
    ///
    /// # Safety
    /// Nobody (this process, a peer, a device) may write those bytes while the slice
    /// lives: the buffer is one the caller's protocol state says nobody else owns (a
    /// completed receive not yet re-posted, a transmit buffer not yet sent), and the
    /// writer is trusted to keep to the protocol. Against an untrusted writer use
    /// [`DataArea::read`].
    pub unsafe fn bytes(&self, extent: Extent) -> Result<&[u8], Error> {
        self.check(extent.offset() as usize, extent.len() as usize)?;
        // SAFETY: bounds checked above; exclusivity is the caller's contract.
        Ok(unsafe {
            self.region
                .bytes(extent.offset() as usize, extent.len() as usize)
        })
    }

    /// A mutable view of the bytes of `extent`, without copying (writable areas only).
    ///
    /// # Safety
    /// The caller owns the buffer exclusively (taken from the pool or the empty ring and
    /// not yet sent) and makes no other view of these bytes while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, extent: Extent) -> Result<&mut [u8], Error> {
        self.check(extent.offset() as usize, extent.len() as usize)?;
        if !self.is_writable() {
            return Err(Error::Sys {
                call: "write to a read-only data area",
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
        // SAFETY: bounds and writability checked above; exclusivity is the caller's contract.
        Ok(unsafe {
            self.region
                .bytes_mut(extent.offset() as usize, extent.len() as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_for_writing_leaves_the_bytes_and_ignores_what_is_outside() {
        let area = DataArea::create(8192, PagePolicy::Shmem).unwrap();
        area.write(100, b"unchanged").unwrap();
        for e in [
            Extent::new(90, 64),
            Extent::new(0, 8192),
            Extent::new(8100, 1000),
            Extent::new(u32::MAX - 10, u32::MAX),
        ] {
            area.prefetch_write(e);
        }
        let mut got = [0u8; 9];
        area.read(100, &mut got).unwrap();
        assert_eq!(&got, b"unchanged");
    }
}
