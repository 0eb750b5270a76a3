//! The events of the log: past tense, versioned (`event_type()` is `Name.v1`), never edited.
//! Corrections are new events. Each event belongs to exactly one stream ([`Event::stream`]), so
//! every command appends to one stream and optimistic concurrency is per aggregate.

use serde::{Deserialize, Serialize};

use crate::model::{
    CheckInCode, Checkpoint, DetectionParams, Fix, IncidentKind, LatLon, PlannedStop, Role,
};
use crate::time::Millis;

/// Name of a stream in the store, e.g. `run-R-1`, `weapon-G-7731`.
pub type StreamName = String;

/// Prefixes of the streams, one per aggregate kind.
pub mod streams {
    pub const RUN: &str = "run-";
    pub const VEHICLE: &str = "vehicle-";
    pub const PERSON: &str = "person-";
    pub const WEAPON: &str = "weapon-";
    pub const AMMO: &str = "ammo-";
    pub const CHECKPOINT: &str = "checkpoint-";
    pub const UNIT: &str = "unit-";
    /// Calls refused by authentication or the access policy, aggregated.
    pub const SECURITY: &str = "security";
    /// Auditors' reads of the record.
    pub const READS: &str = "reads";
    /// A run's signed chain heads (`head-<run>`), apart from the run's own stream.
    pub const HEAD: &str = "head-";
    /// Scenario clock ticks (only in `--clock scenario`).
    pub const CLOCK: &str = "clock";
    /// Refusals of commands that name no run.
    pub const REFUSALS: &str = "refusals";
    /// Anomalies of no run (a lot's count that differs from the books) and their workflow.
    pub const ARMORY: &str = "armory";
}

/// Refused calls of one kind in an [`Event::AccessDenied`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedCalls {
    /// Who, as far as it was authenticated (empty: nobody).
    pub principal: String,
    pub rpc: String,
    /// The gRPC status ("unauthenticated", "permission_denied", ...).
    pub code: String,
    pub cause: String,
    /// The peer's IP address.
    pub peer: String,
    pub count: u64,
}

/// How severe an anomaly is for dispatch. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The anomaly kinds of SCENARIOS.md with their DOMAIN.md watch names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    UnplannedStop,
    RouteDeviation,
    SuspectedFakeCheckpoint,
    Roadblock,
    SignalLoss,
    MissedCheckin,
    Duress,
    LateArrival,
    StopSkipped,
    HandoverOutOfPlace,
    WeaponNotReturned,
    AmmoMismatch,
    Overspeed,
    CrewAlarm,
    SwapOutOfPlace,
    InventoryMismatch,
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::UnplannedStop => "unplanned_stop",
            AnomalyKind::RouteDeviation => "route_deviation",
            AnomalyKind::SuspectedFakeCheckpoint => "suspected_fake_checkpoint",
            AnomalyKind::Roadblock => "roadblock",
            AnomalyKind::SignalLoss => "signal_loss",
            AnomalyKind::MissedCheckin => "missed_checkin",
            AnomalyKind::Duress => "duress",
            AnomalyKind::LateArrival => "late_arrival",
            AnomalyKind::StopSkipped => "stop_skipped",
            AnomalyKind::HandoverOutOfPlace => "handover_out_of_place",
            AnomalyKind::WeaponNotReturned => "weapon_not_returned",
            AnomalyKind::AmmoMismatch => "ammo_mismatch",
            AnomalyKind::Overspeed => "overspeed",
            AnomalyKind::CrewAlarm => "crew_alarm",
            AnomalyKind::SwapOutOfPlace => "swap_out_of_place",
            AnomalyKind::InventoryMismatch => "inventory_mismatch",
        }
    }

    /// The DOMAIN.md watch this kind belongs to.
    pub fn watch(self) -> &'static str {
        match self {
            AnomalyKind::UnplannedStop => "A1",
            AnomalyKind::RouteDeviation => "A2",
            AnomalyKind::SuspectedFakeCheckpoint => "A3",
            AnomalyKind::Roadblock => "A4",
            AnomalyKind::SignalLoss => "A5",
            AnomalyKind::MissedCheckin | AnomalyKind::Duress => "A6",
            AnomalyKind::LateArrival | AnomalyKind::StopSkipped => "A7",
            AnomalyKind::HandoverOutOfPlace | AnomalyKind::SwapOutOfPlace => "A8",
            AnomalyKind::WeaponNotReturned
            | AnomalyKind::AmmoMismatch
            | AnomalyKind::InventoryMismatch => "A9",
            AnomalyKind::Overspeed => "A10",
            AnomalyKind::CrewAlarm => "A11",
        }
    }
}

