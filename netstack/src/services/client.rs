//! Clients for tests and benchmarks: a bulk TCP sender and an HTTP/1.1 GET.

use sha2::{Digest, Sha256};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

use super::{Pattern, Service};
use crate::{Error, Stack};

fn connect<D: Device>(stack: &mut Stack<D>, remote: IpEndpoint) -> Result<SocketHandle, Error> {
    let h = stack.add_tcp_socket();
    let port = stack.ephemeral_port();
    let (iface, sockets) = stack.parts();
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), remote, port)
        .map_err(|e| Error::Socket {
            what: format!("connect to {remote}"),
            reason: e.to_string(),
        })?;
    Ok(h)
}

/// Where a client connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Opening,
    Open,
    Closing,
    Done,
}

/// Tracks a client socket's phases; an error if it closes before it should.
fn advance(phase: &mut Phase, s: &tcp::Socket<'_>, what: &str) -> Result<(), Error> {
    use tcp::State::*;
    match (*phase, s.state()) {
        (Phase::Opening, Established) => *phase = Phase::Open,
        (Phase::Opening | Phase::Open, Closed) => {
            return Err(Error::Socket {
                what: what.to_owned(),
                reason: "connection refused or reset".into(),
            });
        }
        (Phase::Closing, TimeWait | Closed) => *phase = Phase::Done,
        _ => {}
    }
    Ok(())
}

/// Sends `total` bytes of a [`Pattern`] on a new connection, closes, and finishes when the
/// peer has closed too (so everything was received and acknowledged).
#[derive(Debug)]
pub struct BulkSend {
    handle: SocketHandle,
    remote: IpEndpoint,
    total: u64,
    sent: u64,
    pattern: Pattern,
    hasher: Option<Sha256>,
    digest: Option<[u8; 32]>,
    phase: Phase,
}

impl BulkSend {
    /// Connects to `remote`; `hash` computes the SHA-256 of what is sent.
    pub fn start<D: Device>(
        stack: &mut Stack<D>,
        remote: IpEndpoint,
        total: u64,
        pattern: Pattern,
        hash: bool,
    ) -> Result<BulkSend, Error> {
        Ok(BulkSend {
            handle: connect(stack, remote)?,
            remote,
            total,
            sent: 0,
            pattern,
            hasher: hash.then(Sha256::new),
            digest: None,
            phase: Phase::Opening,
        })
    }

    /// Whether all was sent and both sides closed.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether every byte was sent and acknowledged by the peer (the close handshake may
    /// still be under way).
    pub fn all_acked(&self, sockets: &mut SocketSet<'_>) -> bool {
        self.sent == self.total
            && self.phase != Phase::Opening
            && sockets.get_mut::<tcp::Socket>(self.handle).send_queue() == 0
    }

    /// The socket's TCP state.
    pub fn state(&self, sockets: &mut SocketSet<'_>) -> tcp::State {
        sockets.get_mut::<tcp::Socket>(self.handle).state()
    }

    /// Bytes handed to the socket so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// SHA-256 of everything sent, once all was sent (if hashing).
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.digest
    }
}

