//! The scenario file format `cit-scenario/1` (SCENARIOS.md): parsing ([`model`]), the runner's
//! output lines and scoring ([`score`]), and a pure in-process driver ([`simulate`]) that plays a
//! scenario straight through the domain rules and the engine, with no server. The gRPC runner in
//! `cit scenario` uses the same model and scoring over the public API.

pub mod model;
pub mod score;
pub mod simulate;

pub use model::{Entry, Op, Scenario};
pub use score::{Output, Score, score};
