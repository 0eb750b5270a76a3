//! Fuzzing, bounded for CI: property tests (proptest, stable Rust) over every decoder and
//! validator that takes bytes from outside — bearer tokens, client certificates' identity, fix
//! batches and each fix, command requests, scenario files, the configuration file. Each must
//! answer with a value or an error, never panic, and what it accepts must be in range.
//! `PROPTEST_CASES=100000 cargo test -p citd --test fuzz --release` runs a longer campaign;
//! a finding is kept below as a regression case.

use cit_proto::v1 as pb;
use citd::auth::token::{TokenConfig, Verifier};
use proptest::prelude::*;
use prost::Message;

fn verifier() -> Verifier {
    let dir = tempfile::tempdir().expect("tmp");
    let (key, _) = citd::auth::devpki::token_key(dir.path(), "k1").expect("key");
    Verifier::load(&TokenConfig {
        keys: vec![key],
        ..TokenConfig::default()
    })
    .expect("verifier")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

proptest! {
    /// Any string as a token: refused, never a panic (and never admitted: no key signed it).
    #[test]
    fn tokens_of_any_text_are_refused(token in ".{0,600}") {
        let v = verifier();
        prop_assert!(v.verify_as(&token, false).is_err());
        prop_assert!(v.verify_as(&token, true).is_err());
    }

    /// Three base64url segments of any JSON-ish bytes: the JWT shape without a signature.
    #[test]
    fn tokens_shaped_like_jwts_are_refused(
        header in prop::collection::vec(any::<u8>(), 0..200),
        claims in prop::collection::vec(any::<u8>(), 0..400),
        sig in prop::collection::vec(any::<u8>(), 0..80),
        alg in prop::sample::select(vec!["EdDSA", "ES256", "HS256", "none", "RS256"]),
    ) {
        let v = verifier();
        let forged_header = format!(r#"{{"alg":"{alg}","kid":"k1"}}"#);
        for h in [b64(&header), b64(forged_header.as_bytes())] {
            let token = format!("{h}.{}.{}", b64(&claims), b64(&sig));
            prop_assert!(v.verify_as(&token, false).is_err());
        }
    }

    /// Any bytes as a client certificate: no identity, never a panic.
    #[test]
    fn certificates_of_any_bytes_name_no_unit(der in prop::collection::vec(any::<u8>(), 0..2000)) {
        let cert = rustls::pki_types::CertificateDer::from(der);
        prop_assert!(citd::auth::tls::principal_of(&cert).is_err());
    }

    /// Any bytes as a fix batch: decoded or refused; each decoded fix validated or rejected
    /// with a field, and what passes is in range.
    #[test]
    fn fix_batches_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
        if let Ok(batch) = pb::FixBatch::decode(bytes.as_slice()) {
            for f in &batch.fixes {
                check_fix(f)?;
            }
        }
    }

    /// Fixes with any values, NaN and infinities included.
    #[test]
    fn fixes_of_any_values(
        seq in any::<u64>(),
        seconds in any::<i64>(),
        nanos in any::<i32>(),
        lat in any::<f64>(),
        lon in any::<f64>(),
        speed in any::<f64>(),
        heading in any::<f64>(),
        accuracy in any::<f64>(),
        vehicle in ".{0,40}",
    ) {
        let f = pb::Fix {
            vehicle_id: vehicle,
            seq,
            time: Some(prost_types::Timestamp { seconds, nanos }),
            lat,
            lon,
            speed_mps: speed,
            heading_deg: heading,
            accuracy_m: accuracy,
            ..Default::default()
        };
        check_fix(&f)?;
    }

    /// Any bytes as a plan: decoded and turned into a command, or refused with a field.
    #[test]
    fn plan_requests_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        if let Ok(req) = pb::PlanRunRequest::decode(bytes.as_slice())
            && let Err(e) = citd::grpc::runs::plan_command(req)
        {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Any bytes as each command request: the decoders answer, never panic.
    #[test]
    fn command_requests_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1000)) {
        let b = bytes.as_slice();
        let _ = pb::IssueWeaponRequest::decode(b);
        let _ = pb::ReturnWeaponRequest::decode(b);
        let _ = pb::HandOverCashBoxesRequest::decode(b);
        let _ = pb::SwapVehicleRequest::decode(b);
        let _ = pb::CheckInRequest::decode(b);
        let _ = pb::ReportIncidentRequest::decode(b);
        let _ = pb::RegisterCheckpointRequest::decode(b);
        let _ = pb::BindUnitRequest::decode(b);
        let _ = pb::SetCrewPinsRequest::decode(b);
        let _ = pb::WatchFleetRequest::decode(b);
    }

    /// Any text as a scenario file: parsed or refused with a reason.
    #[test]
    fn scenario_files_of_any_text(text in ".{0,800}") {
        if let Err(e) = cit_scenario::Scenario::parse(&text, "fuzz") {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Scenario-shaped JSON with any values in the places that matter.
    #[test]
    fn scenario_files_with_any_values(
        t in ".{0,30}",
        lat in any::<f64>(),
        seq in any::<i64>(),
        op in prop::sample::select(vec!["fix", "checkin", "tick", "plan_run", "nonsense"]),
    ) {
        let text = format!(
            r#"{{"format":"cit-scenario/1","name":"f","vehicles":[],"people":[],"runs":[],
               "timeline":[{{"t":{t:?},"op":"{op}","vehicle":"V","seq":{seq},"lat":{lat},"lon":11.9}}],
               "expect":{{"anomalies":[],"refusals":[]}}}}"#
        );
        let _ = cit_scenario::Scenario::parse(&text, "fuzz");
    }

    /// Any text as the configuration file: loaded or refused naming the problem.
    #[test]
    fn configuration_files_of_any_text(text in ".{0,400}") {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("cit.toml");
        std::fs::write(&path, &text).expect("write");
        if let Ok(c) = citd::config::Config::from_file(&path) {
            let _ = c.validate();
        }
    }
}

