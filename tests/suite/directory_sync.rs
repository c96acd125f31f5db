//! Directory sync against a real OpenLDAP server (the memberof overlay, a small city
//! with nested groups): initial sync, a department transfer that changes a plan, a
//! group change, a disabled user denied and their session ended at the gateway, the
//! mass-removal guard, and a directory that is down. On SQLite and PostgreSQL, through
//! the `sekisho directory` commands.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::gateway::TestGateway;
use common::{sekisho, Backend, TestEngine};
use sekisho_gateway::journal::Journals;
use sekisho_gateway::session;
use sekisho_policy_engine::audit::{Filter, Page};
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::directory::{DirectoryConfig, Profile};
use sekisho_policy_engine::Tier;
use sekisho_proto::v1 as pb;
use sekisho_testkit::Slapd;
use tonic::transport::Channel;

const PEOPLE: &str = "ou=people,dc=example,dc=jp";
const GROUPS: &str = "ou=groups,dc=example,dc=jp";
const DEVICE: &str = "lgwan-desk-17";

fn person(uid: &str, dept: &str, role: &str) -> String {
    format!(
        "dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid} san\nsn: {uid}\n\
         ou: {dept}\nemployeeType: {role}\n\n"
    )
}

fn group(cn: &str, members: &[&str]) -> String {
    let mut s = format!("dn: cn={cn},{GROUPS}\nobjectClass: groupOfNames\ncn: {cn}\n");
    for m in members {
        s.push_str(&format!("member: {m}\n"));
    }
    s.push('\n');
    s
}

fn uid_dn(uid: &str) -> String {
    format!("uid={uid},{PEOPLE}")
}

fn cn_dn(cn: &str) -> String {
    format!("cn={cn},{GROUPS}")
}

/// Five staff; `madoguchi` (the counter section) nests in `shimin` (citizen affairs),
/// which nests in `all-staff` with `jinji` and `zeimu`. Members are added before the
/// groups that name them, so the overlay can fill their `memberOf`.
fn fixture() -> String {
    let mut s = String::new();
    s += &person("tanaka", "jinji", "manager");
    s += &person("suzuki", "shimin", "staff");
    s += &person("sato", "shimin", "staff");
    s += &person("yamada", "shimin", "staff");
    s += &person("kato", "zeimu", "staff");
    s += &group("madoguchi", &[&uid_dn("yamada")]);
    s += &group("jinji", &[&uid_dn("tanaka")]);
    s += &group("zeimu", &[&uid_dn("kato")]);
    s += &group(
        "shimin",
        &[&uid_dn("suzuki"), &uid_dn("sato"), &cn_dn("madoguchi")],
    );
    s += &group(
        "all-staff",
        &[&cn_dn("jinji"), &cn_dn("shimin"), &cn_dn("zeimu")],
    );
    s
}

fn directory(slapd: &Slapd, dir: &Path) -> DirectoryConfig {
    let pw = dir.join("ldap-password");
    std::fs::write(&pw, format!("{}\n", slapd.admin_password())).expect("password file");
    let mut d = DirectoryConfig {
        url: slapd.url(),
        starttls: false,
        bind_dn: slapd.admin_dn().into(),
        bind_password_file: Some(pw),
        base_dn: slapd.base_dn().into(),
        profile: Profile::Openldap,
        sync_at: String::new(),
        timeout_secs: 5,
        max_removal_share: 0.3,
        ..Default::default()
    };
    d.attributes.disabled = Some("description".into());
    d.attributes.disabled_value = Some("disabled".into());
    d
}

async fn engine(backend: Backend, slapd: &Slapd) -> TestEngine {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = EngineConfig {
        poll_interval_secs: 1,
        ..EngineConfig::self_contained(dir.path())
    };
    if let Backend::Postgres = backend {
        config.store = common::pg_url();
        config.tenant = common::unique_tenant("dir");
    }
    config.directory = Some(directory(slapd, dir.path()));
    TestEngine::start_with(config, dir).await
}

/// `sekisho directory …` against the engine as its administrator.
fn directory_cli(engine: &TestEngine, args: &[&str]) -> (i32, String, String) {
    let a = engine.admin();
    let (ca, cert, key) = (
        a.ca.display().to_string(),
        a.cert.display().to_string(),
        a.key.display().to_string(),
    );
    let mut all = vec!["directory"];
    all.extend_from_slice(args);
    all.extend([
        "--engine", &a.url, "--ca", &ca, "--cert", &cert, "--key", &key,
    ]);
    sekisho(&all, "")
}

