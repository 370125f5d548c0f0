//! The two NIC backends end to end, with the guest kernel's own e1000 driver standing in
//! for the project's driver: frames cross QEMU's UDP socket netdev in both directions, and a
//! tap in a network namespace connects the guest to the host Linux stack.

use std::time::Duration;

use rbufnic_tests::{
    FrameGen, Guest, HarnessError, MacAddr, NetNs, Nic, SendPlan, UdpPeer, nic_bdf,
};

/// Shell: `$ifc` := the kernel interface of the first NIC; `up` brings it up and waits
/// (up to 20 s) for carrier.
fn first_nic_ifc() -> String {
    format!(
        r#"ifc=$(ls /sys/bus/pci/devices/{}/net)
up() {{
    ip link set "$ifc" up
    n=0
    while [ "$(cat /sys/class/net/$ifc/carrier)" != 1 ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n+1)); done
}}"#,
        nic_bdf(0)
    )
}

#[test]
fn udp_backend_carries_frames_both_ways() -> Result<(), HarnessError> {
    let guest_mac = MacAddr::qemu(0x30);
    let (peer, backend) = UdpPeer::for_qemu()?;
    let frames = 40;
    let script = format!(
        r#"
{ifc}
up
echo "READY $ifc"
rx() {{ cat /sys/class/net/$ifc/statistics/rx_packets; }}
i=0
while [ "$(rx)" -lt {frames} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "rx-packets $(rx)"
arping -c 3 -w 5 -I "$ifc" 10.9.9.9 >/dev/null 2>&1
echo "tx-done"
"#,
        ifc = first_nic_ifc(),
    );
    let guest = Guest::builder()
        .nic(Nic::e1000(guest_mac, backend).kernel_driver())
        .timeout(Duration::from_secs(90))
        .spawn(&script)?;
    guest.wait_for_line("READY", Duration::from_secs(60))?;

    // Host → guest: the guest kernel counts what its e1000 received.
    let stream = FrameGen::new(11, guest_mac, MacAddr::qemu(0x31));
    let sent = peer.send(&stream, &SendPlan::new(frames).rate_per_sec(200))?;
    assert_eq!(sent.sent, frames);

    // Guest → host: busybox arping's ARP requests from the guest's MAC reach the peer.
    let mut arp_requests = 0;
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while arp_requests < 3 && std::time::Instant::now() < deadline {
        if let Some(len) = peer.recv_frame(&mut buf, Duration::from_millis(200))? {
            let f = &buf[..len];
            if len >= 42 && f[12..14] == [0x08, 0x06] && f[6..12] == guest_mac.0 {
                assert_eq!(&f[0..6], &MacAddr::BROADCAST.0);
                arp_requests += 1;
            }
        }
    }
    let out = guest.wait()?.expect_success()?;
    let rx: u64 = out
        .output
        .lines()
        .find_map(|l| l.strip_prefix("rx-packets "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rx-packets line:\n{}", out.output));
    assert!(rx >= frames, "guest received {rx} of {frames} frames");
    assert_eq!(
        arp_requests, 3,
        "ARP requests from the guest seen by the peer"
    );
    Ok(())
}

#[test]
fn tap_backend_reaches_the_host_stack() -> Result<(), HarnessError> {
    let ns = NetNs::create()?;
    let tap = ns.add_tap("rbntap0", "10.0.2.1/24")?;
    assert_eq!(tap.host_ip(), "10.0.2.1");
    let script = format!(
        r#"
{ifc}
ip addr add 10.0.2.15/24 dev "$ifc"
up
ping -c 3 -W 10 10.0.2.1 || exit 10
echo "READY $ifc"
echoes() {{ awk '/^Icmp:/ {{ if (!h) {{ for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i; h = 1 }} else {{ print $c; exit }} }}' /proc/net/snmp; }}
i=0
while [ "$(echoes)" -lt 3 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "echo-requests $(echoes)"
[ "$(echoes)" -ge 3 ]
"#,
        ifc = first_nic_ifc(),
    );
    let guest = Guest::builder()
        .nic(Nic::e1000(MacAddr::qemu(0x40), tap.backend()).kernel_driver())
        .timeout(Duration::from_secs(90))
        .spawn(&script)?;
    guest.wait_for_line("READY", Duration::from_secs(60))?;
    // The host stack inside the namespace pings the guest's kernel.
    let ping = ns
        .command("/bin/busybox")
        .args(["ping", "-c", "3", "-W", "10", "10.0.2.15"])
        .output()
        .expect("run ping in the namespace");
    let out = guest.wait()?;
    assert!(
        ping.status.success(),
        "host ping failed: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    let out = out.expect_success()?;
    assert!(out.output.contains("echo-requests "), "{}", out.output);
    Ok(())
}
