//! Runs the pure detection engine live: a catch-up subscription to the whole log feeds it events
//! in order; what it raises is appended to the run's stream as `AnomalyRaised` with an id derived
//! from the anomaly's deterministic id, so a restart that sees an input again stores nothing
//! twice.
//!
//! Time moves only with the log: in scenario mode the driver logs ticks; in wall-clock mode a
//! one-second timer logs a `ClockTicked` whenever one of the engine's deadlines is due, and the
//! engine fires it when the tick comes back through the subscription. So the log alone decides
//! when every time rule fired, and replaying it (a restart, an audit's re-detection) is exact —
//! a fix that arrives late never reorders against a deadline differently on replay.
//!
//! The same fold ([`fold`]) feeds the read models live and rebuilds them for the audit's
//! `StateAt`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cit_domain::event::{Anomaly, EngineMark, Event};
use cit_engine::Engine;
use cit_store::{ExpectedVersion, SubscriptionFilter, SubscriptionMessage};
use futures::StreamExt;
use uuid::Uuid;

use crate::anomalies::Anomalies;
use crate::app::{App, ID_NAMESPACE, decode, encode};
use crate::clock::wall_now;
use crate::fleet::Fleet;
use crate::grpc::anomaly_to_pb;
use crate::snapshot;
use crate::watch::Hub;

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
        mut position,
        event_id: mut last_id,
    } = start;
    app.metrics.engine_resumed_from.set(position as i64);
    let mut sub = app
        .store
        .subscribe(SubscriptionFilter::All, (position > 0).then_some(position));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let wall = !app.clock.is_scenario();
    let mut flush = tokio::time::interval(hub.interval.max(Duration::from_millis(50)));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Without snapshots the timer still needs a period; its branch is disabled.
    let every = snapshots
        .as_ref()
        .map_or(Duration::from_secs(3600), |s| s.every)
        .max(Duration::from_secs(1));
    let mut snapshot_timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    snapshot_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snapshot_at = position;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = snapshot_timer.tick(), if snapshots.is_some() => {
                if let Some(s) = &snapshots && position > snapshot_at {
                    take_snapshot(&s.dir, &engine, &anomalies, &fleet, position, last_id).await;
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
                // The batch of positions: each run that moved since the last, at its latest.
                let moved = hub.take_moved();
                if !moved.is_empty() {
                    hub.runs_moved(moved.iter().filter_map(|r| fleet.moved(r, &anomalies)).collect());
                }
            }
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                match msg {
                    Ok(SubscriptionMessage::Event(r)) => {
                        position = r.position;
                        last_id = r.id;
                        if let Some(event) = decode(&r) {
                            let raised = fold(&mut engine, &anomalies, &fleet, r.position, &event);
                            let mark = EngineMark { position: r.position, now: engine.now() };
                            persist(&app, &anomalies, raised, mark, &hub, &fleet).await;
                            if hub.watching() {
                                publish(&app, &hub, &anomalies, &fleet, &event);
                            }
                        }
                        anomalies.engine_position.send_replace(position);
                        let head = *app.written.borrow();
                        app.metrics.engine_lag_events.set(head.saturating_sub(position) as i64);
                    }
                    Ok(SubscriptionMessage::CaughtUp { position: p }) => {
                        tracing::info!(position = p, runs = engine.run_count(), "detection engine caught up");
                        anomalies.engine_position.send_replace(p.max(position));
                    }
                    Err(e) => {
                        tracing::error!(cause = %e, "engine subscription failed");
                        break;
                    }
                }
            }
        }
    }
    if let Some(s) = &snapshots
        && position > snapshot_at
    {
        take_snapshot(&s.dir, &engine, &anomalies, &fleet, position, last_id).await;
    }
}

