//! `qemu-fwd`: the main job in one command. Builds `rbufnic`, boots a QEMU guest (q35,
//! emulated Intel IOMMU, TCG) with two emulated NICs (e1000 by default, `--model
//! virtio-net`) bound to vfio-pci, each on a UDP link to a peer in this process, runs `rbufnic fwd` between them in the guest, sends a
//! fixed count of test frames into NIC A at a fixed rate, and checks every frame that comes
//! out of NIC B byte for byte. Prints live counts every second and a summary; exits 0 only
//! if every frame arrived, once, in order and intact.
//!
//! ```text
//! cargo run -p rbufnic-tests --bin qemu-fwd -- [--count N] [--rate FPS] [--min-len B] ...
//! ```
//!
//! Installs QEMU, the guest kernel and busybox with apt-get if they are missing (as root).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, ValueEnum};
use rbufnic_tests::NicModel;
use rbufnic_tests::fwd_job::{self, FwdJob, FwdOutcome, Progress};

/// Emulated NIC models `rbufnic fwd` drives.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Model {
    /// Intel 82540EM, QEMU's default `e1000`.
    E1000,
    /// Intel 82545EM copper (`e1000-82545em`).
    #[value(name = "e1000-82545em")]
    E1000_82545em,
    /// Intel 82544GC copper (`e1000-82544gc`).
    #[value(name = "e1000-82544gc")]
    E1000_82544gc,
    /// Modern virtio-net behind the IOMMU (`virtio-net-pci,disable-legacy=on,iommu_platform=on`).
    #[value(name = "virtio-net")]
    VirtioNet,
}

impl Model {
    fn nic_model(self) -> NicModel {
        match self {
            Model::E1000 => NicModel::E1000_82540EM,
            Model::E1000_82545em => NicModel::E1000_82545EM,
            Model::E1000_82544gc => NicModel::E1000_82544GC,
            Model::VirtioNet => NicModel::VirtioNet,
        }
    }
}

/// Packet forwarding between two emulated NICs in a QEMU guest, end to end: the host sends
/// test frames into NIC A, `rbufnic fwd` in the guest forwards them to NIC B without
/// copying, and the host checks every frame that comes out of B. Exits 0 only if nothing
/// was lost, duplicated, reordered or changed (beyond the forwarder's MAC rewrite).
#[derive(Parser, Debug)]
#[command(name = "qemu-fwd", version)]
struct Cli {
    /// Frames to send into NIC A.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    count: u64,
    /// Frames per second the host sends (QEMU's UDP netdev drops bursts that find the
    /// guest's receive ring full, so this is a paced, moderate rate).
    #[arg(long, default_value_t = 2_000, value_name = "FPS")]
    rate: u32,
    /// Shortest frame, in bytes without FCS (60 to 1514); lengths are drawn per frame.
    #[arg(long, default_value_t = 60, value_name = "BYTES")]
    min_len: usize,
    /// Longest frame, in bytes without FCS (60 to 1514).
    #[arg(long, default_value_t = 1514, value_name = "BYTES")]
    max_len: usize,
    /// The emulated NIC model of both ports.
    #[arg(long, value_enum, default_value_t = Model::E1000)]
    model: Model,
    /// Seed of the test frame stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `--batch` of `rbufnic fwd`: IOrecs per driver call.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch: usize,
    /// Build and run `rbufnic` in release mode (default: the profile qemu-fwd was built in).
    #[arg(long)]
    release: bool,
    /// Also send as many frames into NIC B at the same rate, to come out of NIC A.
    #[arg(long)]
    both_ways: bool,
    /// Use this `rbufnic` binary instead of building one.
    #[arg(long, value_name = "PATH")]
    rbufnic: Option<PathBuf>,
}

