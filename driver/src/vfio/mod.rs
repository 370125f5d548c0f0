//! VFIO: owning a PCI device from user space, with the IOMMU confining its DMA.
//!
//! Legacy container/group API with the type1 IOMMU (what a Debian 6.1 guest kernel has:
//! no iommufd, no no-IOMMU mode). `vfio-ioctls` opens the container, group and device and
//! wires interrupts to eventfds; [`sys`] makes the calls it lacks (per-direction
//! `MAP_DMA`, `IOMMU_GET_INFO`, region info and reset that report errors).
//!
//! Layers, as STYLE rule 10 asks: bindings (`vfio-bindings`), one module with the unsafe
//! calls ([`sys`], plus [`crate::mmio`] for the BAR mapping), and the safe owner types
//! here: [`Container`] (an IOMMU domain and its [`IovaAllocator`]), [`Device`] and
//! [`Interrupt`].

mod device;
pub mod iova;
pub(crate) mod sys;

pub use device::{Container, Device, INTX, Interrupt, MSI, MSIX};
pub use iova::{Iova, IovaAllocator};
pub use sys::IommuInfo;
