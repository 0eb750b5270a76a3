//! The aggregate state of the domain and its rules. `handle` decides (R1–R9) and returns the
//! events to append, or a refusal that is itself an event; `apply` folds an appended event in.
//! `handle` never mutates: the caller applies the events once they are durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::command::{Command, RunPlan};
use crate::event::{Event, RoundsSpent, StreamName};
use crate::model::{
    Checkpoint, DetectionParams, IncidentKind, LatLon, MAX_ROUTE_POINTS, PlannedStop, Role,
};
use crate::time::Millis;

/// The rules of DOMAIN.md that refuse commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Rule {
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::R1 => "R1",
            Rule::R2 => "R2",
            Rule::R3 => "R3",
            Rule::R4 => "R4",
            Rule::R5 => "R5",
            Rule::R6 => "R6",
            Rule::R7 => "R7",
            Rule::R8 => "R8",
            Rule::R9 => "R9",
        }
    }
}

/// A command refused by a rule, with a message a person can act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub rule: Rule,
    pub message: String,
}

/// Input that is wrong regardless of the rules: malformed, unknown, or a duplicate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    /// A registration again with other data: corrections are new events, not re-registrations.
    #[error("{what} already exists with a different {field}")]
    AlreadyExists { what: String, field: String },
    /// The command is well-formed but the subject is in the wrong state (e.g. depart twice).
    #[error("{0}")]
    WrongState(String),
}

impl InputError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InputError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
    fn not_found(what: impl Into<String>) -> Self {
        InputError::NotFound { what: what.into() }
    }
}

/// What `handle` decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Append these events (all to `stream`), then apply them.
    Accepted {
        stream: StreamName,
        events: Vec<Event>,
    },
    /// Refused by a rule. `record` is the `CommandRefused` event to append (refusals are part of
    /// the record); nothing else changes.
    Refused {
        refusal: Refusal,
        record: Box<Event>,
    },
    /// Already done exactly so (an idempotent retry): nothing to append.
    NoChange,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vehicle {
    pub plate: String,
    pub armoured: bool,
}

/// A telematics unit's binding: the vehicles it may report for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub gateway: bool,
    pub vehicle_ids: Vec<String>,
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Person {
    pub name: String,
    pub role: Role,
}

/// Where a weapon is: in the armory, or out with a named person for a named run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WeaponLocation {
    InArmory,
    Out {
        holder: String,
        run_id: String,
        lot: String,
        rounds: u32,
        /// Rounds reported fired from it since the issue (A11).
        #[serde(default)]
        spent: u32,
        /// When its holder got it, as the world's custody counter: a report of shots fired
        /// spends from the one its reporter got last.
        #[serde(default)]
        since: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Weapon {
    pub kind: String,
    pub location: WeaponLocation,
}

/// The run lifecycle: planned → active (departed) → returned → closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Planned,
    /// Departed, on the road.
    Active,
    /// Back at the vault: weapons are returned only there, so the first return of a weapon of
    /// an active run marks it. Fixes still belong to the run until it closes.
    Returned,
    Closed,
    /// Called off before departure.
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Planned => "planned",
            RunStatus::Active => "active",
            RunStatus::Returned => "returned",
            RunStatus::Closed => "closed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Closed or cancelled: nothing more happens on the run.
    pub fn is_over(self) -> bool {
        matches!(self, RunStatus::Closed | RunStatus::Cancelled)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    pub weapon: Option<String>,
    pub vest: bool,
    pub helmet: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub run_id: String,
    pub vehicle_id: String,
    pub driver_id: String,
    pub escort_ids: Vec<String>,
    /// (The route is not kept: no command is decided on it, and the engine and the audit read
    /// it from the run's `RunPlanned`.)
    pub stops: Vec<PlannedStop>,
    pub params: DetectionParams,
    pub status: RunStatus,
    pub planned_at: Millis,
    pub departed_at: Option<Millis>,
    pub closed_at: Option<Millis>,
    /// Latest `escort_ready` per escort.
    pub readiness: HashMap<String, Readiness>,
    /// Boxes of the manifest and the boxes handed over so far.
    pub cash_boxes: Vec<String>,
    pub handed_over: std::collections::HashSet<String>,
    /// Weapons and ammunition lots ever issued on this run: the custody streams an audit of
    /// the run reads beside the run's own.
    pub custody: BTreeSet<String>,
    /// Vehicles the run had before its current one (R8 swaps), in order.
    #[serde(default)]
    pub former_vehicles: Vec<String>,
    /// A digest of the planned route (the route itself is read from the log): enough to tell
    /// whether an amendment changes it. 0 in older snapshots: unknown.
    #[serde(default)]
    pub route_digest: u64,
}

/// FNV-1a over the route's coordinates' bits: a digest to compare routes, not a hash to trust.
fn route_digest(route: &[LatLon]) -> u64 {
    route
        .iter()
        .flat_map(|p| [p.lat.to_bits(), p.lon.to_bits()])
        .flat_map(u64::to_le_bytes)
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

impl Run {
    /// The parts of a plan that differ from this run's, in the order of the plan's fields.
    fn changes(&self, plan: &RunPlan) -> Vec<&'static str> {
        [
            ("vehicle_id", self.vehicle_id == plan.vehicle_id),
            ("driver_id", self.driver_id == plan.driver_id),
            ("escort_ids", self.escort_ids == plan.escort_ids),
            ("route", self.route_digest == route_digest(&plan.route)),
            ("stops", self.stops == plan.stops),
            ("params", self.params == plan.params),
            ("cash_boxes", self.cash_boxes == plan.cash_boxes),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(f, _)| f)
        .collect()
    }

    /// Whether `vehicle_id` is or was this run's vehicle.
    pub fn served_by(&self, vehicle_id: &str) -> bool {
        self.vehicle_id == vehicle_id || self.former_vehicles.iter().any(|v| v == vehicle_id)
    }
}

/// Workflow state of an anomaly (for acknowledge / resolve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnomalyState {
    Open,
    Acknowledged,
    Resolved,
}

/// The whole domain state, rebuilt by applying the log in order.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct World {
    pub vehicles: HashMap<String, Vehicle>,
    pub people: HashMap<String, Person>,
    pub weapons: BTreeMap<String, Weapon>,
    /// Rounds left in each lot.
    pub ammo_lots: HashMap<String, u32>,
    /// Rounds each lot was registered with (a re-registration is compared with these).
    #[serde(default)]
    pub ammo_registered: HashMap<String, u32>,
    pub checkpoints: HashMap<String, Checkpoint>,
    pub runs: HashMap<String, Run>,
    /// The run each vehicle is currently on (active runs only).
    pub active_run_of_vehicle: HashMap<String, String>,
    pub anomalies: HashMap<String, (String, AnomalyState)>,
    /// Counts weapons changing hands (issues and handovers), in log order.
    #[serde(default)]
    pub custody_seq: u64,
    /// Telematics units and gateways by id, with what they may report for.
    #[serde(default)]
    pub units: HashMap<String, Unit>,
    /// Crew members' check-in and duress PIN hashes (argon2id PHC strings), by person.
    #[serde(default)]
    pub pins: HashMap<String, (String, String)>,
}

