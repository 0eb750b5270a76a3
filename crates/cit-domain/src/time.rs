//! Time in the pure core: milliseconds since the Unix epoch (UTC), always passed in explicitly.

use serde::{Deserialize, Serialize};

/// A point in time, milliseconds since 1970-01-01T00:00:00Z.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub const fn from_secs(s: i64) -> Self {
        Millis(s * 1000)
    }
    pub fn plus_secs(self, s: f64) -> Self {
        Millis(self.0 + (s * 1000.0).round() as i64)
    }
    /// Seconds from `earlier` to `self` (negative when `earlier` is later).
    pub fn secs_since(self, earlier: Millis) -> f64 {
        (self.0 - earlier.0) as f64 / 1000.0
    }
}
