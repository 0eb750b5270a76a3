//! The auditor's side: a run rebuilt from the log — its events in order with the custody events
//! it references, its hash chains checked, its anomalies re-detected by the current engine, the
//! run as dispatch saw it at any moment — and its exports ([`export`]) and picture ([`render`]).
//!
//! [`load`] is the only part that reads the store; everything after it is a pure function of
//! what was read, so an audit answer depends on the record alone.

pub mod export;
pub mod render;

use cit_domain::event::{Anomaly, EngineMark, Event, streams};
use cit_domain::{Fix, LatLon, Millis, PlannedStop};
use cit_engine::Engine;
use cit_proto::v1 as pb;
use cit_store::chain::{self, Break, Hash};
use cit_store::{Direction, RecordedEvent};

use crate::anomalies::Anomalies;
use crate::app::{App, decode};
use crate::engine_worker::fold;
use crate::error::AppError;
use crate::fleet::Fleet;

/// Page size when reading a stream back to a position.
const PAGE: usize = 1024;
/// A registered checkpoint counts as context of a run when it lies this close to the run's
/// route or track (plus its own radius): far enough that no stop the engine judged missed it.
const CHECKPOINT_MARGIN_M: f64 = 250.0;

/// Everything of the log one run's audit needs.
#[derive(Debug, Default)]
pub struct RunRecord {
    pub run_id: String,
    /// The run's own stream, in order.
    pub run: Vec<RecordedEvent>,
    /// Each custody stream (weapon, ammunition lot) the run references, whole: a chain is per
    /// stream, so verifying one means reading all of it.
    pub custody: Vec<Vec<RecordedEvent>>,
    /// What else the run's detection depended on, in log order: checkpoints registered near it,
    /// clock ticks and its vehicle's off-run fixes while it was open.
    pub context: Vec<RecordedEvent>,
}

/// Reads a run's record. `context`: also what re-detection and `StateAt` need.
pub async fn load(app: &App, run_id: &str, context: bool) -> Result<RunRecord, AppError> {
    let run = app
        .read_stream(&format!("{}{run_id}", streams::RUN))
        .await?;
    if run.is_empty() {
        return Err(cit_domain::InputError::NotFound {
            what: format!("run {run_id:?}"),
        }
        .into());
    }
    let (custody_streams, checkpoints) = app
        .with_world(|w| {
            let r = w.runs.get(run_id);
            (
                r.map(|r| r.custody.iter().cloned().collect::<Vec<_>>())
                    .unwrap_or_default(),
                w.checkpoints.values().cloned().collect::<Vec<_>>(),
            )
        })
        .await;
    let mut custody = Vec::new();
    for s in &custody_streams {
        custody.push(app.read_stream(s).await?);
    }
    let mut record = RunRecord {
        run_id: run_id.to_string(),
        run,
        custody,
        context: Vec::new(),
    };
    if !context {
        return Ok(record);
    }
    let (first, last) = record.span();
    let near = Extent::of(&record.decoded_run());
    let mut ctx = Vec::new();
    for c in checkpoints
        .iter()
        .filter(|c| near.contains(c.position, c.radius_m + CHECKPOINT_MARGIN_M))
    {
        let s = format!("{}{}", streams::CHECKPOINT, c.checkpoint_id);
        ctx.extend(app.read_stream(&s).await?);
    }
    ctx.extend(read_back_to(app, streams::CLOCK, first, false).await?);
    // Every vehicle the run has had (a replacement's drive to the breakdown site is in its own
    // stream, and A8 judged the swap on it), each from one event before the run: the engine's
    // "last seen" of a vehicle may come from it.
    for vehicle_id in vehicles_of(&record.decoded_run()) {
        let vehicle = format!("{}{vehicle_id}", streams::VEHICLE);
        ctx.extend(read_back_to(app, &vehicle, first, true).await?);
    }
    ctx.retain(|e| e.position <= last);
    ctx.sort_by_key(|e| e.position);
    record.context = ctx;
    Ok(record)
}

