//! Connecting to an engine or a gateway over gRPC with mutual TLS. Both go through
//! `sekisho_gateway::tls`, the one TLS client path of the project.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sekisho_gateway::tls::{self, ClientTls};
use tonic::transport::Channel;

/// How long to wait for a TCP connection and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an administrative call may take (a publish or a large upsert).
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Opens a mutual-TLS channel (plaintext for `http://`); the handshake, and so a
/// refused certificate, happens here.
async fn open(
    url: &str,
    tls: &ClientTls,
    server_name: Option<&str>,
    what: &str,
) -> Result<Channel> {
    let endpoint = tls::endpoint(url, tls, server_name, CONNECT_TIMEOUT)
        .with_context(|| format!("the {what}"))?
        .timeout(ADMIN_CALL_TIMEOUT);
    tls::open(endpoint)
        .await
        .with_context(|| format!("cannot connect to the {what} at {url}"))
}

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
        let tls = ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        open(&self.url, &tls, None, "engine").await
    }
}

/// Where a tier's gateway is and which administrator certificate to present
/// (enrolment, emergency codes, lockouts).
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Gateway address: https://HOST:PORT (mutual TLS).
    #[arg(
        long = "gateway",
        env = "SEKISHO_GATEWAY",
        default_value = "https://127.0.0.1:7444",
        value_name = "URL"
    )]
    pub url: String,
    /// CA certificate (PEM) the gateway's certificate must chain to.
    #[arg(
        long,
        env = "SEKISHO_CA",
        default_value = "sekisho-tls/ca.pem",
        value_name = "FILE"
    )]
    pub ca: PathBuf,
    /// Administrator certificate (PEM) to present; its name must be in the gateway's
    /// tls.admin_names.
    #[arg(
        long,
        env = "SEKISHO_CERT",
        default_value = "sekisho-tls/admin.pem",
        value_name = "FILE"
    )]
    pub cert: PathBuf,
    /// Private key (PEM) of the administrator certificate.
    #[arg(
        long,
        env = "SEKISHO_KEY",
        default_value = "sekisho-tls/admin-key.pem",
        value_name = "FILE"
    )]
    pub key: PathBuf,
    /// Name to expect in the gateway's certificate (default: the host of the URL).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

impl GatewayArgs {
    pub fn new(url: impl Into<String>, ca: &Path, cert: &Path, key: &Path) -> Self {
        GatewayArgs {
            url: url.into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            server_name: None,
        }
    }

    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// Opens a channel to the gateway; the TLS handshake happens here.
    pub async fn connect(&self) -> Result<Channel> {
        open(
            &self.url,
            &self.tls(),
            self.server_name.as_deref(),
            "gateway",
        )
        .await
    }
}

/// Where a tier's gateway is, and the device certificate an endpoint presents (its
/// common name is the device id).
#[derive(Debug, Clone, Args)]
pub struct DeviceConnArgs {
    /// Gateway address: https://HOST:PORT (mutual TLS).
    #[arg(
        long = "gateway",
        env = "SEKISHO_GATEWAY",
        default_value = "https://127.0.0.1:7444",
        value_name = "URL"
    )]
    pub url: String,
    /// CA certificate (PEM) the gateway's certificate must chain to.
    #[arg(
        long,
        env = "SEKISHO_CA",
        default_value = "sekisho-tls/ca.pem",
        value_name = "FILE"
    )]
    pub ca: PathBuf,
    /// This device's client certificate (PEM), e.g. from `sekisho device register
    /// --issue-cert`.
    #[arg(long, env = "SEKISHO_DEVICE_CERT", value_name = "FILE")]
    pub device_cert: PathBuf,
    /// Private key (PEM) of the device certificate.
    #[arg(long, env = "SEKISHO_DEVICE_KEY", value_name = "FILE")]
    pub device_key: PathBuf,
    /// Name to expect in the gateway's certificate (default: the host of the URL).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

impl DeviceConnArgs {
    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca: self.ca.clone(),
            cert: self.device_cert.clone(),
            key: self.device_key.clone(),
        }
    }
}
