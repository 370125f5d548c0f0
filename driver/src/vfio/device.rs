//! The safe owner types: container, device, interrupt.
//!
//! `unsafe` is denied here except for the one place the `Iommu` trait requires it: the
//! container's `map`, which forwards its caller's contract to `sys::map_dma`.

#![deny(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::iova::{Iova, IovaAllocator};
use super::sys::{self, IommuInfo};
use crate::Error;
use crate::dma::{DmaAccess, Iommu};
use crate::mmio::Bar;
use crate::pci::{PciAddress, PciId, SysPaths, config};

/// Interrupt index of INTx (legacy pin interrupt) in VFIO.
pub const INTX: u32 = VFIO_PCI_INTX_IRQ_INDEX;
/// Interrupt index of MSI in VFIO.
pub const MSI: u32 = VFIO_PCI_MSI_IRQ_INDEX;
/// Interrupt index of MSI-X in VFIO.
pub const MSIX: u32 = VFIO_PCI_MSIX_IRQ_INDEX;

/// A VFIO container: one IOMMU domain, and the allocator of IOVAs in it.
pub struct Container {
    inner: Arc<VfioContainer>,
    /// Set once the first group is attached (the IOMMU type is chosen then).
    info: OnceLock<IommuInfo>,
    iova: Mutex<Option<IovaAllocator>>,
    /// Live mappings, IOVA -> (length, access), to refuse bad unmaps before the kernel.
    mappings: Mutex<HashMap<u64, (u64, DmaAccess)>>,
}

impl Container {
    /// Opens `/dev/vfio/vfio` (checks the API version and type1v2 support).
    pub fn open(paths: &SysPaths) -> Result<Arc<Container>, Error> {
        let path = paths.container();
        if !path.exists() {
            return Err(Error::NoVfio { path });
        }
        let inner = VfioContainer::new(None).map_err(|source| Error::Vfio {
            op: "open VFIO container",
            source,
        })?;
        Ok(Arc::new(Container {
            inner: Arc::new(inner),
            info: OnceLock::new(),
            iova: Mutex::new(None),
            mappings: Mutex::new(HashMap::new()),
        }))
    }

    /// What the IOMMU reported (valid IOVA ranges, page sizes); `None` before a device
    /// has been opened in the container.
    pub fn iommu_info(&self) -> Option<&IommuInfo> {
        self.info.get()
    }

    /// Reads the IOMMU's properties once a group is attached and sets up the allocator.
    fn init_iommu(&self) -> Result<(), Error> {
        if self.info.get().is_some() {
            return Ok(());
        }
        let info =
            sys::iommu_info(sys::container_fd(&self.inner)).map_err(|source| Error::Sys {
                op: "VFIO_IOMMU_GET_INFO",
                source,
            })?;
        log::debug!(
            "IOMMU: page sizes {:#x}, IOVA ranges {:x?}, DMA entries left {:?}",
            info.page_sizes,
            info.ranges,
            info.dma_avail
        );
        let alloc = IovaAllocator::new(&info.ranges, info.min_page_bytes());
        *self.iova.lock().unwrap_or_else(|p| p.into_inner()) = Some(alloc);
        let _ = self.info.set(info);
        Ok(())
    }
}

#[allow(unsafe_code)] // `Iommu::map` is an unsafe fn; the contract passes through.
impl Iommu for Container {
    unsafe fn map(
        &self,
        vaddr: *mut u8,
        len_bytes: usize,
        access: DmaAccess,
    ) -> Result<Iova, Error> {
        let len = len_bytes as u64;
        let iova = {
            let mut guard = self.iova.lock().unwrap_or_else(|p| p.into_inner());
            let alloc = guard
                .as_mut()
                .ok_or(Error::IovaExhausted { len_bytes: len })?;
            alloc
                .alloc(len)
                .ok_or(Error::IovaExhausted { len_bytes: len })?
        };
        let flags = match access {
            DmaAccess::DeviceReads => sys::DMA_READ,
            DmaAccess::DeviceWrites => sys::DMA_READ | sys::DMA_WRITE,
        };
        // SAFETY: the caller upholds `Iommu::map`'s contract, which is `sys::map_dma`'s.
        let mapped =
            unsafe { sys::map_dma(sys::container_fd(&self.inner), iova.0, vaddr, len, flags) };
        if let Err(source) = mapped {
            if let Some(alloc) = self.iova.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                alloc.free(iova, len);
            }
            return Err(Error::Dma {
                op: "map",
                iova: iova.0,
                len_bytes: len,
                source,
            });
        }
        self.mappings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(iova.0, (len, access));
        log::debug!("DMA map {len:#x} bytes at IOVA {iova} ({access:?})");
        Ok(iova)
    }

    fn unmap(&self, iova: Iova, len_bytes: usize) -> Result<(), Error> {
        let len = len_bytes as u64;
        let bad = |source| Error::Dma {
            op: "unmap",
            iova: iova.0,
            len_bytes: len,
            source,
        };
        match self
            .mappings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&iova.0)
        {
            Some((l, _)) if *l == len => {}
            _ => {
                return Err(bad(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such mapping",
                )));
            }
        }
        let unmapped = sys::unmap_dma(sys::container_fd(&self.inner), iova.0, len).map_err(bad)?;
        if unmapped != len {
            return Err(bad(std::io::Error::other(format!(
                "kernel unmapped {unmapped:#x} bytes"
            ))));
        }
        self.mappings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&iova.0);
        if let Some(alloc) = self.iova.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            alloc.free(iova, len);
        }
        Ok(())
    }
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("iommu", &self.info.get())
            .finish_non_exhaustive()
    }
}

