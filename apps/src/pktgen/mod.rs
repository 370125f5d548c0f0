//! `rbufnic pktgen`: sends probe frames ([`probe`]) at a given rate or as fast as the port
//! takes them, and counts what comes back on the receive port (the same port, or a second
//! one): loss, reordering, duplicates, corrupted frames and latency percentiles.
//!
//! Transmit master mode without copies: the transmit data area is cut into 2 KiB slots,
//! each slot gets the probe template once, and a send writes only the flow port, sequence
//! number and time (18 bytes) into a free slot and hands its IOrec to the NIC; the slot is
//! reused when the NIC reports it sent. Receive master mode: empty slots of the receive
//! area are posted, and a received frame is classified where the NIC wrote it.

pub mod probe;
pub mod track;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use driver::{AreaId, IOREC_RX_ERROR, IOREC_RX_FRAGMENT, Nic};
use rbuf::{DataArea, Extent, IoRec, PagePolicy, Pool};

use crate::nics;

use probe::{Addresses, Probe, Received, STAMP_LENS};
use track::{Latency, Tracker};

/// Bytes per buffer slot (one frame, RCTL.BSIZE 2048).
pub const BUFFER_BYTES: u32 = crate::nics::BUFFER_BYTES;
/// How long an interrupted run still waits for probes on their way.
const LINGER_INTERRUPTED: Duration = Duration::from_millis(200);

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum PktgenError {
    /// A driver call failed.
    #[error("{port} port: {op}: {error}")]
    Driver {
        /// `TX` or `RX`.
        port: &'static str,
        /// The call that failed.
        op: &'static str,
        /// What the driver said.
        error: driver::Error,
    },
    /// A data area could not be created or written.
    #[error("data area: {0}")]
    Area(#[from] rbuf::Error),
    /// The options make no sense.
    #[error("{0}")]
    BadOptions(String),
}

/// How to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct PktgenOptions {
    /// Frame size without FCS, 60..=1514.
    pub size: usize,
    /// Frames per second; `None`: as fast as the port takes them.
    pub rate: Option<f64>,
    /// Frames to send; `None`: until the duration or the stop flag.
    pub count: Option<u64>,
    /// How long to send; `None`: until the count or the stop flag.
    pub duration: Option<Duration>,
    /// Flows (UDP source ports), sent round-robin.
    pub flows: u32,
    /// Addresses written into every probe.
    pub addresses: Addresses,
    /// IOrecs per driver call.
    pub batch: usize,
    /// Whether to count received probes (`false`: transmit only).
    pub receive: bool,
    /// After the last send, how long to wait for probes still on their way.
    pub linger: Duration,
    /// Period of [`Event::Stats`].
    pub stats_interval: Duration,
}

/// Counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Time since sending started.
    pub elapsed: Duration,
    /// Probes handed to the NIC.
    pub sent: u64,
    /// Probes the NIC reported sent.
    pub tx_done: u64,
    /// Their bytes (no FCS).
    pub tx_bytes: u64,
    /// Frames received (probes or not).
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Distinct intact probes received.
    pub unique: u64,
    /// Probes that came after a higher sequence number.
    pub reordered: u64,
    /// Probes received again.
    pub duplicates: u64,
    /// Probe frames whose headers or fill were damaged, and frames the NIC flagged bad.
    pub corrupt: u64,
    /// Frames that were not probes.
    pub other: u64,
    /// Frames the receive NIC dropped for lack of buffers.
    pub rx_missed: u64,
}

impl Snapshot {
    /// Probes sent that did not come back (0 when not receiving).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.unique)
    }
}

/// What a run reports to its caller (the library never prints).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Ports are up; sending starts now.
    Ready {
        /// Buffers in the transmit pool.
        tx_buffers: usize,
    },
    /// Periodic counters.
    Stats(Snapshot),
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Final counters.
    pub last: Snapshot,
    /// Time spent sending (without the linger).
    pub send_time: Duration,
    /// Latency of the intact probes received.
    pub latency: Latency,
    /// Probes older than the duplicate window (counted as reordered).
    pub late: u64,
    /// Whether the stop flag ended the run early.
    pub interrupted: bool,
}

