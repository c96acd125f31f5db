//! Mutual-TLS client channels: the gateway's link to the engine and the endpoint
//! agent's link to its gateway are the same thing, a tonic channel that presents a
//! client certificate and trusts one CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sekisho_policy_engine::transport;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The CA to trust and the certificate to present (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("bad URL '{url}': {why}")]
    Url { url: String, why: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// An endpoint for `url` (`https://` with mutual TLS, or `http://` for a plaintext
/// loopback test bed). The server's certificate is checked against `server_name`, or
/// the URL's host when `None`. Open it with [`open`] or [`open_lazy`], which put it
/// on the project's TCP (NODELAY, coalesced writes: [`transport`]); tonic's own TCP
/// settings on the endpoint do not apply there.
pub fn endpoint(
    url: &str,
    tls: &ClientTls,
    server_name: Option<&str>,
    timeout: Duration,
) -> Result<Endpoint, ConnectError> {
    sekisho_policy_engine::server::install_crypto_provider();
    let bad = |why: String| ConnectError::Url {
        url: url.to_string(),
        why,
    };
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout);
    match url.split_once("://") {
        Some(("https", rest)) => {
            let host = rest
                .split(['/', ':'])
                .next()
                .unwrap_or_default()
                .trim_matches(['[', ']']);
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&tls.ca, "CA certificate")?))
                .identity(Identity::from_pem(
                    read(&tls.cert, "client certificate")?,
                    read(&tls.key, "client key")?,
                ))
                .domain_name(server_name.unwrap_or(host));
            endpoint.tls_config(config).map_err(|e| bad(e.to_string()))
        }
        Some(("http", _)) => Ok(endpoint),
        _ => Err(bad("must start with https:// or http://".into())),
    }
}

/// Opens `endpoint` now, so that a refused certificate or a closed port is reported
/// here, over the project's coalescing TCP ([`transport`]).
pub async fn open(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    endpoint.connect_with_connector(transport::Connector).await
}

/// [`open`], connecting on first use and again after a failure: for a peer that may
/// be down when the channel is made.
pub fn open_lazy(endpoint: Endpoint) -> Channel {
    endpoint.connect_with_connector_lazy(transport::Connector)
}

/// [`endpoint`], opened now with [`open`].
pub async fn connect(
    url: &str,
    tls: &ClientTls,
    server_name: Option<&str>,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    open(endpoint(url, tls, server_name, timeout)?)
        .await
        .map_err(|source| ConnectError::Connect {
            url: url.to_string(),
            source,
        })
}
