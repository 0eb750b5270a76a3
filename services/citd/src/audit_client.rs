//! `cit audit ...`: the audit API from the command line, for auditors and scripts. Every
//! subcommand is one call of `cit.v1.Audit` against a running citd; output is JSON (one object
//! per line for event streams) or the exported file, and the exit code says whether the record
//! held up (1 when a chain is broken or re-detection differs).

use std::path::PathBuf;

use cit_proto::v1 as pb;
use serde_json::{Value, json};

use crate::audit::export::rfc3339;
use crate::grpc::millis;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub connect: crate::credentials::ConnectArgs,
    #[command(subcommand)]
    pub command: AuditCmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Every event of a run in log order, one JSON object per line.
    Read {
        run_id: String,
        /// Include the custody events (weapons, ammunition lots) the run references.
        #[arg(long)]
        custody: bool,
    },
    /// The same, paced by the events' own times.
    Replay {
        run_id: String,
        /// Scenario seconds per second (60: a minute per second; 0: as fast as possible).
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        #[arg(long)]
        custody: bool,
    },
    /// The run as dispatch saw it at a moment (RFC 3339, e.g. 2026-03-09T07:15:00Z).
    StateAt { run_id: String, at: String },
    /// Recomputes the run's hash chains; exit 1 and the first bad event when broken.
    Verify { run_id: String },
    /// Replays the run through the current engine; exit 1 with the differences when it does not
    /// reproduce the recorded anomalies.
    Redetect { run_id: String },
    /// GeoJSON, GPX or CSV to a file (or stdout).
    Export {
        run_id: String,
        #[arg(long, value_enum, default_value = "geojson")]
        format: Format,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// An SVG picture of the run to a file (or stdout).
    Render {
        run_id: String,
        #[arg(long, default_value_t = 0)]
        width: u32,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Geojson,
    Gpx,
    Csv,
}

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.map(|t| Value::from(rfc3339(millis(t))))
        .unwrap_or(Value::Null)
}

pub fn run_event_json(e: &pb::RunEvent) -> Value {
    json!({
        "log_position": e.log_position,
        "stream": e.stream,
        "stream_version": e.stream_version,
        "event_id": e.event_id,
        "event_type": e.event_type,
        "recorded_at": time(e.recorded_at.as_ref()),
        "chain_hash": e.chain_hash,
        "data": serde_json::from_str::<Value>(&e.data_json).unwrap_or(Value::String(e.data_json.clone())),
    })
}

fn anomaly_json(a: &pb::Anomaly) -> Value {
    json!({
        "id": a.id,
        "kind": a.kind,
        "rule": a.rule,
        "severity": pb::Severity::try_from(a.severity).map(|s| s.as_str_name()).unwrap_or("?"),
        "status": pb::AnomalyStatus::try_from(a.status).map(|s| s.as_str_name()).unwrap_or("?"),
        "at": time(a.at.as_ref()),
        "summary": a.summary,
    })
}

pub fn run_view_json(v: &pb::RunView) -> Value {
    json!({
        "run_id": v.run_id,
        "vehicle_id": v.vehicle_id,
        "status": pb::RunStatus::try_from(v.status).map(|s| s.as_str_name()).unwrap_or("?"),
        "position": v.position.as_ref().map(|p| json!({"lat": p.lat, "lon": p.lon})),
        "speed_mps": v.speed_mps,
        "heading_deg": v.heading_deg,
        "last_fix_at": time(v.last_fix_at.as_ref()),
        "last_fix_age_s": v.last_fix_age_s,
        "progress_m": v.progress_m,
        "route_length_m": v.route_length_m,
        "next_stop_id": v.next_stop_id,
        "next_stop_eta": time(v.next_stop_eta.as_ref()),
        "crew": v.crew.iter().map(|c| json!({
            "person_id": c.person_id, "role": c.role, "last_check_in": time(c.last_check_in.as_ref()),
        })).collect::<Vec<_>>(),
        "weapons_out": v.weapons_out,
        "open_anomalies": v.open_anomalies.iter().map(anomaly_json).collect::<Vec<_>>(),
    })
}

fn write_out(output: Option<&PathBuf>, bytes: &[u8]) -> Result<(), String> {
    match output {
        Some(p) => std::fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(bytes)
                .map_err(|e| format!("stdout: {e}"))
        }
    }
}