/// An anomaly raised by the detection engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Deterministic: kind + run + log position of the triggering input (+ a discriminator),
    /// so a replay or a restart raises the same id and never a second copy.
    pub id: String,
    pub kind: AnomalyKind,
    pub run_id: String,
    pub vehicle_id: String,
    /// When the condition was met (a deadline, a fix time, a report time).
    pub at: Millis,
    pub severity: Severity,
    pub summary: String,
    pub position: Option<LatLon>,
    /// Why: distances, fixes, the report, the parameters used.
    pub evidence: serde_json::Value,
}

/// The engine's place when it raised an anomaly: the log position of the input it was handling
/// and its clock then (the latest time of any input so far, any run's). A run's deadlines can fire
/// on another run's input, or before late-arriving fixes of the run itself; re-detecting one run
/// from its own inputs replays these marks to fire them at the same point as live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineMark {
    pub position: u64,
    pub now: Millis,
}

/// Rounds a `shots_fired` report spent from the weapon its reporter held at that moment (the
/// latest of the run's weapons issued or handed to them), decided by the domain when the report
/// was recorded, so the return's reconciliation and the weapon's history agree with the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundsSpent {
    pub serial: String,
    pub lot: String,
    /// Rounds taken off the weapon's count: the rounds reported, at most what it still held.
    pub rounds: u32,
    /// What the weapon held before (issued minus earlier spends).
    pub held: u32,
}

/// A unit's numbering epoch and where it starts in the vehicle's seq: the unit's seq `n` is
/// stored as `base + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeqEpoch {
    pub epoch: u32,
    pub base: u64,
}

