//! The engine's drive: runs planned on the public Gothenburg routes and departed, registered
//! checkpoints over the city, and every vehicle driving its route at road speed with GPS noise,
//! fed straight to a detection engine (no I/O). Shared by `engine-bench` and the clean-drive
//! test (no false alarm on any public route), with the corridor and zone questions the peers
//! answer: by our indexes ([`Questions`]) and by a plain scan ([`Scan`]).

use cit_domain::event::Event;
use cit_domain::{Checkpoint, DetectionParams, Fix, LatLon, Millis, PlannedStop};
use cit_engine::Engine;
use cit_engine::frame::{LocalFrame, dist, haversine_m};
use cit_engine::route::{Candidate, NearSegments, RouteIndex, closest_on_segment};
use cit_engine::zones::ZoneIndex;

use crate::{FixSample, Rng, Route, SimVehicle, fleet};

/// When every run departs.
pub const T0: Millis = Millis(1_773_000_000_000);
/// The checkpoints' radius, metres.
pub const ZONE_RADIUS_M: f64 = 100.0;

/// A grid of checkpoints over the city (100 per row), valid all day.
pub fn checkpoints(n: usize) -> Vec<Checkpoint> {
    (0..n)
        .map(|i| {
            let (row, col) = (i / 100, i % 100);
            Checkpoint {
                checkpoint_id: format!("PC-{i}"),
                position: LatLon {
                    lat: 57.65 + row as f64 * 0.001,
                    lon: 11.87 + col as f64 * 0.0022,
                },
                radius_m: ZONE_RADIUS_M,
                valid_from: T0,
                valid_to: T0.plus_secs(86_400.0),
            }
        })
        .collect()
}

pub fn latlons(route: &Route) -> Vec<LatLon> {
    route
        .coords
        .iter()
        .map(|c| LatLon {
            lat: c[1],
            lon: c[0],
        })
        .collect()
}

/// Two numbers in [-1, 1) from `n` (splitmix64): GPS noise that is the same on every run.
pub fn noise(n: u64) -> (f64, f64) {
    let z = Rng::new(n).next_u64();
    let unit = |bits: u64| (bits as f64 / u32::MAX as f64) * 2.0 - 1.0;
    (unit(z & 0xFFFF_FFFF), unit(z >> 32))
}

/// The fleet, every vehicle starting where a drive of `steps` fixes fits on its route (no
/// wrap-around).
pub fn vehicles(runs: usize, steps: usize, routes: &[Route]) -> Vec<SimVehicle> {
    let steps = steps as f64;
    let mut fleet = fleet(runs, routes);
    for (i, v) in fleet.iter_mut().enumerate() {
        let room = (routes[v.route].length() - v.speed_mps * (steps + 1.0)).max(1.0);
        v.offset_m = (i as f64 * 137.0) % room;
    }
    fleet
}

/// The next fix of every vehicle in turn, with up to `noise_m` of noise on each axis.
pub fn next_step(
    fleet: &mut [SimVehicle],
    routes: &[Route],
    n: &mut u64,
    noise_m: f64,
) -> Vec<FixSample> {
    fleet
        .iter_mut()
        .map(|v| {
            let mut f = v.next_fix(routes, T0.0);
            *n += 1;
            let (nx, ny) = noise(*n);
            f.lat += ny * noise_m / 111_195.0;
            f.lon += nx * noise_m / (111_195.0 * f.lat.to_radians().cos());
            f
        })
        .collect()
}

/// Plans run `R-{i}` for vehicle `V-{i}` on `route` (two escorts, default parameters, no stops)
/// and departs it at [`T0`].
pub fn plan(engine: &mut Engine, pos: &mut u64, i: usize, route: Vec<LatLon>) {
    plan_with(engine, pos, i, route, vec![], DetectionParams::default());
}

/// [`plan`] with planned stops and the run's own detection parameters.
pub fn plan_with(
    engine: &mut Engine,
    pos: &mut u64,
    i: usize,
    route: Vec<LatLon>,
    stops: Vec<PlannedStop>,
    params: DetectionParams,
) {
    let run_id = format!("R-{i}");
    let vehicle_id = format!("V-{i}");
    let planned = Event::RunPlanned {
        run_id: run_id.clone(),
        vehicle_id: vehicle_id.clone(),
        driver_id: "D".into(),
        escort_ids: vec!["E-1".into(), "E-2".into()],
        route,
        stops,
        params,
        cash_boxes: vec![],
        at: T0,
    };
    let departed = Event::RunDeparted {
        run_id,
        vehicle_id,
        at: T0,
    };
    for e in [planned, departed] {
        *pos += 1;
        engine.handle(*pos, &e);
    }
}

