//! A NIC speaking rbuf channels: the driver half of service mode.
//!
//! Receive is an RMM channel: the application (receiver, master) posts empty buffers of
//! the data area the driver created; the port turns them into receive descriptors and
//! sends each completed one back full. Transmit is a TMM channel: the application
//! (originator, master) sends full buffers of its own data area, which the NIC maps
//! device-read-only; the port queues them and returns each once sent. The port is the
//! non-master [`Peer`] of both channels, so the application's pool checks everything
//! that comes back, and the rbuf layer checks every IOrec against the data area before
//! the NIC ever sees it. Nothing here allocates after [`Port::new`].

#![forbid(unsafe_code)]

use rbuf::{IoRec, Peer};

use crate::{AreaId, Error, Nic};

/// IOrecs moved per step in each direction.
pub const BATCH: usize = 32;

/// Counters of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Empty buffers posted to the NIC.
    pub rx_posted: u64,
    /// Full buffers sent back to the application.
    pub rx_delivered: u64,
    /// Frames queued for transmission.
    pub tx_queued: u64,
    /// Sent buffers returned to the application.
    pub tx_returned: u64,
    /// IOrecs the NIC refused (an extent it cannot use); returned untouched (TX) or
    /// dropped (RX, the buffer stays with the application's pool accounting as lent).
    pub refused: u64,
}

/// What one [`Port::step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// IOrecs moved in any direction; 0 means the port is idle.
    pub moved: usize,
}

/// One direction's channel and the NIC area its data lives in.
struct Side {
    peer: Peer,
    area: AreaId,
    /// IOrecs taken from the NIC or the channel that could not be passed on yet.
    held: Vec<IoRec>,
}

impl Side {
    fn new(peer: Peer, area: AreaId, capacity: usize) -> Side {
        Side {
            peer,
            area,
            held: Vec::with_capacity(capacity),
        }
    }

    /// Sends held IOrecs to the application as far as its ring takes them.
    fn flush(&mut self) -> Result<usize, rbuf::Error> {
        if self.held.is_empty() {
            return Ok(0);
        }
        let n = self.peer.send(&self.held)?;
        self.held.drain(..n);
        Ok(n)
    }
}

/// A NIC with an RMM receive channel and a TMM transmit channel.
pub struct Port<N: Nic> {
    // Field order is drop order: the NIC stops and unmaps before the areas go.
    nic: N,
    rx: Option<Side>,
    tx: Option<Side>,
    scratch: [IoRec; BATCH],
    stats: PortStats,
}

impl<N: Nic> Port<N> {
    /// A port over `nic` with no channels yet.
    pub fn new(nic: N) -> Port<N> {
        Port {
            nic,
            rx: None,
            tx: None,
            scratch: [IoRec::default(); BATCH],
            stats: PortStats::default(),
        }
    }

    /// Attaches the receive channel: this side is the RMM originator, whose data area
    /// (writable here) the NIC maps device-writable.
    pub fn attach_rx(&mut self, peer: Peer) -> Result<(), Error> {
        let area = self.nic.add_rx_area(peer.area())?;
        let depth = self.nic.rx_space() + BATCH;
        self.rx = Some(Side::new(peer, area, depth));
        Ok(())
    }

    /// Attaches the transmit channel: this side is the TMM receiver, whose read-only view
    /// of the application's data area the NIC maps device-read-only.
    pub fn attach_tx(&mut self, peer: Peer) -> Result<(), Error> {
        let area = self.nic.add_tx_area(peer.area())?;
        let depth = self.nic.tx_space() + BATCH;
        self.tx = Some(Side::new(peer, area, depth));
        Ok(())
    }

    /// The NIC.
    pub fn nic(&mut self) -> &mut N {
        &mut self.nic
    }

    /// Counters.
    pub fn stats(&self) -> PortStats {
        self.stats
    }

    /// Moves one batch each way: empty buffers to the NIC, received frames to the
    /// application, frames to send to the NIC, sent buffers back. Never blocks.
    pub fn step(&mut self) -> Result<Work, Error> {
        let mut moved = 0;
        if let Some(rx) = &mut self.rx {
            // Post only what the ring has room for, so nothing popped waits here.
            let room = self.nic.rx_space().min(BATCH);
            let n = rx.peer.recv(&mut self.scratch[..room])?;
            let mut at = 0;
            while at < n {
                match self.nic.rx_post(rx.area, &self.scratch[at..n]) {
                    Ok(k) => {
                        at += k;
                        if k == 0 {
                            break;
                        }
                    }
                    Err(e) => {
                        // Skip the refused IOrec: the application's pool still counts
                        // it as lent, which is where its accounting shows the loss.
                        let Some(k) = e.accepted() else { return Err(e) };
                        log::warn!("rx buffer refused by the NIC: {e}");
                        self.stats.refused += 1;
                        at += k + 1;
                    }
                }
            }
            self.stats.rx_posted += n as u64;
            moved += n;
            rx.flush()?;
            if let Some(batch) = self.nic.rx_poll(&mut self.scratch) {
                debug_assert_eq!(batch.area, rx.area);
                rx.held.extend_from_slice(&self.scratch[..batch.count]);
                self.stats.rx_delivered += batch.count as u64;
                moved += batch.count;
                rx.flush()?;
            }
        }
        if let Some(tx) = &mut self.tx {
            if let Some(batch) = self.nic.tx_reclaim(&mut self.scratch) {
                tx.held.extend_from_slice(&self.scratch[..batch.count]);
                self.stats.tx_returned += batch.count as u64;
                moved += batch.count;
            }
            tx.flush()?;
            // Take new frames only when the last refusals went back, and only as many as
            // the descriptor ring surely holds (an IOrec needs one per extent).
            if tx.held.is_empty() {
                let room = (self.nic.tx_space() / rbuf::MAX_EXTENTS).min(BATCH);
                let n = tx.peer.recv(&mut self.scratch[..room])?;
                let mut at = 0;
                while at < n {
                    match self.nic.tx_submit(tx.area, &self.scratch[at..n]) {
                        Ok(k) => {
                            at += k;
                            self.stats.tx_queued += k as u64;
                            if k == 0 {
                                // Cannot happen with `room` above; hand the rest back.
                                tx.held.extend_from_slice(&self.scratch[at..n]);
                                break;
                            }
                        }
                        Err(e) => {
                            let Some(k) = e.accepted() else { return Err(e) };
                            log::warn!("tx frame refused by the NIC: {e}");
                            self.stats.tx_queued += k as u64;
                            self.stats.refused += 1;
                            tx.held.push(self.scratch[at + k]);
                            at += k + 1;
                        }
                    }
                }
                moved += n;
                tx.flush()?;
            }
        }
        Ok(Work { moved })
    }
}

impl From<rbuf::Error> for Error {
    fn from(e: rbuf::Error) -> Error {
        Error::Channel(e)
    }
}
