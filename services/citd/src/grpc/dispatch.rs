//! `cit.v1.Dispatch`: where every run is (GetRun, ListActiveRuns, NearestVehicles), the anomaly
//! list and workflow (acknowledge, resolve). WatchFleet belongs to the dispatch issue and answers
//! UNIMPLEMENTED until it lands.

use std::sync::Arc;
use std::time::Duration;

use cit_domain::Command;
use cit_proto::v1 as pb;
use cit_proto::v1::dispatch_server::Dispatch;
use tonic::{Request, Response, Status};

use super::{anomaly_to_pb, latlon, severity_from_pb, write_result};
use crate::anomalies::Anomalies;
use crate::app::App;
use crate::error::AppError;
use crate::fleet::Fleet;

/// Longest a read waits for its own writes to reach the engine.
const READ_YOUR_WRITES_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct DispatchService {
    pub app: Arc<App>,
    pub anomalies: Arc<Anomalies>,
    pub fleet: Arc<Fleet>,
}

impl DispatchService {
    /// Read-your-writes: waits until the read models have processed `position` (0: no wait).
    async fn caught_up(&self, position: u64) -> Result<(), Status> {
        if position > 0 {
            self.anomalies
                .wait_for(position, READ_YOUR_WRITES_LIMIT)
                .await?;
        }
        Ok(())
    }
}

type Res<T> = Result<Response<T>, Status>;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is part of the dispatch read models, which are not built yet"
    ))
}

#[tonic::async_trait]
impl Dispatch for DispatchService {
    type WatchFleetStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::FleetEvent, Status>> + Send>>;

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Res<pb::RunView> {
        let r = req.into_inner();
        self.caught_up(r.min_log_position).await?;
        self.fleet
            .view(&r.run_id, self.app.clock.now(), &self.anomalies)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("run {:?} not found", r.run_id)))
    }

    async fn list_active_runs(
        &self,
        req: Request<pb::ListActiveRunsRequest>,
    ) -> Res<pb::ListActiveRunsResponse> {
        let r = req.into_inner();
        self.caught_up(r.min_log_position).await?;
        let min = severity_from_pb(r.min_severity).map(|s| super::severity_to_pb(s) as i32);
        let runs = self
            .fleet
            .active(self.app.clock.now(), &self.anomalies)
            .into_iter()
            .filter(|v| r.vehicle_id.is_empty() || v.vehicle_id == r.vehicle_id)
            .filter(|v| min.is_none_or(|m| v.open_anomalies.iter().any(|a| a.severity >= m)))
            .collect();
        Ok(Response::new(pb::ListActiveRunsResponse { runs }))
    }

    async fn nearest_vehicles(
        &self,
        req: Request<pb::NearestVehiclesRequest>,
    ) -> Res<pb::NearestVehiclesResponse> {
        let r = req.into_inner();
        let point = latlon(r.point.as_ref(), "point").map_err(AppError::from)?;
        let k = match r.k {
            0 => 5,
            k if k > 100 => {
                return Err(Status::invalid_argument(format!("k: at most 100, got {k}")));
            }
            k => k as usize,
        };
        Ok(Response::new(pb::NearestVehiclesResponse {
            vehicles: self.fleet.nearest(point, k),
        }))
    }

    async fn watch_fleet(
        &self,
        _req: Request<pb::WatchFleetRequest>,
    ) -> Res<Self::WatchFleetStream> {
        Err(not_yet("WatchFleet"))
    }

    async fn list_anomalies(
        &self,
        req: Request<pb::ListAnomaliesRequest>,
    ) -> Res<pb::ListAnomaliesResponse> {
        let r = req.into_inner();
        let engine_position = if r.min_log_position > 0 {
            self.anomalies
                .wait_for(r.min_log_position, READ_YOUR_WRITES_LIMIT)
                .await?
        } else {
            *self.anomalies.engine_position.borrow()
        };
        let run = Some(r.run_id.as_str()).filter(|s| !s.is_empty());
        let anomalies = self
            .anomalies
            .list(run, severity_from_pb(r.min_severity), r.include_resolved)
            .iter()
            .map(anomaly_to_pb)
            .collect();
        Ok(Response::new(pb::ListAnomaliesResponse {
            anomalies,
            engine_position,
        }))
    }

    async fn acknowledge_anomaly(
        &self,
        req: Request<pb::AcknowledgeAnomalyRequest>,
    ) -> Res<pb::WriteResult> {
        let r = req.into_inner();
        let p = self
            .app
            .execute(Command::AcknowledgeAnomaly {
                anomaly_id: r.anomaly_id,
                by: r.by,
            })
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn resolve_anomaly(
        &self,
        req: Request<pb::ResolveAnomalyRequest>,
    ) -> Res<pb::WriteResult> {
        let r = req.into_inner();
        let p = self
            .app
            .execute(Command::ResolveAnomaly {
                anomaly_id: r.anomaly_id,
                by: r.by,
                outcome: r.outcome,
                note: r.note,
            })
            .await?;
        Ok(Response::new(write_result(p)))
    }
}
