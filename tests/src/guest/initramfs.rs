//! The guest's kernel and initramfs: the Debian kernel installed by `linux-image-amd64`,
//! and a newc cpio archive with static busybox, the init script and the kernel modules the
//! guest needs (with their dependencies from `modules.dep`), cached under the harness
//! directory by a hash of its inputs.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::HarnessError;
use crate::host;

/// Static busybox, from the `busybox-static` package.
pub(crate) const BUSYBOX: &str = "/bin/busybox";
/// The guest init script.
const INIT_SCRIPT: &str = include_str!("init.sh");
/// Bumped whenever the archive's layout changes, so old cached archives are not reused.
const LAYOUT_VERSION: &str = "rbufnic-initramfs-1";

/// Modules the init loads on every boot (the init script names them in this order).
const BASE_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci",
];
/// Kernel NIC drivers a guest can ask for instead of vfio-pci.
pub(crate) const NIC_DRIVER_MODULES: &[&str] = &["e1000", "virtio_net"];

/// The guest kernel: its version, image and module tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kernel {
    pub version: String,
    pub image: PathBuf,
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// The kernel the `linux-image-amd64` metapackage depends on.
    pub(crate) fn installed() -> Result<Kernel, HarnessError> {
        let depends = host::run("dpkg-query", ["-W", "-f=${Depends}", "linux-image-amd64"])?;
        let version =
            kernel_version_from_depends(&depends).ok_or_else(|| HarnessError::Kernel {
                reason: format!(
                    "no linux-image-<version> in linux-image-amd64's Depends {depends:?}"
                ),
            })?;
        let kernel = Kernel {
            image: PathBuf::from(format!("/boot/vmlinuz-{version}")),
            modules_dir: PathBuf::from(format!("/lib/modules/{version}")),
            version,
        };
        for path in [&kernel.image, &kernel.modules_dir.join("modules.dep")] {
            if !path.exists() {
                return Err(HarnessError::Kernel {
                    reason: format!("{} is missing", path.display()),
                });
            }
        }
        Ok(kernel)
    }
}

/// `linux-image-6.1.0-56-amd64 (= 6.1.192-2)` → `6.1.0-56-amd64`.
fn kernel_version_from_depends(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .filter_map(|dep| dep.split_whitespace().next())
        .find_map(|name| name.strip_prefix("linux-image-"))
        .map(str::to_owned)
}

/// The module name of a `modules.dep` path: `kernel/drivers/vfio/pci/vfio-pci.ko` → `vfio_pci`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The dependency graph of `modules.dep`.
#[derive(Debug, Default)]
struct ModulesDep {
    /// Module name → (path relative to the module directory, names of its dependencies).
    modules: HashMap<String, (String, Vec<String>)>,
}

impl ModulesDep {
    fn parse(text: &str) -> ModulesDep {
        let modules = text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(path, deps)| {
                let deps = deps.split_whitespace().map(module_name).collect();
                (module_name(path), (path.trim().to_owned(), deps))
            })
            .collect();
        ModulesDep { modules }
    }

    /// `name` and all it depends on, dependencies first.
    fn load_order(&self, name: &str) -> Result<Vec<String>, String> {
        fn visit(
            graph: &ModulesDep,
            name: &str,
            seen: &mut HashSet<String>,
            order: &mut Vec<String>,
        ) -> Result<(), String> {
            if !seen.insert(name.to_owned()) {
                return Ok(());
            }
            let (_, deps) = graph.modules.get(name).ok_or_else(|| name.to_owned())?;
            for dep in deps {
                visit(graph, dep, seen, order)?;
            }
            order.push(name.to_owned());
            Ok(())
        }
        let mut order = Vec::new();
        visit(self, name, &mut HashSet::new(), &mut order)?;
        Ok(order)
    }
}

