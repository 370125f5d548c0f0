//! Two stacks back to back in one process, over rbuf channels, driven by one loop.

mod common;

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use common::*;
use netstack::smoltcp::phy::{FaultInjector, PcapMode, PcapWriter};
use netstack::smoltcp::wire::IpAddress;
use netstack::{RbufDevice, Reorder, RmmRx, RxAccess, Stack, TmmRx, TxChannel, wire};
use rbuf::connect::pair;
use rbuf::{DataArea, IoRec, Mode, PagePolicy, Peer, Pool};

fn zero_copy_pair() -> (Stack<RbufDevice<TmmRx>>, Server<RbufDevice<TmmRx>>) {
    let (ea, eb) = wire::pair(&wire_config(), &wire_config()).unwrap();
    let da = ea.into_device(RxAccess::Borrow);
    let db = eb.into_device(RxAccess::Borrow);
    let a = Stack::new(da, &stack_config(1)).unwrap();
    let b = Stack::new(db, &stack_config(2)).unwrap();
    (a, Server::new(b))
}

#[test]
fn ping_over_ipv4_and_ipv6() {
    let (mut a, mut b) = zero_copy_pair();
    assert_eq!(ping(&mut a, &mut b, IpAddress::Ipv4(ip4(2)), 20), 20);
    assert_eq!(ping(&mut a, &mut b, IpAddress::Ipv6(ip6(2)), 20), 20);
}

#[test]
fn udp_echo_of_10000_datagrams() {
    let (mut a, mut b) = zero_copy_pair();
    assert_eq!(udp_echo(&mut a, &mut b, 10_000, 64), 10_000);
    assert_eq!(b.udp.echoed, 10_000);
}

#[test]
fn tcp_64_mib_each_way_arrives_intact() {
    let (mut a, mut b) = zero_copy_pair();
    let t = transfers(&mut a, &mut b, true);
    let (want_down, want_up) = expected_digests();
    assert_eq!(t.download_bytes, BIG_BYTES);
    assert_eq!(hex(&t.download), hex(&want_down), "download");
    assert_eq!(hex(&t.upload), hex(&want_up), "what A sent");
    let ups = b.sink.take_uploads();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].bytes, BIG_BYTES);
    assert_eq!(hex(&ups[0].sha256), hex(&want_up), "what B received");
    eprintln!("64 MiB each way in {:.1} s", t.seconds);
}

#[test]
fn tcp_64_mib_each_way_survives_drop_corruption_and_reordering() {
    let seed = 0x1234_5678u64;
    let (ea, eb) = wire::pair(&wire_config(), &wire_config()).unwrap();
    // smoltcp's injector corrupts a transmitted frame before the stack writes it, so only
    // its receive-side corruption has an effect. A drops and corrupts, B only corrupts:
    // each direction then sees 1% of frames dropped (A's transmit or A's receive) and 1%
    // corrupted (B's receive or A's receive), besides 1% reordered by 1 to 8 frames.
    let faulty = |end: wire::WireEnd, seed: u64, drop_pct: u8| {
        let dev = RbufDevice::new(Reorder::new(end.rx, 1, 8, seed), end.tx, RxAccess::Borrow);
        let handle = dev.handle();
        let mut fi = FaultInjector::new(dev, seed as u32);
        fi.set_drop_chance(drop_pct);
        fi.set_corrupt_chance(1);
        (fi, handle)
    };
    let (da, ha) = faulty(ea, seed, 1);
    let (db, hb) = faulty(eb, seed + 1, 0);
    let mut a = Stack::new(da, &stack_config(1))
        .unwrap()
        .with_control(ha.clone());
    let b = Stack::new(db, &stack_config(2))
        .unwrap()
        .with_control(hb.clone());
    let mut b = Server::new(b);
    // The upload counts as complete when every byte is acknowledged, not when the close
    // handshake ends: with reordering, smoltcp 0.14 can leave a lone FIN unretransmitted
    // (duplicate ACKs start a fast retransmit that has no data to resend, and the timer
    // goes idle), so the sender stays in FIN-WAIT-1. The bytes and their hash are
    // checked on the receiving side all the same.
    let t = transfers(&mut a, &mut b, false);
    let (want_down, want_up) = expected_digests();
    assert_eq!(hex(&t.download), hex(&want_down), "download");
    let mut got: Vec<(u64, String)> = b
        .sink
        .take_uploads()
        .iter()
        .map(|u| (u.bytes, hex(&u.sha256)))
        .collect();
    got.extend(b.sink.in_progress().iter().map(|(n, d)| (*n, hex(d))));
    assert_eq!(got, vec![(BIG_BYTES, hex(&want_up))], "upload");
    let reordered = ha.with_rx(|r| r.reordered()) + hb.with_rx(|r| r.reordered());
    assert!(reordered > 100, "only {reordered} frames reordered");
    eprintln!(
        "64 MiB each way with faults in {:.1} s, {reordered} frames reordered, stats A {:?}",
        t.seconds,
        ha.stats()
    );
}

