//! Dispatch and audit under load, against a release citd (embedded store, wall clock): a fleet
//! of active runs on the real Gothenburg routes (written straight into a fresh store as the log
//! of their planning, arming and departure, so setup takes seconds, then loaded by citd like any
//! log), and one 8-hour run recorded at 1 Hz. Then, in one run:
//!
//! 1. ingest at full speed with `--watchers` WatchFleet streams attached (each reading everything,
//!    counted from when each has its snapshot) against ingest with none attached just before and
//!    just after; the ratio is the cost of watching (goal: < 10 % slower). Twice:
//!    with watchers that decode every message, and with watchers that take each message's bytes
//!    without decoding them, so the 100 clients' own decoding (on the same two cores as citd
//!    here; on the consoles' machines in the field) does not count as citd's cost;
//! 2. GetRun latency on random active runs, a call every millisecond on citd's consoles' port,
//!    while `--rate` fixes/s stream in on its telemetry port (goal p99 <= 1 ms),
//!    and in the same phase fix-to-anomaly latency: a deviating batch of a probe run until the
//!    anomaly reaches a watcher (goal p99 <= 10 ms), and a crew check-in's latency (a durable
//!    command while fixes stream in);
//! 3. the 8-hour run replayed (ReplayRun, speed 0) and read (ReadRun), verified and re-detected
//!    (goal: replay < 100 ms).
//!
//!     cargo run --release -p cit-loadtest --bin dispatch-bench -- --runs 10000 --seconds 15

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cit_domain::event::Event;
use cit_domain::{DetectionParams, Fix, LatLon, Millis, Role};
use cit_loadtest::engine_drive::latlons;
use cit_loadtest::{
    Drive, Route, SimVehicle, drive_fleet, fleet, gothenburg_routes, latency_us, p50_p99_max,
};
use cit_proto::v1 as pb;
use cit_store::embedded::{EmbeddedStore, Options};
use cit_store::{EventStore, ExpectedVersion};
use citd::runner::Clients;
use citd::server::on_own_thread;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use prost::bytes::Buf;
use tonic::codec::{Codec, DecodeBuf, Decoder, ProstCodec};

#[derive(Debug, Clone, Parser)]
struct Args {
    /// Active runs (one vehicle each).
    #[arg(long, default_value_t = 10_000)]
    runs: usize,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// WatchFleet streams attached in the watched phase.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Fixes per second while GetRun is probed.
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    /// Hours of the long run replayed (1 fix per second).
    #[arg(long, default_value_t = 8)]
    long_run_hours: u64,
    #[arg(long, default_value_t = 8)]
    streams: usize,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// libpq-style connection string of a PostgreSQL to run GetRun's peer on (needs the `peers`
    /// feature): the run's row read by key while rows are updated at `--rate`.
    #[arg(long)]
    peer_postgres: Option<String>,
    /// In the paced phase, all streams send their batches at the same instants (every gateway
    /// flushing together: the worst case for latency) instead of spread evenly.
    #[arg(long)]
    in_step: bool,
    /// Only the paced phase (GetRun, fix-to-anomaly, check-ins): to compare builds on it.
    #[arg(long)]
    paced_only: bool,
    /// Unauthenticated calls per second sent during the paced phase (GetRun with no token on
    /// connections with no certificate): what a flood of bad calls does to the probes.
    #[arg(long, default_value_t = 0.0)]
    flood: f64,
}

/// Sends `per_s` unauthenticated GetRun calls a second until `until`, on 8 connections with
/// no certificate and no token; returns (sent, denied as UNAUTHENTICATED).
async fn flood(endpoint: String, per_s: f64, until: Instant) -> (u64, u64) {
    let creds = Arc::new(citd::credentials::Credentials {
        ca: cit_loadtest::creds().ca.clone(),
        ..Default::default()
    });
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(
            Clients::connect(&endpoint, creds.clone())
                .await
                .expect("connect"),
        );
    }
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let denied = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // At most this many calls outstanding: a flood that outruns citd is dropped here, counted
    // as not sent, rather than queued without bound in the client.
    let slots = Arc::new(tokio::sync::Semaphore::new(1024));
    let per_tick = (per_s / 100.0).round() as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut k = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        for _ in 0..per_tick {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                break;
            };
            k += 1;
            let mut d = clients[k % clients.len()].dispatch.clone();
            let (sent, denied) = (sent.clone(), denied.clone());
            tokio::spawn(async move {
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let r = d
                    .get_run(pb::GetRunRequest {
                        run_id: "R-00001".into(),
                        min_log_position: 0,
                    })
                    .await;
                if matches!(r, Err(ref s) if s.code() == tonic::Code::Unauthenticated) {
                    denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                drop(slot);
            });
        }
    }
    (
        sent.load(std::sync::atomic::Ordering::Relaxed),
        denied.load(std::sync::atomic::Ordering::Relaxed),
    )
}

const LONG_RUN: &str = "R-LONG";
/// Fix-to-anomaly probes, one run each.
const PROBES: usize = 200;

