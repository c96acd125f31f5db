//! Starting the engine daemon: store → policies and entities → TLS → listener.
//!
//! [`start`] returns a handle rather than blocking, so the `sekisho engine serve`
//! binary, the demo and every integration test start a real server the same way.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sekisho_proto::v1 as pb;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::audit::decisions::{DecisionLog, DecisionWriter};
use crate::config::EngineConfig;
use crate::diagnostics::InvalidPolicies;
use crate::directory::DirectorySync;
use crate::engine::{CacheLimits, Engine};
use crate::entities::{parse_entities_json, Directory, EntityError};
use crate::grpc::audit::AuditSinkService;
use crate::grpc::{AdminService, Clients, DecisionService, EngineState};
use crate::pki::{PkiError, PkiFiles};
use crate::policies::{CompiledPolicies, LoadError, PolicySources};
use crate::store::{Store, StoreError};

/// The schema every engine knows, used until a version is published.
pub const DEFAULT_SCHEMA: &str = include_str!("../../policies/sekisho.cedarschema");

/// How long a shutdown waits for calls in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Largest admin request accepted (a whole city's entities in one transaction).
const MAX_ADMIN_MESSAGE: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("policy store: {0}")]
    Store(#[from] StoreError),
    #[error("bootstrap policies: {0}")]
    BootstrapLoad(#[from] LoadError),
    #[error("bootstrap policies are invalid:\n{0}")]
    BootstrapInvalid(InvalidPolicies),
    #[error("bootstrap entities: {0}")]
    BootstrapEntities(String),
    #[error("stored policy version {version} does not compile:\n{diagnostics}")]
    StoredPolicies {
        version: u64,
        diagnostics: InvalidPolicies,
    },
    #[error("stored entities are inconsistent: {0}")]
    StoredEntities(EntityError),
    #[error("TLS: {path}: {message}")]
    Tls { path: String, message: String },
    #[error("TLS: {0}")]
    Pki(#[from] PkiError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Directory(#[from] crate::directory::DirectoryConfigError),
}

/// A running engine. Dropping it does not stop the server; call [`RunningEngine::shutdown`].
pub struct RunningEngine {
    pub addr: SocketAddr,
    pub state: Arc<EngineState>,
    /// Where the generated development PKI is, when one is used.
    pub pki: Option<PkiFiles>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    poller: JoinHandle<()>,
    /// The directory sync schedule, when a directory is configured.
    scheduler: Option<JoinHandle<()>>,
    decision_writer: Option<DecisionWriter>,
}

impl RunningEngine {
    /// Stops accepting calls, ends `WatchPolicy` streams, lets calls in flight finish
    /// for up to [`SHUTDOWN_GRACE`], then stops regardless; finally writes the
    /// decisions still queued for the decision log.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.state.close_streams();
        self.poller.abort();
        if let Some(s) = &self.scheduler {
            s.abort();
        }
        let served = self.stop_server().await;
        if let Some(writer) = self.decision_writer.take() {
            writer.flush_and_stop(SHUTDOWN_GRACE).await;
        }
        served
    }

    async fn stop_server(&mut self) -> Result<(), ServeError> {
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(Ok(r)) => r.map_err(ServeError::from),
            Ok(Err(e)) if e.is_cancelled() => Ok(()),
            Ok(Err(e)) => Err(ServeError::Task(e.to_string())),
            Err(_) => {
                tracing::warn!(
                    "calls still in flight after the shutdown grace period; stopping anyway"
                );
                self.server.abort();
                Ok(())
            }
        }
    }
}

