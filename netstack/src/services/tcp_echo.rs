//! TCP echo (RFC 862): every byte goes back on the same connection.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;

use super::{Service, relisten};
use crate::{Error, Stack};

/// A TCP echo server on one port, up to `connections` at once.
#[derive(Debug)]
pub struct TcpEcho {
    port: u16,
    handles: Vec<SocketHandle>,
    buf: Vec<u8>,
    /// Bytes echoed.
    pub echoed_bytes: u64,
}

impl TcpEcho {
    /// Listens on `port` of `stack` with `connections` sockets.
    pub fn new<D: Device>(
        stack: &mut Stack<D>,
        port: u16,
        connections: usize,
    ) -> Result<TcpEcho, Error> {
        let mut handles = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let h = stack.add_tcp_socket();
            relisten(stack.sockets().get_mut::<tcp::Socket>(h), port)?;
            handles.push(h);
        }
        Ok(TcpEcho {
            port,
            handles,
            buf: vec![0; 64 << 10],
            echoed_bytes: 0,
        })
    }
}

impl Service for TcpEcho {
    fn poll(&mut self, sockets: &mut SocketSet<'_>) -> Result<bool, Error> {
        let mut did = false;
        for &h in &self.handles {
            let s = sockets.get_mut::<tcp::Socket>(h);
            did |= relisten(s, self.port)?;
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(self.buf.len());
                let Ok(n) = s.recv_slice(&mut self.buf[..room]) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                let sent = s.send_slice(&self.buf[..n]).unwrap_or(0);
                debug_assert_eq!(sent, n, "room was checked");
                self.echoed_bytes += n as u64;
                did = true;
            }
            // The client finished and everything went back: finish too.
            if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
                s.close();
                did = true;
            }
        }
        Ok(did)
    }
}
