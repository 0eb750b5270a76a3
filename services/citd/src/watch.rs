//! Live fleet changes for `WatchFleet`: the engine worker publishes each change once, in log
//! order, into one bounded broadcast ring; every watcher reads the ring at its own pace.
//!
//! Why a broadcast ring: publishing never waits, so a slow or stuck watcher can never slow ingest,
//! the engine or another watcher; a watcher that falls more than the ring's size behind loses the
//! oldest changes, is told how many (`fell_behind`) and gets a fresh snapshot to go on from. Views
//! are built once per change (not per watcher) and only while someone watches.
//!
//! Each change is encoded for the wire once, when published, and a watcher that takes it whole
//! sends those bytes ([`WatchCodec`]): with a hundred consoles watching, encoding (and cloning)
//! every change for each of them cost more than ingesting the fixes (BENCHMARKS.md).
//!
//! Position updates are compact (`RunMoved`, a fifth of a whole view) and batched: a run that
//! moved is marked, and every watch interval one `runs_moved` message per 1,000 marked runs
//! carries each one's latest position (a dispatcher's map needs a vehicle's place each second,
//! not each fix; few large messages instead of one per run keep a watcher's cost per second, not
//! per fix). Everything else (status, check-ins, custody, anomalies) goes out at once as a whole
//! view.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cit_domain::LatLon;
use cit_proto::v1 as pb;
use prost::Message;
use prost::bytes::{BufMut, Bytes};
use tokio::sync::broadcast;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, ProstCodec};

/// Runs per `runs_moved` message.
pub const MOVED_BATCH: usize = 1_000;

/// One published change and its wire encoding, made once and shared by every watcher.
#[derive(Debug)]
pub struct Published {
    pub event: pb::FleetEvent,
    encoded: Bytes,
}

pub type Change = Arc<Published>;

/// What a watch stream sends: a change as published (its encoding shared with every other
/// watcher), or a message made for this watcher alone (its snapshot, a filtered batch).
#[derive(Debug)]
pub enum Outgoing {
    Shared(Change),
    Own(Box<pb::FleetEvent>),
}

impl Outgoing {
    /// The message itself (for callers that are not the wire).
    pub fn into_event(self) -> pb::FleetEvent {
        match self {
            Outgoing::Shared(c) => c.event.clone(),
            Outgoing::Own(e) => *e,
        }
    }
}

/// The codec of the `WatchFleet` method: requests decode as prost's; responses are written from
/// their shared encoding when they have one.
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchCodec;

#[derive(Debug, Default, Clone, Copy)]
pub struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Shared(c) => buf.put_slice(&c.encoded),
            Outgoing::Own(e) => e
                .encode(buf)
                .map_err(|e| Status::internal(format!("encoding a watch message: {e}")))?,
        }
        Ok(())
    }
}

/// prost's decoder for the request (a thin wrapper: tonic names its type only through the codec).
pub struct RequestDecoder(<ProstCodec<pb::FleetEvent, pb::WatchFleetRequest> as Codec>::Decoder);

impl Decoder for RequestDecoder {
    type Item = pb::WatchFleetRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(buf)
    }
}

impl Codec for WatchCodec {
    type Encode = Outgoing;
    type Decode = pb::WatchFleetRequest;
    type Encoder = OutgoingEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> OutgoingEncoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder(ProstCodec::<pb::FleetEvent, pb::WatchFleetRequest>::default().decoder())
    }
}

/// Entry `i` of a column of [`pb::RunsMoved`] (a column too short for it, as only a foreign
/// encoder could make, reads as zero).
fn at<T: Copy + Default>(column: &[T], i: usize) -> T {
    column.get(i).copied().unwrap_or_default()
}

/// One run's position update: a row of [`pb::RunsMoved`]'s columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moved {
    pub run_id: String,
    pub lat_e7: i32,
    pub lon_e7: i32,
    pub speed_mps: f32,
    pub heading_deg: f32,
    pub last_fix_at_ms: i64,
    pub progress_m: f32,
    pub top_open_severity: i32,
}

