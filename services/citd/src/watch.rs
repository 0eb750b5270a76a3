//! Live fleet changes for `WatchFleet`: the engine worker publishes each change once, in log
//! order, into one bounded broadcast ring; every watcher reads the ring at its own pace.
//!
//! Why a broadcast ring: publishing never waits, so a slow or stuck watcher can never slow ingest,
//! the engine or another watcher; a watcher that falls more than the ring's size behind loses the
//! oldest changes, is told how many (`fell_behind`) and gets a fresh snapshot to go on from. Views
//! are built once per change (not per watcher) and only while someone watches.
//!
//! Position updates are compact (`run_moved`, a fifth of a whole view) and coalesced per run: at
//! most one per run per interval (a dispatcher's map needs a vehicle's place each second, not each
//! fix; sending every fix to every watcher would cost more than ingesting it), and the latest
//! held-back position goes out at the next flush, so the last one is never lost. Everything else
//! (status, check-ins, custody, anomalies) goes out at once as a whole view.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cit_domain::LatLon;
use cit_proto::v1 as pb;
use tokio::sync::broadcast;

/// One published change, shared by every watcher.
pub type Change = Arc<pb::FleetEvent>;

#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Change>,
    /// Least time between two position updates of one run (zero: every fix).
    pub interval: Duration,
    positions: Mutex<Positions>,
}

#[derive(Debug, Default)]
struct Positions {
    last_sent: HashMap<String, Instant>,
    held_back: HashSet<String>,
}

impl Hub {
    /// A ring of `capacity` changes (how far a watcher may fall behind before it is told), and
    /// position updates at most every `interval` per run.
    pub fn new(capacity: usize, interval: Duration) -> Hub {
        Hub {
            tx: broadcast::channel(capacity.max(1)).0,
            interval,
            positions: Mutex::new(Positions::default()),
        }
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, Positions> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run's vehicle moved: its view goes out now if the run's last update is older than the
    /// interval, otherwise at the next [`Hub::held_back`] flush.
    pub fn moved(&self, run_id: &str, update: impl FnOnce() -> Option<pb::RunMoved>) {
        let now = Instant::now();
        {
            let mut p = self.positions();
            let due = p
                .last_sent
                .get(run_id)
                .is_none_or(|t| now.duration_since(*t) >= self.interval);
            if !due {
                p.held_back.insert(run_id.to_string());
                return;
            }
            p.last_sent.insert(run_id.to_string(), now);
            p.held_back.remove(run_id);
        }
        if let Some(m) = update() {
            self.run_moved(m);
        }
    }

    pub fn run_moved(&self, m: pb::RunMoved) {
        self.publish(pb::fleet_event::Event::RunMoved(m));
    }

    /// Runs whose latest position is held back; they count as sent now.
    pub fn held_back(&self) -> Vec<String> {
        let now = Instant::now();
        let mut p = self.positions();
        let runs: Vec<String> = p.held_back.drain().collect();
        for r in &runs {
            p.last_sent.insert(r.clone(), now);
        }
        runs
    }

    /// Whether anyone watches (views are built only then).
    pub fn watching(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    pub fn run_changed(&self, view: pb::RunView) {
        self.publish(pb::fleet_event::Event::RunChanged(view));
    }

    pub fn anomaly(&self, a: pb::Anomaly) {
        self.publish(pb::fleet_event::Event::Anomaly(a));
    }

    fn publish(&self, e: pb::fleet_event::Event) {
        // No receivers is not an error: nobody watches right now.
        let _ = self.tx.send(Arc::new(pb::FleetEvent { event: Some(e) }));
    }
}

/// A watcher's filters (see `WatchFleetRequest`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    runs: HashSet<String>,
    bbox: Option<(LatLon, LatLon)>,
    /// Minimum severity as the wire's enum value.
    min_severity: Option<i32>,
}

impl Filter {
    pub fn new(
        runs: Vec<String>,
        bbox: Option<(LatLon, LatLon)>,
        min_severity: Option<i32>,
    ) -> Self {
        Filter {
            runs: runs.into_iter().collect(),
            bbox,
            min_severity,
        }
    }

    fn run_ok(&self, run_id: &str) -> bool {
        self.runs.is_empty() || self.runs.contains(run_id)
    }

