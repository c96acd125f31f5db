//! A gateway's configuration: one TOML file, every setting but `tier` optional.
//!
//! Relative paths are relative to the directory of the config file (the current
//! directory when there is none), so a city's gateway lives in one folder: the
//! config, its SQLite store and its key file side by side. With nothing but a tier
//! the gateway runs on that folder's SQLite file, generates its credential key and
//! uses the development PKI the engine generated under `sekisho-tls/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sekisho_policy_engine::Tier;
use serde::Deserialize;

use crate::factors::password::DirectoryConfig;
use crate::factors::totp::TotpAlgorithm;
use crate::hashing::Argon2Params;

/// The environment variable that, when set, holds the credential key (64 hex
/// characters) instead of `key_file`.
pub const KEY_ENV: &str = "SEKISHO_GATEWAY_KEY";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The tier this gateway serves: mynumber, lgwan, internet or telework.
    pub tier: Option<String>,
    /// This gateway's name in logs and audit events: its journal's name, so every
    /// replica needs its own. Default `TIER-gateway`.
    pub name: Option<String>,
    /// The municipality (every stored row carries it).
    pub tenant: String,
    pub listen: SocketAddr,
    /// `sqlite://FILE` or `postgres://…`; default `sqlite://gateway-TIER.db` beside
    /// the config.
    pub store: Option<String>,
    /// The credential key file (64 hex characters), created with mode 0600 when
    /// missing and the store is new. The `SEKISHO_GATEWAY_KEY` environment variable
    /// takes precedence.
    pub key_file: PathBuf,
    pub engine: EngineLink,
    pub tls: GatewayTls,
    pub cards: CardsConfig,
    /// Check passwords against this directory (LDAP simple bind); without it,
    /// passwords are Argon2id hashes in the store.
    pub directory: Option<DirectoryConfig>,
    pub argon2: Argon2Params,
    pub lockout: LockoutConfig,
    pub rate_limit: RateLimitConfig,
    pub challenge: ChallengeConfig,
    pub biometric: BiometricConfig,
    pub totp: TotpConfig,
    pub audit: AuditConfig,
    pub telework: TeleworkConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            tier: None,
            name: None,
            tenant: "default".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            store: None,
            key_file: PathBuf::from("gateway.key"),
            engine: EngineLink::default(),
            tls: GatewayTls::default(),
            cards: CardsConfig::default(),
            directory: None,
            argon2: Argon2Params::default(),
            lockout: LockoutConfig::default(),
            rate_limit: RateLimitConfig::default(),
            challenge: ChallengeConfig::default(),
            biometric: BiometricConfig::default(),
            totp: TotpConfig::default(),
            audit: AuditConfig::default(),
            telework: TeleworkConfig::default(),
        }
    }
}

/// How to reach the policy engine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineLink {
    pub url: String,
    /// CA of the engine's certificate, and this gateway's client certificate and key.
    /// Default: the development PKI in `tls.generate_dir`.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to check in the engine's certificate.
    pub server_name: String,
    /// How long a connection, or an answer to a decision, may take before the
    /// logons waiting for it are refused as "engine unavailable".
    pub timeout_ms: u64,
    /// How often the connection to the engine is checked with an HTTP/2 PING when
    /// nothing arrived on it; one not answered within `timeout_ms` is closed and
    /// dialled again. A firewall between the tiers that forgets idle connections
    /// silently would otherwise leave decisions waiting on a dead one until TCP
    /// gives up, many minutes later.
    pub keepalive_secs: u64,
}

