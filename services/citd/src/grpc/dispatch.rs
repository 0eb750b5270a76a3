//! `cit.v1.Dispatch`: where every run is (GetRun, ListActiveRuns, NearestVehicles), the live
//! stream of changes (WatchFleet, see [`crate::watch`]), the anomaly list and workflow
//! (acknowledge, resolve).

use std::sync::Arc;
use std::time::Duration;

use cit_domain::Command;
use cit_proto::v1 as pb;
use cit_proto::v1::dispatch_server::{Dispatch, DispatchServer};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::{anomaly_to_pb, latlon, severity_from_pb, write_result};
use crate::anomalies::Anomalies;
use crate::app::App;
use crate::error::AppError;
use crate::fleet::Fleet;
use crate::watch::{Filter, Hub, Outgoing, Told, WatchCodec};
use futures::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// Longest a read waits for its own writes to reach the engine.
const READ_YOUR_WRITES_LIMIT: Duration = Duration::from_secs(10);
/// How long acknowledging or resolving an anomaly waits for the anomaly's own record (dispatch
/// may see an anomaly a group commit before it is durable).
const RECORD_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DispatchService {
    pub app: Arc<App>,
    pub anomalies: Arc<Anomalies>,
    pub fleet: Arc<Fleet>,
    pub hub: Arc<Hub>,
    /// Set when citd begins to stop: open watches end with UNAVAILABLE.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl DispatchService {
    /// The snapshot a watcher starts from (and resumes from after falling behind).
    fn snapshot(&self, filter: &Filter) -> pb::FleetEvent {
        let runs = self
            .fleet
            .active(self.app.clock.now(), &self.anomalies)
            .into_iter()
            .filter(|v| filter.run_matches(v))
            .collect();
        pb::FleetEvent {
            event: Some(pb::fleet_event::Event::Snapshot(
                pb::ListActiveRunsResponse { runs },
            )),
        }
    }

    /// A watch: the snapshot, then every matching change, `fell_behind` and a fresh snapshot
    /// when the watcher lagged out of the ring, UNAVAILABLE when citd stops.
    async fn watch(&self, req: pb::WatchFleetRequest) -> Result<WatchStream, Status> {
        let filter = watch_filter(req)?;
        // The snapshot shows everything logged before the watch began when the read models
        // catch up within the read-your-writes limit (after a restart they replay the log's
        // tail); when the engine is further behind (overload) the watcher still gets the
        // snapshot as it stands and every change after it, rather than an error.
        let head = self
            .app
            .store
            .head_position()
            .await
            .map_err(AppError::from)?;
        if let Err(e) = self.caught_up(head).await {
            tracing::warn!(cause = %e.message(), "WatchFleet snapshot taken before the read models caught up");
        }
        // Subscribe before the snapshot: a change between the two is sent (at worst twice),
        // never lost.
        let changes = BroadcastStream::new(self.hub.subscribe());
        let first = Outgoing::Own(Box::new(self.snapshot(&filter)));
        let me = self.clone();
        let watching = Watching::new(self.app.metrics.clone());
        // The run numbers this stream was told (they stay told across a fresh snapshot).
        let mut told = Told::default();
        let rest = changes.flat_map(move |c| {
            let _alive = &watching;
            let out: Vec<Result<Outgoing, Status>> = match c {
                Ok(change) => filter
                    .select(change, &mut told)
                    .into_iter()
                    .map(Ok)
                    .collect(),
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    me.app.metrics.watch_fell_behind.inc();
                    vec![
                        Ok(Outgoing::Own(Box::new(pb::FleetEvent {
                            event: Some(pb::fleet_event::Event::FellBehind(n)),
                        }))),
                        Ok(Outgoing::Own(Box::new(me.snapshot(&filter)))),
                    ]
                }
            };
            futures::stream::iter(out)
        });
        let stopping = crate::server::stopped(self.stopping.clone());
        let closing = futures::stream::once(async {
            Err(Status::unavailable(
                "citd is shutting down; watch again to resume from a snapshot",
            ))
        });
        Ok(Box::pin(
            futures::stream::once(async move { Ok(first) })
                .chain(rest)
                .take_until(stopping)
                .chain(closing),
        ))
    }

    /// Read-your-writes: waits until the read models have processed `position` (0: no wait).
    async fn caught_up(&self, position: u64) -> Result<(), Status> {
        if position > 0 {
            self.anomalies
                .wait_for(position, READ_YOUR_WRITES_LIMIT)
                .await?;
        }
        Ok(())
    }
}

