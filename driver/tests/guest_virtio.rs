//! Issue 4's checks, run in the QEMU guest of `rbufnic-tests`: the virtio-net driver owns
//! QEMU's `virtio-net-pci,disable-legacy=on,iommu_platform=on` through VFIO behind the
//! emulated Intel IOMMU, while the host traffic peer (QEMU's UDP socket netdev) sends and
//! receives test frames. The same checks as `guest_e1000.rs`, through the same guest side
//! (`nic_smoke`, which opens whatever NIC is at the address with `driver::AnyNic`).

use std::time::Duration;

use rbufnic_tests::{FrameGen, Guest, HarnessError, MacAddr, Nic, SendPlan, UdpPeer, nic_bdf};

mod common;

use common::{
    PEER_MAC, field, frames_bytes, interrupt_counts, lines_after, rx_times, smoke_cmd, stat,
};

#[test]
fn virtio_ten_thousand_frames_each_way_arrive_byte_exact_and_the_counters_agree()
-> Result<(), HarnessError> {
    const N: u64 = 10_000;
    let r = common::frames_each_way(Nic::virtio, MacAddr::qemu(0x61), 61, N)?;
    let out = &r.out;
    assert_eq!(field(out, "driver"), "virtio-net", "{}", out.output);
    assert_eq!(
        field(out, "device"),
        "1af4:1041 qemu true",
        "{}",
        out.output
    );
    // Link from the device configuration (VIRTIO_NET_F_STATUS).
    assert!(field(out, "link").starts_with("up "), "{}", out.output);
    // The driver's own counters (virtio has none): frame bytes, no FCS.
    assert_eq!(stat(out, "rx_bytes"), frames_bytes(&r.to_guest, N));
    assert_eq!(stat(out, "tx_bytes"), frames_bytes(&r.from_guest, N));
    assert_eq!(stat(out, "refused"), 0);
    Ok(())
}

#[test]
fn virtio_a_three_extent_tx_iorec_arrives_as_one_correct_frame() -> Result<(), HarnessError> {
    common::three_extent_frames(Nic::virtio, MacAddr::qemu(0x62), 62, 300)
}

#[test]
fn virtio_msix_interrupt_mode_receives_a_burst_without_busy_polling() -> Result<(), HarnessError> {
    const N: u64 = 2000;
    let guest_mac = MacAddr::qemu(0x63);
    let (peer, backend) = UdpPeer::for_qemu()?;
    let bdf = nic_bdf(0);
    let script = format!(
        "{} && {}",
        smoke_cmd(&format!(
            "--pci {bdf} --seed 63 --peer-mac {PEER_MAC} --rx {N} --interrupts"
        )),
        smoke_cmd(&format!(
            "--pci {bdf} --seed 64 --peer-mac {PEER_MAC} --rx {N}"
        ))
    );
    let guest = Guest::builder()
        .hugepages(8)
        .nic(Nic::virtio(guest_mac, backend))
        .timeout(Duration::from_secs(400))
        .spawn(&script)?;
    // The same paced burst for interrupt mode, then for polling mode.
    for seed in [63, 64] {
        guest.wait_for_line(
            &format!("rx-ready {N} seed {seed}"),
            Duration::from_secs(180),
        )?;
        let stream = FrameGen::new(seed, guest_mac, PEER_MAC);
        peer.send(&stream, &SendPlan::new(N).rate_per_sec(400))?;
    }
    let out = guest.wait()?;
    assert_eq!(out.exit_status, 0, "{}", out.output);
    let runs = rx_times(&out);
    assert_eq!(runs.len(), 2, "{}", out.output);
    let ((irq_wall, irq_cpu), (poll_wall, poll_cpu)) = (runs[0], runs[1]);
    eprintln!(
        "interrupts: {irq_cpu} ms CPU in {irq_wall} ms; polling: {poll_cpu} ms CPU in {poll_wall} ms"
    );
    assert!(
        poll_cpu * 10 > poll_wall * 8,
        "polling should busy-wait: {}",
        out.output
    );
    assert!(
        irq_cpu * 3 < irq_wall,
        "interrupt mode busy-waited: {}",
        out.output
    );
    assert!(irq_cpu * 3 < poll_cpu, "{}", out.output);
    // Woken by MSI-X (at most once per frame: EVENT_IDX asks for one at the next frame);
    // never in polling mode.
    let interrupts = interrupt_counts(&out);
    assert!(interrupts[0] > 0 && interrupts[0] <= N, "{}", out.output);
    assert_eq!(interrupts[1], 0, "{}", out.output);
    Ok(())
}

