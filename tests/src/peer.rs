//! The host-side traffic peer: sends and receives Ethernet frames over QEMU's UDP socket
//! netdev (`-netdev socket,udp=..,localaddr=..`), where every UDP datagram is one frame.
//!
//! Frames come from a [`FrameGen`], so the receiver checks each one byte for byte and
//! counts loss, duplicates, reordering and corruption ([`ReceiveReport`]). Every send and
//! receive is bounded in frame count and time, and the peer only uses loopback addresses.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::HarnessError;
use crate::frame::{FrameError, FrameGen, is_test_frame};
use crate::guest::Backend;
use crate::netns::NetNs;

/// Receive buffer the peer asks the kernel for (capped by `net.core.rmem_max`).
const RECV_BUFFER_BYTES: usize = 4 << 20;
/// Largest datagram QEMU's socket netdev sends.
const MAX_DATAGRAM_BYTES: usize = 65536;
/// Most invalid frames a report keeps for its message.
const MAX_INVALID_SAMPLES: usize = 8;
/// Most missing sequence numbers a report lists.
const MAX_MISSING_SAMPLES: usize = 16;
/// Largest frame count one receive tracks (its bitmap takes `count / 8` bytes).
const MAX_RECEIVE_COUNT: u64 = 1 << 32;

/// One end of a loopback UDP link that carries one Ethernet frame per datagram.
#[derive(Debug)]
pub struct UdpPeer {
    socket: UdpSocket,
    local: SocketAddr,
    remote: SocketAddr,
}

impl UdpPeer {
    /// Binds `local` and sends to `remote`; both must be loopback addresses. Datagrams
    /// from any other source than `remote` are ignored.
    pub fn bind(local: SocketAddr, remote: SocketAddr) -> Result<UdpPeer, HarnessError> {
        for addr in [local, remote] {
            if !addr.ip().is_loopback() {
                return Err(HarnessError::NotLoopback { addr });
            }
        }
        let socket = bind_loopback(local)?;
        let local = local_addr(&socket, local)?;
        Ok(UdpPeer {
            socket,
            local,
            remote,
        })
    }