/// Writes a line to stdout; false once stdout is gone (piped into `head`): stop quietly.
fn emit(line: impl std::fmt::Display) -> bool {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}

async fn print_events(mut s: tonic::Streaming<pb::RunEvent>) -> Result<bool, String> {
    while let Some(e) = s.message().await.map_err(status)? {
        if !emit(run_event_json(&e)) {
            break;
        }
    }
    Ok(true)
}

/// Runs one subcommand; Ok(false) when the record did not hold up (exit 1).
pub async fn run(args: AuditArgs) -> Result<bool, String> {
    // With a development PKI the CLI speaks for an auditor of its own; otherwise the token
    // given is the auditor's.
    let creds = std::sync::Arc::new(args.connect.credentials("cit-auditor", &["auditor"])?);
    let addr = &args.connect.addr;
    let mut c = crate::runner::Clients::connect(addr, creds)
        .await
        .map_err(|e| format!("cannot reach citd at {addr}: {e}"))?
        .audit;
    match args.command {
        AuditCmd::Read { run_id, custody } => {
            let s = c
                .read_run(pb::ReadRunRequest {
                    run_id,
                    include_custody: custody,
                })
                .await
                .map_err(status)?;
            print_events(s.into_inner()).await
        }
        AuditCmd::Replay {
            run_id,
            speed,
            custody,
        } => {
            let s = c
                .replay_run(pb::ReplayRunRequest {
                    run_id,
                    speed,
                    include_custody: custody,
                })
                .await
                .map_err(status)?;
            print_events(s.into_inner()).await
        }
        AuditCmd::StateAt { run_id, at } => {
            let t = chrono::DateTime::parse_from_rfc3339(&at)
                .map_err(|e| format!("at: {at:?} is not an RFC 3339 time: {e}"))?;
            let v = c
                .state_at(pb::StateAtRequest {
                    run_id,
                    at: Some(crate::grpc::ts(cit_domain::Millis(t.timestamp_millis()))),
                })
                .await
                .map_err(status)?
                .into_inner();
            emit(format!("{:#}", run_view_json(&v)));
            Ok(true)
        }
        AuditCmd::Verify { run_id } => {
            let v = c
                .verify_run(pb::VerifyRunRequest { run_id })
                .await
                .map_err(status)?
                .into_inner();
            emit(format!(
                "{:#}",
                json!({
                    "ok": v.ok,
                    "events_checked": v.events_checked,
                    "first_bad_stream_version": (!v.ok).then_some(v.first_bad_stream_version),
                    "first_bad_event_id": (!v.ok).then_some(v.first_bad_event_id),
                    "signatures_checked": v.signatures_checked,
                    "signing_key_id": v.signing_key_id,
                    "signed_version": v.signed_version,
                    "head_covered": v.head_covered,
                    "reason": v.reason,
                })
            ));
            Ok(v.ok)
        }
        AuditCmd::Redetect { run_id } => {
            let r = c
                .redetect_run(pb::RedetectRunRequest { run_id })
                .await
                .map_err(status)?
                .into_inner();
            emit(format!(
                "{:#}",
                json!({
                    "reproduced": r.reproduced,
                    "recorded": r.recorded_anomaly_ids,
                    "redetected": r.redetected_anomaly_ids,
                    "differences": r.differences,
                })
            ));
            Ok(r.reproduced)
        }
        AuditCmd::Export {
            run_id,
            format,
            output,
        } => {
            let format = match format {
                Format::Geojson => pb::ExportFormat::Geojson,
                Format::Gpx => pb::ExportFormat::Gpx,
                Format::Csv => pb::ExportFormat::Csv,
            };
            let r = c
                .export_run(pb::ExportRunRequest {
                    run_id,
                    format: format as i32,
                })
                .await
                .map_err(status)?
                .into_inner();
            write_out(output.as_ref(), &r.content)?;
            Ok(true)
        }
        AuditCmd::Render {
            run_id,
            width,
            output,
        } => {
            let r = c
                .render_run(pb::RenderRunRequest {
                    run_id,
                    width_px: width,
                })
                .await
                .map_err(status)?
                .into_inner();
            write_out(output.as_ref(), r.svg.as_bytes())?;
            Ok(true)
        }
    }
}
