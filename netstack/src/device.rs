//! A `smoltcp::phy::Device` over an rbuf port: a receive channel ([`RxChannel`]) and a
//! transmit channel ([`TxChannel`]).
//!
//! Receive hands smoltcp the frame where it lies in the receive data area
//! ([`RxAccess::Borrow`]) or a copy of it ([`RxAccess::Copy`], for a writer that is not
//! trusted to keep its hands off a buffer it gave away). Transmit takes a buffer only in
//! `TxToken::consume`, writes the frame there directly, and sends it; `transmit()`
//! returns `None` when no buffer or ring slot is free.
//!
//! The device and its [`PortHandle`] share the channels (`Rc`), so a stack can sleep on
//! the doorbells and check the channels' health even when smoltcp's `FaultInjector` or
//! `PcapWriter` (which give no access to the device inside) wrap the device. Both are
//! single-threaded; a stack lives on one thread.
//!
//! This is the crate's only module with `unsafe`: the two zero-copy views into data areas.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::time::Duration;

use rbuf::{IoRec, Link};
use rustix::event::{PollFd, PollFlags, Timespec};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::Error;
use crate::rx::{BATCH, RxChannel};
use crate::tx::TxChannel;

/// Largest frame, Ethernet header included, frame check sequence excluded (IP MTU 1500).
pub const MAX_FRAME_BYTES: usize = 1514;
/// Polls of the rings in [`PortControl::wait`] before it sleeps (some tens of
/// microseconds).
const WAIT_SPINS: u32 = 1000;
/// Smallest frame accepted: an Ethernet header.
const MIN_FRAME_BYTES: usize = 14;

/// How received frames reach smoltcp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxAccess {
    /// A view of the frame in the receive data area, no copy. Only for a writer trusted
    /// to keep to the channel protocol (a NIC driven by this process or by the service
    /// daemon, a stack of this project): it must not write a buffer while this side holds
    /// it, or smoltcp would read bytes changing under it.
    Borrow,
    /// A copy of the frame, read once from shared memory: safe whatever the writer does.
    Copy,
}

/// Counters of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Of those, frames copied ([`RxAccess::Copy`], or split over several extents).
    pub rx_copied: u64,
    /// Frames dropped for a length outside 14 to 1514 bytes.
    pub rx_bad_length: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Times `transmit()` said no: no free buffer or ring slot.
    pub tx_full: u64,
    /// Frames lost because a reply token found no room (receive never waits for transmit).
    pub tx_dropped: u64,
}

struct RxSide<R> {
    chan: R,
    queue: [IoRec; BATCH],
    head: usize,
    len: usize,
    access: RxAccess,
    scratch: Box<[u8]>,
    error: Option<Error>,
    stats: DeviceStats,
}

impl<R: RxChannel> RxSide<R> {
    /// The next frame of acceptable length, if any (refills the queue from the channel).
    fn next(&mut self) -> Option<IoRec> {
        loop {
            if self.head == self.len {
                if self.error.is_some() {
                    return None;
                }
                self.head = 0;
                self.len = match self.chan.recv(&mut self.queue) {
                    Ok(n) => n,
                    Err(e) => {
                        log::warn!("receive channel failed: {e}");
                        self.error = Some(e);
                        0
                    }
                };
                if self.len == 0 {
                    return None;
                }
            }
            let rec = self.queue[self.head];
            self.head += 1;
            let len = rec.total_len() as usize;
            if (MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&len) {
                return Some(rec);
            }
            self.stats.rx_bad_length += 1;
            self.release(rec);
        }
    }

    fn release(&mut self, rec: IoRec) {
        if let Err(e) = self.chan.release(rec)
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }

