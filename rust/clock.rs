//! Time sources. Every stored time is wall-clock milliseconds, but a store never reads the
//! wall clock directly: it reads a `SteadyClock`, which never goes backwards (see there).
//! Every clock also has a monotonic reading, which the rescuer uses to judge leases.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Milliseconds since the Unix epoch: how every time is stored.
pub type Millis = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in epoch milliseconds.
    fn now_ms(&self) -> Millis;

    /// Milliseconds on a clock that never steps, from an arbitrary origin: only differences
    /// between two readings of the same process mean anything.
    fn monotonic_ms(&self) -> Millis;
}

/// The wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }

    fn monotonic_ms(&self) -> Millis {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as Millis
    }
}

/// A clock that only moves when told to: for tests. `advance` moves both readings (time
/// passing); `step` moves only the wall reading (an operator or NTP setting the clock).
#[derive(Debug, Default)]
pub struct ManualClock {
    wall: AtomicI64,
    monotonic: AtomicI64,
}

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: Millis) -> Self {
        Self {
            wall: AtomicI64::new(start_ms),
            monotonic: AtomicI64::new(0),
        }
    }

    /// Time passes: `ms` on both readings.
    pub fn advance(&self, ms: Millis) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
        self.monotonic.fetch_add(ms, Ordering::SeqCst);
    }

    /// The wall reading jumps by `ms` (negative: backwards); no time passes.
    pub fn step(&self, ms: Millis) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.wall.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> Millis {
        self.monotonic.load(Ordering::SeqCst)
    }
}

/// While a `SteadyClock` runs behind its floor, it advances at this many thousandths of
/// real time, so the wall clock catches up after about 20 times the size of a backward step
/// (3 minutes for 10 s, 20 hours for 1 h) and delays meanwhile stretch by at most 5%.
const SLEW_PER_MILLE: i64 = 950;

/// The time a store reads: the wall clock, except that it never goes below the latest time
/// this process read or the file recorded (`raise_floor`). After a backward step it keeps
/// advancing (slightly slower than real time) from where it was, so tasks that were due stay
/// due, backoffs and throttles keep moving, and the wall clock catches up; a forward step is
/// taken at once (a lease is never judged by comparing this time with another process's,
/// see `store::lease_watch`).
#[derive(Debug)]
pub struct SteadyClock {
    wall: std::sync::Arc<dyn Clock>,
    state: Mutex<Steady>,
}

#[derive(Debug, Clone, Copy)]
struct Steady {
    /// A time this clock stood at, and the monotonic reading then: the floor advances from it.
    anchor: Millis,
    anchor_monotonic: Millis,
    /// The latest time handed out.
    last: Millis,
}

impl SteadyClock {
    pub fn new(wall: std::sync::Arc<dyn Clock>) -> Self {
        let now = wall.now_ms();
        let monotonic = wall.monotonic_ms();
        Self {
            wall,
            state: Mutex::new(Steady {
                anchor: now,
                anchor_monotonic: monotonic,
                last: now,
            }),
        }
    }

    /// Never reads below `ms` from now on (a time recorded in the file by any process).
    pub fn raise_floor(&self, ms: Millis) {
        let monotonic = self.wall.monotonic_ms();
        let mut s = self.state.lock();
        let floor = s.floor(monotonic);
        if ms > floor {
            s.anchor = ms;
            s.anchor_monotonic = monotonic;
            s.last = s.last.max(ms);
        }
    }

    /// How far this clock runs ahead of the wall clock (0 unless the wall clock stepped back).
    pub fn lead_ms(&self) -> Millis {
        let now = self.now_ms();
        (now - self.wall.now_ms()).max(0)
    }
}

impl Steady {
    fn floor(&self, monotonic: Millis) -> Millis {
        let elapsed = (monotonic - self.anchor_monotonic).max(0);
        self.anchor + elapsed * SLEW_PER_MILLE / 1000
    }
}

impl Clock for SteadyClock {
    fn now_ms(&self) -> Millis {
        let wall = self.wall.now_ms();
        let monotonic = self.wall.monotonic_ms();
        let mut s = self.state.lock();
        let floor = s.floor(monotonic);
        let now = if wall >= floor {
            // The wall clock leads (the usual case): the floor follows it.
            s.anchor = wall;
            s.anchor_monotonic = monotonic;
            wall
        } else {
            floor
        };
        let now = now.max(s.last);
        s.last = now;
        now
    }

    fn monotonic_ms(&self) -> Millis {
        self.wall.monotonic_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn follows_the_wall_clock_while_it_moves_forward() {
        let wall = Arc::new(ManualClock::new(1_000_000));
        let steady = SteadyClock::new(wall.clone());
        assert_eq!(steady.now_ms(), 1_000_000);
        wall.advance(250);
        assert_eq!(steady.now_ms(), 1_000_250);
        wall.step(60_000); // forward: taken at once
        assert_eq!(steady.now_ms(), 1_060_250);
        assert_eq!(steady.lead_ms(), 0);
    }

    #[test]
    fn a_backward_step_neither_goes_back_nor_stops_time() {
        let wall = Arc::new(ManualClock::new(10_000_000));
        let steady = SteadyClock::new(wall.clone());
        assert_eq!(steady.now_ms(), 10_000_000);
        wall.step(-3_600_000);
        assert_eq!(
            steady.now_ms(),
            10_000_000,
            "never below what it read before"
        );
        // Time goes on, slewed: 10 s of real time move it 9.5 s, even when read every ms.
        for _ in 0..10_000 {
            wall.advance(1);
            steady.now_ms();
        }
        assert_eq!(steady.now_ms(), 10_009_500);
        // The wall clock catches up after about 20 times the step, then leads again.
        wall.advance(20 * 3_600_000);
        assert_eq!(steady.now_ms(), wall.now_ms());
        assert_eq!(steady.lead_ms(), 0);
    }

    #[test]
    fn a_floor_from_the_file_is_never_undercut() {
        let wall = Arc::new(ManualClock::new(5_000));
        let steady = SteadyClock::new(wall.clone());
        steady.raise_floor(9_000); // another process wrote 9,000 before our clock stepped back
        assert_eq!(steady.now_ms(), 9_000);
        wall.advance(1_000);
        assert_eq!(steady.now_ms(), 9_950);
        steady.raise_floor(100); // lower floors change nothing
        assert_eq!(steady.now_ms(), 9_950);
    }
}
