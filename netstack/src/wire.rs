//! Ports made of rbuf channels alone: two stacks back to back.
//!
//! Each stack transmits on a TMM channel over its own data area, as it would to a NIC
//! port; the *other stack* is the receiver of that channel ([`TmmRx`]): it reads the
//! frames through its read-only mapping of the sender's area and returns each buffer
//! once read. There is no wire process in between and no copy: the bytes smoltcp
//! writes on one side are the bytes smoltcp reads on the other. The same two channels
//! work within one process ([`pair`]) and between two ([`accept`] / [`connect`] over a
//! Unix socket, the rbuf handshake passing the areas with `SCM_RIGHTS`).

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use rbuf::connect::{self, Config, Endpoint, Listener};
use rbuf::{DataArea, Mode, PagePolicy, Pool};

use crate::{Error, RbufDevice, RxAccess, TmmRx, TxChannel};

/// Sizes of one stack's side of a wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireConfig {
    /// Ring size in IOrecs, a power of two: frames in flight one way.
    pub slots: usize,
    /// Buffer size in the transmit area, bytes (a multiple of 64, at least a frame).
    pub buffer_bytes: u32,
    /// Transmit buffers (the area is `buffers * buffer_bytes`).
    pub buffers: usize,
    /// What backs the transmit area.
    pub pages: PagePolicy,
}

impl Default for WireConfig {
    fn default() -> WireConfig {
        WireConfig {
            slots: 256,
            buffer_bytes: 2048,
            buffers: 512,
            pages: PagePolicy::PreferHuge,
        }
    }
}

impl WireConfig {
    fn area(&self) -> Result<(Arc<DataArea>, Pool), Error> {
        let bytes = self.buffers * self.buffer_bytes as usize;
        let area = DataArea::create_named(c"netstack-tx", bytes, self.pages).map_err(Error::tx)?;
        let pool = Pool::slots(area.len(), self.buffer_bytes);
        Ok((Arc::new(area), pool))
    }
}

/// One stack's end of a back-to-back wire.
#[derive(Debug)]
pub struct WireEnd {
    /// This stack's transmit channel (master of its own area).
    pub tx: TxChannel,
    /// The receiving end of the other stack's transmit channel.
    pub rx: TmmRx,
}

impl WireEnd {
    /// The device over both channels.
    pub fn into_device(self, access: RxAccess) -> RbufDevice<TmmRx> {
        RbufDevice::new(self.rx, self.tx, access)
    }
}

fn master(e: Endpoint) -> Result<rbuf::Master, Error> {
    e.into_master().map_err(Error::tx)
}

fn peer(e: Endpoint) -> Result<rbuf::Peer, Error> {
    e.into_peer().map_err(Error::rx)
}

/// Two stacks' ends wired to each other in this process.
pub fn pair(a: &WireConfig, b: &WireConfig) -> Result<(WireEnd, WireEnd), Error> {
    if a.slots != b.slots {
        return Err(Error::Config(format!(
            "both ends need one ring size ({} vs {})",
            a.slots, b.slots
        )));
    }
    let (a_area, a_pool) = a.area()?;
    let (b_area, b_pool) = b.area()?;
    let (a_tx, b_rx) =
        connect::pair(Mode::Tmm, a.slots, a_area, a_pool.capacity()).map_err(Error::tx)?;
    let (b_tx, a_rx) =
        connect::pair(Mode::Tmm, b.slots, b_area, b_pool.capacity()).map_err(Error::tx)?;
    let end = |tx: Endpoint, pool: Pool, rx: Endpoint| -> Result<WireEnd, Error> {
        Ok(WireEnd {
            tx: TxChannel::new(master(tx)?, pool)?,
            rx: TmmRx::new(peer(rx)?),
        })
    };
    Ok((end(a_tx, a_pool, a_rx)?, end(b_tx, b_pool, b_rx)?))
}

/// The listening stack's end of a wire to another process: accepts this stack's
/// transmit channel, then the other's (the order [`connect`] uses).
pub fn accept(listener: &Listener, cfg: &WireConfig) -> Result<WireEnd, Error> {
    let (area, pool) = cfg.area()?;
    let tx = listener
        .accept(
            Config::originator(Mode::Tmm, cfg.slots, area),
            pool.capacity(),
        )
        .map_err(Error::tx)?;
    let rx = listener
        .accept(Config::receiver(Mode::Tmm, cfg.slots), 0)
        .map_err(Error::rx)?;
    Ok(WireEnd {
        tx: TxChannel::new(master(tx)?, pool)?,
        rx: TmmRx::new(peer(rx)?),
    })
}

/// The connecting stack's end of a wire to the stack listening at `path`.
pub fn connect(path: &Path, cfg: &WireConfig) -> Result<WireEnd, Error> {
    let rx =
        connect::connect(path, Config::receiver(Mode::Tmm, cfg.slots), 0).map_err(Error::rx)?;
    let (area, pool) = cfg.area()?;
    let tx = connect::connect(
        path,
        Config::originator(Mode::Tmm, cfg.slots, area),
        pool.capacity(),
    )
    .map_err(Error::tx)?;
    Ok(WireEnd {
        tx: TxChannel::new(master(tx)?, pool)?,
        rx: TmmRx::new(peer(rx)?),
    })
}
