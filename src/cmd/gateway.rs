//! `sekisho gateway serve`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sekisho_gateway::config::{GatewayConfig, Resolved};
use sekisho_gateway::server;
use sekisho_policy_engine::pki::PkiFiles;
use sekisho_policy_engine::transport::is_loopback_host;
use tonic::codegen::http::Uri;

use crate::Outcome;

/// How long to wait for a loopback engine to accept a TCP connection: one that
/// runs answers at once.
const ENGINE_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn serve(config: Option<&Path>, pki_dir: Option<&Path>) -> Result<Outcome> {
    let mut resolved = GatewayConfig::load(config)?;
    if let Some(dir) = pki_dir {
        resolved.config.tls.generate_dir = dir.to_path_buf();
    }
    let shown = config.map_or("(no config file)".to_string(), |p| p.display().to_string());
    let new_ca = check_engine_pki(&resolved, &shown).await?;
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
        if new_ca {
            eprintln!(
                "warning: there was no development CA in {dir}, so a NEW one was created there. \
                 An engine started from another directory has its own CA and will not trust this \
                 gateway: start the engine from {parent}, or stop this gateway and give --pki-dir \
                 (or tls.generate_dir) the engine's sekisho-tls directory",
                dir = pki.dir.display(),
                parent = pki
                    .dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .display(),
            );
        }
    }
    let stopped = super::stop_signal().await;
    eprintln!("stopping");
    running.shutdown().await;
    stopped.map(|()| Outcome::Ok)
}

/// Whether the gateway may go on to use the development PKI in `tls.generate_dir`
/// for its calls to the engine, and whether it will create a new CA there.
///
/// The gateway creates a missing development PKI, which the engine does not trust
/// unless it generated that very CA. Created silently, mutual TLS with the engine
/// then fails at the first logon with a handshake error far from its cause. So a
/// missing CA is refused whenever it cannot be the engine's: the engine is on
/// another host, or already answers on this one (it runs with a CA from elsewhere).
/// Only a loopback engine that is not running yet, and may be started from the same
/// directory to adopt the new CA, lets it be created (the caller warns).
async fn check_engine_pki(resolved: &Resolved, shown: &str) -> Result<bool> {
    let config = &resolved.config;
    // Configured engine certificates, or no TLS to the engine at all (http:// to a
    // loopback test bed): the development CA is not what the engine checks.
    if config.engine.ca.is_some() || config.engine.url.starts_with("http://") {
        return Ok(false);
    }
    let pki = PkiFiles {
        dir: config.tls.generate_dir.clone(),
    };
    let ca = pki.ca();
    if ca.exists() {
        return Ok(false);
    }
    let url = &config.engine.url;
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{shown}: engine.url '{url}'"))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(443);
    let why = if !is_loopback_host(host) {
        format!("the engine at {url} is on another host")
    } else if engine_answers(host, port).await {
        format!("an engine already answers at {url}, with a CA from elsewhere")
    } else {
        return Ok(true);
    };
    bail!(
        "no development CA at {ca}, and {why}: a CA generated here would not be trusted by it. \
         Point the gateway at the engine's PKI: give --pki-dir (or set tls.generate_dir in {shown}) \
         to the engine's sekisho-tls directory, or set engine.ca, engine.cert and engine.key",
        ca = ca.display(),
    )
}

/// Whether something accepts TCP connections at `host:port`.
async fn engine_answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            ENGINE_PROBE_TIMEOUT,
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}
