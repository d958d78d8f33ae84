//! What an etcd-client error means: for the caller ([`store_error`]), and for failover
//! ([`classify`]): whether the request surely never reached etcd (safe to send again to
//! another member), may have been applied (only idempotent requests are sent again), or
//! was answered (no other member would answer differently).

use etcd_client::Error as E;
use tonic::Code;

use crate::store::{LeaseId, StoreError};

/// Whether a failed request may be sent to another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// It never reached a member that could act on it: no connection could be made, or
    /// the member refused it up front because it has no leader (`require_leader`).
    NotSent,
    /// It may or may not have been applied: the connection broke or the member stopped
    /// answering after it was sent, or etcd itself said the outcome is unknown
    /// ("request timed out", "leader changed").
    Unknown,
    /// etcd answered it (a missing lease, a compacted revision, a refused permission):
    /// another member would say the same.
    Answered,
}

/// Classifies a failed request; see [`Failure`].
pub(super) fn classify(error: &E) -> Failure {
    match error {
        E::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("no leader") {
                // With `require_leader`, a member without a leader refuses every request
                // in its interceptor, before anything is proposed.
                return Failure::NotSent;
            }
            let transport = std::error::Error::source(status).is_some();
            match status.code() {
                _ if never_connected(error) => Failure::NotSent,
                // etcd's own "request timed out" and "leader changed" are Unavailable too.
                Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => Failure::Unknown,
                // A broken connection surfaces as Unknown with the I/O error as source;
                // without one, Unknown is etcd's answer to something it could not map.
                Code::Unknown if transport => Failure::Unknown,
                // Everything else (InvalidArgument, NotFound, PermissionDenied, OutOfRange
                // for a compacted revision, FailedPrecondition) is an answer.
                _ => Failure::Answered,
            }
        }
        E::TransportError(_) | E::IoError(_) => {
            if never_connected(error) {
                Failure::NotSent
            } else {
                Failure::Unknown
            }
        }
        // The keep-alive or watch stream broke; a missing lease is an answer.
        E::LeaseKeepAliveError(message) if message.contains("lease not found") => Failure::Answered,
        E::LeaseKeepAliveError(_) | E::WatchError(_) => Failure::Unknown,
        _ => Failure::Answered,
    }
}

/// Whether the error is a failure to connect: the request was never written to a socket.
/// tonic reports it as a status (or transport error) whose sources say so.
fn never_connected(error: &E) -> bool {
    let chain = ErrorChain(error).to_string();
    ["tcp connect error", "error trying to connect", "Connection refused", "connection refused"]
        .iter()
        .any(|needle| chain.contains(needle))
}

/// Maps an etcd-client error: lost connections and an etcd that cannot serve (no leader,
/// timeouts) are `Unavailable`; an unknown lease is `LeaseNotFound(lease)`.
pub(super) fn store_error(error: etcd_client::Error, lease: LeaseId) -> StoreError {
    match error {
        E::GRpcStatus(status) if status.message().contains("requested lease not found") => {
            StoreError::LeaseNotFound(lease)
        }
        // etcd's own refusal, or its gRPC server's for a message past its receive limit.
        E::GRpcStatus(status)
            if status.message().contains("request is too large") || status.message().contains("larger than max") =>
        {
            StoreError::TooLarge(format!("etcd: {}", status.message()))
        }
        E::GRpcStatus(status) => {
            let message = format!("etcd: {}", status.message());
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => StoreError::Unavailable(message),
                // Transport failures surface as Unknown with the I/O error as source.
                Code::Unknown if std::error::Error::source(&status).is_some() => {
                    StoreError::Unavailable(format!("etcd: {status}"))
                }
                _ => StoreError::Internal(message),
            }
        }
        // etcd-client's own message for a keep-alive answered with TTL 0.
        E::LeaseKeepAliveError(message) if message.contains("lease not found") => StoreError::LeaseNotFound(lease),
        e @ (E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_)) => {
            StoreError::Unavailable(format!("etcd: {e}"))
        }
        e => StoreError::Internal(format!("etcd: {e}")),
    }
}

/// An error and its sources, one after another: a TLS failure is three levels down in
/// etcd-client's transport error.
pub(super) struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
