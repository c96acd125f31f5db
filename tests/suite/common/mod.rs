//! Test kit: a real engine per test (kanidm-style), on SQLite in a temporary directory
//! or on the PostgreSQL the test script provides, with mutual TLS from a generated PKI.

#![allow(dead_code)]

pub mod cable;
pub mod gateway;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use sekisho::client::EngineArgs;
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::server::{self, RunningEngine};
use sekisho_proto::v1 as pb;
use tonic::transport::Channel;

pub const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
pub const ENTITIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/policies/examples/entities.json"
);

/// The PostgreSQL database the test script prepares.
pub fn pg_url() -> String {
    std::env::var("SEKISHO_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sekisho_test".into())
}

/// A tenant no other test (or earlier run) uses, so tests share one database safely.
pub fn unique_tenant(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestEngine {
    pub running: RunningEngine,
    pub dir: tempfile::TempDir,
    pub config: EngineConfig,
}

impl TestEngine {
    /// Starts an engine with an empty store on the given backend.
    pub async fn start(backend: Backend, name: &str) -> TestEngine {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = EngineConfig {
            poll_interval_secs: 1,
            ..EngineConfig::self_contained(dir.path())
        };
        if let Backend::Postgres = backend {
            config.store = pg_url();
            config.tenant = unique_tenant(name);
        }
        Self::start_with(config, dir).await
    }

    pub async fn start_with(config: EngineConfig, dir: tempfile::TempDir) -> TestEngine {
        let running = server::start(&config).await.unwrap_or_else(|e| {
            panic!("engine did not start on {}: {e} (PostgreSQL tests need scripts/test.sh or SEKISHO_TEST_PG_URL)", config.store)
        });
        TestEngine {
            running,
            dir,
            config,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.running.addr.port())
    }

    fn pki(&self) -> &sekisho_policy_engine::pki::PkiFiles {
        self.running
            .pki
            .as_ref()
            .expect("test engines use the generated PKI")
    }

    pub fn admin(&self) -> EngineArgs {
        let p = self.pki();
        EngineArgs::new(self.url(), &p.ca(), &p.admin_cert(), &p.admin_key())
    }

    pub fn gateway(&self) -> EngineArgs {
        let p = self.pki();
        EngineArgs::new(self.url(), &p.ca(), &p.gateway_cert(), &p.gateway_key())
    }

    pub async fn admin_client(&self) -> pb::policy_admin_client::PolicyAdminClient<Channel> {
        pb::policy_admin_client::PolicyAdminClient::new(
            self.admin().connect().await.expect("admin connects"),
        )
    }

    pub async fn decision_client(
        &self,
    ) -> pb::policy_decision_client::PolicyDecisionClient<Channel> {
        pb::policy_decision_client::PolicyDecisionClient::new(
            self.gateway().connect().await.expect("gateway connects"),
        )
    }

    /// The engine's plan for `user` logging on at `device`.
    pub async fn plan_logon(&self, user: &str, device: &str) -> pb::PlanResponse {
        self.decision_client()
            .await
            .plan(plan_request(user, device, "logon"))
            .await
            .expect("plan")
            .into_inner()
    }

    /// Loads the example city and publishes the reference policies (v1).
    pub async fn load_reference(&self) -> pb::PolicyVersionInfo {
        let mut admin = self.admin_client().await;
        let batch =
            sekisho::cmd::read_entities(std::path::Path::new(ENTITIES)).expect("example entities");
        admin
            .upsert_entities(sekisho_policy_engine::grpc::batch_to_proto(&batch))
            .await
            .expect("upsert");
        admin
            .publish(publish_request(&PathBuf::from(POLICIES)))
            .await
            .expect("publish")
            .into_inner()
            .version
            .expect("a version")
    }

    pub async fn stop(self) {
        self.running.shutdown().await.expect("clean shutdown");
    }

    /// Stops the engine and keeps its store, certificates and address, so that the
    /// store can be read and [`StoppedEngine::start`] brings it back where its
    /// clients look for it.
    pub async fn stop_keeping_address(self) -> StoppedEngine {
        let TestEngine {
            running,
            dir,
            mut config,
        } = self;
        config.listen = running.addr;
        running.shutdown().await.expect("engine stops");
        StoppedEngine { dir, config }
    }
}

/// See [`TestEngine::stop_keeping_address`].
pub struct StoppedEngine {
    dir: tempfile::TempDir,
    pub config: EngineConfig,
}

impl StoppedEngine {
    pub async fn start(self) -> TestEngine {
        TestEngine::start_with(self.config, self.dir).await
    }
}

/// Runs the binary with `stdin`, returning (exit code, stdout, stderr).
pub fn sekisho(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sekisho"))
        .args(args)
        .env("LANG", "C")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sekisho");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("sekisho ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn publish_request(dir: &std::path::Path) -> pb::PublishRequest {
    let s = sekisho_policy_engine::PolicySources::load_dir(dir).expect("policy dir");
    sekisho_policy_engine::grpc::publish_request(s, "test", false, false)
}

/// An upsert that leaves example user `id` enrolled in `factors` only.
pub fn reenrol(id: &str, factors: &[&str]) -> pb::UpsertEntitiesRequest {
    let mut user = sekisho::cmd::read_entities(std::path::Path::new(ENTITIES))
        .expect("example entities")
        .users
        .into_iter()
        .find(|u| u.id == id)
        .expect("an example user");
    user.enrolled = sekisho_policy_engine::FactorSet::parse_names(factors).expect("factor names");
    sekisho_policy_engine::grpc::batch_to_proto(&sekisho_policy_engine::entities::EntityBatch {
        users: vec![user],
        ..Default::default()
    })
}

pub fn plan_request(user: &str, device: &str, action: &str) -> pb::PlanRequest {
    pb::PlanRequest {
        user: user.into(),
        device: device.into(),
        action: action.into(),
        context: Some(pb::DecisionContext {
            via: "console".into(),
            upstream: vec![],
            hour: Some(10),
        }),
        emergency_otp_active: false,
        request_id: String::new(),
        ..Default::default()
    }
}

pub fn options(r: &pb::PlanResponse) -> Vec<Vec<String>> {
    r.options.iter().map(|o| o.factors.clone()).collect()
}

/// A copy of the reference policy directory that a test may change.
pub fn policy_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for e in std::fs::read_dir(POLICIES).expect("policies dir") {
        let e = e.expect("entry");
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
        }
    }
    dir
}
