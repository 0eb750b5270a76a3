//! Whole runs driven the way the scenario generator drives them (shared/data/scenarios/README.md),
//! with its GPS error turned up or down: road speed with braking and accelerating at 1.5 m/s²,
//! traffic stops of 15–90 s, correlated Gaussian position error of a chosen sigma, one-fix
//! multipath outliers of 30–80 m, a bounded random walk and speed noise while standing, fixes every
//! 1, 2 or 5 s, and the escorts checking in. Runs are planned as the scenarios plan theirs: a
//! point-to-point run's destination is its one stop (a vault), a multi-stop run leaves its depot,
//! stands minutes at each stop (the escorts hand the boxes over there) and returns. A drive may
//! carry one incident (a U-turn at a roadblock, a long stop); apart from the incident's anomaly,
//! anything the engine raises is a false alarm. Used by the field-drive tests and `noise-sweep`.

use cit_domain::event::{Anomaly, Event};
use cit_domain::{CheckInCode, DetectionParams, Fix, LatLon, Millis, PlannedStop};
use cit_engine::Engine;
use cit_engine::frame::{dist, haversine_m};
use cit_engine::progress::{ProgressTracker, ProgressUpdate};
use cit_engine::route::{Candidate, NearSegments, RouteIndex};

use crate::engine_drive::{T0, fixes_event, latlons, plan_with};
use crate::{M_PER_DEG, Rng, Route};

/// A planned stop of a run: how far along the route it is, its geofence, and how long the
/// vehicle stands there.
#[derive(Debug, Clone)]
pub struct Visit {
    pub stop_id: String,
    pub kind: &'static str,
    pub at_m: f64,
    pub position: LatLon,
    pub radius_m: f64,
    pub dwell_s: f64,
}

/// What a run follows: its route and the stops planned on it, in order.
#[derive(Debug, Clone)]
pub struct Course {
    pub route: Route,
    pub visits: Vec<Visit>,
}

/// Stop radii as in the public scenarios: a point-to-point run's vault, a multi-stop run's stops.
const VAULT_RADIUS_M: f64 = 75.0;
const TOUR_STOP_RADIUS_M: f64 = 50.0;
/// How long the vehicle stands where its run ends before the drive stops.
const FINAL_DWELL_S: f64 = 30.0;

impl Course {
    /// A point-to-point route plans its destination as a vault; a multi-stop one (with
    /// `stop_vertices`) each of its stops, the depot return last, with a dwell of 3–7 minutes at
    /// each (by `seed`).
    pub fn of(route: Route, seed: u64) -> Course {
        let mut rng = Rng::new(seed ^ 0xd0e11);
        // The stop at vertex `i` of the route.
        let visit = |i: usize, stop_id: String, kind, radius_m, dwell_s| {
            let [lon, lat] = route.coords[i];
            Visit {
                stop_id,
                kind,
                at_m: route.s_at_vertex(i),
                position: LatLon { lat, lon },
                radius_m,
                dwell_s,
            }
        };
        let visits = match route.stop_vertices.get(1..).and_then(<[usize]>::split_last) {
            Some((&depot, outlets)) => outlets
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    let dwell_s = rng.between(180.0, 420.0);
                    visit(
                        i,
                        format!("S{}", n + 1),
                        "outlet",
                        TOUR_STOP_RADIUS_M,
                        dwell_s,
                    )
                })
                .chain([visit(
                    depot,
                    "DEPOT".into(),
                    "depot",
                    TOUR_STOP_RADIUS_M,
                    FINAL_DWELL_S,
                )])
                .collect(),
            None => {
                let vault = route.coords.len() - 1;
                vec![visit(
                    vault,
                    "VAULT".into(),
                    "vault",
                    VAULT_RADIUS_M,
                    FINAL_DWELL_S,
                )]
            }
        };
        Course { route, visits }
    }

    /// The run's planned stops, each due 10 minutes after the drive reached it, rounded up to
    /// the minute (as the scenario generator sets `arrive_by`); one the drive never reached has
    /// no deadline.
    pub fn planned_stops(&self, track: &Track) -> Vec<PlannedStop> {
        self.visits
            .iter()
            .zip(&track.arrivals)
            .map(|(v, arrived)| PlannedStop {
                stop_id: v.stop_id.clone(),
                name: v.stop_id.clone(),
                position: v.position,
                radius_m: v.radius_m,
                arrive_by: arrived.map(|t| {
                    let due = t.plus_secs(600.0).0;
                    Millis((due + 59_999).div_euclid(60_000) * 60_000)
                }),
                kind: v.kind.to_string(),
            })
            .collect()
    }

    /// A place for an incident: at least 300 m from either end of the route and clear of every
    /// stop (an incident inside a stop's geofence would be that stop, not an incident); the
    /// route's middle if a thousand draws find none (a route too short or all stops).
    fn incident_place(&self, rng: &mut Rng) -> f64 {
        let len = self.route.length();
        (0..1_000)
            .map(|_| 300.0 + (len - 600.0).max(0.0) * rng.unit())
            .find(|&at_m| {
                let (lat, lon, _) = self.route.at(at_m);
                let here = LatLon { lat, lon };
                self.visits
                    .iter()
                    .all(|v| haversine_m(here, v.position) > v.radius_m + 150.0)
            })
            .unwrap_or(len / 2.0)
    }
}

