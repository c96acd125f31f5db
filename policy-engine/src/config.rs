//! The engine daemon's configuration: one TOML file, every setting optional.
//!
//! An empty file (or no file) runs the engine on SQLite in the current directory,
//! listening on 127.0.0.1:7443 with mutual TLS from a PKI it generates under
//! `sekisho-tls/` on first start. Relative paths are relative to the current directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pki::{DEFAULT_ADMIN_NAME, DEFAULT_GATEWAY_NAME};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `sqlite://FILE` (created on first start) or `postgres://…`.
    pub store: String,
    /// The municipality this engine serves (every stored row carries it).
    pub tenant: String,
    /// How often to look for policy versions published through another replica.
    pub poll_interval_secs: u64,
    /// How often the engine PINGs each client connection (HTTP/2), and how long
    /// an answer may take before the connection is closed. A gateway whose
    /// connection a firewall forgot would otherwise keep its streams (a journal
    /// shipment among `audit.max_shipments`, a policy watch) open on this side for
    /// as long as nothing is sent on them: TCP only notices a dead peer when it
    /// has something to deliver.
    pub keepalive_secs: u64,
    pub tls: TlsConfig,
    pub cache: CacheConfig,
    pub bootstrap: BootstrapConfig,
    pub audit: AuditConfig,
    /// Directory sync (LDAP / Active Directory); none when absent.
    pub directory: Option<crate::directory::DirectoryConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            store: "sqlite://sekisho-engine.db".into(),
            tenant: "default".into(),
            poll_interval_secs: 5,
            keepalive_secs: 30,
            tls: TlsConfig::default(),
            cache: CacheConfig::default(),
            bootstrap: BootstrapConfig::default(),
            audit: AuditConfig::default(),
            directory: None,
        }
    }
}

/// The decision log (`audit_decisions`): which plans and authorizations are kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Share of decisions recorded, 0 to 1 (1: every decision; 0: none). Lower it
    /// when the log's volume matters more than a complete answer to "why".
    pub decision_sample: f64,
    /// Decisions waiting for the background writer at most; beyond it they are
    /// dropped (and counted) rather than slowing decisions down. The writer takes
    /// them every 20 ms while decisions keep coming, so this must hold 20 ms of
    /// them: the default, 10,000, does up to 500,000 decisions a second.
    pub decision_queue: usize,
    /// Journal shipments (`AuditSink.Ship` streams) taken at once; one more is
    /// refused (`RESOURCE_EXHAUSTED`) and its forwarder retries later. Each one may
    /// hold up to about 72 MiB while it arrives (a 64 MiB batch and an 8 MiB group
    /// not yet stored), so this bounds the engine's memory for audit ingest. A
    /// gateway ships over one stream at a time: the default, 16, serves 16
    /// gateways catching up together and more that ship now and then.
    pub max_shipments: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            decision_sample: 1.0,
            decision_queue: 10_000,
            max_shipments: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve without TLS. Only for a loopback test bed: must be set explicitly.
    pub plaintext: bool,
    /// Server certificate and key (PEM). When both are absent, a development PKI is
    /// generated in `generate_dir` and used.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA that client certificates must chain to. Required with `cert`/`key`.
    pub client_ca: Option<PathBuf>,
    /// Where the generated development PKI lives.
    pub generate_dir: PathBuf,
    /// Names the generated server certificate is valid for.
    pub server_names: Vec<String>,
    /// Client certificate common names allowed to use the admin API (publish,
    /// entities).
    pub admin_names: Vec<String>,
    /// Client certificate common names of gateways: with the administrators, the
    /// only ones that may ask for decisions, follow revocations and ship audit
    /// journals. An endpoint's certificate from the same CA may not: a plan for any
    /// user would tell it who exists.
    pub gateway_names: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            plaintext: false,
            cert: None,
            key: None,
            client_ca: None,
            generate_dir: PathBuf::from("sekisho-tls"),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            admin_names: vec![DEFAULT_ADMIN_NAME.into()],
            gateway_names: vec![DEFAULT_GATEWAY_NAME.into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Plan tables kept per policy version (one per attribute class).
    pub plan_tables: usize,
    /// Policy slices kept per policy version.
    pub slices: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        let d = crate::engine::CacheLimits::default();
        CacheConfig {
            plan_tables: d.plan_tables,
            slices: d.slices,
        }
    }
}

