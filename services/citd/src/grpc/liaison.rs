//! `cit.v1.PoliceLiaison`: registered police checkpoints (the genuine ones, for A3).

use std::sync::Arc;

use cit_domain::{Checkpoint, Command};
use cit_proto::v1 as pb;
use cit_proto::v1::police_liaison_server::PoliceLiaison;
use tonic::{Request, Response, Status};

use super::{latlon, millis, pb_latlon, required_time, ts, write_result};
use crate::app::App;
use crate::error::AppError;

#[derive(Debug)]
pub struct LiaisonService {
    pub app: Arc<App>,
}

#[tonic::async_trait]
impl PoliceLiaison for LiaisonService {
    async fn register_checkpoint(
        &self,
        req: Request<pb::RegisterCheckpointRequest>,
    ) -> Result<Response<pb::WriteResult>, Status> {
        let caller = super::caller(&req)?.clone();
        let cp = req
            .into_inner()
            .checkpoint
            .ok_or_else(|| Status::invalid_argument("checkpoint: is required"))?;
        let checkpoint = Checkpoint {
            checkpoint_id: cp.checkpoint_id,
            position: latlon(cp.position.as_ref(), "checkpoint.position")
                .map_err(AppError::from)?,
            radius_m: cp.radius_m,
            valid_from: required_time(cp.valid_from.as_ref(), "checkpoint.valid_from")
                .map_err(AppError::from)?,
            valid_to: required_time(cp.valid_to.as_ref(), "checkpoint.valid_to")
                .map_err(AppError::from)?,
        };
        let p = self
            .app
            .execute_by(&caller, Command::RegisterCheckpoint(checkpoint))
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn list_checkpoints(
        &self,
        req: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let r = req.into_inner();
        let at = r.valid_at.as_ref().map(millis);
        let (checkpoints, next_page_token) = self
            .app
            .with_world(|w| {
                let valid = w
                    .checkpoints
                    .values()
                    .filter(|c| at.is_none_or(|t| c.valid_from <= t && t <= c.valid_to))
                    .map(|c| {
                        (
                            c.checkpoint_id.as_str(),
                            pb::Checkpoint {
                                checkpoint_id: c.checkpoint_id.clone(),
                                position: Some(pb_latlon(c.position)),
                                radius_m: c.radius_m,
                                valid_from: Some(ts(c.valid_from)),
                                valid_to: Some(ts(c.valid_to)),
                            },
                        )
                    });
                match &r.page {
                    Some(page) => super::paged(Some(page), valid),
                    // Without a page, every one at once (as before pages existed).
                    None => {
                        let mut all: Vec<_> = valid.collect();
                        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
                        (all.into_iter().map(|(_, c)| c).collect(), String::new())
                    }
                }
            })
            .await;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints,
            next_page_token,
        }))
    }
}
