//! The QEMU guest harness: boots a q35 guest under TCG with an emulated Intel IOMMU and the
//! requested NICs bound to `vfio-pci`, runs one shell command in it, and returns the
//! command's output and exit status.
//!
//! The guest is the Debian kernel of the host's `linux-image-amd64` with a busybox
//! initramfs (built once and cached under [`harness_dir`](crate::harness_dir)). The host's
//! root is shared read-only at `/host`, so the command can run binaries freshly built
//! under the cargo target directory; `/lib`, `/lib64` and `/usr` point into `/host`, so
//! dynamically linked host programs run too. The command starts in the host's current
//! directory (seen through `/host`) with `PATH` = busybox's `/bin`, then the cargo profile
//! directory of the running executable (e.g. `/host/work/main/target/debug`, so the
//! workspace's binaries run by name), then `/usr/bin:/usr/sbin`.
//!
//! NIC `i` (in the order given to the builder) sits at PCI address `0000:00:0{3+i}.0`
//! ([`nic_bdf`]). QEMU runs one guest at a time per harness directory unless
//! [`GuestBuilder::serialize`] says otherwise, so tests may call [`GuestBuilder::run`] from
//! parallel threads.

mod console;
mod initramfs;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::HarnessError;
use crate::frame::MacAddr;
use crate::host;
use console::Verdict;
use initramfs::Kernel;

/// Debian packages the harness needs on the host.
pub const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "linux-image-amd64", "busybox-static"];
/// The QEMU binary.
const QEMU: &str = "qemu-system-x86_64";
/// Most NICs a guest can have (PCI slots 0x03..=0x0a).
pub const MAX_NICS: usize = 8;
/// PCI slot of the first NIC.
const FIRST_NIC_SLOT: usize = 0x03;
/// PCI slot of the virtio-9p device that shares the host root.
const HOSTFS_SLOT: usize = 0x10;
/// Size of a guest huge page in MiB.
const HUGEPAGE_MIB: u32 = 2;
/// Host environment variables passed into the guest unless overridden.
const PASSED_ENV: &[&str] = &["RUST_LOG", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE"];
/// How many run directories (console logs) the harness keeps.
const KEEP_RUNS: usize = 200;
/// How many output lines an error message quotes.
const TAIL_LINES: usize = 30;

static NEXT_RUN: AtomicU32 = AtomicU32::new(0);

/// The PCI address the guest sees NIC number `index` at, e.g. `0000:00:03.0` for the first.
pub fn nic_bdf(index: usize) -> String {
    format!("0000:00:{:02x}.0", FIRST_NIC_SLOT + index)
}

/// Where a host path appears inside the guest: `/host` followed by its absolute form.
pub fn host_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let relative = absolute.strip_prefix("/").unwrap_or(&absolute);
    Path::new("/host").join(relative)
}

/// The emulated NIC models. Names follow the Intel datasheets.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NicModel {
    /// Intel 82540EM (QEMU `e1000`).
    E1000_82540EM,
    /// Intel 82545EM copper (QEMU `e1000-82545em`).
    E1000_82545EM,
    /// Intel 82544GC copper (QEMU `e1000-82544gc`).
    E1000_82544GC,
    /// Modern-only virtio-net behind the IOMMU (`virtio-net-pci,disable-legacy=on,iommu_platform=on`).
    VirtioNet,
    /// Modern-only virtio-net that bypasses the IOMMU (`virtio-net-pci,disable-legacy=on`,
    /// no `VIRTIO_F_ACCESS_PLATFORM`): what a driver behind VFIO must refuse.
    VirtioNetNoIommuPlatform,
}

