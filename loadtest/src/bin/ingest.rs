//! Durable streamed ingest over loopback gRPC: a fleet of simulated units drives real Gothenburg
//! routes and streams fixes to a citd process (release build, embedded store, wall clock) on
//! several bidirectional streams with a few batches in flight each; a fix counts only once its
//! ack (durable) came back. The peer, in the same run, writes the same fixes durably into
//! PostgreSQL with COPY (synchronous_commit=on). Prints ours, the peer, the ratio, ack latency
//! and citd's own fsync latency (from its /metrics).
//!
//! cargo run --release -p cit-loadtest --features peers --bin ingest -- --seconds 20 \
//!     --peer-postgres "host=127.0.0.1 port=54329 user=postgres"

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
#[cfg(feature = "peers")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
#[cfg(feature = "peers")]
use std::time::Instant;

#[cfg(feature = "peers")]
use cit_loadtest::report;
use cit_loadtest::{Drive, drive_fleet, fleet, gothenburg_routes};
#[cfg(feature = "peers")]
use cit_loadtest::{Route, SimVehicle};
use cit_proto::v1 as pb;
use citd::runner::Clients;
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// A running citd; without it a release citd is started on a temporary store.
    #[arg(long)]
    addr: Option<String>,
    /// Its metrics address (for fsync latency).
    #[arg(long)]
    metrics: Option<String>,
    #[arg(long, default_value_t = 2000)]
    vehicles: usize,
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Fixes per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Batches in flight per stream.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// libpq-style connection string of a PostgreSQL to compare with.
    #[arg(long)]
    peer_postgres: Option<String>,
    /// citd without TLS (`--insecure`, loopback): the gateway sends with a token instead of its
    /// client certificate. For the cost of mutual TLS, against the default run.
    #[arg(long)]
    insecure: bool,
}

#[cfg(feature = "peers")]
fn now_ms() -> i64 {
    citd::clock::wall_now().0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn_citd(dir: &std::path::Path, port: u16, metrics: u16, insecure: bool) -> Child {
    let exe = std::env::current_exe().expect("exe").with_file_name("citd");
    Command::new(&exe)
        .args(cit_loadtest::pki_args(dir, insecure))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .arg("--data-dir")
        .arg(dir)
        .env("CIT_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (cargo build --release -p citd)",
                exe.display()
            )
        })
}

/// Reads citd's fsync histogram: mean and the bucket bound holding the 99th percentile.
fn fsync_from_metrics(addr: &str) -> Option<(f64, f64, u64)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (mut sum, mut count) = (0.0, 0u64);
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in body.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        if name == "cit_fsync_seconds_sum" {
            sum = value.parse().ok()?;
        } else if name == "cit_fsync_seconds_count" {
            count = value.parse().ok()?;
        } else if let Some(le) = name.strip_prefix("cit_fsync_seconds_bucket{le=\"") {
            let le = le.trim_end_matches("\"}");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((bound, value.parse().ok()?));
        }
    }
    if count == 0 {
        return None;
    }
    let p99 = buckets
        .iter()
        .find(|(_, c)| *c as f64 >= 0.99 * count as f64)
        .map(|(b, _)| *b)?;
    Some((sum / count as f64 * 1000.0, p99 * 1000.0, count))
}

