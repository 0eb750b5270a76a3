//! WatchFleet through gRPC: a snapshot then changes (fixes, anomalies and their workflow), with
//! filters; a watcher that stops reading while 100,000 fixes arrive neither slows nor loses
//! ingest and is told it fell behind, with a fresh snapshot; a watcher reconnecting after a citd
//! restart starts from the state before it.

mod common;

use cit_proto::v1 as pb;
use citd::config::{ClockMode, Config};
use citd::grpc::e7;
use citd::runner::Clients;
use citd::watch::Moved;
use pb::fleet_event::Event as Fe;
use tonic::Streaming;

async fn watch(c: &mut Clients, req: pb::WatchFleetRequest) -> Streaming<pb::FleetEvent> {
    c.dispatch
        .watch_fleet(req)
        .await
        .expect("watch")
        .into_inner()
}

/// The next message; a watch that goes quiet for 20 s fails the test instead of hanging it.
async fn next(w: &mut Streaming<pb::FleetEvent>) -> Fe {
    tokio::time::timeout(std::time::Duration::from_secs(20), w.message())
        .await
        .expect("a message within 20 s")
        .expect("watch message")
        .expect("watch open")
        .event
        .expect("event set")
}

/// A duress check-in by `escort` on R-1; returns the first anomaly the watcher then sees.
async fn duress(c: &mut Clients, w: &mut Streaming<pb::FleetEvent>, escort: &str) -> pb::Anomaly {
    c.as_person(escort, &["escort"])
        .runs
        .check_in(pb::CheckInRequest {
            run_id: "R-1".into(),
            person_id: escort.into(),
            code: pb::CheckInCode::Duress as i32,
            ..Default::default()
        })
        .await
        .expect("check in");
    loop {
        if let Fe::Anomaly(a) = next(w).await {
            return a;
        }
    }
}