/// One direction of a port: its NIC's area and the pool of slots in it.
struct Ring {
    area_id: AreaId,
    pool: Pool,
    area: DataArea,
    /// Buffers with the NIC (posted for receive, or queued for transmit).
    with_nic: usize,
}

/// The generator over a transmit NIC and, optionally, a separate receive NIC.
pub struct Pktgen<N: Nic> {
    // NICs first: they unmap the areas (and stop DMA) before the areas go.
    tx_nic: N,
    rx_nic: Option<N>,
    tx: Ring,
    rx: Option<Ring>,
    opts: PktgenOptions,
    scratch: Vec<IoRec>,
    tracker: Tracker,
    counts: Snapshot,
    rx_missed_base: u64,
    next_seq: u64,
    epoch: Instant,
    started: Instant,
}

impl PktgenOptions {
    /// Checks the options before any device is touched.
    pub fn validate(&self) -> Result<(), PktgenError> {
        check(self)
    }
}

fn check(opts: &PktgenOptions) -> Result<(), PktgenError> {
    let bad = |s: String| Err(PktgenError::BadOptions(s));
    if !(probe::MIN_FRAME..=probe::MAX_FRAME).contains(&opts.size) {
        return bad(format!(
            "--size must be {} to {} bytes, not {}",
            probe::MIN_FRAME,
            probe::MAX_FRAME,
            opts.size
        ));
    }
    if opts.flows == 0 || opts.flows > probe::MAX_FLOWS {
        return bad(format!(
            "--flows must be 1 to {}, not {}",
            probe::MAX_FLOWS,
            opts.flows
        ));
    }
    if opts.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return bad("--rate must be a positive number of frames per second".into());
    }
    if opts.batch == 0 || opts.batch > 4096 {
        return bad(format!("--batch must be 1 to 4096, not {}", opts.batch));
    }
    Ok(())
}

impl<N: Nic> Pktgen<N> {
    /// Sets up transmit on `tx_nic` and, if `opts.receive`, receive on `rx_nic` (or on
    /// `tx_nic` when `rx_nic` is `None`). Each direction gets a data area big enough for
    /// `ring_size` descriptors plus a batch, twice over.
    pub fn new(
        mut tx_nic: N,
        mut rx_nic: Option<N>,
        ring_size: usize,
        opts: PktgenOptions,
    ) -> Result<Pktgen<N>, PktgenError> {
        check(&opts)?;
        let buffers = 2 * (ring_size + opts.batch);
        let area_bytes = buffers * BUFFER_BYTES as usize;
        let tx_area = DataArea::create(area_bytes, PagePolicy::PreferHuge)?;
        let tx_pool = Pool::slots(tx_area.len(), BUFFER_BYTES);
        let mut src = opts.addresses;
        src.src_mac = tx_nic.mac();
        let mut template = vec![0u8; opts.size];
        probe::template(&mut template, &src);
        for id in 0..tx_pool.capacity() as u32 {
            tx_area.write(tx_pool.extent(id).offset() as usize, &template)?;
        }
        let tx_id = tx_nic
            .add_tx_area(&tx_area)
            .map_err(|error| PktgenError::Driver {
                port: "TX",
                op: "register the transmit area",
                error,
            })?;
        let rx = if opts.receive {
            let nic = rx_nic.as_mut().unwrap_or(&mut tx_nic);
            let area = DataArea::create(area_bytes, PagePolicy::PreferHuge)?;
            let area_id = nic
                .add_rx_area(&area)
                .map_err(|error| PktgenError::Driver {
                    port: "RX",
                    op: "register the receive area",
                    error,
                })?;
            Some(Ring {
                area_id,
                pool: Pool::slots(area.len(), BUFFER_BYTES),
                area,
                with_nic: 0,
            })
        } else {
            None
        };
        let now = Instant::now();
        let mut pktgen = Pktgen {
            tx_nic,
            rx_nic,
            tx: Ring {
                area_id: tx_id,
                pool: tx_pool,
                area: tx_area,
                with_nic: 0,
            },
            rx,
            scratch: vec![IoRec::default(); opts.batch],
            opts,
            tracker: Tracker::new(),
            counts: Snapshot::default(),
            rx_missed_base: 0,
            next_seq: 0,
            epoch: now,
            started: now,
        };
        pktgen.rx_missed_base = pktgen.receive_nic().stats().rx_missed;
        Ok(pktgen)
    }

