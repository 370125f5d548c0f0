//! Connection set-up: a Unix-domain `SOCK_SEQPACKET` socket, a versioned handshake, and
//! the shared-memory file descriptors passed with `SCM_RIGHTS`.
//!
//! Each side creates, before it talks, everything it will write: the producer memory of
//! its outgoing ring, the consumer memory of its incoming ring, its doorbell, and (the
//! originator only) the data area. It sends one [`Hello`] carrying read-only descriptors
//! of all of it; the other side checks the hello (magic, version, mode, roles, ring size,
//! region sizes and seals) and maps what it received read-only. All resources exist once
//! the handshake is done; nothing is allocated afterwards. The socket stays open: its
//! hang-up is how each side learns that the other exited or died.
//!
//! The initiator (the side that connects) sends its hello first; the acceptor checks it,
//! and answers with its own hello or with a refusal that names the mismatch, which the
//! initiator reports as [`Error::Handshake`].

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustix::io::{IoSlice, IoSliceMut};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::channel::{Link, Master, Mode, Peer, Role};
use crate::event::Doorbell;
use crate::ring::{self, Consumer, Producer};
use crate::shm::Region;
use crate::{DataArea, Error};

/// Protocol magic: "RBUFNIC" and a zero.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RBUFNIC\0");
/// Protocol version; a peer with another version is refused. Version 2: ring slots
/// carry sequence stamps (see [`crate::ring`]).
pub const VERSION: u32 = 2;
/// How long the handshake may take before a silent peer is given up on.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const HELLO_BYTES: usize = 48;
const MAX_REASON_BYTES: usize = 200;
const STATUS_OK: u32 = 0;
const STATUS_REFUSED: u32 = 1;

/// The handshake message, 48 bytes little-endian:
/// `magic u64 | version u32 | status u32 | mode u8 | role u8 | pad u16 | pad u32 |
/// slots u64 | area_bytes u64 | ring_bytes u64`, followed on refusal by a reason in UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u32,
    /// 0: accepted; 1: refused (a reason follows).
    pub status: u32,
    /// The channel mode the sender wants.
    pub mode: Mode,
    /// The sender's role.
    pub role: Role,
    /// Ring size in IOrecs.
    pub slots: u64,
    /// Data area size (0 unless the sender is the originator).
    pub area_bytes: u64,
    /// Size of the sender's producer memory.
    pub ring_bytes: u64,
}

impl Hello {
    fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.status.to_le_bytes());
        b[16] = match self.mode {
            Mode::Tmm => 0,
            Mode::Rmm => 1,
        };
        b[17] = match self.role {
            Role::Originator => 0,
            Role::Receiver => 1,
        };
        b[24..32].copy_from_slice(&self.slots.to_le_bytes());
        b[32..40].copy_from_slice(&self.area_bytes.to_le_bytes());
        b[40..48].copy_from_slice(&self.ring_bytes.to_le_bytes());
        b
    }

    /// Parses a hello; any malformed field is a handshake error naming it.
    pub fn decode(b: &[u8]) -> Result<Hello, Error> {
        if b.len() < HELLO_BYTES {
            return Err(Error::Handshake(format!(
                "hello of {} bytes, expected {HELLO_BYTES}",
                b.len()
            )));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let magic = u64_at(0);
        if magic != MAGIC {
            return Err(Error::Handshake(format!(
                "not an rbuf peer (magic {magic:#018x})"
            )));
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(Error::Handshake(format!(
                "peer speaks protocol version {version}, this side {VERSION}"
            )));
        }
        let mode = match b[16] {
            0 => Mode::Tmm,
            1 => Mode::Rmm,
            m => return Err(Error::Handshake(format!("unknown mode {m}"))),
        };
        let role = match b[17] {
            0 => Role::Originator,
            1 => Role::Receiver,
            r => return Err(Error::Handshake(format!("unknown role {r}"))),
        };
        Ok(Hello {
            magic,
            version,
            status: u32_at(12),
            mode,
            role,
            slots: u64_at(24),
            area_bytes: u64_at(32),
            ring_bytes: u64_at(40),
        })
    }
}