type Res<T> = Result<Response<T>, Status>;

type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Outgoing, Status>> + Send>>;

/// The Dispatch service as served: the generated server for every method but `WatchFleet`,
/// which is served here with [`WatchCodec`], so a change is encoded once for all watchers
/// instead of cloned and encoded for each.
#[derive(Debug, Clone)]
pub struct DispatchRoutes {
    generated: DispatchServer<DispatchService>,
    service: DispatchService,
}

impl DispatchRoutes {
    pub fn new(service: DispatchService) -> Self {
        DispatchRoutes {
            generated: DispatchServer::new(service.clone()),
            service,
        }
    }
}

impl NamedService for DispatchRoutes {
    const NAME: &'static str = <DispatchServer<DispatchService> as NamedService>::NAME;
}

/// `WatchFleet` as a server-streaming method of [`WatchCodec`]'s messages.
struct WatchMethod(DispatchService);

impl tonic::server::ServerStreamingService<pb::WatchFleetRequest> for WatchMethod {
    type Response = Outgoing;
    type ResponseStream = WatchStream;
    type Future = BoxFuture<Response<WatchStream>, Status>;

    fn call(&mut self, req: Request<pb::WatchFleetRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { Ok(Response::new(service.watch(req.into_inner()).await?)) })
    }
}

impl<B> Service<http::Request<B>> for DispatchRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/cit.v1.Dispatch/WatchFleet" {
            return self.generated.call(req);
        }
        let method = WatchMethod(self.service.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WatchCodec);
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

fn watch_filter(r: pb::WatchFleetRequest) -> Result<Filter, Status> {
    let bbox = match &r.bbox {
        None => None,
        Some(b) => {
            let sw = latlon(b.south_west.as_ref(), "bbox.south_west").map_err(AppError::from)?;
            let ne = latlon(b.north_east.as_ref(), "bbox.north_east").map_err(AppError::from)?;
            if sw.lat > ne.lat {
                return Err(Status::invalid_argument(format!(
                    "bbox: south_west.lat {} is north of north_east.lat {}",
                    sw.lat, ne.lat
                )));
            }
            Some((sw, ne))
        }
    };
    if pb::Severity::try_from(r.min_severity).is_err() {
        return Err(Status::invalid_argument(format!(
            "min_severity: unknown value {}",
            r.min_severity
        )));
    }
    let min = severity_from_pb(r.min_severity).map(|s| super::severity_to_pb(s) as i32);
    Ok(Filter::new(r.run_ids, bbox, min))
}

/// Counts an open watch stream for as long as it lives.
struct Watching(Arc<crate::metrics::Metrics>);

impl Watching {
    fn new(m: Arc<crate::metrics::Metrics>) -> Self {
        m.watchers.inc();
        Watching(m)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watchers.dec();
    }
}

