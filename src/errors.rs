//! Errors as the API states them (AIP-193): a bad request is INVALID_ARGUMENT whose
//! message names the field (`generate.max_tokens: …`) and whose details carry a
//! `google.rpc.BadRequest` with the same field path, so that clients in any language
//! can point at the field without parsing text. A failed job keeps the status it failed
//! with, details included, as a `google.rpc.Status` in its `failed` event.

use prost::Message;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.Status` message, as jobs carry it.
pub use tonic_types::pb::Status as RpcStatus;

/// A request field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `train.hidden_sizes[2]`.
    pub field: String,
    /// What is wrong with it, for a person.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

impl std::fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

impl std::error::Error for FieldViolation {}

impl From<FieldViolation> for tonic::Status {
    fn from(v: FieldViolation) -> Self {
        field_status(Code::InvalidArgument, v.field, v.description)
    }
}

/// INVALID_ARGUMENT for one bad field, with its `google.rpc.BadRequest` detail.
pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> tonic::Status {
    FieldViolation::new(field, description).into()
}

/// A status with another code that names the field the same way (the message
/// `field: description`, a `google.rpc.BadRequest` detail), for failures caused by one
/// field that are not INVALID_ARGUMENT: a folder the worker may not read
/// (PERMISSION_DENIED), a dataset that is gone (NOT_FOUND).
pub fn field_status(code: Code, field: impl Into<String>, description: impl Into<String>) -> tonic::Status {
    let (field, description) = (field.into(), description.into());
    tonic::Status::with_error_details(
        code,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The `google.rpc.Status` of a gRPC status: its code, message and details (the
/// details a status was made with already are a `google.rpc.Status`, whose code and
/// message the status's own win over).
pub fn to_rpc_status(status: &tonic::Status) -> RpcStatus {
    let details = RpcStatus::decode(status.details()).map(|s| s.details).unwrap_or_default();
    RpcStatus { code: status.code() as i32, message: status.message().to_string(), details }
}

/// A gRPC status from a `google.rpc.Status`, details included.
pub fn from_rpc_status(status: &RpcStatus) -> tonic::Status {
    tonic::Status::with_details(Code::from_i32(status.code), status.message.clone(), status.encode_to_vec().into())
}

/// The fields a status's `google.rpc.BadRequest` detail names, if it has one.
pub fn violations(status: &tonic::Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| FieldViolation::new(v.field, v.description)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_violation_round_trips_through_a_job_failure() {
        let status = invalid_field("generate.max_tokens", "must be at most 2048");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "generate.max_tokens: must be at most 2048");
        let stored = to_rpc_status(&status);
        assert_eq!(stored.code, Code::InvalidArgument as i32);
        assert_eq!(stored.details.len(), 1);
        let back = from_rpc_status(&stored);
        assert_eq!(back.message(), status.message());
        assert_eq!(violations(&back), vec![FieldViolation::new("generate.max_tokens", "must be at most 2048")]);
    }

    #[test]
    fn a_plain_status_keeps_code_and_message() {
        let stored = to_rpc_status(&tonic::Status::not_found("no such job"));
        assert_eq!(
            (stored.code, stored.message.as_str(), stored.details.len()),
            (Code::NotFound as i32, "no such job", 0)
        );
    }
}