/// The GPS error of a drive.
#[derive(Debug, Clone, Copy)]
pub struct Gps {
    /// Standard deviation of the position error on each axis, metres.
    pub sigma_m: f64,
    /// Share of fixes thrown 30–80 m off by multipath.
    pub multipath: f64,
    /// Seconds between fixes.
    pub interval_s: u32,
}

/// How long the position error takes to forget itself (it is correlated: a receiver's error
/// drifts, it does not jump from fix to fix).
const ERROR_TIME_CONSTANT_S: f64 = 20.0;
const BRAKE_MPS2: f64 = 1.5;
/// The simulation's step, seconds.
const DT: f64 = 0.1;

/// One whole drive: the fixes the unit sent and where the vehicle really was at each.
pub struct Track {
    pub fixes: Vec<Fix>,
    pub truth: Vec<LatLon>,
    /// With an incident: when its anomaly is due (see [`Incident`]).
    pub due: Option<Millis>,
    /// When the vehicle came to stand at each of the course's stops (none where the drive ended
    /// before it).
    pub arrivals: Vec<Option<Millis>>,
    /// The escorts' handovers, each at the middle of a stop's dwell: (time, index of the stop).
    pub handovers: Vec<(Millis, usize)>,
}

/// Something that happens on the drive, and the anomaly it must raise.
#[derive(Debug, Clone, Copy)]
pub enum Incident {
    /// The vehicle stops `at_m` along the route as at a roadblock, turns and drives back along
    /// it; the drive ends 150 m back (or `uturn_m` + 100 m, when more). A `roadblock`, due when
    /// the vehicle is `uturn_m` back.
    UTurn { at_m: f64 },
    /// The vehicle stands `secs` `at_m` along the route, engine running, then drives on. An
    /// `unplanned_stop`, due `unplanned_stop_s` after it came to a stand.
    Stop { at_m: f64, secs: f64 },
}

impl Incident {
    /// A U-turn somewhere along the course, at least 300 m from either end and clear of its stops.
    pub fn uturn_on(course: &Course, rng: &mut Rng) -> Incident {
        Incident::UTurn {
            at_m: course.incident_place(rng),
        }
    }

    /// A stop somewhere along the course, at least 300 m from either end and clear of its stops,
    /// 1–4 minutes longer than the run's `unplanned_stop_s`.
    pub fn stop_on(course: &Course, rng: &mut Rng, params: &DetectionParams) -> Incident {
        let at_m = course.incident_place(rng);
        Incident::Stop {
            at_m,
            secs: params.unplanned_stop_s + rng.between(60.0, 240.0),
        }
    }

    pub fn at_m(self) -> f64 {
        match self {
            Incident::UTurn { at_m } | Incident::Stop { at_m, .. } => at_m,
        }
    }

