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
