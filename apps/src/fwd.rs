//! `rbufnic fwd`: a two-port layer-2 forwarder without copies.
//!
//! One data area and one [`Pool`] of 2 KiB slots serve both ports in both directions (the
//! seed's "share data areas between pair-wise channels"): the area is registered with each
//! NIC twice, as an RX area (device-writable) and as a TX area (device-read-only). A buffer
//! is posted empty to port A's receive ring (receive master mode, the forwarder is master),
//! comes back full from `rx_poll`, and the very same IOrec, as received, is submitted to
//! port B's transmit ring (transmit master mode). When B reports it sent, the buffer goes
//! back to the pool and is posted again as an empty receive buffer on whichever port needs
//! one. Only IOrecs move; the frame stays where the NIC wrote it. An optional MAC rewrite
//! writes the 12 header bytes in place (the forwarder owns the buffer between receive and
//! transmit).
//!
//! Flow control instead of software drops: frames a full transmit ring cannot take wait in
//! a per-direction queue of at most one batch, and the receive side of that direction is not
//! polled until the queue drains, so an overloaded output fills the input NIC's ring and the
//! NIC counts the drop (MPC), where every NIC counts it.
//!
//! The loop is generic over [`Nic`], so it runs on any NIC the driver supports through
//! VFIO ([`open_pair`]: QEMU's e1000 models, virtio-net) and on the driver's fake device in
//! the unit tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use driver::{AnyNic, AreaId, IOREC_RX_ERROR, IOREC_RX_FRAGMENT, MacAddr, Nic, PciAddress};
use rbuf::{DataArea, IoRec, PagePolicy, Pool};

use crate::nics::{self, RxFilter};

/// Bytes per buffer: one slot of the pool, one receive buffer.
pub const BUFFER_BYTES: u32 = nics::BUFFER_BYTES;
/// Ethernet header bytes that a rewrite touches (destination then source MAC).
const MAC_BYTES: usize = 6;
/// Shortest frame forwarded: a frame must at least hold its Ethernet header.
const MIN_FRAME_BYTES: u32 = 14;
/// At stop, how long transmissions already queued may take to complete.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum FwdError {
    // The driver's and rbuf's errors are part of the message, not a `source`: a report
    // that prints the whole chain would otherwise say everything twice.
    /// A NIC could not be opened or driven.
    #[error("port {port} ({pci}): {error}")]
    Nic {
        /// `A` or `B`.
        port: char,
        /// The PCI address given for the port.
        pci: String,
        /// What the driver said.
        error: driver::Error,
    },
    /// A driver call failed while forwarding.
    #[error("port {port}: {op}: {error}")]
    Driver {
        /// `A` or `B`.
        port: char,
        /// The call that failed.
        op: &'static str,
        /// What the driver said.
        error: driver::Error,
    },
    /// The data area could not be created or written.
    #[error("data area: {0}")]
    Area(rbuf::Error),
    /// The options make no sense.
    #[error("{0}")]
    BadOptions(String),
}

impl From<rbuf::Error> for FwdError {
    fn from(error: rbuf::Error) -> FwdError {
        FwdError::Area(error)
    }
}

/// How to forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwdOptions {
    /// IOrecs per driver call (receive poll, transmit submit, reclaim, post).
    pub batch: usize,
    /// Destination MAC written into frames sent on port B (from A) and on port A (from B);
    /// `None` leaves that direction's destination as received.
    pub rewrite_dst: [Option<MacAddr>; 2],
    /// Write the sending port's own MAC as the source of every forwarded frame.
    pub rewrite_src: bool,
    /// Stop after this long (`None`: no limit).
    pub duration: Option<Duration>,
    /// Stop once this many frames were forwarded, both directions together (`None`: no
    /// limit).
    pub count: Option<u64>,
    /// Period of [`Event::Stats`].
    pub stats_interval: Duration,
}

impl Default for FwdOptions {
    fn default() -> FwdOptions {
        FwdOptions {
            batch: 32,
            rewrite_dst: [None, None],
            rewrite_src: false,
            duration: None,
            count: None,
            stats_interval: Duration::from_secs(1),
        }
    }
}