fn probe_run(k: usize) -> String {
    format!("P-{k:03}")
}

fn probe_vehicle(k: usize) -> String {
    format!("PV-{k:03}")
}

/// Fix-to-anomaly latency: for each probe run, one batch of three fixes 200 m off its route
/// spanning 10 s (a route deviation by the default rule: 3 fixes, 10 s), and the time until the
/// `route_deviation` reaches a WatchFleet watcher. The path is the product's: validation, durable
/// append, the engine's subscription, the anomaly's durable append, the watch ring, gRPC. The
/// probes are spread evenly over `phase`, so they sample all of it (a stall anywhere in it
/// shows), not its first fraction of a second.
async fn fix_to_anomaly(ports: &Ports, start: LatLon, phase: Duration) -> Probes {
    // The unit's fixes on the telemetry port, the dispatcher's watch on the consoles' port.
    let mut c = Clients::connect(&ports.endpoint(), cit_loadtest::creds())
        .await
        .expect("connect");
    let mut console = Clients::connect(&ports.console(), cit_loadtest::creds())
        .await
        .expect("connect");
    let mut w = console
        .dispatch
        .watch_fleet(pb::WatchFleetRequest {
            run_ids: (0..PROBES).map(probe_run).collect(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let (tx, mut acks) = c.fix_stream(1).await.expect("stream");
    let mut h = Probes {
        anomaly: latency_us(),
        ack: latency_us(),
        after_ack: latency_us(),
    };
    let mut every = tokio::time::interval(phase / PROBES as u32);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for k in 0..PROBES {
        every.tick().await;
        let now = citd::clock::wall_now();
        let fixes = (0..3u64)
            .map(|i| pb::Fix {
                vehicle_id: probe_vehicle(k),
                seq: i + 1,
                time: Some(citd::grpc::ts(Millis(now.0 - 10_000 + i as i64 * 5_000))),
                lat: start.lat + 0.0018,
                lon: start.lon,
                speed_mps: 10.0,
                heading_deg: 0.0,
                accuracy_m: 5.0,
                ignition: true,
                door_open: false,
                seq_epoch: 0,
            })
            .collect();
        let t = Instant::now();
        tx.send(pb::FixBatch {
            fixes,
            batch_id: k as u64 + 1,
        })
        .await
        .expect("send");
        // The batch's durable ack and the anomaly, each timed as it arrives: the difference
        // is the engine's part (its queue, detection, the anomaly's own durable append).
        let acked = async {
            acks.message().await.expect("ack").expect("ack open");
            t.elapsed()
        };
        let raised = async {
            loop {
                let m = w.message().await.expect("watch").expect("watch open");
                if let Some(pb::fleet_event::Event::Anomaly(a)) = m.event
                    && a.run_id == probe_run(k)
                    && a.kind == "route_deviation"
                {
                    return t.elapsed();
                }
            }
        };
        let (acked, raised) = tokio::join!(acked, raised);
        let _ = h.anomaly.record(raised.as_micros().max(1) as u64);
        let _ = h.ack.record(acked.as_micros().max(1) as u64);
        let _ = h
            .after_ack
            .record(raised.saturating_sub(acked).as_micros().max(1) as u64);
    }
    h
}

/// Fix-to-anomaly probes: until the anomaly reached the watcher, and until the fixes' ack.
struct Probes {
    anomaly: Histogram<u64>,
    ack: Histogram<u64>,
    /// From the ack to the anomaly: the engine's queue, detection, the anomaly's durable append,
    /// the watch.
    after_ack: Histogram<u64>,
}

fn encode(e: &Event) -> cit_store::NewEvent {
    citd::app::encode(e, uuid::Uuid::now_v7(), "dispatch-bench")
}

/// Appends each event to its own stream, many at once (the store commits them in groups).
async fn append_all(store: &EmbeddedStore, events: Vec<Event>) {
    for chunk in events.chunks(4096) {
        let appends = chunk
            .iter()
            .map(|e| store.append(&e.stream(), ExpectedVersion::Any, vec![encode(e)]));
        for r in futures::future::join_all(appends).await {
            r.expect("append");
        }
    }
}

/// The log of `n` armed, departed runs plus one long run with its fixes.
async fn write_fixture(dir: &std::path::Path, args: &Args, routes: &[Route], fleet: &[SimVehicle]) {
    let store = EmbeddedStore::open(dir, Options::default()).expect("store");
    let at = citd::clock::wall_now();
    let long_start = Millis(at.0 - args.long_run_hours as i64 * 3_600_000);
    let mut runs: Vec<(String, &str, usize)> = fleet
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("R-{i:05}"), v.id.as_str(), v.route))
        .collect();
    runs.push((LONG_RUN.into(), "LV-LONG", 0));
    // Probe runs for fix-to-anomaly latency: their vehicles are not in the driven fleet.
    let probe_vehicles: Vec<String> = (0..PROBES).map(probe_vehicle).collect();
    for (k, v) in probe_vehicles.iter().enumerate() {
        runs.push((probe_run(k), v.as_str(), 0));
    }
    let mut register = vec![Event::AmmoLotRegistered {
        lot: "LOT-1".into(),
        rounds: 30 * runs.len() as u32,
        at,
    }];
    for (k, (_, vehicle, _)) in runs.iter().enumerate() {
        register.push(Event::VehicleRegistered {
            vehicle_id: vehicle.to_string(),
            plate: vehicle.to_string(),
            armoured: true,
            at,
        });
        for (who, role) in [("D", Role::Driver), ("E", Role::Escort)] {
            register.push(Event::PersonRegistered {
                person_id: format!("{who}-{k}"),
                name: format!("{who} {k}"),
                role,
                at,
            });
        }
        register.push(Event::WeaponRegistered {
            serial: format!("G-{k}"),
            kind: "pistol".into(),
            at,
        });
    }
    append_all(&store, register).await;
    let planned_at = |run: &str| if run == LONG_RUN { long_start } else { at };
    let plans = runs
        .iter()
        .enumerate()
        .map(|(k, (run, vehicle, route))| Event::RunPlanned {
            run_id: run.clone(),
            vehicle_id: vehicle.to_string(),
            driver_id: format!("D-{k}"),
            escort_ids: vec![format!("E-{k}")],
            route: latlons(&routes[*route]),
            stops: vec![],
            params: DetectionParams::default(),
            cash_boxes: vec![],
            at: planned_at(run),
        })
        .collect();
    append_all(&store, plans).await;
    let issues = runs
        .iter()
        .enumerate()
        .map(|(k, (run, _, _))| Event::WeaponIssued {
            run_id: run.clone(),
            serial: format!("G-{k}"),
            lot: "LOT-1".into(),
            rounds: 30,
            to: format!("E-{k}"),
            gun_custodian: "GC".into(),
            ammo_custodian: "AC".into(),
            approver: "AP".into(),
            at: planned_at(run),
        })
        .collect();
    append_all(&store, issues).await;
    let ready = runs
        .iter()
        .enumerate()
        .map(|(k, (run, _, _))| Event::EscortReadied {
            run_id: run.clone(),
            person_id: format!("E-{k}"),
            weapon: Some(format!("G-{k}")),
            vest: true,
            helmet: true,
            at: planned_at(run),
        })
        .collect();
    append_all(&store, ready).await;
    let departures = runs
        .iter()
        .map(|(run, vehicle, _)| Event::RunDeparted {
            run_id: run.clone(),
            vehicle_id: vehicle.to_string(),
            at: planned_at(run),
        })
        .collect();
    append_all(&store, departures).await;
    // The long run: a fix a second for the whole shift, recorded in batches of ten as units send.
    let mut unit = SimVehicle {
        id: "LV-LONG".into(),
        route: 0,
        offset_m: 0.0,
        speed_mps: 10.0,
        seq: 0,
    };
    let fixes: Vec<Fix> = (0..args.long_run_hours * 3600)
        .map(|_| unit.next_fix(routes, long_start.0).to_domain())
        .collect();
    let batches: Vec<cit_store::NewEvent> = fixes
        .chunks(10)
        .map(|c| {
            encode(&Event::FixesRecorded {
                vehicle_id: "LV-LONG".into(),
                epoch: None,
                run_id: Some(LONG_RUN.into()),
                fixes: c.to_vec(),
            })
        })
        .collect();
    store
        .append(&format!("run-{LONG_RUN}"), ExpectedVersion::Any, batches)
        .await
        .expect("long run");
    store.close();
}

/// A loopback port free at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// citd's ports: telemetry (and everything else), metrics, and the consoles' port, which the
/// dispatch side of this bench uses (GetRun, watchers), as a dispatch centre would.
#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: u16,
    metrics: u16,
    console: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            grpc: free_port(),
            metrics: free_port(),
            console: free_port(),
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc)
    }

    fn console(&self) -> String {
        format!("https://127.0.0.1:{}", self.console)
    }
}

