//! The application core around the pure domain: commands are decided by `World` under one
//! writer lock and appended durably before they are applied and acknowledged; fixes take a
//! separate, lock-light path (validation, per-vehicle duplicate absorption, batched appends to
//! the run's stream). State is rebuilt from the log on start, from the engine snapshot's copy
//! of it ([`Rebuild`]) when there is one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use cit_domain::event::{Event, streams};
use cit_domain::{Command, Fix, Millis, Outcome, World};
use cit_store::{Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, oneshot, watch};
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

/// Fixes of one caller waiting for their append, with where to send the result.
type Queued = (
    Vec<Fix>,
    oneshot::Sender<Result<VehicleBatchResult, AppError>>,
);

/// Per-vehicle ingest state. One append per vehicle is in flight at a time; fixes that arrive
/// meanwhile (other batches, other connections) queue and go together in the next append —
/// group commit at the vehicle level, since the store's cost is per append. `durable_seq` moves
/// only once an append is durable, so duplicates are judged against what is really stored.
#[derive(Debug, Default)]
struct VehicleIngest {
    durable_seq: u64,
    in_flight: bool,
    queued: Vec<Queued>,
}

/// Fixes queued by `enqueue_fixes`, to be completed by `complete_fixes`.
#[derive(Debug)]
pub struct PendingFixes {
    vehicle_id: String,
    slot: Arc<VehicleSlot>,
    rx: oneshot::Receiver<Result<VehicleBatchResult, AppError>>,
}

impl PendingFixes {
    pub fn vehicle_id(&self) -> &str {
        &self.vehicle_id
    }
}

#[derive(Debug, Default)]
struct VehicleSlot {
    state: std::sync::Mutex<VehicleIngest>,
    /// Signalled when an append finishes, so a waiting caller can take the next turn.
    turn: tokio::sync::Notify,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    ingest: std::sync::Mutex<HashMap<String, Arc<VehicleSlot>>>,
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

/// The command side's state as a fold of the log: the domain, the last version of every non-run
/// stream (for Exact appends), each vehicle's highest durable fix seq (so a resent fix is
/// absorbed), and the latest event time (scenario time resumes there). [`App::open`] folds the
/// log into it; the engine worker folds the same events into a copy of its own, which goes into
/// its snapshot, so a restart reads only the log after the snapshot. (The live state cannot be
/// snapshotted as it stands: fixes' seqs and anomalies' records reach it after their appends,
/// outside any one lock, so no log position describes it exactly.)
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Rebuild {
    world: World,
    versions: HashMap<String, u64>,
    hwm: HashMap<String, u64>,
    latest_time: Millis,
}

impl Rebuild {
    /// Folds one logged event in (`event`: it decoded, or None).
    pub fn apply(&mut self, r: &RecordedEvent, event: Option<&Event>) {
        if !r.stream.starts_with(streams::RUN) {
            match self.versions.get_mut(&r.stream) {
                Some(v) => *v = r.version,
                None => {
                    self.versions.insert(r.stream.clone(), r.version);
                }
            }
        }
        let Some(event) = event else { return };
        if let Event::FixesRecorded {
            vehicle_id, fixes, ..
        } = event
            && let Some(last) = fixes.iter().map(|f| f.seq).max()
        {
            match self.hwm.get_mut(vehicle_id) {
                Some(seq) => *seq = (*seq).max(last),
                None => {
                    self.hwm.insert(vehicle_id.clone(), last);
                }
            }
        }
        self.latest_time = self.latest_time.max(event.time());
        self.world.apply(event);
    }

