//! Driver for the Intel 8254x gigabit controllers QEMU emulates: 82540EM (`8086:100e`,
//! QEMU `-device e1000`, the default), 82545EM copper (`8086:100f`, `e1000-82545em`) and
//! 82544GC copper (`8086:100c`, `e1000-82544gc`; the 82544EI copper `8086:1008` has the
//! same register set). They share the legacy descriptor format and every register used
//! here.
//!
//! Receive buffers come from the receive master as IOrecs of one extent each; transmit
//! IOrecs of up to six extents become as many descriptors, EOP and RS on the last. The
//! NIC DMAs straight into and out of the data areas: nothing is copied.
//!
//! # Quirks of QEMU's model (hw/net/e1000.c) and where they bite
//!
//! - **INTx only, one interrupt source.** No MSI or MSI-X capability; every cause shares
//!   pin A. VFIO masks INTx each time it fires, so [`Nic::wait`] reads ICR (which lowers
//!   the line) and then unmasks INTx; forgetting the unmask means one interrupt ever.
//! - **No auto-clear, no auto-mask.** Causes stay in ICR, and the line stays asserted,
//!   until ICR is read; there is no EIAC/EIAM as on the 82574 (`e1000e`).
//! - **CTRL.RST resets nothing**, and VFIO offers no device reset (no FLR, no PM reset:
//!   `Device::reset` returns `false`). RST self-clears and leaves every register (rings,
//!   RCTL.EN, IMS) as the last user left it, so `reset_and_init` writes each register it
//!   relies on, and bus mastering is enabled only after RCTL/TCTL are off.
//! - **No RX checksum validation.** RXCSUM is not implemented; the model sets IXSM
//!   ("ignore checksum") on every frame and never sets an error bit, so `IOREC_RX_ERROR`
//!   can only come from real hardware (the unit tests inject it with a fake device).
//! - **RX descriptor chaining is never wanted.** The model does split a frame longer
//!   than RCTL.BSIZE over several descriptors; with LPE off (frames of at most 1522
//!   bytes) and 2048-byte buffers it never has to. A descriptor without EOP is returned
//!   flagged [`IOREC_RX_FRAGMENT`] and counted.
//! - **A null buffer address means "skip".** The model writes such a descriptor back
//!   without data; IOVA 0 is never allocated ([`crate::vfio::IovaAllocator`]).
//! - **Receive pauses for 1 s of guest time after every RCTL write** (a flush timer in
//!   `set_rx_control`). Changing promiscuous or all-multicast mode costs that pause;
//!   frames meanwhile wait in QEMU's queue (or the backend's socket buffer).
//! - **Some statistics never clear.** CRCERRS..MPC, RNBC, COLC and other counters QEMU
//!   treats as plain registers (only GPRC, GPTC, TPR, TPT, the octet pairs and a few
//!   more clear on read). On a QEMU device (subsystem vendor `1af4`) those are
//!   accumulated as differences instead of sums.
//! - **Short frames are padded to 60 bytes on receive, not on transmit** (TCTL.PSP has no
//!   effect), and the receive length excludes the FCS only with RCTL.SECRC, which this
//!   driver sets (without it the model reports 4 bytes it never writes).
//! - **Interrupt moderation is always on** (`mitigation=on`): at least 128 µs between
//!   interrupt edges whatever ITR says.
//! - **Transmit runs inside the TDT write** (under TCG, in the vCPU's MMIO exit), so
//!   descriptors are often done by the time `tx_submit` returns.

#![forbid(unsafe_code)]

pub mod desc;
pub mod regs;
pub mod ring;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbuf::{DataArea, Extent, IoRec};

use crate::Error;
use crate::areas::{Areas, Direction, check_rx_buffer};
use crate::dma::{DmaAccess, Iommu};
use crate::mmio::{Bar, Regs};
use crate::nic::{
    AreaId, Batch, IOREC_RX_ERROR, IOREC_RX_FRAGMENT, LinkStatus, MacAddr, Nic, Stats,
};
use crate::pci::{PciAddress, PciId, QEMU_SUBSYSTEM_VENDOR, SysPaths};
use crate::vfio::{Device, Interrupt, Iova};