    /// A peer on a free loopback port and the [`Backend`] for a guest NIC wired to it:
    /// QEMU binds another free port and sends each frame the guest transmits to the peer.
    pub fn for_qemu() -> Result<(UdpPeer, Backend), HarnessError> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let socket = bind_loopback(any)?;
        let local = local_addr(&socket, any)?;
        // Reserve a port for QEMU by binding and releasing it. Another process could take
        // it in between; QEMU then fails to start and says so in its stderr.
        let qemu = {
            let probe = UdpSocket::bind(any).map_err(|source| HarnessError::Socket {
                what: "finding a free port for QEMU",
                addr: any,
                source,
            })?;
            local_addr(&probe, any)?
        };
        let peer = UdpPeer {
            socket,
            local,
            remote: qemu,
        };
        let backend = Backend::Udp {
            qemu,
            peer: local,
            netns: None,
        };
        Ok((peer, backend))
    }

    /// Like [`UdpPeer::for_qemu`], with both sockets in `ns` (for a guest whose other
    /// NICs use taps in `ns`, so its QEMU runs there).
    pub fn for_qemu_in(ns: &NetNs) -> Result<(UdpPeer, Backend), HarnessError> {
        let (peer, backend) = ns.run_in(UdpPeer::for_qemu)??;
        let backend = match backend {
            Backend::Udp { qemu, peer, .. } => Backend::Udp {
                qemu,
                peer,
                netns: Some(ns.name().to_owned()),
            },
            tap @ Backend::Tap { .. } => tap,
        };
        Ok((peer, backend))
    }

    /// Two peers on free loopback ports, each sending to the other.
    pub fn pair() -> Result<(UdpPeer, UdpPeer), HarnessError> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let a = bind_loopback(any)?;
        let b = bind_loopback(any)?;
        let a_addr = local_addr(&a, any)?;
        let b_addr = local_addr(&b, any)?;
        Ok((
            UdpPeer {
                socket: a,
                local: a_addr,
                remote: b_addr,
            },
            UdpPeer {
                socket: b,
                local: b_addr,
                remote: a_addr,
            },
        ))
    }

    /// The address this peer receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address this peer sends to.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// A second handle on the same socket (e.g. one thread sends while another receives).
    pub fn try_clone(&self) -> Result<UdpPeer, HarnessError> {
        let socket = self
            .socket
            .try_clone()
            .map_err(|source| self.socket_error("cloning socket", source))?;
        Ok(UdpPeer {
            socket,
            local: self.local,
            remote: self.remote,
        })
    }

    fn socket_error(&self, what: &'static str, source: io::Error) -> HarnessError {
        HarnessError::Socket {
            what,
            addr: self.local,
            source,
        }
    }

    /// Sends one frame as one datagram.
    pub fn send_frame(&self, frame: &[u8]) -> Result<(), HarnessError> {
        self.socket
            .send_to(frame, self.remote)
            .map_err(|source| self.socket_error("sending frame", source))?;
        Ok(())
    }

    /// Waits up to `timeout` for one frame from the remote and copies it into `buf`;
    /// returns its length, or `None` on timeout. Longer frames are truncated to `buf`.
    pub fn recv_frame(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Option<usize>, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // A zero read timeout means "block forever", so wait at least a microsecond.
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_micros(1))))
                .map_err(|source| self.socket_error("setting read timeout", source))?;
            match self.socket.recv_from(buf) {
                Ok((len, from)) if from == self.remote => return Ok(Some(len)),
                Ok((_, from)) => log::debug!("peer {} ignored a datagram from {from}", self.local),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(self.socket_error("receiving frame", source)),
            }
        }
    }

    /// Sends frames `plan.first_seq ..` of `stream`, at most `plan.count` of them, paced to
    /// `plan.rate_per_sec` if set, and stops at `plan.time_limit`.
    pub fn send(&self, stream: &FrameGen, plan: &SendPlan) -> Result<SendReport, HarnessError> {
        let start = Instant::now();
        let mut buf = vec![0u8; stream.max_len()];
        let mut report = SendReport::default();
        for i in 0..plan.count {
            if start.elapsed() >= plan.time_limit {
                report.stopped_by_time_limit = true;
                break;
            }
            if let Some(rate) = plan.rate_per_sec {
                let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let len = stream.write(plan.first_seq.wrapping_add(i), &mut buf)?;
            self.send_frame(&buf[..len])?;
            report.sent += 1;
            report.bytes += len as u64;
        }
        report.elapsed = start.elapsed();
        log::debug!("peer {} sent {report}", self.local);
        Ok(report)
    }

    /// Receives frames of `stream` until all `plan.count` frames from `plan.first_seq`
    /// arrived (then listens `plan.linger` longer for duplicates) or `plan.timeout` passed,
    /// and reports what came.
    pub fn receive(
        &self,
        stream: &FrameGen,
        plan: &ReceivePlan,
    ) -> Result<ReceiveReport, HarnessError> {
        self.receive_observed(stream, plan, Duration::MAX, &mut |_| {})
    }

    /// As [`UdpPeer::receive`], showing the counts so far to `progress` every `period`
    /// while it runs (`missing` and `elapsed` as of that moment; no samples).
    pub fn receive_observed(
        &self,
        stream: &FrameGen,
        plan: &ReceivePlan,
        period: Duration,
        progress: &mut dyn FnMut(&ReceiveReport),
    ) -> Result<ReceiveReport, HarnessError> {
        if plan.count > MAX_RECEIVE_COUNT {
            return Err(HarnessError::InvalidConfig {
                reason: format!("receive count {} exceeds {MAX_RECEIVE_COUNT}", plan.count),
            });
        }
        let start = Instant::now();
        let deadline = start + plan.timeout;
        let mut tally = Tally::new(stream, plan);
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        let mut linger_until = None;
        let mut next_progress = start.checked_add(period);
        loop {
            let now = Instant::now();
            if next_progress.is_some_and(|at| now >= at) {
                next_progress = now.checked_add(period);
                let mut so_far = tally.report.clone();
                so_far.missing = so_far.expected - so_far.unique;
                so_far.elapsed = now - start;
                so_far.invalid_samples.clear();
                progress(&so_far);
            }
            let until = match linger_until {
                Some(until) => until,
                None if tally.report.unique == plan.count => {
                    let until = (now + plan.linger).min(deadline);
                    linger_until = Some(until);
                    until
                }
                None => deadline,
            };
            if now >= until {
                break;
            }
            let wait = match next_progress {
                Some(at) => (until - now).min(at.saturating_duration_since(now)),
                None => until - now,
            };
            if let Some(len) = self.recv_frame(&mut buf, wait)? {
                tally.add(&buf[..len]);
            }
        }
        let mut report = tally.finish();
        report.elapsed = start.elapsed();
        log::debug!("peer {} received: {report}", self.local);
        Ok(report)
    }
}

