//! Mutual-TLS client channels: the gateway's link to the engine and the endpoint
//! agent's link to its gateway are the same thing, a tonic channel that presents a
//! client certificate and trusts one CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sekisho_policy_engine::transport;
use tonic::codegen::http::Uri;
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
    #[error("the {what} {path} holds no {block} PEM block")]
    NotPem {
        what: &'static str,
        path: String,
        block: &'static str,
    },
    #[error("bad URL '{url}': {why}")]
    Url { url: String, why: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

/// The PEM blocks a TLS setup reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PemBlock {
    Certificate,
    PrivateKey,
}

impl PemBlock {
    pub(crate) fn name(self) -> &'static str {
        match self {
            PemBlock::Certificate => "CERTIFICATE",
            PemBlock::PrivateKey => "PRIVATE KEY",
        }
    }

    /// tonic takes PEM unchecked and reports a bad one only as a TLS setup error
    /// with no file named; checking first lets the error name the file.
    pub(crate) fn is_in(self, pem: &[u8]) -> bool {
        match self {
            PemBlock::Certificate => CertificateDer::pem_slice_iter(pem)
                .next()
                .is_some_and(|c| c.is_ok()),
            PemBlock::PrivateKey => PrivateKeyDer::from_pem_slice(pem).is_ok(),
        }
    }
}

fn read_pem(path: &Path, what: &'static str, block: PemBlock) -> Result<Vec<u8>, ConnectError> {
    let pem = read(path, what)?;
    if block.is_in(&pem) {
        Ok(pem)
    } else {
        Err(ConnectError::NotPem {
            what,
            path: path.display().to_string(),
            block: block.name(),
        })
    }
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
    match endpoint.uri().scheme_str() {
        Some("https") => {
            let host = uri_host(endpoint.uri());
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_pem(
                    &tls.ca,
                    "CA certificate",
                    PemBlock::Certificate,
                )?))
                .identity(Identity::from_pem(
                    read_pem(&tls.cert, "client certificate", PemBlock::Certificate)?,
                    read_pem(&tls.key, "client key", PemBlock::PrivateKey)?,
                ))
                .domain_name(server_name.unwrap_or(host));
            endpoint.tls_config(config).map_err(|e| bad(e.to_string()))
        }
        _ => check_scheme(url).map(|()| endpoint).map_err(bad),
    }
}

/// Sends an HTTP/2 PING on a connection nothing has arrived on for `interval`, also
/// while no call is open, and closes it when no answer comes within `timeout`, so
/// the next call dials again: for a long-lived link (the gateway's decision stream)
/// through firewalls that may forget it.
pub fn keep_alive(endpoint: Endpoint, interval: Duration, timeout: Duration) -> Endpoint {
    endpoint
        .http2_keep_alive_interval(interval)
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true)
}

/// Accepts `https://`, and `http://` to a loopback address only: without TLS nothing
/// proves who answers, and the engine's answer is an allow or a deny, so only a peer
/// on this machine (a test bed) can be trusted that way.
pub(crate) fn check_scheme(url: &str) -> Result<(), String> {
    let uri = url.parse::<Uri>().ok();
    match uri.as_ref().and_then(|u| Some((u.scheme_str()?, u))) {
        Some(("https", _)) => Ok(()),
        Some(("http", u)) if transport::is_loopback_host(uri_host(u)) => Ok(()),
        Some(("http", _)) => Err(
            "http:// (no TLS) is only for a loopback test bed (127.0.0.1, [::1], localhost); use https://"
                .into(),
        ),
        _ => Err("must start with https://".into()),
    }
}

/// A URL's host, without an IPv6 literal's brackets.
fn uri_host(uri: &Uri) -> &str {
    uri.host().unwrap_or_default().trim_matches(['[', ']'])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_with_ports_paths_users_and_ipv6_brackets() {
        let host = |url: &str| uri_host(&url.parse::<Uri>().unwrap()).to_string();
        assert_eq!(
            host("https://engine.city.local:7443/x"),
            "engine.city.local"
        );
        assert_eq!(host("https://[::1]:7443"), "::1");
        assert_eq!(host("https://[fe80::1]/"), "fe80::1");
        assert_eq!(host("http://svc@127.0.0.1:1"), "127.0.0.1");
    }

    #[test]
    fn a_file_that_is_not_the_pem_it_should_be_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("client.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let tls = ClientTls {
            ca: junk.clone(),
            cert: junk.clone(),
            key: junk.clone(),
        };
        let e = endpoint("https://127.0.0.1:1", &tls, None, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CA certificate") && e.contains("client.pem"),
            "{e}"
        );
        let e = read_pem(&junk, "client key", PemBlock::PrivateKey).unwrap_err();
        assert!(e.to_string().contains("no PRIVATE KEY PEM block"), "{e}");
    }

    #[test]
    fn plaintext_is_refused_beyond_loopback() {
        assert!(check_scheme("https://engine.city.local:7443").is_ok());
        for ok in [
            "http://127.0.0.1:7443",
            "http://[::1]:7443",
            "http://LOCALHOST:1",
        ] {
            assert!(check_scheme(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:7443",
            "http://engine.city.local",
            "http://127.0.0.1.evil:1",
        ] {
            let why = check_scheme(bad).unwrap_err();
            assert!(why.contains("loopback"), "{bad}: {why}");
        }
        assert!(check_scheme("ftp://x").unwrap_err().contains("https://"));
        assert!(check_scheme("127.0.0.1:7443").is_err());
    }
}
