//! Runs the pure detection engine live: a catch-up subscription to the whole log feeds it events
//! in order; what it raises is appended to the run's stream as `AnomalyRaised` with an id derived
//! from the anomaly's deterministic id, so a restart that sees an input again stores nothing
//! twice.
//!
//! Dispatch hears of an anomaly as soon as the engine raises it; its record follows, written by a
//! separate task (`record`) so the fold never waits for the store. That is safe because an
//! anomaly is a pure function of inputs that are already durable (the engine reads only committed
//! events): after a crash between the two, the engine folds the same inputs again and raises the
//! same anomaly with the same id. Two guards keep it so: a snapshot is written only once every
//! anomaly raised up to its position is recorded, and a command about an anomaly (acknowledge,
//! resolve) waits for its record, so the log never holds an answer before its alarm.
//!
//! Time moves only with the log: in scenario mode the driver logs ticks; in wall-clock mode a
//! one-second timer logs a `ClockTicked` whenever one of the engine's deadlines is due, and the
//! engine fires it when the tick comes back through the subscription. So the log alone decides
//! when every time rule fired, and replaying it (a restart, an audit's re-detection) is exact —
//! a fix that arrives late never reorders against a deadline differently on replay.
//!
//! The same fold ([`fold`]) feeds the read models live and rebuilds them for the audit's
//! `StateAt`. The worker also folds every event into a copy of the command side's state
//! ([`Rebuild`]) for its snapshot, so a restart's command side reads only the log after it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cit_domain::event::{Anomaly, EngineMark, Event};
use cit_engine::Engine;
use cit_store::{EventStore, ExpectedVersion, SubscriptionFilter, SubscriptionMessage};
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::anomalies::Anomalies;
use crate::app::{App, ID_NAMESPACE, Rebuild, decode, encode};
use crate::clock::wall_now;
use crate::fleet::Fleet;
use crate::grpc::anomaly_to_pb;
use crate::snapshot::{self, Snapshot};
use crate::watch::{Hub, MOVED_BATCH, Numbered};

/// Most events folded between two turns of the worker's loop (a few milliseconds' work).
const CHUNK: usize = 512;

/// Longest a snapshot waits for the anomalies raised before it to be recorded.
const SNAPSHOT_RECORD_WAIT: Duration = Duration::from_secs(1);

/// Where and how often the worker snapshots itself (see [`crate::snapshot`]).
#[derive(Debug, Clone)]
pub struct Snapshots {
    pub dir: PathBuf,
    pub every: Duration,
}

/// Where the worker starts: a fresh engine at the log's start, or a snapshot's.
#[derive(Debug, Default)]
pub struct Start {
    pub engine: Engine,
    /// The command side's state as of `position` (the worker keeps folding it, for snapshots).
    pub commands: Rebuild,
    /// Log position folded in so far (0: none).
    pub position: u64,
    pub event_id: Uuid,
}

