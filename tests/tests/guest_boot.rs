//! Smoke tests of the QEMU guest harness: the guest boots with two e1000 NICs bound to
//! vfio-pci behind the emulated IOMMU, huge pages reserved, host binaries runnable, and the
//! command's exit status comes back. Guests run one at a time (the harness serializes them).

use std::path::Path;
use std::time::{Duration, Instant};

use rbufnic_tests::{Guest, HarnessError, MacAddr, Nic, NicModel, UdpPeer, host_path, nic_bdf};

/// Value of the line `<key> <rest>` in `output`, panicking with the output if absent.
fn field<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key:?} line in guest output:\n{output}"))
}

#[test]
fn two_e1000_nics_are_bound_to_vfio_pci_behind_the_iommu() -> Result<(), HarnessError> {
    let (_peer0, backend0) = UdpPeer::for_qemu()?;
    let (_peer1, backend1) = UdpPeer::for_qemu()?;
    let exe = std::env::current_exe().expect("test executable path");
    let script = format!(
        r#"
for bdf in {nic0} {nic1}; do
    d=/sys/bus/pci/devices/$bdf
    echo "driver-$bdf $(basename "$(readlink $d/driver)")"
    echo "id-$bdf $(cat $d/vendor):$(cat $d/device)"
    g=$(basename "$(readlink $d/iommu_group)")
    if [ -c /dev/vfio/$g ]; then echo "group-$bdf $g"; else echo "group-$bdf missing-$g"; fi
done
[ -c /dev/vfio/vfio ] && echo "container /dev/vfio/vfio"
echo "dmar-lines $(dmesg | grep -c DMAR)"
echo "dmar-ir $(dmesg | grep -c 'DMAR-IR: Enabled IRQ remapping')"
echo "hugepages $(cat /proc/sys/vm/nr_hugepages)"
echo "hugepages-free $(awk '/HugePages_Free/ {{print $2}}' /proc/meminfo)"
echo "cwd $(pwd)"
echo "probe $RBN_PROBE"
echo "path $PATH"
echo "self-test-list $({exe} --list 2>&1 | grep -c ': test')"
"#,
        nic0 = nic_bdf(0),
        nic1 = nic_bdf(1),
        exe = host_path(&exe).display(),
    );
    let out = Guest::builder()
        .nic(Nic::e1000(MacAddr::qemu(0x10), backend0))
        .nic(Nic::e1000(MacAddr::qemu(0x11), backend1))
        .hugepages(16)
        .env("RBN_PROBE", "it's passed through")
        .timeout(Duration::from_secs(90))
        .run(&script)?
        .expect_success()?;
    let o = &out.output;

    let mut groups = Vec::new();
    for bdf in ["0000:00:03.0", "0000:00:04.0"] {
        assert_eq!(field(o, &format!("driver-{bdf}")), "vfio-pci", "{o}");
        assert_eq!(field(o, &format!("id-{bdf}")), "0x8086:0x100e", "{o}");
        let group = field(o, &format!("group-{bdf}"));
        assert!(
            group.parse::<u32>().is_ok(),
            "no /dev/vfio/<group> for {bdf}:\n{o}"
        );
        groups.push(group);
    }
    assert_ne!(
        groups[0], groups[1],
        "each NIC should have its own IOMMU group"
    );
    assert_eq!(field(o, "container"), "/dev/vfio/vfio");
    assert!(field(o, "dmar-lines").parse::<u32>().unwrap() > 0, "{o}");
    assert_eq!(field(o, "dmar-ir"), "1", "{o}");
    assert_eq!(field(o, "hugepages"), "16");
    assert_eq!(field(o, "hugepages-free"), "16");
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(Path::new(field(o, "cwd")), host_path(&cwd));
    assert_eq!(field(o, "probe"), "it's passed through");
    // The cargo profile directory (target/debug) is on PATH, after busybox.
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    assert_eq!(
        field(o, "path"),
        format!(
            "/bin:{}:/usr/bin:/usr/sbin",
            host_path(profile_dir).display()
        )
    );
    // This very test binary, run inside the guest from /host, lists this file's tests.
    assert_eq!(field(o, "self-test-list"), "5", "{o}");
    assert!(out.console_log.is_file());
    eprintln!("guest run took {:?}", out.duration);
    Ok(())
}

