//! `cit.v1.Dispatch`: the anomaly list and workflow (acknowledge, resolve). The live convoy read
//! models (GetRun, ListActiveRuns, NearestVehicles, WatchFleet) belong to the dispatch issue and
//! answer UNIMPLEMENTED until it lands.

use std::sync::Arc;
use std::time::Duration;

use cit_domain::Command;
use cit_proto::v1 as pb;
use cit_proto::v1::dispatch_server::Dispatch;
use tonic::{Request, Response, Status};

use super::{anomaly_to_pb, severity_from_pb, write_result};
use crate::anomalies::Anomalies;
use crate::app::App;

/// Longest a read waits for its own writes to reach the engine.
const READ_YOUR_WRITES_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct DispatchService {
    pub app: Arc<App>,
    pub anomalies: Arc<Anomalies>,
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

    async fn get_run(&self, _req: Request<pb::GetRunRequest>) -> Res<pb::RunView> {
        Err(not_yet("GetRun"))
    }

    async fn list_active_runs(
        &self,
        _req: Request<pb::ListActiveRunsRequest>,
    ) -> Res<pb::ListActiveRunsResponse> {
        Err(not_yet("ListActiveRuns"))
    }

    async fn nearest_vehicles(
        &self,
        _req: Request<pb::NearestVehiclesRequest>,
    ) -> Res<pb::NearestVehiclesResponse> {
        Err(not_yet("NearestVehicles"))
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
