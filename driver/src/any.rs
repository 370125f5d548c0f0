//! [`AnyNic`]: whatever NIC is at a PCI address, driven by the driver its vendor and device
//! ID call for, behind the one [`Nic`] interface. Apps say "open the NIC at this address"
//! and never name a driver:
//!
//! ```no_run
//! use driver::{AnyConfig, AnyNic, Nic, PciAddress};
//!
//! let addr: PciAddress = "0000:00:03.0".parse()?;
//! let nic = AnyNic::open(addr, &AnyConfig::default().with_interrupts(true))?;
//! println!("{} ({}) at {addr}: {}", nic.mac(), nic.kind().name(), nic.pci_id());
//! # Ok::<(), driver::Error>(())
//! ```

#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::time::Duration;

use rbuf::{DataArea, IoRec};

use crate::Error;
use crate::dma::DmaAccess;
use crate::e1000::{self, E1000};
use crate::mmio::Bar;
use crate::nic::{AreaId, Batch, LinkStatus, MacAddr, Nic, Stats};
use crate::pci::{PciAddress, PciId, QEMU_SUBSYSTEM_VENDOR, SysPaths};
use crate::vfio::Iova;
use crate::virtio::{self, VirtioNet};

/// The configuration of each driver; [`AnyNic::open`] uses the one for the device found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnyConfig {
    /// For Intel 8254x devices.
    pub e1000: e1000::Config,
    /// For virtio-net devices.
    pub virtio_net: virtio::Config,
}

impl AnyConfig {
    /// Interrupt mode (`true`) or polling for whichever driver is used.
    pub fn with_interrupts(mut self, on: bool) -> AnyConfig {
        self.e1000.interrupts = on;
        self.virtio_net.interrupts = on;
        self
    }
}

/// Which driver a PCI ID calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// [`E1000`].
    E1000,
    /// [`VirtioNet`].
    VirtioNet,
}

impl DriverKind {
    /// The driver for `id`, if any supports it.
    pub fn for_id(id: PciId) -> Option<DriverKind> {
        if e1000::SUPPORTED.contains(&id) {
            Some(DriverKind::E1000)
        } else if virtio::SUPPORTED.contains(&id) {
            Some(DriverKind::VirtioNet)
        } else {
            None
        }
    }

    /// The driver's name, as in error messages.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::E1000 => "e1000",
            DriverKind::VirtioNet => "virtio-net",
        }
    }
}

/// A NIC of any supported kind.
#[derive(Debug)]
pub enum AnyNic {
    /// An Intel 8254x (boxed, as both drivers are large and reached once per batch).
    E1000(Box<E1000<Bar>>),
    /// A virtio-net device.
    VirtioNet(Box<VirtioNet>),
}

macro_rules! each {
    ($self:expr, $n:ident => $e:expr) => {
        match $self {
            AnyNic::E1000($n) => $e,
            AnyNic::VirtioNet($n) => $e,
        }
    };
}

impl AnyNic {
    /// Opens the NIC at `addr` with the driver its vendor and device ID (from sysfs) call
    /// for. A device no driver supports is [`Error::WrongDevice`] listing every ID that is.
    pub fn open(addr: PciAddress, config: &AnyConfig) -> Result<AnyNic, Error> {
        AnyNic::open_with(&SysPaths::default(), addr, config)
    }

