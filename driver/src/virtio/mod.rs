//! Driver for modern (virtio 1.x) network devices behind an IOMMU: QEMU's
//! `virtio-net-pci,disable-legacy=on,iommu_platform=on` (`1af4:1041`), and the modern
//! interface of transitional devices (`1af4:1000`).
//!
//! One receive queue and one transmit queue (receiveq1, transmitq1), split layout, in
//! driver-owned DMA memory. The NIC DMAs straight into and out of the data areas: nothing
//! is copied. Everything above cannot tell it from the e1000:
//!
//! - **Receive, headroom in the slot.** A posted buffer (one extent, at least
//!   [`Config::rx_buffer_bytes`]) becomes one device-writable descriptor covering the whole
//!   extent. The device writes the 12-byte `virtio_net_hdr` at the start and the frame
//!   right after it, so `rx_poll` returns the IOrec with its extent moved past the header:
//!   offset `posted + 12`, length = the frame's. The [`Nic`] contract is the same for
//!   every driver: the returned extent is the frame, inside the buffer posted under that
//!   tag (the e1000 needs no headroom, so there it starts at the posted offset). Masters
//!   recycle buffers by tag, as `rbuf` pools do.
//! - **Transmit, header as an extra descriptor.** Each IOrec becomes a chain: one
//!   device-read-only descriptor for a zeroed `virtio_net_hdr` (no offloads) in a page of
//!   driver memory mapped device-read-only, then one descriptor per extent.
//! - **IOMMU permissions follow the direction**, as for the e1000: RX areas
//!   device-writable, TX areas device-read-only. `VIRTIO_F_ACCESS_PLATFORM` is required:
//!   without it the device would bypass the IOMMU and use guest-physical addresses
//!   ([`Error::VirtioFeatureMissing`]).
//! - **Notifications both ways are suppressed with `VIRTIO_RING_F_EVENT_IDX`** when the
//!   device offers it: the driver notifies only when the device asked (`avail_event`), and
//!   asks for an interrupt at the next receive completion, or once every queued frame is
//!   sent (`used_event`).
//! - **Interrupt mode** routes one MSI-X vector (configuration changes and both queues)
//!   to an eventfd; polling mode gives the device no vector and disables INTx. A
//!   configuration change is checked for link changes and `DEVICE_NEEDS_RESET`.
//! - **Receive modes** (promiscuous, all-multicast) go through the control queue
//!   (`VIRTIO_NET_F_CTRL_VQ`, `VIRTIO_NET_F_CTRL_RX`), polled for the acknowledgement.
//!
//! # Quirks of QEMU's model (hw/net/virtio-net.c, hw/virtio/virtio-pci.c)
//!
//! - **Promiscuous after reset.** QEMU's device resets to `promisc = 1` and receives
//!   every frame. With the control queue (`VIRTIO_NET_F_CTRL_VQ` and `VIRTIO_NET_F_CTRL_RX`)
//!   the driver sets both receive modes from [`Config`] at bring-up and on
//!   [`Nic::set_promiscuous`] / [`Nic::set_all_multicast`]; a device without it cannot
//!   narrow reception, and the calls are only logged.
//! - **No counters.** The device has no statistics: [`Stats`]' packet and byte counts are
//!   the driver's own (frame bytes, no FCS), the error counters stay 0.
//! - **No link speed.** Without `VIRTIO_NET_F_SPEED_DUPLEX` (not negotiated) the speed is
//!   unknown: [`LinkStatus::speed_mbps`] is 0, full duplex when up.
//! - **A refused DMA completes quietly** (seen in the guest test): when the IOMMU refuses
//!   a receive buffer's address, the guest kernel logs the DMAR write fault, the device
//!   returns the buffer in the used ring as if filled, no memory changes, and the device
//!   keeps working. It does not set `DEVICE_NEEDS_RESET`.
//!
//! Not negotiated (the [`Nic`] interface has no use for them yet): mergeable receive
//! buffers, checksum and segmentation offloads, multiqueue, indirect descriptors, packed
//! queues.

#![forbid(unsafe_code)]

pub mod caps;
pub mod features;
pub mod queue;
pub mod regs;
pub mod transport;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rbuf::{DataArea, Extent, IoRec};

use crate::Error;
use crate::areas::{Areas, Direction, check_rx_buffer};
use crate::dma::{DmaAccess, DmaMapping, DmaMemory, Iommu};
use crate::nic::{AreaId, Batch, IOREC_RX_ERROR, LinkStatus, MacAddr, Nic, Stats};
use crate::pci::{PciAddress, PciId, SysPaths, config};
use crate::vfio::{Device, Interrupt, Iova, MSIX};

use caps::CONFIG_SPACE_BYTES;
use queue::{Buf, Used, Virtqueue};
use regs::*;
use transport::Transport;

/// Devices this driver supports.
pub const SUPPORTED: [PciId; 2] = [
    PciId {
        vendor: 0x1af4,
        device: 0x1041,
    }, // virtio-net, modern only
    PciId {
        vendor: 0x1af4,
        device: 0x1000,
    }, // virtio-net, transitional (its modern interface)
];

/// Largest frame one transmit IOrec may describe (no GSO negotiated).
pub const MAX_TX_FRAME_BYTES: u64 = 65535;
pub use crate::areas::MAX_AREAS;

