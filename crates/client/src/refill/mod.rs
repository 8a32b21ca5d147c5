//! Refilling the token stock by itself: the policy that decides when (sans-IO, here) and
//! the I/O that buys ([`run`], run inside the client's supervisor task).
//!
//! Tickets are bought ahead of time, in batches, after a random delay, so the issuer (which
//! sees when an account buys, and from where) cannot tie a purchase to a connection: the
//! refill starts when the stock falls below half of what the user keeps, not when a
//! connection needs a ticket, and waits a random time in a configured range first.

pub mod run;

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use account::AccountNumber;
use rand::Rng;

/// The first wait after a failed refill; it doubles with each failure in a row.
pub const RETRY_FIRST: Duration = Duration::from_secs(60);
/// The longest wait between failed refills.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);

/// What the client needs to refill its stock.
#[derive(Debug, Clone)]
pub struct RefillSettings {
    /// The account that pays.
    pub account: AccountNumber,
    /// Its password (OPAQUE: it never leaves this process).
    pub password: Password,
    /// Connections to keep tickets for; a refill starts below half of it.
    pub keep: usize,
    /// The random wait before a refill starts, drawn uniformly from this range.
    pub delay: RangeInclusive<Duration>,
}

/// A password held in memory: never shown by `Debug`, overwritten on drop (best effort:
/// copies made by the allocator are out of reach).
#[derive(Clone)]
pub struct Password(Vec<u8>);

impl Password {
    /// Holds `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The password, for the login.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// When to refill: at most one refill at a time, one scheduled (at a random delay) once the
/// stock is below the low-water mark, retries after failures with a doubling wait.
///
/// It reads no clock and does no I/O: the caller passes `now` and the stock level, starts a
/// refill when [`RefillPolicy::poll_start`] says so, and reports how it ended.
#[derive(Debug, Clone)]
pub struct RefillPolicy {
    keep: usize,
    low_water: usize,
    delay: RangeInclusive<Duration>,
    state: State,
    /// Failed refills in a row.
    failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At or above the mark (or not yet told the level): nothing to do.
    Idle,
    /// Below the mark: a refill starts at this time.
    Scheduled(Instant),
    /// A refill is running.
    InFlight,
    /// The last refill failed; the next starts at this time, whatever the level.
    Retry(Instant),
    /// The last refill failed in a way that retrying cannot fix (a wrong password).
    Stopped,
}

/// A refill to run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Buy until the stock holds this many connections.
    pub up_to: usize,
}

/// How a refill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The stock holds what was wanted (or the refill found it full already).
    Done,
    /// It failed (tickets bought before the failure are kept); `retry_helps` is false when
    /// only the user can fix the cause.
    Failed {
        /// Whether to try again later.
        retry_helps: bool,
    },
}

impl RefillPolicy {
    /// Keeps tickets for `keep` connections, waiting a uniformly random time in `delay`
    /// before each refill (a reversed range counts as its start alone).
    pub fn new(keep: usize, delay: RangeInclusive<Duration>) -> Self {
        let (low, high) = (*delay.start(), *delay.end());
        Self {
            keep,
            // Half of `keep`, rounded up, so that keeping one connection refills at zero.
            low_water: keep.div_ceil(2),
            delay: low..=high.max(low),
            state: State::Idle,
            failures: 0,
        }
    }

    /// The stock level (in connections) below which a refill is scheduled.
    pub fn low_water(&self) -> usize {
        self.low_water
    }

    /// The stock now holds `connections`: below the mark, schedules a refill at a random
    /// delay unless one is scheduled, running or waiting to retry; at or above it, drops a
    /// scheduled refill that has not started.
    pub fn stock_level<R: Rng + ?Sized>(&mut self, now: Instant, connections: usize, rng: &mut R) {
        let below = connections < self.low_water;
        match self.state {
            State::Idle if below => {
                let wait = rng.random_range(self.delay.clone());
                self.state = State::Scheduled(now + wait);
            }
            State::Scheduled(_) if !below => self.state = State::Idle,
            _ => {}
        }
    }