/// Counters of one port since forwarding started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received and taken for forwarding.
    pub rx_frames: u64,
    /// Their bytes (Ethernet header to payload end, no FCS).
    pub rx_bytes: u64,
    /// Frames this port finished transmitting.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames lost on the way in: the NIC found no receive buffer (MPC) or the forwarder
    /// dropped them (a frame the output refused, frames still queued at stop).
    pub drops: u64,
    /// Bad frames: receive errors the NIC counted (CRC, RX errors), buffers it returned
    /// flagged, runts, and IOrecs the driver refused for transmission on this port.
    pub errors: u64,
}

/// The counters of both ports at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Time since forwarding started.
    pub elapsed: Duration,
    /// Port A, then port B.
    pub ports: [PortCounters; 2],
}

/// Per-second rates of one port between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PortRates {
    /// Frames received per second.
    pub rx_pps: f64,
    /// Received megabits per second (10^6 bit/s, frame bytes without FCS).
    pub rx_mbps: f64,
    /// Frames transmitted per second.
    pub tx_pps: f64,
    /// Transmitted megabits per second.
    pub tx_mbps: f64,
}

impl Snapshot {
    /// Frames forwarded so far, both directions (transmissions completed).
    pub fn forwarded(&self) -> u64 {
        self.ports[0].tx_frames + self.ports[1].tx_frames
    }

    /// Rates of each port between `earlier` and `self` (zero if no time passed).
    pub fn rates_since(&self, earlier: &Snapshot) -> [PortRates; 2] {
        let secs = self.elapsed.saturating_sub(earlier.elapsed).as_secs_f64();
        let per_sec = |now: u64, then: u64| nics::per_sec(now, then, secs);
        let mut out = [PortRates::default(); 2];
        for (r, (now, then)) in out
            .iter_mut()
            .zip(self.ports.iter().zip(earlier.ports.iter()))
        {
            r.rx_pps = per_sec(now.rx_frames, then.rx_frames);
            r.rx_mbps = per_sec(now.rx_bytes, then.rx_bytes) * 8.0 / 1e6;
            r.tx_pps = per_sec(now.tx_frames, then.tx_frames);
            r.tx_mbps = per_sec(now.tx_bytes, then.tx_bytes) * 8.0 / 1e6;
        }
        out
    }
}

/// Why forwarding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `--count` frames were forwarded.
    Count,
    /// `--duration` passed.
    Duration,
    /// The stop flag was raised (Ctrl-C).
    Signal,
}

/// What a forwarding run reports to its caller (the library never prints).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Both ports are up and receiving; traffic may start.
    Ready {
        /// Each port's MAC address.
        macs: [MacAddr; 2],
        /// Each port's link.
        links: [driver::LinkStatus; 2],
        /// Buffers in the shared pool.
        buffers: usize,
    },
    /// Periodic counters, every [`FwdOptions::stats_interval`].
    Stats(Snapshot),
}

/// The final counters of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Counters at the end, after in-flight transmissions completed.
    pub last: Snapshot,
    /// Why the run ended.
    pub reason: StopReason,
    /// Pool buffers that were not back in the pool or posted for receive at the end
    /// (zero when every buffer is accounted for).
    pub unaccounted_buffers: usize,
}

struct Port<N> {
    nic: N,
    rx_area: AreaId,
    tx_area: AreaId,
    mac: MacAddr,
    /// Frames received on this port, to be sent on the other one (at most one batch).
    pending: Vec<IoRec>,
    /// Receive buffers posted to this port's NIC.
    posted: usize,
    /// IOrecs submitted to this port's transmit ring and not yet reclaimed.
    in_flight: usize,
    counters: PortCounters,
    /// Drops and errors counted by the forwarder itself (the NIC's come from `stats`).
    own_drops: u64,
    own_errors: u64,
    /// The NIC's counters when forwarding started.
    nic_base: driver::Stats,
}

const PORT_NAMES: [char; 2] = ['A', 'B'];

/// Two ports forwarding to each other through one shared data area.
pub struct Forwarder<N: Nic> {
    // Declared before the area: the NICs unmap the area (and stop DMA) when dropped.
    ports: [Port<N>; 2],
    pool: Pool,
    area: DataArea,
    opts: FwdOptions,
    scratch: Vec<IoRec>,
    started: Instant,
}