#[test]
fn every_nic_model_binds_to_vfio_pci() -> Result<(), HarnessError> {
    let models = [
        NicModel::E1000_82545EM,
        NicModel::E1000_82544GC,
        NicModel::VirtioNet,
    ];
    let mut builder = Guest::builder().timeout(Duration::from_secs(90));
    let mut peers = Vec::new();
    let mut script = String::new();
    for (i, model) in models.iter().enumerate() {
        let (peer, backend) = UdpPeer::for_qemu()?;
        peers.push(peer);
        builder = builder.nic(Nic::new(*model, MacAddr::qemu(0x50 + i as u8), backend));
        script.push_str(&format!(
            "d=/sys/bus/pci/devices/{bdf}; echo \"nic-{bdf} $(cat $d/vendor):$(cat $d/device) $(basename \"$(readlink $d/driver)\")\"\n",
            bdf = nic_bdf(i)
        ));
    }
    let out = builder.run(&script)?.expect_success()?;
    for (i, model) in models.iter().enumerate() {
        let (vendor, device) = model.pci_id();
        assert_eq!(
            field(&out.output, &format!("nic-{}", nic_bdf(i))),
            format!("{vendor:#06x}:{device:#06x} vfio-pci"),
            "{model:?}"
        );
    }
    Ok(())
}

#[test]
fn exit_status_and_output_come_back() -> Result<(), HarnessError> {
    let guest = Guest::builder()
        .timeout(Duration::from_secs(60))
        .spawn("echo before; echo 'READY at 42'; echo to-stderr >&2; exit 7")?;
    let line = guest.wait_for_line("READY", Duration::from_secs(50))?;
    assert_eq!(line, "READY at 42");
    let out = guest.wait()?;
    assert_eq!(out.exit_status, 7, "{}", out.output);
    assert_eq!(out.output, "before\nREADY at 42\nto-stderr");
    match out.expect_success() {
        Err(HarnessError::GuestCommandFailed {
            status,
            output_tail,
            ..
        }) => {
            assert_eq!(status, 7);
            assert!(output_tail.ends_with("to-stderr"), "{output_tail}");
        }
        other => panic!("expected GuestCommandFailed, got {other:?}"),
    }
    Ok(())
}

#[test]
fn a_hung_guest_is_killed_at_the_timeout() -> Result<(), HarnessError> {
    // Long enough for a boot on a loaded 2-core machine, short enough for the suite.
    let timeout = Duration::from_secs(20);
    let guest = Guest::builder()
        .timeout(timeout)
        .spawn("echo sleeping; sleep 600")?;
    // The deadline runs from QEMU's start, just before `spawn` returned.
    let spawned = Instant::now();
    let pid = guest.pid();
    guest.wait_for_line("sleeping", timeout)?;
    let err = guest.wait().expect_err("the guest sleeps past its timeout");
    let took = spawned.elapsed();
    match err {
        HarnessError::Timeout {
            timeout: t,
            pid: killed,
            console_log,
        } => {
            assert_eq!(t, timeout);
            assert_eq!(killed, pid);
            assert!(
                took + Duration::from_secs(1) >= timeout
                    && took < timeout + Duration::from_secs(10),
                "{took:?}"
            );
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "QEMU pid {pid} still exists"
            );
            let log = std::fs::read_to_string(&console_log).unwrap();
            assert!(log.contains("sleeping"), "console log:\n{log}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    Ok(())
}

#[test]
fn qemu_start_failure_reports_its_stderr() -> Result<(), HarnessError> {
    let (peer, _) = UdpPeer::for_qemu()?;
    // QEMU cannot bind the port the peer already holds, so it exits before booting.
    let taken = rbufnic_tests::Backend::Udp {
        qemu: peer.local_addr(),
        peer: peer.remote_addr(),
        netns: None,
    };
    let err = Guest::builder()
        .nic(Nic::e1000(MacAddr::qemu(0x12), taken))
        .timeout(Duration::from_secs(60))
        .run("true")
        .expect_err("QEMU cannot start");
    match err {
        HarnessError::NoExitMarker { status, stderr, .. } => {
            assert!(!status.success());
            assert!(stderr.contains("Address already in use"), "{stderr}");
        }
        other => panic!("expected NoExitMarker, got {other:?}"),
    }
    Ok(())
}
