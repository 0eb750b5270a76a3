//! The scenario runner: plays a `cit-scenario/1` file through the public gRPC API of a citd in
//! scenario-clock mode and collects the runner output of SCENARIOS.md. It is a client only: it
//! proves the API. The timeline is applied in file order ("Order"): consecutive fixes of one
//! vehicle, with nothing else between them, go as one batch on one `StreamFixes` stream and are
//! acked before the next entry, so the log holds the timeline in order (ingest appends each
//! vehicle's part of a batch as its own event, so a batch mixing vehicles would let one vehicle's
//! later fixes move scenario time past another's earlier ones); the scenario clock is moved
//! before every other operation (and recorded for `tick`s).

use std::time::{Duration, Instant};

use cit_domain::Millis;
use cit_proto::v1 as pb;
use cit_proto::v1::{
    armory_client::ArmoryClient, audit_client::AuditClient, dispatch_client::DispatchClient,
    police_liaison_client::PoliceLiaisonClient, runs_client::RunsClient,
    scenario_clock_client::ScenarioClockClient, telemetry_client::TelemetryClient,
};
use cit_scenario::Output;
use cit_scenario::model::{Entry, Op, Scenario, valid_rounds};
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::mpsc;

use cit_proto::v1::identity_client::IdentityClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::credentials::{Bearer, Credentials};

use crate::error::refusal_rule;
use crate::grpc::ts;

/// Most fixes per batch the runner sends.
const BATCH: usize = 1000;
/// When paced, the scenario seconds one batch spans at most (a live view sees them move).
const PACED_BATCH_S: f64 = 5.0;

/// The end (exclusive) of the batch of fixes starting at `timeline[i]`, a fix: the consecutive
/// fixes of that one vehicle, at most `max` of them, spanning at most `span_s` scenario seconds
/// if given. Any other entry, a fix of another vehicle included, ends it (SCENARIOS.md "Order").
pub fn batch_end(timeline: &[Entry], i: usize, max: usize, span_s: Option<f64>) -> usize {
    let Some(Entry {
        t: first_t,
        op: Op::Fix { vehicle, .. },
    }) = timeline.get(i)
    else {
        return i;
    };
    let mut j = i;
    while j < timeline.len() && j - i < max {
        let e = &timeline[j];
        match &e.op {
            Op::Fix { vehicle: v, .. } if v == vehicle => {}
            _ => break,
        }
        if span_s.is_some_and(|span| e.t.secs_since(*first_t) > span) {
            break;
        }
        j += 1;
    }
    j
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("scenario: {0}")]
    Scenario(String),
    #[error("{call} failed: {status}")]
    Call { call: &'static str, status: Status },
}

fn call(name: &'static str) -> impl FnOnce(Status) -> RunnerError {
    move |status| RunnerError::Call { call: name, status }
}

/// A client channel with the caller's tokens added to each call.
pub type Ch = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Clients of every service, on one channel, speaking for one caller (see [`Clients::as_person`]).
/// The telemetry client carries no token: fixes go as the channel's client certificate (the
/// gateway's).
#[derive(Debug, Clone)]
pub struct Clients {
    channel: Channel,
    pub creds: Arc<Credentials>,
    pub runs: RunsClient<Ch>,
    pub armory: ArmoryClient<Ch>,
    pub liaison: PoliceLiaisonClient<Ch>,
    pub telemetry: TelemetryClient<Ch>,
    pub dispatch: DispatchClient<Ch>,
    pub audit: AuditClient<Ch>,
    pub clock: ScenarioClockClient<Ch>,
    pub identity: IdentityClient<Ch>,
}

