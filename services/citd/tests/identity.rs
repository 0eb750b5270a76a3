//! Identity and access over real TLS, tried as an independent client would: the role × RPC
//! matrix of the policy (every RPC of `cit.v1`, every role and nobody), bad tokens and foreign
//! certificates, units bound to their vehicles and cut off when disabled, two-person rules that
//! need every person's own credential, the caller recorded as the actor, denials recorded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut};
use cit_proto::v1 as pb;
use citd::auth::policy::Policy;
use citd::auth::{Kind, Role, devpki};
use citd::config::ClockMode;
use citd::credentials::{Bearer, Credentials};
use citd::runner::Clients;
use futures::StreamExt;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Raw protobuf bytes both ways: one client calls every RPC with an empty request.
#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Calls `path` with one empty message on `channel` (with `bearer`'s token); the status code
/// of the answer (Ok for a stream that started or a response).
async fn call(channel: &tonic::transport::Channel, bearer: &Bearer, path: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
        channel.clone(),
        bearer.clone(),
    ));
    if grpc.ready().await.is_err() {
        return Code::Unavailable;
    }
    let req = tonic::Request::new(futures::stream::iter([Vec::<u8>::new()]));
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).expect("path");
    match tokio::time::timeout(Duration::from_secs(10), grpc.streaming(req, path, Raw)).await {
        Ok(Ok(mut resp)) => {
            // A unary answer's status comes with its message or trailers.
            match tokio::time::timeout(Duration::from_millis(500), resp.get_mut().next()).await {
                Ok(Some(Err(s))) => s.code(),
                _ => Code::Ok,
            }
        }
        Ok(Err(s)) => s.code(),
        Err(_) => Code::DeadlineExceeded,
    }
}

