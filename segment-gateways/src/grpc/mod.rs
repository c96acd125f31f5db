//! The gateway's gRPC services: a thin layer that identifies the caller from its
//! client certificate, gives each call a request id, and maps errors to statuses.

pub mod admin;
pub mod logon;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tonic::{Request, Status};

use crate::logon::LogonError;

/// Certificates whose common name is remembered; past this the memory is cleared.
const PEER_NAMES_KEPT: usize = 4096;

/// The common name of the caller's client certificate.
///
/// A device presents the same certificate on every call, and parsing it cost about
/// 12 µs a call, so names are remembered by the certificate's bytes. That is safe
/// because the name is a function of those bytes alone: TLS has already verified the
/// certificate for this connection, and a certificate is public, so the memory holds
/// nothing secret.
pub(crate) fn peer_name<T>(request: &Request<T>) -> Option<String> {
    static NAMES: OnceLock<Mutex<HashMap<Vec<u8>, String>>> = OnceLock::new();
    let certs = request.peer_certs()?;
    let der = certs.first()?.as_ref();
    let names = NAMES.get_or_init(Mutex::default);
    if let Some(name) = names.lock().unwrap_or_else(|p| p.into_inner()).get(der) {
        return Some(name.clone());
    }
    let name = sekisho_policy_engine::pki::common_name(der)?;
    let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
    if names.len() >= PEER_NAMES_KEPT {
        names.clear();
    }
    names.insert(der.to_vec(), name.clone());
    Some(name)
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
        LogonError::Random => {
            tracing::error!(error = %e, "no randomness for a challenge");
            Status::unavailable(e.to_string())
        }
        LogonError::NoSession(_) => Status::not_found(e.to_string()),
        LogonError::Decide(DecideError::UnknownDevice(_) | DecideError::OtherTier(_)) => {
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
