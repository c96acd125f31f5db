//! The audit trail of a real gateway in front of a real engine: every answer to an
//! endpoint and every administrative change is journaled before the caller hears
//! it, the chain verifies, and no secret is in it.

use std::path::PathBuf;
use std::time::Duration;

use sekisho_gateway::agent::{Agent, Presented};
use sekisho_gateway::config::GatewayConfig;
use sekisho_gateway::factors::totp::{self, TotpParams};
use sekisho_gateway::journal::{self, Journals};
use sekisho_gateway::tls::ClientTls;
use sekisho_policy_engine::audit::Outcome;
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::pki::Usage;
use sekisho_policy_engine::Tier;
use sekisho_proto::v1 as pb;

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
const ENTITIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policies/examples/entities.json"
);
const GW: &str = "internet-gateway";
const PASSWORD: &str = "correct horse battery";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn password(p: &str) -> Presented {
    Presented {
        password: Some(p.into()),
        ..Presented::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_admin_changes_are_journaled_before_they_are_given() {
    sekisho_policy_engine::server::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let engine_dir = dir.path().join("engine");
    let gw_dir = dir.path().join("gateway");
    std::fs::create_dir_all(&engine_dir).unwrap();
    std::fs::create_dir_all(&gw_dir).unwrap();
    let mut engine_config = EngineConfig {
        poll_interval_secs: 3600,
        ..EngineConfig::self_contained(&engine_dir)
    };
    engine_config.bootstrap.policies = Some(PathBuf::from(POLICIES));
    engine_config.bootstrap.entities = Some(PathBuf::from(ENTITIES));
    let engine = sekisho_policy_engine::server::start(&engine_config)
        .await
        .expect("engine starts");
    let pki = engine.pki.clone().expect("development PKI");
    let engine_url = format!("https://127.0.0.1:{}", engine.addr.port());

    let mut config = GatewayConfig::self_contained(Tier::Internet, &gw_dir, &pki.dir, &engine_url);
    config.lockout.max_failures = 2;
    config.argon2.memory_kib = 8_192;
    config.argon2.iterations = 5;
    config.rate_limit.burst = 1_000;
    let gateway = sekisho_gateway::server::start(config.resolve("test", &gw_dir).unwrap())
        .await
        .expect("gateway starts");
    assert!(
        gateway.forwarded_through().is_some(),
        "forwarding is on by default"
    );
    let url = format!("https://127.0.0.1:{}", gateway.addr.port());
    let timeout = Duration::from_secs(10);

    let admin_tls = ClientTls {
        ca: pki.ca(),
        cert: pki.admin_cert(),
        key: pki.admin_key(),
    };
    let mut admin = pb::gateway_admin_client::GatewayAdminClient::new(
        sekisho_gateway::tls::connect(&url, &admin_tls, Some("localhost"), timeout)
            .await
            .unwrap(),
    );
    admin
        .register_device(pb::RegisterDeviceRequest {
            device: Some(pb::Device {
                id: "net-desk-01".into(),
                tier: "internet".into(),
                kind: "desktop".into(),
                capabilities: vec!["card".into()],
                location: "3F".into(),
            }),
            capture_key: Vec::new(),
        })
        .await
        .unwrap();
    admin
        .set_secret(pb::SetSecretRequest {
            user: "u001".into(),
            factor: "password".into(),
            secret: PASSWORD.into(),
        })
        .await
        .unwrap();
    let enrolled = admin
        .enroll_totp(pb::EnrollTotpRequest {
            user: "u001".into(),
            algorithm: String::new(),
            digits: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let otp = admin
        .issue_emergency_otp(pb::IssueEmergencyOtpRequest {
            user: "u002".into(),
            ttl_secs: 600,
        })
        .await
        .unwrap()
        .into_inner();

    let (cert, key) = pki
        .ensure_leaf("device-net-desk-01", "net-desk-01", &[], Usage::Client)
        .unwrap();
    let device_tls = ClientTls {
        ca: pki.ca(),
        cert,
        key,
    };
    let mut agent = Agent::connect(&url, &device_tls, Some("localhost"))
        .await
        .unwrap();

    let denied = agent
        .logon("u001", &password("wrong password"), "")
        .await
        .unwrap();
    assert_eq!(denied.reason, "factor_failed");
    let secret = data_encoding::BASE32_NOPAD
        .decode(enrolled.secret_base32.as_bytes())
        .unwrap();
    let code = totp::code_at(&secret, &TotpParams::default(), now_secs() / 30);
    let presented = Presented {
        password: Some(PASSWORD.into()),
        totp: Some(code.clone()),
        ..Presented::default()
    };
    let allowed = agent.logon("u001", &presented, "").await.unwrap();
    assert_eq!(allowed.decision(), pb::Decision::Allow, "{allowed:?}");
    agent.lock(&allowed.session_id).await.unwrap();
    agent.logoff(&allowed.session_id).await.unwrap();
    for _ in 0..2 {
        agent.logon("u003", &password("guess"), "").await.unwrap();
    }
    admin
        .unlock_user(pb::UnlockUserRequest {
            user: "u003".into(),
        })
        .await
        .unwrap();
    let stale = agent
        .complete("no-such-challenge", Vec::new())
        .await
        .unwrap();
    assert_eq!(stale.reason, "challenge_invalid");

    // Everything answered is already in the journal: no wait, no flush.
    let db = gateway.gateway.store.db().clone();
    let events = journal::read_events(&db, GW).await.unwrap();
    let actions: Vec<(&str, Outcome)> = events
        .iter()
        .map(|e| (e.body.action.as_str(), e.body.outcome))
        .collect();
    use Outcome::{Allow, Deny};
    assert_eq!(
        actions,
        [
            ("device_register", Allow),
            ("enroll", Allow),
            ("enroll", Allow),
            ("emergency_otp_issue", Allow),
            ("logon", Deny),
            ("logon", Allow),
            ("lock", Allow),
            ("logoff", Allow),
            ("logon", Deny),
            ("logon", Deny),
            ("lockout", Deny),
            ("unlock_user", Allow),
            ("logon", Deny),
        ]
    );
    let admin_name = sekisho_policy_engine::pki::DEFAULT_ADMIN_NAME;
    let by = |i: usize| &events[i].body;
    assert_eq!(by(0).device, "net-desk-01");
    assert_eq!(by(0).operator, admin_name);
    assert_eq!(by(1).detail["factor"], "password");
    assert_eq!(
        (by(2).user.as_str(), by(2).detail["factor"].as_str()),
        ("u001", "totp")
    );
    assert!(by(3).detail.contains_key("expires_at"));
    assert_eq!(by(4).failed["password"], "mismatch");
    assert_eq!(by(4).reason, "factor_failed");
    let logon = by(5);
    assert_eq!(logon.factors, ["password", "totp"]);
    assert_eq!(
        (logon.user.as_str(), logon.operator.as_str()),
        ("u001", "u001")
    );
    assert_eq!(logon.session, allowed.session_id);
    assert_eq!(logon.policy_ids, allowed.policy_ids);
    assert!(!logon.policy_version.is_empty());
    assert!(!logon.request_id.is_empty());
    assert_eq!(by(6).session, allowed.session_id);
    assert_eq!(by(10).user, "u003");
    assert!(by(10).detail.contains_key("locked_until"));
    assert_eq!(by(11).detail["was_locked"], "true");
    assert_eq!(by(12).reason, "challenge_invalid");

    // The chain holds, and nothing secret was written.
    let v = journal::verify(&db, GW).await.unwrap();
    assert_eq!((v.checked, v.broken), (13, None));
    for e in &events {
        let line = e.to_json();
        for secret in [
            PASSWORD,
            "wrong password",
            "guess",
            code.as_str(),
            otp.code.as_str(),
            enrolled.secret_base32.as_str(),
        ] {
            assert!(!line.contains(secret), "{line} contains a secret");
        }
    }

    // After a shutdown, the file opens for an auditor with every tenant and tier.
    gateway.shutdown().await;
    let file = gw_dir.join("gateway-internet.db");
    let journals = Journals::open(&file.display().to_string()).await.unwrap();
    let ids = journals.list().await.unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        (ids[0].tier.as_str(), ids[0].gateway.as_str()),
        ("internet", GW)
    );
    assert_eq!(journals.verify(&ids[0]).await.unwrap().checked, 13);
    journals.close().await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_gateway_keeps_its_journal_local() {
    sekisho_policy_engine::server::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("tls");
    let mut config =
        GatewayConfig::self_contained(Tier::Mynumber, dir.path(), &pki, "https://127.0.0.1:9");
    config.audit.forward = false;
    let gateway = sekisho_gateway::server::start(config.resolve("test", dir.path()).unwrap())
        .await
        .expect("gateway starts without an engine");
    assert!(gateway.forwarded_through().is_none());
    let receipt = gateway
        .gateway
        .record(gateway.gateway.event("unlock_user", Outcome::Allow))
        .await
        .unwrap();
    assert_eq!(receipt.seq, 1);
    let journal = gateway.gateway.journal.clone();
    gateway.shutdown().await;
    assert!(journal
        .append(sekisho_policy_engine::audit::event::EventBody::new(
            "",
            "",
            "logon",
            Outcome::Allow
        ))
        .await
        .is_err());
}
