//! `rbufnic capture`: writes the frames a port receives to a pcap file (libpcap format,
//! Ethernet link type, microsecond timestamps) that `tcpdump -r` and `tshark -r` read.
//!
//! Receive master mode: empty 2 KiB slots of one data area are posted to the NIC, and each
//! received frame is written to the file straight from where the NIC put it (no copy in
//! between; the file write is the only one) before its slot is posted again.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use driver::{AreaId, IOREC_RX_ERROR, IOREC_RX_FRAGMENT, Nic};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness};
use rbuf::{DataArea, IoRec, PagePolicy, Pool};

use crate::nics;

/// Bytes per receive buffer.
pub const BUFFER_BYTES: u32 = crate::nics::BUFFER_BYTES;

/// Errors of a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A driver call failed.
    #[error("{op}: {error}")]
    Driver {
        /// The call that failed.
        op: &'static str,
        /// What the driver said.
        error: driver::Error,
    },
    /// The data area could not be created.
    #[error("data area: {0}")]
    Area(#[from] rbuf::Error),
    /// The pcap file could not be written.
    #[error("writing the pcap file: {0}")]
    Pcap(#[from] pcap_file::PcapError),
    /// The options make no sense.
    #[error("{0}")]
    BadOptions(String),
}

/// What to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Stop after this many frames (`None`: no limit).
    pub count: Option<u64>,
    /// Stop after this long (`None`: no limit).
    pub duration: Option<Duration>,
    /// Bytes of each frame written (the rest is cut; the record keeps the real length).
    pub snaplen: u32,
    /// IOrecs per driver call.
    pub batch: usize,
    /// Period of the statistics callback.
    pub stats_interval: Duration,
}

