//! The detection rules one by one (A1–A11), on the real GBG-R001 route from ../shared/data,
//! including the hard cases: drift while parked, one 80 m multipath jump, a traffic-light stop
//! just under the threshold, a reported jam, registered vs unregistered checkpoints, a U-turn,
//! signal gaps across a deadline, an input exactly at its deadline, crew alarms, rounds fired
//! and the move to a replacement vehicle (R8, with A8's swap out of place).

use cit_domain::event::{AnomalyKind, Event, RoundsSpent, Severity};
use cit_domain::{
    CheckInCode, Checkpoint, DetectionParams, Fix, IncidentKind, LatLon, Millis, PlannedStop,
};
use cit_engine::Engine;

const T0: Millis = Millis(1_773_000_000_000);
const M_PER_DEG: f64 = 111_195.08;

fn route() -> Vec<LatLon> {
    route_named("GBG-R001")
}

fn route_named(name: &str) -> Vec<LatLon> {
    let path = format!(
        "{}/../../../shared/data/gothenburg/routes/{name}.geojson",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("route file")).expect("json");
    v["features"][0]["geometry"]["coordinates"]
        .as_array()
        .expect("coords")
        .iter()
        .map(|c| LatLon {
            lat: c[1].as_f64().expect("lat"),
            lon: c[0].as_f64().expect("lon"),
        })
        .collect()
}

/// A point `s` metres along the route, shifted `right` metres to the right of the direction of
/// travel (perpendicular to the route), and the route's bearing there.
fn along(r: &[LatLon], s: f64, right: f64) -> (LatLon, f64) {
    let mut left = s;
    for w in r.windows(2) {
        let k = w[0].lat.to_radians().cos();
        let dx = (w[1].lon - w[0].lon) * M_PER_DEG * k;
        let dy = (w[1].lat - w[0].lat) * M_PER_DEG;
        let len = (dx * dx + dy * dy).sqrt();
        if left <= len || len == 0.0 {
            let t = if len > 0.0 { left / len } else { 0.0 };
            let (ux, uy) = if len > 0.0 {
                (dx / len, dy / len)
            } else {
                (0.0, 1.0)
            };
            // Right of travel: (uy, -ux) in (east, north).
            let p = LatLon {
                lat: w[0].lat + t * (w[1].lat - w[0].lat) + (-ux * right) / M_PER_DEG,
                lon: w[0].lon + t * (w[1].lon - w[0].lon) + (uy * right) / (M_PER_DEG * k),
            };
            return (p, dx.atan2(dy).to_degrees().rem_euclid(360.0));
        }
        left -= len;
    }
    (r[r.len() - 1], 0.0)
}

/// The point `east`, `north` metres from a fixed point in Gothenburg (the frame of traced drives).
fn local(east: f64, north: f64) -> LatLon {
    let base = LatLon {
        lat: 57.7,
        lon: 11.97,
    };
    LatLon {
        lat: base.lat + north / M_PER_DEG,
        lon: base.lon + east / (M_PER_DEG * base.lat.to_radians().cos()),
    }
}

struct World {
    engine: Engine,
    route: Vec<LatLon>,
    pos: u64,
    seq: u64,
    /// The vehicle whose fixes `fix_at` sends for the run (the replacement after a swap).
    vehicle: String,
    raised: Vec<(AnomalyKind, Millis)>,
    /// The accuracy the unit reports with each fix, metres.
    accuracy_m: f64,
}

impl World {
    fn new(params: DetectionParams, stops: Vec<PlannedStop>) -> World {
        World::on(route(), params, stops)
    }

    fn on(route: Vec<LatLon>, params: DetectionParams, stops: Vec<PlannedStop>) -> World {
        let mut w = World {
            engine: Engine::new(),
            route,
            pos: 0,
            seq: 0,
            vehicle: "V-1".into(),
            raised: vec![],
            accuracy_m: 5.0,
        };
        let route = w.route.clone();
        w.feed(Event::RunPlanned {
            run_id: "R-1".into(),
            vehicle_id: "V-1".into(),
            driver_id: "D-1".into(),
            escort_ids: vec!["E-1".into()],
            route,
            stops,
            params,
            cash_boxes: vec![],
            at: T0,
        });
        w.feed(Event::RunDeparted {
            run_id: "R-1".into(),
            vehicle_id: "V-1".into(),
            at: T0,
        });
        w
    }

    fn feed(&mut self, e: Event) {
        self.pos += 1;
        for a in self.engine.handle(self.pos, &e) {
            self.raised.push((a.kind, a.at));
        }
    }

    /// A fix at second `t` after T0, `s` metres along the route, `east` metres to its right.
    fn fix(&mut self, t: f64, s: f64, east: f64, speed: f64) {
        let (p, bearing) = along(&self.route, s, east);
        self.fix_at(t, p, speed, bearing, true, false);
    }

    fn fix_at(&mut self, t: f64, p: LatLon, speed: f64, heading: f64, ignition: bool, door: bool) {
        let vehicle = self.vehicle.clone();
        self.fix_of(&vehicle, Some("R-1"), t, p, speed, heading, ignition, door);
    }

    /// A fix of any vehicle, filed under `run` (as ingest files a vehicle's fixes under the run
    /// it is on, or under none).
    #[allow(clippy::too_many_arguments)]
    fn fix_of(
        &mut self,
        vehicle: &str,
        run: Option<&str>,
        t: f64,
        p: LatLon,
        speed: f64,
        heading: f64,
        ignition: bool,
        door: bool,
    ) {
        self.seq += 1;
        self.feed(Event::FixesRecorded {
            vehicle_id: vehicle.into(),
            epoch: None,
            run_id: run.map(str::to_string),
            fixes: vec![Fix {
                seq: self.seq,
                t: T0.plus_secs(t),
                lat: p.lat,
                lon: p.lon,
                speed_mps: speed,
                heading_deg: heading,
                accuracy_m: self.accuracy_m,
                ignition,
                door_open: door,
            }],
        });
    }

    /// A run on a route given in metres east and north of a fixed point (routes and fixes
    /// copied from drives traced in the sweeps are given so), quiet parameters, no stops.
    fn traced(route: &[[f64; 2]]) -> World {
        World::on(
            route.iter().map(|&[x, y]| local(x, y)).collect(),
            quiet(),
            vec![],
        )
    }

    /// Feeds traced fixes, (second, east, north, speed, heading), each at `second - offset`.
    fn feed_traced(&mut self, fixes: &[(u32, f64, f64, f64, u32)], offset: f64) {
        for &(t, x, y, speed, heading) in fixes {
            let heading = f64::from(heading);
            self.fix_at(
                f64::from(t) - offset,
                local(x, y),
                speed,
                heading,
                true,
                false,
            );
        }
    }

    /// Drives from `s0` at `v` m/s, one fix a second, from second `t0` for `secs` seconds.
    fn drive(&mut self, t0: f64, s0: f64, v: f64, secs: u32) -> f64 {
        for i in 0..secs {
            self.fix(t0 + f64::from(i), s0 + v * f64::from(i), 0.0, v);
        }
        s0 + v * f64::from(secs)
    }