/// Test policies where the department decides: password alone, except tax staff
/// (zeimu), who add an authenticator code.
async fn publish_department_policies(engine: &TestEngine) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        Path::new(common::POLICIES).join("sekisho.cedarschema"),
        dir.path().join("sekisho.cedarschema"),
    )
    .expect("schema");
    std::fs::write(
        dir.path().join("departments.cedar"),
        r#"
@id("password-outside-tax")
permit (principal, action, resource)
when { principal.department != "zeimu" && context.factors.contains("password") };

@id("tax-adds-totp")
permit (principal, action, resource)
when { principal.department == "zeimu" && context.factors.containsAll(["password", "totp"]) };
"#,
    )
    .expect("policy");
    let sources = sekisho_policy_engine::PolicySources::load_dir(dir.path()).expect("load");
    let req = sekisho_policy_engine::grpc::publish_request(sources, "departments", false, true);
    engine
        .admin_client()
        .await
        .publish(req)
        .await
        .expect("publish");
}

async fn plan(engine: &TestEngine, user: &str) -> Vec<Vec<String>> {
    let mut req = common::plan_request(user, DEVICE, "logon");
    req.enrolled = Some(pb::FactorSet {
        factors: vec!["password".into(), "totp".into(), "card".into()],
    });
    let r = engine
        .decision_client()
        .await
        .plan(req)
        .await
        .expect("plan")
        .into_inner();
    common::options(&r)
}

async fn password_logon(
    ep: &mut pb::logon_client::LogonClient<Channel>,
    user: &str,
    password: &str,
) -> pb::LogonResult {
    let c = ep
        .begin(pb::BeginRequest {
            user: user.into(),
            action: "logon".into(),
            ..Default::default()
        })
        .await
        .expect("begin")
        .into_inner();
    ep.complete(pb::CompleteRequest {
        challenge_id: c.challenge_id,
        proofs: vec![pb::Proof {
            proof: Some(pb::proof::Proof::Password(password.into())),
        }],
        request_id: String::new(),
    })
    .await
    .expect("complete")
    .into_inner()
}

fn allowed(r: &pb::LogonResult) -> bool {
    r.decision == pb::Decision::Allow as i32
}