/// How the NIC is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Receive queue entries (power of two, 8..=32768; capped at the device's maximum).
    pub rx_queue_size: u16,
    /// Transmit queue entries (power of two, 8..=32768; capped at the device's maximum).
    /// A frame of `k` extents takes `k + 1` of them.
    pub tx_queue_size: u16,
    /// Bytes of each receive buffer the device may fill, header included; every posted
    /// extent must be at least this long. At least 1526 (header and a 1514-byte frame).
    pub rx_buffer_bytes: u32,
    /// Use an MSI-X interrupt ([`Nic::wait`], [`Nic::event_fd`]); otherwise poll.
    pub interrupts: bool,
    /// Start in promiscuous mode (needs the control queue; QEMU's device without one
    /// always is).
    pub promiscuous: bool,
    /// Start accepting all multicast frames (needs the control queue).
    pub all_multicast: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            rx_queue_size: 256,
            tx_queue_size: 256,
            rx_buffer_bytes: 2048,
            interrupts: false,
            promiscuous: false,
            all_multicast: false,
        }
    }
}

fn config_check(config: &Config) -> Result<(), Error> {
    if config.rx_buffer_bytes < MIN_RX_BUFFER_BYTES {
        return Err(Error::BadConfig {
            what: "rx_buffer_bytes",
            value: u64::from(config.rx_buffer_bytes),
            expected: "at least 1526 (virtio_net_hdr and a 1514-byte frame)",
        });
    }
    for (what, size) in [
        ("rx_queue_size", config.rx_queue_size),
        ("tx_queue_size", config.tx_queue_size),
    ] {
        if !(queue::MIN_QUEUE..=queue::MAX_QUEUE).contains(&size) || !size.is_power_of_two() {
            return Err(Error::BadConfig {
                what,
                value: u64::from(size),
                expected: "a power of two from 8 to 32768",
            });
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct RxSlot {
    tag: u64,
    offset: u32,
    len: u32,
    area: u16,
    /// Posted by fault injection: completes without being returned.
    raw: bool,
}

#[derive(Clone, Copy, Debug)]
struct TxSlot {
    rec: IoRec,
    area: u16,
}

/// A queue with its notification address and what each chain in flight stands for,
/// indexed by head descriptor.
struct Queue<S> {
    vq: Virtqueue,
    index: u16,
    notify_offset: u32,
    slots: Vec<Option<S>>,
}

/// The control queue (5.1.6.5) and its two buffers: the command (device-read-only) and
/// the acknowledgement byte (device-writable).
struct Control {
    vq: Virtqueue,
    notify_offset: u32,
    // Mappings before memory: unmapped first.
    command_mapping: DmaMapping,
    ack_mapping: DmaMapping,
    command: DmaMemory,
    ack: DmaMemory,
}

/// How long a control command may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// A virtio-net NIC: queues, registered areas, counters.
pub struct VirtioNet {
    transport: Transport,
    rx: Queue<RxSlot>,
    tx: Queue<TxSlot>,
    control: Option<Control>,
    /// IOVA of the zeroed transmit header (device-read-only).
    tx_header: Iova,
    areas: Areas,
    iommu: Arc<dyn Iommu>,
    addr: PciAddress,
    id: PciId,
    features: u64,
    config: Config,
    mac: MacAddr,
    stats: Stats,
    raw_completions: u64,
    /// Set when the device did something the specification forbids; nothing more is
    /// taken from or given to it.
    broken: bool,
    /// Link state last seen, to log changes.
    link_up: bool,
    irq: Option<Interrupt>,
    // Dropped after the queues (fields drop in order): unmapped, then freed.
    _tx_header_mapping: DmaMapping,
    _tx_header_memory: DmaMemory,
    // Last: the device (and its IOMMU group) goes after every mapping above.
    device: Option<Device>,
}

impl VirtioNet {
    /// Opens the virtio-net device at `addr` through VFIO and brings it up.
    pub fn open(addr: PciAddress, config: &Config) -> Result<VirtioNet, Error> {
        VirtioNet::open_with(&SysPaths::default(), addr, config)
    }

    /// As [`VirtioNet::open`], with sysfs and `/dev/vfio` elsewhere.
    pub fn open_with(
        paths: &SysPaths,
        addr: PciAddress,
        config: &Config,
    ) -> Result<VirtioNet, Error> {
        config_check(config)?;
        let device = Device::open(paths, addr, "virtio-net", &SUPPORTED)?;
        match device.reset() {
            Ok(true) => log::debug!("{addr}: VFIO device reset done"),
            Ok(false) => log::debug!("{addr}: VFIO offers no reset; using the virtio reset"),
            Err(e) => log::warn!("{addr}: {e}; using the virtio reset"),
        }
        let mut space = [0u8; CONFIG_SPACE_BYTES];
        device.config_read(0, &mut space)?;
        let caps =
            caps::parse(&space).map_err(|source| Error::VirtioCapabilities { addr, source })?;
        log::debug!("{addr}: virtio capabilities {caps:?}");
        // Memory decoding on (the BARs), bus mastering still off: no DMA until the
        // features, ACCESS_PLATFORM above all, are agreed.
        let cmd = device.config_read_u16(config::COMMAND)?;
        let mut cmd = (cmd | config::COMMAND_MEMORY) & !config::COMMAND_MASTER;
        if !config.interrupts {
            // Polling: the device falls back to INTx without MSI-X; keep the line quiet.
            cmd |= config::COMMAND_INTX_DISABLE;
        }
        device.config_write_u16(config::COMMAND, cmd)?;
        let transport = Transport::new(&device, caps)?;
        let id = device.id();
        VirtioNet::build(transport, device.iommu(), id, config, Some(device), None)
    }

    /// Brings up a virtio-net device reached through `transport`, whose DMA goes through
    /// `iommu` (used with a fake device in tests; [`VirtioNet::open`] for real ones).
    /// `irq` is the interrupt for interrupt mode, if `config.interrupts`.
    pub fn with_transport(
        transport: Transport,
        iommu: Arc<dyn Iommu>,
        id: PciId,
        config: &Config,
        irq: Option<Interrupt>,
    ) -> Result<VirtioNet, Error> {
        config_check(config)?;
        if config.interrupts && irq.is_none() {
            return Err(Error::NoInterrupts);
        }
        VirtioNet::build(transport, iommu, id, config, None, irq)
    }

    fn build(
        transport: Transport,
        iommu: Arc<dyn Iommu>,
        id: PciId,
        config: &Config,
        device: Option<Device>,
        irq: Option<Interrupt>,
    ) -> Result<VirtioNet, Error> {
        match bring_up(&transport, device.as_ref(), &iommu, config, irq) {
            Ok(parts) => {
                let mut nic = VirtioNet::assemble(transport, iommu, id, device, config, parts);
                // Dropping `nic` on error resets the device.
                nic.apply_rx_mode()?;
                Ok(nic)
            }
            Err(err) => {
                // 3.1.1 step 8 / 2.1.2: give up on the device, visibly to it. The BAR
                // mappings go before the device: they hold its file open, and VFIO
                // refuses to release the group while it is.
                transport.add_status(FAILED);
                drop(transport);
                drop(device);
                Err(err)
            }
        }
    }

    fn assemble(
        transport: Transport,
        iommu: Arc<dyn Iommu>,
        id: PciId,
        device: Option<Device>,
        config: &Config,
        p: Parts,
    ) -> VirtioNet {
        let addr = transport.address();
        let mut nic = VirtioNet {
            transport,
            tx_header: p.header_mapping.iova(),
            config: Config {
                rx_queue_size: p.rx.vq.size(),
                tx_queue_size: p.tx.vq.size(),
                ..config.clone()
            },
            rx: p.rx,
            tx: p.tx,
            control: p.control,
            areas: Areas::default(),
            iommu,
            addr,
            id,
            features: p.features,
            mac: p.mac,
            stats: Stats::default(),
            raw_completions: 0,
            broken: false,
            link_up: false,
            irq: p.irq,
            _tx_header_mapping: p.header_mapping,
            _tx_header_memory: p.header_memory,
            device,
        };
        nic.link_up = nic.link().up;
        log::info!(
            "virtio-net {} up: MAC {}, link {:?}, features {:#x}, RX queue {}x{} B at IOVA {}, \
             TX queue {} at IOVA {}, {}",
            nic.id,
            nic.mac,
            nic.link(),
            nic.features,
            nic.rx.vq.size(),
            nic.config.rx_buffer_bytes,
            nic.rx.vq.desc_iova(),
            nic.tx.vq.size(),
            nic.tx.vq.desc_iova(),
            if nic.irq.is_some() {
                "MSI-X"
            } else {
                "polling"
            }
        );
        nic
    }

    /// Sets promiscuous and all-multicast mode as [`Config`] says, through the control
    /// queue (a no-op without one).
    fn apply_rx_mode(&mut self) -> Result<(), Error> {
        if self.control.is_none() {
            log::info!(
                "{}: no control queue: the device decides the receive filter (QEMU's: all frames)",
                self.addr
            );
            return Ok(());
        }
        self.control_rx(VIRTIO_NET_CTRL_RX_PROMISC, self.config.promiscuous)?;
        self.control_rx(VIRTIO_NET_CTRL_RX_ALLMULTI, self.config.all_multicast)
    }

    /// Sends a `VIRTIO_NET_CTRL_RX` command with a 1-byte on/off argument and waits for the
    /// device's acknowledgement (5.1.6.5.1).
    fn control_rx(&mut self, command: u8, on: bool) -> Result<(), Error> {
        let addr = self.addr;
        let Some(c) = self.control.as_mut() else {
            return Err(Error::Virtio {
                addr,
                what: "has no control queue",
                value: u64::from(command),
            });
        };
        if c.vq.in_flight() > 0 {
            return Err(Error::Virtio {
                addr,
                what: "still holds an earlier control command",
                value: u64::from(c.vq.in_flight()),
            });
        }
        // class, command, data: three bytes the device reads; then one it writes.
        let bytes = u32::from(VIRTIO_NET_CTRL_RX) | u32::from(command) << 8 | u32::from(on) << 16;
        c.command.store_u32(0, bytes, Ordering::Relaxed);
        c.ack.store_u16(0, 0xff, Ordering::Relaxed);
        let chain = [
            Buf {
                iova: c.command_mapping.iova().0,
                len: 3,
                device_writes: false,
            },
            Buf {
                iova: c.ack_mapping.iova().0,
                len: 1,
                device_writes: true,
            },
        ];
        let head = c.vq.add(&chain).ok_or(Error::Virtio {
            addr,
            what: "control queue full",
            value: 0,
        })?;
        if c.vq.publish() {
            self.transport.notify(c.notify_offset, CONTROLQ);
        }
        let start = Instant::now();
        let used = loop {
            match c.vq.peek_used() {
                Ok(Some(u)) if u.id == head => break u,
                Ok(Some(u)) => {
                    return Err(Error::Virtio {
                        addr,
                        what: "returned an unknown control command",
                        value: u64::from(u.id),
                    });
                }
                Ok(None) if start.elapsed() < CONTROL_TIMEOUT => std::thread::yield_now(),
                Ok(None) => {
                    return Err(Error::Timeout {
                        what: "virtio-net control command",
                        waited_ms: CONTROL_TIMEOUT.as_millis() as u64,
                    });
                }
                Err(e) => {
                    return Err(Error::Virtio {
                        addr,
                        what: "wrote a bad control queue entry",
                        value: u64::from(e.id),
                    });
                }
            }
        };
        c.vq.pop_used(used);
        // The Acquire load of `used.idx` in `peek_used` ordered this read after the write.
        let ack = c.ack.load_u16(0, Ordering::Acquire) as u8;
        if ack != VIRTIO_NET_OK {
            return Err(Error::Virtio {
                addr,
                what: "refused a receive mode command (VIRTIO_NET_ERR)",
                value: u64::from(command) << 8 | u64::from(ack),
            });
        }
        log::debug!("{addr}: receive mode command {command} = {on} acknowledged");
        Ok(())
    }

    /// The VFIO device (`None` for a fake).
    pub fn device(&self) -> Option<&Device> {
        self.device.as_ref()
    }

    /// PCI vendor and device ID.
    pub fn id(&self) -> PciId {
        self.id
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The configuration in effect (queue sizes as set up, after the device's limits).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The device status byte (2.1), e.g. to see `DEVICE_NEEDS_RESET`.
    pub fn device_status(&self) -> u8 {
        self.transport.status()
    }

    /// The IOVA at which a registered area starts.
    pub fn area_iova(&self, area: AreaId) -> Option<Iova> {
        self.areas.iova(area)
    }

    /// Whether the device may write an area (RX) or only read it (TX).
    pub fn area_access(&self, area: AreaId) -> Option<DmaAccess> {
        self.areas.access(area)
    }

    /// Fault injection: posts one receive buffer at `iova` that no RX area backs, to
    /// check that the IOMMU refuses the device's write (the guest kernel logs a DMAR
    /// fault) and no memory changes. Refused if it would overlap memory the device may
    /// legitimately write (its queues or an RX area). The completion is consumed by
    /// `rx_poll` and only counted ([`VirtioNet::raw_completions`]).
    pub fn inject_rx_buffer(&mut self, iova: Iova) -> Result<(), Error> {
        let len = u64::from(self.config.rx_buffer_bytes);
        let end = iova
            .0
            .checked_add(len)
            .ok_or(Error::FaultInjection("IOVA range overflows"))?;
        let (rx_q, rx_len) = self.rx.vq.mapped();
        let (tx_q, tx_len) = self.tx.vq.mapped();
        let writable = [(rx_q.0, rx_len as u64), (tx_q.0, tx_len as u64)]
            .into_iter()
            .chain(self.areas.device_writable());
        for (start, bytes) in writable {
            if iova.0 < start + bytes && start < end {
                return Err(Error::FaultInjection(
                    "IOVA overlaps memory the NIC may write (a queue or an RX area)",
                ));
            }
        }
        let Some(head) = self.rx.vq.add(&[Buf {
            iova: iova.0,
            len: self.config.rx_buffer_bytes,
            device_writes: true,
        }]) else {
            return Err(Error::FaultInjection("RX queue full"));
        };
        self.rx.slots[usize::from(head)] = Some(RxSlot {
            tag: 0,
            offset: 0,
            len: 0,
            area: 0,
            raw: true,
        });
        self.kick_rx();
        Ok(())
    }

    /// Injected buffers the device completed (see [`VirtioNet::inject_rx_buffer`]).
    pub fn raw_completions(&self) -> u64 {
        self.raw_completions
    }

    fn kick_rx(&mut self) {
        if self.rx.vq.publish() {
            self.transport.notify(self.rx.notify_offset, self.rx.index);
        }
    }

    fn kick_tx(&mut self) {
        if self.tx.vq.publish() {
            self.transport.notify(self.tx.notify_offset, self.tx.index);
        }
    }

    /// The device broke the ring protocol: stop using it (the IOrecs it holds stay
    /// with it, and their areas busy, until the NIC is dropped).
    fn device_error(&mut self, what: &str, err: queue::BadUsed) {
        if !self.broken {
            log::error!("{}: {what}: {err}; no longer using the device", self.addr);
        }
        self.broken = true;
    }

    /// In interrupt mode, asks for an interrupt at the next receive completion and once
    /// every queued frame is sent.
    fn arm(&self) {
        if self.irq.is_none() {
            return;
        }
        self.rx.vq.set_used_event(0);
        let tx_pending = self.tx.vq.in_flight();
        if tx_pending > 0 {
            self.tx.vq.set_used_event(tx_pending - 1);
        }
    }
}

/// What [`bring_up`] made.
struct Parts {
    features: u64,
    irq: Option<Interrupt>,
    rx: Queue<RxSlot>,
    tx: Queue<TxSlot>,
    control: Option<Control>,
    header_mapping: DmaMapping,
    header_memory: DmaMemory,
    mac: MacAddr,
}

/// Device initialisation in the order of 3.1.1 (reset, ACKNOWLEDGE, DRIVER, features,
/// FEATURES_OK and its re-read, device-specific setup, DRIVER_OK), the device-specific
/// part as 5.1.5 and 4.1.5.1.3 describe it: interrupts, queues, MAC.
fn bring_up(
    t: &Transport,
    device: Option<&Device>,
    iommu: &Arc<dyn Iommu>,
    config: &Config,
    irq: Option<Interrupt>,
) -> Result<Parts, Error> {
    let addr = t.address();
    let refused = |what, value: u64| Error::Virtio { addr, what, value };
    // 1. Reset. 2. ACKNOWLEDGE. 3. DRIVER.
    t.reset()?;
    t.add_status(ACKNOWLEDGE);
    t.add_status(DRIVER);
    // 4. Read the device's features; accept a subset.
    let offered = t.device_features();
    log::debug!("{addr}: device offers features {offered:#x}");
    let features = features::negotiate(offered).map_err(|missing| Error::VirtioFeatureMissing {
        addr,
        feature: missing.feature.name,
        bit: missing.feature.bit,
        why: missing.why,
    })?;
    t.set_driver_features(features);
    // 5. FEATURES_OK. 6. Re-read: the device may refuse the subset.
    t.add_status(FEATURES_OK);
    let status = t.status();
    if status & FEATURES_OK == 0 {
        return Err(refused(
            "did not accept the features (FEATURES_OK cleared)",
            u64::from(status),
        ));
    }
    log::debug!("{addr}: accepted features {features:#x}");
    // ACCESS_PLATFORM is agreed: the device's DMA goes through the IOMMU.
    if let Some(device) = device {
        device.set_bus_master(true)?;
    }

    // 7. Device-specific setup: interrupts, then the queues.
    let has_control = features::has(features, VIRTIO_NET_F_CTRL_VQ);
    let num_queues = t.read16(NUM_QUEUES);
    if num_queues < 2 + u16::from(has_control) {
        return Err(refused("has too few virtqueues", u64::from(num_queues)));
    }
    let (irq, vector) = if config.interrupts {
        let irq = match device {
            Some(device) => device.enable_msix(1)?.pop(),
            None => irq,
        };
        // 4.1.5.1.2: write the vector, read it back; NO_VECTOR means refused.
        t.write16(CONFIG_MSIX_VECTOR, 0);
        let got = t.read16(CONFIG_MSIX_VECTOR);
        if got != 0 {
            return Err(refused(
                "refused MSI-X vector 0 for configuration changes",
                u64::from(got),
            ));
        }
        (irq, 0)
    } else {
        t.write16(CONFIG_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
        (None, VIRTIO_MSI_NO_VECTOR)
    };
    let event_idx = features::has(features, VIRTIO_RING_F_EVENT_IDX);
    let rx = setup_queue(
        t,
        iommu,
        addr,
        RECEIVEQ1,
        config.rx_queue_size,
        vector,
        event_idx,
    )?;
    let tx = setup_queue(
        t,
        iommu,
        addr,
        TRANSMITQ1,
        config.tx_queue_size,
        vector,
        event_idx,
    )?;
    let control = if has_control {
        // Polled: no interrupt vector. Eight entries: one command of two buffers at a time.
        let q: Queue<()> = setup_queue(
            t,
            iommu,
            addr,
            CONTROLQ,
            queue::MIN_QUEUE,
            VIRTIO_MSI_NO_VECTOR,
            event_idx,
        )?;
        let command = DmaMemory::new(c"virtio-net-ctrl-cmd", 4096)?;
        let ack = DmaMemory::new(c"virtio-net-ctrl-ack", 4096)?;
        Some(Control {
            vq: q.vq,
            notify_offset: q.notify_offset,
            command_mapping: DmaMapping::of_memory_with(iommu, &command, DmaAccess::DeviceReads)?,
            ack_mapping: DmaMapping::of_memory(iommu, &ack)?,
            command,
            ack,
        })
    } else {
        None
    };
    // The transmit header: all zero (no checksum, no GSO), read-only to the device.
    let header_memory = DmaMemory::new(c"virtio-net-tx-hdr", 4096)?;
    let header_mapping = DmaMapping::of_memory_with(iommu, &header_memory, DmaAccess::DeviceReads)?;

    // The MAC: from the configuration if offered (5.1.5), else made up.
    let mac = if features::has(features, VIRTIO_NET_F_MAC) {
        MacAddr(t.device_config::<6>(NET_CFG_MAC)?)
    } else {
        // Locally administered, unique per PCI address.
        let mac = MacAddr([
            0x02,
            (addr.domain >> 8) as u8,
            addr.domain as u8,
            addr.bus,
            addr.device,
            addr.function,
        ]);
        log::warn!("{addr}: device has no MAC (no VIRTIO_NET_F_MAC); using {mac}");
        mac
    };

    // 8. DRIVER_OK.
    t.add_status(DRIVER_OK);
    let status = t.status();
    if status & DEVICE_NEEDS_RESET != 0 || status & DRIVER_OK == 0 {
        return Err(refused(
            "did not come up (status after DRIVER_OK)",
            u64::from(status),
        ));
    }
    Ok(Parts {
        features,
        irq,
        rx,
        tx,
        control,
        header_mapping,
        header_memory,
        mac,
    })
}

/// Sets up one virtqueue (4.1.5.1.3) and enables it.
fn setup_queue<S: Copy>(
    t: &Transport,
    iommu: &Arc<dyn Iommu>,
    addr: PciAddress,
    index: u16,
    wanted: u16,
    vector: u16,
    event_idx: bool,
) -> Result<Queue<S>, Error> {
    t.write16(QUEUE_SELECT, index);
    let max = t.read16(QUEUE_SIZE);
    if max == 0 {
        return Err(Error::Virtio {
            addr,
            what: "queue not available (queue_size 0)",
            value: u64::from(index),
        });
    }
    if t.read16(QUEUE_ENABLE) != 0 {
        return Err(Error::Virtio {
            addr,
            what: "queue already enabled after reset",
            value: u64::from(index),
        });
    }
    // The largest power of two within both the wish and the device's maximum.
    let size = wanted.min(max);
    let size = if size.is_power_of_two() {
        size
    } else {
        1 << (15 - size.leading_zeros())
    };
    if size != wanted {
        log::info!("{addr}: queue {index}: {size} entries (asked {wanted}, device maximum {max})");
    }
    let name = match index {
        RECEIVEQ1 => c"virtio-net-rx-queue",
        TRANSMITQ1 => c"virtio-net-tx-queue",
        _ => c"virtio-net-ctrl-queue",
    };
    let vq = Virtqueue::new(iommu, name, size, event_idx)?;
    t.write16(QUEUE_SIZE, size);
    t.write16(QUEUE_MSIX_VECTOR, vector);
    let got = t.read16(QUEUE_MSIX_VECTOR);
    if got != vector {
        return Err(Error::Virtio {
            addr,
            what: "refused the queue's MSI-X vector",
            value: u64::from(got),
        });
    }
    t.write64(QUEUE_DESC, vq.desc_iova().0);
    t.write64(QUEUE_DRIVER, vq.driver_iova().0);
    t.write64(QUEUE_DEVICE, vq.device_iova().0);
    let notify_offset = t.notify_offset(t.read16(QUEUE_NOTIFY_OFF))?;
    t.write16(QUEUE_ENABLE, 1);
    Ok(Queue {
        slots: vec![None; usize::from(size)],
        vq,
        index,
        notify_offset,
    })
}

impl Nic for VirtioNet {
    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn link(&self) -> LinkStatus {
        let up = if features::has(self.features, VIRTIO_NET_F_STATUS) {
            match self.transport.device_config::<2>(NET_CFG_STATUS) {
                Ok(s) => u16::from_le_bytes(s) & VIRTIO_NET_S_LINK_UP != 0,
                Err(e) => {
                    log::warn!("{e}");
                    false
                }
            }
        } else {
            // 5.1.4.2: without VIRTIO_NET_F_STATUS the link is assumed active.
            true
        };
        LinkStatus {
            up,
            speed_mbps: 0,
            full_duplex: up,
        }
    }

    fn stats(&mut self) -> Stats {
        self.stats
    }

    fn set_promiscuous(&mut self, on: bool) {
        self.config.promiscuous = on;
        if self.control.is_none() {
            log::warn!(
                "{}: promiscuous {on}: no control queue, the device keeps its own filter",
                self.addr
            );
        } else if let Err(e) = self.control_rx(VIRTIO_NET_CTRL_RX_PROMISC, on) {
            log::error!("{}: promiscuous {on}: {e}", self.addr);
        }
    }

    fn set_all_multicast(&mut self, on: bool) {
        self.config.all_multicast = on;
        if self.control.is_none() {
            log::warn!(
                "{}: all-multicast {on}: no control queue, the device keeps its own filter",
                self.addr
            );
        } else if let Err(e) = self.control_rx(VIRTIO_NET_CTRL_RX_ALLMULTI, on) {
            log::error!("{}: all-multicast {on}: {e}", self.addr);
        }
    }

    fn add_rx_area(&mut self, area: &DataArea) -> Result<AreaId, Error> {
        self.areas.add(&self.iommu, area, Direction::Rx)
    }

    fn add_tx_area(&mut self, area: &DataArea) -> Result<AreaId, Error> {
        self.areas.add(&self.iommu, area, Direction::Tx)
    }

    fn remove_area(&mut self, id: AreaId) -> Result<(), Error> {
        self.areas.remove(id)
    }

    fn rx_space(&self) -> usize {
        if self.broken {
            return 0;
        }
        self.rx.vq.free_descriptors()
    }

    fn tx_space(&self) -> usize {
        if self.broken {
            return 0;
        }
        // Every chain carries one more descriptor, the header's: a frame of n extents
        // takes n + 1 <= 2n. Halving keeps the contract (IOrecs whose extents add up to
        // `tx_space()` always fit) whatever the mix.
        self.tx.vq.free_descriptors() / 2
    }

    fn rx_post(&mut self, id: AreaId, empty: &[IoRec]) -> Result<usize, Error> {
        let area = self.areas.get(id, Direction::Rx)?;
        let (base, area_len) = (area.mapping.iova(), area.len_bytes);
        let min = self.config.rx_buffer_bytes;
        let mut accepted = 0;
        let mut refused = None;
        for (index, rec) in empty.iter().enumerate() {
            if self.broken || self.rx.vq.free_descriptors() == 0 {
                break;
            }
            let e = match check_rx_buffer(rec, index, accepted, area_len, min) {
                Ok(e) => e,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            };
            let Some(head) = self.rx.vq.add(&[Buf {
                iova: base.0 + u64::from(e.offset()),
                len: e.len(),
                device_writes: true,
            }]) else {
                break;
            };
            self.rx.slots[usize::from(head)] = Some(RxSlot {
                tag: rec.tag(),
                offset: e.offset(),
                len: e.len(),
                area: id.0,
                raw: false,
            });
            accepted += 1;
        }
        if accepted > 0 {
            if let Some(a) = self.areas.get_mut(id.0) {
                a.in_flight += accepted;
            }
            self.kick_rx();
        }
        match refused {
            Some(err) => {
                self.stats.refused_iorecs += 1;
                Err(err)
            }
            None => Ok(accepted),
        }
    }

    fn rx_poll(&mut self, full: &mut [IoRec]) -> Option<Batch> {
        let mut count = 0;
        let mut batch_area = None;
        while count < full.len() && !self.broken {
            let used = match self.rx.vq.peek_used() {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(e) => {
                    self.device_error("receive queue", e);
                    break;
                }
            };
            let Some(s) = self.rx.slots[usize::from(used.id)] else {
                // `peek_used` only returns heads of chains in flight, each with a slot.
                self.device_error("receive queue", queue::BadUsed { id: used.id.into() });
                break;
            };
            if s.raw {
                self.take_rx(used);
                self.raw_completions += 1;
                continue;
            }
            if batch_area.is_some_and(|a| a != s.area) {
                break;
            }
            batch_area = Some(s.area);
            self.take_rx(used);
            // Device input: header and frame must fit the buffer that was lent.
            let mut flags = 0;
            let written = used.len.min(s.len);
            if used.len > s.len || written < VIRTIO_NET_HDR_LEN {
                flags |= IOREC_RX_ERROR;
            }
            let frame = written.saturating_sub(VIRTIO_NET_HDR_LEN);
            let offset = s.offset + VIRTIO_NET_HDR_LEN.min(s.len);
            if flags != 0 {
                self.stats.rx_error_buffers += 1;
            } else {
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += u64::from(frame);
            }
            let mut rec = IoRec::single(s.tag, Extent::new(offset, frame));
            rec.set_flags(flags);
            full[count] = rec;
            count += 1;
        }
        self.arm();
        let area = batch_area?;
        if let Some(a) = self.areas.get_mut(area) {
            a.in_flight -= count;
        }
        self.stats.rx_buffers += count as u64;
        self.stats.rx_total_packets = self.stats.rx_packets + self.stats.rx_error_buffers;
        Some(Batch {
            area: AreaId(area),
            count,
        })
    }

    fn tx_submit(&mut self, id: AreaId, recs: &[IoRec]) -> Result<usize, Error> {
        let area = self.areas.get(id, Direction::Tx)?;
        let (base, area_len) = (area.mapping.iova(), area.len_bytes);
        let mut accepted = 0;
        let mut refused = None;
        let mut chain = [Buf {
            iova: self.tx_header.0,
            len: VIRTIO_NET_HDR_LEN,
            device_writes: false,
        }; 1 + rbuf::MAX_EXTENTS];
        for (index, rec) in recs.iter().enumerate() {
            if self.broken {
                break;
            }
            if let Err(source) = rec.validate(area_len) {
                refused = Some(Error::BadIoRec {
                    index,
                    accepted,
                    source,
                });
                break;
            }
            let total = rec.total_len();
            if total == 0 || total > MAX_TX_FRAME_BYTES {
                refused = Some(Error::Unusable {
                    index,
                    accepted,
                    reason: "TX frame length out of range",
                    value: total,
                    limit: MAX_TX_FRAME_BYTES,
                });
                break;
            }
            let extents = rec.extents();
            if let Some(j) = extents.iter().position(Extent::is_empty) {
                refused = Some(Error::Unusable {
                    index,
                    accepted,
                    reason: "TX extent of zero bytes",
                    value: j as u64,
                    limit: 0,
                });
                break;
            }
            for (b, e) in chain[1..].iter_mut().zip(extents) {
                *b = Buf {
                    iova: base.0 + u64::from(e.offset()),
                    len: e.len(),
                    device_writes: false,
                };
            }
            // All or nothing: `add` writes nothing unless the whole chain fits.
            let Some(head) = self.tx.vq.add(&chain[..=extents.len()]) else {
                break;
            };
            self.tx.slots[usize::from(head)] = Some(TxSlot {
                rec: *rec,
                area: id.0,
            });
            accepted += 1;
        }
        if accepted > 0 {
            if let Some(a) = self.areas.get_mut(id.0) {
                a.in_flight += accepted;
            }
            self.kick_tx();
            self.arm();
        }
        match refused {
            Some(err) => {
                self.stats.refused_iorecs += 1;
                Err(err)
            }
            None => Ok(accepted),
        }
    }

    fn tx_reclaim(&mut self, done: &mut [IoRec]) -> Option<Batch> {
        let mut count = 0;
        let mut batch_area = None;
        while count < done.len() && !self.broken {
            let used = match self.tx.vq.peek_used() {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(e) => {
                    self.device_error("transmit queue", e);
                    break;
                }
            };
            let Some(s) = self.tx.slots[usize::from(used.id)] else {
                self.device_error("transmit queue", queue::BadUsed { id: used.id.into() });
                break;
            };
            if batch_area.is_some_and(|a| a != s.area) {
                break;
            }
            batch_area = Some(s.area);
            self.tx.slots[usize::from(used.id)] = None;
            self.tx.vq.pop_used(used);
            self.stats.tx_bytes += s.rec.total_len();
            done[count] = s.rec;
            count += 1;
        }
        let area = batch_area?;
        if let Some(a) = self.areas.get_mut(area) {
            a.in_flight -= count;
        }
        self.stats.tx_iorecs += count as u64;
        self.stats.tx_packets += count as u64;
        self.stats.tx_total_packets = self.stats.tx_packets;
        Some(Batch {
            area: AreaId(area),
            count,
        })
    }

    fn event_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.irq.as_ref().map(Interrupt::as_fd)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        if self.irq.is_none() {
            return Err(Error::NoInterrupts);
        }
        // `arm` ends in a full fence: a completion that raced with it shows here, and
        // any later one interrupts.
        self.arm();
        let pending = self.rx.vq.has_used() || self.tx.vq.has_used();
        let irq = self.irq.as_ref().ok_or(Error::NoInterrupts)?;
        if pending {
            // Work is there: do not sleep, but acknowledge an interrupt that announced it.
            if irq.take()? > 0 {
                self.stats.interrupts += 1;
            }
            return Ok(true);
        }
        if irq.wait(timeout)? == 0 {
            return Ok(false);
        }
        self.stats.interrupts += 1;
        if !self.rx.vq.has_used() && !self.tx.vq.has_used() {
            // The one vector also carries configuration changes (4.1.5.1.2).
            self.configuration_changed();
        }
        Ok(true)
    }
}

impl VirtioNet {
    /// After an interrupt with no queue work: the link may have changed, or the device
    /// may have given up (`DEVICE_NEEDS_RESET`, 2.1.1), after which it is not used again.
    fn configuration_changed(&mut self) {
        let status = self.transport.status();
        if status & DEVICE_NEEDS_RESET != 0 {
            if !self.broken {
                log::error!(
                    "{}: device needs a reset (status {status:#x}); no longer using it",
                    self.addr
                );
            }
            self.broken = true;
            return;
        }
        // Also reached by an interrupt whose work an earlier poll took: log changes only.
        let link = self.link();
        if link.up != self.link_up {
            self.link_up = link.up;
            log::info!(
                "{}: link {}",
                self.addr,
                if link.up { "up" } else { "down" }
            );
        }
    }

    /// Whether the driver stopped using the device (it broke the ring protocol or asked
    /// for a reset): no buffers are accepted any more; reopen the NIC.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn take_rx(&mut self, used: Used) {
        self.rx.slots[usize::from(used.id)] = None;
        self.rx.vq.pop_used(used);
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        // Reset stops all DMA (the device forgets its queues) before the mappings
        // (fields, dropped after this) are removed.
        if let Err(e) = self.transport.reset() {
            log::error!("{}: {e}", self.addr);
        }
        let Some(device) = &self.device else {
            return;
        };
        if self.irq.is_some()
            && let Err(e) = device.disable_irq(MSIX)
        {
            log::warn!("{e}");
        }
        if let Err(e) = device.set_bus_master(false) {
            log::error!(
                "{}: cannot stop bus mastering before unmapping: {e}",
                self.addr
            );
        }
    }
}

impl fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioNet")
            .field("addr", &self.addr)
            .field("mac", &self.mac)
            .field("features", &format_args!("{:#x}", self.features))
            .field("rx", &self.rx.vq)
            .field("tx", &self.tx.vq)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        assert!(config_check(&Config::default()).is_ok());
        for bad in [
            Config {
                rx_buffer_bytes: 1525,
                ..Config::default()
            },
            Config {
                rx_queue_size: 100,
                ..Config::default()
            },
            Config {
                tx_queue_size: 4,
                ..Config::default()
            },
        ] {
            assert!(
                matches!(config_check(&bad), Err(Error::BadConfig { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn feature_errors_name_the_feature_and_the_fix() {
        let missing = features::negotiate(1 << VIRTIO_F_VERSION_1).unwrap_err();
        let err = Error::VirtioFeatureMissing {
            addr: "0000:00:04.0".parse().unwrap(),
            feature: missing.feature.name,
            bit: missing.feature.bit,
            why: missing.why,
        };
        let text = err.to_string();
        assert!(
            text.starts_with(
                "0000:00:04.0: the virtio device does not offer VIRTIO_F_ACCESS_PLATFORM (feature bit 33): "
            ),
            "{text}"
        );
        assert!(
            text.contains("iommu_platform=on") && !text.contains('\n'),
            "{text}"
        );
    }
}
