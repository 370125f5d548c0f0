//! A fake modern virtio-net device (virtio 1.2, PCI transport), so the driver's bring-up,
//! queues and control commands are tested without a guest. Its one BAR holds the four
//! structures at fixed offsets; the device reads and writes the split virtqueues through
//! [`FakeIommu`] like a real device behind an IOMMU (faults recorded, nothing touched).
//! Receive filtering follows QEMU's model: promiscuous after reset, otherwise own MAC,
//! broadcast, and multicast with all-multicast.

#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex, MutexGuard};

use super::FakeIommu;
use crate::Error;
use crate::mmio::{Regs, Window};
use crate::nic::MacAddr;
use crate::pci::PciAddress;
use crate::vfio::Interrupt;
use crate::virtio::caps::{CapRegion, VirtioCaps};
use crate::virtio::queue::need_event;
use crate::virtio::regs::*;
use crate::virtio::transport::Transport;

/// The BAR holding every structure.
pub const BAR: u8 = 4;
/// Offset of the common configuration in the BAR (first: lower offsets are common).
pub const COMMON: u32 = 0x0000;
/// Offset of the ISR status.
pub const ISR: u32 = 0x1000;
/// Offset of the device configuration.
pub const DEVICE: u32 = 0x2000;
/// Offset of the notification structure.
pub const NOTIFY: u32 = 0x3000;
/// `notify_off_multiplier`.
pub const MULTIPLIER: u32 = 4;
/// Size of the BAR.
pub const BAR_BYTES: u64 = 0x4000;
/// Queues: receiveq1, transmitq1, controlq.
const QUEUES: usize = 3;
/// Largest queue the fake offers.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// What QEMU 7.2's virtio-net with `iommu_platform=on` and a UDP socket netdev offered
/// in the guest (the driver logs it at debug level). The fake implements only what the
/// driver accepts of it.
pub const QEMU_FEATURES: u64 = 0x103_30bf_8024;

/// A descriptor as the device read it: address, length, flags.
pub type Desc = (u64, u32, u16);

#[derive(Clone, Copy, Debug, Default)]
struct Queue {
    size: u16,
    msix: u16,
    enable: u16,
    desc: u64,
    driver: u64,
    device: u64,
    last_avail: u16,
    used_idx: u16,
}

struct State {
    iommu: Arc<FakeIommu>,
    offered: u64,
    accepted: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    status: u8,
    refuse_features: bool,
    config_msix: u16,
    queue_select: u16,
    queues: [Queue; QUEUES],
    mac: [u8; 6],
    link: bool,
    promiscuous: bool,
    all_multicast: bool,
    sent: Vec<Vec<u8>>,
    tx_chains: Vec<Vec<Desc>>,
    notifications: [u64; QUEUES],
    irq: Option<Interrupt>,
    interrupts: u64,
}

