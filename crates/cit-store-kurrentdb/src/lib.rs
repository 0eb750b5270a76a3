//! The KurrentDB (EventStoreDB) backend of the cit event store, for clusters, through the
//! official `kurrentdb` client. It maps the [`cit_store::EventStore`] contract onto the server:
//! expected versions onto stream states, the global position onto the `$all` commit position
//! (one per event outside explicit transactions, which cit never uses), catch-up subscriptions
//! onto `subscribe_to_all` with a stream-name prefix filter.
//!
//! Hash chain: the server does not know cit's chain, so the adapter extends it: it reads the
//! stream's head, links the new events to it, carries each hash as the first 32 bytes of the
//! event's custom metadata, and appends at exactly the head's revision (an `Any` append whose
//! head moved meanwhile re-reads and retries), so concurrent writers never fork a chain.
//!
//! Idempotent retries: the server deduplicates a retried append with the same event ids at the
//! same expected version; cit's ingest and engine additionally use deterministic ids and
//! high-water marks, so a retry never doubles a fix or an anomaly.

use std::str::FromStr;

use cit_store::chain::{self, GENESIS, Hash};
use cit_store::{
    AppendResult, Direction, Error, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Result,
    SubscriptionFilter, SubscriptionMessage,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, Position,
    ReadAllOptions, ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions,
    SubscriptionEvent,
};

/// A cit event store on a KurrentDB server or cluster.
#[derive(Clone)]
pub struct KurrentStore {
    client: Client,
}

impl std::fmt::Debug for KurrentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KurrentStore")
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

fn state(e: ExpectedVersion) -> StreamState {
    match e {
        ExpectedVersion::Any => StreamState::Any,
        ExpectedVersion::NoStream => StreamState::NoStream,
        ExpectedVersion::StreamExists => StreamState::StreamExists,
        ExpectedVersion::Exact(v) => StreamState::StreamRevision(v),
    }
}

/// How often an `Any` append re-reads the head after another writer moved it.
const CHAIN_RETRIES: usize = 16;

/// Splits stored custom metadata into the chain hash and the caller's metadata.
fn split_metadata(raw: &[u8]) -> (Hash, &[u8]) {
    match raw.split_first_chunk::<32>() {
        Some((hash, rest)) => (*hash, rest),
        None => (GENESIS, raw),
    }
}

fn convert(e: &kurrentdb::RecordedEvent) -> RecordedEvent {
    let (chain, metadata) = split_metadata(&e.custom_metadata);
    RecordedEvent {
        chain,
        position: e.position.commit,
        stream: e.stream_id().to_string(),
        version: e.revision,
        id: e.id,
        event_type: e.event_type.clone(),
        data: e.data.to_vec(),
        metadata: metadata.to_vec(),
        created_ms: e.created.timestamp_millis(),
    }
}

fn at(position: u64) -> StreamPosition<Position> {
    if position == 0 {
        StreamPosition::Start
    } else {
        StreamPosition::Position(Position {
            commit: position,
            prepare: position,
        })
    }
}

impl KurrentStore {
    /// Connects with a connection string, e.g.
    /// `kurrentdb://admin:changeit@localhost:2113?tls=false` (also `esdb://`).
    pub fn connect(url: &str) -> Result<Self> {
        let settings = ClientSettings::from_str(url)
            .map_err(|e| Error::Storage(format!("bad KurrentDB connection string: {e}")))?;
        let client = Client::new(settings).map_err(storage)?;
        Ok(KurrentStore { client })
    }

    async fn last_position(&self) -> Result<u64> {
        let opts = ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(1);
        let mut stream = self.client.read_all(&opts).await.map_err(storage)?;
        match stream.next().await {
            Ok(Some(e)) => Ok(e.get_original_event().position.commit),
            Ok(None) => Ok(0),
            Err(e) => Err(storage(e)),
        }
    }
}