async fn sync_lifecycle(backend: Backend) {
    let slapd = Slapd::start(&fixture()).expect("slapd");
    let engine = engine(backend, &slapd).await;
    let gw = TestGateway::on_engine(engine, backend, Tier::Lgwan, |_| {}).await;
    publish_department_policies(&gw.engine).await;
    gw.register(DEVICE, "desktop", &["card"]).await;
    for u in ["suzuki", "sato", "kato"] {
        gw.set_secret(u, "password", &format!("{u}-Pass-2026"))
            .await;
    }
    let state = &gw.engine.running.state;

    // A dry run lists everyone and changes nothing.
    let (code, out, err) = directory_cli(&gw.engine, &["sync", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 added"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("added") && l.contains("suzuki") && l.contains("shimin")),
        "{out}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(state.engine.with_directory(|d| d.user("suzuki").is_none()));

    // The first sync: users, departments, roles and nested groups.
    let (code, out, err) = directory_cli(&gw.engine, &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("full sync: 5 added"), "{out}");
    assert!(out.contains("groups: 5 added"), "{out}");
    let yamada = state
        .engine
        .with_directory(|d| d.user("yamada").cloned())
        .expect("yamada synced");
    assert_eq!(yamada.record.department, "shimin");
    assert_eq!(yamada.record.role, "staff");
    assert_eq!(yamada.record.groups, vec!["madoguchi".to_string()]);
    let ancestors: Vec<&str> = yamada.ancestors.iter().map(|a| &**a).collect();
    assert_eq!(ancestors, vec!["all-staff", "madoguchi", "shimin"]);
    // Users the example city put in by hand are not the directory's to remove.
    assert!(state.engine.with_directory(|d| d.user("u007").is_some()));
    assert_eq!(plan(&gw.engine, "suzuki").await, vec![vec!["password"]]);

    // Nothing changed in the directory: an incremental run that changes nothing.
    let (code, out, err) = directory_cli(&gw.engine, &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("incremental sync: 0 added, 0 changed"),
        "{out}"
    );
    assert!(out.contains("5 unchanged"), "{out}");

    // suzuki logs on; then moves to the tax department in the directory.
    let mut ep = gw.endpoint(DEVICE).await;
    let r = password_logon(&mut ep, "suzuki", "suzuki-Pass-2026").await;
    assert!(allowed(&r), "{r:?}");
    slapd
        .apply(&format!(
            "dn: {}\nchangetype: modify\nreplace: ou\nou: zeimu\n\n",
            uid_dn("suzuki")
        ))
        .expect("transfer");
    let (code, out, err) = directory_cli(&gw.engine, &["sync", "--verbose"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("incremental sync: 0 added, 1 changed"),
        "{out}"
    );
    assert!(out.contains("department \"shimin\" → \"zeimu\""), "{out}");
    assert_eq!(
        plan(&gw.engine, "suzuki").await,
        vec![vec!["password", "totp"]]
    );

    // A group change (sato joins the counter section): the user's groups follow.
    slapd
        .apply(&format!(
            "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n\n",
            cn_dn("madoguchi"),
            uid_dn("sato")
        ))
        .expect("group change");
    let (code, out, err) = directory_cli(&gw.engine, &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    // A group changed: every user is read again.
    assert!(out.starts_with("full sync: 0 added, 1 changed"), "{out}");
    let sato = state
        .engine
        .with_directory(|d| d.user("sato").cloned())
        .expect("sato");
    assert_eq!(sato.record.groups, vec!["madoguchi", "shimin"]);

    // kato logs on, then is disabled: denied, and the session is ended at the gateway.
    let r = password_logon(&mut ep, "kato", "kato-Pass-2026").await;
    assert!(!allowed(&r), "kato needs totp too");
    let mut ep_sato = gw.endpoint(DEVICE).await;
    let r = password_logon(&mut ep_sato, "sato", "sato-Pass-2026").await;
    assert!(allowed(&r));
    let session_id = r.session_id.clone();
    let mut applied = gw.running.revocations_applied().expect("follower");
    slapd
        .apply(&format!(
            "dn: {}\nchangetype: modify\nadd: description\ndescription: disabled\n\n",
            uid_dn("sato")
        ))
        .expect("disable");
    let (code, out, err) = directory_cli(&gw.engine, &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 disabled"), "{out}");
    tokio::time::timeout(Duration::from_secs(20), applied.wait_for(|s| *s >= 1))
        .await
        .expect("the gateway applies the revocation")
        .expect("follower running");
    let db = gw.running.gateway.store.db();
    let s = session::get(db, &session_id)
        .await
        .expect("read")
        .expect("session");
    assert_eq!(s.state, session::SessionState::Ended);
    let r = password_logon(&mut ep_sato, "sato", "sato-Pass-2026").await;
    assert!(!allowed(&r), "a disabled user is denied");
    // Audited twice: the engine's deprovisioning, the gateway's ended session.
    let audit = gw.engine.running.state.store.audit();
    let deprovisioned = audit
        .query(
            &Filter {
                user: Some("sato".into()),
                action: Some("deprovision".into()),
                ..Default::default()
            },
            &Page::default(),
        )
        .await
        .expect("query");
    assert_eq!(deprovisioned.len(), 1);
    assert_eq!(deprovisioned[0].body.reason, "directory_disabled");
    // (On PostgreSQL the database holds other tests' journals too.)
    let journals = Journals::of(db);
    let mut events = Vec::new();
    for id in journals.list().await.expect("journals") {
        events.extend(journals.all_events(&id).await.expect("journal"));
    }
    let revoked: Vec<_> = events
        .iter()
        .filter(|e| e.body.action == "session_revoke" && e.body.user == "sato")
        .filter(|e| e.body.session == session_id)
        .collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].body.session, session_id);
    assert_eq!(revoked[0].body.reason, "directory_disabled");

    // The mass-removal guard: 2 of the 4 active users gone is over 30 %.
    slapd
        .apply(&format!(
            "dn: {}\nchangetype: delete\n\ndn: {}\nchangetype: delete\n\n",
            uid_dn("tanaka"),
            uid_dn("yamada")
        ))
        .expect("delete");
    let (code, out, err) = directory_cli(&gw.engine, &["sync"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("max_removal_share") && err.contains("--force"),
        "{err}"
    );
    assert!(state.engine.with_directory(|d| d.user("tanaka").is_some()));
    let (code, out, err) = directory_cli(&gw.engine, &["sync", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 removed"), "{out}");
    assert!(state.engine.with_directory(|d| d.user("tanaka").is_none()));

    // The directory goes down: a clear error, the last good data stays.
    let mut slapd = slapd;
    slapd.stop();
    let (code, out, err) = directory_cli(&gw.engine, &["sync"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("cannot connect to the directory"), "{err}");
    assert_eq!(
        plan(&gw.engine, "suzuki").await,
        vec![vec!["password", "totp"]]
    );
    let (code, out, err) = directory_cli(&gw.engine, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("2 active users, 1 disabled, 5 groups"),
        "{out}"
    );
    let failed = out
        .lines()
        .find(|l| l.contains("failed"))
        .expect("failed run listed");
    assert!(failed.contains("cannot connect"), "{out}");
    assert!(out.contains("refused"), "{out}");

    // The engine's own journal verifies like any gateway's.
    let (code, out, err) = sekisho(
        &[
            "audit",
            "verify",
            "--store",
            &gw.engine.config.store,
            "--tenant",
            &gw.engine.config.tenant,
        ],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_sync_on_sqlite() {
    sync_lifecycle(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_sync_on_postgres() {
    sync_lifecycle(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_service_account_is_a_clear_error() {
    let slapd = Slapd::start(&fixture()).expect("slapd");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = EngineConfig::self_contained(dir.path());
    let d = directory(&slapd, dir.path());
    std::fs::write(d.bind_password_file.as_ref().expect("file"), "wrong\n").expect("write");
    config.directory = Some(d);
    let engine = TestEngine::start_with(config, dir).await;
    let (code, out, err) = directory_cli(&engine, &["sync"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("refused the service account"), "{err}");
    assert!(engine
        .running
        .state
        .engine
        .with_directory(|d| d.user_count() == 0));
    engine.stop().await;
}
