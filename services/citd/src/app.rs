//! The application core around the pure domain: commands are decided by `World` under one
//! writer lock and appended durably before they are applied and acknowledged; fixes take a
//! separate, lock-light path (validation, per-vehicle duplicate absorption, batched appends to
//! the run's stream). State is rebuilt from the log on start, from the engine snapshot's copy
//! of it ([`Rebuild`]) when there is one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cit_domain::event::{Event, SeqEpoch, streams};
use cit_domain::{Command, Fix, Millis, Outcome, World};
use cit_store::{Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use crate::auth::Caller;
use crate::clock::Clock;
use crate::error::AppError;
use crate::metrics::Metrics;

mod ingest;
pub use ingest::{Ingesting, Placed};

/// Namespace of deterministic event ids (fix batches, anomalies).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6369_745f_6576_656e_7473_5f76_315f_6964);

/// How far ahead of the server clock a device time may be (wall clock only).
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// What the ingest path needs to know about vehicles, kept apart from the command lock. Looked
/// up for every fix, so hashed with foldhash rather than SipHash (the seed is still random per
/// process, and a lookup of an unknown id inserts nothing).
#[derive(Debug, Default)]
pub struct Directory {
    pub vehicles: foldhash::HashSet<String>,
    pub active_run: foldhash::HashMap<String, String>,
    /// Units and gateways: what each may report for, and whether it is disabled (read by the
    /// auth layer on every call of a unit, and by ingest for every batch).
    pub units: HashMap<String, UnitEntry>,
}

/// A unit or gateway as ingest sees it: its vehicles as a set shared by reference, so a batch
/// takes them without copying and checks each fix in constant time.
#[derive(Debug, Clone)]
pub struct UnitEntry {
    pub gateway: bool,
    pub disabled: bool,
    pub vehicles: Arc<foldhash::HashSet<String>>,
}

impl From<&cit_domain::world::Unit> for UnitEntry {
    fn from(u: &cit_domain::world::Unit) -> UnitEntry {
        UnitEntry {
            gateway: u.gateway,
            disabled: u.disabled,
            vehicles: Arc::new(u.vehicle_ids.iter().cloned().collect()),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct CommandState {
    world: World,
    /// Last version of every non-run stream, for optimistic concurrency (Exact appends).
    versions: HashMap<String, u64>,
}

/// Result of one ingest batch for one vehicle.
#[derive(Debug, Clone, Default)]
pub struct VehicleBatchResult {
    /// The vehicle's seq durable so far (see `SeqEpoch`).
    pub durable_seq: u64,
    pub accepted: u32,
    pub duplicates: u32,
    pub position: u64,
    /// The vehicle's unit numbering then: the ack gives `durable_seq` in the unit's own.
    pub numbering: SeqEpoch,
}

impl VehicleBatchResult {
    /// `durable_seq` in the unit's numbering, with its epoch.
    pub fn unit_durable_seq(&self) -> (u32, u64) {
        (
            self.numbering.epoch,
            self.durable_seq.saturating_sub(self.numbering.base),
        )
    }
}

pub struct App {
    pub store: Arc<dyn EventStore>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    commands: Mutex<CommandState>,
    pub directory: RwLock<Directory>,
    ingest: std::sync::Mutex<ingest::Vehicles>,
    /// Highest log position written by this process (for read-your-writes waits).
    pub written: watch::Sender<u64>,
    /// How far ahead of a vehicle's latest seq a fix may jump (`max_seq_jump` in the config).
    pub max_seq_jump: std::sync::atomic::AtomicU64,
    /// Bumped when a unit is disabled: its open streams end.
    pub units_changed: watch::Sender<u64>,
    /// Calls denied by authentication, the policy or a scope check, counted and recorded.
    pub denials: crate::auth::denials::Denials,
    /// The key run heads are signed with, when one is configured.
    pub head_signer: std::sync::OnceLock<Arc<crate::heads::HeadSigner>>,
}

/// The default of `max_seq_jump`: a unit at 1 Hz numbers a million fixes in eleven days.
pub const MAX_SEQ_JUMP: u64 = 1_000_000;

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("clock", &self.clock).finish()
    }
}

pub fn encode(event: &Event, id: Uuid, source: &str) -> NewEvent {
    encode_by(event, id, source, None)
}

/// What an event's metadata says of where it came from: the writer (`source`: a command's
/// name, "ingest", "engine") and, for what a caller caused, the caller (principal, how it
/// authenticated, co-signers). Covered by the event's chain hash like its data.
#[derive(serde::Serialize)]
struct Metadata<'a> {
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<crate::auth::Actor<'a>>,
}

pub fn encode_by(
    event: &Event,
    id: Uuid,
    source: &str,
    actor: Option<crate::auth::Actor<'_>>,
) -> NewEvent {
    NewEvent {
        id,
        event_type: event.event_type().to_string(),
        data: event.to_json(),
        metadata: serde_json::to_vec(&Metadata { source, actor }).unwrap_or_default(),
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
    /// Folded for every fix event by the engine worker (foldhash: SipHash here was 7 % of that
    /// thread's time at 50,000 fixes/s): one record a vehicle, one lookup a fix event.
    hwm: foldhash::HashMap<String, VehicleSeq>,
    latest_time: Millis,
}

/// What the log says of a vehicle's fixes: its highest seq, that fix's device time, and the
/// numbering epoch of its unit (see `SeqEpoch`).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
#[serde(from = "StoredVehicleSeq")]
struct VehicleSeq {
    seq: u64,
    t: Millis,
    numbering: SeqEpoch,
}

/// A [`VehicleSeq`] as snapshots hold it: older ones kept the seq alone (their time and epoch
/// are then unknown, as the log before them never recorded an epoch).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredVehicleSeq {
    Seq(u64),
    Full {
        seq: u64,
        t: Millis,
        numbering: SeqEpoch,
    },
}

impl From<StoredVehicleSeq> for VehicleSeq {
    fn from(s: StoredVehicleSeq) -> VehicleSeq {
        match s {
            StoredVehicleSeq::Seq(seq) => VehicleSeq {
                seq,
                ..VehicleSeq::default()
            },
            StoredVehicleSeq::Full { seq, t, numbering } => VehicleSeq { seq, t, numbering },
        }
    }
}

impl VehicleSeq {
    /// Takes in a fix event's highest fix and the epoch it records, if any.
    fn fold(&mut self, last: Option<&Fix>, epoch: Option<SeqEpoch>) {
        if let Some(numbering) = epoch {
            self.numbering = numbering;
        }
        if let Some(f) = last.filter(|f| f.seq > self.seq) {
            self.seq = f.seq;
            self.t = f.t;
        }
    }
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
            vehicle_id,
            fixes,
            epoch,
            ..
        } = event
            && (!fixes.is_empty() || epoch.is_some())
        {
            let last = fixes.iter().max_by_key(|f| f.seq);
            // The vehicle's id is copied only for its first fix event.
            match self.hwm.get_mut(vehicle_id) {
                Some(v) => v.fold(last, *epoch),
                None => {
                    let mut v = VehicleSeq::default();
                    v.fold(last, *epoch);
                    self.hwm.insert(vehicle_id.clone(), v);
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
            active_run: world
                .active_run_of_vehicle
                .iter()
                .map(|(v, r)| (v.clone(), r.clone()))
                .collect(),
            units: world
                .units
                .iter()
                .map(|(id, u)| (id.clone(), UnitEntry::from(u)))
                .collect(),
        };
        let ingest = hwm
            .into_iter()
            .map(|(v, h)| {
                let state = ingest::VehicleIngest::durable_to(h.seq, h.t, h.numbering);
                (v, Arc::new(std::sync::Mutex::new(state)))
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
            commands: Mutex::new(CommandState { world, versions }),
            directory: RwLock::new(directory),
            ingest: std::sync::Mutex::new(ingest),
            written: watch::channel(after).0,
            max_seq_jump: std::sync::atomic::AtomicU64::new(MAX_SEQ_JUMP),
            units_changed: watch::channel(0).0,
            denials: crate::auth::denials::Denials::new(metrics.clone()),
            head_signer: std::sync::OnceLock::new(),
            metrics,
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
    pub async fn execute(&self, cmd: Command, caller: &Caller) -> Result<u64, AppError> {
        self.execute_as(cmd, Some(caller.actor())).await
    }

    /// [`App::execute`], the caller first (reads better at call sites with a long command).
    pub async fn execute_by(&self, caller: &Caller, cmd: Command) -> Result<u64, AppError> {
        self.execute(cmd, caller).await
    }

    /// [`App::execute`] with the actor to record (None: citd's own doing).
    pub async fn execute_as(
        &self,
        cmd: Command,
        actor: Option<crate::auth::Actor<'_>>,
    ) -> Result<u64, AppError> {
        self.record(&cmd, actor, |w, now| w.handle(&cmd, now)).await
    }

    /// Records a refusal of `cmd` under `rule` that the caller's credentials decided (a
    /// two-person place proven by a credential without its role), and returns it as the error.
    pub async fn refuse(
        &self,
        cmd: &Command,
        rule: cit_domain::Rule,
        run_id: Option<&str>,
        subject: &str,
        message: String,
        caller: &Caller,
    ) -> AppError {
        match self
            .record(cmd, Some(caller.actor()), |w, now| {
                Ok(w.refusal(cmd, rule, run_id, subject, message, now))
            })
            .await
        {
            Err(e) => e,
            Ok(_) => AppError::Unavailable("a refusal was recorded as accepted".into()),
        }
    }

    async fn record(
        &self,
        cmd: &Command,
        actor: Option<crate::auth::Actor<'_>>,
        decide: impl FnOnce(&World, Millis) -> Result<Outcome, cit_domain::InputError>,
    ) -> Result<u64, AppError> {
        let mut state = self.commands.lock().await;
        let now = self.clock.now();
        let outcome = decide(&state.world, now)?;
        let (events, refusal) = match outcome {
            Outcome::NoChange => return Ok(*self.written.borrow()),
            Outcome::Accepted { events, .. } => (events, None),
            Outcome::Refused { refusal, record } => (vec![*record], Some(refusal)),
        };
        let stream = events[0].stream();
        let expected = if stream.starts_with(streams::RUN)
            || stream == streams::REFUSALS
            || stream == streams::ARMORY
        {
            // Run streams (and the armory's, for anomalies of no run) also take fixes and
            // anomalies from other writers; the rules on them are guarded by this lock.
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
            .map(|e| encode_by(e, Uuid::now_v7(), cmd.name(), actor))
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
            Event::UnitBound {
                unit_id,
                gateway,
                vehicle_ids,
                ..
            } => {
                dir.units.insert(
                    unit_id.clone(),
                    UnitEntry {
                        gateway: *gateway,
                        disabled: false,
                        vehicles: Arc::new(vehicle_ids.iter().cloned().collect()),
                    },
                );
            }
            Event::UnitDisabled { unit_id, .. } => {
                if let Some(u) = dir.units.get_mut(unit_id) {
                    u.disabled = true;
                }
                self.units_changed.send_modify(|n| *n += 1);
            }
            Event::RunDeparted {
                run_id, vehicle_id, ..
            } => {
                dir.active_run.insert(vehicle_id.clone(), run_id.clone());
            }
            Event::RunClosed { run_id, .. } => {
                dir.active_run.retain(|_, r| r != run_id);
            }
            // R8: the replacement's fixes go to the run's stream from here on, the broken-down
            // vehicle's to its own.
            Event::VehicleSwapped {
                run_id,
                from_vehicle_id,
                to_vehicle_id,
                ..
            } => {
                if dir.active_run.get(from_vehicle_id) == Some(run_id) {
                    dir.active_run.remove(from_vehicle_id);
                }
                dir.active_run.insert(to_vehicle_id.clone(), run_id.clone());
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

    /// Appends an event citd records of its own accord (not a command's), e.g. denied calls.
    pub async fn append_own(&self, event: &Event, source: &str) -> Result<u64, AppError> {
        self.append_record(encode(event, Uuid::now_v7(), source), event)
            .await
    }

    /// [`App::append_own`] for what a caller's call causes without a command (a read of the
    /// record): the caller is recorded as its actor.
    pub async fn append_own_by(
        &self,
        event: &Event,
        source: &str,
        caller: &Caller,
    ) -> Result<u64, AppError> {
        self.append_record(
            encode_by(event, Uuid::now_v7(), source, Some(caller.actor())),
            event,
        )
        .await
    }

    async fn append_record(&self, record: NewEvent, event: &Event) -> Result<u64, AppError> {
        let r = self
            .store
            .append(&event.stream(), ExpectedVersion::Any, vec![record])
            .await?;
        self.note_written(r.position);
        Ok(r.position)
    }

    /// Reads the units' bindings (no await: the auth layer calls it for every unit's call).
    pub fn with_units<T>(&self, f: impl FnOnce(&HashMap<String, UnitEntry>) -> T) -> T {
        match self.directory.read() {
            Ok(d) => f(&d.units),
            Err(p) => f(&p.into_inner().units),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_that_kept_only_each_vehicles_seq_still_reads() {
        let old: foldhash::HashMap<String, u64> = [("V-1".to_string(), 7)].into_iter().collect();
        let mut bytes = Vec::new();
        ciborium::into_writer(&old, &mut bytes).expect("write");
        let read: foldhash::HashMap<String, VehicleSeq> =
            ciborium::from_reader(bytes.as_slice()).expect("read");
        assert_eq!(read["V-1"].seq, 7);
        assert_eq!(read["V-1"].numbering, SeqEpoch::default());
        // And the record as written now reads back whole.
        let now = VehicleSeq {
            seq: 9,
            t: Millis(5),
            numbering: SeqEpoch { epoch: 2, base: 3 },
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&now, &mut bytes).expect("write");
        let back: VehicleSeq = ciborium::from_reader(bytes.as_slice()).expect("read");
        assert_eq!(
            (back.seq, back.t, back.numbering),
            (9, Millis(5), now.numbering)
        );
    }
}
