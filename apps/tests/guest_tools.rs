//! Issue 6's checks of `rbufnic bind`/`unbind`, `pktgen` and `capture` in the QEMU guest
//! of `rbufnic-tests`, one guest for all three: a kernel-driven e1000 is refused while its
//! interface is up, then moved to vfio-pci and back; `pktgen` sends probes to a host sink
//! that checks every one; host traffic goes into `capture`, and tshark and tcpdump read
//! the file with the right count and bytes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbufnic::pktgen::probe::{self, Received};
use rbufnic_tests::frame::FrameGen;
use rbufnic_tests::{Guest, HarnessError, MacAddr, Nic, SendPlan, UdpPeer, host_path, nic_bdf};

fn rbufnic() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rbufnic"))
}

/// What the host sink saw of the probes.
#[derive(Debug, Default)]
struct Sink {
    seqs: BTreeSet<u64>,
    frames: u64,
    flows: BTreeSet<u16>,
    bad: u64,
    sizes: BTreeSet<usize>,
}

/// Receives probes on `peer` until `count` distinct ones came and the line was quiet
/// for a second, or `timeout` passed.
fn sink(peer: &UdpPeer, count: u64, timeout: Duration) -> Result<Sink, HarnessError> {
    let deadline = Instant::now() + timeout;
    let mut s = Sink::default();
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        let wait = if s.seqs.len() as u64 >= count {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(200)
        };
        match peer.recv_frame(&mut buf, wait)? {
            Some(len) => {
                s.frames += 1;
                s.sizes.insert(len);
                match probe::parse(&buf[..len]) {
                    Received::Probe(p) => {
                        s.seqs.insert(p.seq);
                        s.flows.insert(p.flow);
                    }
                    _ => s.bad += 1,
                }
            }
            None if s.seqs.len() as u64 >= count => break,
            None => {}
        }
    }
    Ok(s)
}

/// The wire between the generator's two ports: frames from `from` go out on `to`, until
/// `count` went or `timeout` passed. Returns how many.
fn relay(from: &UdpPeer, to: &UdpPeer, count: u64, timeout: Duration) -> Result<u64, HarnessError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    let mut n = 0;
    while n < count && Instant::now() < deadline {
        if let Some(len) = from.recv_frame(&mut buf, Duration::from_millis(200))? {
            to.send_frame(&buf[..len])?;
            n += 1;
        }
    }
    Ok(n)
}