/// A's capture (smoltcp's PcapWriter over the rbuf device) shows ARP and neighbour
/// discovery resolving B before the first echo request goes to B's MAC.
#[test]
fn arp_and_neighbour_discovery_resolve_the_peer() {
    let (ea, eb) = wire::pair(&wire_config(), &wire_config()).unwrap();
    let path = std::env::temp_dir().join(format!("netstack-arp-{}.pcap", std::process::id()));
    let pcap = PcapWriter::new(
        ea.into_device(RxAccess::Copy),
        File::create(&path).unwrap(),
        PcapMode::Both,
    );
    let mut a = Stack::new(pcap, &stack_config(1)).unwrap();
    let mut b =
        Server::new(Stack::new(eb.into_device(RxAccess::Borrow), &stack_config(2)).unwrap());
    assert_eq!(ping(&mut a, &mut b, IpAddress::Ipv4(ip4(2)), 1), 1);
    assert_eq!(ping(&mut a, &mut b, IpAddress::Ipv6(ip6(2)), 1), 1);
    drop(a);
    let frames = read_pcap(&std::fs::read(&path).unwrap());
    std::fs::remove_file(&path).unwrap();

    assert_eq!(resolution_steps(&frames), RESOLUTION);
}

// ---------- the NIC shape: RMM receive, TMM transmit, frames copied by "hardware" ----------

/// Two NIC ports joined by a cable, played by the test the way `driver::Port` and a NIC
/// play it: each stack posts empty buffers of a receive area the NIC created (RMM) and
/// sends frames from its own area (TMM); the "hardware" copies each frame from the
/// sender's transmit buffer into a posted receive buffer of the other side (as DMA
/// would), sends that back full, and returns the transmit buffer.
struct NicPorts {
    /// Per stack: the TMM receiver of its transmit channel, the RMM originator of its
    /// receive channel, and the empty buffers it posted.
    ports: [(Peer, Peer, Vec<IoRec>); 2],
    frame: Vec<u8>,
    copied: u64,
}

impl NicPorts {
    /// Two stacks' devices and the NIC pair between them.
    fn new() -> (RbufDevice<RmmRx>, RbufDevice<RmmRx>, NicPorts) {
        let make = || {
            let rx_area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
            let rx_pool = Pool::slots(rx_area.len(), 2048);
            let (nic_rx, app_rx) = pair(Mode::Rmm, 128, rx_area, rx_pool.capacity()).unwrap();
            let tx_area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
            let tx_pool = Pool::slots(tx_area.len(), 2048);
            let (app_tx, nic_tx) = pair(Mode::Tmm, 128, tx_area, tx_pool.capacity()).unwrap();
            let dev = RbufDevice::new(
                RmmRx::new(app_rx.into_master().unwrap(), rx_pool, 128).unwrap(),
                TxChannel::new(app_tx.into_master().unwrap(), tx_pool).unwrap(),
                RxAccess::Borrow,
            );
            (
                dev,
                (
                    nic_tx.into_peer().unwrap(),
                    nic_rx.into_peer().unwrap(),
                    Vec::new(),
                ),
            )
        };
        let (da, pa) = make();
        let (db, pb) = make();
        (
            da,
            db,
            NicPorts {
                ports: [pa, pb],
                frame: vec![0; 2048],
                copied: 0,
            },
        )
    }

