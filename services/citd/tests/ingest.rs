//! Telemetry ingest through real gRPC: per-fix validation that keeps the good fixes of a batch,
//! duplicate absorption by (vehicle, seq), consistent acks across reconnects (also one that
//! dropped its batches in flight), an unregistered vehicle, an absurd seq jump and a device time
//! going backwards rejected fix by fix with the stream going on, RESOURCE_EXHAUSTED for an
//! oversized message, and a run read back in order with nothing missing or doubled.

mod common;

use cit_proto::v1 as pb;
use citd::config::ClockMode;
use citd::runner::Clients;
use common::{departed_run, fix, recorded_seqs};
use tokio::sync::mpsc;
use tonic::Code;

type Acks = tonic::Streaming<pb::FixAck>;

/// A citd on the wall clock with a temporary store and a departed run R-1 of vehicle V-1.
async fn started() -> (tempfile::TempDir, citd::server::Running, Clients) {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    departed_run(&mut c, "R-1", "V-1").await;
    (dir, server, c)
}

async fn open(c: &mut Clients) -> (mpsc::Sender<pb::FixBatch>, Acks) {
    c.fix_stream(8).await.expect("stream")
}

async fn send(tx: &mpsc::Sender<pb::FixBatch>, acks: &mut Acks, fixes: Vec<pb::Fix>) -> pb::FixAck {
    tx.send(pb::FixBatch { fixes, batch_id: 1 })
        .await
        .expect("send");
    acks.message().await.expect("ack").expect("an ack")
}

/// R-1's recorded fix seqs are exactly 1..=last: in order, nothing missing or doubled.
async fn assert_recorded_exactly(c: &mut Clients, server: &citd::server::Running, last: u64) {
    assert_eq!(
        recorded_seqs(c, &server.endpoint(), "R-1").await,
        (1..=last).collect::<Vec<u64>>(),
        "in order, nothing missing or doubled"
    );
}

