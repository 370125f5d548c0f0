//! Cross-process one-way latency of iceoryx2 (0.10), the zero-copy peer that
//! `rbufnic bench ipc` compares rbuf's ping-pong against.
//!
//! Two publish-subscribe services carry a `u64` counter: `<name>/ping` (parent to
//! child) and `<name>/pong` (child to parent). Both sides busy-poll
//! `Subscriber::receive()` with [`std::hint::spin_loop`]; there are no waitsets,
//! events or blocking calls. Each side keeps one sample loaned ahead of time, as
//! iceoryx2's own publish-subscribe benchmark does, so a round trip is
//! "write payload, send, spin until the answer is received" on both sides.
//!
//! The caller spawns the child (which calls [`pong`]) and then calls [`ping`] in the
//! parent. `ping` resends its first ping until the child's matching pong arrives,
//! which covers the window where either side's ports have not connected yet.
//!
//! Every resource iceoryx2 creates for a run is tagged with the service name: the
//! node is given its own [`Config`] whose file prefix is `iox2_<name>_` (POSIX
//! shared memory in `/dev/shm`) and whose root directory is
//! `/tmp/iceoryx2/iox2_<name>/` (service and node descriptions). Passing our own
//! config also means iceoryx2 never searches for a config file, so its
//! "No config file was loaded" warning does not appear. [`cleanup`] removes exactly
//! those entries.
//!
//! Side effect: opening the ports sets iceoryx2's process-wide log level to `Error`.

use std::hint::spin_loop;
use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ipc::Laps;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample_mut_uninit::SampleMutUninit;

/// The value the parent sends to end the child's loop; the child echoes it back.
const STOP: u64 = u64::MAX;
/// How long `ping` waits for the child's ports to appear and for each pong.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the connecting ping is resent while no matching pong has arrived.
const RESEND_INTERVAL: Duration = Duration::from_millis(1);
/// How long `ping` waits for the child to acknowledge the stop value.
const STOP_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Empty polls between two clock reads while spinning (keeps `Instant::now()` off the hot path).
const POLLS_PER_CLOCK_READ: u32 = 1 << 10;
/// Where iceoryx2 keeps its file-based resources by default; our runs live in a subdirectory.
const ICEORYX2_TMP_DIR: &str = "/tmp/iceoryx2";
/// Prefix of every file iceoryx2 creates (its default one, which we extend with the name).
const IOX2_PREFIX: &str = "iox2_";
/// Longest accepted service name (after sanitising), keeping file names well below `NAME_MAX`.
const MAX_NAME_LEN: usize = 64;
/// Where POSIX shared memory objects appear on Linux.
const SHM_DIR: &str = "/dev/shm";

/// Errors of the iceoryx2 latency benchmark.
#[derive(Debug, thiserror::Error)]
pub enum IceoryxError {
    /// The service name is empty or too long to build iceoryx2 file names from.
    #[error("invalid iceoryx2 service name {name:?}: {reason}")]
    InvalidName {
        /// The name as given by the caller.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An iceoryx2 call failed; `message` is the iceoryx2 error's text.
    #[error("iceoryx2: {context}: {message}")]
    Iceoryx {
        /// What was being done.
        context: &'static str,
        /// The iceoryx2 error, as it displays itself.
        message: String,
    },
    /// The peer did not answer in time.
    #[error("iceoryx2 benchmark: timed out after {after:?} {what}")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// How long was waited.
        after: Duration,
    },
}

/// Maps an iceoryx2 error into [`IceoryxError::Iceoryx`], keeping its text.
fn iox<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> IceoryxError {
    move |e| IceoryxError::Iceoryx {
        context,
        message: e.to_string(),
    }
}

/// The service name reduced to characters safe in file names (`[A-Za-z0-9.-]`, anything
/// else becomes `-`). It never contains `_`, so `iox2_<tag>_` cannot be a prefix of
/// another name's files.
fn tag(service_name: &str) -> Result<String, IceoryxError> {
    let tag: String = service_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let reason = if tag.is_empty() {
        Some("it is empty".to_string())
    } else if tag.len() > MAX_NAME_LEN {
        Some(format!("it is longer than {MAX_NAME_LEN} characters"))
    } else if tag.chars().all(|c| c == '.') {
        Some("it consists of dots only".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IceoryxError::InvalidName {
            name: service_name.to_string(),
            reason,
        }),
        None => Ok(tag),
    }
}

/// `iox2_<tag>_`: the prefix of this run's shared-memory objects in `/dev/shm`.
fn shm_prefix(tag: &str) -> String {
    format!("{IOX2_PREFIX}{tag}_")
}

/// `/tmp/iceoryx2/iox2_<tag>`: this run's root directory for iceoryx2's file-based resources.
fn root_dir(tag: &str) -> PathBuf {
    PathBuf::from(ICEORYX2_TMP_DIR).join(format!("{IOX2_PREFIX}{tag}"))
}

