//! `rbufnic bench ipc`: rbuf channels between two processes, measured side by side with
//! the peers a user would otherwise pick (a Unix `SOCK_SEQPACKET` socket, a pipe,
//! iceoryx2) and with the physical limits of [`super::bare`] (a bare shared cache line, a
//! bare ring of rbuf's layout, a bare hand-over of the same buffers, one core's memory
//! read bandwidth).
//!
//! Every figure comes from two real processes: this binary re-executes itself as the
//! child (`rbufnic __bench-child KIND SOCKET`), pinned to the other core when there is
//! one. All peers move the same bytes: 64-byte messages for rate and latency, 1 MiB
//! messages for bulk, the sender writing and the receiver reading every byte.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bare;
use anyhow::{Context, Result, bail};
use rbuf::connect::{self, Config, Listener};
use rbuf::{DataArea, Extent, IoRec, Master, Mode, PagePolicy, Peer, Pool};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Knobs of one benchmark run.
#[derive(Clone, Debug)]
pub struct IpcParams {
    /// 64-byte messages per message-rate peer.
    pub messages: u64,
    /// Timed ping-pong round trips per latency peer.
    pub iters: u64,
    /// MiB moved per bulk peer.
    pub bulk_mib: u64,
    /// Rounds the peers of each group take turns in (at least 1).
    pub rounds: u64,
    /// CPU for this process and for the child (`None`: no pinning).
    pub cpus: Option<(usize, usize)>,
    /// Which groups of figures to measure.
    pub groups: Groups,
}

/// Groups of figures a run measures.
#[derive(Clone, Copy, Debug)]
pub struct Groups {
    /// Message rate of 64-byte messages.
    pub rate: bool,
    /// One-way latency.
    pub latency: bool,
    /// Bulk transfer of 1 MiB messages.
    pub bulk: bool,
}

impl Groups {
    /// Every group.
    pub const ALL: Groups = Groups {
        rate: true,
        latency: true,
        bulk: true,
    };
}

pub(super) const MSG_BYTES: usize = 64;
pub(super) const BULK_BYTES: usize = 1 << 20;
/// Buffers in flight in the bulk runs (rbuf and the bare hand-over alike).
pub(super) const BULK_DEPTH: usize = 8;
pub(super) const RATE_SLOTS: usize = 1024;
pub(super) const PONG_SLOTS: usize = 64;
/// Untimed round trips before the timed ones: a tenth of them, at most 10,000.
pub(super) fn warmup(iters: u64) -> u64 {
    (iters / 10).min(10_000)
}
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Latency figures in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// Median one-way latency: the median of the means of [`LAPS_PER_MEAN`] consecutive
    /// round trips, halved.
    pub median_ns: f64,
    /// 99th percentile of single round trips, halved.
    pub p99_ns: f64,
}

/// Round trips per mean in [`Latency::median_ns`]. One round trip is timed only as finely
/// as the clock steps (about 10 ns on the VMs this runs on, so a one-way median moved in
/// 5 ns steps); the laps are timed back to back ([`Laps`]), so the mean of this many is
/// exact to an eighth of a step.
pub(super) const LAPS_PER_MEAN: usize = 8;

/// Round trips timed back to back: the clock read that ends one round trip starts the
/// next, so consecutive laps add up exactly to the time between their ends (whatever the
/// clock's steps). A lap is the whole period of a ping-pong loop: the round trip and the
/// loop's own work between two of them.
pub(super) struct Laps {
    last: Instant,
    /// Laps still to drop (the warm-up).
    skip: u64,
    ns: Vec<u64>,
}

impl Laps {
    /// Starts timing now: the first `warmup` laps are dropped, `iters` kept.
    pub(super) fn start(warmup: u64, iters: u64) -> Laps {
        Laps {
            last: Instant::now(),
            skip: warmup,
            ns: Vec::with_capacity(usize::try_from(iters).unwrap_or(0)),
        }
    }

    /// Ends the lap under way and starts the next.
    #[inline]
    pub(super) fn lap(&mut self) {
        let now = Instant::now();
        if self.skip > 0 {
            self.skip -= 1;
        } else {
            self.ns.push((now - self.last).as_nanos() as u64);
        }
        self.last = now;
    }

    /// When the lap under way started.
    pub(super) fn lap_start(&self) -> Instant {
        self.last
    }

