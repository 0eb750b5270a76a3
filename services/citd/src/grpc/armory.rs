//! `cit.v1.Armory`: weapons and ammunition, issue / handover / return (R3, R4, R5), and custody
//! queries (where is a weapon, what is out, the history of a weapon or a lot).

use std::sync::Arc;

use cit_domain::event::{Event, streams};
use cit_domain::world::WeaponLocation;
use cit_domain::{Command, Rule, World};
use cit_proto::v1 as pb;
use cit_proto::v1::armory_server::Armory;
use tonic::{Request, Response, Status};

use super::{acting, caller, ts, two_person, write_result};
use crate::app::{App, decode};
use crate::auth::Role;
use crate::auth::scope::Place;

#[derive(Debug)]
pub struct ArmoryService {
    pub app: Arc<App>,
}

type Res<T> = Result<Response<T>, Status>;

/// The custodians' places of R3 (an issue's and a return's): each proven by a credential with
/// the custodian's role.
fn custodians<'a>(gun: &'a str, ammo: &'a str) -> [Place<'a>; 2] {
    [
        Place {
            field: "gun_custodian",
            person: gun,
            role: Some(Role::GunCustodian),
        },
        Place {
            field: "ammo_custodian",
            person: ammo,
            role: Some(Role::AmmoCustodian),
        },
    ]
}

fn weapon_state(w: &World, serial: &str) -> Option<pb::WeaponState> {
    let weapon = w.weapons.get(serial)?;
    let mut s = pb::WeaponState {
        serial: serial.to_string(),
        kind: weapon.kind.clone(),
        in_armory: true,
        ..Default::default()
    };
    if let WeaponLocation::Out {
        holder,
        run_id,
        lot,
        rounds,
        spent,
        ..
    } = &weapon.location
    {
        s.in_armory = false;
        s.holder = holder.clone();
        s.run_id = run_id.clone();
        s.lot = lot.clone();
        s.rounds_out = *rounds;
        s.rounds_spent = *spent;
    }
    Some(s)
}

fn custody_kind(e: &Event) -> Option<&'static str> {
    Some(match e {
        Event::WeaponRegistered { .. } | Event::AmmoLotRegistered { .. } => "registered",
        Event::AmmoDelivered { .. } => "delivered",
        Event::AmmoCounted { .. } => "counted",
        Event::WeaponIssued { .. } => "issued",
        Event::WeaponHandedOver { .. } => "handed_over",
        Event::WeaponReturned { .. } => "returned",
        Event::IncidentReported { spent: Some(_), .. } => "shots_fired",
        Event::CommandRefused { .. } => "refused",
        _ => return None,
    })
}