    fn kinds(&self) -> Vec<AnomalyKind> {
        self.raised.iter().map(|(k, _)| *k).collect()
    }

    fn at(&self, kind: AnomalyKind) -> Vec<f64> {
        self.raised
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| t.secs_since(T0))
            .collect()
    }
}

fn quiet() -> DetectionParams {
    // Check-ins and signal gaps out of the way unless a test is about them.
    DetectionParams {
        checkin_interval_s: 1e6,
        max_gap_s: 1e6,
        ..DetectionParams::default()
    }
}

/// Stands at `s` from second `t0` for `secs`, drifting a few metres, with an 80 m multipath jump
/// at each of the fixes `jumps` (counted from 0).
fn park(w: &mut World, t0: f64, s: f64, secs: u32, jumps: &[u32]) {
    for i in 0..secs {
        let drift = (
            (f64::from(i) * 0.7).sin() * 6.0,
            (f64::from(i) * 0.3).cos() * 5.0,
        );
        let east = if jumps.contains(&i) { 80.0 } else { drift.0 };
        let (p, _) = along(&w.route, s + drift.1, east);
        w.fix_at(t0 + f64::from(i), p, 0.2, 90.0, true, false);
    }
}

#[test]
fn a1_unplanned_stop_with_parked_drift_and_one_multipath_jump_is_one_anomaly_at_start_plus_120s() {
    let mut w = World::new(quiet(), vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 30);
    park(&mut w, 30.0, s, 300, &[60]);
    w.drive(330.0, s, 10.0, 10);
    assert_eq!(w.at(AnomalyKind::UnplannedStop), [150.0]);
}

#[test]
fn a1_multipath_fixes_in_a_row_while_parked_or_first_do_not_split_the_stop() {
    // Two 80 m jumps in a row, the same way, mid-stop; and two as the stop's very first fixes
    // (its position then rests on them until the others outvote them). One stop each, judged
    // from its first slow fix.
    for (jumps, at) in [(&[60, 61][..], 150.0), (&[0, 1][..], 150.0)] {
        let mut w = World::new(quiet(), vec![]);
        let s = w.drive(0.0, 0.0, 10.0, 30);
        park(&mut w, 30.0, s, 300, jumps);
        w.drive(330.0, s, 10.0, 10);
        assert_eq!(w.at(AnomalyKind::UnplannedStop), [at], "jumps at {jumps:?}");
    }
}

#[test]
fn a1_traffic_light_stop_just_under_the_threshold_raises_nothing() {
    let mut w = World::new(quiet(), vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 30);
    park(&mut w, 30.0, s, 119, &[]);
    w.drive(149.0, s, 10.0, 10);
    assert!(w.kinds().is_empty(), "{:?}", w.raised);
}

#[test]
fn a1_a_reported_jam_covers_the_stop() {
    let mut w = World::new(quiet(), vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 30);
    w.feed(Event::IncidentReported {
        run_id: "R-1".into(),
        person_id: "E-1".into(),
        kind: IncidentKind::Jam,
        rounds: None,
        spent: None,
        note: String::new(),
        at: T0.plus_secs(100.0),
    });
    park(&mut w, 30.0, s, 300, &[]);
    assert!(
        w.at(AnomalyKind::UnplannedStop).is_empty(),
        "{:?}",
        w.raised
    );
}

#[test]
fn a1_a_stop_inside_a_registered_checkpoint_is_exempt_and_outside_its_window_is_not() {
    for (window, expected) in [((0.0, 3600.0), 0), ((5000.0, 6000.0), 1)] {
        let mut w = World::new(quiet(), vec![]);
        let s = w.drive(0.0, 0.0, 10.0, 30);
        let (p, _) = along(&w.route, s, 0.0);
        w.feed(Event::CheckpointRegistered {
            checkpoint: Checkpoint {
                checkpoint_id: "PC-1".into(),
                position: p,
                radius_m: 100.0,
                valid_from: T0.plus_secs(window.0),
                valid_to: T0.plus_secs(window.1),
            },
            at: T0,
        });
        park(&mut w, 30.0, s, 200, &[]);
        assert_eq!(
            w.at(AnomalyKind::UnplannedStop).len(),
            expected,
            "window {window:?}"
        );
    }
}

#[test]
fn a2_deviation_needs_three_fixes_over_ten_seconds_and_one_multipath_fix_does_not_count() {
    let mut w = World::new(quiet(), vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 20);
    // One 80 m multipath fix on the way: no deviation.
    w.fix(20.0, s, 80.0, 10.0);
    let s = w.drive(21.0, s + 10.0, 10.0, 10);
    assert!(w.at(AnomalyKind::RouteDeviation).is_empty());
    // A real detour 150 m off, one fix a second: raised at the fix that makes 3 fixes >= 10 s.
    for i in 0..20 {
        w.fix(31.0 + f64::from(i), s, 150.0, 10.0);
    }
    assert_eq!(w.at(AnomalyKind::RouteDeviation), [41.0]);
    // One fix back near the route (multipath) does not split it into two detours.
    w.fix(51.0, s, 10.0, 10.0);
    for i in 0..20 {
        w.fix(52.0 + f64::from(i), s, 150.0, 10.0);
    }
    assert_eq!(w.at(AnomalyKind::RouteDeviation).len(), 1);
}

#[test]
fn a3_police_check_without_registered_checkpoint_is_suspect_and_with_one_is_not() {
    for registered in [false, true] {
        let mut w = World::new(quiet(), vec![]);
        let s = w.drive(0.0, 0.0, 10.0, 20);
        if registered {
            let (p, _) = along(&w.route, s + 100.0, 0.0);
            w.feed(Event::CheckpointRegistered {
                checkpoint: Checkpoint {
                    checkpoint_id: "PC-1".into(),
                    position: p,
                    radius_m: 60.0,
                    valid_from: T0,
                    valid_to: T0.plus_secs(3600.0),
                },
                at: T0,
            });
        }
        w.feed(Event::IncidentReported {
            run_id: "R-1".into(),
            person_id: "E-1".into(),
            kind: IncidentKind::PoliceCheck,
            rounds: None,
            spent: None,
            note: String::new(),
            at: T0.plus_secs(25.0),
        });
        // The last fix is 90 m from the checkpoint: within its radius + 50 m.
        let expected: Vec<f64> = if registered { vec![] } else { vec![25.0] };
        assert_eq!(
            w.at(AnomalyKind::SuspectedFakeCheckpoint),
            expected,
            "registered={registered}"
        );
    }
}

#[test]
fn a4_u_turn_on_the_route_is_a_roadblock_and_driving_on_is_not() {
    let mut w = World::new(quiet(), vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 60);
    // Turn around and drive back along the route.
    for i in 0..15 {
        let (p, bearing) = along(&w.route, s - 8.0 * f64::from(i), 0.0);
        w.fix_at(
            60.0 + f64::from(i),
            p,
            8.0,
            (bearing + 180.0) % 360.0,
            true,
            false,
        );
    }
    let at = w.at(AnomalyKind::Roadblock);
    assert_eq!(at.len(), 1, "{:?}", w.raised);
    assert!((65.0..=70.0).contains(&at[0]), "raised at {at:?}");
}