fn bind_loopback(addr: SocketAddr) -> Result<UdpSocket, HarnessError> {
    let socket = UdpSocket::bind(addr).map_err(|source| HarnessError::Socket {
        what: "binding",
        addr,
        source,
    })?;
    // Best effort: a bigger buffer only makes loss under bursts less likely.
    if let Err(e) = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, RECV_BUFFER_BYTES) {
        log::debug!("cannot enlarge the receive buffer of {addr}: {e}");
    }
    Ok(socket)
}

fn local_addr(socket: &UdpSocket, bound: SocketAddr) -> Result<SocketAddr, HarnessError> {
    socket.local_addr().map_err(|source| HarnessError::Socket {
        what: "reading local address",
        addr: bound,
        source,
    })
}

/// What to send: a bounded run of consecutive frames of one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct SendPlan {
    /// Sequence number of the first frame.
    pub first_seq: u64,
    /// Number of frames.
    pub count: u64,
    /// Frames per second, or as fast as possible if `None`.
    pub rate_per_sec: Option<u32>,
    /// Stop sending after this long even if frames remain.
    pub time_limit: Duration,
}

impl SendPlan {
    /// `count` frames from seq 0, unpaced, with a 60 s time limit.
    pub fn new(count: u64) -> SendPlan {
        SendPlan {
            first_seq: 0,
            count,
            rate_per_sec: None,
            time_limit: Duration::from_secs(60),
        }
    }

    /// Starts at `first_seq`.
    pub fn first_seq(self, first_seq: u64) -> SendPlan {
        SendPlan { first_seq, ..self }
    }

    /// Paces sending to `rate` frames per second (at least one).
    pub fn rate_per_sec(self, rate: u32) -> SendPlan {
        SendPlan {
            rate_per_sec: Some(rate.max(1)),
            ..self
        }
    }

    /// Stops after `time_limit`.
    pub fn time_limit(self, time_limit: Duration) -> SendPlan {
        SendPlan { time_limit, ..self }
    }
}

/// What a send did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Frames sent.
    pub sent: u64,
    /// Bytes sent (frame lengths).
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// True if the time limit cut the run short.
    pub stopped_by_time_limit: bool,
}

impl fmt::Display for SendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames, {} bytes in {:?}{}",
            self.sent,
            self.bytes,
            self.elapsed,
            if self.stopped_by_time_limit {
                " (stopped by the time limit)"
            } else {
                ""
            }
        )
    }
}

/// What to expect: a run of consecutive frames of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivePlan {
    /// Sequence number of the first expected frame.
    pub first_seq: u64,
    /// Number of expected frames.
    pub count: u64,
    /// Give up after this long.
    pub timeout: Duration,
    /// After all frames arrived, keep listening this long to catch duplicates.
    pub linger: Duration,
    /// Also compare MAC addresses (turn off when a forwarder rewrites them).
    pub check_macs: bool,
}

impl ReceivePlan {
    /// `count` frames from seq 0 within 60 s, MACs checked, no lingering.
    pub fn new(count: u64) -> ReceivePlan {
        ReceivePlan {
            first_seq: 0,
            count,
            timeout: Duration::from_secs(60),
            linger: Duration::ZERO,
            check_macs: true,
        }
    }

    /// Expects the run to start at `first_seq`.
    pub fn first_seq(self, first_seq: u64) -> ReceivePlan {
        ReceivePlan { first_seq, ..self }
    }

