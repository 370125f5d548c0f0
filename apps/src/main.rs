//! `rbufnic`: the command line of the rbufnic userspace NIC stack.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rbufnic::bench::ipc::{self, IpcParams, IpcReport};
use rbufnic::bench::tcp::{self as bench_tcp, TcpArgs, TcpChildArgs};

mod cli;
mod cmd_bind;
mod cmd_capture;
mod cmd_fwd;
mod cmd_pktgen;
mod cmd_serve;

#[derive(Parser)]
#[command(name = "rbufnic", version, about = "Userspace NIC stack on Rbuf channels", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Forward frames between two ports (e1000 or virtio-net, bound to vfio-pci), both directions,
    /// without copying: one data area serves A's receive and B's transmit and the reverse.
    /// Prints a statistics line every second to stderr and a summary at the end.
    Fwd(cmd_fwd::FwdArgs),
    /// List the PCI network devices: driver binding, IOMMU group and VFIO viability.
    List,
    /// Move a PCI network device to vfio-pci (sysfs driver_override), so rbufnic can
    /// drive it. Refuses devices that are not network controllers and devices whose kernel
    /// interface is up (it may carry this machine's own network). Needs root.
    Bind {
        /// PCI address, e.g. 0000:00:03.0.
        #[arg(value_name = "PCI")]
        pci: String,
    },
    /// Give a PCI network device back from vfio-pci to its kernel driver. Needs root.
    Unbind {
        /// PCI address, e.g. 0000:00:03.0.
        #[arg(value_name = "PCI")]
        pci: String,
    },
    /// Generate probe frames (Ethernet/IPv4/UDP with sequence numbers and send times) at a
    /// rate or as fast as possible, and count those that come back: loss, reordering,
    /// duplicates, corruption, latency percentiles. Statistics every second on stderr, a
    /// summary on stdout.
    Pktgen(cmd_pktgen::PktgenArgs),
    /// Write the frames a port receives to a pcap file (tcpdump and tshark read it).
    Capture(cmd_capture::CaptureArgs),
    /// Run the project's TCP/IP stack (smoltcp over rbuf channels) on a port, answering
    /// ping, with UDP and TCP echo, a static-file HTTP server and an upload sink.
    /// Statistics every second on stderr, uploads and a summary on stdout.
    Serve(cmd_serve::ServeArgs),
    /// Benchmarks that compare rbuf against peers measured in the same run.
    #[command(subcommand)]
    Bench(Bench),
    /// Internal: the second process of `bench tcp`.
    #[command(name = "__bench-tcp-child", hide = true)]
    BenchTcpChild(TcpChildArgs),
    /// Internal: the second process of a benchmark.
    #[command(name = "__bench-child", hide = true)]
    BenchChild {
        kind: String,
        socket: PathBuf,
        #[arg(long)]
        cpu: Option<usize>,
        #[command(flatten)]
        params: IpcArgs,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Inter-process transport: rbuf channels between two processes against a Unix
    /// socket, a pipe and iceoryx2, and against the physical limits (a bare cache-line
    /// bounce, a bare ring of rbuf's layout, a bare hand-over of the same buffers, one
    /// core's read bandwidth).
    Ipc {
        #[command(flatten)]
        params: IpcArgs,
        /// Rounds in which the peers of each group take turns, each doing its share of
        /// the work: a round compares its peers in one moment of a host whose speed
        /// drifts, and each ratio is the median of its rounds' ratios (its ratio over the
        /// whole run is printed beside it). Every figure comes from all of its rounds.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
        /// Pin this process and the child to these two CPUs ("0,1"); "none" to not pin.
        #[arg(long, default_value = "0,1")]
        cpus: String,
        /// Print one JSON object (the host, figures, ratios, ratios over the whole run and
        /// each round's ratios) instead of the table.
        #[arg(long)]
        json: bool,
        /// Measure only these groups (comma-separated); ratios need both of their figures.
        #[arg(long, value_delimiter = ',', default_value = "rate,latency,bulk")]
        only: Vec<Group>,
    },
    /// TCP throughput: the project's stack over rbuf channels between two processes,
    /// against Linux loopback TCP between two processes and smoltcp's own Loopback device
    /// in one process; prints the ratios (--json for one JSON object).
    Tcp(TcpArgs),
}

/// A group of `bench ipc` figures.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    /// Message rate, 64-byte messages.
    Rate,
    /// One-way latency, ping-pong halved (median over means of 8 consecutive round trips,
    /// p99 over single ones).
    Latency,
    /// Bulk transfer, 1 MiB messages.
    Bulk,
}

#[derive(Args, Clone)]
struct IpcArgs {
    /// 64-byte messages sent per message-rate peer, split over the rounds.
    #[arg(long, default_value_t = 3_000_000)]
    messages: u64,
    /// Timed ping-pong round trips per latency peer, split over the rounds (each round
    /// after a tenth as many, at most 10,000, untimed warm-up ones).
    #[arg(long, default_value_t = 100_000)]
    iters: u64,
    /// MiB moved per bulk peer, in 1 MiB messages, split over the rounds.
    #[arg(long, default_value_t = 2048)]
    bulk_mib: u64,
}

