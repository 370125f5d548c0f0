//! The main job, end to end: a QEMU guest with two emulated NICs, each on a UDP link to a
//! host-side peer, runs `rbufnic fwd` between them; the host sends a fixed count of test
//! frames into NIC A at a fixed rate and checks every frame that comes out of NIC B (and,
//! with [`FwdJob::both_ways`], the same from B to A at the same time).
//!
//! ```text
//!  host peer A --UDP--> QEMU NIC A (0000:00:03.0) --rbufnic fwd--> NIC B (0000:00:04.0) --UDP--> host peer B
//! ```
//!
//! The forwarder rewrites the destination MAC to the receiving peer's and the source MAC to
//! the sending NIC's, so what a peer receives must be, byte for byte, the generator's frame
//! for those two addresses: the check covers the rewrite and every payload byte. Used by the `qemu-fwd`
//! binary (the README's first command) and by `apps`' guest scenario test.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::HarnessError;
use crate::frame::{FrameGen, MacAddr};
use crate::guest::{Guest, GuestOutput, Nic, NicModel, host_path, nic_bdf};
use crate::peer::{ReceivePlan, ReceiveReport, SendPlan, UdpPeer};

/// NIC A's MAC (the frames' destination as the host sends them).
pub const NIC_A_MAC: MacAddr = MacAddr::qemu(0x41);
/// NIC B's MAC (the source the forwarder writes).
pub const NIC_B_MAC: MacAddr = MacAddr::qemu(0x42);
/// Host peer A's MAC (the source of the frames as sent).
pub const PEER_A_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
/// Host peer B's MAC (the destination the forwarder writes).
pub const PEER_B_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

/// What to run.
#[derive(Clone, Debug)]
pub struct FwdJob {
    /// The `rbufnic` binary on the host (the guest runs it through `/host`).
    pub rbufnic: PathBuf,
    /// Frames to send.
    pub count: u64,
    /// Frames per second the host sends.
    pub rate_per_sec: u32,
    /// Shortest frame in bytes (without FCS).
    pub min_len: usize,
    /// Longest frame in bytes (without FCS).
    pub max_len: usize,
    /// The emulated NIC model of both ports.
    pub model: NicModel,
    /// Seed of the frame stream.
    pub seed: u64,
    /// `--batch` of `rbufnic fwd`.
    pub batch: usize,
    /// Also send `count` frames from peer B into NIC B, to come out of NIC A.
    pub both_ways: bool,
}

impl FwdJob {
    /// `count` frames of 60 to 1514 bytes at `rate_per_sec` between two 82540EMs.
    pub fn new(rbufnic: PathBuf, count: u64, rate_per_sec: u32) -> FwdJob {
        FwdJob {
            rbufnic,
            count,
            rate_per_sec,
            min_len: 60,
            max_len: 1514,
            model: NicModel::E1000_82540EM,
            seed: 1,
            batch: 32,
            both_ways: false,
        }
    }
}

/// Live counts of one direction.
#[derive(Clone, Debug)]
pub struct FlowProgress {
    /// Frames sent so far.
    pub sent: u64,
    /// What the receiving peer has received so far.
    pub received: ReceiveReport,
}

/// Live counts, about once a second while traffic flows.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Time since sending started.
    pub elapsed: Duration,
    /// A to B, then B to A if the job runs both ways.
    pub flows: Vec<FlowProgress>,
    /// The forwarder's latest statistics line from the guest, if any yet.
    pub guest_line: Option<String>,
}

/// What one direction produced.
#[derive(Clone, Debug)]
pub struct Flow {
    /// `A->B` or `B->A`.
    pub name: &'static str,
    /// Frames sent into the first NIC.
    pub sent: u64,
    /// Their bytes (without FCS).
    pub sent_bytes: u64,
    /// How long sending took.
    pub send_elapsed: Duration,
    /// What came out of the other NIC, checked byte for byte.
    pub received: ReceiveReport,
}

/// What a run produced.
#[derive(Debug)]
pub struct FwdOutcome {
    /// A to B, then B to A if the job ran both ways.
    pub flows: Vec<Flow>,
    /// The guest's output and exit status (the forwarder's stats and summary lines).
    pub guest: GuestOutput,
}

impl FwdOutcome {
    /// The forwarder's machine-readable summary field `key` (`forwarded`, `a_rx`, ...).
    pub fn summary_field(&self, key: &str) -> Option<u64> {
        let line = self
            .guest
            .output
            .lines()
            .find_map(|l| l.trim().strip_prefix("summary "))?;
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    }

