//! The virtio PCI capabilities (4.1.4): where in which BAR the common configuration,
//! notification area, ISR status and device configuration live. Parsed from a copy of the
//! first 256 bytes of configuration space, so it is testable with byte fixtures.

#![forbid(unsafe_code)]

use super::regs::*;

/// Bytes of standard PCI configuration space (where capabilities live).
pub const CONFIG_SPACE_BYTES: usize = 256;
/// Most capabilities walked before the list is declared looping (256 bytes / 4).
const MAX_CAPS: usize = 64;

/// A structure inside a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapRegion {
    /// BAR number, 0..=5.
    pub bar: u8,
    /// Byte offset in the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}

impl CapRegion {
    /// The end offset, or `None` if it overflows.
    pub fn end(&self) -> Option<u64> {
        Some(u64::from(self.offset) + u64::from(self.length))
    }
}

/// What the capability list says about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCaps {
    /// `VIRTIO_PCI_CAP_COMMON_CFG`.
    pub common: CapRegion,
    /// `VIRTIO_PCI_CAP_NOTIFY_CFG`.
    pub notify: CapRegion,
    /// `notify_off_multiplier` of the notify capability.
    pub notify_off_multiplier: u32,
    /// `VIRTIO_PCI_CAP_ISR_CFG`.
    pub isr: CapRegion,
    /// `VIRTIO_PCI_CAP_DEVICE_CFG`.
    pub device: CapRegion,
    /// MSI-X table size (vectors), if the device has an MSI-X capability.
    pub msix_vectors: Option<u16>,
}

/// Why a capability list cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// The STATUS register says there is no capability list.
    #[error("no PCI capability list")]
    NoList,
    /// A pointer outside configuration space or misaligned, or a list that loops.
    #[error("malformed capability list at {at:#x}")]
    Malformed {
        /// Where.
        at: usize,
    },
    /// A required virtio structure is missing.
    #[error("no usable virtio {what} capability (not a modern virtio-pci device?)")]
    Missing {
        /// Which one.
        what: &'static str,
    },
}

fn u16_at(cfg: &[u8; CONFIG_SPACE_BYTES], at: usize) -> u16 {
    u16::from_le_bytes([cfg[at], cfg[at + 1]])
}

fn u32_at(cfg: &[u8; CONFIG_SPACE_BYTES], at: usize) -> u32 {
    u32::from_le_bytes([cfg[at], cfg[at + 1], cfg[at + 2], cfg[at + 3]])
}