#[test]
fn virtio_the_iommu_refuses_dma_outside_the_mappings_and_into_tx_areas() -> Result<(), HarnessError>
{
    let guest_mac = MacAddr::qemu(0x64);
    let (peer, backend) = UdpPeer::for_qemu()?;
    let bdf = nic_bdf(0);
    let script = format!(
        "{} && {} && sleep 1 && dmesg | grep -i 'fault addr'",
        smoke_cmd(&format!(
            "--pci {bdf} --seed 65 --peer-mac {PEER_MAC} --fault unmapped"
        )),
        smoke_cmd(&format!(
            "--pci {bdf} --seed 66 --peer-mac {PEER_MAC} --fault tx-area"
        )),
    );
    let guest = Guest::builder()
        .hugepages(8)
        .nic(Nic::virtio(guest_mac, backend))
        .timeout(Duration::from_secs(300))
        .spawn(&script)?;
    for seed in [65, 66] {
        guest.wait_for_line(&format!("rx-ready 2 seed {seed}"), Duration::from_secs(180))?;
        let stream = FrameGen::new(seed, guest_mac, PEER_MAC);
        peer.send(&stream, &SendPlan::new(2).rate_per_sec(20))?;
    }
    let out = guest.wait()?;
    assert_eq!(out.exit_status, 0, "{}", out.output);
    let iovas = lines_after(&out, "fault-iova");
    assert_eq!(iovas.len(), 2, "{}", out.output);
    for iova in &iovas {
        assert!(
            out.output
                .lines()
                .any(|l| l.contains("DMA Write") && l.contains(&format!("fault addr {iova}"))),
            "no DMAR write fault at {iova}:\n{}",
            out.output
        );
    }
    let unchanged = out
        .output
        .lines()
        .filter(|l| *l == "areas-unchanged yes")
        .count();
    assert_eq!(unchanged, 2, "{}", out.output);
    // The NIC keeps working after each refused write: the second frame arrives.
    let after = out
        .output
        .lines()
        .filter(|l| l.starts_with("after-fault-rx seq 1"))
        .count();
    assert_eq!(after, 2, "{}", out.output);
    Ok(())
}

#[test]
fn virtio_without_access_platform_is_refused_and_any_nic_picks_the_driver()
-> Result<(), HarnessError> {
    let (_p0, b0) = UdpPeer::for_qemu()?;
    let (_p1, b1) = UdpPeer::for_qemu()?;
    let (_p2, b2) = UdpPeer::for_qemu()?;
    // Only stderr is counted: the guest side runs inside a libtest binary, which prints
    // its own banner on stdout.
    let case = |name: &str, args: &str| {
        format!(
            "out=$({cmd} 2>&1 >/dev/null); st=$?; \
             echo \"case {name} status $st lines $(printf '%s\\n' \"$out\" | grep -c .)\"; \
             echo \"said {name} $out\"",
            cmd = smoke_cmd(args)
        )
    };
    let script = [
        case("no-access-platform", &format!("--pci {}", nic_bdf(0))),
        case(
            "wrong-device",
            &format!("--driver virtio-net --pci {}", nic_bdf(1)),
        ),
        format!(
            "{} | grep -E '^(driver|mac|link) '",
            smoke_cmd(&format!("--pci {}", nic_bdf(1)))
        ),
        format!(
            "{} | grep -E '^(driver|mac|link) '",
            smoke_cmd(&format!("--pci {}", nic_bdf(2)))
        ),
    ]
    .join("\n");
    let out = Guest::builder()
        .hugepages(8)
        .nic(Nic::virtio_without_iommu_platform(MacAddr::qemu(0x65), b0))
        .nic(Nic::e1000(MacAddr::qemu(0x66), b1))
        .nic(Nic::virtio(MacAddr::qemu(0x67), b2))
        .timeout(Duration::from_secs(300))
        .run(&script)?;
    assert!(!out.output.contains("panicked"), "{}", out.output);
    let expect = [
        (
            "no-access-platform",
            "error: 0000:00:03.0: the virtio device does not offer VIRTIO_F_ACCESS_PLATFORM \
             (feature bit 33): without it the device bypasses the IOMMU",
        ),
        (
            "wrong-device",
            "error: 0000:00:04.0 is 8086:100e, not a device the virtio-net driver supports \
             (1af4:1041, 1af4:1000)",
        ),
    ];
    for (name, start) in expect {
        assert_eq!(
            field(&out, &format!("case {name}")),
            "status 1 lines 1",
            "{}",
            out.output
        );
        let said = field(&out, &format!("said {name}"));
        assert!(said.starts_with(start), "{name}: {said:?}\n{}", out.output);
    }
    assert!(
        field(&out, "said no-access-platform").contains("iommu_platform=on"),
        "{}",
        out.output
    );
    // "Open whatever NIC is at this address": each gets its own driver.
    let drivers = lines_after(&out, "driver");
    assert_eq!(drivers, ["e1000", "virtio-net"], "{}", out.output);
    let macs = lines_after(&out, "mac");
    assert_eq!(
        macs,
        [
            MacAddr::qemu(0x66).to_string(),
            MacAddr::qemu(0x67).to_string()
        ],
        "{}",
        out.output
    );
    Ok(())
}

#[test]
fn virtio_promiscuous_mode_is_set_through_the_control_queue() -> Result<(), HarnessError> {
    common::check_promiscuous_mode(Nic::virtio, MacAddr::qemu(0x68), 70)
}
