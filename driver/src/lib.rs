//! Userspace NIC drivers over VFIO that DMA straight into `rbuf` data areas.
//!
//! - [`vfio`]: the device through VFIO (container, group, device, IOMMU mappings with
//!   per-direction permissions, IOVA allocation, BARs, config space, interrupts).
//! - [`e1000`]: the Intel 8254x driver (QEMU's `e1000` models).
//! - [`virtio`]: the virtio-net driver (modern virtio 1.x over PCI, behind the IOMMU).
//! - [`AnyNic`]: whichever of them the device at a PCI address needs.
//! - [`nic`]: the small interface every driver offers upward ([`Nic`]): IOrecs in, IOrecs
//!   out, link, MAC, counters.
//! - [`dma`], [`mmio`]: DMA mappings and descriptor memory; register access.
//!
//! `unsafe` is confined to `vfio::sys` (ioctls), [`mmio`] (BAR mapping and volatile
//! register access), [`dma`] (atomics on descriptor memory, mapping calls) and the test
//! fake; every other module is `#![forbid(unsafe_code)]`. The library never prints: it
//! logs through `log`.

mod any;
mod areas;
pub mod dma;
pub mod e1000;
#[cfg(test)]
mod e1000_tests;
mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod mmio;
pub mod nic;
pub mod pci;
pub mod port;
#[cfg(test)]
mod port_tests;
pub mod vfio;
pub mod virtio;
#[cfg(test)]
mod virtio_nic_tests;
#[cfg(test)]
mod virtio_tests;

pub use any::{AnyConfig, AnyNic, DriverKind};
pub use e1000::E1000;
pub use error::Error;
pub use nic::{AreaId, Batch, IOREC_RX_ERROR, IOREC_RX_FRAGMENT, LinkStatus, MacAddr, Nic, Stats};
pub use pci::PciAddress;
pub use port::{Port, PortStats};
pub use virtio::VirtioNet;