fn denied(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_by_rpc_matrix_holds_over_real_tls() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, c) = common::serve(common::config(dir.path(), ClockMode::Scenario)).await;
    let pki = dir.path().join("pki");
    // A unit's own certificate, beside the gateway's the credentials carry.
    devpki::issue_client(&pki, Kind::Unit, "U-1").expect("unit certificate");
    let unit_creds = Credentials {
        ca: c.creds.ca.clone(),
        identity: Some((
            std::fs::read(pki.join("unit-U-1.pem")).expect("cert"),
            std::fs::read(pki.join("unit-U-1.key.pem")).expect("key"),
        )),
        ..Default::default()
    };
    let unit = unit_creds
        .channel(&server.endpoint())
        .await
        .expect("unit connects");
    let gateway = c
        .creds
        .channel(&server.endpoint())
        .await
        .expect("gateway connects");
    let anonymous = Credentials {
        ca: c.creds.ca.clone(),
        ..Default::default()
    }
    .channel(&server.endpoint())
    .await
    .expect("anonymous connects");
    let policy = Policy::default();
    let mut checked = 0;
    let rpcs = citd::auth::policy::rpc_paths();
    for path in rpcs.clone() {
        let allowed = policy.allowed(&path).expect("every RPC has an entry");
        // People: one token per role.
        for role in Role::ALL
            .into_iter()
            .filter(|r| !matches!(r, Role::Unit | Role::Gateway))
        {
            let token = c
                .creds
                .mint(&format!("P-{}", role.as_str()), &[role.as_str()]);
            let code = call(&anonymous, &Bearer::new(token.as_deref(), &[]), &path).await;
            assert_eq!(
                denied(code),
                !allowed.has(role),
                "{path} as {}: {code:?}",
                role.as_str()
            );
            checked += 1;
        }
        // Units and gateways: their certificates, no token.
        for (role, channel) in [(Role::Unit, &unit), (Role::Gateway, &gateway)] {
            let code = call(channel, &Bearer::default(), &path).await;
            assert_eq!(
                denied(code),
                !allowed.has(role),
                "{path} as {}: {code:?}",
                role.as_str()
            );
            checked += 1;
        }
        // Nobody.
        let code = call(&anonymous, &Bearer::default(), &path).await;
        assert_eq!(code, Code::Unauthenticated, "{path} anonymous");
        checked += 1;
    }
    // Ten roles of people, a unit, a gateway and nobody, for every RPC.
    assert_eq!(checked, rpcs.len() * 13);
    // A method the table does not know is denied to everyone, admin included.
    let admin = c.creds.mint("A-1", &["admin"]);
    let code = call(
        &anonymous,
        &Bearer::new(admin.as_deref(), &[]),
        "/cit.v1.Runs/NoSuchCall",
    )
    .await;
    assert_eq!(code, Code::PermissionDenied);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_tokens_and_foreign_certificates_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    let pki = dir.path().join("pki");
    let channel = c.creds.channel(&server.endpoint()).await.expect("connect");
    let message = |token: &str| {
        let channel = channel.clone();
        let token = token.to_string();
        async move {
            let mut client = pb::identity_client::IdentityClient::with_interceptor(
                channel,
                Bearer::new(Some(&token), &[]),
            );
            client
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .expect_err("refused")
        }
    };
    // Signed by a key citd does not trust (rotated out, or never in).
    let (_, other_key) = devpki::token_key(&pki, "other").expect("key");
    let other = citd::auth::token::Signer::from_pem(
        "other",
        &std::fs::read(other_key).expect("key"),
        "cit-local",
        "cit",
    )
    .expect("signer");
    let e = message(&other.mint("X", &["auditor"], 60)).await;
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("\"other\""), "{e}");
    let signing = std::fs::read(pki.join("token-local-1.key.pem")).expect("key");
    let s = |aud: &str| {
        citd::auth::token::Signer::from_pem("local-1", &signing, "cit-local", aud).expect("signer")
    };
    let e = message(&s("elsewhere").mint("X", &["auditor"], 60)).await;
    assert!(e.message().contains("audience"), "{e}");
    let now = jsonwebtoken::get_current_timestamp();
    let e = message(&s("cit").mint_at("X", &["auditor"], now - 7200, 60)).await;
    assert!(e.message().contains("expired"), "{e}");
    for garbage in ["x", "a.b.c", &"A".repeat(9000)] {
        let e = message(garbage).await;
        assert_eq!(e.code(), Code::Unauthenticated, "{garbage:.10}: {e}");
        assert!(!e.message().contains(garbage), "the token is not echoed");
    }
    // A valid token works on the same channel: WhoAmI names the person, roles and key.
    let mut me = pb::identity_client::IdentityClient::with_interceptor(
        channel.clone(),
        Bearer::new(Some(&s("cit").mint("DS-1", &["dispatcher"], 60)), &[]),
    );
    let w = me
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(
        (w.id.as_str(), w.kind.as_str(), w.via.as_str()),
        ("DS-1", "person", "token")
    );
    assert_eq!(w.roles, vec!["dispatcher".to_string()]);

    // A client certificate of another CA, and one of citd's CA without the ClientAuth usage:
    // the handshake refuses both.
    let foreign = tempfile::tempdir().expect("tmp");
    devpki::generate(foreign.path()).expect("another PKI");
    let (fc, fk) = devpki::issue_client(foreign.path(), Kind::Unit, "U-9").expect("cert");
    let (sc, sk) = devpki::issue(
        &pki,
        "server-only",
        "U-8",
        vec![rcgen::SanType::URI(
            "urn:cit:unit:U-8".try_into().expect("uri"),
        )],
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    )
    .expect("cert");
    for (cert, key) in [(fc, fk), (sc, sk)] {
        let creds = Credentials {
            ca: c.creds.ca.clone(),
            identity: Some((
                std::fs::read(&cert).expect("cert"),
                std::fs::read(&key).expect("key"),
            )),
            ..Default::default()
        };
        // Accepted, the certificate would answer WhoAmI (every principal may ask).
        let refused = match creds.channel(&server.endpoint()).await {
            Err(_) => true,
            Ok(ch) => call(&ch, &Bearer::default(), "/cit.v1.Identity/WhoAmI").await != Code::Ok,
        };
        assert!(refused, "{} accepted", cert.display());
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_reports_only_for_its_vehicle_and_a_disabled_unit_is_cut_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    common::departed_run(&mut c, "R-1", "V-1").await;
    common::departed_run(&mut c, "R-2", "V-2").await;
    let pki = dir.path().join("pki");
    devpki::issue_client(&pki, Kind::Unit, "U-1").expect("unit certificate");
    c.identity
        .bind_unit(pb::BindUnitRequest {
            unit_id: "U-1".into(),
            gateway: false,
            vehicle_ids: vec!["V-1".into()],
        })
        .await
        .expect("bound");
    // A unit is bound to one vehicle only.
    let e = c
        .identity
        .bind_unit(pb::BindUnitRequest {
            unit_id: "U-1".into(),
            gateway: false,
            vehicle_ids: vec!["V-1".into(), "V-2".into()],
        })
        .await
        .expect_err("one vehicle");
    assert_eq!(e.code(), Code::InvalidArgument);
    let creds = Arc::new(Credentials {
        ca: c.creds.ca.clone(),
        identity: Some((
            std::fs::read(pki.join("unit-U-1.pem")).expect("cert"),
            std::fs::read(pki.join("unit-U-1.key.pem")).expect("key"),
        )),
        ..Default::default()
    });
    let mut u = Clients::connect(&server.endpoint(), creds)
        .await
        .expect("unit connects");
    let (tx, mut acks) = u.fix_stream(4).await.expect("stream");
    tx.send(pb::FixBatch {
        batch_id: 1,
        fixes: vec![common::fix("V-1", 1), common::fix("V-2", 1)],
    })
    .await
    .expect("send");
    let ack = acks.next().await.expect("ack").expect("ok");
    assert_eq!(ack.accepted, 1, "{ack:?}");
    assert_eq!(ack.rejected.len(), 1);
    let r = &ack.rejected[0];
    assert_eq!((r.index, r.field.as_str()), (1, "vehicle_id"));
    assert!(
        r.reason.contains("U-1") && r.reason.contains("V-2"),
        "{}",
        r.reason
    );
    // Disabled: the open stream ends within a second, and the unit cannot come back.
    c.identity
        .disable_unit(pb::DisableUnitRequest {
            unit_id: "U-1".into(),
            reason: "stolen".into(),
        })
        .await
        .expect("disabled");
    let end = tokio::time::timeout(Duration::from_secs(1), acks.next())
        .await
        .expect("the stream ends within a second");
    assert!(
        matches!(end, Some(Err(ref s)) if s.code() == Code::Unauthenticated),
        "{end:?}"
    );
    let e = u.fix_stream(4).await.expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("disabled"), "{e}");
    server.stop().await.expect("stop");
}

