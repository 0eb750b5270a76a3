//! Fix ingest's ordering and group commit. A vehicle has at most one append in flight; fixes
//! that arrive meanwhile (later batches, other connections) queue behind it and go together in
//! its next append, which the task that finished the first one makes. The appends a batch
//! begins go to the store as one piece of work ([`EventStore::append_bulk_batch`]), since the
//! store's and the runtime's costs are per append, and a batch holds a thousand vehicles.
//!
//! [`EventStore::append_bulk_batch`]: cit_store::EventStore::append_bulk_batch

use std::sync::{Arc, Mutex};

use cit_domain::event::{Event, SeqEpoch};
use cit_domain::{Fix, Millis};
use cit_store::{Append, ExpectedVersion};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{App, VehicleBatchResult, encode, lock};
use crate::error::AppError;

/// Each vehicle's ingest state, by vehicle id (foldhash: looked up for every vehicle of every
/// batch).
pub(super) type Vehicles = foldhash::HashMap<String, Arc<Mutex<VehicleIngest>>>;

/// One vehicle's ingest state. `durable_seq` moves only once an append is durable, so
/// duplicates are judged against what is really stored (rebuilt from the log on start).
#[derive(Debug, Default)]
pub(super) struct VehicleIngest {
    durable_seq: u64,
    in_flight: bool,
    queued: Vec<Queued>,
    /// The highest seq let through to ingest (durable, in flight or queued) and its device
    /// time: a later fix may not jump absurdly far ahead of it, nor be dated before it.
    latest_seq: u64,
    latest_t: Millis,
    /// The unit's numbering epoch and where it starts in the vehicle's seq (see [`SeqEpoch`]).
    numbering: SeqEpoch,
    /// A new epoch not yet recorded in the log: the vehicle's next append carries it.
    unrecorded: Option<SeqEpoch>,
}

impl VehicleIngest {
    /// A vehicle whose fixes are durable up to `seq`, the last of them taken at `t`, numbered
    /// by its unit in `numbering`.
    pub(super) fn durable_to(seq: u64, t: Millis, numbering: SeqEpoch) -> Self {
        VehicleIngest {
            durable_seq: seq,
            latest_seq: seq,
            latest_t: t,
            numbering,
            ..Default::default()
        }
    }

    /// The vehicle's seq of a unit's fix numbered `seq` in `epoch`. A later epoch (a replaced
    /// or reset unit numbering from 1 again) starts above everything let through so far.
    fn vehicle_seq(&mut self, epoch: u32, seq: u64) -> Result<u64, (&'static str, String)> {
        if epoch < self.numbering.epoch {
            return Err((
                "seq_epoch",
                format!(
                    "{epoch} is older than the vehicle's numbering epoch {}: a unit replaced or reset since numbers its fixes in a later epoch",
                    self.numbering.epoch
                ),
            ));
        }
        if epoch > self.numbering.epoch {
            self.numbering = SeqEpoch {
                epoch,
                base: self.latest_seq,
            };
            self.unrecorded = Some(self.numbering);
        }
        self.numbering
            .base
            .checked_add(seq)
            .ok_or(("seq", format!("{seq} is beyond any vehicle's numbering")))
    }

    /// Whether a fix may follow what the vehicle sent so far: `Err((field, reason))` names why
    /// not. A seq not above the latest is a resend (judged a duplicate or not by ingest, against
    /// what is durable); a fresh one must be within `max_jump` of the latest (one fix with seq
    /// 2^63 would otherwise make every later fix a duplicate for good) and not dated before it.
    fn admit(&mut self, seq: u64, t: Millis, max_jump: u64) -> Result<(), (&'static str, String)> {
        if seq <= self.latest_seq {
            return Ok(());
        }
        if seq - self.latest_seq > max_jump {
            return Err((
                "seq",
                format!(
                    "{seq} is more than {max_jump} ahead of the vehicle's latest seq {}; a unit numbers its fixes from 1 without gaps",
                    self.latest_seq
                ),
            ));
        }
        if t < self.latest_t {
            return Err((
                "time",
                format!(
                    "device time goes backwards: seq {seq} is dated {} ms before seq {}",
                    self.latest_t.0 - t.0,
                    self.latest_seq
                ),
            ));
        }
        self.latest_seq = seq;
        self.latest_t = t;
        Ok(())
    }
}

