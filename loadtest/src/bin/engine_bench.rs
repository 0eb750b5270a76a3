//! Detection engine per fix, one core, in-process (no I/O): active runs on the real Gothenburg
//! routes, registered checkpoints over the city, vehicles driving their routes at road speeds
//! with a few metres of GPS noise (`--noise-m`). Prints
//! - the whole engine (every rule of every run) per fix: throughput and latency percentiles, and
//!   the anomalies it raised (a clean drive: any is a false alarm);
//! - our indexes alone answering the corridor and zone questions for the same fixes (distance
//!   to the run's route and progress along it; registered checkpoints within radius + 50 m,
//!   valid at the fix's time);
//! - memory: per run with its route index, and per active vehicle aside its route (measured in
//!   a child process of the same binary, so freed memory of one phase cannot hide another's: runs
//!   on 2-point routes after a minute of fixes, less the same 2-point route indexes built alone);
//! - the peer in the same run, with `--peer-postgis`: PostGIS answering the same corridor and
//!   zone questions for the same fixes, batched (unnest, 1,000 fixes per query) for throughput
//!   and one fix per query for latency, on one backend with parallel query off.
//!
//! cargo run --release -p cit-loadtest --features peers --bin engine-bench -- \
//!     --peer-postgis "host=127.0.0.1 port=54329 user=postgres"

use std::time::Instant;

use cit_domain::event::Event;
use cit_domain::{DetectionParams, LatLon};
use cit_engine::Engine;
use cit_engine::route::RouteIndex;
use cit_loadtest::engine_drive::{
    Questions, fixes_event, latlons, next_step, plan, register_checkpoints, vehicles,
};
use cit_loadtest::{FixSample, SimVehicle, gothenburg_routes};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Debug, Clone, Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    runs: usize,
    #[arg(long, default_value_t = 10_000)]
    zones: usize,
    /// Fixes in all, spread evenly over the runs (one a second per vehicle).
    #[arg(long, default_value_t = 2_000_000)]
    fixes: usize,
    /// Timed rounds the fixes are split into (the figures of each, and their median).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Fixes of one vehicle per FixesRecorded event (1: every fix meets its run cold).
    #[arg(long, default_value_t = 1)]
    per_event: usize,
    /// libpq-style connection string of a PostgreSQL with PostGIS to compare with.
    #[arg(long)]
    peer_postgis: Option<String>,
    /// Fixes the peer answers batched (the first ones of the same sequence).
    #[arg(long, default_value_t = 200_000)]
    peer_fixes: usize,
    /// Fixes the peer answers one per query, for latency.
    #[arg(long, default_value_t = 5_000)]
    peer_single: usize,
    /// GPS noise, metres on each axis at most.
    #[arg(long, default_value_t = 4.0)]
    noise_m: f64,
    /// Print every anomaly raised (on a clean drive, each is a false alarm).
    #[arg(long)]
    show_anomalies: bool,
    /// Internal: measure per-vehicle state on 2-point routes and print KiB.
    #[arg(long, hide = true)]
    state_only: bool,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4)
        .unwrap_or(0)
}

