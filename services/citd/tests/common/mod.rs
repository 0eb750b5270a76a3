//! Helpers shared by the integration tests: a citd on port 0 with a temporary store, clients,
//! a departed run on a real Gothenburg route to stream fixes into, and public scenarios played
//! into a citd.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cit_proto::v1 as pb;
use cit_scenario::{Scenario, score};
use citd::config::{ClockMode, Config};
use citd::credentials::Credentials;
use citd::runner::{Clients, Play, play};

pub fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/scenarios")
}

/// A public scenario by file name.
pub fn scenario(name: &str) -> Scenario {
    Scenario::load(&scenario_dir().join(name)).expect("scenario parses")
}

/// The run as dispatch saw it at `at` (`StateAt`).
pub async fn state_at(c: &Clients, run: &str, at: prost_types::Timestamp) -> pb::RunView {
    c.clone()
        .audit
        .state_at(pb::StateAtRequest {
            run_id: run.into(),
            at: Some(at),
        })
        .await
        .expect("state at")
        .into_inner()
}

/// The roles of the tests' own operator: everything but crew and units, so one client can
/// register, plan, dispatch, audit and run the armory (two-person calls still need the other
/// people's credentials, see `Clients::cosigned`).
pub const OPERATOR_ROLES: &[&str] = &[
    "admin",
    "dispatcher",
    "supervisor",
    "auditor",
    "police_liaison",
    "gun_custodian",
    "ammo_custodian",
    "approver",
];

/// Credentials for the citd whose store (and development PKI) is in `dir`, speaking for the
/// tests' operator.
pub fn creds(dir: &Path) -> std::sync::Arc<Credentials> {
    std::sync::Arc::new(
        Credentials::from_pki_dir(&dir.join("pki"))
            .expect("credentials")
            .speaking_for("operator", OPERATOR_ROLES),
    )
}

/// Clients of a running citd on `dir`'s PKI, as the operator.
pub async fn connect(server: &citd::server::Running, dir: &Path) -> Clients {
    Clients::connect(&server.endpoint(), creds(dir))
        .await
        .expect("connect")
}

/// Plays a scenario into a citd on `dir` (scenario clock), checks it scores as expected, and
/// leaves the server running.
pub async fn played(dir: &Path, s: &Scenario) -> (citd::server::Running, Clients) {
    played_on(config(dir, ClockMode::Scenario), s).await
}

/// [`played`] on a citd of the given configuration (scenario clock).
pub async fn played_on(config: Config, s: &Scenario) -> (citd::server::Running, Clients) {
    let dir = config.data_dir.clone();
    let server = citd::server::start(config).await.expect("start");
    let out = play(
        &server.endpoint(),
        &creds(&dir),
        s,
        &Play::default(),
        |_| {},
    )
    .await
    .expect("plays");
    let sc = score(s, &out);
    assert!(sc.passed(), "{}: {sc:?}", s.name);
    let c = connect(&server, &dir).await;
    (server, c)
}

/// A private citd's configuration on `dir` (port 0, no metrics port), TLS and tokens from a
/// development PKI in `dir/pki` (made once: a restart on the same directory keeps it).
pub fn config(dir: &std::path::Path, clock: ClockMode) -> Config {
    if !dir.join("pki/ca.pem").exists() {
        citd::credentials::private_server(dir).expect("development PKI");
    }
    let pki = dir.join("pki");
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        metrics_listen: None,
        data_dir: dir.to_path_buf(),
        clock,
        tls: Some(citd::auth::tls::TlsFiles {
            cert: pki.join("server.pem"),
            key: pki.join("server.key.pem"),
            client_ca: Some(pki.join("ca.pem")),
        }),
        tokens: citd::auth::token::TokenConfig {
            keys: vec![citd::auth::token::KeyConfig {
                kid: citd::auth::devpki::DEV_KID.into(),
                alg: "EdDSA".into(),
                public_key: pki.join(format!("token-{}.pub.pem", citd::auth::devpki::DEV_KID)),
            }],
            ..Default::default()
        },
        run_signing_key: Some(pki.join("run-signing.key.pem")),
        ..Config::default()
    }
}