    /// As [`AnyNic::open`], with sysfs and `/dev/vfio` elsewhere.
    pub fn open_with(
        paths: &SysPaths,
        addr: PciAddress,
        config: &AnyConfig,
    ) -> Result<AnyNic, Error> {
        if !paths.device_dir(addr).exists() {
            return Err(Error::NoSuchDevice { addr });
        }
        let id = paths.id(addr)?;
        match DriverKind::for_id(id) {
            Some(DriverKind::E1000) => Ok(AnyNic::E1000(Box::new(E1000::open_with(
                paths,
                addr,
                &config.e1000,
            )?))),
            Some(DriverKind::VirtioNet) => Ok(AnyNic::VirtioNet(Box::new(VirtioNet::open_with(
                paths,
                addr,
                &config.virtio_net,
            )?))),
            None => Err(Error::WrongDevice {
                addr,
                vendor: id.vendor,
                device: id.device,
                driver: "rbufnic",
                supported: e1000::SUPPORTED
                    .iter()
                    .chain(&virtio::SUPPORTED)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Which driver drives it.
    pub fn kind(&self) -> DriverKind {
        match self {
            AnyNic::E1000(_) => DriverKind::E1000,
            AnyNic::VirtioNet(_) => DriverKind::VirtioNet,
        }
    }

    /// PCI vendor and device ID.
    pub fn pci_id(&self) -> PciId {
        match self {
            AnyNic::E1000(n) => n.identity().id,
            AnyNic::VirtioNet(n) => n.id(),
        }
    }

    /// Whether it is one of QEMU's models (subsystem vendor `1af4`).
    pub fn is_qemu(&self) -> bool {
        match self {
            AnyNic::E1000(n) => n.identity().qemu,
            AnyNic::VirtioNet(n) => n
                .device()
                .is_some_and(|d| d.subsystem_vendor() == QEMU_SUBSYSTEM_VENDOR),
        }
    }

    /// Whether it runs in interrupt mode.
    pub fn interrupts(&self) -> bool {
        match self {
            AnyNic::E1000(n) => n.config().interrupts,
            AnyNic::VirtioNet(n) => n.config().interrupts,
        }
    }

    /// The IOVA at which a registered area starts.
    pub fn area_iova(&self, area: AreaId) -> Option<Iova> {
        each!(self, n => n.area_iova(area))
    }

    /// Whether the device may write an area (RX) or only read it (TX).
    pub fn area_access(&self, area: AreaId) -> Option<DmaAccess> {
        each!(self, n => n.area_access(area))
    }

    /// Fault injection: one receive buffer at an IOVA no RX area backs
    /// ([`E1000::inject_rx_descriptor`], [`VirtioNet::inject_rx_buffer`]).
    pub fn inject_rx_buffer(&mut self, iova: Iova) -> Result<(), Error> {
        match self {
            AnyNic::E1000(n) => n.inject_rx_descriptor(iova),
            AnyNic::VirtioNet(n) => n.inject_rx_buffer(iova),
        }
    }

    /// Injected buffers the device completed.
    pub fn raw_completions(&self) -> u64 {
        each!(self, n => n.raw_completions())
    }
}

impl Nic for AnyNic {
    fn mac(&self) -> MacAddr {
        each!(self, n => n.mac())
    }

    fn link(&self) -> LinkStatus {
        each!(self, n => n.link())
    }

    fn stats(&mut self) -> Stats {
        each!(self, n => n.stats())
    }

    fn set_promiscuous(&mut self, on: bool) {
        each!(self, n => n.set_promiscuous(on))
    }

    fn set_all_multicast(&mut self, on: bool) {
        each!(self, n => n.set_all_multicast(on))
    }

    fn add_rx_area(&mut self, area: &DataArea) -> Result<AreaId, Error> {
        each!(self, n => n.add_rx_area(area))
    }

    fn add_tx_area(&mut self, area: &DataArea) -> Result<AreaId, Error> {
        each!(self, n => n.add_tx_area(area))
    }

    fn remove_area(&mut self, area: AreaId) -> Result<(), Error> {
        each!(self, n => n.remove_area(area))
    }

    fn rx_space(&self) -> usize {
        each!(self, n => n.rx_space())
    }

    fn tx_space(&self) -> usize {
        each!(self, n => n.tx_space())
    }

    fn rx_post(&mut self, area: AreaId, empty: &[IoRec]) -> Result<usize, Error> {
        each!(self, n => n.rx_post(area, empty))
    }

    fn rx_poll(&mut self, full: &mut [IoRec]) -> Option<Batch> {
        each!(self, n => n.rx_poll(full))
    }

    fn tx_submit(&mut self, area: AreaId, recs: &[IoRec]) -> Result<usize, Error> {
        each!(self, n => n.tx_submit(area, recs))
    }

    fn tx_reclaim(&mut self, done: &mut [IoRec]) -> Option<Batch> {
        each!(self, n => n.tx_reclaim(done))
    }

    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        each!(self, n => n.event_fd())
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        each!(self, n => n.wait(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_pick_their_driver() {
        let id = |vendor, device| PciId { vendor, device };
        assert_eq!(
            DriverKind::for_id(id(0x8086, 0x100e)),
            Some(DriverKind::E1000)
        );
        assert_eq!(
            DriverKind::for_id(id(0x8086, 0x1008)),
            Some(DriverKind::E1000)
        );
        assert_eq!(
            DriverKind::for_id(id(0x1af4, 0x1041)),
            Some(DriverKind::VirtioNet)
        );
        assert_eq!(
            DriverKind::for_id(id(0x1af4, 0x1000)),
            Some(DriverKind::VirtioNet)
        );
        // virtio-blk, e1000e: no driver here.
        assert_eq!(DriverKind::for_id(id(0x1af4, 0x1042)), None);
        assert_eq!(DriverKind::for_id(id(0x8086, 0x10d3)), None);
    }

    #[test]
    fn nics_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<AnyNic>();
        send::<VirtioNet>();
    }

    #[test]
    fn interrupts_switch_both_configs() {
        let c = AnyConfig::default().with_interrupts(true);
        assert!(c.e1000.interrupts && c.virtio_net.interrupts);
    }

    #[test]
    fn a_missing_device_is_named_before_anything_else() {
        let paths = SysPaths {
            sys: "/nonexistent-sys".into(),
            dev_vfio: "/nonexistent-dev-vfio".into(),
        };
        let addr: PciAddress = "0000:00:03.0".parse().unwrap();
        assert!(matches!(
            AnyNic::open_with(&paths, addr, &AnyConfig::default()),
            Err(Error::NoSuchDevice { .. })
        ));
    }
}
