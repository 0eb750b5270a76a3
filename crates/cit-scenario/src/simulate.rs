//! Plays a scenario straight through the pure core — `World` (rules R1–R9) and `Engine`
//! (A1–A11) — with a log in memory: no server, no store, no clock. It is the fast path for
//! tests of the rules on real roads, and the reference the gRPC path must agree with.

use cit_domain::event::Event;
use cit_domain::{
    CheckInCode, Checkpoint, Command, Fix, IncidentKind, LatLon, Outcome, PlannedStop, Role,
    RunPlan, World,
};
use cit_engine::Engine;

use crate::model::{Op, Scenario, valid_rounds};
use crate::score::Output;

pub fn role(s: &str) -> Option<Role> {
    Some(match s {
        "driver" => Role::Driver,
        "escort" => Role::Escort,
        "gun_custodian" => Role::GunCustodian,
        "ammo_custodian" => Role::AmmoCustodian,
        "approver" => Role::Approver,
        "outlet_staff" => Role::OutletStaff,
        "dispatcher" => Role::Dispatcher,
        _ => return None,
    })
}

pub fn incident(s: &str) -> Option<IncidentKind> {
    Some(match s {
        "jam" => IncidentKind::Jam,
        "breakdown" => IncidentKind::Breakdown,
        "accident" => IncidentKind::Accident,
        "police_check" => IncidentKind::PoliceCheck,
        "roadblock" => IncidentKind::Roadblock,
        "fire" => IncidentKind::Fire,
        "robbery" => IncidentKind::Robbery,
        "shots_fired" => IncidentKind::ShotsFired,
        _ => return None,
    })
}

/// The domain commands that register what the scenario declares.
pub fn registrations(s: &Scenario) -> Vec<Command> {
    let mut cmds = Vec::new();
    for v in &s.vehicles {
        cmds.push(Command::RegisterVehicle {
            vehicle_id: v.id.clone(),
            plate: v.plate.clone(),
            armoured: v.armoured,
        });
    }
    for p in &s.people {
        if let Some(role) = role(&p.role) {
            cmds.push(Command::RegisterPerson {
                person_id: p.id.clone(),
                name: p.name.clone(),
                role,
            });
        }
    }
    for w in &s.weapons {
        cmds.push(Command::RegisterWeapon {
            serial: w.serial.clone(),
            kind: w.kind.clone(),
        });
    }
    for l in &s.ammo_lots {
        cmds.push(Command::RegisterAmmoLot {
            lot: l.lot.clone(),
            rounds: l.rounds,
        });
    }
    for c in &s.checkpoints {
        cmds.push(Command::RegisterCheckpoint(Checkpoint {
            checkpoint_id: c.id.clone(),
            position: LatLon {
                lat: c.lat,
                lon: c.lon,
            },
            radius_m: c.radius_m,
            valid_from: c.valid_from,
            valid_to: c.valid_to,
        }));
    }
    cmds
}

/// The domain command of a timeline entry (None for fixes and ticks).
pub fn command(s: &Scenario, op: &Op) -> Result<Option<Command>, String> {
    Ok(Some(match op {
        Op::PlanRun { run } => {
            let r = s
                .run(run)
                .ok_or_else(|| format!("run {run:?} is not declared"))?;
            Command::PlanRun(RunPlan {
                run_id: r.id.clone(),
                vehicle_id: r.vehicle.clone(),
                driver_id: r.driver.clone(),
                escort_ids: r.escorts.clone(),
                route: r
                    .route
                    .coordinates
                    .iter()
                    .map(|c| LatLon {
                        lat: c[1],
                        lon: c[0],
                    })
                    .collect(),
                stops: r
                    .stops
                    .iter()
                    .map(|st| PlannedStop {
                        stop_id: st.id.clone(),
                        name: st.name.clone(),
                        position: LatLon {
                            lat: st.lat,
                            lon: st.lon,
                        },
                        radius_m: st.radius_m,
                        arrive_by: st.arrive_by,
                        kind: st.kind.clone(),
                    })
                    .collect(),
                params: s.detection_params(r)?,
                cash_boxes: vec![],
            })
        }
        Op::IssueWeapon {
            run,
            serial,
            lot,
            rounds,
            to,
            gun_custodian,
            ammo_custodian,
            approver,
        } => Command::IssueWeapon {
            run_id: run.clone(),
            serial: serial.clone(),
            lot: lot.clone(),
            rounds: *rounds,
            to: to.clone(),
            gun_custodian: gun_custodian.clone(),
            ammo_custodian: ammo_custodian.clone(),
            approver: approver.clone(),
        },
        Op::EscortReady {
            run,
            person,
            weapon,
            vest,
            helmet,
        } => Command::EscortReady {
            run_id: run.clone(),
            person_id: person.clone(),
            weapon: weapon.clone(),
            vest: *vest,
            helmet: *helmet,
        },
        Op::Depart { run } => Command::Depart {
            run_id: run.clone(),
        },
        Op::Checkin { run, person, code } => Command::CheckIn {
            run_id: run.clone(),
            person_id: person.clone(),
            code: if code == "duress" {
                CheckInCode::Duress
            } else {
                CheckInCode::Ok
            },
        },
        Op::Report {
            run,
            person,
            kind,
            note,
            rounds,
        } => Command::ReportIncident {
            run_id: run.clone(),
            person_id: person.clone(),
            kind: incident(kind).ok_or_else(|| format!("unknown report kind {kind:?}"))?,
            note: note.clone(),
            rounds: valid_rounds(rounds.as_ref()),
        },
        Op::SwapVehicle {
            run,
            vehicle,
            boxes,
            seals,
            handed_by,
            received_by,
        } => Command::SwapVehicle {
            run_id: run.clone(),
            vehicle_id: vehicle.clone(),
            boxes: boxes.clone(),
            seals: seals.clone(),
            handed_by: handed_by.clone(),
            received_by: received_by.clone(),
        },
        Op::Handover {
            run,
            stop,
            boxes,
            seals,
            handed_by,
            received_by,
        } => Command::HandOverCashBoxes {
            run_id: run.clone(),
            stop_id: stop.clone(),
            boxes: boxes.clone(),
            seals: seals.clone(),
            handed_by: handed_by.clone(),
            received_by: received_by.clone(),
        },
        Op::ReturnWeapon {
            serial,
            by,
            gun_custodian,
            ammo_custodian,
            rounds_returned,
        } => Command::ReturnWeapon {
            serial: serial.clone(),
            by: by.clone(),
            gun_custodian: gun_custodian.clone(),
            ammo_custodian: ammo_custodian.clone(),
            rounds_returned: *rounds_returned,
        },
        Op::CloseRun { run } => Command::CloseRun {
            run_id: run.clone(),
        },
        Op::Fix { .. } | Op::Tick => return Ok(None),
    }))
}