/// A PCI device owned through VFIO.
pub struct Device {
    addr: PciAddress,
    id: PciId,
    subsystem_vendor: u16,
    info: sys::DeviceInfo,
    config_offset: u64,
    // Declared before `container` so the device (and its group) go first.
    inner: VfioDevice,
    container: Arc<Container>,
}

impl Device {
    /// Opens `addr` in a new container after checking (in [`SysPaths::preflight`]'s order)
    /// that it exists, is one of `supported`, is bound to vfio-pci and its group is viable.
    pub fn open(
        paths: &SysPaths,
        addr: PciAddress,
        driver: &'static str,
        supported: &[PciId],
    ) -> Result<Device, Error> {
        let pre = paths.preflight(addr, driver, supported)?;
        let container = Container::open(paths)?;
        let ops: Arc<dyn VfioOps> = container.inner.clone();
        let inner = VfioDevice::new(&pre.sysfs_dir, ops, true).map_err(|source| match source {
            vfio_ioctls::VfioError::GroupViable => Error::GroupNotViable {
                addr,
                group: pre.group,
                blockers: paths.group_blockers(pre.group),
            },
            source => Error::Vfio {
                op: "open VFIO device",
                source,
            },
        })?;
        container.init_iommu()?;
        let fd = sys::device_fd(&inner);
        let info = sys::device_info(fd).map_err(|source| Error::Sys {
            op: "VFIO_DEVICE_GET_INFO",
            source,
        })?;
        let config_region =
            sys::region_info(fd, VFIO_PCI_CONFIG_REGION_INDEX).map_err(|source| Error::Sys {
                op: "VFIO_DEVICE_GET_REGION_INFO (config space)",
                source,
            })?;
        let mut device = Device {
            addr,
            id: pre.id,
            subsystem_vendor: 0,
            info,
            config_offset: config_region.offset,
            inner,
            container,
        };
        // Config space is the device's own word on who it is (sysfs could be stale).
        let id = PciId {
            vendor: device.config_read_u16(config::VENDOR_ID)?,
            device: device.config_read_u16(config::DEVICE_ID)?,
        };
        if id != pre.id {
            return Err(Error::WrongDevice {
                addr,
                vendor: id.vendor,
                device: id.device,
                driver,
                supported: supported
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        device.subsystem_vendor = device.config_read_u16(config::SUBSYSTEM_VENDOR_ID)?;
        log::info!(
            "{addr}: {id} (subsystem vendor {:04x}) open, IOMMU group {}, {} regions, {} IRQ indexes",
            device.subsystem_vendor,
            pre.group,
            info.num_regions,
            info.num_irqs
        );
        Ok(device)
    }

    /// The PCI address.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// Vendor and device ID.
    pub fn id(&self) -> PciId {
        self.id
    }

    /// Subsystem vendor ID ([`crate::pci::QEMU_SUBSYSTEM_VENDOR`] for QEMU's models).
    pub fn subsystem_vendor(&self) -> u16 {
        self.subsystem_vendor
    }

    /// The container (IOMMU domain) the device's DMA goes through.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// The container as an [`Iommu`] for DMA mappings.
    pub fn iommu(&self) -> Arc<dyn Iommu> {
        self.container.clone()
    }

    /// Reads `buf.len()` bytes of configuration space at `offset`.
    pub fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let len_bytes = buf.len();
        let err = |source| Error::ConfigSpace {
            op: "read",
            offset,
            len_bytes,
            source,
        };
        match rustix::io::pread(
            sys::device_fd(&self.inner),
            &mut *buf,
            self.config_offset + offset,
        ) {
            Ok(n) if n == len_bytes => Ok(()),
            Ok(n) => Err(err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("short read of {n} bytes"),
            ))),
            Err(e) => Err(err(std::io::Error::from_raw_os_error(e.raw_os_error()))),
        }
    }

