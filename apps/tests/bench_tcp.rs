//! Smoke test of `rbufnic bench tcp`'s library half: all three peers move a few MiB and
//! the report holds both ratios. The test binary is its own benchmark child (it answers
//! `__bench-tcp-child` the way `rbufnic` does), so it runs without the libtest harness.

use clap::Parser;
use rbufnic::bench::tcp::{self, TcpArgs, TcpChildArgs};

#[derive(Parser)]
struct Child {
    #[command(flatten)]
    args: TcpChildArgs,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__bench-tcp-child") {
        let child =
            Child::parse_from(std::iter::once(argv[0].clone()).chain(argv[2..].iter().cloned()));
        tcp::child(&child.args).expect("benchmark child");
        return;
    }
    // RBUFNIC_BENCH_TCP_MIB runs the same check at a real size (e.g. in a release build).
    let mib = std::env::var("RBUFNIC_BENCH_TCP_MIB")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(8);
    let args = TcpArgs {
        mib,
        slots: 128,
        buffer_kib: 256,
        json: true,
    };
    let exe = std::env::current_exe().unwrap();
    let mut steps = Vec::new();
    let report = tcp::measure(&args, &exe, &mut |s| steps.push(s.to_owned())).unwrap();
    assert_eq!(steps.len(), 3, "{steps:?}");
    for f in [&report.rbuf, &report.linux, &report.smoltcp_loopback] {
        assert_eq!(f.bytes, mib << 20, "{}", f.name);
        assert!(f.seconds > 0.0 && f.bytes_per_s().is_finite(), "{f:?}");
    }
    let json = report.json();
    let ratios = &json["ratios"];
    for key in ["rbuf_vs_linux_loopback", "rbuf_vs_smoltcp_loopback"] {
        let r = ratios[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {json}"));
        assert!(r > 0.0 && r.is_finite(), "{key} = {r}");
    }
    assert!(
        (ratios["rbuf_vs_linux_loopback"].as_f64().unwrap() - report.rbuf_vs_linux_loopback())
            .abs()
            < 1e-9
    );
    let table = report.table();
    assert!(table.contains("rbuf_vs_smoltcp_loopback"), "{table}");
    println!("test bench_tcp_smoke ... ok\n{table}{json}");
}