    /// Gives up after `timeout`.
    pub fn timeout(self, timeout: Duration) -> ReceivePlan {
        ReceivePlan { timeout, ..self }
    }

    /// Listens `linger` longer after the last expected frame.
    pub fn linger(self, linger: Duration) -> ReceivePlan {
        ReceivePlan { linger, ..self }
    }

    /// Sets whether MAC addresses are compared.
    pub fn check_macs(self, check_macs: bool) -> ReceivePlan {
        ReceivePlan { check_macs, ..self }
    }
}

/// What a receive saw. Every frame counts in exactly one of `unique`, `duplicates`,
/// `invalid`, `out_of_range` and `foreign`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiveReport {
    /// Frames expected.
    pub expected: u64,
    /// Expected frames received at least once, byte-exact.
    pub unique: u64,
    /// Expected frames received `unique` − `expected` short.
    pub missing: u64,
    /// Valid frames received again after their first arrival.
    pub duplicates: u64,
    /// First arrivals whose seq is below one received earlier.
    pub reordered: u64,
    /// Test frames of the wrong stream, length or content.
    pub invalid: u64,
    /// Valid frames whose seq lies outside the expected run.
    pub out_of_range: u64,
    /// Frames that are not test frames (e.g. ARP or IPv6 from a stack); not errors.
    pub foreign: u64,
    /// Bytes of the `unique` frames.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// The first invalid frames' errors.
    pub invalid_samples: Vec<FrameError>,
    /// The first missing sequence numbers.
    pub missing_samples: Vec<u64>,
}

impl ReceiveReport {
    /// True if every expected frame came exactly once, in order, and nothing bad came.
    pub fn is_perfect(&self) -> bool {
        self.unique == self.expected
            && self.duplicates == 0
            && self.reordered == 0
            && self.invalid == 0
            && self.out_of_range == 0
    }

    /// The report itself if perfect, else [`HarnessError::Traffic`] carrying it.
    pub fn check(self) -> Result<ReceiveReport, HarnessError> {
        if self.is_perfect() {
            Ok(self)
        } else {
            Err(HarnessError::Traffic {
                report: Box::new(self),
            })
        }
    }
}

impl fmt::Display for ReceiveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} frames ({} bytes) in {:?}: {} missing, {} duplicates, {} reordered, \
             {} invalid, {} out of range, {} foreign",
            self.unique,
            self.expected,
            self.bytes,
            self.elapsed,
            self.missing,
            self.duplicates,
            self.reordered,
            self.invalid,
            self.out_of_range,
            self.foreign
        )?;
        if !self.missing_samples.is_empty() {
            write!(f, "; first missing seqs {:?}", self.missing_samples)?;
        }
        for e in &self.invalid_samples {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

/// Running counts of one receive.
struct Tally<'a> {
    stream: &'a FrameGen,
    first_seq: u64,
    check_macs: bool,
    seen: Vec<u64>,
    highest: Option<u64>,
    report: ReceiveReport,
}

