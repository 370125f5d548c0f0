//! Issues 5 and 6 in the QEMU guest: `rbufnic serve` (the project's stack on an e1000, and
//! on a virtio-net NIC, through rbuf channels) with the host's Linux stack as the peer,
//! over a tap device in a network namespace the test creates: ping gets replies over IPv4
//! and IPv6 (ARP and neighbour discovery), curl fetches a 16 MiB file whose SHA-256
//! matches and a small one over IPv6, TCP and UDP echo answer, an upload with nc arrives
//! intact, and a DHCPv4 lease from dnsmasq on the host side is taken and used.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rbufnic_tests::{
    Guest, HarnessError, MacAddr, NetNs, Nic, NicModel, ensure_packages, host_path,
};

fn rbufnic() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rbufnic"))
}

/// Runs `cmd`; returns (success, stdout, stderr).
fn run(mut cmd: Command) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run a host command");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn sha256(path: &Path) -> String {
    let (ok, out, err) = run({
        let mut c = Command::new("sha256sum");
        c.arg(path);
        c
    });
    assert!(ok, "{err}");
    out.split_whitespace().next().expect("a hash").to_string()
}

/// `size` bytes of a simple pseudo-random stream.
fn write_file(path: &Path, size: usize, seed: u64) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, data).expect("write a test file");
}

#[test]
fn serve_on_e1000_answers_ping_curl_echo_uploads_and_takes_a_dhcp_lease() -> Result<(), HarnessError>
{
    scenario(NicModel::E1000_82540EM, "rbnsrv0")
}

#[test]
fn serve_on_virtio_net_answers_ping_curl_echo_uploads_and_takes_a_dhcp_lease()
-> Result<(), HarnessError> {
    scenario(NicModel::VirtioNet, "rbnsrv1")
}

