//! The caller's clock, fed to gotatun's timers.
//!
//! gotatun reads time through `mock_instant`'s thread-local clock (its `mock_instant`
//! feature). Before every call into a `Tunn` the session sets that clock to the caller's
//! `now`, so timers (rekey, keepalive, handshake retry) follow the caller: real time in the
//! relays and the client, simulated time in tests.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mock_instant::thread_local::MockClock;

/// The instant that maps to zero on gotatun's clock. Set by the first session created.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// A per-session view of time that never runs backwards.
///
/// Callers on several threads may pass instants taken a moment apart; gotatun subtracts
/// instants and must never see time go back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionClock {
    last: Duration,
}

impl SessionClock {
    pub(crate) fn new(now: Instant) -> Self {
        let mut clock = Self {
            last: Duration::ZERO,
        };
        clock.enter(now);
        clock
    }

    /// Sets gotatun's thread-local clock to `now` (or to the latest instant already seen).
    pub(crate) fn enter(&mut self, now: Instant) {
        let epoch = *EPOCH.get_or_init(|| now);
        self.last = self.last.max(now.saturating_duration_since(epoch));
        MockClock::set_time(self.last);
    }
}
