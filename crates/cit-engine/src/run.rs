//! Per-run rule state: each rule of SCENARIOS.md as a small state machine fed by the run's fixes,
//! check-ins, reports and handovers, raising anomalies into [`Out`] and scheduling deadlines.

use std::ops::Deref;
use std::sync::LazyLock;

use cit_domain::event::{Anomaly, AnomalyKind, Severity};
use cit_domain::{DetectionParams, Fix, IncidentKind, LatLon, Millis, PlannedStop};
use serde_json::json;

use crate::frame::{dist, haversine_m};
use crate::key::Key;
use crate::progress::{ProgressTracker, ProgressUpdate};
use crate::route::{Candidate, RouteIndex};
use crate::zones::ZoneIndex;
use crate::{LastFix, Out};

/// A time rule waiting for its moment. `generation` invalidates deadlines that were re-armed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Deadline {
    SignalLoss {
        run: Key,
        generation: u64,
    },
    Checkin {
        run: Key,
        escort: usize,
        generation: u64,
    },
    StopJudge {
        run: Key,
        generation: u64,
    },
    LateArrival {
        run: Key,
        stop: usize,
    },
}

impl Deadline {
    pub fn run(&self) -> &Key {
        match self {
            Deadline::SignalLoss { run, .. }
            | Deadline::Checkin { run, .. }
            | Deadline::StopJudge { run, .. }
            | Deadline::LateArrival { run, .. } => run,
        }
    }
}

/// A run's detection parameters. Most runs use the defaults, which then cost a null pointer per
/// run instead of a copy (memory per active vehicle, BENCHMARKS.md).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Params(Option<Box<DetectionParams>>);

/// How many times its reported accuracy a fix may lie beyond a radius and still count as inside
/// it (at most the radius again): a standing vehicle's fixes wander with the receiver's error.
const RADIUS_ACCURACIES: f64 = 2.0;

/// `radius_m` widened for a fix's reported accuracy (see [`RADIUS_ACCURACIES`]).
fn widened(radius_m: f64, accuracy_m: f64) -> f64 {
    radius_m + (RADIUS_ACCURACIES * accuracy_m).clamp(0.0, radius_m)
}
/// Far fixes in a row, agreeing with each other, that end a stop.
const STOP_END_FIXES: u32 = 3;

static DEFAULT_PARAMS: LazyLock<DetectionParams> = LazyLock::new(DetectionParams::default);

impl Params {
    fn new(params: &DetectionParams) -> Self {
        Params((*params != *DEFAULT_PARAMS).then(|| Box::new(params.clone())))
    }
}

impl Deref for Params {
    type Target = DetectionParams;

    fn deref(&self) -> &DetectionParams {
        self.0.as_deref().unwrap_or(&DEFAULT_PARAMS)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Status {
    Planned,
    Active,
    Closed,
}

/// A1: the vehicle standing still (speed below `stop_speed_mps`, within `stop_radius_m` of the
/// episode's mean position, widened by the fixes' reported accuracy). A single fix far off
/// (multipath) is set aside; three in a row that agree with each other end it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StopEpisode {
    start: Millis,
    sum: [f64; 2],
    n: u32,
    /// The far fixes set aside since the last fix within the stop, if any.
    #[serde(default)]
    far: Option<FarFixes>,
    door_opened: bool,
    engine_off: bool,
    generation: u64,
}

/// Far fixes in a row during a stop: where the first lay, and how many agree with it (lie within
/// the stop's radius of it) and the sum of their positions.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct FarFixes {
    first: [f64; 2],
    n: u32,
    sum: [f64; 2],
}