/// Makes sure rustls uses ring (the one provider this workspace builds).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|e| ServeError::Tls {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Opens the store and brings up the engine and its listener.
pub async fn start(config: &EngineConfig) -> Result<RunningEngine, ServeError> {
    install_crypto_provider();
    // Checked first: a directory mistake should stop the start before anything else.
    let directory_sync = match &config.directory {
        Some(d) => Some(Arc::new(DirectorySync::new(d.resolve(Path::new("."))?))),
        None => None,
    };
    let store = Store::open(&config.store, &config.tenant).await?;
    tracing::info!(store = %crate::store::redact_url(&config.store), backend = store.backend(), tenant = %config.tenant, "store open");

    if store.latest_version().await?.is_none() {
        if let Some(dir) = &config.bootstrap.policies {
            let sources = PolicySources::load_dir(dir)?;
            let compiled =
                CompiledPolicies::compile(sources, 0).map_err(ServeError::BootstrapInvalid)?;
            let info = store
                .publish(
                    &compiled.sources,
                    "bootstrap",
                    compiled.policies.len() as u32,
                )
                .await?;
            tracing::info!(version = info.version, dir = %dir.display(), "published bootstrap policies");
        }
    }
    // The generation first: a change landing before the load is then reloaded later.
    let mut entity_generation = store.entity_generation().await?;
    let mut batch = store.load_entities().await?;
    if batch.is_empty() {
        if let Some(file) = &config.bootstrap.entities {
            let text = std::fs::read_to_string(file)
                .map_err(|e| ServeError::BootstrapEntities(format!("{}: {e}", file.display())))?;
            let loaded = parse_entities_json(&file.display().to_string(), &text)
                .map_err(|e| ServeError::BootstrapEntities(e.to_string()))?;
            Directory::from_batch(loaded.clone())
                .map_err(|e| ServeError::BootstrapEntities(e.to_string()))?;
            entity_generation = store.apply_entities(&loaded, &Default::default()).await?;
            tracing::info!(entities = loaded.len(), file = %file.display(), "loaded bootstrap entities");
            batch = loaded;
        }
    }
    let directory = Directory::from_batch(batch).map_err(ServeError::StoredEntities)?;

    let (compiled, version) = match store.get_version(None).await? {
        Some((info, sources)) => {
            let compiled =
                CompiledPolicies::compile(sources, info.version).map_err(|diagnostics| {
                    ServeError::StoredPolicies {
                        version: info.version,
                        diagnostics,
                    }
                })?;
            (compiled, Some(info))
        }
        None => {
            tracing::warn!("no policy version published yet: every decision denies until `sekisho policy publish`");
            let empty = PolicySources::new(DEFAULT_SCHEMA.to_string(), Vec::new());
            let compiled = CompiledPolicies::compile(empty, 0).map_err(|diagnostics| {
                ServeError::StoredPolicies {
                    version: 0,
                    diagnostics,
                }
            })?;
            (compiled, None)
        }
    };
    tracing::info!(
        policy_version = %compiled.label(),
        policies = compiled.policies.len(),
        users = directory.user_count(),
        devices = directory.device_count(),
        "engine ready"
    );
    let limits = CacheLimits {
        plan_tables: config.cache.plan_tables,
        slices: config.cache.slices,
    };
    let engine = Arc::new(Engine::with_limits(compiled, directory, limits));

    let keepalive = Duration::from_secs(config.keepalive_secs);
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive));
    let mut pki = None;
    // Also for a configuration built in code, which `EngineConfig::load` did not check.
    if config.tls.plaintext && !config.listen.ip().is_loopback() {
        return Err(ServeError::Tls {
            path: "tls.plaintext".into(),
            message: format!(
                "serving without TLS (and without admin checks) needs a loopback listen address, not {}",
                config.listen
            ),
        });
    }
    let clients = if config.tls.plaintext {
        tracing::warn!(listen = %config.listen, "serving WITHOUT TLS (tls.plaintext = true): loopback test beds only");
        None
    } else {
        let (cert, key, ca) = match (&config.tls.cert, &config.tls.key, &config.tls.client_ca) {
            (Some(c), Some(k), Some(ca)) => (c.clone(), k.clone(), ca.clone()),
            _ => {
                let names: Vec<&str> = config.tls.server_names.iter().map(String::as_str).collect();
                let (files, generated) = PkiFiles::ensure(&config.tls.generate_dir, &names)?;
                if generated {
                    tracing::info!(dir = %files.dir.display(), "generated a development PKI (CA, engine, admin and gateway certificates)");
                }
                let paths = (files.server_cert(), files.server_key(), files.ca());
                pki = Some(files);
                paths
            }
        };
        let identity = Identity::from_pem(read_pem(&cert)?, read_pem(&key)?);
        let tls = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read_pem(&ca)?));
        builder = builder.tls_config(tls)?;
        Some(Clients {
            admins: config.tls.admin_names.clone(),
            gateways: config.tls.gateway_names.clone(),
        })
    };

    let last_revocation = store.last_revocation().await?;
    let (decisions, decision_writer) = DecisionLog::start(
        store.audit(),
        config.audit.decision_sample,
        config.audit.decision_queue,
    );
    let audit_sink = AuditSinkService::new(store.audit())
        .only_for(clients.clone())
        .at_most(config.audit.max_shipments);
    let state = EngineState::new(
        engine,
        store,
        version,
        entity_generation,
        clients,
        decisions,
        directory_sync.clone(),
    );
    state.revocations_advanced(last_revocation);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let router = builder
        .add_service(pb::policy_decision_server::PolicyDecisionServer::new(
            DecisionService(state.clone()),
        ))
        .add_service(
            pb::policy_admin_server::PolicyAdminServer::new(AdminService(state.clone()))
                .max_decoding_message_size(MAX_ADMIN_MESSAGE),
        )
        .add_service(audit_sink.server());
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        crate::transport::incoming(listener),
        async {
            let _ = stopped.await;
        },
    ));
    let poll_state = state.clone();
    let every = Duration::from_secs(config.poll_interval_secs);
    let poller = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = poll_state.refresh().await {
                tracing::warn!(error = %e, "could not check for new policy versions; serving the current one");
            }
        }
    });
    let scheduler = directory_sync.map(|sync| {
        tracing::info!(url = %sync.config.url, profile = sync.config.profile.name(), "directory sync configured");
        tokio::spawn(crate::directory::schedule::run(state.clone(), sync))
    });
    tracing::info!(%addr, tls = !config.tls.plaintext, "listening");
    Ok(RunningEngine {
        addr,
        state,
        pki,
        stop: Some(stop),
        server,
        poller,
        scheduler,
        decision_writer: Some(decision_writer),
    })
}