/// Runs from `start` until `shutdown` resolves or the subscription fails; writes a snapshot
/// every `snapshots.every` and at shutdown.
pub async fn run(
    app: Arc<App>,
    anomalies: Arc<Anomalies>,
    fleet: Arc<Fleet>,
    hub: Arc<Hub>,
    snapshots: Option<Snapshots>,
    start: Start,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let Start {
        mut engine,
        mut commands,
        mut position,
        event_id: mut last_id,
    } = start;
    app.metrics.engine_resumed_from.set(position as i64);
    // Events are taken as many as are ready at once (up to a chunk): the loop's other branches
    // and the engine's watermark are then tended once a chunk, not once an event.
    let mut sub = app
        .store
        .subscribe(SubscriptionFilter::All, (position > 0).then_some(position))
        .ready_chunks(CHUNK);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let wall = !app.clock.is_scenario();
    let mut flush = tokio::time::interval(hub.interval.max(Duration::from_millis(50)));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Runs whose position batch is still to build. Built one batch a turn of the loop, between
    // chunks of events: a whole fleet's at once (10,000 runs) held the fold 7-37 ms, and every
    // fix behind it waited for its detection that long (dispatch-bench, BENCHMARKS.md).
    let mut to_send: Vec<Numbered> = Vec::new();
    // Without snapshots the timer still needs a period; its branch is disabled.
    let every = snapshots
        .as_ref()
        .map_or(Duration::from_secs(3600), |s| s.every)
        .max(Duration::from_secs(1));
    let mut snapshot_timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    snapshot_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snapshot_at = position;
    // Anomalies go to the recorder in raise order; `anomalies` knows which are not yet recorded.
    let (to_record, records) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record(app.clone(), anomalies.clone(), records));
    // Where the subscription said it caught up (may be past the last event folded).
    let mut caught_up = 0;
    tokio::pin!(shutdown);
    'run: loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = snapshot_timer.tick(), if snapshots.is_some() => {
                // Only once every anomaly up to `position` is recorded (normally a group commit
                // away); if the store is failing, this snapshot is skipped, not awaited for ever.
                if let Some(s) = &snapshots
                    && position > snapshot_at
                    && anomalies.until_all_recorded(SNAPSHOT_RECORD_WAIT).await
                {
                    take_snapshot(&s.dir, (&engine, &commands), &anomalies, &fleet, (position, last_id)).await;
                    snapshot_at = position;
                }
            }
            _ = ticker.tick(), if wall => {
                let now = wall_now();
                if engine.next_deadline().is_some_and(|d| d <= now)
                    && let Err(e) = app.advance_clock(now, true).await
                {
                    tracing::warn!(cause = %e, "logging a clock tick failed; retried next second");
                }
            }
            _ = flush.tick() => {
                // The runs that moved since the last tick, each to go out at its latest, a batch
                // a turn (below). While some are left from the last tick, new marks wait.
                if to_send.is_empty() {
                    to_send = hub.take_moved();
                }
            }
            _ = std::future::ready(()), if !to_send.is_empty() => {
                let n = MOVED_BATCH.min(to_send.len());
                hub.runs_moved(fleet.moved_many(&to_send[..n], &anomalies));
                to_send.drain(..n);
            }
            chunk = sub.next() => {
                let Some(chunk) = chunk else { break };
                for msg in chunk {
                    match msg {
                        Ok(SubscriptionMessage::Event(r)) => {
                            position = r.position;
                            last_id = r.id;
                            let event = decode(&r);
                            // The command side's copy is only for snapshots.
                            if snapshots.is_some() {
                                commands.apply(&r, event.as_ref());
                            }
                            if let Some(event) = event {
                                let raised = fold(&mut engine, &anomalies, &fleet, r.position, &event);
                                if !raised.is_empty() {
                                    announce(&app, &anomalies, &raised, &hub, &fleet);
                                    let mark = EngineMark { position: r.position, now: engine.now() };
                                    // Fails only once the recorder stopped (the store
                                    // closed): no snapshot covers these, a restart raises
                                    // them again.
                                    let _ = to_record.send(Raised { mark, anomalies: raised });
                                }
                                if hub.watching() {
                                    publish(&app, &hub, &anomalies, &fleet, &event);
                                }
                                if let Event::RunClosed { run_id, .. } = &event {
                                    hub.forget(run_id);
                                }
                            }
                        }
                        Ok(SubscriptionMessage::CaughtUp { position: p }) => {
                            tracing::info!(position = p, runs = engine.run_count(), "detection engine caught up");
                            caught_up = caught_up.max(p);
                        }
                        Err(e) => {
                            tracing::error!(cause = %e, "engine subscription failed");
                            break 'run;
                        }
                    }
                }
                // A chunk is up to ~1 ms of this thread's work: offer the core to whoever
                // waits for one (a console's call, a unit's ack) before the next, as the store's
                // writer does between its rows; with no one waiting this returns at once.
                std::thread::yield_now();
                anomalies.engine_position.send_replace(position.max(caught_up));
                let head = *app.written.borrow();
                app.metrics.engine_lag_events.set(head.saturating_sub(position) as i64);
            }
        }
    }
    // The recorder finishes what it was handed (or stops if the store closed); the last snapshot
    // is written only if all of it is durable, else a restart folds those inputs again.
    drop(to_record);
    let _ = recorder.await;
    if let Some(s) = &snapshots
        && position > snapshot_at
        && anomalies.until_all_recorded(Duration::ZERO).await
    {
        take_snapshot(
            &s.dir,
            (&engine, &commands),
            &anomalies,
            &fleet,
            (position, last_id),
        )
        .await;
    }
}

