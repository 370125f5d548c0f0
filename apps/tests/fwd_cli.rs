//! `rbufnic fwd`'s bad input on the host: each mistake gives one clear line on stderr and
//! a non-zero exit, before any device is touched.

use std::process::Command;

/// Runs `rbufnic fwd ARGS`; returns (exit code, stderr lines).
fn fwd(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_rbufnic"))
        .arg("fwd")
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
fn bad_input_gives_one_line_and_a_failure_exit() {
    for (args, message) in [
        (
            &["0000:00:03", "0000:00:04.0"][..],
            "rbufnic: port A (0000:00:03): malformed PCI address \"0000:00:03\"",
        ),
        (
            &["0000:00:03.0", "00:2g.0"][..],
            "rbufnic: port B (00:2g.0): malformed PCI address \"00:2g.0\"",
        ),
        (
            &["0000:00:03.0", "00:03.0"][..],
            "rbufnic: port A and port B are the same device 0000:00:03.0",
        ),
        (
            &["0000:00:03.0", "0000:00:04.0", "--batch", "0"][..],
            "rbufnic: --batch must be 1 to 4096, not 0",
        ),
        (
            &[
                "0000:00:03.0",
                "0000:00:04.0",
                "--rewrite-dst-mac",
                "02:00:00:00:00",
            ][..],
            "rbufnic: bad MAC address \"02:00:00:00:00\"",
        ),
        (
            &["0000:00:03.0", "0000:00:04.0", "--duration", "0"][..],
            "rbufnic: --duration must be a positive number of seconds, not 0",
        ),
    ] {
        let (code, lines) = fwd(args);
        assert_eq!(code, Some(1), "{args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with(message), "{args:?}: {lines:?}");
        assert_eq!(
            lines[0].matches(message).count(),
            1,
            "said twice: {lines:?}"
        );
    }
}

#[test]
fn a_device_that_does_not_exist_is_named() {
    // Bus ee does not exist on the machines this runs on (QEMU guests, CI hosts).
    let (code, lines) = fwd(&["0000:ee:00.0", "0000:ee:01.0", "--count", "1"]);
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("rbufnic: port A (0000:ee:00.0): no PCI device 0000:ee:00.0"),
        "{lines:?}"
    );
    assert_eq!(
        lines[0].matches("no PCI device").count(),
        1,
        "said twice: {lines:?}"
    );
}