impl Moved {
    /// Row `i` of `batch` ([`at`]).
    pub fn of(batch: &pb::RunsMoved, i: usize) -> Moved {
        Moved {
            run_id: batch.run_id.get(i).cloned().unwrap_or_default(),
            lat_e7: at(&batch.lat_e7, i),
            lon_e7: at(&batch.lon_e7, i),
            speed_mps: at(&batch.speed_mps, i),
            heading_deg: at(&batch.heading_deg, i),
            last_fix_at_ms: at(&batch.last_fix_at_ms, i),
            progress_m: at(&batch.progress_m, i),
            top_open_severity: at(&batch.top_open_severity, i),
        }
    }

    /// Appends this row to `batch`'s columns.
    pub fn push_to(self, batch: &mut pb::RunsMoved) {
        batch.run_id.push(self.run_id);
        batch.lat_e7.push(self.lat_e7);
        batch.lon_e7.push(self.lon_e7);
        batch.speed_mps.push(self.speed_mps);
        batch.heading_deg.push(self.heading_deg);
        batch.last_fix_at_ms.push(self.last_fix_at_ms);
        batch.progress_m.push(self.progress_m);
        batch.top_open_severity.push(self.top_open_severity);
    }

    /// Every row of `batch`.
    pub fn rows(batch: &pb::RunsMoved) -> impl Iterator<Item = Moved> + '_ {
        (0..batch.run_id.len()).map(|i| Moved::of(batch, i))
    }
}

#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Change>,
    /// Time between two batches of position updates (zero: each fix's at once).
    pub interval: Duration,
    /// Runs that moved since the last batch.
    moved: Mutex<foldhash::HashSet<String>>,
}

impl Hub {
    /// A ring of `capacity` changes (how far a watcher may fall behind before it is told), and
    /// position updates batched every `interval`.
    pub fn new(capacity: usize, interval: Duration) -> Hub {
        Hub {
            tx: broadcast::channel(capacity.max(1)).0,
            interval,
            moved: Mutex::default(),
        }
    }

    fn marked(&self) -> std::sync::MutexGuard<'_, foldhash::HashSet<String>> {
        self.moved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run's vehicle moved: its position goes out with the next batch ([`Hub::take_moved`]),
    /// or at once when the interval is zero.
    pub fn moved(&self, run_id: &str, update: impl FnOnce() -> pb::RunsMoved) {
        if !self.watching() {
            return;
        }
        if self.interval.is_zero() {
            self.runs_moved(update());
            return;
        }
        let mut marked = self.marked();
        if !marked.contains(run_id) {
            marked.insert(run_id.to_string());
        }
    }

    /// The runs that moved since the last call, for the next batches ([`MOVED_BATCH`] runs
    /// each), by run id: consecutive batches list runs the same way (the set's order is random),
    /// so a console can compare them.
    pub fn take_moved(&self) -> Vec<String> {
        let mut runs: Vec<String> = self.marked().drain().collect();
        runs.sort_unstable();
        runs
    }