impl State {
    fn reset(&mut self) {
        self.accepted = 0;
        self.status = 0;
        self.config_msix = VIRTIO_MSI_NO_VECTOR;
        self.queue_select = 0;
        self.queues = [Queue {
            size: MAX_QUEUE_SIZE,
            msix: VIRTIO_MSI_NO_VECTOR,
            ..Queue::default()
        }; QUEUES];
        // QEMU's virtio_net_reset: promiscuous, for compatibility.
        self.promiscuous = true;
        self.all_multicast = false;
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn read(&mut self, offset: u32, width: u32) -> u32 {
        match offset {
            o if (DEVICE..NOTIFY).contains(&o) => {
                let cfg = self.device_config();
                (0..width as usize)
                    .map(|i| {
                        u32::from(*cfg.get((o - DEVICE) as usize + i).unwrap_or(&0)) << (8 * i)
                    })
                    .fold(0, |a, b| a | b)
            }
            o if o < COMMON + COMMON_CFG_LEN => self.read_common(o - COMMON),
            _ => 0,
        }
    }

    fn device_config(&self) -> [u8; 8] {
        let s = if self.link { VIRTIO_NET_S_LINK_UP } else { 0 }.to_le_bytes();
        let m = self.mac;
        [m[0], m[1], m[2], m[3], m[4], m[5], s[0], s[1]]
    }

    fn read_common(&mut self, field: u32) -> u32 {
        let half = |v: u64, high: bool| if high { (v >> 32) as u32 } else { v as u32 };
        let q = self
            .queues
            .get(usize::from(self.queue_select))
            .copied()
            .unwrap_or_default();
        match field {
            DEVICE_FEATURE_SELECT => self.device_feature_select,
            DEVICE_FEATURE => match self.device_feature_select {
                0 | 1 => half(self.offered, self.device_feature_select == 1),
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => self.driver_feature_select,
            DRIVER_FEATURE => half(self.accepted, self.driver_feature_select == 1),
            CONFIG_MSIX_VECTOR => u32::from(self.config_msix),
            NUM_QUEUES => QUEUES as u32,
            DEVICE_STATUS => u32::from(self.status),
            CONFIG_GENERATION => 0,
            QUEUE_SELECT => u32::from(self.queue_select),
            QUEUE_SIZE => u32::from(q.size),
            QUEUE_MSIX_VECTOR => u32::from(q.msix),
            QUEUE_ENABLE => u32::from(q.enable),
            QUEUE_NOTIFY_OFF => u32::from(self.queue_select),
            f if (QUEUE_DESC..QUEUE_DESC + 8).contains(&f) => half(q.desc, f == QUEUE_DESC + 4),
            f if (QUEUE_DRIVER..QUEUE_DRIVER + 8).contains(&f) => {
                half(q.driver, f == QUEUE_DRIVER + 4)
            }
            f if (QUEUE_DEVICE..QUEUE_DEVICE + 8).contains(&f) => {
                half(q.device, f == QUEUE_DEVICE + 4)
            }
            _ => 0,
        }
    }

    fn write(&mut self, offset: u32, value: u32) {
        if (NOTIFY..NOTIFY + MULTIPLIER * QUEUES as u32).contains(&offset) {
            let q = ((offset - NOTIFY) / MULTIPLIER) as usize;
            self.notifications[q] += 1;
            match q {
                1 => self.transmit(),
                2 => self.control(),
                _ => {}
            }
            return;
        }
        if offset >= COMMON + COMMON_CFG_LEN {
            return;
        }
        let set_half = |v: &mut u64, high: bool| {
            *v = if high {
                (*v & 0xffff_ffff) | u64::from(value) << 32
            } else {
                (*v & !0xffff_ffff) | u64::from(value)
            }
        };
        let vector = |v: u32| {
            // One MSI-X vector (0) exists; anything else is refused (4.1.5.1.2).
            if v == 0 { 0 } else { VIRTIO_MSI_NO_VECTOR }
        };
        match offset - COMMON {
            DEVICE_FEATURE_SELECT => self.device_feature_select = value,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = value,
            DRIVER_FEATURE => match self.driver_feature_select {
                0 => set_half(&mut self.accepted, false),
                1 => set_half(&mut self.accepted, true),
                _ => {}
            },
            CONFIG_MSIX_VECTOR => self.config_msix = vector(value),
            DEVICE_STATUS => {
                let mut status = value as u8;
                if status == 0 {
                    self.reset();
                    return;
                }
                // Features the device did not offer, or a refusal wanted by the test.
                if status & FEATURES_OK != 0
                    && (self.refuse_features || self.accepted & !self.offered != 0)
                {
                    status &= !FEATURES_OK;
                }
                self.status = status;
            }
            QUEUE_SELECT => self.queue_select = value as u16,
            QUEUE_SIZE => {
                if let Some(q) = self.selected() {
                    q.size = value as u16;
                }
            }
            QUEUE_MSIX_VECTOR => {
                let v = vector(value);
                if let Some(q) = self.selected() {
                    q.msix = v;
                }
            }
            QUEUE_ENABLE => {
                if let Some(q) = self.selected() {
                    q.enable = value as u16;
                }
            }
            f if (QUEUE_DESC..QUEUE_DESC + 8).contains(&f) => {
                if let Some(q) = self.selected() {
                    set_half(&mut q.desc, f == QUEUE_DESC + 4);
                }
            }
            f if (QUEUE_DRIVER..QUEUE_DRIVER + 8).contains(&f) => {
                if let Some(q) = self.selected() {
                    set_half(&mut q.driver, f == QUEUE_DRIVER + 4);
                }
            }
            f if (QUEUE_DEVICE..QUEUE_DEVICE + 8).contains(&f) => {
                if let Some(q) = self.selected() {
                    set_half(&mut q.device, f == QUEUE_DEVICE + 4);
                }
            }
            _ => {}
        }
    }

    fn read_u16(&self, iova: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.iommu
            .dma_read(iova, &mut b)
            .then(|| u16::from_le_bytes(b))
    }

    fn write_u16(&self, iova: u64, v: u16) -> bool {
        self.iommu.dma_write(iova, &v.to_le_bytes())
    }

    fn event_idx(&self) -> bool {
        self.accepted & 1 << VIRTIO_RING_F_EVENT_IDX != 0
    }

    fn ready(&self, q: usize) -> bool {
        self.status & DRIVER_OK != 0 && self.queues[q].enable == 1
    }

    /// Takes the next available chain of queue `q`: head and descriptors.
    fn pop(&mut self, q: usize) -> Option<(u16, Vec<Desc>)> {
        let vq = self.queues[q];
        let idx = self.read_u16(vq.driver + 2)?;
        if idx == vq.last_avail {
            return None;
        }
        let slot = u64::from(vq.last_avail % vq.size);
        let head = self.read_u16(vq.driver + 4 + 2 * slot)?;
        let mut chain = Vec::new();
        let mut id = head;
        loop {
            let mut d = [0u8; 16];
            if id >= vq.size || !self.iommu.dma_read(vq.desc + 16 * u64::from(id), &mut d) {
                return None;
            }
            let flags = u16::from_le_bytes([d[12], d[13]]);
            chain.push((
                u64::from_le_bytes(d[0..8].try_into().ok()?),
                u32::from_le_bytes(d[8..12].try_into().ok()?),
                flags,
            ));
            if flags & VIRTQ_DESC_F_NEXT == 0 || chain.len() > usize::from(vq.size) {
                break;
            }
            id = u16::from_le_bytes([d[14], d[15]]);
        }
        self.queues[q].last_avail = vq.last_avail.wrapping_add(1);
        if self.event_idx() {
            // Like QEMU: ask to be told about the next buffer.
            let at = vq.device + 4 + 8 * u64::from(vq.size);
            self.write_u16(at, self.queues[q].last_avail);
        }
        Some((head, chain))
    }

    /// Returns a chain to the driver, and interrupts if it asked (2.7.10).
    fn push(&mut self, q: usize, head: u16, len: u32) {
        let vq = self.queues[q];
        let at = vq.device + 4 + 8 * u64::from(vq.used_idx % vq.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        self.iommu.dma_write(at, &elem);
        let old = vq.used_idx;
        let new = old.wrapping_add(1);
        self.queues[q].used_idx = new;
        self.write_u16(vq.device + 2, new);
        let wanted = if self.event_idx() {
            let event = self
                .read_u16(vq.driver + 4 + 2 * u64::from(vq.size))
                .unwrap_or(0);
            need_event(event, new, old)
        } else {
            true
        };
        if wanted && vq.msix != VIRTIO_MSI_NO_VECTOR {
            self.interrupts += 1;
            if let Some(irq) = &self.irq {
                let _ = irq.signal();
            }
        }
    }

    fn config_interrupt(&mut self) {
        if self.config_msix != VIRTIO_MSI_NO_VECTOR {
            self.interrupts += 1;
            if let Some(irq) = &self.irq {
                let _ = irq.signal();
            }
        }
    }

    fn gather(&self, descs: &[Desc]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, len, flags) in descs {
            if flags & VIRTQ_DESC_F_WRITE != 0 {
                continue;
            }
            let mut buf = vec![0u8; len as usize];
            if self.iommu.dma_read(addr, &mut buf) {
                out.extend_from_slice(&buf);
            }
        }
        out
    }

    fn transmit(&mut self) {
        if !self.ready(1) {
            return;
        }
        while let Some((head, chain)) = self.pop(1) {
            let bytes = self.gather(&chain);
            // The first buffer is the virtio_net_hdr; the frame follows.
            let header = VIRTIO_NET_HDR_LEN as usize;
            if chain.first().map(|d| d.1) == Some(VIRTIO_NET_HDR_LEN) && bytes.len() > header {
                self.sent.push(bytes[header..].to_vec());
            }
            self.tx_chains.push(chain);
            self.push(1, head, 0);
        }
    }

    fn control(&mut self) {
        if !self.ready(2) {
            return;
        }
        while let Some((head, chain)) = self.pop(2) {
            let command = self.gather(&chain);
            let ack = match command.as_slice() {
                [VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, on] => {
                    self.promiscuous = *on != 0;
                    VIRTIO_NET_OK
                }
                [VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, on] => {
                    self.all_multicast = *on != 0;
                    VIRTIO_NET_OK
                }
                _ => VIRTIO_NET_ERR,
            };
            if let Some(&(addr, _, _)) = chain.iter().find(|d| d.2 & VIRTQ_DESC_F_WRITE != 0) {
                self.iommu.dma_write(addr, &[ack]);
            }
            self.push(2, head, 1);
        }
    }

    fn accepts(&self, frame: &[u8]) -> bool {
        let Some(dst) = frame.get(..6) else {
            return false;
        };
        self.promiscuous
            || dst == self.mac
            || dst == [0xff; 6]
            || (dst[0] & 1 != 0 && self.all_multicast)
    }
}

/// Handle on the fake device (cheap to clone; the register window shares it).
#[derive(Clone)]
pub struct FakeVirtioNet {
    state: Arc<Mutex<State>>,
}

/// The device's BAR as the driver's transport sees it.
struct FakeBar(Arc<Mutex<State>>);

impl FakeBar {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Regs for FakeBar {
    fn read32(&self, offset: u32) -> u32 {
        self.lock().read(offset, 4)
    }

    fn write32(&self, offset: u32, value: u32) {
        self.lock().write(offset, value);
    }
}

impl Window for FakeBar {
    fn window_bytes(&self) -> u64 {
        BAR_BYTES
    }

    fn read8(&self, offset: u32) -> u8 {
        self.lock().read(offset, 1) as u8
    }

    fn read16(&self, offset: u32) -> u16 {
        self.lock().read(offset, 2) as u16
    }

    fn write8(&self, offset: u32, value: u8) {
        self.lock().write(offset, u32::from(value));
    }

    fn write16(&self, offset: u32, value: u16) {
        self.lock().write(offset, u32::from(value));
    }
}

impl FakeVirtioNet {
    /// A device offering `features`, with station address `mac` and the link up, whose
    /// DMA goes through `iommu`.
    pub fn new(iommu: Arc<FakeIommu>, mac: MacAddr, features: u64) -> FakeVirtioNet {
        let mut state = State {
            iommu,
            offered: features,
            accepted: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            status: 0,
            refuse_features: false,
            config_msix: VIRTIO_MSI_NO_VECTOR,
            queue_select: 0,
            queues: [Queue::default(); QUEUES],
            mac: mac.0,
            link: true,
            promiscuous: true,
            all_multicast: false,
            sent: Vec::new(),
            tx_chains: Vec::new(),
            notifications: [0; QUEUES],
            irq: None,
            interrupts: 0,
        };
        state.reset();
        FakeVirtioNet {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The capabilities a driver would parse from configuration space.
    pub fn caps() -> VirtioCaps {
        let r = |offset| CapRegion {
            bar: BAR,
            offset,
            length: 0x1000,
        };
        VirtioCaps {
            common: r(COMMON),
            notify: r(NOTIFY),
            notify_off_multiplier: MULTIPLIER,
            isr: r(ISR),
            device: r(DEVICE),
            msix_vectors: Some(1),
        }
    }

    /// A transport over the device's BAR, for `VirtioNet::with_transport`.
    pub fn transport(&self, addr: PciAddress) -> Result<Transport, Error> {
        let window: Box<dyn Window> = Box::new(FakeBar(Arc::clone(&self.state)));
        Transport::with_windows(addr, FakeVirtioNet::caps(), vec![(BAR, window)])
    }

    /// An interrupt the device signals (its one MSI-X vector); give the driver this.
    pub fn interrupt(&self) -> Result<Interrupt, Error> {
        let irq = Interrupt::new()?;
        self.lock().irq = Some(irq.try_clone()?);
        Ok(irq)
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.lock().status
    }

    /// The features the driver accepted.
    pub fn accepted_features(&self) -> u64 {
        self.lock().accepted
    }

    /// Makes the device clear FEATURES_OK whatever the driver accepts.
    pub fn refuse_features(&self) {
        self.lock().refuse_features = true;
    }

    /// Whether queue `q` is enabled, and its size.
    pub fn queue(&self, q: usize) -> (bool, u16) {
        let s = self.lock();
        (s.queues[q].enable == 1, s.queues[q].size)
    }

    /// Sets the link state reported in the device configuration (a configuration change
    /// interrupt, if the driver gave it a vector).
    pub fn set_link(&self, up: bool) {
        let mut s = self.lock();
        s.link = up;
        s.config_interrupt();
    }

    /// Gives up like a device hitting an internal error: sets `DEVICE_NEEDS_RESET` and
    /// raises a configuration change interrupt (2.1.2).
    pub fn need_reset(&self) {
        let mut s = self.lock();
        s.status |= DEVICE_NEEDS_RESET;
        s.config_interrupt();
    }

    /// The receive modes the driver set.
    pub fn rx_mode(&self) -> (bool, bool) {
        let s = self.lock();
        (s.promiscuous, s.all_multicast)
    }

    /// Receives `frame` into the next available buffer (header, then the frame); false if
    /// there is none, the filter drops it, or it does not fit.
    pub fn deliver(&self, frame: &[u8]) -> bool {
        self.deliver_reporting(frame, None)
    }

    /// As [`FakeVirtioNet::deliver`], but reports `len` bytes written in the used ring
    /// (a misbehaving device).
    pub fn deliver_reporting(&self, frame: &[u8], len: Option<u32>) -> bool {
        let mut s = self.lock();
        if !s.ready(0) || !s.accepts(frame) {
            return false;
        }
        let Some((head, chain)) = s.pop(0) else {
            return false;
        };
        let &(addr, cap, flags) = &chain[0];
        let mut data = vec![0u8; VIRTIO_NET_HDR_LEN as usize];
        data[10] = 1; // num_buffers
        data.extend_from_slice(frame);
        if flags & VIRTQ_DESC_F_WRITE == 0 || data.len() > cap as usize {
            s.push(0, head, 0);
            return false;
        }
        let written = s.iommu.dma_write(addr, &data);
        let reported = len.unwrap_or(if written { data.len() as u32 } else { 0 });
        s.push(0, head, reported);
        written
    }

    /// Frames sent so far (header stripped), oldest first.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.lock().sent)
    }

    /// Transmit chains as the device read them, oldest first.
    pub fn take_tx_chains(&self) -> Vec<Vec<Desc>> {
        std::mem::take(&mut self.lock().tx_chains)
    }

    /// Notifications (doorbell writes) of queue `q` so far.
    pub fn notifications(&self, q: usize) -> u64 {
        self.lock().notifications[q]
    }

    /// Interrupts raised so far.
    pub fn interrupts(&self) -> u64 {
        self.lock().interrupts
    }
}

impl std::fmt::Debug for FakeVirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVirtioNet").finish_non_exhaustive()
    }
}
