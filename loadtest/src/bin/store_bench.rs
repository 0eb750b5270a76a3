//! Durable append throughput of the embedded event store, with its peers in the same run on the
//! same disk: the raw storage library alone (redb, same record bytes, same transaction sizes, no
//! indexes: the ceiling) and SQLite in WAL mode with synchronous=FULL and the same indexes (the
//! functional peer). Prints ours, each peer, the ratio, and commit (fsync) latency.
//!
//! cargo run --release -p cit-loadtest --features peers --bin store-bench -- --events 1000000

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cit_loadtest::{latency_us, report};
use cit_store::embedded::{EmbeddedStore, Options};
use cit_store::{EventStore, ExpectedVersion, NewEvent};
use clap::Parser;
use hdrhistogram::Histogram;
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    /// Events to append in total.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per append call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent appenders (their appends are group-committed together).
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Streams written, shared out among the appenders; each appender goes round its own.
    /// Thousands of streams is citd's shape (a stream per active run).
    #[arg(long, default_value_t = 800)]
    streams: usize,
    /// Bytes of event data.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Directory on the disk to measure (default: a temporary one under /tmp).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Ids as citd makes them: time-ordered UUIDv7.
fn event(i: usize, payload: usize) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: "FixesRecorded.v1".into(),
        data: vec![b'x'.wrapping_add((i % 26) as u8); payload],
        metadata: b"{}".to_vec(),
    }
}

async fn ours(args: &Args, dir: &std::path::Path) -> (f64, Histogram<u64>, f64) {
    let commits = Arc::new(Mutex::new(Commits {
        fsync: latency_us(),
        groups: 0,
        events: 0,
        index_writes: latency_us(),
        others: latency_us(),
    }));
    let obs = commits.clone();
    let store = EmbeddedStore::open(
        dir.join("ours"),
        Options {
            on_commit: Some(Arc::new(move |s| {
                if let Ok(mut c) = obs.lock() {
                    let _ = c.fsync.record(s.commit.as_micros().max(1) as u64);
                    c.groups += 1;
                    c.events += s.events;
                    let total = s.total.as_micros().max(1) as u64;
                    let _ = if s.indexed > 0 {
                        c.index_writes.record(total)
                    } else {
                        c.others.record(total)
                    };
                }
            })),
            ..Options::default()
        },
    )
    .expect("open store");
    let per_writer = args.events / args.writers;
    let own = (args.streams / args.writers).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let store = store.clone();
        let (batch, payload) = (args.batch, args.payload);
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            let mut n = 0usize;
            let mut acks = latency_us();
            while written < per_writer {
                let events: Vec<NewEvent> =
                    (0..batch).map(|i| event(written + i, payload)).collect();
                let stream = format!("vehicle-{}", w * own + n % own);
                let sent = Instant::now();
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .expect("append");
                let _ = acks.record(sent.elapsed().as_micros().max(1) as u64);
                written += batch;
                n += 1;
            }
            acks
        }));
    }
    let mut acks = latency_us();
    for t in tasks {
        acks.add(t.await.expect("writer"))
            .expect("same histogram bounds");
    }
    let secs = started.elapsed().as_secs_f64();
    let c = commits.lock().expect("stats");
    let avg_group = if c.groups > 0 {
        c.events as f64 / c.groups as f64
    } else {
        0.0
    };
    // What an appender waits for, and the groups that also wrote the index tail out: those
    // stall every append queued behind them.
    println!(
        "ours: append (ack) p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms; \
         {} index writes, group p50 {:.2} ms max {:.2} ms (other groups p50 {:.2} ms max {:.2} ms)",
        pct(&acks, 0.5),
        pct(&acks, 0.99),
        pct(&acks, 0.999),
        acks.max() as f64 / 1000.0,
        c.index_writes.len(),
        pct(&c.index_writes, 0.5),
        c.index_writes.max() as f64 / 1000.0,
        pct(&c.others, 0.5),
        c.others.max() as f64 / 1000.0,
    );
    (
        (per_writer * args.writers) as f64 / secs,
        c.fsync.clone(),
        avg_group,
    )
}

/// The store's group commits as its observer saw them.
struct Commits {
    fsync: Histogram<u64>,
    groups: usize,
    events: usize,
    /// Whole-group time of the groups that wrote the index tail out, and of the others.
    index_writes: Histogram<u64>,
    others: Histogram<u64>,
}

