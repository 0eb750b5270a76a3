//! The conformance suite every [`EventStore`] backend must pass: optimistic concurrency,
//! idempotent retries, ordering, reading both ways, and catch-up subscriptions that resume from a
//! checkpoint and say when they are caught up, and the hash chain over every stream.
//!
//! It uses fresh, unique stream names, so it can run against a shared server (KurrentDB) that
//! already holds other data; it never assumes the log starts empty.

use std::time::Duration;

use futures::StreamExt;
use uuid::Uuid;

use crate::{
    Append, Direction, Error, EventStore, ExpectedVersion, NewEvent, SubscriptionFilter,
    SubscriptionMessage,
};

/// How long a subscription may take to deliver what is already stored.
const SUBSCRIPTION_TIMEOUT: Duration = Duration::from_secs(20);

fn event(n: u32) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: "ConformanceHappened.v1".into(),
        data: format!("{{\"n\":{n}}}").into_bytes(),
        metadata: b"{}".to_vec(),
    }
}

fn unique_prefix() -> String {
    format!("conf{}-", Uuid::new_v4().simple())
}

/// Runs every check; panics with the name of the first that fails.
pub async fn run_all<S: EventStore + ?Sized>(store: &S) {
    append_then_read_both_ways(store).await;
    expected_versions_conflict(store).await;
    retries_with_the_same_ids_are_idempotent(store).await;
    global_log_keeps_append_order(store).await;
    concurrent_writers_of_one_version_conflict(store).await;
    subscription_resumes_from_checkpoint_and_goes_live(store).await;
    every_stream_is_hash_chained(store).await;
    bulk_appends_keep_every_promise_of_appends(store).await;
    a_batch_of_bulk_appends_answers_each_in_order(store).await;
}

/// `append_bulk` may wait behind other appends, but checks versions, answers only once durable
/// and extends the chain exactly as `append` does.
pub async fn bulk_appends_keep_every_promise_of_appends<S: EventStore + ?Sized>(store: &S) {
    let stream = format!("{}bulk", unique_prefix());
    let first = store
        .append_bulk(&stream, ExpectedVersion::NoStream, vec![event(0), event(1)])
        .await
        .expect("bulk append to a new stream");
    assert_eq!(first.last_version, 1);
    let err = store
        .append_bulk(&stream, ExpectedVersion::Exact(0), vec![event(2)])
        .await
        .expect_err("stale Exact");
    assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err:?}");
    store
        .append(&stream, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .expect("a plain append after the bulk ones");
    let read = store
        .read_stream(&stream, 0, Direction::Forwards, 10)
        .await
        .expect("read");
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(read[1].position > read[0].position && read[2].position > read[1].position);
    let v = crate::chain::verify(&read);
    assert!(v.first_break.is_none() && v.checked == 3, "{v:?}");
}

