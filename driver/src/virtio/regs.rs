//! Register and constant names of the virtio 1.x specification (OASIS virtio v1.2), as the
//! specification spells them. Section numbers refer to that document.

#![forbid(unsafe_code)]

// 4.1.4 Virtio Structure PCI Capabilities: `struct virtio_pci_cap`.

/// PCI capability ID of a vendor-specific capability (every virtio structure capability).
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// PCI capability ID of MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// PCI STATUS register: the device has a capability list.
pub const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
/// PCI configuration offset of the first capability pointer.
pub const PCI_CAPABILITY_LIST: usize = 0x34;

/// `cfg_type`: common configuration.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type`: notifications.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type`: ISR status.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type`: device-specific configuration.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type`: PCI configuration access (not used: the BARs are mapped).
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

/// `struct virtio_pci_cap` field offsets from the capability's start.
pub mod cap {
    /// `cap_len`: length of this capability structure.
    pub const CAP_LEN: usize = 2;
    /// `cfg_type`: which structure.
    pub const CFG_TYPE: usize = 3;
    /// `bar`: the BAR holding the structure.
    pub const BAR: usize = 4;
    /// `offset`: where in the BAR (32 bits).
    pub const OFFSET: usize = 8;
    /// `length`: how long (32 bits).
    pub const LENGTH: usize = 12;
    /// `notify_off_multiplier` of `struct virtio_pci_notify_cap` (32 bits).
    pub const NOTIFY_OFF_MULTIPLIER: usize = 16;
    /// Size of `struct virtio_pci_cap`.
    pub const SIZE: usize = 16;
    /// Size of `struct virtio_pci_notify_cap`.
    pub const NOTIFY_SIZE: usize = 20;
}

// 4.1.4.3 Common configuration structure layout: `struct virtio_pci_common_cfg`.

/// `device_feature_select` (le32, RW): which 32 feature bits `device_feature` shows.
pub const DEVICE_FEATURE_SELECT: u32 = 0x00;
/// `device_feature` (le32, RO): the device's feature bits, window chosen above.
pub const DEVICE_FEATURE: u32 = 0x04;
/// `driver_feature_select` (le32, RW): which 32 bits `driver_feature` writes.
pub const DRIVER_FEATURE_SELECT: u32 = 0x08;
/// `driver_feature` (le32, RW): the features the driver accepts, window chosen above.
pub const DRIVER_FEATURE: u32 = 0x0c;
/// `config_msix_vector` (le16, RW): MSI-X vector for configuration changes.
pub const CONFIG_MSIX_VECTOR: u32 = 0x10;
/// `num_queues` (le16, RO): virtqueues the device supports.
pub const NUM_QUEUES: u32 = 0x12;
/// `device_status` (u8, RW): the status byte (2.1); writing 0 resets.
pub const DEVICE_STATUS: u32 = 0x14;
/// `config_generation` (u8, RO): changes whenever the device configuration changes.
pub const CONFIG_GENERATION: u32 = 0x15;
/// `queue_select` (le16, RW): the queue the `queue_*` fields below refer to.
pub const QUEUE_SELECT: u32 = 0x16;
/// `queue_size` (le16, RW): the queue's size; reads the maximum, 0 if unavailable.
pub const QUEUE_SIZE: u32 = 0x18;
/// `queue_msix_vector` (le16, RW): MSI-X vector of the queue.
pub const QUEUE_MSIX_VECTOR: u32 = 0x1a;
/// `queue_enable` (le16, RW): 1 once the queue is set up.
pub const QUEUE_ENABLE: u32 = 0x1c;
/// `queue_notify_off` (le16, RO): the queue's notification offset, in multiplier units.
pub const QUEUE_NOTIFY_OFF: u32 = 0x1e;
/// `queue_desc` (le64, RW): IOVA of the descriptor area.
pub const QUEUE_DESC: u32 = 0x20;
/// `queue_driver` (le64, RW): IOVA of the driver area (available ring).
pub const QUEUE_DRIVER: u32 = 0x28;
/// `queue_device` (le64, RW): IOVA of the device area (used ring).
pub const QUEUE_DEVICE: u32 = 0x30;
/// Bytes of the common configuration structure this driver uses.
pub const COMMON_CFG_LEN: u32 = 0x38;