/// An in-memory pipeline: commands through `World`, every event through `Engine`.
#[derive(Debug, Default)]
pub struct Pipeline {
    pub world: World,
    pub engine: Engine,
    pub log: Vec<Event>,
    high_seq: std::collections::HashMap<String, u64>,
}

impl Pipeline {
    fn append(&mut self, event: Event, outputs: &mut Vec<Output>) {
        self.world.apply(&event);
        self.log.push(event);
        let position = self.log.len() as u64;
        let raised = self
            .engine
            .handle(position, &self.log[position as usize - 1]);
        self.record(raised, outputs);
    }

    fn record(&mut self, raised: Vec<cit_domain::event::Anomaly>, outputs: &mut Vec<Output>) {
        for a in raised {
            outputs.push(Output::anomaly(
                a.kind.as_str(),
                &a.run_id,
                &a.vehicle_id,
                a.at,
                a.severity.as_str(),
                a.kind.watch(),
            ));
            let e = Event::AnomalyRaised {
                anomaly: a,
                mark: None,
            };
            self.world.apply(&e);
            self.log.push(e);
            let position = self.log.len() as u64;
            let more = self
                .engine
                .handle(position, &self.log[position as usize - 1]);
            debug_assert!(more.is_empty());
        }
    }
}

/// Plays the whole scenario and returns the runner output.
pub fn run(s: &Scenario) -> Result<Vec<Output>, String> {
    let mut p = Pipeline::default();
    let mut outputs = Vec::new();
    let start = s.start();
    for cmd in registrations(s) {
        if let Ok(Outcome::Accepted { events, .. }) = p.world.handle(&cmd, start) {
            for e in events {
                p.append(e, &mut outputs);
            }
        }
    }
    for (index, entry) in s.timeline.iter().enumerate() {
        match &entry.op {
            Op::Tick => {
                let raised = p.engine.handle(0, &Event::ClockTicked { at: entry.t });
                p.record(raised, &mut outputs);
            }
            Op::Fix {
                vehicle,
                seq,
                lat,
                lon,
                speed_mps,
                heading_deg,
                accuracy_m,
                ignition,
                door_open,
            } => {
                let high = p.high_seq.entry(vehicle.clone()).or_insert(0);
                if *seq <= *high {
                    continue;
                }
                *high = *seq;
                let run_id = p.world.active_run_of_vehicle.get(vehicle).cloned();
                let e = Event::FixesRecorded {
                    vehicle_id: vehicle.clone(),
                    epoch: None,
                    run_id,
                    fixes: vec![Fix {
                        seq: *seq,
                        t: entry.t,
                        lat: *lat,
                        lon: *lon,
                        speed_mps: *speed_mps,
                        heading_deg: *heading_deg,
                        accuracy_m: *accuracy_m,
                        ignition: *ignition,
                        door_open: *door_open,
                    }],
                };
                p.append(e, &mut outputs);
            }
            op => {
                let Some(cmd) = command(s, op)? else { continue };
                match p.world.handle(&cmd, entry.t) {
                    Ok(Outcome::Accepted { events, .. }) => {
                        for e in events {
                            p.append(e, &mut outputs);
                        }
                    }
                    Ok(Outcome::Refused { refusal, record }) => {
                        outputs.push(Output::Refusal {
                            index,
                            rule: refusal.rule.as_str().into(),
                            code: "FAILED_PRECONDITION".into(),
                            message: refusal.message,
                        });
                        p.append(*record, &mut outputs);
                    }
                    Ok(Outcome::NoChange) => {}
                    Err(e) => outputs.push(Output::Error {
                        index,
                        op: cmd.name().into(),
                        code: "ERROR".into(),
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
    Ok(outputs)
}
