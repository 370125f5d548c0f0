//! `rbufnic list`: the PCI network devices sysfs shows, with their driver binding, IOMMU
//! group and whether VFIO could take the group.

use std::path::Path;

use driver::PciAddress;
use driver::pci::SysPaths;

/// PCI base class of network controllers (class code `0x02xxxx`).
const CLASS_NETWORK: u32 = 0x02;

/// One network device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetDevice {
    /// Its PCI address.
    pub addr: PciAddress,
    /// Vendor and device ID (`8086:100e`), or `?` if unreadable.
    pub id: String,
    /// The kernel driver it is bound to.
    pub driver: Option<String>,
    /// Its IOMMU group (`None`: the IOMMU is off).
    pub group: Option<u32>,
    /// Devices in the group bound to drivers that keep VFIO from using it, as
    /// `address (driver)`; empty if the group is viable.
    pub blockers: Vec<String>,
    /// Kernel network interfaces on it (`eth0`), when a kernel driver has it.
    pub interfaces: Vec<String>,
}

impl NetDevice {
    /// Whether `rbufnic fwd` can open it now: bound to vfio-pci, in a viable group.
    pub fn usable(&self) -> bool {
        self.driver.as_deref() == Some("vfio-pci")
            && self.group.is_some()
            && self.blockers.is_empty()
    }
}

/// The network devices under `paths.sys`, in address order.
pub fn network_devices(paths: &SysPaths) -> std::io::Result<Vec<NetDevice>> {
    let dir = paths.sys.join("bus/pci/devices");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(addr) = name.parse::<PciAddress>() else {
            continue;
        };
        let Some(class) = read_hex(&entry.path().join("class")) else {
            continue;
        };
        if class >> 16 != CLASS_NETWORK {
            continue;
        }
        let group = paths.iommu_group(addr);
        let mut interfaces: Vec<String> = std::fs::read_dir(entry.path().join("net"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        interfaces.sort();
        out.push(NetDevice {
            addr,
            id: paths
                .id(addr)
                .map_or_else(|_| "?".into(), |id| id.to_string()),
            driver: paths.driver(addr),
            group,
            blockers: group.map(|g| paths.group_blockers(g)).unwrap_or_default(),
            interfaces,
        });
    }
    out.sort_by_key(|d| d.addr.to_string());
    Ok(out)
}

fn read_hex(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// The listing as lines of text: a header, then one line per device.
pub fn format(devices: &[NetDevice]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<13} {:<10} {:<12} {:<6} {}",
        "PCI", "ID", "DRIVER", "GROUP", "VFIO"
    )];
    for d in devices {
        let group = d.group.map_or_else(|| "-".into(), |g| g.to_string());
        let vfio = if d.usable() {
            "ready".to_string()
        } else if d.group.is_none() {
            "no IOMMU group (IOMMU off?)".to_string()
        } else if d.blockers.is_empty() {
            "viable group; bind the device to vfio-pci".to_string()
        } else {
            format!("group not viable: {}", d.blockers.join(", "))
        };
        let ifaces = if d.interfaces.is_empty() {
            String::new()
        } else {
            format!(" [{}]", d.interfaces.join(", "))
        };
        lines.push(format!(
            "{:<13} {:<10} {:<12} {:<6} {vfio}{ifaces}",
            d.addr.to_string(),
            d.id,
            d.driver.as_deref().unwrap_or("-"),
            group
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// A fake sysfs with two NICs and a bridge under a temporary directory.
    fn fake_sys() -> PathBuf {
        let root = std::env::temp_dir().join(format!("rbufnic-list-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let devs = root.join("bus/pci/devices");
        let drivers = root.join("bus/pci/drivers");
        let groups = root.join("kernel/iommu_groups");
        for (addr, class, driver, group) in [
            ("0000:00:03.0", "0x020000", "vfio-pci", 3),
            ("0000:00:04.0", "0x020000", "e1000", 4),
            ("0000:00:00.0", "0x060000", "", 0),
        ] {
            let d = devs.join(addr);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
            std::fs::write(d.join("vendor"), "0x8086\n").unwrap();
            std::fs::write(d.join("device"), "0x100e\n").unwrap();
            if !driver.is_empty() {
                std::fs::create_dir_all(drivers.join(driver)).unwrap();
                symlink(drivers.join(driver), d.join("driver")).unwrap();
            }
            let g = groups.join(group.to_string());
            std::fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&d, g.join("devices").join(addr)).unwrap();
            symlink(&g, d.join("iommu_group")).unwrap();
            if driver == "e1000" {
                std::fs::create_dir_all(d.join("net/eth0")).unwrap();
            }
        }
        root
    }

    #[test]
    fn lists_network_devices_with_binding_group_and_viability() {
        let root = fake_sys();
        let paths = SysPaths {
            sys: root.clone(),
            dev_vfio: root.join("dev-vfio"),
        };
        let devices = network_devices(&paths).unwrap();
        assert_eq!(devices.len(), 2, "{devices:?}");
        assert_eq!(devices[0].addr.to_string(), "0000:00:03.0");
        assert_eq!(devices[0].id, "8086:100e");
        assert!(devices[0].usable());
        assert_eq!(devices[1].driver.as_deref(), Some("e1000"));
        assert_eq!(devices[1].group, Some(4));
        assert_eq!(
            devices[1].blockers,
            vec!["0000:00:04.0 (e1000)".to_string()]
        );
        assert!(!devices[1].usable());
        let lines = format(&devices);
        assert!(
            lines[1].contains("vfio-pci") && lines[1].ends_with("ready"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("group not viable: 0000:00:04.0 (e1000) [eth0]"),
            "{lines:?}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