fn spawn_citd(dir: &std::path::Path, ports: &Ports) -> std::process::Child {
    let exe = std::env::current_exe().expect("exe").with_file_name("citd");
    std::process::Command::new(&exe)
        .args(cit_loadtest::pki_args(dir, false))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", ports.grpc),
            "--metrics-listen",
            &format!("127.0.0.1:{}", ports.metrics),
            "--console-listen",
            &format!("127.0.0.1:{}", ports.console),
        ])
        .arg("--data-dir")
        .arg(dir)
        // citd's log level: errors only, unless the bench is told otherwise (to see what citd
        // did during a run).
        .env(
            "CIT_LOG",
            std::env::var("DISPATCH_BENCH_CITD_LOG").unwrap_or_else(|_| "error".into()),
        )
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (cargo build --release -p citd)",
                exe.display()
            )
        })
}

/// citd's own histogram of an RPC's latency (`cit_rpc_seconds`, cumulative buckets): (upper
/// bound in seconds, calls at or under it).
async fn rpc_buckets(metrics_port: u16, method: &str) -> Vec<(f64, u64)> {
    buckets(
        metrics_port,
        "cit_rpc_seconds",
        &format!("method=\"{method}\""),
    )
    .await
}

/// One of citd's histograms (cumulative buckets), its series carrying `label` (or any, if it
/// is empty): (upper bound, count at or under it).
async fn buckets(metrics_port: u16, name: &str, label: &str) -> Vec<(f64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
        .await
        .expect("metrics port");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: cit\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("metrics");
    let series = format!("{name}_bucket{{");
    body.lines()
        .filter(|l| l.starts_with(&series) && l.contains(label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The store's histograms: a group commit's hold on the writer, its fsync, a batch's append.
async fn store_buckets(metrics_port: u16) -> [Vec<(f64, u64)>; 3] {
    [
        buckets(metrics_port, "cit_group_commit_seconds", "").await,
        buckets(metrics_port, "cit_fsync_seconds", "").await,
        buckets(metrics_port, "cit_append_seconds", "").await,
    ]
}

/// The smallest bucket bound, ms, under which `q` of the calls between two readings fell.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0, |(_, n)| *n);
            (*le, n - was)
        })
        .collect();
    let total = counts.last().map_or(0, |(_, n)| *n);
    counts
        .iter()
        .find(|(_, n)| *n as f64 >= q * total as f64)
        .map_or(f64::NAN, |(le, _)| le * 1000.0)
}