    /// The kind of anomaly it must raise.
    pub fn kind(self) -> &'static str {
        match self {
            Incident::UTurn { .. } => "roadblock",
            Incident::Stop { .. } => "unplanned_stop",
        }
    }
}

/// How far a turned vehicle drives back along the route before the drive ends.
const DRIVE_BACK_M: f64 = 150.0;

/// One whole drive of a course at `cruise_mps`, departing at [`T0`], with an incident or none;
/// its anomaly is due by the run's `params`.
pub fn drive(
    course: &Course,
    cruise_mps: f64,
    gps: Gps,
    seed: u64,
    incident: Option<Incident>,
    params: &DetectionParams,
) -> Track {
    let drive_back_m = DRIVE_BACK_M.max(params.uturn_m + 100.0);
    let mut rng = Rng::new(seed);
    let route = &course.route;
    let len = route.length();
    let (mut s, mut v, mut t) = (0.0f64, 0.0f64, 0.0f64);
    let incident_at = incident.map(Incident::at_m);
    // The incident, when the vehicle is at its place.
    let incident_here = |s: f64| incident.filter(|i| (s - i.at_m()).abs() < 1.0);
    // The next traffic light after `s`; the incident's stop replaces one due less than 100 m
    // before it (two stops in a row at 5 s fixes would be one long stop, and rightly raised).
    let light = |rng: &mut Rng, s: f64| {
        let at = s + rng.between(300.0, 1_200.0);
        match incident_at {
            Some(u) if s < u - 1.0 && at > u - 100.0 => u,
            _ => at,
        }
    };
    let mut next_light = light(&mut rng, 0.0);
    let mut standing_until: Option<f64> = None;
    // +1 along the route, -1 back along it after a U-turn.
    let mut direction = 1.0;
    let mut due = None;
    // The next stop of the course, the one the vehicle stands at (if it does), and the record.
    let (mut next_visit, mut at_visit) = (0, None);
    let mut arrivals = vec![None; course.visits.len()];
    let mut handovers = Vec::new();
    // Position error (east, north), correlated from fix to fix, and the standing walk.
    let (mut err, mut walk) = ([0.0f64; 2], [0.0f64; 2]);
    let rho = (-(gps.interval_s as f64) / ERROR_TIME_CONSTANT_S).exp();
    let (mut fixes, mut truth) = (Vec::new(), Vec::new());
    let mut next_fix = 1.0;
    loop {
        match incident {
            Some(Incident::UTurn { at_m }) if direction < 0.0 => {
                if due.is_none() && s <= at_m - params.uturn_m {
                    due = Some(T0.plus_secs(t));
                }
                if s <= at_m - drive_back_m || s <= 0.0 {
                    break;
                }
            }
            _ if s >= len => break,
            _ => {}
        }
        // Kinematics: brake for the next traffic light or stop, stand, pull away, cruise.
        match standing_until {
            Some(until) if t < until => v = 0.0,
            Some(_) => {
                standing_until = None;
                if let Some(n) = at_visit.take() {
                    next_visit = n + 1;
                    next_light = light(&mut rng, s);
                } else if let Some(Incident::UTurn { .. }) = incident_here(s) {
                    direction = -1.0;
                    next_light = f64::INFINITY;
                } else {
                    next_light = light(&mut rng, s);
                }
            }
            None => {
                // Where the vehicle stands next: the next stop, while it drives the route's way,
                // or a traffic light before it (one less than 100 m before the stop is not
                // there), and which stop, if it is one.
                let visit = course.visits.get(next_visit).filter(|_| direction > 0.0);
                let target = match visit {
                    Some(visit) if next_light >= visit.at_m - 100.0 => {
                        Some((visit.at_m, Some(visit)))
                    }
                    _ if next_light < len - 50.0 => Some((next_light, None)),
                    _ => None,
                };
                match target {
                    Some((at, stop)) if at - s <= 0.5 => {
                        v = 0.0;
                        let secs = match (stop, incident_here(s)) {
                            (Some(visit), _) => {
                                at_visit = Some(next_visit);
                                arrivals[next_visit] = Some(T0.plus_secs(t));
                                let handover = T0.plus_secs((t + visit.dwell_s / 2.0).round());
                                handovers.push((handover, next_visit));
                                visit.dwell_s
                            }
                            (None, Some(Incident::Stop { secs, .. })) => {
                                due = Some(T0.plus_secs(t + params.unplanned_stop_s));
                                secs
                            }
                            // A traffic light is never long enough for an unplanned stop.
                            _ => rng
                                .between(15.0, 90f64.min(params.unplanned_stop_s - 15.0).max(16.0)),
                        };
                        standing_until = Some(t + secs);
                    }
                    Some((at, _)) if v * v / (2.0 * BRAKE_MPS2) >= at - s => {
                        v = (v - BRAKE_MPS2 * DT).max(0.8);
                    }
                    _ => v = (v + BRAKE_MPS2 * DT).min(cruise_mps),
                }
            }
        }
        s += direction * v * DT;
        t += DT;
        if t + 1e-9 < next_fix {
            continue;
        }
        next_fix += gps.interval_s as f64;
        let standing = v == 0.0;
        // At a stop the crew switches the engine off and opens the door.
        let at_stop = standing && at_visit.is_some();
        for e in &mut err {
            *e = rho * *e + (1.0 - rho * rho).sqrt() * gps.sigma_m * rng.gauss();
        }
        if standing {
            for w in &mut walk {
                *w = (*w + 0.7 * rng.gauss()).clamp(-8.0, 8.0);
            }
        } else {
            walk = [0.0; 2];
        }
        let (mut east, mut north) = (err[0] + walk[0], err[1] + walk[1]);
        if rng.unit() < gps.multipath {
            let (d, a) = (
                rng.between(30.0, 80.0),
                rng.between(0.0, std::f64::consts::TAU),
            );
            east += d * a.sin();
            north += d * a.cos();
        }
        let (lat, lon, bearing) = route.at(s.clamp(0.0, len - 0.01));
        let bearing = if direction < 0.0 {
            bearing + 180.0
        } else {
            bearing
        };
        let (speed_mps, heading_deg) = if standing {
            (rng.between(0.0, 0.5), rng.between(0.0, 360.0))
        } else {
            (
                (v + 0.3 * rng.gauss()).max(0.0),
                (bearing + 3.0 * rng.gauss()).rem_euclid(360.0),
            )
        };
        truth.push(LatLon { lat, lon });
        fixes.push(Fix {
            seq: fixes.len() as u64 + 1,
            t: T0.plus_secs(t.round()),
            lat: lat + north / M_PER_DEG,
            lon: lon + east / (M_PER_DEG * lat.to_radians().cos()),
            speed_mps,
            heading_deg,
            accuracy_m: 1.2 * gps.sigma_m,
            ignition: !at_stop,
            door_open: at_stop,
        });
    }
    Track {
        fixes,
        truth,
        due,
        arrivals,
        handovers,
    }
}

