//! Per-run rule state: each rule of SCENARIOS.md as a small state machine fed by the run's fixes,
//! check-ins, reports and handovers, raising anomalies into [`Out`]. Time rules keep their own
//! due times here; the engine queues each run once, at the earliest of them (see
//! [`RunState::next_due`]).

use std::ops::Deref;
use std::sync::LazyLock;

use cit_domain::event::{Anomaly, AnomalyKind, RoundsSpent, Severity};
use cit_domain::{DetectionParams, Fix, IncidentKind, LatLon, Millis, PlannedStop};
use serde_json::json;

use crate::frame::{dist, haversine_m};
use crate::key::Key;
use crate::progress::{ProgressTracker, ProgressUpdate};
use crate::route::{Candidate, RouteIndex};
use crate::zones::ZoneIndex;
use crate::{LastFix, Out};

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
    far: Option<FarFixes>,
    door_opened: bool,
    engine_off: bool,
    /// When it is judged (A1); none once it was.
    judge_at: When,
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
    /// Boxed `str`: no spare capacity to carry per escort.
    id: Box<str>,
    last_checkin: When,
    /// When their silence becomes a missed check-in (A6); none once it did, until they check in.
    due: When,
}

/// A planned stop of the run and the vehicle's visit to it (A7): one record per stop, so a run
/// holds one allocation for all its stops.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Stop {
    plan: PlannedStop,
    /// Its position in the route's frame.
    local: [f64; 2],
    /// Inside the radius since this fix (not yet confirmed as an arrival).
    inside_since: When,
    arrived: When,
    /// A stop the vehicle is inside at departure (its first fix) counts only if it is first in
    /// order, or, for a later stop at the same place (the return to the depot), once the
    /// vehicle has been farther than 2 x its radius.
    armed: bool,
    /// Fixes in a row farther than 2 x the radius, while not armed: two arm it (one may be a
    /// multipath fix).
    #[serde(default)]
    far_fixes: u8,
    skip_reported: bool,
    /// When not being there yet is late (A7: `arrive_by` + grace); none once judged.
    late_due: When,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// The run's id, as the engine's maps and deadline queue key it (inline: no allocation).
    pub(crate) key: Key,
    /// The vehicle's id, as the engine's last-fix map keys it.
    pub(crate) vehicle_id: Key,
    params: Params,
    stops: Vec<Stop>,
    /// A6: each escort with their latest check-in and when their silence is due.
    escorts: Vec<Escort>,
    route: RouteIndex,
    status: Status,
    departed_at: When,
    /// The latest vehicle swap (R8): fixes before it are not the run's, and the gap, the stop,
    /// the streaks and progress start again from it.
    #[serde(default)]
    swapped_at: When,
    // A5 signal loss: the gap's deadline, moved by every fix; none once raised, until the next
    // fix starts a new gap.
    last_fix_t: When,
    signal_deadline: When,
    last_route_distance: f64,
    // A1 stops
    /// Boxed: most of the time a vehicle is moving and this is a null pointer, not ~100 bytes.
    episode: Option<Box<StopEpisode>>,
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
    last_roadblock: When,
    // A7 stops (their visits live in `stops`)
    visits_started: bool,
    /// Whether the second fix of the active run has been seen (see `visit_rule`).
    #[serde(default)]
    visits_second_fix: bool,
    // A10 overspeed
    over_since: When,
    over_raised: bool,
    over_max_mps: f64,
    /// The run's entry in the engine's deadline queue (time, sequence), if it has one: at or
    /// before its earliest due time (a fix moves the signal deadline later without re-queueing;
    /// an entry that comes due early finds nothing due and is queued again).
    pub(crate) queued: Option<(Millis, u64)>,
}

/// An optional time in 8 bytes, where `Option<Millis>` takes 16 (an `i64` has no niche): a
/// run's record holds five, each escort two and each stop three, and they are most of what an
/// active vehicle costs (memory per vehicle, BENCHMARKS.md). `i64::MIN` stands for none; no event carries a time 292 million years back.
/// Serialized as an `Option<Millis>`, so snapshots read the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Option<Millis>", into = "Option<Millis>")]
struct When(i64);

impl Default for When {
    fn default() -> When {
        When::NONE
    }
}

impl When {
    const NONE: When = When(i64::MIN);

    fn at(t: Millis) -> When {
        When(t.0)
    }