/// The snapshot in `dir`, if there is one and it belongs to this log (the event at its position
/// has its id). Read before citd serves, so the command side and dispatch both start from it.
pub async fn load(
    store: &dyn EventStore,
    dir: &std::path::Path,
) -> Option<Snapshot<Engine, Rebuild>> {
    let started = std::time::Instant::now();
    let dir = dir.to_path_buf();
    let s = tokio::task::spawn_blocking(move || snapshot::read(&dir))
        .await
        .ok()
        .flatten()?;
    let here = store
        .read_all(s.position.saturating_sub(1), 1)
        .await
        .ok()
        .and_then(|mut v| v.pop());
    if here.as_ref().map(|e| (e.position, e.id)) != Some((s.position, s.event_id)) {
        tracing::warn!(
            position = s.position,
            "engine snapshot does not match this log; replaying it"
        );
        return None;
    }
    tracing::info!(
        position = s.position,
        runs = s.engine.run_count(),
        ms = started.elapsed().as_millis() as u64,
        "snapshot read"
    );
    Some(s)
}

/// Where the worker starts: from `snap`, whose read models go into `anomalies` and `fleet` (so
/// dispatch never answers from empty ones), or from the log's start.
pub fn resume(
    anomalies: &Anomalies,
    fleet: &Fleet,
    snap: Option<Snapshot<Engine, Rebuild>>,
) -> Start {
    let Some(s) = snap else {
        return Start::default();
    };
    fleet.import(s.fleet);
    anomalies.import(s.anomalies);
    anomalies.engine_position.send_replace(s.position);
    Start {
        engine: s.engine,
        commands: s.commands,
        position: s.position,
        event_id: s.event_id,
    }
}

/// Encodes a snapshot in place (it borrows the live engine; a multi-threaded runtime is told
/// this thread blocks) and writes it on the blocking pool. A failure is logged: the next one may succeed,
/// and without one a restart replays the log.
async fn take_snapshot(
    dir: &std::path::Path,
    (engine, commands): (&Engine, &Rebuild),
    anomalies: &Anomalies,
    fleet: &Fleet,
    (position, event_id): (u64, Uuid),
) {
    let started = std::time::Instant::now();
    let snap = snapshot::Snapshot {
        format: snapshot::FORMAT,
        position,
        event_id,
        engine,
        fleet: fleet.export(),
        anomalies: anomalies.export(),
        commands,
    };
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let encoded = if multi_thread {
        tokio::task::block_in_place(|| snapshot::encode(&snap))
    } else {
        snapshot::encode(&snap)
    };
    let bytes = match encoded {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(cause = %e, "encoding the engine snapshot failed");
            return;
        }
    };
    let encoded = started.elapsed();
    let (dir, size) = (dir.to_path_buf(), bytes.len());
    match tokio::task::spawn_blocking(move || snapshot::write(&dir, &bytes)).await {
        Ok(Ok(())) => tracing::info!(
            position,
            bytes = size,
            encode_ms = encoded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "engine snapshot written"
        ),
        Ok(Err(e)) => tracing::error!(cause = %e, "writing the engine snapshot failed"),
        Err(e) => tracing::error!(cause = %e, "writing the engine snapshot failed"),
    }
}

/// Folds one logged event into the engine and the read models, in that order of truth: the read
/// models see the engine's view of the run in the same step. Returns what the engine raised.
pub fn fold(
    engine: &mut Engine,
    anomalies: &Anomalies,
    fleet: &Fleet,
    position: u64,
    event: &Event,
) -> Vec<Anomaly> {
    anomalies.apply(event);
    fleet.apply(event);
    let raised = engine.handle(position, event);
    if let Event::FixesRecorded {
        run_id: Some(run), ..
    }
    | Event::RunPlanned { run_id: run, .. }
    | Event::RunAmended { run_id: run, .. }
    | Event::RunDeparted { run_id: run, .. }
    | Event::VehicleSwapped { run_id: run, .. } = event
    {
        fleet.set_standing(run, engine.standing(run));
    }
    raised
}

