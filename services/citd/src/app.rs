//! The application core around the pure domain: commands are decided by `World` under one
//! writer lock and appended durably before they are applied and acknowledged; fixes take a
//! separate, lock-light path (validation, per-vehicle duplicate absorption, batched appends to
//! the run's stream). State is rebuilt from the log on start.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use cit_domain::event::{Event, streams};
use cit_domain::{Command, Fix, Millis, Outcome, World};
use cit_store::{Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::AppError;
use crate::metrics::Metrics;

/// Namespace of deterministic event ids (fix batches, anomalies).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6369_745f_6576_656e_7473_5f76_315f_6964);

/// How far ahead of the server clock a device time may be (wall clock only).
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// What the ingest path needs to know about vehicles, kept apart from the command lock.
#[derive(Debug, Default)]
pub struct Directory {
    pub vehicles: HashSet<String>,
    pub active_run: HashMap<String, String>,
}

/// Per-vehicle ingest state: the highest durable seq. Its lock is held across the append, so
/// two connections of one vehicle cannot interleave.
#[derive(Debug, Default)]
pub struct VehicleIngest {
    pub durable_seq: u64,
}

struct CommandState {
    world: World,
    /// Last version of every non-run stream, for optimistic concurrency (Exact appends).
    versions: HashMap<String, u64>,
}

/// A fix that passed validation, with where it goes.
#[derive(Debug, Clone)]
pub struct ValidFix {
    pub vehicle_id: String,
    pub fix: Fix,
}

/// Result of one ingest batch for one vehicle.
#[derive(Debug, Clone, Default)]
pub struct VehicleBatchResult {
    pub durable_seq: u64,
    pub accepted: u32,
    pub duplicates: u32,
    pub position: u64,
}

pub struct App {
    pub store: Arc<dyn EventStore>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    commands: Mutex<CommandState>,
    pub directory: RwLock<Directory>,
    ingest: std::sync::Mutex<HashMap<String, Arc<Mutex<VehicleIngest>>>>,
    /// Highest log position written by this process (for read-your-writes waits).
    pub written: watch::Sender<u64>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("clock", &self.clock).finish()
    }
}

pub fn encode(event: &Event, id: Uuid, source: &str) -> NewEvent {
    NewEvent {
        id,
        event_type: event.event_type().to_string(),
        data: event.to_json(),
        metadata: format!("{{\"source\":\"{source}\"}}").into_bytes(),
    }
}

pub fn decode(r: &RecordedEvent) -> Option<Event> {
    match Event::from_json(&r.data) {
        Ok(e) => Some(e),
        Err(err) => {
            tracing::warn!(position = r.position, stream = %r.stream, cause = %err, "undecodable event skipped");
            None
        }
    }
}

impl App {
    /// Opens the application on a store, rebuilding state from the whole log.
    pub async fn open(
        store: Arc<dyn EventStore>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<App>, AppError> {
        let mut world = World::new();
        let mut versions = HashMap::new();
        let mut hwm: HashMap<String, u64> = HashMap::new();
        let mut after = 0;
        let mut latest_time = Millis(0);
        loop {
            let batch = store.read_all(after, 4096).await?;
            if batch.is_empty() {
                break;
            }
            for r in &batch {
                after = r.position;
                if !r.stream.starts_with(streams::RUN) {
                    versions.insert(r.stream.clone(), r.version);
                }
                let Some(event) = decode(r) else { continue };
                if let Event::FixesRecorded {
                    vehicle_id, fixes, ..
                } = &event
                    && let Some(last) = fixes.iter().map(|f| f.seq).max()
                {
                    let e = hwm.entry(vehicle_id.clone()).or_insert(0);
                    *e = (*e).max(last);
                }
                latest_time = latest_time.max(event.time());
                world.apply(&event);
            }
        }
        // Scenario time resumes where the log left it.
        clock.advance(latest_time);
        let directory = Directory {
            vehicles: world.vehicles.keys().cloned().collect(),
            active_run: world.active_run_of_vehicle.clone(),
        };
        let ingest = hwm
            .into_iter()
            .map(|(v, seq)| (v, Arc::new(Mutex::new(VehicleIngest { durable_seq: seq }))))
            .collect();
        tracing::info!(
            position = after,
            runs = world.runs.len(),
            "state rebuilt from the log"
        );
        Ok(Arc::new(App {
            store,
            clock,
            metrics,
            commands: Mutex::new(CommandState { world, versions }),
            directory: RwLock::new(directory),
            ingest: std::sync::Mutex::new(ingest),
            written: watch::channel(after).0,
        }))
    }

    fn note_written(&self, position: u64) {
        self.written.send_if_modified(|w| {
            if position > *w {
                *w = position;
                true
            } else {
                false
            }
        });
    }

    /// Decides and records a command. Accepted: appended durably, applied, position returned.
    /// Refused: the refusal is recorded, then returned as the error.
    pub async fn execute(&self, cmd: Command) -> Result<u64, AppError> {
        let mut state = self.commands.lock().await;
        let now = self.clock.now();
        let outcome = state.world.handle(&cmd, now)?;
        let (events, refusal) = match outcome {
            Outcome::NoChange => return Ok(*self.written.borrow()),
            Outcome::Accepted { events, .. } => (events, None),
            Outcome::Refused { refusal, record } => (vec![*record], Some(refusal)),
        };
        let stream = events[0].stream();
        let expected = if stream.starts_with(streams::RUN) || stream == streams::REFUSALS {
            // Run streams also take fixes and anomalies from other writers; the run's own rules
            // are guarded by this lock.
            ExpectedVersion::Any
        } else {
            match state.versions.get(&stream) {
                Some(v) => ExpectedVersion::Exact(*v),
                None => ExpectedVersion::NoStream,
            }
        };
        let new_events = events
            .iter()
            // Time-ordered ids keep the store's id index growing at its right edge.
            .map(|e| encode(e, Uuid::now_v7(), cmd.name()))
            .collect();
        let started = std::time::Instant::now();
        let result = self.store.append(&stream, expected, new_events).await?;
        self.metrics.observe_append(started.elapsed());
        if !matches!(expected, ExpectedVersion::Any) {
            state.versions.insert(stream.clone(), result.last_version);
        }
        for e in &events {
            state.world.apply(e);
            self.update_directory(e);
        }
        drop(state);
        self.note_written(result.position);
        self.metrics
            .command(cmd.name(), refusal.as_ref().map(|r| r.rule.as_str()));
        match refusal {
            Some(r) => {
                tracing::info!(command = cmd.name(), rule = r.rule.as_str(), reason = %r.message, "command refused");
                Err(AppError::Refused(r))
            }
            None => Ok(result.position),
        }
    }

    fn update_directory(&self, e: &Event) {
        let mut dir = match self.directory.write() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        match e {
            Event::VehicleRegistered { vehicle_id, .. } => {
                dir.vehicles.insert(vehicle_id.clone());
            }
            Event::RunDeparted {
                run_id, vehicle_id, ..
            } => {
                dir.active_run.insert(vehicle_id.clone(), run_id.clone());
            }
            Event::RunClosed { run_id, .. } => {
                dir.active_run.retain(|_, r| r != run_id);
            }
            _ => {}
        }
    }

    /// Reads the domain state under the command lock (queries on small registries).
    pub async fn with_world<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        let state = self.commands.lock().await;
        f(&state.world)
    }

