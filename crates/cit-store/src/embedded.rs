//! The embedded backend, the default: one redb database file in a data directory.
//!
//! Why redb: a pure-Rust, well-kept embedded B-tree with ACID transactions whose commit with
//! `Durability::Immediate` returns only after fsync; measured against fjall and SQLite (WAL) in
//! BENCHMARKS.md. We do not hand-roll a log format.
//!
//! Durability and speed come from group commit: appends from every caller go to one writer
//! thread, which drains everything queued (plain appends first, then a unit's own small batches
//! of fixes, then large ones such as a gateway's, up to [`BULK_GROUP_EVENTS`]; see [`Lane`]; an
//! urgent append arriving while large ones are staged joins the group and ends it), checks each
//! append's expected version against the state inside one write transaction (so appends in the
//! same group see each other), commits once (one fsync for the whole group), and only then
//! answers each caller. An ack therefore always follows durability, and `kill -9` at any moment
//! loses only unacknowledged appends.
//!
//! Tables:
//! - `events`: position -> record ([`crate::codec`]); position is dense from 1 here.
//! - `stream_index`: (stream, version) -> position, for every event up to its stream's bucket's
//!   mark in `meta`; the entries after it are held in memory and written in bulk ([`tail`]).
//! - `meta`: `indexed/NN` -> each tail bucket's mark, `index_buckets` -> how many there are.
//!
//! The writer also extends each stream's hash chain ([`crate::chain`]) as it stages an append.
//! - `event_ids`: first event id of each plain append -> position, for idempotent retries. Only
//!   the first id is indexed: a retry resends the whole append, and one random-keyed insert per
//!   append instead of per event keeps the dirty pages of a group commit few (measured: the
//!   per-event index cost 5x in throughput; BENCHMARKS.md). Bulk appends (fixes, one event per
//!   vehicle and batch) are not indexed: their caller deduplicates by fix seq, and the lookup
//!   and insert were a sixth of the writer's time at 10,000 streams.

mod tail;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};

use crate::chain::Hash;
use crate::codec;
use crate::{
    Append, AppendResult, Direction, Error, EventStore, ExpectedVersion, NewEvent, RecordedEvent,
    Result, SubscriptionFilter, SubscriptionMessage,
};
use tail::{StreamTail, Tail};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const STREAM_INDEX: TableDefinition<(&str, u64), u64> = TableDefinition::new("stream_index");
const EVENT_IDS: TableDefinition<u128, u64> = TableDefinition::new("event_ids");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `meta` key: how many tail buckets the marks below were written for.
const INDEX_BUCKETS: &str = "index_buckets";

/// `meta` key of a bucket's mark: every event at or before this position, of a stream in the
/// bucket, has its `stream_index` entry.
fn mark_key(bucket: usize) -> String {
    format!("indexed/{bucket:02}")
}

/// Reads the tail buckets' marks, first writing them if the store has none for [`tail::BUCKETS`]
/// buckets: every bucket then starts at the lowest mark found (a store written with another
/// bucket count, or with the one `indexed` mark of before buckets) or, with none, at the head
/// (0 for a new store; a store written before any mark indexed every event as it went). Writing
/// some entries again is harmless: they map to the same positions.
fn index_marks(txn: &redb::WriteTransaction) -> Result<[u64; tail::BUCKETS]> {
    let mut meta = txn.open_table(META).map_err(storage)?;
    let buckets = meta.get(INDEX_BUCKETS).map_err(storage)?.map(|v| v.value());
    if buckets != Some(tail::BUCKETS as u64) {
        let old: Vec<(String, u64)> = meta
            .range("indexed".."indexee")
            .map_err(storage)?
            .map(|row| row.map(|(k, v)| (k.value().to_string(), v.value())))
            .collect::<std::result::Result<_, _>>()
            .map_err(storage)?;
        let lowest = match old.iter().map(|(_, v)| *v).min() {
            Some(m) => m,
            None => txn
                .open_table(EVENTS)
                .map_err(storage)?
                .last()
                .map_err(storage)?
                .map_or(0, |(k, _)| k.value()),
        };
        for (k, _) in &old {
            meta.remove(k.as_str()).map_err(storage)?;
        }
        for b in 0..tail::BUCKETS {
            meta.insert(mark_key(b).as_str(), lowest).map_err(storage)?;
        }
        meta.insert(INDEX_BUCKETS, tail::BUCKETS as u64)
            .map_err(storage)?;
    }
    let mut marks = [0; tail::BUCKETS];
    for (b, mark) in marks.iter_mut().enumerate() {
        *mark = meta
            .get(mark_key(b).as_str())
            .map_err(storage)?
            .ok_or_else(|| Error::Storage(format!("no index mark for bucket {b}")))?
            .value();
    }
    Ok(marks)
}

/// Most events of plain appends in one group; bounds commit latency under a flood of them.
const MAX_GROUP_EVENTS: usize = 65_536;
/// Most bulk-appended events ([`EventStore::append_bulk`]: fixes) in one group. Every other
/// append queued goes into the next group whatever the backlog of fixes, so this bounds how
/// long a command or an alarm waits: one group of this size is ~20 ms of the writer's time.
const BULK_GROUP_EVENTS: usize = 2_048;
/// Bulk events of a group still to stage at which an urgent append ([`Lane`]) that arrives
/// meanwhile cuts the group: it is staged at once, the bulk appends not yet staged go back to
/// the head of their queue, and the group commits. Below this the rest is staged first (~2 ms at
/// most), so a steady trickle of commands does not split every group of fixes into two commits.
/// Also the most events of large bulk appends a group takes after urgent ones: those are then
/// answered after ~2 ms of staging, not after a gateway's whole batch.
const CUT_EVENTS: usize = 256;
/// Most events of bulk work handed over at once (one append, or one batch of them) that still
/// counts as small ([`Lane::Small`]): a unit's own batch of a few fixes, not a gateway's for a
/// thousand vehicles or a backlog resent after a gap.
const SMALL_BULK_EVENTS: usize = 64;
/// Longest `close` waits for in-flight reads to let go of the database.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Batch size of subscription catch-up reads.
const SUBSCRIPTION_BATCH: usize = 2_048;

/// What one group commit did, for metrics (fsync latency, group sizes).
#[derive(Debug, Clone, Copy)]
pub struct CommitStats {
    pub appends: usize,
    pub events: usize,
    /// Time spent in `commit()` (the fsync).
    pub commit: Duration,
    /// Time from the first queued append to the answer.
    pub total: Duration,
    /// Entries this group wrote from the in-memory tail to `stream_index` (0 unless a bucket
    /// of it is being written out).
    pub indexed: usize,
}

pub type CommitObserver = Arc<dyn Fn(CommitStats) + Send + Sync>;

/// Options of the embedded store.
#[derive(Clone)]
pub struct Options {
    /// redb page cache, bytes.
    pub cache_bytes: usize,
    /// Stream index entries held in memory before group commits start writing them to
    /// `stream_index`, one bucket at a time ([`tail`]); a restart reads about twice this many
    /// events again to rebuild them.
    pub index_flush_events: usize,
    /// Called after every group commit.
    pub on_commit: Option<CommitObserver>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_bytes: 256 << 20,
            index_flush_events: 131_072,
            on_commit: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("cache_bytes", &self.cache_bytes)
            .field("index_flush_events", &self.index_flush_events)
            .finish()
    }
}

struct AppendJob {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    lane: Lane,
    reply: Reply,
}

impl AppendJob {
    /// May wait behind the other appends ([`EventStore::append_bulk`]).
    fn bulk(&self) -> bool {
        self.lane != Lane::Plain
    }
}

