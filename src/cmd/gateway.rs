//! `sekisho gateway serve`.

use std::path::Path;

use anyhow::{Context, Result};
use sekisho_gateway::config::GatewayConfig;
use sekisho_gateway::server;

use crate::Outcome;

pub async fn serve(config: Option<&Path>) -> Result<Outcome> {
    let resolved = GatewayConfig::load(config)?;
    let running = server::start(resolved)
        .await
        .context("gateway failed to start")?;
    eprintln!(
        "gateway for tier {} listening on {} (Ctrl-C to stop)",
        running.tier, running.addr
    );
    if let Some(pki) = &running.pki {
        eprintln!(
            "mutual TLS with the development PKI in {}",
            pki.dir.display()
        );
    }
    let stopped = super::stop_signal().await;
    eprintln!("stopping");
    running.shutdown().await;
    stopped.map(|()| Outcome::Ok)
}
