//! `rbufnic bench tcp`: TCP throughput of the project's stack over rbuf channels between
//! two processes, side by side with the same transfer over Linux loopback TCP (two
//! processes, `std::net`) and over smoltcp's own `Loopback` device (one process, one
//! interface talking to itself).
//!
//! Every peer moves the same stream: the sender writes `--mib` MiB of a pattern, closes,
//! and the clock stops when the receiver, having read every byte, has closed too. The
//! rbuf and Linux runs use a second process, this binary re-executed as
//! `rbufnic __bench-tcp-child`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netstack::services::{BulkSend, Keep, Pattern, Service, TcpSink};
use netstack::smoltcp::phy::{Device, Loopback, Medium};
use netstack::smoltcp::wire::{EthernetAddress, IpAddress, IpEndpoint, Ipv4Address, Ipv4Cidr};
use netstack::{RxAccess, Stack, StackConfig, TcpTuning, WireConfig, wire};
use rbuf::connect::Listener;

/// Options of `rbufnic bench tcp`.
#[derive(clap::Args, Clone, Debug)]
pub struct TcpArgs {
    /// MiB each peer transfers (one TCP connection, one direction).
    #[arg(long, default_value_t = 512)]
    pub mib: u64,
    /// Ring size of the rbuf channels, in IOrecs (frames in flight each way).
    #[arg(long, default_value_t = 256)]
    pub slots: usize,
    /// TCP socket buffer of the project's stack, in KiB (send and receive each).
    #[arg(long, default_value_t = 1024)]
    pub buffer_kib: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Options of the hidden `rbufnic __bench-tcp-child`: the receiving process.
#[derive(clap::Args, Clone, Debug)]
pub struct TcpChildArgs {
    /// Which peer: `rbuf` (connect a wire at SOCKET) or `linux` (connect to 127.0.0.1:PORT).
    #[arg(long)]
    pub kind: String,
    /// The Unix socket of the rbuf wire, or the TCP port on 127.0.0.1.
    #[arg(long)]
    pub target: String,
    /// Ring size of the rbuf channels, in IOrecs.
    #[arg(long, default_value_t = 256)]
    pub slots: usize,
    /// TCP socket buffer of the project's stack, in KiB.
    #[arg(long, default_value_t = 1024)]
    pub buffer_kib: usize,
}

/// What one peer measured.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Peer name as printed and in the JSON.
    pub name: &'static str,
    /// Wall time from connect to both sides closed, in seconds.
    pub seconds: f64,
    /// Bytes moved.
    pub bytes: u64,
}

impl Figure {
    /// Throughput in bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct TcpReport {
    /// The project's stack, two processes, rbuf channels.
    pub rbuf: Figure,
    /// Linux TCP over loopback, two processes.
    pub linux: Figure,
    /// smoltcp over its `Loopback` device, one process.
    pub smoltcp_loopback: Figure,
}

impl TcpReport {
    /// rbuf throughput over Linux loopback throughput.
    pub fn rbuf_vs_linux_loopback(&self) -> f64 {
        self.rbuf.bytes_per_s() / self.linux.bytes_per_s()
    }

    /// rbuf throughput over smoltcp `Loopback` throughput.
    pub fn rbuf_vs_smoltcp_loopback(&self) -> f64 {
        self.rbuf.bytes_per_s() / self.smoltcp_loopback.bytes_per_s()
    }

    /// The figures as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let figs = [&self.rbuf, &self.linux, &self.smoltcp_loopback];
        serde_json::json!({
            "bytes": self.rbuf.bytes,
            "throughput_bytes_per_s": figs.iter().map(|f| (f.name.to_string(), serde_json::json!(f.bytes_per_s()))).collect::<serde_json::Map<_, _>>(),
            "seconds": figs.iter().map(|f| (f.name.to_string(), serde_json::json!(f.seconds))).collect::<serde_json::Map<_, _>>(),
            "ratios": {
                "rbuf_vs_linux_loopback": self.rbuf_vs_linux_loopback(),
                "rbuf_vs_smoltcp_loopback": self.rbuf_vs_smoltcp_loopback(),
            },
        })
    }

    /// The figures as a table.
    pub fn table(&self) -> String {
        let mut t = format!(
            "TCP bulk transfer, {} MiB, one connection\n{:<48} {:>10} {:>10}\n",
            self.rbuf.bytes >> 20,
            "peer",
            "seconds",
            "MB/s"
        );
        for f in [&self.rbuf, &self.linux, &self.smoltcp_loopback] {
            t += &format!(
                "  {:<46} {:>10.3} {:>10.1}\n",
                describe(f.name),
                f.seconds,
                f.bytes_per_s() / 1e6
            );
        }
        t += &format!(
            "ratios (throughput, higher is better for rbuf)\n  {:<46} {:>10.2}\n  {:<46} {:>10.2}\n",
            "rbuf_vs_linux_loopback",
            self.rbuf_vs_linux_loopback(),
            "rbuf_vs_smoltcp_loopback",
            self.rbuf_vs_smoltcp_loopback()
        );
        t
    }
}

