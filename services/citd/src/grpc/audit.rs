//! `cit.v1.Audit`: a run read back or replayed event by event (with its custody events), the run
//! as dispatch saw it at a moment, its hash chains verified, its anomalies re-detected, and its
//! exports and picture. The work is in [`crate::audit`]; this is the wire.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cit_domain::event::{Event, streams};
use cit_proto::v1 as pb;
use cit_proto::v1::audit_server::Audit;
use cit_store::RecordedEvent;
use cit_store::chain::to_hex;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{required_time, ts};
use crate::app::{App, decode};
use crate::audit::{self, RunDigest, RunRecord, export, render};
use crate::auth::Caller;
use crate::error::AppError;

/// Longest pause a paced replay makes between two events; a gap of hours in the record should
/// not stall an auditor's replay for hours even at speed 1.
const MAX_REPLAY_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct AuditService {
    pub app: Arc<App>,
    /// The deployment's road map (`--map`), drawn under `RenderRun`'s picture.
    pub map: Option<Arc<crate::basemap::BaseMap>>,
}

type Res<T> = Result<Response<T>, Status>;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

fn run_event(e: &RecordedEvent) -> pb::RunEvent {
    let recorded_at = decode(e)
        .map(|ev| ev.time())
        .unwrap_or(cit_domain::Millis(e.created_ms));
    pb::RunEvent {
        log_position: e.position,
        stream_version: e.version,
        stream: e.stream.clone(),
        event_id: e.id.to_string(),
        event_type: e.event_type.clone(),
        recorded_at: Some(ts(recorded_at)),
        data_json: String::from_utf8_lossy(&e.data).into_owned(),
        metadata_json: String::from_utf8_lossy(&e.metadata).into_owned(),
        chain_hash: to_hex(&e.chain),
    }
}

fn run_id(id: &str) -> Result<&str, Status> {
    if id.trim().is_empty() {
        return Err(Status::invalid_argument("run_id: is required"));
    }
    Ok(id)
}

impl AuditService {
    /// A run's record, for `caller`'s call `rpc`; the read is recorded (who read which run,
    /// when) before the record is handed out.
    async fn load(
        &self,
        caller: &Caller,
        rpc: &str,
        id: &str,
        context: bool,
    ) -> Result<RunRecord, Status> {
        let record = audit::load(&self.app, run_id(id)?, context).await?;
        self.record_read(caller, rpc, &record.run_id, "").await?;
        Ok(record)
    }

    async fn record_read(
        &self,
        caller: &Caller,
        rpc: &str,
        run_id: &str,
        vehicle_id: &str,
    ) -> Result<(), Status> {
        let read = Event::RecordRead {
            rpc: rpc.into(),
            run_id: run_id.into(),
            vehicle_id: vehicle_id.into(),
            by: caller.principal.id.clone(),
            at: self.app.clock.now(),
        };
        self.app
            .append_own_by(&read, "audit", caller)
            .await
            .map(|_| ())
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn read_vehicle_fixes(
        &self,
        req: Request<pb::ReadVehicleFixesRequest>,
    ) -> Res<pb::ReadVehicleFixesResponse> {
        const MAX_FIXES: usize = 100_000;
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        let from = required_time(r.from.as_ref(), "from").map_err(AppError::from)?;
        let to = required_time(r.to.as_ref(), "to").map_err(AppError::from)?;
        if to < from {
            return Err(AppError::from(cit_domain::InputError::invalid(
                "to",
                "must not be before from",
            ))
            .into());
        }
        let vehicle = r.vehicle_id;
        let (known, mut to_read) = self
            .app
            .with_world(|w| {
                let mut runs: Vec<String> = w
                    .runs
                    .values()
                    .filter(|run| run.served_by(&vehicle))
                    .map(|run| format!("{}{}", streams::RUN, run.run_id))
                    .collect();
                runs.sort();
                (w.vehicles.contains_key(&vehicle), runs)
            })
            .await;
        if !known {
            return Err(Status::not_found(format!("vehicle {vehicle:?} not found")));
        }
        to_read.insert(0, format!("{}{vehicle}", streams::VEHICLE));
        let mut fixes = Vec::new();
        for stream in to_read {
            for e in self.app.read_stream(&stream).await? {
                let Some(Event::FixesRecorded {
                    vehicle_id,
                    run_id,
                    fixes: batch,
                    ..
                }) = decode(&e)
                else {
                    continue;
                };
                if vehicle_id != vehicle {
                    continue;
                }
                for f in batch.into_iter().filter(|f| (from..=to).contains(&f.t)) {
                    if fixes.len() == MAX_FIXES {
                        return Err(Status::resource_exhausted(format!(
                            "more than {MAX_FIXES} fixes in that range; ask for a narrower one"
                        )));
                    }
                    fixes.push(pb::VehicleFix {
                        run_id: run_id.clone().unwrap_or_default(),
                        fix: Some(fix_pb(&vehicle, &f)),
                    });
                }
            }
        }
        fixes.sort_by_key(|f| f.fix.as_ref().map(|f| f.seq));
        self.record_read(&caller, "ReadVehicleFixes", "", &vehicle)
            .await?;
        Ok(Response::new(pb::ReadVehicleFixesResponse { fixes }))
    }

    type ReadRunStream = EventStream;
    type ReplayRunStream = EventStream;

    async fn read_run(&self, req: Request<pb::ReadRunRequest>) -> Res<EventStream> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        let record = self.load(&caller, "ReadRun", &r.run_id, false).await?;
        let events: Vec<Result<pb::RunEvent, Status>> = record
            .timeline(r.include_custody)
            .into_iter()
            .map(|e| Ok(run_event(e)))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }

