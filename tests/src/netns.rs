//! Network namespaces with tap devices, so a guest NIC can talk to the host Linux stack
//! (ping, curl, nc) without touching the host's own interfaces.
//!
//! A [`NetNs`] is created with `ip netns add` and deleted (with every tap in it) on drop.
//! A guest with a [`Tap`] NIC runs its QEMU inside the namespace; host-side programs reach
//! the guest through [`NetNs::command`], and in-process sockets through [`NetNs::run_in`].

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::HarnessError;
use crate::guest::Backend;
use crate::host;

/// Longest Linux interface name (IFNAMSIZ − 1).
const MAX_IFNAME_LEN: usize = 15;

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// A network namespace the harness created; deleted with its interfaces on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace `rbufnic-<pid>-<n>` with its loopback up. Needs root.
    pub fn create() -> Result<NetNs, HarnessError> {
        host::require_root("creating a network namespace")?;
        host::ensure_packages(&["iproute2"])?;
        let n = NEXT_NETNS.fetch_add(1, Ordering::Relaxed);
        let name = format!("rbufnic-{}-{n}", std::process::id());
        host::run("ip", ["netns", "add", name.as_str()])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        log::debug!("created network namespace {}", ns.name);
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's bind mount, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> <args>`.
    fn ip(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        host::run("ip", all)
    }

    /// Creates tap `ifname` in the namespace with the host-side address `host_cidr`
    /// (e.g. `"10.0.2.1/24"`) and brings it up; QEMU attaches the guest NIC to it.
    pub fn add_tap(&self, ifname: &str, host_cidr: &str) -> Result<Tap, HarnessError> {
        let valid_name = !ifname.is_empty()
            && ifname.len() <= MAX_IFNAME_LEN
            && ifname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(HarnessError::InvalidConfig {
                reason: format!("tap name {ifname:?} is not 1..={MAX_IFNAME_LEN} of [A-Za-z0-9_-]"),
            });
        }
        self.ip(&["tuntap", "add", "dev", ifname, "mode", "tap"])?;
        self.ip(&["addr", "add", host_cidr, "dev", ifname])?;
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(Tap {
            netns: self.name.clone(),
            ifname: ifname.to_owned(),
            host_cidr: host_cidr.to_owned(),
        })
    }

    /// A command that runs `program` inside the namespace (`ip netns exec <ns> program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name.as_str()]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace; sockets `f` creates belong to
    /// the namespace for their whole life, whichever thread uses them later.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, HarnessError> {
        let path = self.path();
        let file = File::open(&path).map_err(|source| HarnessError::Io {
            what: "opening network namespace",
            path: path.clone(),
            source,
        })?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| HarnessError::Io {
                        what: "entering network namespace",
                        path: path.clone(),
                        source: e.into(),
                    })?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        match host::run("ip", ["netns", "delete", self.name.as_str()]) {
            Ok(_) => log::debug!("deleted network namespace {}", self.name),
            Err(e) => log::warn!("cannot delete network namespace {}: {e}", self.name),
        }
    }
}

/// A tap device inside a [`NetNs`], with an address on the host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tap {
    netns: String,
    ifname: String,
    host_cidr: String,
}

impl Tap {
    /// The interface name inside the namespace.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The namespace's name.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host-side address without the prefix length (e.g. `"10.0.2.1"`).
    pub fn host_ip(&self) -> &str {
        self.host_cidr
            .split_once('/')
            .map_or(self.host_cidr.as_str(), |(ip, _)| ip)
    }

    /// The QEMU backend that attaches a guest NIC to this tap.
    pub fn backend(&self) -> Backend {
        Backend::Tap {
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
        }
    }
}