#[test]
fn a4_a_u_turn_seen_every_5_s_is_raised_from_the_fixes_running_back() {
    // A unit reporting every 5 s: the vehicle turns at a roadblock and is 20 m back at the first
    // fix, 70 m back at the second, then off the route on its detour. Two fixes running back
    // confirm the fall; waiting for two fixes 50 m back would miss it.
    let mut w = World::new(quiet(), vec![]);
    let mut s = 0.0;
    for i in 0..12 {
        let (p, bearing) = along(&w.route, s, 0.0);
        w.fix_at(5.0 * f64::from(i), p, 10.0, bearing, true, false);
        s += 50.0;
    }
    let turned_at = s - 50.0;
    for (k, back) in [(12, 20.0), (13, 70.0)] {
        let (p, bearing) = along(&w.route, turned_at - back, 0.0);
        w.fix_at(
            5.0 * f64::from(k),
            p,
            9.0,
            (bearing + 180.0) % 360.0,
            true,
            false,
        );
    }
    assert_eq!(w.at(AnomalyKind::Roadblock), [65.0], "{:?}", w.raised);
}

#[test]
fn a4_a_u_turn_just_past_a_sharp_bend_is_raised_when_the_fixes_running_back_are_found_again() {
    // From a sweep over new network routes (sigma 4 m, 1 s fixes): the route bends round from
    // west to south-east; the vehicle stops just past the bend, turns, and drives back west at
    // 9 m/s. Its fixes in the turn match the bend (its heading sweeps across it), so progress
    // hangs there while the vehicle drives away, until no reachable position is left. Found
    // again behind, running back along the route, that is the fall, not a jump that forgets it.
    let mut w = World::traced(&[
        [381.9, 106.2],
        [326.3, 84.8],
        [75.4, 20.1],
        [-9.2, -2.5],
        [-28.0, -7.7],
        [-53.9, -14.6],
        [-64.8, -16.8],
        [-69.1, -17.7],
        [-76.9, -18.0],
        [-81.5, -13.6],
        [-85.3, -11.8],
        [-91.5, -10.9],
        [-95.6, -11.5],
        [-98.9, -12.9],
        [-103.4, -16.3],
        [-106.6, -21.1],
        [-108.0, -27.1],
        [-107.6, -32.1],
        [-104.5, -38.5],
        [-99.2, -43.1],
        [-95.2, -44.7],
        [-93.5, -50.1],
        [-93.7, -57.4],
        [-94.1, -71.2],
        [-95.4, -80.5],
        [-98.5, -93.3],
        [-104.6, -109.6],
        [-107.6, -115.9],
    ]);
    // Drive in at 9 m/s to the stop (about 563 m along), then stand half a minute.
    let end = w.drive(0.0, 0.0, 9.0, 62);
    assert!((555.0..570.0).contains(&end), "{end}");
    // (second, east, north, speed, heading) as the unit sent them, from the stand on.
    let fixes = [
        (615, -102.6, -39.2, 0.1, 172),
        (617, -103.3, -39.8, 0.1, 226),
        (619, -102.4, -39.6, 0.4, 118),
        (621, -102.1, -40.0, 0.1, 303),
        (623, -100.5, -40.0, 0.4, 63),
        (625, -96.7, -39.7, 0.2, 7),
        (627, -101.9, -40.9, 0.0, 334),
        (628, -102.2, -39.2, 2.2, 359),
        (629, -101.0, -35.9, 3.6, 355),
        (630, -100.1, -30.2, 5.1, 14),
        (631, -100.2, -24.9, 6.8, 34),
        (632, -95.8, -19.9, 7.0, 56),
        (633, -90.8, -16.0, 8.8, 75),
        (634, -81.5, -16.3, 8.8, 117),
        (635, -74.0, -21.6, 9.1, 136),
        (636, -65.8, -22.8, 9.2, 76),
        (637, -57.1, -20.6, 9.1, 85),
        (638, -47.3, -19.2, 8.8, 75),
        (639, -36.5, -18.2, 8.8, 76),
        (640, -29.6, -14.8, 9.4, 78),
        (641, -22.1, -11.6, 9.4, 77),
        (642, -14.8, -7.6, 8.7, 73),
        (643, -6.7, -6.0, 8.6, 73),
        (644, 1.8, -3.9, 8.9, 70),
    ];
    w.feed_traced(&fixes, 550.0);
    // 50 m back from the stop at about second 636 (86 after the stand began at 550).
    let at = w.at(AnomalyKind::Roadblock);
    assert_eq!(at.len(), 1, "{:?}", w.raised);
    assert!((85.0..=95.0).contains(&at[0]), "raised at {at:?}");
}

#[test]
fn a4_a_u_turn_in_a_block_loop_is_raised_when_a_fix_lands_on_the_loops_other_side() {
    // From a sweep over new network routes (sigma 4 m, 2 s fixes): the route runs round a
    // block, south-east down one street and back north-west up the next, 20 m apart. The
    // vehicle stops on the way up, turns and drives back down: its fixes run against the route
    // (47 m back, under the threshold), then one lands on the first street, which runs the
    // vehicle's way. That fix carries on their run back, and the fall is raised there.
    let mut w = World::traced(&[
        [27.9, -121.1],
        [0.7, -55.8],
        [-3.3, -49.0],
        [-9.4, -44.1],
        [-24.8, -37.2],
        [-22.3, -28.5],
        [-18.3, -16.7],
        [-12.7, -8.9],
        [-4.0, -2.7],
        [19.0, 12.5],
        [23.4, 14.6],
        [38.1, 11.6],
        [59.7, -28.8],
        [64.3, -37.1],
        [73.9, -33.8],
        [77.6, -32.5],
        [83.0, -30.7],
        [78.6, -22.4],
        [53.9, 21.4],
        [34.0, 57.0],
        [9.3, 101.0],
        [-12.3, 139.5],
        [-24.6, 160.4],
    ]);
    // Drive in at 9 m/s to about 367 m along.
    let end = w.drive(0.0, 0.0, 9.0, 41);
    assert!((365.0..375.0).contains(&end), "{end}");
    // (second, east, north, speed, heading) as the unit sent them, from the stand on.
    let fixes = [
        (117, 24.7, 58.2, 0.5, 58),
        (119, 25.0, 58.4, 0.4, 348),
        (121, 27.2, 58.8, 0.2, 30),
        (123, 25.1, 59.8, 0.2, 26),
        (125, 31.9, 54.2, 0.0, 151),
        (127, 33.4, 49.8, 3.3, 157),
        (129, 36.0, 40.4, 5.8, 152),
        (131, 43.3, 28.9, 9.5, 148),
        (133, 53.5, 13.1, 8.9, 152),
        (135, 61.7, -4.1, 8.7, 154),
        (137, 70.5, -20.1, 9.8, 149),
        (139, 81.7, -32.6, 8.5, 151),
    ];
    w.feed_traced(&fixes, 72.0);
    assert_eq!(
        w.at(AnomalyKind::Roadblock),
        [135.0 - 72.0],
        "{:?}",
        w.raised
    );
}

