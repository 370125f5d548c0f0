//! Event channels: a 64-bit count that only grows (the ring heads and tails) plus a
//! wake-up that is sent only when the peer declared it sleeps.
//!
//! The count lives in the shared control area (see [`crate::ring`]); this module holds the
//! wake-up half, a *doorbell* (an eventfd), and the suppression rule. Each side of a channel
//! owns one doorbell that it sleeps on and rings the peer's. Before sleeping, a waiter
//! publishes an *event index* in memory only it writes: "wake me when your count passes
//! E". After publishing a new count, the other side rings only if the step from `old` to
//! `new` crossed E — the `vring_need_event` rule of virtio and the `*_event` fields of Xen's
//! rings. A peer that busy-polls never publishes a fresh index, so it costs its partner no
//! system call at all.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use crate::Error;

/// An event index meaning "I am not waiting".
pub const NOT_WAITING: u64 = u64::MAX;

/// Whether moving a count from `old` to `new` crossed the waiter's event index `event`,
/// i.e. `old <= event < new` in wrapping arithmetic.
#[inline]
pub fn need_event(event: u64, new: u64, old: u64) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One side's wake-up: an eventfd it sleeps on and the peer rings.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new doorbell (non-blocking, close-on-exec eventfd).
    pub fn new() -> Result<Doorbell, Error> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::sys("eventfd", e))?;
        Ok(Doorbell { fd })
    }

    /// Adopts a doorbell received from the peer, checking that it really is an eventfd
    /// and making it non-blocking, so ringing it can never block this side.
    pub fn from_peer(fd: OwnedFd) -> Result<Doorbell, Error> {
        let link = rustix::fs::readlinkat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)).as_str(),
            Vec::new(),
        )
        .map_err(|e| Error::sys("readlink /proc/self/fd", e))?;
        if link.as_bytes() != b"anon_inode:[eventfd]" {
            return Err(Error::Handshake(format!(
                "peer sent {:?} where an eventfd was expected",
                link
            )));
        }
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| Error::sys("F_GETFL", e))?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| Error::sys("F_SETFL", e))?;
        Ok(Doorbell { fd })
    }

    /// A duplicate of the file descriptor, to send to the peer.
    pub fn try_clone_fd(&self) -> Result<OwnedFd, Error> {
        self.fd.try_clone().map_err(|e| Error::Sys {
            call: "dup",
            source: e,
        })
    }

    /// Wakes the side sleeping on this doorbell.
    pub fn ring(&self) {
        // EAGAIN means the counter is saturated: the sleeper is already woken.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Clears pending wake-ups without sleeping.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }

    /// Sleeps until the doorbell rings or `timeout` passes (`None`: forever); returns
    /// whether it rang. Clears the wake-up.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        loop {
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    self.drain();
                    return Ok(true);
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::sys("poll", e)),
            }
        }
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_fires_exactly_when_crossed() {
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 0));
        assert!(!need_event(5, 5, 0));
        assert!(!need_event(5, 10, 6));
        assert!(!need_event(NOT_WAITING, 1, 0));
        // Wrap-around of the free-running counts.
        assert!(need_event(u64::MAX - 1, 2, u64::MAX - 3));
        assert!(!need_event(u64::MAX - 5, 2, u64::MAX - 3));
    }

    #[test]
    fn doorbell_rings_and_times_out() {
        let bell = Doorbell::new().unwrap();
        assert!(!bell.wait(Some(Duration::from_millis(1))).unwrap());
        bell.ring();
        bell.ring();
        assert!(bell.wait(Some(Duration::from_millis(1))).unwrap());
        assert!(!bell.wait(Some(Duration::from_millis(1))).unwrap());
    }

    #[test]
    fn peer_doorbell_must_be_an_eventfd() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(matches!(Doorbell::from_peer(r), Err(Error::Handshake(_))));
        let bell = Doorbell::new().unwrap();
        let peer = Doorbell::from_peer(bell.try_clone_fd().unwrap()).unwrap();
        peer.ring();
        assert!(bell.wait(Some(Duration::ZERO)).unwrap());
    }
}
