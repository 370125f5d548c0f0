//! A fake 8254x, a fake virtio-net ([`virtio`]) and a fake IOMMU, so ring logic and the `Nic` contract are tested without
//! hardware (STYLE rule 11). Built for unit tests and with the `fake` feature (for the
//! tests of layers above, e.g. rbuf-channel glue).
//!
//! [`FakeIommu`] keeps a translation table like a real IOMMU: each DMA access of the fake
//! device is checked against it (present, inside one mapping, write permission), and a
//! refused access is recorded as a [`DmaFault`] instead of touching memory, as the Intel
//! IOMMU reports a DMAR fault. [`FakeE1000`] models the registers and the legacy
//! descriptor rings the way the SDM describes them (clear-on-read counters, RST that
//! resets), with switches for QEMU's deviations where a test needs them.
//!
//! `unsafe` here is the emulated DMA itself: copies to and from process memory the
//! IOMMU table says is mapped. Its soundness rests on [`FakeIommu::new`]'s contract.

pub mod virtio;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::Error;
use crate::dma::{DmaAccess, Iommu};
use crate::e1000::regs::*;
use crate::mmio::Regs;
use crate::nic::MacAddr;
use crate::vfio::{Interrupt, Iova, IovaAllocator};

/// A DMA access the fake IOMMU refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// First byte of the access.
    pub iova: u64,
    /// Its length.
    pub len_bytes: usize,
    /// A write (the device storing into memory) rather than a read.
    pub write: bool,
    /// `not mapped` or `write to a device-read-only mapping`.
    pub reason: &'static str,
}

#[derive(Debug)]
struct FakeMap {
    vaddr: usize,
    len_bytes: usize,
    access: DmaAccess,
}

#[derive(Debug)]
struct IommuState {
    alloc: IovaAllocator,
    maps: BTreeMap<u64, FakeMap>,
    faults: Vec<DmaFault>,
}

/// An IOMMU in software: a translation table and a fault log.
#[derive(Debug)]
pub struct FakeIommu {
    state: Mutex<IommuState>,
}

