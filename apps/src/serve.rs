//! `rbufnic serve`: the project's TCP/IP stack on a NIC, with a UDP and a TCP echo
//! service, a static-file HTTP server and an upload sink.
//!
//! The layers, each over the one below, in one thread:
//!
//! ```text
//!   services (echo, HTTP, sink)   netstack::services over the stack's sockets
//!   netstack::Stack (smoltcp)     an RbufDevice: RX as RMM master, TX as TMM master
//!   rbuf channels                 one RMM channel (receive), one TMM channel (transmit)
//!   driver::Port                  the NIC as the peer of both channels
//!   the NIC (VFIO)                e1000 or virtio-net
//! ```
//!
//! Received frames are read by smoltcp where the NIC wrote them; transmitted frames are
//! written by smoltcp straight into a buffer of the transmit area that the NIC then reads.
//! Only IOrecs travel between the port and the stack.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use driver::{Nic, Port, PortStats};
use netstack::services::{HttpServer, Service, TcpEcho, TcpSink, UdpEcho, Upload};
use netstack::smoltcp::wire::{EthernetAddress, Ipv4Address};
use netstack::{DeviceStats, RbufDevice, RmmRx, RxAccess, Stack, StackConfig, TxChannel};
use rbuf::connect::pair;
use rbuf::{DataArea, Mode, PagePolicy, Pool};

use crate::nics;

/// Slots of each channel ring.
const RING_SLOTS: usize = 256;
/// Receive buffers kept posted to the NIC through the port.
const RX_POSTED: usize = 192;
/// Buffers of each data area (receive, transmit).
const AREA_BUFFERS: usize = 1024;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The NIC or its port failed.
    #[error("{0}")]
    Driver(#[from] driver::Error),
    /// A channel or data area could not be set up.
    #[error("{0}")]
    Rbuf(#[from] rbuf::Error),
    /// The stack or a service failed.
    #[error("{0}")]
    Stack(#[from] netstack::Error),
}

/// What to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The stack's addressing and TCP tuning (its MAC is replaced by the NIC's).
    pub stack: StackConfig,
    /// UDP echo port (`None`: off).
    pub udp_echo: Option<u16>,
    /// TCP echo port (`None`: off).
    pub tcp_echo: Option<u16>,
    /// HTTP port and the directory whose files it serves (`None`: off).
    pub http: Option<(u16, PathBuf)>,
    /// Upload sink port (`None`: off).
    pub sink: Option<u16>,
    /// Concurrent connections per TCP service.
    pub connections: usize,
    /// Stop after this long (`None`: until the stop flag).
    pub duration: Option<Duration>,
    /// Period of [`Event::Stats`].
    pub stats_interval: Duration,
}

/// Counters of a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Time since serving started.
    pub elapsed: Duration,
    /// The port's counters (frames between NIC and channels).
    pub port: PortStats,
    /// The device's counters (frames between channels and smoltcp).
    pub device: DeviceStats,
    /// UDP datagrams echoed.
    pub udp_echoed: u64,
    /// HTTP responses queued, by status: 200, 400, 404, 405.
    pub http_served: [u64; 4],
    /// Uploads received in full.
    pub uploads: u64,
}

/// What a run reports to its caller (the library never prints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The stack is up; services listen.
    Ready {
        /// The NIC's MAC.
        mac: driver::MacAddr,
        /// The IPv4 address, if configured already (not yet with DHCP).
        ipv4: Option<Ipv4Address>,
        /// Files the HTTP server has.
        files: usize,
    },
    /// DHCP gave the stack an address (or took it away: `None`).
    Ipv4(Option<Ipv4Address>),
    /// An upload arrived in full.
    Upload {
        /// Its bytes.
        bytes: u64,
        /// Their SHA-256.
        sha256: [u8; 32],
    },
    /// Periodic counters.
    Stats(ServeStats),
}

struct Services {
    udp: Option<UdpEcho>,
    tcp: Option<TcpEcho>,
    http: Option<HttpServer>,
    sink: Option<TcpSink>,
}