fn describe(name: &str) -> &'static str {
    match name {
        "rbuf" => "rbuf: netstack, two processes, MTU 1514",
        "linux_loopback" => "Linux loopback TCP, two processes, MTU 65536",
        _ => "smoltcp Loopback, one process, MTU 65535",
    }
}

/// `rbufnic bench tcp`: measures all three peers and prints the table (or JSON).
pub fn run(args: &TcpArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    let report = measure(args, &exe, &mut |step| eprintln!("bench tcp: {step}"))?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Measures the three peers; the second processes are `exe __bench-tcp-child ...`.
pub fn measure(args: &TcpArgs, exe: &Path, progress: &mut dyn FnMut(&str)) -> Result<TcpReport> {
    let bytes = args.mib << 20;
    if bytes == 0 {
        bail!("--mib must be at least 1");
    }
    let dir = TempDir::new()?;
    progress("rbuf, two processes");
    let rbuf = rbuf_peer(args, exe, &dir.0, bytes)?;
    progress("Linux loopback, two processes");
    let linux = linux_peer(exe, bytes)?;
    progress("smoltcp Loopback, one process");
    let smoltcp_loopback = smoltcp_loopback(args, bytes)?;
    Ok(TcpReport {
        rbuf,
        linux,
        smoltcp_loopback,
    })
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("rbufnic-bench-tcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SENDER_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
const RECEIVER_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
const PORT: u16 = 5001;
const PATTERN_SEED: u64 = 1;
/// Longest a peer may take before the run is given up.
const PEER_TIMEOUT: Duration = Duration::from_secs(600);

fn stack_config(ip: Ipv4Address, last: u8, buffer_kib: usize, prefix: u8) -> StackConfig {
    let mut c = StackConfig::ipv4(
        EthernetAddress([0x02, 0, 0, 0, 0, last]),
        Ipv4Cidr::new(ip, prefix),
    );
    c.tcp = TcpTuning {
        rx_buffer_bytes: buffer_kib << 10,
        tx_buffer_bytes: buffer_kib << 10,
        ..TcpTuning::default()
    };
    c
}

fn wire_config(slots: usize) -> WireConfig {
    WireConfig {
        slots,
        buffers: 2 * slots,
        ..WireConfig::default()
    }
}

fn spawn_child(exe: &Path, kind: &str, target: &str, args: &TcpArgs) -> Result<Child> {
    Command::new(exe)
        .arg("__bench-tcp-child")
        .args(["--kind", kind, "--target", target])
        .args(["--slots", &args.slots.to_string()])
        .args(["--buffer-kib", &args.buffer_kib.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {} __bench-tcp-child", exe.display()))
}

/// Waits for the child and returns the byte count it reports (`received N`).
fn child_received(child: Child) -> Result<u64> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("benchmark child failed ({}): {text}", out.status);
    }
    text.lines()
        .find_map(|l| l.strip_prefix("received "))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("benchmark child reported no byte count: {text:?}"))
}

/// Drives a smoltcp sender until it is done; `other` runs the receiving side if it is in
/// this process.
fn send_all<D: Device>(
    stack: &mut Stack<D>,
    bytes: u64,
    mut other: impl FnMut() -> Result<bool>,
    may_sleep: bool,
) -> Result<f64> {
    let start = Instant::now();
    let mut send = BulkSend::start(
        stack,
        IpEndpoint::new(IpAddress::Ipv4(RECEIVER_IP), PORT),
        bytes,
        Pattern::new(PATTERN_SEED),
        false,
    )?;
    while !send.is_done() {
        let mut did = stack.poll()?;
        did |= send.poll(stack.sockets())?;
        did |= other()?;
        if start.elapsed() > PEER_TIMEOUT {
            bail!("transfer not done after {PEER_TIMEOUT:?}");
        }
        if !did && may_sleep {
            stack.wait(Duration::from_millis(10))?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn rbuf_peer(args: &TcpArgs, exe: &Path, dir: &Path, bytes: u64) -> Result<Figure> {
    let sock = dir.join("wire");
    let listener = Listener::bind(&sock)?;
    let child = spawn_child(exe, "rbuf", &sock.to_string_lossy(), args)?;
    let end = wire::accept(&listener, &wire_config(args.slots))?;
    let dev = end.into_device(RxAccess::Borrow);
    let handle = dev.handle();
    let mut stack = Stack::new(dev, &stack_config(SENDER_IP, 1, args.buffer_kib, 24))?
        .with_control(handle.clone());
    let seconds = send_all(&mut stack, bytes, || Ok(false), true)?;
    drop(stack);
    drop(handle);
    let received = child_received(child)?;
    if received != bytes {
        bail!("rbuf peer received {received} of {bytes} bytes");
    }
    Ok(Figure {
        name: "rbuf",
        seconds,
        bytes,
    })
}

fn linux_peer(exe: &Path, bytes: u64) -> Result<Figure> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let child = spawn_child(
        exe,
        "linux",
        &port.to_string(),
        &TcpArgs {
            mib: 0,
            slots: 0,
            buffer_kib: 0,
            json: false,
        },
    )?;
    let pattern = Pattern::new(PATTERN_SEED);
    let mut chunk = vec![0u8; 1 << 20];
    let start = Instant::now();
    let (mut s, _) = listener.accept()?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = (chunk.len() as u64).min(bytes - sent) as usize;
        pattern.fill(sent, &mut chunk[..n]);
        s.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // The receiver closes once it has read everything.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    let seconds = start.elapsed().as_secs_f64();
    let received = child_received(child)?;
    if received != bytes {
        bail!("Linux peer received {received} of {bytes} bytes");
    }
    Ok(Figure {
        name: "linux_loopback",
        seconds,
        bytes,
    })
}

fn smoltcp_loopback(args: &TcpArgs, bytes: u64) -> Result<Figure> {
    // One interface that hears its own frames: sender and receiver sockets on one stack.
    let mut cfg = stack_config(RECEIVER_IP, 1, args.buffer_kib, 24);
    cfg.ipv4 = netstack::Ipv4Setup::Static {
        cidr: Ipv4Cidr::new(RECEIVER_IP, 24),
        gateway: None,
    };
    let mut stack = Stack::new(Loopback::new(Medium::Ethernet), &cfg)?;
    let mut sink = TcpSink::with_keep(&mut stack, PORT, 1, Keep::Count)?;
    let start = Instant::now();
    let mut send = BulkSend::start(
        &mut stack,
        IpEndpoint::new(IpAddress::Ipv4(RECEIVER_IP), PORT),
        bytes,
        Pattern::new(PATTERN_SEED),
        false,
    )?;
    let mut received = 0;
    while !send.is_done() {
        stack.poll()?;
        send.poll(stack.sockets())?;
        sink.poll(stack.sockets())?;
        received += sink.take_uploads().iter().map(|u| u.bytes).sum::<u64>();
        if start.elapsed() > PEER_TIMEOUT {
            bail!("transfer not done after {PEER_TIMEOUT:?}");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if received != bytes {
        bail!("smoltcp Loopback peer received {received} of {bytes} bytes");
    }
    Ok(Figure {
        name: "smoltcp_loopback",
        seconds,
        bytes,
    })
}

/// `rbufnic __bench-tcp-child`: the receiving process; prints `received N` and exits once
/// the sender has finished.
pub fn child(args: &TcpChildArgs) -> Result<()> {
    let received = match args.kind.as_str() {
        "rbuf" => child_rbuf(args)?,
        "linux" => child_linux(args)?,
        other => bail!("unknown peer kind {other:?}"),
    };
    println!("received {received}");
    Ok(())
}

fn child_rbuf(args: &TcpChildArgs) -> Result<u64> {
    let end = wire::connect(Path::new(&args.target), &wire_config(args.slots))?;
    let dev = end.into_device(RxAccess::Borrow);
    let handle = dev.handle();
    let mut stack =
        Stack::new(dev, &stack_config(RECEIVER_IP, 2, args.buffer_kib, 24))?.with_control(handle);
    let mut sink = TcpSink::with_keep(&mut stack, PORT, 1, Keep::Count)?;
    let mut received = 0;
    let start = Instant::now();
    // Until the sender hangs up.
    while let Ok(did) = stack.poll() {
        let got = sink.poll(stack.sockets())?;
        received += sink.take_uploads().iter().map(|u| u.bytes).sum::<u64>();
        if start.elapsed() > PEER_TIMEOUT {
            bail!("sender still connected after {PEER_TIMEOUT:?}");
        }
        if !did && !got && stack.wait(Duration::from_millis(10)).is_err() {
            break;
        }
    }
    Ok(received)
}

fn child_linux(args: &TcpChildArgs) -> Result<u64> {
    let port: u16 = args.target.parse().context("--target: a TCP port")?;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    drop(s);
    Ok(received)
}
