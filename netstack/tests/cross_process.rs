//! Two stacks in two processes over rbuf channels. The test binary is its own peer: the
//! parent re-executes it with `NETSTACK_XP_CHILD=<socket>` and the child runs stack B
//! (HTTP, sink and UDP echo) until the parent hangs up, then prints what its sink
//! received. Runs without the libtest harness (`harness = false`) so the child can take
//! over `main`.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use netstack::smoltcp::phy::{FaultInjector, PcapMode, PcapWriter};
use netstack::smoltcp::wire::IpAddress;
use netstack::{RbufDevice, Reorder, RxAccess, Stack, wire};
use rbuf::connect::Listener;

const CHILD_ENV: &str = "NETSTACK_XP_CHILD";
const FAULTS_ENV: &str = "NETSTACK_XP_FAULTS";

fn main() {
    if let Some(sock) = std::env::var_os(CHILD_ENV) {
        child_main(Path::new(&sock), std::env::var_os(FAULTS_ENV).is_some());
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 2] = [
        ("ping_arp_udp_and_64_mib_each_way", clean_wire),
        (
            "64_mib_each_way_under_drop_corruption_and_reordering",
            faulty_wire,
        ),
    ];
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        test();
        println!(
            "test {name} ... ok ({:.1} s)",
            start.elapsed().as_secs_f64()
        );
    }
}

fn sock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netstack-xp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spawn(sock: &Path, faults: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, sock).stdout(Stdio::piped());
    if faults {
        cmd.env(FAULTS_ENV, "1");
    }
    cmd.spawn().expect("spawn the child stack")
}

/// The child's report: `upload BYTES SHA256` per upload (`partial` for one whose
/// sender had not closed when the parent hung up).
fn finish(child: Child) -> Vec<(u64, String)> {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed ({}): {text}",
        out.status
    );
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("upload ")
                .or_else(|| l.strip_prefix("partial "))
        })
        .map(|l| {
            let (bytes, sha) = l.split_once(' ').unwrap();
            (bytes.parse().unwrap(), sha.to_owned())
        })
        .collect()
}

fn child_main(sock: &Path, faults: bool) {
    let end = wire::connect(sock, &wire_config()).expect("connect to the parent");
    let handle;
    let mut server = if faults {
        let dev = RbufDevice::new(Reorder::new(end.rx, 1, 8, 77), end.tx, RxAccess::Borrow);
        handle = dev.handle();
        let mut fi = FaultInjector::new(dev, 78);
        fi.set_corrupt_chance(1);
        let stack = Stack::new(fi, &stack_config(2))
            .unwrap()
            .with_control(handle);
        Box::new(Server::new(stack)) as Box<dyn Other>
    } else {
        let dev = end.into_device(RxAccess::Borrow);
        let h = dev.handle();
        Box::new(Server::new(
            Stack::new(dev, &stack_config(2)).unwrap().with_control(h),
        ))
    };
    // Until the parent hangs up (the stack's poll fails with the peer gone).
    let err = serve(server.as_mut());
    eprintln!("child: stopped: {err}");
    for (bytes, digest) in server.partial_uploads() {
        println!("partial {bytes} {}", hex(&digest));
    }
}

/// Runs B until its port fails; prints each completed upload on the way.
fn serve(server: &mut dyn Other) -> netstack::Error {
    loop {
        let did = match server.step() {
            Ok(did) => did,
            Err(e) => return e,
        };
        if let Some(ups) = server.uploads() {
            for u in ups {
                println!("upload {} {}", u.bytes, hex(&u.sha256));
            }
        }
        if !did && let Err(e) = server.wait_idle(Duration::from_millis(10)) {
            return e;
        }
    }
}

fn clean_wire() {
    let dir = sock_dir();
    let sock = dir.join("clean");
    let listener = Listener::bind(&sock).unwrap();
    let child = spawn(&sock, false);
    let end = wire::accept(&listener, &wire_config()).unwrap();
    let dev = end.into_device(RxAccess::Borrow);
    let handle = dev.handle();
    let pcap_path = dir.join("a.pcap");
    let pcap = PcapWriter::new(dev, File::create(&pcap_path).unwrap(), PcapMode::Both);
    let mut a = Stack::new(pcap, &stack_config(1))
        .unwrap()
        .with_control(handle.clone());
    let mut remote = Remote;
    assert_eq!(ping(&mut a, &mut remote, IpAddress::Ipv4(ip4(2)), 20), 20);
    assert_eq!(ping(&mut a, &mut remote, IpAddress::Ipv6(ip6(2)), 20), 20);
    let frames = read_pcap(&std::fs::read(&pcap_path).unwrap());
    assert_eq!(resolution_steps(&frames), RESOLUTION);
    assert_eq!(udp_echo(&mut a, &mut remote, 10_000, 64), 10_000);
    let t = transfers(&mut a, &mut remote, true);
    let (want_down, want_up) = expected_digests();
    assert_eq!(t.download_bytes, BIG_BYTES);
    assert_eq!(hex(&t.download), hex(&want_down), "download");
    assert_eq!(hex(&t.upload), hex(&want_up), "what A sent");
    let st = handle.stats();
    // Hanging up (dropping the stack and the last handle on the channels) stops B.
    drop(a);
    drop(handle);
    let ups = finish(child);
    assert_eq!(ups, vec![(BIG_BYTES, hex(&want_up))], "what B received");
    assert_eq!(st.rx_copied, 0, "zero-copy receive: {st:?}");
    eprintln!(
        "cross-process: 64 MiB each way in {:.1} s, {st:?}",
        t.seconds
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn faulty_wire() {
    let dir = sock_dir();
    let sock = dir.join("faulty");
    let listener = Listener::bind(&sock).unwrap();
    let child = spawn(&sock, true);
    let end = wire::accept(&listener, &wire_config()).unwrap();
    // As in the in-process test: A drops 1% each way and corrupts 1% of what it
    // receives, B corrupts 1% of what it receives, both reorder 1% of their frames.
    let dev = RbufDevice::new(Reorder::new(end.rx, 1, 8, 55), end.tx, RxAccess::Borrow);
    let handle = dev.handle();
    let mut fi = FaultInjector::new(dev, 56);
    fi.set_drop_chance(1);
    fi.set_corrupt_chance(1);
    let mut a = Stack::new(fi, &stack_config(1))
        .unwrap()
        .with_control(handle.clone());
    // Complete when every byte is acknowledged (see the in-process fault test for the
    // smoltcp FIN retransmission gap); B reports what it holds when A hangs up.
    let t = transfers(&mut a, &mut Remote, false);
    let (want_down, want_up) = expected_digests();
    assert_eq!(hex(&t.download), hex(&want_down), "download");
    let reordered = handle.with_rx(|r| r.reordered());
    drop(a);
    drop(handle);
    let ups = finish(child);
    assert_eq!(ups, vec![(BIG_BYTES, hex(&want_up))], "what B received");
    assert!(reordered > 50, "only {reordered} frames reordered");
    eprintln!(
        "cross-process with faults: 64 MiB each way in {:.1} s, {reordered} reordered here",
        t.seconds
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