/// Runs the stack and its services on `nic` until `stop` or the duration; returns the
/// final counters. `settle` is how long the NIC may hold receive back after opening
/// ([`nics::settle_time`]); [`Event::Ready`] comes after it.
pub fn serve<N: Nic>(
    nic: N,
    settle: Duration,
    opts: &ServeOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event),
) -> Result<ServeStats, ServeError> {
    let files = match &opts.http {
        Some((_, dir)) => Some(netstack::services::http::load_dir(dir)?),
        None => None,
    };
    let file_count = files.as_ref().map_or(0, |f| f.len());
    let mac = nic.mac();
    let mut port = Port::new(nic);
    let bytes = AREA_BUFFERS * nics::BUFFER_BYTES as usize;
    // Receive: the port (driver) originates into the area; the stack is the RMM master.
    let rx_area = Arc::new(DataArea::create(bytes, PagePolicy::PreferHuge)?);
    let rx_pool = Pool::slots(rx_area.len(), nics::BUFFER_BYTES);
    let (drv_rx, app_rx) = pair(Mode::Rmm, RING_SLOTS, rx_area, rx_pool.capacity())?;
    port.attach_rx(drv_rx.into_peer()?)?;
    let rx = RmmRx::new(app_rx.into_master()?, rx_pool, RX_POSTED)?;
    // Transmit: the stack originates its own area and is the TMM master.
    let tx_area = Arc::new(DataArea::create(bytes, PagePolicy::PreferHuge)?);
    let tx_pool = Pool::slots(tx_area.len(), nics::BUFFER_BYTES);
    let (app_tx, drv_tx) = pair(Mode::Tmm, RING_SLOTS, tx_area, tx_pool.capacity())?;
    port.attach_tx(drv_tx.into_peer()?)?;
    let tx = TxChannel::new(app_tx.into_master()?, tx_pool)?;
    // The NIC is driven by this process: the frames it writes can be read in place.
    let device = RbufDevice::new(rx, tx, RxAccess::Borrow);
    let handle = device.handle();
    let mut config = opts.stack.clone();
    config.mac = EthernetAddress(mac.0);
    let mut stack = Stack::new(device, &config)?;
    let conns = opts.connections.max(1);
    let mut services = Services {
        udp: opts
            .udp_echo
            .map(|p| UdpEcho::new(&mut stack, p, 64))
            .transpose()?,
        tcp: opts
            .tcp_echo
            .map(|p| TcpEcho::new(&mut stack, p, conns))
            .transpose()?,
        http: match (&opts.http, files) {
            (Some((p, _)), Some(files)) => Some(HttpServer::new(&mut stack, *p, conns, files)?),
            _ => None,
        },
        sink: opts
            .sink
            .map(|p| TcpSink::new(&mut stack, p, conns, false))
            .transpose()?,
    };
    let started = Instant::now();
    // Receive may be held back after bring-up (QEMU's e1000): post buffers meanwhile.
    while started.elapsed() < settle && !stop.load(Ordering::Relaxed) {
        port.step()?;
        stack.poll()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut ipv4 = stack.ipv4_addr();
    on_event(Event::Ready {
        mac,
        ipv4,
        files: file_count,
    });
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let mut next_stats = started + opts.stats_interval;
    let mut uploads = 0u64;
    let stats = |port: &Port<N>, s: &Services, uploads: u64| ServeStats {
        elapsed: started.elapsed(),
        port: port.stats(),
        device: handle.stats(),
        udp_echoed: s.udp.as_ref().map_or(0, |u| u.echoed),
        http_served: s.http.as_ref().map_or([0; 4], |h| h.served),
        uploads,
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let mut busy = port.step()?.moved > 0;
        busy |= stack.poll()?;
        busy |= poll_services(&mut stack, &mut services)?;
        if let Some(sink) = services.sink.as_mut() {
            for Upload { bytes, sha256, .. } in sink.take_uploads() {
                uploads += 1;
                on_event(Event::Upload { bytes, sha256 });
            }
        }
        let now_ipv4 = stack.ipv4_addr();
        if now_ipv4 != ipv4 {
            ipv4 = now_ipv4;
            on_event(Event::Ipv4(ipv4));
        }
        if now >= next_stats {
            next_stats = (next_stats + opts.stats_interval).max(now);
            on_event(Event::Stats(stats(&port, &services, uploads)));
        }
        if !busy {
            std::thread::yield_now();
        }
    }
    Ok(stats(&port, &services, uploads))
}

fn poll_services<D: netstack::smoltcp::phy::Device>(
    stack: &mut Stack<D>,
    s: &mut Services,
) -> Result<bool, ServeError> {
    let sockets = stack.sockets();
    let mut busy = false;
    if let Some(x) = s.udp.as_mut() {
        busy |= x.poll(sockets)?;
    }
    if let Some(x) = s.tcp.as_mut() {
        busy |= x.poll(sockets)?;
    }
    if let Some(x) = s.http.as_mut() {
        busy |= x.poll(sockets)?;
    }
    if let Some(x) = s.sink.as_mut() {
        busy |= x.poll(sockets)?;
    }
    Ok(busy)
}