impl FakeIommu {
    /// A fake IOMMU with a 39-bit address space.
    ///
    /// # Safety
    /// A real IOMMU pins what it maps; this one cannot. Memory mapped through it (data
    /// areas registered with a NIC using it, most importantly) must stay mapped in the
    /// process until it is unmapped here, i.e. outlive the NIC.
    pub unsafe fn new() -> Arc<FakeIommu> {
        Arc::new(FakeIommu {
            state: Mutex::new(IommuState {
                alloc: IovaAllocator::new(&[], 4096),
                maps: BTreeMap::new(),
                faults: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IommuState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accesses refused so far.
    pub fn faults(&self) -> Vec<DmaFault> {
        self.lock().faults.clone()
    }

    /// Live mappings: IOVA, length, access.
    pub fn mappings(&self) -> Vec<(Iova, usize, DmaAccess)> {
        self.lock()
            .maps
            .iter()
            .map(|(iova, m)| (Iova(*iova), m.len_bytes, m.access))
            .collect()
    }

    /// Translates an access, or records the fault.
    fn translate(&self, iova: u64, len: usize, write: bool) -> Option<*mut u8> {
        let mut st = self.lock();
        let hit = st.maps.range(..=iova).next_back().and_then(|(start, m)| {
            let off = (iova - start) as usize;
            (off.checked_add(len)? <= m.len_bytes).then_some((m.vaddr + off, m.access))
        });
        let reason = match hit {
            Some((vaddr, access)) if !write || access == DmaAccess::DeviceWrites => {
                return Some(vaddr as *mut u8);
            }
            Some(_) => "write to a device-read-only mapping",
            None => "not mapped",
        };
        st.faults.push(DmaFault {
            iova,
            len_bytes: len,
            write,
            reason,
        });
        None
    }

    /// Device reads `buf.len()` bytes at `iova`; false (and a fault) if refused.
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> bool {
        let Some(src) = self.translate(iova, buf.len(), false) else {
            return false;
        };
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `translate` found `[src, src + len)` inside a live mapping, which
            // `FakeIommu::new`'s contract keeps mapped; volatile byte reads make no
            // reference and tolerate any contents.
            *b = unsafe { src.add(i).read_volatile() };
        }
        true
    }

    /// Device writes `data` at `iova`; false (and a fault) if refused.
    fn dma_write(&self, iova: u64, data: &[u8]) -> bool {
        let Some(dst) = self.translate(iova, data.len(), true) else {
            return false;
        };
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `translate` found `[dst, dst + len)` inside a live device-writable
            // mapping, writable in this process (`Iommu::map`'s contract) and kept mapped
            // (`FakeIommu::new`'s); nothing holds a reference into DMA memory, and the
            // fake device runs on the driver's thread (`FakeE1000` is not `Send`).
            unsafe { dst.add(i).write_volatile(*b) };
        }
        true
    }
}

impl Iommu for FakeIommu {
    unsafe fn map(
        &self,
        vaddr: *mut u8,
        len_bytes: usize,
        access: DmaAccess,
    ) -> Result<Iova, Error> {
        let mut st = self.lock();
        let iova = st
            .alloc
            .alloc(len_bytes as u64)
            .ok_or(Error::IovaExhausted {
                len_bytes: len_bytes as u64,
            })?;
        st.maps.insert(
            iova.0,
            FakeMap {
                vaddr: vaddr as usize,
                len_bytes,
                access,
            },
        );
        Ok(iova)
    }

    fn unmap(&self, iova: Iova, len_bytes: usize) -> Result<(), Error> {
        let mut st = self.lock();
        match st.maps.get(&iova.0) {
            Some(m) if m.len_bytes == len_bytes => {
                st.maps.remove(&iova.0);
                st.alloc.free(iova, len_bytes as u64);
                Ok(())
            }
            _ => Err(Error::Dma {
                op: "unmap",
                iova: iova.0,
                len_bytes: len_bytes as u64,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such mapping"),
            }),
        }
    }
}

const REG_WORDS: usize = 0x20000 / 4;

/// Statistics registers that clear when read.
const CLEAR_ON_READ: [u32; 13] = [
    GPRC, GPTC, TPR, TPT, BPRC, MPRC, RUC, ROC, CRCERRS, RXERRC, MPC, RNBC, COLC,
];

struct State {
    regs: Vec<u32>,
    iommu: Arc<FakeIommu>,
    eeprom: [u16; 64],
    sent: Vec<Vec<u8>>,
    tx_frame: Vec<u8>,
    tx_bad: bool,
    /// Descriptors the device read for transmission, in order (for command-bit checks).
    tx_descs: Vec<[u64; 2]>,
    irq: Option<Interrupt>,
    line: bool,
    /// QEMU's deviation: MPC, RNBC and friends never clear.
    sticky_counters: bool,
    /// QEMU's deviation: CTRL.RST resets nothing.
    rst_is_noop: bool,
    /// When false, a reset leaves RAL0/RAH0 invalid (to exercise the EEPROM path).
    load_ra_from_eeprom: bool,
}

impl State {
    fn r(&self, off: u32) -> u32 {
        self.regs[(off / 4) as usize]
    }

    fn w(&mut self, off: u32, v: u32) {
        self.regs[(off / 4) as usize] = v;
    }

    fn add(&mut self, off: u32, n: u32) {
        let v = self.r(off).saturating_add(n);
        self.w(off, v);
    }

    fn add64(&mut self, lo: u32, hi: u32, n: u64) {
        let v = (u64::from(self.r(lo)) | u64::from(self.r(hi)) << 32).saturating_add(n);
        self.w(lo, v as u32);
        self.w(hi, (v >> 32) as u32);
    }

    fn power_on(&mut self) {
        let keep_eeprom = self.eeprom;
        self.regs.iter_mut().for_each(|r| *r = 0);
        self.w(CTRL, CTRL_SLU | CTRL_FD);
        self.w(STATUS, STATUS_LU | STATUS_FD | (2 << STATUS_SPEED_SHIFT));
        if self.load_ra_from_eeprom {
            let e = keep_eeprom;
            self.w(RAL0, u32::from(e[0]) | u32::from(e[1]) << 16);
            self.w(RAH0, u32::from(e[2]) | RAH_AV);
        }
        self.line = false;
    }

    fn mac(&self) -> [u8; 6] {
        let l = self.r(RAL0).to_le_bytes();
        let h = self.r(RAH0).to_le_bytes();
        [l[0], l[1], l[2], l[3], h[0], h[1]]
    }

    fn raise(&mut self, cause: u32) {
        let icr = self.r(ICR) | cause;
        self.w(ICR, icr);
        self.update_line();
    }

    /// INTx is a level; the eventfd is signalled on each rising edge, as VFIO does.
    fn update_line(&mut self) {
        let level = self.r(ICR) & self.r(IMS) != 0;
        if level
            && !self.line
            && let Some(irq) = &self.irq
        {
            let _ = irq.signal();
        }
        self.line = level;
    }

    fn ring(&self, bal: u32, bah: u32, len: u32) -> (u64, u32) {
        let base = u64::from(self.r(bal) & !0xf) | u64::from(self.r(bah)) << 32;
        (base, self.r(len) / 16)
    }

    fn read_desc(&self, base: u64, i: u32) -> Option<[u64; 2]> {
        let mut b = [0u8; 16];
        if !self.iommu.dma_read(base + 16 * u64::from(i), &mut b) {
            return None;
        }
        Some([
            u64::from_le_bytes(b[..8].try_into().ok()?),
            u64::from_le_bytes(b[8..].try_into().ok()?),
        ])
    }

    fn transmit(&mut self) {
        if self.r(TCTL) & TCTL_EN == 0 {
            return;
        }
        let (base, n) = self.ring(TDBAL, TDBAH, TDLEN);
        if n == 0 {
            return;
        }
        let mut cause = ICR_TXQE;
        while self.r(TDH) != self.r(TDT) && self.r(TDT) < n {
            let i = self.r(TDH);
            let Some(w) = self.read_desc(base, i) else {
                break; // ring not readable: the device stalls
            };
            self.tx_descs.push(w);
            let d = crate::e1000::desc::TxDesc::from_words(w);
            let mut data = vec![0u8; usize::from(d.length)];
            if !data.is_empty() && !self.iommu.dma_read(d.addr, &mut data) {
                self.tx_bad = true;
            }
            self.tx_frame.extend_from_slice(&data);
            if d.cmd & crate::e1000::desc::TXD_CMD_EOP != 0 {
                let frame = std::mem::take(&mut self.tx_frame);
                if !std::mem::take(&mut self.tx_bad) {
                    let len = frame.len() as u64 + 4;
                    self.add(GPTC, 1);
                    self.add(TPT, 1);
                    self.add64(GOTCL, GOTCH, len);
                    self.sent.push(frame);
                }
            }
            if d.cmd & crate::e1000::desc::TXD_CMD_RS != 0 {
                let at = base + 16 * u64::from(i) + 12;
                self.iommu.dma_write(at, &[crate::e1000::desc::TXD_STAT_DD]);
                cause |= ICR_TXDW;
            }
            self.w(TDH, (i + 1) % n);
        }
        self.raise(cause);
    }

    fn receive(&mut self, frame: &[u8], errors: u8) -> bool {
        if self.r(RCTL) & RCTL_EN == 0 || self.r(STATUS) & STATUS_LU == 0 {
            return false;
        }
        let rctl = self.r(RCTL);
        let dst: [u8; 6] = match frame.get(..6).and_then(|d| d.try_into().ok()) {
            Some(d) => d,
            None => return false,
        };
        let accept = rctl & RCTL_UPE != 0
            || dst == self.mac()
            || (dst == [0xff; 6] && rctl & RCTL_BAM != 0)
            || (dst[0] & 1 == 1 && rctl & RCTL_MPE != 0);
        if !accept {
            return false;
        }
        let mut data = frame.to_vec();
        if data.len() < 60 {
            data.resize(60, 0);
        }
        let bufsize: usize = match (rctl >> RCTL_BSIZE_SHIFT) & 3 {
            0 => 2048,
            1 => 1024,
            2 => 512,
            _ => 256,
        } << if rctl & RCTL_BSEX != 0 { 4 } else { 0 };
        let (base, n) = self.ring(RDBAL, RDBAH, RDLEN);
        let needed = data.len().div_ceil(bufsize) as u32;
        let (h, t) = (self.r(RDH), self.r(RDT));
        let free = if t >= h { t - h } else { n - h + t };
        if n == 0 || free < needed {
            self.add(MPC, 1);
            self.add(RNBC, 1);
            self.raise(ICR_RXO);
            return false;
        }
        let chunks: Vec<&[u8]> = data.chunks(bufsize).collect();
        for (k, chunk) in chunks.iter().enumerate() {
            let i = self.r(RDH);
            let Some(w) = self.read_desc(base, i) else {
                return false;
            };
            let addr = w[0];
            if addr != 0 {
                // A refused write leaves memory alone; the descriptor is written back
                // anyway, as QEMU's model does.
                self.iommu.dma_write(addr, chunk);
            }
            let eop = k + 1 == chunks.len();
            let status = crate::e1000::desc::RXD_STAT_DD
                | if eop {
                    crate::e1000::desc::RXD_STAT_EOP
                } else {
                    0
                };
            let wb = crate::e1000::desc::RxDesc {
                addr,
                length: chunk.len() as u16,
                csum: 0,
                status,
                errors: if eop { errors } else { 0 },
                special: 0,
            }
            .to_words();
            self.iommu
                .dma_write(base + 16 * u64::from(i) + 8, &wb[1].to_le_bytes());
            self.w(RDH, (i + 1) % n);
        }
        if errors & crate::e1000::desc::RXD_ERR_CE != 0 {
            self.add(CRCERRS, 1);
        } else {
            self.add(GPRC, 1);
            self.add64(GORCL, GORCH, data.len() as u64 + 4);
        }
        self.add(TPR, 1);
        if dst == [0xff; 6] {
            self.add(BPRC, 1);
        }
        self.raise(ICR_RXT0);
        true
    }
}

/// A fake 8254x. Clones are handles on the same device: give one to the driver (as its
/// register file) and keep one to inject frames and look at what was sent.
#[derive(Clone)]
pub struct FakeE1000 {
    state: Rc<RefCell<State>>,
}

impl FakeE1000 {
    /// A powered-on device whose EEPROM holds `mac`, DMAing through `iommu`.
    pub fn new(iommu: Arc<FakeIommu>, mac: MacAddr) -> FakeE1000 {
        let mut eeprom = [0xffffu16; 64];
        for (word, bytes) in eeprom.iter_mut().zip(mac.0.chunks(2)) {
            *word = u16::from_le_bytes([bytes[0], bytes[1]]);
        }
        let mut st = State {
            regs: vec![0; REG_WORDS],
            iommu,
            eeprom,
            sent: Vec::new(),
            tx_frame: Vec::new(),
            tx_bad: false,
            tx_descs: Vec::new(),
            irq: None,
            line: false,
            sticky_counters: false,
            rst_is_noop: false,
            load_ra_from_eeprom: true,
        };
        st.power_on();
        FakeE1000 {
            state: Rc::new(RefCell::new(st)),
        }
    }

    /// Behave like QEMU's model: CTRL.RST resets nothing and MPC/RNBC/CRCERRS/RXERRC/COLC
    /// never clear.
    pub fn qemu_quirks(self) -> FakeE1000 {
        {
            let mut st = self.state.borrow_mut();
            st.sticky_counters = true;
            st.rst_is_noop = true;
        }
        self
    }

    /// Power on (and reset) with RAL0/RAH0 invalid, so the MAC must come from the EEPROM.
    pub fn without_receive_address(self) -> FakeE1000 {
        {
            let mut st = self.state.borrow_mut();
            st.load_ra_from_eeprom = false;
            st.power_on();
        }
        self
    }

    /// An interrupt for the driver, signalled on each rising edge of the INTx level.
    pub fn interrupt(&self) -> Result<Interrupt, Error> {
        let irq = Interrupt::new()?;
        self.state.borrow_mut().irq = Some(irq.try_clone()?);
        Ok(irq)
    }

    /// Delivers a frame from the wire. False if it was filtered or dropped (no buffer).
    pub fn deliver(&self, frame: &[u8]) -> bool {
        self.state.borrow_mut().receive(frame, 0)
    }

    /// Delivers a frame with receive error bits (RXD_ERR_*) in its last descriptor.
    pub fn deliver_with_errors(&self, frame: &[u8], errors: u8) -> bool {
        self.state.borrow_mut().receive(frame, errors)
    }

    /// Frames transmitted so far (taken).
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state.borrow_mut().sent)
    }

    /// Transmit descriptors the device processed so far (taken), as two words each.
    pub fn take_tx_descriptors(&self) -> Vec<[u64; 2]> {
        std::mem::take(&mut self.state.borrow_mut().tx_descs)
    }

    /// Sets the link state (raises LSC on a change).
    pub fn set_link(&self, up: bool) {
        let mut st = self.state.borrow_mut();
        let s = st.r(STATUS);
        let new = if up { s | STATUS_LU } else { s & !STATUS_LU };
        if new != s {
            st.w(STATUS, new);
            st.raise(ICR_LSC);
        }
    }

    /// Whether the INTx level is asserted.
    pub fn line(&self) -> bool {
        self.state.borrow().line
    }

    /// A register's value, without read side effects.
    pub fn peek(&self, offset: u32) -> u32 {
        self.state.borrow().r(offset)
    }
}

impl Regs for FakeE1000 {
    fn read32(&self, offset: u32) -> u32 {
        let mut st = self.state.borrow_mut();
        let v = st.r(offset);
        match offset {
            ICR => {
                st.w(ICR, 0);
                st.update_line();
            }
            GORCH | GOTCH | TORH | TOTH => {
                st.w(offset, 0);
                st.w(offset - 4, 0);
            }
            o if CLEAR_ON_READ.contains(&o) => {
                let sticky = [CRCERRS, RXERRC, MPC, RNBC, COLC].contains(&o);
                if !(sticky && st.sticky_counters) {
                    st.w(o, 0);
                }
            }
            _ => {}
        }
        v
    }

