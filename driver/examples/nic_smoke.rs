//! nic_smoke: brings up the NIC at a PCI address through VFIO (with the driver its ID
//! calls for, [`AnyNic`], or the one `--driver` names), prints its MAC and link, receives N
//! test frames (checked byte for byte and in order) and transmits N test frames, then
//! prints the NIC's counters. Meant to run as root in the QEMU guest of `rbufnic-tests`,
//! with the host traffic peer on the other end. The guest tests in `driver/tests/` include
//! this file and run [`run`] in the guest from their own (always freshly built) binary.
//!
//! ```text
//! nic_smoke --pci 0000:00:03.0 [--driver any|e1000|virtio-net] [--rx N] [--tx N]
//!           [--seed S] [--peer-mac MAC] [--min-len L] [--max-len L] [--extents K]
//!           [--interrupts] [--itr-us U] [--timeout-ms T] [--fault unmapped|tx-area]
//!           [--other-mac MAC]
//! ```
//!
//! With `--other-mac`, the receive phase checks the NIC's filter: promiscuous mode off,
//! the `--rx` frames for this NIC must arrive and frames for `MAC` sent before them must
//! not; then promiscuous mode on, and `--rx` frames for `MAC` (seed + 1) must arrive.
//!
//! Output is one `key value...` line per fact (`mac`, `link`, `rx-ready`, `rx`, `tx`,
//! `stats`, ...). Any failure prints one `error: ...` line to stderr and exits 1.

use std::io::Write;
use std::time::{Duration, Instant};

use driver::vfio::Iova;
use driver::{AnyConfig, AnyNic, E1000, Nic, PciAddress, VirtioNet};
use rbuf::{DataArea, Extent, IoRec, PagePolicy};
use rbufnic_tests::frame::{FrameGen, MacAddr as TestMac};

/// Receive buffers (more than the ring holds, so some wait in a free list).
const RX_BUFFERS: u32 = 512;
/// Bytes per receive buffer (RCTL.BSIZE).
const RX_BUFFER_BYTES: u32 = 2048;
/// Transmit slots, each holding the extents of one frame.
const TX_SLOTS: u32 = 256;
/// Bytes per transmit slot (room for six scattered extents of a 1514-byte frame).
const TX_SLOT_BYTES: u32 = 8192;
/// IOrecs per call.
const BATCH: usize = 32;

fn main() {
    std::process::exit(run(std::env::args().skip(1).collect()));
}

/// Sends `log` records to stderr, at the level named by `RUST_LOG` (default warn).
fn init_log() {
    if log::set_logger(&LOGGER).is_err() {
        return;
    }
    log::set_max_level(
        match std::env::var("RUST_LOG").unwrap_or_default().as_str() {
            "trace" => log::LevelFilter::Trace,
            "debug" => log::LevelFilter::Debug,
            "info" => log::LevelFilter::Info,
            "error" => log::LevelFilter::Error,
            "off" => log::LevelFilter::Off,
            _ => log::LevelFilter::Warn,
        },
    );
}

/// Log records to stderr (`RUST_LOG=error|warn|info|debug|trace`, default warn).
struct StderrLog;

static LOGGER: StderrLog = StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        // vfio-ioctls warns on every open about the IRQ indexes a device lacks (e.g.
        // "Could not get VFIO IRQ info for index 3"): shown only when RUST_LOG asks.
        !(m.target().starts_with("vfio_ioctls")
            && m.level() > log::Level::Error
            && std::env::var_os("RUST_LOG").is_none())
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("{} {}: {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Runs the smoke test with `args` (without the program name); returns the exit status.
pub fn run(args: Vec<String>) -> i32 {
    init_log();
    match smoke(&args) {
        Ok(()) => 0,
        Err(msg) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {msg}");
            1
        }
    }
}

