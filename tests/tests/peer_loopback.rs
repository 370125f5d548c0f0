//! The traffic peer over real UDP sockets on loopback, two peers back to back, no QEMU.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rbufnic_tests::frame::FrameError;
use rbufnic_tests::{FrameGen, HarnessError, MacAddr, NetNs, ReceivePlan, SendPlan, UdpPeer};

fn stream(seed: u64) -> FrameGen {
    FrameGen::new(seed, MacAddr::qemu(0x20), MacAddr::qemu(0x21))
}

#[test]
fn frames_cross_back_to_back_byte_exact() -> Result<(), HarnessError> {
    let (a, b) = UdpPeer::pair()?;
    assert_eq!(a.remote_addr(), b.local_addr());
    assert_eq!(b.remote_addr(), a.local_addr());
    let s = stream(7).with_len_range(60, 9014)?;
    let count = 3000;
    let receiver = {
        let s = s.clone();
        std::thread::spawn(move || {
            b.receive(
                &s,
                &ReceivePlan::new(count)
                    .first_seq(1000)
                    .timeout(Duration::from_secs(20))
                    .linger(Duration::from_millis(200)),
            )
        })
    };
    let sent = a.send(
        &s,
        &SendPlan::new(count).first_seq(1000).rate_per_sec(5_000),
    )?;
    assert_eq!(sent.sent, count);
    assert!(!sent.stopped_by_time_limit);
    let expected_bytes: u64 = (1000..1000 + count).map(|seq| s.len_of(seq) as u64).sum();
    assert_eq!(sent.bytes, expected_bytes);
    let report = receiver.join().expect("receiver thread")?.check()?;
    assert_eq!(report.unique, count);
    assert_eq!(report.bytes, expected_bytes);
    assert_eq!(report.foreign, 0);
    Ok(())
}

#[test]
fn both_directions_at_once() -> Result<(), HarnessError> {
    let (a, b) = UdpPeer::pair()?;
    let (a_rx, b_rx) = (a.try_clone()?, b.try_clone()?);
    let ab = stream(1);
    let ba = FrameGen::new(2, MacAddr::qemu(0x21), MacAddr::qemu(0x20));
    let plan = ReceivePlan::new(500).timeout(Duration::from_secs(20));
    let (ab2, ba2, plan2) = (ab.clone(), ba.clone(), plan.clone());
    let at_b = std::thread::spawn(move || b_rx.receive(&ab2, &plan2));
    let at_a = std::thread::spawn(move || a_rx.receive(&ba2, &plan));
    let send = SendPlan::new(500).rate_per_sec(20_000);
    let sender = std::thread::spawn(move || b.send(&ba, &send));
    a.send(&ab, &SendPlan::new(500).rate_per_sec(20_000))?;
    sender.join().expect("sender thread")?;
    at_b.join().expect("receiver at b")?.check()?;
    at_a.join().expect("receiver at a")?.check()?;
    Ok(())
}

#[test]
fn loss_duplicates_reordering_and_corruption_are_reported() -> Result<(), HarnessError> {
    let (a, b) = UdpPeer::pair()?;
    let s = stream(3);
    let mut corrupt = s.frame(4);
    corrupt[40] ^= 0x10;
    for frame in [
        s.frame(0),
        s.frame(2),
        s.frame(1),
        s.frame(1),
        corrupt,
        s.frame(9),
    ] {
        a.send_frame(&frame)?;
    }
    let report = b.receive(&s, &ReceivePlan::new(6).timeout(Duration::from_millis(500)))?;
    assert_eq!(report.unique, 3, "{report}");
    assert_eq!(report.missing, 3, "{report}");
    assert_eq!(report.missing_samples, vec![3, 4, 5]);
    assert_eq!(report.duplicates, 1, "{report}");
    assert_eq!(report.reordered, 1, "{report}");
    assert_eq!(report.invalid, 1, "{report}");
    assert_eq!(report.out_of_range, 1, "{report}");
    assert!(matches!(
        report.invalid_samples[..],
        [FrameError::PayloadMismatch {
            seq: 4,
            offset: 40,
            ..
        }]
    ));
    match report.check() {
        Err(HarnessError::Traffic { report }) => assert_eq!(report.unique, 3),
        other => panic!("expected a traffic error, got {other:?}"),
    }
    Ok(())
}