/// The writer's queue an append waits in, most urgent first. A group takes each in turn, and an
/// urgent append (plain or small) cuts a group of large ones being staged ([`CUT_EVENTS`]):
/// whoever waits on a few events is answered after a few ms of the writer's time, whoever hands
/// over thousands waits for them anyway. Concurrent appends have no order among them
/// ([`EventStore::append_bulk`]); within a lane they keep the order they came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// [`EventStore::append`]: commands, alarms, anomalies.
    Plain,
    /// Bulk work of at most [`SMALL_BULK_EVENTS`] events.
    Small,
    /// Larger bulk work.
    Large,
}

impl Lane {
    /// The lane of bulk work of `events` events in all.
    fn bulk(events: usize) -> Lane {
        if events <= SMALL_BULK_EVENTS {
            Lane::Small
        } else {
            Lane::Large
        }
    }
}

/// Where an append's result goes: its caller, or its place in a batch.
enum Reply {
    One(oneshot::Sender<Result<AppendResult>>),
    Part(Arc<std::sync::Mutex<BatchReply>>, usize),
}

impl Reply {
    fn send(self, result: Result<AppendResult>) {
        match self {
            Reply::One(tx) => {
                let _ = tx.send(result);
            }
            Reply::Part(batch, i) => {
                let mut b = batch.lock().unwrap_or_else(|p| p.into_inner());
                b.results[i] = Some(result);
                b.left -= 1;
                if b.left == 0
                    && let Some(tx) = b.reply.take()
                {
                    let _ = tx.send(b.results.drain(..).flatten().collect());
                }
            }
        }
    }
}

/// The results of a batch's appends as the writer answers them, sent to its caller with the
/// last one ([`EventStore::append_bulk_batch`]).
struct BatchReply {
    results: Vec<Option<Result<AppendResult>>>,
    left: usize,
    reply: Option<oneshot::Sender<Vec<Result<AppendResult>>>>,
}

/// A batch some of whose appends were dropped unanswered (the writer stopped) still answers:
/// those failed with [`Error::Closed`], the others as they were.
impl Drop for BatchReply {
    fn drop(&mut self) {
        if let Some(tx) = self.reply.take() {
            let results = self
                .results
                .drain(..)
                .map(|r| r.unwrap_or(Err(Error::Closed)))
                .collect();
            let _ = tx.send(results);
        }
    }
}

enum Job {
    Append(AppendJob),
    /// Bulk appends handed over together, in order.
    Batch(Vec<AppendJob>),
    /// Finish the queued appends, then stop the writer (and answer).
    Shutdown(std::sync::mpsc::Sender<()>),
}

struct Inner {
    /// None once closed. Readers take a clone per read; subscriptions hold only a `Weak`, so
    /// closing releases the file (and its lock) as soon as in-flight reads finish.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    jobs: mpsc::Sender<Job>,
    head: watch::Receiver<u64>,
    /// The stream index's entries after their buckets' marks (shared with the writer).
    tail: Arc<RwLock<Tail>>,
    path: PathBuf,
}