/// The vehicles a run has had, in order: the planned one, then each replacement (R8).
pub fn vehicles_of(run: &[Event]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in run {
        let v = match e {
            Event::RunPlanned { vehicle_id, .. } | Event::RunAmended { vehicle_id, .. } => {
                vehicle_id
            }
            Event::VehicleSwapped { to_vehicle_id, .. } => to_vehicle_id,
            _ => continue,
        };
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

/// The events of `stream` at or after log position `min` (and the one just before it when
/// `one_before`), read from the end so a long stream costs only its tail.
async fn read_back_to(
    app: &App,
    stream: &str,
    min: u64,
    one_before: bool,
) -> Result<Vec<RecordedEvent>, AppError> {
    let mut out = Vec::new();
    let mut from = u64::MAX;
    'pages: loop {
        let page = app
            .store
            .read_stream(stream, from, Direction::Backwards, PAGE)
            .await?;
        let Some(oldest) = page.last().map(|e| e.version) else {
            break;
        };
        for e in page {
            let before = e.position < min;
            if !before || one_before {
                out.push(e);
            }
            if before {
                break 'pages;
            }
        }
        if oldest == 0 {
            break;
        }
        from = oldest - 1;
    }
    out.reverse();
    Ok(out)
}

impl RunRecord {
    /// First and last log position of the run: its stream and its custody events.
    fn span(&self) -> (u64, u64) {
        let first = self.run.first().map(|e| e.position).unwrap_or(0);
        let last = self
            .run
            .iter()
            .chain(self.custody_events())
            .map(|e| e.position)
            .max()
            .unwrap_or(0);
        (first, last)
    }

    fn decoded_run(&self) -> Vec<Event> {
        self.run.iter().filter_map(decode).collect()
    }

    /// Custody events that concern this run (issue, hand-over, return on it) and the
    /// registrations of what was issued, in log order.
    pub fn custody_events(&self) -> impl Iterator<Item = &RecordedEvent> {
        self.custody.iter().flatten().filter(|e| {
            decode(e).is_some_and(|ev| match &ev {
                Event::WeaponIssued { run_id, .. }
                | Event::WeaponHandedOver { run_id, .. }
                | Event::WeaponReturned { run_id, .. } => *run_id == self.run_id,
                Event::WeaponRegistered { .. } | Event::AmmoLotRegistered { .. } => true,
                _ => false,
            })
        })
    }

    /// The run's events in log order, with its custody events when asked.
    pub fn timeline(&self, include_custody: bool) -> Vec<&RecordedEvent> {
        let mut out: Vec<&RecordedEvent> = self.run.iter().collect();
        if include_custody {
            out.extend(self.custody_events());
            out.sort_by_key(|e| e.position);
        }
        out
    }

    /// Every input of the run's detection, decoded, in log order (needs `load(.., true)`).
    pub fn inputs(&self) -> Vec<(u64, Event)> {
        let mut all: Vec<&RecordedEvent> = self.timeline(true);
        all.extend(&self.context);
        all.sort_by_key(|e| e.position);
        all.dedup_by_key(|e| e.position);
        all.into_iter()
            .filter_map(|e| decode(e).map(|ev| (e.position, ev)))
            .collect()
    }
}

/// The outcome of checking a run's chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub checked: u64,
    /// Head hash of the run's own stream.
    pub head: Hash,
    pub first_break: Option<Break>,
}

/// Checks the run's stream and every custody stream it references; stops at the first break.
pub fn verify(record: &RunRecord) -> ChainReport {
    let own = chain::verify(&record.run);
    let mut report = ChainReport {
        checked: own.checked,
        head: own.head,
        first_break: own.first_break,
    };
    for s in &record.custody {
        if report.first_break.is_some() {
            break;
        }
        let v = chain::verify(s);
        report.checked += v.checked;
        report.first_break = v.first_break;
    }
    report
}

/// What re-detection found.
#[derive(Debug, Clone, Default)]
pub struct Redetection {
    pub recorded: Vec<Anomaly>,
    pub redetected: Vec<Anomaly>,
    pub differences: Vec<String>,
}

