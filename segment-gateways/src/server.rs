//! Starting and stopping a gateway (being written).

use std::net::SocketAddr;

use sekisho_policy_engine::pki::PkiFiles;
use sekisho_policy_engine::Tier;

use crate::config::Resolved;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("not built yet")]
    NotBuilt,
}

/// A gateway serving on `addr` until [`RunningGateway::shutdown`].
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub tier: Tier,
    /// The development PKI in use, when no certificates were configured.
    pub pki: Option<PkiFiles>,
}

pub async fn start(resolved: Resolved) -> Result<RunningGateway, GatewayError> {
    let _ = resolved;
    Err(GatewayError::NotBuilt)
}

impl RunningGateway {
    pub async fn shutdown(self) {}
}
