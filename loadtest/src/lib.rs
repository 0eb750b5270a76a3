//! Load-test support: a fleet simulator that drives vehicles along the real Gothenburg routes of
//! ../shared/data at road speeds and emits the fixes their telematics units would send, and
//! the streaming load driver and small reporting helpers shared by the benchmark binaries (our
//! figure, the peer's, the ratio), and [`engine_drive`], the same fleet fed straight to a
//! detection engine (engine-bench and the clean-drive tests), and [`field_drive`], whole runs
//! with the scenario generator's kind of GPS error at any strength (the false-alarm sweeps), on
//! the public routes or on new ones planned over the drivable network ([`network`]).

pub mod engine_drive;
pub mod field_drive;
pub mod network;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cit_proto::v1 as pb;
use citd::credentials::Credentials;
use citd::runner::Clients;
use hdrhistogram::Histogram;

/// Where the shared data is when running from a checkout.
pub fn shared_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// A route as points in a local metric frame with cumulative distance.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route as given, [lon, lat] (GeoJSON order).
    pub coords: Vec<[f64; 2]>,
    lat0: f64,
    lon0: f64,
    pts: Vec<[f64; 2]>,
    cum: Vec<f64>,
    /// A multi-stop route's visits as indices into `coords`: the depot it leaves from, each stop
    /// in order, the depot it returns to (the routes file's `stop_vertex_indices`). Empty for a
    /// point-to-point route.
    pub stop_vertices: Vec<usize>,
}

pub(crate) const M_PER_DEG: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

impl Route {
    pub fn new(coords: &[[f64; 2]]) -> Route {
        let (lon0, lat0) = (coords[0][0], coords[0][1]);
        let k = lat0.to_radians().cos();
        let pts: Vec<[f64; 2]> = coords
            .iter()
            .map(|c| [(c[0] - lon0) * M_PER_DEG * k, (c[1] - lat0) * M_PER_DEG])
            .collect();
        let mut cum = vec![0.0];
        for w in pts.windows(2) {
            let d = ((w[1][0] - w[0][0]).powi(2) + (w[1][1] - w[0][1]).powi(2)).sqrt();
            cum.push(cum.last().copied().unwrap_or(0.0) + d);
        }
        Route {
            coords: coords.to_vec(),
            lat0,
            lon0,
            pts,
            cum,
            stop_vertices: Vec::new(),
        }
    }

    /// The route with its multi-stop visits (see `stop_vertices`).
    pub fn with_stops(mut self, stop_vertices: Vec<usize>) -> Route {
        self.stop_vertices = stop_vertices;
        self
    }

    pub fn length(&self) -> f64 {
        self.cum.last().copied().unwrap_or(0.0)
    }

    /// Distance along the route to vertex `i`.
    pub fn s_at_vertex(&self, i: usize) -> f64 {
        self.cum[i.min(self.cum.len() - 1)]
    }

    /// Position (lat, lon) and heading at distance `s` along the route (wrapping around).
    pub fn at(&self, s: f64) -> (f64, f64, f64) {
        let len = self.length().max(1.0);
        let s = s.rem_euclid(len);
        let i = self
            .cum
            .partition_point(|c| *c <= s)
            .clamp(1, self.pts.len() - 1);
        let (a, b) = (self.pts[i - 1], self.pts[i]);
        let seg = (self.cum[i] - self.cum[i - 1]).max(1e-9);
        let t = (s - self.cum[i - 1]) / seg;
        let x = a[0] + t * (b[0] - a[0]);
        let y = a[1] + t * (b[1] - a[1]);
        let heading = (b[0] - a[0])
            .atan2(b[1] - a[1])
            .to_degrees()
            .rem_euclid(360.0);
        let k = self.lat0.to_radians().cos();
        (
            self.lat0 + y / M_PER_DEG,
            self.lon0 + x / (M_PER_DEG * k),
            heading,
        )
    }
}

/// The public Gothenburg routes (real OSM roads), the multi-stop ones with their visits.
pub fn gothenburg_routes() -> Result<Vec<Route>, String> {
    let path = shared_data().join("gothenburg/gothenburg_routes.geojson");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let features = v["features"].as_array().ok_or("no features")?;
    let mut routes = Vec::new();
    for f in features {
        let coords: Vec<[f64; 2]> = f["geometry"]["coordinates"]
            .as_array()
            .ok_or("no coordinates")?
            .iter()
            .filter_map(|c| Some([c[0].as_f64()?, c[1].as_f64()?]))
            .collect();
        let stops = f["properties"]["stop_vertex_indices"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| Some(i.as_u64()? as usize))
                    .collect()
            })
            .unwrap_or_default();
        if coords.len() >= 2 {
            routes.push(Route::new(&coords).with_stops(stops));
        }
    }
    Ok(routes)
}