use desc::{
    RXD_ERR_FRAME, RXD_STAT_DD, RXD_STAT_EOP, RxDesc, TXD_CMD_EOP, TXD_CMD_IFCS, TXD_CMD_RS,
    TXD_STAT_DD, TxDesc,
};
use regs::*;
use ring::{DescRing, Indices, doorbell_fence};

/// Devices this driver supports.
pub const SUPPORTED: [PciId; 4] = [
    PciId {
        vendor: 0x8086,
        device: 0x100e,
    }, // 82540EM
    PciId {
        vendor: 0x8086,
        device: 0x100f,
    }, // 82545EM copper
    PciId {
        vendor: 0x8086,
        device: 0x100c,
    }, // 82544GC copper
    PciId {
        vendor: 0x8086,
        device: 0x1008,
    }, // 82544EI copper
];

/// Largest frame one IOrec may describe (SDM 3.3.3: 16288 bytes without TSO).
pub const MAX_TX_FRAME_BYTES: u64 = 16288;
pub use crate::areas::MAX_AREAS;

/// Interrupt causes enabled in interrupt mode.
pub(crate) const IMS_CAUSES: u32 = ICR_RXT0 | ICR_RXO | ICR_RXDMT0 | ICR_LSC | ICR_TXDW;

/// How the NIC is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Receive descriptors (power of two, 8..=4096).
    pub rx_ring_size: u32,
    /// Transmit descriptors (power of two, 8..=4096).
    pub tx_ring_size: u32,
    /// Receive buffer size the NIC may fill (RCTL.BSIZE); every posted extent must be at
    /// least this long. 2048 holds any frame without LPE.
    pub rx_buffer_bytes: u32,
    /// Use INTx interrupts ([`Nic::wait`]); otherwise poll.
    pub interrupts: bool,
    /// Minimum interval between interrupts, in 256 ns units (ITR); 0 = none.
    pub itr_256ns: u16,
    /// Start in promiscuous mode.
    pub promiscuous: bool,
    /// Start accepting all multicast frames.
    pub all_multicast: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            rx_ring_size: 256,
            tx_ring_size: 256,
            rx_buffer_bytes: 2048,
            interrupts: false,
            itr_256ns: 0,
            promiscuous: false,
            all_multicast: false,
        }
    }
}

/// What the driver was told about the device it drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// PCI vendor and device ID.
    pub id: PciId,
    /// Whether it is QEMU's model (subsystem vendor `1af4`), whose quirks apply.
    pub qemu: bool,
}

#[derive(Clone, Copy, Debug, Default)]
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

/// Counters QEMU never clears on read: accumulated as differences there.
const QEMU_STICKY: [u32; 5] = [CRCERRS, RXERRC, MPC, RNBC, COLC];

/// An 8254x NIC: rings, registered areas, counters. `R` is the register file: [`Bar`]
/// for a real device, a fake in tests.
pub struct E1000<R: Regs = Bar> {
    regs: R,
    rx: DescRing,
    rx_idx: Indices,
    rx_shadow: Vec<RxSlot>,
    tx: DescRing,
    tx_idx: Indices,
    tx_shadow: Vec<Option<TxSlot>>,
    areas: Areas,
    iommu: Arc<dyn Iommu>,
    identity: Identity,
    config: Config,
    mac: MacAddr,
    rctl: u32,
    stats: Stats,
    sticky_last: [u32; QEMU_STICKY.len()],
    raw_completions: u64,
    irq: Option<Interrupt>,
    // Last: the device (and its IOMMU group) goes after every mapping above.
    device: Option<Device>,
}

impl E1000<Bar> {
    /// Opens the e1000 at `addr` through VFIO and brings it up.
    pub fn open(addr: PciAddress, config: &Config) -> Result<E1000<Bar>, Error> {
        E1000::open_with(&SysPaths::default(), addr, config)
    }