    fn step(&mut self) -> bool {
        let mut did = false;
        let mut recs = [IoRec::default(); 32];
        for (_, rx, posted) in &mut self.ports {
            let n = rx.recv(&mut recs).unwrap();
            posted.extend_from_slice(&recs[..n]);
        }
        for from in 0..2 {
            let to = 1 - from;
            // Take only as many frames as the other side has buffers posted for.
            let n = self.ports[to].2.len().min(32);
            let (left, right) = self.ports.split_at_mut(1);
            let (src, dst) = if from == 0 {
                (&mut left[0], &mut right[0])
            } else {
                (&mut right[0], &mut left[0])
            };
            let got = src.0.recv(&mut recs[..n]).unwrap();
            for rec in &recs[..got] {
                let len = src.0.area().gather(rec.extents(), &mut self.frame).unwrap();
                let mut empty = dst.2.pop().unwrap();
                let e = empty.extents()[0];
                dst.1
                    .area()
                    .write(e.offset() as usize, &self.frame[..len])
                    .unwrap();
                empty.extents_mut()[0] = rbuf::Extent::new(e.offset(), len as u32);
                assert_eq!(dst.1.send(&[empty]).unwrap(), 1);
                self.copied += 1;
            }
            if got > 0 {
                assert_eq!(src.0.send(&recs[..got]).unwrap(), got);
                did = true;
            }
        }
        did
    }
}

struct WithNics<D: netstack::smoltcp::phy::Device> {
    nics: NicPorts,
    server: Server<D>,
}

impl<D: netstack::smoltcp::phy::Device> Other for WithNics<D> {
    fn step(&mut self) -> Result<bool, netstack::Error> {
        let moved = self.nics.step();
        Ok(self.server.step()? | moved)
    }

    fn runs_elsewhere(&self) -> bool {
        false
    }
}

#[test]
fn stacks_over_nic_shaped_ports_rmm_receive() {
    let (da, db, nics) = NicPorts::new();
    let ha = da.handle();
    let mut a = Stack::new(da, &stack_config(1))
        .unwrap()
        .with_control(ha.clone());
    let b = Stack::new(db, &stack_config(2)).unwrap();
    let mut other = WithNics {
        nics,
        server: Server::new(b),
    };
    assert_eq!(ping(&mut a, &mut other, IpAddress::Ipv4(ip4(2)), 5), 5);
    assert_eq!(udp_echo(&mut a, &mut other, 2_000, 64), 2_000);
    let start = Instant::now();
    let t = transfers(&mut a, &mut other, true);
    let (want_down, want_up) = expected_digests();
    assert_eq!(hex(&t.download), hex(&want_down));
    let ups = other.server.sink.take_uploads();
    assert_eq!(hex(&ups[0].sha256), hex(&want_up));
    let st = ha.stats();
    assert!(st.rx_frames > 40_000 && st.rx_copied == 0, "{st:?}");
    // Every receive buffer is posted or back in the pool; no buffer leaked.
    ha.with_rx(|rx| {
        let lent = rx.master().lent().clone();
        let acc = rx.pool().audit(&[&lent]).unwrap();
        assert_eq!(acc.local, 0, "{acc:?}");
        assert_eq!(acc.free + acc.lent, acc.total, "{acc:?}");
    });
    eprintln!(
        "NIC-shaped ports: 64 MiB each way in {:.1} s ({:?}), {} frames copied by the NICs",
        t.seconds,
        start.elapsed(),
        other.nics.copied
    );
}

// ---------- DHCPv4: a lease from a minimal server on stack B ----------

const LEASED: netstack::smoltcp::wire::Ipv4Address =
    netstack::smoltcp::wire::Ipv4Address::new(10, 0, 0, 50);