/// What to load into an empty store on first start, so a fresh engine is useful.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapConfig {
    /// A policy directory published as version 1 when the store has no version.
    pub policies: Option<PathBuf>,
    /// An entities JSON file loaded when the store has no entities.
    pub entities: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl EngineConfig {
    /// An engine on an ephemeral loopback port that keeps everything (its SQLite file
    /// and a generated PKI) in `dir`: the demo's and the tests' setup.
    pub fn self_contained(dir: &Path) -> Self {
        EngineConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: format!("sqlite://{}", dir.join("engine.db").display()),
            tls: TlsConfig {
                generate_dir: dir.join("tls"),
                ..TlsConfig::default()
            },
            ..EngineConfig::default()
        }
    }

    /// Loads and checks a config file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &text)
    }

    pub fn parse(shown: &str, text: &str) -> Result<Self, ConfigError> {
        let config: EngineConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.to_string(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: shown.to_string(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let t = &self.tls;
        match (&t.cert, &t.key, &t.client_ca) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            _ => return Err("tls.cert, tls.key and tls.client_ca go together: set all three, or none to use a generated PKI".into()),
        }
        // Without TLS there are no client certificates, so no administrator check
        // either: only a peer on this machine may reach such an engine.
        if t.plaintext && !self.listen.ip().is_loopback() {
            return Err(format!(
                "tls.plaintext serves without TLS and without admin checks: listen must be a loopback address, not {}",
                self.listen
            ));
        }
        if self.tenant.trim().is_empty() {
            return Err("tenant must not be empty".into());
        }
        if self.poll_interval_secs == 0 {
            return Err("poll_interval_secs must be at least 1".into());
        }
        if !(1..=3600).contains(&self.keepalive_secs) {
            return Err(format!(
                "keepalive_secs must be between 1 and 3600 (got {})",
                self.keepalive_secs
            ));
        }
        let sample = self.audit.decision_sample;
        if !(0.0..=1.0).contains(&sample) {
            return Err(format!(
                "audit.decision_sample must be between 0 and 1 (got {sample})"
            ));
        }
        if self.audit.decision_queue == 0 {
            return Err("audit.decision_queue must be at least 1".into());
        }
        if self.audit.max_shipments == 0 {
            return Err("audit.max_shipments must be at least 1".into());
        }
        if !(self.store.starts_with("sqlite:")
            || self.store.starts_with("postgres://")
            || self.store.starts_with("postgresql://"))
        {
            // A mistyped URL cannot be trusted to be redacted: with credentials in
            // it, it is not shown.
            let shown = if self.store.contains('@') {
                "(not shown: it holds credentials)".to_string()
            } else {
                format!("'{}'", self.store)
            };
            return Err(format!(
                "store {shown} is neither sqlite://FILE nor postgres://…"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        assert_eq!(
            EngineConfig::parse("e.toml", "").unwrap(),
            EngineConfig::default()
        );
    }

    #[test]
    fn errors_name_the_file_and_setting() {
        let e = EngineConfig::parse("e.toml", "listen = \"nowhere\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("e.toml: ") && e.contains("listen"), "{e}");
        let e = EngineConfig::parse("e.toml", "[tls]\ncert = \"a.pem\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls.cert, tls.key and tls.client_ca go together"),
            "{e}"
        );
        let e = EngineConfig::parse("e.toml", "stroe = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `stroe`"), "{e}");
        let e = EngineConfig::parse("e.toml", "store = \"mysql://x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mysql://x"), "{e}");
        let e = EngineConfig::parse("e.toml", "store = \"postgres//u:secret@db/x\"")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret") && e.contains("not shown"), "{e}");
        let open = "listen = \"0.0.0.0:7443\"\n[tls]\nplaintext = true";
        let e = EngineConfig::parse("e.toml", open).unwrap_err().to_string();
        assert!(
            e.contains("tls.plaintext") && e.contains("0.0.0.0:7443"),
            "{e}"
        );
        let local = "listen = \"127.0.0.1:7443\"\n[tls]\nplaintext = true";
        assert!(EngineConfig::parse("e.toml", local).is_ok());
    }

    #[test]
    fn decision_sample_is_checked() {
        let c = EngineConfig::parse("e.toml", "[audit]\ndecision_sample = 0.25").unwrap();
        assert_eq!(c.audit.decision_sample, 0.25);
        assert_eq!(EngineConfig::default().audit.decision_sample, 1.0);
        for bad in ["1.5", "-0.1", "nan"] {
            let e = EngineConfig::parse("e.toml", &format!("[audit]\ndecision_sample = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("audit.decision_sample"), "{bad}: {e}");
        }
        let e = EngineConfig::parse("e.toml", "[audit]\ndecision_queue = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("audit.decision_queue"), "{e}");
        let e = EngineConfig::parse("e.toml", "[audit]\nmax_shipments = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("audit.max_shipments must be at least 1"), "{e}");
        let c = EngineConfig::parse("e.toml", "[audit]\nmax_shipments = 3").unwrap();
        assert_eq!(c.audit.max_shipments, 3);
        assert_eq!(EngineConfig::default().audit.max_shipments, 16);
    }

    #[test]
    fn keepalive_is_checked() {
        assert_eq!(EngineConfig::default().keepalive_secs, 30);
        let c = EngineConfig::parse("e.toml", "keepalive_secs = 5").unwrap();
        assert_eq!(c.keepalive_secs, 5);
        for bad in ["0", "3601"] {
            let e = EngineConfig::parse("e.toml", &format!("keepalive_secs = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "keepalive_secs must be between 1 and 3600 (got {bad})"
                )),
                "{e}"
            );
        }
    }
}