/// Size of the shared data area for two NICs whose rings hold up to `ring_entries`
/// descriptors each: room for both receive rings full, both transmit rings full and one
/// queued batch per direction, with the same again spare.
pub fn area_bytes_for(ring_entries: usize, batch: usize) -> usize {
    let buffers = 2 * (2 * ring_entries + batch);
    2 * buffers * BUFFER_BYTES as usize
}

impl<N: Nic> Forwarder<N> {
    /// Registers `area` with both NICs (RX and TX on each) and cuts it into the pool.
    pub fn new(a: N, b: N, area: DataArea, opts: FwdOptions) -> Result<Forwarder<N>, FwdError> {
        if opts.batch == 0 {
            return Err(FwdError::BadOptions("--batch must be at least 1".into()));
        }
        let mut ports = [a, b].map(|nic| Port {
            mac: nic.mac(),
            nic,
            rx_area: AreaId(0),
            tx_area: AreaId(0),
            pending: Vec::with_capacity(opts.batch),
            posted: 0,
            in_flight: 0,
            counters: PortCounters::default(),
            own_drops: 0,
            own_errors: 0,
            nic_base: driver::Stats::default(),
        });
        for (i, port) in ports.iter_mut().enumerate() {
            let err = |op, source| FwdError::Driver {
                port: PORT_NAMES[i],
                op,
                error: source,
            };
            port.rx_area = port
                .nic
                .add_rx_area(&area)
                .map_err(|e| err("register the RX area", e))?;
            port.tx_area = port
                .nic
                .add_tx_area(&area)
                .map_err(|e| err("register the TX area", e))?;
            // Count from here: what came before is not ours.
            port.nic_base = port.nic.stats();
        }
        let pool = Pool::slots(area.len(), BUFFER_BYTES);
        Ok(Forwarder {
            ports,
            pool,
            area,
            scratch: vec![IoRec::default(); opts.batch],
            opts,
            started: Instant::now(),
        })
    }

    /// Each port's MAC address.
    pub fn macs(&self) -> [MacAddr; 2] {
        [self.ports[0].mac, self.ports[1].mac]
    }

    /// The NIC of port `index` (0 = A).
    pub fn nic(&mut self, index: usize) -> &mut N {
        &mut self.ports[index].nic
    }

    /// Buffers in the shared pool.
    pub fn buffers(&self) -> usize {
        self.pool.capacity()
    }

    /// Restarts the clock of [`Snapshot::elapsed`].
    pub fn restart_clock(&mut self) {
        self.started = Instant::now();
    }

    /// One round of work: reclaim both transmit rings, refill both receive rings, move
    /// one batch each way. Returns whether anything happened.
    pub fn step(&mut self) -> Result<bool, FwdError> {
        let mut progress = false;
        for i in 0..2 {
            progress |= self.reclaim(i);
        }
        for i in 0..2 {
            progress |= self.refill(i)?;
        }
        for from in 0..2 {
            progress |= self.forward(from, 1 - from)?;
        }
        Ok(progress)
    }

    /// Takes transmitted IOrecs of port `i` back into the pool.
    fn reclaim(&mut self, i: usize) -> bool {
        let mut progress = false;
        let port = &mut self.ports[i];
        while let Some(b) = port.nic.tx_reclaim(&mut self.scratch) {
            for rec in &self.scratch[..b.count] {
                port.counters.tx_frames += 1;
                port.counters.tx_bytes += rec.total_len();
                self.pool.free(rec.tag() as u32);
            }
            port.in_flight -= b.count;
            progress = true;
        }
        progress
    }

    /// Posts free buffers to port `i`'s receive ring, a batch at a time.
    fn refill(&mut self, i: usize) -> Result<bool, FwdError> {
        let mut progress = false;
        loop {
            let port = &mut self.ports[i];
            let batch = self.scratch.len();
            // Our own IOrecs are refused only if the area or the configuration is wrong:
            // nothing later would work either.
            let posted = nics::post_rx(
                &mut port.nic,
                port.rx_area,
                &mut self.pool,
                &mut self.scratch,
            )
            .map_err(|source| FwdError::Driver {
                port: PORT_NAMES[i],
                op: "post receive buffers",
                error: source,
            })?;
            port.posted += posted;
            progress |= posted > 0;
            if posted < batch {
                return Ok(progress);
            }
        }
    }