/// The embedded, durable event store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn storage<E: std::fmt::Display>(e: E) -> Error {
    Error::Storage(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` (the file is `dir/events.redb`).
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self> {
        std::fs::create_dir_all(dir.as_ref()).map_err(storage)?;
        let path = dir.as_ref().join("events.redb");
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(storage)?;
        let db = Arc::new(db);
        // Create the tables so readers never see them missing.
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(EVENTS).map_err(storage)?;
            txn.open_table(STREAM_INDEX).map_err(storage)?;
            txn.open_table(EVENT_IDS).map_err(storage)?;
        }
        let marks = index_marks(&txn)?;
        txn.commit().map_err(storage)?;
        let head = last_position(&db)?;
        let tail = Arc::new(RwLock::new(rebuild_tail(&db, marks)?));
        let (head_tx, head_rx) = watch::channel(head);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let writer = Writer {
            db: db.clone(),
            tail: tail.clone(),
            flush_at: options.index_flush_events.max(1),
            flush: None,
            on_commit: options.on_commit.clone(),
        };
        std::thread::Builder::new()
            .name("cit-store-writer".into())
            .spawn(move || writer.run(jobs_rx, head_tx))
            .map_err(storage)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db: std::sync::RwLock::new(Some(db)),
                jobs: jobs_tx,
                head: head_rx,
                tail,
                path,
            }),
        })
    }

    /// Stops the writer after the appends already queued; later appends and reads fail with
    /// `Closed` and subscriptions end. Returns once the database file is released (in-flight
    /// reads finish first, within [`CLOSE_WAIT`]), so it can be reopened at once.
    pub fn close(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.inner.jobs.send(Job::Shutdown(tx)).is_ok() {
            let _ = rx.recv();
        }
        let taken = self
            .inner
            .db
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(db) = taken {
            let weak = Arc::downgrade(&db);
            drop(db);
            let started = Instant::now();
            while weak.strong_count() > 0 && started.elapsed() < CLOSE_WAIT {
                std::thread::yield_now();
            }
        }
    }

    fn db(&self) -> Result<Arc<Database>> {
        self.inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Error::Closed)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read_all_sync(db: &Database, after: u64, max: usize) -> Result<Vec<RecordedEvent>> {
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::with_capacity(max.min(4096));
        for row in table.range(after.saturating_add(1)..).map_err(storage)? {
            if out.len() >= max {
                break;
            }
            let (k, v) = row.map_err(storage)?;
            out.push(codec::decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

/// Rewrites one stored record in place, bypassing every check and the hash chain: what an
/// attacker with write access to the data directory could do. Exists so tamper-evidence tests
/// can edit storage directly; the store in `dir` must be closed.
pub fn edit_record_for_tests(
    dir: impl AsRef<Path>,
    position: u64,
    edit: impl FnOnce(&mut Vec<u8>),
) -> Result<()> {
    let db = Database::create(dir.as_ref().join("events.redb")).map_err(storage)?;
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut events = txn.open_table(EVENTS).map_err(storage)?;
        let mut raw = events
            .get(position)
            .map_err(storage)?
            .ok_or_else(|| Error::Storage(format!("no event at position {position}")))?
            .value()
            .to_vec();
        edit(&mut raw);
        events.insert(position, raw.as_slice()).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Rewrites a whole stream in place from version `from` on, each event changed by `edit` and
/// its chain hash recomputed over the rewritten predecessor: the forgery a chain alone cannot
/// show (signed run heads do). For tests; the store in `dir` must be closed.
pub fn rewrite_stream_for_tests(
    dir: impl AsRef<Path>,
    stream: &str,
    from: u64,
    mut edit: impl FnMut(&mut RecordedEvent),
) -> Result<()> {
    let db = Database::create(dir.as_ref().join("events.redb")).map_err(storage)?;
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut events = txn.open_table(EVENTS).map_err(storage)?;
        let mut mine = Vec::new();
        for row in events.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let e = codec::decode(k.value(), v.value())?;
            if e.stream == stream {
                mine.push(e);
            }
        }
        mine.sort_by_key(|e| e.version);
        let mut prev = crate::chain::GENESIS;
        for mut e in mine {
            if e.version >= from {
                edit(&mut e);
                e.chain = crate::chain::expected(&prev, &e);
                events
                    .insert(e.position, codec::encode(&e).as_slice())
                    .map_err(storage)?;
            }
            prev = e.chain;
        }
    }
    txn.commit().map_err(storage)
}

fn last_position(db: &Database) -> Result<u64> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn.open_table(EVENTS).map_err(storage)?;
    Ok(table
        .last()
        .map_err(storage)?
        .map(|(k, _)| k.value())
        .unwrap_or(0))
}

/// The stream index's entries after each bucket's mark, read again from the log.
fn rebuild_tail(db: &Database, marks: [u64; tail::BUCKETS]) -> Result<Tail> {
    let txn = db.begin_read().map_err(storage)?;
    let lowest = marks.iter().copied().min().unwrap_or(0);
    let mut tail = Tail::new(marks);
    let events = txn.open_table(EVENTS).map_err(storage)?;
    for row in events.range(lowest.saturating_add(1)..).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        // A record that does not decode or does not follow its stream was edited on disk: it
        // is left out of the index, so the store still opens and `VerifyRun` names the gap.
        match codec::decode(k.value(), v.value()) {
            Ok(e) if e.position <= tail.mark_of(&e.stream) => {}
            Ok(e) if tail.push(&e.stream, e.version, e.position, e.chain) => {}
            Ok(e) => tracing::error!(
                position = k.value(),
                stream = %e.stream,
                version = e.version,
                "a stored record does not follow its stream; left out of the stream index"
            ),
            Err(e) => tracing::error!(
                position = k.value(),
                cause = %e,
                "a stored record does not decode; left out of the stream index"
            ),
        }
    }
    Ok(tail)
}

/// Where a stream stands while a group is staged: the group's own entries first, then the
/// tail, then `stream_index`.
struct Heads<'a> {
    staged: HashMap<String, StreamTail>,
    tail: &'a Tail,
}

impl Heads<'_> {
    /// The stream's entries after the mark: the group's own, then the tail's.
    fn tails(&self, stream: &str) -> impl Iterator<Item = &StreamTail> {
        [self.staged.get(stream), self.tail.get(stream)]
            .into_iter()
            .flatten()
    }

    /// The stream's head: version, position and chain hash.
    fn head(
        &self,
        stream: &str,
        events: &redb::Table<u64, &[u8]>,
        index: &redb::Table<(&str, u64), u64>,
    ) -> Result<Option<(u64, u64, Hash)>> {
        if let Some((s, (version, position))) =
            self.tails(stream).find_map(|s| Some((s, s.head()?)))
        {
            return Ok(Some((version, position, s.chain)));
        }
        let Some((version, position)) = index
            .range((stream, 0)..=(stream, u64::MAX))
            .map_err(storage)?
            .next_back()
            .transpose()
            .map_err(storage)?
            .map(|(k, v)| (k.value().1, v.value()))
        else {
            return Ok(None);
        };
        // The chain continues from the head's stored hash (read in place, no decode).
        let chain = codec::chain_of(
            events
                .get(position)
                .map_err(storage)?
                .ok_or_else(|| Error::Storage("stream index points nowhere".into()))?
                .value(),
        )?;
        Ok(Some((version, position, chain)))
    }

    /// A staged append: its versions from `first`, their positions, the chain's new head.
    fn stage(&mut self, stream: &str, first: u64, positions: Vec<u64>, chain: Hash) {
        match self.staged.get_mut(stream) {
            Some(s) => s.extend(positions, chain),
            None => {
                self.staged.insert(
                    stream.to_string(),
                    StreamTail {
                        first,
                        positions,
                        chain,
                    },
                );
            }
        }
    }

    fn position_of(
        &self,
        stream: &str,
        version: u64,
        index: &redb::Table<(&str, u64), u64>,
    ) -> Result<Option<u64>> {
        if let Some(p) = self.tails(stream).find_map(|s| s.position_of(version)) {
            return Ok(Some(p));
        }
        Ok(index
            .get((stream, version))
            .map_err(storage)?
            .map(|p| p.value()))
    }
}

/// Checks and stages one append inside the group's transaction. Nothing is written unless every
/// check passed, so a refused append leaves no trace.
fn stage(
    job: &AppendJob,
    next_position: &mut u64,
    created_ms: i64,
    events: &mut redb::Table<u64, &[u8]>,
    index: &redb::Table<(&str, u64), u64>,
    ids: &mut redb::Table<u128, u64>,
    heads: &mut Heads<'_>,
) -> Result<AppendResult> {
    if job.events.is_empty() {
        return Err(Error::InvalidAppend("no events".into()));
    }
    if job.stream.is_empty() {
        return Err(Error::InvalidAppend("empty stream name".into()));
    }
    let head = heads.head(&job.stream, events, index)?;
    let current = head.map(|(version, _, _)| version);
    // Idempotent retry: the first id is already stored. It must be the same append. Bulk
    // appends are not looked up, nor their ids indexed: their callers deduplicate (see
    // `EventStore::append_bulk`).
    let retried = if job.bulk() {
        None
    } else {
        ids.get(job.events[0].id.as_u128())
            .map_err(storage)?
            .map(|pos| pos.value())
    };
    if let Some(first_pos) = retried {
        let raw = events
            .get(first_pos)
            .map_err(storage)?
            .ok_or_else(|| Error::Storage("event id index points nowhere".into()))?;
        let first = codec::decode(first_pos, raw.value())?;
        drop(raw);
        if first.stream != job.stream {
            return Err(Error::DuplicateEventId(job.events[0].id));
        }
        let mut last = AppendResult {
            last_version: first.version,
            position: first_pos,
        };
        for (i, e) in job.events.iter().enumerate().skip(1) {
            let version = first.version + i as u64;
            let pos = heads.position_of(&job.stream, version, index)?;
            let same = match pos {
                Some(p) => match events.get(p).map_err(storage)? {
                    Some(raw) => codec::decode(p, raw.value())?.id == e.id,
                    None => false,
                },
                None => false,
            };
            if !same {
                return Err(Error::DuplicateEventId(job.events[0].id));
            }
            last = AppendResult {
                last_version: version,
                position: pos.unwrap_or(0),
            };
        }
        return Ok(last);
    }
    let ok = match job.expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current.is_none(),
        ExpectedVersion::StreamExists => current.is_some(),
        ExpectedVersion::Exact(v) => current == Some(v),
    };
    if !ok {
        return Err(Error::WrongExpectedVersion {
            stream: job.stream.clone(),
            expected: job.expected,
            actual: current,
        });
    }
    let first_version = current.map(|v| v + 1).unwrap_or(0);
    let mut prev = head.map_or(crate::chain::GENESIS, |(_, _, chain)| chain);
    let mut positions = Vec::with_capacity(job.events.len());
    let mut result = AppendResult {
        last_version: 0,
        position: 0,
    };
    let mut buf = Vec::new();
    for (version, e) in (first_version..).zip(&job.events) {
        let position = *next_position;
        *next_position += 1;
        prev = crate::chain::link(
            &prev,
            &job.stream,
            version,
            e.id,
            &e.event_type,
            &e.data,
            &e.metadata,
        );
        codec::encode_into(
            &mut buf,
            version,
            e.id,
            created_ms,
            &prev,
            &job.stream,
            &e.event_type,
            &e.data,
            &e.metadata,
        );
        events.insert(position, buf.as_slice()).map_err(storage)?;
        positions.push(position);
        if version == first_version && !job.bulk() {
            ids.insert(e.id.as_u128(), position).map_err(storage)?;
        }
        result = AppendResult {
            last_version: version,
            position,
        };
    }
    // Only a whole append joins the group's entries.
    heads.stage(&job.stream, first_version, positions, prev);
    Ok(result)
}

/// The appends the writer has taken from its channel and not yet committed, by [`Lane`], each in
/// arrival order.
#[derive(Default)]
struct Queue {
    /// All go into the next group, up to [`MAX_GROUP_EVENTS`].
    plain: VecDeque<AppendJob>,
    /// Up to [`BULK_GROUP_EVENTS`] a group, after the plain ones.
    small: VecDeque<AppendJob>,
    /// Up to [`BULK_GROUP_EVENTS`] a group, or [`CUT_EVENTS`] after urgent ones.
    large: VecDeque<AppendJob>,
    /// Set by a shutdown request: nothing after it is taken.
    shutdown: Option<std::sync::mpsc::Sender<()>>,
}

impl Queue {
    fn lane(&mut self, lane: Lane) -> &mut VecDeque<AppendJob> {
        match lane {
            Lane::Plain => &mut self.plain,
            Lane::Small => &mut self.small,
            Lane::Large => &mut self.large,
        }
    }

    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.small.is_empty() && self.large.is_empty()
    }

    /// Takes what is in the channel without waiting, up to a shutdown request.
    fn receive(&mut self, jobs: &mpsc::Receiver<Job>) {
        while self.shutdown.is_none() {
            match jobs.try_recv() {
                Ok(job) => self.take(job),
                Err(_) => break,
            }
        }
    }

    /// Cuts a group being staged for the urgent appends queued meanwhile, if there are any:
    /// `group[..staged]` is staged (its last a bulk append), and the bulk appends after it go
    /// back to the head of their queues (in order) unless fewer than [`CUT_EVENTS`] events of
    /// them are left. Plain appends cut any bulk ones; small ones only large ones, since they
    /// keep their order among themselves. The urgent appends join the group's end; returns
    /// whether it was cut.
    fn cut(&mut self, group: &mut Vec<AppendJob>, staged: usize) -> bool {
        let among_large = group[staged - 1].lane == Lane::Large;
        if self.plain.is_empty() && (self.small.is_empty() || !among_large) {
            return false;
        }
        let left: usize = group[staged..].iter().map(|j| j.events.len()).sum();
        if left < CUT_EVENTS {
            return false;
        }
        for job in group.drain(staged..).rev() {
            self.lane(job.lane).push_front(job);
        }
        move_up_to(&mut self.plain, MAX_GROUP_EVENTS, group);
        move_up_to(&mut self.small, CUT_EVENTS, group);
        true
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Append(j) => self.lane(j.lane).push_back(j),
            // One lane for the whole batch ([`Lane::bulk`] of all its events).
            Job::Batch(jobs) => {
                if let Some(lane) = jobs.first().map(|j| j.lane) {
                    self.lane(lane).extend(jobs);
                }
            }
            Job::Shutdown(done) => self.shutdown = Some(done),
        }
    }

    /// The plain appends, then the small bulk ones, then the large ones, each up to its bound. A
    /// group of plain appends alone would commit sooner, but one more fsync each time costs the
    /// fixes more (dispatch-bench at 50,000 fixes/s: check-in p50 9-11 ms, the fixes' ack p50
    /// 8-10 ms, against 16.5 ms and 2.2 ms with up to a whole bulk group after them, and 21 ms
    /// and 1.7 ms with one queue); after urgent appends, large ones fill only [`CUT_EVENTS`].
    fn next_group(&mut self) -> Vec<AppendJob> {
        let mut group = Vec::new();
        move_up_to(&mut self.plain, MAX_GROUP_EVENTS, &mut group);
        move_up_to(&mut self.small, BULK_GROUP_EVENTS, &mut group);
        let large = if group.is_empty() {
            BULK_GROUP_EVENTS
        } else {
            CUT_EVENTS
        };
        move_up_to(&mut self.large, large, &mut group);
        group
    }
}

/// Moves appends from the head of `queue` to the end of `group` while fewer than `bound` events
/// have been moved (so the last one may take it past `bound`).
fn move_up_to(queue: &mut VecDeque<AppendJob>, bound: usize, group: &mut Vec<AppendJob>) {
    let mut events = 0;
    while events < bound
        && let Some(job) = queue.pop_front()
    {
        events += job.events.len();
        group.push(job);
    }
}

/// The one writer thread's state.
struct Writer {
    db: Arc<Database>,
    tail: Arc<RwLock<Tail>>,
    /// Tail entries at which a bucket is written out to `stream_index`.
    flush_at: usize,
    /// The bucket being written out, if any.
    flush: Option<Flush>,
    on_commit: Option<CommitObserver>,
}

/// Streams of a bucket written out with one group commit, at least: a stream's entries dirty a
/// leaf of `stream_index` of their own, and with a group of fixes for 10,000 streams a whole
/// bucket was ~300 leaves, ~15 ms added to one group while every append queued behind it
/// waited: the fixes' ack p99 was 67 ms against 16 ms with no bulk writes at all
/// (`dispatch-bench`, BENCHMARKS.md). A chunk of this many holds a group a few ms.
const FLUSH_CHUNK_STREAMS: usize = 48;

/// Most entries of one chunk, unless its group appended more: a stream with more entries than
/// this (a run at 1 Hz for hours, or one of a few streams sharing the whole tail) is split
/// across chunks, so no chunk holds a group for tens of thousands of inserts.
const FLUSH_CHUNK_ENTRIES: usize = 8_192;

/// How many rows the writer writes between two offers of its core to another thread
/// ([`Yielder`]): ~0.2–0.5 ms of its work.
const YIELD_EVERY_ROWS: usize = 128;

/// Offers the writer's core to any thread waiting for one, every [`YIELD_EVERY_ROWS`] rows it
/// writes. A group of fixes keeps the writer on a core for several milliseconds, and Linux does not
/// preempt a running thread for one that wakes until the runner's slice is used up (up to ~2.5 ms
/// seen here): a console's GetRun, a unit's ack or a check-in that woke meanwhile waited that long
/// whenever both cores were busy. A yield with no one waiting returns at once. Under
/// `dispatch-bench`, old and new builds alternated, GetRun's p99 at the client went from a median
/// of 0.90 ms to 0.48 ms, and full-speed ingest got 10–15 % faster (BENCHMARKS.md, "Bulk threads
/// offer their core").
#[derive(Default)]
struct Yielder {
    rows: usize,
}

impl Yielder {
    fn wrote(&mut self, rows: usize) {
        self.rows += rows;
        if self.rows >= YIELD_EVERY_ROWS {
            self.rows = 0;
            std::thread::yield_now();
        }
    }
}

/// A bucket of the tail being written out to `stream_index`, a chunk with each group commit:
/// its streams' entries up to `mark` (every event before the group that began it), in key
/// order. The bucket's new mark is committed with the last chunk and only then does the tail let
/// go of those entries; until then they are in both, which readers allow (they take the tail's
/// copy), and a crash before the mark only means they are written again from the log.
struct Flush {
    bucket: usize,
    mark: u64,
    /// The bucket's streams when it began, sorted.
    streams: Vec<String>,
    /// Where the written part ends: streams wholly written, and entries of the next one.
    at: Cursor,
}

/// A position in a [`Flush`]: streams wholly written, and entries of the next one written.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    streams: usize,
    entries: usize,
}

impl Flush {
    /// Writes the next chunk: at least [`FLUSH_CHUNK_STREAMS`] streams and, so the tail cannot
    /// outgrow the writing while it is over its bound, at least `at_least` entries (the group's
    /// own events), but no more entries than that or [`FLUSH_CHUNK_ENTRIES`], whichever is
    /// more. Returns where it ended and how many entries it wrote.
    fn write_chunk(
        &self,
        tail: &Tail,
        at_least: usize,
        index: &mut redb::Table<(&str, u64), u64>,
        yielder: &mut Yielder,
    ) -> Result<(Cursor, usize)> {
        let most = at_least.max(FLUSH_CHUNK_ENTRIES);
        let (mut at, mut written, mut touched) = (self.at, 0, 0);
        while let Some(stream) = self.streams.get(at.streams) {
            if written >= most || (touched >= FLUSH_CHUNK_STREAMS && written >= at_least) {
                break;
            }
            let mut rest = tail
                .entries_until(stream, self.mark)
                .skip(at.entries)
                .peekable();
            let before = written;
            while written < most
                && let Some((version, position)) = rest.next()
            {
                index
                    .insert((stream.as_str(), version), position)
                    .map_err(storage)?;
                written += 1;
                at.entries += 1;
            }
            yielder.wrote(written - before);
            touched += 1;
            if rest.peek().is_some() {
                // The chunk is full mid-stream: the next one goes on from here.
                break;
            }
            at = Cursor {
                streams: at.streams + 1,
                entries: 0,
            };
        }
        Ok((at, written))
    }

    fn is_done(&self, at: Cursor) -> bool {
        at.streams == self.streams.len()
    }
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>, head: watch::Sender<u64>) {
        let mut next_position = *head.borrow() + 1;
        let mut queue = Queue::default();
        // Ends when every store handle is dropped, or on shutdown once what was queued before
        // it is committed.
        loop {
            if queue.shutdown.is_none() {
                // Blocks only when nothing is left over from the last group.
                if queue.is_empty() {
                    match jobs.recv() {
                        Ok(job) => queue.take(job),
                        Err(_) => break,
                    }
                }
                queue.receive(&jobs);
            }
            let started = Instant::now();
            let mut group = queue.next_group();
            // Empty only after a shutdown, once everything before it is committed.
            if group.is_empty() {
                break;
            }
            let group_start = next_position;
            let outcome = self.commit_group(&mut group, &mut queue, &jobs, &mut next_position);
            let n_events = group.iter().map(|j| j.events.len()).sum();
            let n_appends = group.len();
            let (commit_time, indexed) = match &outcome {
                Ok(o) => (o.commit, o.indexed),
                Err(_) => (Duration::ZERO, 0),
            };
            match outcome {
                Ok(GroupOutcome { results, .. }) => {
                    if next_position > group_start {
                        head.send_replace(next_position - 1);
                    }
                    for (job, result) in group.into_iter().zip(results) {
                        job.reply.send(result);
                    }
                }
                Err(e) => {
                    // The transaction was not committed: nothing of the group is stored.
                    next_position = group_start;
                    tracing::error!(cause = %e, "group commit failed");
                    for job in group {
                        job.reply.send(Err(e.clone()));
                    }
                }
            }
            if let Some(observer) = &self.on_commit {
                observer(CommitStats {
                    appends: n_appends,
                    events: n_events,
                    commit: commit_time,
                    total: started.elapsed(),
                    indexed,
                });
            }
        }
        drop(self);
        if let Some(done) = queue.shutdown {
            let _ = done.send(());
        }
    }

    /// Stages and commits one group; while a bucket of the tail is being written out to
    /// `stream_index` (begun once the tail is full), its next chunk goes in the same
    /// transaction. An urgent append that arrives while the group's bulk appends are staged joins
    /// it and ends it ([`Queue::cut`]): a check-in, an alarm or a unit's own fixes then wait for
    /// one commit, not for the rest of a gateway's batch and then their own. `group` is left holding
    /// what was committed, in the order of `GroupOutcome::results`. The tail learns of the group
    /// only once it is committed, before anyone is answered.
    fn commit_group(
        &mut self,
        group: &mut Vec<AppendJob>,
        queue: &mut Queue,
        jobs: &mpsc::Receiver<Job>,
        next_position: &mut u64,
    ) -> Result<GroupOutcome> {
        let n_events = group.iter().map(|j| j.events.len()).sum();
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        if self.flush.is_none() && tail.len() >= self.flush_at {
            // The fullest bucket, up to every event before this group.
            self.flush = tail.fullest().map(|(bucket, _)| Flush {
                bucket,
                mark: *next_position - 1,
                streams: tail.streams(bucket),
                at: Cursor::default(),
            });
        }
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let created_ms = now_ms();
        let mut results = Vec::with_capacity(group.len());
        let mut heads = Heads {
            staged: HashMap::new(),
            tail: &tail,
        };
        // Where this group's chunk ended, and how many entries it wrote.
        let mut chunk = None;
        let mut yielder = Yielder::default();
        {
            let mut events = txn.open_table(EVENTS).map_err(storage)?;
            let mut index = txn.open_table(STREAM_INDEX).map_err(storage)?;
            let mut ids = txn.open_table(EVENT_IDS).map_err(storage)?;
            if let Some(flush) = &self.flush {
                let (at, written) = flush.write_chunk(&tail, n_events, &mut index, &mut yielder)?;
                chunk = Some((at, written));
                if flush.is_done(at) {
                    let mut meta = txn.open_table(META).map_err(storage)?;
                    meta.insert(mark_key(flush.bucket).as_str(), flush.mark)
                        .map_err(storage)?;
                }
            }
            let mut cut = false;
            while let Some(job) = group.get(results.len()) {
                results.push(stage(
                    job,
                    next_position,
                    created_ms,
                    &mut events,
                    &index,
                    &mut ids,
                    &mut heads,
                ));
                yielder.wrote(job.events.len());
                if job.bulk() && !cut {
                    queue.receive(jobs);
                    cut = queue.cut(group, results.len());
                }
            }
        }
        let staged = heads.staged;
        drop(tail);
        let t = Instant::now();
        txn.commit().map_err(storage)?;
        let commit_time = t.elapsed();
        let mut tail = self.tail.write().unwrap_or_else(|p| p.into_inner());
        if let (Some(flush), Some((at, _))) = (&mut self.flush, chunk) {
            if flush.is_done(at) {
                tail.trim(flush.bucket, flush.mark);
                self.flush = None;
            } else {
                flush.at = at;
            }
        }
        tail.extend(staged);
        Ok(GroupOutcome {
            results,
            commit: commit_time,
            indexed: chunk.map_or(0, |(_, written)| written),
        })
    }
}

struct GroupOutcome {
    results: Vec<Result<AppendResult>>,
    /// Time in `commit()`.
    commit: Duration,
    /// Tail entries written to `stream_index`.
    indexed: usize,
}

impl EmbeddedStore {
    /// Queues an append for the writer and waits for its answer.
    fn queue_append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        lane: Lane,
    ) -> BoxFuture<'_, Result<AppendResult>> {
        let (tx, rx) = oneshot::channel();
        let job = AppendJob {
            stream: stream.to_string(),
            expected,
            events,
            lane,
            reply: Reply::One(tx),
        };
        let sent = self
            .inner
            .jobs
            .send(Job::Append(job))
            .map_err(|_| Error::Closed);
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| Error::Closed)?
        })
    }
}

impl EventStore for EmbeddedStore {
    fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<AppendResult>> {
        self.queue_append(stream, expected, events, Lane::Plain)
    }

    fn append_bulk(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<AppendResult>> {
        let lane = Lane::bulk(events.len());
        self.queue_append(stream, expected, events, lane)
    }

    /// One job for the writer and one answer, whatever the batch's size.
    fn append_bulk_batch(&self, appends: Vec<Append>) -> BoxFuture<'_, Vec<Result<AppendResult>>> {
        let n = appends.len();
        if n == 0 {
            return Box::pin(futures::future::ready(Vec::new()));
        }
        let lane = Lane::bulk(appends.iter().map(|a| a.events.len()).sum());
        let (tx, rx) = oneshot::channel();
        let batch = Arc::new(std::sync::Mutex::new(BatchReply {
            results: (0..n).map(|_| None).collect(),
            left: n,
            reply: Some(tx),
        }));
        let jobs = appends
            .into_iter()
            .enumerate()
            .map(|(i, a)| AppendJob {
                stream: a.stream,
                expected: a.expected,
                events: a.events,
                lane,
                reply: Reply::Part(batch.clone(), i),
            })
            .collect();
        drop(batch);
        // Sent or not, the batch answers: a job the writer never takes is dropped with it.
        let _ = self.inner.jobs.send(Job::Batch(jobs));
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| (0..n).map(|_| Err(Error::Closed)).collect())
        })
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>>> {
        let stream = stream.to_string();
        Box::pin(async move {
            let db = self.db()?;
            // The tail's lock is held from before the transaction begins until its part is
            // copied (see `tail`): every acknowledged event is then in one or the other.
            let (txn, newest, cutoff) = {
                let tail = self.inner.tail.read().unwrap_or_else(|p| p.into_inner());
                let txn = db.begin_read().map_err(storage)?;
                let (newest, cutoff): (Vec<u64>, u64) = match tail.get(&stream) {
                    Some(t) => (
                        match direction {
                            Direction::Forwards => {
                                t.forwards(from).take(max).map(|e| e.1).collect()
                            }
                            Direction::Backwards => {
                                t.backwards(from).take(max).map(|e| e.1).collect()
                            }
                        },
                        t.first,
                    ),
                    None => (Vec::new(), u64::MAX),
                };
                (txn, newest, cutoff)
            };
            let index = txn.open_table(STREAM_INDEX).map_err(storage)?;
            let events = txn.open_table(EVENTS).map_err(storage)?;
            // `stream_index` for the versions before the tail's first (it may also hold the
            // tail's entries just after a bulk write; the tail's copy is taken).
            let indexed =
                |lo: u64, hi: u64| index.range((stream.as_str(), lo)..(stream.as_str(), hi));
            let mut positions = Vec::with_capacity(max.min(4096));
            match direction {
                Direction::Forwards => {
                    if from < cutoff {
                        for row in indexed(from, cutoff).map_err(storage)?.take(max) {
                            positions.push(row.map_err(storage)?.1.value());
                        }
                    }
                    positions.extend(newest);
                    positions.truncate(max);
                }
                Direction::Backwards => {
                    positions.extend(newest);
                    let below = from.saturating_add(1).min(cutoff);
                    let rest = max.saturating_sub(positions.len());
                    if below > 0 && rest > 0 {
                        for row in indexed(0, below).map_err(storage)?.rev().take(rest) {
                            positions.push(row.map_err(storage)?.1.value());
                        }
                    }
                }
            }
            let mut out = Vec::with_capacity(positions.len());
            for p in positions {
                let raw = events
                    .get(p)
                    .map_err(storage)?
                    .ok_or_else(|| Error::Storage(format!("stream index points at missing {p}")))?;
                out.push(codec::decode(p, raw.value())?);
            }
            Ok(out)
        })
    }

    fn read_all(&self, after: u64, max: usize) -> BoxFuture<'_, Result<Vec<RecordedEvent>>> {
        Box::pin(async move { Self::read_all_sync(&*self.db()?, after, max) })
    }

    fn head_position(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move { Ok(*self.inner.head.borrow()) })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let store = self.clone();
        Box::pin(async move {
            // Waits on a thread: off the async workers.
            let _ = tokio::task::spawn_blocking(move || EmbeddedStore::close(&store)).await;
        })
    }

    fn subscribe(
        &self,
        filter: SubscriptionFilter,
        after: Option<u64>,
    ) -> BoxStream<'static, Result<SubscriptionMessage>> {
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIPTION_BATCH);
        let db = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Arc::downgrade)
            .unwrap_or_default();
        let mut head = self.inner.head.clone();
        tokio::spawn(async move {
            let mut checkpoint = after.unwrap_or(0);
            let mut caught_up = false;
            loop {
                let batch = {
                    let db = db.clone();
                    match tokio::task::spawn_blocking(move || {
                        let db = db.upgrade().ok_or(Error::Closed)?;
                        EmbeddedStore::read_all_sync(&db, checkpoint, SUBSCRIPTION_BATCH)
                    })
                    .await
                    {
                        Ok(r) => r,
                        Err(e) => Err(storage(e)),
                    }
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    if !caught_up {
                        caught_up = true;
                        if tx
                            .send(Ok(SubscriptionMessage::CaughtUp {
                                position: checkpoint,
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    // Wait for the head to move past what we have read.
                    loop {
                        if *head.borrow_and_update() > checkpoint {
                            break;
                        }
                        // A dropped subscriber ends the task at once, not at the next append.
                        tokio::select! {
                            changed = head.changed() => if changed.is_err() { return },
                            _ = tx.closed() => return,
                        }
                    }
                    continue;
                }
                for e in batch {
                    checkpoint = e.position;
                    if filter.matches(&e.stream)
                        && tx.send(Ok(SubscriptionMessage::Event(e))).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        tokio_stream_from(rx)
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), Options::default()).expect("open");
        crate::conformance::run_all(&store).await;
    }

    /// The stream index written to `stream_index` every few events: every read crosses the
    /// boundary between the written index and the tail held in memory.
    fn flushing_every(n: usize) -> Options {
        Options {
            index_flush_events: n,
            ..Options::default()
        }
    }

    /// `options` that also record, for each group commit, how many entries it wrote to
    /// `stream_index`.
    fn counting_index_writes(options: Options) -> (Options, Arc<std::sync::Mutex<Vec<usize>>>) {
        let indexed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = indexed.clone();
        let options = Options {
            on_commit: Some(Arc::new(move |c: CommitStats| {
                seen.lock().expect("seen").push(c.indexed);
            })),
            ..options
        };
        (options, indexed)
    }

    #[tokio::test]
    async fn the_conformance_suite_passes_with_the_index_written_every_few_events() {
        for n in [1, 3, 7] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = EmbeddedStore::open(dir.path(), flushing_every(n)).expect("open");
            crate::conformance::run_all(&store).await;
        }
    }

    fn numbered(i: u64) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::now_v7(),
            event_type: "T.v1".into(),
            data: i.to_le_bytes().to_vec(),
            metadata: vec![],
        }
    }

    async fn versions(store: &EmbeddedStore, stream: &str, from: u64, d: Direction) -> Vec<u64> {
        store
            .read_stream(stream, from, d, 1000)
            .await
            .expect("read")
            .iter()
            .map(|e| e.version)
            .collect()
    }

    #[tokio::test]
    async fn the_index_tail_is_rebuilt_from_the_log_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Streams in different tail buckets (fixed by the hash), so that each has its own mark.
        assert_ne!(tail::bucket_of("a"), tail::bucket_of("b"));
        let held = {
            let store = EmbeddedStore::open(dir.path(), flushing_every(5)).expect("open");
            // 23 events over two streams: bulk writes of one bucket at a time, some left.
            for i in 0..23 {
                let stream = if i % 3 == 0 { "b" } else { "a" };
                store
                    .append(stream, ExpectedVersion::Any, vec![numbered(i)])
                    .await
                    .expect("append");
            }
            let held = store.inner.tail.read().expect("tail").len();
            assert!(held > 0 && held < 23, "some written out, some held: {held}");
            store.close();
            held
        };
        let store = EmbeddedStore::open(dir.path(), flushing_every(5)).expect("reopen");
        let tail = store.inner.tail.read().expect("tail").len();
        assert_eq!(tail, held, "exactly the unwritten entries are back");
        assert_eq!(
            versions(&store, "a", 0, Direction::Forwards).await,
            (0..15).collect::<Vec<_>>()
        );
        assert_eq!(
            versions(&store, "b", u64::MAX, Direction::Backwards).await,
            (0..8).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            versions(&store, "a", 9, Direction::Backwards).await,
            (0..10).rev().collect::<Vec<_>>()
        );
        // Versions and the chain go on from where they were.
        store
            .append("a", ExpectedVersion::Exact(14), vec![numbered(99)])
            .await
            .expect("append at the rebuilt head");
        let a = store
            .read_stream("a", 0, Direction::Forwards, 100)
            .await
            .expect("read a");
        let v = crate::chain::verify(&a);
        assert_eq!((v.first_break, v.checked), (None, 16));
    }

    #[tokio::test]
    async fn a_bucket_written_out_over_several_groups_reads_the_same_throughout() {
        // 120 streams of one bucket, more than one chunk holds: the bucket is written out over
        // three groups while appends go on.
        let streams: Vec<String> = (0..)
            .map(|i| format!("vehicle-{i}"))
            .filter(|s| tail::bucket_of(s) == 3)
            .take(120)
            .collect();
        let (options, indexed) = counting_index_writes(flushing_every(200));
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = EmbeddedStore::open(dir.path(), options).expect("open");
            for round in 0..3u64 {
                let expected = match round {
                    0 => ExpectedVersion::NoStream,
                    r => ExpectedVersion::Exact(r - 1),
                };
                for (k, stream) in streams.iter().enumerate() {
                    store
                        .append(stream, expected, vec![numbered(round)])
                        .await
                        .expect("append");
                    // Streams read whole at every step: before, during and after the chunks,
                    // whether their entries are in the tail, the index, or both.
                    for j in [0, k, 119] {
                        let written = round + u64::from(j <= k);
                        assert_eq!(
                            versions(&store, &streams[j], 0, Direction::Forwards).await,
                            (0..written).collect::<Vec<_>>(),
                            "{} after {stream} in round {round}",
                            streams[j]
                        );
                    }
                }
            }
            store.close();
        }
        // Writing out began with the 201st append, up to the 200 events before it: 48, 48 and
        // 24 streams, in three groups in a row; nothing was written out before or after.
        let indexed = indexed.lock().expect("indexed").clone();
        let first = indexed.iter().position(|n| *n > 0).expect("a chunk");
        let chunks = &indexed[first..first + 3];
        assert!(chunks.iter().all(|n| *n >= 24), "{indexed:?}");
        assert_eq!(chunks.iter().sum::<usize>(), 200, "{indexed:?}");
        assert_eq!(indexed.iter().filter(|n| **n > 0).count(), 3, "{indexed:?}");
        // Reopened, the tail holds only what was not written out, and every stream reads whole.
        let store = EmbeddedStore::open(dir.path(), flushing_every(1_000)).expect("reopen");
        let held = store.inner.tail.read().expect("tail").len();
        assert_eq!(held, 160, "the entries after the mark");
        for s in &streams {
            assert_eq!(versions(&store, s, 0, Direction::Forwards).await, [0, 1, 2]);
            let read = store
                .read_stream(s, 0, Direction::Forwards, 10)
                .await
                .expect("read");
            assert!(crate::chain::verify(&read).first_break.is_none());
        }
    }

    #[tokio::test]
    async fn a_stream_with_more_entries_than_a_chunk_is_split_across_chunks() {
        // One stream of 20,000 events (a run at 1 Hz for hours): written out 8,192 entries a
        // group, not all in one.
        let (options, indexed) = counting_index_writes(flushing_every(20_000));
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), options).expect("open");
        for k in 0..20u64 {
            let events = (0..1_000).map(|i| numbered(k * 1_000 + i)).collect();
            store
                .append("long", ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
        for k in 0..3u64 {
            store
                .append("other", ExpectedVersion::Any, vec![numbered(k)])
                .await
                .expect("append");
            let read = store
                .read_stream("long", 0, Direction::Forwards, 30_000)
                .await
                .expect("read");
            assert_eq!(read.len(), 20_000, "after chunk {k}");
            assert!(read.iter().enumerate().all(|(v, e)| e.version == v as u64));
        }
        let indexed = indexed.lock().expect("indexed").clone();
        assert_eq!(indexed[20..], [8_192, 8_192, 3_616], "{indexed:?}");
        assert_eq!(
            store.inner.tail.read().expect("tail").len(),
            3,
            "only 'other' is held"
        );
        store.close();
        let store = EmbeddedStore::open(dir.path(), Options::default()).expect("reopen");
        let back = versions(&store, "long", u64::MAX, Direction::Backwards).await;
        assert_eq!((back.len(), back[0]), (1_000, 19_999));
    }

    #[tokio::test]
    async fn a_store_reopened_before_its_first_index_write_reads_every_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = EmbeddedStore::open(dir.path(), Options::default()).expect("open");
            let events = (0..50).map(numbered).collect();
            store
                .append("a", ExpectedVersion::NoStream, events)
                .await
                .expect("append");
            store.close();
        }
        let store = EmbeddedStore::open(dir.path(), flushing_every(10)).expect("reopen");
        assert_eq!(
            versions(&store, "a", 0, Direction::Forwards).await,
            (0..50).collect::<Vec<_>>()
        );
    }

    /// A store whose writer, after its first group (one event, committed here), waits until the
    /// sender is used: what a test queues meanwhile is all there when the next group forms.
    async fn held_after_first_group(dir: &Path) -> (EmbeddedStore, std::sync::mpsc::Sender<()>) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(Some(gate));
        let store = EmbeddedStore::open(
            dir,
            Options {
                on_commit: Some(Arc::new(move |_| {
                    if let Some(g) = gate.lock().expect("gate").take() {
                        let _ = g.recv();
                    }
                })),
                ..Options::default()
            },
        )
        .expect("open");
        store
            .append("first", ExpectedVersion::Any, vec![numbered(0)])
            .await
            .expect("first");
        (store, release)
    }

    #[tokio::test]
    async fn a_plain_append_is_committed_before_a_backlog_of_bulk_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, release) = held_after_first_group(dir.path()).await;
        // Queued (the job is sent when the future is made), three groups' worth of fixes.
        let n = 3 * BULK_GROUP_EVENTS;
        let fixes: Vec<_> = (0..n)
            .map(|i| {
                store.append_bulk(
                    &format!("vehicle-{}", i % 10),
                    ExpectedVersion::Any,
                    vec![numbered(i as u64)],
                )
            })
            .collect();
        let alarm = store.append("alarm", ExpectedVersion::Any, vec![numbered(99)]);
        release.send(()).expect("release");
        let alarm = alarm.await.expect("alarm");
        let fixes: Vec<u64> = futures::future::join_all(fixes)
            .await
            .into_iter()
            .map(|r| r.expect("fix").position)
            .collect();
        assert_eq!(alarm.position, 2, "first in the next group");
        assert!(
            fixes.windows(2).all(|w| w[0] < w[1]),
            "bulk appends keep their order"
        );
        assert_eq!(fixes[0], 3);
        assert_eq!(fixes[n - 1], 2 + n as u64);
    }

    #[tokio::test]
    async fn a_units_own_batch_is_committed_before_a_backlog_of_gateway_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, release) = held_after_first_group(dir.path()).await;
        let batch = |name: &str, vehicles: usize, fixes: u64| {
            (0..vehicles)
                .map(|v| Append {
                    stream: format!("{name}-{v}"),
                    expected: ExpectedVersion::Any,
                    events: (0..fixes).map(numbered).collect(),
                })
                .collect::<Vec<_>>()
        };
        // Queued when made: three gateways' batches of 1,000 vehicles, then one unit's 3 fixes.
        let gateways: Vec<_> = (0..3)
            .map(|g| store.append_bulk_batch(batch(&format!("gateway{g}"), 1_000, 1)))
            .collect();
        let unit = store.append_bulk_batch(batch("unit", 1, 3));
        release.send(()).expect("release");
        let unit = unit.await.remove(0).expect("unit");
        assert_eq!(unit.position, 4, "first in the next group");
        let gateways: Vec<Vec<u64>> = futures::future::join_all(gateways)
            .await
            .into_iter()
            .map(|b| b.into_iter().map(|r| r.expect("fix").position).collect())
            .collect();
        let all: Vec<u64> = gateways.concat();
        assert!(
            all.windows(2).all(|w| w[0] < w[1]),
            "the gateways' appends keep their order"
        );
        assert_eq!((all[0], all[2_999]), (5, 3_004));
    }

    fn job(stream: &str, events: u64, lane: Lane) -> AppendJob {
        AppendJob {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events: (0..events).map(numbered).collect(),
            lane,
            reply: Reply::One(oneshot::channel().0),
        }
    }

    fn streams<'a>(jobs: impl IntoIterator<Item = &'a AppendJob>) -> Vec<&'a str> {
        jobs.into_iter().map(|j| j.stream.as_str()).collect()
    }

    /// A group of `n` large appends of 200 events each, named `{name}-0`...
    fn large(name: &str, n: usize) -> Vec<AppendJob> {
        (0..n)
            .map(|i| job(&format!("{name}-{i}"), 200, Lane::Large))
            .collect()
    }

    #[test]
    fn a_plain_append_cuts_a_group_of_bulk_ones_being_staged_unless_little_is_left() {
        let mut queue = Queue::default();
        let mut group = large("fixes", 4);
        queue.large.push_back(job("fixes-4", 200, Lane::Large));
        assert!(!queue.cut(&mut group, 1), "nothing urgent is queued");
        assert_eq!(group.len(), 4);

        queue.take(Job::Append(job("alarm", 1, Lane::Plain)));
        assert!(queue.cut(&mut group, 1), "600 bulk events are left");
        assert_eq!(streams(&group), ["fixes-0", "alarm"]);
        assert_eq!(
            streams(&queue.large),
            ["fixes-1", "fixes-2", "fixes-3", "fixes-4"],
            "the bulk appends not staged keep their order, ahead of those queued after them"
        );
        assert!(queue.plain.is_empty());

        let mut group = large("more", 2);
        queue.take(Job::Append(job("check-in", 1, Lane::Plain)));
        assert!(
            !queue.cut(&mut group, 1),
            "200 bulk events left: staged first"
        );
        assert_eq!(streams(&group), ["more-0", "more-1"]);
        assert_eq!(streams(&queue.plain), ["check-in"]);
    }

    #[test]
    fn a_units_small_batch_cuts_a_gateways_large_one_but_keeps_its_place_among_small_ones() {
        let mut queue = Queue::default();
        // Small batches first, then a gateway's: among the small ones, a newcomer waits its turn.
        let mut group = vec![job("unit-0", 3, Lane::Small), job("unit-1", 3, Lane::Small)];
        group.extend(large("gateway", 3));
        queue.take(Job::Batch(vec![job("unit-2", 3, Lane::Small)]));
        assert!(!queue.cut(&mut group, 1), "still among the small ones");
        assert_eq!(group.len(), 5);

        assert!(queue.cut(&mut group, 3), "400 large events are left");
        assert_eq!(streams(&group), ["unit-0", "unit-1", "gateway-0", "unit-2"]);
        assert_eq!(streams(&queue.large), ["gateway-1", "gateway-2"]);

        // The next group: a new plain append, then the small ones, then large ones up to the cut
        // bound only (two of 200 events reach 256), since urgent appends are waiting on it.
        queue.large.extend(large("later", 2));
        queue.take(Job::Append(job("check-in", 1, Lane::Plain)));
        queue.take(Job::Batch(vec![
            job("unit-3", 2, Lane::Small),
            job("unit-4", 2, Lane::Small),
        ]));
        assert_eq!(
            streams(&queue.next_group()),
            ["check-in", "unit-3", "unit-4", "gateway-1", "gateway-2"]
        );
        // With nothing urgent, large ones fill a whole bulk group.
        assert_eq!(streams(&queue.next_group()), ["later-0", "later-1"]);
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_store_with_the_single_mark_of_before_buckets_opens_and_reads_every_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = EmbeddedStore::open(dir.path(), flushing_every(4)).expect("open");
            for i in 0..30 {
                let stream = format!("s{}", i % 5);
                store
                    .append(&stream, ExpectedVersion::Any, vec![numbered(i)])
                    .await
                    .expect("append");
            }
            store.close();
        }
        // The layout of before: one `indexed` mark for every stream, no bucket count. Take the
        // lowest bucket mark as it (every event up to it is indexed).
        {
            let db = Database::create(dir.path().join("events.redb")).expect("db");
            let txn = db.begin_write().expect("txn");
            {
                let mut meta = txn.open_table(META).expect("meta");
                let lowest = (0..tail::BUCKETS)
                    .map(|b| {
                        meta.get(mark_key(b).as_str())
                            .expect("get")
                            .expect("mark")
                            .value()
                    })
                    .min()
                    .expect("marks");
                for b in 0..tail::BUCKETS {
                    meta.remove(mark_key(b).as_str()).expect("remove");
                }
                meta.remove(INDEX_BUCKETS).expect("remove");
                meta.insert("indexed", lowest).expect("insert");
            }
            txn.commit().expect("commit");
        }
        let store = EmbeddedStore::open(dir.path(), flushing_every(4)).expect("reopen");
        for s in 0..5 {
            assert_eq!(
                versions(&store, &format!("s{s}"), 0, Direction::Forwards).await,
                (0..6).collect::<Vec<_>>()
            );
        }
        store
            .append("s0", ExpectedVersion::Exact(5), vec![numbered(99)])
            .await
            .expect("the head is where it was");
    }

    #[tokio::test]
    async fn a_record_moved_to_another_stream_on_disk_leaves_a_gap_that_verify_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let moved = {
            let store = EmbeddedStore::open(dir.path(), Options::default()).expect("open");
            let mut last = None;
            for i in 0..3 {
                last = Some(
                    store
                        .append("run-A", ExpectedVersion::Any, vec![numbered(i)])
                        .await
                        .expect("append"),
                );
            }
            store.close();
            last.expect("appended").position - 1
        };
        // Version 1's stream name rewritten in place: the record now claims stream "run-B".
        edit_record_for_tests(dir.path(), moved, |raw| {
            let at = raw
                .windows(5)
                .position(|w| w == b"run-A")
                .expect("the stream name inside the record");
            raw[at + 4] = b'B';
        })
        .expect("edit");
        let store = EmbeddedStore::open(dir.path(), Options::default()).expect("still opens");
        let a = store
            .read_stream("run-A", 0, Direction::Forwards, 10)
            .await
            .expect("read");
        assert_eq!(a.iter().map(|e| e.version).collect::<Vec<_>>(), [0, 2]);
        let v = crate::chain::verify(&a);
        assert_eq!(
            v.first_break.map(|b| b.version),
            Some(2),
            "the gap is named"
        );
    }

    #[tokio::test]
    async fn acknowledged_appends_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = EmbeddedStore::open(dir.path(), Options::default()).expect("open");
            for i in 0..10u128 {
                store
                    .append(
                        "s-1",
                        ExpectedVersion::Any,
                        vec![NewEvent {
                            id: uuid::Uuid::from_u128(i + 1),
                            event_type: "T.v1".into(),
                            data: vec![i as u8],
                            metadata: vec![],
                        }],
                    )
                    .await
                    .expect("append");
            }
            store.close();
        }
        let store = EmbeddedStore::open(dir.path(), Options::default()).expect("reopen");
        let all = store.read_all(0, 100).await.expect("read");
        assert_eq!(all.len(), 10);
        assert_eq!(store.head_position().await.expect("head"), 10);
    }
}