/// The workspace's root (where this crate's manifest's parent is).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds `rbufnic` with cargo and returns the binary's path.
fn build_rbufnic(release: bool) -> Result<PathBuf, String> {
    let own_profile_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let own_release = own_profile_dir
        .as_deref()
        .and_then(Path::file_name)
        .is_some_and(|name| name == "release");
    let release = release || own_release;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root).args(["build", "-p", "rbufnic"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "qemu-fwd: building rbufnic ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if !status.success() {
        return Err(format!("cargo build -p rbufnic failed ({status})"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| own_profile_dir.and_then(|d| d.parent().map(Path::to_path_buf)))
        .unwrap_or_else(|| root.join("target"));
    let exe = target
        .join(if release { "release" } else { "debug" })
        .join("rbufnic");
    if !exe.is_file() {
        return Err(format!("built rbufnic, but {} is not there", exe.display()));
    }
    Ok(exe)
}

fn print_progress(p: &Progress, count: u64) {
    for (i, f) in p.flows.iter().enumerate() {
        let r = &f.received;
        println!(
            "{} {}: sent {}/{count}  received {} byte-exact, {} in flight or lost, {} reordered, {} bad",
            if i == 0 {
                format!("[{:>5.1}s]", p.elapsed.as_secs_f64())
            } else {
                " ".repeat(8)
            },
            ["A->B", "B->A"][i],
            f.sent,
            r.unique,
            f.sent.saturating_sub(r.unique),
            r.reordered,
            r.invalid + r.duplicates + r.out_of_range,
        );
    }
    if let Some(line) = &p.guest_line {
        println!("         guest: {line}");
    }
}

fn print_summary(job: &FwdJob, o: &FwdOutcome) {
    println!();
    println!(
        "qemu-fwd summary ({} x2, rbufnic fwd --batch {})",
        job.model.qemu_device(),
        job.batch
    );
    for f in &o.flows {
        let r = &f.received;
        let secs = f.send_elapsed.as_secs_f64();
        let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        println!("  {}", f.name);
        println!(
            "    sent        {} frames, {}..{} bytes, {} bytes in {secs:.1} s: {:.0} frames/s, {:.1} Mbit/s",
            f.sent,
            job.min_len,
            job.max_len,
            f.sent_bytes,
            per_sec(f.sent as f64),
            per_sec(f.sent_bytes as f64 * 8.0) / 1e6
        );
        println!(
            "    received    {} frames, {} bytes, byte-exact",
            r.unique, r.bytes
        );
        println!("    lost        {}", r.missing);
        println!("    reordered   {}", r.reordered);
        println!("    duplicates  {}", r.duplicates);
        println!("    corrupt     {}", r.invalid + r.out_of_range);
        if !r.missing_samples.is_empty() {
            println!("    first lost sequence numbers: {:?}", r.missing_samples);
        }
        for e in &r.invalid_samples {
            println!("    bad frame: {e}");
        }
    }
    match o.summary_field("forwarded") {
        Some(n) => println!("  forwarded     {n} frames (rbufnic fwd's count, in the guest)"),
        None => println!("  forwarded     ? (no summary from rbufnic fwd)"),
    }
    for line in o.guest.output.lines().filter(|l| {
        l.starts_with("fwd summary") || l.starts_with("  port ") || l.starts_with("rbufnic:")
    }) {
        println!("  guest: {line}");
    }
    println!("  console log: {}", o.guest.console_log.display());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rbufnic = match cli.rbufnic.clone() {
        Some(path) => path,
        None => match build_rbufnic(cli.release) {
            Ok(path) => path,
            Err(e) => {
                eprintln!("qemu-fwd: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let job = FwdJob {
        count: cli.count,
        rate_per_sec: cli.rate,
        min_len: cli.min_len,
        max_len: cli.max_len,
        model: cli.model.nic_model(),
        seed: cli.seed,
        batch: cli.batch,
        both_ways: cli.both_ways,
        ..FwdJob::new(rbufnic, cli.count, cli.rate)
    };
    let outcome = fwd_job::run(&job, &mut |step| println!("qemu-fwd: {step}"), &mut |p| {
        print_progress(p, job.count)
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("qemu-fwd: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_summary(&job, &outcome);
    let problems = outcome.problems();
    if problems.is_empty() {
        println!(
            "PASS: {} frames forwarded, none lost, all in order and byte-exact",
            outcome.sent()
        );
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            println!("FAIL: {p}");
        }
        ExitCode::FAILURE
    }
}