impl IpcArgs {
    fn params(&self, rounds: u64, cpus: Option<(usize, usize)>, only: &[Group]) -> IpcParams {
        IpcParams {
            messages: self.messages,
            iters: self.iters,
            bulk_mib: self.bulk_mib,
            rounds,
            cpus,
            groups: ipc::Groups {
                rate: only.contains(&Group::Rate),
                latency: only.contains(&Group::Latency),
                bulk: only.contains(&Group::Bulk),
            },
        }
    }
}

fn parse_cpus(s: &str) -> anyhow::Result<Option<(usize, usize)>> {
    if s == "none" {
        return Ok(None);
    }
    let (a, b) = s.split_once(',').ok_or_else(|| {
        anyhow::anyhow!("--cpus wants two CPU numbers like 0,1 (or none), not {s:?}")
    })?;
    Ok(Some((a.trim().parse()?, b.trim().parse()?)))
}

fn print_table(r: &IpcReport) {
    let pinned = r.host.pinned.map_or("not pinned".to_string(), |(a, b)| {
        format!("pinned to {a},{b}")
    });
    println!("host: {}, {} CPUs, {pinned}", r.host.cpu, r.host.cpus);
    if !r.rate.is_empty() {
        println!("{:<34} {:>14}", "message rate, 64 B", "Mmsg/s");
        for (name, v) in &r.rate {
            println!("  {name:<32} {:>14.2}", v / 1e6);
        }
    }
    if !r.latency.is_empty() {
        println!(
            "{:<34} {:>14} {:>10}",
            "one-way latency", "median ns", "p99 ns"
        );
        for (name, l) in &r.latency {
            println!("  {name:<32} {:>14.1} {:>10.0}", l.median_ns, l.p99_ns);
        }
    }
    if !r.bulk.is_empty() {
        println!("{:<34} {:>14}", "bulk, 1 MiB messages", "GB/s");
        for (name, v) in &r.bulk {
            println!("  {name:<32} {:>14.2}", v / 1e9);
        }
    }
    if !r.ratios.is_empty() {
        println!(
            "{:<34} {:>14} {:>10}   each round",
            "ratios (latency: lower is better)", "median", "whole run"
        );
        for (name, v) in &r.ratios {
            let whole = ipc::named(&r.ratios_whole_run, name).unwrap_or(&f64::NAN);
            let rounds = ipc::named(&r.ratio_rounds, name)
                .map(|v| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>())
                .unwrap_or_default();
            println!(
                "  {name:<32} {v:>14.2} {whole:>10.2}   {}",
                rounds.join(" ")
            );
        }
    }
}

fn json(r: &IpcReport) -> serde_json::Value {
    let obj = |v: &[(&str, f64)]| {
        serde_json::Value::Object(
            v.iter()
                .map(|(k, x)| (k.to_string(), serde_json::json!(x)))
                .collect(),
        )
    };
    serde_json::json!({
        "host": {
            "cpu": r.host.cpu,
            "cpus": r.host.cpus,
            "pinned": r.host.pinned.map(|(a, b)| [a, b]),
        },
        "msg_rate_per_s": obj(&r.rate),
        "latency_ns": serde_json::Value::Object(r.latency.iter().map(|(k, l)| {
            (k.to_string(), serde_json::json!({"median": l.median_ns, "p99": l.p99_ns}))
        }).collect()),
        "bulk_bytes_per_s": obj(&r.bulk),
        "ratios": obj(&r.ratios),
        "ratios_whole_run": obj(&r.ratios_whole_run),
        "ratio_rounds": serde_json::Value::Object(
            r.ratio_rounds
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect()
        ),
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fwd(args) => cmd_fwd::fwd(&args),
        Command::List => cmd_fwd::list(),
        Command::Bind { pci } => cmd_bind::bind(&pci),
        Command::Unbind { pci } => cmd_bind::unbind(&pci),
        Command::Pktgen(args) => cmd_pktgen::pktgen(&args),
        Command::Capture(args) => cmd_capture::capture(&args),
        Command::Serve(args) => cmd_serve::serve(&args),
        Command::Bench(Bench::Ipc {
            params,
            rounds,
            cpus,
            json: as_json,
            only,
        }) => {
            let cpus = parse_cpus(&cpus)?;
            let report = ipc::run(&params.params(rounds, cpus, &only), &mut |step| {
                eprintln!("bench ipc: {step}")
            })?;
            if as_json {
                println!("{}", json(&report));
            } else {
                print_table(&report);
            }
            Ok(())
        }
        Command::Bench(Bench::Tcp(args)) => bench_tcp::run(&args),
        Command::BenchTcpChild(args) => bench_tcp::child(&args),
        Command::BenchChild {
            kind,
            socket,
            cpu,
            params,
        } => ipc::child(&kind, &socket, &params.params(1, None, &[]), cpu),
    }
}

fn main() -> ExitCode {
    // vfio-ioctls warns about every IRQ index a device lacks (e1000: no MSI-X); not ours.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,vfio_ioctls=error"),
    )
    .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbufnic: {e:#}");
            ExitCode::FAILURE
        }
    }
}