#[test]
fn a4_a_u_turn_at_a_corner_seen_every_5_s_is_raised_from_a_fix_placed_in_the_corner() {
    // From a sweep over new network routes (sigma 4 m, 5 s fixes): the vehicle stops just past
    // a corner of the route, turns and drives back. Its first fix going back runs against the
    // route; the next lies at the next corner back, nearer the part running across (88° off its
    // heading, a turn) than the part it is on, and the drive leaves the route after it. Placed
    // in a turn, 53 m further back, after a fix running back: that carries on the run.
    let mut w = World::traced(&[
        [-20.2, -382.1],
        [-18.4, -352.6],
        [-15.9, -329.6],
        [-12.7, -309.6],
        [-4.4, -274.6],
        [11.3, -237.7],
        [20.2, -218.5],
        [25.7, -202.3],
        [29.6, -183.8],
        [32.8, -157.2],
        [32.8, -138.5],
        [31.9, -124.4],
        [26.7, -93.9],
        [13.3, -53.9],
        [8.0, -38.0],
        [0.5, -5.7],
        [-2.6, 28.7],
        [-0.0, 56.4],
        [5.9, 69.5],
        [57.5, 48.2],
        [85.1, 36.3],
        [106.9, 27.4],
        [124.9, 92.5],
        [129.0, 112.4],
        [131.4, 121.6],
        [135.3, 134.4],
        [136.6, 138.4],
    ]);
    // (second, east, north, speed, heading) as the unit sent them.
    let fixes = [
        (606, 14.0, -52.4, 8.9, 340),
        (611, 0.0, -11.3, 9.5, 357),
        (616, -2.3, 33.7, 8.9, 7),
        (621, 15.3, 53.4, 8.6, 108),
        (626, 57.2, 39.5, 9.2, 113),
        (631, 94.4, 21.5, 7.4, 114),
        (636, 106.8, 21.8, 0.0, 240),
        (641, 109.1, 20.9, 0.1, 3),
        (646, 107.2, 24.4, 0.2, 65),
        (651, 102.0, 25.7, 0.1, 292),
        (656, 104.6, 30.8, 0.0, 122),
        (661, 106.4, 30.9, 0.1, 38),
        (666, 102.8, 34.1, 0.2, 87),
        (671, 107.7, 35.1, 0.1, 87),
        (676, 108.5, 40.4, 0.4, 44),
        (681, 111.9, 38.2, 0.9, 192),
        (686, 97.8, 36.3, 8.8, 291),
        (691, 56.0, 52.8, 8.6, 291),
        (696, 11.7, 70.6, 9.0, 296),
    ];
    w.feed_traced(&fixes, 600.0);
    assert_eq!(w.at(AnomalyKind::Roadblock), [96.0], "{:?}", w.raised);
}

#[test]
fn a4_noisy_fixes_at_speed_nearer_a_part_running_against_the_vehicle_are_not_a_u_turn() {
    // From a sweep over the public routes (sigma 12 m, 1 s fixes, GBG-R019 about 18.5 km
    // along): the route runs south, east round a corner and back north 30 m to the east. The
    // receiver's error, 35 m to the west for several seconds, puts the fixes 10 m from the way
    // down and 35 m from the way up, which the vehicle is on at 11 m/s heading north. A vehicle
    // that has not been slower than a U-turn allows within the window is not driving back: its
    // heading, not the noisy distance, tells the parts apart.
    let mut w = World::traced(&[
        [0.0, 0.0],
        [2.1, -15.9],
        [3.0, -27.8],
        [1.9, -37.2],
        [0.1, -43.0],
        [-2.7, -43.9],
        [-6.3, -46.4],
        [-8.7, -49.3],
        [-10.3, -52.7],
        [-11.0, -56.2],
        [-10.7, -60.9],
        [-9.3, -64.6],
        [-6.5, -68.3],
        [-3.5, -70.6],
        [1.7, -94.6],
        [2.8, -104.0],
        [4.6, -107.2],
        [4.5, -111.3],
        [3.3, -142.5],
        [-6.3, -201.7],
        [-2.2, -202.1],
        [5.1, -202.0],
        [10.2, -201.4],
        [13.1, -200.3],
        [15.8, -198.6],
        [19.6, -195.4],
        [22.5, -191.5],
        [23.5, -187.5],
        [23.2, -167.3],
        [23.6, -162.7],
        [25.0, -158.4],
        [27.2, -154.3],
        [31.0, -150.5],
        [35.4, -148.0],
        [40.0, -146.9],
        [43.3, -146.5],
        [47.1, -147.0],
        [50.0, -148.0],
        [53.8, -150.0],
        [57.0, -152.3],
        [60.2, -156.2],
        [62.2, -162.5],
        [70.4, -201.1],
    ]);
    w.accuracy_m = 14.4;
    // (second, east, north, speed, heading) as the unit sent them.
    let fixes = [
        (3850, -34.2, 12.6, 10.5, 156),
        (3851, -27.4, 9.1, 10.8, 156),
        (3852, -25.0, -3.2, 10.2, 170),
        (3853, -16.4, -17.8, 10.9, 178),
        (3854, -19.1, -33.8, 10.8, 187),
        (3855, -15.9, -42.9, 11.5, 203),
        (3856, -20.3, -45.4, 11.0, 221),
        (3857, -21.0, -61.2, 10.8, 173),
        (3858, -18.9, -68.0, 11.0, 142),
        (3859, -15.3, -76.9, 10.6, 169),
        (3860, -15.7, -83.8, 10.8, 166),
        (3861, -19.2, -88.1, 10.8, 171),
        (3862, -19.9, -97.4, 10.8, 184),
        (3863, -21.5, -107.9, 11.7, 178),
        (3864, -17.3, -116.0, 11.3, 179),
        (3865, -19.7, -129.5, 10.9, 182),
        (3866, -23.6, -146.4, 11.2, 193),
        (3867, -31.1, -154.4, 11.0, 189),
        (3868, -34.3, -162.5, 11.3, 188),
        (3869, -43.6, -177.0, 11.0, 188),
        (3870, -40.6, -190.2, 11.4, 187),
        (3871, -36.8, -195.7, 11.2, 93),
        (3872, -29.8, -198.9, 11.5, 86),
        (3873, -17.6, -194.2, 11.4, 43),
        (3874, -13.5, -185.1, 11.3, 357),
        (3875, -11.0, -170.7, 10.8, 357),
        (3876, -11.6, -155.8, 10.8, 360),
        (3877, -7.5, -148.2, 10.5, 30),
        (3878, -1.0, -143.1, 10.8, 78),
        (3879, 7.4, -141.7, 11.7, 104),
        (3880, 21.9, -151.0, 10.4, 120),
    ];
    w.feed_traced(&fixes, 3850.0);
    assert!(w.raised.is_empty(), "{:?}", w.raised);
}