    fn write32(&self, offset: u32, value: u32) {
        let mut st = self.state.borrow_mut();
        match offset {
            CTRL => {
                if value & CTRL_RST != 0 && !st.rst_is_noop {
                    st.power_on();
                } else {
                    st.w(CTRL, value & !CTRL_RST);
                }
            }
            STATUS => {}
            ICR => {
                let v = st.r(ICR) & !value;
                st.w(ICR, v);
                st.update_line();
            }
            ICS => st.raise(value),
            IMS => {
                let v = st.r(IMS) | value;
                st.w(IMS, v);
                st.update_line();
            }
            IMC => {
                let v = st.r(IMS) & !value;
                st.w(IMS, v);
                st.update_line();
            }
            EERD => {
                let word = ((value >> EERD_ADDR_SHIFT) & 0xff) as usize;
                let v = if value & EERD_START != 0 {
                    let data = st.eeprom.get(word).copied().unwrap_or(0xffff);
                    (u32::from(data) << EERD_DATA_SHIFT) | EERD_DONE | (value & 0xff00)
                } else {
                    value
                };
                st.w(EERD, v);
            }
            RDLEN | TDLEN => st.w(offset, value & 0xfff80),
            RDH | RDT | TDH => st.w(offset, value & 0xffff),
            TDT => {
                st.w(TDT, value & 0xffff);
                st.transmit();
            }
            TCTL => {
                st.w(TCTL, value);
                st.transmit();
            }
            o if (STATS_START..STATS_END).contains(&o) => {}
            o => st.w(o, value),
        }
    }
}

impl std::fmt::Debug for FakeE1000 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("FakeE1000")
            .field("rdh", &st.r(RDH))
            .field("rdt", &st.r(RDT))
            .field("tdh", &st.r(TDH))
            .field("tdt", &st.r(TDT))
            .finish_non_exhaustive()
    }
}