impl Default for EngineLink {
    fn default() -> Self {
        EngineLink {
            url: "https://127.0.0.1:7443".into(),
            ca: None,
            cert: None,
            key: None,
            server_name: "localhost".into(),
            timeout_ms: 2_000,
            keepalive_secs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayTls {
    /// This gateway's server certificate and key, and the CA that endpoint and
    /// administrator certificates chain to. When absent, the development PKI in
    /// `generate_dir` is used (created if missing) and a server certificate is issued
    /// from it.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub generate_dir: PathBuf,
    pub server_names: Vec<String>,
    /// Client certificate common names allowed to use the admin API; every other
    /// valid client certificate is an endpoint whose common name is its device id.
    pub admin_names: Vec<String>,
}

impl Default for GatewayTls {
    fn default() -> Self {
        GatewayTls {
            cert: None,
            key: None,
            client_ca: None,
            generate_dir: PathBuf::from("sekisho-tls"),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            admin_names: vec![sekisho_policy_engine::pki::DEFAULT_ADMIN_NAME.into()],
        }
    }
}

/// Which CAs issue this tier's cards.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CardsConfig {
    /// PEM files of the CAs that issue staff IC cards.
    pub ca: Vec<PathBuf>,
    /// PEM files of the JPKI CA(s): cards chaining here are My Number cards.
    pub mynumber_ca: Vec<PathBuf>,
    /// CRL files (PEM or DER); revoked serials are refused.
    pub crl: Vec<PathBuf>,
    /// Seconds between looks at the CA and CRL files: a changed set is re-read and
    /// put in force without a restart (0: read at startup only).
    pub reload_secs: u64,
}

impl Default for CardsConfig {
    fn default() -> Self {
        CardsConfig {
            ca: Vec::new(),
            mynumber_ca: Vec::new(),
            crl: Vec::new(),
            reload_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutConfig {
    /// Consecutive failed logons after which the user is locked on this tier.
    pub max_failures: u32,
    pub lock_secs: u64,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig {
            max_failures: 5,
            lock_secs: 900,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained Begin calls per device per minute.
    pub per_device_per_minute: f64,
    /// How many a device may make in a burst.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_device_per_minute: 30.0,
            burst: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChallengeConfig {
    /// How long a challenge (and its nonces) can be answered.
    pub ttl_secs: u64,
    /// Upper bound on open challenges, so a flood of Begin cannot exhaust memory.
    pub max_open: usize,
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        ChallengeConfig {
            ttl_secs: 60,
            max_open: 100_000,
        }
    }
}

/// Logons reached through the national telework relay (`via = lgwan_telework`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeleworkConfig {
    /// Take Begin's `upstream` (the factors the telework device proved) as the
    /// endpoint states them. Until the telework gateway signs what it verified,
    /// that list is only the endpoint's word: a tampered agent on a relay desktop
    /// could claim face + password it never showed. Off by default, so relay logons
    /// are refused; turn on only where the relay desktops themselves are trusted.
    pub accept_upstream_claims: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BiometricConfig {
    /// Cosine similarity a face capture needs against one of the user's templates.
    pub face_threshold: f32,
    pub vein_threshold: f32,
}

impl Default for BiometricConfig {
    fn default() -> Self {
        BiometricConfig {
            face_threshold: 0.80,
            vein_threshold: 0.85,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TotpConfig {
    /// Shown by authenticator apps next to the account.
    pub issuer: String,
    /// For new enrolments when the request does not say.
    pub algorithm: TotpAlgorithm,
    pub digits: u32,
}

impl Default for TotpConfig {
    fn default() -> Self {
        TotpConfig {
            issuer: "sekisho".into(),
            algorithm: TotpAlgorithm::Sha1,
            digits: 6,
        }
    }
}

/// The audit journal and its shipping to the engine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Ship the journal to the policy engine. `false` on a standalone tier: the
    /// journal stays in this gateway's database, read there with `sekisho audit`.
    pub forward: bool,
    /// Events per message sent to the engine.
    pub batch_size: usize,
    /// Events sent before waiting for the engine to confirm them (one stream).
    pub stream_records: usize,
    /// Least milliseconds between the starts of two shipments while the journal
    /// keeps growing (each costs the engine a transaction); a backlog ships at once.
    pub interval_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        let f = crate::forward::ForwardSettings::default();
        AuditConfig {
            forward: true,
            batch_size: f.batch_size,
            stream_records: f.stream_records,
            interval_ms: f.interval.as_millis() as u64,
        }
    }
}

/// Events reach the engine's audit store within this of their commit.
const MAX_AUDIT_INTERVAL_MS: u64 = 10_000;
/// A CRL is republished daily at the least; a longer wait only leaves revoked
/// cards working longer.
const MAX_CARD_RELOAD_SECS: u64 = 86_400;
/// An engine call this slow holds the person at the screen; a minute is past any
/// sensible wait.
const MAX_ENGINE_TIMEOUT_MS: u64 = 60_000;
/// An hour: past that, most firewalls have forgotten the connection already.
const MAX_ENGINE_KEEPALIVE_SECS: u64 = 3_600;
/// Keeps one message well under gRPC's default 4 MiB limit (events are under 2 KiB).
const MAX_AUDIT_BATCH: usize = 2000;
const MAX_AUDIT_STREAM: usize = 100_000;

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

/// A checked configuration with every path resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: GatewayConfig,
    pub tier: Tier,
    pub name: String,
    pub store: String,
}

impl GatewayConfig {
    /// A gateway for `tier` on an ephemeral loopback port that keeps its store and
    /// key in `dir` and uses the development PKI in `pki_dir`: the tests' and the
    /// demo's setup.
    pub fn self_contained(tier: Tier, dir: &Path, pki_dir: &Path, engine_url: &str) -> Self {
        GatewayConfig {
            tier: Some(tier.name().into()),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: Some(format!(
                "sqlite://{}",
                dir.join(format!("gateway-{}.db", tier.name())).display()
            )),
            key_file: dir.join(format!("gateway-{}.key", tier.name())),
            engine: EngineLink {
                url: engine_url.into(),
                ..EngineLink::default()
            },
            tls: GatewayTls {
                generate_dir: pki_dir.to_path_buf(),
                ..GatewayTls::default()
            },
            ..GatewayConfig::default()
        }
    }

    /// Loads, checks and resolves a config file; `None` is the defaults, which lack
    /// a tier and are refused.
    pub fn load(path: Option<&Path>) -> Result<Resolved, ConfigError> {
        let Some(path) = path else {
            return GatewayConfig::default().resolve("(no config file)", Path::new("."));
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: GatewayConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        config.resolve(&shown, base.unwrap_or(Path::new(".")))
    }

    /// Checks the settings and makes relative paths relative to `base`.
    pub fn resolve(mut self, shown: &str, base: &Path) -> Result<Resolved, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: shown.to_string(),
            message,
        };
        let tier: Tier = self
            .tier
            .as_deref()
            .ok_or_else(|| {
                invalid("tier is required: one of mynumber, lgwan, internet, telework".into())
            })?
            .parse()
            .map_err(|e: sekisho_policy_engine::model::UnknownName| {
                invalid(format!("tier: {e}"))
            })?;
        if self.tenant.trim().is_empty() {
            return Err(invalid("tenant must not be empty".into()));
        }
        let t = &self.tls;
        match (&t.cert, &t.key, &t.client_ca) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            _ => {
                return Err(invalid(
                    "tls.cert, tls.key and tls.client_ca go together: set all three, or none to use the development PKI".into(),
                ))
            }
        }
        let e = &self.engine;
        match (&e.ca, &e.cert, &e.key) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            _ => {
                return Err(invalid(
                    "engine.ca, engine.cert and engine.key go together: set all three, or none to use the development PKI".into(),
                ))
            }
        }
        if let Err(why) = crate::tls::check_scheme(&e.url) {
            return Err(invalid(format!("engine.url '{}': {why}", e.url)));
        }
        if e.timeout_ms == 0 || e.timeout_ms > MAX_ENGINE_TIMEOUT_MS {
            return Err(invalid(format!(
                "engine.timeout_ms must be between 1 and {MAX_ENGINE_TIMEOUT_MS}, got {}",
                e.timeout_ms
            )));
        }
        if e.keepalive_secs == 0 || e.keepalive_secs > MAX_ENGINE_KEEPALIVE_SECS {
            return Err(invalid(format!(
                "engine.keepalive_secs must be between 1 and {MAX_ENGINE_KEEPALIVE_SECS}, got {}",
                e.keepalive_secs
            )));
        }
        if self.lockout.max_failures == 0 {
            return Err(invalid("lockout.max_failures must be at least 1".into()));
        }
        // A lock of 0 s ends as it starts: lockout would be off without saying so.
        if self.lockout.lock_secs == 0 {
            return Err(invalid("lockout.lock_secs must be at least 1".into()));
        }
        if !self.rate_limit.per_device_per_minute.is_finite()
            || self.rate_limit.per_device_per_minute <= 0.0
            || self.rate_limit.burst == 0
        {
            return Err(invalid(
                "rate_limit.per_device_per_minute and rate_limit.burst must be positive".into(),
            ));
        }
        if self.challenge.ttl_secs == 0 || self.challenge.ttl_secs > 600 {
            return Err(invalid(
                "challenge.ttl_secs must be between 1 and 600".into(),
            ));
        }
        if self.challenge.max_open == 0 {
            return Err(invalid(
                "challenge.max_open must be at least 1 (0 would refuse every Begin)".into(),
            ));
        }
        for (name, v) in [
            ("biometric.face_threshold", self.biometric.face_threshold),
            ("biometric.vein_threshold", self.biometric.vein_threshold),
        ] {
            if v.is_nan() || v <= 0.0 || v > 1.0 {
                return Err(invalid(format!("{name} must be in (0, 1], got {v}")));
            }
        }
        if self.totp.digits != 6 && self.totp.digits != 8 {
            return Err(invalid(format!(
                "totp.digits must be 6 or 8, got {}",
                self.totp.digits
            )));
        }
        let a = &self.audit;
        if a.batch_size == 0 || a.batch_size > MAX_AUDIT_BATCH {
            return Err(invalid(format!(
                "audit.batch_size must be between 1 and {MAX_AUDIT_BATCH}, got {}",
                a.batch_size
            )));
        }
        if a.stream_records < a.batch_size || a.stream_records > MAX_AUDIT_STREAM {
            return Err(invalid(format!(
                "audit.stream_records must be between audit.batch_size ({}) and {MAX_AUDIT_STREAM}, got {}",
                a.batch_size, a.stream_records
            )));
        }
        if a.interval_ms > MAX_AUDIT_INTERVAL_MS {
            return Err(invalid(format!(
                "audit.interval_ms must be at most {MAX_AUDIT_INTERVAL_MS}, got {}",
                a.interval_ms
            )));
        }
        if self.cards.reload_secs > MAX_CARD_RELOAD_SECS {
            return Err(invalid(format!(
                "cards.reload_secs must be at most {MAX_CARD_RELOAD_SECS} (a day; 0 reads the files at startup only), got {}",
                self.cards.reload_secs
            )));
        }
        self.argon2
            .validate()
            .map_err(|e| invalid(format!("argon2: {e}")))?;

        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut self.key_file);
        rebase(&mut self.tls.generate_dir);
        for p in [
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.tls.client_ca,
        ]
        .into_iter()
        .chain([
            &mut self.engine.ca,
            &mut self.engine.cert,
            &mut self.engine.key,
        ])
        .flatten()
        {
            rebase(p);
        }
        for p in self
            .cards
            .ca
            .iter_mut()
            .chain(self.cards.mynumber_ca.iter_mut())
            .chain(self.cards.crl.iter_mut())
        {
            rebase(p);
        }
        let store = match self.store.clone() {
            Some(url) => match url.strip_prefix("sqlite://") {
                Some(file) if !file.starts_with('/') && !file.starts_with(':') => {
                    format!("sqlite://{}", base.join(file).display())
                }
                _ => url,
            },
            None => format!(
                "sqlite://{}",
                base.join(format!("gateway-{}.db", tier.name())).display()
            ),
        };
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-gateway", tier.name()));
        Ok(Resolved {
            config: self,
            tier,
            name,
            store,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Resolved, ConfigError> {
        let config: GatewayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "g.toml".into(),
            message: e.to_string(),
        })?;
        config.resolve("g.toml", Path::new("/etc/sekisho"))
    }

    #[test]
    fn a_tier_is_enough_and_paths_sit_beside_the_config() {
        let r = parse("tier = \"lgwan\"").unwrap();
        assert_eq!(r.tier, Tier::Lgwan);
        assert_eq!(r.name, "lgwan-gateway");
        assert_eq!(r.store, "sqlite:///etc/sekisho/gateway-lgwan.db");
        assert_eq!(r.config.key_file, Path::new("/etc/sekisho/gateway.key"));
        assert_eq!(r.config.lockout.max_failures, 5);
        assert!(r.config.audit.forward);
        assert_eq!(r.config.audit.batch_size, 500);
    }

    #[test]
    fn a_standalone_tier_keeps_its_journal() {
        let r = parse("tier = \"mynumber\"\n[audit]\nforward = false").unwrap();
        assert!(!r.config.audit.forward);
    }

    #[test]
    fn errors_name_the_setting() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert!(e("").contains("tier is required"));
        assert!(e("tier = \"lgwn\"").contains("lgwn"));
        assert!(e("tier = \"lgwan\"\n[lockout]\nmax_failures = 0").contains("lockout.max_failures"));
        assert!(e("tier = \"lgwan\"\n[biometric]\nface_threshold = 1.5").contains("face_threshold"));
        assert!(e("tier = \"lgwan\"\n[tls]\ncert = \"a.pem\"").contains("go together"));
        assert!(e("tier = \"lgwan\"\nlisten = \"x\"").contains("listen"));
        assert!(e("tier = \"lgwan\"\nstroe = \"x\"").contains("unknown field `stroe`"));
        assert!(e("tier = \"lgwan\"\n[audit]\nbatch_size = 0").contains("audit.batch_size"));
        assert!(
            e("tier = \"lgwan\"\n[audit]\nbatch_size = 900\nstream_records = 10")
                .contains("audit.stream_records")
        );
        assert!(e("tier = \"lgwan\"\n[audit]\nfoward = false").contains("unknown field `foward`"));
        assert!(e("tier = \"lgwan\"\n[audit]\ninterval_ms = 60000").contains("audit.interval_ms"));
        assert!(e("tier = \"lgwan\"\n[lockout]\nlock_secs = 0").contains("lockout.lock_secs"));
        assert!(e("tier = \"lgwan\"\n[cards]\nreload_secs = 86401").contains("cards.reload_secs"));
        assert!(e("tier = \"lgwan\"\n[challenge]\nmax_open = 0").contains("challenge.max_open"));
        assert!(e("tier = \"lgwan\"\n[engine]\ntimeout_ms = 0").contains("engine.timeout_ms"));
        assert!(
            e("tier = \"lgwan\"\n[engine]\nkeepalive_secs = 0").contains("engine.keepalive_secs")
        );
        assert!(
            e("tier = \"lgwan\"\n[engine]\nkeepalive_secs = 3601").contains("between 1 and 3600")
        );
        assert!(
            e("tier = \"lgwan\"\n[rate_limit]\nper_device_per_minute = inf")
                .contains("rate_limit.per_device_per_minute")
        );
        let plain = e("tier = \"lgwan\"\n[engine]\nurl = \"http://10.1.2.3:7443\"");
        assert!(
            plain.contains("engine.url") && plain.contains("loopback"),
            "{plain}"
        );
        assert!(parse("tier = \"lgwan\"\n[engine]\nurl = \"http://127.0.0.1:7443\"").is_ok());
    }
}