    /// Frames sent, all directions.
    pub fn sent(&self) -> u64 {
        self.flows.iter().map(|f| f.sent).sum()
    }

    /// Frames sent that never came out of the other NIC, all directions.
    pub fn lost(&self) -> u64 {
        self.flows.iter().map(|f| f.received.missing).sum()
    }

    /// The failures, if any: loss, corruption, duplicates, reordering, a forwarder that
    /// exited non-zero or whose own counts disagree.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.flows {
            let r = &f.received;
            if f.sent != r.expected {
                out.push(format!(
                    "{}: sent {} of {} frames",
                    f.name, f.sent, r.expected
                ));
            }
            if !r.is_perfect() {
                out.push(format!("{}: {r}", f.name));
            }
        }
        if self.guest.exit_status != 0 {
            out.push(format!(
                "rbufnic fwd exited with status {}",
                self.guest.exit_status
            ));
        }
        match self.summary_field("forwarded") {
            Some(n) if n == self.sent() => {}
            Some(n) => out.push(format!(
                "rbufnic fwd forwarded {n} frames, the host sent {}",
                self.sent()
            )),
            None => out.push("no summary line from rbufnic fwd".to_string()),
        }
        for key in [
            "a_drops",
            "a_errors",
            "b_drops",
            "b_errors",
            "unaccounted_buffers",
        ] {
            if let Some(n) = self.summary_field(key).filter(|&n| n != 0) {
                out.push(format!("rbufnic fwd counted {key}={n}"));
            }
        }
        out
    }
}

/// The last line of the forwarder's per-second statistics in the console log so far.
fn last_stats_line(console_log: &Path) -> Option<String> {
    let text = fs::read(console_log).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .rev()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with("fwd ") && l.contains(" | B rx "))
        .map(str::to_owned)
}

fn len_range(g: FrameGen, job: &FwdJob) -> Result<FrameGen, HarnessError> {
    g.with_len_range(job.min_len, job.max_len)
        .map_err(|e| HarnessError::InvalidConfig {
            reason: e.to_string(),
        })
}

/// One direction in flight: a paced sender thread and a checking receiver thread.
struct Running {
    name: &'static str,
    sent: Arc<AtomicU64>,
    live: Arc<Mutex<Option<ReceiveReport>>>,
    count: u64,
    sender: JoinHandle<Result<(u64, u64, Duration), HarnessError>>,
    receiver: JoinHandle<Result<ReceiveReport, HarnessError>>,
}

fn panicked(what: &str) -> HarnessError {
    HarnessError::InvalidConfig {
        reason: format!("the {what} thread panicked"),
    }
}

impl Running {
    #[allow(clippy::too_many_arguments)]
    fn start(
        name: &'static str,
        from: UdpPeer,
        to: UdpPeer,
        sent_stream: FrameGen,
        expected_stream: FrameGen,
        count: u64,
        rate: u32,
        timeout: Duration,
    ) -> Running {
        let plan = ReceivePlan::new(count)
            .timeout(timeout)
            .linger(Duration::from_secs(1));
        let live = Arc::new(Mutex::new(None::<ReceiveReport>));
        let live_rx = Arc::clone(&live);
        let receiver = thread::spawn(move || {
            to.receive_observed(
                &expected_stream,
                &plan,
                Duration::from_millis(250),
                &mut |r| {
                    *live_rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
                },
            )
        });
        let sent = Arc::new(AtomicU64::new(0));
        let sent_tx = Arc::clone(&sent);
        let sender = thread::spawn(move || {
            // In slices of 20 ms, so the count shows live; each slice is paced.
            let slice = u64::from(rate).div_ceil(50).max(1);
            let start = Instant::now();
            let (mut next, mut bytes) = (0, 0);
            while next < count {
                let n = slice.min(count - next);
                let due = start + Duration::from_secs_f64(next as f64 / f64::from(rate));
                thread::sleep(due.saturating_duration_since(Instant::now()));
                let report = from.send(
                    &sent_stream,
                    &SendPlan::new(n)
                        .first_seq(next)
                        .rate_per_sec(rate)
                        .time_limit(Duration::from_secs(3600)),
                )?;
                next += report.sent;
                bytes += report.bytes;
                sent_tx.store(next, Ordering::Relaxed);
            }
            Ok((next, bytes, start.elapsed()))
        });
        Running {
            name,
            sent,
            live,
            count,
            sender,
            receiver,
        }
    }

