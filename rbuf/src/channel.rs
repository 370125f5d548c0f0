//! Rbuf channels: one data area, two control areas (one each way), two doorbells.
//!
//! Every channel has an *originator* (writes the data, owns the writable mapping of the
//! data area) and a *receiver* (reads it through a read-only mapping). One of them is the
//! *master*, which allocates buffers in the area from its [`Pool`]:
//!
//! | mode | master | master sends | master gets back |
//! |---|---|---|---|
//! | TMM (transmit master) | originator | full IOrecs | the same buffers, done |
//! | RMM (receive master) | receiver | empty IOrecs | the same buffers, filled |
//!
//! Both modes have the same shape from the master's point of view: it lends buffers
//! ([`Master::send`]) and takes them back ([`Master::recv`]), and everything the peer
//! returns must name a buffer lent to it. The non-master side ([`Peer`]) receives IOrecs,
//! which it checks against the data area, and sends IOrecs. The same types serve a channel
//! within one process and between two processes (see [`crate::connect`]).
//!
//! In TMM a receiver that is done with buffers in the order it received them can return
//! them all with one *run return* ([`Peer::release`]: "the oldest `n` buffers you lent
//! me") instead of echoing each IOrec: one ring slot, one cache line, for a whole batch.
//! The master keeps the order it lent buffers in, and checks that a run never names
//! more buffers than the peer holds.
//!
//! A peer that breaks the protocol (an IOrec that fails validation, a count that goes
//! backwards or past the ring) is counted; past [`Link::set_max_errors`] (default: none
//! tolerated) it is evicted: the connection is shut down, every later call returns
//! [`Error::PeerEvicted`], and a master takes back everything it had lent.
//!
//! The four calls a message takes ([`Master::send`], [`Peer::recv`], [`Peer::send`],
//! [`Master::recv`]) are inlined into their callers whole, with what they call of this
//! module (`lend_out`, `receive`, [`Link::push`], `Link::pop`; `#[inline(always)]`): on a
//! ping-pong every instruction of them lies between a stamp arriving and the next one
//! leaving. That took a one-IOrec round trip on one thread from about 75 to 63 ns, and
//! `bench ipc`'s polling latency against the bare cache line from a median of 1.72 to
//! 1.66 over five alternating runs each (rate and bulk within their noise); `#[inline]`
//! alone left the compiler calling them (71 ns).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::event::Doorbell;
use crate::pool::{BufId, LENT_UNNUMBERED, LendSet, Pool};
use crate::ring::{Consumer, Producer};
use crate::{DataArea, Error, IoRec, IoRecError};

/// Which side is master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Transmit master mode: the originator allocates, fills and sends full buffers.
    Tmm,
    /// Receive master mode: the receiver allocates and posts empty buffers for the
    /// originator to fill (the NIC receive path).
    Rmm,
}

/// Which end of the data flow this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Writes the data; owns the writable mapping of the data area.
    Originator,
    /// Reads the data through a read-only mapping.
    Receiver,
}

impl Mode {
    /// Whether `role` is the master in this mode.
    pub fn is_master(self, role: Role) -> bool {
        matches!(
            (self, role),
            (Mode::Tmm, Role::Originator) | (Mode::Rmm, Role::Receiver)
        )
    }
}

/// Counters of one side of a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// IOrecs pushed to the peer.
    pub sent: u64,
    /// IOrecs popped from the peer (valid or not).
    pub received: u64,
    /// IOrecs from the peer refused by validation.
    pub bad_iorecs: u64,
    /// Corrupt counts (head or tail) published by the peer, and heads claiming slots it
    /// never stamped.
    pub bad_counts: u64,
    /// Doorbells rung for the peer (system calls made on its behalf).
    pub wakeups_sent: u64,
    /// Times this side went to sleep on its doorbell.
    pub sleeps: u64,
}

/// Polls of a wait before it sleeps, by default: a few microseconds, enough to catch a
/// peer that is busy right now without a system call.
pub const DEFAULT_SPINS: u32 = 200;

/// Stale entries the lending order may hold beyond twice the pool before it is compacted.
const ORDER_SLACK: usize = 64;

/// What a link is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Await {
    Incoming,
    Space(usize),
}

/// One side of a channel: the ring it produces, the ring it consumes, its doorbell, the
/// peer's doorbell and, between processes, the connection whose hang-up tells of the
/// peer's death.
#[derive(Debug)]
pub struct Link {
    mode: Mode,
    role: Role,
    area: Arc<DataArea>,
    out: Producer,
    inp: Consumer,
    bell: Doorbell,
    peer_bell: Doorbell,
    conn: Option<OwnedFd>,
    stats: LinkStats,
    spins: u32,
    max_errors: u64,
    errors: u64,
    last_error: Option<String>,
    dead: Option<DeadReason>,
}

#[derive(Debug, Clone)]
enum DeadReason {
    Gone,
    Evicted { errors: u64, last: String },
}