    /// Writes `data` to configuration space at `offset`.
    pub fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let err = |source| Error::ConfigSpace {
            op: "write",
            offset,
            len_bytes: data.len(),
            source,
        };
        match rustix::io::pwrite(
            sys::device_fd(&self.inner),
            data,
            self.config_offset + offset,
        ) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(n) => Err(err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write of {n} bytes"),
            ))),
            Err(e) => Err(err(std::io::Error::from_raw_os_error(e.raw_os_error()))),
        }
    }

    /// Reads a 16-bit configuration register.
    pub fn config_read_u16(&self, offset: u64) -> Result<u16, Error> {
        let mut b = [0u8; 2];
        self.config_read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes a 16-bit configuration register.
    pub fn config_write_u16(&self, offset: u64, value: u16) -> Result<(), Error> {
        self.config_write(offset, &value.to_le_bytes())
    }

    /// Turns memory decoding and bus mastering (DMA) on or off. Off means the device can
    /// no longer reach memory, whatever its rings say.
    pub fn set_bus_master(&self, on: bool) -> Result<(), Error> {
        let cmd = self.config_read_u16(config::COMMAND)?;
        let new = if on {
            cmd | config::COMMAND_MEMORY | config::COMMAND_MASTER
        } else {
            cmd & !config::COMMAND_MASTER
        };
        if new != cmd {
            self.config_write_u16(config::COMMAND, new)?;
        }
        Ok(())
    }

    /// Issues `VFIO_DEVICE_RESET` (function-level or PM reset, restoring config space).
    /// Returns `Ok(false)` if VFIO offers no reset for this device.
    pub fn reset(&self) -> Result<bool, Error> {
        if self.info.flags & VFIO_DEVICE_FLAGS_RESET == 0 {
            return Ok(false);
        }
        sys::reset(sys::device_fd(&self.inner)).map_err(|source| Error::Sys {
            op: "VFIO_DEVICE_RESET",
            source,
        })?;
        Ok(true)
    }

    /// Maps memory BAR `index` (falls back to `pread`/`pwrite` when VFIO does not allow
    /// mapping it, or only parts of it).
    pub fn bar(&self, index: u32) -> Result<Bar, Error> {
        if index > 5 {
            return Err(Error::BadBar {
                index,
                reason: "no such BAR",
                size_bytes: 0,
                flags: 0,
            });
        }
        let fd = sys::device_fd(&self.inner);
        let r = sys::region_info(fd, index).map_err(|source| Error::Sys {
            op: "VFIO_DEVICE_GET_REGION_INFO",
            source,
        })?;
        if r.size == 0 {
            return Err(Error::BadBar {
                index,
                reason: "not implemented by the device",
                size_bytes: r.size,
                flags: r.flags,
            });
        }
        let sparse = self
            .inner
            .get_region_caps(index)
            .iter()
            .any(|c| matches!(c, VfioRegionInfoCap::SparseMmap(_)));
        if r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && !sparse {
            Bar::map(fd, index, r.offset, r.size)
        } else {
            log::warn!(
                "{}: BAR{index} cannot be mapped; using pread/pwrite",
                self.addr
            );
            Bar::file(fd, index, r.offset, r.size)
        }
    }

    /// How many vectors interrupt index `index` ([`INTX`], [`MSI`], [`MSIX`]) has.
    pub fn irq_count(&self, index: u32) -> u32 {
        self.inner.get_irq_info(index).map_or(0, |i| i.count)
    }

    /// Routes INTx to a new eventfd. VFIO masks INTx each time it fires: call
    /// [`Device::unmask_intx`] once the cause is cleared in the device.
    pub fn enable_intx(&self) -> Result<Interrupt, Error> {
        let irq = Interrupt::new()?;
        self.inner
            .enable_irq(INTX, vec![&irq.fd])
            .map_err(|source| Error::Vfio {
                op: "enable INTx",
                source,
            })?;
        Ok(irq)
    }

    /// Unmasks INTx after an interrupt was serviced.
    pub fn unmask_intx(&self) -> Result<(), Error> {
        self.inner.unmask_irq(INTX).map_err(|source| Error::Vfio {
            op: "unmask INTx",
            source,
        })
    }

    /// Routes `vectors` MSI-X vectors to new eventfds (for virtio-net).
    pub fn enable_msix(&self, vectors: u32) -> Result<Vec<Interrupt>, Error> {
        self.enable_vectors(MSIX, vectors, "enable MSI-X")
    }

    /// Routes `vectors` MSI vectors to new eventfds.
    pub fn enable_msi(&self, vectors: u32) -> Result<Vec<Interrupt>, Error> {
        self.enable_vectors(MSI, vectors, "enable MSI")
    }

    fn enable_vectors(
        &self,
        index: u32,
        n: u32,
        op: &'static str,
    ) -> Result<Vec<Interrupt>, Error> {
        let available = self.irq_count(index);
        if n == 0 || n > available {
            return Err(Error::BadConfig {
                what: "interrupt vectors",
                value: u64::from(n),
                expected: "between 1 and what the device offers",
            });
        }
        let irqs = (0..n)
            .map(|_| Interrupt::new())
            .collect::<Result<Vec<_>, _>>()?;
        self.inner
            .enable_irq(index, irqs.iter().map(|i| &i.fd).collect())
            .map_err(|source| Error::Vfio { op, source })?;
        Ok(irqs)
    }

    /// Disconnects interrupt index `index` from its eventfds.
    pub fn disable_irq(&self, index: u32) -> Result<(), Error> {
        self.inner.disable_irq(index).map_err(|source| Error::Vfio {
            op: "disable interrupts",
            source,
        })
    }

    /// Makes VFIO signal vector `vector` of `index` as if the device had (loopback test).
    pub fn trigger_irq(&self, index: u32, vector: u32) -> Result<(), Error> {
        self.inner
            .trigger_irq(index, vector)
            .map_err(|source| Error::Vfio {
                op: "trigger interrupt",
                source,
            })
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("addr", &self.addr)
            .field("id", &self.id)
            .field("flags", &self.info.flags)
            .finish_non_exhaustive()
    }
}

