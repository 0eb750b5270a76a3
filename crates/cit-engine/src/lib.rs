//! The detection engine, pure: events and explicit time in, anomalies out (A1–A11 of DOMAIN.md,
//! with the rules and defaults of SCENARIOS.md). No I/O, no clock, no async: replaying the same
//! log through a fresh engine yields the same anomalies, byte for byte.
//!
//! - [`Engine::handle`] takes one logged event with its log position;
//! - [`Engine::advance_to`] moves time with no input (a scenario tick, or the wall clock in
//!   production), firing deadlines;
//! - time rules (signal loss, missed check-in, unplanned-stop judging, late arrival) are
//!   deadlines: a deadline strictly before an input's time fires before the input is applied; one
//!   equal to it fires after (an input exactly at its deadline is in time);
//! - anomaly ids are deterministic (kind, run, and the triggering input: log position, fix seq,
//!   or deadline), so a restart or replay never raises the same anomaly twice.
//!
//! Code map: [`frame`] local metric frame; [`route`] route R-tree (chunks of segments, with each
//! run's remembered neighbourhood); [`progress`] continuous progress along the route; [`zones`]
//! h3o-indexed checkpoints; `key` inline ids; [`run`] per-run rule state; `runs` the table of
//! runs keyed by their own ids.

pub mod frame;
mod key;
pub mod progress;
pub mod route;
mod run;
mod runs;
pub mod zones;

use std::collections::BTreeMap;

// foldhash instead of SipHash: ids are hashed several times per fix, and nothing iterates these
// maps (output order never depends on them).
use foldhash::{HashMap, HashSet};

use cit_domain::event::{Anomaly, Event};
use cit_domain::{CheckInCode, IncidentKind, LatLon, Millis};

use crate::key::Key;
use crate::route::Candidate;
use crate::run::RunState;
use crate::runs::Runs;
use crate::zones::ZoneIndex;

/// Where a vehicle was last seen (any fix, on a run or not).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct LastFix {
    pub t: Millis,
    pub position: LatLon,
    pub door_open: bool,
    pub ignition: bool,
    /// The unit's reported accuracy, metres (f32: it fits beside the flags, no wider record).
    pub accuracy_m: f32,
    pub speed_mps: f64,
    /// The two fixes before it (newest first), so a place can be judged on more than one
    /// possibly multipath-displaced fix. See [`LastFix::recent`].
    earlier: [Earlier; 2],
}

/// A fix before the last one, relative to it: 12 bytes instead of 32 (one such pair per vehicle
/// the engine has seen). An f32 offset in degrees is exact to well under a millimetre at the
/// distances one fix is from the next.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Earlier {
    /// Milliseconds before the last fix; `u32::MAX` when there is none.
    ms_before: u32,
    dlat: f32,
    dlon: f32,
}

impl Earlier {
    const NONE: Earlier = Earlier {
        ms_before: u32::MAX,
        dlat: 0.0,
        dlon: 0.0,
    };

    /// `(t, position)` relative to the fix at `(t0, p0)`.
    fn relative_to(t0: Millis, p0: LatLon, fix: Option<(Millis, LatLon)>) -> Earlier {
        match fix {
            Some((t, p)) => Earlier {
                ms_before: u32::try_from(t0.0 - t.0).unwrap_or(u32::MAX - 1),
                dlat: (p.lat - p0.lat) as f32,
                dlon: (p.lon - p0.lon) as f32,
            },
            None => Earlier::NONE,
        }
    }
}

impl LastFix {
    /// The last fix and the (up to) two before it, newest first, as (time, position).
    pub fn recent(&self) -> impl Iterator<Item = (Millis, LatLon)> + '_ {
        let earlier = self.earlier.iter().filter(|e| e.ms_before != u32::MAX);
        std::iter::once((self.t, self.position)).chain(earlier.map(|e| {
            let t = Millis(self.t.0 - i64::from(e.ms_before));
            let p = LatLon {
                lat: self.position.lat + f64::from(e.dlat),
                lon: self.position.lon + f64::from(e.dlon),
            };
            (t, p)
        }))
    }
}

/// A run's standing along its plan (see [`Engine::standing`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunStanding {
    pub progress_m: Option<f64>,
    pub route_length_m: f64,
    pub next_stop: Option<(String, LatLon)>,
}

