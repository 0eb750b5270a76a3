//! Prometheus metrics: ingest rate, append and fsync latency, group-commit sizes, engine lag,
//! commands and refusals, anomalies. Exposed in text format on the metrics port (`/metrics`).

use std::time::Duration;

use cit_store::embedded::CommitStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A group commit that held the store's writer this long is logged, at most once a second (an
/// overloaded store would otherwise flood the log with them).
const SLOW_GROUP: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: String,
    /// "ok" or the refusing rule ("R3").
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `Service/Method`, e.g. `Dispatch/GetRun`.
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// "unauthenticated", "permission_denied" or "invalid_argument".
    pub code: String,
    /// The short cause ("bad_token", "role", "no_credential", ...).
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    fixes_accepted: Counter,
    pub fixes_rejected: Counter,
    pub fixes_duplicate: Counter,
    commands: Family<CommandLabels, Counter>,
    append_seconds: Histogram,
    fsync_seconds: Histogram,
    group_seconds: Histogram,
    group_events: Histogram,
    index_entries_written: Counter,
    pub engine_lag_events: Gauge,
    anomalies: Family<KindLabels, Counter>,
    rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub anomalies_reannounced: Counter,
    pub watch_fell_behind: Counter,
    pub watchers: Gauge,
    pub engine_resumed_from: Gauge,
    pub commands_resumed_from: Gauge,
    pub denied: Family<DenialLabels, Counter>,
    pub tls_handshakes_failed: Counter,
    /// 1 when citd serves without TLS (`--insecure`).
    pub insecure: Gauge,
    /// When a slow group commit was last logged, and how many were not logged since.
    slow_groups: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cit");
        let m = Metrics {
            fixes_accepted: Counter::default(),
            fixes_rejected: Counter::default(),
            fixes_duplicate: Counter::default(),
            commands: Family::default(),
            // 50 us .. ~3 s
            append_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            group_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            index_entries_written: Counter::default(),
            group_events: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            engine_lag_events: Gauge::default(),
            anomalies: Family::default(),
            // 20 us .. ~10 s
            rpc_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00002, 2.0, 20))
            }),
            anomalies_reannounced: Counter::default(),
            watch_fell_behind: Counter::default(),
            watchers: Gauge::default(),
            engine_resumed_from: Gauge::default(),
            commands_resumed_from: Gauge::default(),
            denied: Family::default(),
            tls_handshakes_failed: Counter::default(),
            insecure: Gauge::default(),
            slow_groups: std::sync::Mutex::new((None, 0)),
            registry: Registry::default(),
        };
        registry.register(
            "fixes_accepted",
            "Fixes durably recorded",
            m.fixes_accepted.clone(),
        );
        registry.register(
            "fixes_rejected",
            "Fixes refused by validation",
            m.fixes_rejected.clone(),
        );
        registry.register(
            "fixes_duplicate",
            "Fixes absorbed as duplicates",
            m.fixes_duplicate.clone(),
        );
        registry.register("commands", "Commands by outcome", m.commands.clone());
        registry.register(
            "append_seconds",
            "Latency of a batch of fix appends until durable, as ingest sees it",
            m.append_seconds.clone(),
        );
        registry.register(
            "fsync_seconds",
            "Latency of one group commit (fsync) of the embedded store",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "group_commit_seconds",
            "Time one group commit held the store's writer (staging, index write, fsync): \
             every append queued behind it waits this long",
            m.group_seconds.clone(),
        );
        registry.register(
            "stream_index_entries_written",
            "Stream index entries written from memory to disk in bulk",
            m.index_entries_written.clone(),
        );
        registry.register(
            "group_commit_events",
            "Events per group commit",
            m.group_events.clone(),
        );
        registry.register(
            "engine_lag_events",
            "Log positions not yet processed by the detection engine (subscription lag)",
            m.engine_lag_events.clone(),
        );
        registry.register("anomalies", "Anomalies raised by kind", m.anomalies.clone());
        registry.register(
            "rpc_seconds",
            "Server-side latency of each RPC, from request to response (a stream: to its start)",
            m.rpc_seconds.clone(),
        );
        registry.register(
            "anomalies_reannounced",
            "Critical anomalies announced again while unacknowledged",
            m.anomalies_reannounced.clone(),
        );
        registry.register(
            "watch_fell_behind",
            "Times a WatchFleet watcher fell behind and was resnapped",
            m.watch_fell_behind.clone(),
        );
        registry.register("watchers", "Open WatchFleet streams", m.watchers.clone());
        registry.register(
            "engine_resumed_from",
            "Log position the engine resumed from at start (0: replayed the whole log)",
            m.engine_resumed_from.clone(),
        );
        registry.register(
            "commands_resumed_from",
            "Log position the command side's state was rebuilt from at start (0: the whole log)",
            m.commands_resumed_from.clone(),
        );
        registry.register(
            "denied",
            "Calls refused by authentication or the access policy, by code and cause",
            m.denied.clone(),
        );
        registry.register(
            "tls_handshakes_failed",
            "TLS handshakes refused or timed out (a certificate of another CA among them)",
            m.tls_handshakes_failed.clone(),
        );
        registry.register(
            "insecure",
            "1 when citd serves without TLS (--insecure, loopback development only)",
            m.insecure.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn fixes_accepted(&self, n: u64) {
        self.fixes_accepted.inc_by(n);
    }

    pub fn observe_append(&self, d: Duration) {
        self.append_seconds.observe(d.as_secs_f64());
    }

    /// One group commit of the embedded store; one that held the writer long is also logged,
    /// since every append queued behind it (and so every ack) waited for it.
    pub fn observe_commit(&self, s: &CommitStats) {
        self.fsync_seconds.observe(s.commit.as_secs_f64());
        self.group_seconds.observe(s.total.as_secs_f64());
        self.group_events.observe(s.events as f64);
        self.index_entries_written.inc_by(s.indexed as u64);
        if s.total < SLOW_GROUP {
            return;
        }
        let mut slow = self.slow_groups.lock().unwrap_or_else(|p| p.into_inner());
        let (last, unlogged) = &mut *slow;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            *unlogged += 1;
            return;
        }
        *last = Some(std::time::Instant::now());
        let more_since_last = std::mem::take(unlogged);
        drop(slow);
        tracing::warn!(
            total_ms = s.total.as_millis() as u64,
            fsync_ms = s.commit.as_millis() as u64,
            appends = s.appends,
            events = s.events,
            index_entries = s.indexed,
            more_since_last,
            "slow group commit"
        );
    }

    pub fn command(&self, command: &str, refused_by: Option<&str>) {
        self.commands
            .get_or_create(&CommandLabels {
                command: command.to_string(),
                outcome: refused_by.unwrap_or("ok").to_string(),
            })
            .inc();
    }

    pub fn anomaly(&self, kind: &str) {
        self.anomalies
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// The latency histogram of one RPC (`Service/Method`), made when the server starts.
    pub fn rpc_histogram(&self, method: &str) -> Histogram {
        self.rpc_seconds
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .clone()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
