//! smoltcp on rbuf ports.
//!
//! - [`device`]: a `smoltcp::phy::Device` over a receive channel ([`rx`]) and a transmit
//!   channel ([`tx`]): zero-copy receive out of the receive data area, transmit straight
//!   into a buffer of the transmit data area.
//! - [`wire`]: ports made of rbuf channels only: two stacks back to back, in one process
//!   or across two.
//! - [`stack`]: the interface, its sockets and its device, configured by [`config`].
//! - [`services`]: small servers and clients over a stack's sockets (UDP and TCP echo,
//!   a static-file HTTP/1.1 server, an upload sink, a bulk TCP sender).
//!
//! Layers call downward only: services use the stack's sockets, the stack drives the
//! device, the device moves IOrecs. The crate never prints; it logs through `log`.
//!
//! # A stack on a NIC port
//!
//! The application side of a `driver::Port` is two channel ends: the master of the RMM
//! receive channel (the port created the receive area) and the master of the TMM
//! transmit channel over the application's own area. Here `pair` plays the port's half
//! (the `drv_*` ends would go to `Port::attach_rx` / `attach_tx`, or come over a Unix
//! socket from the service daemon):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use netstack::services::{Service, UdpEcho};
//! use netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
//! use netstack::{RbufDevice, RmmRx, RxAccess, Stack, StackConfig, TxChannel};
//! use rbuf::{DataArea, Mode, PagePolicy, Pool, connect::pair};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Receive: the port originates the area, the application posts 128 empty buffers.
//! let rx_area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem)?);
//! let rx_pool = Pool::slots(rx_area.len(), 2048);
//! let (drv_rx, app_rx) = pair(Mode::Rmm, 128, rx_area, rx_pool.capacity())?;
//! // Transmit: the application originates its own area.
//! let tx_area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem)?);
//! let tx_pool = Pool::slots(tx_area.len(), 2048);
//! let (app_tx, drv_tx) = pair(Mode::Tmm, 128, tx_area, tx_pool.capacity())?;
//!
//! let device = RbufDevice::new(
//!     RmmRx::new(app_rx.into_master()?, rx_pool, 128)?,
//!     TxChannel::new(app_tx.into_master()?, tx_pool)?,
//!     RxAccess::Borrow, // the port is trusted to keep to the protocol
//! );
//! let control = device.handle();
//! let config = StackConfig::ipv4(
//!     EthernetAddress([0x02, 0, 0, 0, 0, 1]),
//!     Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 1), 24),
//! );
//! let mut stack = Stack::new(device, &config)?.with_control(control);
//! let mut echo = UdpEcho::new(&mut stack, 7, 64)?;
//! // The poll loop: poll, serve, sleep on the doorbells when there was nothing to do.
//! for _ in 0..3 {
//!     let mut busy = stack.poll()?;
//!     busy |= echo.poll(stack.sockets())?;
//!     if !busy {
//!         stack.wait(Duration::from_millis(1))?;
//!     }
//! }
//! # drop((drv_rx, drv_tx));
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod device;
pub mod error;
pub mod rx;
pub mod services;
pub mod stack;
pub mod tx;
pub mod wire;

pub use config::{Ipv4Setup, Ipv6Setup, StackConfig, TcpTuning};
pub use device::{DeviceStats, MAX_FRAME_BYTES, PortControl, PortHandle, RbufDevice, RxAccess};
pub use error::Error;
pub use rx::{Reorder, RmmRx, RxChannel, TmmRx};
pub use stack::Stack;
pub use tx::TxChannel;
pub use wire::WireConfig;

/// smoltcp, as this crate uses it.
pub use smoltcp;
