//! The `password` factor: checked by the directory (an LDAP simple bind as the user) on
//! tiers that have one, or against a local Argon2id hash on standalone tiers.
//!
//! Binding as the user, rather than reading a hash, is what lets the directory apply its
//! own rules (disabled accounts, expired passwords, lockout) and keeps password hashes
//! out of the gateway entirely.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings};
use sekisho_policy_engine::ldap;
use serde::Deserialize;

use super::Failure;
use crate::hashing::{HashError, Refreshed, SecretHasher};

/// Longest password sent to the directory or hashed. Real passwords are far shorter;
/// the bound keeps oversized input from costing work.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest user id put into a bind DN.
pub const MAX_USER_ID_BYTES: usize = 256;
const PLACEHOLDER: &str = "{user}";
const MAX_TIMEOUT_SECS: u64 = 60;

/// `[password.directory]`: how to check passwords against an LDAP directory.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `ldap://host[:port]` or `ldaps://host[:port]`; nothing after the port.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub starttls: bool,
    /// PEM file with the CA certificate(s) that issued the directory's TLS certificate.
    /// Without it the system trust store is used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The bind DN with `{user}` where the (RFC 4514 escaped) user id goes, e.g.
    /// `uid={user},ou=people,dc=example,dc=jp`. Active Directory also accepts a user
    /// principal name here (`{user}@city.example.lg.jp`).
    pub bind_dn_template: String,
    /// Bound on connecting (including TLS) and, separately, on the bind itself.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Let user passwords cross the network in clear to a directory that is not on
    /// this machine (`ldap://` without `starttls`). Refused unless set, because the
    /// mistake is silent: logons work and every password is readable on the wire.
    #[serde(default)]
    pub allow_cleartext: bool,
}

fn default_timeout_secs() -> u64 {
    5
}

/// A directory configuration that cannot work, named by field.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryConfigError {
    #[error("directory.url {url:?} {reason}")]
    Url { url: String, reason: &'static str },
    #[error("directory.starttls cannot be combined with an ldaps:// URL (the connection is already TLS)")]
    StartTlsWithLdaps,
    #[error("directory.ca_file is set but the URL is ldap:// without starttls, so it would never be used; set starttls = true or use ldaps://")]
    CaFileWithoutTls,
    #[error("directory.ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("directory.bind_dn_template {0:?} must contain {{user}} exactly once")]
    Template(String),
    #[error("directory.timeout_secs = {0} must be between 1 and {MAX_TIMEOUT_SECS}")]
    Timeout(u64),
    #[error("directory.url {0:?} is ldap:// to another machine without starttls: passwords would cross the network in clear; set starttls = true, use ldaps://, or set allow_cleartext = true if the network is trusted")]
    Cleartext(String),
}

/// A validated [`DirectoryConfig`] with its TLS settings prepared once.
#[derive(Clone)]
pub struct Directory {
    config: DirectoryConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("config", &self.config)
            .field("custom_ca", &self.tls.is_some())
            .finish()
    }
}

impl Directory {
    /// Checks the configuration and loads the CA file, so that mistakes surface at
    /// startup rather than as "unavailable" at the first logon.
    pub fn new(config: DirectoryConfig) -> Result<Directory, DirectoryConfigError> {
        let url_error = |reason| DirectoryConfigError::Url {
            url: config.url.clone(),
            reason,
        };
        let url = ldap::parse_url(&config.url).map_err(url_error)?;
        if url.ldaps && config.starttls {
            return Err(DirectoryConfigError::StartTlsWithLdaps);
        }
        let uses_tls = url.ldaps || config.starttls;
        if config.ca_file.is_some() && !uses_tls {
            return Err(DirectoryConfigError::CaFileWithoutTls);
        }
        if config.bind_dn_template.matches(PLACEHOLDER).count() != 1 {
            return Err(DirectoryConfigError::Template(
                config.bind_dn_template.clone(),
            ));
        }
        if config.timeout_secs == 0 || config.timeout_secs > MAX_TIMEOUT_SECS {
            return Err(DirectoryConfigError::Timeout(config.timeout_secs));
        }
        let tls =
            match &config.ca_file {
                Some(path) => Some(ldap::client_config(path).map_err(|reason| {
                    DirectoryConfigError::CaFile {
                        path: path.clone(),
                        reason,
                    }
                })?),
                None => None,
            };
        if !uses_tls && !url.loopback {
            if !config.allow_cleartext {
                return Err(DirectoryConfigError::Cleartext(config.url.clone()));
            }
            tracing::warn!(
                url = %config.url,
                "password directory without TLS (allow_cleartext = true): passwords cross the network in clear"
            );
        }
        Ok(Directory { config, tls })
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// The DN to bind as for `user`: the template with the escaped user id.
    pub fn bind_dn(&self, user: &str) -> String {
        self.config
            .bind_dn_template
            .replacen(PLACEHOLDER, &escape_dn_value(user), 1)
    }

    async fn verify(&self, user: &str, password: &str) -> Result<(), Failure> {
        // An empty password turns a simple bind into an "unauthenticated" bind, which
        // many servers answer with success (RFC 4513 §5.1.2): it must never be sent.
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(Failure::Mismatch);
        }
        if user.is_empty() || user.len() > MAX_USER_ID_BYTES {
            return Err(Failure::Mismatch);
        }
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let dn = self.bind_dn(user);
        // Backstop over the per-step limits below (connect, then bind).
        match tokio::time::timeout(timeout * 2 + Duration::from_secs(1), async {
            self.bind(&dn, password, timeout).await
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(url = %self.config.url, "password: directory bind timed out");
                Err(Failure::Unavailable)
            }
        }
    }

