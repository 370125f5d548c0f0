//! PCI addresses, configuration-space register names, and the sysfs checks made before a
//! device is opened through VFIO (so that each set-up mistake gets its own clear error).

#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;

/// Configuration-space registers (PCI Local Bus Specification 3.0, section 6.1).
pub mod config {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u64 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u64 = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: u64 = 0x04;
    /// Status register (16 bits).
    pub const STATUS: u64 = 0x06;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: u64 = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: u64 = 0x2e;
    /// Interrupt pin (8 bits; 0 = none, 1 = INTA#).
    pub const INTERRUPT_PIN: u64 = 0x3d;

    /// COMMAND: respond to memory-space accesses (BARs).
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// COMMAND: the device may master the bus (DMA).
    pub const COMMAND_MASTER: u16 = 1 << 2;
    /// COMMAND: INTx emulation disabled.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// STATUS: INTx asserted.
    pub const STATUS_INTERRUPT: u16 = 1 << 3;
}

/// Subsystem vendor ID QEMU gives its emulated devices (Red Hat / Qumranet).
pub const QEMU_SUBSYSTEM_VENDOR: u16 = 0x1af4;

/// A PCI function address, `domain:bus:device.function`, as in sysfs (`0000:00:03.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI segment (domain).
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl PciAddress {
    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), hexadecimal, case-insensitive.
    pub fn parse(input: &str) -> Result<PciAddress, Error> {
        let bad = |reason| Error::BadPciAddress {
            input: input.to_string(),
            reason,
        };
        let (rest, function) = input
            .rsplit_once('.')
            .ok_or_else(|| bad("no '.' before the function number"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, s] => (Some(*d), *b, *s),
            [b, s] => (None, *b, *s),
            _ => return Err(bad("expected domain:bus:device.function")),
        };
        let hex = |s: &str, digits: std::ops::RangeInclusive<usize>, reason| {
            if !digits.contains(&s.len()) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(reason));
            }
            u32::from_str_radix(s, 16).map_err(|_| bad(reason))
        };
        let domain = match domain {
            Some(d) => hex(d, 4..=8, "domain must be 4 to 8 hex digits")?,
            None => 0,
        };
        let bus = hex(bus, 2..=2, "bus must be 2 hex digits")? as u8;
        let device = hex(device, 2..=2, "device must be 2 hex digits")?;
        if device > 0x1f {
            return Err(bad("device number above 1f"));
        }
        let function = hex(function, 1..=1, "function must be 1 digit")?;
        if function > 7 {
            return Err(bad("function number above 7"));
        }
        Ok(PciAddress {
            domain,
            bus,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl FromStr for PciAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<PciAddress, Error> {
        PciAddress::parse(s)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// A PCI vendor/device ID pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciId {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
}

impl fmt::Display for PciId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.device)
    }
}

/// Where the kernel shows PCI devices and VFIO groups. Tests point it at a fake tree.
#[derive(Clone, Debug)]
pub struct SysPaths {
    /// sysfs mount point, normally `/sys`.
    pub sys: PathBuf,
    /// VFIO device directory, normally `/dev/vfio`.
    pub dev_vfio: PathBuf,
}

impl Default for SysPaths {
    fn default() -> SysPaths {
        SysPaths {
            sys: PathBuf::from("/sys"),
            dev_vfio: PathBuf::from("/dev/vfio"),
        }
    }
}

/// Drivers the kernel accepts in a VFIO group next to vfio-pci (`vfio_dev_driver_allowed`).
const GROUP_FRIENDLY_DRIVERS: [&str; 3] = ["vfio-pci", "pci-stub", "pcieport"];

/// What the preflight checks found out about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preflight {
    /// The sysfs directory of the device (what `vfio-ioctls` opens the device by).
    pub sysfs_dir: PathBuf,
    /// Vendor and device ID.
    pub id: PciId,
    /// The IOMMU group number.
    pub group: u32,
}

impl SysPaths {
    /// `/sys/bus/pci/devices/<addr>`.
    pub fn device_dir(&self, addr: PciAddress) -> PathBuf {
        self.sys.join("bus/pci/devices").join(addr.to_string())
    }

    /// `/dev/vfio/vfio`, the container device.
    pub fn container(&self) -> PathBuf {
        self.dev_vfio.join("vfio")
    }

    /// Vendor and device ID from sysfs.
    pub fn id(&self, addr: PciAddress) -> Result<PciId, Error> {
        let dir = self.device_dir(addr);
        Ok(PciId {
            vendor: read_hex16(&dir.join("vendor"))?,
            device: read_hex16(&dir.join("device"))?,
        })
    }

