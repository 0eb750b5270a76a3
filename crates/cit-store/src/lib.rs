//! The event store: one trait ([`EventStore`]) that every backend implements, the embedded
//! durable backend ([`embedded::EmbeddedStore`], the default) and the conformance suite
//! ([`conformance`]) that every backend must pass.
//!
//! Semantics shared by all backends:
//! - streams are versioned from 0; an append names the version it expects
//!   ([`ExpectedVersion`]) so concurrent writers of one aggregate conflict instead of clobbering;
//! - every event has an id; an append is identified by the id of its first event: appending again
//!   the same events (same ids, same order, same stream) is an idempotent retry that returns the
//!   original result;
//! - the global log ("all") is totally ordered by `position` (> 0, increasing, not dense);
//! - an append returns only once its events are durable;
//! - every event carries a hash chained over its stream's previous event ([`chain`]);
//! - a subscription delivers everything after a checkpoint, then [`SubscriptionMessage::CaughtUp`]
//!   once, then live events as they are appended.

pub mod chain;
pub mod codec;
pub mod conformance;
pub mod embedded;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use uuid::Uuid;

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    /// Past-tense, versioned type name, e.g. `RunDeparted.v1`.
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Position in the global log; increasing, not necessarily dense.
    pub position: u64,
    pub stream: String,
    /// Version in its stream, from 0.
    pub version: u64,
    pub id: Uuid,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
    /// Wall-clock time the store committed it, milliseconds since the epoch.
    pub created_ms: i64,
    /// Tamper evidence: SHA-256 over this event chained to the previous one of its stream
    /// ([`chain::link`]); [`chain::GENESIS`] on records written before chains existed.
    pub chain: chain::Hash,
}

/// What an append expects of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last event has this version.
    Exact(u64),
}

/// The result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the last event appended.
    pub last_version: u64,
    /// Global position of the last event appended.
    pub position: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forwards,
    Backwards,
}

/// Which events a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionFilter {
    All,
    /// Streams whose name starts with this prefix, e.g. `run-`.
    StreamPrefix(String),
}

impl SubscriptionFilter {
    pub fn matches(&self, stream: &str) -> bool {
        match self {
            SubscriptionFilter::All => true,
            SubscriptionFilter::StreamPrefix(p) => stream.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionMessage {
    Event(RecordedEvent),
    /// Everything up to `position` has been delivered; from now on events are live.
    CaughtUp {
        position: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "wrong expected version on stream {stream:?}: expected {expected:?}, actual {actual:?}"
    )]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// Version of the stream's last event; None when the stream does not exist.
        actual: Option<u64>,
    },
    #[error("event id {0} is already stored in a different place")]
    DuplicateEventId(Uuid),
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the store is shut down")]
    Closed,
}

pub type Result<T> = std::result::Result<T, Error>;

/// One append of [`EventStore::append_bulk_batch`].
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// The event store. Object-safe so a backend can be chosen at run time.
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if it is at `expected`; returns once they are durable.
    fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<AppendResult>>;

    /// [`EventStore::append`] for high-volume writes that may wait behind others (fix ingest):
    /// a backend may commit appends made with `append` first, so an alarm or a command does not
    /// queue behind thousands of fixes. Concurrent appends have no order among them either way;
    /// one made after another's answer still follows it. A backend need not recognise a retry
    /// by its event ids here: the caller deduplicates (citd's fixes by their seq), and a bulk
    /// append sent again may be stored again.
    fn append_bulk(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<AppendResult>> {
        self.append(stream, expected, events)
    }

    /// Several [`EventStore::append_bulk`] appends handed over together (the fixes of many
    /// vehicles from one batch): each is checked and stored as it would be on its own, in the
    /// order given, and the results come back together, in that order, once each is durable or
    /// has failed. A backend that can takes them in as one piece of work instead of one each.
    fn append_bulk_batch(&self, appends: Vec<Append>) -> BoxFuture<'_, Vec<Result<AppendResult>>> {
        Box::pin(futures::future::join_all(
            appends
                .into_iter()
                .map(|a| self.append_bulk(&a.stream, a.expected, a.events)),
        ))
    }

    /// Up to `max` events of one stream, starting at version `from` (inclusive) and going in
    /// `direction`; `from = u64::MAX` backwards means "from the end". Missing stream: empty.
    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>>>;

    /// Up to `max` events of the global log with position > `after`, in order.
    fn read_all(&self, after: u64, max: usize) -> BoxFuture<'_, Result<Vec<RecordedEvent>>>;

    /// Position of the last event in the global log (0 when empty).
    fn head_position(&self) -> BoxFuture<'_, Result<u64>>;

    /// Releases the backend once the appends already queued are durable (a local database
    /// file can then be reopened); later calls fail with [`Error::Closed`]. Default: nothing to
    /// release (a client of a server).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Catch-up subscription: events matching `filter` with position > `after` (all when None),
    /// then `CaughtUp`, then live events. Ends only with an error or when dropped.
    fn subscribe(
        &self,
        filter: SubscriptionFilter,
        after: Option<u64>,
    ) -> BoxStream<'static, Result<SubscriptionMessage>>;
}