/// The stream of an anomaly's record and workflow: its run's, or the armory's for none.
fn anomaly_stream(run_id: &str) -> StreamName {
    if run_id.is_empty() {
        streams::ARMORY.to_string()
    } else {
        format!("{}{run_id}", streams::RUN)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Every event of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    VehicleRegistered {
        vehicle_id: String,
        plate: String,
        armoured: bool,
        at: Millis,
    },
    PersonRegistered {
        person_id: String,
        name: String,
        role: Role,
        at: Millis,
    },
    WeaponRegistered {
        serial: String,
        kind: String,
        at: Millis,
    },
    AmmoLotRegistered {
        lot: String,
        rounds: u32,
        at: Millis,
    },
    /// A lot counted in the armory: `counted` is the book figure from here on; `expected` what
    /// the books said before (a difference is an `inventory_mismatch`, A9).
    AmmoCounted {
        lot: String,
        counted: u32,
        expected: u32,
        by: String,
        at: Millis,
    },
    /// Rounds delivered into a lot (R5: every movement of ammunition is recorded).
    AmmoDelivered {
        lot: String,
        rounds: u32,
        at: Millis,
    },
    CheckpointRegistered {
        checkpoint: Checkpoint,
        at: Millis,
    },
    /// A unit's (or gateway's) vehicles, replacing any earlier binding.
    UnitBound {
        unit_id: String,
        gateway: bool,
        vehicle_ids: Vec<String>,
        at: Millis,
    },
    UnitDisabled {
        unit_id: String,
        reason: String,
        at: Millis,
    },
    /// A run (or a vehicle's fixes) read by an auditor or supervisor: who read what, by which
    /// call, when. On the `reads` stream.
    RecordRead {
        rpc: String,
        run_id: String,
        vehicle_id: String,
        by: String,
        at: Millis,
    },
    /// A run's chain head signed (Ed25519): the version of the run stream's last event then,
    /// its chain hash, the key's id and the signature (hex). On the `head-<run>` stream.
    RunHeadSigned {
        run_id: String,
        version: u64,
        chain_hash: String,
        key_id: String,
        signature: String,
        at: Millis,
    },
    /// A person's check-in and duress PINs, as argon2id hashes; a later one replaces them.
    CrewPinsSet {
        person_id: String,
        checkin_hash: String,
        duress_hash: String,
        at: Millis,
    },
    /// Calls refused by authentication or the access policy in `[from, to)`, counted by who
    /// (empty: anonymous), what, why and from where; `dropped` counts refusals beyond the
    /// distinct entries one record holds (a flood cannot grow the log without bound).
    AccessDenied {
        from: Millis,
        to: Millis,
        calls: Vec<DeniedCalls>,
        dropped: u64,
        at: Millis,
    },
    RunPlanned {
        run_id: String,
        vehicle_id: String,
        driver_id: String,
        escort_ids: Vec<String>,
        route: Vec<LatLon>,
        stops: Vec<PlannedStop>,
        params: DetectionParams,
        /// Manifest of cash boxes (absent in older events: none).
        #[serde(default)]
        cash_boxes: Vec<String>,
        at: Millis,
    },
    /// A planned run's new version: the whole plan again, and which of its parts changed.
    RunAmended {
        run_id: String,
        vehicle_id: String,
        driver_id: String,
        escort_ids: Vec<String>,
        route: Vec<LatLon>,
        stops: Vec<PlannedStop>,
        params: DetectionParams,
        cash_boxes: Vec<String>,
        changed: Vec<String>,
        at: Millis,
    },
    EscortReadied {
        run_id: String,
        person_id: String,
        weapon: Option<String>,
        vest: bool,
        helmet: bool,
        at: Millis,
    },
    RunDeparted {
        run_id: String,
        vehicle_id: String,
        at: Millis,
    },
    /// A batch of fixes of one vehicle; `run_id` is the run active when they were ingested.
    /// Their `seq` is the vehicle's, strictly increasing across its units: a unit numbering in
    /// a later epoch (a replaced or reset unit, from 1 again) is stored at `base + its seq`.
    FixesRecorded {
        vehicle_id: String,
        run_id: Option<String>,
        fixes: Vec<Fix>,
        /// Set on the first batch of a new numbering epoch (absent otherwise, and in older
        /// events: epoch 0, base 0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<SeqEpoch>,
    },
    CheckedIn {
        run_id: String,
        person_id: String,
        code: CheckInCode,
        at: Millis,
    },
    IncidentReported {
        run_id: String,
        person_id: String,
        kind: IncidentKind,
        note: String,
        /// Rounds fired, as reported (`shots_fired` only; absent in older events and when the
        /// crew gave no valid count).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rounds: Option<u32>,
        /// What those rounds were spent from; none when the reporter held no weapon of the run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spent: Option<RoundsSpent>,
        at: Millis,
    },
    CashBoxesHandedOver {
        run_id: String,
        stop_id: String,
        boxes: Vec<String>,
        seals: Vec<u64>,
        handed_by: Vec<String>,
        received_by: Vec<String>,
        at: Millis,
    },
    WeaponIssued {
        run_id: String,
        serial: String,
        lot: String,
        rounds: u32,
        to: String,
        gun_custodian: String,
        ammo_custodian: String,
        approver: String,
        at: Millis,
    },
    WeaponHandedOver {
        run_id: String,
        serial: String,
        from: String,
        to: String,
        witness: String,
        at: Millis,
    },
    WeaponReturned {
        run_id: String,
        serial: String,
        lot: String,
        by: String,
        gun_custodian: String,
        ammo_custodian: String,
        rounds_issued: u32,
        rounds_returned: u32,
        /// Rounds reported fired from it while out (A11): the return should bring back
        /// `rounds_issued - rounds_spent` (absent in older events: 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        rounds_spent: u32,
        at: Millis,
    },
    /// R8: the run's cash moved to a replacement vehicle; from here on the run is the
    /// replacement's, and `from_vehicle_id` is on no run.
    VehicleSwapped {
        run_id: String,
        from_vehicle_id: String,
        to_vehicle_id: String,
        boxes: Vec<String>,
        seals: Vec<u64>,
        handed_by: Vec<String>,
        received_by: Vec<String>,
        at: Millis,
    },
    /// A command the rules refused: recorded, changes nothing else.
    CommandRefused {
        rule: String,
        command: String,
        run_id: Option<String>,
        subject: String,
        message: String,
        /// For R7: the weapons still out, as (serial, holder).
        weapons_out: Vec<(String, String)>,
        at: Millis,
    },
    RunClosed {
        run_id: String,
        at: Millis,
    },
    /// A planned run called off before departure; it never becomes active.
    RunCancelled {
        run_id: String,
        reason: String,
        at: Millis,
    },
    /// Scenario time passed with no input.
    ClockTicked {
        at: Millis,
    },
    AnomalyRaised {
        anomaly: Anomaly,
        /// Where the engine stood when it raised it (absent in older events).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mark: Option<EngineMark>,
    },
    AnomalyAcknowledged {
        anomaly_id: String,
        run_id: String,
        by: String,
        at: Millis,
    },
    AnomalyResolved {
        anomaly_id: String,
        run_id: String,
        by: String,
        outcome: String,
        note: String,
        at: Millis,
    },
}

impl Event {
    /// `Name.v1`: the stored event type. A changed shape gets a new version, never an edit.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::VehicleRegistered { .. } => "VehicleRegistered.v1",
            Event::PersonRegistered { .. } => "PersonRegistered.v1",
            Event::WeaponRegistered { .. } => "WeaponRegistered.v1",
            Event::AmmoLotRegistered { .. } => "AmmoLotRegistered.v1",
            Event::AmmoDelivered { .. } => "AmmoDelivered.v1",
            Event::AmmoCounted { .. } => "AmmoCounted.v1",
            Event::CheckpointRegistered { .. } => "CheckpointRegistered.v1",
            Event::UnitBound { .. } => "UnitBound.v1",
            Event::UnitDisabled { .. } => "UnitDisabled.v1",
            Event::AccessDenied { .. } => "AccessDenied.v1",
            Event::CrewPinsSet { .. } => "CrewPinsSet.v1",
            Event::RunHeadSigned { .. } => "RunHeadSigned.v1",
            Event::RecordRead { .. } => "RecordRead.v1",
            Event::RunPlanned { .. } => "RunPlanned.v1",
            Event::RunAmended { .. } => "RunAmended.v1",
            Event::EscortReadied { .. } => "EscortReadied.v1",
            Event::RunDeparted { .. } => "RunDeparted.v1",
            Event::FixesRecorded { .. } => "FixesRecorded.v1",
            Event::CheckedIn { .. } => "CheckedIn.v1",
            Event::IncidentReported { .. } => "IncidentReported.v1",
            Event::CashBoxesHandedOver { .. } => "CashBoxesHandedOver.v1",
            Event::WeaponIssued { .. } => "WeaponIssued.v1",
            Event::WeaponHandedOver { .. } => "WeaponHandedOver.v1",
            Event::WeaponReturned { .. } => "WeaponReturned.v1",
            Event::VehicleSwapped { .. } => "VehicleSwapped.v1",
            Event::CommandRefused { .. } => "CommandRefused.v1",
            Event::RunClosed { .. } => "RunClosed.v1",
            Event::RunCancelled { .. } => "RunCancelled.v1",
            Event::ClockTicked { .. } => "ClockTicked.v1",
            Event::AnomalyRaised { .. } => "AnomalyRaised.v1",
            Event::AnomalyAcknowledged { .. } => "AnomalyAcknowledged.v1",
            Event::AnomalyResolved { .. } => "AnomalyResolved.v1",
        }
    }

    /// The stream this event is appended to.
    pub fn stream(&self) -> StreamName {
        use streams::*;
        match self {
            Event::VehicleRegistered { vehicle_id, .. } => format!("{VEHICLE}{vehicle_id}"),
            Event::FixesRecorded {
                vehicle_id, run_id, ..
            } => match run_id {
                Some(r) => format!("{RUN}{r}"),
                None => format!("{VEHICLE}{vehicle_id}"),
            },
            Event::PersonRegistered { person_id, .. } | Event::CrewPinsSet { person_id, .. } => {
                format!("{PERSON}{person_id}")
            }
            Event::WeaponRegistered { serial, .. }
            | Event::WeaponIssued { serial, .. }
            | Event::WeaponHandedOver { serial, .. }
            | Event::WeaponReturned { serial, .. } => format!("{WEAPON}{serial}"),
            Event::AmmoLotRegistered { lot, .. }
            | Event::AmmoDelivered { lot, .. }
            | Event::AmmoCounted { lot, .. } => format!("{AMMO}{lot}"),
            Event::CheckpointRegistered { checkpoint, .. } => {
                format!("{CHECKPOINT}{}", checkpoint.checkpoint_id)
            }
            Event::UnitBound { unit_id, .. } | Event::UnitDisabled { unit_id, .. } => {
                format!("{UNIT}{unit_id}")
            }
            Event::AccessDenied { .. } => SECURITY.to_string(),
            Event::RunHeadSigned { run_id, .. } => format!("{HEAD}{run_id}"),
            Event::RecordRead { .. } => READS.to_string(),
            Event::RunPlanned { run_id, .. }
            | Event::RunAmended { run_id, .. }
            | Event::EscortReadied { run_id, .. }
            | Event::RunDeparted { run_id, .. }
            | Event::CheckedIn { run_id, .. }
            | Event::IncidentReported { run_id, .. }
            | Event::CashBoxesHandedOver { run_id, .. }
            | Event::VehicleSwapped { run_id, .. }
            | Event::RunClosed { run_id, .. }
            | Event::RunCancelled { run_id, .. } => format!("{RUN}{run_id}"),
            // An anomaly of no run (an inventory count) lives on the armory's stream.
            Event::AnomalyAcknowledged { run_id, .. } | Event::AnomalyResolved { run_id, .. } => {
                anomaly_stream(run_id)
            }
            Event::AnomalyRaised { anomaly, .. } => anomaly_stream(&anomaly.run_id),
            Event::CommandRefused { run_id, .. } => match run_id {
                Some(r) => format!("{RUN}{r}"),
                None => REFUSALS.to_string(),
            },
            Event::ClockTicked { .. } => CLOCK.to_string(),
        }
    }

    /// The run the event belongs to or changes, if any (custody events name theirs).
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Event::RunPlanned { run_id, .. }
            | Event::RunAmended { run_id, .. }
            | Event::EscortReadied { run_id, .. }
            | Event::RunDeparted { run_id, .. }
            | Event::CheckedIn { run_id, .. }
            | Event::IncidentReported { run_id, .. }
            | Event::CashBoxesHandedOver { run_id, .. }
            | Event::VehicleSwapped { run_id, .. }
            | Event::WeaponIssued { run_id, .. }
            | Event::WeaponHandedOver { run_id, .. }
            | Event::WeaponReturned { run_id, .. }
            | Event::RunClosed { run_id, .. }
            | Event::RunCancelled { run_id, .. }
            | Event::AnomalyAcknowledged { run_id, .. }
            | Event::AnomalyResolved { run_id, .. } => Some(run_id),
            Event::AnomalyRaised { anomaly, .. } => Some(&anomaly.run_id),
            Event::FixesRecorded { run_id, .. } | Event::CommandRefused { run_id, .. } => {
                run_id.as_deref()
            }
            Event::VehicleRegistered { .. }
            | Event::PersonRegistered { .. }
            | Event::WeaponRegistered { .. }
            | Event::AmmoLotRegistered { .. }
            | Event::AmmoDelivered { .. }
            | Event::AmmoCounted { .. }
            | Event::CheckpointRegistered { .. }
            | Event::UnitBound { .. }
            | Event::UnitDisabled { .. }
            | Event::AccessDenied { .. }
            | Event::CrewPinsSet { .. }
            | Event::RunHeadSigned { .. }
            | Event::RecordRead { .. }
            | Event::ClockTicked { .. } => None,
        }
    }

    /// The time the event speaks for: the last fix of a batch, the anomaly's `at`, otherwise
    /// the (server or scenario) time it was recorded.
    pub fn time(&self) -> Millis {
        match self {
            Event::FixesRecorded { fixes, .. } => fixes.last().map(|f| f.t).unwrap_or_default(),
            Event::AnomalyRaised { anomaly, .. } => anomaly.at,
            Event::VehicleRegistered { at, .. }
            | Event::PersonRegistered { at, .. }
            | Event::WeaponRegistered { at, .. }
            | Event::AmmoLotRegistered { at, .. }
            | Event::AmmoDelivered { at, .. }
            | Event::AmmoCounted { at, .. }
            | Event::CheckpointRegistered { at, .. }
            | Event::UnitBound { at, .. }
            | Event::UnitDisabled { at, .. }
            | Event::AccessDenied { at, .. }
            | Event::CrewPinsSet { at, .. }
            | Event::RunHeadSigned { at, .. }
            | Event::RecordRead { at, .. }
            | Event::RunPlanned { at, .. }
            | Event::RunAmended { at, .. }
            | Event::EscortReadied { at, .. }
            | Event::RunDeparted { at, .. }
            | Event::CheckedIn { at, .. }
            | Event::IncidentReported { at, .. }
            | Event::CashBoxesHandedOver { at, .. }
            | Event::VehicleSwapped { at, .. }
            | Event::WeaponIssued { at, .. }
            | Event::WeaponHandedOver { at, .. }
            | Event::WeaponReturned { at, .. }
            | Event::CommandRefused { at, .. }
            | Event::RunClosed { at, .. }
            | Event::RunCancelled { at, .. }
            | Event::ClockTicked { at }
            | Event::AnomalyAcknowledged { at, .. }
            | Event::AnomalyResolved { at, .. } => *at,
        }
    }

    /// JSON encoding as stored.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        // Fixes are nearly every event of the log. The generic path of an internally tagged enum
        // buffers the whole object into an intermediate tree before it knows the variant: a third
        // of the live engine's time per event (BENCHMARKS.md, 2026-12-06). serde writes the tag
        // first, so a fix batch is known by its first bytes and read straight into its fields;
        // anything else (or a tag written elsewhere) takes the generic path.
        #[derive(Deserialize)]
        struct Fixes {
            vehicle_id: String,
            run_id: Option<String>,
            fixes: Vec<Fix>,
            #[serde(default)]
            epoch: Option<SeqEpoch>,
        }
        if bytes.starts_with(br#"{"type":"FixesRecorded","#) {
            let f: Fixes = serde_json::from_slice(bytes)?;
            return Ok(Event::FixesRecorded {
                vehicle_id: f.vehicle_id,
                run_id: f.run_id,
                fixes: f.fixes,
                epoch: f.epoch,
            });
        }
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(seq: u64) -> Fix {
        Fix {
            seq,
            t: Millis(1_700_000_000_000 + seq as i64 * 1000),
            lat: 57.7089,
            lon: 11.9746,
            speed_mps: 12.5,
            heading_deg: 270.0,
            accuracy_m: 4.0,
            ignition: true,
            door_open: seq.is_multiple_of(2),
        }
    }

    #[test]
    fn a_fix_batch_reads_the_same_by_its_short_path_as_by_the_generic_one() {
        for event in [
            Event::FixesRecorded {
                vehicle_id: "V-1".into(),
                run_id: Some("R-\"quoted\"".into()),
                fixes: vec![fix(1), fix(2)],
                epoch: None,
            },
            Event::FixesRecorded {
                vehicle_id: "V-2".into(),
                run_id: None,
                fixes: vec![],
                epoch: Some(SeqEpoch { epoch: 2, base: 40 }),
            },
        ] {
            let json = event.to_json();
            assert!(
                json.starts_with(br#"{"type":"FixesRecorded","#),
                "the tag leads"
            );
            let generic: Event = serde_json::from_slice(&json).expect("generic");
            assert_eq!(Event::from_json(&json).expect("short path"), generic);
            assert_eq!(generic, event);
        }
        // A batch whose tag is not first, and any other event, take the generic path.
        let late_tag = br#"{"vehicle_id":"V-3","run_id":null,"fixes":[],"type":"FixesRecorded"}"#;
        assert!(matches!(
            Event::from_json(late_tag),
            Ok(Event::FixesRecorded { run_id: None, .. })
        ));
        let other = Event::ClockTicked { at: Millis(5) };
        assert_eq!(Event::from_json(&other.to_json()).expect("decode"), other);
        // A malformed batch is an error, not a default.
        assert!(Event::from_json(br#"{"type":"FixesRecorded","vehicle_id":7}"#).is_err());
    }
}
