//! Detection against GPS error: every public Gothenburg route (or, with `--network N`, N new
//! fastest routes over the drivable network; with `--tours N`, N new multi-stop runs over it)
//! driven whole (traffic stops, minutes at each planned stop, escorts checking in and handing over)
//! at each GPS sigma, fix interval and seed asked for, through the detection engine. Prints, per sigma and interval, the drives, the fixes and every anomaly
//! raised on a clean drive (each one a false alarm), so the engine's noise margin is a measured
//! figure. With `--incident uturn`, every drive instead stops somewhere along its route as at a
//! roadblock, turns and drives back; with `--incident stop`, it stands there 1–4 minutes longer than `unplanned_stop_s`. Then
//! it prints how many incidents raised their anomaly (recall: `roadblock`, `unplanned_stop`),
//! how late against when it was due, and any other anomaly (a false alarm).
//!
//! cargo run --release -p cit-loadtest --bin noise-sweep -- --sigma 4,8,12,16 --seeds 5 \
//!     [--incident uturn|stop] [--network 100 | --tours 50] [--verbose [--trace]]
//!
//! `--trace` shows, for each false alarm and missed incident, how progress along the route took
//! each fix in the minute or so before it (see `field_drive::trace`): the way every engine change
//! of A4 so far was found.

use std::collections::BTreeMap;

use cit_domain::DetectionParams;
use cit_loadtest::field_drive::{
    Course, Gps, Incident, TraceRow, drive, run, since_departure, trace,
};
use cit_loadtest::network::Network;
use cit_loadtest::{Rng, gothenburg_routes};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// GPS error sigmas to drive with, metres per axis.
    #[arg(long, value_delimiter = ',', default_values_t = [4.0, 8.0, 12.0])]
    sigma: Vec<f64>,
    /// Seconds between fixes.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 5])]
    interval: Vec<u32>,
    /// Drives per route, sigma and interval (each with its own seed).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Share of fixes thrown 30–80 m off by multipath.
    #[arg(long, default_value_t = 0.01)]
    multipath: f64,
    /// Drive this incident on every run instead of clean runs.
    #[arg(long, value_enum)]
    incident: Option<Kind>,
    /// Drive this many new routes, fastest paths between random places 2–8 km apart over the
    /// Gothenburg drivable network (as the held-out routes are planned), instead of the 20
    /// public ones.
    #[arg(long, conflicts_with = "tours")]
    network: Option<usize>,
    /// Drive this many new multi-stop runs (a depot, 3–5 stops 0.5–3 km from it visited nearest
    /// first, and back; fastest legs over the drivable network, as GBG-CIT01/02 are planned)
    /// instead of the public routes.
    #[arg(long)]
    tours: Option<usize>,
    /// Detection parameters of every run, as SCENARIOS.md's `params` (JSON, e.g.
    /// '{"uturn_m": 80, "corridor_m": 40}'); the rest keep their defaults.
    #[arg(long)]
    params: Option<String>,
    /// The drivable network `--network` and `--tours` plan over: `gothenburg` (the held-out
    /// routes' city) or `helsinki` (central Helsinki's dense grid at 60° N; its 1.0 x 1.7 km
    /// leave room only for routes 0.6-1.6 km apart and tours of stops 0.3-0.8 km out).
    #[arg(long, value_enum, default_value_t = City::Gothenburg)]
    city: City,
    /// Print every anomaly raised, not only the counts.
    #[arg(long)]
    verbose: bool,
    /// With `--verbose`: under each false alarm and missed incident, how progress took each fix
    /// from 75 s before it (the U-turn window and some) to just after.
    #[arg(long, requires = "verbose")]
    trace: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum City {
    Gothenburg,
    Helsinki,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// Turned back at a roadblock: a `roadblock`.
    Uturn,
    /// Standing 3–6 minutes, engine running: an `unplanned_stop`.
    Stop,
}

/// The defaults with the overrides given, as a scenario's `params` object.
fn detection_params(overrides: Option<&str>) -> DetectionParams {
    let mut value = serde_json::to_value(DetectionParams::default()).expect("params serialize");
    if let Some(text) = overrides {
        let given: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).expect("--params: a JSON object");
        for (k, v) in given {
            assert!(value.get(&k).is_some(), "--params: no parameter {k}");
            value[k] = v;
        }
    }
    serde_json::from_value(value).expect("--params: numbers")
}

