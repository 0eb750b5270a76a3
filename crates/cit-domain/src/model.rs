//! Validated value types of the domain. Constructors check their input, so a value that exists
//! is valid (`LatLon::new` refuses NaN and out-of-range coordinates).

use serde::{Deserialize, Serialize};

use crate::time::Millis;
use crate::world::InputError;

/// A WGS84 position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

impl LatLon {
    /// Checked constructor; `field` names the input in the error.
    pub fn new(lat: f64, lon: f64, field: &str) -> Result<Self, InputError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(InputError::invalid(
                format!("{field}.lat"),
                format!("latitude must be a finite number in [-90, 90], got {lat}"),
            ));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(InputError::invalid(
                format!("{field}.lon"),
                format!("longitude must be a finite number in [-180, 180], got {lon}"),
            ));
        }
        Ok(LatLon { lat, lon })
    }
}

/// The roles of DOMAIN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Driver,
    Escort,
    GunCustodian,
    AmmoCustodian,
    Approver,
    OutletStaff,
    Dispatcher,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Driver => "driver",
            Role::Escort => "escort",
            Role::GunCustodian => "gun_custodian",
            Role::AmmoCustodian => "ammo_custodian",
            Role::Approver => "approver",
            Role::OutletStaff => "outlet_staff",
            Role::Dispatcher => "dispatcher",
        }
    }
}

/// A stop of a planned run with its geofence and the latest allowed arrival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStop {
    pub stop_id: String,
    pub name: String,
    pub position: LatLon,
    pub radius_m: f64,
    pub arrive_by: Option<Millis>,
    pub kind: String,
}

/// A police checkpoint registered through liaison, valid in `[valid_from, valid_to]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub checkpoint_id: String,
    pub position: LatLon,
    pub radius_m: f64,
    pub valid_from: Millis,
    pub valid_to: Millis,
}

/// Detection parameters of a run (SCENARIOS.md); every field has the documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectionParams {
    pub stop_speed_mps: f64,
    pub stop_radius_m: f64,
    pub stop_min_s: f64,
    pub unplanned_stop_s: f64,
    pub report_cover_s: f64,
    pub deviation_fixes: u32,
    pub deviation_s: f64,
    pub uturn_m: f64,
    pub max_gap_s: f64,
    pub checkin_grace_s: f64,
    pub late_grace_s: f64,
    pub overspeed_s: f64,
    pub corridor_m: f64,
    pub speed_limit_kmh: f64,
    pub checkin_interval_s: f64,
    /// A8: the farthest the replacement's last fix may be from the run's vehicle's at a swap.
    pub swap_radius_m: f64,
}

impl Default for DetectionParams {
    fn default() -> Self {
        DetectionParams {
            stop_speed_mps: 1.0,
            stop_radius_m: 30.0,
            stop_min_s: 20.0,
            unplanned_stop_s: 120.0,
            report_cover_s: 600.0,
            deviation_fixes: 3,
            deviation_s: 10.0,
            uturn_m: 50.0,
            max_gap_s: 30.0,
            checkin_grace_s: 60.0,
            late_grace_s: 300.0,
            overspeed_s: 10.0,
            corridor_m: 60.0,
            speed_limit_kmh: 90.0,
            checkin_interval_s: 600.0,
            swap_radius_m: 100.0,
        }
    }
}

impl DetectionParams {
    /// Checks every parameter is finite and positive where it must be; names the field.
    pub fn validate(&self) -> Result<(), InputError> {
        let positive = [
            ("params.stop_speed_mps", self.stop_speed_mps),
            ("params.stop_radius_m", self.stop_radius_m),
            ("params.unplanned_stop_s", self.unplanned_stop_s),
            ("params.uturn_m", self.uturn_m),
            ("params.max_gap_s", self.max_gap_s),
            ("corridor_m", self.corridor_m),
            ("speed_limit_kmh", self.speed_limit_kmh),
            ("checkin_interval_s", self.checkin_interval_s),
            ("params.swap_radius_m", self.swap_radius_m),
        ];
        for (field, v) in positive {
            if !v.is_finite() || v <= 0.0 {
                return Err(InputError::invalid(field, format!("must be > 0, got {v}")));
            }
        }
        let non_negative = [
            ("params.stop_min_s", self.stop_min_s),
            ("params.report_cover_s", self.report_cover_s),
            ("params.deviation_s", self.deviation_s),
            ("params.checkin_grace_s", self.checkin_grace_s),
            ("params.late_grace_s", self.late_grace_s),
            ("params.overspeed_s", self.overspeed_s),
        ];
        for (field, v) in non_negative {
            if !v.is_finite() || v < 0.0 {
                return Err(InputError::invalid(field, format!("must be >= 0, got {v}")));
            }
        }
        if self.deviation_fixes == 0 {
            return Err(InputError::invalid(
                "params.deviation_fixes",
                "must be >= 1",
            ));
        }
        Ok(())
    }
}

/// One GPS fix as recorded (validated at the ingest boundary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    pub seq: u64,
    pub t: Millis,
    pub lat: f64,
    pub lon: f64,
    pub speed_mps: f64,
    pub heading_deg: f64,
    pub accuracy_m: f64,
    pub ignition: bool,
    pub door_open: bool,
}

/// A crew check-in code. Duress answers exactly like ok towards the crew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckInCode {
    Ok,
    Duress,
}

/// What the crew reports en route (DOMAIN.md, en-route procedures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    Jam,
    Breakdown,
    Accident,
    PoliceCheck,
    Roadblock,
    Fire,
    Robbery,
    /// Warning shots or fire by an escort; carries the rounds fired (SCENARIOS.md).
    ShotsFired,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Jam => "jam",
            IncidentKind::Breakdown => "breakdown",
            IncidentKind::Accident => "accident",
            IncidentKind::PoliceCheck => "police_check",
            IncidentKind::Roadblock => "roadblock",
            IncidentKind::Fire => "fire",
            IncidentKind::Robbery => "robbery",
            IncidentKind::ShotsFired => "shots_fired",
        }
    }

    /// Reports dispatch must act on at once (A11 crew alarm): police, medical help, a
    /// replacement vehicle. A jam, a police check and a roadblock raise none of their own (A1's
    /// exemption, A3 and A4 use them).
    pub fn raises_crew_alarm(self) -> bool {
        matches!(
            self,
            IncidentKind::Robbery
                | IncidentKind::ShotsFired
                | IncidentKind::Accident
                | IncidentKind::Fire
                | IncidentKind::Breakdown
        )
    }

    /// Reports that explain a stop (SCENARIOS.md `report_cover_s`).
    pub fn covers_stop(self) -> bool {
        matches!(
            self,
            IncidentKind::Jam
                | IncidentKind::Breakdown
                | IncidentKind::Accident
                | IncidentKind::Fire
        )
    }
}

/// Maximum number of route vertices accepted in a plan.
pub const MAX_ROUTE_POINTS: usize = 50_000;
