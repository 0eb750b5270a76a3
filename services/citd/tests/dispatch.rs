//! Dispatch's view through gRPC: where a run is (position, age, progress along the real route,
//! crew, weapons out, open anomalies), the active runs, and the nearest vehicles to a point.

mod common;

use cit_proto::v1 as pb;
use citd::config::ClockMode;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_run_list_active_runs_and_nearest_vehicles() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    common::departed_run(&mut c, "R-1", "V-1").await;
    // Ten fixes along the real route.
    let route = common::route();
    let fixes: Vec<pb::Fix> = (0..10u64)
        .map(|i| {
            let p = route[i as usize];
            pb::Fix {
                lat: p.lat,
                lon: p.lon,
                speed_mps: 8.0,
                ..common::fix("V-1", i + 1)
            }
        })
        .collect();
    let last = fixes[9].clone();
    let (tx, mut acks) = c.fix_stream(2).await.expect("stream");
    tx.send(pb::FixBatch { fixes, batch_id: 1 })
        .await
        .expect("send");
    let ack = acks.message().await.expect("ack").expect("open");
    drop(tx);

    let view = c
        .dispatch
        .get_run(pb::GetRunRequest {
            run_id: "R-1".into(),
            min_log_position: ack.log_position,
        })
        .await
        .expect("get run")
        .into_inner();
    assert_eq!(view.status, pb::RunStatus::Active as i32);
    assert_eq!(view.vehicle_id, "V-1");
    let pos = view.position.expect("position");
    assert!((pos.lat - last.lat).abs() < 1e-9 && (pos.lon - last.lon).abs() < 1e-9);
    assert!(view.last_fix_age_s >= 0.0 && view.last_fix_age_s < 60.0);
    assert!(view.route_length_m > 1000.0, "{}", view.route_length_m);
    assert!(
        view.progress_m > 0.0,
        "progress along the route: {}",
        view.progress_m
    );
    let crew: Vec<(&str, &str)> = view
        .crew
        .iter()
        .map(|m| (m.person_id.as_str(), m.role.as_str()))
        .collect();
    assert_eq!(
        crew,
        [("D-1", "driver"), ("E-1", "escort"), ("E-2", "escort")]
    );
    assert_eq!(view.weapons_out, ["R-1-G-0", "R-1-G-1"]);

    let active = c
        .dispatch
        .list_active_runs(pb::ListActiveRunsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        active
            .runs
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>(),
        ["R-1"]
    );

    let near = c
        .dispatch
        .nearest_vehicles(pb::NearestVehiclesRequest {
            point: Some(pb::LatLon {
                lat: last.lat,
                lon: last.lon,
            }),
            k: 3,
        })
        .await
        .expect("nearest")
        .into_inner();
    assert_eq!(near.vehicles.len(), 1);
    assert_eq!(near.vehicles[0].vehicle_id, "V-1");
    assert!(near.vehicles[0].distance_m < 1.0);

    let err = common::get_run(&mut c, "R-404")
        .await
        .expect_err("unknown run");
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .dispatch
        .nearest_vehicles(pb::NearestVehiclesRequest {
            point: Some(pb::LatLon {
                lat: 91.0,
                lon: 0.0,
            }),
            k: 1,
        })
        .await
        .expect_err("bad point");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("point.lat"), "{}", err.message());
    server.stop().await.expect("stop");
}

/// `/metrics` times every RPC by method, server-side; paths that are not our methods are not
/// labels (a client cannot grow the set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_timed_by_method_on_the_metrics_port() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = citd::config::Config {
        metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..common::config(dir.path(), ClockMode::Wall)
    };
    let (server, mut c) = common::serve(config).await;
    let departed = common::departed_run(&mut c, "R-1", "V-1").await;
    for _ in 0..3 {
        common::get_run_after(&mut c, "R-1", departed)
            .await
            .expect("get run");
    }
    let status = common::get_run(&mut c, "nowhere")
        .await
        .expect_err("unknown run");
    assert_eq!(status.code(), Code::NotFound);
    let body = common::metrics_text(&server).await;
    // A refused call is timed too: it is citd's answer all the same.
    assert!(
        body.contains("cit_rpc_seconds_count{method=\"Dispatch/GetRun\"} 4"),
        "{body}"
    );
    assert!(
        body.contains("cit_rpc_seconds_count{method=\"Runs/Depart\"} 1"),
        "{body}"
    );
    assert!(!body.contains("grpc.health"), "only our methods are labels");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consoles_port_serves_the_same_services_apart_from_telemetry() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(citd::config::Config {
        console_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..common::config(dir.path(), ClockMode::Wall)
    })
    .await;
    // The run is planned and departed on the telemetry port and read on the consoles' port:
    // one application behind both.
    let departed = common::departed_run(&mut c, "R-1", "V-1").await;
    let console = server.console_addr.expect("console port");
    assert_ne!(console, server.addr);
    let mut d = citd::runner::Clients::connect(&format!("https://{console}"), c.creds.clone())
        .await
        .expect("connect to the consoles' port");
    // Read-your-writes: the read model has seen the departure.
    let view = common::get_run_after(&mut d, "R-1", departed)
        .await
        .expect("get run on the consoles' port");
    assert_eq!(view.run_id, "R-1");
    assert_eq!(view.status, pb::RunStatus::Active as i32);
    server.stop().await.expect("stop");
}
