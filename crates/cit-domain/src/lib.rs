//! The cash-in-transit domain, pure: versioned past-tense events, commands, and the rules R1–R9
//! (DOMAIN.md) as `World::handle(command, now) -> Outcome` and `World::apply(event)`.
//!
//! Nothing here does I/O or reads a clock: time comes in as [`Millis`] and decisions go out as
//! events, so the server, the tests and an auditor's replay all get the same answers.
//!
//! - [`time`]: milliseconds since the Unix epoch, the one time type of the core.
//! - [`model`]: validated value types (positions, roles, planned stops, detection parameters).
//! - [`event`]: the events of the log and the stream each belongs to.
//! - [`command`]: what callers ask for.
//! - [`world`]: the aggregate state and the rules.

pub mod command;
pub mod event;
pub mod model;
pub mod time;
pub mod world;

pub use command::{Command, RunPlan};
pub use event::{Event, StreamName};
pub use model::*;
pub use time::Millis;
pub use world::{InputError, Outcome, Refusal, Rule, World};