impl NicModel {
    /// QEMU's `-device` value: the driver name and model properties.
    pub fn qemu_device(self) -> &'static str {
        match self {
            NicModel::E1000_82540EM => "e1000",
            NicModel::E1000_82545EM => "e1000-82545em",
            NicModel::E1000_82544GC => "e1000-82544gc",
            NicModel::VirtioNet => "virtio-net-pci,disable-legacy=on,iommu_platform=on",
            NicModel::VirtioNetNoIommuPlatform => "virtio-net-pci,disable-legacy=on",
        }
    }

    /// PCI (vendor, device) id the guest sees.
    pub fn pci_id(self) -> (u16, u16) {
        match self {
            NicModel::E1000_82540EM => (0x8086, 0x100e),
            NicModel::E1000_82545EM => (0x8086, 0x100f),
            NicModel::E1000_82544GC => (0x8086, 0x100c),
            NicModel::VirtioNet | NicModel::VirtioNetNoIommuPlatform => (0x1af4, 0x1041),
        }
    }

    /// The guest kernel's driver module for the model.
    pub fn kernel_driver(self) -> &'static str {
        match self {
            NicModel::VirtioNet | NicModel::VirtioNetNoIommuPlatform => "virtio_net",
            _ => "e1000",
        }
    }
}

/// What the QEMU side of a NIC is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// QEMU's UDP socket netdev: QEMU binds `qemu` and sends every frame to `peer`, one
    /// datagram per frame. Made by [`UdpPeer::for_qemu`](crate::UdpPeer::for_qemu).
    Udp {
        /// Address QEMU binds.
        qemu: SocketAddr,
        /// Address QEMU sends to (the traffic peer).
        peer: SocketAddr,
        /// Network namespace both addresses live in (`None`: the host's).
        netns: Option<String>,
    },
    /// A tap device in a harness-created namespace. Made by [`Tap::backend`](crate::Tap::backend).
    Tap {
        /// The namespace.
        netns: String,
        /// The tap's interface name.
        ifname: String,
    },
}

impl Backend {
    fn netns(&self) -> Option<&str> {
        match self {
            Backend::Udp { netns, .. } => netns.as_deref(),
            Backend::Tap { netns, .. } => Some(netns),
        }
    }

    fn qemu_netdev(&self, id: &str) -> String {
        match self {
            Backend::Udp { qemu, peer, .. } => {
                format!("socket,id={id},udp={peer},localaddr={qemu}")
            }
            Backend::Tap { ifname, .. } => {
                format!("tap,id={id},ifname={ifname},script=no,downscript=no")
            }
        }
    }
}

/// Which guest driver takes a NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicDriver {
    /// `vfio-pci`, for the project's userspace drivers (the default).
    Vfio,
    /// The guest kernel's own driver (`e1000` / `virtio_net`), e.g. to test a backend.
    Kernel,
}

/// One emulated NIC of the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The model.
    pub model: NicModel,
    /// Its MAC address.
    pub mac: MacAddr,
    /// What QEMU connects it to.
    pub backend: Backend,
    /// Which guest driver takes it.
    pub driver: NicDriver,
}

impl Nic {
    /// A NIC of `model` bound to vfio-pci.
    pub fn new(model: NicModel, mac: MacAddr, backend: Backend) -> Nic {
        Nic {
            model,
            mac,
            backend,
            driver: NicDriver::Vfio,
        }
    }

    /// An 82540EM (QEMU's default `e1000`).
    pub fn e1000(mac: MacAddr, backend: Backend) -> Nic {
        Nic::new(NicModel::E1000_82540EM, mac, backend)
    }

    /// An 82545EM.
    pub fn e1000_82545em(mac: MacAddr, backend: Backend) -> Nic {
        Nic::new(NicModel::E1000_82545EM, mac, backend)
    }

    /// An 82544GC.
    pub fn e1000_82544gc(mac: MacAddr, backend: Backend) -> Nic {
        Nic::new(NicModel::E1000_82544GC, mac, backend)
    }

    /// A modern virtio-net device with `iommu_platform=on`.
    pub fn virtio(mac: MacAddr, backend: Backend) -> Nic {
        Nic::new(NicModel::VirtioNet, mac, backend)
    }

    /// A modern virtio-net device without `iommu_platform=on` (it does not offer
    /// `VIRTIO_F_ACCESS_PLATFORM`).
    pub fn virtio_without_iommu_platform(mac: MacAddr, backend: Backend) -> Nic {
        Nic::new(NicModel::VirtioNetNoIommuPlatform, mac, backend)
    }

    /// The same NIC, left to the guest kernel's driver instead of vfio-pci.
    pub fn kernel_driver(self) -> Nic {
        Nic {
            driver: NicDriver::Kernel,
            ..self
        }
    }
}

