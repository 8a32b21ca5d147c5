//! CoDel (RFC 8289) over a socket's receive queue: drops a datagram now and then once
//! datagrams have waited longer than [`TARGET`] for a whole [`INTERVAL`].
//!
//! A relay that falls behind lets its kernel receive queue grow. A small queue overflows
//! under a burst and loses tens of segments of one flow at once (a GRO receive is up to
//! 64 datagrams); a large one loses nothing but adds milliseconds to every packet behind a
//! saturating flow. CoDel keeps the large queue and drops early and singly, so that TCP
//! slows down before the queue is long. The kernel stamps each receive
//! (`SO_TIMESTAMPNS`, which quinn-udp turns on), which gives the time each waited.

use std::time::{Duration, Instant};

/// Queueing delay that is acceptable for long: above it for an [`INTERVAL`], drops begin.
pub const TARGET: Duration = Duration::from_millis(2);

/// How long the delay must stay above [`TARGET`] before the first drop, and the spacing
/// of drops at first (it shrinks with the square root of their number): about the round
/// trip of the flows, so that they have time to respond to a drop before the next.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// Datagrams shorter than this are never dropped: handshakes, keepalives and acknowledgements
/// free little room, and a lost handshake costs a retry seconds later.
pub const MIN_DROP: usize = 256;

/// The controller's state: sans-IO, fed the time now and each datagram's wait.
#[derive(Debug, Clone, Copy)]
pub struct Codel {
    target: Duration,
    interval: Duration,
    /// When the delay, above the target since then, may start drops (`None`: below it).
    first_above: Option<Instant>,
    /// In a dropping state: the next drop is due at `drop_next` (`None`: never dropped).
    dropping: bool,
    drop_next: Option<Instant>,
    /// Drops in this dropping state, and in the one before.
    count: u32,
    last_count: u32,
}

impl Default for Codel {
    fn default() -> Self {
        Self::new(TARGET, INTERVAL)
    }
}

impl Codel {
    /// A controller with its own target and interval.
    pub fn new(target: Duration, interval: Duration) -> Self {
        Self {
            target,
            interval,
            first_above: None,
            dropping: false,
            drop_next: None,
            count: 0,
            last_count: 0,
        }
    }