#[test]
fn a4_noisy_fixes_pulling_away_along_the_route_placed_on_a_part_across_it_are_not_a_u_turn() {
    // From a sweep over new multi-stop runs (sigma 12 m, 1 s fixes): the route runs east, turns
    // left at a corner and runs north. The vehicle stands just past the corner, then pulls away
    // north, the way the route runs there; the receiver's error, 25-37 m to the west, puts its
    // fixes 7-15 m from the part before the corner, which runs east, 94° off the heading. Those
    // fixes took progress back 55 m, and as they ran more than 90° off the route they confirmed
    // the fall. A fix placed across the route (90-120° off) while a part running the vehicle's
    // way is within reach of where it came from is noise onto a crossing part, not the vehicle
    // running back.
    let mut w = World::traced(&[
        [0.0, 0.0],
        [26.4, 3.7],
        [59.0, 9.2],
        [80.4, 12.7],
        [86.5, 13.8],
        [81.6, 30.2],
        [79.5, 37.4],
        [75.4, 52.6],
        [70.9, 71.4],
        [64.4, 98.1],
    ]);
    w.accuracy_m = 14.4;
    // Drive in at 9 m/s to about 108 m along, just past the corner.
    let end = w.drive(0.0, 0.0, 9.0, 12);
    assert!((105.0..110.0).contains(&end), "{end}");
    // (second, east, north, speed, heading) as the unit sent them, from the stand on.
    let fixes = [
        (85, 76.2, 42.2, 0.0, 289),
        (86, 77.9, 43.1, 0.2, 235),
        (87, 71.3, 41.5, 0.0, 211),
        (88, 70.9, 40.7, 0.3, 283),
        (89, 66.4, 33.2, 0.5, 40),
        (90, 69.0, 33.2, 0.5, 173),
        (91, 68.6, 34.5, 0.4, 286),
        (92, 72.4, 38.4, 0.1, 216),
        (93, 70.2, 37.8, 0.4, 22),
        (94, 65.4, 39.8, 0.2, 174),
        (95, 63.1, 39.8, 0.2, 219),
        (96, 67.5, 35.0, 0.0, 128),
        (97, 68.0, 37.2, 0.1, 38),
        (98, 67.0, 39.1, 0.3, 103),
        (99, 71.3, 38.0, 0.0, 122),
        (100, 66.8, 28.6, 0.1, 227),
        (101, 69.7, 23.8, 0.5, 200),
        (102, 69.1, 24.9, 0.1, 350),
        (103, 75.9, 25.4, 0.3, 220),
        (104, 74.1, 22.2, 0.4, 175),
        (105, 76.9, 19.4, 0.3, 173),
        (106, 49.2, -19.0, 0.2, 114),
        (107, 72.6, 21.4, 0.3, 87),
        (108, 61.9, 15.8, 1.5, 347),
        (109, 52.6, 18.9, 2.6, 346),
        (110, 49.9, 19.0, 4.1, 348),
        (111, 47.2, 22.1, 5.8, 342),
        (112, 43.5, 32.2, 6.9, 342),
    ];
    w.feed_traced(&fixes, 72.0);
    assert!(w.raised.is_empty(), "{:?}", w.raised);
}

#[test]
fn a4_a_first_fix_just_past_the_turnaround_of_an_out_and_back_road_is_on_the_way_back() {
    // GBG-CIT01 drives up a road to a stop and comes back down the same road (about 10.91 and
    // 11.09 km along, joined by a short segment across). A vehicle whose first fix is just past
    // the turnaround, heading back, must be placed on the way back, not on the segment across
    // (as near, and earlier), or driving on down the road looks like a U-turn.
    let mut w = World::on(route_named("GBG-CIT01"), quiet(), vec![]);
    let end = w.drive(0.0, 11_094.0, 11.0, 30);
    assert!(w.raised.is_empty(), "{:?}", w.raised);
    let progress = w.engine.standing("R-1").and_then(|s| s.progress_m);
    assert!(
        progress.is_some_and(|p| (p - (end - 11.0)).abs() < 5.0),
        "progress {progress:?}, last fix at {}",
        end - 11.0
    );
}

#[test]
fn a5_signal_gap_across_the_deadline_fires_at_last_fix_plus_max_gap_once() {
    let params = DetectionParams {
        checkin_interval_s: 1e6,
        ..DetectionParams::default()
    };
    let mut w = World::new(params, vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 10);
    // Nothing for 90 s, then fixes resume: one anomaly at 9 + 30.
    w.drive(100.0, s + 900.0, 10.0, 5);
    assert_eq!(w.at(AnomalyKind::SignalLoss), [39.0]);
    // A tick past the next deadline with no fixes fires it.
    w.feed(Event::ClockTicked {
        at: T0.plus_secs(200.0),
    });
    assert_eq!(w.at(AnomalyKind::SignalLoss), [39.0, 134.0]);
}

#[test]
fn a6_missed_checkin_and_duress_and_an_input_exactly_at_its_deadline_is_in_time() {
    let params = DetectionParams {
        max_gap_s: 1e6,
        checkin_interval_s: 600.0,
        ..DetectionParams::default()
    };
    let mut w = World::new(params, vec![]);
    // Exactly at the deadline (600 + 60): in time.
    w.feed(Event::CheckedIn {
        run_id: "R-1".into(),
        person_id: "E-1".into(),
        code: CheckInCode::Ok,
        at: T0.plus_secs(660.0),
    });
    assert!(w.at(AnomalyKind::MissedCheckin).is_empty());
    w.feed(Event::CheckedIn {
        run_id: "R-1".into(),
        person_id: "E-1".into(),
        code: CheckInCode::Duress,
        at: T0.plus_secs(700.0),
    });
    assert_eq!(w.at(AnomalyKind::Duress), [700.0]);
    w.feed(Event::ClockTicked {
        at: T0.plus_secs(2000.0),
    });
    assert_eq!(w.at(AnomalyKind::MissedCheckin), [1360.0]);
}

/// An outlet planned on the run at `position`.
fn planned(id: &str, position: LatLon, radius_m: f64, arrive_by: Option<Millis>) -> PlannedStop {
    PlannedStop {
        stop_id: id.into(),
        name: id.into(),
        position,
        radius_m,
        arrive_by,
        kind: "outlet".into(),
    }
}

#[test]
fn a7_late_arrival_and_skipped_stop() {
    let route = route();
    let (s1, _) = along(&route, 500.0, 0.0);
    let (s2, _) = along(&route, 1500.0, 0.0);
    let stop = |id, p, by: f64| planned(id, p, 50.0, Some(T0.plus_secs(by)));
    let mut w = World::new(
        quiet(),
        vec![stop("S1", s1, 10_000.0), stop("S2", s2, 20.0)],
    );
    // Straight to S2 without passing S1 (driven 200 m beside the route until S2).
    for i in 0..150 {
        w.fix(f64::from(i), 10.0 * f64::from(i), 200.0, 10.0);
    }
    w.drive(150.0, 1500.0, 1.0, 5);
    assert_eq!(w.at(AnomalyKind::StopSkipped), [150.0]);
    // S2's window was 20 s + 300 s grace; arrival at 150 s is in time.
    w.feed(Event::ClockTicked {
        at: T0.plus_secs(10_400.0),
    });
    assert_eq!(
        w.at(AnomalyKind::LateArrival),
        [10_300.0],
        "S1 never visited"
    );
}

