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
    let stopped = stop_signal().await;
    eprintln!("stopping");
    running.shutdown().await;
    stopped.map(|()| Outcome::Ok)
}

/// Ctrl-C, or SIGTERM (a service manager stopping the gateway).
async fn stop_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot wait for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
