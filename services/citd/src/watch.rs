//! Live fleet changes for `WatchFleet`: the engine worker publishes each change once, in log
//! order, into one bounded broadcast ring; every watcher reads the ring at its own pace.
//!
//! Why a broadcast ring: publishing never waits, so a slow or stuck watcher can never slow ingest,
//! the engine or another watcher; a watcher that falls more than the ring's size behind loses the
//! oldest changes, is told how many (`fell_behind`) and gets a fresh snapshot to go on from. Views
//! are built once per change (not per watcher) and only while someone watches.

use std::collections::HashSet;
use std::sync::Arc;

use cit_domain::LatLon;
use cit_proto::v1 as pb;
use tokio::sync::broadcast;

/// One published change, shared by every watcher.
pub type Change = Arc<pb::FleetEvent>;

#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Change>,
}

impl Hub {
    /// A ring of `capacity` changes (how far a watcher may fall behind before it is told).
    pub fn new(capacity: usize) -> Hub {
        Hub {
            tx: broadcast::channel(capacity.max(1)).0,
        }
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

    pub fn anomaly_matches(&self, a: &pb::Anomaly) -> bool {
        self.run_ok(&a.run_id)
            && self.inside(a.position.as_ref(), true)
            && self.min_severity.is_none_or(|m| a.severity >= m)
    }

    /// Whether a published change is for this watcher.
    pub fn matches(&self, e: &pb::FleetEvent) -> bool {
        match &e.event {
            Some(pb::fleet_event::Event::RunChanged(v)) => self.run_matches(v),
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