#[cfg(feature = "peers")]
fn postgres_peer(conn: &str, args: &Args, routes: &[Route]) -> Result<f64, String> {
    let mut setup = postgres::Client::connect(conn, postgres::NoTls).map_err(|e| e.to_string())?;
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS fixes;
             CREATE TABLE fixes(vehicle text, seq bigint, t timestamptz, lat double precision,
               lon double precision, speed double precision, heading double precision,
               accuracy double precision, ignition boolean, door_open boolean,
               PRIMARY KEY (vehicle, seq));",
        )
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let all = fleet(args.vehicles, routes);
    let mut threads = Vec::new();
    for k in 0..args.streams {
        let mut mine: Vec<SimVehicle> = all.iter().skip(k).step_by(args.streams).cloned().collect();
        let conn = conn.to_string();
        let total = total.clone();
        let routes = routes.to_vec();
        let batch = args.batch;
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut c =
                postgres::Client::connect(&conn, postgres::NoTls).map_err(|e| e.to_string())?;
            c.batch_execute("SET synchronous_commit = on")
                .map_err(|e| e.to_string())?;
            let start_ms = now_ms();
            let mut next = 0usize;
            while Instant::now() < deadline {
                let mut w = c
                    .copy_in("COPY fixes FROM STDIN (FORMAT csv)")
                    .map_err(|e| e.to_string())?;
                let mut buf = String::with_capacity(batch * 120);
                for _ in 0..batch {
                    let i = next % mine.len();
                    next += 1;
                    let f = mine[i].next_fix(&routes, start_ms);
                    buf.push_str(&format!(
                        "{},{},{},{},{},{},{},4.8,true,false\n",
                        mine[i].id,
                        f.seq,
                        epoch_iso(now_ms()),
                        f.lat,
                        f.lon,
                        f.speed_mps,
                        f.heading_deg
                    ));
                }
                w.write_all(buf.as_bytes()).map_err(|e| e.to_string())?;
                w.finish().map_err(|e| e.to_string())?;
                total.fetch_add(batch as u64, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join().map_err(|_| "peer thread panicked".to_string())??;
    }
    Ok(total.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

#[cfg(feature = "peers")]
fn epoch_iso(epoch_ms: i64) -> String {
    let (secs, ms) = (epoch_ms.div_euclid(1000), epoch_ms.rem_euclid(1000));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}+00",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let routes = Arc::new(gothenburg_routes().expect("routes from ../shared/data"));
    let dir = tempfile::tempdir().expect("tmp");
    let (endpoint, metrics, mut child) = match &args.addr {
        Some(a) => (a.clone(), args.metrics.clone(), None),
        None => {
            let (port, mport) = (free_port(), free_port());
            let child = spawn_citd(dir.path(), port, mport, args.insecure);
            let scheme = if args.insecure { "http" } else { "https" };
            (
                format!("{scheme}://127.0.0.1:{port}"),
                Some(format!("127.0.0.1:{mport}")),
                Some(child),
            )
        }
    };
    let mut c = loop {
        if let Ok(mut c) = Clients::connect(&endpoint, cit_loadtest::creds()).await
            && c.liaison
                .list_checkpoints(pb::ListCheckpointsRequest::default())
                .await
                .is_ok()
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut vehicles = fleet(args.vehicles, &routes);
    for v in &vehicles {
        c.runs
            .register_vehicle(pb::RegisterVehicleRequest {
                vehicle_id: v.id.clone(),
                plate: v.id.clone(),
                armoured: true,
            })
            .await
            .expect("register");
    }
    cit_loadtest::bind_gateway(&mut c).await;
    println!(
        "ingest: {} vehicles on {} real routes, {} streams x {} batches of {} fixes in flight, {} s",
        args.vehicles,
        routes.len(),
        args.streams,
        args.inflight,
        args.batch,
        args.seconds
    );
    let drive = Drive {
        batch: args.batch,
        inflight: args.inflight,
        rate: None,
        in_step: false,
    };
    let (ours, lat) = drive_fleet(
        &endpoint,
        &mut vehicles,
        routes.clone(),
        args.streams,
        drive,
        args.seconds as f64,
    )
    .await;
    println!(
        "ours (citd, durable acks): {ours:.0} fixes/s; batch ack latency p50 {:.1} ms p99 {:.1} ms",
        lat.value_at_quantile(0.5) as f64 / 1000.0,
        lat.value_at_quantile(0.99) as f64 / 1000.0
    );
    if let Some((mean, p99, n)) = metrics.as_deref().and_then(fsync_from_metrics) {
        println!(
            "citd fsync (group commit): mean {mean:.2} ms, p99 <= {p99:.2} ms over {n} commits"
        );
    }
    if let Some(ch) = child.as_mut() {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    #[cfg(feature = "peers")]
    if let Some(conn) = &args.peer_postgres {
        // The synchronous client must not run on the async runtime's threads.
        let (conn, a, r) = (conn.clone(), args.clone(), routes.clone());
        let peer = tokio::task::spawn_blocking(move || postgres_peer(&conn, &a, &r))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match peer {
            Ok(peer) => report(
                "durable fix ingest",
                ours,
                "PostgreSQL COPY",
                peer,
                "fixes/s",
            ),
            Err(e) => println!("PostgreSQL peer failed: {e}"),
        }
    }
    #[cfg(not(feature = "peers"))]
    if args.peer_postgres.is_some() {
        println!("(PostgreSQL peer needs --features peers)");
    }
}
