//! Host-side helpers: running host commands, root checks, Debian packages, the harness's
//! working directory.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::HarnessError;

/// Packages already confirmed installed by this process.
static CONFIRMED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The effective user id.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Fails with [`HarnessError::NotRoot`] unless the process runs as root.
pub(crate) fn require_root(what: &'static str) -> Result<(), HarnessError> {
    match euid() {
        0 => Ok(()),
        euid => Err(HarnessError::NotRoot { what, euid }),
    }
}

/// Runs a host program to completion and returns its standard output; a non-zero exit is
/// an error carrying its standard error.
pub(crate) fn run<I, S>(program: &str, args: I) -> Result<String, HarnessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    run_command(&mut cmd)
}

/// Runs a prepared command to completion; see [`run`].
pub(crate) fn run_command(cmd: &mut Command) -> Result<String, HarnessError> {
    let line = command_line(cmd);
    log::debug!("running {line}");
    let out = cmd.output().map_err(|source| HarnessError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(HarnessError::CommandFailed {
            command: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command rendered for messages.
pub(crate) fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Makes sure the Debian packages are installed: installs the missing ones with apt-get
/// when running as root, and fails with [`HarnessError::MissingPackages`] otherwise.
pub fn ensure_packages(packages: &[&str]) -> Result<(), HarnessError> {
    let mut confirmed = CONFIRMED.lock().unwrap_or_else(|p| p.into_inner());
    let unchecked: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !confirmed.iter().any(|c| c == p))
        .collect();
    if unchecked.is_empty() {
        return Ok(());
    }
    let mut missing = missing_packages(&unchecked)?;
    if !missing.is_empty() {
        if euid() != 0 {
            return Err(HarnessError::MissingPackages { packages: missing });
        }
        // One installer at a time across processes: apt's own lock fails instead of waiting.
        let _lock = lock_file(&harness_dir()?.join("apt.lock"))?;
        missing = missing_packages(&unchecked)?;
        if !missing.is_empty() {
            install(&missing)?;
            let still = missing_packages(&unchecked)?;
            if !still.is_empty() {
                return Err(HarnessError::MissingPackages { packages: still });
            }
        }
    }
    confirmed.extend(unchecked.iter().map(|p| (*p).to_owned()));
    Ok(())
}

/// The packages of `packages` that dpkg does not report as installed.
fn missing_packages(packages: &[&str]) -> Result<Vec<String>, HarnessError> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Package} ${db:Status-Abbrev}\\n"])
        .args(packages)
        .stdin(Stdio::null());
    // dpkg-query exits non-zero when a package is unknown; its stdout still lists the rest.
    let out = cmd.output().map_err(|source| HarnessError::Spawn {
        program: "dpkg-query".to_owned(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(packages
        .iter()
        .filter(|p| {
            !stdout.lines().any(|line| {
                let mut words = line.split_whitespace();
                // The name may carry an architecture suffix (`busybox-static:amd64`).
                let name = words.next().map(|n| n.split(':').next().unwrap_or(n));
                name == Some(**p) && words.next() == Some("ii")
            })
        })
        .map(|p| (*p).to_owned())
        .collect())
}

/// `apt-get install` the packages, with an `apt-get update` and a retry if the first try
/// fails (a fresh machine may have no package lists).
fn install(packages: &[String]) -> Result<(), HarnessError> {
    log::info!("installing host packages {packages:?}");
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        if args[0] == "install" {
            cmd.args(packages);
        }
        run_command(&mut cmd)
    };
    let install_args = ["install", "-y", "-q", "--no-install-recommends"];
    if apt(&install_args).is_ok() {
        return Ok(());
    }
    apt(&["update", "-q"])?;
    apt(&install_args).map(|_| ())
}

/// Opens (creating if needed) and exclusively locks `path`; the lock lasts as long as the
/// returned file.
pub(crate) fn lock_file(path: &Path) -> Result<File, HarnessError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| HarnessError::Io {
            what: "opening lock file",
            path: path.to_owned(),
            source,
        })?;
    file.lock().map_err(|source| HarnessError::Io {
        what: "locking",
        path: path.to_owned(),
        source,
    })?;
    Ok(file)
}

/// The harness's working directory, `<cargo target dir>/rbufnic-guest`, created if needed.
///
/// `RBUFNIC_HARNESS_DIR` overrides it; otherwise the target directory is
/// `CARGO_TARGET_DIR`, else the nearest ancestor of the running executable that holds
/// cargo's `CACHEDIR.TAG`, else the workspace's `target/`.
pub fn harness_dir() -> Result<PathBuf, HarnessError> {
    let dir = if let Some(dir) = std::env::var_os("RBUFNIC_HARNESS_DIR") {
        PathBuf::from(dir)
    } else {
        target_dir().join("rbufnic-guest")
    };
    let dir = std::path::absolute(&dir).map_err(|source| HarnessError::Io {
        what: "resolving harness directory",
        path: dir.clone(),
        source,
    })?;
    fs::create_dir_all(&dir).map_err(|source| HarnessError::Io {
        what: "creating harness directory",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe
            .ancestors()
            .skip(1)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_owned();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_and_unknown_packages_are_told_apart() {
        // dpkg itself is always installed on Debian; the other name cannot exist.
        let missing = missing_packages(&["dpkg", "rbufnic-no-such-package"]).unwrap();
        assert_eq!(missing, vec!["rbufnic-no-such-package".to_owned()]);
    }

    #[test]
    fn failing_commands_report_status_and_stderr() {
        let err = run("sh", ["-c", "echo oops >&2; exit 3"]).unwrap_err();
        match err {
            HarnessError::CommandFailed {
                command,
                status,
                stderr,
            } => {
                assert_eq!(command, "sh -c echo oops >&2; exit 3");
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "oops");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(run("sh", ["-c", "echo hi"]).unwrap(), "hi\n");
    }
}
