//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the
//! HTTP status its clients expect (their libraries raise a typed exception per status).
//! Every refusal of the job API (a gRPC status with its `BadRequest` field) is turned
//! into one here, so the checks stay the job API's own.

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use tonic::{Code, Status};
use tonic_types::StatusExt;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    /// The request parameter at fault, as the request named it.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is wrong; `param` names the parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// 404 for a model nobody serves.
    pub fn unknown_model(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "not_found_error",
            param: None,
            code: None,
        }
    }

    /// 413: a body over the limit, refused before it is read.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is larger than {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, [(header::CONTENT_TYPE, "application/json")], self.body().to_string()).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The OpenAI parameter a job-API field stands for (`generate.max_tokens` is
/// `max_tokens`); `None` for fields the HTTP request has no name for.
pub type FieldNames = fn(&str) -> Option<String>;

impl ApiError {
    /// A job-API refusal, its field renamed by `names`.
    pub fn from_status(status: &Status, names: FieldNames) -> ApiError {
        let param = status
            .get_details_bad_request()
            .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()))
            .and_then(|field| names(&field).or(Some(field)));
        let (http, kind, code) = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found_error", None),
            Code::AlreadyExists => (StatusCode::CONFLICT, "invalid_request_error", None),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "authentication_error", Some("invalid_api_key")),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error", None),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some("rate_limit_exceeded")),
            Code::FailedPrecondition | Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "server_error", None),
            Code::Cancelled => (StatusCode::from_u16(499).expect("a valid status"), "server_error", None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        };
        let message = match &param {
            // The job API names its field in the message too; say it in the request's terms.
            Some(param) => status
                .get_details_bad_request()
                .and_then(|bad| bad.field_violations.first().map(|v| format!("{param}: {}", v.description)))
                .unwrap_or_else(|| status.message().to_string()),
            None => status.message().to_string(),
        };
        ApiError { status: http, message, kind, param, code }
    }
}

/// A job-API refusal that names no request parameter.
impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        ApiError::from_status(&status, |_| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(field: &str) -> Option<String> {
        field.strip_prefix("generate.").map(str::to_string)
    }

    #[test]
    fn a_bad_field_is_a_400_naming_the_requests_parameter() {
        let status: Status = deephardway::errors::invalid_field("generate.max_tokens", "is 9999999; at most 4096");
        let error = ApiError::from_status(&status, names);
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.param.as_deref(), Some("max_tokens"));
        assert_eq!(error.message, "max_tokens: is 9999999; at most 4096");
        let body = error.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "max_tokens");
        assert!(body["error"]["code"].is_null());
    }

    #[test]
    fn statuses_map_to_what_openai_clients_expect() {
        let http = |status: Status| ApiError::from_status(&status, names).status.as_u16();
        assert_eq!(http(Status::resource_exhausted("queue full")), 429);
        assert_eq!(http(Status::unauthenticated("no key")), 401);
        assert_eq!(http(Status::permission_denied("viewer")), 403);
        assert_eq!(http(Status::not_found("job")), 404);
        assert_eq!(http(Status::unavailable("etcd")), 503);
        assert_eq!(http(Status::internal("bug")), 500);
    }
}
