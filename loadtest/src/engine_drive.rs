//! The engine's drive: runs planned on the public Gothenburg routes and departed, registered
//! checkpoints over the city, and every vehicle driving its route at road speed with GPS noise,
//! fed straight to a detection engine (no I/O). Shared by `engine-bench` and the clean-drive
//! test (no false alarm on any public route).

use cit_domain::event::Event;
use cit_domain::{Checkpoint, DetectionParams, Fix, LatLon, Millis};
use cit_engine::Engine;

use crate::{FixSample, Route, SimVehicle, fleet};

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
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
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
    let run_id = format!("R-{i}");
    let vehicle_id = format!("V-{i}");
    let planned = Event::RunPlanned {
        run_id: run_id.clone(),
        vehicle_id: vehicle_id.clone(),
        driver_id: "D".into(),
        escort_ids: vec!["E-1".into(), "E-2".into()],
        route,
        stops: vec![],
        params: DetectionParams::default(),
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
        run_id: Some(format!("R-{run}")),
        fixes,
    }
}