    /// Moves frames received on port `from` to port `to`'s transmit ring.
    fn forward(&mut self, from: usize, to: usize) -> Result<bool, FwdError> {
        let mut progress = self.submit_pending(from, to);
        if !self.ports[from].pending.is_empty() {
            // The output is full: leave the input's frames in its ring (flow control).
            return Ok(progress);
        }
        let Some(batch) = self.ports[from].nic.rx_poll(&mut self.scratch) else {
            return Ok(progress);
        };
        progress = true;
        let dst = self.opts.rewrite_dst[to];
        let src = self.opts.rewrite_src.then_some(self.ports[to].mac);
        let port = &mut self.ports[from];
        port.posted -= batch.count;
        for rec in &self.scratch[..batch.count] {
            let len = rec.total_len();
            let bad = rec.flags() & (IOREC_RX_ERROR | IOREC_RX_FRAGMENT) != 0
                || rec.extents().len() != 1
                || len < u64::from(MIN_FRAME_BYTES);
            if bad {
                port.own_errors += 1;
                self.pool.free(rec.tag() as u32);
                continue;
            }
            let offset = rec.extents()[0].offset() as usize;
            if let Some(mac) = dst {
                self.area.write(offset, &mac.0)?;
            }
            if let Some(mac) = src {
                self.area.write(offset + MAC_BYTES, &mac.0)?;
            }
            port.counters.rx_frames += 1;
            port.counters.rx_bytes += len;
            // Zero copy: the IOrec goes out as it came in (same tag, offset, length).
            port.pending.push(*rec);
        }
        self.submit_pending(from, to);
        Ok(progress)
    }

    /// Submits port `from`'s queued frames to port `to`; returns whether any went.
    fn submit_pending(&mut self, from: usize, to: usize) -> bool {
        let [a, b] = &mut self.ports;
        let (src, dst) = if from == 0 { (a, b) } else { (b, a) };
        if src.pending.is_empty() {
            return false;
        }
        match dst.nic.tx_submit(dst.tx_area, &src.pending) {
            Ok(n) => {
                dst.in_flight += n;
                src.pending.drain(..n);
                n > 0
            }
            Err(source) => {
                // An IOrec the driver refuses (it checks every extent): count it as an
                // error, give its buffer back, keep the ones it accepted before it.
                let n = source.accepted().unwrap_or(0);
                log::warn!("port {}: transmit refused: {source}", PORT_NAMES[to]);
                dst.in_flight += n;
                src.pending.drain(..n);
                if !src.pending.is_empty() {
                    let rec = src.pending.remove(0);
                    dst.own_errors += 1;
                    self.pool.free(rec.tag() as u32);
                }
                true
            }
        }
    }

    /// The counters now (reads the NICs' statistics registers).
    pub fn snapshot(&mut self) -> Snapshot {
        let mut ports = [PortCounters::default(); 2];
        for (out, port) in ports.iter_mut().zip(self.ports.iter_mut()) {
            let s = port.nic.stats();
            let b = &port.nic_base;
            *out = port.counters;
            out.drops = s.rx_missed.saturating_sub(b.rx_missed) + port.own_drops;
            out.errors = s.rx_crc_errors.saturating_sub(b.rx_crc_errors)
                + s.rx_errors.saturating_sub(b.rx_errors)
                + port.own_errors;
        }
        Snapshot {
            elapsed: self.started.elapsed(),
            ports,
        }
    }

