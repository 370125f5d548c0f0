//! Opening NICs for the applications: whatever supported NIC is at a PCI address
//! ([`AnyNic`]: an Intel 8254x or a virtio-net device), configured the way the
//! applications use it, and the facts about it they need.

use std::time::Duration;

use driver::{AnyConfig, AnyNic, AreaId, DriverKind, Nic, PciAddress};
use rbuf::{IoRec, Pool};

/// Bytes of every buffer the applications post for receive: one 2 KiB slot, enough for a
/// 1514-byte frame on either driver (virtio-net's 12-byte header included).
pub const BUFFER_BYTES: u32 = 2048;

/// How long QEMU's e1000 holds receive back after the RCTL write of bring-up (1 s of guest
/// time, `set_rx_control` in hw/net/e1000.c), with a margin. Frames sent meanwhile wait in
/// QEMU's backend or are lost, so the applications wait before they say "ready".
const QEMU_E1000_RCTL_PAUSE: Duration = Duration::from_millis(1200);

/// Which frames a port receives besides those addressed to its MAC and broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxFilter {
    /// Every frame on the wire (forwarders, generators, capture).
    Promiscuous,
    /// Every multicast frame too (a host stack: IPv6 neighbour discovery uses
    /// solicited-node multicast groups).
    AllMulticast,
    /// Only its own unicast and broadcast frames.
    Unicast,
}

/// The driver configuration the applications use: receive buffers of
/// [`BUFFER_BYTES`], polling, the receive filter `filter`.
pub fn config(filter: RxFilter) -> AnyConfig {
    let mut c = AnyConfig::default();
    let promiscuous = filter == RxFilter::Promiscuous;
    let all_multicast = filter == RxFilter::AllMulticast;
    c.e1000.promiscuous = promiscuous;
    c.e1000.all_multicast = all_multicast;
    c.e1000.rx_buffer_bytes = BUFFER_BYTES;
    c.virtio_net.promiscuous = promiscuous;
    c.virtio_net.all_multicast = all_multicast;
    c.virtio_net.rx_buffer_bytes = BUFFER_BYTES;
    c
}

/// Opens the NIC at `pci` (parsed here, so a malformed address is the driver's one-line
/// error) with [`config`].
pub fn open(pci: &str, filter: RxFilter) -> Result<AnyNic, driver::Error> {
    let addr: PciAddress = pci.parse()?;
    AnyNic::open(addr, &config(filter))
}

/// The most descriptors either ring of a NIC opened with `config` can hold: what a data
/// area must have room for, per direction, to keep the rings full.
pub fn ring_entries(config: &AnyConfig) -> usize {
    [
        config.e1000.rx_ring_size as usize,
        config.e1000.tx_ring_size as usize,
        usize::from(config.virtio_net.rx_queue_size),
        usize::from(config.virtio_net.tx_queue_size),
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// How long after opening `nic` receive may still be held back by the device model.
pub fn settle_time(nic: &AnyNic) -> Duration {
    if nic.kind() == DriverKind::E1000 && nic.is_qemu() {
        QEMU_E1000_RCTL_PAUSE
    } else {
        Duration::ZERO
    }
}

/// Posts free buffers of `pool` (slots of at least [`BUFFER_BYTES`]) to `nic`'s receive
/// ring in `area`: as many as the ring has room for, at most `scratch.len()`. Buffers the
/// NIC did not take go back to the pool. Returns how many it took. An error means the NIC
/// refused one of our own IOrecs (a wrong area or configuration, which nothing later would
/// fix); the buffers it took before that one stay posted.
pub fn post_rx<N: Nic>(
    nic: &mut N,
    area: AreaId,
    pool: &mut Pool,
    scratch: &mut [IoRec],
) -> Result<usize, driver::Error> {
    let want = nic.rx_space().min(pool.available()).min(scratch.len());
    let mut n = 0;
    while n < want {
        let Ok(id) = pool.alloc(BUFFER_BYTES as usize) else {
            break;
        };
        scratch[n] = pool.iorec(id);
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    let result = nic.rx_post(area, &scratch[..n]);
    let posted = match &result {
        Ok(k) => *k,
        Err(e) => e.accepted().unwrap_or(0),
    };
    for rec in &scratch[posted..n] {
        pool.free(rec.tag() as u32);
    }
    result
}

/// Events per second between two readings of a counter `secs` apart (0 if no time passed).
pub fn per_sec(now: u64, then: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        now.saturating_sub(then) as f64 / secs
    } else {
        0.0
    }
}
