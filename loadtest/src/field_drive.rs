//! Whole runs driven the way the scenario generator drives them (shared/data/scenarios/README.md),
//! with its GPS error turned up or down: road speed with braking and accelerating at 1.5 m/s²,
//! traffic stops of 15–90 s, correlated Gaussian position error of a chosen sigma, one-fix
//! multipath outliers of 30–80 m, a bounded random walk and speed noise while standing, fixes every
//! 1, 2 or 5 s, and the escorts checking in; optionally one incident (a U-turn at a roadblock, a
//! long stop). Apart from the incident's anomaly, anything the engine raises is a false alarm.
//! Used by the field-drive tests and the `noise-sweep` binary.

use cit_domain::event::{Anomaly, Event};
use cit_domain::{CheckInCode, DetectionParams, Fix, LatLon, Millis};
use cit_engine::Engine;

use crate::engine_drive::{T0, fixes_event, latlons, plan_with};
use crate::{Rng, Route};

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
    /// A U-turn somewhere along `route`, at least 300 m from either end.
    pub fn uturn_on(route: &Route, rng: &mut Rng) -> Incident {
        Incident::UTurn {
            at_m: somewhere_on(route, rng),
        }
    }

    /// A stop somewhere along `route`, at least 300 m from either end, 1–4 minutes longer than
    /// the run's `unplanned_stop_s`.
    pub fn stop_on(route: &Route, rng: &mut Rng, params: &DetectionParams) -> Incident {
        let at_m = somewhere_on(route, rng);
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

fn somewhere_on(route: &Route, rng: &mut Rng) -> f64 {
    300.0 + (route.length() - 600.0) * rng.unit()
}

/// How far a turned vehicle drives back along the route before the drive ends.
const DRIVE_BACK_M: f64 = 150.0;

/// One whole drive of `route` at `cruise_mps`, departing at [`T0`], with an incident or none;
/// its anomaly is due by the run's `params`.
pub fn drive(
    route: &Route,
    cruise_mps: f64,
    gps: Gps,
    seed: u64,
    incident: Option<Incident>,
    params: &DetectionParams,
) -> Track {
    let drive_back_m = DRIVE_BACK_M.max(params.uturn_m + 100.0);
    let mut rng = Rng::new(seed);
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
        // Kinematics: brake for the next traffic light, stand, pull away, cruise.
        match standing_until {
            Some(until) if t < until => v = 0.0,
            Some(_) => {
                standing_until = None;
                if let Some(Incident::UTurn { .. }) = incident_here(s) {
                    direction = -1.0;
                    next_light = f64::INFINITY;
                } else {
                    next_light = light(&mut rng, s);
                }
            }
            None => {
                let to_light = next_light - s;
                if to_light <= 0.5 && next_light < len - 50.0 {
                    v = 0.0;
                    let secs = match incident_here(s) {
                        Some(Incident::Stop { secs, .. }) => {
                            due = Some(T0.plus_secs(t + params.unplanned_stop_s));
                            secs
                        }
                        // A traffic light is never long enough for an unplanned stop.
                        _ => rng.between(15.0, 90f64.min(params.unplanned_stop_s - 15.0).max(16.0)),
                    };
                    standing_until = Some(t + secs);
                } else if v * v / (2.0 * BRAKE_MPS2) >= to_light && next_light < len - 50.0 {
                    v = (v - BRAKE_MPS2 * DT).max(0.8);
                } else {
                    v = (v + BRAKE_MPS2 * DT).min(cruise_mps);
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
        let lat_m = 111_195.0;
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
            lat: lat + north / lat_m,
            lon: lon + east / (lat_m * lat.to_radians().cos()),
            speed_mps,
            heading_deg,
            accuracy_m: 1.2 * gps.sigma_m,
            ignition: true,
            door_open: false,
        });
    }
    Track { fixes, truth, due }
}

/// Plans and departs a run on `route` with `params` as run 0 of a fresh engine, feeds it `fixes`
/// with both escorts checking in twice per check-in interval (at most every five minutes), and
/// returns what the engine raised.
pub fn run(route: &Route, fixes: &[Fix], params: &DetectionParams) -> Vec<Anomaly> {
    let mut engine = Engine::new();
    let mut pos = 0;
    plan_with(&mut engine, &mut pos, 0, latlons(route), params.clone());
    let mut raised = Vec::new();
    let every_s = (params.checkin_interval_s / 2.0).min(300.0);
    let mut next_checkin = T0.plus_secs(every_s);
    for f in fixes {
        while next_checkin <= f.t {
            for person in ["E-1", "E-2"] {
                pos += 1;
                let checkin = Event::CheckedIn {
                    run_id: "R-0".into(),
                    person_id: person.into(),
                    code: CheckInCode::Ok,
                    at: next_checkin,
                };
                raised.extend(engine.handle(pos, &checkin));
            }
            next_checkin = next_checkin.plus_secs(every_s);
        }
        pos += 1;
        raised.extend(engine.handle(pos, &fixes_event(0, vec![f.clone()])));
    }
    raised
}

/// Millis since departure, for reports.
pub fn since_departure(t: Millis) -> f64 {
    t.secs_since(T0)
}