    /// Publishes a batch of position updates, unless it is empty.
    pub fn runs_moved(&self, batch: pb::RunsMoved) {
        if !batch.run_id.is_empty() {
            self.publish(pb::fleet_event::Event::RunsMoved(batch));
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
        if !self.watching() {
            // Nobody watches right now: nothing to encode or send.
            return;
        }
        let event = pb::FleetEvent { event: Some(e) };
        let encoded = Bytes::from(event.encode_to_vec());
        let _ = self.tx.send(Arc::new(Published { event, encoded }));
    }
}

/// A wire position as the domain's, for the box test (already validated where it was made).
fn latlon(p: &pb::LatLon) -> LatLon {
    LatLon {
        lat: p.lat,
        lon: p.lon,
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

    fn inside(&self, p: Option<LatLon>, when_unknown: bool) -> bool {
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
            && self.inside(v.position.as_ref().map(latlon), false)
            && self
                .min_severity
                .is_none_or(|m| v.open_anomalies.iter().any(|a| a.severity >= m))
    }

    /// Whether run `i` of a batch of position updates matches, read from its columns in place
    /// (each filtered watcher asks this of every run in every batch).
    pub fn moved_matches(&self, batch: &pb::RunsMoved, i: usize) -> bool {
        let run_id = batch.run_id.get(i).map_or("", String::as_str);
        let (lat_e7, lon_e7) = (at(&batch.lat_e7, i), at(&batch.lon_e7, i));
        self.run_ok(run_id)
            && self.inside(Some(crate::grpc::from_e7(lat_e7, lon_e7)), false)
            && self
                .min_severity
                .is_none_or(|s| at(&batch.top_open_severity, i) >= s)
    }

    pub fn anomaly_matches(&self, a: &pb::Anomaly) -> bool {
        self.run_ok(&a.run_id)
            && self.inside(a.position.as_ref().map(latlon), true)
            && self.min_severity.is_none_or(|m| a.severity >= m)
    }

    /// Whether the filter lets everything through.
    fn is_everything(&self) -> bool {
        self.runs.is_empty() && self.bbox.is_none() && self.min_severity.is_none()
    }

    /// What of a published change this watcher gets: all of it (its shared encoding), the part
    /// of a position batch that matches (made for this watcher), or nothing.
    pub fn select(&self, change: Change) -> Option<Outgoing> {
        use pb::fleet_event::Event;
        let whole = match &change.event.event {
            _ if self.is_everything() => true,
            Some(Event::RunChanged(v)) => self.run_matches(v),
            Some(Event::Anomaly(a)) => self.anomaly_matches(a),
            Some(Event::RunsMoved(batch)) => {
                let mut mine = pb::RunsMoved::default();
                for i in (0..batch.run_id.len()).filter(|&i| self.moved_matches(batch, i)) {
                    Moved::of(batch, i).push_to(&mut mine);
                }
                return match mine.run_id.len() {
                    0 => None,
                    n if n == batch.run_id.len() => Some(Outgoing::Shared(change)),
                    _ => Some(Outgoing::Own(Box::new(pb::FleetEvent {
                        event: Some(Event::RunsMoved(mine)),
                    }))),
                };
            }
            _ => true,
        };
        whole.then_some(Outgoing::Shared(change))
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
        let moved = |run: &str, lat, lon| Moved {
            run_id: run.into(),
            lat_e7: crate::grpc::e7(lat),
            lon_e7: crate::grpc::e7(lon),
            ..Default::default()
        };
        let batch_of = |rows: Vec<Moved>| {
            let mut b = pb::RunsMoved::default();
            rows.into_iter().for_each(|m| m.push_to(&mut b));
            b
        };
        hub.moved("R-1", || batch_of(vec![moved("R-1", 57.7, 11.97)]));
        hub.moved("R-1", || batch_of(vec![moved("R-1", 57.71, 11.97)]));
        hub.moved("R-2", || batch_of(vec![moved("R-2", 60.17, 24.94)]));
        assert!(rx.try_recv().is_err(), "positions wait for the batch");
        assert_eq!(hub.take_moved(), ["R-1", "R-2"], "each run once, in order");
        hub.runs_moved(pb::RunsMoved::default());
        assert!(rx.try_recv().is_err(), "an empty batch is not sent");
        hub.runs_moved(batch_of(vec![
            moved("R-1", 57.71, 11.97),
            moved("R-2", 60.17, 24.94),
        ]));
        let batch = rx.try_recv().expect("one batch");
        // The shared encoding is the message's own.
        let decoded = pb::FleetEvent::decode(batch.encoded.clone()).expect("decodes");
        assert_eq!(decoded, batch.event);
        let Some(Outgoing::Own(mine)) = f.select(batch.clone()) else {
            panic!("a filtered watcher gets its own part of the batch");
        };
        let Some(pb::fleet_event::Event::RunsMoved(mine)) = mine.event else {
            panic!("a batch");
        };
        assert_eq!(
            mine,
            batch_of(vec![moved("R-1", 57.71, 11.97)]),
            "Gothenburg only"
        );
        let everything = Filter::new(vec![], None, None);
        assert!(matches!(
            everything.select(batch),
            Some(Outgoing::Shared(_))
        ));
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