/// Builds the initramfs for `kernel`, or reuses the cached one with the same inputs, and
/// returns its path.
pub(crate) fn build_or_reuse(kernel: &Kernel, dir: &Path) -> Result<PathBuf, HarnessError> {
    let dep_path = kernel.modules_dir.join("modules.dep");
    let builtin_path = kernel.modules_dir.join("modules.builtin");
    let dep_text = read_text(&dep_path)?;
    // Absent on some kernels; then nothing counts as built in.
    let builtin: HashSet<String> = fs::read_to_string(&builtin_path)
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let graph = ModulesDep::parse(&dep_text);

    // Per top-level module, the modules to insmod in order (empty if built in).
    let mut orders: Vec<(String, Vec<String>)> = Vec::new();
    for &top in BASE_MODULES.iter().chain(NIC_DRIVER_MODULES) {
        let order = if builtin.contains(top) {
            Vec::new()
        } else {
            graph
                .load_order(top)
                .map_err(|module| HarnessError::ModuleNotFound {
                    module,
                    modules_dep: dep_path.clone(),
                })?
        };
        orders.push((top.to_owned(), order));
    }
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for name in orders.iter().flat_map(|(_, order)| order) {
        if files.iter().any(|(n, _)| n == name) {
            continue;
        }
        let rel = &graph.modules[name].0;
        if !rel.ends_with(".ko") {
            return Err(HarnessError::Kernel {
                reason: format!("module {rel} is compressed; busybox insmod needs plain .ko files"),
            });
        }
        files.push((name.clone(), kernel.modules_dir.join(rel)));
    }

    let mut inputs = Sha256::new();
    inputs.update(LAYOUT_VERSION);
    inputs.update(INIT_SCRIPT);
    inputs.update(&kernel.version);
    for path in std::iter::once(Path::new(BUSYBOX)).chain(files.iter().map(|(_, p)| p.as_path())) {
        let meta = fs::metadata(path).map_err(|source| HarnessError::Io {
            what: "reading metadata of",
            path: path.to_owned(),
            source,
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        inputs.update(format!(
            "{}\0{}\0{}\n",
            path.display(),
            meta.len(),
            mtime.as_nanos()
        ));
    }
    let key: String = inputs.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!("initramfs-{}-{key}.cpio", kernel.version);
    let path = dir.join(&name);
    if path.is_file() {
        log::debug!("reusing {}", path.display());
        return Ok(path);
    }
    // One builder at a time, across threads and processes; the others then reuse its file.
    let _lock = host::lock_file(&dir.join("initramfs.lock"))?;
    if path.is_file() {
        return Ok(path);
    }

    let mut cpio = Cpio::default();
    for d in [
        "bin", "dev", "etc", "host", "modules", "proc", "run", "sys", "tmp",
    ] {
        cpio.dir(d, 0o755);
    }
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("bin/busybox", 0o755, &read_bytes(Path::new(BUSYBOX))?);
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes());
    // Host programs under /host find their loader and libraries through these.
    for (link, target) in [
        ("lib", "/host/lib"),
        ("lib64", "/host/lib64"),
        ("usr", "/host/usr"),
        ("etc/ld.so.cache", "/host/etc/ld.so.cache"),
        ("etc/passwd", "/host/etc/passwd"),
        ("etc/group", "/host/etc/group"),
        ("etc/services", "/host/etc/services"),
        ("etc/protocols", "/host/etc/protocols"),
    ] {
        cpio.symlink(link, target);
    }
    for (name, file) in &files {
        cpio.file(&format!("modules/{name}.ko"), 0o644, &read_bytes(file)?);
    }
    for (top, order) in &orders {
        let mut text = order.join("\n");
        text.push('\n');
        cpio.file(&format!("modules/{top}.order"), 0o644, text.as_bytes());
    }
    let bytes = cpio.finish();

    // Write under another name and rename, so no reader ever sees half a file.
    let tmp = dir.join(format!("{name}.tmp.{}", std::process::id()));
    fs::write(&tmp, &bytes).map_err(|source| HarnessError::Io {
        what: "writing initramfs",
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, &path).map_err(|source| HarnessError::Io {
        what: "renaming initramfs into place",
        path: path.clone(),
        source,
    })?;
    log::info!(
        "built {} ({} bytes, {} modules)",
        path.display(),
        bytes.len(),
        files.len()
    );
    remove_stale(dir, &name);
    Ok(path)
}

/// Removes cached archives other than `keep` (best effort).
fn remove_stale(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("initramfs-")
            && name.ends_with(".cpio")
            && name != keep
            && let Err(e) = fs::remove_file(entry.path())
        {
            log::debug!("cannot remove stale {name}: {e}");
        }
    }
}

fn read_text(path: &Path) -> Result<String, HarnessError> {
    fs::read_to_string(path).map_err(|source| HarnessError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, HarnessError> {
    fs::read(path).map_err(|source| HarnessError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })
}

/// A writer of the "newc" cpio format the kernel unpacks as initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the archive depends only on its inputs
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, S_IFDIR | perm, &[], (0, 0));
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, data, (0, 0));
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes(), (0, 0));
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_version_is_read_from_depends() {
        assert_eq!(
            kernel_version_from_depends("linux-image-6.1.0-56-amd64 (= 6.1.192-2)").as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(
            kernel_version_from_depends("foo, linux-image-6.12.9-amd64 | bar").as_deref(),
            Some("6.12.9-amd64")
        );
        assert_eq!(kernel_version_from_depends("foo (>= 1)"), None);
    }

    #[test]
    fn module_names_are_normalised() {
        assert_eq!(
            module_name("kernel/drivers/vfio/pci/vfio-pci.ko"),
            "vfio_pci"
        );
        assert_eq!(
            module_name("kernel/net/9p/9pnet_virtio.ko.xz"),
            "9pnet_virtio"
        );
        assert_eq!(module_name("e1000.ko"), "e1000");
    }

    #[test]
    fn dependencies_load_first() {
        let graph = ModulesDep::parse(
            "kernel/a/vfio-pci.ko: kernel/a/vfio-pci-core.ko kernel/a/vfio.ko kernel/b/irqbypass.ko\n\
             kernel/a/vfio-pci-core.ko: kernel/a/vfio.ko kernel/b/irqbypass.ko\n\
             kernel/a/vfio.ko:\n\
             kernel/b/irqbypass.ko:\n",
        );
        let order = graph.load_order("vfio_pci").unwrap();
        assert_eq!(order.last().map(String::as_str), Some("vfio_pci"));
        let pos = |m: &str| order.iter().position(|o| o == m).unwrap();
        assert!(pos("vfio") < pos("vfio_pci_core"));
        assert!(pos("irqbypass") < pos("vfio_pci_core"));
        assert_eq!(order.len(), 4);
        assert_eq!(graph.load_order("nope"), Err("nope".to_owned()));
    }

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut cpio = Cpio::default();
        cpio.file("init", 0o755, b"abc");
        let bytes = cpio.finish();
        assert_eq!(&bytes[..6], b"070701");
        // mode field (second) and file size (seventh)
        assert_eq!(&bytes[14..22], b"000081ed");
        assert_eq!(&bytes[54..62], b"00000003");
        // 110-byte header + "init\0" padded to 116, then data padded to 120.
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..119], b"abc");
        assert_eq!(&bytes[120..126], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        let trailer = String::from_utf8_lossy(&bytes[120 + 110..120 + 120]);
        assert!(trailer.starts_with("TRAILER!!!"), "{trailer}");
    }

    /// Against the real module tree of the installed guest kernel.
    #[test]
    fn installed_kernel_has_every_module_the_guest_needs() {
        let kernel = Kernel::installed().unwrap();
        let graph = ModulesDep::parse(&read_text(&kernel.modules_dir.join("modules.dep")).unwrap());
        let order = graph.load_order("vfio_pci").unwrap();
        assert!(order.contains(&"vfio".to_owned()), "{order:?}");
        for m in BASE_MODULES.iter().chain(NIC_DRIVER_MODULES) {
            assert!(graph.load_order(m).is_ok(), "{m}");
        }
    }
}