    async fn bind(&self, dn: &str, password: &str, timeout: Duration) -> Result<(), Failure> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(self.config.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(Arc::clone(tls));
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(|e| {
                tracing::warn!(url = %self.config.url, error = %e, "password: directory unreachable");
                Failure::Unavailable
            })?;
        ldap3::drive!(conn);
        let outcome = ldap.with_timeout(timeout).simple_bind(dn, password).await;
        // Always end the session, whatever the bind said; errors here change nothing.
        let _ = ldap.unbind().await;
        match outcome {
            Ok(result) => classify(result.rc),
            Err(e) => {
                tracing::warn!(url = %self.config.url, error = %e, "password: directory bind failed");
                Err(Failure::Unavailable)
            }
        }
    }
}

/// Maps a bind result code to the factor outcome. Codes a person can cause (wrong
/// password, unknown or malformed user id) are a mismatch; codes that mean the
/// directory cannot answer properly are "unavailable" and logged for the operator.
fn classify(rc: u32) -> Result<(), Failure> {
    match rc {
        0 => Ok(()),
        // invalidCredentials, noSuchObject, invalidDNSyntax, inappropriateAuthentication
        49 | 32 | 34 | 48 => Err(Failure::Mismatch),
        13 => {
            tracing::error!(
                "password: the directory requires TLS (confidentialityRequired); \
                 set starttls = true or use ldaps://"
            );
            Err(Failure::Unavailable)
        }
        rc => {
            tracing::warn!(rc, "password: unexpected directory bind result");
            Err(Failure::Unavailable)
        }
    }
}

/// Where passwords are checked.
#[derive(Debug, Clone)]
pub enum PasswordVerifier {
    /// A simple bind against the tier's directory.
    Directory(Directory),
    /// Standalone tiers: Argon2id hashes in the local credential store.
    Local(SecretHasher),
}

impl PasswordVerifier {
    pub fn directory(config: DirectoryConfig) -> Result<PasswordVerifier, DirectoryConfigError> {
        Directory::new(config).map(PasswordVerifier::Directory)
    }

    /// Passwords live in a directory: every user "has" one, and none is stored here.
    pub fn is_directory(&self) -> bool {
        matches!(self, PasswordVerifier::Directory(_))
    }

    /// Checks `password` for `user`. `stored_hash` is only read by [`Local`]
    /// (`None`: no such user or no password; answered like a wrong password after the
    /// same work). Directory failures to answer are [`Failure::Unavailable`]. A
    /// correct password whose stored hash was made with other Argon2id parameters
    /// comes back with the hash to store instead ([`SecretHasher::refresh`]).
    ///
    /// [`Local`]: PasswordVerifier::Local
    pub async fn verify(
        &self,
        user: &str,
        password: &str,
        stored_hash: Option<&str>,
    ) -> Result<Option<Refreshed>, Failure> {
        match self {
            PasswordVerifier::Directory(directory) => {
                directory.verify(user, password).await.map(|()| None)
            }
            PasswordVerifier::Local(hasher) => {
                if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
                    return Err(Failure::Mismatch);
                }
                // Argon2id is tens of milliseconds of CPU: keep it off the async workers.
                let hasher = hasher.clone();
                let password = password.to_owned();
                let stored = stored_hash.map(str::to_owned);
                let verdict = tokio::task::spawn_blocking(move || {
                    let matched = hasher.verify(&password, stored.as_deref())?;
                    Ok::<_, HashError>(
                        matched.then(|| stored.and_then(|s| hasher.refresh(&password, &s))),
                    )
                })
                .await;
                match verdict {
                    Ok(Ok(Some(refreshed))) => Ok(refreshed),
                    Ok(Ok(None)) => Err(Failure::Mismatch),
                    Ok(Err(e)) => {
                        tracing::error!(user, error = %e, "password: stored hash is unusable");
                        Err(Failure::Unavailable)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "password: hashing task failed");
                        Err(Failure::Unavailable)
                    }
                }
            }
        }
    }
}

