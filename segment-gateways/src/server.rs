//! Starting a gateway: store and key → journal → verifiers → engine link (and the
//! journal's forwarder) → TLS → listener.
//!
//! [`start`] returns a handle rather than blocking, so `sekisho gateway serve`, the
//! demo and every integration test start a real gateway the same way.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sekisho_policy_engine::pki::{PkiError, PkiFiles, Usage};
use sekisho_policy_engine::store::StoreError;
use sekisho_policy_engine::Tier;
use sekisho_proto::v1 as pb;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::cards::{CardFiles, CardReloader};
use crate::challenge::Challenges;
use crate::config::{Resolved, KEY_ENV};
use crate::credentials::{CredentialError, CredentialStore};
use crate::crypto::{KeyError, SealingKey};
use crate::db::Db;
use crate::decide::Decider;
use crate::factors::card::CardTrustError;
use crate::factors::password::{DirectoryConfigError, PasswordVerifier};
use crate::forward::{ForwardSettings, Forwarder};
use crate::grpc::admin::AdminService;
use crate::grpc::logon::LogonService;
use crate::hashing::{HashError, SecretHasher};
use crate::journal::{Journal, JournalError};
use crate::lockout::LockoutPolicy;
use crate::logon::{FlowSettings, Gateway};
use crate::ratelimit::RateLimiter;
use crate::revoke::RevocationFollower;
use crate::tls::{self, ClientTls, ConnectError, PemBlock};

