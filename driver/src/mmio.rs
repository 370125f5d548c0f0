//! Device registers: the [`Regs`] trait drivers program through, and [`Bar`], a PCI BAR
//! of a VFIO device mapped into the process (or, when VFIO refuses to map it, accessed
//! with `pread`/`pwrite` on the device file).
//!
//! One of the crate's few modules with `unsafe`: `mmap` of the BAR and volatile 32-bit
//! accesses into it. Register reads never make a Rust reference into the BAR.

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

use crate::Error;

/// 32-bit register access to a device. Offsets are byte offsets into the register file.
///
/// Implemented by [`Bar`] for real devices and by fakes in tests, so ring logic can be
/// tested without hardware.
pub trait Regs {
    /// Reads the register at `offset` (4-byte aligned).
    fn read32(&self, offset: u32) -> u32;
    /// Writes the register at `offset` (4-byte aligned).
    fn write32(&self, offset: u32, value: u32);
}

/// 8-, 16- and 32-bit access to a register window of known size (virtio's structures
/// mix field widths, each accessed with its own). Implemented by [`Bar`] and by fakes.
pub trait Window: Regs + Send {
    /// Size of the window in bytes.
    fn window_bytes(&self) -> u64;
    /// Reads the 8-bit register at `offset`.
    fn read8(&self, offset: u32) -> u8;
    /// Reads the 16-bit register at `offset` (2-byte aligned).
    fn read16(&self, offset: u32) -> u16;
    /// Writes the 8-bit register at `offset`.
    fn write8(&self, offset: u32, value: u8);
    /// Writes the 16-bit register at `offset` (2-byte aligned).
    fn write16(&self, offset: u32, value: u16);
}

enum Access {
    Mapped(NonNull<u8>),
    File { fd: OwnedFd, base: u64 },
}

/// A memory BAR of a VFIO device.
pub struct Bar {
    index: u32,
    len_bytes: u64,
    access: Access,
}

// SAFETY: the mapping is device memory accessed only with volatile 32-bit reads and
// writes through raw pointers; the device serialises them, so sharing or moving the handle
// across threads is sound. The file variant is an owned descriptor.
unsafe impl Send for Bar {}
// SAFETY: see `Send`.
unsafe impl Sync for Bar {}