/// Escapes a value for use inside an RDN (RFC 4514 §2.4), so that a user id such as
/// `a,b` or `x+cn=admin` stays one attribute value instead of adding RDNs to the DN.
/// Special characters get a backslash; NUL and other control characters are written
/// as hex pairs (`\00`), which servers and logs handle more reliably than raw bytes.
pub fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_ascii_control() => out.push_str(&format!("\\{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::Argon2Params;

    fn config(url: &str) -> DirectoryConfig {
        DirectoryConfig {
            url: url.to_string(),
            starttls: false,
            ca_file: None,
            bind_dn_template: "uid={user},ou=people,dc=example,dc=jp".to_string(),
            timeout_secs: 5,
            allow_cleartext: false,
        }
    }

    #[test]
    fn escapes_per_rfc4514() {
        assert_eq!(escape_dn_value("tanaka"), "tanaka");
        assert_eq!(escape_dn_value("a,b"), "a\\,b");
        assert_eq!(
            escape_dn_value("x+cn=admin"),
            "x\\+cn\\=admin",
            "no extra RDN"
        );
        assert_eq!(escape_dn_value("\"<>;\\"), "\\\"\\<\\>\\;\\\\");
        assert_eq!(escape_dn_value("#a#"), "\\#a#");
        assert_eq!(escape_dn_value(" a b "), "\\ a b\\ ");
        assert_eq!(escape_dn_value(" "), "\\ ");
        assert_eq!(escape_dn_value("a\0b\n"), "a\\00b\\0a");
        assert_eq!(escape_dn_value("田中 太郎"), "田中 太郎");
        assert_eq!(escape_dn_value(""), "");
    }

    #[test]
    fn bind_dn_fills_the_template_once() {
        let dir = Directory::new(config("ldap://127.0.0.1:389")).unwrap();
        assert_eq!(dir.bind_dn("a,b"), "uid=a\\,b,ou=people,dc=example,dc=jp");
        // A user id that looks like the placeholder is not expanded again.
        assert_eq!(
            dir.bind_dn("{user}"),
            "uid={user},ou=people,dc=example,dc=jp"
        );
    }

    #[test]
    fn config_from_toml_with_defaults() {
        let c: DirectoryConfig = toml::from_str(
            r#"url = "ldaps://ldap.city.example.lg.jp"
               bind_dn_template = "uid={user},ou=people,dc=example,dc=jp""#,
        )
        .unwrap();
        assert!(!c.starttls);
        assert_eq!(c.timeout_secs, 5);
        assert_eq!(c.ca_file, None);
        let unknown = toml::from_str::<DirectoryConfig>(
            r#"url = "ldap://x"
               bind_dn_template = "uid={user}"
               bind_password = "x""#,
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn config_mistakes_are_refused_with_the_field_named() {
        for url in [
            "http://x",
            "ldap://",
            "ldap:///",
            "ldap:x",
            "ldap://x:0",
            "ldap://x:99999",
            "ldap://x/dc=example,dc=jp",
            "ldap://user@x",
            "ldap://[::1",
        ] {
            let err = Directory::new(config(url)).unwrap_err();
            assert!(err.to_string().starts_with("directory.url"), "{url}: {err}");
        }
        for url in [
            "LDAP://localhost",
            "ldap://127.0.0.1:389/",
            "ldaps://[::1]:636",
            "ldaps://x",
        ] {
            assert!(Directory::new(config(url)).is_ok(), "{url}");
        }

        // Clear text to another machine only when asked for by name.
        assert!(matches!(
            Directory::new(config("ldap://ad.city.local")),
            Err(DirectoryConfigError::Cleartext(_))
        ));
        let mut c = config("ldap://ad.city.local");
        c.allow_cleartext = true;
        assert!(Directory::new(c).is_ok());
        let mut c = config("ldap://ad.city.local");
        c.starttls = true;
        assert!(Directory::new(c).is_ok());

        let mut c = config("ldaps://x");
        c.starttls = true;
        assert!(matches!(
            Directory::new(c),
            Err(DirectoryConfigError::StartTlsWithLdaps)
        ));

        let mut c = config("ldap://x");
        c.ca_file = Some("/nonexistent.pem".into());
        assert!(matches!(
            Directory::new(c),
            Err(DirectoryConfigError::CaFileWithoutTls)
        ));

        for template in ["ou=people", "uid={user},cn={user}"] {
            let mut c = config("ldap://x");
            c.bind_dn_template = template.to_string();
            assert!(matches!(
                Directory::new(c),
                Err(DirectoryConfigError::Template(_))
            ));
        }

        for timeout in [0, 61] {
            let mut c = config("ldap://x");
            c.timeout_secs = timeout;
            assert!(matches!(
                Directory::new(c),
                Err(DirectoryConfigError::Timeout(_))
            ));
        }
    }

    #[test]
    fn ca_file_is_loaded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();

        let mut c = config("ldaps://x");
        c.ca_file = Some(good);
        let directory = Directory::new(c).unwrap();
        assert!(format!("{directory:?}").contains("custom_ca: true"));

        for path in [empty, dir.path().join("missing.pem")] {
            let mut c = config("ldaps://x");
            c.ca_file = Some(path.clone());
            let err = Directory::new(c).unwrap_err();
            assert!(
                matches!(err, DirectoryConfigError::CaFile { .. }),
                "{path:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn empty_password_is_refused_without_contacting_the_directory() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("ldap://{}", listener.local_addr().unwrap());
        let verifier = PasswordVerifier::directory(config(&url)).unwrap();
        assert_eq!(
            verifier.verify("tanaka", "", None).await,
            Err(Failure::Mismatch)
        );
        assert_eq!(
            verifier.verify("", "pw", None).await,
            Err(Failure::Mismatch)
        );
        let long_user = "u".repeat(MAX_USER_ID_BYTES + 1);
        assert_eq!(
            verifier.verify(&long_user, "pw", None).await,
            Err(Failure::Mismatch)
        );
        let err = listener.accept().unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::WouldBlock,
            "no connection made"
        );
    }

    #[tokio::test]
    async fn local_passwords() {
        let hasher = SecretHasher::new(Argon2Params::default()).unwrap();
        let stored = hasher.hash("kawasaki-2024").unwrap();
        let verifier = PasswordVerifier::Local(hasher);
        assert_eq!(
            verifier
                .verify("tanaka", "kawasaki-2024", Some(&stored))
                .await,
            Ok(None)
        );
        let older = SecretHasher::new(Argon2Params {
            memory_kib: 12 * 1024,
            iterations: 3,
            ..Argon2Params::default()
        })
        .unwrap()
        .hash("kawasaki-2024")
        .unwrap();
        let refreshed = verifier
            .verify("tanaka", "kawasaki-2024", Some(&older))
            .await
            .expect("correct")
            .expect("made with other parameters");
        assert_eq!(refreshed.old, older);
        assert_eq!(
            verifier
                .verify("tanaka", "kawasaki-2024", Some(&refreshed.new))
                .await,
            Ok(None)
        );
        assert_eq!(
            verifier
                .verify("tanaka", "kawasaki-2025", Some(&stored))
                .await,
            Err(Failure::Mismatch)
        );
        assert_eq!(
            verifier.verify("nobody", "kawasaki-2024", None).await,
            Err(Failure::Mismatch)
        );
        assert_eq!(
            verifier.verify("tanaka", "", Some(&stored)).await,
            Err(Failure::Mismatch)
        );
        assert_eq!(
            verifier.verify("tanaka", "x", Some("$md5$broken")).await,
            Err(Failure::Unavailable)
        );
    }

    #[test]
    fn result_codes() {
        assert_eq!(classify(0), Ok(()));
        for rc in [49, 32, 34, 48] {
            assert_eq!(classify(rc), Err(Failure::Mismatch), "{rc}");
        }
        for rc in [13, 51, 52, 53, 80] {
            assert_eq!(classify(rc), Err(Failure::Unavailable), "{rc}");
        }
    }
}