/// The raw library: the same record bytes in transactions of our average group size.
fn raw_redb(args: &Args, dir: &std::path::Path, group: usize) -> (f64, Histogram<u64>) {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    let db = redb::Database::create(dir.join("raw.redb")).expect("redb");
    let mut h = latency_us();
    let started = Instant::now();
    let mut pos = 0u64;
    while (pos as usize) < args.events {
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(T).expect("table");
            for _ in 0..group.max(1) {
                pos += 1;
                let e = event(pos as usize, args.payload);
                let mut rec = Vec::with_capacity(args.payload + 64);
                rec.extend_from_slice(e.id.as_bytes());
                rec.extend_from_slice(e.event_type.as_bytes());
                rec.extend_from_slice(&e.data);
                t.insert(pos, rec.as_slice()).expect("insert");
            }
        }
        let c = Instant::now();
        txn.commit().expect("commit");
        let _ = h.record(c.elapsed().as_micros().max(1) as u64);
    }
    (pos as f64 / started.elapsed().as_secs_f64(), h)
}

#[cfg(feature = "peers")]
fn sqlite(args: &Args, dir: &std::path::Path, group: usize) -> (f64, Histogram<u64>) {
    let conn = rusqlite::Connection::open(dir.join("peer.sqlite")).expect("sqlite");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE events(pos INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
                             id BLOB NOT NULL UNIQUE, type TEXT NOT NULL, data BLOB NOT NULL,
                             UNIQUE(stream, version));",
    )
    .expect("schema");
    let mut h = latency_us();
    let started = Instant::now();
    let mut pos = 0usize;
    let mut versions = vec![0u64; args.streams.max(1)];
    while pos < args.events {
        let c = Instant::now();
        let txn = conn.unchecked_transaction().expect("txn");
        {
            let mut stmt = txn
                .prepare_cached("INSERT INTO events(stream, version, id, type, data) VALUES (?1, ?2, ?3, ?4, ?5)")
                .expect("prepare");
            for _ in 0..group.max(1) {
                pos += 1;
                let e = event(pos, args.payload);
                let s = pos % versions.len();
                versions[s] += 1;
                stmt.execute(rusqlite::params![
                    format!("vehicle-{s}"),
                    versions[s] as i64,
                    e.id.as_bytes().to_vec(),
                    e.event_type,
                    e.data
                ])
                .expect("insert");
            }
        }
        txn.commit().expect("commit");
        let _ = h.record(c.elapsed().as_micros().max(1) as u64);
    }
    (pos as f64 / started.elapsed().as_secs_f64(), h)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("dir");
    println!(
        "store-bench: {} events of {} B, {} per append, {} concurrent appenders, {} streams, dir {}",
        args.events,
        args.payload,
        args.batch,
        args.writers,
        args.streams,
        dir.display()
    );
    let (ours_rate, ours_fsync, group) = ours(&args, &dir).await;
    println!(
        "ours (cit embedded, group commit): {ours_rate:.0} events/s; {group:.0} events per fsync; \
         fsync p50 {:.2} ms p99 {:.2} ms",
        pct(&ours_fsync, 0.5),
        pct(&ours_fsync, 0.99)
    );
    let group = group.round() as usize;
    let (raw_rate, raw_commit) = raw_redb(&args, &dir, group);
    println!(
        "peer raw redb ({group} records per commit): {raw_rate:.0} events/s; commit p50 {:.2} ms p99 {:.2} ms",
        pct(&raw_commit, 0.5),
        pct(&raw_commit, 0.99)
    );
    report(
        "durable appends",
        ours_rate,
        "raw redb",
        raw_rate,
        "events/s",
    );
    #[cfg(feature = "peers")]
    {
        let (sq_rate, sq_commit) = sqlite(&args, &dir, group);
        println!(
            "peer SQLite WAL synchronous=FULL ({group} rows per txn): {sq_rate:.0} events/s; commit p50 {:.2} ms p99 {:.2} ms",
            pct(&sq_commit, 0.5),
            pct(&sq_commit, 0.99)
        );
        report(
            "durable appends",
            ours_rate,
            "SQLite WAL",
            sq_rate,
            "events/s",
        );
    }
    #[cfg(not(feature = "peers"))]
    println!("(SQLite peer skipped: build with --features peers)");
    let _ = Duration::ZERO;
}