/// "No vector" for `config_msix_vector` / `queue_msix_vector` (4.1.5.1.2).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

// 2.1 Device Status Field.

/// The guest OS has found the device and recognised it as a valid virtio device.
pub const ACKNOWLEDGE: u8 = 1;
/// The guest OS knows how to drive the device.
pub const DRIVER: u8 = 2;
/// The driver is set up and ready to drive the device.
pub const DRIVER_OK: u8 = 4;
/// The driver has acknowledged the features it understands; negotiation is complete.
pub const FEATURES_OK: u8 = 8;
/// The device has hit an error from which it cannot recover.
pub const DEVICE_NEEDS_RESET: u8 = 64;
/// Something went wrong in the guest; it has given up on the device.
pub const FAILED: u8 = 128;

// 6 Reserved Feature Bits and 5.1.3 Network device feature bits.

/// Device handles packets with partial checksum (TX checksum offload).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Driver handles packets with partial checksum (RX).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Device has a given MAC address (`mac` in its configuration).
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Driver can merge receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Configuration `status` field is available (link state).
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Control channel is available.
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
/// Control channel RX mode support (promiscuous, all-multicast).
pub const VIRTIO_NET_F_CTRL_RX: u32 = 18;
/// Device supports multiqueue with automatic receive steering.
pub const VIRTIO_NET_F_MQ: u32 = 22;
/// Driver can use indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Compliance with the virtio 1.x specification (no legacy interface).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// The device's DMA goes through the platform's IOMMU (translated addresses).
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;
/// Packed virtqueue layout.
pub const VIRTIO_F_RING_PACKED: u32 = 34;

// 5.1.4 Network device configuration layout: `struct virtio_net_config`.

/// `mac[6]`: the MAC address (valid with VIRTIO_NET_F_MAC).
pub const NET_CFG_MAC: u32 = 0;
/// `status` (le16): VIRTIO_NET_S_* (valid with VIRTIO_NET_F_STATUS).
pub const NET_CFG_STATUS: u32 = 6;
/// `status`: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

// 5.1.6 Device Operation: `struct virtio_net_hdr`.

/// Size of `struct virtio_net_hdr` with VIRTIO_F_VERSION_1 (`num_buffers` always there).
pub const VIRTIO_NET_HDR_LEN: u32 = 12;
/// Receive buffers must hold at least this many bytes without mergeable buffers or
/// receive offloads (5.1.6.3.1: header and a 1514-byte frame).
pub const MIN_RX_BUFFER_BYTES: u32 = 1526;

// 5.1.2 Virtqueues.

/// Virtqueue index of receiveq1.
pub const RECEIVEQ1: u16 = 0;
/// Virtqueue index of transmitq1.
pub const TRANSMITQ1: u16 = 1;
/// Virtqueue index of controlq with one queue pair (2 * max_virtqueue_pairs).
pub const CONTROLQ: u16 = 2;

// 5.1.6.5 Control Virtqueue: `struct virtio_net_ctrl` { class, command, data..., ack }.

/// Class of receive-filter commands.
pub const VIRTIO_NET_CTRL_RX: u8 = 0;
/// VIRTIO_NET_CTRL_RX command: promiscuous mode on (data 1) or off (data 0).
pub const VIRTIO_NET_CTRL_RX_PROMISC: u8 = 0;
/// VIRTIO_NET_CTRL_RX command: all-multicast on (data 1) or off (data 0).
pub const VIRTIO_NET_CTRL_RX_ALLMULTI: u8 = 1;
/// `ack`: the command succeeded.
pub const VIRTIO_NET_OK: u8 = 0;
/// `ack`: the command failed.
pub const VIRTIO_NET_ERR: u8 = 1;

// 2.7.5 The Virtqueue Descriptor Table: `struct virtq_desc` flags.

/// The buffer continues via the `next` field.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// The buffer is device write-only (otherwise device read-only).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
