//! Issue 6's checks of `rbufnic fwd` and `rbufnic list` in the QEMU guest of
//! `rbufnic-tests`: the same job the README's first command runs, at CI size, and the
//! one-line errors for devices the forwarder cannot use.

use std::path::PathBuf;
use std::time::Duration;

use rbufnic_tests::fwd_job::{self, FwdJob};
use rbufnic_tests::{Guest, HarnessError, MacAddr, Nic, NicModel, UdpPeer, host_path, nic_bdf};

fn rbufnic() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rbufnic"))
}

/// Runs the job; returns its outcome after checking what every run must satisfy.
fn run_job(job: &FwdJob) -> Result<fwd_job::FwdOutcome, HarnessError> {
    let out = fwd_job::run(job, &mut |step| eprintln!("qemu-fwd: {step}"), &mut |p| {
        for f in &p.flows {
            eprintln!(
                "qemu-fwd: {:>5.1}s sent {} received {}",
                p.elapsed.as_secs_f64(),
                f.sent,
                f.received.unique
            );
        }
    })?;
    let problems = out.problems();
    assert!(
        problems.is_empty(),
        "{problems:#?}\nguest output:\n{}",
        out.guest.output
    );
    for f in &out.flows {
        let r = &f.received;
        let n = job.count;
        assert_eq!((f.sent, r.unique, r.missing), (n, n, 0), "{}: {r}", f.name);
        assert_eq!(
            (r.reordered, r.duplicates, r.invalid),
            (0, 0, 0),
            "{}: {r}",
            f.name
        );
        // Mixed sizes: the stream's lengths span the Ethernet range.
        assert!(r.bytes > n * 600 && r.bytes < n * 1000, "{}: {r}", f.name);
    }
    assert_eq!(out.summary_field("unaccounted_buffers"), Some(0));
    // The per-second statistics line appeared while traffic flowed.
    assert!(
        out.guest
            .output
            .lines()
            .any(|l| l.starts_with("fwd ") && l.contains("A rx ") && l.contains(" | B rx ")),
        "{}",
        out.guest.output
    );
    Ok(out)
}

/// Checks the forwarder's own summary counts.
fn assert_summary(out: &fwd_job::FwdOutcome, want: &[(&str, u64)]) {
    for &(key, value) in want {
        assert_eq!(
            out.summary_field(key),
            Some(value),
            "{key}\n{}",
            out.guest.output
        );
    }
}

/// `n` frames each way through `model` NICs: both ports receive and send `n`.
fn both_ways(model: NicModel, n: u64) -> Result<(), HarnessError> {
    let job = FwdJob {
        both_ways: true,
        model,
        ..FwdJob::new(rbufnic(), n, 1_500)
    };
    let out = run_job(&job)?;
    assert_summary(
        &out,
        &[
            ("forwarded", 2 * n),
            ("a_rx", n),
            ("a_tx", n),
            ("b_rx", n),
            ("b_tx", n),
        ],
    );
    Ok(())
}

#[test]
fn fwd_forwards_20000_mixed_size_frames_in_order_byte_exact_without_loss()
-> Result<(), HarnessError> {
    const N: u64 = 20_000;
    let out = run_job(&FwdJob::new(rbufnic(), N, 2_000))?;
    // The forwarder's own counts agree with the host's: every frame in on A, out on B,
    // nothing the other way.
    assert_summary(
        &out,
        &[
            ("forwarded", N),
            ("a_rx", N),
            ("b_tx", N),
            ("a_tx", 0),
            ("b_rx", 0),
        ],
    );
    Ok(())
}

#[test]
fn fwd_forwards_both_ways_at_once_through_one_pool() -> Result<(), HarnessError> {
    both_ways(NicModel::E1000_82540EM, 6_000)
}

#[test]
fn fwd_forwards_both_ways_between_two_virtio_net_nics() -> Result<(), HarnessError> {
    both_ways(NicModel::VirtioNet, 4_000)
}

#[test]
fn list_shows_bindings_and_fwd_refuses_unusable_devices_in_one_line() -> Result<(), HarnessError> {
    let (_peer_a, backend_a) = UdpPeer::for_qemu()?;
    let (_peer_b, backend_b) = UdpPeer::for_qemu()?;
    let exe = host_path(&rbufnic());
    let (vfio, kernel) = (nic_bdf(0), nic_bdf(1));
    // Two e1000s behind a conventional PCI bridge share its IOMMU group: one goes to
    // vfio-pci, the other stays with the kernel, so the group is not viable.
    let (bridged, sibling) = ("0000:01:01.0", "0000:01:02.0");
    let script = format!(
        "{exe} bind {bridged}; \
         {exe} list; \
         {exe} fwd {vfio} {kernel} --count 1; echo \"exit-not-bound $?\"; \
         {exe} fwd {vfio} 0000:00:1f.6 --count 1; echo \"exit-no-device $?\"; \
         {exe} fwd {vfio} 00:04 --count 1; echo \"exit-malformed $?\"; \
         {exe} fwd {vfio} {bridged} --count 1; echo \"exit-not-viable $?\"",
        exe = exe.display()
    );
    let out = Guest::builder()
        .nic(Nic::e1000(MacAddr::qemu(0x51), backend_a))
        .nic(Nic::e1000(MacAddr::qemu(0x52), backend_b).kernel_driver())
        .device("pci-bridge,id=br0,chassis_nr=1,addr=0x1e")
        .device("e1000,bus=br0,addr=0x1,mac=52:54:00:12:34:53,romfile=")
        .device("e1000,bus=br0,addr=0x2,mac=52:54:00:12:34:54,romfile=")
        .hugepages(16)
        .timeout(Duration::from_secs(240))
        .run(&script)?;
    let o = &out.output;
    assert_eq!(out.exit_status, 0, "{o}");
    let listed = out.line_starting(&vfio);
    assert!(
        listed.contains("8086:100e") && listed.contains("vfio-pci") && listed.ends_with("ready"),
        "{listed}"
    );
    let listed = out.line_starting(&kernel);
    assert!(
        listed.contains(" e1000 ")
            && listed.contains("group not viable")
            && listed.contains("[eth"),
        "{listed}"
    );
    let listed = out.line_starting(sibling);
    assert!(
        listed.contains(" e1000 ") && listed.contains("group not viable: 0000:01:02.0 (e1000)"),
        "{listed}"
    );
    assert!(o.contains(&format!("{bridged}: e1000 -> vfio-pci")), "{o}");
    // Nothing but the one line per mistake: no log noise from the VFIO crate.
    assert!(!o.contains("vfio_ioctls"), "{o}");
    for (code, message) in [
        ("exit-not-bound 1", "is bound to e1000, not vfio-pci"),
        ("exit-no-device 1", "no PCI device 0000:00:1f.6"),
        ("exit-malformed 1", "malformed PCI address \"00:04\""),
        (
            "exit-not-viable 1",
            "is not viable: bind 0000:01:02.0 (e1000) to vfio-pci too",
        ),
    ] {
        assert!(o.contains(code), "{code}:\n{o}");
        let errors: Vec<&str> = o.lines().filter(|l| l.contains(message)).collect();
        assert_eq!(errors.len(), 1, "{message}:\n{o}");
        assert!(errors[0].starts_with("rbufnic: port B"), "{}", errors[0]);
        assert_eq!(errors[0].matches(message).count(), 1, "{}", errors[0]);
    }
    Ok(())
}