fn main() {
    let args = Args::parse();
    let params = detection_params(args.params.as_deref());
    // Straight-line distances of a route's ends, and of a tour's stops from its depot.
    let (network, ends_m, stops_m) = match args.city {
        City::Gothenburg => (Network::gothenburg(), (2_000.0, 8_000.0), (500.0, 3_000.0)),
        City::Helsinki => (Network::helsinki(), (600.0, 1_600.0), (300.0, 800.0)),
    };
    let network = || network.expect("the shared data's drivable network");
    let routes = match (args.network, args.tours) {
        (Some(n), _) => network().random_routes(n, 42, ends_m.0, ends_m.1),
        (_, Some(n)) => network().random_tours(n, 42, stops_m.0, stops_m.1),
        _ => gothenburg_routes().expect("the shared data's Gothenburg routes"),
    };
    let courses: Vec<Course> = routes
        .into_iter()
        .enumerate()
        .map(|(r, route)| Course::of(route, r as u64))
        .collect();
    println!(
        "{} routes ({} multi-stop), {} seeds each, multipath {:.1} %",
        courses.len(),
        courses.iter().filter(|c| c.visits.len() > 1).count(),
        args.seeds,
        100.0 * args.multipath
    );
    for &sigma_m in &args.sigma {
        for &interval_s in &args.interval {
            let gps = Gps {
                sigma_m,
                multipath: args.multipath,
                interval_s,
            };
            let (mut drives, mut fixes) = (0, 0);
            let mut late_s: Vec<f64> = Vec::new();
            let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
            for (r, course) in courses.iter().enumerate() {
                for seed in 0..args.seeds {
                    let cruise = 9.0 + (seed % 5) as f64;
                    let seed = seed * 1_000 + r as u64;
                    let incident = args.incident.map(|kind| {
                        let mut rng = Rng::new(seed ^ 0x5eed);
                        match kind {
                            Kind::Uturn => Incident::uturn_on(course, &mut rng),
                            Kind::Stop => Incident::stop_on(course, &mut rng, &params),
                        }
                    });
                    let track = drive(course, cruise, gps, seed, incident, &params);
                    drives += 1;
                    fixes += track.fixes.len();
                    let mut raised = run(course, &track, &params);
                    // The incident's anomaly (the first of its kind) is the one expected.
                    if let (Some(incident), Some(due)) = (incident, track.due) {
                        match raised
                            .iter()
                            .position(|a| a.kind.as_str() == incident.kind())
                        {
                            Some(i) => {
                                let late = raised.remove(i).at.secs_since(due);
                                if args.verbose {
                                    println!(
                                        "  route {r} seed {seed}: {incident:?} raised {late:+.0} s"
                                    );
                                }
                                late_s.push(late);
                            }
                            None if args.verbose => {
                                println!("  route {r} seed {seed}: {incident:?} missed");
                                if args.trace {
                                    let due = since_departure(due);
                                    show(&trace(course, &track, &params, due - 20.0, due + 60.0));
                                }
                            }
                            None => {}
                        }
                    }
                    for a in raised {
                        *by_kind.entry(a.kind.as_str().to_string()).or_default() += 1;
                        if args.verbose {
                            let at = since_departure(a.at);
                            println!(
                                "  route {r} seed {seed}: {} at +{at:.0} s: {} {}",
                                a.kind.as_str(),
                                a.summary,
                                a.evidence
                            );
                            if args.trace {
                                show(&trace(course, &track, &params, at - 75.0, at + 3.0));
                            }
                        }
                    }
                }
            }
            let total: usize = by_kind.values().sum();
            let recall = if args.incident.is_some() {
                late_s.sort_by(f64::total_cmp);
                format!(
                    "{} of {drives} incidents raised, seconds after due: min {:.0} median {:.0} max {:.0}; ",
                    late_s.len(),
                    late_s.first().unwrap_or(&f64::NAN),
                    late_s.get(late_s.len() / 2).unwrap_or(&f64::NAN),
                    late_s.last().unwrap_or(&f64::NAN)
                )
            } else {
                String::new()
            };
            println!(
                "sigma {sigma_m:>4.1} m, every {interval_s} s: {drives} drives, {fixes} fixes, \
                 {recall}{total} false alarms {by_kind:?}"
            );
        }
    }
}

fn show(rows: &[TraceRow]) {
    for row in rows {
        println!("    {row}");
    }
}
