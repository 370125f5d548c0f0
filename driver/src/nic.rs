//! The device-facing interface every NIC driver offers upward (STYLE rule 1: small).
//!
//! Packets never pass through it, only IOrecs naming `(offset, len)` extents in data areas
//! the NIC has DMA-mapped once, at registration:
//!
//! ```text
//! RX (receive master mode): master --empty IOrecs--> rx_post   ... NIC DMA ...
//!                           master <--full IOrecs--- rx_poll   (len = bytes received)
//! TX (transmit master mode): master --full IOrecs--> tx_submit ... NIC DMA ...
//!                            master <--same IOrecs-- tx_reclaim (buffer free again)
//! ```
//!
//! Glue to `rbuf` channels is a thin loop. For each RX area, pop up to `rx_space()` empty
//! IOrecs from its channel and `rx_post` them; then `rx_poll` and push each [`Batch`] to
//! the channel of `batch.area`. TX is the mirror image with `tx_submit` / `tx_reclaim`.
//! Completions come back in submission order, and a batch never mixes areas.

#![forbid(unsafe_code)]

use std::fmt;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use rbuf::{DataArea, IoRec};

use crate::Error;

/// IOrec flag set by `rx_poll`: the NIC reported a receive error (CRC, symbol, sequence,
/// carrier extension or RX data error). The buffer is returned anyway so its owner can
/// recycle it. The length is what the NIC wrote.
pub const IOREC_RX_ERROR: u16 = 1 << 0;
/// IOrec flag set by `rx_poll`: the frame did not end in this buffer (no end-of-packet).
/// The driver never asks for that (buffers are larger than a frame), so it is counted as
/// an error.
pub const IOREC_RX_FRAGMENT: u16 = 1 << 1;

/// A data area registered with one NIC. IDs are small and reused after removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AreaId(pub u16);

/// Completions from one area, in order: `done[..count]` all belong to `area`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The area the IOrecs' extents point into.
    pub area: AreaId,
    /// How many IOrecs were written to the front of the output slice (at least 1).
    pub count: usize,
}

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether this is a usable unicast address (not zero, not multicast).
    pub fn is_unicast(&self) -> bool {
        self.0 != [0; 6] && self.0[0] & 1 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// Link state as the MAC sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LinkStatus {
    /// Link is up.
    pub up: bool,
    /// Negotiated speed in Mb/s (0 when down).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Counters: the NIC's hardware statistics (accumulated in software, since the registers
/// clear on read) and the driver's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stats {
    /// Good packets received (GPRC).
    pub rx_packets: u64,
    /// Good octets received, FCS included (GORC).
    pub rx_bytes: u64,
    /// Good packets transmitted (GPTC).
    pub tx_packets: u64,
    /// Good octets transmitted, FCS included (GOTC).
    pub tx_bytes: u64,
    /// Packets received, good or bad (TPR).
    pub rx_total_packets: u64,
    /// Packets transmitted (TPT).
    pub tx_total_packets: u64,
    /// Broadcast packets received (BPRC).
    pub rx_broadcast: u64,
    /// Multicast packets received (MPRC).
    pub rx_multicast: u64,
    /// Packets dropped for lack of a receive descriptor or FIFO space (MPC).
    pub rx_missed: u64,
    /// Times a packet found no receive descriptor (RNBC).
    pub rx_no_buffer: u64,
    /// Frames with a bad CRC (CRCERRS).
    pub rx_crc_errors: u64,
    /// Frames with other receive errors (RXERRC).
    pub rx_errors: u64,
    /// Undersized frames (RUC).
    pub rx_undersize: u64,
    /// Oversized frames (ROC).
    pub rx_oversize: u64,
    /// Collisions (COLC).
    pub collisions: u64,
    /// Buffers `rx_poll` returned with [`IOREC_RX_ERROR`] or [`IOREC_RX_FRAGMENT`].
    pub rx_error_buffers: u64,
    /// Buffers returned by `rx_poll`.
    pub rx_buffers: u64,
    /// IOrecs returned by `tx_reclaim`.
    pub tx_iorecs: u64,
    /// IOrecs refused by `rx_post` / `tx_submit` (bad extents).
    pub refused_iorecs: u64,
    /// Interrupts serviced.
    pub interrupts: u64,
}

