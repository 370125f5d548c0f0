//! What the guest suites (`guest_e1000.rs`, `guest_virtio.rs`) share: the guest side (this
//! test binary, started in the guest, runs the `nic_smoke` example) and readers of its
//! output. Each suite boots QEMU guests with its NIC model and drives the same checks.

#![allow(dead_code)]

use rbufnic_tests::{FrameGen, GuestOutput, MacAddr, host_path};

/// The peer's MAC address in every stream.
pub const PEER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);

#[path = "../../examples/nic_smoke.rs"]
#[allow(dead_code)]
mod smoke;

/// Environment variable carrying the arguments of [`guest_side`].
const ARGS_VAR: &str = "NIC_SMOKE_ARGS";

/// The guest side: this test binary, started in the guest, runs the `nic_smoke` example
/// with the arguments in `NIC_SMOKE_ARGS` and exits with its status.
#[test]
#[ignore = "runs inside the QEMU guest, started by the other tests"]
fn guest_side() {
    // libtest has printed "test common::guest_side ... " without a newline: end that line.
    println!();
    let args = std::env::var(ARGS_VAR).unwrap_or_default();
    std::process::exit(smoke::run(
        args.split_whitespace().map(String::from).collect(),
    ));
}

/// A guest shell command running `nic_smoke` with `args`.
pub fn smoke_cmd(args: &str) -> String {
    let exe = std::env::current_exe().expect("test executable path");
    format!(
        "{ARGS_VAR}='{args}' {} common::guest_side --exact --ignored --nocapture --test-threads 1",
        host_path(&exe).display()
    )
}

/// The value after `key ` on the first output line starting with it.
pub fn field<'a>(out: &'a GuestOutput, key: &str) -> &'a str {
    out.output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key:?} line in guest output:\n{}", out.output))
}

/// `name=value` pairs of the `stats` line.
pub fn stat(out: &GuestOutput, name: &str) -> u64 {
    field(out, "stats")
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no stat {name} in guest output:\n{}", out.output))
}

/// The number after `word` in `line`.
pub fn number_after(line: &str, word: &str) -> u64 {
    let mut it = line.split_whitespace();
    it.find(|w| *w == word);
    it.next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {line:?}"))
}

/// Total bytes of frames `0..count` of `stream`.
pub fn frames_bytes(stream: &FrameGen, count: u64) -> u64 {
    (0..count).map(|s| stream.len_of(s) as u64).sum()
}

/// The `rx ...` lines of the output: (wall-ms, cpu-ms) of each receive run.
pub fn rx_times(out: &GuestOutput) -> Vec<(u64, u64)> {
    out.output
        .lines()
        .filter_map(|l| l.strip_prefix("rx "))
        .map(|l| (number_after(l, "wall-ms"), number_after(l, "cpu-ms")))
        .collect()
}

/// The `interrupts=` stat of each `stats` line.
pub fn interrupt_counts(out: &GuestOutput) -> Vec<u64> {
    out.output
        .lines()
        .filter(|l| l.starts_with("stats "))
        .map(|l| number_after(&l.replace('=', " "), "interrupts"))
        .collect()
}

/// The receive filter, for any NIC model: with promiscuous mode off, frames for another
/// MAC address are dropped by the NIC while the guest's own arrive; with it on, frames for
/// the other address arrive too. One guest boot.
pub fn check_promiscuous_mode(
    nic: fn(MacAddr, rbufnic_tests::Backend) -> rbufnic_tests::Nic,
    guest_mac: MacAddr,
    seed: u64,
) -> Result<(), rbufnic_tests::HarnessError> {
    use rbufnic_tests::{Guest, SendPlan, UdpPeer, nic_bdf};
    use std::time::Duration;

    const N: u64 = 30;
    let other = MacAddr([0x02, 0, 0, 0, 0x77, 0x77]);
    let (peer, backend) = UdpPeer::for_qemu()?;
    let guest = Guest::builder()
        .hugepages(8)
        .nic(nic(guest_mac, backend))
        .timeout(Duration::from_secs(300))
        .spawn(&smoke_cmd(&format!(
            "--pci {} --seed {seed} --peer-mac {PEER_MAC} --rx {N} --other-mac {other}",
            nic_bdf(0)
        )))?;
    let plan = SendPlan::new(N).rate_per_sec(200);
    guest.wait_for_line(
        &format!("rx-ready {N} seed {seed}"),
        Duration::from_secs(180),
    )?;
    // Not for the guest (a seed it would refuse, too), then for it.
    peer.send(&FrameGen::new(seed + 100, other, PEER_MAC), &plan)?;
    peer.send(&FrameGen::new(seed, guest_mac, PEER_MAC), &plan)?;
    let next = seed + 1;
    guest.wait_for_line(
        &format!("rx-ready {N} seed {next}"),
        Duration::from_secs(180),
    )?;
    peer.send(&FrameGen::new(next, other, PEER_MAC), &plan)?;
    let out = guest.wait()?;
    assert_eq!(out.exit_status, 0, "{}", out.output);
    let runs: Vec<&str> = out
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("rx "))
        .collect();
    assert_eq!(runs.len(), 2, "{}", out.output);
    for run in runs {
        assert!(
            run.starts_with(&format!("{N} frames")) && run.contains("in-order byte-exact"),
            "{}",
            out.output
        );
    }
    Ok(())
}