/// A call's answer and how long it took, ms.
async fn timed<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> (T, f64) {
    let t = Instant::now();
    let answer = call.await.expect("audit call").into_inner();
    (answer, t.elapsed().as_secs_f64() * 1000.0)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// What the watchers of a phase received.
#[derive(Debug, Default)]
struct Received {
    messages: AtomicU64,
    /// Changes (a batch of positions counts one per run), or bytes for raw watchers.
    changes: AtomicU64,
}

/// Reads `WatchFleet` messages as their length in bytes, without decoding them.
#[derive(Debug, Default, Clone, Copy)]
struct RawWatchCodec;

struct RawLength;

impl Decoder for RawLength {
    type Item = u64;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<u64>, tonic::Status> {
        let n = buf.remaining();
        buf.advance(n);
        Ok(Some(n as u64))
    }
}

impl Codec for RawWatchCodec {
    type Encode = pb::WatchFleetRequest;
    type Decode = u64;
    type Encoder = <ProstCodec<pb::WatchFleetRequest, pb::FleetEvent> as Codec>::Encoder;
    type Decoder = RawLength;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<pb::WatchFleetRequest, pb::FleetEvent>::default().encoder()
    }

    fn decoder(&mut self) -> RawLength {
        RawLength
    }
}

/// `n` WatchFleet streams, each on its own connection, reading everything until `stop`:
/// decoding each message, or (`raw`) taking its bytes only. Returns once every watcher has its
/// snapshot (the first message), so the measured phase is watching, not attaching.
async fn watchers(
    endpoint: &str,
    n: usize,
    raw: bool,
    stop: Arc<tokio::sync::Notify>,
) -> Arc<Received> {
    let received = Arc::new(Received::default());
    let (attached, mut snapshots) = tokio::sync::mpsc::channel::<()>(n.max(1));
    for _ in 0..n {
        // Each stream yields the changes a message carried (or, raw, its bytes).
        let w: futures::stream::BoxStream<'static, Result<u64, tonic::Status>> = if raw {
            let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.expect("ready");
            let path =
                tonic::codegen::http::uri::PathAndQuery::from_static("/cit.v1.Dispatch/WatchFleet");
            let request = tonic::Request::new(pb::WatchFleetRequest::default());
            grpc.server_streaming(request, path, RawWatchCodec)
                .await
                .expect("watch")
                .into_inner()
                .boxed()
        } else {
            let mut c = Clients::connect(endpoint, cit_loadtest::creds())
                .await
                .expect("connect");
            c.dispatch
                .watch_fleet(pb::WatchFleetRequest::default())
                .await
                .expect("watch")
                .into_inner()
                // A batch of positions is one change per run in it.
                .map_ok(|m| match &m.event {
                    Some(pb::fleet_event::Event::RunsMoved(b)) => b.run.len() as u64,
                    // Names for the numbers of the batches, not a change.
                    Some(pb::fleet_event::Event::RunsNamed(_)) => 0,
                    _ => 1,
                })
                .boxed()
        };
        let (received, stop, attached) = (received.clone(), stop.clone(), attached.clone());
        tokio::spawn(async move {
            let mut w = w;
            // The snapshot is not counted: it is what attaching costs, reported apart.
            if !matches!(w.next().await, Some(Ok(_))) {
                return;
            }
            let _ = attached.send(()).await;
            loop {
                tokio::select! {
                    _ = stop.notified() => return,
                    m = w.next() => match m {
                        Some(Ok(n)) => {
                            received.messages.fetch_add(1, Ordering::Relaxed);
                            received.changes.fetch_add(n, Ordering::Relaxed);
                        }
                        _ => return,
                    },
                }
            }
        });
    }
    drop(attached);
    for _ in 0..n {
        // None: a watcher ended before its snapshot (every sender is gone).
        if snapshots.recv().await.is_none() {
            break;
        }
    }
    received
}

