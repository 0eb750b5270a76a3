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
//! Position updates are compact (`RunsMoved`, a row of columns per run, a third of a whole view)
//! and batched: a run that moved is marked, and every watch interval one `runs_moved` message per
//! 1,000 marked runs carries each one's latest position (a dispatcher's map needs a vehicle's
//! place each second, not each fix; few large messages instead of one per run keep a watcher's
//! cost per second, not per fix). Everything else (status, check-ins, custody, anomalies) goes
//! out at once as a whole view.
//!
//! A batch names its runs by number ([`Numbered`]), not by id: every watcher decoded a string,
//! an allocation, for every run every second (the largest cost of a decoding console,
//! BENCHMARKS.md). Each stream is told a number's id once, in a `runs_named` message just before
//! the first batch that uses it ([`Told`]). Numbers are the hub's, shared by every stream so a
//! batch is still encoded once; a closed run's number is given again later with a new
//! generation, which each stream is told as a new name.

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
    /// A position batch's runs, row by row (empty for other changes): their ids, for filters and
    /// for naming their numbers, are not on the wire.
    runs: Vec<Numbered>,
}

/// A run as position batches refer to it: its number, the generation of that number (bumped each
/// time the number is given to another run), and its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Numbered {
    pub number: u32,
    generation: u32,
    pub run_id: Arc<str>,
}

/// A batch of position updates as built ([`crate::fleet::Fleet::moved_many`]): the message, and
/// the runs of its rows.
#[derive(Debug, Default)]
pub struct MovedBatch {
    pub batch: pb::RunsMoved,
    pub runs: Vec<Numbered>,
}

impl MovedBatch {
    /// Appends a row.
    pub fn push(&mut self, run: &Numbered, row: Moved) {
        row.push_to(&mut self.batch, run.number);
        self.runs.push(run.clone());
    }
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

/// One run's position update: a row of [`pb::RunsMoved`]'s columns but the run's number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moved {
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
            lat_e7: at(&batch.lat_e7, i),
            lon_e7: at(&batch.lon_e7, i),
            speed_mps: at(&batch.speed_mps, i),
            heading_deg: at(&batch.heading_deg, i),
            last_fix_at_ms: at(&batch.last_fix_at_ms, i),
            progress_m: at(&batch.progress_m, i),
            top_open_severity: at(&batch.top_open_severity, i),
        }
    }

    /// Appends this row, of run `number`, to `batch`'s columns.
    pub fn push_to(self, batch: &mut pb::RunsMoved, number: u32) {
        batch.run.push(number);
        batch.lat_e7.push(self.lat_e7);
        batch.lon_e7.push(self.lon_e7);
        batch.speed_mps.push(self.speed_mps);
        batch.heading_deg.push(self.heading_deg);
        batch.last_fix_at_ms.push(self.last_fix_at_ms);
        batch.progress_m.push(self.progress_m);
        batch.top_open_severity.push(self.top_open_severity);
    }

    /// Every row of `batch`, with its run's number.
    pub fn rows(batch: &pb::RunsMoved) -> impl Iterator<Item = (u32, Moved)> + '_ {
        (0..batch.run.len()).map(|i| (batch.run[i], Moved::of(batch, i)))
    }
}

#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Change>,
    /// Time between two batches of position updates (zero: each fix's at once).
    pub interval: Duration,
    numbers: Mutex<Numbers>,
}

/// The runs' numbers, and which runs moved since the last batch.
#[derive(Debug, Default)]
struct Numbers {
    of: foldhash::HashMap<Arc<str>, u32>,
    /// By number: its run (none while free) and its generation.
    runs: Vec<(Option<Arc<str>>, u32)>,
    free: Vec<u32>,
    /// One bit per number: marked as moved since the last batch.
    marked: Vec<u64>,
}

impl Numbers {
    /// `run_id`'s number, given now if it has none.
    fn number(&mut self, run_id: &str) -> u32 {
        if let Some(&n) = self.of.get(run_id) {
            return n;
        }
        let id: Arc<str> = run_id.into();
        let n = match self.free.pop() {
            Some(n) => {
                let (run, generation) = &mut self.runs[n as usize];
                *run = Some(id.clone());
                *generation = generation.wrapping_add(1);
                n
            }
            None => {
                self.runs.push((Some(id.clone()), 0));
                (self.runs.len() - 1) as u32
            }
        };
        self.of.insert(id, n);
        n
    }
}

/// Number `number` of the table `runs` (see [`Numbers::runs`]), unless it is free.
fn numbered(runs: &[(Option<Arc<str>>, u32)], number: u32) -> Option<Numbered> {
    let (run, generation) = runs.get(number as usize)?;
    Some(Numbered {
        number,
        generation: *generation,
        run_id: run.clone()?,
    })
}