    /// Stops forwarding: sends what is queued if the output takes it, waits for every
    /// transmission to complete (up to a bound), and counts what is left as dropped.
    /// Returns how many pool buffers are neither free nor posted for receive.
    pub fn drain(&mut self) -> usize {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            for from in 0..2 {
                self.submit_pending(from, 1 - from);
            }
            for i in 0..2 {
                self.reclaim(i);
            }
            let busy = self
                .ports
                .iter()
                .any(|p| p.in_flight > 0 || !p.pending.is_empty());
            if !busy || Instant::now() >= deadline {
                break;
            }
            std::thread::yield_now();
        }
        for port in &mut self.ports {
            for rec in port.pending.drain(..) {
                port.own_drops += 1;
                self.pool.free(rec.tag() as u32);
            }
        }
        let posted: usize = self.ports.iter().map(|p| p.posted).sum();
        (self.pool.capacity() - self.pool.available()).saturating_sub(posted)
    }

    /// Forwards until `stop` is raised, `opts.duration` passes or `opts.count` frames were
    /// forwarded, reporting [`Event::Stats`] every `opts.stats_interval`.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Summary, FwdError> {
        self.restart_clock();
        let mut next_stats = self.started + self.opts.stats_interval;
        let deadline = self.opts.duration.map(|d| self.started + d);
        let reason = loop {
            if stop.load(Ordering::Relaxed) {
                break StopReason::Signal;
            }
            if self.opts.count.is_some_and(|n| self.forwarded() >= n) {
                break StopReason::Count;
            }
            let progress = self.step()?;
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break StopReason::Duration;
            }
            if now >= next_stats {
                next_stats += self.opts.stats_interval;
                if next_stats < now {
                    next_stats = now + self.opts.stats_interval;
                }
                on_event(Event::Stats(self.snapshot()));
            }
            if !progress {
                std::thread::yield_now();
            }
        };
        let unaccounted_buffers = self.drain();
        Ok(Summary {
            last: self.snapshot(),
            reason,
            unaccounted_buffers,
        })
    }

    fn forwarded(&self) -> u64 {
        self.ports[0].counters.tx_frames + self.ports[1].counters.tx_frames
    }
}

/// Opens the NICs at `pci` (port A, port B) through VFIO in promiscuous mode, so every
/// frame on either wire is forwarded.
pub fn open_pair(pci: [&str; 2]) -> Result<[AnyNic; 2], FwdError> {
    let err = |i: usize| {
        move |source| FwdError::Nic {
            port: PORT_NAMES[i],
            pci: pci[i].to_string(),
            error: source,
        }
    };
    // Both addresses are checked before either device is touched.
    let a: PciAddress = pci[0].parse().map_err(err(0))?;
    let b: PciAddress = pci[1].parse().map_err(err(1))?;
    if a == b {
        return Err(FwdError::BadOptions(format!(
            "port A and port B are the same device {a}"
        )));
    }
    Ok([
        nics::open(pci[0], RxFilter::Promiscuous).map_err(err(0))?,
        nics::open(pci[1], RxFilter::Promiscuous).map_err(err(1))?,
    ])
}

