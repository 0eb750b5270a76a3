//! Bad input at the boundary gets the right status and names the field; refusals name their
//! rule (trailer `x-cit-rule`, and the gRPC richer error model's `google.rpc.Status` details);
//! a duress check-in answers exactly like an ok one (A6).

mod common;

use cit_proto::v1 as pb;
use citd::config::ClockMode;
use citd::error::refusal_rule;
use citd::runner::Clients;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

async fn setup() -> (tempfile::TempDir, citd::server::Running, Clients) {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Scenario)).await;
    c.clock
        .advance_clock(pb::AdvanceClockRequest {
            to: Some(prost_types::Timestamp {
                seconds: 1_773_000_000,
                nanos: 0,
            }),
            tick: false,
        })
        .await
        .expect("clock");
    common::departed_run(&mut c, "R-1", "V-1").await;
    (dir, server, c)
}

fn plan(route: Vec<pb::LatLon>) -> pb::PlanRunRequest {
    pb::PlanRunRequest {
        run_id: "R-2".into(),
        vehicle_id: "V-1".into(),
        driver_id: "D-1".into(),
        escort_ids: vec!["E-1".into(), "E-2".into()],
        route,
        ..Default::default()
    }
}

/// A stop at the end of the common route.
fn stop(id: &str, radius: f64, by_s: i64) -> pb::PlannedStop {
    pb::PlannedStop {
        stop_id: id.into(),
        name: id.into(),
        position: common::route().last().copied(),
        radius_m: radius,
        arrive_by: Some(prost_types::Timestamp {
            seconds: by_s,
            nanos: 0,
        }),
        kind: "outlet".into(),
    }
}