impl EventStore for KurrentStore {
    fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<AppendResult>> {
        let stream = stream.to_string();
        Box::pin(async move {
            if events.is_empty() {
                return Err(Error::InvalidAppend("no events".into()));
            }
            for _ in 0..CHAIN_RETRIES {
                let head = self
                    .read_stream(&stream, u64::MAX, Direction::Backwards, 1)
                    .await?
                    .pop();
                // A retry of an append already stored: the server's idempotency answers it at
                // the caller's expected version, and writes nothing.
                let retry = head
                    .as_ref()
                    .is_some_and(|h| events.last().is_some_and(|e| e.id == h.id));
                let tightened = !retry
                    && matches!(
                        expected,
                        ExpectedVersion::Any | ExpectedVersion::StreamExists
                    );
                let send = match (&head, tightened) {
                    (Some(h), true) => StreamState::StreamRevision(h.version),
                    (None, true) if expected == ExpectedVersion::Any => StreamState::NoStream,
                    _ => state(expected),
                };
                let mut prev = head.as_ref().map(|h| h.chain).unwrap_or(GENESIS);
                let first_version = head.as_ref().map(|h| h.version + 1).unwrap_or(0);
                let data: Vec<EventData> = events
                    .iter()
                    .zip(first_version..)
                    .map(|(e, version)| {
                        prev = chain::link(
                            &prev,
                            &stream,
                            version,
                            e.id,
                            &e.event_type,
                            &e.data,
                            &e.metadata,
                        );
                        let mut metadata = prev.to_vec();
                        metadata.extend_from_slice(&e.metadata);
                        EventData::binary(e.event_type.clone(), e.data.clone().into())
                            .id(e.id)
                            .metadata(metadata.into())
                    })
                    .collect();
                let opts = AppendToStreamOptions::default().stream_state(send);
                match self
                    .client
                    .append_to_stream(stream.clone(), &opts, data)
                    .await
                {
                    Ok(w) => {
                        return Ok(AppendResult {
                            last_version: w.next_expected_version,
                            position: w.position.commit,
                        });
                    }
                    // Another writer moved the head after we read it: link to the new head.
                    Err(kurrentdb::Error::WrongExpectedVersion { .. }) if tightened => continue,
                    Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                        return Err(Error::WrongExpectedVersion {
                            stream,
                            expected,
                            actual: match current {
                                CurrentRevision::Current(v) => Some(v),
                                CurrentRevision::NoStream => None,
                            },
                        });
                    }
                    Err(e) => return Err(storage(e)),
                }
            }
            Err(Error::Storage(format!(
                "stream {stream:?} kept moving under {CHAIN_RETRIES} attempts to extend its chain"
            )))
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
            let opts = ReadStreamOptions::default().max_count(max);
            let opts = match direction {
                Direction::Forwards => opts.forwards().position(StreamPosition::Position(from)),
                Direction::Backwards if from == u64::MAX => {
                    opts.backwards().position(StreamPosition::End)
                }
                Direction::Backwards => opts.backwards().position(StreamPosition::Position(from)),
            };
            let mut read = match self.client.read_stream(stream, &opts).await {
                Ok(r) => r,
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(e) => return Err(storage(e)),
            };
            let mut out = Vec::new();
            loop {
                match read.next().await {
                    Ok(Some(e)) => out.push(convert(e.get_original_event())),
                    Ok(None) => break,
                    Err(kurrentdb::Error::ResourceNotFound) => break,
                    Err(e) => return Err(storage(e)),
                }
            }
            Ok(out)
        })
    }

    fn read_all(&self, after: u64, max: usize) -> BoxFuture<'_, Result<Vec<RecordedEvent>>> {
        Box::pin(async move {
            // Reading from a position includes it: ask for one more and drop it.
            let opts = ReadAllOptions::default()
                .forwards()
                .position(at(after))
                .max_count(max + 1);
            let mut read = self.client.read_all(&opts).await.map_err(storage)?;
            let mut out = Vec::new();
            loop {
                match read.next().await {
                    Ok(Some(e)) => {
                        let e = e.get_original_event();
                        // System streams ($...) are the server's, not cit's.
                        if e.position.commit > after && !e.stream_id().starts_with('$') {
                            out.push(convert(e));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(storage(e)),
                }
                if out.len() >= max {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn head_position(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.last_position())
    }

    fn subscribe(
        &self,
        filter: SubscriptionFilter,
        after: Option<u64>,
    ) -> BoxStream<'static, Result<SubscriptionMessage>> {
        let store = self.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            // Servers that do not announce CaughtUp still get one: at the head seen on start.
            let head = match store.last_position().await {
                Ok(h) => h,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let server_filter = match &filter {
                SubscriptionFilter::All => {
                    kurrentdb::SubscriptionFilter::on_event_type().exclude_system_events()
                }
                SubscriptionFilter::StreamPrefix(p) => {
                    kurrentdb::SubscriptionFilter::on_stream_name().add_prefix(p)
                }
            };
            let checkpoint = after.unwrap_or(0);
            let opts = SubscribeToAllOptions::default()
                .position(at(checkpoint))
                .filter(server_filter);
            let mut sub = store.client.subscribe_to_all(&opts).await;
            let mut caught_up = checkpoint >= head;
            let mut last = checkpoint;
            if caught_up
                && tx
                    .send(Ok(SubscriptionMessage::CaughtUp {
                        position: checkpoint,
                    }))
                    .await
                    .is_err()
            {
                return;
            }
            loop {
                let msg = match sub.next_subscription_event().await {
                    Ok(SubscriptionEvent::EventAppeared(e)) => {
                        let e = e.get_original_event();
                        if e.position.commit <= checkpoint || !filter.matches(e.stream_id()) {
                            continue;
                        }
                        last = e.position.commit;
                        let event = Ok(SubscriptionMessage::Event(convert(e)));
                        if tx.send(event).await.is_err() {
                            return;
                        }
                        if !caught_up && last >= head {
                            caught_up = true;
                            Ok(SubscriptionMessage::CaughtUp { position: last })
                        } else {
                            continue;
                        }
                    }
                    Ok(SubscriptionEvent::CaughtUp(_)) if !caught_up => {
                        caught_up = true;
                        Ok(SubscriptionMessage::CaughtUp { position: last })
                    }
                    Ok(_) => continue,
                    Err(e) => Err(storage(e)),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}
