//! Multicast: one data area, one channel per receiver, a reference count per buffer.
//!
//! The originator (master, TMM) offers every buffer to every receiver. A buffer goes back
//! to the pool when the last receiver that took it returns it. A receiver whose ring is
//! full, or that already holds its quota of buffers, simply does not get that buffer: the
//! loss is its own and is counted, and neither the originator nor the other receivers
//! ever wait for it (the bounded control queues of the Rbufs design). A receiver that
//! dies or breaks the protocol is dropped and everything it held is taken back.

use crate::pool::{BufId, Pool};
use crate::{Error, IoRec, Master};

/// Per-receiver counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Buffers delivered to this receiver.
    pub delivered: u64,
    /// Buffers this receiver missed because its ring or quota was full.
    pub dropped: u64,
    /// Whether the receiver is still connected.
    pub connected: bool,
}

#[derive(Debug)]
struct Member {
    master: Master,
    quota: usize,
    stats: MemberStats,
}

/// A multicast originator over one pool.
#[derive(Debug, Default)]
pub struct Multicast {
    members: Vec<Member>,
}

impl Multicast {
    /// An originator with no receivers yet.
    pub fn new() -> Multicast {
        Multicast::default()
    }

    /// Adds a receiver's channel; it may hold at most `quota` buffers at once (its ring
    /// size is a sensible quota). Returns its index.
    pub fn add(&mut self, master: Master, quota: usize) -> usize {
        self.members.push(Member {
            master,
            quota,
            stats: MemberStats {
                connected: true,
                ..MemberStats::default()
            },
        });
        self.members.len() - 1
    }

    /// Number of receivers ever added.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no receiver was added.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Counters of receiver `index`.
    pub fn stats(&self, index: usize) -> MemberStats {
        self.members[index].stats
    }

    /// The channel of receiver `index`.
    pub fn member(&mut self, index: usize) -> &mut Master {
        &mut self.members[index].master
    }

    /// Offers every IOrec (buffers the master holds) to every connected receiver, then
    /// drops the master's hold: a buffer nobody took is free again at once. Returns the
    /// number of copies delivered.
    pub fn send(&mut self, pool: &mut Pool, recs: &[IoRec]) -> Result<u64, Error> {
        for rec in recs {
            pool.check_local(rec)?;
        }
        let mut delivered = 0;
        for m in self.members.iter_mut().filter(|m| m.stats.connected) {
            let room = m
                .quota
                .saturating_sub(m.master.lent().len())
                .min(recs.len());
            let n = match m.master.offer(pool, &recs[..room]) {
                Ok(n) => n,
                Err(Error::PeerGone | Error::PeerEvicted { .. }) => {
                    Self::drop_member(m, pool);
                    continue;
                }
                Err(e) => return Err(e),
            };
            m.stats.delivered += n as u64;
            m.stats.dropped += (recs.len() - n) as u64;
            delivered += n as u64;
        }
        for rec in recs {
            pool.unhold(rec.tag() as BufId);
        }
        Ok(delivered)
    }

    /// Takes back what the receivers returned and frees buffers nobody holds any more.
    /// Returns the number of returns processed.
    pub fn reclaim(&mut self, pool: &mut Pool) -> Result<usize, Error> {
        let mut total = 0;
        for m in self.members.iter_mut().filter(|m| m.stats.connected) {
            match m.master.reclaim(pool) {
                Ok(n) => total += n,
                Err(Error::PeerGone | Error::PeerEvicted { .. }) => Self::drop_member(m, pool),
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Notices receivers that exited or died (a system call per receiver: call it off
    /// the fast path, e.g. once per batch of batches) and takes back what they held.
    /// Returns how many are still connected.
    pub fn check_peers(&mut self, pool: &mut Pool) -> usize {
        for m in self.members.iter_mut().filter(|m| m.stats.connected) {
            if m.master.link().check_peer().is_err() {
                Self::drop_member(m, pool);
            }
        }
        self.members.iter().filter(|m| m.stats.connected).count()
    }

    fn drop_member(m: &mut Member, pool: &mut Pool) {
        m.stats.connected = false;
        m.master.link().disconnect();
        let n = m.master.reclaim_all(pool);
        log::info!("multicast receiver gone; {n} buffers taken back");
    }

    /// Lend sets of all receivers, for [`Pool::audit`].
    pub fn lend_sets(&self) -> Vec<&crate::LendSet> {
        self.members.iter().map(|m| m.master.lent()).collect()
    }
}