    /// The kernel driver the device is bound to, if any.
    pub fn driver(&self, addr: PciAddress) -> Option<String> {
        link_name(&self.device_dir(addr).join("driver"))
    }

    /// The device's IOMMU group, if the IOMMU is on.
    pub fn iommu_group(&self, addr: PciAddress) -> Option<u32> {
        link_name(&self.device_dir(addr).join("iommu_group"))?
            .parse()
            .ok()
    }

    /// Devices of an IOMMU group bound to a driver that makes the group non-viable, as
    /// `address (driver)`.
    pub fn group_blockers(&self, group: u32) -> Vec<String> {
        let dir = self
            .sys
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut blockers: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let driver = link_name(&e.path().join("driver"))?;
                (!GROUP_FRIENDLY_DRIVERS.contains(&driver.as_str()))
                    .then(|| format!("{name} ({driver})"))
            })
            .collect();
        blockers.sort();
        blockers
    }

    /// Checks, in this order, that the device exists, has one of the `supported` IDs, that
    /// VFIO exists, that the device is bound to vfio-pci, has an IOMMU group, and that the
    /// group is viable. Each failure is its own [`Error`] variant.
    pub fn preflight(
        &self,
        addr: PciAddress,
        driver: &'static str,
        supported: &[PciId],
    ) -> Result<Preflight, Error> {
        let sysfs_dir = self.device_dir(addr);
        if !sysfs_dir.exists() {
            return Err(Error::NoSuchDevice { addr });
        }
        let id = self.id(addr)?;
        if !supported.contains(&id) {
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
        let container = self.container();
        if !container.exists() {
            return Err(Error::NoVfio { path: container });
        }
        let bound = self.driver(addr);
        if bound.as_deref() != Some("vfio-pci") {
            return Err(Error::NotBoundToVfio {
                addr,
                driver: bound,
            });
        }
        let group = self.iommu_group(addr).ok_or(Error::NoIommuGroup { addr })?;
        let blockers = self.group_blockers(group);
        if !blockers.is_empty() {
            return Err(Error::GroupNotViable {
                addr,
                group,
                blockers,
            });
        }
        let group_dev = self.dev_vfio.join(group.to_string());
        if !group_dev.exists() {
            return Err(Error::NoVfio { path: group_dev });
        }
        Ok(Preflight {
            sysfs_dir,
            id,
            group,
        })
    }
}

fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn read_hex16(path: &Path) -> Result<u16, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Sys {
        op: "read PCI ID from sysfs",
        source,
    })?;
    let digits = text.trim().trim_start_matches("0x");
    u16::from_str_radix(digits, 16).map_err(|_| Error::Sys {
        op: "parse PCI ID from sysfs",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.trim().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn parses_and_prints_addresses() {
        let a: PciAddress = "0000:00:03.0".parse().unwrap();
        assert_eq!(
            a,
            PciAddress {
                domain: 0,
                bus: 0,
                device: 3,
                function: 0
            }
        );
        assert_eq!(a.to_string(), "0000:00:03.0");
        let b: PciAddress = "1f:1F.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:1f:1f.7");
        let c: PciAddress = "10000:a0:00.1".parse().unwrap();
        assert_eq!(c.domain, 0x10000);
        assert_eq!(c.to_string(), "10000:a0:00.1");
    }

    #[test]
    fn refuses_malformed_addresses_with_a_reason() {
        let cases = [
            ("", "no '.' before the function number"),
            ("0000:00:03", "no '.' before the function number"),
            ("0000:00:03.8", "function number above 7"),
            ("0000:00:20.0", "device number above 1f"),
            ("0000:0:03.0", "bus must be 2 hex digits"),
            ("0000:00:3.0", "device must be 2 hex digits"),
            ("00:00:00:03.0", "expected domain:bus:device.function"),
            ("000:00:03.0", "domain must be 4 to 8 hex digits"),
            ("0000:0g:03.0", "bus must be 2 hex digits"),
            ("0000:00:03.+", "function must be 1 digit"),
            ("0000:+0:03.0", "bus must be 2 hex digits"),
            ("eth0", "no '.' before the function number"),
        ];
        for (input, reason) in cases {
            match PciAddress::parse(input) {
                Err(Error::BadPciAddress {
                    input: i,
                    reason: r,
                }) => {
                    assert_eq!((i.as_str(), r), (input, reason));
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    /// A throw-away sysfs + /dev/vfio tree.
    struct FakeSys {
        root: PathBuf,
        paths: SysPaths,
    }

    impl FakeSys {
        fn new() -> FakeSys {
            static N: AtomicUsize = AtomicUsize::new(0);
            let root = std::env::temp_dir().join(format!(
                "driver-fakesys-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
            std::fs::create_dir_all(root.join("sys/bus/pci/drivers")).unwrap();
            std::fs::create_dir_all(root.join("dev/vfio")).unwrap();
            let paths = SysPaths {
                sys: root.join("sys"),
                dev_vfio: root.join("dev/vfio"),
            };
            FakeSys { root, paths }
        }

        fn device(&self, addr: &str, vendor: &str, device: &str, driver: Option<&str>, group: u32) {
            let real = self.root.join("sys/devices/pci0000:00").join(addr);
            std::fs::create_dir_all(&real).unwrap();
            std::fs::write(real.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(real.join("device"), format!("{device}\n")).unwrap();
            if let Some(driver) = driver {
                let d = self.root.join("sys/bus/pci/drivers").join(driver);
                std::fs::create_dir_all(&d).unwrap();
                symlink(&d, real.join("driver")).unwrap();
            }
            let g = self
                .root
                .join("sys/kernel/iommu_groups")
                .join(group.to_string());
            std::fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&g, real.join("iommu_group")).unwrap();
            symlink(&real, g.join("devices").join(addr)).unwrap();
            symlink(&real, self.root.join("sys/bus/pci/devices").join(addr)).unwrap();
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    const E1000: [PciId; 1] = [PciId {
        vendor: 0x8086,
        device: 0x100e,
    }];

    #[test]
    fn preflight_names_each_setup_mistake() {
        let fake = FakeSys::new();
        let p = &fake.paths;
        let a: PciAddress = "0000:00:03.0".parse().unwrap();
        let missing: PciAddress = "0000:00:09.0".parse().unwrap();
        assert!(matches!(
            p.preflight(missing, "e1000", &E1000),
            Err(Error::NoSuchDevice { .. })
        ));

        fake.device("0000:00:03.0", "0x8086", "0x100e", Some("e1000"), 3);
        // No /dev/vfio/vfio yet.
        match p.preflight(a, "e1000", &E1000) {
            Err(Error::NoVfio { path }) => assert!(path.ends_with("dev/vfio/vfio")),
            other => panic!("{other:?}"),
        }
        std::fs::write(p.container(), "").unwrap();
        match p.preflight(a, "e1000", &E1000) {
            Err(Error::NotBoundToVfio { driver, .. }) => {
                assert_eq!(driver.as_deref(), Some("e1000"))
            }
            other => panic!("{other:?}"),
        }

        fake.device("0000:00:04.0", "0x8086", "0x100e", Some("vfio-pci"), 4);
        fake.device("0000:00:05.0", "0x8086", "0x100e", Some("e1000"), 4);
        let b: PciAddress = "0000:00:04.0".parse().unwrap();
        match p.preflight(b, "e1000", &E1000) {
            Err(Error::GroupNotViable {
                group, blockers, ..
            }) => {
                assert_eq!(group, 4);
                assert_eq!(blockers, vec!["0000:00:05.0 (e1000)".to_string()]);
            }
            other => panic!("{other:?}"),
        }

        fake.device("0000:00:06.0", "0x1af4", "0x1041", Some("vfio-pci"), 6);
        let c: PciAddress = "0000:00:06.0".parse().unwrap();
        match p.preflight(c, "e1000", &E1000) {
            Err(Error::WrongDevice { vendor, device, .. }) => {
                assert_eq!((vendor, device), (0x1af4, 0x1041));
            }
            other => panic!("{other:?}"),
        }

        fake.device("0000:00:07.0", "0x8086", "0x100e", Some("vfio-pci"), 7);
        let d: PciAddress = "0000:00:07.0".parse().unwrap();
        match p.preflight(d, "e1000", &E1000) {
            Err(Error::NoVfio { path }) => assert!(path.ends_with("dev/vfio/7")),
            other => panic!("{other:?}"),
        }
        std::fs::write(p.dev_vfio.join("7"), "").unwrap();
        let ok = p.preflight(d, "e1000", &E1000).unwrap();
        assert_eq!(ok.group, 7);
        assert_eq!(ok.id, E1000[0]);
        assert!(ok.sysfs_dir.ends_with("0000:00:07.0"));
    }
}