    pub fn world(&self) -> &World {
        &self.world
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
    /// Opens the application on a store: its state is `from` (a snapshot's, as of a log
    /// position) or empty, then every event after that position folded in.
    pub async fn open(
        store: Arc<dyn EventStore>,
        clock: Clock,
        metrics: Arc<Metrics>,
        from: Option<(u64, Rebuild)>,
    ) -> Result<Arc<App>, AppError> {
        let started = std::time::Instant::now();
        let (resumed_from, mut state) = from.unwrap_or_default();
        let mut after = resumed_from;
        loop {
            let batch = store.read_all(after, 4096).await?;
            if batch.is_empty() {
                break;
            }
            for r in &batch {
                after = r.position;
                state.apply(r, decode(r).as_ref());
            }
        }
        let Rebuild {
            world,
            versions,
            hwm,
            latest_time,
        } = state;
        // Scenario time resumes where the log left it.
        clock.advance(latest_time);
        let directory = Directory {
            vehicles: world.vehicles.keys().cloned().collect(),
            active_run: world.active_run_of_vehicle.clone(),
        };
        let ingest = hwm
            .into_iter()
            .map(|(v, seq)| {
                let slot = VehicleSlot::default();
                lock(&slot.state).durable_seq = seq;
                (v, Arc::new(slot))
            })
            .collect();
        metrics.commands_resumed_from.set(resumed_from as i64);
        tracing::info!(
            position = after,
            from = resumed_from,
            runs = world.runs.len(),
            ms = started.elapsed().as_millis() as u64,
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

    /// Makes an event another writer (the engine) appended known to the command side, so
    /// commands about it (acknowledging an anomaly) are decided on it at once.
    pub async fn learn(&self, event: &Event) {
        self.commands.lock().await.world.apply(event);
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

    fn vehicle_slot(&self, vehicle_id: &str) -> Arc<VehicleSlot> {
        lock(&self.ingest)
            .entry(vehicle_id.to_string())
            .or_default()
            .clone()
    }

    /// Durably records the valid fixes of one vehicle (in order); duplicates (seq not above the
    /// durable high-water mark) are absorbed. Returns once the fixes are durable.
    pub async fn record_fixes(
        &self,
        vehicle_id: &str,
        fixes: Vec<Fix>,
    ) -> Result<VehicleBatchResult, AppError> {
        let pending = self.enqueue_fixes(vehicle_id, fixes);
        self.complete_fixes(pending).await
    }

    /// First half of `record_fixes`, synchronous: queues the fixes behind the vehicle's earlier
    /// ones. Calling it in arrival order is what keeps a vehicle's fixes in order when a
    /// connection has several batches in flight.
    pub fn enqueue_fixes(&self, vehicle_id: &str, fixes: Vec<Fix>) -> PendingFixes {
        let slot = self.vehicle_slot(vehicle_id);
        let (tx, rx) = oneshot::channel();
        lock(&slot.state).queued.push((fixes, tx));
        PendingFixes {
            vehicle_id: vehicle_id.to_string(),
            slot,
            rx,
        }
    }

    /// Second half: takes the vehicle's turn when it is free (appending everything queued) and
    /// waits until these fixes are durable.
    pub async fn complete_fixes(
        &self,
        pending: PendingFixes,
    ) -> Result<VehicleBatchResult, AppError> {
        let PendingFixes {
            vehicle_id,
            slot,
            mut rx,
        } = pending;
        // A batch completes up to a thousand vehicles' fixes in one task, each encoded before its
        // first await: giving way once the task's budget is spent keeps one poll to about a
        // hundred vehicles, so a GetRun queued behind it waits microseconds, not milliseconds.
        tokio::task::consume_budget().await;
        loop {
            // Registered before looking at the state, so a turn ending in between is not missed.
            let turn = slot.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            let work = {
                let mut s = lock(&slot.state);
                if s.in_flight || s.queued.is_empty() {
                    None
                } else {
                    s.in_flight = true;
                    Some((std::mem::take(&mut s.queued), s.durable_seq))
                }
            };
            if let Some((work, durable)) = work {
                let durable = self.append_queued(&vehicle_id, work, durable).await;
                let mut s = lock(&slot.state);
                s.durable_seq = durable;
                s.in_flight = false;
                drop(s);
                slot.turn.notify_waiters();
            }
            tokio::select! {
                biased;
                r = &mut rx => {
                    return r.unwrap_or_else(|_| Err(AppError::Unavailable("ingest was interrupted".into())));
                }
                _ = &mut turn => {}
            }
        }
    }

    /// Appends the queued fixes of one vehicle as one event and answers every caller; returns
    /// the new durable seq (unchanged on failure).
    async fn append_queued(&self, vehicle_id: &str, work: Vec<Queued>, durable: u64) -> u64 {
        let mut high = durable;
        let mut fresh = Vec::new();
        let mut callers = Vec::with_capacity(work.len());
        for (fixes, tx) in work {
            let (mut accepted, mut duplicates) = (0u32, 0u32);
            for f in fixes {
                if f.seq <= high {
                    duplicates += 1;
                    continue;
                }
                high = f.seq;
                fresh.push(f);
                accepted += 1;
            }
            callers.push((accepted, duplicates, tx));
        }
        let answer = |callers: Vec<(u32, u32, oneshot::Sender<_>)>, durable_seq, position| {
            for (accepted, duplicates, tx) in callers {
                let _ = tx.send(Ok(VehicleBatchResult {
                    durable_seq,
                    accepted,
                    duplicates,
                    position,
                }));
            }
        };
        if fresh.is_empty() {
            answer(callers, durable, *self.written.borrow());
            return durable;
        }
        if self.clock.is_scenario()
            && let Some(last) = fresh.iter().map(|f| f.t).max()
        {
            self.clock.advance(last);
        }
        let accepted = fresh.len() as u64;
        let event = Event::FixesRecorded {
            vehicle_id: vehicle_id.to_string(),
            run_id: self.active_run(vehicle_id),
            fixes: fresh,
        };
        // Duplicates are absorbed by the high-water mark above (one append per vehicle at a
        // time, rebuilt from the log on start), so the id needs no content; time-ordered ids keep
        // the store's id index growing at its right edge. Fixes are the bulk of the log: they
        // may wait behind commands and anomalies, never those behind them.
        let started = std::time::Instant::now();
        let appended = self
            .store
            .append_bulk(
                &event.stream(),
                ExpectedVersion::Any,
                vec![encode(&event, Uuid::now_v7(), "ingest")],
            )
            .await;
        self.metrics.observe_append(started.elapsed());
        match appended {
            Ok(r) => {
                self.note_written(r.position);
                self.metrics.fixes_accepted(accepted);
                answer(callers, high, r.position);
                high
            }
            Err(e) => {
                for (_, _, tx) in callers {
                    let _ = tx.send(Err(AppError::Store(e.clone())));
                }
                durable
            }
        }
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