fn scenario(model: NicModel, tap_name: &str) -> Result<(), HarnessError> {
    ensure_packages(&["curl", "netcat-openbsd", "iputils-ping", "dnsmasq-base"])?;
    let dir = std::env::temp_dir().join(format!("rbufnic-serve-{}-{tap_name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("test directory");
    write_file(&www.join("big.bin"), 16 << 20, 1);
    std::fs::write(www.join("hello.txt"), "hello from rbufnic\n").expect("write");
    let upload = dir.join("upload.bin");
    write_file(&upload, 4 << 20, 2);
    let ns = NetNs::create()?;
    let tap = ns.add_tap(tap_name, "10.0.2.1/24")?;
    // IPv6 on the host side too, without duplicate address detection (no waiting).
    let (ok, _, err) = run({
        let mut c = Command::new("ip");
        c.args([
            "-n",
            ns.name(),
            "addr",
            "add",
            "fd00::1/64",
            "dev",
            tap_name,
            "nodad",
        ]);
        c
    });
    assert!(ok, "adding fd00::1/64: {err}");
    let exe = host_path(&rbufnic());
    let (gwww, gdir) = (host_path(&www), host_path(&dir));
    let pci = rbufnic_tests::nic_bdf(0);
    // Each serve runs until the host creates its stop file, then gets SIGINT (Ctrl-C) and
    // prints its summary.
    let script = format!(
        "R={exe}
         until_file() {{ while [ ! -e {gdir}/$1 ]; do sleep 0.3; done; }}
         $R serve {pci} --ip 10.0.2.15/24 --gateway 10.0.2.1 --ipv6 fd00::15/64 --root {gwww} --duration 300 & S=$!
         until_file stop1; kill -INT $S; wait $S; echo \"exit-serve-static $?\"
         $R serve {pci} --dhcp --root {gwww} --duration 300 & S=$!
         until_file stop2; kill -INT $S; wait $S; echo \"exit-serve-dhcp $?\"",
        exe = exe.display(),
        gdir = gdir.display(),
        gwww = gwww.display(),
    );
    let guest = Guest::builder()
        .nic(Nic::new(model, MacAddr::qemu(0x70), tap.backend()))
        .hugepages(32)
        .memory_mib(1024)
        .timeout(Duration::from_secs(600))
        .spawn(&script)?;
    guest.wait_for_line("serve ready", Duration::from_secs(180))?;

    let in_ns = |program: &str, args: &[&str]| {
        let mut c = ns.command(program);
        c.args(args);
        run(c)
    };
    let ping = in_ns("ping", &["-c", "3", "-W", "5", "10.0.2.15"]);
    let curl = in_ns(
        "sh",
        &[
            "-c",
            "curl -sS --max-time 120 -o /dev/stdout http://10.0.2.15/big.bin | sha256sum",
        ],
    );
    // IPv6: neighbour discovery, ICMPv6 echo, TCP.
    let ping6 = in_ns("ping", &["-6", "-c", "3", "-W", "5", "fd00::15"]);
    let curl6 = in_ns(
        "curl",
        &[
            "-g",
            "-sS",
            "--max-time",
            "30",
            "http://[fd00::15]/hello.txt",
        ],
    );
    let missing = in_ns(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://10.0.2.15/nope",
        ],
    );
    let tcp_echo = in_ns(
        "sh",
        &["-c", "printf 'hello rbufnic\\n' | nc -N -w 10 10.0.2.15 7"],
    );
    let udp_echo = in_ns(
        "sh",
        &["-c", "printf 'udp hello\\n' | nc -u -w 2 10.0.2.15 7"],
    );
    let up = in_ns(
        "sh",
        &[
            "-c",
            &format!("nc -N -w 30 10.0.2.15 9000 < {}", upload.display()),
        ],
    );
    guest.wait_for_line("upload bytes=", Duration::from_secs(60))?;
    std::fs::write(dir.join("stop1"), "").expect("stop file");

    // DHCP: dnsmasq on the host side of the tap hands out 10.0.2.100-150.
    let leases = dir.join("leases");
    let mut dnsmasq = ns
        .command("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            &format!("--interface={tap_name}"),
            "--bind-interfaces",
            "--dhcp-range=10.0.2.100,10.0.2.150,255.255.255.0,1h",
            "--dhcp-option=3,10.0.2.1",
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    let lease = guest.wait_for_line("serve: DHCP lease", Duration::from_secs(120));
    let leased = lease
        .as_ref()
        .ok()
        .and_then(|l| l.rsplit(' ').next())
        .map(|a| a.split('/').next().unwrap_or(a).to_string());
    let (dhcp_ping, dhcp_curl) = match &leased {
        Some(addr) => (
            in_ns("ping", &["-c", "2", "-W", "5", addr]),
            in_ns(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "30",
                    &format!("http://{addr}/hello.txt"),
                ],
            ),
        ),
        None => Default::default(),
    };
    std::fs::write(dir.join("stop2"), "").expect("stop file");
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let out = guest.wait()?;
    let o = &out.output;
    drop(tap);

    assert!(ping.0, "ping: {}{}\n{o}", ping.1, ping.2);
    assert!(ping.1.contains("3 received"), "{}", ping.1);
    let want = sha256(&www.join("big.bin"));
    assert_eq!(
        curl.1.split_whitespace().next(),
        Some(want.as_str()),
        "curl: {}\n{o}",
        curl.2
    );
    assert_eq!(missing.1, "404", "{}", missing.2);
    assert!(
        ping6.0 && ping6.1.contains("3 received"),
        "ping -6: {}{}",
        ping6.1,
        ping6.2
    );
    assert_eq!(
        curl6.1, "hello from rbufnic\n",
        "curl over IPv6: {}",
        curl6.2
    );
    assert_eq!(
        tcp_echo.1, "hello rbufnic\n",
        "tcp echo: {}\n{o}",
        tcp_echo.2
    );
    assert_eq!(udp_echo.1, "udp hello\n", "udp echo: {}\n{o}", udp_echo.2);
    assert!(up.0, "upload: {}", up.2);
    let upload_line = format!("upload bytes={} sha256={}", 4 << 20, sha256(&upload));
    assert!(o.lines().any(|l| l == upload_line), "{upload_line}\n{o}");
    assert!(o.contains("exit-serve-static 0"), "{o}");
    assert!(o.contains("serve summary:"), "{o}");

    let addr = leased.unwrap_or_else(|| panic!("no DHCP lease: {lease:?}\n{o}"));
    assert!(addr.starts_with("10.0.2.1"), "{addr}");
    assert!(dhcp_ping.0, "ping {addr}: {}{}", dhcp_ping.1, dhcp_ping.2);
    assert_eq!(dhcp_curl.1, "hello from rbufnic\n", "{}\n{o}", dhcp_curl.2);
    assert!(o.contains("exit-serve-dhcp 0"), "{o}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