/// A fix of a batch, with its place in the batch (for its rejection) and its unit's numbering
/// epoch; its `seq` is the unit's until [`App::screen`] makes it the vehicle's.
pub type Placed = (u32, u32, Fix);

/// A fix screened out of a batch: its place, its vehicle and seq, the field and the reason.
pub type Screened = (u32, String, u64, &'static str, String);

type Answer = oneshot::Sender<Result<VehicleBatchResult, AppError>>;

/// Fixes that arrived while their vehicle's append was in flight, and where their result goes.
#[derive(Debug)]
struct Queued {
    fixes: Vec<Fix>,
    answer: Answer,
}

/// Whom an append answers: the batch that began it (its place there), or a caller queued
/// behind the append before it.
enum Caller {
    Batch(usize),
    Queued(Answer),
}

/// One vehicle's next append: its fresh fixes in order, the seq they bring it to, and each
/// caller's share (accepted, duplicates).
struct VehicleAppend {
    vehicle_id: String,
    state: Arc<Mutex<VehicleIngest>>,
    fresh: Vec<Fix>,
    high: u64,
    callers: Vec<(Caller, u32, u32)>,
    /// A new numbering epoch this append records, taken from the vehicle's state when the
    /// append is made (under the lock that makes it): it goes into the log with the vehicle's
    /// next fixes, never after them, and is given back if the append fails.
    epoch: Option<SeqEpoch>,
}

/// Splits callers' fixes, in order, into fresh ones (seq above `durable` and above every fix
/// before) and duplicates; returns the fresh fixes, the highest seq and each caller's counts.
fn absorb(
    durable: u64,
    work: impl IntoIterator<Item = (Vec<Fix>, Caller)>,
) -> (Vec<Fix>, u64, Vec<(Caller, u32, u32)>) {
    let mut high = durable;
    let mut fresh = Vec::new();
    let mut callers = Vec::new();
    for (fixes, caller) in work {
        let (mut accepted, mut duplicates) = (0u32, 0u32);
        for f in fixes {
            if f.seq <= high {
                duplicates += 1;
                continue;
            }
            high = f.seq;
            fresh.push(f);
            accepted += 1;
        }
        callers.push((caller, accepted, duplicates));
    }
    (fresh, high, callers)
}

/// Where one vehicle's fixes of a batch stand.
enum Pending {
    /// Nothing to append (all duplicates).
    Done(VehicleBatchResult),
    /// In the batch's own append, at this place.
    InBatch(usize),
    /// Queued behind an append in flight.
    Queued(oneshot::Receiver<Result<VehicleBatchResult, AppError>>),
}

type BatchResults = Vec<Option<Result<VehicleBatchResult, AppError>>>;

/// A batch's fixes on their way to the store ([`App::ingest`]).
pub struct Ingesting {
    vehicles: Vec<(String, Pending)>,
    batch: Option<oneshot::Receiver<BatchResults>>,
}

fn interrupted() -> Result<VehicleBatchResult, AppError> {
    Err(AppError::Unavailable("ingest was interrupted".into()))
}

impl Ingesting {
    /// Each vehicle's result, in the order given to [`App::ingest`], once its fixes are durable
    /// (or their append failed).
    pub async fn results(self) -> Vec<(String, Result<VehicleBatchResult, AppError>)> {
        let mut batch = match self.batch {
            Some(rx) => rx.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let mut out = Vec::with_capacity(self.vehicles.len());
        for (vehicle_id, pending) in self.vehicles {
            let result = match pending {
                Pending::Done(r) => Ok(r),
                Pending::InBatch(i) => batch
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_else(interrupted),
                Pending::Queued(rx) => rx.await.unwrap_or_else(|_| interrupted()),
            };
            out.push((vehicle_id, result));
        }
        out
    }
}

/// The vehicle's ingest state, made on its first fix (looked up first, so a known vehicle's id
/// is not copied).
fn vehicle_ingest(vehicles: &mut Vehicles, vehicle_id: &str) -> Arc<Mutex<VehicleIngest>> {
    if let Some(v) = vehicles.get(vehicle_id) {
        return v.clone();
    }
    vehicles.entry(vehicle_id.to_string()).or_default().clone()
}

/// Answers an append's callers: with what it made durable (the vehicle's durable seq and the
/// log position), or with why it failed. A batch's own caller's answer goes to its place in
/// `batch`, a queued caller's to it.
fn answer(
    callers: Vec<(Caller, u32, u32)>,
    result: &Result<(u64, u64), cit_store::Error>,
    numbering: SeqEpoch,
    batch: &mut BatchResults,
) {
    for (caller, accepted, duplicates) in callers {
        let answer = match result {
            Ok((durable_seq, position)) => Ok(VehicleBatchResult {
                durable_seq: *durable_seq,
                accepted,
                duplicates,
                position: *position,
                numbering,
            }),
            Err(e) => Err(AppError::Store(e.clone())),
        };
        match caller {
            Caller::Batch(i) => batch[i] = Some(answer),
            Caller::Queued(tx) => {
                let _ = tx.send(answer);
            }
        }
    }
}

impl App {
    /// Screens each vehicle's fixes (in batch order) against what the vehicle sent before
    /// ([`VehicleIngest::admit`]), keeping the admitted ones in `batch` and returning the others.
    /// Called in arrival order, before [`App::ingest`], under the same locks' order.
    pub fn screen(&self, batch: &mut [(String, Vec<Placed>)]) -> Vec<Screened> {
        let max_jump = self.max_seq_jump.load(std::sync::atomic::Ordering::Relaxed);
        let mut screened = Vec::new();
        let mut states = lock(&self.ingest);
        for (vehicle_id, fixes) in batch.iter_mut() {
            let state = vehicle_ingest(&mut states, vehicle_id);
            let mut s = lock(&state);
            fixes.retain_mut(|(index, epoch, f)| {
                let unit_seq = f.seq;
                let admitted = s.vehicle_seq(*epoch, unit_seq).and_then(|seq| {
                    s.admit(seq, f.t, max_jump)?;
                    f.seq = seq;
                    Ok(())
                });
                match admitted {
                    Ok(()) => true,
                    Err((field, reason)) => {
                        screened.push((*index, vehicle_id.clone(), unit_seq, field, reason));
                        false
                    }
                }
            });
        }
        screened
    }

    /// Records validated fixes, grouped by vehicle (each vehicle's in order), durably; a fix
    /// whose seq is not above its vehicle's highest is a duplicate and absorbed. Synchronous up
    /// to handing the appends over, so calling it in arrival order keeps each vehicle's fixes
    /// in order across batches in flight. The appends run to the end in a task of their own:
    /// a caller that goes away (a unit that disconnects) neither loses them nor leaves its
    /// vehicles waiting for an append that never finishes.
    pub fn ingest(self: &Arc<Self>, batch: Vec<(String, Vec<Fix>)>) -> Ingesting {
        let mut appends = Vec::new();
        let mut vehicles = Vec::with_capacity(batch.len());
        let mut states = lock(&self.ingest);
        for (vehicle_id, fixes) in batch {
            let state = vehicle_ingest(&mut states, &vehicle_id);
            let mut s = lock(&state);
            let pending = if s.in_flight {
                let (answer, rx) = oneshot::channel();
                s.queued.push(Queued { fixes, answer });
                Pending::Queued(rx)
            } else {
                let index = appends.len();
                let (fresh, high, callers) = absorb(s.durable_seq, [(fixes, Caller::Batch(index))]);
                if fresh.is_empty() {
                    Pending::Done(VehicleBatchResult {
                        durable_seq: s.durable_seq,
                        accepted: 0,
                        duplicates: callers.iter().map(|c| c.2).sum(),
                        position: *self.written.borrow(),
                        numbering: s.numbering,
                    })
                } else {
                    s.in_flight = true;
                    let epoch = s.unrecorded.take();
                    drop(s);
                    appends.push(VehicleAppend {
                        vehicle_id: vehicle_id.clone(),
                        state,
                        fresh,
                        high,
                        callers,
                        epoch,
                    });
                    Pending::InBatch(index)
                }
            };
            vehicles.push((vehicle_id, pending));
        }
        drop(states);
        let batch = (!appends.is_empty()).then(|| {
            let (tx, rx) = oneshot::channel();
            tokio::spawn(self.clone().append_vehicles(appends, tx));
            rx
        });
        Ingesting { vehicles, batch }
    }

    /// Appends each vehicle's fixes (one event each, to its run's stream) as one store batch,
    /// answers their callers, then does the same for what queued behind them meanwhile, until
    /// nothing is left and every vehicle is free again.
    async fn append_vehicles(
        self: Arc<Self>,
        mut appends: Vec<VehicleAppend>,
        batch: oneshot::Sender<BatchResults>,
    ) {
        let mut batch_results: BatchResults = (0..appends.len()).map(|_| None).collect();
        let mut batch = Some(batch);
        while !appends.is_empty() {
            if self.clock.is_scenario()
                && let Some(last) = appends.iter().flat_map(|a| &a.fresh).map(|f| f.t).max()
            {
                self.clock.advance(last);
            }
            let mut events = Vec::with_capacity(appends.len());
            for a in &mut appends {
                // A thousand vehicles' events are encoded here: giving way once the task's
                // budget is spent keeps one poll to about a hundred, so a request on the same
                // worker waits microseconds, not milliseconds (BENCHMARKS.md, consume_budget).
                tokio::task::consume_budget().await;
                let event = Event::FixesRecorded {
                    vehicle_id: a.vehicle_id.clone(),
                    run_id: self.active_run(&a.vehicle_id),
                    fixes: std::mem::take(&mut a.fresh),
                    epoch: a.epoch,
                };
                // Duplicates are absorbed by each vehicle's high-water mark (one append per
                // vehicle at a time), so the id needs no content; time-ordered ids keep the
                // ids in log order.
                events.push(Append {
                    stream: event.stream(),
                    expected: ExpectedVersion::Any,
                    events: vec![encode(&event, Uuid::now_v7(), "ingest")],
                });
            }
            let started = std::time::Instant::now();
            let results = self.store.append_bulk_batch(events).await;
            self.metrics.observe_append(started.elapsed());
            let (mut written, mut accepted) = (0, 0);
            let mut next = Vec::new();
            for (a, result) in appends.into_iter().zip(results) {
                let mut s = lock(&a.state);
                if result.is_err() && s.unrecorded.is_none() {
                    s.unrecorded = a.epoch;
                }
                let result = result.map(|r| {
                    s.durable_seq = a.high;
                    written = written.max(r.position);
                    accepted += a.callers.iter().map(|c| u64::from(c.1)).sum::<u64>();
                    (a.high, r.position)
                });
                answer(a.callers, &result, s.numbering, &mut batch_results);
                // What queued behind this append goes next, together.
                let queued = std::mem::take(&mut s.queued);
                let (fresh, high, callers) = absorb(
                    s.durable_seq,
                    queued
                        .into_iter()
                        .map(|q| (q.fixes, Caller::Queued(q.answer))),
                );
                if fresh.is_empty() {
                    s.in_flight = false;
                    let position = written.max(*self.written.borrow());
                    answer(
                        callers,
                        &Ok((s.durable_seq, position)),
                        s.numbering,
                        &mut batch_results,
                    );
                    continue;
                }
                let epoch = s.unrecorded.take();
                drop(s);
                next.push(VehicleAppend {
                    vehicle_id: a.vehicle_id,
                    state: a.state,
                    fresh,
                    high,
                    callers,
                    epoch,
                });
            }
            self.note_written(written);
            self.metrics.fixes_accepted(accepted);
            if let Some(tx) = batch.take() {
                let _ = tx.send(std::mem::take(&mut batch_results));
            }
            appends = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use cit_domain::Millis;
    use cit_store::Direction;
    use cit_store::embedded::{EmbeddedStore, Options};

    use super::*;
    use crate::clock::Clock;
    use crate::metrics::Metrics;

    fn fix(seq: u64) -> Fix {
        Fix {
            seq,
            t: Millis(1_773_000_000_000 + seq as i64 * 1000),
            lat: 57.7,
            lon: 11.97,
            speed_mps: 10.0,
            heading_deg: 90.0,
            accuracy_m: 5.0,
            ignition: true,
            door_open: false,
        }
    }

    async fn app() -> (tempfile::TempDir, Arc<App>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), Options::default()).expect("store");
        let app = App::open(
            Arc::new(store),
            Clock::scenario(),
            Arc::new(Metrics::new()),
            None,
        )
        .await
        .expect("app");
        (dir, app)
    }

    fn seqs(batch: &[(&str, &[u64])]) -> Vec<(String, Vec<Fix>)> {
        batch
            .iter()
            .map(|(v, seqs)| (v.to_string(), seqs.iter().copied().map(fix).collect()))
            .collect()
    }

    async fn stored_seqs(app: &App, vehicle_id: &str) -> Vec<u64> {
        let events = app
            .store
            .read_stream(
                &format!("vehicle-{vehicle_id}"),
                0,
                Direction::Forwards,
                100,
            )
            .await
            .expect("read");
        events
            .iter()
            .flat_map(|r| match Event::from_json(&r.data).expect("event") {
                Event::FixesRecorded { fixes, .. } => fixes,
                other => panic!("{other:?}"),
            })
            .map(|f| f.seq)
            .collect()
    }

    #[tokio::test]
    async fn a_batch_dropped_before_its_fixes_are_durable_loses_nothing_and_blocks_no_vehicle() {
        let (_dir, app) = app().await;
        // A unit that disconnects with a batch in flight: nobody waits for its results.
        drop(app.ingest(seqs(&[("V-1", &[1, 2]), ("V-2", &[1])])));
        let results = app.ingest(seqs(&[("V-1", &[2, 3])])).results().await;
        let r = results[0].1.as_ref().expect("stored");
        assert_eq!((r.durable_seq, r.accepted, r.duplicates), (3, 1, 1));
        assert_eq!(stored_seqs(&app, "V-1").await, [1, 2, 3]);
        assert_eq!(stored_seqs(&app, "V-2").await, [1]);
    }

    #[tokio::test]
    async fn fixes_queued_behind_an_append_go_together_next_in_order_and_answer_each_caller() {
        let (_dir, app) = app().await;
        let first = app.ingest(seqs(&[("V-1", &[1, 2, 3]), ("V-2", &[7])]));
        let second = app.ingest(seqs(&[("V-1", &[4, 5]), ("V-3", &[1])]));
        let third = app.ingest(seqs(&[("V-1", &[4, 5, 6]), ("V-2", &[7])]));
        let counts = |results: Vec<(String, Result<VehicleBatchResult, AppError>)>| {
            results
                .into_iter()
                .map(|(v, r)| {
                    let r = r.expect("stored");
                    (v, r.durable_seq, r.accepted, r.duplicates)
                })
                .collect::<Vec<_>>()
        };
        let (third, second, first) = (
            counts(third.results().await),
            counts(second.results().await),
            counts(first.results().await),
        );
        assert_eq!(
            first,
            [("V-1".to_string(), 3, 3, 0), ("V-2".to_string(), 7, 1, 0)]
        );
        assert_eq!(
            second,
            [("V-1".to_string(), 6, 2, 0), ("V-3".to_string(), 1, 1, 0)]
        );
        // V-1's 4 and 5 were queued behind the first append with the second batch's: the same
        // next append, where they are duplicates. V-2's 7 is a duplicate of the first append.
        assert_eq!(
            third,
            [("V-1".to_string(), 6, 1, 2), ("V-2".to_string(), 7, 0, 1)]
        );
        assert_eq!(stored_seqs(&app, "V-1").await, [1, 2, 3, 4, 5, 6]);
        let appends = app
            .store
            .read_stream("vehicle-V-1", 0, Direction::Forwards, 100)
            .await
            .expect("read")
            .len();
        assert_eq!(
            appends, 2,
            "what queued behind the first append went in one"
        );
    }
}