/// The fixes of run `R-{run}`'s vehicle, as logged.
pub fn fixes_event(run: usize, fixes: Vec<Fix>) -> Event {
    Event::FixesRecorded {
        vehicle_id: format!("V-{run}"),
        epoch: None,
        run_id: Some(format!("R-{run}")),
        fixes,
    }
}

/// Registers `n` checkpoints (see [`checkpoints`]) with the engine.
pub fn register_checkpoints(engine: &mut Engine, pos: &mut u64, n: usize) {
    for checkpoint in checkpoints(n) {
        *pos += 1;
        engine.handle(*pos, &Event::CheckpointRegistered { checkpoint, at: T0 });
    }
}

/// The margin of the "registered checkpoint here?" question (SCENARIOS.md, A3).
pub const ZONE_MARGIN_M: f64 = 50.0;

/// The corridor and zone questions a peer is asked for a fix: the distance to the run's route,
/// the progress of the nearest route position (NaN when none is within the corridor), and how
/// many registered checkpoints are within radius + margin at the fix's time.
pub type Answer = (f64, f64, usize);

/// Our indexes alone, answering the peers' questions per fix.
pub struct Questions {
    routes: Vec<RouteIndex>,
    near: Vec<NearSegments>,
    zones: ZoneIndex,
    scratch: Vec<Candidate>,
    corridor_m: f64,
}

impl Questions {
    /// The routes of the fleet's runs, in run order, each with the corridor the questions ask
    /// about, and `zones` checkpoints.
    pub fn new(zones: usize, routes: &[Route], fleet: &[SimVehicle], corridor_m: f64) -> Self {
        let mut index = ZoneIndex::default();
        for cp in checkpoints(zones) {
            index.insert(cp);
        }
        Questions {
            routes: fleet
                .iter()
                .map(|v| RouteIndex::new(&latlons(&routes[v.route]), corridor_m))
                .collect(),
            near: vec![NearSegments::default(); fleet.len()],
            zones: index,
            scratch: Vec::new(),
            corridor_m,
        }
    }

    pub fn ask(&mut self, run: usize, f: &FixSample) -> Answer {
        let route = &self.routes[run];
        let p = route.frame.to_local(f.lat, f.lon);
        route.candidates(p, self.corridor_m, &mut self.near[run], &mut self.scratch);
        let nearest = self
            .scratch
            .iter()
            .min_by(|a, b| a.lateral.total_cmp(&b.lateral));
        let (distance, progress) = match nearest {
            Some(c) => (c.lateral, c.s),
            None => (route.distance(p), f64::NAN),
        };
        let t = Millis(f.t_ms);
        let zones = self
            .zones
            .containing(f.latlon(), ZONE_MARGIN_M, t, t)
            .count();
        (distance, progress, zones)
    }
}

/// The same questions answered without an index, by scanning every segment of the route and
/// every checkpoint: the in-process peer of the criterion bench (what a tracker without spatial
/// indexes does), and a check of the indexes' answers.
pub struct Scan {
    routes: Vec<(LocalFrame, Vec<[f64; 2]>)>,
    zones: Vec<Checkpoint>,
}

impl Scan {
    pub fn new(zones: usize, routes: &[Route], fleet: &[SimVehicle]) -> Self {
        Scan {
            routes: fleet
                .iter()
                .map(|v| {
                    let points = latlons(&routes[v.route]);
                    let frame = LocalFrame::new(points[0]);
                    let local = points
                        .iter()
                        .map(|p| frame.to_local(p.lat, p.lon))
                        .collect();
                    (frame, local)
                })
                .collect(),
            zones: checkpoints(zones),
        }
    }

    pub fn ask(&self, run: usize, f: &FixSample, corridor_m: f64) -> Answer {
        let (frame, points) = &self.routes[run];
        let p = frame.to_local(f.lat, f.lon);
        let (mut best, mut at, mut s) = (f64::INFINITY, f64::NAN, 0.0);
        for w in points.windows(2) {
            let (k, closest) = closest_on_segment(w[0], w[1], p);
            let len = dist(w[0], w[1]);
            let d = dist(p, closest);
            if d < best {
                (best, at) = (d, s + k * len);
            }
            s += len;
        }
        let t = Millis(f.t_ms);
        let here = f.latlon();
        let zones = self
            .zones
            .iter()
            .filter(|z| {
                z.valid_from <= t
                    && t <= z.valid_to
                    && haversine_m(here, z.position) <= z.radius_m + ZONE_MARGIN_M
            })
            .count();
        (best, if best <= corridor_m { at } else { f64::NAN }, zones)
    }
}