#[tonic::async_trait]
impl Armory for ArmoryService {
    async fn register_weapon(
        &self,
        req: Request<pb::RegisterWeaponRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let p = self
            .app
            .execute_by(
                &caller,
                Command::RegisterWeapon {
                    serial: r.serial,
                    kind: r.kind,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn register_ammo_lot(
        &self,
        req: Request<pb::RegisterAmmoLotRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let p = self
            .app
            .execute_by(
                &caller,
                Command::RegisterAmmoLot {
                    lot: r.lot,
                    rounds: r.rounds,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn count_ammo_lot(&self, req: Request<pb::CountAmmoLotRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let p = self
            .app
            .execute_by(
                &caller,
                Command::CountAmmoLot {
                    by: acting(
                        &self.app,
                        &caller,
                        "/cit.v1.Armory/CountAmmoLot",
                        "counted_by",
                        &r.counted_by,
                    )?,
                    lot: r.lot,
                    counted: r.rounds_counted,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn deliver_ammo(&self, req: Request<pb::DeliverAmmoRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let p = self
            .app
            .execute_by(
                &caller,
                Command::DeliverAmmo {
                    lot: r.lot,
                    rounds: r.rounds,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn issue_weapon(&self, req: Request<pb::IssueWeaponRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let cmd = Command::IssueWeapon {
            run_id: r.run_id.clone(),
            serial: r.serial.clone(),
            lot: r.lot,
            rounds: r.rounds,
            to: r.to,
            gun_custodian: r.gun_custodian.clone(),
            ammo_custodian: r.ammo_custodian.clone(),
            approver: r.approver.clone(),
        };
        // R3 by three credentials: each place proven by its own person's.
        let [gun, ammo] = custodians(&r.gun_custodian, &r.ammo_custodian);
        let places = [
            gun,
            ammo,
            Place {
                field: "approver",
                person: &r.approver,
                role: Some(Role::Approver),
            },
        ];
        two_person(
            &self.app,
            &caller,
            "/cit.v1.Armory/IssueWeapon",
            &cmd,
            Rule::R3,
            Some(&r.run_id),
            &r.serial,
            &places,
        )
        .await?;
        let p = self.app.execute(cmd, &caller).await?;
        Ok(Response::new(write_result(p)))
    }

    async fn hand_over_weapon(
        &self,
        req: Request<pb::HandOverWeaponRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let cmd = Command::HandOverWeapon {
            serial: r.serial.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
            witness: r.witness.clone(),
        };
        // Custody moves only with the giver's and the taker's (and a named witness's) own
        // credentials: nobody hands a gun to someone else in their name.
        let places = [
            Place {
                field: "from",
                person: &r.from,
                role: None,
            },
            Place {
                field: "to",
                person: &r.to,
                role: None,
            },
            Place {
                field: "witness",
                person: &r.witness,
                role: None,
            },
        ];
        two_person(
            &self.app,
            &caller,
            "/cit.v1.Armory/HandOverWeapon",
            &cmd,
            Rule::R5,
            None,
            &r.serial,
            &places,
        )
        .await?;
        let p = self.app.execute(cmd, &caller).await?;
        Ok(Response::new(write_result(p)))
    }

    async fn return_weapon(&self, req: Request<pb::ReturnWeaponRequest>) -> Res<pb::WriteResult> {
        let caller = caller(&req)?.clone();
        let r = req.into_inner();
        let cmd = Command::ReturnWeapon {
            serial: r.serial.clone(),
            by: r.by,
            gun_custodian: r.gun_custodian.clone(),
            ammo_custodian: r.ammo_custodian.clone(),
            rounds_returned: r.rounds_returned,
        };
        // Both custodians take the gun and the rounds back, each with their own credential.
        let places = custodians(&r.gun_custodian, &r.ammo_custodian);
        let run = self
            .app
            .with_world(|w| match w.weapons.get(&r.serial).map(|wp| &wp.location) {
                Some(WeaponLocation::Out { run_id, .. }) => Some(run_id.clone()),
                _ => None,
            })
            .await;
        two_person(
            &self.app,
            &caller,
            "/cit.v1.Armory/ReturnWeapon",
            &cmd,
            Rule::R3,
            run.as_deref(),
            &r.serial,
            &places,
        )
        .await?;
        let p = self.app.execute(cmd, &caller).await?;
        Ok(Response::new(write_result(p)))
    }

    async fn get_weapon(&self, req: Request<pb::GetWeaponRequest>) -> Res<pb::WeaponState> {
        let serial = req.into_inner().serial;
        self.app
            .with_world(|w| weapon_state(w, &serial))
            .await
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("weapon {serial:?} not found")))
    }

    async fn list_weapons_out(
        &self,
        req: Request<pb::ListWeaponsOutRequest>,
    ) -> Res<pb::ListWeaponsOutResponse> {
        let run = req.into_inner().run_id;
        let weapons: Vec<pb::WeaponState> = self
            .app
            .with_world(|w| {
                w.weapons
                    .keys()
                    .filter_map(|s| weapon_state(w, s))
                    .filter(|s| !s.in_armory && (run.is_empty() || s.run_id == run))
                    .collect()
            })
            .await;
        let total_rounds_out = weapons.iter().map(|w| w.rounds_out).sum();
        Ok(Response::new(pb::ListWeaponsOutResponse {
            weapons,
            total_rounds_out,
        }))
    }

    async fn list_weapons(&self, req: Request<pb::ListPage>) -> Res<pb::ListWeaponsResponse> {
        let page = req.into_inner();
        let (weapons, next_page_token) = self
            .app
            .with_world(|w| {
                super::paged(
                    Some(&page),
                    w.weapons
                        .keys()
                        .filter_map(|s| Some((s.as_str(), weapon_state(w, s)?))),
                )
            })
            .await;
        Ok(Response::new(pb::ListWeaponsResponse {
            weapons,
            next_page_token,
        }))
    }

    async fn list_ammo_lots(&self, req: Request<pb::ListPage>) -> Res<pb::ListAmmoLotsResponse> {
        let page = req.into_inner();
        let (lots, next_page_token) = self
            .app
            .with_world(|w| {
                super::paged(
                    Some(&page),
                    w.ammo_lots.iter().map(|(lot, left)| {
                        (
                            lot.as_str(),
                            pb::AmmoLot {
                                lot: lot.clone(),
                                rounds_registered: w
                                    .ammo_registered
                                    .get(lot)
                                    .copied()
                                    .unwrap_or(*left),
                                rounds_left: *left,
                            },
                        )
                    }),
                )
            })
            .await;
        Ok(Response::new(pb::ListAmmoLotsResponse {
            lots,
            next_page_token,
        }))
    }

    async fn custody_history(
        &self,
        req: Request<pb::CustodyHistoryRequest>,
    ) -> Res<pb::CustodyHistoryResponse> {
        let subject = req
            .into_inner()
            .subject
            .ok_or_else(|| Status::invalid_argument("subject: a serial or a lot is required"))?;
        // Rounds fired are spent by a crew report, on the stream of the run the weapon (and its
        // lot) was out for: those runs' streams are read too, for their reports.
        let (custody_stream, subject_serial, lot) = match subject {
            pb::custody_history_request::Subject::Serial(s) => {
                (format!("{}{s}", streams::WEAPON), Some(s), None)
            }
            pb::custody_history_request::Subject::Lot(l) => {
                (format!("{}{l}", streams::AMMO), None, Some(l))
            }
        };
        let streams_to_read: Vec<String> = self
            .app
            .with_world(|w| {
                let mut runs: Vec<String> = w
                    .runs
                    .values()
                    .filter(|r| r.custody.contains(&custody_stream))
                    .map(|r| format!("{}{}", streams::RUN, r.run_id))
                    .collect();
                runs.sort();
                let mut list = vec![custody_stream.clone()];
                // A lot's history is in the streams of the weapons it was issued with.
                if lot.is_some() {
                    list.extend(w.weapons.keys().map(|s| format!("{}{s}", streams::WEAPON)));
                }
                list.extend(runs);
                list
            })
            .await;
        let mut events = Vec::new();
        for stream in streams_to_read {
            let run_stream = stream.starts_with(streams::RUN);
            for r in self.app.read_stream(&stream).await? {
                let Some(e) = decode(&r) else { continue };
                let about_subject = match (&lot, &e) {
                    // From a run's stream, only the reports that spent rounds of the subject.
                    (
                        _,
                        Event::IncidentReported {
                            spent: Some(spent), ..
                        },
                    ) => match &lot {
                        None => subject_serial.as_deref() == Some(spent.serial.as_str()),
                        Some(l) => *l == spent.lot,
                    },
                    _ if run_stream => false,
                    (None, _) => true,
                    (
                        Some(l),
                        Event::WeaponIssued { lot, .. } | Event::WeaponReturned { lot, .. },
                    ) => lot == l,
                    (
                        Some(_),
                        Event::AmmoLotRegistered { .. }
                        | Event::AmmoDelivered { .. }
                        | Event::AmmoCounted { .. },
                    ) => true,
                    _ => false,
                };
                if let (true, Some(kind)) = (about_subject, custody_kind(&e)) {
                    events.push(pb::CustodyEvent {
                        log_position: r.position,
                        at: Some(ts(e.time())),
                        kind: kind.to_string(),
                        event_json: String::from_utf8_lossy(&r.data).into_owned(),
                    });
                }
            }
        }
        events.sort_by_key(|e| e.log_position);
        Ok(Response::new(pb::CustodyHistoryResponse { events }))
    }
}