#[test]
fn a7_a_stop_near_the_start_but_not_at_it_is_armed_from_the_first_fix() {
    let route = route();
    let (far, _) = along(&route, 600.0, 0.0);
    let (near, _) = along(&route, 120.0, 0.0);
    let stop = |id, p| planned(id, p, 75.0, None);
    // S2 is 120 m from the start: outside its radius, but never 2 x radius away before the
    // vehicle reaches it. Reaching it first skips S1.
    let mut w = World::new(quiet(), vec![stop("S1", far), stop("S2", near)]);
    w.drive(0.0, 0.0, 5.0, 30);
    assert_eq!(w.at(AnomalyKind::StopSkipped).len(), 1, "{:?}", w.raised);
}

#[test]
fn a7_a_multipath_first_fix_does_not_make_the_depot_return_an_arrival_at_departure() {
    // From a sweep over new multi-stop runs (sigma 4 m, 5 s fixes): the run starts inside its
    // depot, whose return is its last stop. Its first fix was a multipath fix 80 m off, outside
    // the depot's radius, so the return counted as a stop not started in; the next fix, back
    // inside, arrived at it, and every stop before it was reported skipped at departure.
    let route = route();
    let (s1, _) = along(&route, 500.0, 0.0);
    let (depot, _) = along(&route, 0.0, 0.0);
    let stop = |id, p| planned(id, p, 50.0, None);
    let mut w = World::new(quiet(), vec![stop("S1", s1), stop("DEPOT", depot)]);
    w.fix(0.0, 0.0, 80.0, 0.0);
    w.drive(5.0, 0.0, 0.0, 3);
    // A second multipath fix, 110 m off while leaving, does not arm the return either.
    w.fix(8.0, 10.0, 110.0, 5.0);
    w.drive(9.0, 5.0, 0.0, 2);
    assert!(w.raised.is_empty(), "{:?}", w.raised);
    // Out to S1 (arrived, nothing skipped), then back to the depot: an arrival there, in order.
    let end = w.drive(11.0, 5.0, 10.0, 52);
    assert!(end > 500.0, "{end}");
    for i in 0..52 {
        w.fix(63.0 + f64::from(i), 515.0 - 10.0 * f64::from(i), 0.0, 10.0);
    }
    assert!(w.raised.is_empty(), "{:?}", w.raised);
}

/// A8: a run with one stop, S1, 300 m along the route, of `radius_m`; the vehicle drives 30 s
/// towards it at 10 m/s (so it is there at second 30).
fn a8_world(radius_m: f64) -> World {
    let (s1, _) = along(&route(), 300.0, 0.0);
    let mut w = World::new(quiet(), vec![planned("S1", s1, radius_m, None)]);
    w.drive(0.0, 0.0, 10.0, 30);
    w
}

/// A8: the escorts hand S1's boxes over at second `t`.
fn hand_over_at_s1(w: &mut World, t: f64) {
    w.feed(Event::CashBoxesHandedOver {
        run_id: "R-1".into(),
        stop_id: "S1".into(),
        boxes: vec!["B-1".into()],
        seals: vec![1],
        handed_by: vec!["E-1".into(), "E-2".into()],
        received_by: vec!["O-1".into()],
        at: T0.plus_secs(t),
    });
}

#[test]
fn a8_handover_away_from_the_stop_and_not_for_one_multipath_fix() {
    let mut w = a8_world(75.0);
    park(&mut w, 30.0, 300.0, 10, &[9]);
    hand_over_at_s1(&mut w, 40.0);
    assert!(
        w.at(AnomalyKind::HandoverOutOfPlace).is_empty(),
        "last fix was one multipath jump"
    );
    w.drive(41.0, 800.0, 10.0, 5);
    hand_over_at_s1(&mut w, 47.0);
    assert_eq!(w.at(AnomalyKind::HandoverOutOfPlace), [47.0]);
}

#[test]
fn a8_a_noisy_unit_standing_at_the_stop_is_there_and_a_precise_one_65_m_off_is_not() {
    // Stop radius 50 m; the vehicle stands with every fix 65 m to the side of the stop. With
    // the unit reporting 20 m accuracy that is within its error of the stop (radius plus twice
    // the accuracy, at most twice the radius); reporting 3 m, it is 65 m away.
    for (accuracy_m, raised) in [(20.0, false), (3.0, true)] {
        let mut w = a8_world(50.0);
        w.accuracy_m = accuracy_m;
        for i in 0..10 {
            w.fix(30.0 + f64::from(i), 300.0, 65.0, 0.0);
        }
        hand_over_at_s1(&mut w, 40.0);
        let at = w.at(AnomalyKind::HandoverOutOfPlace);
        assert_eq!(!at.is_empty(), raised, "accuracy {accuracy_m} m: {at:?}");
    }
}

#[test]
fn a10_overspeed_is_raised_once_per_episode_after_the_sustained_time() {
    let params = DetectionParams {
        speed_limit_kmh: 60.0,
        ..quiet()
    };
    let mut w = World::new(params, vec![]);
    let s = w.drive(0.0, 0.0, 15.0, 10);
    let s = w.drive(10.0, s, 22.0, 30); // 79 km/h for 30 s
    w.drive(40.0, s, 15.0, 10);
    assert_eq!(w.at(AnomalyKind::Overspeed), [20.0]);
}

#[test]
fn replaying_the_same_log_yields_the_same_anomaly_ids() {
    let run = || {
        let mut w = World::new(DetectionParams::default(), vec![]);
        let s = w.drive(0.0, 0.0, 10.0, 30);
        park(&mut w, 30.0, s, 200, &[50]);
        w.feed(Event::ClockTicked {
            at: T0.plus_secs(2000.0),
        });
        w.raised.clone()
    };
    let first = run();
    assert!(!first.is_empty());
    assert_eq!(first, run());
}

#[test]
fn a_snapshot_mid_run_resumes_exactly() {
    // Stop mid-episode (the unplanned-stop judge pending), snapshot, restore, go on: the restored
    // engine raises exactly what the original raises from there.
    let mut w = World::new(DetectionParams::default(), vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 30);
    park(&mut w, 30.0, s, 60, &[]);
    let mut bytes = Vec::new();
    ciborium::into_writer(&w.engine, &mut bytes).expect("snapshot");
    let restored: Engine = ciborium::from_reader(bytes.as_slice()).expect("restore");
    let before = w.raised.len();
    let mut twin = World {
        engine: restored,
        route: w.route.clone(),
        pos: w.pos,
        seq: w.seq,
        vehicle: w.vehicle.clone(),
        raised: vec![],
        accuracy_m: w.accuracy_m,
    };
    for x in [&mut w, &mut twin] {
        park(x, 90.0, s, 120, &[20]);
        x.drive(210.0, s, 10.0, 30);
        x.feed(Event::ClockTicked {
            at: T0.plus_secs(2000.0),
        });
    }
    assert!(
        !twin.raised.is_empty(),
        "the pending judge fired after the restore"
    );
    assert_eq!(w.raised[before..], twin.raised[..]);
    assert!(twin.kinds().contains(&AnomalyKind::UnplannedStop));
}

