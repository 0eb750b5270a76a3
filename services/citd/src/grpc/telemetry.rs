//! `cit.v1.Telemetry`: the bidirectional fix stream. Each fix is validated on its own (a bad fix
//! is rejected with its field and reason, the good ones of the batch are kept: an unregistered
//! vehicle, a seq jumping absurdly far, a device time going backwards are each a rejection of
//! those fixes, not the end of the stream); the good fixes of each vehicle are appended as one
//! batch, and the ack names the highest durable seq per vehicle only after the append is
//! durable.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use cit_domain::{Fix, Millis};
use cit_proto::v1 as pb;
use cit_proto::v1::telemetry_server::Telemetry;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::millis;
use crate::app::{App, Ingesting, MAX_FUTURE_MS};
use crate::auth::Principal;

/// Largest accepted message (also set on the server); a bigger one is RESOURCE_EXHAUSTED.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Most fixes in one batch.
pub const MAX_BATCH_FIXES: usize = 10_000;
/// Device times before this are a broken clock, not history (2000-01-01T00:00:00Z).
const EARLIEST_MS: i64 = 946_684_800_000;

#[derive(Debug)]
pub struct TelemetryService {
    pub app: Arc<App>,
    /// Becomes true when the server shuts down: open streams end with UNAVAILABLE so units
    /// reconnect (elsewhere) and resend what was not acked.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// tonic reports an oversized message as OUT_OF_RANGE; the API promises RESOURCE_EXHAUSTED
/// with the limit named.
fn oversize(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(format!(
            "message exceeds the limit of {MAX_MESSAGE_BYTES} bytes; send smaller batches ({})",
            status.message()
        ))
    } else {
        status
    }
}

/// Checks one fix; `Err((field, reason))` names what is wrong.
pub fn validate(
    f: &pb::Fix,
    now: Millis,
    check_future: bool,
) -> Result<Fix, (&'static str, String)> {
    if f.vehicle_id.is_empty() {
        return Err(("vehicle_id", "is required".into()));
    }
    if f.seq == 0 {
        return Err(("seq", "must be > 0".into()));
    }
    let t = f
        .time
        .as_ref()
        .map(millis)
        .ok_or(("time", "is required".to_string()))?;
    if t.0 < EARLIEST_MS {
        return Err((
            "time",
            format!("device time {} ms is before 2000: a broken clock", t.0),
        ));
    }
    if check_future && t.0 > now.0 + MAX_FUTURE_MS {
        return Err((
            "time",
            format!(
                "device time is {:.0} s ahead of the server clock (at most 300 s allowed)",
                (t.0 - now.0) as f64 / 1000.0
            ),
        ));
    }
    if !f.lat.is_finite() || !(-90.0..=90.0).contains(&f.lat) {
        return Err((
            "lat",
            format!("must be a finite number in [-90, 90], got {}", f.lat),
        ));
    }
    if !f.lon.is_finite() || !(-180.0..=180.0).contains(&f.lon) {
        return Err((
            "lon",
            format!("must be a finite number in [-180, 180], got {}", f.lon),
        ));
    }
    if !f.speed_mps.is_finite() || !(0.0..=100.0).contains(&f.speed_mps) {
        return Err((
            "speed_mps",
            format!("must be in [0, 100] m/s, got {}", f.speed_mps),
        ));
    }
    if !f.heading_deg.is_finite() || !(0.0..=360.0).contains(&f.heading_deg) {
        return Err((
            "heading_deg",
            format!("must be in [0, 360], got {}", f.heading_deg),
        ));
    }
    if !f.accuracy_m.is_finite() || f.accuracy_m <= 0.0 || f.accuracy_m > 1000.0 {
        return Err((
            "accuracy_m",
            format!("must be in (0, 1000] m, got {}", f.accuracy_m),
        ));
    }
    Ok(Fix {
        seq: f.seq,
        t,
        lat: f.lat,
        lon: f.lon,
        speed_mps: f.speed_mps,
        heading_deg: f.heading_deg,
        accuracy_m: f.accuracy_m,
        ignition: f.ignition,
        door_open: f.door_open,
    })
}

/// A batch validated and handed to ingest (in arrival order), waiting to be durable.
pub struct PreparedBatch {
    ack: pb::FixAck,
    ingesting: Ingesting,
}