/// Largest admin request accepted: a users import of a whole city (4,700 users with
/// a card certificate each is about 8 MiB).
const ADMIN_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How long a shutdown waits for calls in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("credential store: {0}")]
    Store(#[from] StoreError),
    #[error("credential store: {0}")]
    Credentials(#[from] CredentialError),
    #[error("credential key: {0}")]
    Key(#[from] KeyError),
    #[error("credential key: {path} does not exist, but the store already holds credentials sealed with a key; restore that key file (or set {KEY_ENV}) rather than starting with a new one")]
    KeyFileMissing { path: String },
    #[error("audit journal: {0}")]
    Journal(#[from] JournalError),
    #[error("argon2: {0}")]
    Hash(#[from] HashError),
    #[error("cards: {0}")]
    Cards(#[from] CardTrustError),
    #[error("directory: {0}")]
    Directory(#[from] DirectoryConfigError),
    #[error("TLS: {0}")]
    Pki(#[from] PkiError),
    #[error("TLS: {path}: {message}")]
    Tls { path: String, message: String },
    #[error("engine link: {0}")]
    Engine(#[from] ConnectError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A gateway serving on `addr` until [`RunningGateway::shutdown`].
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub tier: Tier,
    /// The development PKI in use, when no certificates were configured.
    pub pki: Option<PkiFiles>,
    pub gateway: Arc<Gateway>,
    /// Ships the journal to the engine; `None` with `audit.forward = false`.
    forwarder: Option<Forwarder>,
    revocations: Option<RevocationFollower>,
    /// Re-reads the card CAs and CRLs; `None` without cards or with
    /// `cards.reload_secs = 0`.
    card_reloader: Option<CardReloader>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningGateway {
    /// The seq through which the engine has confirmed this gateway's journal, as it
    /// changes; `None` when the journal is kept local (`audit.forward = false`).
    pub fn forwarded_through(&self) -> Option<watch::Receiver<u64>> {
        self.forwarder.as_ref().map(Forwarder::forwarded_through)
    }

    /// The last revocation (from the engine's directory sync) this gateway applied.
    pub fn revocations_applied(&self) -> Option<watch::Receiver<u64>> {
        self.revocations.as_ref().map(RevocationFollower::applied)
    }

    /// Looks at the card CA and CRL files now, as the periodic check does: a
    /// changed set is put in force and journaled. Returns whether it was.
    pub async fn reload_cards(&self) -> bool {
        crate::cards::reload(&self.gateway).await
    }

    /// Stops accepting calls and lets calls in flight finish for up to
    /// [`SHUTDOWN_GRACE`], then commits what the journal still holds. Events not yet
    /// shipped stay in the journal for the next start.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gateway server ended with an error"),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    "calls still in flight after the shutdown grace period; stopping anyway"
                );
                self.server.abort();
            }
        }
        if let Some(f) = self.forwarder.take() {
            f.stop().await;
        }
        if let Some(r) = self.revocations.take() {
            r.stop().await;
        }
        if let Some(r) = self.card_reloader.take() {
            r.stop().await;
        }
        self.gateway.journal.close().await;
        self.gateway.store.db().close().await;
    }
}

fn read_pem(path: &Path, block: PemBlock) -> Result<Vec<u8>, GatewayError> {
    let error = |message: String| GatewayError::Tls {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    if block.is_in(&pem) {
        Ok(pem)
    } else {
        Err(error(format!("no {} PEM block", block.name())))
    }
}

/// The credential key: the environment variable, else the key file, which is
/// created when missing only for a store that holds nothing sealed yet (a new
/// gateway): for a store in use, a missing file is a lost or mistyped key file, and
/// a new key would only turn that into "wrong key" and leave a stray file behind. A
/// key that does not match the store is refused by [`CredentialStore::open`].
async fn load_key(key_file: &Path, db: &Db) -> Result<SealingKey, GatewayError> {
    if std::env::var_os(KEY_ENV).is_some() {
        return Ok(SealingKey::from_env(KEY_ENV)?);
    }
    if key_file.exists() {
        return Ok(SealingKey::from_file(key_file)?);
    }
    if CredentialStore::is_sealed(db).await? {
        return Err(GatewayError::KeyFileMissing {
            path: key_file.display().to_string(),
        });
    }
    let key = SealingKey::write_new(key_file)?;
    tracing::info!(file = %key_file.display(), "generated a new credential key; back it up: without it enrolled TOTP secrets and biometric templates cannot be read");
    Ok(key)
}

pub async fn start(resolved: Resolved) -> Result<RunningGateway, GatewayError> {
    sekisho_policy_engine::server::install_crypto_provider();
    let Resolved {
        config,
        tier,
        name,
        store: store_url,
    } = resolved;

    // What only reads configured files comes first: a mistake there must not leave
    // a new store and key file behind.
    let hasher = SecretHasher::new(config.argon2.clone())?;
    let passwords = match &config.directory {
        Some(d) => PasswordVerifier::directory(d.clone())?,
        None => PasswordVerifier::Local(hasher.clone()),
    };
    let cards = CardFiles::load(&config.cards)?.map(Arc::new);
    if cards.is_none() {
        tracing::warn!("no card CA configured (cards.ca, cards.mynumber_ca): card logons will fail on this tier");
    }

    let db = Db::open(&store_url, &config.tenant, tier).await?;
    let key = load_key(&config.key_file, &db).await?;
    let store = CredentialStore::open(db, key).await?;
    tracing::info!(store = %sekisho_policy_engine::store::redact_url(&store_url), backend = store.db().backend(), tier = tier.name(), "credential store open");
    let journal = Journal::start(store.db().clone(), name.clone()).await?;

    // The development PKI serves when no certificates are configured.
    let needs_pki = config.tls.cert.is_none() || config.engine.ca.is_none();
    let pki = if needs_pki {
        let names: Vec<&str> = config.tls.server_names.iter().map(String::as_str).collect();
        let (files, generated) = PkiFiles::ensure(&config.tls.generate_dir, &names)?;
        if generated {
            tracing::info!(dir = %files.dir.display(), "generated a development PKI");
        }
        Some(files)
    } else {
        None
    };
    let (cert, key, client_ca) = match (
        &config.tls.cert,
        &config.tls.key,
        &config.tls.client_ca,
        &pki,
    ) {
        (Some(c), Some(k), Some(ca), _) => (c.clone(), k.clone(), ca.clone()),
        (_, _, _, Some(files)) => {
            let names: Vec<&str> = config.tls.server_names.iter().map(String::as_str).collect();
            let stem = format!("gateway-{}-server", tier.name());
            let cn = format!("sekisho-gateway-{}", tier.name());
            let (c, k) = files.ensure_leaf(&stem, &cn, &names, Usage::Server)?;
            (c, k, files.ca())
        }
        _ => return Err(incomplete_tls()),
    };
    let engine_tls = match (
        &config.engine.ca,
        &config.engine.cert,
        &config.engine.key,
        &pki,
    ) {
        (Some(ca), Some(c), Some(k), _) => ClientTls {
            ca: ca.clone(),
            cert: c.clone(),
            key: k.clone(),
        },
        (_, _, _, Some(files)) => ClientTls {
            ca: files.ca(),
            cert: files.gateway_cert(),
            key: files.gateway_key(),
        },
        _ => return Err(incomplete_tls()),
    };
    if config.engine.url.starts_with("http://") {
        tracing::warn!(url = %config.engine.url, "talking to the policy engine WITHOUT TLS (engine.url is http://): loopback test beds only");
    }
    // Lazy: the gateway starts (and answers "engine unavailable") while the engine
    // is down, and connects when it comes up.
    let engine_timeout = Duration::from_millis(config.engine.timeout_ms);
    let channel = tls::open_lazy(tls::keep_alive(
        tls::endpoint(
            &config.engine.url,
            &engine_tls,
            Some(&config.engine.server_name),
            engine_timeout,
        )?,
        Duration::from_secs(config.engine.keepalive_secs),
        engine_timeout,
    ));
    let forwarder = if config.audit.forward {
        Some(Forwarder::spawn(
            store.db().clone(),
            &journal,
            channel.clone(),
            ForwardSettings {
                batch_size: config.audit.batch_size,
                stream_records: config.audit.stream_records,
                interval: Duration::from_millis(config.audit.interval_ms),
            },
        ))
    } else {
        tracing::info!("audit.forward = false: the audit journal stays in this gateway's store");
        None
    };

    let gateway = Arc::new(Gateway {
        store,
        journal,
        decider: Decider::remote(channel.clone(), tier, engine_timeout),
        challenges: Challenges::new(
            Duration::from_secs(config.challenge.ttl_secs),
            config.challenge.max_open,
        ),
        rate: RateLimiter::new(
            config.rate_limit.per_device_per_minute,
            config.rate_limit.burst,
        ),
        hasher,
        passwords,
        cards,
        settings: FlowSettings {
            lockout: LockoutPolicy {
                max_failures: config.lockout.max_failures,
                lock_ms: i64::try_from(config.lockout.lock_secs.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
            },
            face_threshold: config.biometric.face_threshold,
            vein_threshold: config.biometric.vein_threshold,
            accept_upstream_claims: config.telework.accept_upstream_claims,
        },
    });
    let admin_names: Arc<[String]> = config.tls.admin_names.clone().into();
    let revocations = Some(RevocationFollower::spawn(gateway.clone(), channel));
    let card_reloader = (gateway.cards.is_some() && config.cards.reload_secs > 0).then(|| {
        CardReloader::spawn(
            gateway.clone(),
            Duration::from_secs(config.cards.reload_secs),
        )
    });

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read_pem(&cert, PemBlock::Certificate)?,
            read_pem(&key, PemBlock::PrivateKey)?,
        ))
        .client_ca_root(Certificate::from_pem(read_pem(
            &client_ca,
            PemBlock::Certificate,
        )?));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let router = Server::builder()
        .tls_config(tls)?
        .add_service(pb::logon_server::LogonServer::new(LogonService::new(
            gateway.clone(),
            admin_names.clone(),
        )))
        .add_service(
            pb::gateway_admin_server::GatewayAdminServer::new(AdminService::new(
                gateway.clone(),
                admin_names,
                config.totp.clone(),
            ))
            // A city's users import with card certificates is several MiB.
            .max_decoding_message_size(ADMIN_MAX_MESSAGE),
        );
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        sekisho_policy_engine::transport::incoming(listener),
        async {
            let _ = stopped.await;
        },
    ));
    tracing::info!(%addr, gateway = %name, tier = tier.name(), engine = %config.engine.url, "listening");
    Ok(RunningGateway {
        addr,
        tier,
        pki,
        gateway,
        forwarder,
        revocations,
        card_reloader,
        stop: Some(stop),
        server,
    })
}

/// Only reachable with a config that bypassed [`crate::config::GatewayConfig::resolve`].
fn incomplete_tls() -> GatewayError {
    GatewayError::Tls {
        path: "(config)".into(),
        message: "tls.cert/key/client_ca and engine.ca/cert/key must each be set completely or not at all".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_key_file_is_created_only_for_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gw.db").display());
        let key_file = dir.path().join("gateway.key");
        let db = Db::open(&url, "city", Tier::Lgwan).await.unwrap();

        // A new store: the key is made, and the store bound to it.
        let key = load_key(&key_file, &db).await.unwrap();
        assert!(key_file.exists());
        CredentialStore::open(db.clone(), key).await.unwrap();

        // The same store without its key file: refused, and no new file appears.
        std::fs::remove_file(&key_file).unwrap();
        let e = load_key(&key_file, &db).await.unwrap_err();
        assert!(matches!(e, GatewayError::KeyFileMissing { .. }), "{e}");
        assert!(e.to_string().contains("gateway.key"), "{e}");
        assert!(!key_file.exists());
    }

    #[test]
    fn a_tls_file_without_its_pem_block_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway-key.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_pem(&path, PemBlock::PrivateKey)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gateway-key.pem") && e.contains("no PRIVATE KEY PEM block"),
            "{e}"
        );
    }
}
