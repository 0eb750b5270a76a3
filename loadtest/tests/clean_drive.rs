//! No false alarm on real roads: vehicles driving the public Gothenburg routes as planned, at road
//! speed with GPS noise, through the detection engine. A vehicle starts every 10 m along every
//! route and drives 15 s, so a first fix lands on every straight, junction, turnaround and place
//! where a route passes itself; then a fleet drives for minutes. Any anomaly is a false alarm.
//! (`engine-bench` drives a larger fleet and prints what it raised.)

use cit_engine::Engine;
use cit_loadtest::engine_drive::{fixes_event, latlons, next_step, plan, vehicles};
use cit_loadtest::{Route, SimVehicle, gothenburg_routes};

/// Drives `fleet` for `steps` fixes each (up to 4 m of noise per axis); what the engine raised.
fn drive(routes: &[Route], mut fleet: Vec<SimVehicle>, steps: usize) -> Vec<String> {
    let mut engine = Engine::new();
    let mut pos = 0;
    for (i, v) in fleet.iter().enumerate() {
        plan(&mut engine, &mut pos, i, latlons(&routes[v.route]));
    }
    let (mut n, mut raised) = (0, Vec::new());
    for _ in 0..steps {
        for (run, f) in next_step(&mut fleet, routes, &mut n, 4.0)
            .iter()
            .enumerate()
        {
            pos += 1;
            let anomalies = engine.handle(pos, &fixes_event(run, vec![f.to_domain()]));
            raised.extend(
                anomalies
                    .into_iter()
                    .map(|a| format!("{} {}", a.id, a.summary)),
            );
        }
    }
    raised
}

#[test]
fn a_first_fix_anywhere_on_any_public_route_raises_nothing() {
    let routes = gothenburg_routes().expect("the shared data's Gothenburg routes");
    let (speed, steps) = (11.0, 15);
    let fleet: Vec<SimVehicle> = routes
        .iter()
        .enumerate()
        .flat_map(|(r, route)| {
            let room = route.length() - speed * (steps + 1) as f64;
            (0..(room / 10.0) as usize).map(move |k| SimVehicle {
                id: format!("V-{r}-{k}"),
                route: r,
                offset_m: k as f64 * 10.0,
                speed_mps: speed,
                seq: 0,
            })
        })
        .collect();
    assert!(fleet.len() > 10_000, "{} starting points", fleet.len());
    let raised = drive(&routes, fleet, steps);
    assert!(raised.is_empty(), "false alarms: {raised:#?}");
}

#[test]
fn a_fleet_driving_every_public_route_for_minutes_raises_nothing() {
    let routes = gothenburg_routes().expect("the shared data's Gothenburg routes");
    let steps = 200;
    let raised = drive(&routes, vehicles(1_000, steps, &routes), steps);
    assert!(raised.is_empty(), "false alarms: {raised:#?}");
}
