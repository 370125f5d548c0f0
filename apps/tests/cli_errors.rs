//! Bad input to every subcommand on the host: each mistake gives one clear line on stderr
//! (said once) and exit status 1, before any device is touched (bus ee does not exist on
//! the machines this runs on).

use std::process::Command;

/// Runs `rbufnic ARGS`; returns (exit code, stderr lines).
fn rbufnic(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_rbufnic"))
        .args(args)
        .output()
        .expect("run rbufnic");
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().map(str::to_owned).collect(),
    )
}

#[test]
fn each_mistake_gives_one_line_and_exit_status_1() {
    let dir = std::env::temp_dir().join(format!("rbufnic-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("x.pcap");
    let pcap = pcap.to_str().unwrap();
    for (args, message) in [
        (
            &["fwd", "0000:00:03", "0000:00:04.0"][..],
            "rbufnic: port A (0000:00:03): malformed PCI address \"0000:00:03\"",
        ),
        (
            &["fwd", "0000:00:03.0", "00:2g.0"][..],
            "rbufnic: port B (00:2g.0): malformed PCI address \"00:2g.0\"",
        ),
        (
            &["fwd", "0000:00:03.0", "00:03.0"][..],
            "rbufnic: port A and port B are the same device 0000:00:03.0",
        ),
        (
            &["fwd", "0000:00:03.0", "0000:00:04.0", "--batch", "0"][..],
            "rbufnic: --batch must be 1 to 4096, not 0",
        ),
        (
            &[
                "fwd",
                "0000:00:03.0",
                "0000:00:04.0",
                "--rewrite-dst-mac",
                "02:00:00:00:00",
            ][..],
            "rbufnic: bad MAC address \"02:00:00:00:00\"",
        ),
        (
            &["fwd", "0000:00:03.0", "0000:00:04.0", "--duration", "0"][..],
            "rbufnic: --duration must be a positive number of seconds, not 0",
        ),
        (
            &["fwd", "0000:ee:00.0", "0000:ee:01.0", "--count", "1"][..],
            "rbufnic: port A (0000:ee:00.0): no PCI device 0000:ee:00.0",
        ),
        (
            &["pktgen", "0000:ee:00.0", "--count", "1"][..],
            "rbufnic: TX port (0000:ee:00.0): no PCI device 0000:ee:00.0",
        ),
        (
            &["pktgen", "00:04", "--count", "1"][..],
            "rbufnic: TX port (00:04): malformed PCI address \"00:04\"",
        ),
        (
            &["pktgen", "0000:ee:00.0", "--size", "59"][..],
            "rbufnic: --size must be 60 to 1514 bytes, not 59",
        ),
        (
            &["pktgen", "0000:ee:00.0", "--rate=-5"][..],
            "rbufnic: --rate must be a positive number of frames per second",
        ),
        (
            &["pktgen", "0000:ee:00.0", "--rx", "0000:ee:00.0"][..],
            "rbufnic: --rx names the sending port 0000:ee:00.0",
        ),
        (
            &["pktgen", "0000:ee:00.0", "--dst-mac", "ff:ff"][..],
            "rbufnic: bad MAC address \"ff:ff\"",
        ),
        (
            &[
                "capture",
                "0000:ee:00.0",
                "--out",
                "/nonexistent/dir/x.pcap",
            ][..],
            "rbufnic: cannot write /nonexistent/dir/x.pcap: No such file or directory",
        ),
        (
            &["capture", "0000:ee:00.0", "--out", pcap][..],
            "rbufnic: 0000:ee:00.0: no PCI device 0000:ee:00.0",
        ),
        (
            &["capture", "0000:ee:00.0", "--out", pcap, "--snaplen", "0"][..],
            "rbufnic: --snaplen must be at least 1",
        ),
        (
            &["bind", "0000:ee:00.0"][..],
            "rbufnic: no PCI device 0000:ee:00.0 (see `rbufnic list`)",
        ),
        (
            &["unbind", "0000:ee:0.0"][..],
            "rbufnic: malformed PCI address \"0000:ee:0.0\"",
        ),
        (
            &["serve", "0000:ee:00.0", "--ip", "10.0.2.15"][..],
            "rbufnic: --ip wants ADDR/LEN like 10.0.2.15/24, not \"10.0.2.15\"",
        ),
        (
            &[
                "serve",
                "0000:ee:00.0",
                "--ip",
                "10.0.2.15/24",
                "--gateway",
                "10.9.9.9",
            ][..],
            "rbufnic: configuration: IPv4 gateway 10.9.9.9 is outside 10.0.2.15/24",
        ),
        (
            &["serve", "0000:ee:00.0", "--dhcp", "--root", "/nonexistent"][..],
            "rbufnic: --root /nonexistent is not a directory",
        ),
        (
            &["serve", "0000:ee:00.0", "--ip", "10.0.2.15/24"][..],
            "rbufnic: 0000:ee:00.0: no PCI device 0000:ee:00.0",
        ),
    ] {
        let (code, lines) = rbufnic(args);
        assert_eq!(code, Some(1), "{args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with(message), "{args:?}: {lines:?}");
        // Said once: the error chain does not repeat itself.
        let core = message.rsplit(": ").next().unwrap_or(message);
        assert_eq!(lines[0].matches(core).count(), 1, "said twice: {lines:?}");
    }
    // A capture that never started leaves no file behind.
    assert!(!std::path::Path::new(pcap).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
