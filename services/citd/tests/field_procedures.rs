//! The field procedures through gRPC on the public scenarios: a replacement vehicle after a
//! breakdown (R8) as dispatch and the auditor see it, and shots fired as the armory accounts for
//! them (A11, A9). The rules themselves are tested in the domain and engine crates; this checks
//! that every read of the product follows the run onto its new vehicle.

mod common;

use cit_proto::v1 as pb;
use cit_scenario::model::Op;

fn seconds(ts: &prost_types::Timestamp, by: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ts.seconds + by,
        nanos: ts.nanos,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_dispatch_and_audit_follow_the_run_onto_its_replacement() {
    let s = common::scenario("gbg-r008-breakdown-swap.json");
    let (swap_t, from, to) = s
        .timeline
        .iter()
        .find_map(|e| match &e.op {
            Op::SwapVehicle { vehicle, .. } => Some((e.t, s.runs[0].vehicle.clone(), vehicle)),
            _ => None,
        })
        .expect("the scenario swaps");
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::played(dir.path(), &s).await;
    let run = s.runs[0].id.clone();

    // The record shows the swap, and the run as dispatch saw it on either side of it.
    let events = common::read_run(&mut c, &run, false).await;
    assert!(
        events.iter().any(|e| e.event_type == "VehicleSwapped.v1"),
        "ReadRun shows the swap"
    );
    let swap_ts = citd::grpc::ts(swap_t);
    assert_eq!(
        common::state_at(&c, &run, seconds(&swap_ts, -1))
            .await
            .vehicle_id,
        from
    );
    let after = common::state_at(&c, &run, seconds(&swap_ts, 120)).await;
    assert_eq!(after.vehicle_id, *to);
    assert!(
        after
            .last_fix_at
            .is_some_and(|t| t.seconds > swap_ts.seconds),
        "the run's position is the replacement's after the swap"
    );

    // Dispatch: the closed run names its current vehicle.
    let view = common::get_run(&mut c, &run).await.expect("get run");
    assert_eq!(view.vehicle_id, *to);

    // Re-detection reproduces the run, the swap's A8 judgement included.
    let again = c
        .audit
        .redetect_run(pb::RedetectRunRequest {
            run_id: run.clone(),
        })
        .await
        .expect("redetect")
        .into_inner();
    assert!(again.reproduced, "{:?}", again.differences);

    // The export draws the two vehicles' tracks apart.
    let geojson = c
        .audit
        .export_run(pb::ExportRunRequest {
            run_id: run.clone(),
            format: pb::ExportFormat::Geojson as i32,
        })
        .await
        .expect("export")
        .into_inner()
        .content;
    let doc: serde_json::Value = serde_json::from_slice(&geojson).expect("geojson");
    let tracks: Vec<&str> = doc["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter(|f| f["properties"]["layer"] == "track")
        .map(|f| f["properties"]["vehicle_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(tracks, [from.as_str(), to.as_str()]);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shots_fired_are_spent_from_the_escorts_weapon_and_shown_in_its_custody_history() {
    let s = common::scenario("gbg-r017-robbery-shots.json");
    let (shooter, rounds) = s
        .timeline
        .iter()
        .find_map(|e| match &e.op {
            Op::Report {
                person,
                kind,
                rounds,
                ..
            } if kind == "shots_fired" => Some((person.clone(), rounds.clone())),
            _ => None,
        })
        .expect("shots fired");
    let rounds = cit_scenario::model::valid_rounds(rounds.as_ref()).expect("a count");
    let serial = s
        .timeline
        .iter()
        .find_map(|e| match &e.op {
            Op::IssueWeapon { serial, to, .. } if *to == shooter => Some(serial.clone()),
            _ => None,
        })
        .expect("the shooter's weapon");
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::played(dir.path(), &s).await;
    let history = c
        .armory
        .custody_history(pb::CustodyHistoryRequest {
            subject: Some(pb::custody_history_request::Subject::Serial(serial.clone())),
        })
        .await
        .expect("history")
        .into_inner()
        .events;
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["registered", "issued", "shots_fired", "returned"],
        "{history:?}"
    );
    let spend: serde_json::Value =
        serde_json::from_str(&history[2].event_json).expect("event json");
    assert_eq!(spend["spent"]["serial"], serial.as_str());
    assert_eq!(spend["spent"]["rounds"], rounds);
    let returned: serde_json::Value =
        serde_json::from_str(&history[3].event_json).expect("event json");
    assert_eq!(returned["rounds_spent"], rounds);
    server.stop().await.expect("stop");
}