    fn get(self) -> Option<Millis> {
        (self != When::NONE).then_some(Millis(self.0))
    }
}

impl From<Option<Millis>> for When {
    fn from(t: Option<Millis>) -> When {
        t.map_or(When::NONE, When::at)
    }
}

impl From<When> for Option<Millis> {
    fn from(w: When) -> Option<Millis> {
        w.get()
    }
}

/// A crew report that raises a crew alarm (A11), as the engine hands it to the run.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    pub person: &'a str,
    pub kind: IncidentKind,
    pub note: &'a str,
    pub rounds: Option<u32>,
    pub spent: Option<&'a RoundsSpent>,
}

/// A returned weapon's round counts (A9).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoundCounts {
    pub issued: u32,
    /// Reported fired while out (A11).
    pub spent: u32,
    pub returned: u32,
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
        let route = RouteIndex::new(route, params.corridor_m);
        RunState {
            key: Key::from(run_id),
            vehicle_id: Key::from(vehicle_id),
            params: Params::new(params),
            stops: stops
                .iter()
                .map(|plan| Stop {
                    plan: plan.clone(),
                    local: route.to_local(plan.position),
                    inside_since: When::NONE,
                    arrived: When::NONE,
                    armed: false,
                    skip_reported: false,
                    far_fixes: 0,
                    late_due: When::NONE,
                })
                .collect(),
            escorts: escorts
                .iter()
                .map(|id| Escort {
                    id: id.as_str().into(),
                    last_checkin: When::NONE,
                    due: When::NONE,
                })
                .collect(),
            route,
            status: Status::Planned,
            departed_at: When::NONE,
            swapped_at: When::NONE,
            last_fix_t: When::NONE,
            signal_deadline: When::NONE,
            last_route_distance: 0.0,
            episode: None,
            reports: Vec::new(),
            streak: 0,
            streak_start: Millis(0),
            streak_max_m: 0.0,
            deviated: false,
            clearing: 0,
            progress: ProgressTracker::default(),
            last_roadblock: When::NONE,
            visits_started: false,
            visits_second_fix: false,
            over_since: When::NONE,
            over_raised: false,
            over_max_mps: 0.0,
            queued: None,
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
            .find(|s| s.arrived.get().is_none())
            .map(|s| &s.plan)
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
            id: format!("{}:{}:{}", kind.as_str(), self.key.as_str(), discriminator),
            kind,
            run_id: self.key.as_str().to_string(),
            vehicle_id: self.vehicle_id.as_str().to_string(),
            at,
            severity,
            summary,
            position,
            evidence,
        }
    }

    pub fn on_departed(&mut self, at: Millis) {
        if self.status != Status::Planned {
            return;
        }
        self.status = Status::Active;
        self.departed_at = When::at(at);
        self.signal_deadline = When::at(at.plus_secs(self.params.max_gap_s));
        for i in 0..self.escorts.len() {
            self.arm_checkin(i, at);
        }
        let grace_s = self.params.late_grace_s;
        for stop in &mut self.stops {
            stop.late_due = stop.plan.arrive_by.map(|by| by.plus_secs(grace_s)).into();
        }
    }

    /// The earliest time a time rule of the run comes due (none unless it is active).
    pub fn next_due(&self) -> Option<Millis> {
        if self.status != Status::Active {
            return None;
        }
        let escorts = self.escorts.iter().filter_map(|e| e.due.get());
        let stops = self.stops.iter().filter_map(|s| s.late_due.get());
        self.fix_dues().chain(escorts).chain(stops).min()
    }

    /// The due times a fix can set: the gap's deadline and a new stop's judgement (the escorts'
    /// and stops' due times only check-ins and departure move).
    pub fn fix_dues(&self) -> impl Iterator<Item = Millis> {
        let episode = self.episode.as_ref().and_then(|e| e.judge_at.get());
        [self.signal_deadline.get(), episode].into_iter().flatten()
    }

    fn arm_checkin(&mut self, i: usize, now: Millis) {
        let Some(departed) = self.departed_at.get() else {
            return;
        };
        let from = self.escorts[i]
            .last_checkin
            .get()
            .map_or(departed, |c| c.max(departed))
            .max(now.min(departed));
        self.escorts[i].due =
            When::at(from.plus_secs(self.params.checkin_interval_s + self.params.checkin_grace_s));
    }

    pub fn on_closed(&mut self, _at: Millis) {
        // Pending deadlines see the status and do nothing.
        self.status = Status::Closed;
        self.episode = None;
    }

    pub fn on_checkin(&mut self, person: &str, at: Millis) {
        if let Some(i) = self.escorts.iter().position(|e| &*e.id == person) {
            let last = &mut self.escorts[i].last_checkin;
            *last = When::at(last.get().map_or(at, |c| c.max(at)));
            if self.status == Status::Active {
                self.arm_checkin(i, at);
            }
        }
    }

    pub fn on_report(&mut self, kind: IncidentKind, at: Millis) {
        self.reports.push((at, kind));
    }

    /// A11: a robbery, shots fired, an accident, a fire or a breakdown reported by the crew, for
    /// a run in any state, once per report. Shots fired carry the rounds and what they were spent
    /// from; a count the weapon could not cover says the difference rather than being refused.
    pub fn raise_crew_alarm(
        &self,
        position: u64,
        report: &Report<'_>,
        at: Millis,
        last: Option<LastFix>,
        out: &mut Out,
    ) {
        let severity = match report.kind {
            IncidentKind::Robbery | IncidentKind::ShotsFired => Severity::Critical,
            IncidentKind::Accident | IncidentKind::Fire => Severity::High,
            _ => Severity::Medium,
        };
        let (person, kind) = (report.person, report.kind.as_str());
        let mut summary = format!("{kind} reported by {person}");
        let mut evidence = json!({"person": person, "report": kind, "note": report.note,
                                  "last_fix_at": last.map(|l| l.t.0)});
        if report.kind == IncidentKind::ShotsFired {
            let spent = report.spent;
            let unaccounted = match (report.rounds, spent) {
                (Some(n), Some(s)) => n.saturating_sub(s.rounds),
                (Some(n), None) => n,
                (None, _) => 0,
            };
            match (report.rounds, spent) {
                (Some(n), Some(s)) => {
                    summary.push_str(&format!(": {n} round(s), spent from {}", s.serial));
                    if unaccounted > 0 {
                        summary.push_str(&format!(
                            " ({unaccounted} more than the {} it held)",
                            s.held
                        ));
                    }
                }
                (Some(n), None) => summary.push_str(&format!(
                    ": {n} round(s), but {person} holds no weapon of this run"
                )),
                (None, _) => summary.push_str(": no valid round count given; count at the return"),
            }
            evidence["rounds_reported"] = json!(report.rounds);
            evidence["spent_from"] = json!(spent.map(|s| &s.serial));
            evidence["rounds_spent"] = json!(spent.map_or(0, |s| s.rounds));
            evidence["rounds_held_before"] = json!(spent.map(|s| s.held));
            evidence["rounds_unaccounted"] = json!(unaccounted);
        }
        out.push(self.anomaly(
            AnomalyKind::CrewAlarm,
            format!("p{position}"),
            at,
            severity,
            summary,
            last.map(|l| l.position),
            evidence,
        ));
    }

    /// R8: the run goes on with `to`. Its fix-based state starts again (SCENARIOS.md): a stop
    /// not yet judged is never judged, a deviation streak or a raised deviation is cleared, the
    /// U-turn window and progress restart, an overspeed episode ends, a raised signal loss is
    /// re-armed from the swap; for unplanned stops the swap counts as a breakdown report. Then
    /// A8: the two vehicles' last fixes (`[run's vehicle, replacement]`) must be within
    /// `swap_radius_m` of each other, or the swap is out of place (raised naming the replacement).
    pub fn on_swapped(
        &mut self,
        position: u64,
        to: &str,
        at: Millis,
        last: [Option<LastFix>; 2],
        out: &mut Out,
    ) {
        let from = std::mem::replace(&mut self.vehicle_id, Key::from(to));
        self.swapped_at = When::at(at);
        self.episode = None;
        self.streak = 0;
        self.deviated = false;
        self.clearing = 0;
        self.progress = ProgressTracker::default();
        self.over_since = When::NONE;
        self.over_raised = false;
        self.last_fix_t = When::NONE;
        self.last_route_distance = 0.0;
        for stop in &mut self.stops {
            stop.inside_since = When::NONE;
        }
        if self.status == Status::Active {
            self.signal_deadline = When::at(at.plus_secs(self.params.max_gap_s));
        }
        self.reports.push((at, IncidentKind::Breakdown));
        let radius = self.params.swap_radius_m;
        let [before, replacement] = last;
        // The nearest pair among each vehicle's last three fixes of the minute before its last:
        // one multipath fix (30-80 m off) cannot put two vehicles parked together apart, while
        // vehicles really apart have every pair apart.
        let recent = |l: LastFix| {
            l.recent()
                .filter(move |(t, _)| l.t.secs_since(*t) <= 60.0)
                .map(|(_, p)| p)
                .collect::<Vec<_>>()
        };
        let distance = before.zip(replacement).map(|(a, b)| {
            let (a, b) = (recent(a), recent(b));
            a.iter()
                .flat_map(|p| b.iter().map(move |q| haversine_m(*p, *q)))
                .fold(f64::INFINITY, f64::min)
        });
        if distance.is_some_and(|d| d <= radius) {
            return;
        }
        let summary = match distance {
            Some(d) => format!(
                "cash moved from {} to {to} while the vehicles were {d:.0} m apart (allowed {radius:.0} m)",
                from.as_str()
            ),
            None => format!(
                "cash moved from {} to {to} with no known position for {}",
                from.as_str(),
                if before.is_none() { from.as_str() } else { to }
            ),
        };
        out.push(self.anomaly(
            AnomalyKind::SwapOutOfPlace,
            format!("p{position}"),
            at,
            Severity::High,
            summary,
            replacement.or(before).map(|l| l.position),
            json!({"from_vehicle": from.as_str(), "to_vehicle": to, "distance_m": distance,
                   "swap_radius_m": radius,
                   "from_last_fix_at": before.map(|l| l.t.0),
                   "to_last_fix_at": replacement.map(|l| l.t.0)}),
        ));
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
        self.last_roadblock = When::at(at);
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
        let Some(stop) = self.stops.iter().find(|s| s.plan.stop_id == stop_id) else {
            return;
        };
        let stop = &stop.plan;
        let distance = last.map(|l| haversine_m(l.position, stop.position));
        // Any of the last three fixes of the last minute within the radius, widened for the
        // unit's reported accuracy: a vehicle standing at the stop with a noisy receiver is at
        // the stop; one handing over a street away (hundreds of metres) is not.
        let inside_recently = last.is_some_and(|l| {
            let radius = widened(stop.radius_m, f64::from(l.accuracy_m));
            l.recent()
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

    /// A9: rounds returned differ from rounds issued less those reported fired (A11).
    pub fn raise_ammo_mismatch(
        &self,
        position: u64,
        serial: &str,
        by: &str,
        n: RoundCounts,
        at: Millis,
        out: &mut Out,
    ) {
        let expected = n.issued.saturating_sub(n.spent);
        let fired = if n.spent > 0 {
            format!(" ({} issued, {} reported fired)", n.issued, n.spent)
        } else {
            String::new()
        };
        out.push(self.anomaly(
            AnomalyKind::AmmoMismatch,
            format!("p{position}"),
            at,
            Severity::High,
            format!(
                "{by} returned {serial} with {} rounds; {expected} expected{fired}",
                n.returned
            ),
            None,
            json!({"serial": serial, "by": by, "rounds_issued": n.issued,
                   "rounds_spent": n.spent, "rounds_expected": expected,
                   "rounds_returned": n.returned}),
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
    pub fn on_fix(&mut self, fix: &Fix, scratch: &mut Vec<Candidate>, out: &mut Out) {
        if self.status != Status::Active {
            return;
        }
        // Only fixes taken while the run was under way are judged by its rules: one dated
        // before the departure (a unit's backlog, a wrong clock) is stored, not judged; after a
        // swap, only the replacement's fixes from the swap on (a backlog of its drive to the
        // breakdown site arriving late is not the run's).
        let from = self.swapped_at.get().or(self.departed_at.get());
        if from.is_some_and(|from| fix.t < from) {
            return;
        }
        let p = self.route.frame.to_local(fix.lat, fix.lon);
        let latlon = LatLon {
            lat: fix.lat,
            lon: fix.lon,
        };
        // A5: the gap deadline moves with this fix.
        let newest = self.last_fix_t.get().map_or(fix.t, |t| t.max(fix.t));
        self.last_fix_t = When::at(newest);
        let departed = self.departed_at.get().unwrap_or(newest);
        let floor = self.swapped_at.get().map_or(departed, |s| s.max(departed));
        self.signal_deadline = When::at(newest.max(floor).plus_secs(self.params.max_gap_s));
        let standing = fix.speed_mps < self.params.stop_speed_mps;
        let (update, route_distance) =
            self.progress
                .update(&self.route, scratch, fix, p, &self.params);
        self.last_route_distance = route_distance;
        self.stop_rule(fix, p, standing);
        self.deviation_rule(fix, latlon, route_distance, out);
        self.uturn_rule(fix, update, latlon, out);
        self.visit_rule(fix, p, out);
        self.overspeed_rule(fix, latlon, out);
    }

    /// A1 bookkeeping; the judgement happens at the deadline.
    fn stop_rule(&mut self, fix: &Fix, p: [f64; 2], standing: bool) {
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
        let wait = self.params.unplanned_stop_s.max(self.params.stop_min_s);
        self.episode = Some(Box::new(StopEpisode {
            start: fix.t,
            sum: p,
            n: 1,
            far: None,
            door_opened: fix.door_open,
            engine_off: !fix.ignition,
            judge_at: When::at(fix.t.plus_secs(wait)),
        }));
    }

    /// A2: a streak of fixes beyond the corridor; hysteresis clears it below 0.7 x corridor. A
    /// fix counts as beyond only by more than its reported accuracy (at most half the corridor):
    /// a receiver's error reaching past the corridor for ten seconds is not the vehicle leaving.
    fn deviation_rule(&mut self, fix: &Fix, latlon: LatLon, d: f64, out: &mut Out) {
        let corridor = self.params.corridor_m;
        let beyond = corridor + fix.accuracy_m.clamp(0.0, 0.5 * corridor);
        if d > beyond {
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
        if d > beyond {
            self.clearing = 0;
        }
    }

    fn recent_roadblock(&self, t: Millis) -> bool {
        self.last_roadblock
            .get()
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
        self.last_roadblock = When::at(fix.t);
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
            for (i, stop) in self.stops.iter_mut().enumerate() {
                let inside = dist(p, stop.local) <= stop.plan.radius_m;
                stop.armed = i == 0 || !inside;
            }
        } else if !self.visits_second_fix {
            // ... unless it was a multipath fix: a later stop the second fix is inside was
            // started in after all (the depot return, which would otherwise be arrived at as
            // the run leaves, every stop before it skipped).
            self.visits_second_fix = true;
            for stop in self.stops.iter_mut().skip(1) {
                if stop.arrived.get().is_none() && dist(p, stop.local) <= stop.plan.radius_m {
                    stop.armed = false;
                    stop.inside_since = When::NONE;
                }
            }
        }
        let mut arrived_now = None;
        for (i, v) in self.stops.iter_mut().enumerate() {
            let (d, radius_m) = (dist(p, v.local), v.plan.radius_m);
            if !v.armed {
                v.far_fixes = if d > 2.0 * radius_m {
                    v.far_fixes.saturating_add(1)
                } else {
                    0
                };
                v.armed = v.far_fixes >= 2;
                continue;
            }
            if v.arrived.get().is_some() {
                continue;
            }
            if d <= radius_m {
                let since = v.inside_since.get().unwrap_or(fix.t);
                v.inside_since = When::at(since);
                // Confirmed by a second fix inside, or one well inside (beyond multipath reach).
                let confirmed = since != fix.t || d <= 0.5 * radius_m;
                if confirmed {
                    v.arrived = When::at(since);
                    arrived_now.get_or_insert((i, since));
                }
            } else {
                v.inside_since = When::NONE;
            }
        }
        let Some((j, at)) = arrived_now else {
            return;
        };
        for i in 0..j {
            if self.stops[i].arrived.get().is_some() || self.stops[i].skip_reported {
                continue;
            }
            self.stops[i].skip_reported = true;
            let (skipped, reached) = (&self.stops[i].plan, &self.stops[j].plan);
            let a = self.anomaly(
                AnomalyKind::StopSkipped,
                format!("{}@{}", skipped.stop_id, reached.stop_id),
                at,
                Severity::Medium,
                format!(
                    "arrived at {} before visiting {}",
                    reached.stop_id, skipped.stop_id
                ),
                Some(reached.position),
                json!({"skipped": skipped.stop_id, "arrived_at": reached.stop_id}),
            );
            out.push(a);
        }
    }

    /// A10: over the run's limit for `overspeed_s`, once per episode.
    fn overspeed_rule(&mut self, fix: &Fix, latlon: LatLon, out: &mut Out) {
        let limit_mps = self.params.speed_limit_kmh / 3.6;
        if fix.speed_mps <= limit_mps {
            self.over_since = When::NONE;
            self.over_raised = false;
            return;
        }
        let since = self.over_since.get().unwrap_or(fix.t);
        self.over_since = When::at(since);
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

    /// The run's queue entry came due at `at`: raises what is due by then, each at its own
    /// time (A5 signal loss, A6 missed check-ins, A1 the stop's judgement, A7 late arrivals).
    pub fn on_due(&mut self, at: Millis, last: Option<LastFix>, zones: &ZoneIndex, out: &mut Out) {
        if self.status != Status::Active {
            return;
        }
        let due = |d: Option<Millis>| d.filter(|d| *d <= at);
        if let Some(at) = due(self.signal_deadline.get()) {
            // Once per gap: the next fix starts a new one.
            self.signal_deadline = When::NONE;
            self.raise_signal_loss(at, last, out);
        }
        for i in 0..self.escorts.len() {
            if let Some(at) = due(self.escorts[i].due.get()) {
                self.escorts[i].due = When::NONE;
                self.raise_missed_checkin(i, at, last, out);
            }
        }
        if let Some(ep) = self.episode.as_deref_mut()
            && let Some(at) = due(ep.judge_at.get())
        {
            ep.judge_at = When::NONE;
            if let Some(ep) = self.episode.as_deref() {
                self.judge_stop(ep, at, zones, out);
            }
        }
        for i in 0..self.stops.len() {
            if let Some(at) = due(self.stops[i].late_due.get()) {
                self.stops[i].late_due = When::NONE;
                self.judge_arrival(i, at, out);
            }
        }
    }

    /// A5.
    fn raise_signal_loss(&self, at: Millis, last: Option<LastFix>, out: &mut Out) {
        let off_route =
            self.last_fix_t.get().is_some() && self.last_route_distance > self.params.corridor_m;
        let moving = last.is_some_and(|l| l.speed_mps >= self.params.stop_speed_mps || l.ignition);
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
                if off_route {
                    " (last seen off-route)"
                } else {
                    ""
                }
            ),
            last.map(|l| l.position),
            json!({"max_gap_s": self.params.max_gap_s, "last_fix_at": self.last_fix_t.get().map(|t| t.0),
                   "off_route": off_route, "last_moving_or_engine_on": moving}),
        ));
    }

    /// A6.
    fn raise_missed_checkin(
        &self,
        escort: usize,
        at: Millis,
        last: Option<LastFix>,
        out: &mut Out,
    ) {
        let person = &self.escorts[escort].id;
        out.push(self.anomaly(
            AnomalyKind::MissedCheckin,
            format!("{person}@t{}", at.0),
            at,
            Severity::Medium,
            format!("escort {person} missed the check-in"),
            last.map(|l| l.position),
            json!({"person": person, "last_checkin": self.escorts[escort].last_checkin.get().map(|t| t.0),
                   "interval_s": self.params.checkin_interval_s,
                   "grace_s": self.params.checkin_grace_s}),
        ));
    }

    /// A7: not at stop `i` by its `arrive_by` + grace.
    fn judge_arrival(&self, i: usize, at: Millis, out: &mut Out) {
        let v = &self.stops[i];
        let departed = self.departed_at.get().unwrap_or(at);
        // An arrival awaiting its confirming fix counts from its first fix inside.
        let reached = v.arrived.get().or(v.inside_since.get());
        if reached.is_some_and(|a| a <= at) || at < departed {
            return;
        }
        let s = &v.plan;
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

    fn judge_stop(&self, ep: &StopEpisode, at: Millis, zones: &ZoneIndex, out: &mut Out) {
        let mean = self.route.frame.to_latlon(ep.mean());
        let at_stop = self
            .stops
            .iter()
            .any(|s| haversine_m(mean, s.plan.position) <= s.plan.radius_m);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_time_is_8_bytes_and_serializes_as_an_option() {
        assert_eq!(std::mem::size_of::<When>(), 8);
        for t in [None, Some(Millis(0)), Some(Millis(1_796_146_021_000))] {
            let w = When::from(t);
            assert_eq!(w.get(), t);
            let json = serde_json::to_string(&w).expect("serializes");
            assert_eq!(json, serde_json::to_string(&t).expect("serializes"));
            assert_eq!(serde_json::from_str::<When>(&json).expect("reads"), w);
        }
    }
}