/// The actor recorded with an event of `run` of `event_type` (its metadata's `actor`).
async fn actor_of(c: &mut Clients, run: &str, event_type: &str) -> serde_json::Value {
    let events = common::read_run(c, run, true).await;
    let e = events
        .iter()
        .find(|e| e.event_type == event_type)
        .unwrap_or_else(|| panic!("a {event_type}"));
    let meta: serde_json::Value = serde_json::from_str(&e.metadata_json).expect("metadata");
    meta["actor"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_person_rules_need_every_persons_own_credential_and_the_caller_is_recorded() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, mut c) = common::serve(common::config(dir.path(), ClockMode::Wall)).await;
    common::departed_run(&mut c, "R-1", "V-1").await;
    common::departed_run(&mut c, "R-2", "V-2").await;

    // The issue departed_run made went with three credentials; the event names all three.
    let actor = actor_of(&mut c, "R-1", "WeaponIssued.v1").await;
    assert_eq!(actor["id"], "GC-1");
    assert_eq!(actor["kind"], "person");
    assert_eq!(actor["via"], "token");
    let cosigners: Vec<&str> = actor["cosigners"]
        .as_array()
        .expect("co-signers")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(cosigners, ["AC-1", "AP-1"]);
    let planned = actor_of(&mut c, "R-1", "RunPlanned.v1").await;
    assert_eq!(planned["id"], "operator");
    assert!(planned["token_id"].as_str().is_some_and(|t| !t.is_empty()));

    c.armory
        .register_weapon(pb::RegisterWeaponRequest {
            serial: "G-9".into(),
            kind: "pistol".into(),
        })
        .await
        .expect("weapon");
    let issue = |approver: &str| pb::IssueWeaponRequest {
        run_id: "R-1".into(),
        serial: "G-9".into(),
        lot: "A-1".into(),
        rounds: 10,
        to: "E-1".into(),
        gun_custodian: "GC-1".into(),
        ammo_custodian: "AC-1".into(),
        approver: approver.into(),
    };
    // The approver named but not co-signing: denied, naming the place.
    let e = common::signed(&c, &[("GC-1", "gun_custodian"), ("AC-1", "ammo_custodian")])
        .armory
        .issue_weapon(issue("AP-1"))
        .await
        .expect_err("no approver's credential");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("approver"), "{e}");
    // Self-approval: the gun custodian approving their own issue is R3, whatever they hold.
    let e = c
        .cosigned(
            "GC-1",
            &["gun_custodian", "approver", "admin"],
            &[("AC-1", &["ammo_custodian"])],
        )
        .armory
        .issue_weapon(issue("GC-1"))
        .await
        .expect_err("self-approval");
    assert_eq!(citd::error::refusal_rule(&e).as_deref(), Some("R3"), "{e}");
    // The approver's place filled by a credential without the approver role: R3, recorded.
    let e = common::signed(
        &c,
        &[
            ("GC-1", "gun_custodian"),
            ("AC-1", "ammo_custodian"),
            ("AP-1", "escort"),
        ],
    )
    .armory
    .issue_weapon(issue("AP-1"))
    .await
    .expect_err("not an approver");
    assert_eq!(citd::error::refusal_rule(&e).as_deref(), Some("R3"), "{e}");
    // A return needs both custodians' credentials.
    let e = c
        .as_person("GC-1", &["gun_custodian"])
        .armory
        .return_weapon(pb::ReturnWeaponRequest {
            serial: "R-1-G-0".into(),
            by: "E-1".into(),
            gun_custodian: "GC-1".into(),
            ammo_custodian: "AC-1".into(),
            rounds_returned: 30,
        })
        .await
        .expect_err("one custodian");
    assert_eq!(e.code(), Code::PermissionDenied);
    // A cash handover in two people's names with one credential.
    let e = c
        .as_person("E-1", &["escort"])
        .runs
        .hand_over_cash_boxes(pb::HandOverCashBoxesRequest {
            run_id: "R-1".into(),
            stop_id: "S-1".into(),
            handed_by: vec!["E-1".into(), "E-2".into()],
            received_by: vec!["O-1".into()],
            ..Default::default()
        })
        .await
        .expect_err("E-2 did not sign");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("E-2"), "{e}");
    // A crew member on another run, and a check-in in another's name.
    let e = c
        .as_person("E-3", &["escort"])
        .runs
        .check_in(pb::CheckInRequest {
            run_id: "R-1".into(),
            person_id: "E-3".into(),
            code: pb::CheckInCode::Ok as i32,
            ..Default::default()
        })
        .await
        .expect_err("not R-1's crew");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .as_person("E-1", &["escort"])
        .runs
        .check_in(pb::CheckInRequest {
            run_id: "R-1".into(),
            person_id: "E-2".into(),
            code: pb::CheckInCode::Ok as i32,
            ..Default::default()
        })
        .await
        .expect_err("in E-2's name");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .as_person("E-1", &["escort"])
        .dispatch
        .get_run(pb::GetRunRequest {
            run_id: "R-2".into(),
            min_log_position: 0,
        })
        .await
        .expect_err("another run");
    assert_eq!(e.code(), Code::PermissionDenied);

    // Every denial is recorded: the last window is written at shutdown.
    server.stop().await.expect("stop");
    let store =
        cit_store::embedded::EmbeddedStore::open(dir.path(), Default::default()).expect("store");
    use cit_store::EventStore;
    let records = store
        .read_stream("security", 0, cit_store::Direction::Forwards, 100)
        .await
        .expect("read");
    let mut denied = 0;
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.data).expect("json");
        for call in v["calls"].as_array().expect("calls") {
            denied += call["count"].as_u64().expect("count");
        }
    }
    assert_eq!(denied, 6, "{records:?}");
    // And the auditor's reads: who read which run (the ReadRuns of actor_of above).
    let reads = store
        .read_stream("reads", 0, cit_store::Direction::Forwards, 100)
        .await
        .expect("read");
    let read: serde_json::Value = serde_json::from_slice(&reads[0].data).expect("json");
    assert_eq!(
        (&read["rpc"], &read["run_id"], &read["by"]),
        (
            &serde_json::json!("ReadRun"),
            &serde_json::json!("R-1"),
            &serde_json::json!("operator")
        )
    );
    EventStore::close(&store).await;
}