/// Walks the capability list. The first capability of each type that the driver can use
/// wins (4.1.4.1: "the driver SHOULD use the first one"); ones naming a BAR above 5, or
/// shorter than their structure, are skipped, as are unknown types.
pub fn parse(cfg: &[u8; CONFIG_SPACE_BYTES]) -> Result<VirtioCaps, CapError> {
    if u16_at(cfg, crate::pci::config::STATUS as usize) & PCI_STATUS_CAP_LIST == 0 {
        return Err(CapError::NoList);
    }
    let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
    let mut multiplier = 0;
    let mut msix_vectors = None;
    let mut at = usize::from(cfg[PCI_CAPABILITY_LIST] & !3);
    let mut walked = 0;
    while at != 0 {
        // Capabilities live after the 64-byte header; each needs at least 2 bytes.
        if at < 0x40 || at + 2 > CONFIG_SPACE_BYTES || walked == MAX_CAPS {
            return Err(CapError::Malformed { at });
        }
        walked += 1;
        let id = cfg[at];
        let next = usize::from(cfg[at + 1] & !3);
        if id == PCI_CAP_ID_MSIX && at + 4 <= CONFIG_SPACE_BYTES {
            // Message Control: table size - 1 in bits 10:0.
            msix_vectors = Some((u16_at(cfg, at + 2) & 0x7ff) + 1);
        }
        if id == PCI_CAP_ID_VNDR && at + cap::SIZE <= CONFIG_SPACE_BYTES {
            let cap_len = usize::from(cfg[at + cap::CAP_LEN]);
            let region = CapRegion {
                bar: cfg[at + cap::BAR],
                offset: u32_at(cfg, at + cap::OFFSET),
                length: u32_at(cfg, at + cap::LENGTH),
            };
            let usable = region.bar <= 5 && cap_len >= cap::SIZE;
            match cfg[at + cap::CFG_TYPE] {
                VIRTIO_PCI_CAP_COMMON_CFG if usable && common.is_none() => common = Some(region),
                VIRTIO_PCI_CAP_NOTIFY_CFG
                    if usable
                        && notify.is_none()
                        && cap_len >= cap::NOTIFY_SIZE
                        && at + cap::NOTIFY_SIZE <= CONFIG_SPACE_BYTES =>
                {
                    notify = Some(region);
                    multiplier = u32_at(cfg, at + cap::NOTIFY_OFF_MULTIPLIER);
                }
                VIRTIO_PCI_CAP_ISR_CFG if usable && isr.is_none() => isr = Some(region),
                VIRTIO_PCI_CAP_DEVICE_CFG if usable && device.is_none() => device = Some(region),
                _ => {}
            }
        }
        at = next;
    }
    let need = |r: Option<CapRegion>, what| r.ok_or(CapError::Missing { what });
    Ok(VirtioCaps {
        common: need(common, "common configuration")?,
        notify: need(notify, "notification")?,
        notify_off_multiplier: multiplier,
        isr: need(isr, "ISR status")?,
        device: need(device, "device configuration")?,
        msix_vectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Laid out like QEMU 7.2's `virtio-net-pci,disable-legacy=on`: MSI-X at 0x98, then
    /// five vendor capabilities describing 4 KiB structures in BAR 4.
    fn qemu_like() -> [u8; CONFIG_SPACE_BYTES] {
        let mut c = [0u8; CONFIG_SPACE_BYTES];
        c[0..4].copy_from_slice(&[0xf4, 0x1a, 0x41, 0x10]);
        c[6] = 0x10; // STATUS: capability list
        c[PCI_CAPABILITY_LIST] = 0x98;
        // MSI-X, Message Control table size field 3: four vectors.
        c[0x98..0x9c].copy_from_slice(&[PCI_CAP_ID_MSIX, 0x84, 0x03, 0x00]);
        let mut vendor = |at: usize, next: u8, ty: u8, len: u8, offset: u32, length: u32| {
            c[at] = PCI_CAP_ID_VNDR;
            c[at + 1] = next;
            c[at + 2] = len;
            c[at + 3] = ty;
            c[at + 4] = 4; // BAR 4
            c[at + 8..at + 12].copy_from_slice(&offset.to_le_bytes());
            c[at + 12..at + 16].copy_from_slice(&length.to_le_bytes());
        };
        vendor(0x84, 0x70, VIRTIO_PCI_CAP_PCI_CFG, 20, 0, 0);
        vendor(0x70, 0x60, VIRTIO_PCI_CAP_NOTIFY_CFG, 20, 0x3000, 0x1000);
        vendor(0x60, 0x50, VIRTIO_PCI_CAP_DEVICE_CFG, 16, 0x2000, 0x1000);
        vendor(0x50, 0x40, VIRTIO_PCI_CAP_ISR_CFG, 16, 0x1000, 0x1000);
        vendor(0x40, 0x00, VIRTIO_PCI_CAP_COMMON_CFG, 16, 0x0000, 0x1000);
        c[0x70 + 16..0x70 + 20].copy_from_slice(&4u32.to_le_bytes());
        c
    }

    #[test]
    fn finds_every_structure_of_a_qemu_device() {
        let caps = parse(&qemu_like()).unwrap();
        let r = |offset| CapRegion {
            bar: 4,
            offset,
            length: 0x1000,
        };
        assert_eq!(caps.common, r(0));
        assert_eq!(caps.isr, r(0x1000));
        assert_eq!(caps.device, r(0x2000));
        assert_eq!(caps.notify, r(0x3000));
        assert_eq!(caps.notify_off_multiplier, 4);
        assert_eq!(caps.msix_vectors, Some(4));
    }

    #[test]
    fn the_first_usable_capability_of_a_type_wins() {
        let mut c = qemu_like();
        // Turn the PCI-access capability at 0x84 into a second common configuration in
        // BAR 2: it comes first in the list, so it wins.
        c[0x84 + 3] = VIRTIO_PCI_CAP_COMMON_CFG;
        c[0x84 + 4] = 2;
        c[0x84 + 8] = 0x80;
        assert_eq!(parse(&c).unwrap().common.bar, 2);
        // A BAR number above 5 makes it unusable: the later one is taken.
        c[0x84 + 4] = 6;
        assert_eq!(parse(&c).unwrap().common.bar, 4);
    }

    #[test]
    fn missing_structures_and_broken_lists_are_named() {
        let mut c = qemu_like();
        c[0x50 + 3] = 0x7f; // the ISR capability becomes an unknown type
        assert_eq!(parse(&c), Err(CapError::Missing { what: "ISR status" }));

        let mut c = qemu_like();
        c[6] = 0;
        assert_eq!(parse(&c), Err(CapError::NoList));

        let mut c = qemu_like();
        c[0x40 + 1] = 0x70; // common -> notify again: a loop
        assert!(matches!(parse(&c), Err(CapError::Malformed { .. })));

        let mut c = qemu_like();
        c[0x60 + 1] = 0x20; // into the standard header
        assert_eq!(parse(&c), Err(CapError::Malformed { at: 0x20 }));

        let mut c = qemu_like();
        c[0x70 + 2] = 16; // notify capability too short for its multiplier
        assert_eq!(
            parse(&c),
            Err(CapError::Missing {
                what: "notification"
            })
        );
    }

    #[test]
    fn any_bytes_parse_or_fail_without_panicking() {
        // A cheap fuzz: pseudo-random configuration spaces with the list bit set.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut c = [0u8; CONFIG_SPACE_BYTES];
            for b in c.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            c[6] |= 0x10;
            let _ = parse(&c);
        }
    }
}