/// Entry point of the harness.
#[derive(Debug)]
pub struct Guest;

impl Guest {
    /// A builder with no NICs, no huge pages, 1 GiB, one CPU and a 120 s timeout.
    pub fn builder() -> GuestBuilder {
        GuestBuilder {
            nics: Vec::new(),
            hugepages: 0,
            timeout: Duration::from_secs(120),
            memory_mib: 1024,
            cpus: 1,
            env: Vec::new(),
            pass_env: PASSED_ENV.iter().map(|s| (*s).to_owned()).collect(),
            cwd: None,
            serialize: true,
            devices: Vec::new(),
        }
    }
}

/// Describes one guest run.
#[derive(Clone, Debug)]
pub struct GuestBuilder {
    nics: Vec<Nic>,
    hugepages: u32,
    timeout: Duration,
    memory_mib: u32,
    cpus: u32,
    env: Vec<(String, String)>,
    pass_env: Vec<String>,
    cwd: Option<PathBuf>,
    serialize: bool,
    devices: Vec<String>,
}

impl GuestBuilder {
    /// Adds a QEMU `-device` beside the NICs, e.g. a PCI bridge and devices behind it
    /// (`pci-bridge,id=br0,chassis_nr=1,addr=0x1e`, `e1000,bus=br0,addr=0x1,romfile=`), so
    /// a test can build an IOMMU group of several devices. Nothing binds these to
    /// vfio-pci; the guest's kernel drivers (see [`Nic::kernel_driver`]) may take them.
    pub fn device(mut self, spec: &str) -> GuestBuilder {
        self.devices.push(spec.to_owned());
        self
    }

    /// Adds a NIC; the `i`-th NIC added sits at [`nic_bdf`]`(i)`.
    pub fn nic(mut self, nic: Nic) -> GuestBuilder {
        self.nics.push(nic);
        self
    }

    /// Reserves `count` 2 MiB huge pages in the guest before the command runs.
    pub fn hugepages(self, count: u32) -> GuestBuilder {
        GuestBuilder {
            hugepages: count,
            ..self
        }
    }

    /// Kills the guest if it has not powered off this long after QEMU started.
    pub fn timeout(self, timeout: Duration) -> GuestBuilder {
        GuestBuilder { timeout, ..self }
    }

    /// Guest memory in MiB.
    pub fn memory_mib(self, memory_mib: u32) -> GuestBuilder {
        GuestBuilder { memory_mib, ..self }
    }