impl StopEpisode {
    fn mean(&self) -> [f64; 2] {
        [self.sum[0] / self.n as f64, self.sum[1] / self.n as f64]
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Escort {
    id: String,
    last_checkin: Option<Millis>,
    generation: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct StopVisit {
    /// Inside the radius since this fix (not yet confirmed as an arrival).
    inside_since: Option<Millis>,
    arrived: Option<Millis>,
    /// A stop the vehicle is inside at departure (its first fix) counts only if it is first in
    /// order, or, for a later stop at the same place (the return to the depot), once the
    /// vehicle has been farther than 2 x its radius.
    armed: bool,
    skip_reported: bool,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    pub run_id: String,
    /// The run's id as the engine's maps and deadlines key it.
    key: Key,
    pub vehicle_id: String,
    params: Params,
    stops: Vec<PlannedStop>,
    stops_local: Vec<[f64; 2]>,
    /// A6: each escort with their latest check-in and its deadline's generation (one
    /// allocation for all three).
    escorts: Vec<Escort>,
    route: RouteIndex,
    status: Status,
    departed_at: Option<Millis>,
    // A5 signal loss: the current deadline lives here; the queue holds at most one entry per
    // run (`signal_queued`), re-armed when it comes due early, so a fix costs no queue insert.
    last_fix_t: Option<Millis>,
    signal_gen: u64,
    signal_deadline: Option<Millis>,
    signal_queued: bool,
    last_route_distance: f64,
    // A1 stops
    episode: Option<StopEpisode>,
    episode_gen: u64,
    reports: Vec<(Millis, IncidentKind)>,
    // A2 route deviation
    streak: u32,
    streak_start: Millis,
    streak_max_m: f64,
    deviated: bool,
    /// Fixes in a row back within 0.7 x corridor while deviated: two clear the deviation, so
    /// one multipath fix landing near the route does not split one detour into two.
    clearing: u32,
    // A4 roadblock
    progress: ProgressTracker,
    last_roadblock: Option<Millis>,
    // A7 stops
    visits: Vec<StopVisit>,
    visits_started: bool,
    // A10 overspeed
    over_since: Option<Millis>,
    over_raised: bool,
    over_max_mps: f64,
}

/// Severity rises one step, capped at critical.
fn escalate(s: Severity) -> Severity {
    match s {
        Severity::Low => Severity::Medium,
        Severity::Medium => Severity::High,
        Severity::High | Severity::Critical => Severity::Critical,
    }
}

impl RunState {
    pub fn new(
        run_id: &str,
        vehicle_id: &str,
        escorts: &[String],
        route: &[LatLon],
        stops: &[PlannedStop],
        params: &DetectionParams,
    ) -> Self {
        let route = RouteIndex::new(route);
        RunState {
            run_id: run_id.to_string(),
            key: Key::from(run_id),
            vehicle_id: vehicle_id.to_string(),
            params: Params::new(params),
            stops_local: stops.iter().map(|s| route.to_local(s.position)).collect(),
            stops: stops.to_vec(),
            escorts: escorts
                .iter()
                .map(|id| Escort {
                    id: id.clone(),
                    last_checkin: None,
                    generation: 0,
                })
                .collect(),
            route,
            status: Status::Planned,
            departed_at: None,
            last_fix_t: None,
            signal_gen: 0,
            signal_deadline: None,
            signal_queued: false,
            last_route_distance: 0.0,
            episode: None,
            episode_gen: 0,
            reports: Vec::new(),
            streak: 0,
            streak_start: Millis(0),
            streak_max_m: 0.0,
            deviated: false,
            clearing: 0,
            progress: ProgressTracker::default(),
            last_roadblock: None,
            visits_started: false,
            visits: stops
                .iter()
                .enumerate()
                .map(|_| StopVisit::default())
                .collect(),
            over_since: None,
            over_raised: false,
            over_max_mps: 0.0,
        }
    }

    pub fn progress_m(&self) -> Option<f64> {
        self.progress.s
    }

    pub fn route_length_m(&self) -> f64 {
        self.route.length_m
    }

    /// The first stop, in order, not reached yet.
    pub fn next_stop(&self) -> Option<&PlannedStop> {
        self.stops
            .iter()
            .zip(&self.visits)
            .find(|(_, v)| v.arrived.is_none())
            .map(|(s, _)| s)
    }

    #[allow(clippy::too_many_arguments)]
    fn anomaly(
        &self,
        kind: AnomalyKind,
        discriminator: String,
        at: Millis,
        severity: Severity,
        summary: String,
        position: Option<LatLon>,
        evidence: serde_json::Value,
    ) -> Anomaly {
        Anomaly {
            id: format!("{}:{}:{}", kind.as_str(), self.run_id, discriminator),
            kind,
            run_id: self.run_id.clone(),
            vehicle_id: self.vehicle_id.clone(),
            at,
            severity,
            summary,
            position,
            evidence,
        }
    }

    pub fn on_departed(&mut self, at: Millis, sched: &mut impl FnMut(Deadline, Millis)) {
        if self.status != Status::Planned {
            return;
        }
        self.status = Status::Active;
        self.departed_at = Some(at);
        self.arm_signal(at.plus_secs(self.params.max_gap_s), sched);
        for i in 0..self.escorts.len() {
            self.arm_checkin(i, at, sched);
        }
        for (i, s) in self.stops.iter().enumerate() {
            if let Some(by) = s.arrive_by {
                sched(
                    Deadline::LateArrival {
                        run: self.key.clone(),
                        stop: i,
                    },
                    by.plus_secs(self.params.late_grace_s),
                );
            }
        }
    }

    /// Sets the signal-loss deadline; queues an entry only when none is pending (a pending one
    /// that comes due before the deadline re-queues itself, see `on_deadline`).
    fn arm_signal(&mut self, deadline: Millis, sched: &mut impl FnMut(Deadline, Millis)) {
        if self.signal_deadline.is_none() {
            // A new gap (after departure or after the last one fired).
            self.signal_gen += 1;
        }
        self.signal_deadline = Some(deadline);
        if !self.signal_queued {
            self.signal_queued = true;
            sched(
                Deadline::SignalLoss {
                    run: self.key.clone(),
                    generation: self.signal_gen,
                },
                deadline,
            );
        }
    }

    fn arm_checkin(&mut self, i: usize, now: Millis, sched: &mut impl FnMut(Deadline, Millis)) {
        let Some(departed) = self.departed_at else {
            return;
        };
        let from = self.escorts[i]
            .last_checkin
            .map_or(departed, |c| c.max(departed))
            .max(now.min(departed));
        self.escorts[i].generation += 1;
        sched(
            Deadline::Checkin {
                run: self.key.clone(),
                escort: i,
                generation: self.escorts[i].generation,
            },
            from.plus_secs(self.params.checkin_interval_s + self.params.checkin_grace_s),
        );
    }

    pub fn on_closed(&mut self, _at: Millis) {
        // Pending deadlines see the status and do nothing.
        self.status = Status::Closed;
        self.episode = None;
    }

    pub fn on_checkin(
        &mut self,
        person: &str,
        at: Millis,
        sched: &mut impl FnMut(Deadline, Millis),
    ) {
        if let Some(i) = self.escorts.iter().position(|e| e.id == person) {
            let last = &mut self.escorts[i].last_checkin;
            *last = Some(last.map_or(at, |c| c.max(at)));
            if self.status == Status::Active {
                self.arm_checkin(i, at, sched);
            }
        }
    }

    pub fn on_report(&mut self, kind: IncidentKind, at: Millis) {
        self.reports.push((at, kind));
    }

    /// A6: duress raises a silent critical alarm, for a run in any state.
    pub fn raise_duress(
        &self,
        position: u64,
        person: &str,
        at: Millis,
        last: Option<LastFix>,
        out: &mut Out,
    ) {
        out.push(self.anomaly(
            AnomalyKind::Duress,
            format!("p{position}"),
            at,
            Severity::Critical,
            format!("DURESS code from {person}; silent alarm, not shown to the crew"),
            last.map(|l| l.position),
            json!({"person": person, "last_fix_at": last.map(|l| l.t.0)}),
        ));
    }

    /// A3: a police check where no checkpoint is registered (radius + 50 m, valid now), located
    /// at the vehicle's last fix.
    #[allow(clippy::too_many_arguments)]
    pub fn on_police_check(
        &mut self,
        position: u64,
        person: &str,
        note: &str,
        at: Millis,
        last: Option<LastFix>,
        zones: &ZoneIndex,
        out: &mut Out,
    ) {
        let genuine = last.and_then(|l| zones.containing(l.position, 50.0, at, at).next());
        if genuine.is_some() {
            // A registered checkpoint: the crew follows procedure; nothing to raise.
            return;
        }
        let door = last.is_some_and(|l| l.door_open);
        let mut severity = Severity::High;
        if door || last.is_none() {
            severity = escalate(severity);
        }
        out.push(self.anomaly(
            AnomalyKind::SuspectedFakeCheckpoint,
            format!("p{position}"),
            at,
            severity,
            match last {
                Some(_) if door => format!(
                    "police check reported by {person} where no checkpoint is registered, with a door open"
                ),
                Some(_) => format!(
                    "police check reported by {person} where no checkpoint is registered"
                ),
                None => format!("police check reported by {person}; vehicle position unknown"),
            },
            last.map(|l| l.position),
            json!({"person": person, "note": note, "door_open": door,
                   "margin_m": 50.0, "last_fix_at": last.map(|l| l.t.0)}),
        ));
    }

    /// A4: a reported roadblock, for a run in any state.
    pub fn on_roadblock_report(
        &mut self,
        position: u64,
        person: &str,
        note: &str,
        at: Millis,
        last: Option<LastFix>,
        out: &mut Out,
    ) {
        self.reports.push((at, IncidentKind::Roadblock));
        self.last_roadblock = Some(at);
        out.push(self.anomaly(
            AnomalyKind::Roadblock,
            format!("p{position}"),
            at,
            Severity::High,
            format!("roadblock reported by {person}"),
            last.map(|l| l.position),
            json!({"person": person, "note": note, "source": "report"}),
        ));
    }

    /// A8: a handover while the vehicle's last fix is outside the stop's radius. Judged on the
    /// last three fixes of the last minute: inside if any of them is, so one multipath fix
    /// cannot move a handover out of place (a vehicle really elsewhere has all three outside).
    pub fn on_handover(
        &mut self,
        position: u64,
        stop_id: &str,
        at: Millis,
        last: Option<LastFix>,
        out: &mut Out,
    ) {
        let Some(stop) = self.stops.iter().find(|s| s.stop_id == stop_id) else {
            return;
        };
        let distance = last.map(|l| haversine_m(l.position, stop.position));
        // Any of the last three fixes of the last minute within the radius, widened for the
        // unit's reported accuracy: a vehicle standing at the stop with a noisy receiver is at
        // the stop; one handing over a street away (hundreds of metres) is not.
        let inside_recently = last.is_some_and(|l| {
            let radius = widened(stop.radius_m, f64::from(l.accuracy_m));
            std::iter::once((l.t, l.position))
                .chain(l.earlier.iter().flatten().copied())
                .filter(|(t, _)| l.t.secs_since(*t) <= 60.0)
                .any(|(_, p)| haversine_m(p, stop.position) <= radius)
        });
        if inside_recently {
            return;
        }
        out.push(self.anomaly(
            AnomalyKind::HandoverOutOfPlace,
            format!("p{position}"),
            at,
            Severity::High,
            match distance {
                Some(d) => format!(
                    "cash-box handover for {stop_id} recorded {d:.0} m from the stop (radius {:.0} m)",
                    stop.radius_m
                ),
                None => format!("cash-box handover for {stop_id} with no known vehicle position"),
            },
            last.map(|l| l.position),
            json!({"stop": stop_id, "distance_m": distance, "radius_m": stop.radius_m}),
        ));
    }

    /// A9: rounds returned differ from rounds issued.
    #[allow(clippy::too_many_arguments)]
    pub fn raise_ammo_mismatch(
        &self,
        position: u64,
        serial: &str,
        by: &str,
        issued: u32,
        returned: u32,
        at: Millis,
        out: &mut Out,
    ) {
        out.push(self.anomaly(
            AnomalyKind::AmmoMismatch,
            format!("p{position}"),
            at,
            Severity::High,
            format!("{by} returned {serial} with {returned} rounds; {issued} were issued"),
            None,
            json!({"serial": serial, "by": by, "rounds_issued": issued, "rounds_returned": returned}),
        ));
    }

    /// A9: a close-out refused (R7) while weapons are out.
    pub fn raise_weapon_not_returned(
        &self,
        position: u64,
        weapons_out: &[(String, String)],
        at: Millis,
        out: &mut Out,
    ) {
        let list = weapons_out
            .iter()
            .map(|(s, h)| format!("{s} ({h})"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(self.anomaly(
            AnomalyKind::WeaponNotReturned,
            format!("p{position}"),
            at,
            Severity::High,
            format!("close-out refused: weapons not returned: {list}"),
            None,
            json!({"weapons_out": weapons_out}),
        ));
    }

    /// Every rule that looks at fixes of the active run.
    pub fn on_fix(
        &mut self,
        fix: &Fix,
        scratch: &mut Vec<Candidate>,
        out: &mut Out,
        sched: &mut impl FnMut(Deadline, Millis),
    ) {
        if self.status != Status::Active {
            return;
        }
        let p = self.route.frame.to_local(fix.lat, fix.lon);
        let latlon = LatLon {
            lat: fix.lat,
            lon: fix.lon,
        };
        // A5: the gap deadline moves with this fix.
        let newest = self.last_fix_t.map_or(fix.t, |t| t.max(fix.t));
        self.last_fix_t = Some(newest);
        let departed = self.departed_at.unwrap_or(newest);
        self.arm_signal(newest.max(departed).plus_secs(self.params.max_gap_s), sched);
        let standing = fix.speed_mps < self.params.stop_speed_mps;
        let (update, route_distance) =
            self.progress
                .update(&self.route, scratch, fix, p, &self.params);
        self.last_route_distance = route_distance;
        self.stop_rule(fix, p, standing, sched);
        self.deviation_rule(fix, latlon, route_distance, out);
        self.uturn_rule(fix, update, latlon, out);
        self.visit_rule(fix, p, out);
        self.overspeed_rule(fix, latlon, out);
    }

    /// A1 bookkeeping; the judgement happens at the deadline.
    fn stop_rule(
        &mut self,
        fix: &Fix,
        p: [f64; 2],
        standing: bool,
        sched: &mut impl FnMut(Deadline, Millis),
    ) {
        if !standing {
            self.episode = None;
            return;
        }
        // A standing vehicle's fixes wander with the receiver's error, not only within the
        // radius: a fix counts as still here within the widened radius, or a noisy unit's one
        // long stop would break into pieces, raised late or twice.
        let radius = widened(self.params.stop_radius_m, fix.accuracy_m);
        if let Some(ep) = &mut self.episode {
            if dist(p, ep.mean()) <= radius {
                ep.sum[0] += p[0];
                ep.sum[1] += p[1];
                ep.n += 1;
                ep.far = None;
                ep.door_opened |= fix.door_open;
                ep.engine_off |= !fix.ignition;
                return;
            }
            // A far fix may be multipath: the stop ends only after three in a row that agree
            // with each other (the vehicle crept off, still too slowly to count as moving).
            // Far fixes scattered apart are multipath, and so, at 1 % a fix, are two in a row.
            let far = match &mut ep.far {
                Some(far) if dist(p, far.first) <= radius => {
                    far.n += 1;
                    far.sum = [far.sum[0] + p[0], far.sum[1] + p[1]];
                    *far
                }
                _ => {
                    ep.far = Some(FarFixes {
                        first: p,
                        n: 1,
                        sum: p,
                    });
                    return;
                }
            };
            if far.n < STOP_END_FIXES {
                return;
            }
            if ep.n < far.n {
                // The stop's first fixes were the multipath ones (the speed says the vehicle has
                // been standing all along): the same stop, placed where the others agree.
                ep.sum = far.sum;
                ep.n = far.n;
                ep.far = None;
                return;
            }
        }
        self.episode_gen += 1;
        self.episode = Some(StopEpisode {
            start: fix.t,
            sum: p,
            n: 1,
            far: None,
            door_opened: fix.door_open,
            engine_off: !fix.ignition,
            generation: self.episode_gen,
        });
        let wait = self.params.unplanned_stop_s.max(self.params.stop_min_s);
        sched(
            Deadline::StopJudge {
                run: self.key.clone(),
                generation: self.episode_gen,
            },
            fix.t.plus_secs(wait),
        );
    }

    /// A2: a streak of fixes beyond the corridor; hysteresis clears it below 0.7 x corridor.
    fn deviation_rule(&mut self, fix: &Fix, latlon: LatLon, d: f64, out: &mut Out) {
        let corridor = self.params.corridor_m;
        if d > corridor {
            if self.streak == 0 {
                self.streak_start = fix.t;
                self.streak_max_m = 0.0;
            }
            self.streak += 1;
            self.streak_max_m = self.streak_max_m.max(d);
            if !self.deviated
                && self.streak >= self.params.deviation_fixes
                && fix.t.secs_since(self.streak_start) >= self.params.deviation_s
            {
                self.deviated = true;
                let detour = self.recent_roadblock(fix.t);
                let mut severity = if detour {
                    Severity::Low
                } else {
                    Severity::Medium
                };
                if d > 3.0 * corridor {
                    severity = escalate(severity);
                }
                out.push(self.anomaly(
                    AnomalyKind::RouteDeviation,
                    format!("v{}", fix.seq),
                    fix.t,
                    severity,
                    if detour {
                        format!("detour {d:.0} m off the planned route after a roadblock")
                    } else {
                        format!("{d:.0} m off the planned route (corridor {corridor:.0} m)")
                    },
                    Some(latlon),
                    json!({"distance_m": d, "corridor_m": corridor, "fixes": self.streak,
                           "since": self.streak_start.0, "after_roadblock": detour}),
                ));
            }
        } else {
            self.streak = 0;
            if d < 0.7 * corridor {
                self.clearing += 1;
                if self.clearing >= 2 {
                    self.deviated = false;
                }
            } else {
                self.clearing = 0;
            }
        }
        if d > corridor {
            self.clearing = 0;
        }
    }

    fn recent_roadblock(&self, t: Millis) -> bool {
        self.last_roadblock
            .is_some_and(|rb| t.secs_since(rb) <= self.params.report_cover_s && rb <= t)
    }

    /// A4 without a report: progress along the route falls by `uturn_m` within 60 s.
    fn uturn_rule(&mut self, fix: &Fix, update: ProgressUpdate, latlon: LatLon, out: &mut Out) {
        // Two fixes in a row, so one multipath fix cannot fake a U-turn.
        if update.falling_fixes < 2 {
            return;
        }
        self.progress.reset_window();
        if self.recent_roadblock(fix.t) {
            return;
        }
        self.last_roadblock = Some(fix.t);
        out.push(self.anomaly(
            AnomalyKind::Roadblock,
            format!("v{}", fix.seq),
            fix.t,
            Severity::High,
            format!(
                "vehicle turned back {:.0} m along the route within a minute (forced stop / U-turn?)",
                update.fall_m
            ),
            Some(latlon),
            json!({"source": "u_turn", "fall_m": update.fall_m, "progress_m": self.progress.s}),
        ));
    }

    /// A7: arrivals derived from fixes; skipped stops at the arrival at a later one.
    fn visit_rule(&mut self, fix: &Fix, p: [f64; 2], out: &mut Out) {
        if !self.visits_started {
            // The first fix of the active run tells which stops the vehicle starts inside.
            self.visits_started = true;
            for (i, stop) in self.stops.iter().enumerate() {
                let inside = dist(p, self.stops_local[i]) <= stop.radius_m;
                self.visits[i].armed = i == 0 || !inside;
            }
        }
        let mut arrived_now = None;
        for (i, stop) in self.stops.iter().enumerate() {
            let v = &mut self.visits[i];
            let d = dist(p, self.stops_local[i]);
            if !v.armed {
                if d > 2.0 * stop.radius_m {
                    v.armed = true;
                }
                continue;
            }
            if v.arrived.is_some() {
                continue;
            }
            if d <= stop.radius_m {
                let since = *v.inside_since.get_or_insert(fix.t);
                // Confirmed by a second fix inside, or one well inside (beyond multipath reach).
                let confirmed = since != fix.t || d <= 0.5 * stop.radius_m;
                if confirmed {
                    v.arrived = Some(since);
                    arrived_now.get_or_insert((i, since));
                }
            } else {
                v.inside_since = None;
            }
        }
        let Some((j, at)) = arrived_now else {
            return;
        };
        for i in 0..j {
            if self.visits[i].arrived.is_some() || self.visits[i].skip_reported {
                continue;
            }
            self.visits[i].skip_reported = true;
            let a = self.anomaly(
                AnomalyKind::StopSkipped,
                format!("{}@{}", self.stops[i].stop_id, self.stops[j].stop_id),
                at,
                Severity::Medium,
                format!(
                    "arrived at {} before visiting {}",
                    self.stops[j].stop_id, self.stops[i].stop_id
                ),
                Some(self.stops[j].position),
                json!({"skipped": self.stops[i].stop_id, "arrived_at": self.stops[j].stop_id}),
            );
            out.push(a);
        }
    }

    /// A10: over the run's limit for `overspeed_s`, once per episode.
    fn overspeed_rule(&mut self, fix: &Fix, latlon: LatLon, out: &mut Out) {
        let limit_mps = self.params.speed_limit_kmh / 3.6;
        if fix.speed_mps <= limit_mps {
            self.over_since = None;
            self.over_raised = false;
            return;
        }
        let since = *self.over_since.get_or_insert(fix.t);
        if since == fix.t {
            self.over_max_mps = 0.0;
        }
        self.over_max_mps = self.over_max_mps.max(fix.speed_mps);
        if !self.over_raised && fix.t.secs_since(since) >= self.params.overspeed_s {
            self.over_raised = true;
            out.push(self.anomaly(
                AnomalyKind::Overspeed,
                format!("v{}", fix.seq),
                fix.t,
                Severity::Medium,
                format!(
                    "{:.0} km/h over {:.0} s (limit {:.0} km/h)",
                    self.over_max_mps * 3.6,
                    fix.t.secs_since(since),
                    self.params.speed_limit_kmh
                ),
                Some(latlon),
                json!({"max_kmh": self.over_max_mps * 3.6, "limit_kmh": self.params.speed_limit_kmh,
                       "since": since.0}),
            ));
        }
    }

    /// A deadline came due at `at`.
    pub fn on_deadline(
        &mut self,
        d: &Deadline,
        at: Millis,
        last: Option<LastFix>,
        zones: &ZoneIndex,
        out: &mut Out,
        sched: &mut impl FnMut(Deadline, Millis),
    ) {
        if let Deadline::SignalLoss { .. } = d {
            self.signal_queued = false;
        }
        if self.status != Status::Active {
            return;
        }
        match d {
            Deadline::SignalLoss { generation, .. }
                if *generation == self.signal_gen
                    && self.signal_deadline.is_some_and(|real| real > at) =>
            {
                // Fixes moved the deadline since this entry was queued: wait for the real one.
                if let Some(real) = self.signal_deadline {
                    self.signal_queued = true;
                    sched(d.clone(), real);
                }
            }
            Deadline::SignalLoss { generation, .. } if *generation == self.signal_gen => {
                // Once per gap: the next fix starts a new one.
                self.signal_deadline = None;
                let off_route =
                    self.last_fix_t.is_some() && self.last_route_distance > self.params.corridor_m;
                let moving =
                    last.is_some_and(|l| l.speed_mps >= self.params.stop_speed_mps || l.ignition);
                let mut severity = if moving {
                    Severity::High
                } else {
                    Severity::Medium
                };
                if off_route {
                    severity = escalate(severity);
                }
                out.push(self.anomaly(
                    AnomalyKind::SignalLoss,
                    format!("t{}", at.0),
                    at,
                    severity,
                    format!(
                        "no GPS fix for {:.0} s{}",
                        self.params.max_gap_s,
                        if off_route { " (last seen off-route)" } else { "" }
                    ),
                    last.map(|l| l.position),
                    json!({"max_gap_s": self.params.max_gap_s, "last_fix_at": self.last_fix_t.map(|t| t.0),
                           "off_route": off_route, "last_moving_or_engine_on": moving}),
                ));
            }
            Deadline::Checkin {
                escort, generation, ..
            } if self.escorts[*escort].generation == *generation => {
                let person = &self.escorts[*escort].id;
                out.push(self.anomaly(
                    AnomalyKind::MissedCheckin,
                    format!("{person}@t{}", at.0),
                    at,
                    Severity::Medium,
                    format!("escort {person} missed the check-in"),
                    last.map(|l| l.position),
                    json!({"person": person, "last_checkin": self.escorts[*escort].last_checkin.map(|t| t.0),
                           "interval_s": self.params.checkin_interval_s,
                           "grace_s": self.params.checkin_grace_s}),
                ));
            }
            Deadline::StopJudge { generation, .. } => {
                let Some(ep) = self.episode.clone().filter(|e| e.generation == *generation) else {
                    return;
                };
                self.judge_stop(&ep, at, zones, out);
            }
            Deadline::LateArrival { stop, .. } => {
                let v = &self.visits[*stop];
                let departed = self.departed_at.unwrap_or(at);
                // An arrival awaiting its confirming fix counts from its first fix inside.
                let reached = v.arrived.or(v.inside_since);
                if reached.is_some_and(|a| a <= at) || at < departed {
                    return;
                }
                let s = &self.stops[*stop];
                out.push(self.anomaly(
                    AnomalyKind::LateArrival,
                    s.stop_id.to_string(),
                    at,
                    Severity::Low,
                    format!(
                        "not at {} by its window (+{:.0} s grace)",
                        s.stop_id, self.params.late_grace_s
                    ),
                    Some(s.position),
                    json!({"stop": s.stop_id, "arrive_by": s.arrive_by.map(|t| t.0),
                           "grace_s": self.params.late_grace_s}),
                ));
            }
            _ => {}
        }
    }

    fn judge_stop(&self, ep: &StopEpisode, at: Millis, zones: &ZoneIndex, out: &mut Out) {
        let mean = self.route.frame.to_latlon(ep.mean());
        let at_stop = self
            .stops
            .iter()
            .any(|s| haversine_m(mean, s.position) <= s.radius_m);
        if at_stop {
            return;
        }
        if zones.containing(mean, 0.0, ep.start, at).next().is_some() {
            return;
        }
        let cover_from = ep.start.plus_secs(-self.params.report_cover_s);
        let covered = self
            .reports
            .iter()
            .any(|(t, k)| k.covers_stop() && *t >= cover_from && *t <= at);
        if covered {
            return;
        }
        let mut severity = Severity::High;
        if ep.door_opened {
            severity = escalate(severity);
        }
        out.push(self.anomaly(
            AnomalyKind::UnplannedStop,
            format!("t{}", ep.start.0),
            at,
            severity,
            format!(
                "stopped {:.0} s away from any planned stop with no crew report{}",
                at.secs_since(ep.start),
                if ep.door_opened { ", door opened" } else { "" }
            ),
            Some(mean),
            json!({"stop_started": ep.start.0, "fixes": ep.n, "door_opened": ep.door_opened,
                   "engine_off": ep.engine_off, "distance_to_route_m": self.route.distance(ep.mean())}),
        ));
    }
}
