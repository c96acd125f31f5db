//! LDAP connection pieces shared by directory sync (here) and the gateways' password
//! check: URL validation and the TLS configuration for a directory with its own CA.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// What [`parse_url`] learned about a directory URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LdapUrl {
    pub ldaps: bool,
    pub loopback: bool,
}

/// Accepts `ldap[s]://host[:port][/]` only: ldap3 would treat a DN or filter in the URL
/// as meaningless here, and some malformed URLs make it panic instead of erroring.
pub fn parse_url(url: &str) -> Result<LdapUrl, &'static str> {
    let has_scheme = |scheme: &str| {
        url.get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
    };
    let (ldaps, rest) = if has_scheme("ldaps://") {
        (true, &url["ldaps://".len()..])
    } else if has_scheme("ldap://") {
        (false, &url["ldap://".len()..])
    } else {
        return Err("must start with ldap:// or ldaps://");
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !(path.is_empty() || path == "/") {
        return Err("must be only scheme, host and port (no DN, attributes or filter)");
    }
    if authority.contains(['@', '?', '#', ' ']) {
        return Err("has characters that do not belong in a host and port");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("has an unclosed IPv6 bracket")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err("has an invalid port");
        }
    }
    Ok(LdapUrl {
        ldaps,
        loopback: crate::transport::is_loopback_host(host),
    })
}

/// A rustls client configuration trusting only the CA certificates in `path`: the
/// directory is a known server with a known (often municipal, private) CA, so the
/// public web PKI should not be able to vouch for it.
pub fn client_config(path: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let ca_error = |reason: String| reason;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| ca_error(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_error("contains no PEM certificate".to_string()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn loopback_is_an_address_not_a_prefix() {
        for local in [
            "ldap://localhost",
            "ldap://127.0.0.1:3389",
            "ldap://[::1]:389",
        ] {
            assert!(parse_url(local).unwrap().loopback, "{local}");
        }
        for remote in [
            "ldap://127.evil.example",
            "ldap://ad.city.local",
            "ldaps://10.0.0.1",
        ] {
            assert!(!parse_url(remote).unwrap().loopback, "{remote}");
        }
    }
}