impl Redetection {
    pub fn reproduced(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Replays the run's inputs through a fresh engine and compares with the recorded anomalies,
/// field by field.
pub fn redetect(record: &RunRecord) -> Redetection {
    let inputs = record.inputs();
    let mut recorded = Vec::new();
    // Where the live engine stood when it raised each recorded anomaly: replayed as clock moves
    // between the run's own inputs (see `EngineMark`).
    let mut marks: Vec<EngineMark> = Vec::new();
    for (_, event) in &inputs {
        if let Event::AnomalyRaised { anomaly, mark } = event
            && anomaly.run_id == record.run_id
        {
            recorded.push(anomaly.clone());
            marks.extend(*mark);
        }
    }
    let unmarked = marks.len() < recorded.len();
    marks.sort_by_key(|m| m.position);
    let mut marks = marks.into_iter().peekable();
    let mut engine = Engine::new();
    let mut redetected = Vec::new();
    let keep = |raised: Vec<Anomaly>, out: &mut Vec<Anomaly>| {
        out.extend(
            raised
                .into_iter()
                .filter(|a| a.run_id == record.run_id)
                .map(as_stored),
        );
    };
    for (position, event) in inputs {
        // What was recorded is compared, never fed: the engine must find it by itself.
        if matches!(event, Event::AnomalyRaised { .. }) {
            continue;
        }
        while let Some(m) = marks.next_if(|m| m.position < position) {
            keep(engine.advance_to(m.now, true), &mut redetected);
        }
        keep(engine.handle(position, &event), &mut redetected);
    }
    for m in marks {
        keep(engine.advance_to(m.now, true), &mut redetected);
    }
    // Records without marks (older events): a run's deadline may have fired live on another
    // run's input, which is not among these inputs; after the last input, time moves to the
    // latest recorded anomaly, which the live engine had passed, so every deadline up to it fires.
    // With marks this is already done, and going further would run ahead of the record.
    if unmarked && let Some(until) = recorded.iter().map(|a| a.at).max() {
        keep(engine.advance_to(until, true), &mut redetected);
    }
    let mut differences = Vec::new();
    for r in &recorded {
        match redetected.iter().find(|a| a.id == r.id) {
            None => differences.push(format!(
                "recorded {} ({} at {}) is not re-detected",
                r.id,
                r.kind.as_str(),
                r.at.0
            )),
            Some(a) if a != r => differences.push(format!(
                "{} is re-detected differently: recorded {}, now {}",
                r.id,
                serde_json::to_string(r).unwrap_or_default(),
                serde_json::to_string(a).unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    for a in redetected
        .iter()
        .filter(|a| !recorded.iter().any(|r| r.id == a.id))
    {
        differences.push(format!(
            "re-detected {} ({} at {}) was never recorded",
            a.id,
            a.kind.as_str(),
            a.at.0
        ));
    }
    Redetection {
        recorded,
        redetected,
        differences,
    }
}

/// An anomaly as it reads back from the log: stored as JSON, whose decimal floats parse back to
/// the nearest double, not always to the same bits. Compared in that form, a re-detection matches
/// exactly what storing it would have recorded.
fn as_stored(a: Anomaly) -> Anomaly {
    serde_json::to_vec(&a)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(a)
}

/// The run as dispatch saw it at `at` (inclusive): every input with a time up to `at` folded in
/// log order through the same fold that feeds dispatch live, with the anomalies recorded by then
/// and their workflow.
pub fn state_at(record: &RunRecord, at: Millis) -> Option<pb::RunView> {
    let mut engine = Engine::new();
    let anomalies = Anomalies::default();
    let fleet = Fleet::default();
    for (position, event) in record.inputs() {
        let event = match event {
            Event::FixesRecorded {
                vehicle_id,
                run_id,
                fixes,
                epoch,
            } => {
                let fixes: Vec<Fix> = fixes.into_iter().filter(|f| f.t <= at).collect();
                if fixes.is_empty() {
                    continue;
                }
                Event::FixesRecorded {
                    vehicle_id,
                    run_id,
                    fixes,
                    epoch,
                }
            }
            e if e.time() > at => continue,
            e => e,
        };
        fold(&mut engine, &anomalies, &fleet, position, &event);
    }
    fleet.view(&record.run_id, at, &anomalies)
}

/// One vehicle's part of a run's track: the whole run unless a swap (R8) moved it to a
/// replacement, after which the replacement's fixes are a track of their own.
#[derive(Debug, Clone, Default)]
pub struct Track {
    pub vehicle_id: String,
    pub fixes: Vec<Fix>,
}

/// What exports and pictures show of a run, read off its own stream.
#[derive(Debug, Clone, Default)]
pub struct RunDigest {
    pub run_id: String,
    /// The run's vehicles in order, as one label (`V-101 → V-102` after a swap).
    pub vehicle_id: String,
    pub route: Vec<LatLon>,
    pub stops: Vec<PlannedStop>,
    pub corridor_m: f64,
    pub speed_limit_kmh: f64,
    /// The fixes the run recorded, one track per vehicle, in order.
    pub tracks: Vec<Track>,
    pub anomalies: Vec<Anomaly>,
    pub planned_at: Option<Millis>,
    pub departed_at: Option<Millis>,
    pub closed_at: Option<Millis>,
}

impl RunDigest {
    pub fn of(record: &RunRecord) -> RunDigest {
        let mut d = RunDigest {
            run_id: record.run_id.clone(),
            ..RunDigest::default()
        };
        for e in record.decoded_run() {
            if let Event::RunPlanned { at, .. } = &e {
                d.planned_at = Some(*at);
            }
            match e {
                // An amendment is the plan again: the digest shows the latest.
                Event::RunPlanned {
                    vehicle_id,
                    route,
                    stops,
                    params,
                    ..
                }
                | Event::RunAmended {
                    vehicle_id,
                    route,
                    stops,
                    params,
                    ..
                } => {
                    d.vehicle_id = vehicle_id;
                    d.route = route;
                    d.stops = stops;
                    d.corridor_m = params.corridor_m;
                    d.speed_limit_kmh = params.speed_limit_kmh;
                }
                Event::RunDeparted { at, .. } => d.departed_at = Some(at),
                Event::RunClosed { at, .. } => d.closed_at = Some(at),
                Event::VehicleSwapped { to_vehicle_id, .. } => {
                    d.vehicle_id = format!("{} → {to_vehicle_id}", d.vehicle_id);
                }
                Event::FixesRecorded {
                    vehicle_id, fixes, ..
                } => match d.tracks.last_mut() {
                    Some(t) if t.vehicle_id == vehicle_id => t.fixes.extend(fixes),
                    _ => d.tracks.push(Track { vehicle_id, fixes }),
                },
                Event::AnomalyRaised { anomaly, .. } => d.anomalies.push(anomaly),
                _ => {}
            }
        }
        d
    }

    /// Every fix of the run, in order, whichever vehicle sent it.
    pub fn fixes(&self) -> impl Iterator<Item = &Fix> {
        self.tracks.iter().flat_map(|t| &t.fixes)
    }

    pub fn fix_count(&self) -> usize {
        self.tracks.iter().map(|t| t.fixes.len()).sum()
    }
}

/// A lat/lon box around a run's route, stops and track.
#[derive(Debug, Clone, Copy)]
struct Extent {
    south: f64,
    west: f64,
    north: f64,
    east: f64,
}

impl Extent {
    fn of(events: &[Event]) -> Extent {
        let mut x = Extent {
            south: f64::INFINITY,
            west: f64::INFINITY,
            north: f64::NEG_INFINITY,
            east: f64::NEG_INFINITY,
        };
        let mut add = |p: LatLon| {
            x.south = x.south.min(p.lat);
            x.north = x.north.max(p.lat);
            x.west = x.west.min(p.lon);
            x.east = x.east.max(p.lon);
        };
        for e in events {
            match e {
                Event::RunPlanned { route, stops, .. } | Event::RunAmended { route, stops, .. } => {
                    route.iter().copied().for_each(&mut add);
                    stops.iter().for_each(|s| add(s.position));
                }
                Event::FixesRecorded { fixes, .. } => fixes.iter().for_each(|f| {
                    add(LatLon {
                        lat: f.lat,
                        lon: f.lon,
                    })
                }),
                _ => {}
            }
        }
        x
    }

    /// Whether `p` lies within `margin_m` of the box.
    fn contains(&self, p: LatLon, margin_m: f64) -> bool {
        let dlat = margin_m / 111_320.0;
        let dlon = dlat / p.lat.to_radians().cos().max(0.01);
        p.lat >= self.south - dlat
            && p.lat <= self.north + dlat
            && p.lon >= self.west - dlon
            && p.lon <= self.east + dlon
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cit_domain::DetectionParams;

    fn planned(run: &str, vehicle: &str) -> Event {
        Event::RunPlanned {
            run_id: run.into(),
            vehicle_id: vehicle.into(),
            driver_id: "D".into(),
            escort_ids: vec!["E".into()],
            route: vec![
                LatLon {
                    lat: 57.70,
                    lon: 11.96,
                },
                LatLon {
                    lat: 57.71,
                    lon: 11.97,
                },
            ],
            stops: vec![],
            params: DetectionParams::default(),
            cash_boxes: vec![],
            at: Millis(0),
        }
    }

    fn fixes(run: &str, vehicle: &str, t: i64) -> Event {
        Event::FixesRecorded {
            vehicle_id: vehicle.into(),
            epoch: None,
            run_id: Some(run.into()),
            fixes: vec![Fix {
                seq: t as u64,
                t: Millis(t),
                lat: 57.70,
                lon: 11.96,
                speed_mps: 10.0,
                heading_deg: 30.0,
                accuracy_m: 5.0,
                ignition: true,
                door_open: false,
            }],
        }
    }

    fn recorded(position: u64, version: u64, e: &Event) -> RecordedEvent {
        let n = crate::app::encode(e, uuid::Uuid::from_u128(position as u128), "test");
        RecordedEvent {
            position,
            stream: e.stream(),
            version,
            id: n.id,
            event_type: n.event_type,
            data: n.data,
            metadata: n.metadata,
            created_ms: 0,
            chain: chain::GENESIS,
        }
    }

    fn departed(run: &str, vehicle: &str) -> Event {
        Event::RunDeparted {
            run_id: run.into(),
            vehicle_id: vehicle.into(),
            at: Millis(0),
        }
    }

    /// Runs `log` through a live engine the way citd does (marks included) and returns run A's
    /// record: its own events with the anomalies appended after the input that raised them.
    fn live_record_of_a(log: &[Event], with_marks: bool) -> (RunRecord, Vec<Anomaly>) {
        let mut live = Engine::new();
        let mut stream = Vec::new();
        let mut raised_a = Vec::new();
        let mut position = 0;
        for e in log {
            position += 1;
            let raised = live.handle(position, e);
            if e.run_id() == Some("A") {
                stream.push(recorded(position, stream.len() as u64, e));
            }
            let mark = EngineMark {
                position,
                now: live.now(),
            };
            for a in raised.into_iter().filter(|a| a.run_id == "A") {
                position += 1;
                let raised = Event::AnomalyRaised {
                    anomaly: a.clone(),
                    mark: with_marks.then_some(mark),
                };
                stream.push(recorded(position, stream.len() as u64, &raised));
                raised_a.push(a);
            }
        }
        let record = RunRecord {
            run_id: "A".into(),
            run: stream,
            ..RunRecord::default()
        };
        (record, raised_a)
    }

    #[test]
    fn a_deadline_fired_by_another_runs_input_is_re_detected() {
        // Live: run A's signal-loss deadline fires while handling run B's fix.
        let log = [
            planned("A", "VA"),
            departed("A", "VA"),
            fixes("A", "VA", 1_000),
            planned("B", "VB"),
            fixes("B", "VB", 100_000),
        ];
        for with_marks in [false, true] {
            let (record, live) = live_record_of_a(&log, with_marks);
            assert!(!live.is_empty(), "A's signal loss, raised on B's fix");
            let r = redetect(&record);
            assert!(r.reproduced(), "marks {with_marks}: {:?}", r.differences);
            assert_eq!(r.redetected.len(), live.len());
        }
    }

    #[test]
    fn deadlines_fired_before_late_fixes_are_re_detected_from_the_marks() {
        // B's input moves the clock past A's deadlines before A's (buffered, late) fixes arrive:
        // live raises them with no fix seen; a replay of A's inputs alone would apply the late
        // fixes first. The marks put the clock where live had it.
        let log = [
            planned("A", "VA"),
            departed("A", "VA"),
            planned("B", "VB"),
            fixes("B", "VB", 1_000_000),
            fixes("A", "VA", 1_000),
            fixes("A", "VA", 2_000),
        ];
        let (record, live) = live_record_of_a(&log, true);
        assert!(!live.is_empty());
        let r = redetect(&record);
        assert!(r.reproduced(), "{:?}", r.differences);
        let (unmarked, _) = live_record_of_a(&log, false);
        assert!(
            !redetect(&unmarked).reproduced(),
            "without marks the replay differs: the marks are what makes it exact"
        );
    }
}