    fn progress(&self) -> FlowProgress {
        let received = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| ReceiveReport {
                expected: self.count,
                missing: self.count,
                ..ReceiveReport::default()
            });
        FlowProgress {
            // Read after the receive counts, so it is never behind them.
            sent: self.sent.load(Ordering::Relaxed),
            received,
        }
    }

    fn finish(self) -> Result<Flow, HarnessError> {
        let (sent, sent_bytes, send_elapsed) =
            self.sender.join().map_err(|_| panicked("sender"))??;
        let received = self.receiver.join().map_err(|_| panicked("receiver"))??;
        Ok(Flow {
            name: self.name,
            sent,
            sent_bytes,
            send_elapsed,
            received,
        })
    }
}

/// Boots the guest, runs the forwarder, drives the traffic and collects the outcome.
/// `progress` sees live counts about once a second; `step` names each phase as it starts.
pub fn run(
    job: &FwdJob,
    step: &mut dyn FnMut(&str),
    progress: &mut dyn FnMut(&Progress),
) -> Result<FwdOutcome, HarnessError> {
    if job.rate_per_sec == 0 || job.count == 0 {
        return Err(HarnessError::InvalidConfig {
            reason: "count and rate must be at least 1".into(),
        });
    }
    let (peer_a, backend_a) = UdpPeer::for_qemu()?;
    let (peer_b, backend_b) = UdpPeer::for_qemu()?;
    // Sending takes count/rate seconds; frames arrive within a second of being sent, so
    // half as long again and some slack bound a run that lost frames.
    let send_secs = job.count.div_ceil(u64::from(job.rate_per_sec));
    let traffic_timeout = Duration::from_secs(send_secs * 3 / 2 + 15);
    let directions = if job.both_ways { 2 } else { 1 };
    let command = format!(
        "exec {} fwd {} {} --batch {} --count {} --duration {} \
         --rewrite-dst-mac {PEER_B_MAC},{PEER_A_MAC} --rewrite-src-mac",
        host_path(&job.rbufnic).display(),
        nic_bdf(0),
        nic_bdf(1),
        job.batch,
        directions * job.count,
        traffic_timeout.as_secs() + 10,
    );
    step(&format!("booting the QEMU guest; it runs: {command}"));
    let guest = Guest::builder()
        .nic(Nic::new(job.model, NIC_A_MAC, backend_a))
        .nic(Nic::new(job.model, NIC_B_MAC, backend_b))
        .hugepages(16)
        .timeout(traffic_timeout + Duration::from_secs(300))
        .spawn(&command)?;
    let ready = guest.wait_for_line("fwd ready", Duration::from_secs(180))?;
    step(ready.trim());

    step(&format!(
        "sending {} frames of {}..{} bytes at {} frames/s into NIC A{}",
        job.count,
        job.min_len,
        job.max_len,
        job.rate_per_sec,
        if job.both_ways {
            ", and as many into NIC B"
        } else {
            ""
        }
    ));
    let mut flows = vec![Running::start(
        "A->B",
        peer_a.try_clone()?,
        peer_b.try_clone()?,
        len_range(FrameGen::new(job.seed, NIC_A_MAC, PEER_A_MAC), job)?,
        len_range(FrameGen::new(job.seed, PEER_B_MAC, NIC_B_MAC), job)?,
        job.count,
        job.rate_per_sec,
        traffic_timeout,
    )];
    if job.both_ways {
        let seed = job.seed.wrapping_add(1);
        flows.push(Running::start(
            "B->A",
            peer_b,
            peer_a,
            len_range(FrameGen::new(seed, NIC_B_MAC, PEER_B_MAC), job)?,
            len_range(FrameGen::new(seed, PEER_A_MAC, NIC_A_MAC), job)?,
            job.count,
            job.rate_per_sec,
            traffic_timeout,
        ));
    }

    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(1);
    while !flows.iter().all(|f| f.receiver.is_finished()) {
        thread::sleep(Duration::from_millis(50));
        if Instant::now() < next_report {
            continue;
        }
        next_report += Duration::from_secs(1);
        progress(&Progress {
            elapsed: started.elapsed(),
            flows: flows.iter().map(Running::progress).collect(),
            guest_line: last_stats_line(guest.console_log()),
        });
    }
    let flows = flows
        .into_iter()
        .map(Running::finish)
        .collect::<Result<Vec<Flow>, HarnessError>>()?;
    step("traffic done; waiting for the forwarder's summary");
    let guest = guest.wait()?;
    Ok(FwdOutcome { flows, guest })
}