/// What one side brings to a channel.
#[derive(Debug, Clone)]
pub struct Config {
    /// Channel mode; both sides must agree.
    pub mode: Mode,
    /// Ring size in IOrecs (a power of two); both sides must agree.
    pub slots: usize,
    /// The data area, for the originator (created by it and writable); `None` for the
    /// receiver.
    pub area: Option<Arc<DataArea>>,
}

impl Config {
    /// The originator's side of a channel over `area`.
    pub fn originator(mode: Mode, slots: usize, area: Arc<DataArea>) -> Config {
        Config {
            mode,
            slots,
            area: Some(area),
        }
    }

    /// The receiver's side of a channel.
    pub fn receiver(mode: Mode, slots: usize) -> Config {
        Config {
            mode,
            slots,
            area: None,
        }
    }

    fn role(&self) -> Role {
        if self.area.is_some() {
            Role::Originator
        } else {
            Role::Receiver
        }
    }
}

/// The local half of a channel, made before the handshake.
struct Local {
    cfg: Config,
    out_memory: Region,
    in_memory: Region,
    bell: Doorbell,
}

impl Local {
    fn new(cfg: Config) -> Result<Local, Error> {
        if let Some(area) = &cfg.area
            && !area.is_writable()
        {
            return Err(Error::Handshake(
                "an originator needs a writable data area".into(),
            ));
        }
        Ok(Local {
            out_memory: ring::create_producer_memory(cfg.slots)?,
            in_memory: ring::create_consumer_memory()?,
            bell: Doorbell::new()?,
            cfg,
        })
    }

    fn hello(&self) -> Hello {
        Hello {
            magic: MAGIC,
            version: VERSION,
            status: STATUS_OK,
            mode: self.cfg.mode,
            role: self.cfg.role(),
            slots: self.cfg.slots as u64,
            area_bytes: self.cfg.area.as_ref().map_or(0, |a| a.len() as u64),
            ring_bytes: self.out_memory.len() as u64,
        }
    }

    /// Read-only descriptors for the peer: data area (originator), producer memory,
    /// consumer memory, doorbell.
    fn fds(&self) -> Result<Vec<OwnedFd>, Error> {
        let mut fds = Vec::with_capacity(4);
        if let Some(area) = &self.cfg.area {
            fds.push(area.readonly_fd()?);
        }
        fds.push(self.out_memory.readonly_fd()?);
        fds.push(self.in_memory.readonly_fd()?);
        fds.push(self.bell.try_clone_fd()?);
        Ok(fds)
    }

    /// Why the peer's hello does not fit ours, if it does not.
    fn mismatch(&self, theirs: &Hello) -> Option<String> {
        if theirs.mode != self.cfg.mode {
            return Some(format!(
                "mode mismatch: peer wants {:?}, this side {:?}",
                theirs.mode, self.cfg.mode
            ));
        }
        if theirs.role == self.cfg.role() {
            return Some(format!("both sides are the {:?}", theirs.role));
        }
        if theirs.slots != self.cfg.slots as u64 {
            return Some(format!(
                "ring size mismatch: peer wants {} slots, this side {}",
                theirs.slots, self.cfg.slots
            ));
        }
        if theirs.ring_bytes != ring::producer_bytes(self.cfg.slots) as u64 {
            return Some(format!(
                "peer's ring memory is {} bytes, expected {}",
                theirs.ring_bytes,
                ring::producer_bytes(self.cfg.slots)
            ));
        }
        if theirs.role == Role::Originator
            && (theirs.area_bytes == 0 || theirs.area_bytes > crate::MAX_AREA_BYTES as u64)
        {
            return Some(format!("peer's data area of {} bytes", theirs.area_bytes));
        }
        None
    }