    /// Number of guest CPUs.
    pub fn cpus(self, cpus: u32) -> GuestBuilder {
        GuestBuilder { cpus, ..self }
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: &str, value: &str) -> GuestBuilder {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Passes the host's value of `key` (if set) to the command. `RUST_LOG`,
    /// `RUST_BACKTRACE` and `RUST_LIB_BACKTRACE` are passed by default.
    pub fn pass_env(mut self, key: &str) -> GuestBuilder {
        self.pass_env.push(key.to_owned());
        self
    }

    /// Host directory the command starts in (seen through `/host`); default: the
    /// current directory.
    pub fn cwd(self, host_dir: impl Into<PathBuf>) -> GuestBuilder {
        GuestBuilder {
            cwd: Some(host_dir.into()),
            ..self
        }
    }

    /// Whether to wait for other guests of the same harness directory to finish before
    /// starting (default `true`; turn off only to run guests side by side on purpose).
    pub fn serialize(self, serialize: bool) -> GuestBuilder {
        GuestBuilder { serialize, ..self }
    }

    /// Boots the guest, runs `command` (a shell script run by busybox `sh`) and waits for
    /// the guest to power off.
    pub fn run(self, command: &str) -> Result<GuestOutput, HarnessError> {
        self.spawn(command)?.wait()
    }

    /// Boots the guest running `command` and returns at once, so the caller can drive
    /// traffic while it runs.
    pub fn spawn(self, command: &str) -> Result<RunningGuest, HarnessError> {
        let netns = self.check()?;
        host::ensure_packages(HOST_PACKAGES)?;
        let kernel = Kernel::installed()?;
        let dir = host::harness_dir()?;
        if dir.to_string_lossy().contains(char::is_whitespace) {
            return Err(HarnessError::InvalidConfig {
                reason: format!(
                    "harness directory {} contains whitespace, which the kernel command line cannot carry",
                    dir.display()
                ),
            });
        }
        let initrd = initramfs::build_or_reuse(&kernel, &dir)?;
        let run_dir = self.make_run_dir(&dir)?;
        let nonce = nonce();
        let cmd_path = run_dir.join("cmd.sh");
        write_file(&cmd_path, command.as_bytes())?;
        let config_path = run_dir.join("config.sh");
        write_file(&config_path, self.guest_config(&cmd_path)?.as_bytes())?;

        let args = self.qemu_args(&kernel, &initrd, &config_path, &nonce);
        let mut cmd = match &netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, QEMU]);
                cmd
            }
            None => Command::new(QEMU),
        };
        cmd.args(&args);
        let cmd_line = host::command_line(&cmd);
        write_file(&run_dir.join("qemu.cmdline"), cmd_line.as_bytes())?;
        let console_log = run_dir.join("console.log");
        let stderr_path = run_dir.join("qemu.stderr");
        let stderr = create_file(&stderr_path)?;
        let log_file = create_file(&console_log)?;

        let lock = if self.serialize {
            let lock_path = dir.join("qemu.lock");
            log::debug!("waiting for {}", lock_path.display());
            Some(host::lock_file(&lock_path)?)
        } else {
            None
        };

        log::info!("booting guest: {cmd_line}");
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: QEMU.to_owned(),
                source,
            })?;
        let console = Arc::new(Console::default());
        let reader = child.stdout.take().map(|stdout| {
            let console = Arc::clone(&console);
            std::thread::spawn(move || console.pump(stdout, log_file))
        });
        Ok(RunningGuest {
            child,
            reaped: false,
            console,
            reader,
            nonce,
            started,
            deadline: started + self.timeout,
            timeout: self.timeout,
            console_log,
            stderr_path,
            _lock: lock,
        })
    }

    /// Validates the configuration; returns the network namespace QEMU must run in.
    fn check(&self) -> Result<Option<String>, HarnessError> {
        let invalid = |reason: String| Err(HarnessError::InvalidConfig { reason });
        if self.nics.len() > MAX_NICS {
            return invalid(format!("{} NICs, at most {MAX_NICS}", self.nics.len()));
        }
        if self.cpus == 0 {
            return invalid("zero CPUs".to_owned());
        }
        // Leave the guest kernel and busybox room beside the huge pages.
        if u64::from(self.hugepages) * u64::from(HUGEPAGE_MIB) + 256 > u64::from(self.memory_mib) {
            return invalid(format!(
                "{} huge pages of {HUGEPAGE_MIB} MiB do not fit in {} MiB with 256 MiB to spare",
                self.hugepages, self.memory_mib
            ));
        }
        for (key, _) in &self.env {
            let valid = key.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            });
            if key.is_empty() || !valid {
                return invalid(format!("environment variable name {key:?}"));
            }
        }
        let mut namespaces: Vec<&str> =
            self.nics.iter().filter_map(|n| n.backend.netns()).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        match namespaces.as_slice() {
            [] => Ok(None),
            [ns] => {
                if self.nics.iter().any(|n| n.backend.netns().is_none()) {
                    return invalid(format!(
                        "some NICs use namespace {ns} and others the host's; QEMU runs in one \
                         (make UDP peers with UdpPeer::for_qemu_in)"
                    ));
                }
                Ok(Some((*ns).to_owned()))
            }
            many => invalid(format!("NICs in several network namespaces {many:?}")),
        }
    }

    fn make_run_dir(&self, dir: &Path) -> Result<PathBuf, HarnessError> {
        let thread = std::thread::current();
        let label: String = thread
            .name()
            .unwrap_or("guest")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        let n = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
        let run_dir = dir
            .join("runs")
            .join(format!("{label}-{}-{n}", std::process::id()));
        fs::create_dir_all(&run_dir).map_err(|source| HarnessError::Io {
            what: "creating run directory",
            path: run_dir.clone(),
            source,
        })?;
        prune_runs(&dir.join("runs"));
        Ok(run_dir)
    }

    /// The shell fragment the guest init sources: what to bind, load and run.
    fn guest_config(&self, cmd_path: &Path) -> Result<String, HarnessError> {
        let cwd = match &self.cwd {
            Some(dir) => dir.clone(),
            None => std::env::current_dir().map_err(|source| HarnessError::Io {
                what: "reading current directory",
                path: PathBuf::from("."),
                source,
            })?,
        };
        let vfio: Vec<String> = self
            .nics
            .iter()
            .enumerate()
            .filter(|(_, n)| n.driver == NicDriver::Vfio)
            .map(|(i, _)| nic_bdf(i))
            .collect();
        let mut kmods: Vec<&str> = self
            .nics
            .iter()
            .filter(|n| n.driver == NicDriver::Kernel)
            .map(|n| n.model.kernel_driver())
            .collect();
        kmods.sort_unstable();
        kmods.dedup();
        let mut text = String::new();
        let mut set = |key: &str, value: &str| {
            text.push_str(&format!("{key}={}\n", shell_quote(value)));
        };
        set("RBN_VFIO", &vfio.join(" "));
        set("RBN_KMODS", &kmods.join(" "));
        set("RBN_HUGEPAGES", &self.hugepages.to_string());
        set("RBN_CWD", &host_path(&cwd).to_string_lossy());
        set("RBN_CMD", &host_path(cmd_path).to_string_lossy());
        text.push_str(&format!("export PATH={}\n", shell_quote(&guest_path())));
        let mut env: Vec<(String, String)> = self
            .pass_env
            .iter()
            .filter(|key| !self.env.iter().any(|(k, _)| k == *key))
            .filter_map(|key| Some((key.clone(), std::env::var(key).ok()?)))
            .collect();
        env.extend(self.env.iter().cloned());
        for (key, value) in &env {
            text.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
        Ok(text)
    }

    fn qemu_args(&self, kernel: &Kernel, initrd: &Path, config: &Path, nonce: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-machine",
            "q35,kernel-irqchip=split",
            "-cpu",
            "max",
            "-device",
            "intel-iommu,intremap=on,caching-mode=on",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend([
            "-smp".to_owned(),
            self.cpus.to_string(),
            "-m".to_owned(),
            self.memory_mib.to_string(),
            "-kernel".to_owned(),
            kernel.image.to_string_lossy().into_owned(),
            "-initrd".to_owned(),
            initrd.to_string_lossy().into_owned(),
            "-append".to_owned(),
            format!(
                "console=ttyS0 intel_iommu=on quiet panic=-1 rbn.nonce={nonce} rbn.config={}",
                host_path(config).display()
            ),
            "-fsdev".to_owned(),
            "local,id=hostfs,path=/,security_model=none,readonly=on,multidevs=remap".to_owned(),
            "-device".to_owned(),
            format!("virtio-9p-pci,fsdev=hostfs,mount_tag=host0,addr={HOSTFS_SLOT:#x}"),
        ]);
        for (i, nic) in self.nics.iter().enumerate() {
            let id = format!("nic{i}");
            args.push("-netdev".to_owned());
            args.push(nic.backend.qemu_netdev(&id));
            args.push("-device".to_owned());
            args.push(format!(
                "{},netdev={id},mac={},addr={:#x},romfile=",
                nic.model.qemu_device(),
                nic.mac,
                FIRST_NIC_SLOT + i
            ));
        }
        for spec in &self.devices {
            args.push("-device".to_owned());
            args.push(spec.clone());
        }
        args
    }
}