fn refused(
    rule: Rule,
    command: &Command,
    run_id: Option<&str>,
    subject: &str,
    message: String,
    weapons_out: Vec<(String, String)>,
    now: Millis,
) -> Outcome {
    Outcome::Refused {
        record: Box::new(Event::CommandRefused {
            rule: rule.as_str().to_string(),
            command: command.name().to_string(),
            run_id: run_id.map(str::to_string),
            subject: subject.to_string(),
            message: message.clone(),
            weapons_out,
            at: now,
        }),
        refusal: Refusal { rule, message },
    }
}

fn accepted(event: Event) -> Outcome {
    Outcome::Accepted {
        stream: event.stream(),
        events: vec![event],
    }
}

/// R6 with a manifest: what is wrong with the boxes of a handover (none without a manifest).
fn manifest_problem(run: &Run, boxes: &[String], seals: &[u64]) -> Option<String> {
    if run.cash_boxes.is_empty() {
        return None;
    }
    for (i, b) in boxes.iter().enumerate() {
        if !run.cash_boxes.contains(b) {
            return Some(format!("box {b:?} is not in the run's manifest"));
        }
        if boxes[..i].contains(b) || run.handed_over.contains(b) {
            return Some(format!("box {b:?} is handed over twice"));
        }
    }
    (seals.len() != boxes.len()).then(|| {
        format!(
            "{} seal(s) for {} box(es); every box is checked under its own seal",
            seals.len(),
            boxes.len()
        )
    })
}

/// R6: what is wrong with a transfer of cash boxes (a handover at a stop, or the move to a
/// replacement vehicle): two distinct people hand over, someone receives, nobody on both sides.
fn r6_problem(handed_by: &[String], received_by: &[String]) -> Option<String> {
    let mut givers: Vec<&String> = handed_by.iter().collect();
    givers.sort();
    givers.dedup();
    if givers.len() < 2 {
        Some(format!(
            "only {} distinct person(s) handing over; two are required",
            givers.len()
        ))
    } else if received_by.is_empty() {
        Some("nobody confirms receipt".to_string())
    } else {
        received_by
            .iter()
            .find(|r| handed_by.contains(r))
            .map(|p| format!("{p:?} is on both sides of the handover"))
    }
}

