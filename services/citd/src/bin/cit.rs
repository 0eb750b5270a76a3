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
    /// A development PKI: a CA, citd's certificate, a gateway's and a token signing key.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Bearer tokens signed with a local key (installations without an identity provider).
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
enum PkiCmd {
    /// Make a development PKI in DIR and print the citd flags that use it.
    Init { dir: PathBuf },
    /// A client certificate for a unit (or, with --gateway, a gateway) signed by DIR's CA.
    Unit {
        dir: PathBuf,
        id: String,
        #[arg(long)]
        gateway: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Print a token for a person with roles, signed by DIR's token key.
    Mint {
        /// The development PKI directory holding the signing key.
        #[arg(long, env = "CIT_PKI")]
        pki: PathBuf,
        /// The person's id (the token's subject).
        #[arg(long)]
        person: String,
        /// Roles, comma-separated: driver, escort, gun_custodian, ammo_custodian, approver,
        /// dispatcher, supervisor, police_liaison, auditor, admin.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
    },
}

fn pki_cmd(cmd: PkiCmd) -> Result<(), String> {
    use citd::auth::devpki;
    match cmd {
        PkiCmd::Init { dir } => {
            let pki = devpki::generate(&dir)?;
            citd::credentials::Credentials::from_pki(&pki)?;
            println!("development PKI in {} (not for production)", dir.display());
            println!(
                "citd --tls-cert {} --tls-key {} --tls-client-ca {} --token-key {}={}",
                pki.server_cert.display(),
                pki.server_key.display(),
                pki.ca.display(),
                pki.token_key.kid,
                pki.token_key.public_key.display()
            );
            println!(
                "cit scenario run FILE --addr 127.0.0.1:50051 --pki {}",
                dir.display()
            );
            Ok(())
        }
        PkiCmd::Unit { dir, id, gateway } => {
            let kind = if gateway {
                citd::auth::Kind::Gateway
            } else {
                citd::auth::Kind::Unit
            };
            let (cert, key) = devpki::issue_client(&dir, kind, &id)?;
            println!("{}\n{}", cert.display(), key.display());
            Ok(())
        }
    }
}

fn token_cmd(cmd: TokenCmd) -> Result<(), String> {
    let TokenCmd::Mint {
        pki,
        person,
        roles,
        ttl_s,
    } = cmd;
    for r in &roles {
        if citd::auth::Role::parse(r).is_none() {
            return Err(format!("unknown role {r:?}"));
        }
    }
    let kid = citd::auth::devpki::DEV_KID;
    let path = pki.join(format!("token-{kid}.key.pem"));
    let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let signer = citd::auth::token::Signer::from_pem(kid, &pem, "cit-local", "cit")?;
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    println!("{}", signer.mint(&person, &roles, ttl_s));
    Ok(())
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
    /// A citd in `--clock scenario` mode with a fresh store (one scenario per server), reached
    /// with --pki (the runner acts as every person of the scenario). Without it, a private
    /// citd is started for each file.
    #[arg(long)]
    addr: Option<String>,
    /// The development PKI of the citd at --addr (`cit pki init`).
    #[arg(long, env = "CIT_PKI")]
    pki: Option<PathBuf>,
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
    pki: Option<&Path>,
) -> Result<(Scenario, Vec<cit_scenario::Output>), String> {
    let s = Scenario::load(path).map_err(|e| e.to_string())?;
    let out = match addr {
        Some(a) => {
            let dir = pki.ok_or("--addr needs --pki: the runner acts as the scenario's people")?;
            let creds = std::sync::Arc::new(citd::credentials::Credentials::from_pki_dir(dir)?);
            play(a, &creds, &s, &Play::default(), |_| {}).await
        }
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
            Cmd::Pki(cmd) => return exit(pki_cmd(cmd)),
            Cmd::Token(cmd) => return exit(token_cmd(cmd)),
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
            match play_one(f, args.addr.as_deref(), args.pki.as_deref()).await {
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

fn exit(r: Result<(), String>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cit: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