#[derive(Debug)]
struct Opts {
    pci: String,
    driver: String,
    rx: u64,
    tx: u64,
    seed: u64,
    peer: [u8; 6],
    min_len: usize,
    max_len: usize,
    extents: usize,
    interrupts: bool,
    timeout: Duration,
    fault: Option<String>,
    itr_us: u64,
    other_mac: Option<[u8; 6]>,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("bad MAC {s:?}"));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s:?}"))?;
    }
    Ok(mac)
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        pci: String::new(),
        driver: "any".into(),
        rx: 0,
        tx: 0,
        seed: 1,
        peer: [0x02, 0, 0, 0, 0, 0x01],
        min_len: 60,
        max_len: 1514,
        extents: 1,
        interrupts: false,
        timeout: Duration::from_secs(120),
        fault: None,
        itr_us: 0,
        other_mac: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--interrupts" {
            o.interrupts = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        };
        match flag.as_str() {
            "--pci" => o.pci = value.to_string(),
            "--driver" => o.driver = value.to_string(),
            "--rx" => o.rx = num(value)?,
            "--tx" => o.tx = num(value)?,
            "--seed" => o.seed = num(value)?,
            "--peer-mac" => o.peer = parse_mac(value)?,
            "--min-len" => o.min_len = num(value)? as usize,
            "--max-len" => o.max_len = num(value)? as usize,
            "--extents" => o.extents = num(value)? as usize,
            "--timeout-ms" => o.timeout = Duration::from_millis(num(value)?),
            "--fault" => o.fault = Some(value.to_string()),
            "--itr-us" => o.itr_us = num(value)?,
            "--other-mac" => o.other_mac = Some(parse_mac(value)?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.pci.is_empty() {
        return Err("--pci DDDD:BB:DD.F is required".into());
    }
    if !(1..=rbuf::MAX_EXTENTS).contains(&o.extents) {
        return Err(format!("--extents must be 1 to {}", rbuf::MAX_EXTENTS));
    }
    Ok(o)
}

/// CPU time (user + system) this process used, from /proc/self/stat (100 Hz ticks).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn smoke(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let addr: PciAddress = o.pci.parse().map_err(|e: driver::Error| e.to_string())?;
    let mut config = AnyConfig::default().with_interrupts(o.interrupts);
    config.e1000.rx_buffer_bytes = RX_BUFFER_BYTES;
    config.virtio_net.rx_buffer_bytes = RX_BUFFER_BYTES;
    // ITR counts 256 ns units.
    config.e1000.itr_256ns = u16::try_from(o.itr_us * 1000 / 256)
        .map_err(|_| format!("--itr-us {} is above 16776", o.itr_us))?;
    let opened = match o.driver.as_str() {
        "any" => AnyNic::open(addr, &config),
        "e1000" => E1000::open(addr, &config.e1000).map(|n| AnyNic::E1000(Box::new(n))),
        "virtio-net" => {
            VirtioNet::open(addr, &config.virtio_net).map(|n| AnyNic::VirtioNet(Box::new(n)))
        }
        other => {
            return Err(format!(
                "unknown driver {other:?} (any, e1000 or virtio-net)"
            ));
        }
    };
    let mut nic = opened.map_err(|e| e.to_string())?;
    let opened = Instant::now();
    let rx_area = DataArea::create(
        (RX_BUFFERS * RX_BUFFER_BYTES) as usize,
        PagePolicy::PreferHuge,
    )
    .map_err(|e| format!("RX data area: {e}"))?;
    let tx_area = DataArea::create((TX_SLOTS * TX_SLOT_BYTES) as usize, PagePolicy::PreferHuge)
        .map_err(|e| format!("TX data area: {e}"))?;
    say(format_args!(
        "device {} qemu {}",
        nic.pci_id(),
        nic.is_qemu()
    ));
    say(format_args!("driver {}", nic.kind().name()));
    say(format_args!("mac {}", nic.mac()));
    let link = nic.link();
    say(format_args!(
        "link {} {} {}",
        if link.up { "up" } else { "down" },
        link.speed_mbps,
        if link.full_duplex { "full" } else { "half" }
    ));
    let rx = nic.add_rx_area(&rx_area).map_err(|e| e.to_string())?;
    let tx = nic.add_tx_area(&tx_area).map_err(|e| e.to_string())?;
    say(format_args!(
        "areas rx-iova {:#x} tx-iova {:#x}",
        nic.area_iova(rx).map_or(0, |i| i.0),
        nic.area_iova(tx).map_or(0, |i| i.0)
    ));
    if matches!(&nic, AnyNic::E1000(n) if n.identity().qemu) {
        // QEMU's model holds receive back for 1 s of guest time after an RCTL write;
        // frames sent meanwhile wait in the backend's socket buffer, which may overflow.
        std::thread::sleep(Duration::from_millis(1200).saturating_sub(opened.elapsed()));
    }
    let us = TestMac(nic.mac().0);
    let peer = TestMac(o.peer);
    let len_range = |g: FrameGen| {
        g.with_len_range(o.min_len, o.max_len)
            .map_err(|e| e.to_string())
    };

    if let Some(kind) = &o.fault {
        let frames = len_range(FrameGen::new(o.seed, us, peer))?;
        return fault(
            &mut nic, &rx_area, &tx_area, rx, tx, kind, &frames, o.timeout,
        );
    }
    let mut free: Vec<IoRec> = (0..RX_BUFFERS).rev().map(buffer).collect();
    if o.rx > 0 {
        if o.other_mac.is_some() {
            nic.set_promiscuous(false);
        }
        let frames = len_range(FrameGen::new(o.seed, us, peer))?;
        receive(&mut nic, &rx_area, rx, &frames, o.rx, o.timeout, &mut free)?;
    }
    if let Some(other) = o.other_mac {
        nic.set_promiscuous(true);
        let frames = len_range(FrameGen::new(o.seed + 1, TestMac(other), peer))?;
        receive(&mut nic, &rx_area, rx, &frames, o.rx, o.timeout, &mut free)?;
    }
    if o.tx > 0 {
        let frames = len_range(FrameGen::new(o.seed, peer, us))?;
        transmit(&mut nic, &tx_area, tx, &frames, o.tx, o.extents, o.timeout)?;
    }
    let s = nic.stats();
    say(format_args!(
        "stats rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} rx_total={} tx_total={} \
         rx_missed={} rx_no_buffer={} rx_crc_errors={} rx_error_buffers={} refused={} interrupts={}",
        s.rx_packets,
        s.rx_bytes,
        s.tx_packets,
        s.tx_bytes,
        s.rx_total_packets,
        s.tx_total_packets,
        s.rx_missed,
        s.rx_no_buffer,
        s.rx_crc_errors,
        s.rx_error_buffers,
        s.refused_iorecs,
        s.interrupts
    ));
    Ok(())
}

