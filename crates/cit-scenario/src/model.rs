//! The scenario file, as serde types mirroring SCENARIOS.md field for field.

use std::path::Path;

use cit_domain::{DetectionParams, Millis};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a cit-scenario/1 file: {reason}")]
    Parse { path: String, reason: String },
}

/// An RFC 3339 time, as milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<Millis, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| Millis(t.timestamp_millis()))
        .map_err(|e| format!("bad time {s:?}: {e}"))
}

pub fn format_time(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t.0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| t.0.to_string())
}

fn de_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    let s = String::deserialize(d)?;
    parse_time(&s).map_err(serde::de::Error::custom)
}

fn de_opt_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_time(&s).map_err(serde::de::Error::custom))
        .transpose()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Vehicle {
    pub id: String,
    #[serde(default)]
    pub plate: String,
    pub armoured: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Person {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub role: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Weapon {
    pub serial: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmmoLot {
    pub lot: String,
    pub rounds: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Checkpoint {
    pub id: String,
    pub lat: f64,
    pub lon: f64,
    pub radius_m: f64,
    #[serde(deserialize_with = "de_time")]
    pub valid_from: Millis,
    #[serde(deserialize_with = "de_time")]
    pub valid_to: Millis,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Stop {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub radius_m: f64,
    #[serde(default, deserialize_with = "de_opt_time")]
    pub arrive_by: Option<Millis>,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LineString {
    /// `[lon, lat]` pairs.
    pub coordinates: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Run {
    pub id: String,
    pub vehicle: String,
    pub driver: String,
    pub escorts: Vec<String>,
    pub route: LineString,
    pub corridor_m: Option<f64>,
    pub speed_limit_kmh: Option<f64>,
    pub checkin_interval_s: Option<f64>,
    #[serde(default)]
    pub stops: Vec<Stop>,
}

/// One timeline operation (SCENARIOS.md, "Timeline operations").
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    PlanRun {
        run: String,
    },
    IssueWeapon {
        run: String,
        serial: String,
        lot: String,
        rounds: u32,
        to: String,
        gun_custodian: String,
        ammo_custodian: String,
        approver: String,
    },
    EscortReady {
        run: String,
        person: String,
        weapon: Option<String>,
        vest: bool,
        helmet: bool,
    },
    Depart {
        run: String,
    },
    Fix {
        vehicle: String,
        seq: u64,
        lat: f64,
        lon: f64,
        speed_mps: f64,
        heading_deg: f64,
        accuracy_m: f64,
        ignition: bool,
        door_open: bool,
    },
    Checkin {
        run: String,
        person: String,
        code: String,
    },
    Report {
        run: String,
        person: String,
        kind: String,
        #[serde(default)]
        note: String,
        /// Rounds fired (`shots_fired`), as written: anything but a whole number >= 1 is no valid
        /// count (see [`valid_rounds`]), which still raises the alarm and spends nothing.
        #[serde(default)]
        rounds: Option<serde_json::Value>,
    },
    Handover {
        run: String,
        stop: String,
        boxes: Vec<String>,
        #[serde(default)]
        seals: Vec<u64>,
        handed_by: Vec<String>,
        received_by: Vec<String>,
    },
    SwapVehicle {
        run: String,
        /// The replacement.
        vehicle: String,
        #[serde(default)]
        boxes: Vec<String>,
        #[serde(default)]
        seals: Vec<u64>,
        handed_by: Vec<String>,
        received_by: Vec<String>,
    },
    ReturnWeapon {
        serial: String,
        by: String,
        gun_custodian: String,
        ammo_custodian: String,
        rounds_returned: u32,
    },
    CloseRun {
        run: String,
    },
    Tick,
}

/// A report's `rounds` as a count: a whole number from 1 to `u32::MAX`, else none.
pub fn valid_rounds(rounds: Option<&serde_json::Value>) -> Option<u32> {
    rounds
        .and_then(serde_json::Value::as_u64)
        .filter(|n| *n >= 1)
        .and_then(|n| u32::try_from(n).ok())
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    #[serde(deserialize_with = "de_time")]
    pub t: Millis,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedAnomaly {
    pub kind: String,
    pub run: String,
    #[serde(deserialize_with = "de_time")]
    pub at: Millis,
    pub tolerance_s: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedRefusal {
    pub index: usize,
    pub rule: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Expect {
    #[serde(default)]
    pub anomalies: Vec<ExpectedAnomaly>,
    #[serde(default)]
    pub refusals: Vec<ExpectedRefusal>,
    #[serde(default)]
    pub exhaustive: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Scenario {
    pub format: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Detection parameters; omitted ones take the defaults.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub vehicles: Vec<Vehicle>,
    #[serde(default)]
    pub people: Vec<Person>,
    #[serde(default)]
    pub weapons: Vec<Weapon>,
    #[serde(default)]
    pub ammo_lots: Vec<AmmoLot>,
    #[serde(default)]
    pub checkpoints: Vec<Checkpoint>,
    #[serde(default)]
    pub runs: Vec<Run>,
    pub timeline: Vec<Entry>,
    #[serde(default)]
    pub expect: Expect,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Scenario, Error> {
        let s: Scenario = serde_json::from_str(text).map_err(|e| Error::Parse {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        if s.format != "cit-scenario/1" {
            return Err(Error::Parse {
                path: origin.to_string(),
                reason: format!("format is {:?}", s.format),
            });
        }
        Ok(s)
    }

    /// Time of the first entry: when the declared registries are registered.
    pub fn start(&self) -> Millis {
        self.timeline.first().map(|e| e.t).unwrap_or_default()
    }

    pub fn run(&self, id: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.id == id)
    }

    /// The detection parameters of a run: run values over `params` over the defaults.
    pub fn detection_params(&self, run: &Run) -> Result<DetectionParams, String> {
        let mut merged =
            serde_json::to_value(DetectionParams::default()).map_err(|e| e.to_string())?;
        if let Some(obj) = merged.as_object_mut() {
            for (k, v) in &self.params {
                if obj.contains_key(k) {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        let mut p: DetectionParams =
            serde_json::from_value(merged).map_err(|e| format!("params: {e}"))?;
        if let Some(c) = run.corridor_m {
            p.corridor_m = c;
        }
        if let Some(v) = run.speed_limit_kmh {
            p.speed_limit_kmh = v;
        }
        if let Some(v) = run.checkin_interval_s {
            p.checkin_interval_s = v;
        }
        Ok(p)
    }
}