impl Hub {
    /// A ring of `capacity` changes (how far a watcher may fall behind before it is told), and
    /// position updates batched every `interval`.
    pub fn new(capacity: usize, interval: Duration) -> Hub {
        Hub {
            tx: broadcast::channel(capacity.max(1)).0,
            interval,
            numbers: Mutex::default(),
        }
    }

    fn numbers(&self) -> std::sync::MutexGuard<'_, Numbers> {
        self.numbers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run's vehicle moved: its position goes out with the next batch ([`Hub::take_moved`]),
    /// or at once when the interval is zero.
    pub fn moved(&self, run_id: &str, update: impl FnOnce(&Numbered) -> MovedBatch) {
        if !self.watching() {
            return;
        }
        let mut numbers = self.numbers();
        // Per fix while watching: the number alone (no id cloned) unless it goes out at once.
        let number = numbers.number(run_id);
        if self.interval.is_zero() {
            let run = numbered(&numbers.runs, number).expect("a number just given has a run");
            drop(numbers);
            self.runs_moved(update(&run));
            return;
        }
        let (word, bit) = (number as usize / 64, number % 64);
        if numbers.marked.len() <= word {
            numbers.marked.resize(word + 1, 0);
        }
        numbers.marked[word] |= 1 << bit;
    }

    /// The runs that moved since the last call, for the next batches ([`MOVED_BATCH`] runs
    /// each), by number: consecutive batches list runs the same way, so a console can compare
    /// them.
    pub fn take_moved(&self) -> Vec<Numbered> {
        let Numbers { runs, marked, .. } = &mut *self.numbers();
        let mut moved = Vec::new();
        for (word, bits) in marked.iter_mut().enumerate() {
            let mut b = std::mem::take(bits);
            while b != 0 {
                let number = (word * 64) as u32 + b.trailing_zeros();
                b &= b - 1;
                // None: marked, then freed (its run closed since).
                moved.extend(numbered(runs, number));
            }
        }
        moved
    }

    /// A run closed: its number is free for another run (its watchers are told the new name
    /// when it is used again).
    pub fn forget(&self, run_id: &str) {
        let numbers = &mut *self.numbers();
        if let Some(n) = numbers.of.remove(run_id) {
            numbers.runs[n as usize].0 = None;
            numbers.free.push(n);
        }
    }

