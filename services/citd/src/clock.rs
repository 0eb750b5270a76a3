//! The server's clock: the wall clock in production, or scenario time (`--clock scenario`), where
//! time is the latest time the inputs have given, so a replayed scenario runs in seconds and gives
//! the same result on every machine.

use std::sync::atomic::{AtomicI64, Ordering};

use cit_domain::Millis;

#[derive(Debug)]
pub enum Clock {
    Wall,
    Scenario(AtomicI64),
}

impl Clock {
    pub fn scenario() -> Self {
        Clock::Scenario(AtomicI64::new(0))
    }

    pub fn is_scenario(&self) -> bool {
        matches!(self, Clock::Scenario(_))
    }

    pub fn now(&self) -> Millis {
        match self {
            Clock::Wall => wall_now(),
            Clock::Scenario(t) => Millis(t.load(Ordering::SeqCst)),
        }
    }

    /// Scenario mode: moves time forward to `to` (never back). Wall mode: no effect.
    pub fn advance(&self, to: Millis) -> Millis {
        match self {
            Clock::Wall => wall_now(),
            Clock::Scenario(t) => Millis(t.fetch_max(to.0, Ordering::SeqCst).max(to.0)),
        }
    }
}

pub fn wall_now() -> Millis {
    Millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    )
}
