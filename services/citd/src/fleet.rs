//! The dispatch read model: every run's live state — where the vehicle is, how fast, how old its
//! last fix is, its standing along the plan, the crew and their last check-in, the weapons out —
//! fed in log order by the engine worker, so it always agrees with the anomalies it shows.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use cit_domain::event::Event;
use cit_domain::{LatLon, Millis};
use cit_engine::RunStanding;
use cit_engine::frame::haversine_m;
use cit_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::anomalies::Anomalies;
use crate::grpc::{anomaly_to_pb, e7, pb_latlon, severity_to_pb, ts};
use crate::watch::{Moved, MovedBatch, Numbered};

/// Slowest speed an ETA assumes, m/s (30 km/h): a standing vehicle still gets an estimate.
const ETA_MIN_SPEED_MPS: f64 = 30.0 / 3.6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    Planned,
    Active,
    Returned,
    Closed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SeenFix {
    t: Millis,
    position: LatLon,
    speed_mps: f64,
    heading_deg: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEntry {
    vehicle_id: String,
    status: Status,
    driver_id: String,
    escorts: Vec<String>,
    last_checkin: HashMap<String, Millis>,
    weapons_out: BTreeSet<String>,
    last_fix: Option<SeenFix>,
    standing: Option<RunStanding>,
}

/// Every run's entry by run id. Looked up for every logged event, so hashed with foldhash
/// rather than SipHash (which took most of `Fleet::apply`'s time; run ids come from planning,
/// not from strangers, and the seed is still random per process).
pub type Runs = foldhash::HashMap<String, RunEntry>;

#[derive(Debug, Default)]
pub struct Fleet {
    runs: RwLock<Runs>,
}

impl Fleet {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Runs> {
        self.runs.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Runs> {
        self.runs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds one logged event in.
    pub fn apply(&self, e: &Event) {
        let mut runs = self.write();
        match e {
            Event::RunPlanned {
                run_id,
                vehicle_id,
                driver_id,
                escort_ids,
                ..
            } => {
                runs.insert(
                    run_id.clone(),
                    RunEntry {
                        vehicle_id: vehicle_id.clone(),
                        status: Status::Planned,
                        driver_id: driver_id.clone(),
                        escorts: escort_ids.clone(),
                        last_checkin: HashMap::new(),
                        weapons_out: BTreeSet::new(),
                        last_fix: None,
                        standing: None,
                    },
                );
            }
            Event::RunAmended {
                run_id,
                vehicle_id,
                driver_id,
                escort_ids,
                ..
            } => {
                if let Some(r) = runs.get_mut(run_id) {
                    r.vehicle_id = vehicle_id.clone();
                    r.driver_id = driver_id.clone();
                    r.escorts = escort_ids.clone();
                }
            }
            Event::RunDeparted { run_id, .. } => set_status(&mut runs, run_id, Status::Active),
            // R8: the run is on its replacement from here on. Its last fix stays until the
            // replacement's first (the two stood together at the swap, or A8 says they did not).
            Event::VehicleSwapped {
                run_id,
                to_vehicle_id,
                ..
            } => {
                if let Some(r) = runs.get_mut(run_id) {
                    r.vehicle_id = to_vehicle_id.clone();
                }
            }
            Event::RunClosed { run_id, .. } => set_status(&mut runs, run_id, Status::Closed),
            Event::RunCancelled { run_id, .. } => set_status(&mut runs, run_id, Status::Cancelled),
            Event::WeaponIssued { run_id, serial, .. } => {
                if let Some(r) = runs.get_mut(run_id) {
                    r.weapons_out.insert(serial.clone());
                }
            }
            Event::WeaponReturned { run_id, serial, .. } => {
                if let Some(r) = runs.get_mut(run_id) {
                    r.weapons_out.remove(serial);
                    if r.status == Status::Active {
                        r.status = Status::Returned;
                    }
                }
            }
            Event::CheckedIn {
                run_id,
                person_id,
                at,
                ..
            } => {
                // Duress counts as a check-in here too: nothing in dispatch's crew view differs.
                if let Some(r) = runs.get_mut(run_id) {
                    r.last_checkin.insert(person_id.clone(), *at);
                }
            }
            Event::FixesRecorded {
                vehicle_id,
                run_id: Some(run_id),
                fixes,
                ..
            } => {
                // Only the run's current vehicle (a swap may race a fix batch in flight).
                if let (Some(r), Some(f)) = (
                    runs.get_mut(run_id).filter(|r| r.vehicle_id == *vehicle_id),
                    fixes.last(),
                ) {
                    r.last_fix = Some(SeenFix {
                        t: f.t,
                        position: LatLon {
                            lat: f.lat,
                            lon: f.lon,
                        },
                        speed_mps: f.speed_mps,
                        heading_deg: f.heading_deg,
                    });
                }
            }
            _ => {}
        }
    }

    /// Every run's entry, for a snapshot.
    pub fn export(&self) -> Runs {
        self.read().clone()
    }

    /// Replaces the model with a snapshot's.
    pub fn import(&self, runs: Runs) {
        *self.write() = runs;
    }

    pub fn set_standing(&self, run_id: &str, standing: Option<RunStanding>) {
        if let Some(r) = self.write().get_mut(run_id) {
            r.standing = standing;
        }
    }

    /// The view of one run at `now`.
    pub fn view(&self, run_id: &str, now: Millis, anomalies: &Anomalies) -> Option<pb::RunView> {
        let runs = self.read();
        let r = runs.get(run_id)?;
        Some(view(run_id, r, now, anomalies))
    }

    /// The compact position updates of `runs` that have a fix (for watchers), in one batch, the
    /// model read once for them.
    pub fn moved_many(&self, runs: &[Numbered], anomalies: &Anomalies) -> MovedBatch {
        let model = self.read();
        let mut batch = MovedBatch::default();
        for run in runs {
            let run_id = &*run.run_id;
            let Some((r, f)) = model.get(run_id).and_then(|r| Some((r, r.last_fix?))) else {
                continue;
            };
            let top = anomalies
                .top_open_severity(run_id)
                .map(|s| severity_to_pb(s) as i32)
                .unwrap_or_default();
            let row = Moved {
                lat_e7: e7(f.position.lat),
                lon_e7: e7(f.position.lon),
                speed_mps: f.speed_mps as f32,
                heading_deg: f.heading_deg as f32,
                last_fix_at_ms: f.t.0,
                progress_m: r
                    .standing
                    .as_ref()
                    .and_then(|s| s.progress_m)
                    .unwrap_or_default() as f32,
                top_open_severity: top,
            };
            batch.push(run, row);
        }
        batch
    }

    /// Runs departed and not closed, by run id.
    pub fn active(&self, now: Millis, anomalies: &Anomalies) -> Vec<pb::RunView> {
        let runs = self.read();
        let mut ids: Vec<&String> = runs
            .iter()
            .filter(|(_, r)| matches!(r.status, Status::Active | Status::Returned))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids.into_iter()
            .map(|id| view(id, &runs[id], now, anomalies))
            .collect()
    }

    /// The `k` vehicles of active runs nearest to `point`, with their distance in metres.
    pub fn nearest(&self, point: LatLon, k: usize) -> Vec<pb::NearestVehicle> {
        let runs = self.read();
        let mut found: Vec<pb::NearestVehicle> = runs
            .iter()
            .filter(|(_, r)| matches!(r.status, Status::Active | Status::Returned))
            .filter_map(|(id, r)| {
                let f = r.last_fix?;
                Some(pb::NearestVehicle {
                    vehicle_id: r.vehicle_id.clone(),
                    run_id: id.clone(),
                    position: Some(pb_latlon(f.position)),
                    distance_m: haversine_m(point, f.position),
                })
            })
            .collect();
        found.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m));
        found.truncate(k);
        found
    }
}

fn set_status(runs: &mut Runs, run_id: &str, status: Status) {
    if let Some(r) = runs.get_mut(run_id) {
        r.status = status;
    }
}

fn view(run_id: &str, r: &RunEntry, now: Millis, anomalies: &Anomalies) -> pb::RunView {
    let status = match r.status {
        Status::Planned => pb::RunStatus::Planned,
        Status::Active => pb::RunStatus::Active,
        Status::Returned => pb::RunStatus::Returned,
        Status::Closed => pb::RunStatus::Closed,
        Status::Cancelled => pb::RunStatus::Cancelled,
    };
    let mut crew = vec![pb::CrewMember {
        person_id: r.driver_id.clone(),
        role: "driver".into(),
        last_check_in: r.last_checkin.get(&r.driver_id).map(|t| ts(*t)),
    }];
    crew.extend(r.escorts.iter().map(|e| pb::CrewMember {
        person_id: e.clone(),
        role: "escort".into(),
        last_check_in: r.last_checkin.get(e).map(|t| ts(*t)),
    }));
    let next_stop = r.standing.as_ref().and_then(|s| s.next_stop.clone());
    let next_stop_eta = match (&next_stop, r.last_fix) {
        (Some((_, at)), Some(f)) => {
            let secs = haversine_m(f.position, *at) / f.speed_mps.max(ETA_MIN_SPEED_MPS);
            Some(ts(now.max(f.t).plus_secs(secs)))
        }
        _ => None,
    };
    let mut open: Vec<pb::Anomaly> = anomalies
        .list(Some(run_id), None, false)
        .iter()
        .map(anomaly_to_pb)
        .collect();
    // Most severe first, then oldest first.
    open.sort_by(|a, b| {
        b.severity.cmp(&a.severity).then_with(|| {
            a.at.as_ref()
                .map(|t| t.seconds)
                .cmp(&b.at.as_ref().map(|t| t.seconds))
        })
    });
    pb::RunView {
        run_id: run_id.to_string(),
        vehicle_id: r.vehicle_id.clone(),
        status: status as i32,
        position: r.last_fix.map(|f| pb_latlon(f.position)),
        speed_mps: r.last_fix.map(|f| f.speed_mps).unwrap_or_default(),
        heading_deg: r.last_fix.map(|f| f.heading_deg).unwrap_or_default(),
        last_fix_at: r.last_fix.map(|f| ts(f.t)),
        last_fix_age_s: r
            .last_fix
            .map(|f| now.secs_since(f.t).max(0.0))
            .unwrap_or_default(),
        progress_m: r
            .standing
            .as_ref()
            .and_then(|s| s.progress_m)
            .unwrap_or_default(),
        route_length_m: r
            .standing
            .as_ref()
            .map(|s| s.route_length_m)
            .unwrap_or_default(),
        next_stop_id: next_stop.map(|(id, _)| id).unwrap_or_default(),
        next_stop_eta,
        crew,
        weapons_out: r.weapons_out.iter().cloned().collect(),
        open_anomalies: open,
    }
}
