//! Scenarios shared by the in-process and the cross-process tests: stack A (the client,
//! driven here) against stack B (a server with HTTP, sink and echo services), which is
//! either driven in the same loop ([`Server`]) or runs in another process ([`Remote`]).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use netstack::services::{
    BulkSend, HttpGet, HttpServer, Pattern, Service, TcpSink, UdpEcho, Upload,
};
use netstack::smoltcp::iface::SocketSet;
use netstack::smoltcp::phy::{ChecksumCapabilities, Device};
use netstack::smoltcp::socket::{icmp, udp};
use netstack::smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpEndpoint, IpProtocol,
    Ipv4Address, Ipv4Cidr, Ipv6Address, Ipv6Cidr, Ipv6Packet, NdiscRepr,
};
use netstack::{Error, Ipv6Setup, Stack, StackConfig, WireConfig};
use rbuf::PagePolicy;

pub const BIG_BYTES: u64 = 64 << 20;
pub const HTTP_PORT: u16 = 80;
pub const SINK_PORT: u16 = 9000;
pub const ECHO_PORT: u16 = 7;
pub const PATTERN_SEED: u64 = 0x5eed;
/// Limit for one scenario; far above what they take, so only a hang trips it. The
/// slowest, 64 MiB each way under drops, corruption and reordering between two
/// processes, took 157-212 s in debug builds on the project's 2-core machines (at 3% CPU:
/// the time is TCP's retransmission timers), and once more than 300 s in CI.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(900);

pub fn mac(i: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0, 0, 0, 0, i])
}

pub fn ip4(i: u8) -> Ipv4Address {
    Ipv4Address::new(10, 0, 0, i)
}

pub fn ip6(i: u8) -> Ipv6Address {
    Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i))
}

/// Stack `i` of the test network: 10.0.0.i/24, fd00::i/64.
pub fn stack_config(i: u8) -> StackConfig {
    let mut c = StackConfig::ipv4(mac(i), Ipv4Cidr::new(ip4(i), 24));
    c.ipv6 = Some(Ipv6Setup {
        cidr: Ipv6Cidr::new(ip6(i), 64),
        gateway: None,
    });
    c
}

pub fn wire_config() -> WireConfig {
    WireConfig {
        pages: PagePolicy::Shmem,
        ..WireConfig::default()
    }
}

pub fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// The other side, from A's point of view.
pub trait Other {
    /// Moves B along (in-process); returns whether it did anything.
    fn step(&mut self) -> Result<bool, Error>;
    /// Whether A may sleep on its port when idle (B runs elsewhere).
    fn runs_elsewhere(&self) -> bool;
    /// Uploads B's sink completed since the last call, if B is here.
    fn uploads(&mut self) -> Option<Vec<Upload>> {
        None
    }
    /// Uploads B's sink has taken in part (no FIN yet): bytes and digest so far.
    fn partial_uploads(&mut self) -> Vec<(u64, [u8; 32])> {
        Vec::new()
    }
    /// Sleeps until B has something to do, at most `max` (B running alone).
    fn wait_idle(&mut self, _max: Duration) -> Result<(), Error> {
        Ok(())
    }
}

/// Stack B and its services, in this process.
pub struct Server<D: Device> {
    pub stack: Stack<D>,
    pub http: HttpServer,
    pub sink: TcpSink,
    pub udp: UdpEcho,
}

impl<D: Device> Server<D> {
    pub fn new(mut stack: Stack<D>) -> Server<D> {
        let mut files = HashMap::new();
        files.insert(
            "/big".to_string(),
            Pattern::new(PATTERN_SEED).bytes(BIG_BYTES as usize).into(),
        );
        let http = HttpServer::new(&mut stack, HTTP_PORT, 4, files).unwrap();
        let sink = TcpSink::new(&mut stack, SINK_PORT, 4, false).unwrap();
        let udp = UdpEcho::new(&mut stack, ECHO_PORT, 256).unwrap();
        Server {
            stack,
            http,
            sink,
            udp,
        }
    }
}

