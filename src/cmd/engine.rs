//! `sekisho engine serve`.

use std::path::Path;

use anyhow::{Context, Result};
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::server;

use crate::Outcome;

pub async fn serve(config: Option<&Path>) -> Result<Outcome> {
    let config = EngineConfig::load(config)?;
    let running = server::start(&config)
        .await
        .context("engine failed to start")?;
    eprintln!(
        "sekisho engine listening on {} (Ctrl-C to stop)",
        running.addr
    );
    if let Some(pki) = &running.pki {
        eprintln!("mutual TLS with the generated PKI in {}", pki.dir.display());
    }
    let stopped = super::stop_signal().await;
    eprintln!("stopping");
    running.shutdown().await?;
    stopped.map(|()| Outcome::Ok)
}
