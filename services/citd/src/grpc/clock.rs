//! `cit.v1.ScenarioClock`: served only in `--clock scenario` mode.

use std::sync::Arc;

use cit_proto::v1 as pb;
use cit_proto::v1::scenario_clock_server::ScenarioClock;
use tonic::{Request, Response, Status};

use super::{required_time, ts};
use crate::app::App;

#[derive(Debug)]
pub struct ClockService {
    pub app: Arc<App>,
}

#[tonic::async_trait]
impl ScenarioClock for ClockService {
    async fn advance_clock(
        &self,
        req: Request<pb::AdvanceClockRequest>,
    ) -> Result<Response<pb::AdvanceClockResponse>, Status> {
        let req = req.into_inner();
        let to = required_time(req.to.as_ref(), "to").map_err(crate::error::AppError::from)?;
        let (now, position) = self.app.advance_clock(to, req.tick).await?;
        Ok(Response::new(pb::AdvanceClockResponse {
            now: Some(ts(now)),
            log_position: position,
        }))
    }
}