    /// As [`E1000::open`], with sysfs and `/dev/vfio` elsewhere.
    pub fn open_with(
        paths: &SysPaths,
        addr: PciAddress,
        config: &Config,
    ) -> Result<E1000<Bar>, Error> {
        config_check(config)?;
        let device = Device::open(paths, addr, "e1000", &SUPPORTED)?;
        match device.reset() {
            Ok(true) => log::debug!("{addr}: VFIO device reset done"),
            Ok(false) => log::debug!("{addr}: VFIO offers no reset; relying on CTRL.RST"),
            Err(e) => log::warn!("{addr}: {e}; relying on CTRL.RST"),
        }
        let bar = device.bar(0)?;
        let identity = Identity {
            id: device.id(),
            qemu: device.subsystem_vendor() == QEMU_SUBSYSTEM_VENDOR,
        };
        let irq = if config.interrupts {
            if device.irq_count(crate::vfio::INTX) == 0 {
                return Err(Error::BadConfig {
                    what: "interrupts",
                    value: 1,
                    expected: "a device with an INTx pin",
                });
            }
            Some(device.enable_intx()?)
        } else {
            None
        };
        let iommu = device.iommu();
        E1000::build(bar, iommu, identity, config, irq, Some(device))
    }

    /// The VFIO device.
    pub fn device(&self) -> Option<&Device> {
        self.device.as_ref()
    }
}

fn config_check(config: &Config) -> Result<(), Error> {
    if rctl_bsize(config.rx_buffer_bytes).is_none() {
        return Err(Error::BadConfig {
            what: "rx_buffer_bytes",
            value: u64::from(config.rx_buffer_bytes),
            expected: "256, 512, 1024, 2048, 4096, 8192 or 16384",
        });
    }
    for (what, size) in [
        ("rx_ring_size", config.rx_ring_size),
        ("tx_ring_size", config.tx_ring_size),
    ] {
        if !(ring::MIN_RING..=ring::MAX_RING).contains(&size) || !size.is_power_of_two() {
            return Err(Error::BadConfig {
                what,
                value: u64::from(size),
                expected: "a power of two from 8 to 4096",
            });
        }
    }
    Ok(())
}

impl<R: Regs> E1000<R> {
    /// Brings up an e1000 whose registers are `regs` and whose DMA goes through `iommu`
    /// (used with a fake device in tests; [`E1000::open`] for real ones). `irq` is the
    /// interrupt for interrupt mode, if `config.interrupts`.
    pub fn with_regs(
        regs: R,
        iommu: Arc<dyn Iommu>,
        identity: Identity,
        config: &Config,
        irq: Option<Interrupt>,
    ) -> Result<E1000<R>, Error> {
        config_check(config)?;
        if config.interrupts && irq.is_none() {
            return Err(Error::NoInterrupts);
        }
        E1000::build(regs, iommu, identity, config, irq, None)
    }

    fn build(
        regs: R,
        iommu: Arc<dyn Iommu>,
        identity: Identity,
        config: &Config,
        irq: Option<Interrupt>,
        device: Option<Device>,
    ) -> Result<E1000<R>, Error> {
        // Quiet the device before anything else: a previous user may have left it running.
        regs.write32(IMC, u32::MAX);
        regs.write32(RCTL, 0);
        regs.write32(TCTL, 0);
        let rx = DescRing::new(&iommu, c"e1000-rx-ring", config.rx_ring_size)?;
        let tx = DescRing::new(&iommu, c"e1000-tx-ring", config.tx_ring_size)?;
        let mut nic = E1000 {
            regs,
            rx_idx: Indices::new(rx.size()),
            rx_shadow: vec![RxSlot::default(); rx.size() as usize],
            rx,
            tx_idx: Indices::new(tx.size()),
            tx_shadow: vec![None; tx.size() as usize],
            tx,
            areas: Areas::default(),
            iommu,
            identity,
            config: config.clone(),
            mac: MacAddr::default(),
            rctl: 0,
            stats: Stats::default(),
            sticky_last: [0; QEMU_STICKY.len()],
            raw_completions: 0,
            irq,
            device,
        };
        nic.reset_and_init()?;
        Ok(nic)
    }