/// Plans and departs a run on the course with `params` as run 0 of a fresh engine, its stops due
/// as [`Course::planned_stops`] says, feeds it the track's fixes and handovers with both escorts
/// checking in twice per check-in interval (at most every five minutes), and returns what the
/// engine raised.
pub fn run(course: &Course, track: &Track, params: &DetectionParams) -> Vec<Anomaly> {
    let mut engine = Engine::new();
    let mut pos = 0;
    let stops = course.planned_stops(track);
    plan_with(
        &mut engine,
        &mut pos,
        0,
        latlons(&course.route),
        stops,
        params.clone(),
    );
    // Every input in log order, each at the next log position.
    let mut feed = |event: Event| {
        pos += 1;
        engine.handle(pos, &event)
    };
    let handover = |at: Millis, n: usize| Event::CashBoxesHandedOver {
        run_id: "R-0".into(),
        stop_id: course.visits[n].stop_id.clone(),
        boxes: vec![format!("B-{n}")],
        seals: vec![n as u64],
        handed_by: vec!["E-1".into(), "E-2".into()],
        received_by: vec!["STAFF".into()],
        at,
    };
    let mut raised = Vec::new();
    let every_s = (params.checkin_interval_s / 2.0).min(300.0);
    let mut next_checkin = T0.plus_secs(every_s);
    let mut handovers = track.handovers.iter().peekable();
    for f in &track.fixes {
        while next_checkin <= f.t {
            for person in ["E-1", "E-2"] {
                raised.extend(feed(Event::CheckedIn {
                    run_id: "R-0".into(),
                    person_id: person.into(),
                    code: CheckInCode::Ok,
                    at: next_checkin,
                }));
            }
            next_checkin = next_checkin.plus_secs(every_s);
        }
        while let Some(&&(at, n)) = handovers.peek().filter(|(at, _)| *at < f.t) {
            handovers.next();
            raised.extend(feed(handover(at, n)));
        }
        raised.extend(feed(fixes_event(0, vec![f.clone()])));
    }
    for &(at, n) in handovers {
        raised.extend(feed(handover(at, n)));
    }
    raised
}

