//! citd: the cit server, and the library behind the `cit` command-line client.
//!
//! Code map:
//! - [`config`]: layered configuration (defaults, file, environment, flags).
//! - [`server`]: assembles store, core, engine worker and every gRPC service; `start`/`serve`.
//! - [`app`]: the application core around the pure domain (commands, ingest, rebuild on start).
//! - [`engine_worker`]: the detection engine fed by a catch-up subscription to the log.
//! - [`anomalies`]: the anomaly read model with read-your-writes waits.
//! - [`fleet`]: the dispatch read model (where every run is, crew, weapons, standing).
//! - [`audit`]: a run rebuilt from the log: custody, hash chains, re-detection, state at a
//!   moment, exports and picture.
//! - [`snapshot`]: the engine worker's snapshot (engine + read models at a log position).
//! - [`watch`]: live fleet changes for WatchFleet (a bounded broadcast ring).
//! - [`grpc`]: one module per public service; validation and status mapping at the edge.
//! - [`error`]: application errors to gRPC statuses, in one table.
//! - [`clock`]: wall clock or scenario time.
//! - [`metrics`]: Prometheus metrics.
//! - [`audit_client`]: `cit audit ...`, the audit API from the command line.
//! - [`runner`]: the scenario runner, a client of the public API only.
//! - [`demo`]: the quick-start demo, also a client of the public API.

pub mod anomalies;
pub mod app;
pub mod audit;
pub mod audit_client;
pub mod auth;
pub mod basemap;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod engine_worker;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod heads;
pub mod metrics;
pub mod runner;
pub mod server;
pub mod snapshot;
pub mod watch;

/// Installs the `tracing` subscriber for a binary.
pub fn init_tracing(level: &str, format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Text => builder.try_init(),
        config::LogFormat::Json => builder.json().try_init(),
    };
}