    /// Initialisation in the order of 8254x SDM chapter 14: reset (14.1), interrupts off,
    /// general configuration and link (14.3), receive (14.4), transmit (14.5), then the
    /// interrupts wanted.
    fn reset_and_init(&mut self) -> Result<(), Error> {
        let r = &self.regs;
        // 14.1 / 13.4.1: mask everything, then global reset. QEMU's model ignores RST, so
        // every register used below is written explicitly rather than assumed reset.
        r.write32(IMC, u32::MAX);
        r.write32(CTRL, r.read32(CTRL) | CTRL_RST);
        let start = Instant::now();
        while r.read32(CTRL) & CTRL_RST != 0 {
            if start.elapsed() > Duration::from_millis(100) {
                return Err(Error::Timeout {
                    what: "CTRL.RST",
                    waited_ms: 100,
                });
            }
            std::thread::yield_now();
        }
        // 14.1: interrupts off again after the reset, and pending causes cleared.
        r.write32(IMC, u32::MAX);
        let _ = r.read32(ICR);
        r.write32(RCTL, 0);
        r.write32(TCTL, 0);
        // Only now may the device master the bus: its rings are off.
        if let Some(device) = &self.device {
            device.set_bus_master(true)?;
        }

        // 14.3 General configuration: link up, auto speed, no flow control, no VLANs.
        let ctrl = (r.read32(CTRL) | CTRL_SLU | CTRL_ASDE)
            & !(CTRL_LRST | CTRL_PHY_RST | CTRL_ILOS | CTRL_VME | CTRL_RFCE | CTRL_TFCE);
        r.write32(CTRL, ctrl);
        r.write32(FCAL, 0);
        r.write32(FCAH, 0);
        r.write32(FCT, 0);
        r.write32(FCTTV, 0);

        // 14.4 Receive initialisation: station address, multicast table, ring, RCTL.
        self.mac = self.read_mac()?;
        let r = &self.regs;
        let mac = self.mac.0;
        r.write32(RAL0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        r.write32(
            RAH0,
            u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV,
        );
        for i in 1..RA_ENTRIES {
            r.write32(RAL0 + 8 * i, 0);
            r.write32(RAH0 + 8 * i, 0);
        }
        for i in 0..MTA_LEN {
            r.write32(MTA + 4 * i, 0);
        }
        // Counters start from zero (they clear on read, on real hardware).
        self.read_hw_counters(false);
        let r = &self.regs;
        self.rx.clear();
        let rx_iova = self.rx.iova().0;
        r.write32(RDBAL, rx_iova as u32);
        r.write32(RDBAH, (rx_iova >> 32) as u32);
        r.write32(RDLEN, self.rx.len_bytes());
        r.write32(RDH, 0);
        r.write32(RDT, 0);
        r.write32(RDTR, 0);
        r.write32(RADV, 0);
        self.rctl = RCTL_EN
            | RCTL_BAM
            | RCTL_SECRC
            | RCTL_RDMTS_HALF
            | rctl_bsize(self.config.rx_buffer_bytes).unwrap_or(0)
            | if self.config.promiscuous {
                RCTL_UPE | RCTL_MPE
            } else {
                0
            }
            | if self.config.all_multicast {
                RCTL_MPE
            } else {
                0
            };
        r.write32(RCTL, self.rctl);

        // 14.5 Transmit initialisation: ring, TCTL, TIPG.
        self.tx.clear();
        let tx_iova = self.tx.iova().0;
        r.write32(TDBAL, tx_iova as u32);
        r.write32(TDBAH, (tx_iova >> 32) as u32);
        r.write32(TDLEN, self.tx.len_bytes());
        r.write32(TDH, 0);
        r.write32(TDT, 0);
        r.write32(TIDV, 0);
        r.write32(TADV, 0);
        // CT = 0x0F (16 retries), COLD = 0x40 (full duplex), pad short packets.
        r.write32(
            TCTL,
            TCTL_EN | TCTL_PSP | (0x0F << TCTL_CT_SHIFT) | (0x40 << TCTL_COLD_SHIFT),
        );
        // IEEE 802.3 copper: IPGT 10, IPGR1 8, IPGR2 6 (SDM 13.4.34, Table 13-77).
        r.write32(
            TIPG,
            (10 << TIPG_IPGT_SHIFT) | (8 << TIPG_IPGR1_SHIFT) | (6 << TIPG_IPGR2_SHIFT),
        );

        // Interrupts last, once the rings are ready.
        r.write32(ITR, u32::from(self.config.itr_256ns));
        if self.irq.is_some() {
            r.write32(IMS, IMS_CAUSES);
        }
        log::info!(
            "e1000 {} up: MAC {}, link {:?}, RX ring {}x{} B at IOVA {}, TX ring {} at IOVA {}, {}",
            self.identity.id,
            self.mac,
            self.link(),
            self.rx.size(),
            self.config.rx_buffer_bytes,
            self.rx.iova(),
            self.tx.size(),
            self.tx.iova(),
            if self.irq.is_some() {
                "INTx"
            } else {
                "polling"
            }
        );
        Ok(())
    }

    /// The station address: RAL0/RAH0 if valid (loaded from the EEPROM at power-up),
    /// otherwise EEPROM words 0-2 read through EERD.
    fn read_mac(&self) -> Result<MacAddr, Error> {
        let ral = self.regs.read32(RAL0);
        let rah = self.regs.read32(RAH0);
        let l = ral.to_le_bytes();
        let h = rah.to_le_bytes();
        let from_ra = MacAddr([l[0], l[1], l[2], l[3], h[0], h[1]]);
        if rah & RAH_AV != 0 && from_ra.is_unicast() {
            return Ok(from_ra);
        }
        let mut mac = [0u8; 6];
        for word in 0..3u32 {
            let w = self.eeprom_read(word)?.to_le_bytes();
            mac[2 * word as usize] = w[0];
            mac[2 * word as usize + 1] = w[1];
        }
        Ok(MacAddr(mac))
    }

    /// Reads one 16-bit EEPROM word through EERD (SDM 13.4.4).
    fn eeprom_read(&self, word: u32) -> Result<u16, Error> {
        self.regs
            .write32(EERD, EERD_START | (word << EERD_ADDR_SHIFT));
        let start = Instant::now();
        loop {
            let v = self.regs.read32(EERD);
            if v & EERD_DONE != 0 {
                return Ok((v >> EERD_DATA_SHIFT) as u16);
            }
            if start.elapsed() > Duration::from_millis(10) {
                return Err(Error::Timeout {
                    what: "EEPROM read (EERD)",
                    waited_ms: 10,
                });
            }
            std::thread::yield_now();
        }
    }

    /// Reads the statistics registers into the software totals.
    fn read_hw_counters(&mut self, accumulate: bool) {
        let r = &self.regs;
        let pair = |lo: u32, hi: u32| u64::from(r.read32(lo)) | (u64::from(r.read32(hi)) << 32);
        let mut d = Stats {
            rx_packets: u64::from(r.read32(GPRC)),
            rx_bytes: pair(GORCL, GORCH),
            tx_packets: u64::from(r.read32(GPTC)),
            tx_bytes: pair(GOTCL, GOTCH),
            rx_total_packets: u64::from(r.read32(TPR)),
            tx_total_packets: u64::from(r.read32(TPT)),
            rx_broadcast: u64::from(r.read32(BPRC)),
            rx_multicast: u64::from(r.read32(MPRC)),
            rx_undersize: u64::from(r.read32(RUC)),
            rx_oversize: u64::from(r.read32(ROC)),
            ..Stats::default()
        };
        let mut sticky = [0u64; QEMU_STICKY.len()];
        for (i, reg) in QEMU_STICKY.iter().enumerate() {
            let v = r.read32(*reg);
            sticky[i] = if self.identity.qemu {
                let delta = v.wrapping_sub(self.sticky_last[i]);
                self.sticky_last[i] = v;
                u64::from(delta)
            } else {
                u64::from(v)
            };
        }
        [
            d.rx_crc_errors,
            d.rx_errors,
            d.rx_missed,
            d.rx_no_buffer,
            d.collisions,
        ] = sticky;
        if !accumulate {
            return;
        }
        let s = &mut self.stats;
        s.rx_packets += d.rx_packets;
        s.rx_bytes += d.rx_bytes;
        s.tx_packets += d.tx_packets;
        s.tx_bytes += d.tx_bytes;
        s.rx_total_packets += d.rx_total_packets;
        s.tx_total_packets += d.tx_total_packets;
        s.rx_broadcast += d.rx_broadcast;
        s.rx_multicast += d.rx_multicast;
        s.rx_undersize += d.rx_undersize;
        s.rx_oversize += d.rx_oversize;
        s.rx_crc_errors += d.rx_crc_errors;
        s.rx_errors += d.rx_errors;
        s.rx_missed += d.rx_missed;
        s.rx_no_buffer += d.rx_no_buffer;
        s.collisions += d.collisions;
    }

    /// The device this driver was told it drives.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The configuration it was brought up with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The IOVA at which a registered area starts (what descriptors point to).
    pub fn area_iova(&self, area: AreaId) -> Option<Iova> {
        self.areas.iova(area)
    }

    /// Whether the device may write an area (RX) or only read it (TX).
    pub fn area_access(&self, area: AreaId) -> Option<DmaAccess> {
        self.areas.access(area)
    }

    /// Register file access (diagnostics and tests).
    pub fn regs(&self) -> &R {
        &self.regs
    }

    fn publish_rx(&self) {
        doorbell_fence();
        self.regs.write32(RDT, self.rx_idx.hw_tail());
    }

    fn publish_tx(&self) {
        doorbell_fence();
        self.regs.write32(TDT, self.tx_idx.hw_tail());
    }

    /// Fault injection: posts one receive descriptor at `iova` that no data area backs
    /// with write permission, to check that the IOMMU refuses the NIC's write (the guest
    /// kernel logs a DMAR fault) and no memory changes. Refused if the buffer would
    /// overlap memory the NIC may legitimately write (its rings or an RX area), so it can
    /// never corrupt anything; pointing it into a TX area checks that those really are
    /// device-read-only. The completion is consumed by `rx_poll` and only counted
    /// ([`E1000::raw_completions`]).
    pub fn inject_rx_descriptor(&mut self, iova: Iova) -> Result<(), Error> {
        let len = u64::from(self.config.rx_buffer_bytes);
        let end = iova
            .0
            .checked_add(len)
            .ok_or(Error::FaultInjection("IOVA range overflows"))?;
        let writable = [
            (self.rx.iova().0, u64::from(self.rx.len_bytes())),
            (self.tx.iova().0, u64::from(self.tx.len_bytes())),
        ]
        .into_iter()
        .chain(self.areas.device_writable());
        for (start, bytes) in writable {
            if iova.0 < start + bytes && start < end {
                return Err(Error::FaultInjection(
                    "IOVA overlaps memory the NIC may write (a ring or an RX area)",
                ));
            }
        }
        if iova.0 == 0 {
            return Err(Error::FaultInjection("IOVA 0 means \"skip\" to the NIC"));
        }
        if self.rx_idx.space() == 0 {
            return Err(Error::FaultInjection("RX ring full"));
        }
        let slot = self.rx_idx.slot(self.rx_idx.tail());
        self.rx.write(slot, RxDesc::empty(iova.0).to_words());
        self.rx_shadow[slot] = RxSlot {
            raw: true,
            ..RxSlot::default()
        };
        self.rx_idx.push();
        self.publish_rx();
        Ok(())
    }

    /// Injected descriptors the NIC completed (see `inject_rx_descriptor`).
    pub fn raw_completions(&self) -> u64 {
        self.raw_completions
    }
}

impl<R: Regs> Nic for E1000<R> {
    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn link(&self) -> LinkStatus {
        let s = self.regs.read32(STATUS);
        let up = s & STATUS_LU != 0;
        LinkStatus {
            up,
            speed_mbps: if up {
                match (s >> STATUS_SPEED_SHIFT) & 3 {
                    0 => 10,
                    1 => 100,
                    _ => 1000,
                }
            } else {
                0
            },
            full_duplex: s & STATUS_FD != 0,
        }
    }

