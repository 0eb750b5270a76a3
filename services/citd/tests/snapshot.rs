//! Restart from the engine snapshot: citd writes it at shutdown at the log's head; the next start
//! serves dispatch from it at once (anomalies, the run's standing), the engine goes on with the
//! run it restored (a new duress is raised), and nothing is raised twice.

mod common;

use std::path::PathBuf;

use cit_proto::v1 as pb;
use cit_scenario::Scenario;
use cit_store::EventStore;
use citd::config::ClockMode;
use citd::runner::{Clients, Play, play};

async fn anomaly_ids(c: &mut Clients, run: &str, min_log_position: u64) -> Vec<String> {
    let mut ids: Vec<String> = c
        .dispatch
        .list_anomalies(pb::ListAnomaliesRequest {
            run_id: run.into(),
            include_resolved: true,
            min_log_position,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .anomalies
        .into_iter()
        .map(|a| a.id)
        .collect();
    ids.sort();
    ids
}

async fn recorded_anomaly_events(c: &mut Clients, run: &str) -> Vec<String> {
    common::read_run(c, run, false)
        .await
        .into_iter()
        .filter(|e| e.event_type == "AnomalyRaised.v1")
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data_json).expect("json");
            v["anomaly"]["id"].as_str().expect("id").to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_snapshot_and_raises_nothing_twice() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/scenarios/gbg-r006-unplanned-stop.json");
    let s = Scenario::load(&path).expect("scenario");
    let run = s.runs[0].id.clone();
    let dir = tempfile::tempdir().expect("tmp");
    let server = citd::server::start(common::config(dir.path(), ClockMode::Scenario))
        .await
        .expect("start");
    play(
        &server.endpoint(),
        &common::creds(dir.path()),
        &s,
        &Play::default(),
        |_| {},
    )
    .await
    .expect("plays");
    let mut c = common::connect(&server, dir.path()).await;
    let before = anomaly_ids(&mut c, &run, 0).await;
    assert!(!before.is_empty(), "the scenario raised anomalies");
    let view_before = common::get_run(&mut c, &run).await.expect("get run");
    let events_before = recorded_anomaly_events(&mut c, &run).await;
    server.stop().await.expect("stop");

    let snap = citd::snapshot::read(dir.path()).expect("a snapshot written at shutdown");
    let store =
        cit_store::embedded::EmbeddedStore::open(dir.path(), Default::default()).expect("open");
    let log_head = store.head_position().await.expect("head");
    store.close();
    assert_eq!(snap.position, log_head, "the snapshot covers the whole log");

    assert!(
        snap.commands.world().runs.contains_key(&run),
        "the command side's state is in the snapshot"
    );

    let (server, mut c) = common::serve(citd::config::Config {
        metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..common::config(dir.path(), ClockMode::Scenario)
    })
    .await;
    // Neither the engine nor the command side read the log before the snapshot's position.
    let metrics = common::metrics_text(&server).await;
    for gauge in ["cit_engine_resumed_from", "cit_commands_resumed_from"] {
        assert!(
            metrics.contains(&format!("{gauge} {log_head}\n")),
            "{gauge} {log_head} in {metrics}"
        );
    }
    assert_eq!(
        anomaly_ids(&mut c, &run, 0).await,
        before,
        "dispatch is served from the snapshot"
    );
    // The command side knows the anomalies from the snapshot alone: one is acknowledged.
    c.as_person("dispatcher-2", &["dispatcher"])
        .dispatch
        .acknowledge_anomaly(pb::AcknowledgeAnomalyRequest {
            anomaly_id: before[0].clone(),
            by: "dispatcher-2".into(),
        })
        .await
        .expect("acknowledged after the restart");
    let view = common::get_run(&mut c, &run).await.expect("get run");
    assert_eq!(view.progress_m, view_before.progress_m);
    assert_eq!(view.position, view_before.position);

    // The restored engine knows the run: a duress now is raised, once.
    let mut escort = c.as_person(&s.runs[0].escorts[0], &["escort"]);
    escort
        .runs
        .check_in(pb::CheckInRequest {
            run_id: run.clone(),
            person_id: s.runs[0].escorts[0].clone(),
            // The runner gave the crew PINs: the duress one.
            pin: citd::runner::DURESS_PIN.into(),
            ..Default::default()
        })
        .await
        .expect("duress");
    // A later write, to wait on: the engine has handled the duress once it has handled this.
    let head = escort
        .runs
        .report_incident(pb::ReportIncidentRequest {
            run_id: run.clone(),
            person_id: s.runs[0].escorts[0].clone(),
            kind: pb::IncidentKind::Jam as i32,
            note: "after the duress".into(),
            rounds: None,
        })
        .await
        .expect("report")
        .into_inner()
        .log_position;
    let after = anomaly_ids(&mut c, &run, head).await;
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert!(after.iter().any(|id| id.starts_with("duress:")));
    let events_after = recorded_anomaly_events(&mut c, &run).await;
    assert_eq!(
        events_after.len(),
        events_before.len() + 1,
        "nothing raised twice"
    );
    let mut unique = events_after.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), events_after.len());
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_snapshots_a_restart_replays_the_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = citd::config::Config {
        snapshot_interval_s: 0,
        ..common::config(dir.path(), ClockMode::Wall)
    };
    let (server, mut c) = common::serve(config.clone()).await;
    common::departed_run(&mut c, "R-1", "V-1").await;
    server.stop().await.expect("stop");
    assert!(
        citd::snapshot::read(dir.path()).is_none(),
        "no snapshot written"
    );
    let (server, mut c) = common::serve(config).await;
    // A write after the restart: reading at its position waits for the whole log's replay.
    let head = c
        .runs
        .register_vehicle(pb::RegisterVehicleRequest {
            vehicle_id: "V-2".into(),
            plate: "GB 2".into(),
            armoured: true,
        })
        .await
        .expect("write")
        .into_inner()
        .log_position;
    let active = c
        .dispatch
        .list_active_runs(pb::ListActiveRunsRequest {
            min_log_position: head,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .runs;
    assert_eq!(active.len(), 1, "rebuilt by replaying the log");
    server.stop().await.expect("stop");
}