    /// The kept laps, in nanoseconds.
    pub(super) fn into_ns(self) -> Vec<u64> {
        self.ns
    }
}

/// One-way median and p99 of round-trip laps (see [`Latency`]).
fn latency(laps: &[u64]) -> Latency {
    let one_way = |sum: u64, n: usize| sum as f64 / (2 * n) as f64;
    let mut means: Vec<f64> = laps
        .chunks_exact(LAPS_PER_MEAN)
        .map(|c| one_way(c.iter().sum(), LAPS_PER_MEAN))
        .collect();
    let mut single: Vec<f64> = laps.iter().map(|&l| one_way(l, 1)).collect();
    single.sort_unstable_by(f64::total_cmp);
    if means.is_empty() {
        // Fewer laps than one mean: the single laps' median.
        means = single.clone();
    }
    Latency {
        median_ns: median(&means),
        p99_ns: single[((single.len() - 1) as f64 * 0.99) as usize],
    }
}

/// Named figures of one group.
type Figures = [(&'static str, f64)];

/// Each peer's figure in each round, in the order the rounds ran.
type Rounds = Vec<(&'static str, Vec<f64>)>;

/// The machine a run measured: every figure depends on it (this benchmark's bare
/// cache-line bounce took 70-80 ns on one kind of host and 176-238 ns on another).
#[derive(Clone, Debug)]
pub struct Host {
    /// The CPU's model name, family and model number, from `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUs the machine has.
    pub cpus: usize,
    /// The two CPUs the parent and the child were pinned to.
    pub pinned: Option<(usize, usize)>,
}

impl Host {
    fn read(pinned: Option<(usize, usize)>) -> Host {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |l: &str, name: &str| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        };
        let first = |name| info.lines().find_map(|l| field(l, name));
        let model = first("model name").unwrap_or_else(|| "unknown".to_string());
        // A hypervisor may show a bare family name: the family and model numbers tell
        // the generation.
        let cpu = match (first("cpu family"), first("model")) {
            (Some(family), Some(number)) => format!("{model} (family {family}, model {number})"),
            _ => model,
        };
        Host {
            cpu,
            cpus: info
                .lines()
                .filter(|l| field(l, "processor").is_some())
                .count(),
            pinned,
        }
    }
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct IpcReport {
    /// Where.
    pub host: Host,
    /// Messages per second, by peer.
    pub rate: Vec<(&'static str, f64)>,
    /// One-way latency, by peer.
    pub latency: Vec<(&'static str, Latency)>,
    /// Bytes per second, by peer.
    pub bulk: Vec<(&'static str, f64)>,
    /// Ratios the targets are stated in: the median of each ratio's rounds
    /// ([`IpcReport::ratio_rounds`]).
    pub ratios: Vec<(&'static str, f64)>,
    /// The same ratios from the figures over the whole run. For rate and bulk such a
    /// ratio is a mean of the rounds' ratios weighted by the time the first peer took in
    /// each, so one round in which the host stalled that peer outweighs the others.
    pub ratios_whole_run: Vec<(&'static str, f64)>,
    /// The ratios from each round's figures alone (for latency, each round's medians). A
    /// round's figures were taken close together, so a round compares its peers in the
    /// same moment of the host, and their spread shows how far the host moved.
    pub ratio_rounds: Vec<(&'static str, Vec<f64>)>,
}

/// The figure (or rounds) named `name` in a report's list.
pub fn named<'a, T>(list: &'a [(&'static str, T)], name: &str) -> Option<&'a T> {
    list.iter().find(|(n, _)| *n == name).map(|(_, x)| x)
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

// ---------- the parent ----------

pub(super) struct Session {
    dir: PathBuf,
    params: IpcParams,
    n: u32,
}

impl Session {
    fn new(params: &IpcParams) -> Result<Session> {
        let cpus = params.cpus;
        let dir = std::env::temp_dir().join(format!("rbufnic-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some((me, _)) = cpus {
            pin(me)?;
        }
        Ok(Session {
            dir,
            params: params.clone(),
            n: 0,
        })
    }

    /// Spawns the child for `kind` and returns it with the socket path it connects to.
    pub(super) fn child(&mut self, kind: &str, stdin: Stdio) -> Result<(Child, PathBuf)> {
        self.n += 1;
        let sock = self.dir.join(format!("{kind}-{}", self.n));
        let mut cmd = Command::new(std::env::current_exe()?);
        let p = &self.params;
        cmd.arg("__bench-child").arg(kind).arg(&sock);
        cmd.arg("--messages").arg(p.messages.to_string());
        cmd.arg("--iters").arg(p.iters.to_string());
        cmd.arg("--bulk-mib").arg(p.bulk_mib.to_string());
        if let Some((_, cpu)) = p.cpus {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        let child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning the benchmark child")?;
        Ok((child, sock))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pin(cpu: usize) -> Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).with_context(|| format!("pinning to CPU {cpu}"))
}

pub(super) fn finish(mut child: Child) -> Result<String> {
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("benchmark child failed ({status}): {out}");
    }
    Ok(out)
}

fn accept_master(
    listener: &Listener,
    area: Arc<DataArea>,
    slots: usize,
    pool: &Pool,
) -> Result<Master> {
    Ok(listener
        .accept(Config::originator(Mode::Tmm, slots, area), pool.capacity())?
        .into_master()?)
}

/// Polls before a busy-polling side sleeps: about a millisecond. It never sleeps while
/// its peer is running on the other core (the measured case); it only stops a starved
/// pair (both on one CPU, or another load on the machine) from burning whole time slices.
const POLL_SPINS: u32 = 1 << 20;

/// Busy-waits until `ready()`, yielding the CPU every [`POLL_SPINS`] polls for the same
/// reason.
pub(super) fn spin_until(mut ready: impl FnMut() -> bool) {
    let mut n = 0u32;
    while !ready() {
        n = n.wrapping_add(1);
        if n.is_multiple_of(POLL_SPINS) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn write_msg(area: &DataArea, e: Extent, seq: u64) {
    // SAFETY: the buffer was just taken from the pool (or came back from the peer):
    // nobody else reads or writes it until we send it.
    let bytes = unsafe { area.bytes_mut(e) }.expect("extent from our own pool");
    bytes.fill(seq as u8);
}

/// Reads every byte (as words); returns a sum so the reads cannot be optimised away.
pub(super) fn read_all(bytes: &[u8]) -> u64 {
    let (words, rest) = bytes.as_chunks::<8>();
    let mut sum = words
        .iter()
        .fold(0u64, |s, w| s.wrapping_add(u64::from_ne_bytes(*w)));
    for &b in rest {
        sum = sum.wrapping_add(u64::from(b));
    }
    sum
}

fn rbuf_rate(s: &mut Session, messages: u64, batch: usize) -> Result<f64> {
    let (child, sock) = s.child(&format!("rbuf-rate-{batch}"), Stdio::null())?;
    let listener = Listener::bind(&sock)?;
    let area = Arc::new(DataArea::create(
        RATE_SLOTS * 2 * 256,
        PagePolicy::PreferHuge,
    )?);
    let mut pool = Pool::slots(area.len(), 256);
    let mut master = accept_master(&listener, area.clone(), RATE_SLOTS, &pool)?;
    let mut recs = vec![IoRec::default(); batch];
    let start = Instant::now();
    let mut sent = 0u64;
    // Buffers come back when the pool runs short or the ring is full (the peer may be
    // waiting for room to return them), as a sender batching its frees would.
    let mut reclaim = true;
    while sent < messages || !master.lent().is_empty() {
        if reclaim || pool.available() < batch {
            master.reclaim(&mut pool)?;
        }
        let want = batch.min((messages - sent) as usize);
        if want == 0 {
            continue;
        }
        recs.clear();
        for _ in 0..want {
            let Ok(id) = pool.alloc(MSG_BYTES) else { break };
            let e = Extent::new(pool.extent(id).offset(), MSG_BYTES as u32);
            area.prefetch_write(e);
            recs.push(IoRec::single(u64::from(id), e));
        }
        for (i, rec) in recs.iter().enumerate() {
            write_msg(&area, rec.extents()[0], sent + i as u64);
        }
        let n = master.send(&mut pool, &recs)?;
        for rec in &recs[n..] {
            pool.free(rec.tag() as u32);
        }
        sent += n as u64;
        reclaim = n < recs.len() || sent >= messages;
    }
    let secs = start.elapsed().as_secs_f64();
    master.link().disconnect();
    finish(child)?;
    Ok(messages as f64 / secs)
}

/// The receiving side of every rbuf measurement: receives up to `batch` IOrecs at a
/// time, reads every byte of each, returns them all (a batch with one run return, as a
/// TMM receiver done with them in order does), until the originator leaves.
/// Waits with `spins` polls before sleeping on the doorbell (0: sleep at once).
fn child_rbuf_echo(sock: &Path, slots: usize, batch: usize, spins: u32) -> Result<()> {
    let mut peer = connect_peer(sock, slots)?;
    peer.link().set_spins(spins);
    let mut recs = vec![IoRec::default(); batch];
    let mut sum = 0u64;
    loop {
        let n = match peer.recv(&mut recs) {
            Ok(0) => match peer.link().wait_incoming(Some(CHILD_TIMEOUT)) {
                Ok(_) => continue,
                Err(rbuf::Error::PeerGone) => break,
                Err(e) => return Err(e.into()),
            },
            Ok(n) => n,
            Err(rbuf::Error::PeerGone) => break,
            Err(e) => return Err(e.into()),
        };
        for rec in &recs[..n] {
            // SAFETY: the originator does not touch a buffer it lent until we return it.
            sum = read_all(unsafe { peer.area().bytes(rec.extents()[0]) }?).wrapping_add(sum);
        }
        // Done with all of them, in the order they came: one run return gives a batch
        // back in one ring slot; a single IOrec goes back as itself (as cheap, and the
        // master has less to look up).
        if n == 1 {
            while peer.send(&recs[..1])? == 0 {
                std::hint::spin_loop();
            }
        } else {
            while !peer.release(n as u64)? {
                std::hint::spin_loop();
            }
        }
    }
    println!("{sum}");
    Ok(())
}

fn connect_peer(sock: &Path, slots: usize) -> Result<Peer> {
    let start = Instant::now();
    loop {
        match connect::connect(sock, Config::receiver(Mode::Tmm, slots), 0) {
            Ok(e) => return Ok(e.into_peer()?),
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub(super) fn unix_listener(path: &Path, ty: SocketType) -> Result<OwnedFd> {
    let sock = rustix::net::socket_with(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)?;
    rustix::net::bind(&sock, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&sock, 1)?;
    Ok(sock)
}

pub(super) fn unix_connect(path: &Path, ty: SocketType) -> Result<OwnedFd> {
    let start = Instant::now();
    loop {
        let sock = rustix::net::socket_with(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)?;
        match rustix::net::connect(&sock, &SocketAddrUnix::new(path)?) {
            Ok(()) => return Ok(sock),
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn send_all(fd: &OwnedFd, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::write(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

fn recv_exact(fd: &OwnedFd, mut buf: &mut [u8]) -> Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::read(fd, &mut *buf)?;
        if n == 0 {
            bail!("peer closed");
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

fn uds_rate(s: &mut Session, messages: u64) -> Result<f64> {
    let (child, sock) = s.child("uds-rate", Stdio::null())?;
    let listener = unix_listener(&sock, SocketType::SEQPACKET)?;
    let conn = rustix::net::accept(&listener)?;
    let mut msg = [0u8; MSG_BYTES];
    let start = Instant::now();
    for seq in 0..messages {
        msg.fill(seq as u8);
        rustix::net::send(&conn, &msg, rustix::net::SendFlags::empty())?;
    }
    let mut ack = [0u8; 8];
    rustix::net::recv(&conn, &mut ack, rustix::net::RecvFlags::empty())?;
    let secs = start.elapsed().as_secs_f64();
    finish(child)?;
    Ok(messages as f64 / secs)
}

fn child_uds_rate(sock: &Path, messages: u64) -> Result<()> {
    let conn = unix_connect(sock, SocketType::SEQPACKET)?;
    let mut msg = [0u8; MSG_BYTES];
    let mut sum = 0;
    for _ in 0..messages {
        rustix::net::recv(&conn, &mut msg, rustix::net::RecvFlags::empty())?;
        sum = read_all(&msg).wrapping_add(sum);
    }
    rustix::net::send(&conn, &[1u8; 8], rustix::net::SendFlags::empty())?;
    println!("{sum}");
    Ok(())
}

fn pipe_rate(s: &mut Session, messages: u64) -> Result<f64> {
    let (mut child, _) = s.child("pipe-rate", Stdio::piped())?;
    let mut pipe = child.stdin.take().expect("piped");
    let mut msg = [0u8; MSG_BYTES];
    let start = Instant::now();
    for seq in 0..messages {
        msg.fill(seq as u8);
        pipe.write_all(&msg)?;
    }
    drop(pipe);
    let out = finish(child)?;
    let secs = start.elapsed().as_secs_f64();
    if out.trim().is_empty() {
        bail!("pipe child reported nothing");
    }
    Ok(messages as f64 / secs)
}

fn child_pipe_rate(messages: u64) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut msg = [0u8; MSG_BYTES];
    let mut sum = 0;
    for _ in 0..messages {
        input.read_exact(&mut msg)?;
        sum = read_all(&msg).wrapping_add(sum);
    }
    println!("{sum}");
    Ok(())
}

fn rbuf_latency(s: &mut Session, iters: u64, blocking: bool) -> Result<Vec<u64>> {
    let kind = if blocking {
        "rbuf-pong-block"
    } else {
        "rbuf-pong-poll"
    };
    let (child, sock) = s.child(kind, Stdio::null())?;
    let listener = Listener::bind(&sock)?;
    let area = Arc::new(DataArea::create(64 * 256, PagePolicy::PreferHuge)?);
    let mut pool = Pool::slots(area.len(), 256);
    let mut master = accept_master(&listener, area.clone(), PONG_SLOTS, &pool)?;
    master
        .link()
        .set_spins(if blocking { 0 } else { POLL_SPINS });
    let mut back = [IoRec::default(); 1];
    let mut laps = Laps::start(warmup(iters), iters);
    for i in 0..warmup(iters) + iters {
        let id = pool.alloc(MSG_BYTES)?;
        let e = Extent::new(pool.extent(id).offset(), MSG_BYTES as u32);
        write_msg(&area, e, i);
        master.send(&mut pool, &[IoRec::single(u64::from(id), e)])?;
        loop {
            if master.recv(&mut pool, &mut back)? == 1 {
                break;
            }
            master.link().wait_incoming(Some(CHILD_TIMEOUT))?;
        }
        pool.free(back[0].tag() as u32);
        laps.lap();
    }
    master.link().disconnect();
    finish(child)?;
    Ok(laps.into_ns())
}

fn uds_latency(s: &mut Session, iters: u64) -> Result<Vec<u64>> {
    let (child, sock) = s.child("uds-pong", Stdio::null())?;
    let listener = unix_listener(&sock, SocketType::SEQPACKET)?;
    let conn = rustix::net::accept(&listener)?;
    let mut msg = [0u8; MSG_BYTES];
    let mut laps = Laps::start(warmup(iters), iters);
    for i in 0..warmup(iters) + iters {
        msg.fill(i as u8);
        rustix::net::send(&conn, &msg, rustix::net::SendFlags::empty())?;
        rustix::net::recv(&conn, &mut msg, rustix::net::RecvFlags::empty())?;
        laps.lap();
    }
    drop(conn);
    finish(child)?;
    Ok(laps.into_ns())
}

fn child_uds_pong(sock: &Path) -> Result<()> {
    let conn = unix_connect(sock, SocketType::SEQPACKET)?;
    let mut msg = [0u8; MSG_BYTES];
    loop {
        let (n, _) = rustix::net::recv(&conn, &mut msg, rustix::net::RecvFlags::empty())?;
        if n == 0 {
            return Ok(());
        }
        rustix::net::send(&conn, &msg, rustix::net::SendFlags::empty())?;
    }
}

fn rbuf_bulk(s: &mut Session, mib: u64) -> Result<f64> {
    let (child, sock) = s.child("rbuf-bulk", Stdio::null())?;
    let listener = Listener::bind(&sock)?;
    let area = Arc::new(DataArea::create(
        BULK_DEPTH * BULK_BYTES,
        PagePolicy::PreferHuge,
    )?);
    let mut pool = Pool::extents(area.len(), 4096, BULK_DEPTH);
    let mut master = accept_master(&listener, area.clone(), BULK_DEPTH, &pool)?;
    master.link().set_spins(POLL_SPINS);
    let start = Instant::now();
    let mut sent = 0;
    while sent < mib {
        master.reclaim(&mut pool)?;
        let Ok(id) = pool.alloc(BULK_BYTES) else {
            continue;
        };
        let e = pool.extent(id);
        write_msg(&area, e, sent);
        let rec = pool.iorec(id);
        if master.send(&mut pool, &[rec])? == 0 {
            pool.free(id);
            continue;
        }
        sent += 1;
    }
    while !master.lent().is_empty() {
        master.reclaim(&mut pool)?;
    }
    let secs = start.elapsed().as_secs_f64();
    master.link().disconnect();
    finish(child)?;
    Ok((mib * BULK_BYTES as u64) as f64 / secs)
}

fn stream_bulk(s: &mut Session, mib: u64, pipe: bool) -> Result<f64> {
    let mut buf = vec![0u8; BULK_BYTES];
    if pipe {
        let (mut child, _) = s.child("pipe-bulk", Stdio::piped())?;
        let mut w = child.stdin.take().expect("piped");
        // A 1 MiB pipe buffer, the most an unprivileged process may ask for by default.
        let _ = rustix::pipe::fcntl_setpipe_size(&w, BULK_BYTES);
        let start = Instant::now();
        for i in 0..mib {
            buf.fill(i as u8);
            w.write_all(&buf)?;
        }
        drop(w);
        finish(child)?;
        Ok((mib * BULK_BYTES as u64) as f64 / start.elapsed().as_secs_f64())
    } else {
        let (child, sock) = s.child("uds-bulk", Stdio::null())?;
        let listener = unix_listener(&sock, SocketType::STREAM)?;
        let conn = rustix::net::accept(&listener)?;
        let start = Instant::now();
        for i in 0..mib {
            buf.fill(i as u8);
            send_all(&conn, &buf)?;
        }
        let mut ack = [0u8; 1];
        recv_exact(&conn, &mut ack)?;
        let secs = start.elapsed().as_secs_f64();
        finish(child)?;
        Ok((mib * BULK_BYTES as u64) as f64 / secs)
    }
}

fn child_stream_bulk(sock: Option<&Path>, mib: u64) -> Result<()> {
    let mut buf = vec![0u8; BULK_BYTES];
    let mut sum = 0;
    match sock {
        Some(sock) => {
            let conn = unix_connect(sock, SocketType::STREAM)?;
            for _ in 0..mib {
                recv_exact(&conn, &mut buf)?;
                sum = read_all(&buf).wrapping_add(sum);
            }
            send_all(&conn, &[1])?;
        }
        None => {
            let mut input = std::io::stdin().lock();
            for _ in 0..mib {
                input.read_exact(&mut buf)?;
                sum = read_all(&buf).wrapping_add(sum);
            }
        }
    }
    println!("{sum}");
    Ok(())
}

/// iceoryx2 publish-subscribe ping-pong, busy-polling on both sides (its fastest mode).
fn iceoryx_latency(s: &mut Session, iters: u64) -> Result<Vec<u64>> {
    let service = format!("rbufnic-bench-{}-{}", std::process::id(), s.n + 1);
    let (child, _) = s.child(&format!("iceoryx2-pong:{service}"), Stdio::null())?;
    let samples = super::iceoryx::ping(&service, warmup(iters), iters);
    let out = finish(child);
    super::iceoryx::cleanup(&service);
    out?;
    Ok(samples?)
}

/// A peer of a group: does `n` units of work (messages, round trips, MiB) and returns
/// what it measured.
type PeerRun<T> = fn(&mut Session, u64) -> Result<T>;

/// A throughput peer: moves `n` units (messages, MiB) and returns what it moved
/// (messages, bytes) per second.
type ThroughputPeer = PeerRun<f64>;

/// Runs each peer `rounds` times for `per_round` units, taking turns; returns what each
/// peer measured in each round, in the order the rounds ran.
fn take_turns<T>(
    s: &mut Session,
    group: &str,
    peers: &[(&'static str, PeerRun<T>)],
    per_round: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<(&'static str, Vec<T>)>> {
    let turns = s.params.rounds;
    let mut rounds: Vec<_> = peers.iter().map(|(name, _)| (*name, Vec::new())).collect();
    for round in 1..=turns {
        for ((name, peer), (_, measured)) in peers.iter().zip(&mut rounds) {
            progress(&format!("{group}, round {round} of {turns}: {name}"));
            measured.push(peer(s, per_round)?);
        }
    }
    Ok(rounds)
}

/// Each throughput peer's figure over all its rounds: what it moved over its total time
/// (every round moves the same, so the harmonic mean of the rounds).
fn over_all_rounds(rounds: &Rounds) -> Vec<(&'static str, f64)> {
    rounds
        .iter()
        .map(|(name, figures)| {
            let secs_per_unit: f64 = figures.iter().map(|f| 1.0 / f).sum();
            (*name, figures.len() as f64 / secs_per_unit)
        })
        .collect()
}

/// Runs every measurement and returns the figures.
pub fn run(p: &IpcParams, progress: &mut dyn FnMut(&str)) -> Result<IpcReport> {
    let host = Host::read(p.cpus);
    let mut s = Session::new(p)?;
    // The peers of a group take turns, a share of the work each per round: where the
    // host runs the two vCPUs, and what else it runs beside them, changes from one
    // second to the next, so each round compares its peers in one moment of the host,
    // and a ratio is the median of its rounds (one round that the host stalled for one
    // peer does not decide it). Each figure comes from all its rounds.
    let (mut rate, mut rate_rounds) = (Vec::new(), Rounds::new());
    if p.groups.rate {
        let peers: [(&'static str, ThroughputPeer); 6] = [
            ("rbuf batch 1", |s, n| rbuf_rate(s, n, 1)),
            ("rbuf batch 32", |s, n| rbuf_rate(s, n, 32)),
            ("unix seqpacket", uds_rate),
            ("pipe", pipe_rate),
            ("bare ring batch 1", |s, n| bare::ring_rate(s, n, 1)),
            ("bare ring batch 32", |s, n| bare::ring_rate(s, n, 32)),
        ];
        let per_round = p.messages.div_ceil(p.rounds);
        // The children that count what they receive expect a round's worth.
        s.params.messages = per_round;
        rate_rounds = take_turns(&mut s, "message rate", &peers, per_round, progress)?;
        rate = over_all_rounds(&rate_rounds);
    }
    let (mut lat, mut lat_rounds) = (Vec::new(), Rounds::new());
    if p.groups.latency {
        let peers: [(&'static str, PeerRun<Vec<u64>>); 6] = [
            ("rbuf poll", |s, n| rbuf_latency(s, n, false)),
            ("rbuf blocking", |s, n| rbuf_latency(s, n, true)),
            ("unix seqpacket", uds_latency),
            ("iceoryx2", iceoryx_latency),
            ("bare cache line", bare::cache_line_latency),
            ("bare ring", bare::ring_latency),
        ];
        let per_round = p.iters.div_ceil(p.rounds);
        for (name, laps) in take_turns(&mut s, "latency", &peers, per_round, progress)? {
            let medians = laps.iter().map(|v| latency(v).median_ns);
            lat_rounds.push((name, medians.collect()));
            lat.push((name, latency(&laps.concat())));
        }
    }
    let (mut bulk, mut bulk_rounds) = (Vec::new(), Rounds::new());
    if p.groups.bulk {
        let peers: [(&'static str, ThroughputPeer); 4] = [
            ("rbuf", rbuf_bulk),
            ("unix stream", |s, n| stream_bulk(s, n, false)),
            ("pipe", |s, n| stream_bulk(s, n, true)),
            ("bare hand-over", bare::handover_bulk),
        ];
        let per_round = p.bulk_mib.div_ceil(p.rounds);
        s.params.bulk_mib = per_round;
        bulk_rounds = take_turns(&mut s, "bulk", &peers, per_round, progress)?;
        bulk = over_all_rounds(&bulk_rounds);
        progress("bulk: one-core read bandwidth");
        bulk.push(("one-core read bandwidth", bare::read_bandwidth()));
    }

    let medians: Vec<(&'static str, f64)> = lat.iter().map(|(n, l)| (*n, l.median_ns)).collect();
    let (rate_group, latency_group, bulk_group) = (
        (&rate[..], &rate_rounds),
        (&medians[..], &lat_rounds),
        (&bulk[..], &bulk_rounds),
    );
    // (name, group, numerator, denominator); a ratio is reported when both were measured.
    let wanted: [(&'static str, (&Figures, &Rounds), &str, &str); 10] = [
        (
            "msg_rate_batch32_vs_uds",
            rate_group,
            "rbuf batch 32",
            "unix seqpacket",
        ),
        (
            "msg_rate_batch1_vs_uds",
            rate_group,
            "rbuf batch 1",
            "unix seqpacket",
        ),
        (
            "msg_rate_batch32_vs_bare_ring",
            rate_group,
            "rbuf batch 32",
            "bare ring batch 32",
        ),
        (
            "msg_rate_batch1_vs_bare_ring",
            rate_group,
            "rbuf batch 1",
            "bare ring batch 1",
        ),
        (
            "latency_poll_vs_iceoryx2",
            latency_group,
            "rbuf poll",
            "iceoryx2",
        ),
        (
            "latency_poll_vs_bare",
            latency_group,
            "rbuf poll",
            "bare cache line",
        ),
        (
            "latency_poll_vs_bare_ring",
            latency_group,
            "rbuf poll",
            "bare ring",
        ),
        (
            "latency_poll_vs_uds",
            latency_group,
            "rbuf poll",
            "unix seqpacket",
        ),
        ("bulk_vs_bare_handoff", bulk_group, "rbuf", "bare hand-over"),
        ("bulk_vs_uds", bulk_group, "rbuf", "unix stream"),
    ];
    let ratios_whole_run = wanted
        .iter()
        .filter_map(|&(name, (v, _), a, b)| Some((name, named(v, a)? / named(v, b)?)))
        .collect();
    let ratio_rounds: Vec<(&'static str, Vec<f64>)> = wanted
        .iter()
        .filter_map(|&(name, (_, r), a, b)| {
            let (a, b) = (named(r, a)?, named(r, b)?);
            Some((name, a.iter().zip(b).map(|(a, b)| a / b).collect()))
        })
        .collect();
    let ratios = ratio_rounds
        .iter()
        .map(|(name, rounds)| (*name, median(rounds)))
        .collect();
    Ok(IpcReport {
        host,
        rate,
        latency: lat,
        bulk,
        ratios,
        ratios_whole_run,
        ratio_rounds,
    })
}

/// The child side: `kind` names the measurement, `sock` where to connect.
pub fn child(kind: &str, sock: &Path, p: &IpcParams, cpu: Option<usize>) -> Result<()> {
    // Die with the parent so an interrupted benchmark leaves nothing spinning.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if let Some(cpu) = cpu {
        pin(cpu)?;
    }
    match kind {
        "rbuf-rate-1" => child_rbuf_echo(sock, RATE_SLOTS, 1, POLL_SPINS),
        "rbuf-rate-32" => child_rbuf_echo(sock, RATE_SLOTS, 32, POLL_SPINS),
        "uds-rate" => child_uds_rate(sock, p.messages),
        "pipe-rate" => child_pipe_rate(p.messages),
        "rbuf-pong-poll" => child_rbuf_echo(sock, PONG_SLOTS, 1, POLL_SPINS),
        "rbuf-pong-block" => child_rbuf_echo(sock, PONG_SLOTS, 1, 0),
        "uds-pong" => child_uds_pong(sock),
        "rbuf-bulk" => child_rbuf_echo(sock, BULK_DEPTH, BULK_DEPTH, POLL_SPINS),
        "uds-bulk" => child_stream_bulk(Some(sock), p.bulk_mib),
        "pipe-bulk" => child_stream_bulk(None, p.bulk_mib),
        other => {
            if let Some(service) = other.strip_prefix("iceoryx2-pong:") {
                return Ok(super::iceoryx::pong(service, CHILD_TIMEOUT)?);
            }
            match super::bare::child(other, sock, p.messages) {
                Some(result) => result,
                None => bail!("unknown benchmark child {other}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LAPS_PER_MEAN, latency, median};

    #[test]
    fn latency_medians_are_finer_than_the_clock() {
        // Round trips of 145 ns read off a clock of 10 ns steps: 140 and 150 in turn. A
        // single lap's median is a whole step (70 or 75 one-way); means of back-to-back
        // laps find the 72.5.
        let laps: Vec<u64> = (0..8 * LAPS_PER_MEAN as u64)
            .map(|i| if i % 2 == 0 { 140 } else { 150 })
            .collect();
        let l = latency(&laps);
        assert_eq!(l.median_ns, 72.5);
        assert_eq!(l.p99_ns, 75.0);
        // One stalled lap does not move the median.
        let mut stalled = laps.clone();
        stalled[3] = 100_000;
        assert_eq!(latency(&stalled).median_ns, 72.5);
        // Fewer laps than a mean: the single laps' median.
        assert_eq!(latency(&[140, 150, 150]).median_ns, 75.0);
    }

    #[test]
    fn a_ratio_is_the_median_of_its_rounds() {
        assert_eq!(median(&[3.0]), 3.0);
        // One round the host stalled does not move it; an even count takes the middle two.
        assert_eq!(median(&[1.0, 0.03, 1.2]), 1.0);
        assert_eq!(median(&[0.9, 25.6, 1.1, 1.0]), 1.05);
    }
}
