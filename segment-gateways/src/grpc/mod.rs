//! The gateway's gRPC services: a thin layer that identifies the caller from its
//! client certificate, gives each call a request id, and maps errors to statuses.

pub mod admin;
pub mod logon;

use std::sync::atomic::{AtomicU64, Ordering};

use tonic::{Request, Status};

use crate::logon::LogonError;

/// The common name of the caller's client certificate.
pub(crate) fn peer_name<T>(request: &Request<T>) -> Option<String> {
    request.peer_certs().and_then(|certs| {
        certs
            .first()
            .and_then(|c| sekisho_policy_engine::pki::common_name(c.as_ref()))
    })
}

pub(crate) fn request_id(given: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if given.is_empty() {
        format!(
            "gw-{:x}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    } else {
        given.chars().take(128).collect()
    }
}

pub(crate) fn status(e: LogonError) -> Status {
    use crate::decide::DecideError;
    match &e {
        LogonError::BadRequest(_) => Status::invalid_argument(e.to_string()),
        LogonError::DeviceNotRegistered { .. } | LogonError::DeviceMismatch { .. } => {
            Status::permission_denied(e.to_string())
        }
        LogonError::RateLimited(_) | LogonError::Busy => Status::resource_exhausted(e.to_string()),
        LogonError::NoSession(_) => Status::not_found(e.to_string()),
        LogonError::Decide(DecideError::UnknownDevice(_)) => {
            Status::failed_precondition(e.to_string())
        }
        LogonError::Decide(_) => Status::unavailable(e.to_string()),
        LogonError::Journal(_) => {
            tracing::error!(error = %e, "audit journal failed");
            Status::internal(
                "the gateway could not record this in its audit journal, so it does not answer; see the gateway log",
            )
        }
        LogonError::Credentials(_) | LogonError::Store(_) => {
            tracing::error!(error = %e, "gateway store failed");
            Status::internal("the gateway's credential store failed; see the gateway log")
        }
    }
}