/// Child process: runs on 2-point routes, a minute of fixes each, then RSS delta per run; then
/// the same routes' indexes built alone, RSS delta per index. Prints both, KiB.
fn state_only(args: &Args) {
    let routes = gothenburg_routes().expect("routes");
    let mut fleet = vehicles(args.runs, args.fixes.div_ceil(args.runs), &routes);
    let mut engine = Engine::new();
    let mut pos = 0;
    let two_points = |v: &SimVehicle| {
        let r = &routes[v.route];
        let (a, b) = (r.at(0.0), r.at(r.length()));
        vec![LatLon { lat: a.0, lon: a.1 }, LatLon { lat: b.0, lon: b.1 }]
    };
    let before = rss_kib();
    for (i, v) in fleet.iter().enumerate() {
        plan(&mut engine, &mut pos, i, two_points(v));
    }
    let mut n = 0;
    for _ in 0..60 {
        for (i, f) in next_step(&mut fleet, &routes, &mut n, args.noise_m)
            .iter()
            .enumerate()
        {
            pos += 1;
            engine.handle(pos, &fixes_event(i, vec![f.to_domain()]));
        }
    }
    let per_run = (rss_kib() - before) as f64 / args.runs as f64;
    let before = rss_kib();
    let indexes: Vec<RouteIndex> = fleet
        .iter()
        .map(|v| RouteIndex::new(&two_points(v), DetectionParams::default().corridor_m))
        .collect();
    let per_index = (rss_kib() - before) as f64 / indexes.len() as f64;
    println!("{per_run:.3} {per_index:.3}");
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} us p99 {:.2} us p99.9 {:.2} us",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0
    )
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Moves every run to a replacement vehicle that has just sent a fix off-run beside it (as in
/// the field: it drove up to the breakdown), timing only the swaps; microseconds per swap.
fn swap_every_run(
    engine: &mut Engine,
    pos: &mut u64,
    fleet: &mut [SimVehicle],
    routes: &[cit_loadtest::Route],
    n: &mut u64,
    noise_m: f64,
) -> f64 {
    let step = next_step(fleet, routes, n, noise_m);
    for (run, f) in step.iter().enumerate() {
        *pos += 1;
        engine.handle(
            *pos,
            &Event::FixesRecorded {
                vehicle_id: format!("S-{run}"),
                epoch: None,
                run_id: None,
                fixes: vec![f.to_domain()],
            },
        );
    }
    let swaps: Vec<Event> = (0..step.len())
        .map(|run| Event::VehicleSwapped {
            run_id: format!("R-{run}"),
            from_vehicle_id: format!("V-{run}"),
            to_vehicle_id: format!("S-{run}"),
            boxes: vec!["B-1".into()],
            seals: vec![1],
            handed_by: vec!["E-1".into(), "E-2".into()],
            received_by: vec!["D-2".into()],
            at: step[run].to_domain().t,
        })
        .collect();
    let started = Instant::now();
    let mut raised = 0;
    for e in &swaps {
        *pos += 1;
        raised += engine.handle(*pos, e).len();
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / swaps.len().max(1) as f64;
    std::hint::black_box(raised);
    us
}

fn main() {
    let args = Args::parse();
    if args.state_only {
        state_only(&args);
        return;
    }
    let routes = gothenburg_routes().expect("the shared data's Gothenburg routes");
    let corridor_m = DetectionParams::default().corridor_m;
    let mut engine = Engine::new();
    let mut pos = 0u64;
    register_checkpoints(&mut engine, &mut pos, args.zones);
    let mut fleet = vehicles(args.runs, args.fixes.div_ceil(args.runs), &routes);
    let before_runs = rss_kib();
    let mut route_points = 0;
    let planning = Instant::now();
    for (i, v) in fleet.iter().enumerate() {
        route_points += routes[v.route].coords.len();
        plan(&mut engine, &mut pos, i, latlons(&routes[v.route]));
    }
    let plan_us = planning.elapsed().as_secs_f64() * 1e6 / args.runs as f64;
    let per_run_with_route = (rss_kib() - before_runs) as f64 / args.runs as f64;
    let mut questions = Questions::new(args.zones, &routes, &fleet, corridor_m);
    println!(
        "engine: {} active runs on {} real routes ({:.0} route points each on average), {} zones, {} fixes on one core, {} per event",
        args.runs,
        routes.len(),
        route_points as f64 / args.runs as f64,
        args.zones,
        args.fixes,
        args.per_event
    );

    let steps = args.fixes.div_ceil(args.runs);
    let rounds = args.rounds.clamp(1, steps);
    let per_event = args.per_event.max(1);
    let mut n = 0u64;
    let (mut whole, mut asked) = (histogram(), histogram());
    let (mut whole_rates, mut asked_rates) = (Vec::new(), Vec::new());
    let mut raised = std::collections::BTreeMap::<String, usize>::new();
    // The fixes the peer answers: the first ones of the same sequence.
    let mut peer_fixes: Vec<(usize, FixSample)> = Vec::new();
    for round in 0..rounds {
        let round_steps = steps / rounds + usize::from(round < steps % rounds);
        let samples: Vec<Vec<FixSample>> = (0..round_steps)
            .map(|_| next_step(&mut fleet, &routes, &mut n, args.noise_m))
            .collect();
        // Events: `per_event` consecutive fixes of a vehicle together, vehicles in turn.
        let mut events = Vec::new();
        for chunk in samples.chunks(per_event) {
            for run in 0..args.runs {
                let fixes = chunk.iter().map(|step| step[run].to_domain()).collect();
                events.push((fixes_event(run, fixes), chunk.len()));
            }
        }
        let count: usize = events.iter().map(|(_, k)| k).sum();
        let started = Instant::now();
        for (e, k) in &events {
            let t = Instant::now();
            pos += 1;
            for a in engine.handle(pos, e) {
                if args.show_anomalies {
                    println!("  raised {} {}: {}", a.id, a.summary, a.evidence);
                }
                *raised.entry(a.kind.as_str().to_string()).or_default() += 1;
            }
            let per_fix = t.elapsed().as_nanos() as u64 / *k as u64;
            let _ = whole.record_n(per_fix.max(1), *k as u64);
        }
        whole_rates.push(count as f64 / started.elapsed().as_secs_f64());

        let mut checksum = 0.0;
        let started = Instant::now();
        for step in &samples {
            for (run, f) in step.iter().enumerate() {
                let t = Instant::now();
                let (d, _, z) = questions.ask(run, f);
                let _ = asked.record((t.elapsed().as_nanos() as u64).max(1));
                checksum += d + z as f64;
            }
        }
        asked_rates.push(count as f64 / started.elapsed().as_secs_f64());
        std::hint::black_box(checksum);
        for step in &samples {
            for (run, f) in step.iter().enumerate() {
                if peer_fixes.len() < args.peer_fixes.max(args.peer_single) {
                    peer_fixes.push((run, f.clone()));
                }
            }
        }
    }
    let fmt_rates = |r: &[f64]| {
        r.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let ours_whole = median(whole_rates.clone());
    let ours_asked = median(asked_rates.clone());
    println!(
        "ours, whole engine: {ours_whole:.0} fixes/s (median of rounds {}); per fix {} (anomalies raised: {raised:?})",
        fmt_rates(&whole_rates),
        percentiles(&whole)
    );
    println!(
        "ours, corridor + zone questions only: {ours_asked:.0} fixes/s (rounds {}); per fix {}",
        fmt_rates(&asked_rates),
        percentiles(&asked)
    );
    let swap_us = swap_every_run(
        &mut engine,
        &mut pos,
        &mut fleet,
        &routes,
        &mut n,
        args.noise_m,
    );
    println!(
        "a vehicle swap (R8, A8 judged): {swap_us:.2} us per run; planning a run (route index built, departed): {plan_us:.2} us"
    );
    println!(
        "memory per run, its route index included: {per_run_with_route:.1} KiB (RSS delta / runs)"
    );
    match state_child(&args) {
        Some((run_kib, index_kib)) => println!(
            "memory per active vehicle, route aside: {:.0} bytes ({:.0} B per run on a 2-point route after a minute of fixes, less {:.0} B for a 2-point route index; RSS deltas, child process)",
            (run_kib - index_kib) * 1024.0,
            run_kib * 1024.0,
            index_kib * 1024.0
        ),
        None => println!("memory per active vehicle: the child measurement failed"),
    }

    #[cfg(feature = "peers")]
    if let Some(conn) = &args.peer_postgis {
        let route_of: Vec<usize> = fleet.iter().map(|v| v.route).collect();
        let peer = postgis::run(conn, &args, &routes, &route_of, &peer_fixes, &mut questions);
        match peer {
            Ok(peer) => {
                cit_loadtest::report(
                    "corridor + zone questions, throughput",
                    ours_asked,
                    "PostGIS (batched)",
                    peer.batched_rate,
                    "fixes/s",
                );
                cit_loadtest::report(
                    "whole engine vs PostGIS answering only the questions",
                    ours_whole,
                    "PostGIS (batched)",
                    peer.batched_rate,
                    "fixes/s",
                );
                println!(
                    "PostGIS one fix per query (loopback round trip included): {} — ours per fix (questions only) {}",
                    percentiles(&peer.single),
                    percentiles(&asked)
                );
                println!(
                    "answers agree with ours on {} of {} fixes (distance within 1 m, same checkpoint count)",
                    peer.agree, peer.compared
                );
            }
            Err(e) => println!("PostGIS peer failed: {e}"),
        }
    }
    #[cfg(not(feature = "peers"))]
    if args.peer_postgis.is_some() {
        println!("(the PostGIS peer needs --features peers)");
    }
    #[cfg(not(feature = "peers"))]
    let _ = peer_fixes;
}

/// Runs this binary again with `--state-only` and reads the KiB per run and per route index it
/// prints.
fn state_child(args: &Args) -> Option<(f64, f64)> {
    let out = std::process::Command::new(std::env::current_exe().ok()?)
        .args([
            "--state-only",
            "--runs",
            &args.runs.to_string(),
            "--fixes",
            &args.fixes.to_string(),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut kib = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some((kib.next()??, kib.next()??))
}

#[cfg(feature = "peers")]
mod postgis {
    //! The PostGIS peer: the same routes (one row per run, in SWEREF 99 TM, EPSG:3006, the metric
    //! frame for Sweden, so corridor distances are planar like ours) and checkpoints (geography,
    //! GiST-indexed, measured on the sphere as the scenario rules and our engine measure them),
    //! the same fixes as lon/lat, transformed by the server.

    use std::time::Instant;

    use hdrhistogram::Histogram;
    use postgres::{Client, NoTls};

    use cit_loadtest::engine_drive::{Questions, ZONE_MARGIN_M, ZONE_RADIUS_M, checkpoints};

    use cit_loadtest::Route;

    use super::{Args, FixSample};

    pub struct Peer {
        pub batched_rate: f64,
        pub single: Histogram<u64>,
        pub agree: usize,
        pub compared: usize,
    }

    const QUESTION: &str = "
        SELECT ST_Distance(r.geom, f.g),
               ST_LineLocatePoint(r.geom, f.g) * r.length_m,
               (SELECT count(*) FROM bench_zones z
                 WHERE ST_DWithin(z.geog, f.geog, $5, false)
                   AND ST_Distance(z.geog, f.geog, false) <= z.radius_m + $6
                   AND z.valid_from <= f.t AND f.t <= z.valid_to)
          FROM (SELECT u.ord, u.run, u.t, p::geography AS geog, ST_Transform(p, 3006) AS g
                  FROM unnest($1::int4[], $2::float8[], $3::float8[], $4::int8[])
                       WITH ORDINALITY AS u(run, lon, lat, t, ord),
                       ST_SetSRID(ST_MakePoint(u.lon, u.lat), 4326) AS p) f
          JOIN bench_routes r ON r.run = f.run
         ORDER BY f.ord";

    fn setup(
        db: &mut Client,
        args: &Args,
        routes: &[Route],
        fleet: &[usize],
    ) -> Result<(), String> {
        let e = |e: postgres::Error| e.to_string();
        db.batch_execute(
            "CREATE EXTENSION IF NOT EXISTS postgis;
             SET max_parallel_workers_per_gather = 0;
             DROP TABLE IF EXISTS bench_base, bench_routes, bench_zones;
             CREATE TABLE bench_base (id int PRIMARY KEY, geom geometry(LineString, 3006));
             CREATE TABLE bench_zones (id int, geog geography(Point, 4326), radius_m float8,
                                       valid_from int8, valid_to int8);",
        )
        .map_err(e)?;
        for (id, r) in routes.iter().enumerate() {
            let wkt = format!(
                "LINESTRING({})",
                r.coords
                    .iter()
                    .map(|c| format!("{} {}", c[0], c[1]))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            db.execute(
                "INSERT INTO bench_base VALUES ($1, ST_Transform(ST_GeomFromText($2, 4326), 3006))",
                &[&(id as i32), &wkt],
            )
            .map_err(e)?;
        }
        let runs: Vec<i32> = (0..fleet.len() as i32).collect();
        let route_of: Vec<i32> = fleet.iter().map(|&r| r as i32).collect();
        db.execute(
            "CREATE TABLE bench_routes AS
               SELECT u.run, b.geom, ST_Length(b.geom) AS length_m
                 FROM unnest($1::int4[], $2::int4[]) AS u(run, route)
                 JOIN bench_base b ON b.id = u.route",
            &[&runs, &route_of],
        )
        .map_err(e)?;
        let zones = checkpoints(args.zones);
        let lon: Vec<f64> = zones.iter().map(|z| z.position.lon).collect();
        let lat: Vec<f64> = zones.iter().map(|z| z.position.lat).collect();
        let from: Vec<i64> = zones.iter().map(|z| z.valid_from.0).collect();
        let to: Vec<i64> = zones.iter().map(|z| z.valid_to.0).collect();
        db.execute(
            "INSERT INTO bench_zones
               SELECT ord, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography, $5, f, t
                 FROM unnest($1::float8[], $2::float8[], $3::int8[], $4::int8[])
                      WITH ORDINALITY AS u(lon, lat, f, t, ord)",
            &[&lon, &lat, &from, &to, &ZONE_RADIUS_M],
        )
        .map_err(e)?;
        db.batch_execute(
            "CREATE UNIQUE INDEX ON bench_routes (run);
             CREATE INDEX ON bench_zones USING gist (geog);
             ANALYZE bench_routes; ANALYZE bench_zones;",
        )
        .map_err(e)?;
        Ok(())
    }

    type Answer = (f64, Option<f64>, i64);

    fn ask(
        db: &mut Client,
        stmt: &postgres::Statement,
        fixes: &[(usize, FixSample)],
    ) -> Result<Vec<Answer>, String> {
        let run: Vec<i32> = fixes.iter().map(|(r, _)| *r as i32).collect();
        let lon: Vec<f64> = fixes.iter().map(|(_, f)| f.lon).collect();
        let lat: Vec<f64> = fixes.iter().map(|(_, f)| f.lat).collect();
        let t: Vec<i64> = fixes.iter().map(|(_, f)| f.t_ms).collect();
        // The index's search distance: the largest radius plus the margin.
        let reach = ZONE_RADIUS_M + ZONE_MARGIN_M;
        let rows = db
            .query(stmt, &[&run, &lon, &lat, &t, &reach, &ZONE_MARGIN_M])
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, f64>(0),
                    r.get::<_, Option<f64>>(1),
                    r.get::<_, i64>(2),
                )
            })
            .collect())
    }

    pub fn run(
        conn: &str,
        args: &Args,
        routes: &[Route],
        fleet: &[usize],
        fixes: &[(usize, FixSample)],
        ours: &mut Questions,
    ) -> Result<Peer, String> {
        let mut db = Client::connect(conn, NoTls).map_err(|e| e.to_string())?;
        setup(&mut db, args, routes, fleet)?;
        let stmt = db.prepare(QUESTION).map_err(|e| e.to_string())?;
        let batched = &fixes[..args.peer_fixes.min(fixes.len())];
        // Warm the backend's caches (route geometries, index pages) as ours are warm.
        ask(&mut db, &stmt, &batched[..batched.len().min(1_000)])?;
        let started = Instant::now();
        let mut answers = Vec::with_capacity(batched.len());
        for chunk in batched.chunks(1_000) {
            answers.extend(ask(&mut db, &stmt, chunk)?);
        }
        let batched_rate = batched.len() as f64 / started.elapsed().as_secs_f64();
        let mut single =
            Histogram::new_with_bounds(1, 10_000_000_000, 3).map_err(|e| e.to_string())?;
        for one in fixes[..args.peer_single.min(fixes.len())].chunks(1) {
            let t = Instant::now();
            ask(&mut db, &stmt, one)?;
            let _ = single.record((t.elapsed().as_nanos() as u64).max(1));
        }
        // Same answers as our indexes for the same fixes?
        let agree = batched
            .iter()
            .zip(&answers)
            .filter(|((run, f), (d, _, z))| {
                let (our_d, _, our_z) = ours.ask(*run, f);
                (our_d - d).abs() <= 1.0 && our_z as i64 == *z
            })
            .count();
        Ok(Peer {
            batched_rate,
            single,
            agree,
            compared: batched.len(),
        })
    }
}
