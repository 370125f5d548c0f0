//! The command-line side of `rbufnic pktgen`: options, opening the ports, printing.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use driver::{AnyNic, Nic, PciAddress};
use rbufnic::nics::{self, RxFilter};
use rbufnic::pktgen::probe::Addresses;
use rbufnic::pktgen::{Event, Pktgen, PktgenOptions, Snapshot, Summary};

use crate::cli::{STOP, parse_mac, seconds, stop_on_ctrl_c};

/// Options of `rbufnic pktgen`.
#[derive(Args, Clone, Debug)]
pub struct PktgenArgs {
    /// PCI address of the port that sends (an e1000 or virtio-net NIC bound to vfio-pci).
    #[arg(value_name = "PCI")]
    pci: String,
    /// PCI address of a second port that receives the probes (e.g. after a forwarder on
    /// another machine). Default: receive on the sending port.
    #[arg(long, value_name = "PCI")]
    rx: Option<String>,
    /// Only send; do not count probes coming back (no loss or latency figures).
    #[arg(long, conflicts_with = "rx")]
    tx_only: bool,
    /// Frame size in bytes without the 4-byte FCS, 60 to 1514 (60 is 64 on the wire).
    #[arg(long, default_value_t = 60, value_name = "BYTES")]
    size: usize,
    /// Frames per second. Default: as fast as the port takes them.
    #[arg(long, value_name = "PPS")]
    rate: Option<f64>,
    /// Frames to send. Default: until --duration or Ctrl-C.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Seconds to send (fractions allowed). Default: until --count or Ctrl-C.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Flows: UDP source ports 1024.. used round-robin, so RSS and switches see
    /// different flows.
    #[arg(long, default_value_t = 1, value_name = "N")]
    flows: u32,
    /// Destination MAC of the probes.
    #[arg(long, default_value = "02:00:00:00:00:02", value_name = "MAC")]
    dst_mac: String,
    /// Source IPv4 address of the probes.
    #[arg(long, default_value = "10.0.0.1", value_name = "IPV4")]
    src_ip: Ipv4Addr,
    /// Destination IPv4 address of the probes.
    #[arg(long, default_value = "10.0.0.2", value_name = "IPV4")]
    dst_ip: Ipv4Addr,
    /// IOrecs per driver call.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch: usize,
    /// Seconds to keep receiving after the last send, for probes still on their way.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    linger: f64,
    /// Seconds between statistics lines on stderr (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    stats_interval: f64,
}

impl PktgenArgs {
    fn options(&self) -> anyhow::Result<PktgenOptions> {
        if self.count == Some(0) {
            bail!("--count must be at least 1");
        }
        Ok(PktgenOptions {
            size: self.size,
            rate: self.rate,
            count: self.count,
            duration: self
                .duration
                .map(|s| seconds("--duration", s))
                .transpose()?,
            flows: self.flows,
            addresses: Addresses {
                dst_mac: parse_mac(&self.dst_mac)?,
                src_mac: driver::MacAddr::default(),
                src_ip: self.src_ip,
                dst_ip: self.dst_ip,
            },
            batch: self.batch,
            receive: !self.tx_only,
            linger: Duration::try_from_secs_f64(self.linger)
                .ok()
                .with_context(|| {
                    format!("--linger must be 0 or more seconds, not {}", self.linger)
                })?,
            stats_interval: seconds("--stats-interval", self.stats_interval)?,
        })
    }
}

/// Opens the NIC at `pci` through VFIO, promiscuous (a generator's receive port must see
/// probes whatever their destination).
fn open(role: &str, pci: &str) -> anyhow::Result<AnyNic> {
    nics::open(pci, RxFilter::Promiscuous).map_err(|e| anyhow::anyhow!("{role} port ({pci}): {e}"))
}

fn stats_line(now: &Snapshot, earlier: &Snapshot, receiving: bool) -> String {
    let secs = now.elapsed.saturating_sub(earlier.elapsed).as_secs_f64();
    let rate = |a: u64, b: u64| nics::per_sec(a, b, secs);
    let mut line = format!(
        "pktgen {:>6.1}s  tx {:.0} pps {:.1} Mbit/s",
        now.elapsed.as_secs_f64(),
        rate(now.tx_done, earlier.tx_done),
        rate(now.tx_bytes, earlier.tx_bytes) * 8.0 / 1e6
    );
    if receiving {
        line += &format!(
            " | rx {:.0} pps {:.1} Mbit/s | sent {} received {} reordered {} duplicates {} \
             corrupt {} missed {}",
            rate(now.rx_frames, earlier.rx_frames),
            rate(now.rx_bytes, earlier.rx_bytes) * 8.0 / 1e6,
            now.sent,
            now.unique,
            now.reordered,
            now.duplicates,
            now.corrupt,
            now.rx_missed
        );
    }
    line
}