fn check_fix(f: &pb::Fix) -> Result<(), TestCaseError> {
    let now = citd::clock::wall_now();
    match citd::grpc::telemetry::validate(f, now, true) {
        Ok(fix) => {
            prop_assert!((-90.0..=90.0).contains(&fix.lat) && (-180.0..=180.0).contains(&fix.lon));
            prop_assert!(fix.accuracy_m > 0.0 && fix.accuracy_m <= 1000.0);
            prop_assert!((0.0..=100.0).contains(&fix.speed_mps));
            prop_assert!(fix.seq > 0);
        }
        Err((field, reason)) => prop_assert!(!field.is_empty() && !reason.is_empty()),
    }
    Ok(())
}

/// Findings kept as regression cases.
#[test]
fn regressions() {
    let v = verifier();
    // A header that is JSON but not an object, and a kid that is not a string.
    for token in [
        format!("{}.e30.", b64(b"[]")),
        format!("{}.e30.", b64(br#"{"alg":"EdDSA","kid":7}"#)),
        format!("{}..", b64(br#"{"alg":"EdDSA","kid":"k1"}"#)),
    ] {
        assert!(v.verify_as(&token, false).is_err(), "{token}");
    }
    // Seconds far out of range: `seconds * 1000` overflowed (a panic in a debug build, a
    // wrapped time in release); now saturated and refused as a time.
    for seconds in [i64::MAX, i64::MIN, i64::MAX / 999] {
        let f = pb::Fix {
            vehicle_id: "V".into(),
            seq: 1,
            time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            lat: 57.7,
            lon: 11.9,
            accuracy_m: 5.0,
            ..Default::default()
        };
        let r = citd::grpc::telemetry::validate(&f, citd::clock::wall_now(), true);
        assert!(matches!(r, Err(("time", _))), "{seconds}: {r:?}");
    }
}