/// A small deterministic random source (splitmix64): the same drive, the same noise, on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box–Muller).
    pub fn gauss(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// One simulated vehicle: a route, a speed, and its fix sequence.
#[derive(Debug, Clone)]
pub struct SimVehicle {
    pub id: String,
    pub route: usize,
    pub offset_m: f64,
    pub speed_mps: f64,
    pub seq: u64,
}

/// A fleet spread over the routes, every vehicle at its own offset and speed.
pub fn fleet(n: usize, routes: &[Route]) -> Vec<SimVehicle> {
    (0..n)
        .map(|i| SimVehicle {
            id: format!("LV-{i:05}"),
            route: i % routes.len(),
            offset_m: (i as f64 * 137.0) % routes[i % routes.len()].length(),
            speed_mps: 8.0 + (i % 7) as f64,
            seq: 0,
        })
        .collect()
}

/// The next fix of a vehicle, 1 s after its previous one.
#[derive(Debug, Clone)]
pub struct FixSample {
    pub seq: u64,
    pub t_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub speed_mps: f64,
    pub heading_deg: f64,
}

impl SimVehicle {
    pub fn next_fix(&mut self, routes: &[Route], start_ms: i64) -> FixSample {
        self.seq += 1;
        let s = self.offset_m + self.speed_mps * self.seq as f64;
        let (lat, lon, heading) = routes[self.route].at(s);
        FixSample {
            seq: self.seq,
            t_ms: start_ms + self.seq as i64 * 1000,
            lat,
            lon,
            speed_mps: self.speed_mps,
            heading_deg: heading,
        }
    }
}

impl FixSample {
    pub fn latlon(&self) -> cit_domain::LatLon {
        cit_domain::LatLon {
            lat: self.lat,
            lon: self.lon,
        }
    }

    /// The fix as the domain records it (for fixtures written straight into a store, and for
    /// in-process engine runs).
    pub fn to_domain(&self) -> cit_domain::Fix {
        cit_domain::Fix {
            seq: self.seq,
            t: cit_domain::Millis(self.t_ms),
            lat: self.lat,
            lon: self.lon,
            speed_mps: self.speed_mps,
            heading_deg: self.heading_deg,
            accuracy_m: 4.8,
            ignition: true,
            door_open: false,
        }
    }
}

/// Prints one comparison line: ours, the peer's, and the ratio.
/// A latency histogram in microseconds, 1 us to 60 s, 3 significant digits: what every load
/// driver here records.
pub fn latency_us() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// "p50 X ms, p99 Y ms, max Z ms" of a histogram in microseconds.
pub fn p50_p99_max(h: &Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

pub fn report(what: &str, ours: f64, peer_name: &str, peer: f64, unit: &str) {
    println!(
        "{what}: ours {ours:.0} {unit} | {peer_name} {peer:.0} {unit} | ratio {:.2}x",
        if peer > 0.0 {
            ours / peer
        } else {
            f64::INFINITY
        }
    );
}

/// The fix a unit would send for a sample, stamped with the wall clock (units stream live, and
/// citd refuses device times far ahead of its clock).
pub fn to_pb(vehicle: &str, f: &FixSample) -> pb::Fix {
    pb::Fix {
        vehicle_id: vehicle.to_string(),
        seq: f.seq,
        time: Some(citd::grpc::ts(citd::clock::wall_now())),
        lat: f.lat,
        lon: f.lon,
        speed_mps: f.speed_mps,
        heading_deg: f.heading_deg,
        accuracy_m: 4.8,
        ignition: true,
        door_open: false,
        seq_epoch: 0,
    }
}

/// How one driving stream sends.
#[derive(Debug, Clone, Copy)]
pub struct Drive {
    /// Fixes per batch.
    pub batch: usize,
    /// Batches in flight (sent, not yet acked).
    pub inflight: usize,
    /// Fixes per second for this stream; None: as fast as acks allow.
    pub rate: Option<f64>,
    /// Paced streams of one fleet send in step: every stream's batch at the same instants, as if
    /// all gateways flushed together (the worst case for latency). Otherwise stream k of n starts
    /// k/n of a batch period late, so batches arrive evenly spread, as from independent units.
    pub in_step: bool,
}

/// Streams fixes of `vehicles` (round robin) on one bidirectional stream until `deadline`;
/// counts fixes only once their durable ack came back. A paced stream sends its first batch
/// `offset` late. Returns the batch ack latencies (us) and the vehicles, moved on, for the next
/// drive.
pub async fn drive_stream(
    endpoint: String,
    mut vehicles: Vec<SimVehicle>,
    routes: Arc<Vec<Route>>,
    drive: Drive,
    (offset, deadline): (Duration, Instant),
    accepted: Arc<AtomicU64>,
) -> (Histogram<u64>, Vec<SimVehicle>) {
    let mut hist = latency_us();
    let mut c = Clients::connect(&endpoint, creds()).await.expect("connect");
    let (tx, mut acks) = c.fix_stream(drive.inflight).await.expect("stream");
    let mut sent: VecDeque<Instant> = VecDeque::new();
    let started = Instant::now() + offset;
    let start_ms = citd::clock::wall_now().0;
    let (mut next, mut batch_id, mut fixes_sent) = (0usize, 0u64, 0u64);
    loop {
        while sent.len() < drive.inflight && Instant::now() < deadline {
            if let Some(rate) = drive.rate {
                // Open loop at the target rate: the next batch leaves when it is due.
                let due = started + Duration::from_secs_f64(fixes_sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let fixes: Vec<pb::Fix> = (0..drive.batch)
                .map(|_| {
                    let i = next % vehicles.len();
                    next += 1;
                    let f = vehicles[i].next_fix(&routes, start_ms);
                    to_pb(&vehicles[i].id, &f)
                })
                .collect();
            batch_id += 1;
            fixes_sent += drive.batch as u64;
            tx.send(pb::FixBatch { fixes, batch_id })
                .await
                .expect("send");
            sent.push_back(Instant::now());
        }
        if sent.is_empty() {
            break;
        }
        let ack = acks.message().await.expect("ack").expect("stream open");
        let t0 = sent.pop_front().expect("in flight");
        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
        assert!(
            ack.rejected.is_empty(),
            "rejected: {:?}",
            ack.rejected.first()
        );
        accepted.fetch_add(u64::from(ack.accepted), Ordering::Relaxed);
    }
    (hist, vehicles)
}

/// Drives `vehicles` over `streams` streams for `seconds`; returns fixes/s acked durable and the
/// merged batch ack latencies. The vehicles move on (their seqs continue in the next drive).
pub async fn drive_fleet(
    endpoint: &str,
    vehicles: &mut Vec<SimVehicle>,
    routes: Arc<Vec<Route>>,
    streams: usize,
    drive: Drive,
    seconds: f64,
) -> (f64, Histogram<u64>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for k in 0..streams {
        let mine: Vec<SimVehicle> = vehicles.iter().skip(k).step_by(streams).cloned().collect();
        let offset = match drive.rate {
            Some(rate) if !drive.in_step => {
                Duration::from_secs_f64(drive.batch as f64 / rate * k as f64 / streams as f64)
            }
            _ => Duration::ZERO,
        };
        tasks.push(tokio::spawn(drive_stream(
            endpoint.to_string(),
            mine,
            routes.clone(),
            drive,
            (offset, deadline),
            accepted.clone(),
        )));
    }
    let mut lat = latency_us();
    vehicles.clear();
    for t in tasks {
        let (h, moved) = t.await.expect("stream task");
        lat.add(h).expect("merge");
        vehicles.extend(moved);
    }
    let rate = accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, lat)
}

/// The credentials of the citd a benchmark starts (see [`pki_args`]).
static CREDS: std::sync::OnceLock<Arc<Credentials>> = std::sync::OnceLock::new();

/// Roles the benchmarks' operator holds: it registers, plans, dispatches and reads.
const OPERATOR_ROLES: &[&str] = &["admin", "dispatcher", "supervisor", "auditor"];

/// Makes a development PKI in `dir` for the citd a benchmark starts and returns the citd flags
/// that use it (TLS with client certificates, the token key); [`creds`] then calls it as the
/// benchmark's operator, and fixes go as the PKI's gateway. `insecure`: citd serves without
/// TLS and the gateway sends with a token (the run to compare mutual TLS against).
pub fn pki_args(dir: &std::path::Path, insecure: bool) -> Vec<std::ffi::OsString> {
    let pki = citd::auth::devpki::generate(&dir.join("pki")).expect("development PKI");
    let mut creds = Credentials::from_pki(&pki)
        .expect("credentials")
        .speaking_for("loadtest-operator", OPERATOR_ROLES);
    if insecure {
        creds.insecure_units();
    }
    let _ = CREDS.set(Arc::new(creds));
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if insecure {
        args.push("--insecure".into());
    } else {
        for (flag, path) in [
            ("--tls-cert", &pki.server_cert),
            ("--tls-key", &pki.server_key),
            ("--tls-client-ca", &pki.ca),
        ] {
            args.push(flag.into());
            args.push(path.into());
        }
    }
    args.push("--token-key".into());
    args.push(
        format!(
            "{}={}",
            pki.token_key.kid,
            pki.token_key.public_key.display()
        )
        .into(),
    );
    args
}

/// The credentials [`pki_args`] made; for `--addr`, those of `CIT_PKI`.
pub fn creds() -> Arc<Credentials> {
    CREDS
        .get_or_init(|| {
            let dir = std::env::var_os("CIT_PKI")
                .expect("a citd of the benchmark's own, or CIT_PKI for one at --addr");
            Arc::new(
                Credentials::from_pki_dir(std::path::Path::new(&dir))
                    .expect("credentials")
                    .speaking_for("loadtest-operator", OPERATOR_ROLES),
            )
        })
        .clone()
}

/// Binds the PKI's gateway to every registered vehicle (a page at a time), so the
/// benchmark's fixes are accepted.
pub async fn bind_gateway(c: &mut Clients) {
    let mut vehicle_ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .runs
            .list_vehicles(pb::ListPage {
                page_size: 1000,
                page_token,
            })
            .await
            .expect("vehicles")
            .into_inner();
        vehicle_ids.extend(page.vehicles.into_iter().map(|v| v.vehicle_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    c.identity
        .bind_unit(pb::BindUnitRequest {
            unit_id: citd::credentials::SCENARIO_GATEWAY.into(),
            gateway: true,
            vehicle_ids,
        })
        .await
        .expect("bind the gateway");
}