/// What a NIC driver offers the layer above.
pub trait Nic {
    /// The station address.
    fn mac(&self) -> MacAddr;

    /// Current link state.
    fn link(&self) -> LinkStatus;

    /// Hardware and driver counters since the NIC was opened.
    fn stats(&mut self) -> Stats;

    /// Turns promiscuous mode (all unicast and multicast frames) on or off.
    fn set_promiscuous(&mut self, on: bool);

    /// Turns reception of all multicast frames on or off.
    fn set_all_multicast(&mut self, on: bool);

    /// Registers and DMA-maps a data area the NIC receives into (device-writable; the area
    /// must be writable in this process).
    fn add_rx_area(&mut self, area: &DataArea) -> Result<AreaId, Error>;

    /// Registers and DMA-maps a data area the NIC transmits from (device-read-only: the
    /// NIC can never write it).
    fn add_tx_area(&mut self, area: &DataArea) -> Result<AreaId, Error>;

    /// Unmaps an area; refused while any of its buffers is posted or in flight.
    fn remove_area(&mut self, area: AreaId) -> Result<(), Error>;

    /// Free receive descriptors: how many IOrecs `rx_post` accepts now.
    fn rx_space(&self) -> usize;

    /// Free transmit room, in extents: IOrecs whose extents add up to at most this many
    /// are all accepted (e1000: one descriptor per extent; virtio-net: a header
    /// descriptor more per frame, so half its free descriptors).
    fn tx_space(&self) -> usize;

    /// Posts empty buffers, one extent each, in `area`. Returns how many IOrecs from the
    /// front were posted (fewer when the ring fills). An IOrec that cannot be used stops
    /// the batch with an error whose [`Error::accepted`] counts the ones posted before it;
    /// nothing of the refused IOrec reaches the NIC.
    fn rx_post(&mut self, area: AreaId, empty: &[IoRec]) -> Result<usize, Error>;

    /// Takes completed receive buffers, in order, into the front of `full`: the same tags
    /// as posted, each with one extent that is exactly the received frame. The frame lies
    /// inside the posted extent, at its start or after a device header the driver keeps
    /// there (e1000: at the posted offset; virtio-net: 12 bytes in, after the
    /// `virtio_net_hdr`), so read the frame at the returned extent and recycle buffers by
    /// tag. `None` when nothing completed.
    fn rx_poll(&mut self, full: &mut [IoRec]) -> Option<Batch>;

    /// Queues IOrecs of full buffers in `area` for transmission, each as one frame (its
    /// extents in order). All or nothing per IOrec: returns how many from the front were
    /// queued (fewer when the ring fills). Errors as for [`Nic::rx_post`].
    fn tx_submit(&mut self, area: AreaId, recs: &[IoRec]) -> Result<usize, Error>;

    /// Takes IOrecs whose frames were sent, in order, into the front of `done`. `None`
    /// when nothing completed.
    fn tx_reclaim(&mut self, done: &mut [IoRec]) -> Option<Batch>;

    /// Interrupt mode: a descriptor that becomes readable when the NIC interrupts, for an
    /// epoll loop over many NICs and channels. After it fires, [`Nic::wait`] with a zero
    /// timeout acknowledges the interrupt. `None` in polling mode.
    fn event_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Interrupt mode: sleeps until the NIC interrupts or `timeout` passes (`None`:
    /// forever). Returns whether an interrupt came. Fails in polling mode.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_prints_and_classifies() {
        let m = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(m.to_string(), "52:54:00:12:34:56");
        assert!(m.is_unicast());
        assert!(!MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_unicast());
        assert!(!MacAddr::default().is_unicast());
    }
}
