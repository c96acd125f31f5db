//! The audit trail end to end: gateways journal every attempt durably before they
//! answer, ship the journal to the engine exactly once across outages and restarts,
//! and `sekisho audit verify` finds any changed or deleted event. On SQLite and
//! PostgreSQL; the SIGKILL test runs the real binary.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::gateway::{TestCard, TestGateway};
use common::{sekisho, Backend, TestEngine};
use sekisho_gateway::factors::card::sign_nonce;
use sekisho_gateway::journal::Journals;
use sekisho_policy_engine::audit::store::AuditStore;
use sekisho_policy_engine::audit::{AuditEvent, Filter, Outcome, Page};
use sekisho_policy_engine::Tier;
use sekisho_proto::v1 as pb;
use tonic::transport::Channel;

type Endpoint = pb::logon_client::LogonClient<Channel>;

const PASSWORD: &str = "Kasumigaseki-7-pass";
const WRONG: &str = "guess-Otemachi-1";

/// One logon (Begin + Complete) with a card and a password, tagged `request_id`.
async fn logon(
    ep: &mut Endpoint,
    user: &str,
    card: &TestCard,
    password: &str,
    request_id: &str,
) -> Result<pb::LogonResult, tonic::Status> {
    let c = ep
        .begin(pb::BeginRequest {
            user: user.into(),
            action: "logon".into(),
            request_id: request_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let nonce = c.nonces.get("card").cloned().unwrap_or_default();
    let proofs = vec![
        pb::proof::Proof::Card(pb::CardProof {
            certificate: card.der.clone(),
            signature: sign_nonce(&card.key_pem, &nonce).expect("sign"),
        }),
        pb::proof::Proof::Password(password.into()),
    ];
    ep.complete(pb::CompleteRequest {
        challenge_id: c.challenge_id,
        proofs: proofs
            .into_iter()
            .map(|p| pb::Proof { proof: Some(p) })
            .collect(),
        request_id: request_id.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn session_call(ep: &mut Endpoint, session: &str, lock: bool) {
    let r = pb::SessionRequest {
        session_id: session.into(),
        request_id: String::new(),
    };
    let done = if lock {
        ep.lock(r).await
    } else {
        ep.logoff(r).await
    };
    done.expect("lock/logoff");
}

/// A lgwan gateway with user u007 (card + standalone password) and `devices`.
async fn city(backend: Backend, devices: &[&str]) -> (TestGateway, TestCard) {
    let gw = TestGateway::start_on(backend, Tier::Lgwan, |_| {}).await;
    for d in devices {
        gw.register(d, "desktop", &["card"]).await;
    }
    let card = gw.cards.issue("u007");
    gw.enroll_card("u007", &card).await;
    gw.set_secret("u007", "password", PASSWORD).await;
    (gw, card)
}

/// The last seq the gateway's journal has committed.
fn journal_head(gw: &TestGateway) -> u64 {
    *gw.running.gateway.journal.subscribe().borrow()
}

/// Waits until the gateway has shipped its journal through `seq` to the engine.
async fn shipped(gw: &TestGateway, seq: u64) {
    let mut through = gw
        .running
        .forwarded_through()
        .expect("forwarding is on by default");
    tokio::time::timeout(Duration::from_secs(60), through.wait_for(|s| *s >= seq))
        .await
        .unwrap_or_else(|_| panic!("journal not shipped through {seq} within 60 s"))
        .expect("forwarder running");
}

async fn engine_audit(engine: &TestEngine) -> AuditStore {
    AuditStore::open(&engine.config.store, &engine.config.tenant)
        .await
        .expect("engine audit store")
}

async fn all_events(store: &AuditStore, gateway: &str) -> Vec<AuditEvent> {
    store
        .query(
            &Filter {
                gateway: Some(gateway.into()),
                ..Filter::default()
            },
            &Page {
                after: None,
                limit: 10_000,
            },
        )
        .await
        .expect("query")
}

async fn journal_events(gw: &TestGateway) -> Vec<AuditEvent> {
    let journals = Journals::of(gw.running.gateway.store.db());
    let ids: Vec<_> = journals
        .list()
        .await
        .expect("journals")
        .into_iter()
        .filter(|id| id.tenant == gw.config.tenant)
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    journals.all_events(&ids[0]).await.expect("journal events")
}

fn store_args(engine: &TestEngine) -> Vec<String> {
    vec![
        "--store".into(),
        engine.config.store.clone(),
        "--tenant".into(),
        engine.config.tenant.clone(),
    ]
}

fn run(args: &[String]) -> (i32, String, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sekisho(&args, "")
}

async fn trail(backend: Backend) {
    let (gw, card) = city(backend, &["lgwan-desk-01", "lgwan-desk-17"]).await;
    let gateway = gw.running.gateway.journal.gateway().to_string();
    let mut ep = gw.endpoint("lgwan-desk-01").await;
    let mut sessions = Vec::new();
    for i in 0..4 {
        let r = logon(&mut ep, "u007", &card, PASSWORD, &format!("ok-{i}"))
            .await
            .expect("logon");
        assert_eq!(r.decision, pb::Decision::Allow as i32, "{r:?}");
        sessions.push(r.session_id);
    }
    // A terminal this gateway does not know (another tier's) is refused, and that
    // is in the trail too.
    let mut stranger = gw.endpoint("net-vdi-01").await;
    let refused = logon(&mut stranger, "u007", &card, PASSWORD, "stranger-1").await;
    assert!(refused.is_err(), "{refused:?}");
    let r = logon(&mut ep, "u007", &card, WRONG, "bad-1")
        .await
        .expect("logon");
    assert_eq!(r.reason, "factor_failed");
    let last = sessions.last().cloned().unwrap_or_default();
    session_call(&mut ep, &last, true).await;
    session_call(&mut ep, &last, false).await;

    let head = journal_head(&gw);
    shipped(&gw, head).await;
    let store = engine_audit(&gw.engine).await;
    let stored = all_events(&store, &gateway).await;
    let journal = journal_events(&gw).await;
    assert_eq!(stored.len() as u64, head, "every journaled event arrived");
    let mut by_seq = stored.clone();
    by_seq.sort_by_key(|e| e.body.seq);
    assert_eq!(
        by_seq, journal,
        "the engine holds the journal's very events"
    );

    // What an auditor reads: enrollments by the admin, each logon with its factors
    // and version, the failure with its factor and reason, the lock and logoff.
    let enrolled: Vec<&AuditEvent> = journal
        .iter()
        .filter(|e| e.body.action == "enroll")
        .collect();
    assert!(
        enrolled.len() >= 2,
        "card and password enrollments: {enrolled:?}"
    );
    assert!(enrolled
        .iter()
        .all(|e| e.body.operator == "sekisho-admin" && e.body.user == "u007"));
    let logons: Vec<&AuditEvent> = journal
        .iter()
        .filter(|e| e.body.action == "logon" && e.body.outcome == Outcome::Allow)
        .collect();
    assert_eq!(logons.len(), 4);
    for (e, s) in logons.iter().zip(&sessions) {
        assert_eq!(e.body.session, *s);
        assert_eq!(e.body.factors, ["card", "password"]);
        assert_eq!(e.body.policy_version, "v1");
        assert_eq!(e.body.policy_ids, ["lgwan-desktop-logon"]);
        assert_eq!(
            (e.body.device.as_str(), e.body.operator.as_str()),
            ("lgwan-desk-01", "u007")
        );
        assert_eq!(e.body.tier, "lgwan");
    }
    let failed = journal
        .iter()
        .find(|e| e.body.request_id == "bad-1")
        .expect("the failed logon is journaled");
    assert_eq!(failed.body.outcome, Outcome::Deny);
    assert_eq!(failed.body.reason, "factor_failed");
    assert_eq!(
        failed.body.failed.get("password").map(String::as_str),
        Some("mismatch")
    );
    let stranger = journal
        .iter()
        .find(|e| e.body.request_id == "stranger-1")
        .expect("the stranger's attempt is journaled");
    assert_eq!(
        (
            stranger.body.outcome,
            stranger.body.reason.as_str(),
            stranger.body.device.as_str()
        ),
        (Outcome::Deny, "device_not_registered", "net-vdi-01")
    );
    for action in ["lock", "logoff"] {
        assert!(
            journal
                .iter()
                .any(|e| e.body.action == action && e.body.session == last),
            "{action}"
        );
    }
    for e in &journal {
        let line = e.to_json();
        assert!(
            !line.contains(PASSWORD) && !line.contains(WRONG),
            "a secret in {line}"
        );
    }

    // The CLI against the engine's store.
    let src = store_args(&gw.engine);
    let (code, out, err) = run(&[&["audit".to_string(), "verify".into()][..], &src].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("ok      {gateway}: {head} events")),
        "{out}"
    );
    let (code, out, err) = run(&[
        &[
            "audit", "query", "--user", "u007", "--action", "logon", "--format", "json",
        ]
        .map(String::from)[..],
        &src,
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        6,
        "four allowed, one refused, one from a stranger: {out}"
    );
    let (code, out, _) = run(&[
        &["audit", "query", "--outcome", "deny", "--format", "csv"].map(String::from)[..],
        &src,
    ]
    .concat());
    assert_eq!(code, 0);
    assert!(out.starts_with("time,tier,gateway,seq,"), "{out}");
    assert!(out.contains("password:mismatch"), "{out}");
    // Paging: two at a time reaches every logon once.
    let mut after: Option<String> = None;
    let mut seen = BTreeSet::new();
    loop {
        let mut args: Vec<String> = [
            "audit", "query", "--action", "logon", "--limit", "2", "--format", "json",
        ]
        .map(String::from)
        .to_vec();
        if let Some(a) = &after {
            args.extend(["--after".into(), a.clone()]);
        }
        let (code, out, err) = run(&[&args[..], &src].concat());
        assert_eq!(code, 0, "{err}");
        for line in out.lines() {
            assert!(seen.insert(AuditEvent::from_json(line).expect("json").body.seq));
        }
        match err.split("--after ").nth(1) {
            Some(cursor) => after = Some(cursor.trim().to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);

    let out_dir = tempfile::tempdir().expect("temp dir");
    let html = out_dir.path().join("failures.html");
    let (code, out, err) = run(&[
        &[
            "report".to_string(),
            "failures".into(),
            "--html".into(),
            html.display().to_string(),
        ][..],
        &src,
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lgwan") && out.contains("mismatch"), "{out}");
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.contains("<svg") && !page.contains("src="));
    let (code, out, err) = run(&[&["report", "devices"].map(String::from)[..], &src].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lgwan-desk-01"), "{out}");
    let (code, out, err) = run(&[
        &["report", "dormant", "--days", "90"].map(String::from)[..],
        &src,
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.lines().any(|l| l.starts_with("u007 ")),
        "u007 logged on today: {out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("u001 ")),
        "u001 never did: {out}"
    );

    // The last session was locked, then logged off: nobody is at the terminal now,
    // and the timeline shows how it ended.
    let at = sekisho_policy_engine::audit::format_ts(chrono_now_ms());
    let page = out_dir.path().join("operators.html");
    let (code, out, err) = run(&[
        &[
            "report",
            "operators",
            "--device",
            "lgwan-desk-01",
            "--at",
            &at,
            "--html",
            &page.display().to_string(),
        ]
        .map(String::from)[..],
        &src,
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Nobody was logged on") && out.contains("logoff"),
        "{out}"
    );
    assert!(std::fs::read_to_string(&page)
        .expect("html")
        .contains("logoff"));

    // Tampering with the engine's copy: one event changed is named by its seq.
    let changed = stored
        .iter()
        .find(|e| e.body.request_id == "ok-1")
        .expect("ok-1 stored")
        .body
        .seq;
    tamper_engine(&gw.engine, &gateway, changed).await;
    let (code, out, _) = run(&[&["audit".to_string(), "verify".into()][..], &src].concat());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "BROKEN  {gateway}: first broken link at seq {changed}"
        )),
        "{out}"
    );

    // And the gateway's own journal: one row deleted is named too.
    let journal_url = gw.config.store.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            gw.dir.path().join("gateway-lgwan.db").display()
        )
    });
    delete_journal_row(&journal_url, &gw.config.tenant, &gateway, 3).await;
    let (code, out, _) = run(&[
        "audit",
        "verify",
        "--journal",
        &journal_url,
        "--tenant",
        &gw.config.tenant,
    ]
    .map(String::from));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("first broken link at seq 3") && out.contains("missing"),
        "{out}"
    );
    gw.stop().await;
}

async fn tamper_engine(engine: &TestEngine, gateway: &str, seq: u64) {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&engine.config.store)
        .await
        .expect("engine db");
    let done = sqlx::query(
        "UPDATE audit_events SET event = REPLACE(event, '\"lgwan-desk-01\"', '\"lgwan-desk-99\"')
         WHERE tenant = $1 AND gateway = $2 AND seq = $3",
    )
    .bind(&engine.config.tenant)
    .bind(gateway)
    .bind(seq as i64)
    .execute(&mut conn)
    .await
    .expect("tamper");
    assert_eq!(done.rows_affected(), 1);
}

async fn delete_journal_row(url: &str, tenant: &str, gateway: &str, seq: i64) {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .expect("gateway db");
    let done =
        sqlx::query("DELETE FROM gw_journal WHERE tenant = $1 AND gateway = $2 AND seq = $3")
            .bind(tenant)
            .bind(gateway)
            .bind(seq)
            .execute(&mut conn)
            .await
            .expect("delete");
    assert_eq!(done.rows_affected(), 1);
}

// The CLI runs synchronously while the in-process servers answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_shipped_queried_and_tampering_found_on_sqlite() {
    trail(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_shipped_queried_and_tampering_found_on_postgresql() {
    trail(Backend::Postgres).await;
}

/// The engine goes away under traffic and comes back; the gateway restarts while
/// it is away, with events not yet shipped. Afterwards the engine holds every
/// journaled event exactly once.
#[tokio::test]
async fn an_engine_outage_and_restarts_lose_nothing_and_store_nothing_twice_on_sqlite() {
    outage(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_engine_outage_and_restarts_lose_nothing_and_store_nothing_twice_on_postgresql() {
    outage(Backend::Postgres).await;
}

async fn outage(backend: Backend) {
    let devices = ["lgwan-desk-01", "lgwan-desk-17", "lgwan-desk-22"];
    let (gw, card) = city(backend, &devices).await;
    let gateway = gw.running.gateway.journal.gateway().to_string();
    let mut sessions = Vec::new();
    for d in devices {
        let mut ep = gw.endpoint(d).await;
        let r = logon(&mut ep, "u007", &card, PASSWORD, d)
            .await
            .expect("logon");
        assert_eq!(r.decision, pb::Decision::Allow as i32, "{r:?}");
        sessions.push((ep, r.session_id));
    }
    shipped(&gw, journal_head(&gw)).await;
    let mut admin = gw.admin().await;

    // The engine stops (its store and certificates stay).
    let TestGateway {
        engine,
        running,
        dir,
        cards,
        jpki,
        mut config,
    } = gw;
    let stopped = engine.stop_keeping_address().await;

    // Logons cannot be decided and are refused; locks and enrollments go on. All of
    // it is journaled, to be shipped later.
    for (ep, session) in sessions.iter_mut() {
        session_call(ep, session, true).await;
    }
    let refused = logon(&mut sessions[0].0, "u007", &card, PASSWORD, "during-outage").await;
    assert!(
        refused
            .as_ref()
            .map_or(true, |r| r.decision != pb::Decision::Allow as i32),
        "no engine, no allow: {refused:?}"
    );
    admin
        .enroll_totp(pb::EnrollTotpRequest {
            user: "u007".into(),
            algorithm: String::new(),
            digits: 0,
        })
        .await
        .expect("enrollment needs no engine");
    let backlog = *running.gateway.journal.subscribe().borrow();

    // The gateway restarts (same address, so the terminals reconnect) with that
    // backlog unshipped; then the engine comes back.
    config.listen = running.addr;
    running.shutdown().await;
    let running = TestGateway::launch(&config, dir.path()).await;
    for (ep, session) in sessions.iter_mut() {
        session_call(ep, session, false).await;
    }
    let engine = stopped.start().await;
    let gw = TestGateway {
        engine,
        running,
        dir,
        cards,
        jpki,
        config,
    };
    for (i, d) in devices.iter().enumerate() {
        let mut ep = gw.endpoint(d).await;
        let r = logon(&mut ep, "u007", &card, PASSWORD, &format!("after-{i}"))
            .await
            .expect("logon");
        assert_eq!(r.decision, pb::Decision::Allow as i32, "{r:?}");
    }
    let head = journal_head(&gw);
    assert!(head > backlog);
    shipped(&gw, head).await;

    let store = engine_audit(&gw.engine).await;
    let mut stored = all_events(&store, &gateway).await;
    stored.sort_by_key(|e| e.body.seq);
    let seqs: Vec<u64> = stored.iter().map(|e| e.body.seq).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<u64>>(),
        "each event exactly once"
    );
    assert_eq!(stored, journal_events(&gw).await);
    let outage = stored
        .iter()
        .find(|e| e.body.request_id == "during-outage")
        .expect("the refused logon is in the trail");
    assert_eq!(
        (outage.body.outcome, outage.body.reason.as_str()),
        (Outcome::Error, "engine_unavailable")
    );
    assert_eq!(stored.iter().filter(|e| e.body.action == "lock").count(), 3);
    assert_eq!(
        stored.iter().filter(|e| e.body.action == "logoff").count(),
        3
    );
    let reports = store.verify().await.expect("verify");
    assert!(reports.iter().all(|r| r.broken.is_none()), "{reports:?}");
    gw.stop().await;
}

/// A free loopback port for a child process to listen on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills the gateway process with SIGKILL while logons stream in: every logon that
/// got an answer (allowed or refused) is in its journal afterwards, and the chain
/// verifies. Its log lines hold no secret either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_logons_loses_no_answered_logon_on_sqlite() {
    sigkill(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_logons_loses_no_answered_logon_on_postgresql() {
    sigkill(Backend::Postgres).await;
}

async fn sigkill(backend: Backend) {
    let devices = [
        "lgwan-desk-01",
        "lgwan-desk-17",
        "lgwan-desk-22",
        "lgwan-desk-30",
    ];
    let (gw, card) = city(backend, &devices).await;
    let gateway = gw.running.gateway.journal.gateway().to_string();
    // The in-process gateway enrolled everything; the real binary takes over its
    // store, key and journal.
    let TestGateway {
        engine,
        running,
        dir,
        cards,
        jpki,
        config,
    } = gw;
    running.shutdown().await;
    let port = free_port();
    let store_url = config
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("gateway-lgwan.db").display()));
    let toml = format!(
        "tier = \"lgwan\"\ntenant = {tenant:?}\nlisten = \"127.0.0.1:{port}\"\nstore = {store_url:?}\nkey_file = {key:?}\n\
         [engine]\nurl = \"{engine}\"\n[tls]\ngenerate_dir = {pki:?}\n[cards]\nca = [{ca:?}]\n\
         [argon2]\nmemory_kib = 8192\niterations = 5\n[rate_limit]\nburst = 100000\nper_device_per_minute = 100000\n",
        tenant = config.tenant,
        key = config.key_file,
        engine = engine.url(),
        pki = config.tls.generate_dir,
        ca = cards.pem_file,
    );
    let config_file = dir.path().join("gateway.toml");
    std::fs::write(&config_file, toml).expect("write config");
    let log_file = dir.path().join("gateway.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sekisho"))
        .args(["--log", "debug", "gateway", "serve", "--config"])
        .arg(&config_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_file).expect("log file"))
        .spawn()
        .expect("start the gateway binary");

    let url = format!("https://127.0.0.1:{port}");
    let mut endpoints = Vec::new();
    let pki = engine.running.pki.as_ref().expect("dev PKI");
    for d in devices {
        let tls = common::gateway::device_tls(pki, d);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let channel = loop {
            match sekisho_gateway::tls::connect(
                &url,
                &tls,
                Some("localhost"),
                Duration::from_secs(5),
            )
            .await
            {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("the gateway binary did not come up: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        endpoints.push(pb::logon_client::LogonClient::new(channel));
    }

    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (enough_tx, enough_rx) = tokio::sync::watch::channel(0usize);
    let mut tasks = Vec::new();
    for (t, mut ep) in endpoints.into_iter().enumerate() {
        let card = card.clone();
        let answered = answered.clone();
        let enough_tx = enough_tx.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("t{t}-{i}");
                let password = if i % 4 == 3 { WRONG } else { PASSWORD };
                match logon(&mut ep, "u007", &card, password, &id).await {
                    Ok(_) => {
                        let mut a = answered.lock().expect("lock");
                        a.push(id);
                        enough_tx.send_replace(a.len());
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    let mut enough = enough_rx;
    tokio::time::timeout(Duration::from_secs(120), enough.wait_for(|n| *n >= 60))
        .await
        .expect("60 logons answered within 2 minutes")
        .expect("traffic running");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    for t in tasks {
        let _ = t.await;
    }
    let answered = answered.lock().expect("lock").clone();
    assert!(answered.len() >= 60);

    let journals = Journals::open(&store_url).await.expect("journal");
    let ids = journals.list().await.expect("list");
    let id = ids
        .iter()
        .find(|i| i.gateway == gateway && i.tenant == config.tenant)
        .expect("the gateway's journal");
    let verdict = journals.verify(id).await.expect("verify");
    assert!(verdict.broken.is_none(), "{verdict:?}");
    let events = journals.all_events(id).await.expect("events");
    let journaled: BTreeSet<&str> = events.iter().map(|e| e.body.request_id.as_str()).collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|a| !journaled.contains(a.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "answered but not journaled: {missing:?}"
    );
    let refused = events
        .iter()
        .filter(|e| e.body.reason == "factor_failed")
        .count();
    assert!(refused > 0, "refused logons are journaled too");

    let log = std::fs::read_to_string(&log_file).expect("log");
    assert!(log.contains("listening"), "the binary logged: {log}");
    assert!(
        !log.contains(PASSWORD) && !log.contains(WRONG),
        "a password in the log"
    );
    drop((dir, jpki));
    engine.stop().await;
}

/// Log lines captured for one test (its thread's subscriber).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `code` occurs in `text` as a token of its own (not inside a hex hash).
fn contains_token(text: &str, code: &str) -> bool {
    text.match_indices(code).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + code.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Every kind of secret goes through a gateway (password right and wrong, PIN,
/// TOTP code and its replay, emergency OTP, a face vector): none of them appears in
/// a log line at TRACE, in the journal, in the engine's copy or in its decision log.
#[tokio::test]
async fn no_secret_reaches_an_event_or_a_log_line() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let gw = TestGateway::start(Tier::Telework, |_| {}).await;
    let capture_key = gw.register("tw-pc-01", "telework", &["face"]).await;
    let password = "Ginza-4-chome-pw";
    let wrong = "Shibuya-109-pw";
    let pin = "482915";
    gw.set_secret("u017", "password", password).await;
    gw.set_secret("u017", "pin", pin).await;
    let totp_secret = gw.enroll_totp("u017").await;
    let face = common::gateway::vector(17, 0, 0.0);
    gw.enroll_template("u017", "face", face.clone()).await;
    let otp = gw
        .admin()
        .await
        .issue_emergency_otp(pb::IssueEmergencyOtpRequest {
            user: "u017".into(),
            ttl_secs: 3_600,
        })
        .await
        .expect("issue")
        .into_inner()
        .code;

    let mut ep = gw.endpoint("tw-pc-01").await;
    let step = common::gateway::now_secs() / 30;
    let code = sekisho_gateway::factors::totp::code_at(
        &totp_secret,
        &sekisho_gateway::factors::totp::TotpParams::default(),
        step,
    );
    let capture = common::gateway::vector(17, 1, 0.05);
    let attempts: Vec<Vec<pb::proof::Proof>> = vec![
        vec![
            pb::proof::Proof::Password(password.into()),
            pb::proof::Proof::Totp(code.clone()),
        ],
        // The same code again (replayed), a wrong password, a PIN, the emergency OTP.
        vec![
            pb::proof::Proof::Password(wrong.into()),
            pb::proof::Proof::Totp(code.clone()),
        ],
        vec![
            pb::proof::Proof::Pin(pin.into()),
            pb::proof::Proof::EmergencyOtp(otp.clone()),
        ],
        vec![pb::proof::Proof::Password(password.into())],
    ];
    for (i, proofs) in attempts.into_iter().enumerate() {
        let c = ep
            .begin(pb::BeginRequest {
                user: "u017".into(),
                action: "logon".into(),
                ..Default::default()
            })
            .await
            .expect("begin")
            .into_inner();
        let mut proofs = proofs;
        if i == 3 {
            let signature = sekisho_gateway::factors::biometric::sign_capture(
                &capture_key,
                sekisho_gateway::factors::biometric::BiometricFactor::Face,
                &c.nonces["face"],
                &capture,
            )
            .expect("sign capture");
            proofs.push(pb::proof::Proof::Face(pb::BiometricProof {
                vector: capture.clone(),
                signature,
            }));
        }
        ep.complete(pb::CompleteRequest {
            challenge_id: c.challenge_id,
            proofs: proofs
                .into_iter()
                .map(|p| pb::Proof { proof: Some(p) })
                .collect(),
            request_id: format!("secret-{i}"),
        })
        .await
        .expect("complete");
    }
    let head = journal_head(&gw);
    shipped(&gw, head).await;

    let mut texts: Vec<(&str, String)> = Vec::new();
    let journal: Vec<String> = journal_events(&gw)
        .await
        .iter()
        .map(AuditEvent::to_json)
        .collect();
    assert!(
        journal.iter().any(|l| l.contains("\"replayed\"")),
        "the replay is journaled"
    );
    texts.push(("journal", journal.join("\n")));
    let stored: Vec<String> = all_events(
        &engine_audit(&gw.engine).await,
        gw.running.gateway.journal.gateway(),
    )
    .await
    .iter()
    .map(AuditEvent::to_json)
    .collect();
    texts.push(("engine events", stored.join("\n")));
    // The engine writes its decision log behind the answers; stopping it flushes.
    let TestGateway {
        engine, running, ..
    } = gw;
    running.shutdown().await;
    let stopped = engine.stop_keeping_address().await;
    let store = AuditStore::open(&stopped.config.store, &stopped.config.tenant)
        .await
        .expect("engine store");
    let decisions = store
        .decisions(Some("u017"), 1_000)
        .await
        .expect("decision log");
    assert!(!decisions.is_empty(), "decisions are logged");
    texts.push(("decision log", format!("{decisions:?}")));
    texts.push((
        "log",
        String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned(),
    ));
    assert!(
        texts[3].1.contains("allowed"),
        "the capture works: {}",
        texts[3].1
    );

    let floats: Vec<String> = capture
        .iter()
        .chain(&face)
        .take(8)
        .flat_map(|f| [format!("{f}"), format!("{f:?}")])
        .filter(|s| s.len() > 5)
        .collect();
    for (what, text) in &texts {
        for secret in [password, wrong, otp.as_str()] {
            assert!(!text.contains(secret), "'{secret}' in the {what}");
        }
        for code in [pin, code.as_str()] {
            assert!(!contains_token(text, code), "code '{code}' in the {what}");
        }
        for f in &floats {
            assert!(
                !text.contains(f.as_str()),
                "vector component {f} in the {what}"
            );
        }
    }
}

/// Bad input to the audit commands: a specific error (exit 2), and nothing created.
#[test]
fn bad_audit_arguments_are_named_and_create_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("typo.db");
    let url = format!("sqlite://{}", missing.display());
    let (code, _, err) = sekisho(&["audit", "query", "--store", &url], "");
    assert_eq!(code, 2);
    assert!(err.contains("no engine store at"), "{err}");
    assert!(!missing.exists(), "a mistyped store is not created");
    let (code, _, err) = sekisho(
        &["audit", "query", "--since", "yesterday", "--store", &url],
        "",
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("--since") && err.contains("'yesterday' is not a time"),
        "{err}"
    );
    let (code, _, err) = sekisho(
        &[
            "report",
            "operators",
            "--device",
            "pc",
            "--at",
            "soon",
            "--store",
            &url,
        ],
        "",
    );
    assert_eq!(code, 2);
    assert!(err.contains("--at"), "{err}");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"seq\":1}\n").expect("write");
    let (code, _, err) = sekisho(
        &["audit", "verify", "--journal", &bad.display().to_string()],
        "",
    );
    assert_eq!(code, 2);
    assert!(err.contains("bad.jsonl:1"), "{err}");
}

/// A standalone tier keeps its journal local; it travels by file to the engine,
/// where importing it twice stores it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_journal_is_exported_and_imported_once() {
    let gw = TestGateway::start(Tier::Lgwan, |c| c.audit.forward = false).await;
    assert!(gw.running.forwarded_through().is_none());
    gw.register("lgwan-desk-01", "desktop", &["card"]).await;
    let card = gw.cards.issue("u007");
    gw.enroll_card("u007", &card).await;
    gw.set_secret("u007", "password", PASSWORD).await;
    let mut ep = gw.endpoint("lgwan-desk-01").await;
    let r = logon(&mut ep, "u007", &card, PASSWORD, "standalone-1")
        .await
        .expect("logon");
    assert_eq!(r.decision, pb::Decision::Allow as i32);
    let head = journal_head(&gw);
    let store = engine_audit(&gw.engine).await;
    assert_eq!(
        store.count(&Filter::default()).await.expect("count"),
        0,
        "nothing shipped"
    );

    let journal_db = gw.dir.path().join("gateway-lgwan.db").display().to_string();
    let out = gw.dir.path().join("lgwan.jsonl");
    let csv = gw.dir.path().join("lgwan.csv");
    let (code, _, err) = sekisho(
        &[
            "audit",
            "export",
            "--journal",
            &journal_db,
            "--format",
            "jsonl",
            "-o",
            &out.display().to_string(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("{head} events written")), "{err}");
    let (code, _, err) = sekisho(
        &[
            "audit",
            "export",
            "--journal",
            &journal_db,
            "--format",
            "csv",
            "-o",
            &csv.display().to_string(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&csv).expect("csv").lines().count() as u64,
        head + 1
    );
    let (code, out_text, err) = sekisho(
        &["audit", "verify", "--journal", &out.display().to_string()],
        "",
    );
    assert_eq!(code, 0, "{out_text}{err}");

    let import = |expect_new: u64| {
        let (code, text, err) = run(&[
            &[
                "audit".to_string(),
                "import".into(),
                out.display().to_string(),
            ][..],
            &store_args(&gw.engine),
        ]
        .concat());
        assert_eq!(code, 0, "{err}");
        assert!(
            text.contains(&format!("{head} events read, {expect_new} new")),
            "{text}"
        );
    };
    import(head);
    import(0);
    assert_eq!(store.count(&Filter::default()).await.expect("count"), head);
    let (code, text, _) = run(&[
        &["audit".to_string(), "verify".into()][..],
        &store_args(&gw.engine),
    ]
    .concat());
    assert_eq!(code, 0, "{text}");
    gw.stop().await;
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs `sql` on the gateway's own store.
async fn gateway_sql(gw: &TestGateway, sql: &str) {
    let mut conn = gw.running.gateway.store.db().acquire().await.unwrap();
    sqlx::query(sql).execute(&mut *conn).await.unwrap();
}

#[tokio::test]
async fn an_administrators_change_and_its_event_commit_together() {
    let gw = TestGateway::start(Tier::Internet, |_| {}).await;
    let first = gw.enroll_totp("u013").await;
    let store = &gw.running.gateway.store;
    let enrolled = |events: &[AuditEvent]| {
        events
            .iter()
            .filter(|e| e.body.action == "enroll" && e.body.user == "u013")
            .count()
    };
    assert_eq!(enrolled(&gw.journal().await), 1);

    // The journal refuses every event (a full disk, say): the change is not made.
    gateway_sql(
        &gw,
        "CREATE TRIGGER journal_full BEFORE INSERT ON gw_journal \
         BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .await;
    let mut admin = gw.admin().await;
    let e = admin
        .enroll_totp(pb::EnrollTotpRequest {
            user: "u013".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("nothing was changed"), "{e:?}");
    let e = admin
        .set_secret(pb::SetSecretRequest {
            user: "u013".into(),
            factor: "pin".into(),
            secret: "4719".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("nothing was changed"), "{e:?}");
    assert_eq!(store.totp("u013").await.unwrap().unwrap().secret, first);
    assert_eq!(
        store
            .secret("u013", sekisho_policy_engine::Factor::Pin)
            .await
            .unwrap(),
        None
    );

    // Once the journal takes events again, so do changes, and the chain is whole.
    gateway_sql(&gw, "DROP TRIGGER journal_full").await;
    let second = gw.enroll_totp("u013").await;
    assert_ne!(second, first);
    let events = gw.journal().await;
    assert_eq!(enrolled(&events), 2);
    let v = sekisho_gateway::journal::verify(store.db(), gw.running.gateway.name())
        .await
        .unwrap();
    assert!(v.broken.is_none(), "{v:?}");
    assert_eq!(v.checked, events.len() as u64);
}

/// Whatever user id a request carries, its refusal is journaled in a form the
/// engine stores: a 70 KB id (refused by Begin) and an id with a NUL (which a
/// PostgreSQL column cannot hold) would otherwise stop the forwarder at that seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_any_user_id_are_shipped_on_postgresql() {
    let (gw, _) = city(Backend::Postgres, &["lgwan-desk-01"]).await;
    let gateway = gw.running.gateway.journal.gateway().to_string();
    let mut ep = gw.endpoint("lgwan-desk-01").await;
    let huge = "長".repeat(70_000 / 3 + 1);
    for user in [huge.as_str(), "nul\0user"] {
        let refused = ep
            .begin(pb::BeginRequest {
                user: user.into(),
                action: "logon".into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
    // A session id no gateway makes is simply not found, on either store.
    let none = ep
        .lock(pb::SessionRequest {
            session_id: "s\0".into(),
            request_id: String::new(),
        })
        .await
        .expect_err("no such session");
    assert_eq!(none.code(), tonic::Code::NotFound, "{none:?}");

    let head = journal_head(&gw);
    shipped(&gw, head).await;
    let stored = all_events(&engine_audit(&gw.engine).await, &gateway).await;
    assert_eq!(stored.len() as u64, head, "every journaled event arrived");
    let users: Vec<&str> = stored.iter().map(|e| e.body.user.as_str()).collect();
    let long = users
        .iter()
        .find(|u| u.starts_with('長'))
        .unwrap_or_else(|| panic!("the long id's refusal: {users:?}"));
    assert!(
        long.len() <= 512 && long.ends_with(&format!("…[{} bytes]", huge.len())),
        "{long}"
    );
    assert!(users.contains(&"nul\u{FFFD}user"), "{users:?}");
    assert!(users.iter().all(|u| !u.contains('\0')));
}