/// Sleeps for an interrupt (interrupt mode) or yields (polling mode) until `deadline`.
fn idle(nic: &mut AnyNic, deadline: Instant, what: &str) -> Result<(), String> {
    let now = Instant::now();
    if now >= deadline {
        return Err(format!("timed out {what}"));
    }
    if nic.interrupts() {
        nic.wait(Some(deadline - now)).map_err(|e| e.to_string())?;
    } else {
        std::thread::yield_now();
    }
    Ok(())
}

fn buffer(i: u32) -> IoRec {
    IoRec::single(
        u64::from(i),
        Extent::new(i * RX_BUFFER_BYTES, RX_BUFFER_BYTES),
    )
}

/// Posts as many free buffers as the ring takes.
fn refill(nic: &mut AnyNic, rx: driver::AreaId, free: &mut Vec<IoRec>) -> Result<(), String> {
    let n = free.len().min(nic.rx_space());
    if n == 0 {
        return Ok(());
    }
    let start = free.len() - n;
    let posted = nic.rx_post(rx, &free[start..]).map_err(|e| e.to_string())?;
    free.truncate(start + (n - posted));
    Ok(())
}

fn receive(
    nic: &mut AnyNic,
    area: &DataArea,
    rx: driver::AreaId,
    frames: &FrameGen,
    count: u64,
    timeout: Duration,
    free: &mut Vec<IoRec>,
) -> Result<(), String> {
    refill(nic, rx, free)?;
    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    say(format_args!("rx-ready {count} seed {}", frames.seed()));
    let deadline = t0 + timeout;
    let mut batch = [IoRec::default(); BATCH];
    // Frames are copied out as they come and checked byte for byte afterwards, so the
    // check (slow in a debug build under TCG) does not limit the receive rate. The
    // sequence number is checked at once.
    let mut kept: Vec<u8> = Vec::with_capacity((count as usize).min(1 << 16) * 1024);
    let mut ends: Vec<usize> = Vec::with_capacity(count as usize);
    let mut received = 0u64;
    let mut bytes = 0u64;
    while received < count {
        let Some(b) = nic.rx_poll(&mut batch) else {
            idle(
                nic,
                deadline,
                &format!("after {received} of {count} frames"),
            )?;
            continue;
        };
        for rec in &batch[..b.count] {
            let e = rec.extents()[0];
            if rec.flags() != 0 {
                return Err(format!("frame {received}: RX flags {:#x}", rec.flags()));
            }
            let len = e.len() as usize;
            let at = kept.len();
            kept.resize(at + len, 0);
            area.read(e.offset() as usize, &mut kept[at..])
                .map_err(|e| e.to_string())?;
            let seq = kept
                .get(at + 26..at + 34)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes);
            if seq != Some(received) {
                return Err(format!("frame {received}: got seq {seq:?} (out of order)"));
            }
            ends.push(kept.len());
            received += 1;
            bytes += len as u64;
            free.push(buffer(rec.tag() as u32));
        }
        refill(nic, rx, free)?;
    }
    let (wall_ms, cpu_used_ms) = (t0.elapsed().as_millis(), cpu_ms() - cpu0);
    let mut start = 0;
    for (i, end) in ends.iter().enumerate() {
        let seq = frames
            .verify(&kept[start..*end])
            .map_err(|err| format!("frame {i}: {err}"))?;
        if seq != i as u64 {
            return Err(format!("frame {i}: got seq {seq} (out of order)"));
        }
        start = *end;
    }
    say(format_args!(
        "rx {received} frames {bytes} bytes in-order byte-exact wall-ms {wall_ms} cpu-ms {cpu_used_ms}"
    ));
    Ok(())
}