fn report(
    w: &mut World,
    t: f64,
    kind: IncidentKind,
    rounds: Option<u32>,
    spent: Option<RoundsSpent>,
) {
    w.feed(Event::IncidentReported {
        run_id: "R-1".into(),
        person_id: "E-1".into(),
        kind,
        note: "as reported".into(),
        rounds,
        spent,
        at: T0.plus_secs(t),
    });
}

#[test]
fn a11_robbery_shots_accident_fire_and_breakdown_raise_a_crew_alarm_at_the_report_in_any_state() {
    let mut w = World::new(quiet(), vec![]);
    let kinds = [
        IncidentKind::Robbery,
        IncidentKind::ShotsFired,
        IncidentKind::Accident,
        IncidentKind::Fire,
        IncidentKind::Breakdown,
        IncidentKind::Jam,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        report(&mut w, 10.0 * (i + 1) as f64, kind, None, None);
    }
    // A jam raises none of its own; each of the others one, at its report.
    assert_eq!(w.at(AnomalyKind::CrewAlarm), [10.0, 20.0, 30.0, 40.0, 50.0]);
    // Closed runs too (a robbery reported after close-out still reaches dispatch).
    w.feed(Event::RunClosed {
        run_id: "R-1".into(),
        at: T0.plus_secs(100.0),
    });
    report(&mut w, 110.0, IncidentKind::Robbery, None, None);
    assert_eq!(w.at(AnomalyKind::CrewAlarm).len(), 6);
}

#[test]
fn a11_robbery_and_shots_fired_are_critical_and_shots_fired_evidence_says_what_was_spent() {
    let mut w = World::new(quiet(), vec![]);
    let spent = RoundsSpent {
        serial: "G-1".into(),
        lot: "A-1".into(),
        rounds: 10,
        held: 10,
    };
    w.pos += 1;
    let raised = w.engine.handle(
        w.pos,
        &Event::IncidentReported {
            run_id: "R-1".into(),
            person_id: "E-1".into(),
            kind: IncidentKind::ShotsFired,
            note: "warning shots".into(),
            rounds: Some(12),
            spent: Some(spent),
            at: T0.plus_secs(5.0),
        },
    );
    assert_eq!(raised.len(), 1);
    let a = &raised[0];
    assert_eq!(
        (a.kind, a.severity),
        (AnomalyKind::CrewAlarm, Severity::Critical)
    );
    assert_eq!(a.evidence["rounds_spent"], 10);
    assert_eq!(a.evidence["rounds_unaccounted"], 2, "{}", a.evidence);
    assert_eq!(a.evidence["spent_from"], "G-1");
    w.pos += 1;
    let breakdown = w.engine.handle(
        w.pos,
        &Event::IncidentReported {
            run_id: "R-1".into(),
            person_id: "E-1".into(),
            kind: IncidentKind::Breakdown,
            note: String::new(),
            rounds: None,
            spent: None,
            at: T0.plus_secs(6.0),
        },
    );
    assert!(breakdown[0].severity < Severity::Critical);
}

fn returned(w: &mut World, issued: u32, spent: u32, back: u32) {
    w.feed(Event::WeaponReturned {
        run_id: "R-1".into(),
        serial: "G-1".into(),
        lot: "A-1".into(),
        by: "E-1".into(),
        gun_custodian: "GC".into(),
        ammo_custodian: "AC".into(),
        rounds_issued: issued,
        rounds_returned: back,
        rounds_spent: spent,
        at: T0.plus_secs(50.0),
    });
}

#[test]
fn a9_a_return_reconciles_issued_minus_rounds_reported_fired() {
    // 30 issued, 1 fired, 29 back: accounted for.
    let mut w = World::new(quiet(), vec![]);
    returned(&mut w, 30, 1, 29);
    assert!(w.raised.is_empty(), "{:?}", w.raised);
    // 30 issued, 1 fired, 27 back: two rounds missing.
    let mut w = World::new(quiet(), vec![]);
    returned(&mut w, 30, 1, 27);
    assert_eq!(w.at(AnomalyKind::AmmoMismatch), [50.0]);
    // Nothing fired, full return: accounted for; short: a mismatch.
    let mut w = World::new(quiet(), vec![]);
    returned(&mut w, 30, 0, 30);
    returned(&mut w, 30, 0, 29);
    assert_eq!(w.at(AnomalyKind::AmmoMismatch), [50.0]);
}

fn swap(w: &mut World, t: f64, to: &str) {
    let from = std::mem::replace(&mut w.vehicle, to.to_string());
    w.feed(Event::VehicleSwapped {
        run_id: "R-1".into(),
        from_vehicle_id: from,
        to_vehicle_id: to.into(),
        boxes: vec!["B-1".into()],
        seals: vec![1],
        handed_by: vec!["E-1".into(), "E-2".into()],
        received_by: vec!["D-2".into()],
        at: T0.plus_secs(t),
    });
}

/// The vehicle `vehicle` standing `right` metres off the route at `s`, one fix a second from `t0`
/// for `secs`, filed under `run`.
fn stand(w: &mut World, vehicle: &str, run: Option<&str>, t0: f64, s: f64, right: f64, secs: u32) {
    let (p, heading) = along(&w.route.clone(), s, right);
    for i in 0..secs {
        w.fix_of(
            vehicle,
            run,
            t0 + f64::from(i),
            p,
            0.1,
            heading,
            false,
            false,
        );
    }
}

#[test]
fn r8_after_a_swap_the_run_follows_the_replacement_from_the_swap_and_the_stop_under_way_ends() {
    let params = DetectionParams {
        checkin_interval_s: 1e6,
        ..DetectionParams::default()
    };
    let mut w = World::new(params, vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 30);
    // V-1 breaks down and stands 100 s (not yet judged); V-2 drives up and parks 15 m ahead,
    // its fixes on no run.
    stand(&mut w, "V-1", Some("R-1"), 30.0, s, 0.0, 100);
    stand(&mut w, "V-2", None, 100.0, s + 15.0, 3.0, 30);
    swap(&mut w, 130.0, "V-2");
    // The replacement stands 60 s loading, then drives on; the broken vehicle goes on sending
    // standing fixes the while (the first few filed under the run, as a batch in flight at the
    // swap would be): not the run's any more.
    let (p, heading) = along(&w.route.clone(), s + 15.0, 3.0);
    for i in 0..60 {
        let run = (i < 5).then_some("R-1");
        stand(&mut w, "V-1", run, 131.0 + f64::from(i), s, 0.0, 1);
        w.fix_at(131.0 + f64::from(i), p, 0.1, heading, true, false);
    }
    w.drive(191.0, s + 15.0, 10.0, 120);
    // No unplanned stop (the old vehicle's ended at the swap; the replacement's short and
    // covered by the swap as a breakdown), no signal loss, no swap out of place.
    assert!(w.raised.is_empty(), "{:?}", w.raised);
    assert_eq!(
        w.engine
            .standing("R-1")
            .and_then(|st| st.progress_m)
            .map(|p| p > s + 1000.0),
        Some(true),
        "progress follows the replacement"
    );
}

