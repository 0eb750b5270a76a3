//! Starting citd: a failure to start (a store another process holds, a port in use) is the
//! start's error, at once and with its cause, not a server that logs "ready" and never answers;
//! once started, health answers SERVING for every service of `cit.v1`.

mod common;

use std::time::{Duration, Instant};

use citd::config::ClockMode;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn a_store_that_cannot_open_fails_the_start_with_its_cause() {
    let dir = tempfile::tempdir().expect("tmp");
    let holder = citd::server::start(common::config(dir.path(), ClockMode::Wall))
        .await
        .expect("the first citd starts");
    let began = Instant::now();
    let err = citd::server::start(common::config(dir.path(), ClockMode::Wall))
        .await
        .expect_err("the data directory is held by the first");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let message = err.to_string();
    assert!(
        message.contains("store") && message.to_lowercase().contains("lock"),
        "the cause is named: {message}"
    );
    holder.stop().await.expect("stop");
}

#[tokio::test]
async fn a_port_in_use_fails_the_start_naming_the_address() {
    let dir = tempfile::tempdir().expect("tmp");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut config = common::config(dir.path(), ClockMode::Wall);
    config.listen = taken.local_addr().expect("addr");
    let err = citd::server::start(config)
        .await
        .expect_err("the port is taken");
    assert!(
        err.to_string()
            .contains(&taken.local_addr().expect("addr").to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn health_answers_serving_for_every_service_once_started() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = citd::server::start(common::config(dir.path(), ClockMode::Scenario))
        .await
        .expect("start");
    // Health needs no credential, only the CA to trust citd by.
    let channel = common::creds(dir.path())
        .channel(&server.endpoint())
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "cit.v1.Telemetry",
        "cit.v1.Runs",
        "cit.v1.Armory",
        "cit.v1.PoliceLiaison",
        "cit.v1.Dispatch",
        "cit.v1.Audit",
        "cit.v1.ScenarioClock",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    server.stop().await.expect("stop");
}