impl<D: Device> Other for Server<D> {
    fn step(&mut self) -> Result<bool, Error> {
        let mut did = self.stack.poll()?;
        let s = self.stack.sockets();
        did |= self.http.poll(s)?;
        did |= self.sink.poll(s)?;
        did |= self.udp.poll(s)?;
        Ok(did)
    }

    fn runs_elsewhere(&self) -> bool {
        false
    }

    fn uploads(&mut self) -> Option<Vec<Upload>> {
        Some(self.sink.take_uploads())
    }

    fn wait_idle(&mut self, max: Duration) -> Result<(), Error> {
        self.stack.wait(max)
    }

    fn partial_uploads(&mut self) -> Vec<(u64, [u8; 32])> {
        self.sink.in_progress()
    }
}

/// Stack B in another process.
pub struct Remote;

impl Other for Remote {
    fn step(&mut self) -> Result<bool, Error> {
        Ok(false)
    }

    fn runs_elsewhere(&self) -> bool {
        true
    }
}

/// Polls A, its services and B until `done` says so (or the scenario times out).
pub fn drive<D: Device>(
    a: &mut Stack<D>,
    other: &mut dyn Other,
    what: &str,
    mut step: impl FnMut(&mut SocketSet<'static>) -> Result<bool, Error>,
) {
    let start = Instant::now();
    loop {
        let mut did = a.poll().unwrap_or_else(|e| panic!("{what}: stack A: {e}"));
        match step(a.sockets()) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => panic!("{what}: {e}"),
        }
        did |= other
            .step()
            .unwrap_or_else(|e| panic!("{what}: stack B: {e}"));
        assert!(
            start.elapsed() < SCENARIO_TIMEOUT,
            "{what}: not done after {SCENARIO_TIMEOUT:?}"
        );
        if !did && other.runs_elsewhere() {
            a.wait(Duration::from_millis(10)).unwrap();
        }
    }
}

/// Pings `target` `count` times (ICMPv4 or ICMPv6 echo); returns the replies, checked
/// for identifier, sequence number and payload.
pub fn ping<D: Device>(
    a: &mut Stack<D>,
    other: &mut dyn Other,
    target: IpAddress,
    count: u16,
) -> u16 {
    let h = a.add_icmp_socket(16, 4096);
    let ident = 0x4242;
    a.sockets()
        .get_mut::<icmp::Socket>(h)
        .bind(icmp::Endpoint::Ident(ident))
        .unwrap();
    let src = match target {
        IpAddress::Ipv4(_) => IpAddress::Ipv4(ip4(1)),
        IpAddress::Ipv6(_) => IpAddress::Ipv6(ip6(1)),
    };
    let caps = ChecksumCapabilities::default();
    let mut seq = 0u16;
    let mut replies = 0u16;
    let mut sent_at = Instant::now();
    drive(a, other, "ping", |sockets| {
        let s = sockets.get_mut::<icmp::Socket>(h);
        let payload = [seq as u8; 56];
        if seq == replies && seq < count && s.can_send() {
            match target {
                IpAddress::Ipv4(_) => {
                    let repr = Icmpv4Repr::EchoRequest {
                        ident,
                        seq_no: seq,
                        data: &payload,
                    };
                    let buf = s.send(repr.buffer_len(), target).unwrap();
                    repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
                }
                IpAddress::Ipv6(dst) => {
                    let repr = Icmpv6Repr::EchoRequest {
                        ident,
                        seq_no: seq,
                        data: &payload,
                    };
                    let buf = s.send(repr.buffer_len(), target).unwrap();
                    let IpAddress::Ipv6(src6) = src else {
                        unreachable!()
                    };
                    repr.emit(&src6, &dst, &mut Icmpv6Packet::new_unchecked(buf), &caps);
                }
            }
            seq += 1;
            sent_at = Instant::now();
        }
        while s.can_recv() {
            let (data, from) = s.recv().unwrap();
            assert_eq!(from, target);
            let (r_ident, r_seq, r_data) = match target {
                IpAddress::Ipv4(_) => {
                    let p = Icmpv4Packet::new_checked(data).unwrap();
                    match Icmpv4Repr::parse(&p, &caps).unwrap() {
                        Icmpv4Repr::EchoReply {
                            ident,
                            seq_no,
                            data,
                        } => (ident, seq_no, data.to_vec()),
                        other => panic!("not an echo reply: {other:?}"),
                    }
                }
                IpAddress::Ipv6(dst) => {
                    let p = Icmpv6Packet::new_checked(data).unwrap();
                    let IpAddress::Ipv6(src6) = src else {
                        unreachable!()
                    };
                    match Icmpv6Repr::parse(&dst, &src6, &p, &caps).unwrap() {
                        Icmpv6Repr::EchoReply {
                            ident,
                            seq_no,
                            data,
                        } => (ident, seq_no, data.to_vec()),
                        other => panic!("not an echo reply: {other:?}"),
                    }
                }
            };
            assert_eq!((r_ident, r_seq), (ident, replies), "reply in order");
            assert_eq!(r_data, vec![r_seq as u8; 56], "payload echoed");
            replies += 1;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(10),
            "no reply to ping {seq}"
        );
        Ok(replies == count)
    });
    a.sockets().remove(h);
    replies
}