    /// Whether to keep a datagram of `len` bytes taken off the queue at `now` after waiting
    /// `sojourn` in it.
    pub fn keep(&mut self, now: Instant, sojourn: Duration, len: usize) -> bool {
        if len < MIN_DROP {
            return true;
        }
        let ok_to_drop = self.above_for_long(now, sojourn);
        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
                return true;
            }
            let due = self.drop_next.unwrap_or(now);
            if now >= due {
                self.count = self.count.saturating_add(1);
                // From now if the drop is late: datagrams are judged a batch at a time, and
                // a reader that was away would otherwise catch up with a burst of drops.
                self.drop_next = Some(self.control_law(due.max(now)));
                return false;
            }
            return true;
        }
        if !ok_to_drop {
            return true;
        }
        self.dropping = true;
        // A queue that comes back soon after a dropping state starts where it left off,
        // not at one drop per interval again.
        let delta = self.count.saturating_sub(self.last_count);
        let recent = self
            .drop_next
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval * 16);
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.last_count = self.count;
        self.drop_next = Some(self.control_law(now));
        false
    }

    /// Whether the wait has been above the target for an interval or more.
    fn above_for_long(&mut self, now: Instant, sojourn: Duration) -> bool {
        if sojourn < self.target {
            self.first_above = None;
            return false;
        }
        match self.first_above {
            None => {
                self.first_above = Some(now + self.interval);
                false
            }
            Some(t) => now >= t,
        }
    }

    /// The next drop: an interval after `t`, divided by the square root of the drops so far.
    fn control_law(&self, t: Instant) -> Instant {
        t + self.interval.div_f64(f64::from(self.count.max(1)).sqrt())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const FULL: usize = 1400;

    /// Feeds one datagram every 10 µs for `span`, each having waited `sojourn`, from
    /// `start` (time since the test's own zero); returns the times of the drops.
    fn run(c: &mut Codel, start: Duration, span: Duration, sojourn: Duration) -> Vec<Duration> {
        let step = Duration::from_micros(10);
        let mut drops = Vec::new();
        let mut t = start;
        while t < start + span {
            if !c.keep(at(t), sojourn, FULL) {
                drops.push(t);
            }
            t += step;
        }
        drops
    }

    /// The test's clock: one fixed instant plus `t`.
    fn at(t: Duration) -> Instant {
        use std::sync::OnceLock;
        static ZERO: OnceLock<Instant> = OnceLock::new();
        *ZERO.get_or_init(Instant::now) + t
    }

    #[test]
    fn a_short_queue_is_never_dropped_from() {
        let mut c = Codel::default();
        assert!(run(&mut c, Duration::ZERO, 1000 * MS, TARGET - MS / 2).is_empty());
    }

    #[test]
    fn a_long_burst_shorter_than_the_interval_is_not_dropped_from() {
        let mut c = Codel::default();
        assert!(run(&mut c, Duration::ZERO, INTERVAL - MS, 50 * MS).is_empty());
        assert!(run(&mut c, INTERVAL, 100 * MS, Duration::ZERO).is_empty());
    }

    #[test]
    fn a_standing_queue_is_dropped_from_sparsely_and_ever_faster() {
        let mut c = Codel::default();
        let drops = run(&mut c, Duration::ZERO, 400 * MS, 5 * MS);
        assert!(
            drops
                .first()
                .is_some_and(|&t| t >= INTERVAL && t < INTERVAL + MS),
            "the first drop comes one interval after the delay went above the target: {drops:?}"
        );
        assert!(drops.len() > 10 && drops.len() < 200, "{}", drops.len());
        let gaps: Vec<Duration> = drops.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.windows(2)
                .all(|g| g[1] <= g[0] + Duration::from_micros(10)),
            "the gaps between drops shrink: {gaps:?}"
        );
        let second = gaps[0];
        assert!(
            second >= INTERVAL - MS && second <= INTERVAL + MS,
            "{second:?}"
        );
    }

    #[test]
    fn drops_stop_once_the_delay_is_back_below_the_target() {
        let mut c = Codel::default();
        assert!(!run(&mut c, Duration::ZERO, 200 * MS, 5 * MS).is_empty());
        assert!(run(&mut c, 200 * MS, 500 * MS, MS).is_empty());
    }

    #[test]
    fn a_queue_that_returns_soon_resumes_at_the_earlier_rate() {
        let mut c = Codel::default();
        let first = run(&mut c, Duration::ZERO, 300 * MS, 5 * MS);
        assert!(run(&mut c, 300 * MS, 10 * MS, Duration::ZERO).is_empty());
        let again = run(&mut c, 310 * MS, 100 * MS, 5 * MS);
        let gap = |d: &[Duration]| d[1] - d[0];
        assert!(
            gap(&again) < gap(&first) / 2,
            "first {:?}, again {:?}",
            gap(&first),
            gap(&again)
        );
    }

    #[test]
    fn small_datagrams_are_kept_even_while_dropping() {
        let mut c = Codel::default();
        let drops = run(&mut c, Duration::ZERO, 400 * MS, 5 * MS);
        assert!(!drops.is_empty());
        let t = at(*drops.last().unwrap() + c.interval);
        assert!(c.keep(t, 5 * MS, MIN_DROP - 1));
        assert!(
            !c.keep(t, 5 * MS, MIN_DROP),
            "a full one at the same time is due"
        );
    }

    #[test]
    fn a_reader_that_was_away_drops_one_of_a_batch_not_a_burst() {
        let mut c = Codel::default();
        assert!(!run(&mut c, Duration::ZERO, 200 * MS, 5 * MS).is_empty());
        // 100 datagrams judged at one instant, long after the next drop was due.
        let t = at(300 * MS);
        let dropped = (0..100).filter(|_| !c.keep(t, 5 * MS, FULL)).count();
        assert_eq!(dropped, 1);
    }
}