/// Writes frame `seq` into slot `slot` as `k` extents, stored in reverse order so the NIC
/// must gather them in IOrec order to rebuild the frame.
fn stage(
    area: &DataArea,
    frames: &FrameGen,
    seq: u64,
    slot: u32,
    k: usize,
) -> Result<IoRec, String> {
    let frame = frames.frame(seq);
    let base = slot * TX_SLOT_BYTES;
    let part = frame.len().div_ceil(k);
    let mut rec = IoRec::new(u64::from(slot));
    for (j, chunk) in frame.chunks(part).enumerate() {
        let off = base + (k - 1 - j) as u32 * (TX_SLOT_BYTES / k as u32);
        area.write(off as usize, chunk).map_err(|e| e.to_string())?;
        rec.push(Extent::new(off, chunk.len() as u32))
            .map_err(|e| e.to_string())?;
    }
    Ok(rec)
}

fn transmit(
    nic: &mut AnyNic,
    area: &DataArea,
    tx: driver::AreaId,
    frames: &FrameGen,
    count: u64,
    extents: usize,
    timeout: Duration,
) -> Result<(), String> {
    let mut free: Vec<u32> = (0..TX_SLOTS).rev().collect();
    let mut staged: Vec<IoRec> = Vec::with_capacity(BATCH);
    let mut done = [IoRec::default(); BATCH];
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let (mut next, mut completed, mut bytes) = (0u64, 0u64, 0u64);
    while completed < count {
        while staged.len() < BATCH && next < count {
            let Some(slot) = free.pop() else { break };
            staged.push(stage(area, frames, next, slot, extents)?);
            bytes += frames.len_of(next) as u64;
            next += 1;
        }
        if !staged.is_empty() {
            let n = nic.tx_submit(tx, &staged).map_err(|e| e.to_string())?;
            staged.drain(..n);
        }
        let mut progressed = false;
        while let Some(b) = nic.tx_reclaim(&mut done) {
            completed += b.count as u64;
            free.extend(done[..b.count].iter().map(|r| r.tag() as u32));
            progressed = true;
        }
        if !progressed {
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {completed} of {count} frames sent"
                ));
            }
            std::thread::yield_now();
        }
    }
    say(format_args!(
        "tx {count} frames {bytes} bytes extents {extents} wall-ms {}",
        t0.elapsed().as_millis()
    ));
    Ok(())
}

