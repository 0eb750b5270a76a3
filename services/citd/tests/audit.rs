//! The auditor's API through gRPC on real scenario runs: every run's hash chain verifies and its
//! anomalies are re-detected exactly; one edited byte in storage is named by VerifyRun; StateAt
//! at the exact time of an anomaly shows it (and a millisecond before does not); replays keep the
//! original order and pace; exports parse and the picture carries the ODbL attribution.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use cit_proto::v1 as pb;
use cit_scenario::Scenario;
use cit_store::{Direction, EventStore};
use citd::config::ClockMode;
use citd::runner::Clients;
use tonic::Code;

async fn verify(c: &mut Clients, run: &str) -> pb::VerifyRunResponse {
    c.audit
        .verify_run(pb::VerifyRunRequest { run_id: run.into() })
        .await
        .expect("verify")
        .into_inner()
}

async fn export(c: &mut Clients, run: &str, format: pb::ExportFormat) -> pb::ExportRunResponse {
    c.audit
        .export_run(pb::ExportRunRequest {
            run_id: run.into(),
            format: format as i32,
        })
        .await
        .expect("export")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_run_verifies_redetects_exactly_and_exports() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::scenario_dir())
        .expect("scenario dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut runs, mut recorded) = (0, 0);
    for f in &files {
        let s = Scenario::load(f).expect("parses");
        let dir = tempfile::tempdir().expect("tmp");
        let (server, mut c) = common::played(dir.path(), &s).await;
        for run in &s.runs {
            let v = match c
                .audit
                .verify_run(pb::VerifyRunRequest {
                    run_id: run.id.clone(),
                })
                .await
            {
                Ok(v) => v.into_inner(),
                // A run whose planning the scenario expects to be refused has no record.
                Err(e) if e.code() == Code::NotFound => continue,
                Err(e) => panic!("{} {}: {e}", s.name, run.id),
            };
            assert!(v.ok, "{} {}: {}", s.name, run.id, v.reason);
            assert!(v.events_checked > 2, "{} {}", s.name, run.id);
            let r = c
                .audit
                .redetect_run(pb::RedetectRunRequest {
                    run_id: run.id.clone(),
                })
                .await
                .expect("redetect")
                .into_inner();
            assert!(r.reproduced, "{} {}: {:?}", s.name, run.id, r.differences);
            let sorted = |mut v: Vec<String>| {
                v.sort();
                v
            };
            assert_eq!(
                sorted(r.recorded_anomaly_ids.clone()),
                sorted(r.redetected_anomaly_ids.clone())
            );
            recorded += r.recorded_anomaly_ids.len();
            runs += 1;

            let geo = export(&mut c, &run.id, pb::ExportFormat::Geojson).await;
            assert_eq!(geo.content_type, "application/geo+json");
            let doc: serde_json::Value = serde_json::from_slice(&geo.content).expect("json");
            assert_eq!(doc["type"], "FeatureCollection");
            let layers: Vec<&str> = doc["features"]
                .as_array()
                .expect("features")
                .iter()
                .filter_map(|f| f["properties"]["layer"].as_str())
                .collect();
            assert!(
                layers.contains(&"route") && layers.contains(&"track"),
                "{layers:?}"
            );
            let anomalies = layers.iter().filter(|l| **l == "anomaly").count();
            assert_eq!(anomalies, r.recorded_anomaly_ids.len());
            let svg = c
                .audit
                .render_run(pb::RenderRunRequest {
                    run_id: run.id.clone(),
                    width_px: 0,
                })
                .await
                .expect("render")
                .into_inner()
                .svg;
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("OpenStreetMap contributors"));
        }
        server.stop().await.expect("stop");
    }
    assert!(runs >= 17, "every scenario's runs were audited: {runs}");
    assert!(
        recorded >= 15,
        "anomalies were re-detected, not just absent: {recorded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_run_with_custody_and_paced_replay_keep_the_record() {
    let s = common::scenario("gbg-r015-custody.json");
    let run = s.runs[0].id.clone();
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::played(dir.path(), &s).await;
    let own = common::read_run(&mut c, &run, false).await;
    let with = common::read_run(&mut c, &run, true).await;
    assert!(own.iter().all(|e| e.stream == format!("run-{run}")));
    let custody: Vec<&pb::RunEvent> = with.iter().filter(|e| e.stream != own[0].stream).collect();
    assert!(
        custody.iter().any(|e| e.event_type == "WeaponIssued.v1")
            && custody.iter().any(|e| e.event_type == "WeaponReturned.v1"),
        "custody events included: {:?}",
        custody.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    assert!(
        with.windows(2)
            .all(|w| w[0].log_position < w[1].log_position)
    );
    assert!(with.iter().all(|e| e.chain_hash.len() == 64));

    // Paced: the replay takes at least the record's span divided by the speed.
    let t = |e: &pb::RunEvent| citd::grpc::millis(e.recorded_at.as_ref().expect("time")).0;
    let span_ms = own
        .windows(2)
        .map(|w| (t(&w[1]) - t(&w[0])).max(0))
        .sum::<i64>();
    let speed = span_ms as f64 / 300.0; // about 300 ms of replay
    let started = Instant::now();
    let mut replay = c
        .audit
        .replay_run(pb::ReplayRunRequest {
            run_id: run.clone(),
            speed,
            include_custody: false,
        })
        .await
        .expect("replay")
        .into_inner();
    let mut replayed = Vec::new();
    while let Some(e) = replay.message().await.expect("event") {
        replayed.push(e);
    }
    assert!(
        started.elapsed().as_millis() >= 250,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(replayed, own, "a replay is the record, in order");

    let bad = c
        .audit
        .replay_run(pb::ReplayRunRequest {
            run_id: run.clone(),
            speed: -1.0,
            include_custody: false,
        })
        .await
        .expect_err("negative speed");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("speed"), "{}", bad.message());
    let missing = c
        .audit
        .verify_run(pb::VerifyRunRequest {
            run_id: "no-such-run".into(),
        })
        .await
        .expect_err("unknown run");
    assert_eq!(missing.code(), Code::NotFound);
    let csv = export(&mut c, &run, pb::ExportFormat::Csv).await;
    let fixes: usize = own
        .iter()
        .filter(|e| e.event_type == "FixesRecorded.v1")
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.data_json).expect("json")["fixes"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum();
    assert_eq!(
        String::from_utf8(csv.content)
            .expect("utf-8")
            .lines()
            .count(),
        fixes + 1
    );
    let gpx = export(&mut c, &run, pb::ExportFormat::Gpx).await;
    let gpx = String::from_utf8(gpx.content).expect("utf-8");
    assert_eq!(gpx.matches("<trkpt ").count(), fixes);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_byte_in_storage_is_named_by_verify_run() {
    let s = common::scenario("gbg-r006-unplanned-stop.json");
    let run = s.runs[0].id.clone();
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::played(dir.path(), &s).await;
    let before = verify(&mut c, &run).await;
    assert!(before.ok, "{}", before.reason);
    server.stop().await.expect("stop");

    // Pick an event in the middle of the run's stream and change one digit of its data: the
    // JSON stays valid and the domain state loads, so only the chain can tell.
    let (victim, data) = {
        let store =
            cit_store::embedded::EmbeddedStore::open(dir.path(), Default::default()).expect("open");
        let events = store
            .read_stream(&format!("run-{run}"), 0, Direction::Forwards, 10_000)
            .await
            .expect("read");
        store.close();
        let e = events[events.len() / 2].clone();
        (e.clone(), e.data)
    };
    cit_store::embedded::edit_record_for_tests(dir.path(), victim.position, |raw| {
        let at = raw
            .windows(data.len())
            .position(|w| w == data.as_slice())
            .expect("data inside the record");
        let digit = data
            .iter()
            .position(u8::is_ascii_digit)
            .expect("a digit in the data");
        raw[at + digit] = if raw[at + digit] == b'9' {
            b'8'
        } else {
            raw[at + digit] + 1
        };
    })
    .expect("edit");

    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Scenario)).await;
    let after = verify(&mut c, &run).await;
    assert!(!after.ok, "the edit is detected");
    assert_eq!(
        after.first_bad_event_id,
        victim.id.to_string(),
        "{}",
        after.reason
    );
    assert_eq!(after.first_bad_stream_version, victim.version);
    assert!(after.reason.contains("stored hash"), "{}", after.reason);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_run_rewritten_with_recomputed_hashes_fails_its_signed_head() {
    let s = common::scenario("gbg-r006-unplanned-stop.json");
    let run = s.runs[0].id.clone();
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::played(dir.path(), &s).await;
    let before = verify(&mut c, &run).await;
    assert!(before.ok, "{}", before.reason);
    assert!(
        before.head_covered,
        "closed: its head is signed: {before:?}"
    );
    assert_eq!(before.signing_key_id, "run-1");
    server.stop().await.expect("stop");

    // From the middle on, every event changed (a digit of each FixesRecorded moved) and every
    // hash recomputed over the forged predecessor: the chain alone holds.
    let middle = {
        let store =
            cit_store::embedded::EmbeddedStore::open(dir.path(), Default::default()).expect("open");
        let n = store
            .read_stream(&format!("run-{run}"), 0, Direction::Forwards, 100_000)
            .await
            .expect("read")
            .len() as u64;
        store.close();
        n / 2
    };
    cit_store::embedded::rewrite_stream_for_tests(dir.path(), &format!("run-{run}"), middle, |e| {
        if e.event_type == "FixesRecorded.v1" {
            let text = String::from_utf8_lossy(&e.data).replace("\"lat\":57.", "\"lat\":58.");
            e.data = text.into_bytes();
        }
    })
    .expect("rewrite");

    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Scenario)).await;
    let after = verify(&mut c, &run).await;
    assert!(!after.ok, "the forgery is detected: {after:?}");
    assert_eq!(after.first_bad_event_id, "", "the chain itself holds");
    assert!(after.reason.contains("rewritten"), "{}", after.reason);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_at_the_exact_time_of_an_anomaly_shows_it() {
    let s = common::scenario("gbg-r006-unplanned-stop.json");
    let run = s.runs[0].id.clone();
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::played(dir.path(), &s).await;
    let anomalies = c
        .dispatch
        .list_anomalies(pb::ListAnomaliesRequest {
            run_id: run.clone(),
            include_resolved: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .anomalies;
    let a = anomalies
        .iter()
        .find(|a| a.kind == "unplanned_stop")
        .expect("an unplanned stop");
    let at = a.at.expect("time");
    let then = common::state_at(&c, &run, at).await;
    assert!(
        then.open_anomalies.iter().any(|o| o.id == a.id),
        "StateAt at the anomaly's time shows it"
    );
    assert_eq!(then.status, pb::RunStatus::Active as i32);
    assert_eq!(
        then.last_fix_at.as_ref().map(|t| t.seconds <= at.seconds),
        Some(true)
    );
    let mut just_before = at;
    if just_before.nanos >= 1_000_000 {
        just_before.nanos -= 1_000_000;
    } else {
        just_before.seconds -= 1;
        just_before.nanos += 999_000_000;
    }
    let before = common::state_at(&c, &run, just_before).await;
    assert!(
        before.open_anomalies.iter().all(|o| o.id != a.id),
        "a millisecond earlier it was not raised yet"
    );
    assert!(before.progress_m <= then.progress_m + 1.0);
    let missing = c
        .audit
        .state_at(pb::StateAtRequest {
            run_id: run.clone(),
            at: None,
        })
        .await
        .expect_err("no time");
    assert_eq!(missing.code(), Code::InvalidArgument);
    server.stop().await.expect("stop");
}
