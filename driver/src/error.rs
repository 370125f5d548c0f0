//! The crate's error type: one enum, every variant keeps the values involved.
//!
//! Set-up errors (`NoVfio`, `NotBoundToVfio`, `GroupNotViable`, `WrongDevice`,
//! `BadPciAddress`, ...) print as one line that says what is wrong and how to fix it, so an
//! app can show `{err}` and exit non-zero.

#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use crate::nic::AreaId;
use crate::pci::PciAddress;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rbuf channel of a port failed (the application left, or broke the protocol).
    #[error("channel: {0}")]
    Channel(#[source] rbuf::Error),
    /// A PCI address that does not parse.
    #[error("malformed PCI address {input:?}: {reason} (expected DDDD:BB:DD.F, e.g. 0000:00:03.0)")]
    BadPciAddress {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The VFIO container device does not exist.
    #[error(
        "no {}: VFIO is not available (modprobe vfio-pci; the IOMMU must be on, e.g. intel_iommu=on)",
        path.display()
    )]
    NoVfio {
        /// The path looked for.
        path: PathBuf,
    },
    /// No PCI device has this address.
    #[error("no PCI device {addr} (see lspci -D)")]
    NoSuchDevice {
        /// The address asked for.
        addr: PciAddress,
    },
    /// The device is not one this driver supports.
    #[error(
        "{addr} is {vendor:04x}:{device:04x}, not a device the {driver} driver supports ({supported})"
    )]
    WrongDevice {
        /// The device.
        addr: PciAddress,
        /// Its PCI vendor ID.
        vendor: u16,
        /// Its PCI device ID.
        device: u16,
        /// The driver that refused it.
        driver: &'static str,
        /// The IDs the driver supports.
        supported: String,
    },
    /// The device is bound to another kernel driver (or none).
    #[error(
        "{addr} is bound to {}, not vfio-pci (echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; \
         echo {addr} > /sys/bus/pci/devices/{addr}/driver/unbind; echo {addr} > /sys/bus/pci/drivers_probe)",
        driver.as_deref().unwrap_or("no driver")
    )]
    NotBoundToVfio {
        /// The device.
        addr: PciAddress,
        /// The driver it is bound to, if any.
        driver: Option<String>,
    },
    /// The device has no IOMMU group: the IOMMU is off.
    #[error(
        "{addr} has no IOMMU group: the IOMMU is off (boot with intel_iommu=on, or amd_iommu=on)"
    )]
    NoIommuGroup {
        /// The device.
        addr: PciAddress,
    },
    /// Another device of the IOMMU group is bound to a host driver.
    #[error(
        "IOMMU group {group} of {addr} is not viable: bind {} to vfio-pci too (or unbind them)",
        if blockers.is_empty() { "every device of the group".to_string() } else { blockers.join(", ") }
    )]
    GroupNotViable {
        /// The device asked for.
        addr: PciAddress,
        /// Its IOMMU group.
        group: u32,
        /// Devices of the group bound to other drivers, as `address (driver)`.
        blockers: Vec<String>,
    },
    /// A VFIO operation failed (from `vfio-ioctls`).
    #[error("{op}: {source}")]
    Vfio {
        /// What was attempted.
        op: &'static str,
        /// The error `vfio-ioctls` reported.
        source: vfio_ioctls::VfioError,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Reading or writing PCI configuration space failed.
    #[error("config space {op} of {len_bytes} bytes at {offset:#x}: {source}")]
    ConfigSpace {
        /// `read` or `write`.
        op: &'static str,
        /// Offset into configuration space.
        offset: u64,
        /// Access width.
        len_bytes: usize,
        /// The OS error (or short transfer).
        source: io::Error,
    },
    /// A BAR that cannot serve as the register file.
    #[error("BAR{index}: {reason} (size {size_bytes:#x}, flags {flags:#x})")]
    BadBar {
        /// BAR number.
        index: u32,
        /// What is wrong.
        reason: &'static str,
        /// Size reported by VFIO.
        size_bytes: u64,
        /// VFIO region flags.
        flags: u32,
    },
    /// No IOVA range is left that can hold a mapping of this size.
    #[error("no free IOVA range for {len_bytes} bytes")]
    IovaExhausted {
        /// Size asked for.
        len_bytes: u64,
    },
    /// `VFIO_IOMMU_MAP_DMA` or `VFIO_IOMMU_UNMAP_DMA` failed.
    #[error("DMA {op} of {len_bytes} bytes at IOVA {iova:#x}: {source}")]
    Dma {
        /// `map` or `unmap`.
        op: &'static str,
        /// The IOVA.
        iova: u64,
        /// Size of the mapping.
        len_bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// Memory of the driver (descriptor rings) could not be allocated.
    #[error("allocating {what}: {source}")]
    Alloc {
        /// What for.
        what: &'static str,
        /// The error from `rbuf`.
        source: rbuf::Error,
    },
    /// A configuration value that cannot be used.
    #[error("invalid configuration: {what} = {value} ({expected})")]
    BadConfig {
        /// The setting.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        expected: &'static str,
    },
    /// An RX area must be writable in this process (device-writable DMA pins with write intent).
    #[error("RX data area of {len_bytes} bytes is mapped read-only here; the NIC must write it")]
    AreaNotWritable {
        /// Size of the area.
        len_bytes: usize,
    },
    /// Too many data areas registered.
    #[error("at most {max} data areas per NIC")]
    TooManyAreas {
        /// The limit.
        max: usize,
    },
    /// An area ID that names no registered area of the right direction.
    #[error("{area:?} is not a registered {direction} area of this NIC")]
    UnknownArea {
        /// The ID given.
        area: AreaId,
        /// `RX` or `TX`.
        direction: &'static str,
    },
    /// An area still has buffers posted to or in flight on the NIC.
    #[error("{area:?} still has {in_flight} buffers on the NIC")]
    AreaBusy {
        /// The area.
        area: AreaId,
        /// Buffers (RX) or IOrecs (TX) not yet returned.
        in_flight: usize,
    },
    /// An IOrec failed validation against its area; the ones before it were accepted.
    #[error("IOrec {index} refused after {accepted} accepted: {source}")]
    BadIoRec {
        /// Position in the batch.
        index: usize,
        /// IOrecs accepted before it.
        accepted: usize,
        /// Why.
        source: rbuf::IoRecError,
    },
    /// An IOrec cannot become descriptors for another reason; the ones before it were accepted.
    #[error("IOrec {index} refused after {accepted} accepted: {reason} ({value}, limit {limit})")]
    Unusable {
        /// Position in the batch.
        index: usize,
        /// IOrecs accepted before it.
        accepted: usize,
        /// What is wrong.
        reason: &'static str,
        /// The value that is wrong.
        value: u64,
        /// The limit it breaks.
        limit: u64,
    },
    /// The device did not finish something in time.
    #[error("{what} did not complete within {waited_ms} ms")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        waited_ms: u64,
    },
    /// The operation needs interrupts, which are not set up.
    #[error("interrupts are not enabled on this NIC (polling mode)")]
    NoInterrupts,
    /// A virtio device does not offer a feature this driver cannot do without.
    #[error("{addr}: the virtio device does not offer {feature} (feature bit {bit}): {why}")]
    VirtioFeatureMissing {
        /// The device.
        addr: PciAddress,
        /// The specification name of the feature.
        feature: &'static str,
        /// Its bit number.
        bit: u32,
        /// Why the driver needs it, and how to get it.
        why: &'static str,
    },
    /// A virtio device whose PCI capabilities cannot be used.
    #[error("{addr}: virtio capabilities: {source}")]
    VirtioCapabilities {
        /// The device.
        addr: PciAddress,
        /// What is wrong with them.
        source: crate::virtio::caps::CapError,
    },
    /// A virtio device that does not do what the specification requires of it.
    #[error("{addr}: virtio device {what} ({value:#x})")]
    Virtio {
        /// The device.
        addr: PciAddress,
        /// What it did or did not do.
        what: &'static str,
        /// The value involved (a status byte, a queue index, a size).
        value: u64,
    },
    /// A test hook was misused.
    #[error("fault injection: {0}")]
    FaultInjection(&'static str),
}

impl Error {
    /// For errors from [`crate::Nic::rx_post`] and [`crate::Nic::tx_submit`]: how many IOrecs
    /// of the batch were accepted before the refused one (which is at that index).
    pub fn accepted(&self) -> Option<usize> {
        match self {
            Error::BadIoRec { accepted, .. } | Error::Unusable { accepted, .. } => Some(*accepted),
            _ => None,
        }
    }

    pub(crate) fn sys(op: &'static str, errno: rustix::io::Errno) -> Error {
        Error::Sys {
            op,
            source: io::Error::from_raw_os_error(errno.raw_os_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> PciAddress {
        "0000:00:03.0".parse().unwrap()
    }

    #[test]
    fn setup_errors_are_one_line_and_name_the_fix() {
        let errors = [
            Error::NoVfio {
                path: "/dev/vfio/vfio".into(),
            },
            Error::NotBoundToVfio {
                addr: addr(),
                driver: Some("e1000".into()),
            },
            Error::NotBoundToVfio {
                addr: addr(),
                driver: None,
            },
            Error::GroupNotViable {
                addr: addr(),
                group: 7,
                blockers: vec!["0000:00:04.0 (e1000)".into()],
            },
            Error::WrongDevice {
                addr: addr(),
                vendor: 0x1af4,
                device: 0x1041,
                driver: "e1000",
                supported: "8086:100e".into(),
            },
            "00:3.0".parse::<PciAddress>().unwrap_err(),
            Error::NoIommuGroup { addr: addr() },
        ];
        let expected = [
            "no /dev/vfio/vfio: VFIO is not available",
            "0000:00:03.0 is bound to e1000, not vfio-pci (echo vfio-pci > /sys/bus/pci/devices/0000:00:03.0/driver_override",
            "0000:00:03.0 is bound to no driver, not vfio-pci",
            "IOMMU group 7 of 0000:00:03.0 is not viable: bind 0000:00:04.0 (e1000) to vfio-pci too",
            "0000:00:03.0 is 1af4:1041, not a device the e1000 driver supports (8086:100e)",
            "malformed PCI address \"00:3.0\": device must be 2 hex digits",
            "0000:00:03.0 has no IOMMU group: the IOMMU is off",
        ];
        for (err, start) in errors.iter().zip(expected) {
            let text = err.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(
                text.starts_with(start),
                "{text:?} does not start with {start:?}"
            );
        }
    }

    #[test]
    fn batch_errors_say_how_many_were_accepted() {
        let err = Error::Unusable {
            index: 3,
            accepted: 3,
            reason: "RX buffer shorter than the receive buffer size",
            value: 100,
            limit: 2048,
        };
        assert_eq!(err.accepted(), Some(3));
        assert_eq!(
            err.to_string(),
            "IOrec 3 refused after 3 accepted: RX buffer shorter than the receive buffer size (100, limit 2048)"
        );
        assert_eq!(Error::NoInterrupts.accepted(), None);
    }
}
