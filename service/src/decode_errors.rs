//! A request whose body does not decode as the method's protobuf message is the
//! client's mistake: INVALID_ARGUMENT, saying so. tonic answers it with INTERNAL
//! ("failed to decode Protobuf message: …", following grpc's table for a *response*
//! that does not parse), which reads as the server's fault and invites retries.
//!
//! tonic decodes the request of a unary or server-streaming call before the handler
//! runs, and fails the call with a trailers-only response: the status is in the
//! response's headers. This layer, around the gRPC routes (inside grpc-web's
//! translation, so both protocols get it), rewrites exactly that status. A handler's
//! own INTERNAL errors never start with prost's message, so they are left alone; a
//! client-streaming or bidirectional handler that returns its stream's decode error
//! before answering (the worker stream's first message) gets the same treatment.

use axum::{extract::Request, middleware::Next, response::Response};
use http::HeaderMap;
use tonic::{Code, Status};

/// What prost's `DecodeError` says first, and so tonic's status for it.
const DECODE_ERROR: &str = "failed to decode Protobuf message";

/// The axum middleware: see the module's comment.
pub async fn invalid_argument(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    remap(response.headers_mut());
    response
}

/// Rewrites a trailers-only INTERNAL decode failure to INVALID_ARGUMENT.
fn remap(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else { return };
    if status.code() != Code::Internal || !status.message().starts_with(DECODE_ERROR) {
        return;
    }
    let detail = status.message()[DECODE_ERROR.len()..].trim_start_matches(':').trim();
    let rewritten = Status::invalid_argument(format!(
        "the request did not decode as the method's protobuf message ({detail}); \
         check that the client sends this API's messages"
    ));
    headers.remove(Status::GRPC_MESSAGE);
    if rewritten.add_header(headers).is_err() {
        // Only an unencodable message could fail; the code alone is still right.
        headers.insert(Status::GRPC_STATUS, http::HeaderValue::from_static("3"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    #[test]
    fn a_decode_failure_becomes_invalid_argument() {
        let mut headers = headers_of(Status::internal("failed to decode Protobuf message: invalid wire type value: 7"));
        remap(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("did not decode") && status.message().contains("invalid wire type"));
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for status in [
            Status::internal("corrupt job record /dhw/jobs/x: failed to decode Protobuf message: x"),
            Status::not_found("failed to decode Protobuf message"),
            Status::ok(""),
        ] {
            let mut headers = headers_of(status.clone());
            remap(&mut headers);
            assert_eq!(headers, headers_of(status));
        }
    }
}