    /// Maps what the peer sent and joins both halves into a link.
    fn join(self, theirs: Hello, fds: Vec<OwnedFd>, conn: OwnedFd) -> Result<Link, Error> {
        let expected = if theirs.role == Role::Originator {
            4
        } else {
            3
        };
        if fds.len() != expected {
            return Err(Error::Handshake(format!(
                "peer sent {} file descriptors, expected {expected}",
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        let mut next = || fds.next().expect("count checked above");
        let area = match &self.cfg.area {
            Some(area) => area.clone(),
            None => Arc::new(DataArea::open_readonly(next(), theirs.area_bytes as usize)?),
        };
        let their_producer = Region::map_readonly(next(), theirs.ring_bytes as usize)?;
        let their_consumer = Region::map_readonly(next(), ring::CONSUMER_BYTES)?;
        let peer_bell = Doorbell::from_peer(next())?;
        let slots = self.cfg.slots;
        let out = Producer::new(self.out_memory, their_consumer, slots)?;
        let inp = Consumer::new(self.in_memory, their_producer, slots)?;
        Ok(Link::new(
            self.cfg.mode,
            self.cfg.role(),
            area,
            out,
            inp,
            self.bell,
            peer_bell,
            Some(conn),
        ))
    }
}

/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 8;

/// Sends one message with up to [`MAX_FDS`] file descriptors attached (`SCM_RIGHTS`).
pub fn send_with_fds(sock: &OwnedFd, bytes: &[u8], fds: &[OwnedFd]) -> Result<(), Error> {
    let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS
        || (!borrowed.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(&borrowed)))
    {
        return Err(Error::Handshake(format!(
            "{} descriptors for one message (at most {MAX_FDS})",
            fds.len()
        )));
    }
    rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut cmsg, SendFlags::NOSIGNAL)
        .map_err(|e| Error::sys("sendmsg", e))?;
    Ok(())
}

/// Receives one message into `buf` with the file descriptors attached to it (made
/// close-on-exec). Returns the byte count (0: the peer closed) and the descriptors.
pub fn recv_with_fds(sock: &OwnedFd, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), Error> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(Error::Timeout {
                    timeout_ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
                });
            }
            Err(e) => return Err(Error::sys("recvmsg", e)),
        }
    };
    let mut fds = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(Error::Handshake(format!(
            "peer sent more than {MAX_FDS} file descriptors"
        )));
    }
    Ok((msg.bytes.min(buf.len()), fds))
}

fn send_hello(sock: &OwnedFd, hello: &Hello, fds: &[OwnedFd]) -> Result<(), Error> {
    send_with_fds(sock, &hello.encode(), fds)
}

fn send_refusal(sock: &OwnedFd, mut hello: Hello, reason: &str) {
    hello.status = STATUS_REFUSED;
    let mut msg = hello.encode().to_vec();
    let reason = reason.as_bytes();
    msg.extend_from_slice(&reason[..reason.len().min(MAX_REASON_BYTES)]);
    let _ = rustix::net::send(sock, &msg, SendFlags::NOSIGNAL);
}