    fn consume<T>(&mut self, rec: IoRec, f: impl FnOnce(&[u8]) -> T) -> T {
        let len = rec.total_len() as usize;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += len as u64;
        let extents = rec.extents();
        let out = if self.access == RxAccess::Borrow && extents.len() == 1 {
            // SAFETY: `rec` was validated against the area (extents inside it) by the
            // channel, and the buffer it names is this side's until `release` below: in
            // RMM the originator returned it filled and gets it again only when the
            // master re-posts it after release; in TMM the originator lent it and may
            // reuse it only once it is returned after release. `RxAccess::Borrow` is the
            // caller's statement that the writer keeps to that protocol, so no one writes
            // these bytes while the slice lives (it does not outlive `f`).
            match unsafe { self.chan.area().bytes(extents[0]) } {
                Ok(frame) => f(frame),
                Err(_) => unreachable!("validated extent out of bounds"),
            }
        } else {
            self.stats.rx_copied += 1;
            let n = self
                .chan
                .area()
                .gather(extents, &mut self.scratch[..len])
                .expect("validated extents are inside the area");
            f(&self.scratch[..n])
        };
        self.release(rec);
        out
    }
}

struct TxSide {
    chan: TxChannel,
    scratch: Box<[u8]>,
    error: Option<Error>,
    stats: DeviceStats,
}

impl TxSide {
    fn has_room(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        match self.chan.has_room() {
            Ok(room) => room,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    fn consume<T>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
        let taken = if self.error.is_none() {
            match self.chan.take(len) {
                Ok(t) => t,
                Err(e) => {
                    self.error = Some(e);
                    None
                }
            }
        } else {
            None
        };
        let Some((id, extent)) = taken else {
            // No buffer (a reply token when the ring is full, or a frame over the MTU):
            // smoltcp still writes the frame, into scratch, and it is lost.
            self.stats.tx_dropped += 1;
            let n = len.min(self.scratch.len());
            return f(&mut self.scratch[..n]);
        };
        // SAFETY: buffer `id` was just allocated from this side's pool: no IOrec names it
        // (it is neither lent nor in a ring), the area is this process's writable mapping,
        // and this is the only view of its bytes; it ends before the buffer is sent.
        let out = match unsafe { self.chan.area().bytes_mut(extent) } {
            Ok(frame) => f(frame),
            Err(_) => unreachable!("pool extent outside its own area"),
        };
        match self.chan.send(id, extent) {
            Ok(true) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += len as u64;
            }
            Ok(false) => self.stats.tx_dropped += 1,
            Err(e) => {
                log::warn!("transmit channel failed: {e}");
                self.stats.tx_dropped += 1;
                self.error = Some(e);
            }
        }
        out
    }
}

struct Shared<R> {
    rx: RefCell<RxSide<R>>,
    tx: RefCell<TxSide>,
}

/// A smoltcp device over an rbuf receive channel and transmit channel.
pub struct RbufDevice<R: RxChannel> {
    shared: Rc<Shared<R>>,
    max_burst: usize,
}

impl<R: RxChannel> RbufDevice<R> {
    /// A device receiving from `rx` (frames reach smoltcp as `access` says) and
    /// transmitting on `tx`.
    pub fn new(mut rx: R, tx: TxChannel, access: RxAccess) -> RbufDevice<R> {
        // Frames the receive path can hold at once: the ring between the two sides.
        let max_burst = rx.link().slots();
        RbufDevice {
            shared: Rc::new(Shared {
                rx: RefCell::new(RxSide {
                    chan: rx,
                    queue: [IoRec::default(); BATCH],
                    head: 0,
                    len: 0,
                    access,
                    scratch: vec![0; MAX_FRAME_BYTES].into_boxed_slice(),
                    error: None,
                    stats: DeviceStats::default(),
                }),
                tx: RefCell::new(TxSide {
                    chan: tx,
                    scratch: vec![0; 65536].into_boxed_slice(),
                    error: None,
                    stats: DeviceStats::default(),
                }),
            }),
            max_burst,
        }
    }

