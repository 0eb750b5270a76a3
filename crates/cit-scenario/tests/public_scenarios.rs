//! Every public scenario of ../shared/data/scenarios played through the pure core (World +
//! Engine): the expected anomalies and refusals, and nothing else (A1–A11, R1–R9).

use std::path::PathBuf;

use cit_scenario::{Scenario, score, simulate};

fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/scenarios")
}

#[test]
fn public_scenarios_pass_through_the_pure_core() {
    let dir = scenario_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("scenario dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios found in {}", dir.display());
    let mut failures = Vec::new();
    for f in &files {
        let s = Scenario::load(f).expect("scenario parses");
        let out = simulate::run(&s).expect("scenario plays");
        let sc = score(&s, &out);
        if !sc.passed() {
            failures.push(format!(
                "{}: missed {:?} false {:?} errors {:?}",
                s.name, sc.missed, sc.false_alarms, sc.errors
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