#[tokio::test]
async fn invalid_plans_are_invalid_argument_naming_the_field() {
    let (_dir, server, mut c) = setup().await;
    let good = common::route();
    let mut cases: Vec<(pb::PlanRunRequest, &str)> = Vec::new();
    cases.push((plan(good[..1].to_vec()), "route"));
    let mut nan = good.clone();
    nan[1].lat = f64::NAN;
    cases.push((plan(nan), "route[1].lat"));
    cases.push((plan(vec![good[0]; 50_001]), "route"));
    let mut corridor = plan(good.clone());
    corridor.corridor_m = Some(0.0);
    cases.push((corridor, "corridor_m"));
    let mut negative = plan(good.clone());
    negative.corridor_m = Some(-5.0);
    cases.push((negative, "corridor_m"));
    let mut no_radius = plan(good.clone());
    no_radius.stops = vec![stop("S-1", 0.0, 1_773_003_600)];
    cases.push((no_radius, "stops[0].radius_m"));
    let mut windows = plan(good.clone());
    windows.stops = vec![
        stop("S-1", 50.0, 1_773_003_600),
        stop("S-2", 50.0, 1_773_000_600),
    ];
    cases.push((windows, "stops[1].arrive_by"));
    let mut far = plan(good.clone());
    far.stops = vec![stop("S-1", 50.0, 1_773_003_600)];
    far.stops[0].position = Some(pb::LatLon {
        lat: 58.15,
        lon: 11.95,
    });
    cases.push((far, "stops[0].position"));
    let mut past = plan(good.clone());
    past.stops = vec![stop("S-1", 50.0, 1_772_999_000)];
    cases.push((past, "stops[0].arrive_by"));
    for (req, field) in cases {
        let err = c.runs.plan_run(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
        // The richer error model: a standard client reads the field from a BadRequest.
        let bad = err.get_details_bad_request().expect("a BadRequest detail");
        assert_eq!(bad.field_violations[0].field, field);
    }
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn refusals_carry_their_rule_and_unknowns_are_not_found() {
    let (_dir, server, mut c) = setup().await;
    c.runs
        .register_vehicle(pb::RegisterVehicleRequest {
            vehicle_id: "CAR-1".into(),
            plate: "ABC 123".into(),
            armoured: false,
        })
        .await
        .expect("car");
    let mut req = plan(common::route());
    req.vehicle_id = "CAR-1".into();
    let err = c.runs.plan_run(req).await.expect_err("R1");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(refusal_rule(&err).as_deref(), Some("R1"));
    assert!(err.message().contains("armoured"), "{}", err.message());
    // The details are a google.rpc.Status with the same code: its ErrorInfo names the rule, and
    // cit.v1.Refusal is packed beside it as an Any.
    let body = tonic_types::Status::decode(err.details()).expect("google.rpc.Status");
    assert_eq!(body.code, Code::FailedPrecondition as i32);
    assert_eq!(body.message, err.message());
    let info = err.get_details_error_info().expect("an ErrorInfo detail");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("R1", "cit"));
    let packed = body
        .details
        .iter()
        .find(|d| d.type_url == "type.googleapis.com/cit.v1.Refusal")
        .expect("the refusal, packed");
    let refusal = pb::Refusal::decode(packed.value.as_slice()).expect("decodes");
    assert_eq!(refusal.rule, "R1");
    // Without the trailer (a proxy may drop it), the rule is read from the details.
    let mut bare =
        tonic::Status::with_details(err.code(), err.message(), err.details().to_vec().into());
    bare.metadata_mut().remove("x-cit-rule");
    assert_eq!(refusal_rule(&bare).as_deref(), Some("R1"));

    let err = c
        .as_person("E-1", &["escort"])
        .runs
        .hand_over_cash_boxes(pb::HandOverCashBoxesRequest {
            run_id: "R-1".into(),
            stop_id: "nowhere".into(),
            box_ids: vec!["B-1".into()],
            ..Default::default()
        })
        .await
        .expect_err("unknown stop");
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .runs
        .depart(pb::DepartRequest {
            run_id: "R-404".into(),
        })
        .await
        .expect_err("unknown run");
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn duress_checkin_answers_exactly_like_ok() {
    let (_dir, server, mut c) = setup().await;
    // The crew member's two PINs, set by an admin; citd keeps their hashes only.
    c.identity
        .set_crew_pins(pb::SetCrewPinsRequest {
            person_id: "E-1".into(),
            checkin_pin: "2468".into(),
            duress_pin: "1357".into(),
        })
        .await
        .expect("pins");
    let mut c = c.as_person("E-1", &["escort"]);
    let ask = |pin: &str| pb::CheckInRequest {
        run_id: "R-1".into(),
        person_id: "E-1".into(),
        pin: pin.into(),
        ..Default::default()
    };
    let ok = c.runs.check_in(ask("2468")).await.expect("ok");
    let duress = c.runs.check_in(ask("1357")).await.expect("duress");
    assert_eq!(
        ok.get_ref().encode_to_vec(),
        duress.get_ref().encode_to_vec(),
        "byte-identical answers"
    );
    assert_eq!(
        ok.metadata().keys().count(),
        duress.metadata().keys().count(),
        "no extra header betrays the alarm"
    );
    let wrong = c.runs.check_in(ask("0000")).await.expect_err("wrong PIN");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    // Once PINs are set, a code in the clear is refused, naming the field to use.
    let coded = c
        .runs
        .check_in(pb::CheckInRequest {
            run_id: "R-1".into(),
            person_id: "E-1".into(),
            code: pb::CheckInCode::Duress as i32,
            ..Default::default()
        })
        .await
        .expect_err("a code");
    assert_eq!(coded.code(), Code::InvalidArgument);
    assert!(coded.message().contains("pin"), "{coded}");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn scenario_clock_is_unimplemented_on_the_wall_clock() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    let err = c
        .clock
        .advance_clock(pb::AdvanceClockRequest::default())
        .await
        .expect_err("wall clock");
    assert_eq!(err.code(), Code::Unimplemented);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clerks_issuing_one_weapon_at_once_exactly_one_wins() {
    let (_dir, server, mut c) = setup().await;
    c.armory
        .register_weapon(pb::RegisterWeaponRequest {
            serial: "G-X".into(),
            kind: "pistol".into(),
        })
        .await
        .expect("weapon");
    let ask = |to: &str| pb::IssueWeaponRequest {
        run_id: "R-1".into(),
        serial: "G-X".into(),
        lot: "A-1".into(),
        rounds: 10,
        to: to.into(),
        gun_custodian: "GC-1".into(),
        ammo_custodian: "AC-1".into(),
        approver: "AP-1".into(),
    };
    let desk = common::signed(
        &c,
        &[
            ("GC-1", "gun_custodian"),
            ("AC-1", "ammo_custodian"),
            ("AP-1", "approver"),
        ],
    );
    let (mut a, mut b) = (desk.armory.clone(), desk.armory.clone());
    let (ra, rb) = tokio::join!(a.issue_weapon(ask("E-1")), b.issue_weapon(ask("E-2")));
    let (wins, losses): (Vec<_>, Vec<_>) = [ra, rb].into_iter().partition(|r| r.is_ok());
    assert_eq!(wins.len(), 1, "exactly one issue succeeds");
    let err = losses
        .into_iter()
        .next()
        .expect("one loser")
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(refusal_rule(&err).as_deref(), Some("R4"));
    assert!(err.message().contains("already out"), "{}", err.message());
    server.stop().await.expect("stop");
}