    /// Publishes a batch of position updates, unless it is empty.
    pub fn runs_moved(&self, moved: MovedBatch) {
        if !moved.runs.is_empty() {
            self.send(pb::fleet_event::Event::RunsMoved(moved.batch), moved.runs);
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
        self.send(e, Vec::new());
    }

    fn send(&self, e: pb::fleet_event::Event, runs: Vec<Numbered>) {
        if !self.watching() {
            // Nobody watches right now: nothing to encode or send.
            return;
        }
        let event = pb::FleetEvent { event: Some(e) };
        let encoded = Bytes::from(event.encode_to_vec());
        let _ = self.tx.send(Arc::new(Published {
            event,
            encoded,
            runs,
        }));
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

    /// Whether row `i` of a batch of position updates (of the runs `runs`) matches, read from its
    /// columns in place (each filtered watcher asks this of every run in every batch).
    fn moved_matches(&self, batch: &pb::RunsMoved, runs: &[Numbered], i: usize) -> bool {
        let run_id = runs.get(i).map_or("", |r| &*r.run_id);
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
    /// of a position batch that matches (made for this watcher), or nothing; a position batch
    /// after the names of its numbers this watcher was not told yet (`told`).
    pub fn select(&self, change: Change, told: &mut Told) -> Vec<Outgoing> {
        use pb::fleet_event::Event;
        let whole = match &change.event.event {
            Some(Event::RunsMoved(batch)) => {
                let (runs, all) = (&change.runs, change.runs.len());
                // The rows this watcher gets; None: all of them (no list to build).
                let rows: Option<Vec<usize>> = (!self.is_everything()).then(|| {
                    (0..all)
                        .filter(|&i| self.moved_matches(batch, runs, i))
                        .collect()
                });
                let named = match &rows {
                    Some(rows) if rows.is_empty() => return Vec::new(),
                    Some(rows) => told.name(rows.iter().map(|&i| &runs[i])),
                    None => told.name(runs.iter()),
                };
                let named = named.map(|n| {
                    Outgoing::Own(Box::new(pb::FleetEvent {
                        event: Some(Event::RunsNamed(n)),
                    }))
                });
                let batch = match rows {
                    Some(rows) if rows.len() < all => {
                        let mut mine = pb::RunsMoved::default();
                        for i in rows {
                            Moved::of(batch, i).push_to(&mut mine, runs[i].number);
                        }
                        Outgoing::Own(Box::new(pb::FleetEvent {
                            event: Some(Event::RunsMoved(mine)),
                        }))
                    }
                    _ => Outgoing::Shared(change.clone()),
                };
                return named.into_iter().chain([batch]).collect();
            }
            _ if self.is_everything() => true,
            Some(Event::RunChanged(v)) => self.run_matches(v),
            Some(Event::Anomaly(a)) => self.anomaly_matches(a),
            _ => true,
        };
        if whole {
            vec![Outgoing::Shared(change)]
        } else {
            Vec::new()
        }
    }
}

/// The run numbers a watch stream has been told, each with the generation it was told for.
#[derive(Debug, Default)]
pub struct Told(Vec<u32>);

impl Told {
    /// The names `runs` need that this stream was not told yet (none when it knows them all),
    /// as told from now on.
    fn name<'a>(&mut self, runs: impl Iterator<Item = &'a Numbered>) -> Option<pb::RunsNamed> {
        let mut named = pb::RunsNamed::default();
        for r in runs {
            let n = r.number as usize;
            if self.0.len() <= n {
                self.0.resize(n + 1, 0);
            }
            // Stored plus one: zero is "never told".
            let told = r.generation.wrapping_add(1);
            if self.0[n] != told {
                self.0[n] = told;
                named.run.push(r.number);
                named.run_id.push(r.run_id.to_string());
            }
        }
        (!named.run.is_empty()).then_some(named)
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
        let moved = |lat, lon| Moved {
            lat_e7: crate::grpc::e7(lat),
            lon_e7: crate::grpc::e7(lon),
            ..Default::default()
        };
        let batch_of = |rows: Vec<(&Numbered, Moved)>| {
            let mut b = MovedBatch::default();
            rows.into_iter().for_each(|(run, m)| b.push(run, m));
            b
        };
        let unused = |_: &Numbered| -> MovedBatch { unreachable!("batched, not sent at once") };
        hub.moved("R-1", unused);
        hub.moved("R-1", unused);
        hub.moved("R-2", unused);
        assert!(rx.try_recv().is_err(), "positions wait for the batch");
        let [r1, r2] = hub.take_moved().try_into().expect("each run once");
        assert_eq!(
            (r1.number, &*r1.run_id),
            (0, "R-1"),
            "numbered as first seen"
        );
        assert_eq!((r2.number, &*r2.run_id), (1, "R-2"));
        assert!(hub.take_moved().is_empty(), "taken");
        hub.runs_moved(MovedBatch::default());
        assert!(rx.try_recv().is_err(), "an empty batch is not sent");
        hub.runs_moved(batch_of(vec![
            (&r1, moved(57.71, 11.97)),
            (&r2, moved(60.17, 24.94)),
        ]));
        let batch = rx.try_recv().expect("one batch");
        // The shared encoding is the message's own.
        let decoded = pb::FleetEvent::decode(batch.encoded.clone()).expect("decodes");
        assert_eq!(decoded, batch.event);
        let mut told = Told::default();
        let [Outgoing::Own(named), Outgoing::Own(mine)] = &f.select(batch.clone(), &mut told)[..]
        else {
            panic!("a filtered watcher is told its runs' names, then gets its part of the batch");
        };
        assert_eq!(
            named.event,
            Some(pb::fleet_event::Event::RunsNamed(pb::RunsNamed {
                run: vec![0],
                run_id: vec!["R-1".into()],
            })),
            "only the run it gets"
        );
        let Some(pb::fleet_event::Event::RunsMoved(mine)) = &mine.event else {
            panic!("a batch");
        };
        assert_eq!(
            *mine,
            batch_of(vec![(&r1, moved(57.71, 11.97))]).batch,
            "Gothenburg only"
        );
        assert!(
            matches!(&f.select(batch.clone(), &mut told)[..], [Outgoing::Own(_)]),
            "told once"
        );
        let everything = Filter::new(vec![], None, None);
        let mut told = Told::default();
        assert!(matches!(
            &everything.select(batch.clone(), &mut told)[..],
            [Outgoing::Own(_), Outgoing::Shared(_)]
        ));
        assert!(matches!(
            &everything.select(batch, &mut told)[..],
            [Outgoing::Shared(_)]
        ));

        // A closed run's number goes to the next new run, which each stream is told anew.
        hub.forget("R-1");
        hub.moved("R-3", unused);
        let [r3] = hub.take_moved().try_into().expect("one run");
        assert_eq!((r3.number, &*r3.run_id), (0, "R-3"));
        hub.runs_moved(batch_of(vec![(&r3, moved(57.7, 11.97))]));
        let batch = rx.try_recv().expect("one batch");
        let [Outgoing::Own(named), Outgoing::Shared(_)] = &everything.select(batch, &mut told)[..]
        else {
            panic!("the new name first");
        };
        assert!(
            matches!(&named.event, Some(pb::fleet_event::Event::RunsNamed(n)) if n.run_id == ["R-3"])
        );
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