impl<'a> Tally<'a> {
    fn new(stream: &'a FrameGen, plan: &ReceivePlan) -> Tally<'a> {
        Tally {
            stream,
            first_seq: plan.first_seq,
            check_macs: plan.check_macs,
            seen: vec![0; plan.count.div_ceil(64) as usize],
            highest: None,
            report: ReceiveReport {
                expected: plan.count,
                ..ReceiveReport::default()
            },
        }
    }

    fn add(&mut self, frame: &[u8]) {
        let r = &mut self.report;
        if !is_test_frame(frame) {
            r.foreign += 1;
            return;
        }
        let verdict = if self.check_macs {
            self.stream.verify(frame)
        } else {
            self.stream.verify_payload(frame)
        };
        let seq = match verdict {
            Ok(seq) => seq,
            Err(e) => {
                r.invalid += 1;
                if r.invalid_samples.len() < MAX_INVALID_SAMPLES {
                    r.invalid_samples.push(e);
                }
                return;
            }
        };
        let index = seq.wrapping_sub(self.first_seq);
        if index >= r.expected {
            r.out_of_range += 1;
            return;
        }
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        if self.seen[word] & bit != 0 {
            r.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        r.unique += 1;
        r.bytes += frame.len() as u64;
        match self.highest {
            Some(h) if index < h => r.reordered += 1,
            _ => self.highest = Some(index),
        }
    }

    fn finish(mut self) -> ReceiveReport {
        let r = &mut self.report;
        r.missing = r.expected - r.unique;
        r.missing_samples = (0..r.expected)
            .filter(|&i| self.seen[(i / 64) as usize] & (1 << (i % 64)) == 0)
            .take(MAX_MISSING_SAMPLES)
            .map(|i| self.first_seq.wrapping_add(i))
            .collect();
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MacAddr;

    fn stream() -> FrameGen {
        FrameGen::new(99, MacAddr::qemu(1), MacAddr::qemu(2))
    }

    fn tally_of(frames: &[Vec<u8>], plan: &ReceivePlan) -> ReceiveReport {
        let s = stream();
        let mut t = Tally::new(&s, plan);
        for f in frames {
            t.add(f);
        }
        t.finish()
    }

    #[test]
    fn perfect_run() {
        let s = stream();
        let frames: Vec<_> = (10..20).map(|seq| s.frame(seq)).collect();
        let r = tally_of(&frames, &ReceivePlan::new(10).first_seq(10));
        assert!(r.is_perfect(), "{r}");
        assert_eq!((r.unique, r.missing), (10, 0));
        assert_eq!(r.bytes, frames.iter().map(|f| f.len() as u64).sum::<u64>());
        assert!(r.missing_samples.is_empty());
    }

    #[test]
    fn loss_duplicates_reordering_corruption_and_strangers_are_counted() {
        let s = stream();
        let mut corrupt = s.frame(4);
        corrupt[50] ^= 1;
        let mut arp = s.frame(5);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let frames = vec![
            s.frame(0),
            s.frame(2),
            s.frame(1),                                                    // reordered
            s.frame(2),                                                    // duplicate
            corrupt,    // invalid; seq 4 stays missing
            arp,        // foreign
            s.frame(7), // out of range
            FrameGen::new(1, MacAddr::qemu(1), MacAddr::qemu(2)).frame(3), // wrong seed
        ];
        let r = tally_of(&frames, &ReceivePlan::new(6));
        assert_eq!(r.expected, 6);
        assert_eq!(r.unique, 3);
        assert_eq!(r.missing, 3);
        assert_eq!(r.missing_samples, vec![3, 4, 5]);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.reordered, 1);
        assert_eq!(r.invalid, 2);
        assert_eq!(r.out_of_range, 1);
        assert_eq!(r.foreign, 1);
        assert!(matches!(
            r.invalid_samples[0],
            FrameError::PayloadMismatch {
                seq: 4,
                offset: 50,
                ..
            }
        ));
        assert!(matches!(
            r.invalid_samples[1],
            FrameError::WrongSeed {
                expected: 99,
                found: 1
            }
        ));
        assert!(!r.is_perfect());
        let msg = r.clone().check().unwrap_err().to_string();
        assert!(msg.contains("3/6 frames"), "{msg}");
        assert!(msg.contains("first missing seqs [3, 4, 5]"), "{msg}");
    }

    #[test]
    fn mac_check_can_be_turned_off() {
        let s = stream();
        let mut rewritten = s.frame(0);
        rewritten[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
        let strict = tally_of(std::slice::from_ref(&rewritten), &ReceivePlan::new(1));
        assert_eq!((strict.unique, strict.invalid), (0, 1));
        let lax = tally_of(&[rewritten], &ReceivePlan::new(1).check_macs(false));
        assert!(lax.is_perfect(), "{lax}");
    }

    #[test]
    fn non_loopback_addresses_are_refused() {
        let outside = SocketAddr::from(([192, 0, 2, 1], 9));
        let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        assert!(matches!(
            UdpPeer::bind(lo, outside),
            Err(HarnessError::NotLoopback { addr }) if addr == outside
        ));
        assert!(matches!(
            UdpPeer::bind(outside, lo),
            Err(HarnessError::NotLoopback { addr }) if addr == outside
        ));
    }
}