/// Sends `count` datagrams (20 to 1400 bytes, numbered) to B's UDP echo, at most
/// `window` outstanding; checks each comes back once and intact. Returns the count.
pub fn udp_echo<D: Device>(
    a: &mut Stack<D>,
    other: &mut dyn Other,
    count: u32,
    window: u32,
) -> u32 {
    let h = a.add_udp_socket(256, 256 * 1500);
    a.sockets().get_mut::<udp::Socket>(h).bind(40007).unwrap();
    let remote = IpEndpoint::new(IpAddress::Ipv4(ip4(2)), ECHO_PORT);
    let datagram = |n: u32| -> Vec<u8> {
        let len = 20 + (n as usize * 7919) % 1380;
        let mut d = vec![(n % 251) as u8; len];
        d[..4].copy_from_slice(&n.to_le_bytes());
        d
    };
    let mut next = 0u32;
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 2048];
    drive(a, other, "udp echo", |sockets| {
        let s = sockets.get_mut::<udp::Socket>(h);
        while next < count && next - seen.len() as u32 <= window && s.can_send() {
            if s.send_slice(&datagram(next), remote).is_err() {
                break;
            }
            next += 1;
        }
        while let Ok((n, meta)) = s.recv_slice(&mut buf) {
            assert_eq!(meta.endpoint, remote);
            let seq = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert_eq!(&buf[..n], &datagram(seq)[..], "datagram {seq} intact");
            assert!(seen.insert(seq), "datagram {seq} twice");
        }
        Ok(seen.len() as u32 == count)
    });
    a.sockets().remove(h);
    seen.len() as u32
}

/// What the two 64 MiB transfers gave.
pub struct Transfers {
    /// SHA-256 of the body A downloaded from B's HTTP server.
    pub download: [u8; 32],
    /// Bytes of it.
    pub download_bytes: u64,
    /// SHA-256 of what A uploaded to B's sink.
    pub upload: [u8; 32],
    pub seconds: f64,
}

