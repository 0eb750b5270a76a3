//! The gRPC edge: one module per service of `proto/cit/v1`. Requests are validated and turned
//! into domain commands here (once), and application errors become statuses through
//! [`crate::error`].

pub mod armory;
pub mod audit;
pub mod clock;
pub mod dispatch;
pub mod identity;
pub mod liaison;
pub mod runs;
pub mod telemetry;
pub mod timing;

use cit_domain::event::{Anomaly, Severity};
use cit_domain::{InputError, LatLon, Millis};
use cit_proto::v1 as pb;
use prost_types::Timestamp;

use crate::auth::Caller;
use crate::auth::scope::{Place, Unproven};

pub fn ts(m: Millis) -> Timestamp {
    Timestamp {
        seconds: m.0.div_euclid(1000),
        nanos: (m.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A timestamp in milliseconds; out of range saturates (a client's seconds can be anything:
/// found by tests/fuzz.rs, where `seconds * 1000` overflowed), so the validation that follows
/// refuses it as a time, not as a crash.
pub fn millis(t: &Timestamp) -> Millis {
    Millis(
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000),
    )
}

pub fn required_time(t: Option<&Timestamp>, field: &str) -> Result<Millis, InputError> {
    t.map(millis)
        .ok_or_else(|| InputError::invalid(field, "is required"))
}

/// An enum field's value, read by name: a number the API does not define is `unknown value N`
/// (its names are in the proto and the reflection service), not taken for the unset value. The
/// caller then refuses the unset value (0) as `is required` where the field is.
pub fn enum_value<E: TryFrom<i32>>(field: &str, v: i32) -> Result<E, InputError> {
    E::try_from(v).map_err(|_| InputError::invalid(field, format!("unknown value {v}")))
}

pub use crate::auth::layer::caller;

/// A denial decided in a handler (a scope check), counted and recorded with the layer's.
pub fn denied(
    app: &crate::app::App,
    caller: &Caller,
    rpc: &str,
    status: tonic::Status,
) -> tonic::Status {
    app.denials.record(
        Some(&caller.principal),
        rpc,
        &crate::auth::layer::Denial {
            code: status.code(),
            cause: "scope",
            message: status.message().to_string(),
        },
        None,
    );
    status
}

/// [`crate::auth::scope::run_access`], its denial recorded.
pub async fn run_access(
    app: &crate::app::App,
    caller: &Caller,
    rpc: &str,
    run_id: &str,
) -> Result<(), tonic::Status> {
    crate::auth::scope::run_access(app, caller, run_id)
        .await
        .map_err(|s| denied(app, caller, rpc, s))
}

/// [`crate::auth::scope::acting`], its denial recorded.
pub fn acting(
    app: &crate::app::App,
    caller: &Caller,
    rpc: &str,
    field: &str,
    value: &str,
) -> Result<String, tonic::Status> {
    crate::auth::scope::acting(caller, field, value).map_err(|s| denied(app, caller, rpc, s))
}

/// A two-person rule's credentials ([`crate::auth::scope::prove`]): a person named without a
/// credential is denied; a credential without the place's role is a refusal under `rule`,
/// recorded like the rules' own.
#[allow(clippy::too_many_arguments)]
pub async fn two_person(
    app: &crate::app::App,
    caller: &Caller,
    rpc: &str,
    cmd: &cit_domain::Command,
    rule: cit_domain::Rule,
    run_id: Option<&str>,
    subject: &str,
    places: &[Place<'_>],
) -> Result<(), tonic::Status> {
    match crate::auth::scope::prove(caller, places) {
        Ok(()) => Ok(()),
        Err(Unproven::Missing(m)) => Err(denied(
            app,
            caller,
            rpc,
            tonic::Status::permission_denied(m),
        )),
        Err(Unproven::WrongRole(m)) => Err(app
            .refuse(
                cmd,
                rule,
                run_id,
                subject,
                format!("{}: {m}", rule.as_str()),
                caller,
            )
            .await
            .into()),
    }
}

/// Most entries of one page of a list.
pub const MAX_PAGE: usize = 1000;

/// One page of `entries` (any order) by their ids: those after `page.page_token`, in id order, at
/// most `page.page_size` (default 100, at most [`MAX_PAGE`]); with the next page's token, empty
/// on the last.
pub fn paged<'a, T>(
    page: Option<&pb::ListPage>,
    entries: impl Iterator<Item = (&'a str, T)>,
) -> (Vec<T>, String) {
    let (size, after) = match page {
        Some(p) if p.page_size > 0 => ((p.page_size as usize).min(MAX_PAGE), p.page_token.as_str()),
        Some(p) => (100, p.page_token.as_str()),
        None => (100, ""),
    };
    let mut rest: Vec<(&str, T)> = entries.filter(|(id, _)| *id > after).collect();
    rest.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let next = match rest.get(size) {
        Some(_) => rest[size - 1].0.to_string(),
        None => String::new(),
    };
    rest.truncate(size);
    (rest.into_iter().map(|(_, t)| t).collect(), next)
}

pub fn latlon(p: Option<&pb::LatLon>, field: &str) -> Result<LatLon, InputError> {
    let p = p.ok_or_else(|| InputError::invalid(field, "is required"))?;
    LatLon::new(p.lat, p.lon, field)
}

/// Degrees as integer 1e-7 degrees (about 1 cm), the compact position of `RunsMoved`.
pub fn e7(deg: f64) -> i32 {
    (deg * 1e7).round() as i32
}

/// A compact `RunsMoved` position back in degrees.
pub fn from_e7(lat_e7: i32, lon_e7: i32) -> LatLon {
    LatLon {
        lat: f64::from(lat_e7) / 1e7,
        lon: f64::from(lon_e7) / 1e7,
    }
}

pub fn pb_latlon(p: LatLon) -> pb::LatLon {
    pb::LatLon {
        lat: p.lat,
        lon: p.lon,
    }
}

pub fn write_result(position: u64) -> pb::WriteResult {
    pb::WriteResult {
        log_position: position,
    }
}

pub fn severity_to_pb(s: Severity) -> pb::Severity {
    match s {
        Severity::Low => pb::Severity::Low,
        Severity::Medium => pb::Severity::Medium,
        Severity::High => pb::Severity::High,
        Severity::Critical => pb::Severity::Critical,
    }
}

pub fn severity_from_pb(s: i32) -> Option<Severity> {
    match pb::Severity::try_from(s).ok()? {
        pb::Severity::Unspecified => None,
        pb::Severity::Low => Some(Severity::Low),
        pb::Severity::Medium => Some(Severity::Medium),
        pb::Severity::High => Some(Severity::High),
        pb::Severity::Critical => Some(Severity::Critical),
    }
}

pub fn anomaly_to_pb(e: &crate::anomalies::Entry) -> pb::Anomaly {
    let a: &Anomaly = &e.anomaly;
    pb::Anomaly {
        id: a.id.clone(),
        kind: a.kind.as_str().to_string(),
        rule: a.kind.watch().to_string(),
        run_id: a.run_id.clone(),
        vehicle_id: a.vehicle_id.clone(),
        at: Some(ts(a.at)),
        severity: severity_to_pb(a.severity) as i32,
        summary: a.summary.clone(),
        position: a.position.map(pb_latlon),
        evidence_json: a.evidence.to_string(),
        status: match e.status {
            crate::anomalies::Status::Open => pb::AnomalyStatus::Open,
            crate::anomalies::Status::Acknowledged => pb::AnomalyStatus::Acknowledged,
            crate::anomalies::Status::Resolved => pb::AnomalyStatus::Resolved,
        } as i32,
        acknowledged_by: e
            .acknowledged
            .as_ref()
            .map(|a| a.0.clone())
            .unwrap_or_default(),
        acknowledged_at: e.acknowledged.as_ref().map(|a| ts(a.1)),
        resolved_by: e.resolved.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
        resolved_at: e.resolved.as_ref().map(|r| ts(r.1)),
        resolution: e
            .resolved
            .as_ref()
            .map(|r| {
                if r.3.is_empty() {
                    r.2.clone()
                } else {
                    format!("{}: {}", r.2, r.3)
                }
            })
            .unwrap_or_default(),
        announcements: e.announced.1,
    }
}
