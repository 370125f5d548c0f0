//! Receive channels: where a device's frames come from.
//!
//! A frame arrives as an IOrec naming bytes of a data area this side may only read; the
//! device hands those bytes to smoltcp and then *releases* the IOrec. Two shapes exist:
//!
//! - [`RmmRx`]: this side is the RMM master (a NIC port, `driver::Port`): it owns the
//!   pool of the receive area, posts empty buffers, gets them back filled.
//! - [`TmmRx`]: this side is the TMM receiver of another stack's transmit channel (two
//!   stacks back to back): the frames stay in the sender's data area, read here through
//!   a read-only mapping, and go back to the sender once read. No byte is copied.
//!
//! [`Reorder`] wraps either and delivers some frames late, to test a stack against
//! reordering without copying anything.

#![forbid(unsafe_code)]

use std::collections::VecDeque;

use rbuf::{BufId, DataArea, IoRec, Link, Master, Peer, Pool};

use crate::Error;
use crate::device::MAX_FRAME_BYTES;

/// IOrecs moved per ring operation.
pub const BATCH: usize = 32;

/// The receive half of a port, as the device sees it.
pub trait RxChannel {
    /// The data area frames are in (read-only here, or at least never written by this
    /// side while a frame is out).
    fn area(&self) -> &DataArea;
    /// Does the housekeeping (posts empty buffers, returns read ones) and takes up to
    /// `out.len()` full frames, each validated against the data area. Never blocks.
    fn recv(&mut self, out: &mut [IoRec]) -> Result<usize, Error>;
    /// Gives back a frame taken by [`RxChannel::recv`] once it has been read.
    fn release(&mut self, rec: IoRec) -> Result<(), Error>;
    /// Pushes out what [`RxChannel::release`] batched up; called before sleeping.
    fn flush(&mut self) -> Result<(), Error>;
    /// The link whose doorbell rings when frames arrive.
    fn link(&mut self) -> &mut Link;
    /// Whether frames already taken from the link wait here (so sleeping would be wrong).
    fn has_pending(&self) -> bool {
        false
    }
}

/// The receive side as the RMM master: the application owns the receive area's pool,
/// keeps empty buffers posted, and gets them back full (the NIC receive path).
#[derive(Debug)]
pub struct RmmRx {
    master: Master,
    pool: Pool,
    posted_target: usize,
    scratch: [IoRec; BATCH],
}

impl RmmRx {
    /// The master end of an RMM channel and the pool of its data area, whose buffers
    /// must hold a [`MAX_FRAME_BYTES`] frame. `posted` empty buffers are kept lent to the
    /// originator (at most the ring size, so a post always fits).
    pub fn new(mut master: Master, mut pool: Pool, posted: usize) -> Result<RmmRx, Error> {
        match pool.alloc(MAX_FRAME_BYTES) {
            Ok(id) => pool.free(id),
            Err(e) => {
                return Err(Error::Config(format!(
                    "receive pool cannot hold a {MAX_FRAME_BYTES}-byte frame: {e}"
                )));
            }
        }
        let posted_target = posted.min(master.link().slots()).min(pool.capacity());
        Ok(RmmRx {
            master,
            pool,
            posted_target,
            scratch: [IoRec::default(); BATCH],
        })
    }

    /// The pool (for audits).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The master end (for its lend set and stats).
    pub fn master(&mut self) -> &mut Master {
        &mut self.master
    }