/// The detection engine. See the module docs. Its whole state is serde data (indexes are rebuilt
/// from their source on load), so a host can snapshot it at a log position and resume from there.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    now: Millis,
    zones: ZoneIndex,
    /// Boxed states keyed by their own ids: the table keeps a pointer per slot, so its
    /// power-of-two headroom costs 8 bytes a run, not 700 (measured: 2.52 -> 1.97 KiB per
    /// active vehicle, for ~4 % of per-fix speed; BENCHMARKS.md).
    runs: Runs,
    last_fix: HashMap<Key, LastFix>,
    /// Runs with a time rule pending, in firing order: one entry per run, at or before its
    /// earliest due time (see `RunState::queued`).
    deadlines: BTreeMap<(Millis, u64), Key>,
    next_deadline: u64,
    /// Ids already raised (ours, or seen in the log), so nothing is raised twice.
    raised: HashSet<String>,
    /// Scratch space for route candidates, shared by all runs.
    #[serde(skip)]
    scratch: Vec<Candidate>,
}

/// Collects what one step raised, deduplicated by id. It holds the engine's set of raised ids
/// for the duration of the step (taken and given back), so rule code can push freely while the
/// engine's other state stays borrowable.
pub(crate) struct Out {
    raised: HashSet<String>,
    pub list: Vec<Anomaly>,
}