/// `append_bulk_batch`: each append is checked and stored as on its own, a refused one leaves
/// the others stored, two of one stream keep their order, and the answers come in the given
/// order.
pub async fn a_batch_of_bulk_appends_answers_each_in_order<S: EventStore + ?Sized>(store: &S) {
    let prefix = unique_prefix();
    let (a, b, c) = (
        format!("{prefix}a"),
        format!("{prefix}b"),
        format!("{prefix}c"),
    );
    store
        .append(&c, ExpectedVersion::Any, vec![event(0)])
        .await
        .expect("c exists");
    let append = |stream: &str, expected, events| Append {
        stream: stream.to_string(),
        expected,
        events,
    };
    let results = store
        .append_bulk_batch(vec![
            append(&a, ExpectedVersion::NoStream, vec![event(1), event(2)]),
            append(&c, ExpectedVersion::NoStream, vec![event(3)]),
            append(&b, ExpectedVersion::Any, vec![event(4)]),
            append(&a, ExpectedVersion::Exact(1), vec![event(5)]),
        ])
        .await;
    assert_eq!(results.len(), 4);
    let ok = |i: usize| *results[i].as_ref().expect("stored");
    assert_eq!(ok(0).last_version, 1);
    assert!(
        matches!(&results[1], Err(Error::WrongExpectedVersion { stream, .. }) if *stream == c),
        "{:?}",
        results[1]
    );
    assert_eq!(ok(2).last_version, 0);
    assert_eq!(ok(3).last_version, 2);
    assert!(ok(0).position < ok(2).position && ok(2).position < ok(3).position);
    let read = |stream: String| async move {
        store
            .read_stream(&stream, 0, Direction::Forwards, 10)
            .await
            .expect("read")
    };
    let n = |events: Vec<crate::RecordedEvent>| -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            .collect()
    };
    assert_eq!(n(read(a).await), [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":5}"#]);
    assert_eq!(n(read(b).await), [r#"{"n":4}"#]);
    assert_eq!(
        n(read(c).await),
        [r#"{"n":0}"#],
        "the refused append left nothing"
    );
    assert!(store.append_bulk_batch(Vec::new()).await.is_empty());
}

pub async fn every_stream_is_hash_chained<S: EventStore + ?Sized>(store: &S) {
    let prefix = unique_prefix();
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    // Interleaved appends of two streams, with every kind of expected version.
    store
        .append(&a, ExpectedVersion::NoStream, vec![event(0), event(1)])
        .await
        .expect("append a");
    store
        .append(&b, ExpectedVersion::Any, vec![event(0)])
        .await
        .expect("append b");
    store
        .append(&a, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .expect("append a again");
    store
        .append(&a, ExpectedVersion::Any, vec![event(3)])
        .await
        .expect("append a once more");
    let events = store
        .read_stream(&a, 0, Direction::Forwards, 100)
        .await
        .expect("read");
    let v = crate::chain::verify(&events);
    assert_eq!(v.first_break, None, "the chain of a stream verifies");
    assert_eq!(v.checked, 4);
    assert_eq!(v.head, events[3].chain);
    let other = store
        .read_stream(&b, 0, Direction::Forwards, 100)
        .await
        .expect("read b");
    assert_eq!(
        other[0].chain,
        crate::chain::expected(&crate::chain::GENESIS, &other[0]),
        "each stream starts its own chain"
    );
}

pub async fn append_then_read_both_ways<S: EventStore + ?Sized>(store: &S) {
    let stream = format!("{}a", unique_prefix());
    let events: Vec<NewEvent> = (0..5).map(event).collect();
    let r = store
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append to a new stream");
    assert_eq!(r.last_version, 4, "versions count from 0");
    let fwd = store
        .read_stream(&stream, 0, Direction::Forwards, 100)
        .await
        .expect("read forwards");
    assert_eq!(fwd.len(), 5);
    for (i, e) in fwd.iter().enumerate() {
        assert_eq!(e.version, i as u64);
        assert_eq!(e.id, events[i].id);
        assert_eq!(e.data, events[i].data);
        assert_eq!(e.event_type, events[i].event_type);
        assert_eq!(e.stream, stream);
    }
    assert!(fwd.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(fwd[4].position, r.position);
    let from2 = store
        .read_stream(&stream, 2, Direction::Forwards, 2)
        .await
        .expect("read forwards from 2");
    assert_eq!(from2.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    let back = store
        .read_stream(&stream, u64::MAX, Direction::Backwards, 3)
        .await
        .expect("read backwards");
    assert_eq!(
        back.iter().map(|e| e.version).collect::<Vec<_>>(),
        [4, 3, 2]
    );
    let back1 = store
        .read_stream(&stream, 1, Direction::Backwards, 10)
        .await
        .expect("read backwards from 1");
    assert_eq!(back1.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 0]);
    let missing = store
        .read_stream(
            &format!("{}missing", unique_prefix()),
            0,
            Direction::Forwards,
            10,
        )
        .await
        .expect("a missing stream reads as empty");
    assert!(missing.is_empty());
}

pub async fn expected_versions_conflict<S: EventStore + ?Sized>(store: &S) {
    let stream = format!("{}b", unique_prefix());
    let err = store
        .append(&stream, ExpectedVersion::StreamExists, vec![event(0)])
        .await
        .expect_err("StreamExists on a missing stream");
    assert!(
        matches!(err, Error::WrongExpectedVersion { actual: None, .. }),
        "{err:?}"
    );
    let err = store
        .append(&stream, ExpectedVersion::Exact(0), vec![event(0)])
        .await
        .expect_err("Exact(0) on a missing stream");
    assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err:?}");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(0), event(1)])
        .await
        .expect("first append");
    let err = store
        .append(&stream, ExpectedVersion::NoStream, vec![event(2)])
        .await
        .expect_err("NoStream on an existing stream");
    assert!(
        matches!(
            err,
            Error::WrongExpectedVersion {
                actual: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .append(&stream, ExpectedVersion::Exact(0), vec![event(2)])
        .await
        .expect_err("stale Exact");
    assert!(
        matches!(
            err,
            Error::WrongExpectedVersion {
                actual: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    store
        .append(&stream, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .expect("Exact(current)");
    store
        .append(&stream, ExpectedVersion::StreamExists, vec![event(3)])
        .await
        .expect("StreamExists");
    let r = store
        .append(&stream, ExpectedVersion::Any, vec![event(4)])
        .await
        .expect("Any");
    assert_eq!(r.last_version, 4);
    let all = store
        .read_stream(&stream, 0, Direction::Forwards, 100)
        .await
        .expect("read");
    assert_eq!(all.len(), 5, "refused appends left nothing behind");
}

pub async fn retries_with_the_same_ids_are_idempotent<S: EventStore + ?Sized>(store: &S) {
    let stream = format!("{}c", unique_prefix());
    let batch = vec![event(0), event(1), event(2)];
    let first = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append");
    let retry = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("a retry of the same append succeeds");
    assert_eq!(retry.last_version, first.last_version);
    let again = store
        .append(&stream, ExpectedVersion::Any, batch)
        .await
        .expect("a retry with Any succeeds");
    assert_eq!(again.last_version, first.last_version);
    let all = store
        .read_stream(&stream, 0, Direction::Forwards, 100)
        .await
        .expect("read");
    assert_eq!(all.len(), 3, "retries stored nothing twice");
}

pub async fn global_log_keeps_append_order<S: EventStore + ?Sized>(store: &S) {
    let prefix = unique_prefix();
    let before = store.head_position().await.expect("head");
    let mut ids = Vec::new();
    for i in 0..6u32 {
        let e = event(i);
        ids.push(e.id);
        store
            .append(&format!("{prefix}{}", i % 2), ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }
    let mut seen = Vec::new();
    let mut after = before;
    loop {
        let batch = store.read_all(after, 500).await.expect("read all");
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            assert!(e.position > after, "positions increase");
            after = e.position;
            if e.stream.starts_with(&prefix) {
                seen.push(e.id);
            }
        }
    }
    assert_eq!(
        seen, ids,
        "the global log holds our events once each, in append order"
    );
    assert!(store.head_position().await.expect("head") >= after);
}

pub async fn concurrent_writers_of_one_version_conflict<S: EventStore + ?Sized>(store: &S) {
    let stream = format!("{}d", unique_prefix());
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .expect("append");
    let (a, b) = futures::join!(
        store.append(&stream, ExpectedVersion::Exact(0), vec![event(1)]),
        store.append(&stream, ExpectedVersion::Exact(0), vec![event(2)]),
    );
    let wins = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(
        wins, 1,
        "exactly one of two writers at the same version wins: {a:?} {b:?}"
    );
    let loser = if a.is_ok() { b } else { a };
    assert!(
        matches!(loser, Err(Error::WrongExpectedVersion { .. })),
        "{loser:?}"
    );
}

pub async fn subscription_resumes_from_checkpoint_and_goes_live<S: EventStore + ?Sized>(store: &S) {
    let prefix = unique_prefix();
    let filter = SubscriptionFilter::StreamPrefix(prefix.clone());
    let mut first_ids = Vec::new();
    let mut checkpoint = 0;
    for i in 0..4u32 {
        let e = event(i);
        first_ids.push(e.id);
        let r = store
            .append(&format!("{prefix}x"), ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
        if i == 1 {
            checkpoint = r.position;
        }
    }
    // From the checkpoint after the second event: the third and fourth, then caught up.
    let mut sub = store.subscribe(filter.clone(), Some(checkpoint));
    let mut got = Vec::new();
    let mut caught_up = false;
    while !caught_up {
        let msg = tokio::time::timeout(SUBSCRIPTION_TIMEOUT, sub.next())
            .await
            .expect("subscription delivers in time")
            .expect("subscription stays open")
            .expect("no subscription error");
        match msg {
            SubscriptionMessage::Event(e) => {
                assert!(e.position > checkpoint);
                assert!(e.stream.starts_with(&prefix), "filter holds");
                got.push(e.id);
            }
            SubscriptionMessage::CaughtUp { .. } => caught_up = true,
        }
    }
    assert_eq!(got, first_ids[2..], "resumed right after the checkpoint");
    // Live: appended after caught-up, to our prefix and elsewhere.
    store
        .append(
            &format!("{}other", unique_prefix()),
            ExpectedVersion::Any,
            vec![event(9)],
        )
        .await
        .expect("append elsewhere");
    let live = event(10);
    let live_id = live.id;
    store
        .append(&format!("{prefix}y"), ExpectedVersion::Any, vec![live])
        .await
        .expect("append live");
    loop {
        let msg = tokio::time::timeout(SUBSCRIPTION_TIMEOUT, sub.next())
            .await
            .expect("live event in time")
            .expect("open")
            .expect("no error");
        if let SubscriptionMessage::Event(e) = msg {
            assert!(
                e.stream.starts_with(&prefix),
                "filter holds for live events"
            );
            assert_eq!(e.id, live_id);
            break;
        }
    }
    // From the start (None), the subscription sees all four first events before caught-up.
    let mut sub = store.subscribe(filter, None);
    let mut got = Vec::new();
    loop {
        let msg = tokio::time::timeout(SUBSCRIPTION_TIMEOUT, sub.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("no error");
        match msg {
            SubscriptionMessage::Event(e) => got.push(e.id),
            SubscriptionMessage::CaughtUp { .. } => break,
        }
    }
    assert_eq!(&got[..4], &first_ids[..]);
    assert_eq!(got.get(4), Some(&live_id));
}