/// A citd on `config` (port 0) and clients connected to it as the operator.
pub async fn serve(config: Config) -> (citd::server::Running, Clients) {
    let dir = config.data_dir.clone();
    let server = citd::server::start(config).await.expect("start");
    let c = connect(&server, &dir).await;
    (server, c)
}

/// Binds the runner's gateway (the clients' certificate) to every registered vehicle, so the
/// tests' fixes are accepted for each.
pub async fn bind_gateway(c: &mut Clients) {
    let vehicles = c
        .runs
        .list_vehicles(pb::ListPage {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("vehicles")
        .into_inner()
        .vehicles;
    c.identity
        .bind_unit(pb::BindUnitRequest {
            unit_id: citd::credentials::SCENARIO_GATEWAY.into(),
            gateway: true,
            vehicle_ids: vehicles.into_iter().map(|v| v.vehicle_id).collect(),
        })
        .await
        .expect("bind the gateway");
}

/// Clients for a two-person call: the operator's connection speaking for `people[0]` (a
/// `gun_custodian`, ...), co-signed by the others, each with the role given.
pub fn signed(c: &Clients, people: &[(&str, &str)]) -> Clients {
    let roles: Vec<[&str; 1]> = people.iter().map(|(_, r)| [*r]).collect();
    let cosigners: Vec<(&str, &[&str])> = people[1..]
        .iter()
        .zip(&roles[1..])
        .map(|((p, _), r)| (*p, &r[..]))
        .collect();
    c.cosigned(people[0].0, &roles[0], &cosigners)
}

/// The metrics page of a citd started with a metrics port.
pub async fn metrics_text(server: &citd::server::Running) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.metrics_addr.expect("metrics port");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: cit\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("response");
    body
}

pub fn now_ts() -> prost_types::Timestamp {
    citd::grpc::ts(citd::clock::wall_now())
}

/// The first points of GBG-R001 (real road), as a route.
pub fn route() -> Vec<pb::LatLon> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/gothenburg/routes/GBG-R001.geojson"),
    )
    .expect("route file");
    let v: serde_json::Value = serde_json::from_str(&text).expect("geojson");
    let coords = v["features"][0]["geometry"]["coordinates"]
        .as_array()
        .expect("coordinates")
        .clone();
    coords
        .iter()
        .map(|c| pb::LatLon {
            lat: c[1].as_f64().expect("lat"),
            lon: c[0].as_f64().expect("lon"),
        })
        .collect()
}

/// The crew of a test run: a run of its own for each (R9: nobody serves two active runs). Run
/// `R-n` has driver `D-n` and escorts `E-(2n-1)` and `E-2n`, so R-1's are D-1, E-1 and E-2.
pub fn crew_of(run: &str) -> [String; 3] {
    match run.strip_prefix("R-").and_then(|n| n.parse::<u32>().ok()) {
        Some(n) => [
            format!("D-{n}"),
            format!("E-{}", 2 * n - 1),
            format!("E-{}", 2 * n),
        ],
        None => [
            format!("D-{run}"),
            format!("E-{run}-1"),
            format!("E-{run}-2"),
        ],
    }
}

/// Registers each person (named by their id) in their role.
pub async fn register_people(c: &mut Clients, people: &[(&str, pb::Role)]) {
    for (id, role) in people {
        c.runs
            .register_person(pb::RegisterPersonRequest {
                person_id: id.to_string(),
                name: id.to_string(),
                role: *role as i32,
            })
            .await
            .expect("person");
    }
}