/// The engine from the snapshot in `dir` if it belongs to this log (the event at its position has
/// its id), with the read models loaded from it; else a fresh start. Called before citd serves, so
/// dispatch never answers from empty read models.
pub async fn resume(
    app: &App,
    anomalies: &Anomalies,
    fleet: &Fleet,
    dir: &std::path::Path,
) -> Start {
    let started = std::time::Instant::now();
    let dir = dir.to_path_buf();
    let snap = tokio::task::spawn_blocking(move || snapshot::read(&dir))
        .await
        .ok()
        .flatten();
    let Some(s) = snap else {
        return Start::default();
    };
    let here = app
        .store
        .read_all(s.position.saturating_sub(1), 1)
        .await
        .ok()
        .and_then(|mut v| v.pop());
    if here.as_ref().map(|e| (e.position, e.id)) != Some((s.position, s.event_id)) {
        tracing::warn!(
            position = s.position,
            "engine snapshot does not match this log; replaying it"
        );
        return Start::default();
    }
    fleet.import(s.fleet);
    anomalies.import(s.anomalies);
    anomalies.engine_position.send_replace(s.position);
    tracing::info!(
        position = s.position,
        runs = s.engine.run_count(),
        ms = started.elapsed().as_millis() as u64,
        "detection engine resumed from its snapshot"
    );
    Start {
        engine: s.engine,
        position: s.position,
        event_id: s.event_id,
    }
}

/// Encodes a snapshot in place (it borrows the live engine; a multi-threaded runtime is told
/// this thread blocks) and writes it on the blocking pool. A failure is logged: the next one may succeed,
/// and without one a restart replays the log.
async fn take_snapshot(
    dir: &std::path::Path,
    engine: &Engine,
    anomalies: &Anomalies,
    fleet: &Fleet,
    position: u64,
    event_id: Uuid,
) {
    let started = std::time::Instant::now();
    let snap = snapshot::Snapshot {
        format: snapshot::FORMAT,
        position,
        event_id,
        engine,
        fleet: fleet.export(),
        anomalies: anomalies.export(),
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
    | Event::RunDeparted { run_id: run, .. } = event
    {
        fleet.set_standing(run, engine.standing(run));
    }
    raised
}

/// Tells watchers what a logged event changed: the run's new view, and an anomaly's new
/// workflow state. (Raised anomalies are published by [`persist`], once, when first recorded.)
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
        Event::FixesRecorded { .. } => hub.moved(run, || fleet.moved(run, anomalies)),
        _ => {
            if let Some(v) = view() {
                hub.run_changed(v);
            }
        }
    }
}

async fn persist(
    app: &App,
    anomalies: &Anomalies,
    raised: Vec<Anomaly>,
    mark: EngineMark,
    hub: &Hub,
    fleet: &Fleet,
) {
    for a in raised {
        let event = Event::AnomalyRaised {
            anomaly: a.clone(),
            mark: Some(mark),
        };
        let id = Uuid::new_v5(&ID_NAMESPACE, format!("anomaly/{}", a.id).as_bytes());
        // Retried until durable: an anomaly must not be lost to a passing store error.
        let mut delay = Duration::from_millis(10);
        loop {
            match app
                .store
                .append(
                    &event.stream(),
                    ExpectedVersion::Any,
                    vec![encode(&event, id, "engine")],
                )
                .await
            {
                Ok(_) => break,
                Err(cit_store::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(cause = %e, anomaly = %a.id, "appending an anomaly failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        app.learn(&event).await;
        if anomalies.raise(&a) {
            if hub.watching()
                && let Some(entry) = anomalies.get(&a.id)
            {
                hub.anomaly(anomaly_to_pb(&entry));
                if let Some(view) = fleet.view(&a.run_id, app.clock.now(), anomalies) {
                    hub.run_changed(view);
                }
            }
            app.metrics.anomaly(a.kind.as_str());
            tracing::warn!(kind = a.kind.as_str(), run = %a.run_id, severity = a.severity.as_str(), at = a.at.0, summary = %a.summary, "anomaly raised");
        }
    }
}