impl Link {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        mode: Mode,
        role: Role,
        area: Arc<DataArea>,
        out: Producer,
        inp: Consumer,
        bell: Doorbell,
        peer_bell: Doorbell,
        conn: Option<OwnedFd>,
    ) -> Link {
        Link {
            mode,
            role,
            area,
            out,
            inp,
            bell,
            peer_bell,
            conn,
            stats: LinkStats::default(),
            spins: DEFAULT_SPINS,
            max_errors: 0,
            errors: 0,
            last_error: None,
            dead: None,
        }
    }

    /// The channel's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The data area (writable only for the originator).
    pub fn area(&self) -> &Arc<DataArea> {
        &self.area
    }

    /// Ring size in IOrecs (both rings have the same).
    pub fn slots(&self) -> usize {
        self.out.slots()
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Protocol errors tolerated before the peer is evicted (default 0: the first one
    /// evicts).
    pub fn set_max_errors(&mut self, max_errors: u64) {
        self.max_errors = max_errors;
    }

    /// How many times a wait polls before it sleeps on the doorbell (default
    /// [`DEFAULT_SPINS`]; 0: sleep at once, lowest CPU; large: busy-poll, lowest latency).
    pub fn set_spins(&mut self, spins: u32) {
        self.spins = spins;
    }

    /// The last protocol error of the peer, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The doorbell this side sleeps on, for use with `epoll`: call
    /// [`Link::arm_incoming`] first, and if it returns `false`, wait for the fd to become
    /// readable, then [`Doorbell::drain`] it and receive.
    pub fn doorbell(&self) -> &Doorbell {
        &self.bell
    }

    /// The connection to the peer (for `epoll` on its hang-up), if across processes.
    pub fn connection(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.conn.as_ref().map(|c| c.as_fd())
    }

    /// This side's own shared memory: the producer memory of the outgoing ring and the
    /// consumer memory of the incoming ring. Only for tools and tests that play a
    /// misbehaving peer (see [`crate::ring::raw`]); normal code never needs it.
    pub fn own_memory(&self) -> (&crate::shm::Region, &crate::shm::Region) {
        (self.out.memory(), self.inp.memory())
    }

    pub(crate) fn connection_owned(&self) -> &OwnedFd {
        self.conn
            .as_ref()
            .expect("links made by the handshake have a connection")
    }

    #[inline]
    fn alive(&self) -> Result<(), Error> {
        match &self.dead {
            None => Ok(()),
            Some(DeadReason::Gone) => Err(Error::PeerGone),
            Some(DeadReason::Evicted { errors, last }) => Err(Error::PeerEvicted {
                errors: *errors,
                last: last.clone(),
            }),
        }
    }

    /// Like `alive`, but a peer that merely left (exited, closed) still lets us take what
    /// it published before it went: its memory stays mapped here. An evicted one does not.
    #[inline]
    fn drainable(&self) -> Result<(), Error> {
        match &self.dead {
            Some(DeadReason::Gone) => Ok(()),
            _ => self.alive(),
        }
    }

    /// Records a protocol error of the peer; returns the error to report (the eviction
    /// once past the tolerance).
    fn violation(&mut self, err: Error) -> Error {
        match err {
            Error::BadCount { .. } | Error::BadStamp { .. } => self.stats.bad_counts += 1,
            Error::BadIoRec(_) => self.stats.bad_iorecs += 1,
            other => return other,
        }
        self.errors += 1;
        let text = err.to_string();
        log::warn!("rbuf peer protocol error {}: {text}", self.errors);
        self.last_error = Some(text.clone());
        if self.errors > self.max_errors {
            self.evict(text);
            return self.alive().unwrap_err();
        }
        err
    }

    fn evict(&mut self, last: String) {
        if self.dead.is_none() {
            self.dead = Some(DeadReason::Evicted {
                errors: self.errors,
                last,
            });
            if let Some(conn) = &self.conn {
                let _ = rustix::net::shutdown(conn, rustix::net::Shutdown::Both);
            }
        }
    }

    /// Disconnects the peer now (it sees the connection close).
    pub fn disconnect(&mut self) {
        if self.dead.is_none() {
            self.dead = Some(DeadReason::Gone);
            if let Some(conn) = &self.conn {
                let _ = rustix::net::shutdown(conn, rustix::net::Shutdown::Both);
            }
        }
    }

    /// Free slots in the outgoing ring, enough for `want` or as many as there are (see
    /// [`Producer::room`]): a push of that many right now fits.
    #[inline]
    pub(crate) fn room(&mut self, want: usize) -> Result<usize, Error> {
        self.alive()?;
        self.out.room(want).map_err(|e| self.violation(e))
    }

    /// Pushes IOrecs to the peer; returns how many fit. Rings the peer only if it sleeps.
    #[inline(always)]
    pub fn push(&mut self, recs: &[IoRec]) -> Result<usize, Error> {
        self.alive()?;
        let (n, wake) = self.out.push(recs).map_err(|e| self.violation(e))?;
        self.stats.sent += n as u64;
        if wake {
            self.peer_bell.ring();
            self.stats.wakeups_sent += 1;
        }
        Ok(n)
    }

    /// Pops IOrecs from the peer, unvalidated copies; the typed ends validate them.
    #[inline(always)]
    fn pop(&mut self, out: &mut [IoRec]) -> Result<usize, Error> {
        self.drainable()?;
        let (n, wake) = self.inp.pop(out).map_err(|e| self.violation(e))?;
        self.stats.received += n as u64;
        if n == 0 && self.dead.is_some() {
            return Err(Error::PeerGone);
        }
        if wake && self.dead.is_none() {
            self.peer_bell.ring();
            self.stats.wakeups_sent += 1;
        }
        Ok(n)
    }

    /// Checks, without blocking, that the peer is still connected.
    pub fn check_peer(&mut self) -> Result<(), Error> {
        self.alive()?;
        if let Some(conn) = &self.conn {
            let mut fds = [PollFd::new(conn, PollFlags::IN)];
            let ready = rustix::event::poll(&mut fds, Some(&Timespec::default()))
                .map_err(|e| Error::sys("poll", e))?;
            if ready > 0 && !fds[0].revents().is_empty() {
                self.dead = Some(DeadReason::Gone);
                return Err(Error::PeerGone);
            }
        }
        Ok(())
    }

    /// Declares that this side will sleep until an IOrec arrives; `true` if one already
    /// has. For `epoll` users; [`Link::wait_incoming`] does it all.
    pub fn arm_incoming(&mut self) -> Result<bool, Error> {
        self.inp.arm().map_err(|e| self.violation(e))
    }

    /// Blocks until an IOrec is waiting, the peer goes away, or `timeout` passes (`None`:
    /// forever). Spins briefly first, then sleeps on the doorbell. Returns `Ok(false)` on
    /// timeout.
    pub fn wait_incoming(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        self.wait(Await::Incoming, timeout)
    }

    /// Blocks until `want` slots are free in the outgoing ring (see [`Link::wait_incoming`]).
    pub fn wait_space(&mut self, want: usize, timeout: Option<Duration>) -> Result<bool, Error> {
        self.wait(Await::Space(want), timeout)
    }

    fn ready(&mut self, what: Await) -> Result<bool, Error> {
        let r = match what {
            Await::Incoming => self.inp.ready(),
            Await::Space(want) => self.out.free().map(|n| n >= want.clamp(1, self.slots())),
        };
        r.map_err(|e| self.violation(e))
    }

    fn arm(&mut self, what: Await) -> Result<bool, Error> {
        let r = match what {
            Await::Incoming => self.inp.arm(),
            Await::Space(want) => self.out.arm(want),
        };
        r.map_err(|e| self.violation(e))
    }

    fn disarm(&mut self, what: Await) {
        match what {
            Await::Incoming => self.inp.disarm(),
            Await::Space(_) => self.out.disarm(),
        }
    }

    fn wait(&mut self, what: Await, timeout: Option<Duration>) -> Result<bool, Error> {
        if self.dead.is_some() {
            // What a departed peer published can still be taken; nothing else will come.
            return match what {
                Await::Incoming if self.drainable().is_ok() && self.ready(what)? => Ok(true),
                _ => Err(self.alive().unwrap_err()),
            };
        }
        for _ in 0..self.spins {
            // Spinning for IOrecs watches the next slot's stamp alone; the peer's head
            // is read and checked on every HEAD_CHECK_POLLS-th empty poll and before
            // sleeping (`Consumer::poll`).
            let ready = match what {
                Await::Incoming => self.inp.poll().map_err(|e| self.violation(e))?,
                Await::Space(_) => self.ready(what)?,
            };
            if ready {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.arm(what)? {
                self.disarm(what);
                return Ok(true);
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => Some(left),
                    None => {
                        self.disarm(what);
                        return Ok(false);
                    }
                },
                None => None,
            };
            self.stats.sleeps += 1;
            let slept = self.sleep(left);
            self.disarm(what);
            if let Err(e) = slept {
                return if what == Await::Incoming && self.ready(what)? {
                    Ok(true)
                } else {
                    Err(e)
                };
            }
            if self.ready(what)? {
                return Ok(true);
            }
        }
    }

    fn sleep(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let mut fds = vec![PollFd::new(&self.bell, PollFlags::IN)];
        if let Some(conn) = &self.conn {
            fds.push(PollFd::new(conn, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::sys("poll", e)),
        }
        let hung_up = fds.get(1).is_some_and(|f| !f.revents().is_empty());
        self.bell.drain();
        if hung_up {
            self.dead = Some(DeadReason::Gone);
            return Err(Error::PeerGone);
        }
        Ok(())
    }
}

/// The master's side of a channel: lends buffers of its pool, takes them back.
#[derive(Debug)]
pub struct Master {
    link: Link,
    lent: LendSet,
    /// Buffers in the order they were lent, by lending number; an entry is stale once
    /// the buffer came back (the lend set no longer holds it under that number: not
    /// lent, or lent again later).
    order: LendingOrder,
    /// Buffers that run returns gave back and `recv` has not handed out yet (still
    /// counted as lent until then).
    run_left: u64,
}

/// Buffer ids in the order they were lent: a ring indexed by lending number (numbers
/// start at 1, so 0 never names a lending), which doubles when full.
#[derive(Debug)]
struct LendingOrder {
    ids: Vec<BufId>,
    /// Lending number of the oldest entry.
    front: u64,
    /// Lending number the next entry gets.
    back: u64,
}

impl LendingOrder {
    fn with_capacity(capacity: usize) -> LendingOrder {
        LendingOrder {
            ids: vec![0; capacity.max(1).next_power_of_two()],
            front: 1,
            back: 1,
        }
    }

    fn len(&self) -> usize {
        (self.back - self.front) as usize
    }

    fn slot(&self, n: u64) -> usize {
        (n & (self.ids.len() as u64 - 1)) as usize
    }

    /// The lending number the next entry gets.
    fn next_number(&self) -> u64 {
        self.back
    }

    /// Appends `id`; returns its lending number.
    #[inline]
    fn push(&mut self, id: BufId) -> u64 {
        if self.len() == self.ids.len() {
            self.grow();
        }
        let n = self.back;
        let at = self.slot(n);
        self.ids[at] = id;
        self.back += 1;
        n
    }

    /// Takes entries from the front, oldest first, until `max` of them were live (`lent`
    /// holds the buffer under that entry's number) or none is left, passing each live
    /// one to `take`; the stale ones passed on the way are dropped. Returns how many
    /// were live.
    #[inline]
    fn take_live(
        &mut self,
        lent: &mut LendSet,
        max: u64,
        mut take: impl FnMut(BufId, &mut LendSet),
    ) -> u64 {
        let (mut front, back) = (self.front, self.back);
        let mut live = 0;
        while live < max && front < back {
            let id = self.ids[self.slot(front)];
            if lent.number(id) == front {
                take(id, lent);
                live += 1;
            }
            front += 1;
        }
        self.front = front;
        live
    }

    /// Takes back the newest entry and its lending number.
    fn pop_back(&mut self) -> Option<(BufId, u64)> {
        if self.front == self.back {
            return None;
        }
        self.back -= 1;
        Some((self.ids[self.slot(self.back)], self.back))
    }

    /// Keeps the entries for which `keep(id, number, new number)` holds, in order and
    /// numbered afresh from the front (the new number is the one a kept entry gets).
    fn compact(&mut self, mut keep: impl FnMut(BufId, u64, u64) -> bool) {
        let mut to = self.front;
        for n in self.front..self.back {
            let id = self.ids[self.slot(n)];
            if keep(id, n, to) {
                // `to <= n`: the slot written was read already or is this one.
                let at = self.slot(to);
                self.ids[at] = id;
                to += 1;
            }
        }
        self.back = to;
    }

    fn clear(&mut self) {
        self.front = self.back;
    }

    /// Doubles the ring, keeping every entry at its number.
    #[cold]
    fn grow(&mut self) {
        let mut ids = vec![0; 2 * self.ids.len()];
        let mask = ids.len() as u64 - 1;
        for n in self.front..self.back {
            ids[(n & mask) as usize] = self.ids[self.slot(n)];
        }
        self.ids = ids;
    }
}

impl Master {
    /// Wraps a link on the master's side, for a pool of `pool_capacity` buffer ids.
    pub fn new(link: Link, pool_capacity: usize) -> Result<Master, Error> {
        if !link.mode.is_master(link.role) {
            return Err(Error::Handshake(format!(
                "a {:?} in {:?} is not the master",
                link.role, link.mode
            )));
        }
        // Only TMM keeps a lending order (run returns). It is compacted once past twice
        // the pool plus ORDER_SLACK (by up to one batch), so this room rarely grows.
        let order_room = match link.mode {
            Mode::Tmm => 2 * pool_capacity + 2 * ORDER_SLACK,
            Mode::Rmm => 0,
        };
        Ok(Master {
            link,
            lent: LendSet::new(pool_capacity),
            order: LendingOrder::with_capacity(order_room),
            run_left: 0,
        })
    }

    /// Drops the stale entries (buffers returned one by one) of the lending order once
    /// they outnumber the live ones, and numbers the live ones afresh from the front.
    /// (Runs drop stale entries at the front as they pass them.)
    fn compact_order(&mut self) {
        if self.order.len() <= 2 * self.lent.capacity() + ORDER_SLACK {
            return;
        }
        let lent = &mut self.lent;
        self.order.compact(|id, n, renumbered| {
            let live = lent.number(id) == n;
            if live {
                lent.set_number(id, renumbered);
            }
            live
        });
    }

    /// Takes up to `max` buffers of pending run returns, oldest lending first, passing
    /// each (still lent to the peer) to `take`; returns how many. Fewer than `max` and
    /// fewer than are pending only when a run covered more than the peer held (a
    /// violation, counted; then no run is pending). Fails only when that violation evicts
    /// the peer.
    #[inline]
    fn take_run_buffers(
        &mut self,
        max: u64,
        take: impl FnMut(BufId, &mut LendSet),
    ) -> Result<u64, Error> {
        let want = max.min(self.run_left);
        let got = self.order.take_live(&mut self.lent, want, take);
        self.run_left -= got;
        if got < want {
            self.run_overrun()?;
        }
        Ok(got)
    }

    /// The lending order ran out before the pending runs did: only after the peer
    /// returned one by one buffers its runs had covered.
    #[cold]
    fn run_overrun(&mut self) -> Result<(), Error> {
        let count = std::mem::take(&mut self.run_left);
        let e = IoRecError::RunTooLong {
            count,
            held: self.lent.len(),
        };
        match self.link.violation(e.into()) {
            err @ Error::PeerEvicted { .. } => Err(err),
            _ => Ok(()),
        }
    }

    /// Hands out up to `out.len()` buffers of pending run returns, oldest lending first.
    /// Fails only when the peer is evicted (then it has freed what it handed out).
    fn deliver_run(&mut self, pool: &mut Pool, out: &mut [IoRec]) -> Result<usize, Error> {
        let mut w = 0;
        let taken = self.take_run_buffers(out.len() as u64, |id, lent| {
            pool.take_back_id(id, lent);
            out[w] = pool.iorec(id);
            w += 1;
        });
        if let Err(err) = taken {
            for rec in &out[..w] {
                pool.free(rec.tag() as BufId);
            }
            return Err(err);
        }
        Ok(w)
    }

    /// Gives every buffer of pending run returns straight back to the pool (no IOrec
    /// for each); returns how many. Fails only when the peer is evicted.
    fn free_runs(&mut self, pool: &mut Pool) -> Result<usize, Error> {
        let freed = self.take_run_buffers(u64::MAX, |id, lent| pool.end_lend(id, lent))?;
        Ok(freed as usize)
    }

    /// The underlying link (stats, waiting, doorbell).
    pub fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    /// The data area.
    pub fn area(&self) -> &Arc<DataArea> {
        &self.link.area
    }

    /// Buffers the peer holds (in the rings or in its hands).
    pub fn lent(&self) -> &LendSet {
        &self.lent
    }

    /// Sends IOrecs of buffers the master holds (tag = buffer id, extents inside the
    /// buffer); returns how many fit in the ring. The sent buffers are lent to the peer.
    /// Only those that fit are checked: a bad IOrec is refused once there is room for it.
    #[inline(always)]
    pub fn send(&mut self, pool: &mut Pool, recs: &[IoRec]) -> Result<usize, Error> {
        self.lend_out(pool, recs, false)
    }

    /// As [`Master::send`], but the master keeps its hold on the buffers too (multicast
    /// offers one buffer to several peers, then drops its hold with [`Pool::unhold`]).
    pub fn offer(&mut self, pool: &mut Pool, recs: &[IoRec]) -> Result<usize, Error> {
        self.lend_out(pool, recs, true)
    }

    /// Lends and pushes the buffers of as many of `recs` as fit in the ring; the master
    /// keeps its hold on them if `keep_hold` ([`Master::offer`]), else drops it.
    #[inline(always)]
    fn lend_out(
        &mut self,
        pool: &mut Pool,
        recs: &[IoRec],
        keep_hold: bool,
    ) -> Result<usize, Error> {
        // Only what fits is lent: this side is the ring's one producer, so the room
        // cannot shrink before the push.
        let room = self
            .link
            .room(recs.len())
            .map_err(|e| self.fail(pool, e, false))?;
        let recs = &recs[..recs.len().min(room)];
        // One pass checks and lends each buffer (which also refuses a buffer named
        // twice), records the lending and drops the master's hold (never the last one:
        // the peer's is there now); a bad IOrec undoes the ones before it.
        let ordered = self.link.mode == Mode::Tmm;
        for (i, rec) in recs.iter().enumerate() {
            let number = if ordered {
                self.order.next_number()
            } else {
                LENT_UNNUMBERED
            };
            match pool.lend_rec(rec, &mut self.lent, number, keep_hold) {
                Ok(id) => {
                    if ordered {
                        self.order.push(id);
                    }
                }
                Err(e) => {
                    self.unlend_last(pool, &recs[..i], keep_hold);
                    return Err(e.into());
                }
            }
        }
        let n = match self.link.push(recs) {
            Ok(n) => n,
            Err(e) => {
                self.unlend_last(pool, recs, keep_hold);
                return Err(self.fail(pool, e, false));
            }
        };
        if n < recs.len() {
            debug_assert!(false, "the room was there");
            self.unlend_last(pool, &recs[n..], keep_hold);
        }
        if ordered {
            self.compact_order();
        }
        Ok(n)
    }

    /// Undoes the lending of `recs`, the last ones [`Master::lend_out`] lent (and
    /// recorded), newest first: the master holds them again and the peer does not.
    fn unlend_last(&mut self, pool: &mut Pool, recs: &[IoRec], kept_hold: bool) {
        for rec in recs.iter().rev() {
            let id = rec.tag() as BufId;
            if !kept_hold {
                pool.hold(id);
            }
            if self.link.mode == Mode::Tmm {
                let last = self.order.pop_back();
                debug_assert_eq!(last.map(|(last, _)| last), Some(id));
            }
            pool.unlend(id, &mut self.lent);
        }
    }

    /// Receives buffers coming back from the peer (TMM: done; RMM: filled), validated:
    /// each must name a buffer lent to this peer, extents inside it. The master holds
    /// the returned buffers (free them with [`Pool::free`] or send them again). Buffers
    /// given back by a run return come back as whole buffers ([`Pool::iorec`]).
    #[inline(always)]
    pub fn recv(&mut self, pool: &mut Pool, out: &mut [IoRec]) -> Result<usize, Error> {
        self.receive(pool, out, true)
    }

    /// [`Master::recv`]; with `deliver_runs` false, buffers of run returns are not handed
    /// out but stay pending (for [`Master::free_runs`]).
    #[inline(always)]
    fn receive(
        &mut self,
        pool: &mut Pool,
        out: &mut [IoRec],
        deliver_runs: bool,
    ) -> Result<usize, Error> {
        let mut kept = 0;
        if deliver_runs && self.run_left > 0 {
            kept = self
                .deliver_run(pool, out)
                .map_err(|e| self.fail(pool, e, false))?;
        }
        if kept == out.len() {
            return Ok(kept);
        }
        let n = match self.link.pop(&mut out[kept..]) {
            Ok(n) => n,
            // A departed peer's run returns were handed out above: those first, and
            // `PeerGone` on the next call.
            Err(Error::PeerGone) if kept > 0 => return Ok(kept),
            Err(e) => {
                for rec in &out[..kept] {
                    pool.free(rec.tag() as BufId);
                }
                return Err(self.fail(pool, e, true));
            }
        };
        let mut fatal = None;
        let popped = kept..kept + n;
        for i in popped {
            let rec = &out[i];
            let taken = match rec.run_len() {
                Some(count) if self.link.mode == Mode::Tmm => {
                    let pending = self.run_left.saturating_add(count);
                    if pending > self.lent.len() as u64 {
                        Err(IoRecError::RunTooLong {
                            count: pending,
                            held: self.lent.len(),
                        })
                    } else {
                        self.run_left = pending;
                        continue;
                    }
                }
                _ => pool.take_back(rec, &mut self.lent).map(|_| ()),
            };
            match taken {
                Ok(()) => {
                    if kept != i {
                        out[kept] = out[i];
                    }
                    kept += 1;
                }
                Err(e) => {
                    if let err @ Error::PeerEvicted { .. } = self.link.violation(e.into()) {
                        fatal = Some(err);
                        break;
                    }
                }
            }
        }
        if fatal.is_none() && deliver_runs && self.run_left > 0 {
            // Runs received in this batch: their buffers fill what room is left.
            match self.deliver_run(pool, &mut out[kept..]) {
                Ok(w) => kept += w,
                Err(err) => fatal = Some(err),
            }
        }
        if let Some(err) = fatal {
            for rec in &out[..kept] {
                pool.free(rec.tag() as BufId);
            }
            self.reclaim_all(pool);
            return Err(err);
        }
        Ok(kept)
    }

    /// Receives returned buffers and frees them at once (TMM senders); returns how many.
    /// Buffers that run returns give back go to the pool directly. Once a departed peer's
    /// last IOrecs are taken, the call that finds nothing more fails with
    /// [`Error::PeerGone`] (and takes back whatever the peer still held).
    pub fn reclaim(&mut self, pool: &mut Pool) -> Result<usize, Error> {
        let mut buf = [IoRec::default(); 32];
        let (mut total, mut more) = (0, true);
        loop {
            // Buffers of runs pending from before, or received in the last batch.
            total += self
                .free_runs(pool)
                .map_err(|e| self.fail(pool, e, false))?;
            if !more {
                return Ok(total);
            }
            let n = match self.receive(pool, &mut buf, false) {
                Ok(n) => n,
                Err(Error::PeerGone) if total > 0 => return Ok(total),
                Err(e) => return Err(e),
            };
            for rec in &buf[..n] {
                pool.free(rec.tag() as BufId);
            }
            total += n;
            more = n == buf.len();
        }
    }

    /// Takes back everything the peer held once it is evicted, or once it is gone and
    /// everything it published before leaving was received (`drained`).
    fn fail(&mut self, pool: &mut Pool, e: Error, drained: bool) -> Error {
        match e {
            Error::PeerEvicted { .. } => {
                self.reclaim_all(pool);
            }
            Error::PeerGone if drained => {
                self.reclaim_all(pool);
            }
            _ => {}
        }
        e
    }

    /// Takes back every buffer lent to the peer (after it died or was evicted); returns
    /// how many. [`Master::recv`] does this itself once a departed peer's last IOrecs
    /// are received (it then returns [`Error::PeerGone`]), and any call on an evicted one;
    /// after a [`Link`] wait reports the peer gone, keep calling `recv` or call this.
    pub fn reclaim_all(&mut self, pool: &mut Pool) -> usize {
        self.order.clear();
        self.run_left = 0;
        pool.reclaim(&mut self.lent)
    }
}

/// The non-master side of a channel: receives IOrecs (checked against the data area) and
/// sends IOrecs back (TMM receiver: returns them when done; RMM originator: fills the
/// empty buffers and sends them full).
#[derive(Debug)]
pub struct Peer {
    link: Link,
}

impl Peer {
    /// Wraps a link on the non-master side.
    pub fn new(link: Link) -> Result<Peer, Error> {
        if link.mode.is_master(link.role) {
            return Err(Error::Handshake(format!(
                "a {:?} in {:?} is the master",
                link.role, link.mode
            )));
        }
        Ok(Peer { link })
    }

    /// The underlying link (stats, waiting, doorbell).
    pub fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    /// The data area.
    pub fn area(&self) -> &Arc<DataArea> {
        &self.link.area
    }

    /// Receives IOrecs, each validated against the data area (at least one extent, all in
    /// bounds); refused ones are counted and dropped.
    #[inline(always)]
    pub fn recv(&mut self, out: &mut [IoRec]) -> Result<usize, Error> {
        let n = self.link.pop(out)?;
        let area_bytes = self.link.area.len();
        let mut kept = 0;
        for i in 0..n {
            match out[i].validate(area_bytes) {
                Ok(()) => {
                    if kept != i {
                        out[kept] = out[i];
                    }
                    kept += 1;
                }
                Err(e) => {
                    if let err @ Error::PeerEvicted { .. } = self.link.violation(e.into()) {
                        return Err(err);
                    }
                }
            }
        }
        Ok(kept)
    }

    /// Sends IOrecs to the master; returns how many fit.
    #[inline(always)]
    pub fn send(&mut self, recs: &[IoRec]) -> Result<usize, Error> {
        self.link.push(recs)
    }

    /// Returns the oldest `n` buffers the master lent us and we have not returned yet
    /// (TMM only), with one ring slot instead of `n`; returns whether it fit.
    pub fn release(&mut self, n: u64) -> Result<bool, Error> {
        if self.link.mode != Mode::Tmm {
            return Err(Error::RunInRmm);
        }
        if n == 0 {
            return Ok(true);
        }
        Ok(self.link.push(&[IoRec::run_return(n)])? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::pair;
    use crate::{Extent, PagePolicy};

    fn tmm(slots: usize, pool_slots: usize) -> (Master, Peer, Pool) {
        let area = Arc::new(DataArea::create(pool_slots * 256, PagePolicy::Shmem).unwrap());
        let pool = Pool::slots(area.len(), 256);
        let (o, r) = pair(Mode::Tmm, slots, area, pool.capacity()).unwrap();
        (o.into_master().unwrap(), r.into_peer().unwrap(), pool)
    }

    /// Sends `n` fresh buffers; returns their ids in order.
    fn send_n(master: &mut Master, pool: &mut Pool, n: usize) -> Vec<BufId> {
        let recs: Vec<IoRec> = (0..n)
            .map(|_| {
                let id = pool.alloc(64).unwrap();
                IoRec::single(u64::from(id), Extent::new(pool.extent(id).offset(), 64))
            })
            .collect();
        assert_eq!(master.send(pool, &recs).unwrap(), n);
        recs.iter().map(|r| r.tag() as BufId).collect()
    }

    fn recv_all(master: &mut Master, pool: &mut Pool, room: usize) -> Vec<BufId> {
        let mut out = vec![IoRec::default(); room];
        let mut ids = Vec::new();
        loop {
            let n = master.recv(pool, &mut out).unwrap();
            ids.extend(out[..n].iter().map(|r| r.tag() as BufId));
            if n == 0 {
                return ids;
            }
        }
    }

    #[test]
    fn run_returns_give_back_the_oldest_in_order() {
        let (mut master, mut peer, mut pool) = tmm(16, 64);
        let sent = send_n(&mut master, &mut pool, 10);
        let mut got = [IoRec::default(); 16];
        assert_eq!(peer.recv(&mut got).unwrap(), 10);
        // The peer returns #3 on its own, then a run of 4 (#0, #1, #2, #4), then #9, then
        // a run of the remaining 4; the master hands them out a few at a time.
        assert_eq!(peer.send(&[got[3]]).unwrap(), 1);
        assert!(peer.release(4).unwrap());
        assert_eq!(peer.send(&[got[9]]).unwrap(), 1);
        assert!(peer.release(4).unwrap());
        let back = recv_all(&mut master, &mut pool, 3);
        let want: Vec<BufId> = [3, 9, 0, 1, 2, 4, 5, 6, 7, 8]
            .iter()
            .map(|&i| sent[i])
            .collect();
        let mut sorted_back = back.clone();
        sorted_back.sort_unstable();
        let mut sorted_want = want.clone();
        sorted_want.sort_unstable();
        assert_eq!(sorted_back, sorted_want, "{back:?}");
        assert!(master.lent().is_empty());
        for id in back {
            pool.free(id);
        }
        assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
        // Buffers sent again after coming back are ordered by their new lending.
        let again = send_n(&mut master, &mut pool, 3);
        assert_eq!(peer.recv(&mut got).unwrap(), 3);
        assert!(peer.release(2).unwrap());
        assert_eq!(recv_all(&mut master, &mut pool, 8), again[..2].to_vec());
        assert_eq!(master.lent().len(), 1);
        assert_eq!(master.link().stats().bad_iorecs, 0);
    }

    #[test]
    fn a_departed_peers_last_returns_come_before_peer_gone() {
        // 64 returns, two full reclaim batches: the pop after them finds the peer gone.
        let (mut master, mut peer, mut pool) = tmm(128, 256);
        send_n(&mut master, &mut pool, 64);
        let mut got = [IoRec::default(); 64];
        assert_eq!(peer.recv(&mut got).unwrap(), 64);
        assert_eq!(peer.send(&got).unwrap(), 64);
        peer.link().disconnect();
        assert!(matches!(master.link().check_peer(), Err(Error::PeerGone)));
        assert_eq!(master.reclaim(&mut pool).unwrap(), 64);
        assert!(matches!(master.reclaim(&mut pool), Err(Error::PeerGone)));
        assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());

        // The same through `recv`, with buffers of a run return still to hand out.
        let (mut master, mut peer, mut pool) = tmm(128, 256);
        send_n(&mut master, &mut pool, 40);
        assert_eq!(peer.recv(&mut got).unwrap(), 40);
        assert!(peer.release(40).unwrap());
        peer.link().disconnect();
        assert!(matches!(master.link().check_peer(), Err(Error::PeerGone)));
        let mut back = [IoRec::default(); 32];
        let mut held = Vec::new();
        loop {
            match master.recv(&mut pool, &mut back) {
                Ok(n) => held.extend(back[..n].iter().map(|r| r.tag() as BufId)),
                Err(Error::PeerGone) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(held.len(), 40, "every buffer of the run handed back");
        let acc = pool.audit(&[master.lent()]).unwrap();
        assert_eq!((acc.local, acc.lent), (40, 0));
        for id in held {
            pool.free(id);
        }
    }

    #[test]
    fn reclaim_frees_single_and_run_returns_alike() {
        let (mut master, mut peer, mut pool) = tmm(64, 256);
        let sent = send_n(&mut master, &mut pool, 50);
        let mut got = [IoRec::default(); 64];
        assert_eq!(peer.recv(&mut got).unwrap(), 50);
        // #7 alone, then runs covering the rest (more than one reclaim batch of 32),
        // with #40 returned alone in between (the run skips it).
        assert_eq!(peer.send(&[got[7]]).unwrap(), 1);
        assert!(peer.release(20).unwrap());
        assert_eq!(peer.send(&[got[40]]).unwrap(), 1);
        assert!(peer.release(27).unwrap());
        assert_eq!(master.reclaim(&mut pool).unwrap(), 49);
        assert_eq!(master.lent().len(), 1, "one of the 50 still held");
        assert!(master.lent().contains(sent[49]));
        let acc = pool.audit(&[master.lent()]).unwrap();
        assert_eq!((acc.free, acc.lent, acc.local), (pool.capacity() - 1, 1, 0));
        // A run past what the peer holds is a violation; one too many evicts, and the
        // eviction takes back what it held.
        master.link().set_max_errors(0);
        assert!(peer.release(2).unwrap());
        assert!(matches!(
            master.reclaim(&mut pool),
            Err(Error::PeerEvicted { .. })
        ));
        assert!(master.lent().is_empty());
        assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
    }

    #[test]
    fn run_returns_are_checked() {
        let (mut master, mut peer, mut pool) = tmm(16, 64);
        master.link().set_max_errors(10);
        send_n(&mut master, &mut pool, 4);
        let mut got = [IoRec::default(); 16];
        assert_eq!(peer.recv(&mut got).unwrap(), 4);
        // More than the peer holds: refused, nothing taken back.
        assert!(peer.release(5).unwrap());
        let mut out = [IoRec::default(); 8];
        assert_eq!(master.recv(&mut pool, &mut out).unwrap(), 0);
        assert_eq!(master.link().stats().bad_iorecs, 1);
        assert_eq!(master.lent().len(), 4);
        // A run of 3, then the peer returns one by one two of the three it covered: those
        // go through (they name lent buffers), the run takes #2 and #3 and then finds
        // nothing more lent: refused. Nothing is taken twice.
        assert!(peer.release(3).unwrap());
        assert_eq!(peer.send(&got[..2]).unwrap(), 2);
        assert_eq!(master.recv(&mut pool, &mut out).unwrap(), 4);
        assert_eq!(master.link().stats().bad_iorecs, 2);
        assert!(master.lent().is_empty());
        // A run when nothing is lent at all.
        assert!(peer.release(u64::MAX).unwrap());
        assert_eq!(master.recv(&mut pool, &mut out[4..]).unwrap(), 0);
        assert_eq!(master.link().stats().bad_iorecs, 3);
        for rec in &out[..4] {
            pool.free(rec.tag() as BufId);
        }
        assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
    }

    #[test]
    fn run_returns_are_tmm_only() {
        let area = Arc::new(DataArea::create(64 * 256, PagePolicy::Shmem).unwrap());
        let mut pool = Pool::slots(area.len(), 256);
        let (o, r) = pair(Mode::Rmm, 16, area, pool.capacity()).unwrap();
        let (mut master, mut peer) = (r.into_master().unwrap(), o.into_peer().unwrap());
        assert!(matches!(peer.release(1), Err(Error::RunInRmm)));
        let id = pool.alloc(64).unwrap();
        let rec = pool.iorec(id);
        assert_eq!(master.send(&mut pool, &[rec]).unwrap(), 1);
        // A forged one is an IOrec with too many extents to an RMM master.
        assert_eq!(peer.send(&[IoRec::run_return(1)]).unwrap(), 1);
        let mut out = [IoRec::default(); 4];
        assert!(matches!(
            master.recv(&mut pool, &mut out),
            Err(Error::PeerEvicted { .. })
        ));
        assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
    }

    #[test]
    fn the_lending_order_stays_bounded() {
        let (mut master, mut peer, mut pool) = tmm(64, 8);
        let mut got = [IoRec::default(); 8];
        for _ in 0..1000 {
            send_n(&mut master, &mut pool, 8);
            assert_eq!(peer.recv(&mut got).unwrap(), 8);
            // Returned one by one, so every entry goes stale.
            assert_eq!(peer.send(&got).unwrap(), 8);
            for id in recv_all(&mut master, &mut pool, 8) {
                pool.free(id);
            }
        }
        assert!(
            master.order.len() <= 2 * 8 + 64 + 8,
            "{}",
            master.order.len()
        );
        send_n(&mut master, &mut pool, 8);
        assert_eq!(peer.recv(&mut got).unwrap(), 8);
        assert!(peer.release(8).unwrap());
        assert_eq!(recv_all(&mut master, &mut pool, 8).len(), 8);
    }

    #[test]
    fn a_refused_send_changes_nothing() {
        let (mut master, mut peer, mut pool) = tmm(4, 8);
        let recs: Vec<IoRec> = (0..3)
            .map(|_| {
                let id = pool.alloc(64).unwrap();
                IoRec::single(u64::from(id), Extent::new(pool.extent(id).offset(), 64))
            })
            .collect();
        let outside = IoRec::single(recs[2].tag(), Extent::new(0, 64));
        for keep_hold in [false, true] {
            // A buffer named twice, then an extent outside its buffer, each after good
            // ones that were lent (and recorded, and let go of) before the bad one.
            for bad in [recs[0], outside] {
                let batch = [recs[0], recs[1], bad];
                let sent = match keep_hold {
                    false => master.send(&mut pool, &batch),
                    true => master.offer(&mut pool, &batch),
                };
                assert!(matches!(sent, Err(Error::BadIoRec(_))), "{sent:?}");
                let acc = pool.audit(&[master.lent()]).unwrap();
                assert_eq!((acc.local, acc.lent), (3, 0), "{acc:?}");
                assert_eq!(master.order.len(), 0);
            }
        }
        // The ring has room for 4: six are offered, four go, two stay the master's.
        let more: Vec<IoRec> = (0..3)
            .map(|_| {
                let id = pool.alloc(64).unwrap();
                IoRec::single(u64::from(id), Extent::new(pool.extent(id).offset(), 64))
            })
            .collect();
        let six: Vec<IoRec> = recs.iter().chain(&more).copied().collect();
        assert_eq!(master.send(&mut pool, &six).unwrap(), 4);
        let acc = pool.audit(&[master.lent()]).unwrap();
        assert_eq!((acc.local, acc.lent), (2, 4), "{acc:?}");
        let mut got = [IoRec::default(); 4];
        assert_eq!(peer.recv(&mut got).unwrap(), 4);
        assert!(peer.release(4).unwrap());
        assert_eq!(master.reclaim(&mut pool).unwrap(), 4);
        for rec in &six[4..] {
            pool.free(rec.tag() as BufId);
        }
        assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
    }

    #[test]
    fn the_lending_order_numbers_entries_across_wraps_growth_and_compaction() {
        let mut order = LendingOrder::with_capacity(2);
        let mut model = std::collections::VecDeque::new();
        // Every entry names a buffer lent under its number, so each one is live.
        let mut pool = Pool::slots(1024 * 64, 64);
        let mut lent = LendSet::new(pool.capacity());
        let oldest = |order: &mut LendingOrder, lent: &mut LendSet| {
            let mut taken = None;
            let n = order.take_live(lent, 1, |id, lent| taken = Some((id, lent.number(id))));
            assert_eq!(n, u64::from(taken.is_some()));
            taken
        };
        for step in 0..200u32 {
            // Pushes outrun takes, so the ring wraps and doubles along the way.
            for _ in 0..1 + step % 3 {
                let id = pool.alloc(64).unwrap();
                pool.lend(id, &mut lent).unwrap();
                let n = order.push(id);
                lent.set_number(id, n);
                model.push_back((id, n));
            }
            if step % 2 == 0 {
                assert_eq!(oldest(&mut order, &mut lent), model.pop_front());
            }
            if step % 50 == 49 {
                // Keep every third buffer; the kept ones are numbered from the front.
                let front = model.front().map(|&(_, n)| n).unwrap();
                let kept: Vec<BufId> = model
                    .iter()
                    .filter(|&&(id, _)| id % 3 == 0)
                    .map(|&(id, _)| id)
                    .collect();
                order.compact(|id, _, renumbered| {
                    let keep = id % 3 == 0;
                    if keep {
                        lent.set_number(id, renumbered);
                    }
                    keep
                });
                model = kept.iter().zip(front..).map(|(&id, n)| (id, n)).collect();
            }
            assert_eq!(order.len(), model.len());
        }
        assert!(order.ids.len() > 2, "never grew");
        // Buffers that came back one by one leave stale entries, which are passed over.
        let returned: Vec<BufId> = model.iter().skip(1).step_by(2).map(|&(id, _)| id).collect();
        for &id in &returned {
            pool.unlend(id, &mut lent);
        }
        model.retain(|(id, _)| !returned.contains(id));
        assert!(model.len() > 10);
        while let Some(entry) = model.pop_front() {
            assert_eq!(oldest(&mut order, &mut lent), Some(entry));
        }
        assert_eq!(oldest(&mut order, &mut lent), None);
        assert_eq!(order.len(), 0);
    }

    #[test]
    fn compacting_the_lending_order_keeps_the_live_lendings_in_order() {
        let (mut master, mut peer, mut pool) = tmm(64, 16);
        let mut got = [IoRec::default(); 8];
        // The peer keeps one buffer of each of the first four batches and returns all
        // the others one by one, so the live lendings sit between stale entries that
        // pile up until the order is compacted (and the live ones numbered afresh).
        let mut kept = Vec::new();
        let mut compacted = 0;
        for round in 0..100 {
            let before = master.order.len();
            let sent = send_n(&mut master, &mut pool, 8);
            compacted += usize::from(master.order.len() < before);
            assert_eq!(peer.recv(&mut got).unwrap(), 8);
            let keep = round < 4;
            if keep {
                kept.push(sent[5]);
            }
            let back: Vec<IoRec> = (0..8)
                .filter(|&i| !keep || i != 5)
                .map(|i| got[i])
                .collect();
            assert_eq!(peer.send(&back).unwrap(), back.len());
            for id in recv_all(&mut master, &mut pool, 8) {
                pool.free(id);
            }
        }
        assert!(compacted >= 5, "compacted {compacted} times");
        kept.extend(send_n(&mut master, &mut pool, 2));
        assert_eq!(peer.recv(&mut got).unwrap(), 2);
        assert!(peer.release(6).unwrap());
        assert_eq!(recv_all(&mut master, &mut pool, 8), kept);
        assert!(master.lent().is_empty());
        assert_eq!(master.link().stats().bad_iorecs, 0);
    }
}