/// The two connected ports of one side (fields drop in declaration order: sample, ports, node).
struct Ports {
    /// The sample loaned ahead of the next send.
    next: Option<SampleMutUninit<ipc::Service, MaybeUninit<u64>, ()>>,
    publisher: Publisher<ipc::Service, u64, ()>,
    subscriber: Subscriber<ipc::Service, u64, ()>,
    /// Keeps the node (and with it the services) alive while the ports are used.
    _node: Node<ipc::Service>,
}

impl Ports {
    /// Creates the node with this run's config, opens (or creates) both services and
    /// the ports: publisher on `<name>/<tx>`, subscriber on `<name>/<rx>`.
    fn open(service_name: &str, tx: &str, rx: &str) -> Result<Self, IceoryxError> {
        set_log_level(LogLevel::Error);
        let tag = tag(service_name)?;

        let mut config = Config::default();
        config.global.prefix =
            FileName::new(shm_prefix(&tag).as_bytes()).map_err(iox("file prefix"))?;
        let mut root = root_dir(&tag).into_os_string().into_string().map_err(|_| {
            IceoryxError::InvalidName {
                name: service_name.to_string(),
                reason: "not valid UTF-8".to_string(),
            }
        })?;
        root.push('/');
        config
            .global
            .set_root_path(&Path::new(root.as_bytes()).map_err(iox("root path"))?);

        let node = NodeBuilder::new()
            .config(&config)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .map_err(iox("create node"))?;

        let tx_service = open_service(&node, &format!("{service_name}/{tx}"))?;
        let rx_service = open_service(&node, &format!("{service_name}/{rx}"))?;
        let subscriber = rx_service
            .subscriber_builder()
            .create()
            .map_err(iox("create subscriber"))?;
        let publisher = tx_service
            .publisher_builder()
            .max_loaned_samples(1)
            .create()
            .map_err(iox("create publisher"))?;
        let next = Some(publisher.loan_uninit().map_err(iox("loan sample"))?);
        Ok(Self {
            next,
            publisher,
            subscriber,
            _node: node,
        })
    }

    /// Sends `value` in the sample loaned ahead, then loans the next one.
    #[inline]
    fn send(&mut self, value: u64) -> Result<(), IceoryxError> {
        let sample = match self.next.take() {
            Some(sample) => sample,
            None => self.publisher.loan_uninit().map_err(iox("loan sample"))?,
        };
        sample.write_payload(value).send().map_err(iox("send"))?;
        self.next = Some(self.publisher.loan_uninit().map_err(iox("loan sample"))?);
        Ok(())
    }

    /// Polls once; returns the received value, if any (the sample is released at once).
    #[inline]
    fn try_receive(&self) -> Result<Option<u64>, IceoryxError> {
        Ok(self
            .subscriber
            .receive()
            .map_err(iox("receive"))?
            .map(|sample| *sample))
    }

    /// Spins until `want` arrives (other values are stale duplicates and are dropped)
    /// or `deadline` passes; returns whether it arrived.
    #[inline]
    fn spin_for(&self, want: u64, deadline: Instant) -> Result<bool, IceoryxError> {
        let mut polls = 0u32;
        loop {
            match self.try_receive()? {
                Some(v) if v == want => return Ok(true),
                Some(_) => {}
                None => {
                    polls += 1;
                    if polls == POLLS_PER_CLOCK_READ {
                        polls = 0;
                        if Instant::now() >= deadline {
                            return Ok(false);
                        }
                    }
                    spin_loop();
                }
            }
        }
    }
}

/// Opens or creates one `u64` publish-subscribe service with the `QoS` both sides agree on:
/// one publisher, one subscriber, no history, a one-sample buffer that overwrites.
fn open_service(
    node: &Node<ipc::Service>,
    name: &str,
) -> Result<
    iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, u64, ()>,
    IceoryxError,