#[test]
fn r8_signal_loss_counts_from_the_swap_and_the_replacements_fixes_after_it() {
    let params = DetectionParams {
        checkin_interval_s: 1e6,
        ..DetectionParams::default()
    };
    let mut w = World::new(params, vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 20);
    stand(&mut w, "V-2", None, 0.0, s, 5.0, 40);
    // The run's vehicle fell silent at 19 s: signal loss at 49 s. The swap at 60 s re-arms it:
    // the replacement sends nothing after the swap, so again at 60 + 30.
    w.feed(Event::ClockTicked {
        at: T0.plus_secs(55.0),
    });
    assert_eq!(w.at(AnomalyKind::SignalLoss), [49.0]);
    swap(&mut w, 60.0, "V-2");
    // Its backlog from before the swap, arriving late, is not the run's.
    stand(&mut w, "V-2", Some("R-1"), 40.0, s, 5.0, 10);
    w.feed(Event::ClockTicked {
        at: T0.plus_secs(100.0),
    });
    assert_eq!(w.at(AnomalyKind::SignalLoss), [49.0, 90.0]);
}

#[test]
fn a8_a_swap_is_out_of_place_when_the_vehicles_are_apart_or_one_has_no_fix() {
    // (replacement's offset along the route, metres; whether it has sent a fix) -> raised?
    for (apart, fixes, raised) in [(60.0, true, false), (400.0, true, true), (0.0, false, true)] {
        let mut w = World::new(quiet(), vec![]);
        let s = w.drive(0.0, 0.0, 10.0, 30);
        stand(&mut w, "V-1", Some("R-1"), 30.0, s, 0.0, 20);
        if fixes {
            stand(&mut w, "V-2", None, 30.0, s + apart, 0.0, 20);
        }
        swap(&mut w, 50.0, "V-2");
        let expected: &[f64] = if raised { &[50.0] } else { &[] };
        assert_eq!(
            w.at(AnomalyKind::SwapOutOfPlace),
            expected,
            "{apart} m apart, fixes {fixes}"
        );
    }
}

#[test]
fn a8_one_multipath_fix_does_not_put_two_vehicles_parked_together_apart() {
    let mut w = World::new(quiet(), vec![]);
    let s = w.drive(0.0, 0.0, 10.0, 30);
    stand(&mut w, "V-1", Some("R-1"), 30.0, s, 0.0, 20);
    stand(&mut w, "V-2", None, 30.0, s + 20.0, 0.0, 19);
    // The replacement's very last fix before the swap lands 90 m off.
    stand(&mut w, "V-2", None, 49.0, s + 20.0, 90.0, 1);
    swap(&mut w, 50.0, "V-2");
    assert!(
        w.at(AnomalyKind::SwapOutOfPlace).is_empty(),
        "{:?}",
        w.raised
    );
}

#[test]
fn fixes_dated_before_the_departure_are_not_judged_by_the_runs_rules() {
    // A unit's backlog (or a wrong clock) delivers, after departure, five minutes of standing
    // fixes dated before it: no unplanned stop dated before the run was under way, and the
    // run's own drive after it raises nothing either.
    let mut w = World::new(quiet(), vec![]);
    park(&mut w, -300.0, 0.0, 300, &[]);
    w.drive(0.0, 0.0, 10.0, 200);
    assert!(w.raised.is_empty(), "{:?}", w.raised);
}

#[test]
fn a9_a_lot_counted_short_or_over_raises_an_inventory_mismatch_of_no_run() {
    let mut engine = Engine::new();
    let counted = |counted: u32, expected: u32| Event::AmmoCounted {
        lot: "A-1".into(),
        counted,
        expected,
        by: "AC".into(),
        at: T0,
    };
    assert!(engine.handle(1, &counted(140, 140)).is_empty());
    let short = engine.handle(2, &counted(138, 140));
    assert_eq!(short.len(), 1);
    assert_eq!(short[0].kind, AnomalyKind::InventoryMismatch);
    assert_eq!(short[0].run_id, "", "the armory's, not a run's");
    assert_eq!(short[0].evidence["difference"], -2);
    assert_eq!(
        Event::AnomalyRaised {
            anomaly: short[0].clone(),
            mark: None
        }
        .stream(),
        "armory"
    );
}

#[test]
fn a2_a_fix_is_beyond_the_corridor_by_more_than_its_reported_accuracy() {
    // 70 m off for 20 s: beyond the 60 m corridor for a unit reporting 5 m, within the error of
    // one reporting 20 m (its fixes count only beyond 60 + 20 m).
    for (accuracy_m, raised) in [(5.0, true), (20.0, false)] {
        let mut w = World::new(quiet(), vec![]);
        w.accuracy_m = accuracy_m;
        let s = w.drive(0.0, 0.0, 10.0, 20);
        for i in 0..20 {
            w.fix(20.0 + f64::from(i), s + 10.0 * f64::from(i), 70.0, 10.0);
        }
        assert_eq!(
            w.at(AnomalyKind::RouteDeviation).len(),
            usize::from(raised),
            "accuracy {accuracy_m} m: {:?}",
            w.raised
        );
    }
}

#[test]
fn a4_a_fall_within_a_few_times_the_reported_accuracy_is_not_a_u_turn_and_a_longer_one_is() {
    // Driving back 56 m along the route: a U-turn for a unit reporting 5 m (uturn_m 50), within
    // what a unit reporting 20 m can be off by (3 x 20 m); 120 m back is a U-turn for both.
    for (accuracy_m, back_m, raised) in [(5.0, 56.0, 1), (20.0, 56.0, 0), (20.0, 120.0, 1)] {
        let mut w = World::new(quiet(), vec![]);
        w.accuracy_m = accuracy_m;
        let s = w.drive(0.0, 0.0, 10.0, 60);
        let steps = (back_m / 8.0) as u32;
        for i in 0..=steps {
            let (p, bearing) = along(&w.route, s - 8.0 * f64::from(i), 0.0);
            let heading = (bearing + 180.0) % 360.0;
            w.fix_at(60.0 + f64::from(i), p, 8.0, heading, true, false);
        }
        assert_eq!(
            w.at(AnomalyKind::Roadblock).len(),
            raised,
            "accuracy {accuracy_m} m, {back_m} m back: {:?}",
            w.raised
        );
    }
}
