//! The command-line side of `rbufnic fwd` and `rbufnic list`: options, Ctrl-C, printing.

use anyhow::{Context, bail};
use clap::Args;
use driver::pci::SysPaths;
use rbufnic::fwd::{self, Event, FwdOptions, Snapshot, StopReason, Summary};
use rbufnic::list;

use crate::cli::{STOP, parse_mac, seconds, stop_on_ctrl_c};

/// Options of `rbufnic fwd`.
#[derive(Args, Clone, Debug)]
pub struct FwdArgs {
    /// PCI address of port A (e.g. 0000:00:03.0), an e1000 or virtio-net NIC bound to
    /// vfio-pci.
    #[arg(value_name = "PCI_A")]
    pci_a: String,
    /// PCI address of port B. Frames received on A go out on B and the reverse.
    #[arg(value_name = "PCI_B")]
    pci_b: String,
    /// IOrecs per driver call (receive poll, transmit submit, reclaim, refill).
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch: usize,
    /// Destination MAC to write into forwarded frames: the first for frames going out on
    /// B (received on A), the optional second for frames going out on A. Default: leave
    /// destinations as received.
    #[arg(long, value_name = "MAC_B[,MAC_A]")]
    rewrite_dst_mac: Option<String>,
    /// Write the sending port's own MAC as the source of every forwarded frame.
    #[arg(long)]
    rewrite_src_mac: bool,
    /// Stop after this many seconds (fractions allowed). Default: run until Ctrl-C.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Stop after forwarding this many frames, both directions together.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Seconds between statistics lines on stderr (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    stats_interval: f64,
}

impl FwdArgs {
    fn options(&self) -> anyhow::Result<FwdOptions> {
        if self.batch == 0 || self.batch > 4096 {
            bail!("--batch must be 1 to 4096, not {}", self.batch);
        }
        let mut rewrite_dst = [None, None];
        if let Some(list) = &self.rewrite_dst_mac {
            let macs: Vec<&str> = list.split(',').collect();
            if macs.len() > 2 {
                bail!("--rewrite-dst-mac takes one or two MACs (MAC_B[,MAC_A]), not {list:?}");
            }
            // Index = the port the frame leaves by: B (1) first, then A (0).
            rewrite_dst[1] = Some(parse_mac(macs[0])?);
            if let Some(a) = macs.get(1) {
                rewrite_dst[0] = Some(parse_mac(a)?);
            }
        }
        Ok(FwdOptions {
            batch: self.batch,
            rewrite_dst,
            rewrite_src: self.rewrite_src_mac,
            duration: self
                .duration
                .map(|s| seconds("--duration", s))
                .transpose()?,
            count: self.count,
            stats_interval: seconds("--stats-interval", self.stats_interval)?,
        })
    }
}

fn stats_line(now: &Snapshot, earlier: &Snapshot) -> String {
    let rates = now.rates_since(earlier);
    let port = |i: usize| {
        let (r, c) = (rates[i], now.ports[i]);
        format!(
            "{} rx {:.0} pps {:.1} Mbit/s tx {:.0} pps {:.1} Mbit/s drops {} errors {}",
            ['A', 'B'][i],
            r.rx_pps,
            r.rx_mbps,
            r.tx_pps,
            r.tx_mbps,
            c.drops,
            c.errors
        )
    };
    format!(
        "fwd {:>6.1}s  {} | {} | forwarded {}",
        now.elapsed.as_secs_f64(),
        port(0),
        port(1),
        now.forwarded()
    )
}

fn print_summary(pci: [&str; 2], s: &Summary) {
    let last = &s.last;
    let secs = last.elapsed.as_secs_f64();
    let reason = match s.reason {
        StopReason::Count => "count reached",
        StopReason::Duration => "duration reached",
        StopReason::Signal => "interrupted",
    };
    println!(
        "fwd summary: {reason} after {secs:.2} s; forwarded {} frames ({:.0} frames/s)",
        last.forwarded(),
        if secs > 0.0 {
            last.forwarded() as f64 / secs
        } else {
            0.0
        }
    );
    for (i, c) in last.ports.iter().enumerate() {
        println!(
            "  port {} {}: rx {} frames {} bytes, tx {} frames {} bytes, drops {}, errors {}",
            ['A', 'B'][i],
            pci[i],
            c.rx_frames,
            c.rx_bytes,
            c.tx_frames,
            c.tx_bytes,
            c.drops,
            c.errors
        );
    }
    // One line for scripts and tests.
    let [a, b] = last.ports;
    println!(
        "summary forwarded={} elapsed_ms={} a_rx={} a_tx={} a_drops={} a_errors={} \
         b_rx={} b_tx={} b_drops={} b_errors={} unaccounted_buffers={}",
        last.forwarded(),
        last.elapsed.as_millis(),
        a.rx_frames,
        a.tx_frames,
        a.drops,
        a.errors,
        b.rx_frames,
        b.tx_frames,
        b.drops,
        b.errors,
        s.unaccounted_buffers
    );
}

/// `rbufnic fwd PCI_A PCI_B`.
pub fn fwd(args: &FwdArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    stop_on_ctrl_c()?;
    let pci = [args.pci_a.as_str(), args.pci_b.as_str()];
    let mut last = Snapshot::default();
    let summary = fwd::run(pci, &opts, &STOP, &mut |event| match event {
        Event::Ready {
            macs,
            links,
            buffers,
        } => {
            let port = |i: usize| {
                let l = links[i];
                format!(
                    "{} {} {} link {}",
                    ['A', 'B'][i],
                    pci[i],
                    macs[i],
                    if l.up && l.speed_mbps > 0 {
                        format!(
                            "up {} Mb/s {}",
                            l.speed_mbps,
                            if l.full_duplex { "full" } else { "half" }
                        )
                    } else if l.up {
                        // virtio-net without VIRTIO_NET_F_SPEED_DUPLEX: no speed to tell.
                        "up".to_string()
                    } else {
                        "down".to_string()
                    }
                )
            };
            eprintln!(
                "fwd ready: {} <-> {}; {buffers} buffers of {} B in one data area, batch {}",
                port(0),
                port(1),
                fwd::BUFFER_BYTES,
                opts.batch
            );
        }
        Event::Stats(now) => {
            eprintln!("{}", stats_line(&now, &last));
            last = now;
        }
    })?;
    print_summary(pci, &summary);
    if summary.unaccounted_buffers != 0 {
        bail!(
            "{} buffers were neither back in the pool nor posted for receive at the end",
            summary.unaccounted_buffers
        );
    }
    Ok(())
}

/// `rbufnic list`.
pub fn list() -> anyhow::Result<()> {
    let paths = SysPaths::default();
    let devices = list::network_devices(&paths)
        .with_context(|| format!("reading {}/bus/pci/devices", paths.sys.display()))?;
    if devices.is_empty() {
        println!("no PCI network devices");
        return Ok(());
    }
    for line in list::format(&devices) {
        println!("{line}");
    }
    Ok(())
}
