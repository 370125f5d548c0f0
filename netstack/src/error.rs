//! The crate's error type: every variant keeps the values involved.

/// Everything that can go wrong in the network stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An rbuf channel failed (the peer left or broke the protocol, a system call failed).
    #[error("rbuf channel ({side}): {source}")]
    Channel {
        /// Which channel: `rx` or `tx`.
        side: &'static str,
        /// What rbuf reported.
        #[source]
        source: rbuf::Error,
    },
    /// A configuration that cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// The operating system gave no random seed.
    #[error("random seed from the OS: {0}")]
    Random(String),
    /// A socket operation smoltcp refused.
    #[error("{what}: {reason}")]
    Socket {
        /// What was attempted (`listen on 80`, `connect to 10.0.0.2:7`).
        what: String,
        /// smoltcp's reason.
        reason: String,
    },
    /// Waiting for the doorbells failed.
    #[error("waiting for the port: {0}")]
    Wait(std::io::Error),
    /// A file to serve could not be read.
    #[error("reading {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn rx(source: rbuf::Error) -> Error {
        Error::Channel { side: "rx", source }
    }

    pub(crate) fn tx(source: rbuf::Error) -> Error {
        Error::Channel { side: "tx", source }
    }
}