/// Ingest at full speed for `--seconds`: fixes/s acked.
async fn full_speed(
    endpoint: &str,
    vehicles: &mut Vec<SimVehicle>,
    routes: &Arc<Vec<Route>>,
    args: &Args,
    drive: Drive,
) -> f64 {
    let secs = args.seconds as f64;
    drive_fleet(
        endpoint,
        vehicles,
        routes.clone(),
        args.streams,
        drive,
        secs,
    )
    .await
    .0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let routes = Arc::new(gothenburg_routes().expect("routes from ../shared/data"));
    let mut vehicles = fleet(args.runs, &routes);
    let dir = tempfile::tempdir().expect("tmp");
    let t = Instant::now();
    write_fixture(dir.path(), &args, &routes, &vehicles).await;
    println!(
        "fixture: {} active runs on {} real routes + one {} h run at 1 Hz, written in {:.1} s",
        args.runs,
        routes.len(),
        args.long_run_hours,
        t.elapsed().as_secs_f64()
    );
    let ports = Ports::free();
    let mut child = spawn_citd(dir.path(), &ports);
    let endpoint = ports.endpoint();
    let (mut c, up) = ready(&endpoint).await;
    cit_loadtest::bind_gateway(&mut c).await;
    let active = c
        .dispatch
        .list_active_runs(pb::ListActiveRunsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .runs
        .len();
    println!("citd up with {active} active runs in {up:.1} s");

    let drive = Drive {
        batch: args.batch,
        inflight: args.inflight,
        rate: None,
        in_step: args.in_step,
    };
    let secs = args.seconds as f64;
    // Ingest slows as the store grows (more streams' index pages dirtied per commit), so each
    // watched phase is compared with the unwatched phases just before and just after it.
    let mut before = if args.paced_only {
        0.0
    } else {
        full_speed(&endpoint, &mut vehicles, &routes, &args, drive).await
    };
    for raw in [false, true].into_iter().filter(|_| !args.paced_only) {
        let stop = Arc::new(tokio::sync::Notify::new());
        let t = Instant::now();
        let received = watchers(&ports.console(), args.watchers, raw, stop.clone()).await;
        let attach = t.elapsed().as_secs_f64();
        let watched = full_speed(&endpoint, &mut vehicles, &routes, &args, drive).await;
        stop.notify_waiters();
        ready(&endpoint).await;
        let after = full_speed(&endpoint, &mut vehicles, &routes, &args, drive).await;
        let bare = (before + after) / 2.0;
        let (messages, changes) = (
            received.messages.load(Ordering::Relaxed),
            received.changes.load(Ordering::Relaxed),
        );
        let what = if raw {
            format!(
                "{messages} messages, {:.0} MiB, not decoded",
                changes as f64 / 1_048_576.0
            )
        } else {
            format!("{messages} messages, {changes} changes, decoded")
        };
        println!(
            "ingest with {} WatchFleet watchers{}: ours {watched:.0} fixes/s | none attached {bare:.0} fixes/s (just before {before:.0}, just after {after:.0}) | ratio {:.2}x (goal >= 0.90); watchers received {what} (after each had its snapshot; all attached in {attach:.1} s)",
            args.watchers,
            if raw { " taking bytes only" } else { "" },
            watched / bare,
        );
        // Let the engine catch up before the next phase.
        ready(&endpoint).await;
        before = after;
    }

    // The watched phase may leave the engine behind: start the next one from a current citd.
    let (_, settle) = ready(&endpoint).await;
    println!("engine current again {settle:.1} s after the watched phase");

    // GetRun on random active runs while the fleet streams at the target rate.
    let get_run_before = rpc_buckets(ports.metrics, "Dispatch/GetRun").await;
    let store_before = store_buckets(ports.metrics).await;
    let probe_deadline = Instant::now() + Duration::from_secs(args.seconds);
    let n_runs = args.runs;
    // Each probe on its own thread and connection: what it times is citd's answer, not its turn
    // among the load driver's tasks in this process. GetRun goes to the consoles' port, a call
    // every millisecond (a dispatch centre's hundred consoles refreshing a run ten times a
    // second), not as fast as answers come: a closed loop there takes the cores from ingest.
    let probe = on_own_thread("getrun-probe", {
        let endpoint = ports.console();
        async move {
            let mut c = Clients::connect(&endpoint, cit_loadtest::creds())
                .await
                .expect("connect");
            let mut h = latency_us();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut every = tokio::time::interval(Duration::from_millis(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < probe_deadline {
                every.tick().await;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let run_id = format!("R-{:05}", x % n_runs as u64);
                let t = Instant::now();
                c.dispatch
                    .get_run(pb::GetRunRequest {
                        run_id,
                        min_log_position: 0,
                    })
                    .await
                    .expect("get run");
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
            }
            h
        }
    })
    .expect("probe thread");
    // A crew check-in every 20 ms on runs spread over the fleet: a command's durable answer while fixes
    // stream in (fixes are bulk appends; a command must not queue behind them).
    let checkin_probe = on_own_thread("checkin-probe", {
        let endpoint = endpoint.clone();
        async move {
            let c = Clients::connect(&endpoint, cit_loadtest::creds())
                .await
                .expect("connect");
            let mut h = latency_us();
            let mut every = tokio::time::interval(Duration::from_millis(20));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut k: u64 = 0;
            while Instant::now() < probe_deadline {
                every.tick().await;
                k = (k + 7_919) % n_runs as u64;
                // The escort's own token, minted outside the timed call.
                let mut escort = c.as_person(&format!("E-{k}"), &["escort"]);
                let t = Instant::now();
                escort
                    .runs
                    .check_in(pb::CheckInRequest {
                        run_id: format!("R-{k:05}"),
                        person_id: format!("E-{k}"),
                        code: pb::CheckInCode::Ok as i32,
                        ..Default::default()
                    })
                    .await
                    .expect("check in");
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
            }
            h
        }
    })
    .expect("probe thread");
    let paced = Drive {
        rate: Some(args.rate / args.streams as f64),
        ..drive
    };
    let start = latlons(&routes[0])[0];
    let flooding = (args.flood > 0.0).then(|| {
        let (endpoint, per_s) = (endpoint.clone(), args.flood);
        let until = Instant::now() + Duration::from_secs(args.seconds);
        on_own_thread("flood", flood(endpoint, per_s, until)).expect("flood thread")
    });
    let anomaly_probe = on_own_thread("anomaly-probe", {
        let phase = Duration::from_secs(args.seconds);
        async move { fix_to_anomaly(&ports, start, phase).await }
    })
    .expect("probe thread");
    let (rate, _) = drive_fleet(
        &endpoint,
        &mut vehicles,
        routes.clone(),
        args.streams,
        paced,
        secs,
    )
    .await;
    let h = probe.await.expect("probe");
    #[cfg_attr(not(feature = "peers"), allow(unused_variables))]
    let get_run_p99_us = h.value_at_quantile(0.99);
    let f2a = anomaly_probe.await.expect("fix-to-anomaly probe");
    if let Some(f) = flooding {
        let (sent, denied) = f.await.expect("flood");
        println!(
            "flood: {sent} unauthenticated calls in {} s ({:.0}/s), {denied} answered UNAUTHENTICATED",
            args.seconds,
            sent as f64 / args.seconds as f64
        );
    }
    let checkins = checkin_probe.await.expect("check-in probe");
    let get_run_after = rpc_buckets(ports.metrics, "Dispatch/GetRun").await;
    let store_after = store_buckets(ports.metrics).await;
    println!(
        "GetRun (consoles' port, a call a millisecond) with {} active runs under {rate:.0} fixes/s of ingest ({} streams, their batches {}): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} calls (goal p99 <= 1 ms)",
        args.runs,
        args.streams,
        if args.in_step {
            "in step"
        } else {
            "spread evenly"
        },
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len()
    );
    println!(
        "  GetRun inside citd (its cit_rpc_seconds, same calls): p50 <= {} ms, p99 <= {} ms (bucket bounds)",
        bucket_quantile(&get_run_before, &get_run_after, 0.5),
        bucket_quantile(&get_run_before, &get_run_after, 0.99)
    );
    println!(
        "fix-to-anomaly through gRPC (route_deviation to a WatchFleet watcher) under the same load: {} over {} probes spread over the phase, {} over 10 ms (goal p99 <= 10 ms)",
        p50_p99_max(&f2a.anomaly),
        f2a.anomaly.len(),
        f2a.anomaly
            .count_between(10_001, f2a.anomaly.max().max(10_001))
    );
    println!(
        "  of which the fixes' durable ack: {}; from the ack to the anomaly: {}",
        p50_p99_max(&f2a.ack),
        p50_p99_max(&f2a.after_ack)
    );
    let [group, fsync, append] = std::array::from_fn(|i| {
        let q = |q| bucket_quantile(&store_before[i], &store_after[i], q);
        format!("p50 <= {} ms, p99 <= {} ms", q(0.5), q(0.99))
    });
    println!(
        "  inside citd (bucket bounds): a group commit held the store's writer {group}, its fsync {fsync}; a batch of fixes waited for its durable append {append}"
    );
    println!(
        "crew check-in (a durable command) under the same load: {} over {} calls",
        p50_p99_max(&checkins),
        checkins.len()
    );

    if args.paced_only {
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    // The long run: replayed once right after the load (its pages long out of the store's
    // cache, as for an audit of an old run), then five times more (the median).
    let (events, fixes, replay_ms) = replay_long_run(&mut c).await;
    let mut again = Vec::new();
    for _ in 0..5 {
        again.push(replay_long_run(&mut c).await.2);
    }
    again.sort_by(f64::total_cmp);
    let mut audit = c.audit.clone();
    let (verified, verify_ms) = timed(audit.verify_run(pb::VerifyRunRequest {
        run_id: LONG_RUN.into(),
    }))
    .await;
    let (redetected, redetect_ms) = timed(c.audit.redetect_run(pb::RedetectRunRequest {
        run_id: LONG_RUN.into(),
    }))
    .await;
    println!(
        "replay of a {} h run ({fixes} fixes, {events} events with custody): {replay_ms:.1} ms the first time, median of 5 more {:.1} ms (goal < 100 ms); VerifyRun {verify_ms:.1} ms (ok: {}); RedetectRun {redetect_ms:.1} ms (reproduced: {})",
        args.long_run_hours, again[2], verified.ok, redetected.reproduced
    );
    for d in redetected.differences.iter().take(3) {
        println!("  re-detection difference: {d}");
    }
    restarts(&mut child, dir.path(), &ports).await;
    #[cfg(feature = "peers")]
    if let Some(conn) = &args.peer_postgres {
        // citd has stopped: the peer has the machine as citd had it. The synchronous client
        // must not run on the async runtime's threads.
        let (conn, a) = (conn.clone(), args.clone());
        let peer = tokio::task::spawn_blocking(move || postgres_get_run_peer(&conn, &a))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match peer {
            Ok((rate, p)) => println!(
                "GetRun's peer, PostgreSQL as the read model: one run's row by primary key under {rate:.0} durable row updates/s: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} calls | ours p99 {:.3} ms | peer p99 / ours {:.2}x",
                ms(p.value_at_quantile(0.5)),
                ms(p.value_at_quantile(0.99)),
                ms(p.max()),
                p.len(),
                ms(get_run_p99_us),
                p.value_at_quantile(0.99) as f64 / get_run_p99_us.max(1) as f64
            ),
            Err(e) => println!("GetRun's peer, PostgreSQL: failed: {e}"),
        }
    }
    #[cfg(not(feature = "peers"))]
    if args.peer_postgres.is_some() {
        println!("(the PostgreSQL peer needs --features peers)");
    }
}

/// GetRun's peer: PostgreSQL as the dispatch read model, one row per active run (position,
/// speed, heading, last fix time, progress, open anomalies). `--streams` connections update
/// `--rate` rows a second in all, in durable transactions of `--batch` rows (one `UPDATE ...
/// FROM unnest(...)` each), spread evenly over the batch period as our load driver's streams;
/// meanwhile one connection reads a random run's row by key every millisecond, as GetRun is
/// probed. A row is much less than GetRun's answer (no next stop, ETA, crew or anomaly list),
/// and the peer's writes are much less work than citd's ingest: both favour the peer.
/// Returns the row updates per second achieved and the reads' latencies.
#[cfg(feature = "peers")]
fn postgres_get_run_peer(conn: &str, args: &Args) -> Result<(f64, Histogram<u64>), String> {
    // The server's own message (the client's Display says only "db error").
    let err = |e: postgres::Error| {
        e.as_db_error().map_or_else(
            || e.to_string(),
            |d| format!("{}: {}", d.severity(), d.message()),
        )
    };
    let mut setup = postgres::Client::connect(conn, postgres::NoTls).map_err(err)?;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS run_view;
             CREATE TABLE run_view(run_id text PRIMARY KEY, vehicle_id text, lat double precision,
               lon double precision, speed double precision, heading double precision,
               last_fix_at timestamptz, progress_m double precision, open_anomalies int);
             INSERT INTO run_view SELECT 'R-' || lpad(i::text, 5, '0'), 'V-' || i, 57.7, 11.97,
               0, 0, now(), 0, 0 FROM generate_series(0, {}) AS i;",
            args.runs - 1
        ))
        .map_err(err)?;
    // Not in the batch above: VACUUM cannot run inside its implicit transaction.
    setup
        .batch_execute("VACUUM ANALYZE run_view")
        .map_err(err)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let per_stream = args.rate / args.streams as f64;
    let updated = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..args.streams)
        .map(|k| {
            let (conn, updated) = (conn.to_string(), updated.clone());
            let (runs, streams, batch) = (args.runs, args.streams, args.batch);
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = postgres::Client::connect(&conn, postgres::NoTls).map_err(err)?;
                c.batch_execute("SET synchronous_commit = on")
                    .map_err(err)?;
                let update = c
                    .prepare(
                        "UPDATE run_view v SET lat = u.lat, lon = u.lon, speed = u.speed,
                           heading = u.heading, last_fix_at = now(),
                           progress_m = v.progress_m + u.speed
                         FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[],
                           $5::float8[]) AS u(run_id, lat, lon, speed, heading)
                         WHERE v.run_id = u.run_id",
                    )
                    .map_err(err)?;
                let mine: Vec<String> = (k..runs)
                    .step_by(streams)
                    .map(|r| format!("R-{r:05}"))
                    .collect();
                let offset = batch as f64 / per_stream * k as f64 / streams as f64;
                let (mut sent, mut next) = (0u64, 0usize);
                while Instant::now() < deadline {
                    let due = started + Duration::from_secs_f64(offset + sent as f64 / per_stream);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let ids: Vec<&str> = (0..batch.min(mine.len()))
                        .map(|_| {
                            next += 1;
                            mine[next % mine.len()].as_str()
                        })
                        .collect();
                    let jitter = |i: usize| (next + i) as f64 * 1e-7;
                    let lat: Vec<f64> = (0..ids.len()).map(|i| 57.7 + jitter(i)).collect();
                    let lon: Vec<f64> = (0..ids.len()).map(|i| 11.97 + jitter(i)).collect();
                    let speed = vec![12.5f64; ids.len()];
                    let heading = vec![90.0f64; ids.len()];
                    c.execute(&update, &[&ids, &lat, &lon, &speed, &heading])
                        .map_err(err)?;
                    sent += ids.len() as u64;
                    updated.fetch_add(ids.len() as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut reader = postgres::Client::connect(conn, postgres::NoTls).map_err(err)?;
    let select = reader
        .prepare("SELECT * FROM run_view WHERE run_id = $1")
        .map_err(err)?;
    let mut h = latency_us();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    // A read a millisecond, as GetRun is probed.
    let mut due = Instant::now();
    while Instant::now() < deadline {
        due += Duration::from_millis(1);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run_id = format!("R-{:05}", x % args.runs as u64);
        let t = Instant::now();
        reader.query_one(&select, &[&run_id]).map_err(err)?;
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
    }
    for w in writers {
        w.join().map_err(|_| "peer writer panicked".to_string())??;
    }
    let rate = updated.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, h))
}

/// Replays the long run as fast as possible with its custody events; returns the events, the
/// fixes among them and the milliseconds until the last event arrived.
async fn replay_long_run(c: &mut Clients) -> (usize, usize, f64) {
    let t = Instant::now();
    let mut replay = c
        .audit
        .replay_run(pb::ReplayRunRequest {
            run_id: LONG_RUN.into(),
            speed: 0.0,
            include_custody: true,
        })
        .await
        .expect("replay")
        .into_inner();
    let (mut events, mut fixes) = (0usize, 0usize);
    while let Some(e) = replay.message().await.expect("event") {
        events += 1;
        if e.event_type == "FixesRecorded.v1" {
            fixes += e.data_json.matches("\"seq\"").count();
        }
    }
    (events, fixes, t.elapsed().as_secs_f64() * 1000.0)
}

/// Connects once citd is current: a write's position has reached the read models. Returns the
/// clients and the seconds it took.
async fn ready(endpoint: &str) -> (Clients, f64) {
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        n += 1;
        if let Ok(mut c) = Clients::connect(endpoint, cit_loadtest::creds()).await
            && let Ok(w) = c
                .runs
                .register_vehicle(pb::RegisterVehicleRequest {
                    vehicle_id: format!("READY-{}-{n}", citd::clock::wall_now().0),
                    plate: "READY".into(),
                    armoured: true,
                })
                .await
        {
            let position = w.into_inner().log_position;
            loop {
                match c
                    .dispatch
                    .get_run(pb::GetRunRequest {
                        run_id: LONG_RUN.into(),
                        min_log_position: position,
                    })
                    .await
                {
                    Ok(_) => return (c, t.elapsed().as_secs_f64()),
                    Err(e) if e.code() == tonic::Code::DeadlineExceeded => continue,
                    Err(e) => panic!("get run: {e}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops citd gracefully (it writes its engine snapshot), restarts it from the snapshot, then
/// again without one (the whole log replayed), and prints how long each took to be current.
async fn restarts(child: &mut std::process::Child, dir: &std::path::Path, ports: &Ports) {
    let endpoint = ports.endpoint();
    let stop = |child: &mut std::process::Child| {
        let t = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        t.elapsed().as_secs_f64()
    };
    let stopped = stop(child);
    let snapshot = std::fs::metadata(citd::snapshot::path(dir)).map_or(0, |m| m.len());
    let log = std::fs::metadata(dir.join("events.redb")).map_or(0, |m| m.len());
    *child = spawn_citd(dir, ports);
    let (_, from_snapshot) = ready(&endpoint).await;
    stop(child);
    std::fs::remove_file(citd::snapshot::path(dir)).expect("remove snapshot");
    *child = spawn_citd(dir, ports);
    let (_, from_log) = ready(&endpoint).await;
    println!(
        "restart (store {:.0} MiB): graceful stop with snapshot {stopped:.1} s ({:.1} MiB); current again from the snapshot in {from_snapshot:.1} s | replaying the whole log {from_log:.1} s | ratio {:.2}x",
        log as f64 / 1048576.0,
        snapshot as f64 / 1048576.0,
        from_log / from_snapshot.max(1e-3)
    );
    let _ = child.kill();
    let _ = child.wait();
}
