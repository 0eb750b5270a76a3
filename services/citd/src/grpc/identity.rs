//! `cit.v1.Identity`: an admin binds telematics units and gateways to the vehicles they report
//! for and disables them; any caller may ask who citd takes it for.

use std::sync::Arc;

use cit_domain::{Command, InputError};
use cit_proto::v1 as pb;
use cit_proto::v1::identity_server::Identity;
use tonic::{Request, Response, Status};

use super::{caller, write_result};
use crate::app::App;
use crate::auth::pins;
use crate::error::AppError;

#[derive(Debug)]
pub struct IdentityService {
    pub app: Arc<App>,
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn bind_unit(&self, req: Request<pb::BindUnitRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let p = self
            .app
            .execute_by(
                &caller,
                Command::BindUnit {
                    unit_id: r.unit_id,
                    gateway: r.gateway,
                    vehicle_ids: r.vehicle_ids,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn disable_unit(&self, req: Request<pb::DisableUnitRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let p = self
            .app
            .execute_by(
                &caller,
                Command::DisableUnit {
                    unit_id: r.unit_id,
                    reason: r.reason,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn set_crew_pins(&self, req: Request<pb::SetCrewPinsRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        pins::validate("checkin_pin", &r.checkin_pin).map_err(AppError::from)?;
        pins::validate("duress_pin", &r.duress_pin).map_err(AppError::from)?;
        if r.checkin_pin == r.duress_pin {
            return Err(AppError::from(InputError::invalid(
                "duress_pin",
                "must differ from the check-in PIN",
            ))
            .into());
        }
        // ~20 ms of hashing each: off the async workers.
        let (checkin_hash, duress_hash) = tokio::task::spawn_blocking(move || {
            Ok::<_, String>((pins::hash(&r.checkin_pin)?, pins::hash(&r.duress_pin)?))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::internal)?;
        let p = self
            .app
            .execute_by(
                &caller,
                Command::SetCrewPins {
                    person_id: r.person_id,
                    checkin_hash,
                    duress_hash,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Res<pb::WhoAmIResponse> {
        let p = &caller(&req)?.principal;
        Ok(Response::new(pb::WhoAmIResponse {
            id: p.id.clone(),
            kind: p.kind.as_str().into(),
            roles: p.roles.names().into_iter().map(String::from).collect(),
            via: p.via.name().into(),
            credential: p.via.credential(),
        }))
    }
}