/// Streams `fixes` of `vehicle` in batches of `per_batch` along the route; returns the last ack.
async fn stream(c: &mut Clients, vehicle: &str, fixes: u64, per_batch: u64) -> pb::FixAck {
    let route = common::route();
    let (tx, mut acks) = c.fix_stream(4).await.expect("stream");
    let vehicle = vehicle.to_string();
    let sender = tokio::spawn(async move {
        for b in 0..fixes / per_batch {
            let batch = (0..per_batch)
                .map(|i| {
                    let seq = b * per_batch + i + 1;
                    let p = &route[(seq as usize / 50) % route.len()];
                    pb::Fix {
                        lat: p.lat,
                        lon: p.lon,
                        ..common::fix(&vehicle, seq)
                    }
                })
                .collect();
            if tx
                .send(pb::FixBatch {
                    fixes: batch,
                    batch_id: b + 1,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut last = None;
    for _ in 0..fixes / per_batch {
        last = Some(acks.message().await.expect("ack").expect("ack open"));
    }
    sender.await.expect("sender");
    last.expect("acked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_fixes_anomalies_and_their_workflow() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    common::departed_run(&mut c, "R-1", "V-1").await;
    common::departed_run(&mut c, "R-2", "V-2").await;
    let mut w = watch(
        &mut c,
        pb::WatchFleetRequest {
            run_ids: vec!["R-1".into()],
            ..Default::default()
        },
    )
    .await;
    let Fe::Snapshot(snap) = next(&mut w).await else {
        panic!("the first message is a snapshot")
    };
    assert_eq!(
        snap.runs
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>(),
        ["R-1"],
        "filtered to the runs asked for"
    );
    stream(&mut c, "V-2", 10, 10).await; // not watched
    let ack = stream(&mut c, "V-1", 10, 10).await;
    let Fe::RunsNamed(named) = next(&mut w).await else {
        panic!("the batch's run numbers named first")
    };
    assert_eq!(named.run_id, ["R-1"], "R-2 is not watched: not named");
    let Fe::RunsMoved(batch) = next(&mut w).await else {
        panic!("a batch of position updates")
    };
    let [(run, v)] = Moved::rows(&batch)
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| panic!("one run: R-2's fixes are filtered out, got {batch:?}"));
    assert_eq!(run, named.run[0], "R-1 by its number");
    assert!(v.lat_e7 != 0 && v.lon_e7 != 0 && v.last_fix_at_ms > 0);
    assert_eq!(ack.acks[0].durable_seq, 10);

    // A duress check-in answers like ok to the crew and reaches the watcher as critical.
    let duress = duress(&mut c, &mut w, "E-1").await;
    assert_eq!(duress.kind, "duress");
    assert_eq!(duress.severity, pb::Severity::Critical as i32);
    assert_eq!(duress.announcements, 1);
    c.as_person("dispatcher-7", &["dispatcher"])
        .dispatch
        .acknowledge_anomaly(pb::AcknowledgeAnomalyRequest {
            anomaly_id: duress.id.clone(),
            by: "dispatcher-7".into(),
        })
        .await
        .expect("ack");
    let acked = loop {
        if let Fe::Anomaly(a) = next(&mut w).await
            && a.id == duress.id
        {
            break a;
        }
    };
    assert_eq!(acked.status, pb::AnomalyStatus::Acknowledged as i32);
    assert_eq!(acked.acknowledged_by, "dispatcher-7");
    // Dispatch heard of the alarm before its record was durable and answered at once; the log
    // still holds the alarm before its acknowledgement.
    let order: Vec<String> = common::read_run(&mut c, "R-1", false)
        .await
        .into_iter()
        .filter(|e| e.data_json.contains(&duress.id))
        .map(|e| e.event_type)
        .collect();
    assert_eq!(order, ["AnomalyRaised.v1", "AnomalyAcknowledged.v1"]);

    let bad = c
        .dispatch
        .watch_fleet(pb::WatchFleetRequest {
            bbox: Some(pb::BoundingBox {
                south_west: Some(pb::LatLon {
                    lat: 58.0,
                    lon: 11.0,
                }),
                north_east: Some(pb::LatLon {
                    lat: 57.0,
                    lon: 12.0,
                }),
            }),
            ..Default::default()
        })
        .await
        .expect_err("an upside-down box");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("bbox"), "{}", bad.message());
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_watcher_falls_behind_without_slowing_or_losing_ingest() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(Config {
        watch_buffer: 16,
        // Every fix a change: the flood this test needs.
        watch_interval_ms: 0,
        ..common::config(dir.path(), ClockMode::Wall)
    })
    .await;
    common::departed_run(&mut c, "R-1", "V-1").await;
    // Consoles on their own connections, as in the field (HTTP/2 flow control is per
    // connection too). One is opened, then not read while the fixes arrive; its stream takes
    // only 4 KiB in flight. (With more, a client that never reads buffers hundreds of small
    // DATA frames and its own h2 library closes the connection, ENHANCE_YOUR_CALM, before the
    // ring can tell it anything.)
    let small = c
        .creds
        .endpoint(&server.endpoint())
        .expect("endpoint")
        .initial_stream_window_size(4_096)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let token = c.creds.default_token();
    let mut stuck = pb::dispatch_client::DispatchClient::with_interceptor(
        small,
        citd::credentials::Bearer::new(token.as_deref(), &[]),
    )
    .watch_fleet(pb::WatchFleetRequest::default())
    .await
    .expect("watch")
    .into_inner();
    let mut other = Clients::connect(&server.endpoint(), c.creds.clone())
        .await
        .expect("connect");
    let mut reading = watch(&mut other, pb::WatchFleetRequest::default()).await;
    let reader = tokio::spawn(async move {
        let mut changes = 0u64;
        while let Ok(Some(m)) = reading.message().await {
            if let Some(Fe::RunsMoved(batch)) = m.event {
                changes += batch.last_fix_at_ms.iter().filter(|&&t| t > 0).count() as u64;
            }
        }
        changes
    });
    // 5,000 batches: each one append and one change (~1.2 MB of views), several times what
    // the stuck connection, the server's HTTP/2 send buffer and the ring can hold.
    let ack = stream(&mut c, "V-1", 100_000, 20).await;
    assert_eq!(ack.acks[0].durable_seq, 100_000, "every fix acked");
    let seqs = common::recorded_seqs(&mut c, &server.endpoint(), "R-1").await;
    assert_eq!(
        seqs,
        (1..=100_000).collect::<Vec<u64>>(),
        "every fix stored once, in order"
    );

    // The stuck watcher now reads: somewhere it is told it fell behind, then resnapped.
    let n = loop {
        if let Fe::FellBehind(n) = next(&mut stuck).await {
            break n;
        }
    };
    assert!(n > 0);
    assert!(
        matches!(next(&mut stuck).await, Fe::Snapshot(s) if s.runs.iter().any(|r| r.run_id == "R-1")),
        "a fresh snapshot follows"
    );
    server.stop().await.expect("stop");
    let changes = reader.await.expect("reader");
    assert!(changes > 0, "the reading watcher kept receiving changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_from_a_snapshot_after_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    common::departed_run(&mut c, "R-1", "V-1").await;
    let mut w = watch(&mut c, pb::WatchFleetRequest::default()).await;
    assert!(matches!(next(&mut w).await, Fe::Snapshot(_)));
    stream(&mut c, "V-1", 200, 20).await;
    // The last batch's last fix is seq 200.
    let route = common::route();
    let want = &route[(200 / 50) % route.len()];
    let at_last_fix = |v: &Moved| (v.lat_e7, v.lon_e7) == (e7(want.lat), e7(want.lon));
    let last_seen = loop {
        if let Fe::RunsMoved(batch) = next(&mut w).await
            && let Some((_, v)) = Moved::rows(&batch).find(|(_, v)| at_last_fix(v))
        {
            break v;
        }
    };
    server.stop().await.expect("stop");
    assert!(
        w.message().await.is_err() || w.message().await.ok().flatten().is_none(),
        "the watch ends with the server"
    );

    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    let mut w = watch(&mut c, pb::WatchFleetRequest::default()).await;
    let Fe::Snapshot(snap) = next(&mut w).await else {
        panic!("a snapshot first")
    };
    let r1 = snap
        .runs
        .iter()
        .find(|r| r.run_id == "R-1")
        .expect("R-1 in the snapshot after the restart");
    let p = r1.position.as_ref().expect("R-1's position");
    assert_eq!((e7(p.lat), e7(p.lon)), (last_seen.lat_e7, last_seen.lon_e7));
    let t = r1.last_fix_at.expect("R-1's last fix time");
    assert_eq!(
        t.seconds * 1000 + i64::from(t.nanos / 1_000_000),
        last_seen.last_fix_at_ms
    );
    assert_eq!(r1.weapons_out, ["R-1-G-0", "R-1-G-1"]);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_critical_anomaly_is_announced_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(Config {
        reannounce_after_s: 60,
        ..common::config(dir.path(), ClockMode::Scenario)
    })
    .await;
    let start = common::now_ts();
    c.clock
        .advance_clock(pb::AdvanceClockRequest {
            to: Some(start),
            tick: false,
        })
        .await
        .expect("clock");
    common::departed_run(&mut c, "R-1", "V-1").await;
    let mut w = watch(&mut c, pb::WatchFleetRequest::default()).await;
    let first = duress(&mut c, &mut w, "E-2").await;
    assert_eq!((first.kind.as_str(), first.announcements), ("duress", 1));
    // A minute of scenario time passes with nobody acknowledging.
    let later = prost_types::Timestamp {
        seconds: start.seconds + 61,
        nanos: start.nanos,
    };
    c.clock
        .advance_clock(pb::AdvanceClockRequest {
            to: Some(later),
            tick: true,
        })
        .await
        .expect("clock");
    let again = loop {
        if let Fe::Anomaly(a) = next(&mut w).await
            && a.id == first.id
        {
            break a;
        }
    };
    assert_eq!(again.announcements, 2, "announced a second time");
    assert_eq!(again.status, pb::AnomalyStatus::Open as i32);
    server.stop().await.expect("stop");
}
