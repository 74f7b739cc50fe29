//! A wake-up at a precise instant for a mio poll loop: a Linux `timerfd` (nanosecond
//! resolution, high-resolution timer) registered with the poll. `Poll::poll`'s own timeout
//! is whole milliseconds (epoll, rounded up), so a paced SEND woken by it left up to a
//! millisecond late and that lateness showed up as latency (issue 14 item 4).

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A one-shot timer; arm it for the next due time after each wake-up.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    /// A timer registered with `registry` under `token`. Also lowers this thread's timer
    /// slack to 1 µs (the default 50 µs would delay every wake-up by that much).
    pub fn new(registry: &Registry, token: Token) -> io::Result<Timer> {
        // SAFETY: plain syscalls on values we own; the fd is checked before use.
        let fd = unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Timer { fd })
    }

    /// Fires once at `at` (at once when `at` has passed), replacing any earlier arming.
    pub fn arm(&self, at: Instant) -> io::Result<()> {
        let left = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1)); // zero would disarm it
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` lives across the call; the old value is not asked for.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Clears a fired timer, so the poll stops reporting it.
    pub fn clear(&self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a buffer of 8; EAGAIN when not fired.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    #[test]
    fn wakes_the_poll_close_to_its_time() {
        let mut poll = Poll::new().unwrap();
        let timer = Timer::new(poll.registry(), Token(7)).unwrap();
        let mut events = Events::with_capacity(4);
        let mut late = Vec::new();
        for _ in 0..20 {
            let at = Instant::now() + Duration::from_micros(300);
            timer.arm(at).unwrap();
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .unwrap();
            let woke = Instant::now();
            assert!(events.iter().any(|e| e.token() == Token(7)));
            assert!(woke >= at, "woke early");
            late.push(woke - at);
            timer.clear();
        }
        late.sort();
        // The median, on a shared machine: far below epoll's millisecond.
        assert!(late[10] < Duration::from_micros(500), "{late:?}");
    }
}