/// B with a DHCP server that offers [`LEASED`] to any client (router: B itself).
struct DhcpServer<D: netstack::smoltcp::phy::Device> {
    server: Server<D>,
    udp: netstack::smoltcp::iface::SocketHandle,
    acks: u32,
}

impl<D: netstack::smoltcp::phy::Device> Other for DhcpServer<D> {
    fn step(&mut self) -> Result<bool, netstack::Error> {
        use netstack::smoltcp::socket::udp;
        use netstack::smoltcp::wire::{
            DhcpMessageType, DhcpPacket, DhcpRepr, IpEndpoint, Ipv4Address,
        };
        let mut did = self.server.step()?;
        let s = self.server.stack.sockets().get_mut::<udp::Socket>(self.udp);
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = s.recv_slice(&mut buf) {
            let pkt = DhcpPacket::new_checked(&buf[..n]).unwrap();
            let req = DhcpRepr::parse(&pkt).unwrap();
            let reply_type = match req.message_type {
                DhcpMessageType::Discover => DhcpMessageType::Offer,
                DhcpMessageType::Request => {
                    assert_eq!(req.requested_ip, Some(LEASED));
                    self.acks += 1;
                    DhcpMessageType::Ack
                }
                other => panic!("unexpected {other:?}"),
            };
            let reply = DhcpRepr {
                message_type: reply_type,
                transaction_id: req.transaction_id,
                secs: 0,
                client_hardware_address: req.client_hardware_address,
                client_ip: Ipv4Address::UNSPECIFIED,
                your_ip: LEASED,
                server_ip: ip4(2),
                router: Some(ip4(2)),
                subnet_mask: Some(Ipv4Address::new(255, 255, 255, 0)),
                relay_agent_ip: Ipv4Address::UNSPECIFIED,
                broadcast: false,
                requested_ip: None,
                client_identifier: None,
                server_identifier: Some(ip4(2)),
                parameter_request_list: None,
                dns_servers: None,
                max_size: None,
                lease_duration: Some(3600),
                renew_duration: None,
                rebind_duration: None,
                additional_options: &[],
            };
            let mut out = vec![0u8; reply.buffer_len()];
            reply
                .emit(&mut DhcpPacket::new_unchecked(&mut out[..]))
                .unwrap();
            let to = IpEndpoint::new(Ipv4Address::BROADCAST.into(), 68);
            s.send_slice(&out, to).unwrap();
            did = true;
        }
        Ok(did)
    }

    fn runs_elsewhere(&self) -> bool {
        false
    }
}

#[test]
fn dhcp_lease_is_taken_and_used() {
    use netstack::Ipv4Setup;
    use netstack::smoltcp::socket::udp;
    let (ea, eb) = wire::pair(&wire_config(), &wire_config()).unwrap();
    let mut cfg = stack_config(1);
    cfg.ipv4 = Ipv4Setup::Dhcp;
    cfg.ipv6 = None;
    let mut a = Stack::new(ea.into_device(RxAccess::Borrow), &cfg).unwrap();
    assert_eq!(a.ipv4_addr(), None);
    let mut b = Stack::new(eb.into_device(RxAccess::Borrow), &stack_config(2)).unwrap();
    let udp = b.add_udp_socket(8, 8 * 1500);
    b.sockets().get_mut::<udp::Socket>(udp).bind(67).unwrap();
    let mut other = DhcpServer {
        server: Server::new(b),
        udp,
        acks: 0,
    };
    let start = Instant::now();
    while a.ipv4_addr().is_none() {
        a.poll().unwrap();
        other.step().unwrap();
        assert!(start.elapsed().as_secs() < 30, "no lease");
    }
    assert_eq!(a.ipv4_addr(), Some(LEASED));
    assert_eq!(other.acks, 1);
    // The leased address works: B answers pings to it and A reaches B through it.
    assert_eq!(ping(&mut a, &mut other, IpAddress::Ipv4(ip4(2)), 3), 3);
    assert_eq!(udp_echo(&mut a, &mut other, 100, 16), 100);
}
