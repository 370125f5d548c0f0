//! The harness's error type.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::frame::FrameError;
use crate::peer::ReceiveReport;

/// Everything that can go wrong in the guest harness, the network namespaces and the peer.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Host packages are missing and the harness is not root, so it cannot install them.
    #[error("missing host packages {packages:?}; install them as root: apt-get install -y {}", packages.join(" "))]
    MissingPackages {
        /// Debian package names.
        packages: Vec<String>,
    },
    /// A host command (apt-get, dpkg-query, ip) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A host program could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the harness was doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A socket operation failed.
    #[error("{what} on {addr}: {source}")]
    Socket {
        /// What the peer was doing.
        what: &'static str,
        /// The local address of the socket (or the address it tried to bind).
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The guest kernel or its modules could not be found or used.
    #[error("guest kernel: {reason}")]
    Kernel {
        /// What is wrong.
        reason: String,
    },
    /// A kernel module the guest needs is not in `modules.dep`.
    #[error("kernel module {module} not found in {}", modules_dep.display())]
    ModuleNotFound {
        /// Module name.
        module: String,
        /// The `modules.dep` file searched.
        modules_dep: PathBuf,
    },
    /// The builder was given a configuration the harness cannot boot.
    #[error("invalid guest configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The guest did not power off in time; QEMU was killed.
    #[error("guest did not finish within {timeout:?}; killed QEMU pid {pid}; console log {}", console_log.display())]
    Timeout {
        /// The configured timeout.
        timeout: Duration,
        /// QEMU's process id.
        pid: u32,
        /// Console log file.
        console_log: PathBuf,
    },
    /// The guest's init failed before running the command.
    #[error("guest setup failed at `{step}`; console log {}", console_log.display())]
    GuestSetup {
        /// The step the init script reported.
        step: String,
        /// Console log file.
        console_log: PathBuf,
    },
    /// QEMU exited without the guest printing its exit marker.
    #[error("QEMU exited ({status}) without the guest's exit marker; console log {}; QEMU stderr: {stderr}", console_log.display())]
    NoExitMarker {
        /// QEMU's exit status.
        status: ExitStatus,
        /// QEMU's standard error, trimmed.
        stderr: String,
        /// Console log file.
        console_log: PathBuf,
    },
    /// The guest command exited with a non-zero status (from `GuestOutput::expect_success`).
    #[error("guest command exited with status {status}; console log {}; output ends with:\n{output_tail}", console_log.display())]
    GuestCommandFailed {
        /// The command's exit status.
        status: i32,
        /// The last lines of the command's output.
        output_tail: String,
        /// Console log file.
        console_log: PathBuf,
    },
    /// A line the caller waited for did not appear in time.
    #[error("no output line containing {needle:?} within {timeout:?}; console log {}", console_log.display())]
    WaitTimeout {
        /// The text waited for.
        needle: String,
        /// How long the caller waited.
        timeout: Duration,
        /// Console log file.
        console_log: PathBuf,
    },
    /// The guest finished before printing the line the caller waited for.
    #[error("the guest finished without printing a line containing {needle:?}; console log {}", console_log.display())]
    GuestFinished {
        /// The text waited for.
        needle: String,
        /// Console log file.
        console_log: PathBuf,
    },
    /// The peer only talks over loopback.
    #[error("{addr} is not a loopback address; the traffic peer only uses loopback")]
    NotLoopback {
        /// The offending address.
        addr: SocketAddr,
    },
    /// A traffic check found loss, duplicates, reordering or corrupt frames.
    #[error("traffic check failed: {report}")]
    Traffic {
        /// The receiver's full report.
        report: Box<ReceiveReport>,
    },
    /// A frame could not be generated.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// An operation needs root.
    #[error("{what} needs root (effective uid {euid})")]
    NotRoot {
        /// The operation.
        what: &'static str,
        /// The effective user id.
        euid: u32,
    },
}
