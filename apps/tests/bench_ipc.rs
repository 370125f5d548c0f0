//! `rbufnic bench ipc` and `bench tcp` end to end, small: every peer runs in a real second
//! process and the JSON carries the figures and the ratios scripts check.

use std::process::Command;

#[test]
fn bench_ipc_json_has_every_figure_and_ratio() {
    let out = Command::new(env!("CARGO_BIN_EXE_rbufnic"))
        .args(["bench", "ipc", "--json"])
        .args(["--messages", "20000", "--iters", "2000", "--bulk-mib", "32"])
        .args(["--rounds", "4"])
        .output()
        .expect("run rbufnic");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    // The machine is named: every figure depends on it.
    assert!(!v["host"]["cpu"].as_str().unwrap().is_empty(), "{v}");
    assert!(v["host"]["cpus"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["host"]["pinned"], serde_json::json!([0, 1]), "{v}");
    for key in [
        "msg_rate_batch32_vs_uds",
        "latency_poll_vs_iceoryx2",
        "latency_poll_vs_bare",
        "bulk_vs_bare_handoff",
        "msg_rate_batch32_vs_bare_ring",
        "latency_poll_vs_bare_ring",
    ] {
        let r = v["ratios"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("ratio {key} in {v}"));
        assert!(r.is_finite() && r > 0.0, "{key} = {r}");
    }
    // Every ratio also comes per round (four asked for), and is the median of them (the
    // mean of the middle two); a throughput ratio over the whole run is a weighted mean of
    // its rounds' ratios, so it lies within them.
    let ratios = v["ratios"].as_object().expect("ratios");
    for (key, ratio) in ratios {
        let ratio = ratio.as_f64().unwrap();
        let whole = v["ratios_whole_run"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("ratios_whole_run {key} in {v}"));
        let mut rounds: Vec<f64> = v["ratio_rounds"][key]
            .as_array()
            .unwrap_or_else(|| panic!("ratio_rounds {key} in {v}"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(rounds.len(), 4, "{key}: {rounds:?}");
        assert!(
            rounds.iter().all(|r| r.is_finite() && *r > 0.0),
            "{key}: {rounds:?}"
        );
        rounds.sort_by(f64::total_cmp);
        let middle = (rounds[1] + rounds[2]) / 2.0;
        assert!(
            (ratio - middle).abs() <= middle * 1e-9,
            "{key}: {ratio} is not the median of its rounds {rounds:?}"
        );
        if !key.starts_with("latency") {
            let (lo, hi) = rounds
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            assert!(
                whole >= lo * (1.0 - 1e-9) && whole <= hi * (1.0 + 1e-9),
                "{key}: {whole} outside its rounds {rounds:?}"
            );
        }
    }
    for peer in [
        "rbuf batch 1",
        "rbuf batch 32",
        "unix seqpacket",
        "pipe",
        "bare ring batch 1",
        "bare ring batch 32",
    ] {
        assert!(v["msg_rate_per_s"][peer].as_f64().unwrap() > 0.0, "{peer}");
    }
    for peer in [
        "rbuf poll",
        "rbuf blocking",
        "unix seqpacket",
        "iceoryx2",
        "bare cache line",
        "bare ring",
    ] {
        let l = &v["latency_ns"][peer];
        assert!(
            l["median"].as_f64().unwrap() > 0.0
                && l["p99"].as_f64().unwrap() >= l["median"].as_f64().unwrap(),
            "{peer}: {l}"
        );
    }
    for peer in [
        "rbuf",
        "unix stream",
        "pipe",
        "bare hand-over",
        "one-core read bandwidth",
    ] {
        assert!(
            v["bulk_bytes_per_s"][peer].as_f64().unwrap() > 0.0,
            "{peer}"
        );
    }
    // The benchmark cleans up after itself, iceoryx2's files included.
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("iox2_rbufnic-bench"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `rbufnic bench tcp` through the command line (the child is the hidden
/// `__bench-tcp-child` subcommand): the JSON holds both ratios and every figure.
#[test]
fn bench_tcp_json_has_both_ratios() {
    let out = Command::new(env!("CARGO_BIN_EXE_rbufnic"))
        .args(["bench", "tcp", "--json", "--mib", "8"])
        .output()
        .expect("run rbufnic");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["bytes"].as_u64(), Some(8 << 20), "{v}");
    for key in ["rbuf_vs_linux_loopback", "rbuf_vs_smoltcp_loopback"] {
        let r = v["ratios"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("ratio {key} in {v}"));
        assert!(r.is_finite() && r > 0.0, "{key} = {r}");
    }
    for peer in ["rbuf", "linux_loopback", "smoltcp_loopback"] {
        let t = v["throughput_bytes_per_s"][peer].as_f64().unwrap_or(0.0);
        assert!(t > 0.0, "{peer} in {v}");
    }
}