/// Registers a vehicle, a crew and an armory, plans `run` on a real route, issues weapons and
/// departs, all through the public API; returns the departure's log position (to read it back).
pub async fn departed_run(c: &mut Clients, run: &str, vehicle: &str) -> u64 {
    let [driver, e1, e2] = crew_of(run);
    c.runs
        .register_vehicle(pb::RegisterVehicleRequest {
            vehicle_id: vehicle.into(),
            plate: "GB 1".into(),
            armoured: true,
        })
        .await
        .expect("vehicle");
    bind_gateway(c).await;
    register_people(
        c,
        &[
            (driver.as_str(), pb::Role::Driver),
            (e1.as_str(), pb::Role::Escort),
            (e2.as_str(), pb::Role::Escort),
            ("GC-1", pb::Role::GunCustodian),
            ("AC-1", pb::Role::AmmoCustodian),
            ("AP-1", pb::Role::Approver),
        ],
    )
    .await;
    c.armory
        .register_ammo_lot(pb::RegisterAmmoLotRequest {
            lot: "A-1".into(),
            rounds: 500,
        })
        .await
        .expect("lot");
    c.runs
        .plan_run(pb::PlanRunRequest {
            run_id: run.into(),
            vehicle_id: vehicle.into(),
            driver_id: driver.clone(),
            escort_ids: vec![e1.clone(), e2.clone()],
            route: route(),
            ..Default::default()
        })
        .await
        .expect("plan");
    for (i, escort) in [&e1, &e2].into_iter().enumerate() {
        let serial = format!("{run}-G-{i}");
        c.armory
            .register_weapon(pb::RegisterWeaponRequest {
                serial: serial.clone(),
                kind: "pistol".into(),
            })
            .await
            .expect("weapon");
        signed(
            c,
            &[
                ("GC-1", "gun_custodian"),
                ("AC-1", "ammo_custodian"),
                ("AP-1", "approver"),
            ],
        )
        .armory
        .issue_weapon(pb::IssueWeaponRequest {
            run_id: run.into(),
            serial: serial.clone(),
            lot: "A-1".into(),
            rounds: 30,
            to: escort.clone(),
            gun_custodian: "GC-1".into(),
            ammo_custodian: "AC-1".into(),
            approver: "AP-1".into(),
        })
        .await
        .expect("issue");
        c.runs
            .escort_ready(pb::EscortReadyRequest {
                run_id: run.into(),
                person_id: escort.clone(),
                weapon_serial: serial,
                vest: true,
                helmet: true,
            })
            .await
            .expect("ready");
    }
    c.runs
        .depart(pb::DepartRequest { run_id: run.into() })
        .await
        .expect("depart")
        .into_inner()
        .log_position
}

/// A valid fix near the start of the route.
pub fn fix(vehicle: &str, seq: u64) -> pb::Fix {
    pb::Fix {
        vehicle_id: vehicle.into(),
        seq,
        time: Some(now_ts()),
        lat: 57.69 + (seq % 100) as f64 * 1e-5,
        lon: 11.95,
        speed_mps: 10.0,
        heading_deg: 90.0,
        accuracy_m: 5.0,
        ignition: true,
        door_open: false,
        seq_epoch: 0,
    }
}

/// The run as dispatch sees it now (`GetRun`, no log position to wait for).
pub async fn get_run(c: &mut Clients, run: &str) -> Result<pb::RunView, tonic::Status> {
    get_run_after(c, run, 0).await
}

/// The run as dispatch sees it once its read model has processed log position `after`
/// (read-your-writes).
pub async fn get_run_after(
    c: &mut Clients,
    run: &str,
    after: u64,
) -> Result<pb::RunView, tonic::Status> {
    c.dispatch
        .get_run(pb::GetRunRequest {
            run_id: run.into(),
            min_log_position: after,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every event of a run in log order (`custody`: with its custody streams' events), by ReadRun.
pub async fn read_run(c: &mut Clients, run: &str, custody: bool) -> Vec<pb::RunEvent> {
    let mut stream = c
        .audit
        .read_run(pb::ReadRunRequest {
            run_id: run.into(),
            include_custody: custody,
        })
        .await
        .expect("read run")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = stream.message().await.expect("event") {
        out.push(e);
    }
    out
}

/// Every fix seq recorded in a run's stream, in log order.
pub async fn recorded_seqs(c: &mut Clients, endpoint: &str, run: &str) -> Vec<u64> {
    let mut fresh = Clients::connect(endpoint, c.creds.clone())
        .await
        .expect("connect");
    let mut seqs = Vec::new();
    for e in read_run(&mut fresh, run, false).await {
        if e.event_type == "FixesRecorded.v1" {
            let v: serde_json::Value = serde_json::from_str(&e.data_json).expect("json");
            for f in v["fixes"].as_array().expect("fixes") {
                seqs.push(f["seq"].as_u64().expect("seq"));
            }
        }
    }
    seqs
}