impl CaptureOptions {
    /// Checks the options before any device is touched.
    pub fn validate(&self) -> Result<(), CaptureError> {
        if self.batch == 0 || self.batch > 4096 {
            return Err(CaptureError::BadOptions(format!(
                "--batch must be 1 to 4096, not {}",
                self.batch
            )));
        }
        if self.snaplen == 0 {
            return Err(CaptureError::BadOptions(
                "--snaplen must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Counters of a capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Time since capturing started.
    pub elapsed: Duration,
    /// Frames written to the file.
    pub frames: u64,
    /// Their bytes as received (before any snaplen cut).
    pub bytes: u64,
    /// Frames the NIC flagged bad (not written).
    pub errors: u64,
    /// Frames the NIC dropped for lack of receive buffers.
    pub missed: u64,
}

/// Captures from `nic` into `out` until the count, the duration or `stop`.
pub struct Capture<N: Nic, W: Write> {
    // The NIC first: it unmaps the area before the area goes.
    nic: N,
    area_id: AreaId,
    pool: Pool,
    area: DataArea,
    posted: usize,
    out: PcapWriter<W>,
    opts: CaptureOptions,
    scratch: Vec<IoRec>,
    stats: CaptureStats,
    missed_base: u64,
}

impl<N: Nic, W: Write> Capture<N, W> {
    /// Registers a receive area of room for `ring_size` descriptors plus a batch, twice
    /// over, with `nic`, and writes the pcap file header to `out`.
    pub fn new(
        mut nic: N,
        ring_size: usize,
        out: W,
        opts: CaptureOptions,
    ) -> Result<Capture<N, W>, CaptureError> {
        if opts.batch == 0 || opts.batch > 4096 {
            return Err(CaptureError::BadOptions(format!(
                "--batch must be 1 to 4096, not {}",
                opts.batch
            )));
        }
        if opts.snaplen == 0 {
            return Err(CaptureError::BadOptions(
                "--snaplen must be at least 1".into(),
            ));
        }
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            snaplen: opts.snaplen,
            // The host's byte order, as libpcap writes it (pcap-file defaults to big).
            endianness: if cfg!(target_endian = "little") {
                Endianness::Little
            } else {
                Endianness::Big
            },
            ..PcapHeader::default()
        };
        let out = PcapWriter::with_header(out, header)?;
        let area = DataArea::create(
            2 * (ring_size + opts.batch) * BUFFER_BYTES as usize,
            PagePolicy::PreferHuge,
        )?;
        let area_id = nic
            .add_rx_area(&area)
            .map_err(|error| CaptureError::Driver {
                op: "register the receive area",
                error,
            })?;
        let missed_base = nic.stats().rx_missed;
        Ok(Capture {
            nic,
            area_id,
            pool: Pool::slots(area.len(), BUFFER_BYTES),
            area,
            posted: 0,
            out,
            scratch: vec![IoRec::default(); opts.batch],
            opts,
            stats: CaptureStats::default(),
            missed_base,
        })
    }

    /// The NIC.
    pub fn nic(&mut self) -> &mut N {
        &mut self.nic
    }

    /// Posts free buffers, writes what came. Returns whether anything happened.
    pub fn step(&mut self) -> Result<bool, CaptureError> {
        let mut progress = false;
        let posted = nics::post_rx(
            &mut self.nic,
            self.area_id,
            &mut self.pool,
            &mut self.scratch,
        )
        .map_err(|error| CaptureError::Driver {
            op: "post receive buffers",
            error,
        })?;
        self.posted += posted;
        progress |= posted > 0;
        let Some(batch) = self.nic.rx_poll(&mut self.scratch) else {
            return Ok(progress);
        };
        self.posted -= batch.count;
        let when = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let room = self.opts.count.map_or(u64::MAX, |c| c - self.stats.frames);
        for (i, rec) in self.scratch[..batch.count].iter().enumerate() {
            let bad =
                rec.flags() & (IOREC_RX_ERROR | IOREC_RX_FRAGMENT) != 0 || rec.extents().len() != 1;
            if bad {
                self.stats.errors += 1;
            } else if (i as u64) < room {
                let extent = rec.extents()[0];
                // SAFETY: the NIC returned this buffer in `rx_poll` above; it goes back to
                // the pool (and from there to the NIC) only after the write returned, and
                // nothing else writes the receive area.
                let frame = unsafe { self.area.bytes(extent) }?;
                let cut = &frame[..frame.len().min(self.opts.snaplen as usize)];
                self.out
                    .write_packet(&PcapPacket::new(when, frame.len() as u32, cut))?;
                self.stats.frames += 1;
                self.stats.bytes += frame.len() as u64;
            }
            self.pool.free(rec.tag() as u32);
        }
        Ok(true)
    }

    /// The counters now (reads the NIC's statistics registers).
    pub fn stats(&mut self) -> CaptureStats {
        let mut s = self.stats;
        s.missed = self.nic.stats().rx_missed.saturating_sub(self.missed_base);
        s
    }

    /// Captures until the count, the duration or `stop`, calling `on_stats` every
    /// statistics interval; flushes the file and returns the final counters.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        on_stats: &mut dyn FnMut(CaptureStats),
    ) -> Result<CaptureStats, CaptureError> {
        let started = Instant::now();
        let deadline = self.opts.duration.map(|d| started + d);
        let mut next_stats = started + self.opts.stats_interval;
        loop {
            if stop.load(Ordering::Relaxed)
                || self.opts.count.is_some_and(|c| self.stats.frames >= c)
            {
                break;
            }
            let progress = self.step()?;
            let now = Instant::now();
            self.stats.elapsed = now - started;
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            if now >= next_stats {
                next_stats = (next_stats + self.opts.stats_interval).max(now);
                let s = self.stats();
                on_stats(s);
            }
            if !progress {
                std::thread::yield_now();
            }
        }
        self.stats.elapsed = started.elapsed();
        Ok(self.stats())
    }

    /// Stops the NIC (it unmaps the area) and hands back the file writer, to flush and
    /// close (buffered writers flush on drop without reporting errors).
    pub fn into_writer(self) -> W {
        let Capture { nic, out, .. } = self;
        drop(nic);
        out.into_writer()
    }
}

#[cfg(test)]
mod tests {
    use driver::MacAddr;
    use driver::e1000::{Config, E1000, Identity, SUPPORTED};
    use driver::fake::{FakeE1000, FakeIommu};
    use pcap_file::pcap::PcapReader;

    use super::*;

    fn opts(count: u64, snaplen: u32) -> CaptureOptions {
        CaptureOptions {
            count: Some(count),
            duration: Some(Duration::from_secs(30)),
            snaplen,
            batch: 16,
            stats_interval: Duration::from_secs(1),
        }
    }

    /// Delivers `frames` (some flagged bad) to a fake e1000 under a capture of `count`
    /// frames; returns the pcap file and the final counters.
    fn capture(frames: &[(Vec<u8>, u8)], count: u64, snaplen: u32) -> (Vec<u8>, CaptureStats) {
        // SAFETY: the only area mapped through this IOMMU is the capture's, which it owns
        // in a field declared after its NIC, so it is unmapped before it goes.
        let iommu = unsafe { FakeIommu::new() };
        let dev = FakeE1000::new(iommu.clone(), MacAddr([2, 0, 0, 0, 0, 1]));
        let identity = Identity {
            id: SUPPORTED[0],
            qemu: false,
        };
        let config = Config {
            promiscuous: true,
            ..Config::default()
        };
        let nic = E1000::with_regs(dev.clone(), iommu, identity, &config, None).unwrap();
        let mut cap = Capture::new(
            nic,
            config.rx_ring_size as usize,
            Vec::new(),
            opts(count, snaplen),
        )
        .unwrap();
        let mut next = 0;
        for _ in 0..10_000 {
            if next == frames.len() {
                break;
            }
            cap.step().unwrap();
            while next < frames.len() && dev.deliver_with_errors(&frames[next].0, frames[next].1) {
                next += 1;
            }
        }
        assert_eq!(next, frames.len(), "the fake NIC took only {next} frames");
        let stats = cap.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
        (cap.into_writer(), stats)
    }

    fn frame(i: usize) -> Vec<u8> {
        (0..60 + i * 7).map(|b| (b + i) as u8).collect()
    }

    #[test]
    fn writes_every_good_frame_byte_exact_and_stops_at_the_count() {
        // Frame 3 carries a CRC error (RXD.ERRORS.CE): counted, not written.
        let frames: Vec<(Vec<u8>, u8)> = (0..40)
            .map(|i| (frame(i), if i == 3 { 0x01 } else { 0 }))
            .collect();
        let (file, stats) = capture(&frames, 30, 65535);
        assert_eq!((stats.frames, stats.errors), (30, 1));
        let mut reader = PcapReader::new(&file[..]).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        let mut got = Vec::new();
        while let Some(p) = reader.next_packet() {
            let p = p.unwrap();
            assert_eq!(p.orig_len as usize, p.data.len());
            got.push(p.data.into_owned());
        }
        let want: Vec<Vec<u8>> = (0..31).filter(|&i| i != 3).map(frame).collect();
        assert_eq!(got, want);
        assert_eq!(
            stats.bytes,
            want.iter().map(|f| f.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn snaplen_cuts_the_data_and_keeps_the_original_length() {
        let frames: Vec<(Vec<u8>, u8)> = (0..5).map(|i| (frame(i * 20), 0)).collect();
        let (file, stats) = capture(&frames, 5, 64);
        assert_eq!(stats.frames, 5);
        // Read the records by hand: pcap-file's reader refuses orig_len > snaplen, which
        // libpcap (tcpdump, tshark) reads fine.
        let le32 = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
        assert_eq!(le32(0), 0xa1b2_c3d4);
        assert_eq!(le32(16), 64, "snaplen");
        assert_eq!(le32(20), 1, "LINKTYPE_ETHERNET");
        let mut at = 24;
        for i in 0..5 {
            let f = frame(i * 20);
            let (incl, orig) = (le32(at + 8) as usize, le32(at + 12) as usize);
            assert_eq!((incl, orig), (f.len().min(64), f.len()));
            assert_eq!(&file[at + 16..at + 16 + incl], &f[..incl]);
            at += 16 + incl;
        }
        assert_eq!(at, file.len());
    }
}