impl Out {
    pub(crate) fn push(&mut self, a: Anomaly) {
        if self.raised.insert(a.id.clone()) {
            self.list.push(a);
        }
    }
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine's clock: the latest time it has been given.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Number of runs the engine holds state for.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The earliest pending deadline, if any (possibly stale: firing it may raise nothing). A
    /// host that moves time with the wall clock logs a tick when this is due, so replaying the
    /// log reproduces exactly when time rules fired.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first_key_value().map(|((at, _), _)| *at)
    }

    /// Where a run stands along its plan, for dispatch: progress and route length (metres) and
    /// the next stop not yet reached, in order.
    pub fn standing(&self, run_id: &str) -> Option<RunStanding> {
        let r = self.runs.get(run_id.as_bytes())?;
        Some(RunStanding {
            progress_m: r.progress_m(),
            route_length_m: r.route_length_m(),
            next_stop: r.next_stop().map(|s| (s.stop_id.clone(), s.position)),
        })
    }

    /// Time passes with no input. `inclusive`: deadlines equal to `to` fire too (a tick is itself
    /// a timeline entry); otherwise only those strictly before it (an input at `to` follows).
    pub fn advance_to(&mut self, to: Millis, inclusive: bool) -> Vec<Anomaly> {
        let mut out = self.begin();
        self.fire(to, inclusive, &mut out);
        self.now = self.now.max(to);
        self.end(out)
    }

    fn begin(&mut self) -> Out {
        Out {
            raised: std::mem::take(&mut self.raised),
            list: Vec::new(),
        }
    }

    fn end(&mut self, out: Out) -> Vec<Anomaly> {
        self.raised = out.raised;
        out.list
    }

    /// Fires the deadlines due by `to` (strictly before it unless `inclusive`).
    fn fire(&mut self, to: Millis, inclusive: bool, out: &mut Out) {
        fire_deadlines(
            &mut self.deadlines,
            &mut self.next_deadline,
            &mut self.runs,
            &self.last_fix,
            &self.zones,
            to,
            inclusive,
            out,
        );
    }

    /// Applies one logged event at log `position`; returns the anomalies it raised (including
    /// deadlines that its time passed).
    pub fn handle(&mut self, position: u64, event: &Event) -> Vec<Anomaly> {
        let mut out = self.begin();
        self.step(position, event, &mut out);
        self.end(out)
    }

    fn step(&mut self, position: u64, event: &Event, out: &mut Out) {
        match event {
            Event::FixesRecorded {
                vehicle_id,
                run_id,
                fixes,
                ..
            } => {
                for fix in fixes {
                    self.fire(fix.t, false, out);
                    self.now = self.now.max(fix.t);
                    let mut seen = LastFix {
                        t: fix.t,
                        position: LatLon {
                            lat: fix.lat,
                            lon: fix.lon,
                        },
                        door_open: fix.door_open,
                        ignition: fix.ignition,
                        accuracy_m: fix.accuracy_m as f32,
                        speed_mps: fix.speed_mps,
                        earlier: [Earlier::NONE; 2],
                    };
                    // In place: no key clone on the hot path.
                    match self.last_fix.get_mut(vehicle_id.as_bytes()) {
                        Some(slot) => {
                            let (t, p) = (seen.t, seen.position);
                            seen.earlier = {
                                let mut before = slot.recent();
                                [before.next(), before.next()]
                                    .map(|fix| Earlier::relative_to(t, p, fix))
                            };
                            *slot = seen;
                        }
                        None => {
                            self.last_fix.insert(Key::from(vehicle_id.as_str()), seen);
                        }
                    }
                    // Only the run's current vehicle: after a swap (R8) the old one's fixes, even
                    // if ingest filed them under the run, belong to no run.
                    if let Some(run) = run_id
                        .as_ref()
                        .and_then(|r| self.runs.get_mut(r.as_bytes()))
                        .filter(|run| run.vehicle_id.as_bytes() == vehicle_id.as_bytes())
                    {
                        run.on_fix(fix, &mut self.scratch, out);
                        requeue_after_fix(&mut self.deadlines, &mut self.next_deadline, run);
                    }
                    self.fire(fix.t, true, out);
                }
                return;
            }
            Event::AnomalyRaised { anomaly, .. } => {
                out.raised.insert(anomaly.id.clone());
                return;
            }
            Event::ClockTicked { at } => {
                self.fire(*at, true, out);
                self.now = self.now.max(*at);
                return;
            }
            _ => {}
        }
        let t = event.time();
        self.fire(t, false, out);
        self.now = self.now.max(t);
        match event {
            Event::CheckpointRegistered { checkpoint, .. } => self.zones.insert(checkpoint.clone()),
            // An amendment is of a planned run, which holds no state yet: a new one replaces it.
            Event::RunPlanned {
                run_id,
                vehicle_id,
                escort_ids,
                route,
                stops,
                params,
                ..
            }
            | Event::RunAmended {
                run_id,
                vehicle_id,
                escort_ids,
                route,
                stops,
                params,
                ..
            } => {
                self.runs.insert(Box::new(RunState::new(
                    run_id, vehicle_id, escort_ids, route, stops, params,
                )));
            }
            Event::RunDeparted { run_id, at, .. } => {
                if let Some(run) = self.runs.get_mut(run_id.as_bytes()) {
                    run.on_departed(*at);
                    requeue(&mut self.deadlines, &mut self.next_deadline, run);
                }
            }
            Event::RunClosed { run_id, at } | Event::RunCancelled { run_id, at, .. } => {
                if let Some(run) = self.runs.get_mut(run_id.as_bytes()) {
                    run.on_closed(*at);
                }
            }
            Event::CheckedIn {
                run_id,
                person_id,
                code,
                at,
            } => {
                if let Some(run) = self.runs.get_mut(run_id.as_bytes()) {
                    run.on_checkin(person_id, *at);
                    requeue(&mut self.deadlines, &mut self.next_deadline, run);
                    if *code == CheckInCode::Duress {
                        let last = self.last_fix.get(run.vehicle_id.as_bytes()).copied();
                        run.raise_duress(position, person_id, *at, last, out);
                    }
                }
            }
            Event::IncidentReported {
                run_id,
                person_id,
                kind,
                note,
                rounds,
                spent,
                at,
            } => {
                if let Some(run) = self.runs.get_mut(run_id.as_bytes()) {
                    let last = self.last_fix.get(run.vehicle_id.as_bytes()).copied();
                    if kind.raises_crew_alarm() {
                        let report = run::Report {
                            person: person_id,
                            kind: *kind,
                            note,
                            rounds: *rounds,
                            spent: spent.as_ref(),
                        };
                        run.raise_crew_alarm(position, &report, *at, last, out);
                    }
                    match kind {
                        IncidentKind::PoliceCheck => run.on_police_check(
                            position,
                            person_id,
                            note,
                            *at,
                            last,
                            &self.zones,
                            out,
                        ),
                        IncidentKind::Roadblock => {
                            run.on_roadblock_report(position, person_id, note, *at, last, out)
                        }
                        other => run.on_report(*other, *at),
                    }
                }
            }
            Event::CashBoxesHandedOver {
                run_id,
                stop_id,
                at,
                ..
            } => {
                if let Some(run) = self.runs.get_mut(run_id.as_bytes()) {
                    let last = self.last_fix.get(run.vehicle_id.as_bytes()).copied();
                    run.on_handover(position, stop_id, *at, last, out);
                }
            }
            Event::WeaponReturned {
                run_id,
                serial,
                by,
                rounds_issued,
                rounds_returned,
                rounds_spent,
                at,
                ..
            } if rounds_issued.saturating_sub(*rounds_spent) != *rounds_returned => {
                if let Some(run) = self.runs.get(run_id.as_bytes()) {
                    let counts = run::RoundCounts {
                        issued: *rounds_issued,
                        spent: *rounds_spent,
                        returned: *rounds_returned,
                    };
                    run.raise_ammo_mismatch(position, serial, by, counts, *at, out);
                }
            }
            Event::AmmoCounted {
                lot,
                counted,
                expected,
                by,
                at,
            } if counted != expected => {
                out.push(inventory_mismatch(
                    position, lot, *counted, *expected, by, *at,
                ));
            }
            Event::VehicleSwapped {
                run_id,
                from_vehicle_id,
                to_vehicle_id,
                at,
                ..
            } => {
                let before = self.last_fix.get(from_vehicle_id.as_bytes()).copied();
                let replacement = self.last_fix.get(to_vehicle_id.as_bytes()).copied();
                if let Some(run) = self.runs.get_mut(run_id.as_bytes()) {
                    run.on_swapped(position, to_vehicle_id, *at, [before, replacement], out);
                    requeue(&mut self.deadlines, &mut self.next_deadline, run);
                }
            }
            Event::CommandRefused {
                rule,
                command,
                run_id: Some(run_id),
                weapons_out,
                at,
                ..
            } if rule == "R7" && command == "close_run" && !weapons_out.is_empty() => {
                if let Some(run) = self.runs.get(run_id.as_bytes()) {
                    run.raise_weapon_not_returned(position, weapons_out, *at, out);
                }
            }
            _ => {}
        }
        self.fire(t, true, out);
    }
}

