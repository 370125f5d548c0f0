//! Rbuf channels: the bulk inter-process transport of the Nemesis Rbufs design, on Linux.
//!
//! - [`DataArea`]: shared memory that data lives in (memfd, hugetlb when available),
//!   writable by its originator, read-only for everyone else, enforced by the kernel.
//! - [`IoRec`]: a header and `(offset, len)` [`Extent`]s into one data area; only IOrecs
//!   travel, never data.
//! - [`ring`]: control areas, single-producer single-consumer rings of IOrecs whose counts
//!   are written only by their owner.
//! - [`event`]: event channels, the counts plus a doorbell rung only for a sleeping peer.
//!
//! This crate knows nothing about devices or protocols and never prints; it logs through
//! `log` only off the fast path.

pub mod area;
pub mod channel;
pub mod connect;
pub mod error;
pub mod event;
pub mod iorec;
pub mod multicast;
pub mod pool;
pub mod ring;
pub mod shm;

pub use area::{DataArea, MAX_AREA_BYTES, PREFETCH_BYTES};
pub use channel::{Link, LinkStats, Master, Mode, Peer, Role};
pub use connect::{Config, Endpoint, Listener};
pub use error::{AllocError, Error, IoRecError};
pub use iorec::{Extent, IoRec, MAX_EXTENTS};
pub use multicast::{MemberStats, Multicast};
pub use pool::{Accounting, BufId, LendSet, Pool};
pub use shm::{Backing, PagePolicy};
