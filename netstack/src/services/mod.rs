//! Small services over a stack's sockets, for `rbufnic serve`, tests and benchmarks.
//!
//! Each one owns its sockets (made through [`crate::Stack`]) and is driven by calling its
//! `poll` with the stack's socket set after each [`crate::Stack::poll`]; none of them
//! touches the device. Servers re-listen after every connection, with one listening
//! socket per concurrent connection they accept.

#![forbid(unsafe_code)]

pub mod client;
pub mod http;
pub mod pattern;
pub mod sink;
pub mod tcp_echo;
pub mod udp_echo;

pub use client::{BulkSend, HttpGet};
pub use http::HttpServer;
pub use pattern::Pattern;
pub use sink::{Keep, TcpSink, Upload};
pub use tcp_echo::TcpEcho;
pub use udp_echo::UdpEcho;

use smoltcp::iface::SocketSet;

/// A service driven by the poll loop.
pub trait Service {
    /// Serves what its sockets have; returns whether it did anything.
    fn poll(&mut self, sockets: &mut SocketSet<'_>) -> Result<bool, crate::Error>;
}

/// Puts a TCP socket that has finished a connection (or never had one) back to listening.
pub(crate) fn relisten(
    s: &mut smoltcp::socket::tcp::Socket<'_>,
    port: u16,
) -> Result<bool, crate::Error> {
    if s.is_open() {
        return Ok(false);
    }
    s.listen(port).map_err(|e| crate::Error::Socket {
        what: format!("listen on TCP port {port}"),
        reason: e.to_string(),
    })?;
    Ok(true)
}