    /// When [`RefillPolicy::poll_start`] will next start a refill, if one is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Scheduled(at) | State::Retry(at) => Some(at),
            State::Idle | State::InFlight | State::Stopped => None,
        }
    }

    /// Starts the due refill, if any; none starts while one runs.
    pub fn poll_start(&mut self, now: Instant) -> Option<Start> {
        match self.state {
            State::Scheduled(at) | State::Retry(at) if at <= now => {
                self.state = State::InFlight;
                Some(Start { up_to: self.keep })
            }
            _ => None,
        }
    }

    /// The running refill ended with `outcome`, leaving `connections` in the stock.
    pub fn finished<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        outcome: Outcome,
        connections: usize,
        rng: &mut R,
    ) {
        if self.state != State::InFlight {
            return;
        }
        match outcome {
            Outcome::Done => {
                self.failures = 0;
                self.state = State::Idle;
                self.stock_level(now, connections, rng);
            }
            Outcome::Failed { retry_helps: true } => {
                self.failures = self.failures.saturating_add(1);
                self.state = State::Retry(now + self.retry_wait());
            }
            Outcome::Failed { retry_helps: false } => self.state = State::Stopped,
        }
    }

    /// Whether a refill is running.
    pub fn in_flight(&self) -> bool {
        self.state == State::InFlight
    }

    /// Whether refilling stopped for good (until the client restarts).
    pub fn stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// The wait after the current run of failures: [`RETRY_FIRST`], doubled per failure
    /// after the first, at most [`RETRY_MAX`].
    fn retry_wait(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
    }
}

/// What the refill last did, for status output. Kept apart from [`crate::run::Status`],
/// which is the connection's state: a refill report must not hide that the client is
/// connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefillStatus {
    /// No refill has finished yet.
    Idle,
    /// A refill bought tickets.
    Bought {
        /// Connections bought (two tokens each).
        connections: usize,
        /// The account's credit afterwards.
        credit_left: u64,
    },
    /// A refill failed. Tickets bought before the failure are in the stock.
    Failed {
        /// Connections bought before it failed.
        bought: usize,
        /// Why, and what to do.
        reason: String,
    },
}

