//! `cit`: the command-line client. `cit scenario run|check` plays scenario files through the
//! public gRPC API (against `--addr`, or a private citd started for each file); `cit audit ...`
//! reads, replays, verifies, re-detects, exports and renders a run of a running citd.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use cit_scenario::{Scenario, score};
use citd::runner::{Play, play, play_fresh};

#[derive(Debug, Parser)]
#[command(name = "cit", version, about = "cit command-line client")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Scenario files (cit-scenario/1).
    #[command(subcommand)]
    Scenario(ScenarioCmd),
    /// A recorded run, for auditors: read, replay, state-at, verify, redetect, export, render.
    Audit(citd::audit_client::AuditArgs),
}

#[derive(Debug, Subcommand)]
enum ScenarioCmd {
    /// Play files (or every *.json of a directory) and print the runner output, one JSON object
    /// per line.
    Run(ScenarioArgs),
    /// Play and score against each file's `expect`; ends with "N passed, M failed".
    Check(ScenarioArgs),
}

#[derive(Debug, clap::Args)]
struct ScenarioArgs {
    /// Files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// A citd in `--clock scenario` mode with a fresh store (one scenario per server). Without
    /// it, a private citd is started for each file.
    #[arg(long)]
    addr: Option<String>,
}

fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut list: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json"))
                .collect();
            list.sort();
            out.extend(list);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

async fn play_one(
    path: &Path,
    addr: Option<&str>,
) -> Result<(Scenario, Vec<cit_scenario::Output>), String> {
    let s = Scenario::load(path).map_err(|e| e.to_string())?;
    let out = match addr {
        Some(a) => play(a, &s, &Play::default(), |_| {}).await,
        None => play_fresh(&s, &Play::default()).await,
    }
    .map_err(|e| format!("{}: {e}", s.name))?;
    Ok((s, out))
}

fn main() -> std::process::ExitCode {
    // Anomalies are the output here, not log lines.
    citd::init_tracing(
        "warn,citd::engine_worker=error",
        citd::config::LogFormat::Text,
    );
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cit: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let cmd = match cli.command {
            Cmd::Scenario(cmd) => cmd,
            Cmd::Audit(args) => {
                return match citd::audit_client::run(args).await {
                    Ok(true) => std::process::ExitCode::SUCCESS,
                    Ok(false) => std::process::ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("cit audit: {e}");
                        std::process::ExitCode::from(2)
                    }
                };
            }
        };
        let (args, check) = match cmd {
            ScenarioCmd::Run(a) => (a, false),
            ScenarioCmd::Check(a) => (a, true),
        };
        let list = match files(&args.paths) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cit: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let (mut passed, mut failed) = (0, 0);
        for f in &list {
            match play_one(f, args.addr.as_deref()).await {
                Ok((s, out)) if check => {
                    let sc = score(&s, &out);
                    if sc.passed() {
                        passed += 1;
                        println!("PASS {}", s.name);
                    } else {
                        failed += 1;
                        println!("FAIL {}", s.name);
                        for m in &sc.missed {
                            println!("  missed: {m}");
                        }
                        for m in &sc.false_alarms {
                            println!("  false alarm: {m}");
                        }
                        for m in &sc.errors {
                            println!("  error: {m}");
                        }
                    }
                }
                Ok((_, out)) => {
                    for o in out {
                        println!("{}", o.to_line());
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL {}: {e}", f.display());
                }
            }
        }
        if check {
            println!("{passed} passed, {failed} failed");
        }
        if failed > 0 {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}
