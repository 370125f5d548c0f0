//! UDP echo (RFC 862): every datagram goes back to where it came from.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::udp;

use super::Service;
use crate::{Error, Stack};

/// A UDP echo server on one port.
#[derive(Debug)]
pub struct UdpEcho {
    handle: SocketHandle,
    buf: Vec<u8>,
    /// Datagrams echoed.
    pub echoed: u64,
}

impl UdpEcho {
    /// Binds `port` on `stack`, buffering up to `packets` datagrams each way.
    pub fn new<D: Device>(
        stack: &mut Stack<D>,
        port: u16,
        packets: usize,
    ) -> Result<UdpEcho, Error> {
        let handle = stack.add_udp_socket(packets, packets * 1500);
        stack
            .sockets()
            .get_mut::<udp::Socket>(handle)
            .bind(port)
            .map_err(|e| Error::Socket {
                what: format!("bind UDP port {port}"),
                reason: e.to_string(),
            })?;
        Ok(UdpEcho {
            handle,
            buf: vec![0; 65536],
            echoed: 0,
        })
    }
}

impl Service for UdpEcho {
    fn poll(&mut self, sockets: &mut SocketSet<'_>) -> Result<bool, Error> {
        let s = sockets.get_mut::<udp::Socket>(self.handle);
        let mut did = false;
        // A datagram leaves the receive buffer only once its echo is queued, so a full
        // transmit buffer delays echoes and never loses one.
        while s.can_recv() && s.can_send() {
            let (n, endpoint) = match s.peek_slice(&mut self.buf) {
                Ok((n, meta)) => (n, meta.endpoint),
                Err(_) => break,
            };
            if s.send_slice(&self.buf[..n], endpoint).is_err() {
                break;
            }
            let _ = s.recv();
            self.echoed += 1;
            did = true;
        }
        Ok(did)
    }
}