#[tokio::test]
async fn bad_fixes_are_rejected_one_by_one_and_good_ones_kept() {
    let (_dir, server, mut c) = started().await;
    let (tx, mut acks) = open(&mut c).await;

    let mut batch = vec![fix("V-1", 1), fix("V-1", 2)];
    let mut nan = fix("V-1", 3);
    nan.lat = f64::NAN;
    let mut far_north = fix("V-1", 4);
    far_north.lat = 91.0;
    let mut zero_seq = fix("V-1", 0);
    zero_seq.lon = 11.9;
    let mut no_time = fix("V-1", 5);
    no_time.time = None;
    let mut future = fix("V-1", 6);
    future.time = Some(citd::grpc::ts(citd::clock::wall_now().plus_secs(600.0)));
    let mut no_accuracy = fix("V-1", 7);
    no_accuracy.accuracy_m = 0.0;
    let mut reverse = fix("V-1", 8);
    reverse.speed_mps = -1.0;
    batch.extend([
        nan,
        far_north,
        zero_seq,
        no_time,
        future,
        no_accuracy,
        reverse,
    ]);
    batch.push(fix("V-1", 9));

    let ack = send(&tx, &mut acks, batch).await;
    let fields: Vec<(u32, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.field.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            (2, "lat"),
            (3, "lat"),
            (4, "seq"),
            (5, "time"),
            (6, "time"),
            (7, "accuracy_m"),
            (8, "speed_mps")
        ]
    );
    assert!(ack.rejected.iter().all(|r| !r.reason.is_empty()));
    assert!(
        ack.rejected[4].reason.contains("ahead"),
        "{}",
        ack.rejected[4].reason
    );
    assert_eq!(ack.accepted, 3);
    assert_eq!(
        ack.acks,
        [pb::VehicleAck {
            vehicle_id: "V-1".into(),
            durable_seq: 9,
            seq_epoch: 0,
        }]
    );

    // The same fixes again: absorbed, same durable seq.
    let ack = send(&tx, &mut acks, vec![fix("V-1", 1), fix("V-1", 9)]).await;
    assert_eq!((ack.accepted, ack.duplicates), (0, 2));
    assert_eq!(ack.acks[0].durable_seq, 9);

    assert_eq!(
        recorded_seqs(&mut c, &server.endpoint(), "R-1").await,
        [1, 2, 9]
    );
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn reconnecting_unit_resending_unacked_fixes_creates_no_duplicates() {
    let (_dir, server, mut c) = started().await;
    {
        let (tx, mut acks) = open(&mut c).await;
        let ack = send(&tx, &mut acks, (1..=50).map(|s| fix("V-1", s)).collect()).await;
        assert_eq!(ack.acks[0].durable_seq, 50);
    }
    // New connection; the unit did not see the ack of 41..50 and resends from 41, plus new ones.
    let (tx, mut acks) = open(&mut c).await;
    let ack = send(&tx, &mut acks, (41..=80).map(|s| fix("V-1", s)).collect()).await;
    assert_eq!((ack.accepted, ack.duplicates), (30, 10));
    assert_eq!(ack.acks[0].durable_seq, 80);
    assert_recorded_exactly(&mut c, &server, 80).await;
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_disconnects_with_batches_in_flight_holds_none_of_its_fixes_up() {
    let (_dir, server, mut c) = started().await;
    {
        // Twenty batches sent without waiting, then the unit is gone: its end of the stream and
        // the acks are dropped while citd still appends.
        let (tx, acks) = c.fix_stream(64).await.expect("stream");
        for b in 0..20u64 {
            let fixes = (b * 50 + 1..=(b + 1) * 50).map(|s| fix("V-1", s)).collect();
            tx.send(pb::FixBatch {
                fixes,
                batch_id: b + 1,
            })
            .await
            .expect("send");
        }
        drop(acks);
    }
    // It reconnects and resends everything it has no ack for, and more.
    let (tx, mut acks) = open(&mut c).await;
    let resend = send(&tx, &mut acks, (1..=1010).map(|s| fix("V-1", s)).collect());
    let ack = tokio::time::timeout(std::time::Duration::from_secs(30), resend)
        .await
        .expect("the vehicle's ingest is not held up by the dropped connection");
    assert_eq!(ack.acks[0].durable_seq, 1010);
    assert_eq!(ack.accepted + ack.duplicates, 1010);
    assert_recorded_exactly(&mut c, &server, 1010).await;
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn ten_thousand_fixes_read_back_in_order() {
    let (_dir, server, mut c) = started().await;
    let (tx, mut acks) = open(&mut c).await;
    for chunk in (1..=10_000u64).collect::<Vec<_>>().chunks(500) {
        let ack = send(
            &tx,
            &mut acks,
            chunk.iter().map(|s| fix("V-1", *s)).collect(),
        )
        .await;
        assert_eq!(ack.acks[0].durable_seq, *chunk.last().expect("chunk"));
    }
    assert_recorded_exactly(&mut c, &server, 10_000).await;
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn an_unknown_vehicle_is_a_rejection_of_its_fixes_and_the_stream_goes_on() {
    let (_dir, server, mut c) = started().await;
    let (tx, mut acks) = open(&mut c).await;
    // A gateway's batch: one unregistered vehicle among good fixes.
    let ack = send(
        &tx,
        &mut acks,
        vec![fix("V-1", 1), fix("V-404", 1), fix("V-1", 2)],
    )
    .await;
    assert_eq!(ack.acks[0].durable_seq, 2, "the good fixes are kept");
    assert_eq!(ack.rejected.len(), 1);
    let r = &ack.rejected[0];
    assert_eq!((r.index, r.field.as_str()), (1, "vehicle_id"));
    assert!(r.reason.contains("V-404"), "{}", r.reason);
    // The same stream keeps serving.
    let ack = send(&tx, &mut acks, vec![fix("V-1", 3)]).await;
    assert_eq!(ack.acks[0].durable_seq, 3);
    assert!(ack.rejected.is_empty());
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn an_absurd_seq_jump_and_a_device_time_going_backwards_are_rejected_on_their_own() {
    let (_dir, server, mut c) = started().await;
    let (tx, mut acks) = open(&mut c).await;
    let mut early = fix("V-1", 3);
    let two = fix("V-1", 2);
    let before = two.time.expect("time");
    early.time = Some(prost_types::Timestamp {
        seconds: before.seconds - 60,
        nanos: before.nanos,
    });
    let ack = send(
        &tx,
        &mut acks,
        vec![
            fix("V-1", 1),
            fix("V-1", 1 << 63),
            two,
            early,
            fix("V-1", 4),
        ],
    )
    .await;
    let rejected: Vec<(u32, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.field.as_str()))
        .collect();
    assert_eq!(rejected, [(1, "seq"), (3, "time")], "{:?}", ack.rejected);
    // The absurd seq poisoned nothing: the vehicle's fixes go on from 4.
    assert_eq!(ack.acks[0].durable_seq, 4);
    assert_eq!(ack.accepted, 3);
    let ack = send(&tx, &mut acks, vec![fix("V-1", 5)]).await;
    assert_eq!(ack.acks[0].durable_seq, 5);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn oversized_message_is_resource_exhausted_naming_the_limit() {
    let (_dir, server, mut c) = started().await;
    let (tx, mut acks) = open(&mut c).await;
    let mut huge = fix("V-1", 1);
    huge.vehicle_id = "V".repeat(5 << 20);
    tx.send(pb::FixBatch {
        fixes: vec![huge],
        batch_id: 1,
    })
    .await
    .expect("send");
    let err = acks.message().await.expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("limit"), "{}", err.message());
    // The server keeps serving.
    let (tx, mut acks) = open(&mut c).await;
    let ack = send(&tx, &mut acks, vec![fix("V-1", 1)]).await;
    assert_eq!(ack.acks[0].durable_seq, 1);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_of_one_vehicle_stay_in_order_and_acks_come_in_order() {
    let (_dir, server, mut c) = started().await;
    let (tx, mut acks) = c.fix_stream(64).await.expect("stream");
    // 40 batches sent without waiting, the last 10 fixes of each resent in the next one.
    for b in 0..40u64 {
        let from = (b * 50).saturating_sub(10) + 1;
        let fixes = (from..=(b + 1) * 50).map(|s| fix("V-1", s)).collect();
        tx.send(pb::FixBatch {
            fixes,
            batch_id: b + 1,
        })
        .await
        .expect("send");
    }
    let mut last = 0;
    for b in 0..40u64 {
        let ack = acks.message().await.expect("ack").expect("open");
        assert_eq!(ack.batch_id, b + 1, "acks in batch order");
        // At least this batch's last fix; more when later batches shared its append.
        assert!(ack.acks[0].durable_seq >= (b + 1) * 50, "{ack:?}");
        assert!(
            ack.acks[0].durable_seq >= last,
            "durable seq never goes back"
        );
        last = ack.acks[0].durable_seq;
    }
    drop(tx);
    assert_recorded_exactly(&mut c, &server, 2000).await;
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_replaced_unit_numbering_from_1_in_a_new_epoch_is_stored_after_the_old_one_across_a_restart()
 {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = common::config(dir.path(), ClockMode::Wall);
    // No snapshot: the restart folds the numbering back from the log itself.
    config.snapshot_interval_s = 0;
    let (server, mut c) = common::serve(config.clone()).await;
    departed_run(&mut c, "R-1", "V-1").await;
    let (tx, mut acks) = open(&mut c).await;
    let in_epoch = |epoch: u32, seq: u64| pb::Fix {
        seq_epoch: epoch,
        ..fix("V-1", seq)
    };
    // The first unit: 1..=3.
    let ack = send(&tx, &mut acks, (1..=3).map(|s| in_epoch(0, s)).collect()).await;
    assert_eq!((ack.acks[0].seq_epoch, ack.acks[0].durable_seq), (0, 3));
    // Its replacement numbers from 1 again, in epoch 1: new fixes, not duplicates, acked in
    // the new unit's own numbering.
    let ack = send(&tx, &mut acks, vec![in_epoch(1, 1), in_epoch(1, 2)]).await;
    assert_eq!((ack.accepted, ack.duplicates), (2, 0));
    assert_eq!((ack.acks[0].seq_epoch, ack.acks[0].durable_seq), (1, 2));
    // The old unit, still sending: its epoch is over.
    let ack = send(&tx, &mut acks, vec![in_epoch(0, 4)]).await;
    assert_eq!(ack.rejected[0].field, "seq_epoch");
    drop(tx);
    server.stop().await.expect("stop");

    let (server, mut c) = common::serve(config).await;
    let (tx, mut acks) = open(&mut c).await;
    // After the restart the new unit resends 2 (absorbed) and goes on with 3.
    let ack = send(&tx, &mut acks, vec![in_epoch(1, 2), in_epoch(1, 3)]).await;
    assert_eq!((ack.accepted, ack.duplicates), (1, 1));
    assert_eq!((ack.acks[0].seq_epoch, ack.acks[0].durable_seq), (1, 3));
    // The run's record holds the vehicle's seq: both units' fixes, in order, once each.
    assert_recorded_exactly(&mut c, &server, 6).await;
    server.stop().await.expect("stop");
}