/// Removes the oldest run directories beyond [`KEEP_RUNS`] (best effort).
fn prune_runs(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if dirs.len() <= KEEP_RUNS {
        return;
    }
    dirs.sort();
    for (_, dir) in &dirs[..dirs.len() - KEEP_RUNS] {
        if let Err(e) = fs::remove_dir_all(dir) {
            log::debug!("cannot remove old run {}: {e}", dir.display());
        }
    }
}

/// The command's `PATH`: busybox, the cargo profile directory of the running executable
/// (`target/debug` for a test in `target/debug/deps`), then the host's `/usr`.
fn guest_path() -> String {
    let profile_dir = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        Some(
            if dir.file_name()? == "deps" {
                dir.parent()?
            } else {
                dir
            }
            .to_owned(),
        )
    });
    match profile_dir {
        Some(dir) => format!("/bin:{}:/usr/bin:/usr/sbin", host_path(&dir).display()),
        None => "/bin:/usr/bin:/usr/sbin".to_owned(),
    }
}

/// Single-quotes `value` for the guest shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A fresh 16-hex-digit marker nonce.
fn nonce() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let hash = RandomState::new().hash_one((std::process::id(), now.as_nanos()));
    format!("{hash:016x}")
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), HarnessError> {
    fs::write(path, bytes).map_err(|source| HarnessError::Io {
        what: "writing",
        path: path.to_owned(),
        source,
    })
}

