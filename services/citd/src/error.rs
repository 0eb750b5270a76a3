//! One table from application errors to gRPC status codes, applied once at the service edge.
//! A refusal carries its rule in the `x-cit-rule` trailer and as `cit.v1.Refusal` details, so
//! clients never parse messages.

use cit_domain::{InputError, Refusal};
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

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
                Status::invalid_argument(format!("{field}: {reason}"))
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

pub fn refusal_status(r: &Refusal) -> Status {
    let mut md = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(r.rule.as_str()) {
        md.insert(RULE_TRAILER, v);
    }
    let details = cit_proto::v1::Refusal {
        rule: r.rule.as_str().to_string(),
        message: r.message.clone(),
    }
    .encode_to_vec();
    Status::with_details_and_metadata(
        Code::FailedPrecondition,
        r.message.clone(),
        details.into(),
        md,
    )
}

/// The rule a refused call names, read from a status (client side).
pub fn refusal_rule(status: &Status) -> Option<String> {
    if let Some(v) = status.metadata().get(RULE_TRAILER) {
        return v.to_str().ok().map(str::to_string);
    }
    cit_proto::v1::Refusal::decode(status.details())
        .ok()
        .map(|r| r.rule)
        .filter(|r| !r.is_empty())
}