fn recv_hello(sock: &OwnedFd) -> Result<(Hello, Vec<OwnedFd>), Error> {
    let mut buf = [0u8; HELLO_BYTES + MAX_REASON_BYTES];
    let (len, fds) = match recv_with_fds(sock, &mut buf) {
        Err(Error::Timeout { .. }) => {
            return Err(Error::Handshake(format!(
                "peer sent no hello within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )));
        }
        other => other?,
    };
    if len == 0 {
        return Err(Error::PeerGone);
    }
    let hello = Hello::decode(&buf[..len])?;
    if hello.status != STATUS_OK {
        let reason = String::from_utf8_lossy(&buf[HELLO_BYTES..len]);
        return Err(Error::Handshake(format!("peer refused: {reason}")));
    }
    Ok((hello, fds))
}

/// Runs the acceptor's half of the handshake on a connected socket.
fn accept_on(sock: OwnedFd, local: Local) -> Result<Link, Error> {
    let (theirs, fds) = recv_hello(&sock)?;
    if let Some(reason) = local.mismatch(&theirs) {
        send_refusal(&sock, local.hello(), &reason);
        return Err(Error::Handshake(reason));
    }
    send_hello(&sock, &local.hello(), &local.fds()?)?;
    local.join(theirs, fds, sock)
}

fn finish_initiator(sock: OwnedFd, local: Local) -> Result<Link, Error> {
    let (theirs, fds) = recv_hello(&sock)?;
    if let Some(reason) = local.mismatch(&theirs) {
        return Err(Error::Handshake(reason));
    }
    local.join(theirs, fds, sock)
}

fn seqpacket() -> Result<OwnedFd, Error> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket(AF_UNIX, SOCK_SEQPACKET)", e))
}

fn set_handshake_timeout(sock: &OwnedFd, timeout: Option<Duration>) -> Result<(), Error> {
    rustix::net::sockopt::set_socket_timeout(sock, rustix::net::sockopt::Timeout::Recv, timeout)
        .map_err(|e| Error::sys("SO_RCVTIMEO", e))
}

/// One side of a channel after the handshake: the master or the other one, as the mode
/// and role decide.
#[derive(Debug)]
pub enum Endpoint {
    /// This side allocates (TMM originator, RMM receiver).
    Master(Master),
    /// The other side.
    Peer(Peer),
}

impl Endpoint {
    fn from_link(link: Link, pool_capacity: usize) -> Result<Endpoint, Error> {
        if link.mode().is_master(link.role()) {
            Ok(Endpoint::Master(Master::new(link, pool_capacity)?))
        } else {
            Ok(Endpoint::Peer(Peer::new(link)?))
        }
    }

    /// The master side, or an error if this is the other one.
    pub fn into_master(self) -> Result<Master, Error> {
        match self {
            Endpoint::Master(m) => Ok(m),
            Endpoint::Peer(_) => Err(Error::Handshake("this side is not the master".into())),
        }
    }

    /// The non-master side, or an error if this is the master.
    pub fn into_peer(self) -> Result<Peer, Error> {
        match self {
            Endpoint::Peer(p) => Ok(p),
            Endpoint::Master(_) => Err(Error::Handshake("this side is the master".into())),
        }
    }
}

/// A listening socket that accepts channels.
#[derive(Debug)]
pub struct Listener {
    sock: OwnedFd,
    path: std::path::PathBuf,
}

impl Listener {
    /// Listens at `path` (an existing socket file there is replaced).
    pub fn bind(path: &Path) -> Result<Listener, Error> {
        let _ = std::fs::remove_file(path);
        let sock = seqpacket()?;
        let addr = SocketAddrUnix::new(path).map_err(|e| Error::sys("socket path", e))?;
        rustix::net::bind(&sock, &addr).map_err(|e| Error::sys("bind", e))?;
        rustix::net::listen(&sock, 16).map_err(|e| Error::sys("listen", e))?;
        Ok(Listener {
            sock,
            path: path.to_owned(),
        })
    }

    /// Accepts one channel. `pool_capacity` sizes the master's lend set (ignored for the
    /// non-master side).
    pub fn accept(&self, cfg: Config, pool_capacity: usize) -> Result<Endpoint, Error> {
        let local = Local::new(cfg)?;
        let sock = rustix::net::accept_with(&self.sock, SocketFlags::CLOEXEC)
            .map_err(|e| Error::sys("accept", e))?;
        set_handshake_timeout(&sock, Some(HANDSHAKE_TIMEOUT))?;
        let link = accept_on(sock, local)?;
        set_handshake_timeout(link.connection_owned(), None)?;
        Endpoint::from_link(link, pool_capacity)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to a listener at `path` and sets up a channel.
pub fn connect(path: &Path, cfg: Config, pool_capacity: usize) -> Result<Endpoint, Error> {
    let local = Local::new(cfg)?;
    let sock = seqpacket()?;
    let addr = SocketAddrUnix::new(path).map_err(|e| Error::sys("socket path", e))?;
    rustix::net::connect(&sock, &addr).map_err(|e| Error::sys("connect", e))?;
    set_handshake_timeout(&sock, Some(HANDSHAKE_TIMEOUT))?;
    send_hello(&sock, &local.hello(), &local.fds()?)?;
    let link = finish_initiator(sock, local)?;
    set_handshake_timeout(link.connection_owned(), None)?;
    Endpoint::from_link(link, pool_capacity)
}

/// Both sides of a channel in one process, set up through a socket pair with the same
/// handshake as between processes (so each side sees the other's memory read-only).
/// Returns `(originator, receiver)`.
pub fn pair(
    mode: Mode,
    slots: usize,
    area: Arc<DataArea>,
    pool_capacity: usize,
) -> Result<(Endpoint, Endpoint), Error> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socketpair", e))?;
    let originator = Local::new(Config::originator(mode, slots, area))?;
    let receiver = Local::new(Config::receiver(mode, slots))?;
    send_hello(&a, &originator.hello(), &originator.fds()?)?;
    let receiver_link = accept_on(b, receiver)?;
    let originator_link = finish_initiator(a, originator)?;
    Ok((
        Endpoint::from_link(originator_link, pool_capacity)?,
        Endpoint::from_link(receiver_link, pool_capacity)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IoRec, PagePolicy, Pool};
    use rustix::event::Timespec;

    #[test]
    fn hello_round_trips_and_refuses_garbage() {
        let h = Hello {
            magic: MAGIC,
            version: VERSION,
            status: STATUS_OK,
            mode: Mode::Rmm,
            role: Role::Receiver,
            slots: 256,
            area_bytes: 0,
            ring_bytes: ring::producer_bytes(256) as u64,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let mut bad = h.encode();
        bad[8] = 1;
        let err = Hello::decode(&bad).unwrap_err().to_string();
        assert!(err.contains("version 1"), "{err}");
        bad = h.encode();
        bad[0] = b'X';
        assert!(
            Hello::decode(&bad)
                .unwrap_err()
                .to_string()
                .contains("not an rbuf peer")
        );
        assert!(Hello::decode(&bad[..10]).is_err());
    }

    #[test]
    fn pair_moves_buffers_both_modes() {
        for mode in [Mode::Tmm, Mode::Rmm] {
            let area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
            let mut pool = Pool::slots(area.len(), 2048);
            let (o, r) = pair(mode, 64, area.clone(), pool.capacity()).unwrap();
            let (mut master, mut peer) = match mode {
                Mode::Tmm => (o.into_master().unwrap(), r.into_peer().unwrap()),
                Mode::Rmm => (r.into_master().unwrap(), o.into_peer().unwrap()),
            };
            let id = pool.alloc(100).unwrap();
            let mut rec = pool.iorec(id);
            if mode == Mode::Tmm {
                area.write(pool.extent(id).offset() as usize, b"tmm data")
                    .unwrap();
                rec.extents_mut()[0] = crate::Extent::new(pool.extent(id).offset(), 8);
            }
            assert_eq!(master.send(&mut pool, &[rec]).unwrap(), 1);
            let mut got = [crate::IoRec::default(); 4];
            assert_eq!(peer.recv(&mut got).unwrap(), 1);
            let mut back = got[0];
            if mode == Mode::Rmm {
                // The originator fills the empty buffer and sends it full.
                let e = back.extents()[0];
                peer.area().write(e.offset() as usize, b"rmm data").unwrap();
                back.extents_mut()[0] = crate::Extent::new(e.offset(), 8);
            }
            assert_eq!(peer.send(&[back]).unwrap(), 1);
            assert_eq!(master.recv(&mut pool, &mut got).unwrap(), 1);
            let mut data = [0u8; 8];
            master
                .area()
                .read(got[0].extents()[0].offset() as usize, &mut data)
                .unwrap();
            assert_eq!(
                &data,
                if mode == Mode::Tmm {
                    b"tmm data"
                } else {
                    b"rmm data"
                }
            );
            pool.free(id);
            assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
        }
    }

    fn tmm_pair(slots: usize) -> (Master, Peer, Pool, Arc<DataArea>) {
        let area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
        let pool = Pool::slots(area.len(), 2048);
        let (o, r) = pair(Mode::Tmm, slots, area.clone(), pool.capacity()).unwrap();
        (o.into_master().unwrap(), r.into_peer().unwrap(), pool, area)
    }

    #[test]
    fn epoll_on_the_doorbell_wakes_only_when_armed() {
        use rustix::event::epoll;
        let (mut master, mut peer, mut pool, _area) = tmm_pair(8);
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        epoll::add(
            &ep,
            peer.link().doorbell(),
            epoll::EventData::new_u64(7),
            epoll::EventFlags::IN,
        )
        .unwrap();
        let mut events: Vec<epoll::Event> = Vec::with_capacity(4);
        let zero = Timespec::default();
        let send_one = |master: &mut Master, pool: &mut Pool| {
            let id = pool.alloc(64).unwrap();
            let rec = pool.iorec(id);
            assert_eq!(master.send(pool, &[rec]).unwrap(), 1);
        };
        // Not armed: the sender makes no system call, the doorbell stays quiet.
        send_one(&mut master, &mut pool);
        assert_eq!(master.link().stats().wakeups_sent, 0);
        events.clear();
        assert_eq!(
            epoll::wait(
                &ep,
                rustix::buffer::spare_capacity(&mut events),
                Some(&zero)
            )
            .unwrap(),
            0
        );
        let mut got = [IoRec::default(); 8];
        assert_eq!(peer.recv(&mut got).unwrap(), 1);
        // Armed with nothing pending: the next send rings, and epoll reports it.
        assert!(!peer.link().arm_incoming().unwrap());
        send_one(&mut master, &mut pool);
        assert_eq!(master.link().stats().wakeups_sent, 1);
        events.clear();
        let timeout = Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        assert_eq!(
            epoll::wait(
                &ep,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timeout)
            )
            .unwrap(),
            1
        );
        assert_eq!(events[0].data.u64(), 7);
        peer.link().doorbell().drain();
        assert_eq!(peer.recv(&mut got).unwrap(), 1);
        events.clear();
        assert_eq!(
            epoll::wait(
                &ep,
                rustix::buffer::spare_capacity(&mut events),
                Some(&zero)
            )
            .unwrap(),
            0,
            "drained"
        );
    }

    #[test]
    fn blocking_wait_times_out_and_then_wakes() {
        let (mut master, mut peer, mut pool, _area) = tmm_pair(8);
        peer.link().set_spins(0);
        let t = std::time::Instant::now();
        assert!(
            !peer
                .link()
                .wait_incoming(Some(Duration::from_millis(30)))
                .unwrap()
        );
        assert!(t.elapsed() >= Duration::from_millis(30));
        let waiter = std::thread::spawn(move || {
            let woke = peer
                .link()
                .wait_incoming(Some(Duration::from_secs(10)))
                .unwrap();
            (woke, peer.link().stats().sleeps)
        });
        std::thread::sleep(Duration::from_millis(50));
        let id = pool.alloc(64).unwrap();
        let rec = pool.iorec(id);
        master.send(&mut pool, &[rec]).unwrap();
        let (woke, sleeps) = waiter.join().unwrap();
        assert!(woke);
        assert!(sleeps >= 2, "it slept in both waits ({sleeps})");
        assert_eq!(master.link().stats().wakeups_sent, 1);
    }

    #[test]
    fn mismatched_sides_are_refused_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("rbuf-hs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let listener = Listener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            listener
                .accept(Config::receiver(Mode::Tmm, 64), 0)
                .unwrap_err()
                .to_string()
        });
        let area = Arc::new(DataArea::create(4096, PagePolicy::Shmem).unwrap());
        let err = connect(&path, Config::originator(Mode::Rmm, 64, area), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("peer refused: mode mismatch"), "{err}");
        assert!(server.join().unwrap().contains("mode mismatch"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
