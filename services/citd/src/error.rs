//! One table from application errors to gRPC status codes, applied once at the service edge.
//! Details follow the gRPC richer error model (a `google.rpc.Status` in `grpc-status-details-bin`,
//! which standard clients decode: Python's `rpc_status.from_call`, grpcurl): a refusal carries
//! `cit.v1.Refusal` packed as an `Any` and a `google.rpc.ErrorInfo` naming its rule (also in the
//! `x-cit-rule` trailer), an invalid argument a `google.rpc.BadRequest` naming the field, so
//! clients never parse messages.

use cit_domain::{InputError, Refusal};
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::pb::bad_request::FieldViolation;
use tonic_types::pb::{BadRequest, ErrorInfo};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{}", .0.message)]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] cit_store::Error),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
}

pub const RULE_TRAILER: &str = "x-cit-rule";

impl From<AppError> for Status {
    fn from(e: AppError) -> Status {
        match e {
            AppError::Input(InputError::Invalid { field, reason }) => {
                let violation = BadRequest {
                    field_violations: vec![FieldViolation {
                        field: field.clone(),
                        description: reason.clone(),
                    }],
                };
                rich(
                    Code::InvalidArgument,
                    format!("{field}: {reason}"),
                    vec![any("google.rpc.BadRequest", &violation)],
                    MetadataMap::new(),
                )
            }
            AppError::Input(e @ InputError::NotFound { .. }) => Status::not_found(e.to_string()),
            AppError::Input(e @ InputError::AlreadyExists { .. }) => {
                Status::already_exists(e.to_string())
            }
            AppError::Input(InputError::WrongState(m)) => Status::failed_precondition(m),
            AppError::Refused(r) => refusal_status(&r),
            AppError::Store(cit_store::Error::WrongExpectedVersion { stream, .. }) => {
                Status::aborted(format!(
                    "{stream} was changed concurrently by another writer; read it again and retry"
                ))
            }
            AppError::Store(cit_store::Error::Closed) => {
                Status::unavailable("the event store is shutting down")
            }
            AppError::Store(e) => Status::internal(format!("event store: {e}")),
            AppError::Timeout(m) => Status::deadline_exceeded(m),
            AppError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

/// Where packed details' types live (the Any convention).
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

fn any(type_name: &str, m: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{TYPE_URL_PREFIX}{type_name}"),
        value: m.encode_to_vec(),
    }
}

/// A status whose details are a `google.rpc.Status` with the same code and message.
fn rich(code: Code, message: String, details: Vec<prost_types::Any>, md: MetadataMap) -> Status {
    let body = tonic_types::Status {
        code: code as i32,
        message: message.clone(),
        details,
    }
    .encode_to_vec();
    Status::with_details_and_metadata(code, message, body.into(), md)
}

pub fn refusal_status(r: &Refusal) -> Status {
    let rule = r.rule.as_str();
    let mut md = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(rule) {
        md.insert(RULE_TRAILER, v);
    }
    let refusal = cit_proto::v1::Refusal {
        rule: rule.to_string(),
        message: r.message.clone(),
    };
    let info = ErrorInfo {
        reason: rule.to_string(),
        domain: "cit".to_string(),
        metadata: [("rule".to_string(), rule.to_string())].into(),
    };
    rich(
        Code::FailedPrecondition,
        r.message.clone(),
        vec![
            any("cit.v1.Refusal", &refusal),
            any("google.rpc.ErrorInfo", &info),
        ],
        md,
    )
}

/// The rule a refused call names, read from a status (client side).
pub fn refusal_rule(status: &Status) -> Option<String> {
    if let Some(v) = status.metadata().get(RULE_TRAILER) {
        return v.to_str().ok().map(str::to_string);
    }
    let packed = tonic_types::Status::decode(status.details())
        .ok()
        .and_then(|s| {
            s.details
                .into_iter()
                .find(|d| d.type_url == format!("{TYPE_URL_PREFIX}cit.v1.Refusal"))
        })
        .and_then(|d| cit_proto::v1::Refusal::decode(d.value.as_slice()).ok());
    packed.map(|r| r.rule).filter(|r| !r.is_empty())
}
