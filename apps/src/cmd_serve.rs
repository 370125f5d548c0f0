//! The command-line side of `rbufnic serve`: options, printing.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use netstack::smoltcp::wire::{EthernetAddress, Ipv4Cidr, Ipv6Cidr};
use netstack::{Ipv4Setup, Ipv6Setup, StackConfig, TcpTuning};
use rbufnic::nics::{self, RxFilter};
use rbufnic::serve::{self, Event, ServeOptions, ServeStats};

use crate::cli::{STOP, seconds, stop_on_ctrl_c};

/// Options of `rbufnic serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// PCI address of the port to serve on (an e1000 or virtio-net NIC bound to vfio-pci).
    #[arg(value_name = "PCI")]
    pci: String,
    /// Static IPv4 address and prefix length, e.g. 10.0.2.15/24.
    #[arg(long, value_name = "ADDR/LEN", required_unless_present = "dhcp")]
    ip: Option<String>,
    /// Take the IPv4 address, prefix and gateway from a DHCPv4 server instead.
    #[arg(long, conflicts_with_all = ["ip", "gateway"])]
    dhcp: bool,
    /// IPv4 default gateway (with --ip).
    #[arg(long, value_name = "ADDR")]
    gateway: Option<Ipv4Addr>,
    /// Static IPv6 address and prefix length, e.g. fd00::15/64 (a link-local address
    /// from the MAC is always there).
    #[arg(long, value_name = "ADDR/LEN")]
    ipv6: Option<String>,
    /// IPv6 default gateway (with --ipv6).
    #[arg(long, value_name = "ADDR", requires = "ipv6")]
    ipv6_gateway: Option<std::net::Ipv6Addr>,
    /// UDP echo port (RFC 862); 0 turns the service off.
    #[arg(long, default_value_t = 7, value_name = "PORT")]
    udp_echo: u16,
    /// TCP echo port; 0 turns the service off.
    #[arg(long, default_value_t = 7, value_name = "PORT")]
    tcp_echo: u16,
    /// HTTP port for GET and HEAD of the files in --root; 0 turns the server off.
    #[arg(long, default_value_t = 80, value_name = "PORT")]
    http: u16,
    /// Directory whose regular files the HTTP server serves as /NAME (read into memory
    /// at start). Without it the HTTP server is off.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Upload sink port: takes a TCP upload, reports its size and SHA-256 when the client
    /// closes; 0 turns it off.
    #[arg(long, default_value_t = 9000, value_name = "PORT")]
    sink: u16,
    /// Concurrent connections per TCP service.
    #[arg(long, default_value_t = 4, value_name = "N")]
    connections: usize,
    /// Turn Nagle's algorithm off (send small segments at once).
    #[arg(long)]
    no_nagle: bool,
    /// Delayed-ACK timeout in milliseconds; 0 acknowledges at once.
    #[arg(long, default_value_t = 10, value_name = "MS")]
    ack_delay: u64,
    /// Per-connection TCP buffer size in KiB, each direction (the largest window).
    #[arg(long, default_value_t = 256, value_name = "KIB")]
    tcp_buffer: usize,
    /// Stop after this many seconds (fractions allowed). Default: until Ctrl-C.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Seconds between statistics lines on stderr (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    stats_interval: f64,
}