    /// A handle on the channels that stays usable when the device is wrapped (by a
    /// `FaultInjector`, a `PcapWriter`) and moved into a stack.
    pub fn handle(&self) -> PortHandle<R> {
        PortHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Shared access to a device's channels: health, counters, sleeping on the doorbells.
pub struct PortHandle<R: RxChannel> {
    shared: Rc<Shared<R>>,
}

impl<R: RxChannel> Clone for PortHandle<R> {
    fn clone(&self) -> Self {
        PortHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<R: RxChannel> PortHandle<R> {
    /// Counters of both directions.
    pub fn stats(&self) -> DeviceStats {
        let rx = self.shared.rx.borrow().stats;
        let tx = self.shared.tx.borrow().stats;
        DeviceStats {
            tx_frames: tx.tx_frames,
            tx_bytes: tx.tx_bytes,
            tx_full: tx.tx_full,
            tx_dropped: tx.tx_dropped,
            ..rx
        }
    }

    /// Runs `f` on the receive channel (for audits and channel stats; not while the
    /// stack is polling).
    pub fn with_rx<T>(&self, f: impl FnOnce(&mut R) -> T) -> T {
        f(&mut self.shared.rx.borrow_mut().chan)
    }

    /// Runs `f` on the transmit channel.
    pub fn with_tx<T>(&self, f: impl FnOnce(&mut TxChannel) -> T) -> T {
        f(&mut self.shared.tx.borrow_mut().chan)
    }
}

/// What a stack needs of its port besides the `Device`: whether it still works, and a
/// way to sleep until there is something to do.
pub trait PortControl {
    /// The first error either channel met (then the port is dead), taken.
    fn take_error(&mut self) -> Option<Error>;
    /// Sleeps until a frame arrives, a sent buffer comes back while transmit is blocked,
    /// the peer hangs up, or `timeout` passes. Returns at once if a frame is waiting.
    fn wait(&mut self, timeout: Duration) -> Result<(), Error>;
}

impl<R: RxChannel> PortControl for PortHandle<R> {
    fn take_error(&mut self) -> Option<Error> {
        let e = self.shared.rx.borrow_mut().error.take();
        e.or_else(|| self.shared.tx.borrow_mut().error.take())
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.shared.rx.borrow_mut();
        let mut tx = self.shared.tx.borrow_mut();
        if rx.head < rx.len || rx.chan.has_pending() {
            return Ok(());
        }
        rx.chan.flush()?;
        let tx_blocked = !tx.chan.has_room()?;
        // Poll a little before sleeping: a peer that is busy right now answers within
        // microseconds, far sooner than a doorbell and a wake-up would.
        for _ in 0..WAIT_SPINS {
            if rx.chan.link().arm_incoming().map_err(Error::rx)?
                || (tx_blocked && tx.chan.link().arm_incoming().map_err(Error::tx)?)
            {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let rx_link: &Link = rx.chan.link();
        let tx_link: &Link = tx.chan.link();
        let mut fds = Vec::with_capacity(4);
        fds.push(PollFd::new(rx_link.doorbell(), PollFlags::IN));
        if tx_blocked {
            fds.push(PollFd::new(tx_link.doorbell(), PollFlags::IN));
        }
        for conn in [rx_link.connection(), tx_link.connection()]
            .into_iter()
            .flatten()
        {
            fds.push(PollFd::from_borrowed_fd(conn, PollFlags::IN));
        }
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::Wait(e.into())),
        }
        let bells = if tx_blocked { 2 } else { 1 };
        let hung_up = fds[bells..].iter().any(|f| !f.revents().is_empty());
        drop(fds);
        rx_link.doorbell().drain();
        tx_link.doorbell().drain();
        if hung_up {
            // The connection closed: the peer exited or died. Mark the links so every
            // later call fails, and report it.
            let rx_gone = rx.chan.link().check_peer().map_err(Error::rx);
            let tx_gone = tx.chan.link().check_peer().map_err(Error::tx);
            rx_gone?;
            tx_gone?;
        }
        Ok(())
    }
}

/// The receive token: one frame, released once smoltcp has read it.
pub struct RxToken<'a, R: RxChannel> {
    rx: RefMut<'a, RxSide<R>>,
    rec: IoRec,
}

impl<R: RxChannel> phy::RxToken for RxToken<'_, R> {
    fn consume<T, F>(mut self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        self.rx.consume(self.rec, f)
    }
}

/// The transmit token: a buffer is taken only when it is consumed.
pub struct TxToken<'a> {
    tx: RefMut<'a, TxSide>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<T, F>(mut self, len: usize, f: F) -> T
    where
        F: FnOnce(&mut [u8]) -> T,
    {
        self.tx.consume(len, f)
    }
}

impl<R: RxChannel> phy::Device for RbufDevice<R> {
    type RxToken<'a>
        = RxToken<'a, R>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let mut rx = self.shared.rx.borrow_mut();
        let rec = rx.next()?;
        let tx = self.shared.tx.borrow_mut();
        Some((RxToken { rx, rec }, TxToken { tx }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        let mut tx = self.shared.tx.borrow_mut();
        if tx.has_room() {
            Some(TxToken { tx })
        } else {
            tx.stats.tx_full += 1;
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME_BYTES;
        caps.max_burst_size = Some(self.max_burst);
        // No offload: rbuf channels carry bytes, nothing computes or checks checksums on
        // the way, so smoltcp does both.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        checksum.udp = Checksum::Both;
        checksum.tcp = Checksum::Both;
        checksum.icmpv4 = Checksum::Both;
        checksum.icmpv6 = Checksum::Both;
        caps.checksum = checksum;
        caps
    }
}

#[cfg(test)]
mod tests {
    use phy::{Device, RxToken as _, TxToken as _};

    use super::*;
    use crate::wire::{WireConfig, pair};

    fn devices(access: RxAccess) -> (RbufDevice<crate::TmmRx>, RbufDevice<crate::TmmRx>) {
        let cfg = WireConfig {
            slots: 8,
            buffers: 16,
            pages: rbuf::PagePolicy::Shmem,
            ..WireConfig::default()
        };
        let (a, b) = pair(&cfg, &cfg).unwrap();
        (a.into_device(access), b.into_device(access))
    }

    #[test]
    fn frames_cross_byte_exact_and_transmit_stops_when_the_ring_is_full() {
        for access in [RxAccess::Borrow, RxAccess::Copy] {
            let (mut a, mut b) = devices(access);
            let now = Instant::from_millis(0);
            let caps = a.capabilities();
            assert_eq!(
                (caps.max_transmission_unit, caps.max_burst_size),
                (1514, Some(8))
            );
            let mut sent = 0u8;
            while let Some(tok) = a.transmit(now) {
                tok.consume(60 + usize::from(sent), |buf| buf.fill(sent));
                sent += 1;
            }
            assert_eq!(sent, 8, "8-slot ring");
            assert_eq!(a.handle().stats().tx_full, 1);
            for i in 0..8u8 {
                let (rx, _tx) = b.receive(now).expect("frame");
                rx.consume(|f| {
                    assert_eq!(f.len(), 60 + usize::from(i));
                    assert!(f.iter().all(|&x| x == i), "frame {i}");
                });
            }
            assert!(b.receive(now).is_none());
            let st = b.handle().stats();
            assert_eq!(st.rx_frames, 8);
            assert_eq!(st.rx_copied, if access == RxAccess::Copy { 8 } else { 0 });
            // B returned the buffers (flushed on the next receive): A may send again.
            assert!(a.transmit(now).is_some());
        }
    }

    #[test]
    fn a_dead_peer_is_reported_once_idle() {
        let (a, b) = devices(RxAccess::Borrow);
        let mut h = a.handle();
        drop(b);
        let err = h.wait(Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("peer disconnected"), "{err}");
    }
}