/// How progress along the route took one fix (see [`trace`]).
#[derive(Debug, Clone)]
pub struct TraceRow {
    /// The fix as sent.
    pub fix: Fix,
    /// Metres from where the vehicle really was.
    pub error_m: f64,
    /// Metres from the route.
    pub route_m: f64,
    /// Progress after the fix, metres along the route (NaN before it is acquired).
    pub progress_m: f64,
    pub update: ProgressUpdate,
    /// Where the truth lies along the route: every part within 30 m of it.
    pub truth_m: Vec<f64>,
    /// The positions the fix offered.
    pub candidates: Vec<Candidate>,
}

impl std::fmt::Display for TraceRow {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let f = &self.fix;
        write!(
            out,
            "+{:.0} s: {:.1} m/s heading {:.0}° accuracy {:.1} m, error {:.1} m, route {:.1} m; \
             progress {:.1} fall {:.1} confirmed by {}; truth at [",
            since_departure(f.t),
            f.speed_mps,
            f.heading_deg,
            f.accuracy_m,
            self.error_m,
            self.route_m,
            self.progress_m,
            self.update.fall_m,
            self.update.falling_fixes
        )?;
        for (i, s) in self.truth_m.iter().enumerate() {
            write!(out, "{}{s:.0}", if i == 0 { "" } else { " " })?;
        }
        write!(out, "]; candidates [")?;
        for (i, c) in self.candidates.iter().enumerate() {
            let gap = if i == 0 { "" } else { " " };
            write!(out, "{gap}{:.0}/{:.0}m/{:.0}°", c.s, c.lateral, c.bearing)?;
        }
        write!(out, "]")
    }
}

/// How the run's progress along its route (what the U-turn rule judges) took each fix within
/// `from_s..=to_s` seconds of departure: for tracing a sweep's false alarm or missed incident to
/// its cause. It feeds a progress tracker of its own the run's fixes, as the engine does for an
/// active run until it raises a U-turn.
pub fn trace(
    course: &Course,
    track: &Track,
    params: &DetectionParams,
    from_s: f64,
    to_s: f64,
) -> Vec<TraceRow> {
    let route = RouteIndex::new(&latlons(&course.route), params.corridor_m);
    let (mut tracker, mut cands) = (ProgressTracker::default(), Vec::new());
    let (mut near_truth, mut truth_cands) = (NearSegments::default(), Vec::new());
    let mut rows = Vec::new();
    for (f, truth) in track.fixes.iter().zip(&track.truth) {
        let p = route.to_local(LatLon {
            lat: f.lat,
            lon: f.lon,
        });
        let (update, route_m) = tracker.update(&route, &mut cands, f, p, params);
        if (from_s..=to_s).contains(&since_departure(f.t)) {
            let q = route.to_local(*truth);
            route.candidates(q, 30.0, &mut near_truth, &mut truth_cands);
            rows.push(TraceRow {
                fix: f.clone(),
                error_m: dist(p, q),
                route_m,
                progress_m: tracker.s.unwrap_or(f64::NAN),
                update,
                truth_m: truth_cands.iter().map(|c| c.s).collect(),
                candidates: cands.clone(),
            });
        }
    }
    rows
}

/// Millis since departure, for reports.
pub fn since_departure(t: Millis) -> f64 {
    t.secs_since(T0)
}