fn create_file(path: &Path) -> Result<File, HarnessError> {
    File::create(path).map_err(|source| HarnessError::Io {
        what: "creating",
        path: path.to_owned(),
        source,
    })
}

/// The console as it arrives, shared between the reader thread and waiters.
#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

#[derive(Default)]
struct ConsoleState {
    bytes: Vec<u8>,
    closed: bool,
}

impl Console {
    /// Copies QEMU's stdout into the buffer and the log file until QEMU closes it.
    fn pump(&self, mut stdout: impl Read, mut log_file: File) {
        let mut buf = [0u8; 4096];
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("reading the guest console failed: {e}");
                    break;
                }
            };
            if let Err(e) = log_file.write_all(&buf[..n]) {
                log::warn!("writing the console log failed: {e}");
            }
            self.lock().bytes.extend_from_slice(&buf[..n]);
            self.changed.notify_all();
        }
        self.lock().closed = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }
}

/// A guest that is booting or running its command.
pub struct RunningGuest {
    child: Child,
    /// Set once QEMU has been waited for, so drop does not kill a reused pid.
    reaped: bool,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    nonce: String,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    console_log: PathBuf,
    stderr_path: PathBuf,
    _lock: Option<File>,
}

impl fmt::Debug for RunningGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningGuest")
            .field("pid", &self.pid())
            .field("console_log", &self.console_log)
            .finish_non_exhaustive()
    }
}

