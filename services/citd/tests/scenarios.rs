//! Every public scenario of ../shared/data/scenarios through the real gRPC path (a citd per
//! file, scenario clock): the expected anomalies and refusals and nothing else (A1–A11, R1–R9).

use std::path::PathBuf;

use cit_scenario::{Scenario, score};
use citd::runner::{Play, play_fresh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_scenarios_pass_through_grpc() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenario dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 17, "public scenarios present");
    let mut failures = Vec::new();
    for f in &files {
        let s = Scenario::load(f).expect("parses");
        let out = play_fresh(&s, &Play::default()).await.expect("plays");
        let sc = score(&s, &out);
        if !sc.passed() {
            failures.push(format!("{}: {sc:?}", s.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
