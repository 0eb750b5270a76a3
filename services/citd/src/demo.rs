//! The quick-start demo: starts citd on the embedded store with the scenario clock, then plays a
//! real-road escort run from ../shared/data through the public API at a chosen speed, printing
//! the convoy's progress and every anomaly as dispatch sees it (polled over the API). The server
//! keeps running afterwards so the run can be explored with any gRPC client.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use cit_proto::v1 as pb;
use cit_scenario::model::format_time;
use cit_scenario::{Output, Scenario};

use crate::config::Config;
use crate::runner::{Clients, Play, Progress, play};

pub const ATTRIBUTION: &str = "Map data © OpenStreetMap contributors, ODbL 1.0 \
(https://www.openstreetmap.org/copyright); routes and scenarios derived from it (shared/data).";

/// The demo's run, built into the binary: an installed `citd demo` needs no checkout beside it.
const DEMO_SCENARIO: &str = include_str!("../../../../shared/data/scenarios/gbg-cit02-full.json");

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Scenario to play (default: gbg-cit02-full, built into the binary).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Scenario seconds per wall second.
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// Stop the server when the run is over instead of serving on.
    #[arg(long)]
    pub exit: bool,
}

fn hhmm(t: cit_domain::Millis) -> String {
    let s = format_time(t);
    s.get(11..19).unwrap_or(&s).to_string()
}

pub async fn run(mut config: Config, args: DemoArgs) -> Result<(), String> {
    let scenario = match &args.scenario {
        Some(path) => Scenario::load(path),
        None => Scenario::parse(DEMO_SCENARIO, "the built-in gbg-cit02-full"),
    }
    .map_err(|e| e.to_string())?;
    config.clock = crate::config::ClockMode::Scenario;
    // Run from a checkout, the demo draws its pictures over the Gothenburg road network in the
    // shared data (an installed binary without it draws none, unless given --map).
    let roads = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/gothenburg/gothenburg_drivable.geojson");
    if config.map.is_none() && roads.is_file() {
        config.map = Some(roads);
    }
    let _tmp;
    if config.data_dir == Config::default().data_dir {
        // A fresh store per demo, so it can be run again and again.
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        config.data_dir = dir.path().to_path_buf();
        _tmp = dir;
    }
    // TLS and tokens from a throwaway development PKI, unless the configuration brings its own
    // (then the demo cannot mint its people's tokens).
    let pki_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (dev, creds) = crate::credentials::private_server(pki_dir.path())?;
    if config.tls.is_none() || config.insecure {
        config.tls = dev.tls;
        config.insecure = false;
        config.tokens = dev.tokens;
        config.run_signing_key = dev.run_signing_key;
    }
    let creds = std::sync::Arc::new(creds);
    let server = crate::server::start(config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let endpoint = server.endpoint();
    println!(
        "citd is serving on {endpoint} (metrics: {:?}), store in {}",
        server.metrics_addr,
        config.data_dir.display()
    );
    println!("demo: {} — {}", scenario.name, scenario.description);
    println!("      {ATTRIBUTION}");
    println!(
        "      playing at {}x through the public gRPC API; anomalies appear as dispatch sees them\n",
        args.speed
    );

    // Dispatch's view, polled over the API while the run plays.
    let watcher = {
        let endpoint = endpoint.clone();
        let creds = creds.clone();
        tokio::spawn(async move {
            let Ok(c) = Clients::connect(&endpoint, creds.clone()).await else {
                return;
            };
            let mut c = c.as_person("demo-dispatcher", &["dispatcher"]);
            let mut seen = HashSet::new();
            loop {
                if let Ok(list) = c
                    .dispatch
                    .list_anomalies(pb::ListAnomaliesRequest {
                        include_resolved: true,
                        ..Default::default()
                    })
                    .await
                {
                    for a in list.into_inner().anomalies {
                        if seen.insert(a.id.clone()) {
                            let sev = pb::Severity::try_from(a.severity)
                                .map(|s| {
                                    s.as_str_name().trim_start_matches("SEVERITY_").to_string()
                                })
                                .unwrap_or_default();
                            let at = a.at.as_ref().map(crate::grpc::millis).unwrap_or_default();
                            println!(
                                "  !! {} {:<9} {:<26} {} ({}): {}",
                                hhmm(at),
                                sev,
                                a.kind,
                                a.run_id,
                                a.rule,
                                a.summary
                            );
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut last_print = cit_domain::Millis(0);
    let result = play(
        &endpoint,
        &creds,
        &scenario,
        &Play {
            speed: Some(args.speed),
        },
        |p| match p {
            Progress::Fixes {
                t,
                vehicle,
                lat,
                lon,
                speed_mps,
            } => {
                if t.secs_since(last_print) >= 60.0 {
                    last_print = t;
                    println!(
                        "     {} {vehicle} at {lat:.5},{lon:.5} {:>3.0} km/h",
                        hhmm(t),
                        speed_mps * 3.6
                    );
                }
            }
            Progress::Op { t, op, run } => println!("     {} {op} {run}", hhmm(t)),
            Progress::Output(Output::Refusal { rule, message, .. }) => {
                println!("  xx refused by {rule}: {message}");
            }
            Progress::Output(Output::Error { op, message, .. }) => {
                println!("  ?? {op} failed: {message}")
            }
            Progress::Output(Output::Anomaly { .. }) => {}
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    watcher.abort();
    let outputs = result.map_err(|e| e.to_string())?;
    let score = cit_scenario::score(&scenario, &outputs);
    println!(
        "\nrun over: {} anomalies and refusals raised; against the scenario's expectations: {}",
        outputs.len(),
        if score.passed() {
            "all found, no false alarms".to_string()
        } else {
            format!("{score:?}")
        }
    );
    if args.exit {
        server.stop().await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    let pki = pki_dir.path().join("pki");
    println!(
        "citd keeps serving on {endpoint} with a throwaway PKI in {} (Ctrl-C to stop); try:\n  cit audit --addr {} --pki {} verify R-1\n  grpcurl -cacert {}/ca.pem -H \"authorization: Bearer $(cit token mint --pki {} --person me --roles dispatcher)\" {} cit.v1.Dispatch/ListActiveRuns",
        pki.display(),
        server.addr,
        pki.display(),
        pki.display(),
        pki.display(),
        server.addr
    );
    let _ = tokio::signal::ctrl_c().await;
    server.stop().await.map_err(|e| e.to_string())
}
