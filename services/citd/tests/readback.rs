//! Reading back what was registered and recorded, through gRPC: vehicles, people, runs by state,
//! weapons and ammunition lots a page at a time, a vehicle's fixes over a time range on a run or
//! not; amending a planned run and calling it off (R7 while a weapon is out for it); a lot's
//! delivery and count, a count off the books reaching dispatch as an anomaly of no run.

mod common;

use cit_proto::v1 as pb;
use cit_scenario::model::Op;
use citd::config::ClockMode;
use citd::error::refusal_rule;
use tonic::Code;

#[tokio::test]
async fn read_backs_that_disclose_people_or_the_armory_are_denied_to_whom_the_policy_does_not_name()
{
    let dir = tempfile::tempdir().expect("tmp");
    let (server, c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    // A driver reads neither the registry of people nor the armory's books.
    let mut driver = c.as_person("D-1", &["driver"]);
    let denied = driver
        .runs
        .list_people(page(0, ""))
        .await
        .expect_err("not a driver's");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("ListPeople"), "{denied}");
    let denied = driver
        .armory
        .list_weapons(page(0, ""))
        .await
        .expect_err("not a driver's");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Nobody at all: unauthenticated.
    let mut anonymous = citd::runner::Clients::connect(
        &server.endpoint(),
        std::sync::Arc::new(citd::credentials::Credentials {
            ca: c.creds.ca.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect("connect");
    let denied = anonymous
        .runs
        .list_people(page(0, ""))
        .await
        .expect_err("nobody's");
    assert_eq!(denied.code(), Code::Unauthenticated);
    server.stop().await.expect("stop");
}

/// The runs in `status` (`ListRuns`, one page).
async fn runs_in(c: &mut citd::runner::Clients, status: pb::RunStatus) -> Vec<pb::RunSummary> {
    c.runs
        .list_runs(pb::ListRunsRequest {
            status: status as i32,
            page: None,
        })
        .await
        .expect("runs")
        .into_inner()
        .runs
}

fn page(size: u32, token: &str) -> pb::ListPage {
    pb::ListPage {
        page_size: size,
        page_token: token.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_runs_and_a_vehicles_fixes_read_back_after_a_swap() {
    let s = common::scenario("gbg-r008-breakdown-swap.json");
    let swap_t = s
        .timeline
        .iter()
        .find_map(|e| matches!(e.op, Op::SwapVehicle { .. }).then_some(e.t))
        .expect("a swap");
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) =
        common::played_on(common::config(dir.path(), ClockMode::Scenario), &s).await;

    // Vehicles, a page of one at a time, in id order.
    let first = c
        .runs
        .list_vehicles(page(1, ""))
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(first.vehicles[0].vehicle_id, "V-101");
    let second = c
        .runs
        .list_vehicles(page(1, &first.next_page_token))
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(second.vehicles[0].vehicle_id, "V-102");
    assert!(second.next_page_token.is_empty(), "the last page");
    let v = c
        .runs
        .get_vehicle(pb::GetVehicleRequest {
            vehicle_id: "V-102".into(),
        })
        .await
        .expect("vehicle")
        .into_inner();
    assert!(v.armoured && v.active_run_id.is_empty(), "{v:?}");
    let nobody = c
        .runs
        .get_person(pb::GetPersonRequest {
            person_id: "P-404".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(nobody.code(), Code::NotFound);
    let people = c
        .runs
        .list_people(page(0, ""))
        .await
        .expect("people")
        .into_inner()
        .people;
    assert_eq!(people.len(), s.people.len());

    // Runs by state: the closed run names its current vehicle.
    let closed = runs_in(&mut c, pb::RunStatus::Closed).await;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].vehicle_id, "V-102");
    let unknown = c
        .runs
        .list_runs(pb::ListRunsRequest {
            status: 42,
            page: None,
        })
        .await
        .expect_err("no such state");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(unknown.message().contains("unknown value 42"), "{unknown}");

    // The armory: every weapon back, every lot's rounds accounted for.
    let weapons = c
        .armory
        .list_weapons(page(0, ""))
        .await
        .expect("weapons")
        .into_inner()
        .weapons;
    assert_eq!(weapons.len(), s.weapons.len());
    assert!(weapons.iter().all(|w| w.in_armory));
    let lots = c
        .armory
        .list_ammo_lots(page(0, ""))
        .await
        .expect("lots")
        .into_inner()
        .lots;
    assert!(lots.iter().all(|l| l.rounds_left == l.rounds_registered));

    // A vehicle's fixes over the whole morning: the broken-down one's are the run's up to the
    // swap and on no run after it; the replacement's the other way round.
    let whole = |vehicle: &str| pb::ReadVehicleFixesRequest {
        vehicle_id: vehicle.into(),
        from: Some(citd::grpc::ts(s.start())),
        to: Some(citd::grpc::ts(s.timeline.last().expect("entries").t)),
    };
    for (vehicle, before, after) in [("V-101", "R-1", ""), ("V-102", "", "R-1")] {
        let fixes = c
            .audit
            .read_vehicle_fixes(whole(vehicle))
            .await
            .expect("fixes")
            .into_inner()
            .fixes;
        assert!(!fixes.is_empty(), "{vehicle}");
        assert!(
            fixes
                .windows(2)
                .all(|w| { w[0].fix.as_ref().map(|f| f.seq) < w[1].fix.as_ref().map(|f| f.seq) })
        );
        for f in &fixes {
            let t = citd::grpc::millis(f.fix.as_ref().and_then(|f| f.time.as_ref()).expect("t"));
            // A fix stamped in the swap's own second may come before it or after it.
            if t == swap_t {
                continue;
            }
            let expected = if t < swap_t { before } else { after };
            assert_eq!(f.run_id, expected, "{vehicle} at {}", t.0);
        }
    }
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_planned_run_is_cancelled_with_a_reason_and_not_while_a_weapon_is_out_for_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    // R-1 departs (its crew and weapons registered by the helper); R-2 is planned with a
    // crew of its own and a weapon issued to one escort.
    common::departed_run(&mut c, "R-1", "V-1").await;
    c.runs
        .register_vehicle(pb::RegisterVehicleRequest {
            vehicle_id: "V-2".into(),
            plate: "GB 2".into(),
            armoured: true,
        })
        .await
        .expect("vehicle");
    let [driver, e1, e2] = common::crew_of("R-2");
    common::register_people(
        &mut c,
        &[
            (&driver, pb::Role::Driver),
            (&e1, pb::Role::Escort),
            (&e2, pb::Role::Escort),
        ],
    )
    .await;
    c.runs
        .plan_run(pb::PlanRunRequest {
            run_id: "R-2".into(),
            vehicle_id: "V-2".into(),
            driver_id: driver.clone(),
            escort_ids: vec![e1.clone(), e2.clone()],
            route: common::route(),
            ..Default::default()
        })
        .await
        .expect("plan");
    // A new version of the plan: the route reversed is a change, the same plan again none;
    // planning it again is ALREADY_EXISTS naming what differs.
    let mut reversed = common::route();
    reversed.reverse();
    let version = |route: Vec<pb::LatLon>| pb::PlanRunRequest {
        run_id: "R-2".into(),
        vehicle_id: "V-2".into(),
        driver_id: driver.clone(),
        escort_ids: vec![e1.clone(), e2.clone()],
        route,
        ..Default::default()
    };
    c.runs
        .amend_run(version(reversed.clone()))
        .await
        .expect("amended");
    c.runs
        .amend_run(version(reversed))
        .await
        .expect("the same again: no change");
    let again = c
        .runs
        .plan_run(version(common::route()))
        .await
        .expect_err("planned already");
    assert_eq!(again.code(), Code::AlreadyExists);
    assert!(again.message().contains("route"), "{again}");
    c.armory
        .register_weapon(pb::RegisterWeaponRequest {
            serial: "G-R2".into(),
            kind: "pistol".into(),
        })
        .await
        .expect("weapon");
    common::signed(
        &c,
        &[
            ("GC-1", "gun_custodian"),
            ("AC-1", "ammo_custodian"),
            ("AP-1", "approver"),
        ],
    )
    .armory
    .issue_weapon(pb::IssueWeaponRequest {
        run_id: "R-2".into(),
        serial: "G-R2".into(),
        lot: "A-1".into(),
        rounds: 10,
        to: e1.clone(),
        gun_custodian: "GC-1".into(),
        ammo_custodian: "AC-1".into(),
        approver: "AP-1".into(),
    })
    .await
    .expect("issue");
    let cancel = |run: &str, reason: &str| pb::CancelRunRequest {
        run_id: run.into(),
        reason: reason.into(),
    };
    let no_reason = c
        .runs
        .cancel_run(cancel("R-2", ""))
        .await
        .expect_err("why?");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let out = c
        .runs
        .cancel_run(cancel("R-2", "vehicle withdrawn"))
        .await
        .expect_err("a weapon is out");
    assert_eq!(refusal_rule(&out).as_deref(), Some("R7"));
    common::signed(&c, &[("GC-1", "gun_custodian"), ("AC-1", "ammo_custodian")])
        .armory
        .return_weapon(pb::ReturnWeaponRequest {
            serial: "G-R2".into(),
            by: e1.clone(),
            gun_custodian: "GC-1".into(),
            ammo_custodian: "AC-1".into(),
            rounds_returned: 10,
        })
        .await
        .expect("return");
    c.runs
        .cancel_run(cancel("R-2", "vehicle withdrawn"))
        .await
        .expect("cancelled");
    // A departed run is closed, not cancelled; the cancelled one departs no more.
    let departed = c
        .runs
        .cancel_run(cancel("R-1", "changed our minds"))
        .await
        .expect_err("departed");
    assert_eq!(departed.code(), Code::FailedPrecondition);
    let gone = c
        .runs
        .depart(pb::DepartRequest {
            run_id: "R-2".into(),
        })
        .await
        .expect_err("cancelled");
    assert!(gone.message().contains("cancelled"), "{gone}");
    let cancelled = runs_in(&mut c, pb::RunStatus::Cancelled).await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].run_id, "R-2");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_lot_counted_off_the_books_reaches_dispatch_and_is_answered_like_any_anomaly() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    c.armory
        .register_ammo_lot(pb::RegisterAmmoLotRequest {
            lot: "A-7".into(),
            rounds: 100,
        })
        .await
        .expect("lot");
    common::register_people(&mut c, &[("AC-1", pb::Role::AmmoCustodian)]).await;
    c.armory
        .deliver_ammo(pb::DeliverAmmoRequest {
            lot: "A-7".into(),
            rounds: 50,
        })
        .await
        .expect("delivery");
    let count = |rounds_counted: u32| pb::CountAmmoLotRequest {
        lot: "A-7".into(),
        rounds_counted,
        counted_by: "AC-1".into(),
    };
    c.as_person("AC-1", &["ammo_custodian"])
        .armory
        .count_ammo_lot(count(150))
        .await
        .expect("as booked");
    // Checkpoints too come a page at a time.
    for id in ["PC-1", "PC-2", "PC-3"] {
        c.liaison
            .register_checkpoint(pb::RegisterCheckpointRequest {
                checkpoint: Some(pb::Checkpoint {
                    checkpoint_id: id.into(),
                    position: common::route().first().copied(),
                    radius_m: 100.0,
                    valid_from: Some(common::now_ts()),
                    valid_to: Some(prost_types::Timestamp {
                        seconds: common::now_ts().seconds + 3600,
                        nanos: 0,
                    }),
                }),
            })
            .await
            .expect("checkpoint");
    }
    let listed = |token: &str| pb::ListCheckpointsRequest {
        valid_at: None,
        page: Some(page(2, token)),
    };
    let first = c
        .liaison
        .list_checkpoints(listed(""))
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(first.checkpoints.len(), 2);
    let rest = c
        .liaison
        .list_checkpoints(listed(&first.next_page_token))
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(rest.checkpoints[0].checkpoint_id, "PC-3");
    assert!(rest.next_page_token.is_empty());
    let written = c
        .as_person("AC-1", &["ammo_custodian"])
        .armory
        .count_ammo_lot(count(147))
        .await
        .expect("three short")
        .into_inner()
        .log_position;
    let listed = c
        .dispatch
        .list_anomalies(pb::ListAnomaliesRequest {
            min_log_position: written,
            ..Default::default()
        })
        .await
        .expect("anomalies")
        .into_inner()
        .anomalies;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let a = &listed[0];
    assert_eq!(
        (a.kind.as_str(), a.run_id.as_str()),
        ("inventory_mismatch", "")
    );
    let mut ds = c.as_person("DS-1", &["dispatcher"]);
    ds.dispatch
        .acknowledge_anomaly(pb::AcknowledgeAnomalyRequest {
            anomaly_id: a.id.clone(),
            by: "DS-1".into(),
        })
        .await
        .expect("acknowledged");
    ds.dispatch
        .resolve_anomaly(pb::ResolveAnomalyRequest {
            anomaly_id: a.id.clone(),
            by: "DS-1".into(),
            outcome: "recounted".into(),
            note: "three rounds found in the range log".into(),
        })
        .await
        .expect("resolved");
    let lots = c
        .armory
        .list_ammo_lots(page(0, ""))
        .await
        .expect("lots")
        .into_inner()
        .lots;
    assert_eq!((lots[0].rounds_registered, lots[0].rounds_left), (100, 147));
    let history: Vec<String> = c
        .armory
        .custody_history(pb::CustodyHistoryRequest {
            subject: Some(pb::custody_history_request::Subject::Lot("A-7".into())),
        })
        .await
        .expect("history")
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(history, ["registered", "delivered", "counted", "counted"]);
    server.stop().await.expect("stop");
}
