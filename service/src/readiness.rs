//! The parts a service's readiness ([`crate::http::Readiness`]) is made of, written once:
//! a dependency's up/down [`Flag`], and the [`StallWatch`] that tells a service doing
//! its work from one that only looks connected.
//!
//! The rule the watch applies is the pipeline's: a service that is not making progress on
//! work that waits is not ready, however healthy its connections are. It is judged from
//! the last moment work moved, so a loop that is itself stuck cannot keep reporting
//! ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Whether one dependency (a broker, a database) is usable now.
#[derive(Debug, Default)]
pub struct Flag(AtomicBool);

impl Flag {
    /// Returns the previous state, so callers log only the transitions.
    pub fn set(&self, up: bool) -> bool {
        self.0.swap(up, Ordering::Relaxed)
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How much work waits, and since when none of it has moved.
#[derive(Debug)]
pub struct StallWatch {
    after: Duration,
    state: Mutex<Watched>,
}

#[derive(Debug, Clone, Copy)]
struct Watched {
    waiting: u64,
    /// The last progress, or the last time nothing waited.
    moved: Instant,
}

/// Work that waits with none of it moving for at least the watch's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub waiting: u64,
    pub still: Duration,
}

impl StallWatch {
    /// A watch that calls `after` without progress on waiting work a stall; nothing
    /// waits yet.
    pub fn new(after: Duration, now: Instant) -> Self {
        Self {
            after,
            state: Mutex::new(Watched {
                waiting: 0,
                moved: now,
            }),
        }
    }

    /// Some work was done (a confirmation, a commit).
    pub fn progressed(&self, now: Instant) {
        self.state().moved = now;
    }

    /// How much work waits now; nothing waiting is never a stall.
    pub fn set_waiting(&self, waiting: u64, now: Instant) {
        let mut state = self.state();
        state.waiting = waiting;
        if waiting == 0 {
            state.moved = now;
        }
    }

    /// The stall at `now`, if there is one.
    pub fn stall(&self, now: Instant) -> Option<Stall> {
        let state = *self.state();
        let still = now.saturating_duration_since(state.moved);
        (state.waiting > 0 && still >= self.after).then_some(Stall {
            waiting: state.waiting,
            still,
        })
    }

    fn state(&self) -> MutexGuard<'_, Watched> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(30);

    #[test]
    fn waiting_work_that_does_not_move_for_the_limit_is_a_stall() {
        let t0 = Instant::now();
        let watch = StallWatch::new(AFTER, t0);
        watch.set_waiting(10, t0);
        assert_eq!(
            watch.stall(t0 + AFTER / 2),
            None,
            "a fresh backlog is no stall"
        );
        assert_eq!(
            watch.stall(t0 + AFTER),
            Some(Stall {
                waiting: 10,
                still: AFTER
            })
        );
        watch.progressed(t0 + AFTER);
        assert_eq!(watch.stall(t0 + AFTER * 2 - Duration::from_secs(1)), None);
        assert!(
            watch.stall(t0 + AFTER * 2).is_some(),
            "progress is not for ever"
        );
        watch.set_waiting(0, t0 + AFTER * 3);
        assert_eq!(
            watch.stall(t0 + AFTER * 5),
            None,
            "nothing waiting is no stall"
        );
    }

    #[test]
    fn a_flag_reports_its_previous_state() {
        let flag = Flag::default();
        assert!(!flag.get());
        assert!(!flag.set(true));
        assert!(flag.set(true));
        assert!(flag.get());
    }
}
