//! A TCP sink: takes an upload, hashes it with SHA-256 (and keeps it, if asked), and
//! closes once the client has finished sending.

use sha2::{Digest, Sha256};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;

use super::{Service, relisten};
use crate::{Error, Stack};

/// What a sink does with the bytes it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Counts them (each byte is handed to the sink once, in place in the socket buffer).
    Count,
    /// Counts and hashes them with SHA-256.
    Hash,
    /// Counts, hashes and stores them.
    Store,
}

/// One upload received in full (the client closed its side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// Bytes received.
    pub bytes: u64,
    /// Their SHA-256 (zero with [`Keep::Count`]).
    pub sha256: [u8; 32],
    /// The bytes themselves, if the sink keeps them.
    pub data: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Conn {
    hasher: Option<Sha256>,
    bytes: u64,
    data: Option<Vec<u8>>,
    /// A connection has been established.
    active: bool,
    /// The upload was recorded; the socket is closing.
    closing: bool,
}

/// The sink on one port.
#[derive(Debug)]
pub struct TcpSink {
    port: u16,
    keep: Keep,
    conns: Vec<(SocketHandle, Conn)>,
    uploads: Vec<Upload>,
}

impl TcpSink {
    /// Listens on `port` of `stack` with `connections` sockets, hashing each upload and,
    /// if `store`, keeping its bytes.
    pub fn new<D: Device>(
        stack: &mut Stack<D>,
        port: u16,
        connections: usize,
        store: bool,
    ) -> Result<TcpSink, Error> {
        let keep = if store { Keep::Store } else { Keep::Hash };
        TcpSink::with_keep(stack, port, connections, keep)
    }

    /// Listens on `port` of `stack` with `connections` sockets, doing with each upload
    /// what `keep` says.
    pub fn with_keep<D: Device>(
        stack: &mut Stack<D>,
        port: u16,
        connections: usize,
        keep: Keep,
    ) -> Result<TcpSink, Error> {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let h = stack.add_tcp_socket();
            relisten(stack.sockets().get_mut::<tcp::Socket>(h), port)?;
            conns.push((h, Conn::new(keep)));
        }
        Ok(TcpSink {
            port,
            keep,
            conns,
            uploads: Vec::new(),
        })
    }

    /// Uploads completed so far, taken.
    pub fn take_uploads(&mut self) -> Vec<Upload> {
        std::mem::take(&mut self.uploads)
    }

    /// Uploads still open (no FIN yet) that have bytes: their count and the SHA-256 of
    /// what arrived so far (zero with [`Keep::Count`]).
    pub fn in_progress(&self) -> Vec<(u64, [u8; 32])> {
        self.conns
            .iter()
            .filter(|(_, c)| c.bytes > 0 && !c.closing)
            .map(|(_, c)| {
                let digest = c.hasher.clone().map_or([0; 32], |h| h.finalize().into());
                (c.bytes, digest)
            })
            .collect()
    }

    /// Bytes received on connections still open.
    pub fn bytes_in_progress(&self) -> u64 {
        self.conns.iter().map(|(_, c)| c.bytes).sum()
    }
}

impl Conn {
    fn new(keep: Keep) -> Conn {
        Conn {
            hasher: (keep != Keep::Count).then(Sha256::new),
            bytes: 0,
            data: (keep == Keep::Store).then(Vec::new),
            active: false,
            closing: false,
        }
    }
}

impl Service for TcpSink {
    fn poll(&mut self, sockets: &mut SocketSet<'_>) -> Result<bool, Error> {
        let mut did = false;
        for (h, conn) in &mut self.conns {
            let s = sockets.get_mut::<tcp::Socket>(*h);
            if relisten(s, self.port)? {
                if conn.active && !conn.closing {
                    log::warn!("upload aborted after {} bytes", conn.bytes);
                }
                *conn = Conn::new(self.keep);
                did = true;
                continue;
            }
            if conn.closing {
                continue;
            }
            while s.can_recv() {
                let n = s
                    .recv(|d| {
                        if let Some(h) = conn.hasher.as_mut() {
                            h.update(&*d);
                        }
                        if let Some(v) = conn.data.as_mut() {
                            v.extend_from_slice(d);
                        }
                        (d.len(), d.len())
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                conn.bytes += n as u64;
                conn.active = true;
                did = true;
            }
            if s.may_recv() {
                conn.active = true;
            }
            if conn.active && !s.may_recv() && s.recv_queue() == 0 {
                // The client sent FIN after its last byte: the upload is whole.
                let done = std::mem::replace(conn, Conn::new(self.keep));
                conn.closing = true;
                self.uploads.push(Upload {
                    bytes: done.bytes,
                    sha256: done.hasher.map_or([0; 32], |h| h.finalize().into()),
                    data: done.data,
                });
                s.close();
                did = true;
            }
        }
        Ok(did)
    }
}
