//! Connecting to an engine over gRPC with mutual TLS.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the engine is and which certificate to present.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Engine address: https://HOST:PORT (mutual TLS) or http://HOST:PORT (an engine
    /// configured with tls.plaintext).
    #[arg(
        long = "engine",
        env = "SEKISHO_ENGINE",
        default_value = "https://127.0.0.1:7443",
        value_name = "URL"
    )]
    pub url: String,
    /// CA certificate (PEM) the engine's certificate must chain to.
    #[arg(
        long,
        env = "SEKISHO_CA",
        default_value = "sekisho-tls/ca.pem",
        value_name = "FILE"
    )]
    pub ca: PathBuf,
    /// Client certificate (PEM) to present; admin commands need an administrator's.
    #[arg(
        long,
        env = "SEKISHO_CERT",
        default_value = "sekisho-tls/admin.pem",
        value_name = "FILE"
    )]
    pub cert: PathBuf,
    /// Private key (PEM) of the client certificate.
    #[arg(
        long,
        env = "SEKISHO_KEY",
        default_value = "sekisho-tls/admin-key.pem",
        value_name = "FILE"
    )]
    pub key: PathBuf,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl EngineArgs {
    pub fn new(url: impl Into<String>, ca: &Path, cert: &Path, key: &Path) -> Self {
        EngineArgs {
            url: url.into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// Opens a channel; the TLS handshake (and so a refused certificate) happens here.
    pub async fn connect(&self) -> Result<Channel> {
        sekisho_policy_engine::server::install_crypto_provider();
        let endpoint = Endpoint::from_shared(self.url.clone())
            .with_context(|| format!("bad engine URL '{}'", self.url))?;
        let endpoint = match self.url.split_once("://") {
            Some(("https", rest)) => {
                let host = rest
                    .split(['/', ':'])
                    .next()
                    .unwrap_or_default()
                    .trim_matches(['[', ']']);
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&self.ca, "CA certificate")?))
                    .identity(Identity::from_pem(
                        read(&self.cert, "client certificate")?,
                        read(&self.key, "client key")?,
                    ))
                    .domain_name(host);
                endpoint.tls_config(tls)?
            }
            Some(("http", _)) => endpoint,
            _ => bail!(
                "engine URL '{}' must start with https:// or http://",
                self.url
            ),
        };
        endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to the engine at {}", self.url))
    }
}