/// A9: a lot's count in the armory differs from the books (rounds unaccounted for, or found).
/// An anomaly of no run: the armory's.
fn inventory_mismatch(
    position: u64,
    lot: &str,
    counted: u32,
    expected: u32,
    by: &str,
    at: Millis,
) -> Anomaly {
    let difference = i64::from(counted) - i64::from(expected);
    Anomaly {
        id: format!("inventory_mismatch:{lot}:p{position}"),
        kind: cit_domain::event::AnomalyKind::InventoryMismatch,
        run_id: String::new(),
        vehicle_id: String::new(),
        at,
        severity: if difference < 0 {
            cit_domain::event::Severity::High
        } else {
            cit_domain::event::Severity::Medium
        },
        summary: format!(
            "lot {lot} counted {counted} rounds by {by}; the books said {expected} ({difference:+})"
        ),
        position: None,
        evidence: serde_json::json!({"lot": lot, "counted": counted, "expected": expected,
                                     "difference": difference, "by": by}),
    }
}

/// Queues `run` at its earliest due time, unless its entry is already at or before it (an early
/// entry costs one wake-up that finds nothing due; re-queueing on every fix would cost a queue
/// removal and insert per fix, as each moves the signal-loss deadline).
fn requeue(deadlines: &mut BTreeMap<(Millis, u64), Key>, next: &mut u64, run: &mut RunState) {
    let Some(due) = run.next_due() else {
        return;
    };
    if run.queued.is_some_and(|(at, _)| at <= due) {
        return;
    }
    if let Some(entry) = run.queued.take() {
        deadlines.remove(&entry);
    }
    *next += 1;
    deadlines.insert((due, *next), run.key.clone());
    run.queued = Some((due, *next));
}

/// [`requeue`] after a fix, which can move only the run's fix dues (`RunState::fix_dues`): while
/// those are at or after its queue entry the entry still comes first, and the escorts' and stops'
/// due times (allocations of their own, a cache miss per fix) are not read.
fn requeue_after_fix(
    deadlines: &mut BTreeMap<(Millis, u64), Key>,
    next: &mut u64,
    run: &mut RunState,
) {
    let queued_first = run
        .queued
        .is_some_and(|(at, _)| run.fix_dues().all(|due| due >= at));
    if !queued_first {
        requeue(deadlines, next, run);
    }
}

#[allow(clippy::too_many_arguments)]
fn fire_deadlines(
    deadlines: &mut BTreeMap<(Millis, u64), Key>,
    next: &mut u64,
    runs: &mut Runs,
    last_fix: &HashMap<Key, LastFix>,
    zones: &ZoneIndex,
    to: Millis,
    inclusive: bool,
    out: &mut Out,
) {
    // Cheap exit on the hot path: nothing due.
    if deadlines
        .first_key_value()
        .is_none_or(|((at, _), _)| *at > to || (*at == to && !inclusive))
    {
        return;
    }
    while let Some(entry) = deadlines.first_entry() {
        let (at, _) = *entry.key();
        if at > to || (at == to && !inclusive) {
            break;
        }
        let (queued, key) = entry.remove_entry();
        if let Some(run) = runs.get_mut(key.as_bytes()) {
            if run.queued == Some(queued) {
                run.queued = None;
            }
            let last = last_fix.get(run.vehicle_id.as_bytes()).copied();
            run.on_due(at, last, zones, out);
            // Its next due time is later than `at`, but may still be before `to`.
            requeue(deadlines, next, run);
        }
    }
}