impl std::fmt::Display for RefillStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefillStatus::Idle => write!(f, "tokens: no refill yet"),
            RefillStatus::Bought {
                connections,
                credit_left,
            } => write!(
                f,
                "tokens: bought {connections} connections ({} tokens), {credit_left} credit units left",
                2 * connections
            ),
            RefillStatus::Failed { bought: 0, reason } => {
                write!(f, "tokens: refill failed: {reason}")
            }
            RefillStatus::Failed { bought, reason } => write!(
                f,
                "tokens: bought {bought} connections ({} tokens), then the refill failed: {reason}",
                2 * bought
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn schedules_once_below_the_mark_and_not_above() {
        let t0 = Instant::now();
        let mut p = RefillPolicy::new(8, MINUTE..=20 * MINUTE);
        let mut rng = rng();
        assert_eq!(p.low_water(), 4);
        for level in [8, 5, 4] {
            p.stock_level(t0, level, &mut rng);
            assert_eq!(p.poll_timeout(), None, "scheduled at {level} connections");
        }
        p.stock_level(t0, 3, &mut rng);
        let at = p.poll_timeout().unwrap();
        // Lower levels and later reports keep the first schedule.
        p.stock_level(t0 + MINUTE, 2, &mut rng);
        p.stock_level(t0 + 2 * MINUTE, 0, &mut rng);
        assert_eq!(p.poll_timeout(), Some(at));
        assert_eq!(p.poll_start(at - Duration::from_millis(1)), None, "early");
        assert_eq!(p.poll_start(at), Some(Start { up_to: 8 }));
        // One at a time: nothing else starts or is scheduled while it runs.
        assert!(p.in_flight());
        p.stock_level(at, 0, &mut rng);
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_start(at + 30 * MINUTE), None);
        // Done and full: idle until the stock is below the mark again.
        p.finished(at, Outcome::Done, 8, &mut rng);
        assert!(!p.in_flight());
        assert_eq!(p.poll_timeout(), None);
        p.stock_level(at, 3, &mut rng);
        assert!(p.poll_timeout().is_some());
    }

    #[test]
    fn a_refilled_stock_cancels_a_scheduled_refill() {
        let t0 = Instant::now();
        let mut p = RefillPolicy::new(8, MINUTE..=MINUTE);
        let mut rng = rng();
        p.stock_level(t0, 1, &mut rng);
        assert!(p.poll_timeout().is_some());
        // `openrelay account tokens` filled it meanwhile.
        p.stock_level(t0, 9, &mut rng);
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_start(t0 + 2 * MINUTE), None);
    }

    #[test]
    fn done_below_the_mark_schedules_again() {
        let t0 = Instant::now();
        let mut p = RefillPolicy::new(8, Duration::ZERO..=Duration::ZERO);
        let mut rng = rng();
        p.stock_level(t0, 0, &mut rng);
        assert!(p.poll_start(t0).is_some());
        // Connections were spent while it ran.
        p.finished(t0, Outcome::Done, 2, &mut rng);
        assert_eq!(p.poll_timeout(), Some(t0));
    }

    #[test]
    fn failures_back_off_doubling_and_never_in_a_tight_loop() {
        let t0 = Instant::now();
        let mut p = RefillPolicy::new(8, Duration::ZERO..=Duration::ZERO);
        let mut rng = rng();
        p.stock_level(t0, 0, &mut rng);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            assert!(p.poll_start(now).is_some());
            p.finished(now, Outcome::Failed { retry_helps: true }, 0, &mut rng);
            // Stock reports while waiting do not start it earlier.
            p.stock_level(now, 0, &mut rng);
            let next = p.poll_timeout().unwrap();
            assert_eq!(p.poll_start(next - Duration::from_millis(1)), None);
            waits.push(next - now);
            now = next;
        }
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 60, 60, 60].map(|m| m * MINUTE),
            "the wait doubles from RETRY_FIRST up to RETRY_MAX"
        );
        // A success resets it.
        assert!(p.poll_start(now).is_some());
        p.finished(now, Outcome::Done, 0, &mut rng);
        assert!(p.poll_start(now).is_some());
        p.finished(now, Outcome::Failed { retry_helps: true }, 0, &mut rng);
        assert_eq!(p.poll_timeout(), Some(now + RETRY_FIRST));
    }

    #[test]
    fn a_failure_that_retrying_cannot_fix_stops_refilling() {
        let t0 = Instant::now();
        let mut p = RefillPolicy::new(8, Duration::ZERO..=Duration::ZERO);
        let mut rng = rng();
        p.stock_level(t0, 0, &mut rng);
        assert!(p.poll_start(t0).is_some());
        p.finished(t0, Outcome::Failed { retry_helps: false }, 0, &mut rng);
        assert!(p.stopped());
        p.stock_level(t0, 0, &mut rng);
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_start(t0 + RETRY_MAX * 10), None);
    }

    #[test]
    fn the_delay_is_drawn_from_the_whole_range() {
        let t0 = Instant::now();
        let range = MINUTE..=20 * MINUTE;
        let mut rng = rng();
        let mut waits = Vec::new();
        for _ in 0..200 {
            let mut p = RefillPolicy::new(8, range.clone());
            p.stock_level(t0, 0, &mut rng);
            let wait = p.poll_timeout().unwrap() - t0;
            assert!(range.contains(&wait), "{wait:?} outside {range:?}");
            waits.push(wait);
        }
        // Uniform, not a constant: both ends of the range are reached.
        assert!(waits.iter().any(|w| *w < 5 * MINUTE));
        assert!(waits.iter().any(|w| *w > 16 * MINUTE));
    }

    #[test]
    fn keeping_one_connection_refills_at_zero() {
        let p = RefillPolicy::new(1, Duration::ZERO..=Duration::ZERO);
        assert_eq!(p.low_water(), 1);
        let p = RefillPolicy::new(7, Duration::ZERO..=Duration::ZERO);
        assert_eq!(p.low_water(), 4);
    }

    #[test]
    fn status_lines_name_what_happened() {
        let bought = RefillStatus::Bought {
            connections: 7,
            credit_left: 86,
        };
        assert_eq!(
            bought.to_string(),
            "tokens: bought 7 connections (14 tokens), 86 credit units left"
        );
        let failed = RefillStatus::Failed {
            bought: 0,
            reason: "not enough credit (0 units); add credit, then it retries".into(),
        };
        assert_eq!(
            failed.to_string(),
            "tokens: refill failed: not enough credit (0 units); add credit, then it retries"
        );
    }

    #[test]
    fn the_password_does_not_show_in_debug_output() {
        let s = RefillSettings {
            account: AccountNumber::from_bytes([7; 16]),
            password: Password::new(b"hunter2-secret".to_vec()),
            keep: 8,
            delay: Duration::ZERO..=Duration::ZERO,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