/// Tells watchers what a logged event changed: the run's new view, and an anomaly's new
/// workflow state. (Raised anomalies are published by [`announce`], once, when first raised.)
fn publish(app: &App, hub: &Hub, anomalies: &Anomalies, fleet: &Fleet, event: &Event) {
    if let Event::AnomalyAcknowledged { anomaly_id, .. } | Event::AnomalyResolved { anomaly_id, .. } =
        event
        && let Some(entry) = anomalies.get(anomaly_id)
    {
        hub.anomaly(anomaly_to_pb(&entry));
    }
    let Some(run) = event.run_id() else { return };
    let view = || fleet.view(run, app.clock.now(), anomalies);
    match event {
        Event::AnomalyRaised { .. } => {}
        Event::FixesRecorded { .. } => hub.moved(run, |numbered| {
            fleet.moved_many(std::slice::from_ref(numbered), anomalies)
        }),
        _ => {
            if let Some(v) = view() {
                hub.run_changed(v);
            }
        }
    }
}

/// Tells dispatch of anomalies the engine just raised (read model, watchers, metrics, log), before
/// their record is durable (see the module's doc for why that is safe).
fn announce(app: &App, anomalies: &Anomalies, raised: &[Anomaly], hub: &Hub, fleet: &Fleet) {
    for a in raised {
        if !anomalies.raise_unrecorded(a) {
            continue;
        }
        if hub.watching()
            && let Some(entry) = anomalies.get(&a.id)
        {
            hub.anomaly(anomaly_to_pb(&entry));
            if let Some(view) = fleet.view(&a.run_id, app.clock.now(), anomalies) {
                hub.run_changed(view);
            }
        }
        app.metrics.anomaly(a.kind.as_str());
        tracing::warn!(kind = a.kind.as_str(), run = %a.run_id, severity = a.severity.as_str(), at = %crate::audit::export::rfc3339(a.at), summary = %a.summary, "anomaly raised");
    }
}

/// What one logged event raised, handed to the recorder.
struct Raised {
    mark: EngineMark,
    anomalies: Vec<Anomaly>,
}

/// Appends raised anomalies durably, in raise order within each run's stream and the runs'
/// streams concurrently (so a burst — a gateway outage tripping signal loss on a thousand
/// vehicles — costs a group commit or two, not one each); then makes each known to the command
/// side and to `anomalies` as recorded. Each anomaly is its own append, so a restart that raises
/// it again is recognised by its id as the same append and stores nothing twice. Ends when the
/// worker drops its sender and everything is recorded, or when the store closes.
async fn record(
    app: Arc<App>,
    anomalies: Arc<Anomalies>,
    mut records: mpsc::UnboundedReceiver<Raised>,
) {
    let mut batch = Vec::new();
    while records.recv_many(&mut batch, 4096).await > 0 {
        // Per run stream, its anomalies' ids and records, in raise order.
        let mut streams: Vec<(String, Vec<(String, Event)>)> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for r in batch.drain(..) {
            for a in r.anomalies {
                let id = a.id.clone();
                let event = Event::AnomalyRaised {
                    anomaly: a,
                    mark: Some(r.mark),
                };
                let stream = event.stream();
                let k = *index.entry(stream.clone()).or_insert_with(|| {
                    streams.push((stream, Vec::new()));
                    streams.len() - 1
                });
                streams[k].1.push((id, event));
            }
        }
        let app = &app;
        let appended =
            futures::future::join_all(streams.iter().map(|(stream, events)| async move {
                for (id, e) in events {
                    if !append_until_durable(app, stream, id, e).await {
                        return false;
                    }
                }
                true
            }))
            .await;
        if appended.contains(&false) {
            return;
        }
        for (id, e) in streams.iter().flat_map(|(_, events)| events) {
            app.learn(e).await;
            anomalies.recorded(id);
        }
    }
}

/// Appends the `AnomalyRaised` of anomaly `anomaly_id`, retrying until durable: an anomaly must
/// not be lost to a passing store error. False if the store closed.
async fn append_until_durable(app: &App, stream: &str, anomaly_id: &str, event: &Event) -> bool {
    let id = Uuid::new_v5(&ID_NAMESPACE, format!("anomaly/{anomaly_id}").as_bytes());
    let mut delay = Duration::from_millis(10);
    loop {
        match app
            .store
            .append(
                stream,
                ExpectedVersion::Any,
                vec![encode(event, id, "engine")],
            )
            .await
        {
            Ok(_) => return true,
            Err(cit_store::Error::Closed) => return false,
            Err(e) => {
                tracing::warn!(cause = %e, anomaly = %anomaly_id, "appending an anomaly failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
