//! `cit.v1.Runs`: vehicles, people, planning, readiness, departure, check-ins, crew reports,
//! cash-box handovers, the move to a replacement vehicle (R8) and close-out.

use std::sync::Arc;

use cit_domain::{
    CheckInCode, Command, DetectionParams, IncidentKind, InputError, LatLon, MAX_ROUTE_POINTS,
    PlannedStop, Role, Rule, RunPlan,
};
use cit_proto::v1 as pb;
use cit_proto::v1::runs_server::Runs;
use tonic::{Request, Response, Status};

use super::{
    acting, caller, enum_value, latlon, millis, paged, run_access, ts, two_person, write_result,
};
use crate::app::App;
use crate::auth::scope::Place;
use crate::auth::{Caller, pins};
use crate::error::AppError;

#[derive(Debug)]
pub struct RunsService {
    pub app: Arc<App>,
}

fn role(r: i32) -> Result<Role, InputError> {
    Ok(match enum_value::<pb::Role>("role", r)? {
        pb::Role::Driver => Role::Driver,
        pb::Role::Escort => Role::Escort,
        pb::Role::GunCustodian => Role::GunCustodian,
        pb::Role::AmmoCustodian => Role::AmmoCustodian,
        pb::Role::Approver => Role::Approver,
        pb::Role::OutletStaff => Role::OutletStaff,
        pb::Role::Dispatcher => Role::Dispatcher,
        pb::Role::Unspecified => {
            return Err(InputError::invalid(
                "role",
                "is required: driver, escort, gun_custodian, ammo_custodian, approver, outlet_staff or dispatcher",
            ));
        }
    })
}

fn incident(k: i32) -> Result<IncidentKind, InputError> {
    Ok(match enum_value::<pb::IncidentKind>("kind", k)? {
        pb::IncidentKind::Jam => IncidentKind::Jam,
        pb::IncidentKind::Breakdown => IncidentKind::Breakdown,
        pb::IncidentKind::Accident => IncidentKind::Accident,
        pb::IncidentKind::PoliceCheck => IncidentKind::PoliceCheck,
        pb::IncidentKind::Roadblock => IncidentKind::Roadblock,
        pb::IncidentKind::Fire => IncidentKind::Fire,
        pb::IncidentKind::Robbery => IncidentKind::Robbery,
        pb::IncidentKind::ShotsFired => IncidentKind::ShotsFired,
        pb::IncidentKind::Unspecified => {
            return Err(InputError::invalid(
                "kind",
                "is required: jam, breakdown, accident, police_check, roadblock, fire, robbery or shots_fired",
            ));
        }
    })
}

fn vehicle_pb(w: &cit_domain::World, id: &str, v: &cit_domain::world::Vehicle) -> pb::Vehicle {
    pb::Vehicle {
        vehicle_id: id.to_string(),
        plate: v.plate.clone(),
        armoured: v.armoured,
        active_run_id: w.active_run_of_vehicle.get(id).cloned().unwrap_or_default(),
    }
}

fn person_pb(id: &str, p: &cit_domain::world::Person) -> pb::Person {
    pb::Person {
        person_id: id.to_string(),
        name: p.name.clone(),
        role: role_pb(p.role) as i32,
    }
}

fn role_pb(r: Role) -> pb::Role {
    match r {
        Role::Driver => pb::Role::Driver,
        Role::Escort => pb::Role::Escort,
        Role::GunCustodian => pb::Role::GunCustodian,
        Role::AmmoCustodian => pb::Role::AmmoCustodian,
        Role::Approver => pb::Role::Approver,
        Role::OutletStaff => pb::Role::OutletStaff,
        Role::Dispatcher => pb::Role::Dispatcher,
    }
}

fn run_summary(run: &cit_domain::world::Run) -> pb::RunSummary {
    use cit_domain::world::RunStatus;
    let status = match run.status {
        RunStatus::Planned => pb::RunStatus::Planned,
        RunStatus::Active => pb::RunStatus::Active,
        RunStatus::Returned => pb::RunStatus::Returned,
        RunStatus::Closed => pb::RunStatus::Closed,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    };
    pb::RunSummary {
        run_id: run.run_id.clone(),
        vehicle_id: run.vehicle_id.clone(),
        driver_id: run.driver_id.clone(),
        escort_ids: run.escort_ids.clone(),
        status: status as i32,
        planned_at: Some(ts(run.planned_at)),
        departed_at: run.departed_at.map(ts),
        closed_at: run.closed_at.map(ts),
        stop_ids: run.stops.iter().map(|s| s.stop_id.clone()).collect(),
    }
}