fn parse_v4(s: &str) -> anyhow::Result<Ipv4Cidr> {
    let (a, len) = s
        .split_once('/')
        .with_context(|| format!("--ip wants ADDR/LEN like 10.0.2.15/24, not {s:?}"))?;
    let a: Ipv4Addr = a
        .parse()
        .with_context(|| format!("bad IPv4 address in {s:?}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .with_context(|| format!("bad prefix length in {s:?} (0 to 32)"))?;
    Ok(Ipv4Cidr::new(a, len))
}

fn parse_v6(s: &str) -> anyhow::Result<Ipv6Cidr> {
    let (a, len) = s
        .split_once('/')
        .with_context(|| format!("--ipv6 wants ADDR/LEN like fd00::15/64, not {s:?}"))?;
    let a: std::net::Ipv6Addr = a
        .parse()
        .with_context(|| format!("bad IPv6 address in {s:?}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 128)
        .with_context(|| format!("bad prefix length in {s:?} (0 to 128)"))?;
    Ok(Ipv6Cidr::new(a, len))
}

impl ServeArgs {
    fn options(&self) -> anyhow::Result<ServeOptions> {
        let ipv4 = if self.dhcp {
            Ipv4Setup::Dhcp
        } else {
            let cidr = parse_v4(self.ip.as_deref().unwrap_or_default())?;
            Ipv4Setup::Static {
                cidr,
                gateway: self.gateway,
            }
        };
        let ipv6 = self
            .ipv6
            .as_deref()
            .map(|s| {
                Ok::<_, anyhow::Error>(Ipv6Setup {
                    cidr: parse_v6(s)?,
                    gateway: self.ipv6_gateway,
                })
            })
            .transpose()?;
        if self.tcp_buffer == 0 || self.tcp_buffer > 16 * 1024 {
            bail!(
                "--tcp-buffer must be 1 to 16384 KiB, not {}",
                self.tcp_buffer
            );
        }
        if self.connections == 0 || self.connections > 1024 {
            bail!("--connections must be 1 to 1024, not {}", self.connections);
        }
        let port = |p: u16| (p != 0).then_some(p);
        let http = match (&self.root, port(self.http)) {
            (Some(dir), Some(p)) => {
                if !dir.is_dir() {
                    bail!("--root {} is not a directory", dir.display());
                }
                Some((p, dir.clone()))
            }
            _ => None,
        };
        let stack = StackConfig {
            // Replaced by the NIC's own address once it is open.
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ipv4,
            ipv6,
            tcp: TcpTuning {
                nagle: !self.no_nagle,
                ack_delay_ms: (self.ack_delay != 0).then_some(self.ack_delay),
                rx_buffer_bytes: self.tcp_buffer << 10,
                tx_buffer_bytes: self.tcp_buffer << 10,
            },
            seed: None,
        };
        stack.validate()?;
        Ok(ServeOptions {
            stack,
            udp_echo: port(self.udp_echo),
            tcp_echo: port(self.tcp_echo),
            http,
            sink: port(self.sink),
            connections: self.connections,
            duration: self
                .duration
                .map(|s| seconds("--duration", s))
                .transpose()?,
            stats_interval: seconds("--stats-interval", self.stats_interval)?,
        })
    }

    fn services(&self, o: &ServeOptions) -> String {
        let mut s = Vec::new();
        if let Some(p) = o.udp_echo {
            s.push(format!("udp echo {p}"));
        }
        if let Some(p) = o.tcp_echo {
            s.push(format!("tcp echo {p}"));
        }
        if let Some((p, dir)) = &o.http {
            s.push(format!("http {p} ({})", dir.display()));
        }
        if let Some(p) = o.sink {
            s.push(format!("upload sink {p}"));
        }
        if s.is_empty() {
            "no services (ping only)".into()
        } else {
            s.join(", ")
        }
    }
}

fn stats_line(s: &ServeStats) -> String {
    format!(
        "serve {:>6.1}s  rx {} frames tx {} frames | udp echoed {} | http 200:{} 404:{} | uploads {}",
        s.elapsed.as_secs_f64(),
        s.device.rx_frames,
        s.device.tx_frames,
        s.udp_echoed,
        s.http_served[0],
        s.http_served[2],
        s.uploads
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `rbufnic serve PCI`.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    let services = args.services(&opts);
    let nic = nics::open(&args.pci, RxFilter::AllMulticast)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.pci))?;
    stop_on_ctrl_c()?;
    let settle = nics::settle_time(&nic);
    let stats = serve::serve(nic, settle, &opts, &STOP, &mut |event| match event {
        Event::Ready { mac, ipv4, files } => {
            let addr = ipv4.map_or_else(|| "waiting for DHCP".to_string(), |a| a.to_string());
            eprintln!(
                "serve ready: {} {mac} {addr}; {services}{}",
                args.pci,
                if opts.http.is_some() {
                    format!("; {files} files")
                } else {
                    String::new()
                }
            );
        }
        Event::Ipv4(Some(a)) => eprintln!("serve: DHCP lease {a}"),
        Event::Ipv4(None) => eprintln!("serve: DHCP lease lost"),
        Event::Upload { bytes, sha256 } => {
            println!("upload bytes={bytes} sha256={}", hex(&sha256));
        }
        Event::Stats(s) => eprintln!("{}", stats_line(&s)),
    })?;
    println!(
        "serve summary: {:.1} s; rx {} frames ({} bytes), tx {} frames ({} bytes); udp echoed {}; \
         http 200:{} 400:{} 404:{} 405:{}; uploads {}",
        stats.elapsed.as_secs_f64(),
        stats.device.rx_frames,
        stats.device.rx_bytes,
        stats.device.tx_frames,
        stats.device.tx_bytes,
        stats.udp_echoed,
        stats.http_served[0],
        stats.http_served[1],
        stats.http_served[2],
        stats.http_served[3],
        stats.uploads
    );
    Ok(())
}