/// Weapons out, as a person reads them: "G-1 held by E-1, G-2 held by E-2".
fn held_list(out: &[(String, String)]) -> String {
    out.iter()
        .map(|(s, h)| format!("{s} held by {h}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first field whose values differ, of (field, equal) pairs.
fn first_difference<const N: usize>(fields: [(&'static str, bool); N]) -> Option<&'static str> {
    fields.into_iter().find(|(_, same)| !same).map(|(f, _)| f)
}

/// A registration again: the same data is no change (an idempotent retry); other data is
/// ALREADY_EXISTS naming the first field that differs.
fn already(what: String, differs: Option<&'static str>) -> Result<Outcome, InputError> {
    match differs {
        None => Ok(Outcome::NoChange),
        Some(field) => Err(InputError::AlreadyExists {
            what,
            field: field.to_string(),
        }),
    }
}

fn require_id(field: &str, value: &str) -> Result<(), InputError> {
    if value.trim().is_empty() {
        return Err(InputError::invalid(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(InputError::invalid(field, "must be at most 128 bytes"));
    }
    Ok(())
}

impl World {
    pub fn new() -> Self {
        Self::default()
    }

    /// Weapons out for a run, as (serial, holder).
    pub fn weapons_out_for(&self, run_id: &str) -> Vec<(String, String)> {
        self.weapons
            .iter()
            .filter_map(|(serial, w)| match &w.location {
                WeaponLocation::Out {
                    holder, run_id: r, ..
                } if r == run_id => Some((serial.clone(), holder.clone())),
                _ => None,
            })
            .collect()
    }

    /// The weapon of `run_id` that `person` got last (issued or handed to them), if they hold
    /// one: shots they report are spent from it.
    pub fn weapon_held(&self, run_id: &str, person: &str) -> Option<(&str, &WeaponLocation)> {
        self.weapons
            .iter()
            .filter_map(|(serial, w)| match &w.location {
                loc @ WeaponLocation::Out {
                    holder, run_id: r, ..
                } if holder == person && r == run_id => Some((serial.as_str(), loc)),
                _ => None,
            })
            .max_by_key(|(_, loc)| match loc {
                WeaponLocation::Out { since, .. } => *since,
                WeaponLocation::InArmory => 0,
            })
    }

    /// The active run (departed, not closed) other than `except` that `person` is rostered on.
    fn active_run_of_person(&self, person: &str, except: &str) -> Option<&str> {
        self.runs
            .values()
            .filter(|r| r.run_id != except)
            .filter(|r| matches!(r.status, RunStatus::Active | RunStatus::Returned))
            .find(|r| r.driver_id == person || r.escort_ids.iter().any(|e| e == person))
            .map(|r| r.run_id.as_str())
    }

    /// R9 at planning: a driver and two distinct escorts, each registered in the place's role,
    /// nobody twice (the driver among the escorts included).
    fn r9_crew_problem(&self, driver_id: &str, escort_ids: &[String]) -> Option<String> {
        let in_role = |id: &str, role: Role| self.people.get(id).is_some_and(|p| p.role == role);
        let describe = |id: &str| match self.people.get(id) {
            None => "is not registered".to_string(),
            Some(p) => format!("is registered as {}", p.role.as_str()),
        };
        if driver_id.trim().is_empty() {
            return Some("the run has no driver".into());
        }
        if !in_role(driver_id, Role::Driver) {
            return Some(format!(
                "driver {driver_id:?} {}, not as driver",
                describe(driver_id)
            ));
        }
        for (i, e) in escort_ids.iter().enumerate() {
            if e == driver_id {
                return Some(format!("{e:?} is rostered as driver and as escort"));
            }
            if escort_ids[..i].contains(e) {
                return Some(format!("escort {e:?} is rostered twice"));
            }
            if !in_role(e, Role::Escort) {
                return Some(format!("escort {e:?} {}, not as escort", describe(e)));
            }
        }
        if escort_ids.len() < 2 {
            return Some(format!(
                "{} escort(s) rostered; a run needs a driver and at least two armed escorts",
                escort_ids.len()
            ));
        }
        None
    }

    fn run(&self, run_id: &str) -> Result<&Run, InputError> {
        self.runs
            .get(run_id)
            .ok_or_else(|| InputError::not_found(format!("run {run_id:?}")))
    }

    fn person(&self, field: &str, id: &str) -> Result<&Person, InputError> {
        require_id(field, id)?;
        self.people
            .get(id)
            .ok_or_else(|| InputError::not_found(format!("{field} {id:?} (person)")))
    }

    /// A refusal of `cmd` decided outside the rules here (the caller's credentials do not
    /// carry the role a two-person rule needs), recorded like any other.
    pub fn refusal(
        &self,
        cmd: &Command,
        rule: Rule,
        run_id: Option<&str>,
        subject: &str,
        message: String,
        now: Millis,
    ) -> Outcome {
        let run_ref = run_id.and_then(|r| self.runs.get(r).map(|r| r.run_id.as_str()));
        refused(rule, cmd, run_ref, subject, message, vec![], now)
    }

    /// Decides a command at time `now`. Never mutates.
    pub fn handle(&self, cmd: &Command, now: Millis) -> Result<Outcome, InputError> {
        match cmd {
            Command::RegisterVehicle {
                vehicle_id,
                plate,
                armoured,
            } => {
                require_id("vehicle_id", vehicle_id)?;
                if let Some(v) = self.vehicles.get(vehicle_id) {
                    let differs = first_difference([
                        ("plate", v.plate == *plate),
                        ("armoured", v.armoured == *armoured),
                    ]);
                    return already(format!("vehicle {vehicle_id:?}"), differs);
                }
                Ok(accepted(Event::VehicleRegistered {
                    vehicle_id: vehicle_id.clone(),
                    plate: plate.clone(),
                    armoured: *armoured,
                    at: now,
                }))
            }
            Command::RegisterPerson {
                person_id,
                name,
                role,
            } => {
                require_id("person_id", person_id)?;
                if let Some(p) = self.people.get(person_id) {
                    let differs =
                        first_difference([("name", p.name == *name), ("role", p.role == *role)]);
                    return already(format!("person {person_id:?}"), differs);
                }
                Ok(accepted(Event::PersonRegistered {
                    person_id: person_id.clone(),
                    name: name.clone(),
                    role: *role,
                    at: now,
                }))
            }
            Command::RegisterWeapon { serial, kind } => {
                require_id("serial", serial)?;
                if let Some(w) = self.weapons.get(serial) {
                    let differs = first_difference([("kind", w.kind == *kind)]);
                    return already(format!("weapon {serial:?}"), differs);
                }
                Ok(accepted(Event::WeaponRegistered {
                    serial: serial.clone(),
                    kind: kind.clone(),
                    at: now,
                }))
            }
            Command::RegisterAmmoLot { lot, rounds } => {
                require_id("lot", lot)?;
                if self.ammo_lots.contains_key(lot) {
                    // Older logs did not keep the registered count: taken as the same.
                    let registered = self.ammo_registered.get(lot).copied().unwrap_or(*rounds);
                    let differs = first_difference([("rounds", registered == *rounds)]);
                    return already(format!("ammunition lot {lot:?}"), differs);
                }
                Ok(accepted(Event::AmmoLotRegistered {
                    lot: lot.clone(),
                    rounds: *rounds,
                    at: now,
                }))
            }
            Command::CountAmmoLot { lot, counted, by } => {
                require_id("lot", lot)?;
                self.person("by", by)?;
                let expected = *self
                    .ammo_lots
                    .get(lot)
                    .ok_or_else(|| InputError::not_found(format!("ammunition lot {lot:?}")))?;
                Ok(accepted(Event::AmmoCounted {
                    lot: lot.clone(),
                    counted: *counted,
                    expected,
                    by: by.clone(),
                    at: now,
                }))
            }
            Command::DeliverAmmo { lot, rounds } => {
                require_id("lot", lot)?;
                if !self.ammo_lots.contains_key(lot) {
                    return Err(InputError::not_found(format!("ammunition lot {lot:?}")));
                }
                if *rounds == 0 {
                    return Err(InputError::invalid(
                        "rounds",
                        "a delivery brings at least 1 round",
                    ));
                }
                Ok(accepted(Event::AmmoDelivered {
                    lot: lot.clone(),
                    rounds: *rounds,
                    at: now,
                }))
            }
            Command::BindUnit {
                unit_id,
                gateway,
                vehicle_ids,
            } => {
                require_id("unit_id", unit_id)?;
                if vehicle_ids.is_empty() || (!gateway && vehicle_ids.len() > 1) {
                    return Err(InputError::invalid(
                        "vehicle_ids",
                        "a unit reports for exactly one vehicle, a gateway for one or more",
                    ));
                }
                for v in vehicle_ids {
                    if !self.vehicles.contains_key(v) {
                        return Err(InputError::invalid(
                            "vehicle_ids",
                            format!("vehicle {v:?} is not registered"),
                        ));
                    }
                }
                if let Some(u) = self.units.get(unit_id) {
                    if u.disabled {
                        return Err(InputError::invalid(
                            "unit_id",
                            format!(
                                "unit {unit_id:?} is disabled; a replacement gets an id of its own"
                            ),
                        ));
                    }
                    if u.gateway == *gateway && u.vehicle_ids == *vehicle_ids {
                        return Ok(Outcome::NoChange);
                    }
                }
                Ok(accepted(Event::UnitBound {
                    unit_id: unit_id.clone(),
                    gateway: *gateway,
                    vehicle_ids: vehicle_ids.clone(),
                    at: now,
                }))
            }
            Command::SetCrewPins {
                person_id,
                checkin_hash,
                duress_hash,
            } => {
                self.person("person_id", person_id)?;
                if checkin_hash.is_empty() || duress_hash.is_empty() || checkin_hash == duress_hash
                {
                    return Err(InputError::invalid(
                        "pins",
                        "two different PINs are required",
                    ));
                }
                Ok(accepted(Event::CrewPinsSet {
                    person_id: person_id.clone(),
                    checkin_hash: checkin_hash.clone(),
                    duress_hash: duress_hash.clone(),
                    at: now,
                }))
            }
            Command::DisableUnit { unit_id, reason } => {
                require_id("unit_id", unit_id)?;
                match self.units.get(unit_id) {
                    None => Err(InputError::not_found(format!("unit {unit_id:?}"))),
                    Some(u) if u.disabled => Ok(Outcome::NoChange),
                    Some(_) => Ok(accepted(Event::UnitDisabled {
                        unit_id: unit_id.clone(),
                        reason: reason.clone(),
                        at: now,
                    })),
                }
            }
            Command::RegisterCheckpoint(cp) => {
                require_id("checkpoint.checkpoint_id", &cp.checkpoint_id)?;
                LatLon::new(cp.position.lat, cp.position.lon, "checkpoint.position")?;
                if !cp.radius_m.is_finite() || cp.radius_m <= 0.0 {
                    return Err(InputError::invalid("checkpoint.radius_m", "must be > 0"));
                }
                if cp.valid_from >= cp.valid_to {
                    return Err(InputError::invalid(
                        "checkpoint.valid_to",
                        "must be after valid_from",
                    ));
                }
                if let Some(e) = self.checkpoints.get(&cp.checkpoint_id) {
                    let differs = first_difference([
                        ("position", e.position == cp.position),
                        ("radius_m", e.radius_m == cp.radius_m),
                        ("valid_from", e.valid_from == cp.valid_from),
                        ("valid_to", e.valid_to == cp.valid_to),
                    ]);
                    return already(format!("checkpoint {:?}", cp.checkpoint_id), differs);
                }
                Ok(accepted(Event::CheckpointRegistered {
                    checkpoint: cp.clone(),
                    at: now,
                }))
            }
            Command::PlanRun(plan) => {
                let run_id = &plan.run_id;
                require_id("run_id", run_id)?;
                validate_plan(&plan.route, &plan.stops, &plan.params, now)?;
                if let Some(r) = self.runs.get(run_id) {
                    // The same plan again is a retry; another is AmendRun's (ALREADY_EXISTS
                    // naming the first part that differs).
                    return already(format!("run {run_id:?}"), r.changes(plan).first().copied());
                }
                if let Some(refusal) = self.check_plan(cmd, plan, now) {
                    return Ok(refusal);
                }
                Ok(accepted(Event::RunPlanned {
                    run_id: plan.run_id.clone(),
                    vehicle_id: plan.vehicle_id.clone(),
                    driver_id: plan.driver_id.clone(),
                    escort_ids: plan.escort_ids.clone(),
                    route: plan.route.clone(),
                    stops: plan.stops.clone(),
                    params: plan.params.clone(),
                    cash_boxes: plan.cash_boxes.clone(),
                    at: now,
                }))
            }
            Command::AmendRun(plan) => {
                let run_id = &plan.run_id;
                let run = self.run(run_id)?;
                if run.status != RunStatus::Planned {
                    return Err(InputError::WrongState(format!(
                        "run {run_id:?} is {}: only a planned run is amended",
                        run.status.as_str()
                    )));
                }
                validate_plan(&plan.route, &plan.stops, &plan.params, now)?;
                let changed = run.changes(plan);
                if changed.is_empty() {
                    return Ok(Outcome::NoChange);
                }
                if let Some(refusal) = self.check_plan(cmd, plan, now) {
                    return Ok(refusal);
                }
                Ok(accepted(Event::RunAmended {
                    run_id: plan.run_id.clone(),
                    vehicle_id: plan.vehicle_id.clone(),
                    driver_id: plan.driver_id.clone(),
                    escort_ids: plan.escort_ids.clone(),
                    route: plan.route.clone(),
                    stops: plan.stops.clone(),
                    params: plan.params.clone(),
                    cash_boxes: plan.cash_boxes.clone(),
                    changed: changed.iter().map(|f| f.to_string()).collect(),
                    at: now,
                }))
            }
            Command::EscortReady {
                run_id,
                person_id,
                weapon,
                vest,
                helmet,
            } => {
                let run = self.run(run_id)?;
                self.person("person_id", person_id)?;
                if run.status.is_over() {
                    return Err(InputError::WrongState(format!(
                        "run {run_id:?} is {}",
                        run.status.as_str()
                    )));
                }
                Ok(accepted(Event::EscortReadied {
                    run_id: run_id.clone(),
                    person_id: person_id.clone(),
                    weapon: weapon.clone().filter(|w| !w.is_empty()),
                    vest: *vest,
                    helmet: *helmet,
                    at: now,
                }))
            }
            Command::Depart { run_id } => {
                let run = self.run(run_id)?;
                if run.status != RunStatus::Planned {
                    return Err(InputError::WrongState(format!(
                        "run {run_id:?} is {}; only a planned run departs",
                        run.status.as_str()
                    )));
                }
                if let Some(refusal) = self.check_r1(cmd, run_id, &run.vehicle_id, now) {
                    return Ok(refusal);
                }
                // R9: nobody and no vehicle serves two active runs at once.
                let busy = match self.active_run_of_vehicle.get(&run.vehicle_id) {
                    Some(other) => Some(format!(
                        "vehicle {:?} is on active run {other:?}",
                        run.vehicle_id
                    )),
                    None => std::iter::once(&run.driver_id)
                        .chain(&run.escort_ids)
                        .find_map(|p| {
                            self.active_run_of_person(p, run_id)
                                .map(|other| format!("{p:?} is on active run {other:?}"))
                        }),
                };
                if let Some(problem) = busy {
                    return Ok(refused(
                        Rule::R9,
                        cmd,
                        Some(run_id),
                        run_id,
                        format!("R9: run {run_id:?} cannot depart: {problem}"),
                        vec![],
                        now,
                    ));
                }
                // R2 Escorts equipped: latest readiness, vest, helmet, a weapon issued to them.
                for escort in &run.escort_ids {
                    let problem = match run.readiness.get(escort) {
                        None => Some("has not declared readiness".to_string()),
                        Some(r) if !r.vest => Some("has no bulletproof vest".to_string()),
                        Some(r) if !r.helmet => Some("has no helmet".to_string()),
                        Some(Readiness { weapon: None, .. }) => Some("carries no weapon".into()),
                        Some(Readiness {
                            weapon: Some(serial),
                            ..
                        }) => match self.weapons.get(serial).map(|w| &w.location) {
                            Some(WeaponLocation::Out {
                                holder, run_id: r, ..
                            }) if holder == escort && r == run_id => None,
                            _ => Some(format!(
                                "declares weapon {serial:?}, which is not issued to them for this run"
                            )),
                        },
                    };
                    if let Some(problem) = problem {
                        return Ok(refused(
                            Rule::R2,
                            cmd,
                            Some(run_id),
                            escort,
                            format!(
                                "R2: escort {escort:?} {problem}; every escort needs an issued weapon, vest and helmet before departure"
                            ),
                            vec![],
                            now,
                        ));
                    }
                }
                Ok(accepted(Event::RunDeparted {
                    run_id: run_id.clone(),
                    vehicle_id: run.vehicle_id.clone(),
                    at: now,
                }))
            }
            Command::CheckIn {
                run_id,
                person_id,
                code,
            } => {
                self.run(run_id)?;
                self.person("person_id", person_id)?;
                Ok(accepted(Event::CheckedIn {
                    run_id: run_id.clone(),
                    person_id: person_id.clone(),
                    code: *code,
                    at: now,
                }))
            }
            Command::ReportIncident {
                run_id,
                person_id,
                kind,
                note,
                rounds,
            } => {
                self.run(run_id)?;
                self.person("person_id", person_id)?;
                // An alarm is never refused for a detail: a count that is missing or 0 spends
                // nothing, more rounds than the weapon holds spend what it holds, and the
                // engine's evidence says which.
                let rounds = rounds.filter(|n| *n > 0 && *kind == IncidentKind::ShotsFired);
                let spent = rounds.and_then(|n| match self.weapon_held(run_id, person_id)? {
                    (
                        serial,
                        WeaponLocation::Out {
                            lot,
                            rounds: issued,
                            spent,
                            ..
                        },
                    ) => {
                        let held = issued.saturating_sub(*spent);
                        Some(RoundsSpent {
                            serial: serial.to_string(),
                            lot: lot.clone(),
                            rounds: n.min(held),
                            held,
                        })
                    }
                    (_, WeaponLocation::InArmory) => None,
                });
                Ok(accepted(Event::IncidentReported {
                    run_id: run_id.clone(),
                    person_id: person_id.clone(),
                    kind: *kind,
                    note: note.clone(),
                    rounds,
                    spent,
                    at: now,
                }))
            }
            Command::HandOverCashBoxes {
                run_id,
                stop_id,
                boxes,
                seals,
                handed_by,
                received_by,
            } => {
                let run = self.run(run_id)?;
                if !run.stops.iter().any(|s| s.stop_id == *stop_id) {
                    return Err(InputError::not_found(format!(
                        "stop {stop_id:?} of run {run_id:?}"
                    )));
                }
                if boxes.is_empty() {
                    return Err(InputError::invalid("box_ids", "at least one box"));
                }
                // R6 Two-person integrity, and with a manifest the boxes checked against it: each
                // a box of the run's manifest, handed over once, under a seal of its own.
                if let Some(problem) = r6_problem(handed_by, received_by)
                    .or_else(|| manifest_problem(run, boxes, seals))
                {
                    return Ok(refused(
                        Rule::R6,
                        cmd,
                        Some(run_id),
                        stop_id,
                        format!("R6: handover at {stop_id:?} refused: {problem}"),
                        vec![],
                        now,
                    ));
                }
                Ok(accepted(Event::CashBoxesHandedOver {
                    run_id: run_id.clone(),
                    stop_id: stop_id.clone(),
                    boxes: boxes.clone(),
                    seals: seals.clone(),
                    handed_by: handed_by.clone(),
                    received_by: received_by.clone(),
                    at: now,
                }))
            }
            Command::SwapVehicle {
                run_id,
                vehicle_id,
                boxes,
                seals,
                handed_by,
                received_by,
            } => {
                require_id("vehicle_id", vehicle_id)?;
                let run = self.runs.get(run_id);
                let refuse = |rule: Rule, message: String| {
                    refused(
                        rule,
                        cmd,
                        run.map(|r| r.run_id.as_str()),
                        vehicle_id,
                        message,
                        vec![],
                        now,
                    )
                };
                // R8 Replacement vehicle: an active run, a registered armoured vehicle that is
                // neither the run's own nor serving another active run. Checked before R6.
                let r8 = match run {
                    None => Some(format!("run {run_id:?} is not planned")),
                    Some(r) if !matches!(r.status, RunStatus::Active | RunStatus::Returned) => {
                        Some(format!("run {run_id:?} is not active"))
                    }
                    Some(r) if r.vehicle_id == *vehicle_id => Some(format!(
                        "vehicle {vehicle_id:?} is already the run's vehicle"
                    )),
                    Some(_) => match self.vehicles.get(vehicle_id) {
                        None => Some(format!("vehicle {vehicle_id:?} is not registered")),
                        Some(v) if !v.armoured => Some(format!(
                            "vehicle {vehicle_id:?} ({}) is not an armoured cash vehicle",
                            v.plate
                        )),
                        Some(_) => self.active_run_of_vehicle.get(vehicle_id).map(|other| {
                            format!("vehicle {vehicle_id:?} is on active run {other:?}")
                        }),
                    },
                };
                if let Some(problem) = r8 {
                    return Ok(refuse(
                        Rule::R8,
                        format!("R8: swap to {vehicle_id:?} refused: {problem}"),
                    ));
                }
                if let Some(problem) = r6_problem(handed_by, received_by) {
                    return Ok(refuse(
                        Rule::R6,
                        format!("R6: transfer of the cash to {vehicle_id:?} refused: {problem}"),
                    ));
                }
                let Some(run) = run else {
                    return Err(InputError::not_found(format!("run {run_id:?}")));
                };
                Ok(accepted(Event::VehicleSwapped {
                    run_id: run_id.clone(),
                    from_vehicle_id: run.vehicle_id.clone(),
                    to_vehicle_id: vehicle_id.clone(),
                    boxes: boxes.clone(),
                    seals: seals.clone(),
                    handed_by: handed_by.clone(),
                    received_by: received_by.clone(),
                    at: now,
                }))
            }
            Command::IssueWeapon {
                run_id,
                serial,
                lot,
                rounds,
                to,
                gun_custodian,
                ammo_custodian,
                approver,
            } => {
                require_id("serial", serial)?;
                require_id("to", to)?;
                let weapon = self
                    .weapons
                    .get(serial)
                    .ok_or_else(|| InputError::not_found(format!("weapon {serial:?}")))?;
                require_id("lot", lot)?;
                if !self.ammo_lots.contains_key(lot) {
                    return Err(InputError::not_found(format!("ammunition lot {lot:?}")));
                }
                let run_ref = self.runs.get(run_id).map(|r| r.run_id.as_str());
                let refuse = |rule: Rule, message: String| {
                    refused(rule, cmd, run_ref, serial, message, vec![], now)
                };
                // R3 Guns and ammunition apart: two different custodians and an approver, none of
                // them the recipient, and the approver neither custodian (one person never fills
                // two places of a two-person rule). A missing one is R3 too.
                let r3 = if gun_custodian.is_empty()
                    || ammo_custodian.is_empty()
                    || approver.is_empty()
                {
                    Some("the gun custodian, the ammunition custodian and the approver must all be named".to_string())
                } else if gun_custodian == ammo_custodian {
                    Some(format!(
                        "{gun_custodian:?} cannot be both gun and ammunition custodian"
                    ))
                } else if approver == gun_custodian || approver == ammo_custodian {
                    Some(format!(
                        "{approver:?} cannot approve an issue they are custodian of"
                    ))
                } else if gun_custodian == to || ammo_custodian == to {
                    Some(format!(
                        "the recipient {to:?} cannot be a custodian of the issue"
                    ))
                } else if approver == to {
                    Some(format!(
                        "the recipient {to:?} cannot approve their own issue"
                    ))
                } else {
                    None
                };
                if let Some(problem) = r3 {
                    return Ok(refuse(
                        Rule::R3,
                        format!("R3: issue of {serial:?} refused: {problem}"),
                    ));
                }
                // R4 Issue only for a task.
                let r4 = match self.runs.get(run_id) {
                    None => Some(format!("run {run_id:?} is not planned")),
                    Some(r) if r.status.is_over() => {
                        Some(format!("run {run_id:?} is already {}", r.status.as_str()))
                    }
                    Some(r) if !r.escort_ids.contains(to) => Some(format!(
                        "{to:?} is not rostered as an escort on run {run_id:?}"
                    )),
                    Some(_) => match &weapon.location {
                        WeaponLocation::Out { holder, run_id, .. } => Some(format!(
                            "weapon {serial:?} is already out with {holder:?} for run {run_id:?}"
                        )),
                        WeaponLocation::InArmory => None,
                    },
                };
                if let Some(problem) = r4 {
                    return Ok(refuse(
                        Rule::R4,
                        format!("R4: issue of {serial:?} refused: {problem}"),
                    ));
                }
                let left = self.ammo_lots.get(lot).copied().unwrap_or(0);
                if *rounds > left {
                    return Err(InputError::WrongState(format!(
                        "ammunition lot {lot:?} has {left} rounds left; {rounds} asked"
                    )));
                }
                Ok(accepted(Event::WeaponIssued {
                    run_id: run_id.clone(),
                    serial: serial.clone(),
                    lot: lot.clone(),
                    rounds: *rounds,
                    to: to.clone(),
                    gun_custodian: gun_custodian.clone(),
                    ammo_custodian: ammo_custodian.clone(),
                    approver: approver.clone(),
                    at: now,
                }))
            }
            Command::HandOverWeapon {
                serial,
                from,
                to,
                witness,
            } => {
                let weapon = self
                    .weapons
                    .get(serial)
                    .ok_or_else(|| InputError::not_found(format!("weapon {serial:?}")))?;
                self.person("to", to)?;
                let WeaponLocation::Out { holder, run_id, .. } = &weapon.location else {
                    return Ok(refused(
                        Rule::R5,
                        cmd,
                        None,
                        serial,
                        format!("R5: weapon {serial:?} is in the armory; it can only be issued"),
                        vec![],
                        now,
                    ));
                };
                let run = self.run(run_id)?;
                let problem = if holder != from {
                    Some(format!("{from:?} does not hold it ({holder:?} does)"))
                } else if !run.escort_ids.contains(to) {
                    Some(format!("{to:?} is not an escort of run {run_id:?}"))
                } else if run.status == RunStatus::Closed {
                    Some(format!("run {run_id:?} is closed"))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Ok(refused(
                        Rule::R4,
                        cmd,
                        Some(run_id),
                        serial,
                        format!("R4: handover of weapon {serial:?} refused: {problem}"),
                        vec![],
                        now,
                    ));
                }
                Ok(accepted(Event::WeaponHandedOver {
                    run_id: run_id.clone(),
                    serial: serial.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    witness: witness.clone(),
                    at: now,
                }))
            }
            Command::ReturnWeapon {
                serial,
                by,
                gun_custodian,
                ammo_custodian,
                rounds_returned,
            } => {
                let weapon = self
                    .weapons
                    .get(serial)
                    .ok_or_else(|| InputError::not_found(format!("weapon {serial:?}")))?;
                let WeaponLocation::Out {
                    holder,
                    run_id,
                    lot,
                    rounds,
                    spent,
                    ..
                } = &weapon.location
                else {
                    return Ok(refused(
                        Rule::R5,
                        cmd,
                        None,
                        serial,
                        format!(
                            "R5: weapon {serial:?} is already in the armory; nothing to return"
                        ),
                        vec![],
                        now,
                    ));
                };
                if holder != by {
                    return Ok(refused(
                        Rule::R4,
                        cmd,
                        Some(run_id),
                        serial,
                        format!(
                            "R4: weapon {serial:?} is held by {holder:?}; only the holder returns it (or hand it over first)"
                        ),
                        vec![],
                        now,
                    ));
                }
                if gun_custodian.is_empty()
                    || ammo_custodian.is_empty()
                    || gun_custodian == ammo_custodian
                {
                    return Ok(refused(
                        Rule::R3,
                        cmd,
                        Some(run_id),
                        serial,
                        "R3: a return is taken by the gun custodian and a different ammunition custodian".to_string(),
                        vec![],
                        now,
                    ));
                }
                Ok(accepted(Event::WeaponReturned {
                    run_id: run_id.clone(),
                    serial: serial.clone(),
                    lot: lot.clone(),
                    by: by.clone(),
                    gun_custodian: gun_custodian.clone(),
                    ammo_custodian: ammo_custodian.clone(),
                    rounds_issued: *rounds,
                    rounds_returned: *rounds_returned,
                    rounds_spent: *spent,
                    at: now,
                }))
            }
            Command::CloseRun { run_id } => {
                let run = self.run(run_id)?;
                if run.status.is_over() {
                    return Err(InputError::WrongState(format!(
                        "run {run_id:?} is already {}",
                        run.status.as_str()
                    )));
                }
                // R7 Close-out: every weapon and round back, every box of the manifest handed over.
                let out = self.weapons_out_for(run_id);
                let missing: Vec<&String> = run
                    .cash_boxes
                    .iter()
                    .filter(|b| !run.handed_over.contains(*b))
                    .collect();
                if out.is_empty() && !missing.is_empty() {
                    let list = missing
                        .iter()
                        .map(|b| b.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Ok(refused(
                        Rule::R7,
                        cmd,
                        Some(run_id),
                        run_id,
                        format!(
                            "R7: run {run_id:?} cannot close while cash boxes are not accounted for: {list}"
                        ),
                        vec![],
                        now,
                    ));
                }
                if !out.is_empty() {
                    let list = held_list(&out);
                    return Ok(refused(
                        Rule::R7,
                        cmd,
                        Some(run_id),
                        run_id,
                        format!("R7: run {run_id:?} cannot close while weapons are out: {list}"),
                        out,
                        now,
                    ));
                }
                Ok(accepted(Event::RunClosed {
                    run_id: run_id.clone(),
                    at: now,
                }))
            }
            Command::CancelRun { run_id, reason } => {
                require_id("reason", reason)?;
                let run = self.run(run_id)?;
                match run.status {
                    RunStatus::Planned => {}
                    RunStatus::Cancelled => return Ok(Outcome::NoChange),
                    RunStatus::Active | RunStatus::Returned => {
                        return Err(InputError::WrongState(format!(
                            "run {run_id:?} has departed: it is closed, not cancelled"
                        )));
                    }
                    RunStatus::Closed => {
                        return Err(InputError::WrongState(format!("run {run_id:?} is closed")));
                    }
                }
                // R7: every weapon issued for the run back in the armory first.
                let out = self.weapons_out_for(run_id);
                if !out.is_empty() {
                    let list = held_list(&out);
                    return Ok(refused(
                        Rule::R7,
                        cmd,
                        Some(run_id),
                        run_id,
                        format!(
                            "R7: run {run_id:?} cannot be cancelled while weapons issued for it are out: {list}; return them first"
                        ),
                        vec![],
                        now,
                    ));
                }
                Ok(accepted(Event::RunCancelled {
                    run_id: run_id.clone(),
                    reason: reason.clone(),
                    at: now,
                }))
            }
            Command::AcknowledgeAnomaly { anomaly_id, by } => {
                require_id("by", by)?;
                let (run_id, state) = self
                    .anomalies
                    .get(anomaly_id)
                    .ok_or_else(|| InputError::not_found(format!("anomaly {anomaly_id:?}")))?;
                if *state != AnomalyState::Open {
                    return Ok(Outcome::NoChange);
                }
                Ok(accepted(Event::AnomalyAcknowledged {
                    anomaly_id: anomaly_id.clone(),
                    run_id: run_id.clone(),
                    by: by.clone(),
                    at: now,
                }))
            }
            Command::ResolveAnomaly {
                anomaly_id,
                by,
                outcome,
                note,
            } => {
                require_id("by", by)?;
                require_id("outcome", outcome)?;
                let (run_id, state) = self
                    .anomalies
                    .get(anomaly_id)
                    .ok_or_else(|| InputError::not_found(format!("anomaly {anomaly_id:?}")))?;
                if *state == AnomalyState::Resolved {
                    return Err(InputError::WrongState(format!(
                        "anomaly {anomaly_id:?} is already resolved"
                    )));
                }
                Ok(accepted(Event::AnomalyResolved {
                    anomaly_id: anomaly_id.clone(),
                    run_id: run_id.clone(),
                    by: by.clone(),
                    outcome: outcome.clone(),
                    note: note.clone(),
                    at: now,
                }))
            }
        }
    }

    /// R1, then R9, for a plan or an amendment: the refusal, if any.
    fn check_plan(&self, cmd: &Command, plan: &RunPlan, now: Millis) -> Option<Outcome> {
        let run_id = plan.run_id.as_str();
        // R1 Armoured vehicle only.
        if let Some(refusal) = self.check_r1(cmd, run_id, &plan.vehicle_id, now) {
            return Some(refusal);
        }
        // R9 A whole crew.
        let problem = self.r9_crew_problem(&plan.driver_id, &plan.escort_ids)?;
        let known_run = self.runs.contains_key(run_id).then_some(run_id);
        Some(refused(
            Rule::R9,
            cmd,
            known_run,
            run_id,
            format!("R9: run {run_id:?} refused: {problem}"),
            vec![],
            now,
        ))
    }

    fn check_r1(
        &self,
        cmd: &Command,
        run_id: &str,
        vehicle_id: &str,
        now: Millis,
    ) -> Option<Outcome> {
        let problem = match self.vehicles.get(vehicle_id) {
            None => format!("vehicle {vehicle_id:?} is not registered"),
            Some(v) if !v.armoured => format!(
                "vehicle {vehicle_id:?} ({}) is not an armoured cash vehicle",
                v.plate
            ),
            Some(_) => return None,
        };
        let known_run = self.runs.contains_key(run_id).then_some(run_id);
        Some(refused(
            Rule::R1,
            cmd,
            known_run,
            vehicle_id,
            format!("R1: {problem}; cash moves only in a registered armoured vehicle"),
            vec![],
            now,
        ))
    }

    /// Folds an appended event into the state.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::VehicleRegistered {
                vehicle_id,
                plate,
                armoured,
                ..
            } => {
                self.vehicles.insert(
                    vehicle_id.clone(),
                    Vehicle {
                        plate: plate.clone(),
                        armoured: *armoured,
                    },
                );
            }
            Event::PersonRegistered {
                person_id,
                name,
                role,
                ..
            } => {
                self.people.insert(
                    person_id.clone(),
                    Person {
                        name: name.clone(),
                        role: *role,
                    },
                );
            }
            Event::WeaponRegistered { serial, kind, .. } => {
                self.weapons.insert(
                    serial.clone(),
                    Weapon {
                        kind: kind.clone(),
                        location: WeaponLocation::InArmory,
                    },
                );
            }
            Event::AmmoLotRegistered { lot, rounds, .. } => {
                self.ammo_lots.insert(lot.clone(), *rounds);
                self.ammo_registered.insert(lot.clone(), *rounds);
            }
            Event::AmmoCounted { lot, counted, .. } => {
                if let Some(left) = self.ammo_lots.get_mut(lot) {
                    *left = *counted;
                }
            }
            Event::AmmoDelivered { lot, rounds, .. } => {
                if let Some(left) = self.ammo_lots.get_mut(lot) {
                    *left = left.saturating_add(*rounds);
                }
            }
            Event::CheckpointRegistered { checkpoint, .. } => {
                self.checkpoints
                    .insert(checkpoint.checkpoint_id.clone(), checkpoint.clone());
            }
            Event::UnitBound {
                unit_id,
                gateway,
                vehicle_ids,
                ..
            } => {
                self.units.insert(
                    unit_id.clone(),
                    Unit {
                        gateway: *gateway,
                        vehicle_ids: vehicle_ids.clone(),
                        disabled: false,
                    },
                );
            }
            Event::UnitDisabled { unit_id, .. } => {
                if let Some(u) = self.units.get_mut(unit_id) {
                    u.disabled = true;
                }
            }
            Event::AccessDenied { .. } | Event::RunHeadSigned { .. } | Event::RecordRead { .. } => {
            }
            Event::CrewPinsSet {
                person_id,
                checkin_hash,
                duress_hash,
                ..
            } => {
                self.pins.insert(
                    person_id.clone(),
                    (checkin_hash.clone(), duress_hash.clone()),
                );
            }
            Event::RunAmended {
                run_id,
                vehicle_id,
                driver_id,
                escort_ids,
                route,
                stops,
                params,
                cash_boxes,
                ..
            } => {
                if let Some(run) = self.runs.get_mut(run_id) {
                    run.vehicle_id = vehicle_id.clone();
                    run.driver_id = driver_id.clone();
                    run.escort_ids = escort_ids.clone();
                    run.route_digest = route_digest(route);
                    run.stops = stops.clone();
                    run.params = params.clone();
                    run.cash_boxes = cash_boxes.clone();
                    // Readiness of escorts taken off the roster goes with them.
                    run.readiness.retain(|p, _| escort_ids.contains(p));
                }
            }
            Event::RunPlanned {
                run_id,
                vehicle_id,
                driver_id,
                escort_ids,
                route,
                stops,
                params,
                cash_boxes,
                at,
            } => {
                self.runs.insert(
                    run_id.clone(),
                    Run {
                        run_id: run_id.clone(),
                        vehicle_id: vehicle_id.clone(),
                        driver_id: driver_id.clone(),
                        escort_ids: escort_ids.clone(),
                        stops: stops.clone(),
                        params: params.clone(),
                        status: RunStatus::Planned,
                        planned_at: *at,
                        departed_at: None,
                        closed_at: None,
                        readiness: HashMap::new(),
                        cash_boxes: cash_boxes.clone(),
                        handed_over: Default::default(),
                        custody: BTreeSet::new(),
                        former_vehicles: Vec::new(),
                        route_digest: route_digest(route),
                    },
                );
            }
            Event::EscortReadied {
                run_id,
                person_id,
                weapon,
                vest,
                helmet,
                ..
            } => {
                if let Some(run) = self.runs.get_mut(run_id) {
                    run.readiness.insert(
                        person_id.clone(),
                        Readiness {
                            weapon: weapon.clone(),
                            vest: *vest,
                            helmet: *helmet,
                        },
                    );
                }
            }
            Event::RunDeparted {
                run_id,
                vehicle_id,
                at,
            } => {
                if let Some(run) = self.runs.get_mut(run_id) {
                    run.status = RunStatus::Active;
                    run.departed_at = Some(*at);
                }
                self.active_run_of_vehicle
                    .insert(vehicle_id.clone(), run_id.clone());
            }
            Event::RunCancelled { run_id, at, .. } => {
                if let Some(run) = self.runs.get_mut(run_id) {
                    run.status = RunStatus::Cancelled;
                    run.closed_at = Some(*at);
                }
            }
            Event::RunClosed { run_id, at } => {
                if let Some(run) = self.runs.get_mut(run_id) {
                    run.status = RunStatus::Closed;
                    run.closed_at = Some(*at);
                    if self.active_run_of_vehicle.get(&run.vehicle_id) == Some(run_id) {
                        self.active_run_of_vehicle.remove(&run.vehicle_id);
                    }
                }
            }
            Event::WeaponIssued {
                run_id,
                serial,
                lot,
                rounds,
                to,
                ..
            } => {
                self.custody_seq += 1;
                if let Some(w) = self.weapons.get_mut(serial) {
                    w.location = WeaponLocation::Out {
                        holder: to.clone(),
                        run_id: run_id.clone(),
                        lot: lot.clone(),
                        rounds: *rounds,
                        spent: 0,
                        since: self.custody_seq,
                    };
                }
                if let Some(left) = self.ammo_lots.get_mut(lot) {
                    *left = left.saturating_sub(*rounds);
                }
                if let Some(run) = self.runs.get_mut(run_id) {
                    run.custody
                        .insert(format!("{}{serial}", crate::event::streams::WEAPON));
                    run.custody
                        .insert(format!("{}{lot}", crate::event::streams::AMMO));
                }
            }
            Event::WeaponHandedOver { serial, to, .. } => {
                self.custody_seq += 1;
                if let Some(Weapon {
                    location: WeaponLocation::Out { holder, since, .. },
                    ..
                }) = self.weapons.get_mut(serial)
                {
                    *holder = to.clone();
                    *since = self.custody_seq;
                }
            }
            Event::IncidentReported {
                spent: Some(RoundsSpent { serial, rounds, .. }),
                ..
            } => {
                if let Some(Weapon {
                    location: WeaponLocation::Out { spent, .. },
                    ..
                }) = self.weapons.get_mut(serial)
                {
                    *spent = spent.saturating_add(*rounds);
                }
            }
            Event::VehicleSwapped {
                run_id,
                from_vehicle_id,
                to_vehicle_id,
                ..
            } => {
                if let Some(run) = self.runs.get_mut(run_id) {
                    let former = std::mem::replace(&mut run.vehicle_id, to_vehicle_id.clone());
                    run.former_vehicles.push(former);
                }
                if self.active_run_of_vehicle.get(from_vehicle_id) == Some(run_id) {
                    self.active_run_of_vehicle.remove(from_vehicle_id);
                }
                self.active_run_of_vehicle
                    .insert(to_vehicle_id.clone(), run_id.clone());
            }
            Event::WeaponReturned {
                run_id,
                serial,
                lot,
                rounds_returned,
                ..
            } => {
                if let Some(w) = self.weapons.get_mut(serial) {
                    w.location = WeaponLocation::InArmory;
                }
                if let Some(run) = self.runs.get_mut(run_id)
                    && run.status == RunStatus::Active
                {
                    run.status = RunStatus::Returned;
                }
                if let Some(left) = self.ammo_lots.get_mut(lot) {
                    *left = left.saturating_add(*rounds_returned);
                }
            }
            Event::AnomalyRaised { anomaly, .. } => {
                self.anomalies
                    .entry(anomaly.id.clone())
                    .or_insert((anomaly.run_id.clone(), AnomalyState::Open));
            }
            Event::AnomalyAcknowledged { anomaly_id, .. } => {
                if let Some((_, s)) = self.anomalies.get_mut(anomaly_id)
                    && *s == AnomalyState::Open
                {
                    *s = AnomalyState::Acknowledged;
                }
            }
            Event::AnomalyResolved { anomaly_id, .. } => {
                if let Some((_, s)) = self.anomalies.get_mut(anomaly_id) {
                    *s = AnomalyState::Resolved;
                }
            }
            Event::CashBoxesHandedOver { run_id, boxes, .. } => {
                if let Some(run) = self.runs.get_mut(run_id) {
                    run.handed_over.extend(boxes.iter().cloned());
                }
            }
            Event::FixesRecorded { .. }
            | Event::CheckedIn { .. }
            | Event::IncidentReported { .. }
            | Event::CommandRefused { .. }
            | Event::ClockTicked { .. } => {}
        }
    }
}

/// Metres from `p` to the nearest point of the polyline `route` (an equirectangular frame at
/// `p`'s latitude: exact to well under a metre over the few kilometres that matter here).
fn distance_to_route_m(p: LatLon, route: &[LatLon]) -> f64 {
    const M_PER_DEG: f64 = 111_195.08;
    let k = p.lat.to_radians().cos();
    let xy = |q: LatLon| ((q.lon - p.lon) * M_PER_DEG * k, (q.lat - p.lat) * M_PER_DEG);
    route
        .windows(2)
        .map(|w| {
            let ((ax, ay), (bx, by)) = (xy(w[0]), xy(w[1]));
            let (dx, dy) = (bx - ax, by - ay);
            let len2 = dx * dx + dy * dy;
            let t = if len2 > 0.0 {
                (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            (ax + t * dx).hypot(ay + t * dy)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Checks a plan's shape: route, stops, windows and parameters (issue: bad input is refused with
/// INVALID_ARGUMENT naming the field). A stop must be within reach of the route: no farther from
/// it than the corridor plus the stop's radius, else the vehicle cannot enter the stop without
/// leaving the corridor (the plan itself would be a route deviation); and its `arrive_by` must
/// come after `now`, the planning.
pub fn validate_plan(
    route: &[LatLon],
    stops: &[PlannedStop],
    params: &DetectionParams,
    now: Millis,
) -> Result<(), InputError> {
    if route.len() < 2 {
        return Err(InputError::invalid("route", "needs at least 2 points"));
    }
    if route.len() > MAX_ROUTE_POINTS {
        return Err(InputError::invalid(
            "route",
            format!("at most {MAX_ROUTE_POINTS} points, got {}", route.len()),
        ));
    }
    for (i, p) in route.iter().enumerate() {
        LatLon::new(p.lat, p.lon, &format!("route[{i}]"))?;
    }
    params.validate()?;
    let mut last_deadline: Option<Millis> = None;
    for (i, s) in stops.iter().enumerate() {
        require_id(&format!("stops[{i}].stop_id"), &s.stop_id)?;
        LatLon::new(
            s.position.lat,
            s.position.lon,
            &format!("stops[{i}].position"),
        )?;
        if !s.radius_m.is_finite() || s.radius_m <= 0.0 {
            return Err(InputError::invalid(
                format!("stops[{i}].radius_m"),
                "every stop needs a geofence radius > 0",
            ));
        }
        let reach_m = params.corridor_m + s.radius_m;
        let off_m = distance_to_route_m(s.position, route);
        if off_m > reach_m {
            return Err(InputError::invalid(
                format!("stops[{i}].position"),
                format!(
                    "{off_m:.0} m from the route; a stop must lie within the corridor plus its radius ({reach_m:.0} m) of the route, or the route must be planned through it"
                ),
            ));
        }
        if let Some(by) = s.arrive_by
            && by <= now
        {
            return Err(InputError::invalid(
                format!("stops[{i}].arrive_by"),
                format!(
                    "{:.0} s before the planning; a window must lie ahead",
                    now.secs_since(by)
                ),
            ));
        }
        if let (Some(prev), Some(this)) = (last_deadline, s.arrive_by)
            && this < prev
        {
            return Err(InputError::invalid(
                format!("stops[{i}].arrive_by"),
                "stop windows are out of order (earlier than the previous stop's)",
            ));
        }
        last_deadline = s.arrive_by.or(last_deadline);
        if stops[..i].iter().any(|o| o.stop_id == s.stop_id) {
            return Err(InputError::invalid(
                format!("stops[{i}].stop_id"),
                format!("duplicate stop id {:?}", s.stop_id),
            ));
        }
    }
    Ok(())
}