/// `rbufnic fwd`: opens the two NICs, forwards between them until `stop`, the duration or
/// the count, and returns the final counters. Events go to `on_event`.
pub fn run(
    pci: [&str; 2],
    opts: &FwdOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary, FwdError> {
    let [a, b] = open_pair(pci)?;
    let opened = Instant::now();
    let settle = nics::settle_time(&a).max(nics::settle_time(&b));
    let entries = nics::ring_entries(&nics::config(RxFilter::Promiscuous));
    let area = DataArea::create(area_bytes_for(entries, opts.batch), PagePolicy::PreferHuge)?;
    let mut fwd = Forwarder::new(a, b, area, opts.clone())?;
    // Receive may be held back after bring-up (QEMU's e1000); report ready only once
    // frames flow, so a sender does not fill QEMU's backend queue meanwhile.
    let until = opened + settle;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        fwd.step()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let links = [fwd.nic(0).link(), fwd.nic(1).link()];
    on_event(Event::Ready {
        macs: fwd.macs(),
        links,
        buffers: fwd.buffers(),
    });
    fwd.run(stop, on_event)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use driver::E1000;
    use driver::e1000::{Config, Identity, SUPPORTED};
    use driver::fake::{FakeE1000, FakeIommu};
    use rbufnic_tests::frame::{FrameGen, MacAddr as TestMac};

    use super::*;

    const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xa]);
    const MAC_B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xb]);

    struct Rig {
        // Before the IOMMUs: the forwarder's NICs unmap through them.
        fwd: Forwarder<E1000<FakeE1000>>,
        devs: [FakeE1000; 2],
        _iommus: [Arc<FakeIommu>; 2],
    }

    fn rig(opts: FwdOptions) -> Rig {
        let config = Config {
            promiscuous: true,
            ..Config::default()
        };
        let open = |mac: MacAddr| {
            // SAFETY: the only area mapped through this IOMMU is the forwarder's, which it
            // owns in a field declared after its NICs, so it is unmapped before it goes.
            let iommu = unsafe { FakeIommu::new() };
            let dev = FakeE1000::new(iommu.clone(), mac);
            let identity = Identity {
                id: SUPPORTED[0],
                qemu: false,
            };
            let nic = E1000::with_regs(dev.clone(), iommu.clone(), identity, &config, None)
                .expect("fake e1000");
            (nic, dev, iommu)
        };
        let (a, dev_a, iommu_a) = open(MAC_A);
        let (b, dev_b, iommu_b) = open(MAC_B);
        let entries = config.rx_ring_size.max(config.tx_ring_size) as usize;
        let area = DataArea::create(area_bytes_for(entries, opts.batch), PagePolicy::Shmem)
            .expect("data area");
        let fwd = Forwarder::new(a, b, area, opts).expect("forwarder");
        Rig {
            fwd,
            devs: [dev_a, dev_b],
            _iommus: [iommu_a, iommu_b],
        }
    }

    fn stream(seed: u64) -> FrameGen {
        FrameGen::new(seed, TestMac(MAC_A.0), TestMac([2, 0, 0, 0, 0, 1]))
            .with_len_range(60, 1514)
            .unwrap()
    }

    /// Steps until `until` holds, at most 10,000 rounds.
    fn step_until(
        fwd: &mut Forwarder<E1000<FakeE1000>>,
        mut until: impl FnMut(&mut Forwarder<E1000<FakeE1000>>) -> bool,
    ) {
        for _ in 0..10_000 {
            if until(fwd) {
                return;
            }
            fwd.step().unwrap();
        }
        panic!("no progress");
    }

    #[test]
    fn frames_cross_both_ways_unchanged_and_in_order() {
        const N: u64 = 1000;
        let mut r = rig(FwdOptions::default());
        let (ab, ba) = (stream(1), stream(2));
        let mut out: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        let mut next = [0u64; 2];
        r.fwd.step().unwrap(); // post receive buffers
        step_until(&mut r.fwd, |fwd| {
            // Offer a few frames each way per round, as a wire would.
            for (port, frames) in [(0, &ab), (1, &ba)] {
                for _ in 0..7 {
                    if next[port] < N && r.devs[port].deliver(&frames.frame(next[port])) {
                        next[port] += 1;
                    }
                }
            }
            for (i, dev) in r.devs.iter().enumerate() {
                out[i].extend(dev.take_sent());
            }
            let _ = fwd;
            out[0].len() as u64 == N && out[1].len() as u64 == N
        });
        // Port B sent what A received, byte for byte, in order; and the reverse.
        for (seq, frame) in out[1].iter().enumerate() {
            assert_eq!(frame, &ab.frame(seq as u64), "A->B frame {seq}");
        }
        for (seq, frame) in out[0].iter().enumerate() {
            assert_eq!(frame, &ba.frame(seq as u64), "B->A frame {seq}");
        }
        // Reclaims the last transmissions.
        assert_eq!(r.fwd.drain(), 0, "every buffer back in the pool or posted");
        let s = r.fwd.snapshot();
        let bytes = |g: &FrameGen| (0..N).map(|q| g.len_of(q) as u64).sum::<u64>();
        assert_eq!(s.ports[0].rx_frames, N);
        assert_eq!(s.ports[1].tx_frames, N);
        assert_eq!(s.ports[0].rx_bytes, bytes(&ab));
        assert_eq!(s.ports[1].tx_bytes, bytes(&ab));
        assert_eq!(s.ports[1].rx_bytes, bytes(&ba));
        assert_eq!(s.forwarded(), 2 * N);
        assert_eq!((s.ports[0].drops, s.ports[0].errors), (0, 0));
    }

    #[test]
    fn mac_rewrite_sets_next_hop_and_egress_source_per_direction() {
        let hop_b = MacAddr([2, 0, 0, 0, 0, 0xbb]);
        let mut r = rig(FwdOptions {
            rewrite_dst: [None, Some(hop_b)],
            rewrite_src: true,
            ..FwdOptions::default()
        });
        let g = stream(3);
        r.fwd.step().unwrap(); // post receive buffers
        assert!(r.devs[0].deliver(&g.frame(0)));
        assert!(r.devs[1].deliver(&g.frame(1)));
        step_until(&mut r.fwd, |f| f.snapshot().forwarded() == 2);
        let to_b = r.devs[1].take_sent();
        let to_a = r.devs[0].take_sent();
        let mut want = g.frame(0);
        want[..6].copy_from_slice(&hop_b.0);
        want[6..12].copy_from_slice(&MAC_B.0);
        assert_eq!(to_b, vec![want]);
        // No destination rewrite towards A: only the source changes.
        let mut want = g.frame(1);
        want[6..12].copy_from_slice(&MAC_A.0);
        assert_eq!(to_a, vec![want]);
    }

    #[test]
    fn receive_errors_are_counted_and_their_buffers_recycled() {
        let mut r = rig(FwdOptions::default());
        let g = stream(4);
        r.fwd.step().unwrap(); // post receive buffers
        // CE (CRC error) in the last descriptor.
        assert!(r.devs[0].deliver_with_errors(&g.frame(0), 1));
        assert!(r.devs[0].deliver(&g.frame(1)));
        step_until(&mut r.fwd, |f| f.snapshot().forwarded() == 1);
        assert_eq!(r.devs[1].take_sent(), vec![g.frame(1)]);
        let s = r.fwd.snapshot();
        assert_eq!(s.ports[0].rx_frames, 1);
        // Flagged by the driver and counted by the NIC (CRCERRS).
        assert_eq!(s.ports[0].errors, 2);
        assert_eq!(r.fwd.drain(), 0);
    }

    #[test]
    fn run_stops_at_the_count_and_on_the_stop_flag() {
        let mut r = rig(FwdOptions {
            count: Some(50),
            ..FwdOptions::default()
        });
        r.fwd.step().unwrap(); // post receive buffers
        let g = stream(5);
        for seq in 0..100 {
            assert!(r.devs[0].deliver(&g.frame(seq)), "frame {seq}");
        }
        let stop = AtomicBool::new(false);
        let mut stats = 0;
        let s = r.fwd.run(&stop, &mut |_| stats += 1).unwrap();
        assert_eq!(s.reason, StopReason::Count);
        assert!(s.last.forwarded() >= 50, "{s:?}");
        assert_eq!(s.unaccounted_buffers, 0);

        let mut r = rig(FwdOptions::default());
        let stop = AtomicBool::new(true);
        let s = r.fwd.run(&stop, &mut |_| ()).unwrap();
        assert_eq!(s.reason, StopReason::Signal);
        assert_eq!(s.last.forwarded(), 0);
    }

    #[test]
    fn rates_come_from_counter_deltas() {
        let mut a = Snapshot {
            elapsed: Duration::from_secs(1),
            ..Snapshot::default()
        };
        a.ports[0].rx_frames = 100;
        a.ports[0].rx_bytes = 10_000;
        let mut b = a;
        b.elapsed = Duration::from_secs(3);
        b.ports[0].rx_frames = 5100;
        b.ports[0].rx_bytes = 2_510_000;
        let r = b.rates_since(&a);
        assert_eq!(r[0].rx_pps, 2500.0);
        assert_eq!(r[0].rx_mbps, 10.0);
        assert_eq!(r[1].tx_pps, 0.0);
        assert_eq!(a.rates_since(&a)[0].rx_pps, 0.0);
    }

    #[test]
    fn a_zero_batch_is_refused() {
        let config = Config::default();
        // SAFETY: only the NICs' own rings are mapped through it (they unmap them when
        // dropped); the area is never registered, construction fails first.
        let iommu = unsafe { FakeIommu::new() };
        let identity = Identity {
            id: SUPPORTED[0],
            qemu: false,
        };
        let nic = |mac| {
            E1000::with_regs(
                FakeE1000::new(iommu.clone(), mac),
                iommu.clone(),
                identity,
                &config,
                None,
            )
            .unwrap()
        };
        let area = DataArea::create(1 << 20, PagePolicy::Shmem).unwrap();
        let opts = FwdOptions {
            batch: 0,
            ..FwdOptions::default()
        };
        assert!(matches!(
            Forwarder::new(nic(MAC_A), nic(MAC_B), area, opts),
            Err(FwdError::BadOptions(_))
        ));
    }
}