/// The synchronous half of a batch: validation, and handing each vehicle's good fixes to
/// ingest behind its earlier ones. Done in arrival order, so batches can then complete
/// concurrently.
/// `unit` is the caller: a unit or gateway, which reports only for the vehicles it is bound
/// to (a fix of another vehicle is rejected on its own).
pub fn prepare_batch(
    app: &Arc<App>,
    unit: &Principal,
    batch: pb::FixBatch,
) -> Result<PreparedBatch, Status> {
    if batch.fixes.len() > MAX_BATCH_FIXES {
        return Err(Status::resource_exhausted(format!(
            "a batch holds at most {MAX_BATCH_FIXES} fixes, got {}",
            batch.fixes.len()
        )));
    }
    let now = app.clock.now();
    let check_future = !app.clock.is_scenario();
    let mut ack = pb::FixAck {
        batch_id: batch.batch_id,
        ..Default::default()
    };
    // Per vehicle, in batch order, each fix with its place in the batch and its numbering epoch.
    let mut by_vehicle: Vec<(String, Vec<crate::app::Placed>)> = Vec::new();
    let mut slot: HashMap<String, usize> = HashMap::new();
    let bound = crate::auth::scope::unit_vehicles(app, unit);
    for (index, f) in batch.fixes.iter().enumerate() {
        let reject = |field: &str, reason: String| pb::FixRejection {
            index: index as u32,
            vehicle_id: f.vehicle_id.clone(),
            seq: f.seq,
            field: field.to_string(),
            reason,
        };
        match validate(f, now, check_future) {
            Err((field, reason)) => ack.rejected.push(reject(field, reason)),
            Ok(_) if !bound.contains(&f.vehicle_id) => ack.rejected.push(reject(
                "vehicle_id",
                format!(
                    "{} {:?} is not bound to vehicle {:?}",
                    unit.kind.as_str(),
                    unit.id,
                    f.vehicle_id
                ),
            )),
            Ok(_) if !app.vehicle_known(&f.vehicle_id) => ack.rejected.push(reject(
                "vehicle_id",
                format!(
                    "vehicle {:?} is not registered; register it before streaming its fixes",
                    f.vehicle_id
                ),
            )),
            Ok(fix) => {
                let i = *slot.entry(f.vehicle_id.clone()).or_insert_with(|| {
                    by_vehicle.push((f.vehicle_id.clone(), Vec::new()));
                    by_vehicle.len() - 1
                });
                by_vehicle[i].1.push((index as u32, f.seq_epoch, fix));
            }
        }
    }
    for (index, vehicle_id, seq, field, reason) in app.screen(&mut by_vehicle) {
        ack.rejected.push(pb::FixRejection {
            index,
            vehicle_id,
            seq,
            field: field.to_string(),
            reason,
        });
    }
    ack.rejected.sort_by_key(|r| r.index);
    app.metrics.fixes_rejected.inc_by(ack.rejected.len() as u64);
    let by_vehicle = by_vehicle
        .into_iter()
        .map(|(v, fixes)| (v, fixes.into_iter().map(|(_, _, f)| f).collect()))
        .collect();
    Ok(PreparedBatch {
        ack,
        ingesting: app.ingest(by_vehicle),
    })
}

impl PreparedBatch {
    /// Waits until every queued fix of the batch is durable and builds the ack.
    pub async fn finish(self, app: &App) -> Result<pb::FixAck, Status> {
        let PreparedBatch { mut ack, ingesting } = self;
        for (vehicle_id, r) in ingesting.results().await {
            let r = r.map_err(Status::from)?;
            ack.accepted += r.accepted;
            ack.duplicates += r.duplicates;
            ack.log_position = ack.log_position.max(r.position);
            // In the unit's own numbering: a replaced unit counts from 1 again.
            let (seq_epoch, durable_seq) = r.unit_durable_seq();
            ack.acks.push(pb::VehicleAck {
                vehicle_id,
                durable_seq,
                seq_epoch,
            });
        }
        app.metrics
            .fixes_duplicate
            .inc_by(u64::from(ack.duplicates));
        if ack.log_position == 0 {
            ack.log_position = *app.written.borrow();
        }
        Ok(ack)
    }
}

/// Batches of one stream that may be completing at once (their acks still go out in order).
const PIPELINE: usize = 8;

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::FixAck, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type StreamFixesStream = AckStream;

    async fn stream_fixes(
        &self,
        req: Request<Streaming<pb::FixBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let unit = super::caller(&req)?.principal.clone();
        let mut inbound = req.into_inner();
        let mut units_changed = self.app.units_changed.subscribe();
        let (tx, mut rx) = mpsc::channel::<Result<pb::FixAck, Status>>(32);
        let app = self.app.clone();
        let stopping = crate::server::stopped(self.stopping.clone());
        tokio::spawn(async move {
            tokio::pin!(stopping);
            // Batches complete concurrently (so a vehicle's fixes from several batches can share
            // one append), but are queued and acknowledged strictly in arrival order.
            let mut inflight = futures::stream::FuturesOrdered::new();
            let mut inbound_open = true;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopping => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "citd is shutting down; reconnect and resend the fixes not acked",
                            )))
                            .await;
                        return;
                    }
                    // A disabled unit's stream ends at once (within the second the issue asks).
                    Ok(()) = units_changed.changed() => {
                        if crate::auth::scope::unit_vehicles(&app, &unit).is_empty() {
                            let _ = tx
                                .send(Err(Status::unauthenticated(format!(
                                    "{} {:?} is disabled or unbound",
                                    unit.kind.as_str(),
                                    unit.id
                                ))))
                                .await;
                            return;
                        }
                    }
                    done = inflight.next(), if !inflight.is_empty() => {
                        let answered = match done {
                            Some(Ok(ack)) => tx.send(Ok(ack)).await.is_ok(),
                            Some(Err(status)) => {
                                tracing::error!(cause = %status, "fix batch failed");
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                            None => true,
                        };
                        // The unit went away: nothing more to answer.
                        if !answered {
                            return;
                        }
                    }
                    msg = inbound.next(), if inbound_open && inflight.len() < PIPELINE => {
                        match msg {
                            Some(Ok(batch)) => match prepare_batch(&app, &unit, batch) {
                                Ok(prepared) => {
                                    let app = app.clone();
                                    inflight.push_back(async move { prepared.finish(&app).await });
                                }
                                Err(status) => {
                                    let _ = tx.send(Err(status)).await;
                                    return;
                                }
                            },
                            Some(Err(status)) => {
                                // Oversized or malformed message: tell the unit why, then stop.
                                let _ = tx.send(Err(oversize(status))).await;
                                return;
                            }
                            None => inbound_open = false,
                        }
                    }
                }
                if !inbound_open && inflight.is_empty() {
                    return;
                }
            }
        });
        let out = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(out)))
    }
}