fn print_summary(s: &Summary, receiving: bool) {
    let l = &s.last;
    let secs = s.send_time.as_secs_f64();
    let pps = if secs > 0.0 {
        l.sent as f64 / secs
    } else {
        0.0
    };
    println!(
        "pktgen summary: {}sent {} frames ({} bytes) in {secs:.2} s, {pps:.0} frames/s, {:.1} Mbit/s",
        if s.interrupted { "interrupted; " } else { "" },
        l.sent,
        l.tx_bytes,
        if secs > 0.0 {
            l.tx_bytes as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        }
    );
    let lat = &s.latency;
    if receiving {
        println!(
            "  received {} probes: lost {}, reordered {} ({} beyond the duplicate window), \
             duplicates {}, corrupt {}; other frames {}; NIC missed {}",
            l.unique,
            l.lost(),
            l.reordered,
            s.late,
            l.duplicates,
            l.corrupt,
            l.other,
            l.rx_missed
        );
        let us = |ns: u64| ns as f64 / 1e3;
        println!(
            "  latency us: min {:.1} p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} ({} probes)",
            us(lat.min_ns),
            us(lat.p50_ns),
            us(lat.p90_ns),
            us(lat.p99_ns),
            us(lat.p999_ns),
            us(lat.max_ns),
            lat.count
        );
    }
    // One line for scripts and tests.
    println!(
        "summary sent={} tx_done={} received={} lost={} reordered={} duplicates={} corrupt={} \
         other={} missed={} send_ms={} p50_ns={} p99_ns={} max_ns={}",
        l.sent,
        l.tx_done,
        l.unique,
        if receiving { l.lost() } else { 0 },
        l.reordered,
        l.duplicates,
        l.corrupt,
        l.other,
        l.rx_missed,
        s.send_time.as_millis(),
        lat.p50_ns,
        lat.p99_ns,
        lat.max_ns
    );
}

/// `rbufnic pktgen PCI`.
pub fn pktgen(args: &PktgenArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    opts.validate()?;
    if let Some(rx) = &args.rx {
        let (a, b) = (args.pci.parse::<PciAddress>(), rx.parse::<PciAddress>());
        if let (Ok(a), Ok(b)) = (a, b)
            && a == b
        {
            bail!("--rx names the sending port {a}; leave --rx out to receive on it");
        }
    }
    stop_on_ctrl_c()?;
    let tx = open("TX", &args.pci)?;
    let rx = args.rx.as_deref().map(|pci| open("RX", pci)).transpose()?;
    let opened = Instant::now();
    let settle = rx
        .as_ref()
        .map_or_else(|| nics::settle_time(&tx), nics::settle_time);
    let ring = nics::ring_entries(&nics::config(RxFilter::Promiscuous));
    let receiving = opts.receive;
    let mut pg = Pktgen::new(tx, rx, ring, opts)?;
    if receiving {
        // Receive may be held back after bring-up (QEMU's e1000): post buffers and wait it
        // out, or the first probes would be counted lost.
        while opened.elapsed() < settle && !STOP.load(Ordering::Relaxed) {
            pg.receive()?;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (mac, link) = (pg.tx_nic().mac(), pg.tx_nic().link());
    let mut last = Snapshot::default();
    let summary = pg.run(&STOP, &mut |event| match event {
        Event::Ready { tx_buffers } => {
            eprintln!(
                "pktgen ready: sending on {} {mac} link {} ({tx_buffers} buffers){}",
                args.pci,
                if link.up { "up" } else { "down" },
                match (&args.rx, receiving) {
                    (_, false) => ", not receiving".to_string(),
                    (Some(rx), true) => format!(", receiving on {rx}"),
                    (None, true) => ", receiving on the same port".to_string(),
                }
            );
        }
        Event::Stats(now) => {
            eprintln!("{}", stats_line(&now, &last, receiving));
            last = now;
        }
    })?;
    print_summary(&summary, receiving);
    let unaccounted = pg.unaccounted_buffers();
    if unaccounted != 0 {
        bail!("{unaccounted} buffers were neither back in their pool nor with a NIC at the end");
    }
    Ok(())
}