> {
    let name = ServiceName::new(name).map_err(|e| IceoryxError::InvalidName {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    // Both processes race to create the services; iceoryx2 retries internally, and we
    // retry on top of that for as long as the connect timeout allows.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let result = node
            .service_builder(&name)
            .publish_subscribe::<u64>()
            .max_publishers(1)
            .max_subscribers(1)
            .max_nodes(2)
            .history_size(0)
            .subscriber_max_buffer_size(1)
            .enable_safe_overflow(true)
            .open_or_create();
        match result {
            Ok(service) => return Ok(service),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(iox("open or create service")(e)),
        }
    }
}

/// Parent side: runs `iters` ping-pong round trips (after `warmup` untimed ones) with a child process
/// that runs [`pong`]`(service_name, ..)`, busy-polling on both sides (no waitsets/blocking), payload a u64 counter.
/// Returns the round trips in nanoseconds, one per timed iteration, timed back to back as
/// every `bench ipc` latency peer's are ([`Laps`]).
///
/// The caller starts the child before or right after calling this: up to 10 s are allowed
/// for its ports to appear, and each later pong is awaited for at most 10 s. On success and
/// on failures after the ports were opened, the stop value is sent so the child returns.
pub fn ping(service_name: &str, warmup: u64, iters: u64) -> Result<Vec<u64>, IceoryxError> {
    let mut ports = Ports::open(service_name, "ping", "pong")?;
    match ping_pong(&mut ports, warmup, iters) {
        Ok(latencies) => {
            // Wait for the child's echo of the stop value, so the stop sample is not
            // dropped together with our publisher before the child has read it.
            ports.send(STOP)?;
            let _acknowledged = ports.spin_for(STOP, Instant::now() + STOP_ACK_TIMEOUT)?;
            Ok(latencies)
        }
        Err(e) => {
            let _ = ports.send(STOP);
            Err(e)
        }
    }
}

/// The connect handshake, the warm-up and the timed round trips of [`ping`].
fn ping_pong(ports: &mut Ports, warmup: u64, iters: u64) -> Result<Vec<u64>, IceoryxError> {
    // Connect: pings sent before the child's subscriber exists are lost, so resend the
    // first one until its pong comes back.
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut seq = 0u64;
    loop {
        ports.send(seq)?;
        let resend_at = (Instant::now() + RESEND_INTERVAL).min(connect_deadline);
        if ports.spin_for(seq, resend_at)? {
            break;
        }
        if Instant::now() >= connect_deadline {
            return Err(IceoryxError::Timeout {
                what: "waiting for the pong process to connect",
                after: CONNECT_TIMEOUT,
            });
        }
    }

    let no_pong = || IceoryxError::Timeout {
        what: "waiting for a pong",
        after: CONNECT_TIMEOUT,
    };
    for _ in 0..warmup {
        seq += 1;
        ports.send(seq)?;
        if !ports.spin_for(seq, Instant::now() + CONNECT_TIMEOUT)? {
            return Err(no_pong());
        }
    }

    let mut laps = Laps::start(0, iters);
    for _ in 0..iters {
        seq += 1;
        ports.send(seq)?;
        if !ports.spin_for(seq, laps.lap_start() + CONNECT_TIMEOUT)? {
            return Err(no_pong());
        }
        laps.lap();
    }
    Ok(laps.into_ns())
}

/// Child side: answers pings until the parent sends the stop value (`u64::MAX`) or `timeout` passes without a ping.
///
/// Every ping is echoed with the same value (the stop value too, as an acknowledgement).
/// Returns [`IceoryxError::Timeout`] when `timeout` passes without a ping.
pub fn pong(service_name: &str, timeout: Duration) -> Result<(), IceoryxError> {
    let mut ports = Ports::open(service_name, "pong", "ping")?;
    let mut last_ping = Instant::now();
    let mut polls = 0u32;
    loop {
        if let Some(value) = ports.try_receive()? {
            ports.send(value)?;
            if value == STOP {
                return Ok(());
            }
            last_ping = Instant::now();
            polls = 0;
        } else {
            polls += 1;
            if polls == POLLS_PER_CLOCK_READ {
                polls = 0;
                if last_ping.elapsed() >= timeout {
                    return Err(IceoryxError::Timeout {
                        what: "waiting for a ping",
                        after: timeout,
                    });
                }
            }
            spin_loop();
        }
    }
}

/// Removes the files iceoryx2 leaves behind for this service name (in /dev/shm: `iox2_*` files, and its directory under /tmp, e.g. /tmp/iceoryx2/...) — only entries belonging to our services (match on the service name or the iox2 prefix for entries created by this process run); never anything else.
///
/// Concretely: the `/dev/shm/iox2_<name>_*` objects and the `/tmp/iceoryx2/iox2_<name>/`
/// directory (with `<name>` sanitised as in [`ping`]/[`pong`]), then `/tmp/iceoryx2`
/// itself only if that left it empty. Call it after both sides have returned (the child
/// has exited); errors are ignored, since everything is best effort.
pub fn cleanup(service_name: &str) {
    let Ok(tag) = tag(service_name) else {
        return;
    };
    let prefix = shm_prefix(&tag);
    if let Ok(entries) = std::fs::read_dir(SHM_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_ours = name.to_str().is_some_and(|n| n.starts_with(&prefix));
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_ours && is_file {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let root = root_dir(&tag);
    if std::fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
        let _ = std::fs::remove_dir_all(&root);
    }
    // Only succeeds if nothing else (another iceoryx2 user) is in there.
    let _ = std::fs::remove_dir(ICEORYX2_TMP_DIR);
}
