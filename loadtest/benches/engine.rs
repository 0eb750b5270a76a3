//! Criterion: one fix through the detection engine at issue 3's size — 10,000 active runs on the
//! real Gothenburg routes, 10,000 registered checkpoints — every vehicle in turn, one fix per
//! event (so each fix meets its run's state cold, as in the field). Three measurements of the
//! same fixes:
//! - the whole engine (every rule of every run);
//! - our indexes answering the corridor and zone questions alone (R-tree, h3 cells);
//! - the in-process peer: the same questions by scanning every segment and checkpoint.
//!
//! Criterion's statistics say whether a change moved the per-fix time; at the end the bench
//! prints ours against the scan over every timed iteration of this run, and the ratio.
//! `engine-bench` gives the throughput, the latency percentiles, memory and the PostGIS peer.
//!
//! cargo bench -p cit-loadtest --bench engine

use std::hint::black_box;
use std::time::{Duration, Instant};

use cit_domain::DetectionParams;
use cit_engine::Engine;
use cit_loadtest::engine_drive::{
    Answer, Questions, Scan, fixes_event, latlons, next_step, plan, register_checkpoints, vehicles,
};
use cit_loadtest::{FixSample, Route, SimVehicle, gothenburg_routes};
use criterion::{Criterion, Throughput};

const RUNS: usize = 10_000;
const ZONES: usize = 10_000;
/// Fixes per vehicle before the fleet starts over (every drive stays on its route).
const STEPS: usize = 250;
const NOISE_M: f64 = 4.0;

/// A departed fleet and its engine, handing out the fleet's next fixes.
struct Drive {
    routes: Vec<Route>,
    engine: Engine,
    fleet: Vec<SimVehicle>,
    pos: u64,
    n: u64,
    steps: usize,
}

impl Drive {
    fn new(routes: Vec<Route>) -> Drive {
        let mut engine = Engine::new();
        let mut pos = 0;
        register_checkpoints(&mut engine, &mut pos, ZONES);
        let fleet = vehicles(RUNS, STEPS, &routes);
        for (i, v) in fleet.iter().enumerate() {
            plan(&mut engine, &mut pos, i, latlons(&routes[v.route]));
        }
        Drive {
            routes,
            engine,
            fleet,
            pos,
            n: 0,
            steps: 0,
        }
    }

    /// One fix of every vehicle; a fresh fleet when this one has driven its distance.
    fn step(&mut self) -> Vec<FixSample> {
        if self.steps == STEPS {
            *self = Drive::new(std::mem::take(&mut self.routes));
        }
        self.steps += 1;
        next_step(&mut self.fleet, &self.routes, &mut self.n, NOISE_M)
    }
}

/// Times `each` over `iters` fixes of the drive, in whole steps of the fleet. The steps, and
/// what `prepare` makes of each fix (the engine's event: a unit's batch arrives decoded), are
/// made outside the timing.
fn timed<T>(
    drive: &mut Drive,
    iters: u64,
    prepare: impl Fn(usize, &FixSample) -> T,
    mut each: impl FnMut(&mut Drive, usize, &T),
) -> Duration {
    let mut left = iters as usize;
    let mut total = Duration::ZERO;
    while left > 0 {
        let step = drive.step();
        let items: Vec<T> = step
            .iter()
            .enumerate()
            .take(left)
            .map(|(run, f)| prepare(run, f))
            .collect();
        let started = Instant::now();
        for (run, item) in items.iter().enumerate() {
            each(drive, run, item);
        }
        total += started.elapsed();
        left -= items.len();
    }
    total
}

/// Times `ask` answering the questions for `iters` fixes of the drive.
fn asked(
    drive: &mut Drive,
    iters: u64,
    mut ask: impl FnMut(usize, &FixSample) -> Answer,
) -> Duration {
    timed(
        drive,
        iters,
        |_, f| f.clone(),
        |_, run, f| {
            black_box(ask(run, f));
        },
    )
}

/// Time and fixes over every timed iteration of one measurement (warm-up included).
#[derive(Default, Clone, Copy)]
struct Total {
    time: Duration,
    fixes: u64,
}

impl Total {
    fn add(&mut self, time: Duration, fixes: u64) -> Duration {
        self.time += time;
        self.fixes += fixes;
        time
    }

    fn rate(&self) -> f64 {
        self.fixes as f64 / self.time.as_secs_f64()
    }
}

/// Runs the three measurements; their totals: whole engine, indexed, scan.
fn per_fix(c: &mut Criterion) -> [Total; 3] {
    let routes = gothenburg_routes().expect("the shared data's Gothenburg routes");
    let corridor_m = DetectionParams::default().corridor_m;
    let mut drive = Drive::new(routes.clone());
    let mut totals = [Total::default(); 3];
    let mut group = c.benchmark_group("per fix, 10k runs, 10k zones");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);

    group.bench_function("whole engine", |b| {
        b.iter_custom(|iters| {
            let time = timed(
                &mut drive,
                iters,
                |run, f| fixes_event(run, vec![f.to_domain()]),
                |d, _, e| {
                    d.pos += 1;
                    black_box(d.engine.handle(d.pos, e));
                },
            );
            totals[0].add(time, iters)
        })
    });

    let fleet = drive.fleet.clone();
    let mut questions = Questions::new(ZONES, &routes, &fleet, corridor_m);
    group.bench_function("corridor + zone questions, indexed", |b| {
        b.iter_custom(|iters| {
            let time = asked(&mut drive, iters, |run, f| questions.ask(run, f));
            totals[1].add(time, iters)
        })
    });

    let scan = Scan::new(ZONES, &routes, &fleet);
    // The peer must answer the same questions the same way: one step of the fleet, compared.
    let step = drive.step();
    let agree = step
        .iter()
        .enumerate()
        .filter(|(run, f)| {
            let (ours, theirs) = (questions.ask(*run, f), scan.ask(*run, f, corridor_m));
            (ours.0 - theirs.0).abs() <= 1.0 && ours.2 == theirs.2
        })
        .count();
    println!(
        "answers agree with the scan on {agree} of {} fixes (distance within 1 m, same checkpoints)",
        step.len()
    );
    assert_eq!(
        agree,
        step.len(),
        "our indexes and the scan must give the same answers"
    );
    group.bench_function("corridor + zone questions, scan (peer)", |b| {
        b.iter_custom(|iters| {
            let time = asked(&mut drive, iters, |run, f| scan.ask(run, f, corridor_m));
            totals[2].add(time, iters)
        })
    });
    group.finish();
    totals
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let [whole, indexed, scan] = per_fix(&mut c);
    c.final_summary();
    // `--test`, `--list` and filtered runs time a fix or none: too few for a ratio.
    let timed_enough = |t: &Total| t.fixes >= RUNS as u64;
    if !(timed_enough(&indexed) && timed_enough(&scan)) {
        println!("(too few fixes timed for a ratio)");
        return;
    }
    cit_loadtest::report(
        "corridor + zone questions per fix",
        indexed.rate(),
        "linear scan",
        scan.rate(),
        "fixes/s",
    );
    if timed_enough(&whole) {
        cit_loadtest::report(
            "whole engine vs the scan answering only the questions",
            whole.rate(),
            "linear scan",
            scan.rate(),
            "fixes/s",
        );
    }
}