    fn inside(&self, p: Option<&pb::LatLon>, when_unknown: bool) -> bool {
        let Some((sw, ne)) = self.bbox else {
            return true;
        };
        let Some(p) = p else {
            return when_unknown;
        };
        let lon_ok = if sw.lon <= ne.lon {
            p.lon >= sw.lon && p.lon <= ne.lon
        } else {
            p.lon >= sw.lon || p.lon <= ne.lon
        };
        p.lat >= sw.lat && p.lat <= ne.lat && lon_ok
    }

    pub fn run_matches(&self, v: &pb::RunView) -> bool {
        self.run_ok(&v.run_id)
            && self.inside(v.position.as_ref(), false)
            && self
                .min_severity
                .is_none_or(|m| v.open_anomalies.iter().any(|a| a.severity >= m))
    }

    pub fn moved_matches(&self, m: &pb::RunMoved) -> bool {
        self.run_ok(&m.run_id)
            && self.inside(m.position.as_ref(), false)
            && self.min_severity.is_none_or(|s| m.top_open_severity >= s)
    }

    pub fn anomaly_matches(&self, a: &pb::Anomaly) -> bool {
        self.run_ok(&a.run_id)
            && self.inside(a.position.as_ref(), true)
            && self.min_severity.is_none_or(|m| a.severity >= m)
    }

    /// Whether a published change is for this watcher.
    pub fn matches(&self, e: &pb::FleetEvent) -> bool {
        match &e.event {
            Some(pb::fleet_event::Event::RunChanged(v)) => self.run_matches(v),
            Some(pb::fleet_event::Event::RunMoved(m)) => self.moved_matches(m),
            Some(pb::fleet_event::Event::Anomaly(a)) => self.anomaly_matches(a),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(run: &str, lat: f64, lon: f64) -> pb::RunView {
        pb::RunView {
            run_id: run.into(),
            position: Some(pb::LatLon { lat, lon }),
            ..Default::default()
        }
    }

    #[test]
    fn filters_by_run_box_and_severity() {
        let gbg = (
            LatLon {
                lat: 57.6,
                lon: 11.8,
            },
            LatLon {
                lat: 57.8,
                lon: 12.1,
            },
        );
        let f = Filter::new(vec![], Some(gbg), None);
        let hub = Hub::new(16, Duration::from_secs(3600));
        let mut rx = hub.subscribe();
        let moved = |lat| pb::RunMoved {
            run_id: "R-1".into(),
            position: Some(pb::LatLon { lat, lon: 11.97 }),
            ..Default::default()
        };
        hub.moved("R-1", || Some(moved(57.7)));
        hub.moved("R-1", || Some(moved(57.71)));
        assert!(rx.try_recv().is_ok(), "the first position goes out at once");
        assert!(rx.try_recv().is_err(), "the second is held back");
        assert_eq!(hub.held_back(), ["R-1"], "and flushed later");
        assert!(f.run_matches(&view("R-1", 57.7, 11.97)));
        assert!(
            !f.run_matches(&view("R-2", 60.17, 24.94)),
            "Helsinki is outside"
        );
        let f = Filter::new(vec!["R-1".into()], None, Some(pb::Severity::High as i32));
        let mut v = view("R-1", 57.7, 11.97);
        assert!(!f.run_matches(&v), "no open anomaly that severe");
        v.open_anomalies.push(pb::Anomaly {
            severity: pb::Severity::Critical as i32,
            ..Default::default()
        });
        assert!(f.run_matches(&v));
        assert!(!f.run_matches(&view("R-2", 57.7, 11.97)));
    }

    #[test]
    fn a_box_across_the_antimeridian_wraps() {
        let f = Filter::new(
            vec![],
            Some((
                LatLon {
                    lat: -20.0,
                    lon: 170.0,
                },
                LatLon {
                    lat: -10.0,
                    lon: -170.0,
                },
            )),
            None,
        );
        assert!(f.run_matches(&view("R", -15.0, 179.0)));
        assert!(f.run_matches(&view("R", -15.0, -179.0)));
        assert!(!f.run_matches(&view("R", -15.0, 0.0)));
    }
}