    fn stats(&mut self) -> Stats {
        self.read_hw_counters(true);
        self.stats
    }

    fn set_promiscuous(&mut self, on: bool) {
        let bits = RCTL_UPE | RCTL_MPE;
        let mut rctl = self.rctl & !bits;
        if on {
            rctl |= bits;
        } else if self.config.all_multicast {
            rctl |= RCTL_MPE;
        }
        self.config.promiscuous = on;
        if rctl != self.rctl {
            self.rctl = rctl;
            self.regs.write32(RCTL, rctl);
        }
    }

    fn set_all_multicast(&mut self, on: bool) {
        self.config.all_multicast = on;
        let mut rctl = self.rctl & !RCTL_MPE;
        if on || self.config.promiscuous {
            rctl |= RCTL_MPE;
        }
        if rctl != self.rctl {
            self.rctl = rctl;
            self.regs.write32(RCTL, rctl);
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
        self.rx_idx.space()
    }

    fn tx_space(&self) -> usize {
        self.tx_idx.space()
    }

    fn rx_post(&mut self, id: AreaId, empty: &[IoRec]) -> Result<usize, Error> {
        let area = self.areas.get(id, Direction::Rx)?;
        let (base, area_len) = (area.mapping.iova(), area.len_bytes);
        let min = self.config.rx_buffer_bytes;
        let mut accepted = 0;
        let mut refused = None;
        for (index, rec) in empty.iter().enumerate() {
            if self.rx_idx.space() == 0 {
                break;
            }
            let e = match check_rx_buffer(rec, index, accepted, area_len, min) {
                Ok(e) => e,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            };
            let slot = self.rx_idx.slot(self.rx_idx.tail());
            self.rx.write(
                slot,
                RxDesc::empty(base.0 + u64::from(e.offset())).to_words(),
            );
            self.rx_shadow[slot] = RxSlot {
                tag: rec.tag(),
                offset: e.offset(),
                len: e.len(),
                area: id.0,
                raw: false,
            };
            self.rx_idx.push();
            accepted += 1;
        }
        if accepted > 0 {
            if let Some(a) = self.areas.get_mut(id.0) {
                a.in_flight += accepted;
            }
            self.publish_rx();
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
        while count < full.len() && self.rx_idx.in_flight() > 0 {
            let slot = self.rx_idx.slot(self.rx_idx.head());
            let status_word = self.rx.status_word(slot);
            if RxDesc::from_words([0, status_word]).status & RXD_STAT_DD == 0 {
                break;
            }
            // DD seen with Acquire: read the whole write-back again, after it.
            let d = RxDesc::from_words(self.rx.read(slot));
            let s = self.rx_shadow[slot];
            if s.raw {
                self.raw_completions += 1;
                self.rx_idx.pop(1);
                continue;
            }
            if batch_area.is_some_and(|a| a != s.area) {
                break;
            }
            batch_area = Some(s.area);
            let mut flags = 0;
            if d.errors & RXD_ERR_FRAME != 0 {
                flags |= IOREC_RX_ERROR;
            }
            if d.status & RXD_STAT_EOP == 0 {
                flags |= IOREC_RX_FRAGMENT;
            }
            let mut len = u32::from(d.length);
            if len > s.len {
                // Device input beyond the buffer: never report more than was lent.
                flags |= IOREC_RX_ERROR;
                len = s.len;
            }
            if flags != 0 {
                self.stats.rx_error_buffers += 1;
            }
            let mut rec = IoRec::single(s.tag, Extent::new(s.offset, len));
            rec.set_flags(flags);
            full[count] = rec;
            count += 1;
            self.rx_idx.pop(1);
        }
        let area = batch_area?;
        if let Some(a) = self.areas.get_mut(area) {
            a.in_flight -= count;
        }
        self.stats.rx_buffers += count as u64;
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
        for (index, rec) in recs.iter().enumerate() {
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
            if extents.len() > self.tx_idx.space() {
                break; // all or nothing: wait for room
            }
            let last = extents.len() - 1;
            for (j, e) in extents.iter().enumerate() {
                let cmd = if j == last {
                    TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS
                } else {
                    TXD_CMD_IFCS
                };
                let slot = self.tx_idx.slot(self.tx_idx.tail());
                // Each extent is at most MAX_TX_FRAME_BYTES (checked above): fits 16 bits.
                self.tx.write(
                    slot,
                    TxDesc::data(base.0 + u64::from(e.offset()), e.len() as u16, cmd).to_words(),
                );
                self.tx_shadow[slot] = (j == last).then_some(TxSlot {
                    rec: *rec,
                    area: id.0,
                });
                self.tx_idx.push();
            }
            accepted += 1;
        }
        if accepted > 0 {
            if let Some(a) = self.areas.get_mut(id.0) {
                a.in_flight += accepted;
            }
            self.publish_tx();
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
        'frames: while count < done.len() && self.tx_idx.in_flight() > 0 {
            // The oldest frame ends at the first slot carrying its IOrec (RS is set there).
            let head = self.tx_idx.head();
            let mut n = 0;
            let eop = loop {
                if n >= self.tx_idx.in_flight() {
                    break 'frames; // cannot happen: every frame ends with a shadow entry
                }
                let slot = self.tx_idx.slot(head.wrapping_add(n));
                n += 1;
                if let Some(s) = self.tx_shadow[slot] {
                    break (slot, s);
                }
            };
            let (slot, s) = eop;
            let status = TxDesc::from_words([0, self.tx.status_word(slot)]).status;
            if status & TXD_STAT_DD == 0 {
                break;
            }
            if batch_area.is_some_and(|a| a != s.area) {
                break;
            }
            batch_area = Some(s.area);
            self.tx_shadow[slot] = None;
            done[count] = s.rec;
            count += 1;
            self.tx_idx.pop(n);
        }
        let area = batch_area?;
        if let Some(a) = self.areas.get_mut(area) {
            a.in_flight -= count;
        }
        self.stats.tx_iorecs += count as u64;
        Some(Batch {
            area: AreaId(area),
            count,
        })
    }

    fn event_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.irq.as_ref().map(Interrupt::as_fd)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let irq = self.irq.as_ref().ok_or(Error::NoInterrupts)?;
        if irq.wait(timeout)? == 0 {
            return Ok(false);
        }
        // Reading ICR clears the causes and lowers INTx; only then may VFIO unmask it.
        let icr = self.regs.read32(ICR);
        self.stats.interrupts += 1;
        if icr & ICR_LSC != 0 {
            log::info!("e1000 link change: {:?}", self.link());
        }
        if let Some(device) = &self.device {
            device.unmask_intx()?;
        }
        Ok(true)
    }
}

impl<R: Regs> Drop for E1000<R> {
    fn drop(&mut self) {
        // Stop all DMA before the mappings (fields, dropped after this) are removed.
        self.regs.write32(IMC, u32::MAX);
        self.regs.write32(RCTL, 0);
        self.regs.write32(TCTL, 0);
        let _ = self.regs.read32(STATUS); // flush posted writes
        if let Some(device) = &self.device {
            if self.irq.is_some()
                && let Err(e) = device.disable_irq(crate::vfio::INTX)
            {
                log::warn!("{e}");
            }
            if let Err(e) = device.set_bus_master(false) {
                log::error!(
                    "{}: cannot stop bus mastering before unmapping: {e}",
                    device.address()
                );
            }
        }
    }
}

impl<R: Regs> fmt::Debug for E1000<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E1000")
            .field("identity", &self.identity)
            .field("mac", &self.mac)
            .field("rx", &self.rx_idx)
            .field("tx", &self.tx_idx)
            .finish_non_exhaustive()
    }
}