    fn post(&mut self) -> Result<(), Error> {
        loop {
            let want = self
                .posted_target
                .saturating_sub(self.master.lent().len())
                .min(BATCH);
            let mut n = 0;
            while n < want {
                match self.pool.alloc(MAX_FRAME_BYTES) {
                    Ok(id) => {
                        self.scratch[n] = self.pool.iorec(id);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            if n == 0 {
                return Ok(());
            }
            let sent = self.master.send(&mut self.pool, &self.scratch[..n]);
            let k = *sent.as_ref().unwrap_or(&0);
            for rec in &self.scratch[k..n] {
                self.pool.free(rec.tag() as BufId);
            }
            sent.map_err(Error::rx)?;
            if k < n {
                return Ok(());
            }
        }
    }
}

impl RxChannel for RmmRx {
    fn area(&self) -> &DataArea {
        self.master.area()
    }

    fn recv(&mut self, out: &mut [IoRec]) -> Result<usize, Error> {
        self.post()?;
        self.master.recv(&mut self.pool, out).map_err(Error::rx)
    }

    fn release(&mut self, rec: IoRec) -> Result<(), Error> {
        // Back to the pool; the next `recv` posts it again.
        self.pool.free(rec.tag() as BufId);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.post()
    }

    fn link(&mut self) -> &mut Link {
        self.master.link()
    }
}

/// The receive side as the TMM receiver of another stack's transmit channel: frames are
/// read in the sender's data area and handed back once read.
#[derive(Debug)]
pub struct TmmRx {
    peer: Peer,
    /// Frames taken and not yet released.
    held: usize,
    /// Released frames not yet pushed back.
    returns: Vec<IoRec>,
    slots: usize,
}

impl TmmRx {
    /// The receiver end of a TMM channel.
    pub fn new(mut peer: Peer) -> TmmRx {
        let slots = peer.link().slots();
        TmmRx {
            peer,
            held: 0,
            returns: Vec::with_capacity(slots),
            slots,
        }
    }

    /// The receiver end (for its stats).
    pub fn peer(&mut self) -> &mut Peer {
        &mut self.peer
    }

    fn push_returns(&mut self) -> Result<(), Error> {
        if !self.returns.is_empty() {
            let n = self.peer.send(&self.returns).map_err(Error::rx)?;
            self.returns.drain(..n);
        }
        Ok(())
    }
}

impl RxChannel for TmmRx {
    fn area(&self) -> &DataArea {
        self.peer.area()
    }

    fn recv(&mut self, out: &mut [IoRec]) -> Result<usize, Error> {
        self.push_returns()?;
        // Take no more than the return ring can take back, whatever the sender lends.
        let room = self.slots.saturating_sub(self.held + self.returns.len());
        let want = out.len().min(room);
        let n = self.peer.recv(&mut out[..want]).map_err(Error::rx)?;
        self.held += n;
        Ok(n)
    }

    fn release(&mut self, rec: IoRec) -> Result<(), Error> {
        self.held -= 1;
        self.returns.push(rec);
        if self.returns.len() >= BATCH {
            self.push_returns()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.push_returns()
    }

    fn link(&mut self) -> &mut Link {
        self.peer.link()
    }
}

/// Delivers some frames late: with probability `percent`, a frame is held back until
/// 1 to `max_delay` later frames have been delivered (or until nothing else arrives),
/// then delivered. At most one frame is held at a time. Nothing is copied: the held
/// frame is an IOrec whose buffer is simply released later.
#[derive(Debug)]
pub struct Reorder<R> {
    inner: R,
    percent: u8,
    max_delay: u32,
    rng: u64,
    held: Option<(IoRec, u32)>,
    ready: VecDeque<IoRec>,
    scratch: [IoRec; BATCH],
    reordered: u64,
}

impl<R: RxChannel> Reorder<R> {
    /// Wraps `inner`; `seed` makes the choices repeatable.
    pub fn new(inner: R, percent: u8, max_delay: u32, seed: u64) -> Reorder<R> {
        Reorder {
            inner,
            percent: percent.min(100),
            max_delay: max_delay.max(1),
            rng: seed | 1,
            held: None,
            ready: VecDeque::with_capacity(2 * BATCH),
            scratch: [IoRec::default(); BATCH],
            reordered: 0,
        }
    }

    /// Frames delivered after frames that arrived behind them.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl<R: RxChannel> RxChannel for Reorder<R> {
    fn area(&self) -> &DataArea {
        self.inner.area()
    }

    fn recv(&mut self, out: &mut [IoRec]) -> Result<usize, Error> {
        if self.ready.len() < out.len() {
            let n = self.inner.recv(&mut self.scratch)?;
            for i in 0..n {
                let rec = self.scratch[i];
                if self.held.is_none() && (self.next_random() % 100) < u64::from(self.percent) {
                    let delay = 1 + (self.next_random() % u64::from(self.max_delay)) as u32;
                    self.held = Some((rec, delay));
                    continue;
                }
                self.ready.push_back(rec);
                if let Some((late, left)) = self.held.as_mut() {
                    *left -= 1;
                    if *left == 0 {
                        self.ready.push_back(*late);
                        self.held = None;
                        self.reordered += 1;
                    }
                }
            }
            if n == 0
                && self.ready.is_empty()
                && let Some((late, _)) = self.held.take()
            {
                // Nothing else is coming now: deliver it rather than stall the stack.
                self.ready.push_back(late);
            }
        }
        let n = out.len().min(self.ready.len());
        for slot in out.iter_mut().take(n) {
            *slot = self.ready.pop_front().expect("counted");
        }
        Ok(n)
    }

    fn release(&mut self, rec: IoRec) -> Result<(), Error> {
        self.inner.release(rec)
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.inner.flush()
    }

    fn link(&mut self) -> &mut Link {
        self.inner.link()
    }

    fn has_pending(&self) -> bool {
        !self.ready.is_empty() || self.held.is_some() || self.inner.has_pending()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rbuf::connect::pair;
    use rbuf::{Extent, Mode, PagePolicy};

    use super::*;

    /// A TMM sender lending `n` one-extent buffers whose first byte is their number.
    fn sender(n: usize, slots: usize) -> (Master, Pool, TmmRx) {
        let area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
        let mut pool = Pool::slots(area.len(), 2048);
        let (o, r) = pair(Mode::Tmm, slots, area.clone(), pool.capacity()).unwrap();
        let mut master = o.into_master().unwrap();
        for i in 0..n.min(slots) {
            let id = pool.alloc(64).unwrap();
            let off = pool.extent(id).offset();
            area.write(off as usize, &[i as u8]).unwrap();
            let rec = IoRec::single(u64::from(id), Extent::new(off, 64));
            assert_eq!(master.send(&mut pool, &[rec]).unwrap(), 1);
        }
        (master, pool, TmmRx::new(r.into_peer().unwrap()))
    }

    #[test]
    fn reorder_delivers_every_frame_once_some_late_and_returns_every_buffer() {
        let (mut master, mut pool, rx) = sender(200, 256);
        let mut rx = Reorder::new(rx, 20, 4, 99);
        let mut order = Vec::new();
        let mut out = [IoRec::default(); BATCH];
        for _ in 0..100 {
            let n = rx.recv(&mut out).unwrap();
            for rec in &out[..n] {
                let mut b = [0u8; 1];
                rx.area()
                    .read(rec.extents()[0].offset() as usize, &mut b)
                    .unwrap();
                order.push(b[0]);
                rx.release(*rec).unwrap();
            }
        }
        rx.flush().unwrap();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).map(|i| i as u8).collect::<Vec<_>>());
        assert_ne!(order, sorted, "some frames came late");
        assert!(rx.reordered() > 10, "{}", rx.reordered());
        assert!(!rx.has_pending());
        assert_eq!(master.reclaim(&mut pool).unwrap(), 200);
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn tmm_receive_takes_no_more_than_it_can_return() {
        let (mut master, mut pool, mut rx) = sender(8, 8);
        let mut out = [IoRec::default(); 32];
        assert_eq!(rx.recv(&mut out).unwrap(), 8);
        // The sender's ring is empty again: it lends 8 more (16 out in all).
        for _ in 0..8 {
            let id = pool.alloc(64).unwrap();
            let rec = pool.iorec(id);
            assert_eq!(master.send(&mut pool, &[rec]).unwrap(), 1);
        }
        // Holding 8 on an 8-slot return ring: taking more could leave some unreturnable.
        assert_eq!(rx.recv(&mut out[8..]).unwrap(), 0);
        rx.release(out[0]).unwrap();
        assert_eq!(
            rx.recv(&mut out[8..]).unwrap(),
            1,
            "one returned, one taken"
        );
        assert_eq!(master.reclaim(&mut pool).unwrap(), 1);
    }
}
