//! Feature negotiation (2.2, 3.1.1 steps 4-5): which of the device's feature bits this
//! driver accepts, and which it cannot do without.

#![forbid(unsafe_code)]

use super::regs::*;

/// A feature bit the driver knows, with its specification name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Bit number.
    pub bit: u32,
    /// Specification name.
    pub name: &'static str,
}

impl Feature {
    const fn new(bit: u32, name: &'static str) -> Feature {
        Feature { bit, name }
    }

    /// The bit as a mask.
    pub const fn mask(self) -> u64 {
        1 << self.bit
    }
}

/// Features without which the driver refuses the device, and why.
pub const REQUIRED: [(Feature, &str); 2] = [
    (
        Feature::new(VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"),
        "this driver speaks only the virtio 1.x interface",
    ),
    (
        Feature::new(VIRTIO_F_ACCESS_PLATFORM, "VIRTIO_F_ACCESS_PLATFORM"),
        "without it the device bypasses the IOMMU and would DMA to guest-physical addresses \
         (QEMU: add iommu_platform=on to the -device)",
    ),
];

/// Features the driver uses when offered.
pub const WANTED: [Feature; 5] = [
    Feature::new(VIRTIO_NET_F_MAC, "VIRTIO_NET_F_MAC"),
    Feature::new(VIRTIO_NET_F_STATUS, "VIRTIO_NET_F_STATUS"),
    Feature::new(VIRTIO_RING_F_EVENT_IDX, "VIRTIO_RING_F_EVENT_IDX"),
    Feature::new(VIRTIO_NET_F_CTRL_VQ, "VIRTIO_NET_F_CTRL_VQ"),
    Feature::new(VIRTIO_NET_F_CTRL_RX, "VIRTIO_NET_F_CTRL_RX"),
];

/// A required feature the device does not offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The feature.
    pub feature: Feature,
    /// Why the driver needs it.
    pub why: &'static str,
}

/// The features to write to `driver_feature`: every required one (or the first missing
/// one as an error) plus the wanted ones the device offers. Nothing else, whatever the
/// device offers: a bit accepted is a promise to handle it.
pub fn negotiate(offered: u64) -> Result<u64, Missing> {
    let mut accepted = 0;
    for (feature, why) in REQUIRED {
        if offered & feature.mask() == 0 {
            return Err(Missing { feature, why });
        }
        accepted |= feature.mask();
    }
    for feature in WANTED {
        accepted |= offered & feature.mask();
    }
    // 5.1.3.1: CTRL_RX depends on CTRL_VQ; the queue alone is of no use to this driver.
    if !has(accepted, VIRTIO_NET_F_CTRL_RX) {
        accepted &= !(1 << VIRTIO_NET_F_CTRL_VQ | 1 << VIRTIO_NET_F_CTRL_RX);
    } else if !has(accepted, VIRTIO_NET_F_CTRL_VQ) {
        accepted &= !(1 << VIRTIO_NET_F_CTRL_RX);
    }
    Ok(accepted)
}

/// Whether `features` has `bit`.
pub fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU 7.2's `virtio-net-pci,disable-legacy=on,iommu_platform=on` with a UDP
    /// socket netdev offered in the guest (the driver logs it at debug level): MAC,
    /// MRG_RXBUF, STATUS, CTRL_VQ, CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE,
    /// CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS, INDIRECT_DESC, EVENT_IDX, VERSION_1,
    /// ACCESS_PLATFORM and bit 40. No checksum or GSO offloads: that netdev has no vnet
    /// header.
    const QEMU: u64 = 0x103_30bf_8024;

    #[test]
    fn accepts_exactly_what_it_handles() {
        let got = negotiate(QEMU).unwrap();
        // What the driver accepted from that device, as logged in the same run.
        assert_eq!(got, 0x3_2007_0020);
        assert_eq!(
            got,
            (1 << VIRTIO_NET_F_MAC)
                | (1 << VIRTIO_NET_F_STATUS)
                | (1 << VIRTIO_NET_F_CTRL_VQ)
                | (1 << VIRTIO_NET_F_CTRL_RX)
                | (1 << VIRTIO_RING_F_EVENT_IDX)
                | (1 << VIRTIO_F_VERSION_1)
                | (1 << VIRTIO_F_ACCESS_PLATFORM)
        );
        // Offloads, mergeable buffers, multiqueue, indirect and packed rings stay off,
        // whatever the device offers.
        let all = negotiate(u64::MAX).unwrap();
        for bit in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_MQ,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_F_RING_PACKED,
        ] {
            assert!(!has(got, bit) && !has(all, bit), "bit {bit}");
        }
        assert_eq!(all, got);
    }

    #[test]
    fn wanted_features_are_optional() {
        let bare = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_ACCESS_PLATFORM);
        assert_eq!(negotiate(bare).unwrap(), bare);
    }

    #[test]
    fn the_control_queue_comes_only_with_rx_mode_commands() {
        let base = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_ACCESS_PLATFORM);
        let vq = 1 << VIRTIO_NET_F_CTRL_VQ;
        let rx = 1 << VIRTIO_NET_F_CTRL_RX;
        assert_eq!(negotiate(base | vq | rx).unwrap(), base | vq | rx);
        // A queue without RX mode commands is of no use; RX mode without the queue is
        // not allowed (5.1.3.1).
        assert_eq!(negotiate(base | vq).unwrap(), base);
        assert_eq!(negotiate(base | rx).unwrap(), base);
    }

    #[test]
    fn no_access_platform_is_refused_with_the_reason() {
        let err = negotiate(QEMU & !(1 << VIRTIO_F_ACCESS_PLATFORM)).unwrap_err();
        assert_eq!(err.feature.name, "VIRTIO_F_ACCESS_PLATFORM");
        assert_eq!(err.feature.bit, 33);
        assert!(err.why.contains("iommu_platform=on"), "{}", err.why);
        let err = negotiate(QEMU & !(1 << VIRTIO_F_VERSION_1)).unwrap_err();
        assert_eq!(err.feature.name, "VIRTIO_F_VERSION_1");
    }
}