#[tonic::async_trait]
impl Dispatch for DispatchService {
    type WatchFleetStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::FleetEvent, Status>> + Send>>;

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Res<pb::RunView> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        super::run_access(&self.app, &caller, "/cit.v1.Dispatch/GetRun", &r.run_id).await?;
        self.caught_up(r.min_log_position).await?;
        self.fleet
            .view(&r.run_id, self.app.clock.now(), &self.anomalies)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("run {:?} not found", r.run_id)))
    }

    async fn list_active_runs(
        &self,
        req: Request<pb::ListActiveRunsRequest>,
    ) -> Res<pb::ListActiveRunsResponse> {
        let r = req.into_inner();
        self.caught_up(r.min_log_position).await?;
        let min = severity_from_pb(r.min_severity).map(|s| super::severity_to_pb(s) as i32);
        let runs = self
            .fleet
            .active(self.app.clock.now(), &self.anomalies)
            .into_iter()
            .filter(|v| r.vehicle_id.is_empty() || v.vehicle_id == r.vehicle_id)
            .filter(|v| min.is_none_or(|m| v.open_anomalies.iter().any(|a| a.severity >= m)))
            .collect();
        Ok(Response::new(pb::ListActiveRunsResponse { runs }))
    }

    async fn nearest_vehicles(
        &self,
        req: Request<pb::NearestVehiclesRequest>,
    ) -> Res<pb::NearestVehiclesResponse> {
        let r = req.into_inner();
        let point = latlon(r.point.as_ref(), "point").map_err(AppError::from)?;
        let k = match r.k {
            0 => 5,
            k if k > 100 => {
                return Err(Status::invalid_argument(format!("k: at most 100, got {k}")));
            }
            k => k as usize,
        };
        Ok(Response::new(pb::NearestVehiclesResponse {
            vehicles: self.fleet.nearest(point, k),
        }))
    }

    async fn watch_fleet(
        &self,
        req: Request<pb::WatchFleetRequest>,
    ) -> Res<Self::WatchFleetStream> {
        // Served by [`DispatchRoutes`] with the shared-encoding codec; this is the same stream
        // as plain messages, for callers of the trait.
        let stream = self.watch(req.into_inner()).await?;
        Ok(Response::new(Box::pin(
            stream.map(|o| o.map(Outgoing::into_event)),
        )))
    }

    async fn list_anomalies(
        &self,
        req: Request<pb::ListAnomaliesRequest>,
    ) -> Res<pb::ListAnomaliesResponse> {
        let r = req.into_inner();
        let engine_position = if r.min_log_position > 0 {
            self.anomalies
                .wait_for(r.min_log_position, READ_YOUR_WRITES_LIMIT)
                .await?
        } else {
            *self.anomalies.engine_position.borrow()
        };
        let run = Some(r.run_id.as_str()).filter(|s| !s.is_empty());
        let anomalies = self
            .anomalies
            .list(run, severity_from_pb(r.min_severity), r.include_resolved)
            .iter()
            .map(anomaly_to_pb)
            .collect();
        Ok(Response::new(pb::ListAnomaliesResponse {
            anomalies,
            engine_position,
        }))
    }

    async fn acknowledge_anomaly(
        &self,
        req: Request<pb::AcknowledgeAnomalyRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        let by = super::acting(
            &self.app,
            &caller,
            "/cit.v1.Dispatch/AcknowledgeAnomaly",
            "by",
            &r.by,
        )?;
        self.anomalies
            .until_recorded(&r.anomaly_id, RECORD_WAIT)
            .await?;
        let p = self
            .app
            .execute_by(
                &caller,
                Command::AcknowledgeAnomaly {
                    anomaly_id: r.anomaly_id,
                    by,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }

    async fn resolve_anomaly(
        &self,
        req: Request<pb::ResolveAnomalyRequest>,
    ) -> Res<pb::WriteResult> {
        let caller = super::caller(&req)?.clone();
        let r = req.into_inner();
        let by = super::acting(
            &self.app,
            &caller,
            "/cit.v1.Dispatch/ResolveAnomaly",
            "by",
            &r.by,
        )?;
        self.anomalies
            .until_recorded(&r.anomaly_id, RECORD_WAIT)
            .await?;
        let p = self
            .app
            .execute_by(
                &caller,
                Command::ResolveAnomaly {
                    anomaly_id: r.anomaly_id,
                    by,
                    outcome: r.outcome,
                    note: r.note,
                },
            )
            .await?;
        Ok(Response::new(write_result(p)))
    }
}
