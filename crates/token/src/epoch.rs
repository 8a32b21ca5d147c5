//! Issuer key epochs: a week each, so the only time a relay learns from a token is its week.

/// One issuer key period: week `n` since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u32);

impl Epoch {
    /// Seconds in an epoch.
    pub const SECONDS: u64 = 7 * 24 * 3600;

    /// The epoch containing `unix_secs`.
    pub fn at(unix_secs: u64) -> Self {
        Self(u32::try_from(unix_secs / Self::SECONDS).unwrap_or(u32::MAX))
    }

    /// When it starts (Unix seconds).
    pub fn start(self) -> u64 {
        u64::from(self.0) * Self::SECONDS
    }

    /// Whether a token of this epoch may be redeemed at `unix_secs`: during its own epoch and
    /// the next one (so tokens fetched late in a week stay usable), never before.
    pub fn redeemable_at(self, unix_secs: u64) -> bool {
        let now = Self::at(unix_secs);
        now >= self && now.0 - self.0 <= 1
    }

    /// The following epoch.
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "epoch {} (week of day {})",
            self.0,
            self.start() / 86_400
        )
    }
}
