//! The command-line side of `rbufnic capture`: options, the output file, printing.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use driver::{Nic, PciAddress};
use rbufnic::capture::{Capture, CaptureOptions, CaptureStats};
use rbufnic::nics::{self, RxFilter};

use crate::cli::{STOP, seconds, stop_on_ctrl_c};

/// Options of `rbufnic capture`.
#[derive(Args, Clone, Debug)]
pub struct CaptureArgs {
    /// PCI address of the port to capture from (an e1000 or virtio-net NIC bound to
    /// vfio-pci).
    #[arg(value_name = "PCI")]
    pci: String,
    /// The pcap file to write (created or truncated; libpcap format, Ethernet, µs
    /// timestamps; `tcpdump -r FILE` and `tshark -r FILE` read it).
    #[arg(long, value_name = "FILE.pcap")]
    out: PathBuf,
    /// Stop after writing this many frames. Default: until --duration or Ctrl-C.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds (fractions allowed). Default: until --count or Ctrl-C.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Bytes of each frame to keep in the file (the record keeps the real length).
    #[arg(long, default_value_t = 65535, value_name = "BYTES")]
    snaplen: u32,
    /// Receive only frames addressed to the port (its MAC, broadcast). Default:
    /// promiscuous, every frame on the wire.
    #[arg(long)]
    no_promiscuous: bool,
    /// IOrecs per driver call.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch: usize,
    /// Seconds between statistics lines on stderr (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    stats_interval: f64,
}

fn stats_line(now: &CaptureStats, earlier: &CaptureStats) -> String {
    let secs = now.elapsed.saturating_sub(earlier.elapsed).as_secs_f64();
    let rate = |a: u64, b: u64| nics::per_sec(a, b, secs);
    format!(
        "capture {:>6.1}s  {:.0} pps {:.1} Mbit/s | written {} frames {} bytes, errors {}, missed {}",
        now.elapsed.as_secs_f64(),
        rate(now.frames, earlier.frames),
        rate(now.bytes, earlier.bytes) * 8.0 / 1e6,
        now.frames,
        now.bytes,
        now.errors,
        now.missed
    )
}

/// `rbufnic capture PCI --out FILE`.
pub fn capture(args: &CaptureArgs) -> anyhow::Result<()> {
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    let opts = CaptureOptions {
        count: args.count,
        duration: args
            .duration
            .map(|s| seconds("--duration", s))
            .transpose()?,
        snaplen: args.snaplen,
        batch: args.batch,
        stats_interval: seconds("--stats-interval", args.stats_interval)?,
    };
    opts.validate()?;
    let addr: PciAddress = args
        .pci
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.pci))?;
    // The file before the device: a path that cannot be written fails before anything
    // is touched.
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    stop_on_ctrl_c()?;
    let nic = nics::open(
        &addr.to_string(),
        if args.no_promiscuous {
            RxFilter::Unicast
        } else {
            RxFilter::Promiscuous
        },
    )
    .map_err(|e| {
        // Leave no empty file behind for a capture that never started.
        let _ = std::fs::remove_file(&args.out);
        anyhow::anyhow!("{}: {e}", args.pci)
    })?;
    let opened = Instant::now();
    let settle = nics::settle_time(&nic);
    let ring = nics::ring_entries(&nics::config(RxFilter::Promiscuous));
    let mut cap = Capture::new(nic, ring, BufWriter::new(file), opts)?;
    // Receive may be held back after bring-up (QEMU's e1000); say "ready" only once
    // frames can come.
    while opened.elapsed() < settle {
        cap.step()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mac, link) = (cap.nic().mac(), cap.nic().link());
    eprintln!(
        "capture ready: {} {mac} link {}, writing {}",
        args.pci,
        if link.up { "up" } else { "down" },
        args.out.display()
    );
    let mut last = CaptureStats::default();
    let stats = cap.run(&STOP, &mut |now| {
        eprintln!("{}", stats_line(&now, &last));
        last = now;
    })?;
    cap.into_writer()
        .flush()
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "capture summary: wrote {} frames ({} bytes) to {} in {:.2} s; errors {}, missed {}",
        stats.frames,
        stats.bytes,
        args.out.display(),
        stats.elapsed.as_secs_f64(),
        stats.errors,
        stats.missed
    );
    println!(
        "summary frames={} bytes={} errors={} missed={}",
        stats.frames, stats.bytes, stats.errors, stats.missed
    );
    Ok(())
}
