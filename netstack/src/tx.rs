//! The transmit channel: this side is the TMM master of its own transmit data area.
//!
//! A frame is written into a buffer taken from the pool only when smoltcp actually
//! transmits (inside `TxToken::consume`), sent as a one-extent IOrec, and its buffer comes
//! back to the pool only when the other side (a NIC port, or the peer stack) returns it
//! after use: a buffer is never reused before its completion.

#![forbid(unsafe_code)]

use rbuf::{BufId, DataArea, Extent, IoRec, Link, Master, Pool};

use crate::Error;
use crate::device::MAX_FRAME_BYTES;

/// The transmit half of a port.
#[derive(Debug)]
pub struct TxChannel {
    master: Master,
    pool: Pool,
    slots: usize,
}

impl TxChannel {
    /// The master end of a TMM channel over this side's transmit area and the pool of that
    /// area, whose buffers must hold a [`MAX_FRAME_BYTES`] frame.
    pub fn new(mut master: Master, mut pool: Pool) -> Result<TxChannel, Error> {
        match pool.alloc(MAX_FRAME_BYTES) {
            Ok(id) => pool.free(id),
            Err(e) => {
                return Err(Error::Config(format!(
                    "transmit pool cannot hold a {MAX_FRAME_BYTES}-byte frame: {e}"
                )));
            }
        }
        if !master.area().is_writable() {
            return Err(Error::Config("transmit area is not writable".into()));
        }
        let slots = master.link().slots();
        Ok(TxChannel {
            master,
            pool,
            slots,
        })
    }

    /// The data area frames are written in.
    pub fn area(&self) -> &DataArea {
        self.master.area()
    }

    /// The pool (for audits).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The master end (for its lend set and stats).
    pub fn master(&mut self) -> &mut Master {
        &mut self.master
    }

    /// The link whose doorbell rings when sent buffers come back.
    pub fn link(&mut self) -> &mut Link {
        self.master.link()
    }

    /// Whether one more frame can be sent now: a free buffer, and fewer frames out than
    /// ring slots (every frame in the ring is lent, so then the push surely fits). Takes
    /// back completed buffers when that is what it needs.
    pub fn has_room(&mut self) -> Result<bool, Error> {
        if self.fits() {
            return Ok(true);
        }
        self.reclaim()?;
        Ok(self.fits())
    }

    fn fits(&self) -> bool {
        self.master.lent().len() < self.slots && self.pool.available() > 0
    }

    /// Takes back every buffer the other side has returned; returns how many.
    pub fn reclaim(&mut self) -> Result<usize, Error> {
        self.master.reclaim(&mut self.pool).map_err(Error::tx)
    }

    /// Takes a buffer for a frame of `len_bytes`, if there is room; the extent to fill.
    pub fn take(&mut self, len_bytes: usize) -> Result<Option<(BufId, Extent)>, Error> {
        if len_bytes > MAX_FRAME_BYTES || !self.has_room()? {
            return Ok(None);
        }
        let id = match self.pool.alloc(len_bytes) {
            Ok(id) => id,
            Err(_) => return Ok(None),
        };
        let whole = self.pool.extent(id);
        Ok(Some((id, Extent::new(whole.offset(), len_bytes as u32))))
    }

    /// Sends the filled buffer `id` (from [`TxChannel::take`]); on failure the buffer
    /// goes back to the pool and the frame is lost. Returns whether it was sent.
    pub fn send(&mut self, id: BufId, extent: Extent) -> Result<bool, Error> {
        let rec = IoRec::single(u64::from(id), extent);
        match self.master.send(&mut self.pool, &[rec]) {
            Ok(1) => Ok(true),
            Ok(_) => {
                self.pool.free(id);
                Ok(false)
            }
            Err(e) => {
                self.pool.free(id);
                Err(Error::tx(e))
            }
        }
    }

    /// Gives back a buffer taken with [`TxChannel::take`] and not sent.
    pub fn cancel(&mut self, id: BufId) {
        self.pool.free(id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rbuf::connect::pair;
    use rbuf::{Mode, PagePolicy};

    use super::*;

    #[test]
    fn room_ends_at_the_ring_size_and_returns_only_with_completions() {
        let area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
        let pool = Pool::slots(area.len(), 2048);
        let (o, r) = pair(Mode::Tmm, 8, area, pool.capacity()).unwrap();
        let mut tx = TxChannel::new(o.into_master().unwrap(), pool).unwrap();
        let mut peer = r.into_peer().unwrap();
        let mut ids = Vec::new();
        for _ in 0..8 {
            let (id, e) = tx.take(60).unwrap().expect("room");
            assert!(tx.send(id, e).unwrap());
            ids.push(id);
        }
        assert!(!tx.has_room().unwrap(), "8 frames out on an 8-slot ring");
        assert_eq!(tx.take(60).unwrap(), None);
        assert_eq!(tx.take(MAX_FRAME_BYTES + 1).unwrap(), None, "over the MTU");
        // The peer finishes one frame: exactly that buffer comes back.
        let mut got = [IoRec::default(); 8];
        assert_eq!(peer.recv(&mut got).unwrap(), 8);
        assert_eq!(got[0].total_len(), 60);
        assert_eq!(peer.send(&got[..1]).unwrap(), 1);
        assert!(tx.has_room().unwrap());
        let (id, _) = tx.take(60).unwrap().unwrap();
        assert_eq!(
            id,
            got[0].tag() as BufId,
            "the completed buffer is the one reused"
        );
        tx.cancel(id);
        assert_eq!(tx.pool().available(), tx.pool().capacity() - 7);
    }

    #[test]
    fn refuses_a_pool_too_small_for_a_frame() {
        let area = Arc::new(DataArea::create(1 << 16, PagePolicy::Shmem).unwrap());
        let pool = Pool::slots(area.len(), 1024);
        let (o, _r) = pair(Mode::Tmm, 8, area, pool.capacity()).unwrap();
        let err = TxChannel::new(o.into_master().unwrap(), pool).unwrap_err();
        assert!(err.to_string().contains("1514-byte frame"), "{err}");
    }
}
