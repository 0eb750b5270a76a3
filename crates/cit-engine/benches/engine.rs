//! Per-fix evaluation on one core with 10,000 active runs on the real Gothenburg routes and
//! 10,000 registered zones: throughput, latency percentiles, and memory per active run.
//! `cargo bench -p cit-engine --bench engine` (a plain harness: it prints its figures).
//! The PostGIS peer of the issue is not wired yet (see BENCHMARKS.md).

use std::time::Instant;

use cit_domain::event::Event;
use cit_domain::{Checkpoint, DetectionParams, Fix, LatLon, Millis};
use cit_engine::Engine;
use hdrhistogram::Histogram;

const RUNS: usize = 10_000;
const ZONES: usize = 10_000;
const FIXES: usize = 2_000_000;

fn routes() -> Vec<Vec<LatLon>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/gothenburg/gothenburg_routes.geojson"
    );
    let text = std::fs::read_to_string(path).expect("routes file");
    let v: serde_json::Value = serde_json::from_str(&text).expect("geojson");
    v["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| {
            f["geometry"]["coordinates"]
                .as_array()
                .expect("coords")
                .iter()
                .map(|c| LatLon {
                    lat: c[1].as_f64().expect("lat"),
                    lon: c[0].as_f64().expect("lon"),
                })
                .collect()
        })
        .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4)
        .unwrap_or(0)
}

fn main() {
    let routes = routes();
    let mut engine = Engine::new();
    let mut pos = 0u64;
    let mut feed = |engine: &mut Engine, e: Event| {
        pos += 1;
        engine.handle(pos, &e).len()
    };
    let t0 = Millis(1_773_000_000_000);
    // Zones: a grid of checkpoints over the city, valid all day.
    for i in 0..ZONES {
        let (row, col) = (i / 100, i % 100);
        feed(
            &mut engine,
            Event::CheckpointRegistered {
                checkpoint: Checkpoint {
                    checkpoint_id: format!("PC-{i}"),
                    position: LatLon {
                        lat: 57.65 + row as f64 * 0.001,
                        lon: 11.87 + col as f64 * 0.0022,
                    },
                    radius_m: 100.0,
                    valid_from: t0,
                    valid_to: t0.plus_secs(86_400.0),
                },
                at: t0,
            },
        );
    }
    let before_runs = rss_kib();
    let route_points: usize = (0..RUNS).map(|i| routes[i % routes.len()].len()).sum();
    for i in 0..RUNS {
        let route = routes[i % routes.len()].clone();
        feed(
            &mut engine,
            Event::RunPlanned {
                run_id: format!("R-{i}"),
                vehicle_id: format!("V-{i}"),
                driver_id: "D".into(),
                escort_ids: vec!["E-1".into(), "E-2".into()],
                route,
                stops: vec![],
                params: DetectionParams::default(),
                cash_boxes: vec![],
                at: t0,
            },
        );
        feed(
            &mut engine,
            Event::RunDeparted {
                run_id: format!("R-{i}"),
                vehicle_id: format!("V-{i}"),
                at: t0,
            },
        );
    }
    let per_run = (rss_kib() - before_runs) as f64 / RUNS as f64;
    // Fixes: each vehicle drives its route at ~12 m/s, one fix a second.
    let fix_for = |n: usize| -> Event {
        let run = n % RUNS;
        let step = n / RUNS;
        let r = &routes[run % routes.len()];
        let p = r[(step * 3 + run) % r.len()];
        Event::FixesRecorded {
            vehicle_id: format!("V-{run}"),
            run_id: Some(format!("R-{run}")),
            fixes: vec![Fix {
                seq: step as u64 + 1,
                t: t0.plus_secs(step as f64 + 1.0),
                lat: p.lat,
                lon: p.lon,
                speed_mps: 12.0,
                heading_deg: 90.0,
                accuracy_m: 4.0,
                ignition: true,
                door_open: false,
            }],
        }
    };
    let events: Vec<Event> = (0..FIXES).map(fix_for).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).expect("hist");
    let mut raised = 0;
    let started = Instant::now();
    for e in &events {
        let t = Instant::now();
        pos += 1;
        raised += engine.handle(pos, e).len();
        let _ = hist.record(t.elapsed().as_nanos().max(1) as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "engine: {RUNS} active runs on {} real routes ({:.0} route points each on average), {ZONES} zones, {FIXES} fixes on one core",
        routes.len(),
        route_points as f64 / RUNS as f64
    );
    println!(
        "ours: {:.0} fixes/s; per fix p50 {:.2} us p99 {:.2} us p99.9 {:.2} us ({} anomalies raised)",
        FIXES as f64 / secs,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0,
        raised
    );
    println!(
        "memory per active run, its route index included: {per_run:.1} KiB (RSS delta / runs)"
    );
}