#[test]
fn datagrams_from_strangers_are_ignored() -> Result<(), HarnessError> {
    let (a, b) = UdpPeer::pair()?;
    let s = stream(4);
    let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    stranger.send_to(&s.frame(0), b.local_addr()).unwrap();
    a.send_frame(&s.frame(1))?;
    let report = b.receive(&s, &ReceivePlan::new(2).timeout(Duration::from_millis(500)))?;
    assert_eq!(report.unique, 1, "{report}");
    assert_eq!(report.missing_samples, vec![0]);
    Ok(())
}

#[test]
fn receive_is_bounded_in_time() -> Result<(), HarnessError> {
    let (_a, b) = UdpPeer::pair()?;
    let start = Instant::now();
    let report = b.receive(
        &stream(5),
        &ReceivePlan::new(10).timeout(Duration::from_millis(300)),
    )?;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!((report.unique, report.missing), (0, 10));
    Ok(())
}

#[test]
fn sending_is_paced_and_bounded_in_time() -> Result<(), HarnessError> {
    let (a, _b) = UdpPeer::pair()?;
    let s = stream(6);
    let paced = a.send(&s, &SendPlan::new(101).rate_per_sec(1000))?;
    assert_eq!(paced.sent, 101);
    // Frame i leaves at i ms: the last one at 100 ms.
    assert!(paced.elapsed >= Duration::from_millis(100), "{paced}");
    assert!(paced.elapsed < Duration::from_secs(2), "{paced}");
    let cut = a.send(
        &s,
        &SendPlan::new(1_000_000)
            .rate_per_sec(1000)
            .time_limit(Duration::from_millis(200)),
    )?;
    assert!(cut.stopped_by_time_limit, "{cut}");
    assert!((100..=260).contains(&cut.sent), "{cut}");
    Ok(())
}

#[test]
fn only_loopback_addresses_are_accepted() {
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let outside = SocketAddr::from(([10, 11, 12, 13], 4000));
    assert!(matches!(
        UdpPeer::bind(lo, outside),
        Err(HarnessError::NotLoopback { .. })
    ));
}

/// Peers made inside a namespace talk to each other there and are unreachable from the
/// host's loopback. Needs root, like every namespace.
#[test]
fn peers_in_a_network_namespace_are_isolated() -> Result<(), HarnessError> {
    let ns = NetNs::create()?;
    let (peer, backend) = UdpPeer::for_qemu_in(&ns)?;
    let rbufnic_tests::Backend::Udp {
        qemu,
        peer: peer_addr,
        netns,
    } = backend
    else {
        panic!("expected a UDP backend");
    };
    assert_eq!(netns.as_deref(), Some(ns.name()));
    assert_eq!(peer_addr, peer.local_addr());
    // Stand in for QEMU inside the namespace.
    let fake_qemu = ns.run_in(|| UdpPeer::bind(qemu, peer_addr))??;
    let s = stream(8);
    fake_qemu.send(&s, &SendPlan::new(50))?;
    peer.receive(&s, &ReceivePlan::new(50).timeout(Duration::from_secs(5)))?
        .check()?;
    // The peer's port is still free on the host's loopback: the sockets live elsewhere.
    UdpSocket::bind(peer_addr).expect("the namespace's port is free on the host");
    assert!(UdpSocket::bind(peer_addr).is_ok());
    let name = ns.name().to_owned();
    drop(ns);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace {name} survived its drop"
    );
    Ok(())
}