/// Detection parameters from the request: per-run values over explicit params over defaults.
fn params(req: &pb::PlanRunRequest) -> Result<DetectionParams, InputError> {
    let mut p = DetectionParams::default();
    if let Some(q) = &req.params {
        let set = |v: Option<f64>, slot: &mut f64| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(q.stop_speed_mps, &mut p.stop_speed_mps);
        set(q.stop_radius_m, &mut p.stop_radius_m);
        set(q.stop_min_s, &mut p.stop_min_s);
        set(q.unplanned_stop_s, &mut p.unplanned_stop_s);
        set(q.report_cover_s, &mut p.report_cover_s);
        set(q.deviation_s, &mut p.deviation_s);
        set(q.uturn_m, &mut p.uturn_m);
        set(q.max_gap_s, &mut p.max_gap_s);
        set(q.checkin_grace_s, &mut p.checkin_grace_s);
        set(q.late_grace_s, &mut p.late_grace_s);
        set(q.overspeed_s, &mut p.overspeed_s);
        set(q.swap_radius_m, &mut p.swap_radius_m);
        if let Some(n) = q.deviation_fixes {
            p.deviation_fixes = n;
        }
    }
    if let Some(c) = req.corridor_m {
        p.corridor_m = c;
    }
    if let Some(v) = req.speed_limit_kmh {
        p.speed_limit_kmh = v;
    }
    if let Some(v) = req.checkin_interval_s {
        if v == 0 {
            return Err(InputError::invalid(
                "checkin_interval_s",
                "must be > 0, got 0",
            ));
        }
        p.checkin_interval_s = f64::from(v);
    }
    p.validate()?;
    Ok(p)
}