impl Service for BulkSend {
    fn poll(&mut self, sockets: &mut SocketSet<'_>) -> Result<bool, Error> {
        let s = sockets.get_mut::<tcp::Socket>(self.handle);
        advance(&mut self.phase, s, &format!("send to {}", self.remote))?;
        let mut did = false;
        if self.phase == Phase::Open {
            while self.sent < self.total && s.can_send() {
                let left = self.total - self.sent;
                let (pattern, sent, hasher) = (&self.pattern, self.sent, &mut self.hasher);
                let n = s
                    .send(|buf| {
                        let n = (buf.len() as u64).min(left) as usize;
                        pattern.fill(sent, &mut buf[..n]);
                        if let Some(h) = hasher.as_mut() {
                            h.update(&buf[..n]);
                        }
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                self.sent += n as u64;
                did = true;
            }
            if self.sent == self.total {
                self.digest = self.hasher.take().map(|h| h.finalize().into());
                s.close();
                self.phase = Phase::Closing;
                did = true;
            }
        }
        Ok(did)
    }
}

/// Fetches one URL path with HTTP/1.1 GET, hashing (and optionally keeping) the body.
#[derive(Debug)]
pub struct HttpGet {
    handle: SocketHandle,
    remote: IpEndpoint,
    request: Vec<u8>,
    request_sent: usize,
    head: Vec<u8>,
    status: Option<u16>,
    content_length: Option<u64>,
    body_bytes: u64,
    hasher: Sha256,
    body: Option<Vec<u8>>,
    digest: Option<[u8; 32]>,
    phase: Phase,
}

impl HttpGet {
    /// Connects to `remote` and asks for `path`; `keep` keeps the body.
    pub fn start<D: Device>(
        stack: &mut Stack<D>,
        remote: IpEndpoint,
        path: &str,
        keep: bool,
    ) -> Result<HttpGet, Error> {
        Ok(HttpGet {
            handle: connect(stack, remote)?,
            remote,
            request: format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                remote.addr
            )
            .into_bytes(),
            request_sent: 0,
            head: Vec::new(),
            status: None,
            content_length: None,
            body_bytes: 0,
            hasher: Sha256::new(),
            body: keep.then(Vec::new),
            digest: None,
            phase: Phase::Opening,
        })
    }

    /// The response status, once the head has arrived.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Body bytes received so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// The body's SHA-256, once all of it arrived.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.digest
    }

    /// The body, if kept and complete.
    pub fn body(&self) -> Option<&[u8]> {
        self.digest.and(self.body.as_deref())
    }

    /// Whether the whole body arrived and the connection closed.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn parse_head(&mut self, head: &[u8]) -> Result<(), Error> {
        let bad = |why: &str| Error::Socket {
            what: format!("GET from {}", self.remote),
            reason: why.to_owned(),
        };
        let text = std::str::from_utf8(head).map_err(|_| bad("response head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            return Err(bad("no status line"));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(bad("not HTTP/1.x"));
        }
        self.status = Some(code.parse().map_err(|_| bad("bad status code"))?);
        for line in lines {
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                self.content_length = Some(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| bad("bad Content-Length"))?,
                );
            }
        }
        if self.content_length.is_none() {
            return Err(bad("no Content-Length"));
        }
        Ok(())
    }

    fn take_body(&mut self, d: &[u8]) {
        self.hasher.update(d);
        if let Some(b) = self.body.as_mut() {
            b.extend_from_slice(d);
        }
        self.body_bytes += d.len() as u64;
    }
}

impl Service for HttpGet {
    fn poll(&mut self, sockets: &mut SocketSet<'_>) -> Result<bool, Error> {
        let s = sockets.get_mut::<tcp::Socket>(self.handle);
        let closed_early = advance(&mut self.phase, s, &format!("GET from {}", self.remote));
        let mut did = false;
        if self.phase == Phase::Open && self.request_sent < self.request.len() && s.can_send() {
            self.request_sent += s
                .send_slice(&self.request[self.request_sent..])
                .unwrap_or(0);
            did = true;
        }
        while s.can_recv() {
            let mut chunk = Vec::new();
            let n = s
                .recv(|d| {
                    chunk.extend_from_slice(d);
                    (d.len(), d.len())
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            did = true;
            if self.status.is_none() {
                self.head.extend_from_slice(&chunk);
                if let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = std::mem::take(&mut self.head);
                    self.parse_head(&head[..end])?;
                    self.take_body(&head[end + 4..]);
                } else if self.head.len() > 16384 {
                    return Err(Error::Socket {
                        what: format!("GET from {}", self.remote),
                        reason: "response head over 16 KiB".into(),
                    });
                }
            } else {
                self.take_body(&chunk);
            }
        }
        if self.digest.is_none() && self.content_length.is_some_and(|l| self.body_bytes >= l) {
            self.digest = Some(std::mem::take(&mut self.hasher).finalize().into());
            s.close();
            self.phase = Phase::Closing;
            did = true;
        }
        if self.digest.is_none() {
            closed_early?;
        }
        Ok(did)
    }
}