impl Bar {
    /// Maps `len_bytes` of the device file at `offset` (what VFIO reports for the BAR).
    pub(crate) fn map(
        device: BorrowedFd<'_>,
        index: u32,
        offset: u64,
        len_bytes: u64,
    ) -> Result<Bar, Error> {
        let len = usize::try_from(len_bytes).map_err(|_| Error::BadBar {
            index,
            reason: "too large to map",
            size_bytes: len_bytes,
            flags: 0,
        })?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no MAP_FIXED), so no
        // existing memory is affected; the region is device memory reached only through
        // volatile accesses below, never references.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                device,
                offset,
            )
        }
        .map_err(|e| Error::sys("mmap BAR", e))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::BadBar {
            index,
            reason: "mapped at address 0",
            size_bytes: len_bytes,
            flags: 0,
        })?;
        Ok(Bar {
            index,
            len_bytes,
            access: Access::Mapped(ptr),
        })
    }

    /// Accesses the BAR with `pread`/`pwrite` on (a duplicate of) the device file, for
    /// BARs VFIO does not allow to be mapped.
    pub(crate) fn file(
        device: BorrowedFd<'_>,
        index: u32,
        offset: u64,
        len_bytes: u64,
    ) -> Result<Bar, Error> {
        let fd = rustix::io::fcntl_dupfd_cloexec(device, 0)
            .map_err(|e| Error::sys("dup VFIO device fd", e))?;
        Ok(Bar {
            index,
            len_bytes,
            access: Access::File { fd, base: offset },
        })
    }

    /// The BAR number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Size in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Whether the BAR is mapped (fast) rather than accessed with system calls.
    pub fn is_mapped(&self) -> bool {
        matches!(self.access, Access::Mapped(_))
    }

    fn in_bounds(&self, offset: u32) -> bool {
        self.in_bounds_for(offset, 4)
    }

    fn in_bounds_for(&self, offset: u32, width: u32) -> bool {
        offset.is_multiple_of(width) && u64::from(offset) + u64::from(width) <= self.len_bytes
    }

    /// Reads the 8-bit register at `offset` (virtio's common configuration has 8- and
    /// 16-bit fields that must be accessed with their own width). Out of bounds reads
    /// return all ones and log.
    pub fn read8(&self, offset: u32) -> u8 {
        let mut b = [0xffu8; 1];
        self.read_narrow(offset, &mut b);
        b[0]
    }

    /// Reads the little-endian 16-bit register at `offset` (2-byte aligned).
    pub fn read16(&self, offset: u32) -> u16 {
        let mut b = [0xffu8; 2];
        self.read_narrow(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Writes the 8-bit register at `offset`.
    pub fn write8(&self, offset: u32, value: u8) {
        self.write_narrow(offset, &[value]);
    }

    /// Writes the little-endian 16-bit register at `offset` (2-byte aligned).
    pub fn write16(&self, offset: u32, value: u16) {
        self.write_narrow(offset, &value.to_le_bytes());
    }

    fn read_narrow(&self, offset: u32, buf: &mut [u8]) {
        let width = buf.len() as u32;
        if !self.in_bounds_for(offset, width) {
            log::error!(
                "BAR{} {width}-byte read at {offset:#x} outside {:#x} bytes",
                self.index,
                self.len_bytes
            );
            return;
        }
        match &self.access {
            Access::Mapped(ptr) => {
                // SAFETY: in bounds and aligned for `width` (checked above) inside a
                // mapping owned by `self`; volatile reads of device memory of exactly
                // the register's width, no reference made.
                unsafe {
                    let p = ptr.as_ptr().add(offset as usize);
                    if width == 1 {
                        buf[0] = p.read_volatile();
                    } else {
                        buf.copy_from_slice(&p.cast::<u16>().read_volatile().to_ne_bytes());
                    }
                }
            }
            Access::File { fd, base } => {
                if !matches!(rustix::io::pread(fd, &mut *buf, base + u64::from(offset)), Ok(n) if n == buf.len())
                {
                    log::error!("BAR{} pread at {offset:#x} failed", self.index);
                    buf.fill(0xff);
                }
            }
        }
    }

    fn write_narrow(&self, offset: u32, data: &[u8]) {
        let width = data.len() as u32;
        if !self.in_bounds_for(offset, width) {
            log::error!(
                "BAR{} {width}-byte write at {offset:#x} outside {:#x} bytes",
                self.index,
                self.len_bytes
            );
            return;
        }
        match &self.access {
            Access::Mapped(ptr) => {
                // SAFETY: in bounds and aligned for `width` (checked above) inside a
                // mapping owned by `self`; a volatile write of the register's width.
                unsafe {
                    let p = ptr.as_ptr().add(offset as usize);
                    if width == 1 {
                        p.write_volatile(data[0]);
                    } else {
                        p.cast::<u16>()
                            .write_volatile(u16::from_ne_bytes([data[0], data[1]]));
                    }
                }
            }
            Access::File { fd, base } => {
                if !matches!(rustix::io::pwrite(fd, data, base + u64::from(offset)), Ok(n) if n == data.len())
                {
                    log::error!("BAR{} pwrite at {offset:#x} failed", self.index);
                }
            }
        }
    }
}

impl Regs for Bar {
    fn read32(&self, offset: u32) -> u32 {
        if !self.in_bounds(offset) {
            log::error!(
                "BAR{} read at {offset:#x} outside {:#x} bytes",
                self.index,
                self.len_bytes
            );
            return u32::MAX;
        }
        match &self.access {
            Access::Mapped(ptr) => {
                // SAFETY: in bounds and aligned (checked above) inside a mapping owned by
                // `self`; a volatile read of device memory makes no reference.
                let v = unsafe {
                    ptr.as_ptr()
                        .add(offset as usize)
                        .cast::<u32>()
                        .read_volatile()
                };
                u32::from_le(v)
            }
            Access::File { fd, base } => {
                let mut buf = [0u8; 4];
                match rustix::io::pread(fd, &mut buf, base + u64::from(offset)) {
                    Ok(4) => u32::from_le_bytes(buf),
                    other => {
                        log::error!("BAR{} pread at {offset:#x}: {other:?}", self.index);
                        u32::MAX
                    }
                }
            }
        }
    }

    fn write32(&self, offset: u32, value: u32) {
        if !self.in_bounds(offset) {
            log::error!(
                "BAR{} write at {offset:#x} outside {:#x} bytes",
                self.index,
                self.len_bytes
            );
            return;
        }
        match &self.access {
            Access::Mapped(ptr) => {
                // SAFETY: in bounds and aligned (checked above) inside a mapping owned by
                // `self`; a volatile write to device memory.
                unsafe {
                    ptr.as_ptr()
                        .add(offset as usize)
                        .cast::<u32>()
                        .write_volatile(value.to_le())
                }
            }
            Access::File { fd, base } => {
                match rustix::io::pwrite(fd, &value.to_le_bytes(), base + u64::from(offset)) {
                    Ok(4) => {}
                    other => log::error!("BAR{} pwrite at {offset:#x}: {other:?}", self.index),
                }
            }
        }
    }
}

impl Window for Bar {
    fn window_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read8(&self, offset: u32) -> u8 {
        Bar::read8(self, offset)
    }

    fn read16(&self, offset: u32) -> u16 {
        Bar::read16(self, offset)
    }

    fn write8(&self, offset: u32, value: u8) {
        Bar::write8(self, offset, value)
    }

    fn write16(&self, offset: u32, value: u16) {
        Bar::write16(self, offset, value)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Access::Mapped(ptr) = self.access {
            let len = self.len_bytes as usize;
            // SAFETY: `ptr` is the start of a mapping of `len` bytes made in `map` and
            // owned by `self`; nothing refers into it (accesses are volatile and done).
            let unmapped = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
            if let Err(e) = unmapped {
                log::error!("munmap BAR{}: {e}", self.index);
            }
        }
    }
}

impl fmt::Debug for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bar")
            .field("index", &self.index)
            .field("len_bytes", &self.len_bytes)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}