/// A citd address as an endpoint URI: `host:port` as people type it gets `https://`
/// (`http://` with `tls` false); an address with a scheme is kept.
pub fn endpoint_uri(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

impl Clients {
    pub async fn connect(endpoint: &str, creds: Arc<Credentials>) -> Result<Clients, RunnerError> {
        let endpoint = &endpoint_uri(endpoint, creds.ca.is_some());
        let channel = creds
            .channel(endpoint)
            .await
            .map_err(|e| RunnerError::Connect(endpoint.into(), e))?;
        let token = creds.default_token();
        Ok(Clients::on(
            channel,
            creds,
            Bearer::new(token.as_deref(), &[]),
        ))
    }

    fn on(channel: Channel, creds: Arc<Credentials>, b: Bearer) -> Clients {
        let ch = || channel.clone();
        Clients {
            runs: RunsClient::with_interceptor(ch(), b.clone()),
            armory: ArmoryClient::with_interceptor(ch(), b.clone()),
            liaison: PoliceLiaisonClient::with_interceptor(ch(), b.clone()),
            telemetry: TelemetryClient::with_interceptor(
                ch(),
                Bearer::new(creds.unit_token.as_deref(), &[]),
            ),
            dispatch: DispatchClient::with_interceptor(ch(), b.clone()),
            audit: AuditClient::with_interceptor(ch(), b.clone()),
            clock: ScenarioClockClient::with_interceptor(ch(), b.clone()),
            identity: IdentityClient::with_interceptor(ch(), b),
            channel,
            creds,
        }
    }

    /// The same connection speaking for `person` with `roles` (a token minted by the
    /// credentials' signer), with the tokens of `cosigners` (person, roles) added.
    pub fn as_person(&self, person: &str, roles: &[&str]) -> Clients {
        self.cosigned(person, roles, &[])
    }

    pub fn cosigned(&self, person: &str, roles: &[&str], cosigners: &[(&str, &[&str])]) -> Clients {
        let token = self.creds.mint(person, roles);
        let cosign: Vec<String> = cosigners
            .iter()
            .filter_map(|(p, r)| self.creds.mint(p, r))
            .collect();
        Clients::on(
            self.channel.clone(),
            self.creds.clone(),
            Bearer::new(token.as_deref(), &cosign),
        )
    }

    /// Opens a `StreamFixes` stream: batches sent on the returned sender go out in order (at
    /// most `capacity` waiting), one ack per batch comes back on the returned stream.
    pub async fn fix_stream(
        &mut self,
        capacity: usize,
    ) -> Result<(mpsc::Sender<pb::FixBatch>, tonic::Streaming<pb::FixAck>), Status> {
        let (tx, mut rx) = mpsc::channel(capacity);
        let acks = self
            .telemetry
            .stream_fixes(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
            .await?
            .into_inner();
        Ok((tx, acks))
    }
}

/// Options of one play.
#[derive(Debug, Clone, Default)]
pub struct Play {
    /// Pace the timeline at this many scenario seconds per wall second (None: as fast as
    /// possible).
    pub speed: Option<f64>,
}

/// What happened while playing, for a live view (the demo).
#[derive(Debug)]
pub enum Progress<'a> {
    Output(&'a Output),
    Fixes {
        t: Millis,
        vehicle: &'a str,
        lat: f64,
        lon: f64,
        speed_mps: f64,
    },
    Op {
        t: Millis,
        op: &'a str,
        run: &'a str,
    },
}

fn fix_pb(vehicle: &str, t: Millis, op: &Op) -> Option<pb::Fix> {
    match op {
        Op::Fix {
            seq,
            lat,
            lon,
            speed_mps,
            heading_deg,
            accuracy_m,
            ignition,
            door_open,
            ..
        } => Some(pb::Fix {
            vehicle_id: vehicle.to_string(),
            seq: *seq,
            time: Some(ts(t)),
            lat: *lat,
            lon: *lon,
            speed_mps: *speed_mps,
            heading_deg: *heading_deg,
            accuracy_m: *accuracy_m,
            ignition: *ignition,
            door_open: *door_open,
            // Scenario files number each vehicle's fixes from 1, once.
            seq_epoch: 0,
        }),
        _ => None,
    }
}

/// A scenario's snake_case name as the API's enum value: the proto names are the same words,
/// prefixed and upper-cased (`police_check` -> `INCIDENT_KIND_POLICE_CHECK`).
fn role_pb(role: &str) -> Option<pb::Role> {
    pb::Role::from_str_name(&format!("ROLE_{}", role.to_uppercase()))
}

/// Unknown kinds go as UNSPECIFIED, which the server refuses naming the field.
fn incident_pb(kind: &str) -> pb::IncidentKind {
    pb::IncidentKind::from_str_name(&format!("INCIDENT_KIND_{}", kind.to_uppercase()))
        .unwrap_or(pb::IncidentKind::Unspecified)
}

fn plan_request(s: &Scenario, run_id: &str) -> Result<pb::PlanRunRequest, RunnerError> {
    let r = s
        .run(run_id)
        .ok_or_else(|| RunnerError::Scenario(format!("run {run_id:?} is not declared")))?;
    let p = s.detection_params(r).map_err(RunnerError::Scenario)?;
    Ok(pb::PlanRunRequest {
        run_id: r.id.clone(),
        vehicle_id: r.vehicle.clone(),
        driver_id: r.driver.clone(),
        escort_ids: r.escorts.clone(),
        route: r
            .route
            .coordinates
            .iter()
            .map(|c| pb::LatLon {
                lat: c[1],
                lon: c[0],
            })
            .collect(),
        corridor_m: Some(p.corridor_m),
        speed_limit_kmh: Some(p.speed_limit_kmh),
        checkin_interval_s: Some(p.checkin_interval_s.round() as u32),
        stops: r
            .stops
            .iter()
            .map(|st| pb::PlannedStop {
                stop_id: st.id.clone(),
                name: st.name.clone(),
                position: Some(pb::LatLon {
                    lat: st.lat,
                    lon: st.lon,
                }),
                radius_m: st.radius_m,
                arrive_by: st.arrive_by.map(ts),
                kind: st.kind.clone(),
            })
            .collect(),
        params: Some(pb::DetectionParams {
            stop_speed_mps: Some(p.stop_speed_mps),
            stop_radius_m: Some(p.stop_radius_m),
            stop_min_s: Some(p.stop_min_s),
            unplanned_stop_s: Some(p.unplanned_stop_s),
            report_cover_s: Some(p.report_cover_s),
            deviation_fixes: Some(p.deviation_fixes),
            deviation_s: Some(p.deviation_s),
            uturn_m: Some(p.uturn_m),
            max_gap_s: Some(p.max_gap_s),
            checkin_grace_s: Some(p.checkin_grace_s),
            late_grace_s: Some(p.late_grace_s),
            overspeed_s: Some(p.overspeed_s),
            swap_radius_m: Some(p.swap_radius_m),
        }),
        // Scenario files carry no box manifest.
        cash_boxes: vec![],
    })
}

/// Who does what in a scenario: each person it declares, with the role it gives them, and the
/// runner's own principals for what a scenario does not say who does (registrations go as an
/// admin, planning and close-out as the declared dispatcher, checkpoints as a police liaison).
/// Each call goes with its people's own tokens: a two-person call with one per person.
pub struct Actors {
    roles: std::collections::HashMap<String, String>,
    dispatcher: String,
}

pub const ADMIN: (&str, &[&str]) = ("scenario-admin", &["admin"]);
/// The PINs the runner sets for every crew member it registers.
pub const CHECKIN_PIN: &str = "2468";
pub const DURESS_PIN: &str = "1357";
pub const LIAISON: (&str, &[&str]) = ("scenario-liaison", &["police_liaison"]);

impl Actors {
    pub fn of(s: &Scenario) -> Actors {
        Actors {
            roles: s
                .people
                .iter()
                .map(|p| (p.id.clone(), p.role.clone()))
                .collect(),
            dispatcher: s
                .people
                .iter()
                .find(|p| p.role == "dispatcher")
                .map(|p| p.id.clone())
                .unwrap_or_else(|| "scenario-dispatch".into()),
        }
    }

    /// The token roles of a declared person: their role (outlet staff hold none; unknown
    /// people none).
    fn roles_of(&self, person: &str) -> &[&'static str] {
        match self.roles.get(person).map(String::as_str) {
            Some("driver") => &["driver"],
            Some("escort") => &["escort"],
            Some("gun_custodian") => &["gun_custodian"],
            Some("ammo_custodian") => &["ammo_custodian"],
            Some("approver") => &["approver"],
            Some("dispatcher") => &["dispatcher"],
            _ => &[],
        }
    }

    /// Clients speaking for `people[0]`, co-signed by the others (distinct, named).
    pub fn signed(&self, c: &Clients, people: &[&str]) -> Clients {
        let mut named: Vec<&str> = Vec::new();
        for p in people.iter().filter(|p| !p.is_empty()) {
            if !named.contains(p) {
                named.push(p);
            }
        }
        let Some((first, rest)) = named.split_first() else {
            return self.dispatch(c);
        };
        let cosigners: Vec<(&str, &[&str])> = rest.iter().map(|p| (*p, self.roles_of(p))).collect();
        c.cosigned(first, self.roles_of(first), &cosigners)
    }

    /// Whether the runner set `person`'s PINs (the crew it registers).
    fn has_pins(&self, person: &str) -> bool {
        matches!(
            self.roles.get(person).map(String::as_str),
            Some("driver" | "escort")
        )
    }

    pub fn dispatch(&self, c: &Clients) -> Clients {
        c.as_person(&self.dispatcher, &["dispatcher"])
    }

    /// The clients for one timeline operation.
    fn for_op(&self, c: &Clients, op: &Op) -> Clients {
        match op {
            Op::IssueWeapon {
                gun_custodian,
                ammo_custodian,
                approver,
                ..
            } => self.signed(c, &[gun_custodian, ammo_custodian, approver]),
            Op::ReturnWeapon {
                gun_custodian,
                ammo_custodian,
                ..
            } => self.signed(c, &[gun_custodian, ammo_custodian]),
            Op::EscortReady { person, .. }
            | Op::Checkin { person, .. }
            | Op::Report { person, .. } => self.signed(c, &[person]),
            Op::Handover {
                handed_by,
                received_by,
                ..
            } => {
                let people: Vec<&str> = handed_by
                    .iter()
                    .chain(received_by)
                    .map(String::as_str)
                    .collect();
                self.signed(c, &people)
            }
            Op::SwapVehicle {
                handed_by,
                received_by,
                ..
            } => {
                let cosigners: Vec<(&str, &[&str])> = handed_by
                    .iter()
                    .chain(received_by)
                    .map(|p| (p.as_str(), self.roles_of(p)))
                    .collect();
                c.cosigned(&self.dispatcher, &["dispatcher"], &cosigners)
            }
            Op::PlanRun { .. } | Op::Depart { .. } | Op::CloseRun { .. } => self.dispatch(c),
            Op::Fix { .. } | Op::Tick => c.clone(),
        }
    }
}

/// Sends one timeline operation (not a fix, not a tick) with its people's credentials;
/// returns its log position.
async fn send_op(c: &Clients, actors: &Actors, s: &Scenario, op: &Op) -> Result<u64, Status> {
    let mut c = actors.for_op(c, op);
    let w = match op {
        Op::PlanRun { run } => {
            let req = plan_request(s, run).map_err(|e| Status::invalid_argument(e.to_string()))?;
            c.runs.plan_run(req).await?.into_inner()
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
        } => c
            .armory
            .issue_weapon(pb::IssueWeaponRequest {
                run_id: run.clone(),
                serial: serial.clone(),
                lot: lot.clone(),
                rounds: *rounds,
                to: to.clone(),
                gun_custodian: gun_custodian.clone(),
                ammo_custodian: ammo_custodian.clone(),
                approver: approver.clone(),
            })
            .await?
            .into_inner(),
        Op::EscortReady {
            run,
            person,
            weapon,
            vest,
            helmet,
        } => c
            .runs
            .escort_ready(pb::EscortReadyRequest {
                run_id: run.clone(),
                person_id: person.clone(),
                weapon_serial: weapon.clone().unwrap_or_default(),
                vest: *vest,
                helmet: *helmet,
            })
            .await?
            .into_inner(),
        Op::Depart { run } => c
            .runs
            .depart(pb::DepartRequest {
                run_id: run.clone(),
            })
            .await?
            .into_inner(),
        Op::Checkin { run, person, code } => {
            let duress = code == "duress";
            // The crew the runner gave PINs type one; anyone else sends the code.
            let (pin, code) = if actors.has_pins(person) {
                let pin = if duress { DURESS_PIN } else { CHECKIN_PIN };
                (pin.to_string(), pb::CheckInCode::Unspecified)
            } else if duress {
                (String::new(), pb::CheckInCode::Duress)
            } else {
                (String::new(), pb::CheckInCode::Ok)
            };
            c.runs
                .check_in(pb::CheckInRequest {
                    run_id: run.clone(),
                    person_id: person.clone(),
                    code: code as i32,
                    pin,
                })
                .await?;
            return Ok(0);
        }
        Op::Report {
            run,
            person,
            kind,
            note,
            rounds,
        } => c
            .runs
            .report_incident(pb::ReportIncidentRequest {
                run_id: run.clone(),
                person_id: person.clone(),
                kind: incident_pb(kind) as i32,
                note: note.clone(),
                rounds: valid_rounds(rounds.as_ref()),
            })
            .await?
            .into_inner(),
        Op::SwapVehicle {
            run,
            vehicle,
            boxes,
            seals,
            handed_by,
            received_by,
        } => c
            .runs
            .swap_vehicle(pb::SwapVehicleRequest {
                run_id: run.clone(),
                vehicle_id: vehicle.clone(),
                box_ids: boxes.clone(),
                seals: seals.clone(),
                handed_by: handed_by.clone(),
                received_by: received_by.clone(),
            })
            .await?
            .into_inner(),
        Op::Handover {
            run,
            stop,
            boxes,
            seals,
            handed_by,
            received_by,
        } => c
            .runs
            .hand_over_cash_boxes(pb::HandOverCashBoxesRequest {
                run_id: run.clone(),
                stop_id: stop.clone(),
                box_ids: boxes.clone(),
                seals: seals.clone(),
                handed_by: handed_by.clone(),
                received_by: received_by.clone(),
            })
            .await?
            .into_inner(),
        Op::ReturnWeapon {
            serial,
            by,
            gun_custodian,
            ammo_custodian,
            rounds_returned,
        } => c
            .armory
            .return_weapon(pb::ReturnWeaponRequest {
                serial: serial.clone(),
                by: by.clone(),
                gun_custodian: gun_custodian.clone(),
                ammo_custodian: ammo_custodian.clone(),
                rounds_returned: *rounds_returned,
            })
            .await?
            .into_inner(),
        Op::CloseRun { run } => c
            .runs
            .close_run(pb::CloseRunRequest {
                run_id: run.clone(),
            })
            .await?
            .into_inner(),
        Op::Fix { .. } | Op::Tick => return Ok(0),
    };
    Ok(w.log_position)
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::PlanRun { .. } => "plan_run",
        Op::IssueWeapon { .. } => "issue_weapon",
        Op::EscortReady { .. } => "escort_ready",
        Op::Depart { .. } => "depart",
        Op::Fix { .. } => "fix",
        Op::Checkin { .. } => "checkin",
        Op::Report { .. } => "report",
        Op::Handover { .. } => "handover",
        Op::SwapVehicle { .. } => "swap_vehicle",
        Op::ReturnWeapon { .. } => "return_weapon",
        Op::CloseRun { .. } => "close_run",
        Op::Tick => "tick",
    }
}

fn op_run(op: &Op) -> &str {
    match op {
        Op::PlanRun { run }
        | Op::IssueWeapon { run, .. }
        | Op::EscortReady { run, .. }
        | Op::Depart { run }
        | Op::Checkin { run, .. }
        | Op::Report { run, .. }
        | Op::Handover { run, .. }
        | Op::SwapVehicle { run, .. }
        | Op::CloseRun { run } => run,
        _ => "",
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
        .chars()
        .fold(String::new(), |mut s, ch| {
            if ch.is_uppercase() && !s.is_empty() {
                s.push('_');
            }
            s.push(ch.to_ascii_uppercase());
            s
        })
}

/// Plays `s` against the server at `endpoint` (in scenario-clock mode).
pub async fn play(
    endpoint: &str,
    creds: &Arc<Credentials>,
    s: &Scenario,
    opts: &Play,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Vec<Output>, RunnerError> {
    let conn = Clients::connect(endpoint, creds.clone()).await?;
    let actors = Actors::of(s);
    let mut c = conn.as_person(ADMIN.0, ADMIN.1);
    let mut outputs = Vec::new();
    let emit = |o: Output, outputs: &mut Vec<Output>, progress: &mut dyn FnMut(Progress<'_>)| {
        progress(Progress::Output(&o));
        outputs.push(o);
    };
    let start = s.start();
    c.clock
        .advance_clock(pb::AdvanceClockRequest {
            to: Some(ts(start)),
            tick: false,
        })
        .await
        .map_err(|status| match status.code() {
            Code::Unimplemented => RunnerError::Scenario(format!(
                "{endpoint} runs on the wall clock; a scenario plays on scenario time: start citd with --clock scenario on a fresh --data-dir (or leave out --addr for a private one)"
            )),
            _ => RunnerError::Call {
                call: "AdvanceClock",
                status,
            },
        })?;
    register(&c, s).await?;

    // One fix stream for the whole play; acks come back in order.
    let (fix_tx, mut acks) = c.fix_stream(4).await.map_err(call("StreamFixes"))?;

    let wall_start = Instant::now();
    let pace = |t: Millis| {
        let target = opts
            .speed
            .map(|speed| Duration::from_secs_f64((t.secs_since(start) / speed).max(0.0)));
        async move {
            if let Some(target) = target {
                let elapsed = wall_start.elapsed();
                if target > elapsed {
                    tokio::time::sleep(target - elapsed).await;
                }
            }
        }
    };
    let mut last_position = 0u64;
    let mut i = 0;
    let n = s.timeline.len();
    let mut batch_id = 0;
    while i < n {
        let entry = &s.timeline[i];
        if let Op::Fix { vehicle, .. } = &entry.op {
            let j = batch_end(&s.timeline, i, BATCH, opts.speed.map(|_| PACED_BATCH_S));
            let fixes: Vec<pb::Fix> = s.timeline[i..j]
                .iter()
                .filter_map(|e| fix_pb(vehicle, e.t, &e.op))
                .collect();
            pace(s.timeline[j - 1].t).await;
            batch_id += 1;
            fix_tx
                .send(pb::FixBatch { fixes, batch_id })
                .await
                .map_err(|_| RunnerError::Scenario("the fix stream closed".into()))?;
            let ack = match acks.next().await {
                Some(Ok(a)) => a,
                Some(Err(status)) => {
                    return Err(RunnerError::Call {
                        call: "StreamFixes",
                        status,
                    });
                }
                None => {
                    return Err(RunnerError::Scenario("the fix stream ended".into()));
                }
            };
            last_position = last_position.max(ack.log_position);
            for rej in &ack.rejected {
                emit(
                    Output::Error {
                        index: i + rej.index as usize,
                        op: "fix".into(),
                        code: "REJECTED".into(),
                        message: format!("{}: {}", rej.field, rej.reason),
                    },
                    &mut outputs,
                    &mut progress,
                );
            }
            let last = &s.timeline[j - 1];
            if let Op::Fix {
                lat,
                lon,
                speed_mps,
                ..
            } = &last.op
            {
                progress(Progress::Fixes {
                    t: last.t,
                    vehicle,
                    lat: *lat,
                    lon: *lon,
                    speed_mps: *speed_mps,
                });
            }
            i = j;
            continue;
        }
        pace(entry.t).await;
        let tick = matches!(entry.op, Op::Tick);
        let r = c
            .clock
            .advance_clock(pb::AdvanceClockRequest {
                to: Some(ts(entry.t)),
                tick,
            })
            .await
            .map_err(call("AdvanceClock"))?
            .into_inner();
        last_position = last_position.max(r.log_position);
        if !tick {
            progress(Progress::Op {
                t: entry.t,
                op: op_name(&entry.op),
                run: op_run(&entry.op),
            });
            match send_op(&conn, &actors, s, &entry.op).await {
                Ok(p) => last_position = last_position.max(p),
                Err(status) => {
                    let o = match refusal_rule(&status) {
                        Some(rule) => Output::Refusal {
                            index: i,
                            rule,
                            code: code_name(status.code()),
                            message: status.message().to_string(),
                        },
                        None => Output::Error {
                            index: i,
                            op: op_name(&entry.op).into(),
                            code: code_name(status.code()),
                            message: status.message().to_string(),
                        },
                    };
                    emit(o, &mut outputs, &mut progress);
                }
            }
        }
        i += 1;
    }
    drop(fix_tx);
    // Read our own writes: everything the engine raised up to the last position.
    let list = actors
        .dispatch(&conn)
        .dispatch
        .list_anomalies(pb::ListAnomaliesRequest {
            min_log_position: last_position,
            include_resolved: true,
            ..Default::default()
        })
        .await
        .map_err(call("ListAnomalies"))?
        .into_inner();
    let mut anomalies: Vec<_> = list.anomalies;
    anomalies.sort_by_key(|a| (a.at.as_ref().map(|t| (t.seconds, t.nanos)), a.id.clone()));
    for a in anomalies {
        let at = a.at.as_ref().map(crate::grpc::millis).unwrap_or_default();
        let severity = pb::Severity::try_from(a.severity)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("SEVERITY_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        emit(
            Output::anomaly(&a.kind, &a.run_id, &a.vehicle_id, at, &severity, &a.rule),
            &mut outputs,
            &mut progress,
        );
    }
    Ok(outputs)
}

/// Registers what the scenario declares, each as its keeper would, and binds the runner's
/// gateway to its vehicles.
async fn register(admin: &Clients, s: &Scenario) -> Result<(), RunnerError> {
    let mut c = admin.clone();
    for v in &s.vehicles {
        c.runs
            .register_vehicle(pb::RegisterVehicleRequest {
                vehicle_id: v.id.clone(),
                plate: v.plate.clone(),
                armoured: v.armoured,
            })
            .await
            .map_err(call("RegisterVehicle"))?;
    }
    for p in &s.people {
        let role = role_pb(&p.role)
            .ok_or_else(|| RunnerError::Scenario(format!("unknown role {:?}", p.role)))?;
        c.runs
            .register_person(pb::RegisterPersonRequest {
                person_id: p.id.clone(),
                name: p.name.clone(),
                role: role as i32,
            })
            .await
            .map_err(call("RegisterPerson"))?;
    }
    if let Some(gateway) = &c.creds.gateway_id
        && !s.vehicles.is_empty()
    {
        c.identity
            .bind_unit(pb::BindUnitRequest {
                unit_id: gateway.clone(),
                gateway: true,
                vehicle_ids: s.vehicles.iter().map(|v| v.id.clone()).collect(),
            })
            .await
            .map_err(call("BindUnit"))?;
    }
    // The crew's PINs: the runner types the check-in PIN for `ok` and the duress PIN for
    // `duress`, and citd tells them apart (SCENARIOS.md's codes never travel).
    for p in s
        .people
        .iter()
        .filter(|p| p.role == "driver" || p.role == "escort")
    {
        c.identity
            .set_crew_pins(pb::SetCrewPinsRequest {
                person_id: p.id.clone(),
                checkin_pin: CHECKIN_PIN.into(),
                duress_pin: DURESS_PIN.into(),
            })
            .await
            .map_err(call("SetCrewPins"))?;
    }
    let keeper = |role: &str, synthetic: &'static str| {
        let id = s
            .people
            .iter()
            .find(|p| p.role == role)
            .map(|p| p.id.as_str())
            .unwrap_or(synthetic);
        admin.as_person(id, &[role])
    };
    let mut c = keeper("gun_custodian", "scenario-gun-custodian");
    for w in &s.weapons {
        c.armory
            .register_weapon(pb::RegisterWeaponRequest {
                serial: w.serial.clone(),
                kind: w.kind.clone(),
            })
            .await
            .map_err(call("RegisterWeapon"))?;
    }
    let mut c = keeper("ammo_custodian", "scenario-ammo-custodian");
    for l in &s.ammo_lots {
        c.armory
            .register_ammo_lot(pb::RegisterAmmoLotRequest {
                lot: l.lot.clone(),
                rounds: l.rounds,
            })
            .await
            .map_err(call("RegisterAmmoLot"))?;
    }
    let mut c = admin.as_person(LIAISON.0, LIAISON.1);
    for cp in &s.checkpoints {
        c.liaison
            .register_checkpoint(pb::RegisterCheckpointRequest {
                checkpoint: Some(pb::Checkpoint {
                    checkpoint_id: cp.id.clone(),
                    position: Some(pb::LatLon {
                        lat: cp.lat,
                        lon: cp.lon,
                    }),
                    radius_m: cp.radius_m,
                    valid_from: Some(ts(cp.valid_from)),
                    valid_to: Some(ts(cp.valid_to)),
                }),
            })
            .await
            .map_err(call("RegisterCheckpoint"))?;
    }
    Ok(())
}

/// Starts a private citd (scenario clock, fresh temporary store, ephemeral port), plays `s`
/// through its API, and stops it.
pub async fn play_fresh(s: &Scenario, opts: &Play) -> Result<Vec<Output>, RunnerError> {
    let dir = tempfile::tempdir().map_err(|e| RunnerError::Scenario(e.to_string()))?;
    let (config, creds) =
        crate::credentials::private_server(dir.path()).map_err(RunnerError::Scenario)?;
    let server = crate::server::start(config)
        .await
        .map_err(|e| RunnerError::Connect("in-process citd".into(), e.to_string()))?;
    let result = play(&server.endpoint(), &Arc::new(creds), s, opts, |_| {}).await;
    let _ = server.stop().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(entries: &[(&str, &str)]) -> Vec<Entry> {
        entries
            .iter()
            .enumerate()
            .map(|(i, (op, vehicle))| {
                let t = format!("2026-03-27T06:00:{:02}Z", i);
                let json = match *op {
                    "fix" => serde_json::json!({"t": t, "op": "fix", "vehicle": vehicle,
                        "seq": i + 1, "lat": 57.7, "lon": 11.9, "speed_mps": 10.0,
                        "heading_deg": 0.0, "accuracy_m": 5.0, "ignition": true,
                        "door_open": false}),
                    _ => serde_json::json!({"t": t, "op": "tick"}),
                };
                serde_json::from_value(json).expect("entry")
            })
            .collect()
    }

    #[test]
    fn a_batch_holds_consecutive_fixes_of_one_vehicle_and_nothing_between_them() {
        // Two vehicles interleaved, as gbg-r018 has them: every change of vehicle ends a batch,
        // so the log holds the timeline in file order (SCENARIOS.md "Order").
        let t = timeline(&[
            ("fix", "V-1"),
            ("fix", "V-1"),
            ("fix", "V-2"),
            ("fix", "V-1"),
            ("tick", ""),
            ("fix", "V-2"),
            ("fix", "V-2"),
        ]);
        let mut batches = Vec::new();
        let mut i = 0;
        while i < t.len() {
            let j = batch_end(&t, i, BATCH, None);
            if j == i {
                i += 1;
                continue;
            }
            batches.push(i..j);
            i = j;
        }
        assert_eq!(batches, [0..2, 2..3, 3..4, 5..7]);
        // The batch size and (when paced) the span cut it too.
        assert_eq!(batch_end(&t, 5, 1, None), 6);
        assert_eq!(batch_end(&t, 0, BATCH, Some(0.5)), 1);
    }
}