    pub fn vehicle_known(&self, vehicle_id: &str) -> bool {
        match self.directory.read() {
            Ok(d) => d.vehicles.contains(vehicle_id),
            Err(p) => p.into_inner().vehicles.contains(vehicle_id),
        }
    }

    fn active_run(&self, vehicle_id: &str) -> Option<String> {
        match self.directory.read() {
            Ok(d) => d.active_run.get(vehicle_id).cloned(),
            Err(p) => p.into_inner().active_run.get(vehicle_id).cloned(),
        }
    }

    fn vehicle_slot(&self, vehicle_id: &str) -> Arc<Mutex<VehicleIngest>> {
        let mut map = match self.ingest.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(vehicle_id.to_string()).or_default().clone()
    }

    /// Durably records the valid fixes of one vehicle (in order); duplicates (seq not above the
    /// durable high-water mark) are absorbed.
    pub async fn record_fixes(
        &self,
        vehicle_id: &str,
        fixes: Vec<Fix>,
    ) -> Result<VehicleBatchResult, AppError> {
        let slot = self.vehicle_slot(vehicle_id);
        let mut ingest = slot.lock().await;
        let mut high = ingest.durable_seq;
        let mut fresh = Vec::with_capacity(fixes.len());
        let mut duplicates = 0;
        for f in fixes {
            if f.seq <= high {
                duplicates += 1;
                continue;
            }
            high = f.seq;
            fresh.push(f);
        }
        let mut result = VehicleBatchResult {
            durable_seq: ingest.durable_seq,
            accepted: fresh.len() as u32,
            duplicates,
            position: *self.written.borrow(),
        };
        if fresh.is_empty() {
            return Ok(result);
        }
        if self.clock.is_scenario()
            && let Some(last) = fresh.iter().map(|f| f.t).max()
        {
            self.clock.advance(last);
        }
        let run_id = self.active_run(vehicle_id);
        let event = Event::FixesRecorded {
            vehicle_id: vehicle_id.to_string(),
            run_id,
            fixes: fresh,
        };
        // Duplicates are absorbed by the high-water mark above (held across the append and
        // rebuilt from the log on start), so the id needs no content; time-ordered ids keep the
        // store's id index growing at its right edge.
        let id = Uuid::now_v7();
        let started = std::time::Instant::now();
        let r = self
            .store
            .append(
                &event.stream(),
                ExpectedVersion::Any,
                vec![encode(&event, id, "ingest")],
            )
            .await?;
        self.metrics.observe_append(started.elapsed());
        ingest.durable_seq = high;
        result.durable_seq = high;
        result.position = r.position;
        drop(ingest);
        self.note_written(r.position);
        self.metrics.fixes_accepted(result.accepted as u64);
        Ok(result)
    }

    /// Scenario clock: moves time; a tick is recorded so replays see it.
    pub async fn advance_clock(&self, to: Millis, tick: bool) -> Result<(Millis, u64), AppError> {
        let now = self.clock.advance(to);
        if !tick {
            return Ok((now, *self.written.borrow()));
        }
        let event = Event::ClockTicked { at: to };
        let r = self
            .store
            .append(
                streams::CLOCK,
                ExpectedVersion::Any,
                vec![encode(&event, Uuid::now_v7(), "clock")],
            )
            .await?;
        self.note_written(r.position);
        Ok((now, r.position))
    }

    /// Every event of a stream, in order.
    pub async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, AppError> {
        let mut out = Vec::new();
        loop {
            let from = out.len() as u64;
            let batch = self
                .store
                .read_stream(stream, from, Direction::Forwards, 4096)
                .await?;
            if batch.is_empty() {
                break;
            }
            out.extend(batch);
        }
        Ok(out)
    }
}