#[test]
fn bind_unbind_pktgen_and_capture_in_one_guest() -> Result<(), HarnessError> {
    const PROBES: u64 = 3_000;
    const CAPTURED: u64 = 2_000;
    const LOOPED: u64 = 2_000;
    let (peer_a, backend_a) = UdpPeer::for_qemu()?;
    let (peer_b, backend_b) = UdpPeer::for_qemu()?;
    let (_peer_c, backend_c) = UdpPeer::for_qemu()?;
    let exe = host_path(&rbufnic());
    let (a, b, k) = (nic_bdf(0), nic_bdf(1), nic_bdf(2));
    let script = format!(
        "R={exe}; K={k}; IF=$(ls /sys/bus/pci/devices/$K/net); echo \"kernel-if $IF\"
         ip link set $IF up
         $R bind $K; echo \"exit-bind-up $?\"
         ip link set $IF down
         $R bind $K; echo \"exit-bind $?\"
         $R list
         $R unbind $K; echo \"exit-unbind $?\"
         echo \"if-after-unbind $(ls /sys/bus/pci/devices/$K/net)\"
         $R bind $K >/dev/null && $R bind $K; echo \"exit-bind-again $?\"
         NOBODY=\"/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups\"
         $NOBODY $R unbind $K; echo \"exit-unbind-nobody $?\"
         $NOBODY $R pktgen {a} --count 1; echo \"exit-pktgen-nobody $?\"
         $R pktgen {a} --tx-only --count {PROBES} --rate 2000 --size 300 --flows 4; echo \"exit-pktgen $?\"
         $R pktgen {a} --rx {b} --count {LOOPED} --rate 1000 --size 128 --linger 2; echo \"exit-pktgen-rx $?\"
         $R capture {b} --out /tmp/cap.pcap --count {CAPTURED} --duration 90; echo \"exit-capture $?\"
         echo \"tshark-count $(tshark -r /tmp/cap.pcap 2>/dev/null | wc -l)\"
         echo \"tcpdump-count $(tcpdump -nn -r /tmp/cap.pcap 2>/dev/null | grep -vc '^[[:space:]]')\"
         tshark -r /tmp/cap.pcap -T fields -e frame.len 2>/dev/null | awk '{{s+=$1}} END {{print \"tshark-bytes\", s}}'
         $R capture {b} --out /proc/nope.pcap --count 1; echo \"exit-capture-unwritable $?\"",
        exe = exe.display()
    );
    let guest = Guest::builder()
        .nic(Nic::e1000(MacAddr::qemu(0x61), backend_a))
        .nic(Nic::e1000(MacAddr::qemu(0x62), backend_b))
        .nic(Nic::e1000(MacAddr::qemu(0x63), backend_c).kernel_driver())
        .hugepages(32)
        .timeout(Duration::from_secs(420))
        .spawn(&script)?;
    guest.wait_for_line("pktgen ready", Duration::from_secs(180))?;
    let probes = sink(&peer_a, PROBES, Duration::from_secs(60))?;
    guest.wait_for_line("receiving on", Duration::from_secs(60))?;
    let relayed = relay(&peer_a, &peer_b, LOOPED, Duration::from_secs(60))?;
    guest.wait_for_line("capture ready", Duration::from_secs(60))?;
    let stream = FrameGen::new(7, MacAddr::qemu(0x62), MacAddr([2, 0, 0, 0, 0, 9]))
        .with_len_range(60, 1514)
        .expect("length range");
    let sent = peer_b.send(&stream, &SendPlan::new(CAPTURED).rate_per_sec(1500))?;
    let out = guest.wait()?;
    let o = &out.output;
    assert_eq!(out.exit_status, 0, "{o}");

    // bind/unbind: refused while up (one clear line), then to vfio-pci and back.
    let iface = out.line_starting("kernel-if ")["kernel-if ".len()..].to_string();
    assert!(iface.starts_with("eth"), "{o}");
    assert!(o.contains("exit-bind-up 1"), "{o}");
    let refusals: Vec<&str> = o.lines().filter(|l| l.contains("which is up")).collect();
    assert_eq!(refusals.len(), 1, "{o}");
    assert!(
        refusals[0].starts_with(&format!("rbufnic: {k} carries interface {iface}")),
        "{o}"
    );
    assert!(o.contains("exit-bind 0"), "{o}");
    assert!(o.contains(&format!("{k}: e1000 -> vfio-pci")), "{o}");
    let listed = out.line_starting(&format!("{k} "));
    assert!(
        listed.contains("vfio-pci") && listed.ends_with("ready"),
        "{listed}"
    );
    assert!(o.contains("exit-unbind 0"), "{o}");
    assert!(o.contains(&format!("{k}: vfio-pci -> e1000")), "{o}");
    assert!(out.line_starting("if-after-unbind ").contains("eth"), "{o}");
    assert!(
        o.contains(&format!("{k}: already on vfio-pci (vfio-pci)")),
        "{o}"
    );
    assert!(o.contains("exit-bind-again 0"), "{o}");
    // Without root: one line each, saying why.
    assert!(o.contains("exit-unbind-nobody 1"), "{o}");
    let no_root: Vec<&str> = o
        .lines()
        .filter(|l| l.contains("(binding drivers needs root)"))
        .collect();
    assert_eq!(no_root.len(), 1, "{o}");
    assert!(
        no_root[0].starts_with("rbufnic: clear driver_override "),
        "{o}"
    );
    assert!(o.contains("exit-pktgen-nobody 1"), "{o}");
    let denied: Vec<&str> = o
        .lines()
        .filter(|l| l.starts_with(&format!("rbufnic: TX port ({a})")))
        .collect();
    assert_eq!(denied.len(), 1, "{o}");

    // pktgen: every probe arrived intact at the host, over 4 flows, at the asked size.
    assert!(o.contains("exit-pktgen 0"), "{o}");
    let summary = out.line_starting("summary sent=");
    assert!(
        summary.starts_with(&format!("summary sent={PROBES} tx_done={PROBES} ")),
        "{summary}"
    );
    assert_eq!(probes.seqs.len() as u64, PROBES, "{probes:?}");
    assert_eq!(probes.seqs.last(), Some(&(PROBES - 1)));
    assert_eq!((probes.frames, probes.bad), (PROBES, 0));
    assert_eq!(probes.flows, (0..4).collect());
    assert_eq!(probes.sizes, [300].into());

    // pktgen receiving on a second port: all back, in order, with latencies.
    assert_eq!(relayed, LOOPED);
    assert!(o.contains("exit-pktgen-rx 0"), "{o}");
    let summary = o
        .lines()
        .filter(|l| l.starts_with("summary sent="))
        .nth(1)
        .unwrap_or_else(|| panic!("no second pktgen summary in:\n{o}"));
    let field = |k: &str| -> u64 {
        summary
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {summary}"))
    };
    assert_eq!(
        [
            field("sent"),
            field("received"),
            field("lost"),
            field("reordered")
        ],
        [LOOPED, LOOPED, 0, 0],
        "{summary}"
    );
    assert_eq!(
        [field("duplicates"), field("corrupt"), field("other")],
        [0, 0, 0],
        "{summary}"
    );
    assert!(
        field("p50_ns") > 0 && field("p99_ns") >= field("p50_ns"),
        "{summary}"
    );

    // capture: the host's frames, counted by tshark and tcpdump, bytes matching.
    assert_eq!(sent.sent, CAPTURED);
    assert!(o.contains("exit-capture 0"), "{o}");
    assert_eq!(
        out.line_starting("tshark-count "),
        format!("tshark-count {CAPTURED}"),
        "{o}"
    );
    assert_eq!(
        out.line_starting("tcpdump-count "),
        format!("tcpdump-count {CAPTURED}"),
        "{o}"
    );
    assert_eq!(
        out.line_starting("tshark-bytes "),
        format!("tshark-bytes {}", sent.bytes),
        "{o}"
    );
    assert!(
        out.line_starting("summary frames=")
            .starts_with(&format!("summary frames={CAPTURED} bytes={} ", sent.bytes)),
        "{o}"
    );
    // An unwritable pcap path: one line, non-zero exit.
    assert!(o.contains("exit-capture-unwritable 1"), "{o}");
    let errors: Vec<&str> = o
        .lines()
        .filter(|l| l.contains("cannot write /proc/nope.pcap"))
        .collect();
    assert_eq!(errors.len(), 1, "{o}");
    Ok(())
}