/// An interrupt delivered through an eventfd.
pub struct Interrupt {
    fd: EventFd,
}

impl Interrupt {
    /// A new non-blocking eventfd, not yet connected to anything.
    pub fn new() -> Result<Interrupt, Error> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Sys {
            op: "eventfd",
            source,
        })?;
        Ok(Interrupt { fd })
    }

    /// A second handle on the same eventfd (for whoever signals it, e.g. a fake device).
    pub fn try_clone(&self) -> Result<Interrupt, Error> {
        let fd = self.fd.try_clone().map_err(|source| Error::Sys {
            op: "dup eventfd",
            source,
        })?;
        Ok(Interrupt { fd })
    }

    /// Signals the interrupt (what VFIO does when the device raises it).
    pub fn signal(&self) -> Result<(), Error> {
        self.fd.write(1).map_err(|source| Error::Sys {
            op: "eventfd write",
            source,
        })
    }

    /// Takes the pending count without waiting: how many times it fired since last time.
    pub fn take(&self) -> Result<u64, Error> {
        match self.fd.read() {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(source) => Err(Error::Sys {
                op: "eventfd read",
                source,
            }),
        }
    }

    /// Sleeps until the interrupt fires or `timeout` passes (`None`: forever); returns the
    /// pending count, 0 on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u64, Error> {
        let pending = self.take()?;
        if pending > 0 {
            return Ok(pending);
        }
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let fd = sys::eventfd_fd(&self.fd);
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        loop {
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::sys("poll eventfd", e)),
            }
        }
        self.take()
    }

    /// The eventfd, to put into an epoll set.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        sys::eventfd_fd(&self.fd)
    }
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_counts_and_times_out() {
        let irq = Interrupt::new().unwrap();
        let t = std::time::Instant::now();
        assert_eq!(irq.wait(Some(Duration::from_millis(20))).unwrap(), 0);
        assert!(t.elapsed() >= Duration::from_millis(15));
        let other = irq.try_clone().unwrap();
        other.signal().unwrap();
        other.signal().unwrap();
        assert_eq!(irq.wait(None).unwrap(), 2);
        assert_eq!(irq.take().unwrap(), 0);
    }

    #[test]
    fn no_vfio_is_reported_before_anything_is_opened() {
        let paths = SysPaths {
            sys: "/nonexistent-sys".into(),
            dev_vfio: "/nonexistent-dev-vfio".into(),
        };
        match Container::open(&paths) {
            Err(Error::NoVfio { path }) => {
                assert_eq!(path, std::path::Path::new("/nonexistent-dev-vfio/vfio"))
            }
            other => panic!("{other:?}"),
        }
    }
}