/// FNV-1a over the whole area, read through copies.
fn digest(area: &DataArea) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut chunk = vec![0u8; 1 << 16];
    for off in (0..area.len()).step_by(chunk.len()) {
        let n = chunk.len().min(area.len() - off);
        if area.read(off, &mut chunk[..n]).is_err() {
            return 0;
        }
        for &b in &chunk[..n] {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// Points one receive descriptor at memory the NIC must not write, lets a frame arrive,
/// and checks that nothing changed; then receives one frame normally.
#[allow(clippy::too_many_arguments)]
fn fault(
    nic: &mut AnyNic,
    rx_area: &DataArea,
    tx_area: &DataArea,
    rx: driver::AreaId,
    tx: driver::AreaId,
    kind: &str,
    frames: &FrameGen,
    timeout: Duration,
) -> Result<(), String> {
    let iova = match kind {
        "unmapped" => Iova(0x70_0000_0000),
        "tx-area" => nic.area_iova(tx).ok_or("no TX area")?.add(4096),
        other => return Err(format!("unknown fault {other:?} (unmapped or tx-area)")),
    };
    let fill = vec![0xa5u8; 1 << 16];
    for area in [rx_area, tx_area] {
        for off in (0..area.len()).step_by(fill.len()) {
            let n = fill.len().min(area.len() - off);
            area.write(off, &fill[..n]).map_err(|e| e.to_string())?;
        }
    }
    let before = (digest(rx_area), digest(tx_area));
    nic.inject_rx_buffer(iova).map_err(|e| e.to_string())?;
    say(format_args!("fault-iova {:#x}", iova.0));
    say(format_args!("rx-ready 2 seed {}", frames.seed()));
    let deadline = Instant::now() + timeout;
    let mut batch = [IoRec::default(); BATCH];
    while nic.raw_completions() == 0 {
        if nic.rx_poll(&mut batch).is_some() {
            return Err("a buffer completed before the injected descriptor".into());
        }
        idle(nic, deadline, "waiting for the injected descriptor")?;
    }
    let after = (digest(rx_area), digest(tx_area));
    say(format_args!(
        "areas-unchanged {}",
        if before == after { "yes" } else { "no" }
    ));
    // The NIC keeps working after the fault.
    nic.rx_post(rx, &[buffer(0)]).map_err(|e| e.to_string())?;
    let mut frame = vec![0u8; RX_BUFFER_BYTES as usize];
    loop {
        if let Some(b) = nic.rx_poll(&mut batch) {
            let e = batch[0].extents()[0];
            let len = e.len() as usize;
            rx_area
                .read(e.offset() as usize, &mut frame[..len])
                .map_err(|e| e.to_string())?;
            let seq = frames.verify(&frame[..len]).map_err(|e| e.to_string())?;
            say(format_args!("after-fault-rx seq {seq} count {}", b.count));
            return Ok(());
        }
        idle(nic, deadline, "waiting for the frame after the fault")?;
    }
}