impl RunningGuest {
    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file the console is logged to.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// Waits until the command prints a line containing `needle` and returns that line.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String, HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.console.lock();
        loop {
            let text = String::from_utf8_lossy(&state.bytes);
            if let Some(line) = console::find_output_line(&text, &self.nonce, needle) {
                return Ok(line);
            }
            if state.closed {
                return Err(HarnessError::GuestFinished {
                    needle: needle.to_owned(),
                    console_log: self.console_log.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::WaitTimeout {
                    needle: needle.to_owned(),
                    timeout,
                    console_log: self.console_log.clone(),
                });
            }
            state = self
                .console
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits for the guest to power off (killing it at the timeout) and returns the
    /// command's output and exit status.
    pub fn wait(mut self) -> Result<GuestOutput, HarnessError> {
        let status = self.wait_exit()?;
        let duration = self.started.elapsed();
        if let Some(reader) = self.reader.take() {
            // The reader ends at EOF, which QEMU's exit guarantees.
            if reader.join().is_err() {
                log::warn!("the console reader thread panicked");
            }
        }
        let console = self.console.text();
        match console::parse(&console, &self.nonce) {
            Verdict::Exited { status, output } => {
                log::info!("guest command exited with {status} after {duration:?}");
                Ok(GuestOutput {
                    exit_status: status,
                    output,
                    console,
                    console_log: self.console_log.clone(),
                    duration,
                })
            }
            Verdict::SetupFailed { step } => Err(HarnessError::GuestSetup {
                step,
                console_log: self.console_log.clone(),
            }),
            Verdict::Unfinished { began } => {
                let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
                log::warn!("guest ended without exit marker (command began: {began})");
                Err(HarnessError::NoExitMarker {
                    status,
                    stderr: console::tail(stderr.trim(), TAIL_LINES),
                    console_log: self.console_log.clone(),
                })
            }
        }
    }

    /// Reaps QEMU, killing it (by its pid) if the deadline passes first.
    fn wait_exit(&mut self) -> Result<ExitStatus, HarnessError> {
        let child = &mut self.child;
        let pid = child.id();
        let io_err = |source| HarnessError::Io {
            what: "waiting for QEMU",
            path: PathBuf::from(format!("/proc/{pid}")),
            source,
        };
        loop {
            if let Some(status) = child.try_wait().map_err(io_err)? {
                self.reaped = true;
                return Ok(status);
            }
            let now = Instant::now();
            if now >= self.deadline {
                log::warn!(
                    "guest timed out after {:?}; killing QEMU pid {pid}",
                    self.timeout
                );
                // Already-exited is the only kill error; wait reaps it either way.
                let _ = child.kill();
                child.wait().map_err(io_err)?;
                self.reaped = true;
                return Err(HarnessError::Timeout {
                    timeout: self.timeout,
                    pid,
                    console_log: self.console_log.clone(),
                });
            }
            let state = self.console.lock();
            if !state.closed {
                let pause = (self.deadline - now).min(Duration::from_millis(100));
                drop(self.console.changed.wait_timeout(state, pause));
            } else {
                drop(state);
                std::thread::sleep((self.deadline - now).min(Duration::from_millis(10)));
            }
        }
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        if !self.reaped {
            log::warn!(
                "dropping a running guest; killing QEMU pid {}",
                self.child.id()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished guest run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestOutput {
    /// The command's exit status.
    pub exit_status: i32,
    /// What the command printed (stdout and stderr, kernel messages interleaved), with
    /// `\n` line ends.
    pub output: String,
    /// The whole console, boot messages included.
    pub console: String,
    /// The console log file under the harness directory.
    pub console_log: PathBuf,
    /// Time from QEMU's start to its exit.
    pub duration: Duration,
}

impl GuestOutput {
    /// The first line of the command's output that starts with `start`; panics, showing
    /// the output, if there is none.
    pub fn line_starting(&self, start: &str) -> &str {
        self.output
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{}", self.output))
    }
}

impl GuestOutput {
    /// `self` if the command exited with 0, else [`HarnessError::GuestCommandFailed`] with
    /// the end of its output.
    pub fn expect_success(self) -> Result<GuestOutput, HarnessError> {
        if self.exit_status == 0 {
            Ok(self)
        } else {
            Err(HarnessError::GuestCommandFailed {
                status: self.exit_status,
                output_tail: console::tail(&self.output, TAIL_LINES),
                console_log: self.console_log,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_addresses() {
        assert_eq!(nic_bdf(0), "0000:00:03.0");
        assert_eq!(nic_bdf(1), "0000:00:04.0");
        assert_eq!(nic_bdf(MAX_NICS - 1), "0000:00:0a.0");
    }

    #[test]
    fn host_paths_are_under_host() {
        assert_eq!(
            host_path(Path::new("/work/main/target")),
            Path::new("/host/work/main/target")
        );
        assert_eq!(host_path(Path::new("/")), Path::new("/host"));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    fn udp(qemu: u16, peer: u16) -> Backend {
        Backend::Udp {
            qemu: SocketAddr::from(([127, 0, 0, 1], qemu)),
            peer: SocketAddr::from(([127, 0, 0, 1], peer)),
            netns: None,
        }
    }

    #[test]
    fn qemu_command_line_has_the_iommu_and_fixed_nic_slots() {
        let b = Guest::builder()
            .nic(Nic::e1000(MacAddr::qemu(1), udp(5000, 5001)))
            .nic(Nic::virtio(
                MacAddr::qemu(2),
                Backend::Tap {
                    netns: "ns".to_owned(),
                    ifname: "tap0".to_owned(),
                },
            ));
        let kernel = Kernel {
            version: "v".to_owned(),
            image: PathBuf::from("/boot/vmlinuz-v"),
            modules_dir: PathBuf::from("/lib/modules/v"),
        };
        let args = b.qemu_args(&kernel, Path::new("/t/i.cpio"), Path::new("/t/c.sh"), "n0");
        let joined = args.join(" ");
        for part in [
            "-accel tcg -machine q35,kernel-irqchip=split -cpu max",
            "-device intel-iommu,intremap=on,caching-mode=on",
            "-netdev socket,id=nic0,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000",
            "-device e1000,netdev=nic0,mac=52:54:00:12:34:01,addr=0x3,romfile=",
            "-netdev tap,id=nic1,ifname=tap0,script=no,downscript=no",
            "-device virtio-net-pci,disable-legacy=on,iommu_platform=on,netdev=nic1,mac=52:54:00:12:34:02,addr=0x4,romfile=",
            "-kernel /boot/vmlinuz-v -initrd /t/i.cpio",
            "-device virtio-9p-pci,fsdev=hostfs,mount_tag=host0,addr=0x10",
        ] {
            assert!(joined.contains(part), "{part:?} missing from {joined}");
        }
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.contains("intel_iommu=on"), "{append}");
        assert!(
            append.contains("rbn.nonce=n0 rbn.config=/host/t/c.sh"),
            "{append}"
        );
    }

    #[test]
    fn guest_config_binds_vfio_nics_and_loads_kernel_drivers() {
        let b = Guest::builder()
            .nic(Nic::e1000(MacAddr::qemu(1), udp(1, 2)))
            .nic(Nic::e1000_82545em(MacAddr::qemu(2), udp(3, 4)).kernel_driver())
            .nic(Nic::virtio(MacAddr::qemu(3), udp(5, 6)))
            .hugepages(16)
            .cwd("/work/main")
            .env("A_B", "x 'y'")
            .env("A_B", "z");
        let config = b.guest_config(Path::new("/t/cmd.sh")).unwrap();
        assert!(
            config.contains("RBN_VFIO='0000:00:03.0 0000:00:05.0'\n"),
            "{config}"
        );
        assert!(config.contains("RBN_KMODS='e1000'\n"), "{config}");
        assert!(config.contains("RBN_HUGEPAGES='16'\n"), "{config}");
        assert!(config.contains("RBN_CWD='/host/work/main'\n"), "{config}");
        assert!(config.contains("RBN_CMD='/host/t/cmd.sh'\n"), "{config}");
        assert!(config.contains("export A_B='z'\n"), "{config}");
        assert!(!config.contains("x '"), "{config}");
    }

    #[test]
    fn bad_configurations_are_refused() {
        let too_many = (0..=MAX_NICS).fold(Guest::builder(), |b, i| {
            b.nic(Nic::e1000(MacAddr::qemu(i as u8), udp(1, 2)))
        });
        assert!(matches!(
            too_many.check(),
            Err(HarnessError::InvalidConfig { .. })
        ));
        let pages = Guest::builder().memory_mib(512).hugepages(200);
        assert!(matches!(
            pages.check(),
            Err(HarnessError::InvalidConfig { .. })
        ));
        assert!(
            Guest::builder()
                .memory_mib(512)
                .hugepages(100)
                .check()
                .is_ok()
        );
        let env = Guest::builder().env("1X", "v");
        assert!(matches!(
            env.check(),
            Err(HarnessError::InvalidConfig { .. })
        ));
        let tap = |ns: &str| Backend::Tap {
            netns: ns.to_owned(),
            ifname: "t".to_owned(),
        };
        let mixed = Guest::builder()
            .nic(Nic::e1000(MacAddr::qemu(1), tap("a")))
            .nic(Nic::e1000(MacAddr::qemu(2), udp(1, 2)));
        assert!(matches!(
            mixed.check(),
            Err(HarnessError::InvalidConfig { .. })
        ));
        let two = Guest::builder()
            .nic(Nic::e1000(MacAddr::qemu(1), tap("a")))
            .nic(Nic::e1000(MacAddr::qemu(2), tap("b")));
        assert!(matches!(
            two.check(),
            Err(HarnessError::InvalidConfig { .. })
        ));
        let same = Guest::builder()
            .nic(Nic::e1000(MacAddr::qemu(1), tap("a")))
            .nic(Nic::e1000(MacAddr::qemu(2), tap("a")));
        assert_eq!(same.check().unwrap().as_deref(), Some("a"));
    }
}