/// At once: A downloads `/big` (64 MiB) from B over HTTP, and uploads 64 MiB to B's sink.
/// With `upload_close`, the upload is done when both sides have closed; without, when
/// every byte is acknowledged (see the fault tests for why).
pub fn transfers<D: Device>(
    a: &mut Stack<D>,
    other: &mut dyn Other,
    upload_close: bool,
) -> Transfers {
    let start = Instant::now();
    let mut get = HttpGet::start(
        a,
        IpEndpoint::new(IpAddress::Ipv4(ip4(2)), HTTP_PORT),
        "/big",
        false,
    )
    .unwrap();
    let mut put = BulkSend::start(
        a,
        IpEndpoint::new(IpAddress::Ipv4(ip4(2)), SINK_PORT),
        BIG_BYTES,
        Pattern::new(PATTERN_SEED + 1),
        true,
    )
    .unwrap();
    drive(a, other, "64 MiB each way", |sockets| {
        get.poll(sockets)?;
        put.poll(sockets)?;
        let put_done = if upload_close {
            put.is_done()
        } else {
            put.all_acked(sockets)
        };
        Ok(get.is_done() && put_done)
    });
    assert_eq!(get.status(), Some(200));
    Transfers {
        download: get.sha256().unwrap(),
        download_bytes: get.body_bytes(),
        upload: put.sha256().unwrap(),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// The SHA-256 of B's `/big` and of A's upload, computed independently of the transfer.
pub fn expected_digests() -> ([u8; 32], [u8; 32]) {
    (
        sha256(&Pattern::new(PATTERN_SEED).bytes(BIG_BYTES as usize)),
        sha256(&Pattern::new(PATTERN_SEED + 1).bytes(BIG_BYTES as usize)),
    )
}

/// What [`resolution_steps`] must find after A pings B over IPv4, then over IPv6.
pub const RESOLUTION: [&str; 6] = [
    "arp who-has",
    "arp is-at",
    "ipv4 to B",
    "nd solicit",
    "nd advert",
    "ipv6 to B",
];

/// What A's capture shows of address resolution, in order: ARP request and reply, the
/// first IPv4 frame to B's MAC, ND solicitation and advertisement, the first IPv6 frame
/// to B's MAC (each step checked for the right addresses).
pub fn resolution_steps(frames: &[Vec<u8>]) -> Vec<&'static str> {
    let mut steps = Vec::new();
    for f in frames {
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
                let ArpRepr::EthernetIpv4 {
                    operation,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                } = arp
                else {
                    panic!("{arp:?}")
                };
                match operation {
                    ArpOperation::Request => {
                        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
                        assert_eq!(
                            (source_hardware_addr, source_protocol_addr),
                            (mac(1), ip4(1))
                        );
                        assert_eq!(target_protocol_addr, ip4(2));
                        steps.push("arp who-has");
                    }
                    ArpOperation::Reply => {
                        assert_eq!(
                            (source_hardware_addr, source_protocol_addr),
                            (mac(2), ip4(2))
                        );
                        steps.push("arp is-at");
                    }
                    other => panic!("{other:?}"),
                }
            }
            EthernetProtocol::Ipv4 if eth.src_addr() == mac(1) => {
                assert_eq!(eth.dst_addr(), mac(2), "IPv4 to B's MAC");
                steps.push("ipv4 to B");
            }
            EthernetProtocol::Ipv6 => {
                let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
                if ip.next_header() != IpProtocol::Icmpv6 {
                    continue;
                }
                let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
                let repr =
                    Icmpv6Repr::parse(&ip.src_addr(), &ip.dst_addr(), &icmp, &Default::default())
                        .unwrap();
                match repr {
                    Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. })
                        if eth.src_addr() == mac(1) && target_addr == ip6(2) =>
                    {
                        steps.push("nd solicit");
                    }
                    Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                        target_addr,
                        lladdr,
                        ..
                    }) if eth.src_addr() == mac(2) && target_addr == ip6(2) => {
                        assert_eq!(
                            lladdr.map(|l| l.as_bytes().to_vec()),
                            Some(mac(2).0.to_vec())
                        );
                        steps.push("nd advert");
                    }
                    Icmpv6Repr::EchoRequest { .. } => {
                        assert_eq!(eth.dst_addr(), mac(2), "IPv6 to B's MAC");
                        steps.push("ipv6 to B");
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    steps.dedup();
    steps
}

/// Frames of a libpcap file (magic a1b2c3d4, little-endian).
pub fn read_pcap(b: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    assert_eq!(
        u32::from_le_bytes(b[20..24].try_into().unwrap()),
        1,
        "Ethernet"
    );
    let mut at = 24;
    let mut frames = Vec::new();
    while at + 16 <= b.len() {
        let len = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        frames.push(b[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    assert_eq!(at, b.len());
    frames
}