pub fn plan_command(req: pb::PlanRunRequest) -> Result<Command, InputError> {
    if req.route.len() > MAX_ROUTE_POINTS {
        return Err(InputError::invalid(
            "route",
            format!("at most {MAX_ROUTE_POINTS} points, got {}", req.route.len()),
        ));
    }
    let params = params(&req)?;
    let route = req
        .route
        .iter()
        .enumerate()
        .map(|(i, p)| LatLon::new(p.lat, p.lon, &format!("route[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let stops = req
        .stops
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(PlannedStop {
                stop_id: s.stop_id.clone(),
                name: s.name.clone(),
                position: latlon(s.position.as_ref(), &format!("stops[{i}].position"))?,
                radius_m: s.radius_m,
                arrive_by: s.arrive_by.as_ref().map(millis),
                kind: s.kind.clone(),
            })
        })
        .collect::<Result<Vec<_>, InputError>>()?;
    Ok(Command::PlanRun(RunPlan {
        run_id: req.run_id,
        vehicle_id: req.vehicle_id,
        driver_id: req.driver_id,
        escort_ids: req.escort_ids,
        route,
        stops,
        params,
        cash_boxes: req.cash_boxes,
    }))
}

type Res<T> = Result<Response<T>, Status>;

impl RunsService {
    async fn exec(
        &self,
        caller: &Caller,
        cmd: Result<Command, InputError>,
    ) -> Res<pb::WriteResult> {
        let cmd = cmd.map_err(AppError::from)?;
        let p = self.app.execute(cmd, caller).await?;
        Ok(Response::new(write_result(p)))
    }

    /// A crew call on `run_id`: the caller on that run's crew (or dispatch).
    async fn crew(&self, caller: &Caller, rpc: &str, run_id: &str) -> Result<(), Status> {
        run_access(&self.app, caller, rpc, run_id).await
    }

    /// R6's people ([`two_person`]): the handers (crew) and receivers each with a credential.
    async fn r6(
        &self,
        caller: &Caller,
        rpc: &str,
        cmd: &Command,
        run_id: &str,
        handed_by: &[String],
        received_by: &[String],
    ) -> Result<(), Status> {
        let places: Vec<Place> = handed_by
            .iter()
            .map(|p| Place {
                field: "handed_by",
                person: p,
                role: None,
            })
            .chain(received_by.iter().map(|p| Place {
                field: "received_by",
                person: p,
                role: None,
            }))
            .collect();
        two_person(
            &self.app,
            caller,
            rpc,
            cmd,
            Rule::R6,
            Some(run_id),
            run_id,
            &places,
        )
        .await
    }
}

#[tonic::async_trait]
impl Runs for RunsService {
    async fn register_vehicle(
        &self,
        req: Request<pb::RegisterVehicleRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        self.exec(
            &caller,
            Ok(Command::RegisterVehicle {
                vehicle_id: r.vehicle_id,
                plate: r.plate,
                armoured: r.armoured,
            }),
        )
        .await
    }

    async fn register_person(
        &self,
        req: Request<pb::RegisterPersonRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        self.exec(
            &caller,
            role(r.role).map(|role| Command::RegisterPerson {
                person_id: r.person_id,
                name: r.name,
                role,
            }),
        )
        .await
    }

    async fn plan_run(&self, req: Request<pb::PlanRunRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        self.exec(&caller, plan_command(req.into_inner())).await
    }

    async fn amend_run(&self, req: Request<pb::PlanRunRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        self.exec(
            &caller,
            plan_command(req.into_inner()).map(Command::into_amendment),
        )
        .await
    }

    async fn escort_ready(&self, req: Request<pb::EscortReadyRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        const RPC: &str = "/cit.v1.Runs/EscortReady";
        self.crew(&caller, RPC, &r.run_id).await?;
        // Dispatch records an escort's readiness for them; crew record their own.
        let person_id = if caller.principal.roles.crew_only() {
            acting(&self.app, &caller, RPC, "person_id", &r.person_id)?
        } else {
            r.person_id
        };
        self.exec(
            &caller,
            Ok(Command::EscortReady {
                run_id: r.run_id,
                person_id,
                weapon: Some(r.weapon_serial).filter(|s| !s.is_empty()),
                vest: r.vest,
                helmet: r.helmet,
            }),
        )
        .await
    }

    async fn depart(&self, req: Request<pb::DepartRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let run_id = req.into_inner().run_id;
        self.crew(&caller, "/cit.v1.Runs/Depart", &run_id).await?;
        self.exec(&caller, Ok(Command::Depart { run_id })).await
    }

    async fn check_in(&self, req: Request<pb::CheckInRequest>) -> Res<pb::CheckInResponse> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        const RPC: &str = "/cit.v1.Runs/CheckIn";
        self.crew(&caller, RPC, &r.run_id).await?;
        let person_id = acting(&self.app, &caller, RPC, "person_id", &r.person_id)?;
        let hashes = self
            .app
            .with_world(|w| w.pins.get(&person_id).cloned())
            .await;
        let code = match (hashes, r.pin.is_empty()) {
            (Some((ok, duress)), false) => {
                if r.code != 0 {
                    return Err(AppError::from(InputError::invalid(
                        "code",
                        "send the PIN, not a code: citd tells ok from duress by the PIN",
                    ))
                    .into());
                }
                let pin = r.pin.clone();
                let verdict = tokio::task::spawn_blocking(move || pins::decide(&pin, &ok, &duress))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                match verdict {
                    pins::Verdict::Ok => CheckInCode::Ok,
                    pins::Verdict::Duress => CheckInCode::Duress,
                    pins::Verdict::Wrong => {
                        return Err(super::denied(
                            &self.app,
                            &caller,
                            RPC,
                            Status::permission_denied(format!("pin: not a PIN of {person_id:?}")),
                        ));
                    }
                }
            }
            (Some(_), true) => {
                return Err(AppError::from(InputError::invalid(
                    "pin",
                    format!("is required: {person_id:?} checks in with a PIN"),
                ))
                .into());
            }
            (None, false) => {
                return Err(AppError::from(InputError::invalid(
                    "pin",
                    format!("{person_id:?} has no PINs set (Identity.SetCrewPins)"),
                ))
                .into());
            }
            // Without PINs set, the code (the API before PINs).
            (None, true) => {
                match enum_value::<pb::CheckInCode>("code", r.code).map_err(AppError::from)? {
                    pb::CheckInCode::Ok => CheckInCode::Ok,
                    pb::CheckInCode::Duress => CheckInCode::Duress,
                    pb::CheckInCode::Unspecified => {
                        return Err(
                            AppError::from(InputError::invalid("code", "is required")).into()
                        );
                    }
                }
            }
        };
        let run_id = r.run_id.clone();
        self.app
            .execute_by(
                &caller,
                Command::CheckIn {
                    run_id: r.run_id,
                    person_id,
                    code,
                },
            )
            .await?;
        // Same answer for ok and duress: the crew's screen must not reveal the alarm.
        let interval = self
            .app
            .with_world(|w| w.runs.get(&run_id).map(|r| r.params.checkin_interval_s))
            .await
            .unwrap_or(600.0);
        Ok(Response::new(pb::CheckInResponse {
            next_due: Some(ts(self.app.clock.now().plus_secs(interval))),
        }))
    }

    async fn report_incident(
        &self,
        req: Request<pb::ReportIncidentRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        const RPC: &str = "/cit.v1.Runs/ReportIncident";
        self.crew(&caller, RPC, &r.run_id).await?;
        let person_id = acting(&self.app, &caller, RPC, "person_id", &r.person_id)?;
        self.exec(
            &caller,
            incident(r.kind).map(|kind| Command::ReportIncident {
                run_id: r.run_id,
                person_id,
                kind,
                note: r.note,
                rounds: r.rounds,
            }),
        )
        .await
    }

    async fn hand_over_cash_boxes(
        &self,
        req: Request<pb::HandOverCashBoxesRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        const RPC: &str = "/cit.v1.Runs/HandOverCashBoxes";
        self.crew(&caller, RPC, &r.run_id).await?;
        let cmd = Command::HandOverCashBoxes {
            run_id: r.run_id.clone(),
            stop_id: r.stop_id,
            boxes: r.box_ids,
            seals: r.seals,
            handed_by: r.handed_by.clone(),
            received_by: r.received_by.clone(),
        };
        self.r6(&caller, RPC, &cmd, &r.run_id, &r.handed_by, &r.received_by)
            .await?;
        self.exec(&caller, Ok(cmd)).await
    }

    async fn swap_vehicle(&self, req: Request<pb::SwapVehicleRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let cmd = Command::SwapVehicle {
            run_id: r.run_id.clone(),
            vehicle_id: r.vehicle_id,
            boxes: r.box_ids,
            seals: r.seals,
            handed_by: r.handed_by.clone(),
            received_by: r.received_by.clone(),
        };
        self.r6(
            &caller,
            "/cit.v1.Runs/SwapVehicle",
            &cmd,
            &r.run_id,
            &r.handed_by,
            &r.received_by,
        )
        .await?;
        self.exec(&caller, Ok(cmd)).await
    }

    async fn cancel_run(&self, req: Request<pb::CancelRunRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        self.exec(
            &caller,
            Ok(Command::CancelRun {
                run_id: r.run_id,
                reason: r.reason,
            }),
        )
        .await
    }

    async fn get_vehicle(&self, req: Request<pb::GetVehicleRequest>) -> Res<pb::Vehicle> {
        let id = req.into_inner().vehicle_id;
        self.app
            .with_world(|w| w.vehicles.get(&id).map(|v| vehicle_pb(w, &id, v)))
            .await
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("vehicle {id:?} not found")))
    }

    async fn get_person(&self, req: Request<pb::GetPersonRequest>) -> Res<pb::Person> {
        let id = req.into_inner().person_id;
        self.app
            .with_world(|w| w.people.get(&id).map(|p| person_pb(&id, p)))
            .await
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("person {id:?} not found")))
    }

    async fn list_vehicles(&self, req: Request<pb::ListPage>) -> Res<pb::ListVehiclesResponse> {
        let page = req.into_inner();
        let (vehicles, next_page_token) = self
            .app
            .with_world(|w| {
                paged(
                    Some(&page),
                    w.vehicles
                        .iter()
                        .map(|(id, v)| (id.as_str(), vehicle_pb(w, id, v))),
                )
            })
            .await;
        Ok(Response::new(pb::ListVehiclesResponse {
            vehicles,
            next_page_token,
        }))
    }

    async fn list_people(&self, req: Request<pb::ListPage>) -> Res<pb::ListPeopleResponse> {
        let page = req.into_inner();
        let (people, next_page_token) = self
            .app
            .with_world(|w| {
                paged(
                    Some(&page),
                    w.people
                        .iter()
                        .map(|(id, p)| (id.as_str(), person_pb(id, p))),
                )
            })
            .await;
        Ok(Response::new(pb::ListPeopleResponse {
            people,
            next_page_token,
        }))
    }

    async fn list_runs(&self, req: Request<pb::ListRunsRequest>) -> Res<pb::ListRunsResponse> {
        let r = req.into_inner();
        let wanted = enum_value::<pb::RunStatus>("status", r.status).map_err(AppError::from)?;
        let (runs, next_page_token) = self
            .app
            .with_world(|w| {
                paged(
                    r.page.as_ref(),
                    w.runs
                        .values()
                        .map(|run| (run.run_id.as_str(), run_summary(run)))
                        .filter(|(_, s)| {
                            wanted == pb::RunStatus::Unspecified || s.status == wanted as i32
                        }),
                )
            })
            .await;
        Ok(Response::new(pb::ListRunsResponse {
            runs,
            next_page_token,
        }))
    }

    async fn close_run(&self, req: Request<pb::CloseRunRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let run_id = req.into_inner().run_id;
        let written = self
            .exec(
                &caller,
                Ok(Command::CloseRun {
                    run_id: run_id.clone(),
                }),
            )
            .await?;
        // Close-out: the record is final, its head signed now rather than at the next round.
        if let Some(signer) = self.app.head_signer.get()
            && let Err(e) = crate::heads::sign_head(&self.app, signer, &run_id).await
        {
            tracing::error!(run = run_id, cause = %e, "cannot sign the closed run's head");
        }
        Ok(written)
    }
}