    fn receive_nic(&mut self) -> &mut N {
        self.rx_nic.as_mut().unwrap_or(&mut self.tx_nic)
    }

    /// Buffers in the transmit pool.
    pub fn tx_buffers(&self) -> usize {
        self.tx.pool.capacity()
    }

    /// Restarts the clock the rate and [`Snapshot::elapsed`] count from.
    pub fn restart_clock(&mut self) {
        self.started = Instant::now();
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Posts free receive buffers and classifies received frames. Returns whether anything
    /// happened.
    pub fn receive(&mut self) -> Result<bool, PktgenError> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(false);
        };
        let nic = self.rx_nic.as_mut().unwrap_or(&mut self.tx_nic);
        let mut progress = false;
        // Refill.
        let posted =
            nics::post_rx(nic, rx.area_id, &mut rx.pool, &mut self.scratch).map_err(|error| {
                PktgenError::Driver {
                    port: "RX",
                    op: "post receive buffers",
                    error,
                }
            })?;
        rx.with_nic += posted;
        progress |= posted > 0;
        // Classify what came.
        let Some(batch) = nic.rx_poll(&mut self.scratch) else {
            return Ok(progress);
        };
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        rx.with_nic -= batch.count;
        for rec in &self.scratch[..batch.count] {
            let len = rec.total_len();
            self.counts.rx_frames += 1;
            self.counts.rx_bytes += len;
            let flagged = rec.flags() & (IOREC_RX_ERROR | IOREC_RX_FRAGMENT) != 0;
            let kind = if flagged || rec.extents().len() != 1 {
                Received::Corrupt
            } else {
                // SAFETY: the NIC returned this buffer in `rx_poll` above and it goes back
                // to the pool (and from there to the NIC) only after `parse` returned; no
                // one else writes the receive area.
                probe::parse(unsafe { rx.area.bytes(rec.extents()[0]) }?)
            };
            match kind {
                Received::Probe(p) => self.tracker.record(
                    p.seq,
                    now_ns
                        .checked_sub(p.sent_ns)
                        .filter(|_| p.seq < self.next_seq),
                ),
                Received::Corrupt => self.counts.corrupt += 1,
                Received::Other => self.counts.other += 1,
            }
            rx.pool.free(rec.tag() as u32);
        }
        Ok(true)
    }

    /// Takes sent buffers back. Returns whether any came.
    pub fn reclaim(&mut self) -> bool {
        let mut progress = false;
        while let Some(b) = self.tx_nic.tx_reclaim(&mut self.scratch) {
            for rec in &self.scratch[..b.count] {
                self.counts.tx_done += 1;
                self.counts.tx_bytes += rec.total_len();
                self.tx.pool.free(rec.tag() as u32);
            }
            self.tx.with_nic -= b.count;
            progress = true;
        }
        progress
    }

    /// Sends up to `allowed` probes (at most a batch). Returns how many went.
    pub fn send(&mut self, allowed: u64) -> Result<usize, PktgenError> {
        let n = (allowed.min(self.scratch.len() as u64) as usize)
            .min(self.tx_nic.tx_space())
            .min(self.tx.pool.available());
        if n == 0 {
            return Ok(0);
        }
        let flows = u64::from(self.opts.flows);
        let now_ns = self.now_ns();
        for (i, slot) in self.scratch[..n].iter_mut().enumerate() {
            let id = self
                .tx
                .pool
                .alloc(BUFFER_BYTES as usize)
                .map_err(rbuf::Error::from)?;
            let seq = self.next_seq + i as u64;
            let offset = self.tx.pool.extent(id).offset() as usize;
            let stamp = probe::stamp(&Probe {
                flow: (seq % flows) as u16,
                seq,
                sent_ns: now_ns,
            });
            for ((at, bytes), len) in stamp.iter().zip(STAMP_LENS) {
                self.tx.area.write(offset + at, &bytes[..len])?;
            }
            *slot = IoRec::single(
                u64::from(id),
                Extent::new(offset as u32, self.opts.size as u32),
            );
        }
        let result = self.tx_nic.tx_submit(self.tx.area_id, &self.scratch[..n]);
        let queued = match &result {
            Ok(k) => *k,
            Err(e) => e.accepted().unwrap_or(0),
        };
        for rec in &self.scratch[queued..n] {
            self.tx.pool.free(rec.tag() as u32);
        }
        self.tx.with_nic += queued;
        self.next_seq += queued as u64;
        self.counts.sent += queued as u64;
        result.map_err(|error| PktgenError::Driver {
            port: "TX",
            op: "submit probes",
            error,
        })?;
        Ok(queued)
    }

    /// The counters now (reads the receive NIC's statistics registers).
    pub fn snapshot(&mut self) -> Snapshot {
        let mut s = self.counts;
        s.elapsed = self.started.elapsed();
        s.unique = self.tracker.unique();
        s.reordered = self.tracker.reordered();
        s.duplicates = self.tracker.duplicates();
        if self.rx.is_some() {
            let base = self.rx_missed_base;
            s.rx_missed = self.receive_nic().stats().rx_missed.saturating_sub(base);
        }
        s
    }

    /// Probes the rate allows by now, minus those sent.
    fn allowed(&self, now: Instant) -> u64 {
        let left = self
            .opts
            .count
            .map_or(u64::MAX, |c| c.saturating_sub(self.counts.sent));
        let by_rate = match self.opts.rate {
            None => u64::MAX,
            Some(r) => {
                let due = (now.duration_since(self.started).as_secs_f64() * r) as u64 + 1;
                due.saturating_sub(self.counts.sent)
            }
        };
        left.min(by_rate)
    }

    /// Sends until the count, the duration or `stop`, then receives for up to the linger
    /// time (or until every probe came back), reporting [`Event`]s on the way.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Summary, PktgenError> {
        on_event(Event::Ready {
            tx_buffers: self.tx_buffers(),
        });
        self.restart_clock();
        let deadline = self.opts.duration.map(|d| self.started + d);
        let mut next_stats = self.started + self.opts.stats_interval;
        let mut interrupted = false;
        let mut tick = |pg: &mut Pktgen<N>, now: Instant| {
            if now >= next_stats {
                next_stats = (next_stats + pg.opts.stats_interval).max(now);
                on_event(Event::Stats(pg.snapshot()));
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d)
                || self.opts.count.is_some_and(|c| self.counts.sent >= c)
            {
                break;
            }
            let mut progress = self.reclaim();
            progress |= self.send(self.allowed(now))? > 0;
            progress |= self.receive()?;
            tick(self, now);
            if !progress {
                std::thread::yield_now();
            }
        }
        let send_time = self.started.elapsed();
        // Drain: every sent buffer back, and probes on their way received (briefly when
        // interrupted: the user wants out).
        let linger = if interrupted {
            LINGER_INTERRUPTED.min(self.opts.linger)
        } else {
            self.opts.linger
        };
        let linger_end = Instant::now() + linger;
        let mut quiet_since = Instant::now();
        loop {
            let now = Instant::now();
            let mut progress = self.reclaim();
            progress |= self.receive()?;
            if progress {
                quiet_since = now;
            }
            tick(self, now);
            let all_back = self.rx.is_none() || self.tracker.unique() >= self.counts.sent;
            let tx_idle = self.tx.with_nic == 0;
            if (tx_idle && all_back) || now >= linger_end {
                break;
            }
            if tx_idle && now.duration_since(quiet_since) >= linger {
                break;
            }
            if !progress {
                std::thread::yield_now();
            }
        }
        Ok(Summary {
            last: self.snapshot(),
            send_time,
            latency: self.tracker.latency(),
            late: self.tracker.late(),
            interrupted,
        })
    }

    /// Buffers neither free in their pool nor with a NIC (zero when all are accounted).
    pub fn unaccounted_buffers(&self) -> usize {
        let ring = |r: &Ring| (r.pool.capacity() - r.pool.available()).saturating_sub(r.with_nic);
        ring(&self.tx) + self.rx.as_ref().map_or(0, ring)
    }

    /// The transmit NIC.
    pub fn tx_nic(&mut self) -> &mut N {
        &mut self.tx_nic
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use driver::MacAddr;
    use driver::e1000::{Config, E1000, Identity, SUPPORTED};
    use driver::fake::{FakeE1000, FakeIommu};

    use super::*;

    struct Rig {
        pktgen: Pktgen<E1000<FakeE1000>>,
        devs: Vec<FakeE1000>,
        _iommus: Vec<Arc<FakeIommu>>,
    }

    fn opts(count: u64) -> PktgenOptions {
        PktgenOptions {
            size: 128,
            rate: None,
            count: Some(count),
            duration: None,
            flows: 3,
            addresses: Addresses {
                dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
                src_mac: MacAddr::default(),
                src_ip: Ipv4Addr::new(10, 0, 0, 1),
                dst_ip: Ipv4Addr::new(10, 0, 0, 2),
            },
            batch: 8,
            receive: true,
            linger: Duration::from_millis(50),
            stats_interval: Duration::from_secs(1),
        }
    }

    fn rig(ports: usize, opts: PktgenOptions) -> Rig {
        let config = Config {
            promiscuous: true,
            ..Config::default()
        };
        let mut nics = Vec::new();
        let mut devs = Vec::new();
        let mut iommus = Vec::new();
        for i in 0..ports {
            // SAFETY: the only areas mapped through this IOMMU are the generator's, which
            // it owns in fields declared after its NICs, so they are unmapped before they go.
            let iommu = unsafe { FakeIommu::new() };
            let dev = FakeE1000::new(iommu.clone(), MacAddr([2, 0, 0, 0, 0, 0x10 + i as u8]));
            let identity = Identity {
                id: SUPPORTED[0],
                qemu: false,
            };
            nics.push(
                E1000::with_regs(dev.clone(), iommu.clone(), identity, &config, None)
                    .expect("fake e1000"),
            );
            devs.push(dev);
            iommus.push(iommu);
        }
        let rx = (ports == 2).then(|| nics.pop().expect("two"));
        let tx = nics.pop().expect("one");
        let pktgen = Pktgen::new(tx, rx, config.rx_ring_size as usize, opts).expect("pktgen");
        Rig {
            pktgen,
            devs,
            _iommus: iommus,
        }
    }

    /// Runs the generator, moving what the TX port sent to the RX port through `wire`,
    /// which may drop, repeat, reorder or damage frames.
    fn run(r: &mut Rig, wire: &mut dyn FnMut(Vec<Vec<u8>>) -> Vec<Vec<u8>>) -> Summary {
        let mut held: Vec<Vec<u8>> = Vec::new();
        let sent_limit = r.pktgen.opts.count.expect("count");
        let rx_dev = r.devs.len() - 1;
        for _ in 0..100_000 {
            r.pktgen.reclaim();
            let allowed = r.pktgen.allowed(Instant::now());
            r.pktgen.send(allowed).unwrap();
            held.extend(wire(r.devs[0].take_sent()));
            while !held.is_empty() && r.devs[rx_dev].deliver(&held[0]) {
                held.remove(0);
            }
            r.pktgen.receive().unwrap();
            if r.pktgen.counts.sent == sent_limit && held.is_empty() && r.pktgen.tx.with_nic == 0 {
                break;
            }
        }
        assert!(held.is_empty(), "the wire did not drain");
        let stop = AtomicBool::new(false);
        // Sending is done: `run` only lingers and reports.
        r.pktgen.run(&stop, &mut |_| {}).unwrap()
    }

    #[test]
    fn a_clean_loop_counts_every_probe_once_in_order_with_latency() {
        for ports in [1, 2] {
            let mut r = rig(ports, opts(500));
            let s = run(&mut r, &mut |frames| frames);
            let l = &s.last;
            assert_eq!((l.sent, l.tx_done, l.unique, l.lost()), (500, 500, 500, 0));
            assert_eq!(
                (l.reordered, l.duplicates, l.corrupt, l.other),
                (0, 0, 0, 0)
            );
            assert_eq!(l.tx_bytes, 500 * 128);
            assert_eq!(l.rx_bytes, 500 * 128);
            assert_eq!(s.latency.count, 500);
            assert!(s.latency.min_ns > 0 && s.latency.max_ns >= s.latency.p50_ns);
            assert_eq!(r.pktgen.unaccounted_buffers(), 0);
            // The flows are round-robin over the UDP source ports 1024..1027.
            let sent = r.devs[0].take_sent();
            assert!(sent.is_empty());
        }
    }

    #[test]
    fn loss_reordering_duplicates_corruption_and_other_traffic_are_counted() {
        let mut r = rig(2, opts(300));
        let mut n = 0u64;
        let mut ports = std::collections::BTreeSet::new();
        let s = run(&mut r, &mut |frames| {
            let mut out = Vec::new();
            for mut f in frames {
                ports.insert(u16::from_be_bytes([f[34], f[35]]));
                let seq = n;
                n += 1;
                match seq {
                    5 | 6 => {}                       // lost
                    10 => out.extend([f.clone(), f]), // duplicated
                    20 => {
                        f[100] ^= 1; // damaged fill
                        out.push(f);
                    }
                    30 => out.push(vec![0xff; 60]), // replaced by other traffic
                    _ => out.push(f),
                }
            }
            // Swap each pair 40/41-style: reverse every batch the wire carries.
            out.reverse();
            out
        });
        let l = &s.last;
        assert_eq!(l.sent, 300);
        assert_eq!((l.duplicates, l.corrupt, l.other), (1, 1, 1));
        assert_eq!(l.unique, 300 - 2 - 1 - 1);
        assert_eq!(l.lost(), 4);
        assert!(l.reordered > 100, "{l:?}");
        assert_eq!(ports, (1024..1027).collect());
        assert_eq!(r.pktgen.unaccounted_buffers(), 0);
    }

    #[test]
    fn bad_options_are_refused() {
        for (change, message) in [
            (
                &(|o: &mut PktgenOptions| o.size = 59) as &dyn Fn(&mut PktgenOptions),
                "--size must be 60 to 1514 bytes, not 59",
            ),
            (
                &|o| o.size = 1515,
                "--size must be 60 to 1514 bytes, not 1515",
            ),
            (&|o| o.flows = 0, "--flows must be 1 to 64512, not 0"),
            (&|o| o.rate = Some(0.0), "--rate must be a positive number"),
            (&|o| o.batch = 0, "--batch must be 1 to 4096, not 0"),
        ] {
            let mut o = opts(1);
            change(&mut o);
            let err = check(&o).unwrap_err().to_string();
            assert!(err.starts_with(message), "{err}");
        }
    }
}
