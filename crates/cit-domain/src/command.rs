//! Commands: what a caller asks the domain to do. Validated shapes (positions, parameters) come
//! in already checked by the boundary; the rules in `world` decide.

use crate::model::{
    CheckInCode, Checkpoint, DetectionParams, IncidentKind, LatLon, PlannedStop, Role,
};

/// A run's plan: what `PlanRun` proposes, and `AmendRun` proposes again for a planned run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub run_id: String,
    pub vehicle_id: String,
    pub driver_id: String,
    pub escort_ids: Vec<String>,
    pub route: Vec<LatLon>,
    pub stops: Vec<PlannedStop>,
    pub params: DetectionParams,
    /// Manifest of cash boxes; close-out waits for each to be handed over (R7).
    pub cash_boxes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    RegisterVehicle {
        vehicle_id: String,
        plate: String,
        armoured: bool,
    },
    RegisterPerson {
        person_id: String,
        name: String,
        role: Role,
    },
    RegisterWeapon {
        serial: String,
        kind: String,
    },
    RegisterAmmoLot {
        lot: String,
        rounds: u32,
    },
    RegisterCheckpoint(Checkpoint),
    /// A telematics unit (or a gateway, for several vehicles) bound to the vehicles it may
    /// report for; binding again replaces the set.
    BindUnit {
        unit_id: String,
        gateway: bool,
        vehicle_ids: Vec<String>,
    },
    /// A crew member's check-in and duress PINs, as argon2id hashes (PHC strings): citd keeps
    /// nothing else of them.
    SetCrewPins {
        person_id: String,
        checkin_hash: String,
        duress_hash: String,
    },
    /// A unit that may no longer report (lost, stolen, replaced): its open streams end.
    DisableUnit {
        unit_id: String,
        reason: String,
    },
    /// A lot counted in the armory.
    CountAmmoLot {
        lot: String,
        counted: u32,
        by: String,
    },
    /// Rounds delivered into a registered lot.
    DeliverAmmo {
        lot: String,
        rounds: u32,
    },
    PlanRun(RunPlan),
    /// A planned run planned again (a new version): the whole plan, as `PlanRun`.
    AmendRun(RunPlan),
    EscortReady {
        run_id: String,
        person_id: String,
        weapon: Option<String>,
        vest: bool,
        helmet: bool,
    },
    Depart {
        run_id: String,
    },
    CheckIn {
        run_id: String,
        person_id: String,
        code: CheckInCode,
    },
    ReportIncident {
        run_id: String,
        person_id: String,
        kind: IncidentKind,
        note: String,
        /// Rounds fired (`shots_fired`); none or 0 is no valid count: nothing is spent, and the
        /// alarm is raised all the same.
        rounds: Option<u32>,
    },
    HandOverCashBoxes {
        run_id: String,
        stop_id: String,
        boxes: Vec<String>,
        seals: Vec<u64>,
        handed_by: Vec<String>,
        received_by: Vec<String>,
    },
    /// R8: the cash moves to a replacement vehicle after a breakdown.
    SwapVehicle {
        run_id: String,
        vehicle_id: String,
        boxes: Vec<String>,
        seals: Vec<u64>,
        handed_by: Vec<String>,
        received_by: Vec<String>,
    },
    IssueWeapon {
        run_id: String,
        serial: String,
        lot: String,
        rounds: u32,
        to: String,
        gun_custodian: String,
        ammo_custodian: String,
        approver: String,
    },
    HandOverWeapon {
        serial: String,
        from: String,
        to: String,
        witness: String,
    },
    ReturnWeapon {
        serial: String,
        by: String,
        gun_custodian: String,
        ammo_custodian: String,
        rounds_returned: u32,
    },
    CloseRun {
        run_id: String,
    },
    /// A planned run that will not depart.
    CancelRun {
        run_id: String,
        reason: String,
    },
    AcknowledgeAnomaly {
        anomaly_id: String,
        by: String,
    },
    ResolveAnomaly {
        anomaly_id: String,
        by: String,
        outcome: String,
        note: String,
    },
}

impl Command {
    /// A plan as the amendment of the run it names (`PlanRun` -> `AmendRun`, the same plan);
    /// any other command as it is.
    pub fn into_amendment(self) -> Command {
        match self {
            Command::PlanRun(plan) => Command::AmendRun(plan),
            other => other,
        }
    }

    /// Short name used in refusal records and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterVehicle { .. } => "register_vehicle",
            Command::RegisterPerson { .. } => "register_person",
            Command::RegisterWeapon { .. } => "register_weapon",
            Command::RegisterAmmoLot { .. } => "register_ammo_lot",
            Command::RegisterCheckpoint(_) => "register_checkpoint",
            Command::BindUnit { .. } => "bind_unit",
            Command::DisableUnit { .. } => "disable_unit",
            Command::SetCrewPins { .. } => "set_crew_pins",
            Command::DeliverAmmo { .. } => "deliver_ammo",
            Command::CountAmmoLot { .. } => "count_ammo_lot",
            Command::PlanRun(_) => "plan_run",
            Command::AmendRun(_) => "amend_run",
            Command::EscortReady { .. } => "escort_ready",
            Command::Depart { .. } => "depart",
            Command::CheckIn { .. } => "checkin",
            Command::ReportIncident { .. } => "report",
            Command::HandOverCashBoxes { .. } => "handover",
            Command::SwapVehicle { .. } => "swap_vehicle",
            Command::IssueWeapon { .. } => "issue_weapon",
            Command::HandOverWeapon { .. } => "hand_over_weapon",
            Command::ReturnWeapon { .. } => "return_weapon",
            Command::CloseRun { .. } => "close_run",
            Command::CancelRun { .. } => "cancel_run",
            Command::AcknowledgeAnomaly { .. } => "acknowledge_anomaly",
            Command::ResolveAnomaly { .. } => "resolve_anomaly",
        }
    }
}
