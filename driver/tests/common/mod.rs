//! What the guest suites (`guest_e1000.rs`, `guest_virtio.rs`) share: the guest side (this
//! test binary, started in the guest, runs the `nic_smoke` example) and readers of its
//! output. Each suite boots QEMU guests with its NIC model and drives the same checks.

#![allow(dead_code)]

use std::thread;
use std::time::Duration;

use rbufnic_tests::{
    Backend, FrameGen, Guest, GuestOutput, HarnessError, MacAddr, Nic, ReceivePlan, SendPlan,
    UdpPeer, host_path, nic_bdf,
};

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

/// What follows `key ` on every output line starting with it, in order.
pub fn lines_after<'a>(out: &'a GuestOutput, key: &str) -> Vec<&'a str> {
    out.output
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .collect()
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
    lines_after(out, "rx")
        .into_iter()
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
    let runs = lines_after(&out, "rx");
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

/// What [`frames_each_way`] leaves for the model-specific checks.
pub struct EachWay {
    /// The guest's output.
    pub out: GuestOutput,
    /// The frames the host sent to the guest.
    pub to_guest: FrameGen,
    /// The frames the guest sent to the host.
    pub from_guest: FrameGen,
}

/// Boots a guest with one NIC made by `nic` (MAC `mac`, on a UDP link to the host peer),
/// has the host send it `n` frames of stream `seed` and the guest send `n` back, and
/// checks what every model must do: exit 0, its MAC, every frame in order and byte-exact
/// both ways, `n` packets counted each way, no receive error.
pub fn frames_each_way(
    nic: fn(MacAddr, Backend) -> Nic,
    mac: MacAddr,
    seed: u64,
    n: u64,
) -> Result<EachWay, HarnessError> {
    let (peer, backend) = UdpPeer::for_qemu()?;
    let script = smoke_cmd(&format!(
        "--pci {} --seed {seed} --peer-mac {PEER_MAC} --rx {n} --tx {n} --timeout-ms 600000",
        nic_bdf(0)
    ));
    let guest = Guest::builder()
        .hugepages(8)
        .nic(nic(mac, backend))
        .timeout(Duration::from_secs(900))
        .spawn(&script)?;
    let to_guest = FrameGen::new(seed, mac, PEER_MAC);
    let from_guest = FrameGen::new(seed, PEER_MAC, mac);
    // Listen for the guest's frames from the start (they come after its receive phase).
    let listener = peer.try_clone()?;
    let stream = from_guest.clone();
    let rx_thread = thread::spawn(move || {
        listener.receive(
            &stream,
            &ReceivePlan::new(n)
                .timeout(Duration::from_secs(800))
                .linger(Duration::from_secs(2)),
        )
    });
    guest.wait_for_line(
        &format!("rx-ready {n} seed {seed}"),
        Duration::from_secs(120),
    )?;
    // Paced: QEMU reads its socket only while the NIC has buffers; a burst beyond the
    // socket buffer would be lost on the host, before any NIC sees it.
    let sent = peer.send(
        &to_guest,
        &SendPlan::new(n)
            .rate_per_sec(3000)
            .time_limit(Duration::from_secs(300)),
    )?;
    assert_eq!(sent.sent, n);
    let out = guest.wait()?;
    let report = rx_thread.join().expect("receiver thread")?;
    assert_eq!(out.exit_status, 0, "{}", out.output);
    assert_eq!(field(&out, "mac"), mac.to_string());
    let rx_line = field(&out, "rx");
    assert!(rx_line.starts_with(&format!("{n} frames")), "{rx_line}");
    assert!(rx_line.contains("in-order byte-exact"), "{rx_line}");
    assert!(report.is_perfect(), "host peer: {report:?}");
    assert_eq!(report.unique, n);
    assert_eq!(stat(&out, "rx_packets"), n);
    assert_eq!(stat(&out, "tx_packets"), n);
    assert_eq!(stat(&out, "rx_error_buffers"), 0);
    Ok(EachWay {
        out,
        to_guest,
        from_guest,
    })
}

/// Boots a guest with one NIC made by `nic` that sends `n` frames of stream `seed`, each
/// from a TX IOrec of 3 extents, and checks that the host peer gets every one as one
/// correct frame, in order.
pub fn three_extent_frames(
    nic: fn(MacAddr, Backend) -> Nic,
    mac: MacAddr,
    seed: u64,
    n: u64,
) -> Result<(), HarnessError> {
    let (peer, backend) = UdpPeer::for_qemu()?;
    let script = smoke_cmd(&format!(
        "--pci {} --seed {seed} --peer-mac {PEER_MAC} --tx {n} --extents 3",
        nic_bdf(0)
    ));
    let guest = Guest::builder()
        .hugepages(8)
        .nic(nic(mac, backend))
        .timeout(Duration::from_secs(300))
        .spawn(&script)?;
    let from_guest = FrameGen::new(seed, PEER_MAC, mac);
    let report = peer.receive(
        &from_guest,
        &ReceivePlan::new(n)
            .timeout(Duration::from_secs(240))
            .linger(Duration::from_secs(1)),
    )?;
    let out = guest.wait()?;
    assert_eq!(out.exit_status, 0, "{}", out.output);
    assert!(field(&out, "tx").contains("extents 3"), "{}", out.output);
    assert!(report.is_perfect(), "{report:?}");
    assert_eq!(report.unique, n);
    assert_eq!(stat(&out, "tx_packets"), n);
    Ok(())
}
