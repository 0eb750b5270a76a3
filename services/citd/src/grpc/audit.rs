//! `cit.v1.Audit`: reading a run back event by event. Replay pacing, state-at-time, the hash
//! chain, re-detection, export and rendering belong to the audit issue and answer UNIMPLEMENTED
//! until it lands.

use std::pin::Pin;
use std::sync::Arc;

use cit_domain::event::streams;
use cit_proto::v1 as pb;
use cit_proto::v1::audit_server::Audit;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::ts;
use crate::app::App;

#[derive(Debug)]
pub struct AuditService {
    pub app: Arc<App>,
}

type Res<T> = Result<Response<T>, Status>;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is part of the audit issue and is not built yet"
    ))
}

#[tonic::async_trait]
impl Audit for AuditService {
    type ReadRunStream = EventStream;
    type ReplayRunStream = EventStream;

    async fn read_run(&self, req: Request<pb::ReadRunRequest>) -> Res<EventStream> {
        let r = req.into_inner();
        if r.include_custody {
            return Err(not_yet("ReadRun with include_custody"));
        }
        let exists = self
            .app
            .with_world(|w| w.runs.contains_key(&r.run_id))
            .await;
        if !exists {
            return Err(Status::not_found(format!("run {:?} not found", r.run_id)));
        }
        let events = self
            .app
            .read_stream(&format!("{}{}", streams::RUN, r.run_id))
            .await?;
        let out = events.into_iter().map(|e| {
            let recorded_at = crate::app::decode(&e)
                .map(|ev| ev.time())
                .unwrap_or(cit_domain::Millis(e.created_ms));
            Ok(pb::RunEvent {
                log_position: e.position,
                stream_version: e.version,
                stream: e.stream,
                event_id: e.id.to_string(),
                event_type: e.event_type,
                recorded_at: Some(ts(recorded_at)),
                data_json: String::from_utf8_lossy(&e.data).into_owned(),
                chain_hash: String::new(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(out))))
    }

    async fn replay_run(&self, _req: Request<pb::ReplayRunRequest>) -> Res<EventStream> {
        Err(not_yet("ReplayRun"))
    }

    async fn state_at(&self, _req: Request<pb::StateAtRequest>) -> Res<pb::RunView> {
        Err(not_yet("StateAt"))
    }

    async fn verify_run(&self, _req: Request<pb::VerifyRunRequest>) -> Res<pb::VerifyRunResponse> {
        Err(not_yet("VerifyRun"))
    }

    async fn redetect_run(
        &self,
        _req: Request<pb::RedetectRunRequest>,
    ) -> Res<pb::RedetectRunResponse> {
        Err(not_yet("RedetectRun"))
    }

    async fn export_run(&self, _req: Request<pb::ExportRunRequest>) -> Res<pb::ExportRunResponse> {
        Err(not_yet("ExportRun"))
    }

    async fn render_run(&self, _req: Request<pb::RenderRunRequest>) -> Res<pb::RenderRunResponse> {
        Err(not_yet("RenderRun"))
    }
}