    async fn replay_run(&self, req: Request<pb::ReplayRunRequest>) -> Res<EventStream> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        if !r.speed.is_finite() || r.speed < 0.0 {
            return Err(Status::invalid_argument(format!(
                "speed: must be a finite factor >= 0 (0 = as fast as possible), got {}",
                r.speed
            )));
        }
        let record = self.load(&caller, "ReplayRun", &r.run_id, false).await?;
        let events: Vec<pb::RunEvent> = record
            .timeline(r.include_custody)
            .into_iter()
            .map(run_event)
            .collect();
        let speed = r.speed;
        let mut previous: Option<i64> = None;
        let paced = futures::stream::iter(events).then(move |e| {
            let t = e
                .recorded_at
                .as_ref()
                .map(super::millis)
                .unwrap_or_default()
                .0;
            let gap_ms = previous.map(|p| (t - p).max(0)).unwrap_or(0);
            previous = Some(t);
            async move {
                if speed > 0.0 && gap_ms > 0 {
                    let pause = Duration::from_secs_f64(gap_ms as f64 / 1000.0 / speed);
                    tokio::time::sleep(pause.min(MAX_REPLAY_PAUSE)).await;
                }
                Ok(e)
            }
        });
        Ok(Response::new(Box::pin(paced)))
    }

    async fn state_at(&self, req: Request<pb::StateAtRequest>) -> Res<pb::RunView> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        let at = required_time(r.at.as_ref(), "at").map_err(AppError::from)?;
        let record = self.load(&caller, "StateAt", &r.run_id, true).await?;
        audit::state_at(&record, at)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("run {:?} was not planned by then", r.run_id)))
    }

    async fn verify_run(&self, req: Request<pb::VerifyRunRequest>) -> Res<pb::VerifyRunResponse> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        let record = self.load(&caller, "VerifyRun", &r.run_id, false).await?;
        let report = audit::verify(&record);
        let heads = self
            .app
            .read_stream(&crate::heads::stream(&record.run_id))
            .await?;
        let signer = self.app.head_signer.get().map(|s| s.as_ref());
        let signed = crate::heads::check(signer, &record.run_id, &record.run, &heads);
        let closed = self
            .app
            .with_world(|w| {
                w.runs.get(&record.run_id).is_some_and(|r| {
                    matches!(
                        r.status,
                        cit_domain::world::RunStatus::Closed
                            | cit_domain::world::RunStatus::Cancelled
                    )
                })
            })
            .await;
        let mut out = pb::VerifyRunResponse {
            ok: report.first_break.is_none(),
            events_checked: report.checked,
            signatures_checked: signed.checked,
            signing_key_id: signed.key_id.clone(),
            signed_version: signed.signed_version.unwrap_or_default(),
            head_covered: signed.head_covered,
            ..Default::default()
        };
        match report.first_break {
            Some(b) => {
                out.first_bad_stream_version = b.version;
                out.first_bad_event_id = b.id.to_string();
                out.reason = format!(
                    "{} version {} (log position {}): {}",
                    b.stream, b.version, b.position, b.reason
                );
            }
            None => {
                let signature = match (&signed.problem, signed.signed_version) {
                    (Some(p), _) => {
                        out.ok = false;
                        p.clone()
                    }
                    (None, Some(v)) if signed.head_covered => {
                        format!("head signed by key {:?} (version {v})", signed.key_id)
                    }
                    (None, Some(v)) => format!(
                        "signed by key {:?} up to version {v}; later events not yet covered",
                        signed.key_id
                    ),
                    (None, None) => "no signed head".to_string(),
                };
                // A closed run's record is final: its last event must be signed.
                if closed && !signed.head_covered && signed.problem.is_none() && signer.is_some() {
                    out.ok = false;
                }
                out.reason = format!(
                    "chain intact; run stream head {}; {signature}",
                    to_hex(&report.head)
                );
            }
        }
        Ok(Response::new(out))
    }

    async fn redetect_run(
        &self,
        req: Request<pb::RedetectRunRequest>,
    ) -> Res<pb::RedetectRunResponse> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        let record = self.load(&caller, "RedetectRun", &r.run_id, true).await?;
        // The engine is CPU work proportional to the run's length: off the async workers.
        let found = tokio::task::spawn_blocking(move || audit::redetect(&record))
            .await
            .map_err(|e| Status::internal(format!("re-detection failed: {e}")))?;
        Ok(Response::new(pb::RedetectRunResponse {
            reproduced: found.reproduced(),
            recorded_anomaly_ids: found.recorded.iter().map(|a| a.id.clone()).collect(),
            redetected_anomaly_ids: found.redetected.iter().map(|a| a.id.clone()).collect(),
            differences: found.differences,
        }))
    }

    async fn export_run(&self, req: Request<pb::ExportRunRequest>) -> Res<pb::ExportRunResponse> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        let format =
            super::enum_value::<pb::ExportFormat>("format", r.format).map_err(AppError::from)?;
        if format == pb::ExportFormat::Unspecified {
            return Err(Status::invalid_argument(
                "format: one of EXPORT_FORMAT_GEOJSON, EXPORT_FORMAT_GPX, EXPORT_FORMAT_CSV",
            ));
        }
        let digest = RunDigest::of(&self.load(&caller, "ExportRun", &r.run_id, false).await?);
        let (content_type, content) = match format {
            pb::ExportFormat::Gpx => ("application/gpx+xml", export::gpx(&digest)),
            pb::ExportFormat::Csv => ("text/csv", export::csv(&digest)),
            _ => ("application/geo+json", export::geojson(&digest)),
        };
        Ok(Response::new(pb::ExportRunResponse {
            content_type: content_type.to_string(),
            content,
        }))
    }

    async fn render_run(&self, req: Request<pb::RenderRunRequest>) -> Res<pb::RenderRunResponse> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        if r.width_px != 0 && !(render::MIN_WIDTH_PX..=render::MAX_WIDTH_PX).contains(&r.width_px) {
            return Err(Status::invalid_argument(format!(
                "width_px: {} to {} (0 = {}), got {}",
                render::MIN_WIDTH_PX,
                render::MAX_WIDTH_PX,
                render::DEFAULT_WIDTH_PX,
                r.width_px
            )));
        }
        let digest = RunDigest::of(&self.load(&caller, "RenderRun", &r.run_id, false).await?);
        Ok(Response::new(pb::RenderRunResponse {
            svg: render::svg(&digest, r.width_px, self.map.as_deref()),
        }))
    }
}

fn fix_pb(vehicle: &str, f: &cit_domain::Fix) -> pb::Fix {
    pb::Fix {
        vehicle_id: vehicle.to_string(),
        seq: f.seq,
        time: Some(super::ts(f.t)),
        lat: f.lat,
        lon: f.lon,
        speed_mps: f.speed_mps,
        heading_deg: f.heading_deg,
        accuracy_m: f.accuracy_m,
        ignition: f.ignition,
        door_open: f.door_open,
        // The vehicle's seq, across its units' epochs.
        seq_epoch: 0,
    }
}
