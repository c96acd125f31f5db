//! The engine over gRPC with mutual TLS, as gateways and administrators use it, on
//! SQLite and on PostgreSQL.

use crate::common;

use std::time::Duration;

use common::{options, plan_request, publish_request, Backend, TestEngine};
use sekisho_proto::v1 as pb;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

async fn decisions_and_publishing(backend: Backend, name: &str) {
    let engine = TestEngine::start(backend, name).await;
    let v1 = engine.load_reference().await;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.policy_count, 24);

    let mut gw = engine.decision_client().await;
    let p = gw
        .plan(plan_request("u023", "lgwan-desk-17", "logon"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(options(&p), [["card", "password"]]);
    assert_eq!(p.policy_version, "v1");

    let authorize = pb::AuthorizeRequest {
        user: "u023".into(),
        device: "lgwan-desk-17".into(),
        action: "logon".into(),
        factors: vec!["card".into(), "password".into()],
        context: Some(pb::DecisionContext {
            hour: Some(10),
            ..Default::default()
        }),
        request_id: "req-1".into(),
        gateway_tier: "lgwan".into(),
    };
    let a = gw.authorize(authorize.clone()).await.unwrap().into_inner();
    assert_eq!(a.decision, pb::Decision::Allow as i32);
    assert_eq!(a.policy_ids, ["lgwan-desktop-logon"]);
    assert_eq!(a.policy_version, "v1");

    // A gateway of another tier asking about this device is refused, naming both.
    let e = gw
        .authorize(pb::AuthorizeRequest {
            gateway_tier: "internet".into(),
            ..authorize.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("under tier lgwan") && e.message().contains("not internet"),
        "{}",
        e.message()
    );
    let other_tier = |tier: &str| pb::PlanRequest {
        gateway_tier: tier.into(),
        ..plan_request("u023", "lgwan-desk-17", "logon")
    };
    let e = gw.plan(other_tier("mynumber")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = gw.plan(other_tier("moon")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("gateway_tier:"), "{}", e.message());
    assert_eq!(
        options(&gw.plan(other_tier("lgwan")).await.unwrap().into_inner()),
        [["card", "password"]]
    );

    // DecideStream: each batch answered by one message, in the order sent, each call
    // as it would have been alone; a failing call fails only itself. A batch with
    // too many calls ends the stream, after the answers to the batches before it.
    {
        use pb::decision_answer::Answer;
        use pb::decision_call::Call;
        let call = |c: Call| pb::DecisionCall { call: Some(c) };
        let (requests, outgoing) = tokio::sync::mpsc::channel(4);
        let mut stream = gw
            .decide_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .unwrap()
            .into_inner();
        async fn answered(
            requests: &tokio::sync::mpsc::Sender<pb::DecideRequest>,
            stream: &mut tonic::Streaming<pb::DecideResponse>,
            calls: Vec<pb::DecisionCall>,
        ) -> Vec<Answer> {
            requests.send(pb::DecideRequest { calls }).await.unwrap();
            let answers = stream.message().await.unwrap().unwrap().answers;
            answers.into_iter().map(|a| a.answer.unwrap()).collect()
        }
        let answers = answered(
            &requests,
            &mut stream,
            vec![
                call(Call::Plan(plan_request("u023", "lgwan-desk-17", "logon"))),
                call(Call::Authorize(authorize.clone())),
                call(Call::Plan(plan_request("nobody", "lgwan-desk-17", "logon"))),
                pb::DecisionCall { call: None },
                call(Call::Plan(plan_request("u023", "lgwan-desk-17", "login"))),
            ],
        )
        .await;
        let failure = |a: &Answer, code: Code, text: &str| matches!(a, Answer::Failure(f) if f.code == code as i32 && f.message.contains(text));
        assert_eq!(answers.len(), 5);
        assert_eq!(answers[0], Answer::Plan(p.clone()));
        assert_eq!(answers[1], Answer::Authorize(a.clone()));
        assert!(
            failure(&answers[2], Code::NotFound, "unknown user 'nobody'"),
            "{:?}",
            answers[2]
        );
        assert!(
            failure(
                &answers[3],
                Code::InvalidArgument,
                "neither a plan nor an authorize"
            ),
            "{:?}",
            answers[3]
        );
        assert!(
            failure(&answers[4], Code::InvalidArgument, "unknown action 'login'"),
            "{:?}",
            answers[4]
        );
        let answers = answered(
            &requests,
            &mut stream,
            vec![call(Call::Authorize(authorize.clone()))],
        )
        .await;
        assert_eq!(answers, [Answer::Authorize(a.clone())]);
        // Too many calls in one batch: refused whole, naming the limit.
        requests
            .send(pb::DecideRequest {
                calls: vec![call(Call::Authorize(authorize.clone())); 257],
            })
            .await
            .unwrap();
        let e = stream.message().await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .contains("257 calls in one decision batch; at most 256"),
            "{}",
            e.message()
        );
    }

    // Unknown user, bad input: specific statuses naming what was wrong.
    let e = gw
        .plan(plan_request("nobody", "lgwan-desk-17", "logon"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "unknown user 'nobody'")
    );
    let e = gw
        .plan(plan_request("u023", "lgwan-desk-17", "login"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("unknown action 'login'"));

    // Watching versions: the current one first, then each new one.
    let mut watch = gw
        .watch_policy(pb::WatchPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().version, 1);

    let mut admin = engine.admin_client().await;
    // An invalid set is refused with file:line:col diagnostics and changes nothing.
    let dir = common::policy_copy();
    let lgwan = dir.path().join("lgwan.cedar");
    let text = std::fs::read_to_string(&lgwan).unwrap();
    std::fs::write(
        &lgwan,
        text.replacen(
            "context.factors.containsAll",
            "context.factorz.containsAll",
            1,
        ),
    )
    .unwrap();
    let e = admin
        .publish(publish_request(dir.path()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("lgwan.cedar:") && e.message().contains("factorz"),
        "{}",
        e.message()
    );
    // A valid set that locks a group out is refused unless forced.
    std::fs::write(
        &lgwan,
        text.replace(
            "[\"card\", \"password\"]",
            "[\"card\", \"password\", \"vein\"]",
        ),
    )
    .unwrap();
    let e = admin
        .publish(publish_request(dir.path()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("locked-out"), "{}", e.message());
    let versions = admin
        .list_versions(pb::ListVersionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 1, "a refused publish stores nothing");
    let p = gw
        .plan(plan_request("u023", "lgwan-desk-17", "logon"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (options(&p), p.policy_version.as_str()),
        (vec![vec!["card".to_string(), "password".to_string()]], "v1")
    );

    // Publishing the same set again is a no-op answered with the current version.
    let again = admin
        .publish(publish_request(std::path::Path::new(common::POLICIES)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version.unwrap().version, 1);

    // A dry run checks without storing.
    let mut dry = publish_request(&std::path::PathBuf::from(common::POLICIES));
    dry.dry_run = true;
    assert!(admin
        .publish(dry)
        .await
        .unwrap()
        .into_inner()
        .version
        .is_none());

    // A real change: publish v2 and watch it arrive.
    std::fs::write(
        &lgwan,
        text.replace(
            "context.factors.containsAll([\"card\", \"password\"])",
            "context.factors.containsAll([\"card\", \"pin\"])",
        ),
    )
    .unwrap();
    let v2 = admin
        .publish(publish_request(dir.path()))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(v2.version, 2);
    // The stream may repeat the current version (a directory reload re-announces
    // it); what matters is that v2 arrives.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v = watch.message().await.unwrap().unwrap();
            if v.version != 1 {
                return v;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen.version, 2);
    let p = gw
        .plan(plan_request("u023", "lgwan-desk-17", "logon"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.policy_version, "v2");
    assert_eq!(options(&p), [["card", "pin"]]);
    let old = admin
        .get_version(pb::GetVersionRequest { version: 1 })
        .await
        .unwrap()
        .into_inner();
    assert!(
        old.files.iter().any(|f| f.text == text),
        "v1 is kept unchanged"
    );

    // Entities: a user who enrols nothing more loses options; a deleted user is unknown.
    admin
        .upsert_entities(common::reenrol("u023", &["password"]))
        .await
        .unwrap();
    let p = gw
        .plan(plan_request("u023", "lgwan-desk-17", "logon"))
        .await
        .unwrap()
        .into_inner();
    assert!(p.options.is_empty());
    assert_eq!(p.unavailable[0].missing, ["card", "pin"]);
    // A change that breaks a reference is refused and changes nothing.
    let bad = pb::UpsertEntitiesRequest {
        users: vec![pb::User {
            id: "u900".into(),
            department: "x".into(),
            role: "staff".into(),
            enrolled: vec![],
            groups: vec!["no-such-group".into()],
        }],
        ..Default::default()
    };
    let e = admin.upsert_entities(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("'no-such-group'"), "{}", e.message());
    let deleted = admin
        .delete_entities(pb::DeleteEntitiesRequest {
            entities: vec![
                pb::EntityRef {
                    kind: pb::EntityKind::User as i32,
                    id: "u023".into(),
                },
                // A typo deletes nothing and is not counted.
                pb::EntityRef {
                    kind: pb::EntityKind::User as i32,
                    id: "u0233".into(),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 1);
    let e = gw
        .plan(plan_request("u023", "lgwan-desk-17", "logon"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_publishing_on_sqlite() {
    decisions_and_publishing(Backend::Sqlite, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_publishing_on_postgres() {
    decisions_and_publishing(Backend::Postgres, "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_required_and_admin_is_a_role() {
    let engine = TestEngine::start(Backend::Sqlite, "tls").await;
    engine.load_reference().await;
    let pki = engine.running.pki.clone().unwrap();
    let ca = Certificate::from_pem(std::fs::read(pki.ca()).unwrap());

    // A client that trusts the engine but shows no certificate is refused.
    let no_cert = Endpoint::from_shared(engine.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("127.0.0.1"),
        )
        .unwrap();
    let refused = match no_cert.connect().await {
        Err(_) => true,
        Ok(ch) => pb::policy_decision_client::PolicyDecisionClient::new(ch)
            .plan(plan_request("u023", "lgwan-desk-17", "logon"))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");

    // A certificate from another CA is refused too.
    let other = sekisho_policy_engine::pki::CertificateAuthority::generate("someone else").unwrap();
    let stranger = other
        .issue(
            "sekisho-admin",
            &[],
            sekisho_policy_engine::pki::Usage::Client,
        )
        .unwrap();
    let foreign = Endpoint::from_shared(engine.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(Identity::from_pem(stranger.cert_pem, stranger.key_pem))
                .domain_name("127.0.0.1"),
        )
        .unwrap();
    let refused = match foreign.connect().await {
        Err(_) => true,
        Ok(ch) => pb::policy_admin_client::PolicyAdminClient::new(ch)
            .list_versions(pb::ListVersionsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");

    // A gateway's certificate may ask for decisions but not administer.
    let mut as_gateway =
        pb::policy_admin_client::PolicyAdminClient::new(engine.gateway().connect().await.unwrap());
    let e = as_gateway
        .publish(publish_request(std::path::Path::new(common::POLICIES)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .contains("'sekisho-gateway' is not an administrator"),
        "{}",
        e.message()
    );

    // An endpoint's certificate from the same CA may neither ask for a plan (it
    // would tell who exists) nor ship into a gateway's journal.
    let device = common::gateway::device_tls(&pki, "lgwan-desk-17");
    let channel = sekisho_gateway::tls::connect(
        &engine.url(),
        &device,
        Some("localhost"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let e = pb::policy_decision_client::PolicyDecisionClient::new(channel.clone())
        .plan(plan_request("u023", "lgwan-desk-17", "logon"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("'lgwan-desk-17' is not a gateway"),
        "{}",
        e.message()
    );
    let e = pb::policy_decision_client::PolicyDecisionClient::new(channel.clone())
        .decide_stream(tokio_stream::iter(Vec::<pb::DecideRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = pb::audit_sink_client::AuditSinkClient::new(channel)
        .ship(tokio_stream::iter(Vec::<pb::AuditBatch>::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The gateway's may.
    let mut as_gateway = pb::policy_decision_client::PolicyDecisionClient::new(
        engine.gateway().connect().await.unwrap(),
    );
    as_gateway
        .plan(plan_request("u023", "lgwan-desk-17", "logon"))
        .await
        .unwrap();
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_serves_what_it_stored() {
    let engine = TestEngine::start(Backend::Sqlite, "restart").await;
    engine.load_reference().await;
    let TestEngine {
        running,
        dir,
        config,
    } = engine;
    running.shutdown().await.unwrap();
    let engine = TestEngine::start_with(config, dir).await;
    let p = engine.plan_logon("u020", "lgwan-mobile-01").await;
    assert_eq!(
        (options(&p), p.policy_version.as_str()),
        (vec![vec!["face".to_string(), "password".to_string()]], "v1")
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_pick_up_each_others_versions_and_entities() {
    let a = TestEngine::start(Backend::Postgres, "replica").await;
    let mut config = a.config.clone();
    let dir = tempfile::tempdir().unwrap();
    config.tls.generate_dir = dir.path().join("tls");
    let b = TestEngine::start_with(config, dir).await;
    let mut watch_b = b
        .decision_client()
        .await
        .watch_policy(pb::WatchPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    a.load_reference().await;
    let seen = tokio::time::timeout(Duration::from_secs(20), watch_b.message())
        .await
        .expect("replica B sees v1")
        .unwrap()
        .unwrap();
    assert_eq!(seen.version, 1);

    // An entity change made through A reaches B's decisions at B's next refresh.
    a.admin_client()
        .await
        .upsert_entities(common::reenrol("u020", &["password"]))
        .await
        .unwrap();
    let _ = b.running.state.refresh().await.unwrap();
    let p = b.plan_logon("u020", "lgwan-mobile-01").await;
    assert!(
        p.options.is_empty(),
        "B still serves the old entities: {p:?}"
    );
    assert_eq!(p.unavailable[0].missing, ["face"]);
    // Nothing more to catch up with.
    assert!(!b.running.state.refresh().await.unwrap());

    // A group B still remembers is removed through A; a user put in it through B
    // is checked against the store's entities, not B's memory, and refused. (It
    // used to be stored, and then no replica could load the entities again.)
    let pilot = pb::UpsertEntitiesRequest {
        groups: vec![pb::Group {
            id: "pilot".into(),
            parents: vec![],
        }],
        ..Default::default()
    };
    a.admin_client().await.upsert_entities(pilot).await.unwrap();
    assert!(b.running.state.refresh().await.unwrap());
    a.admin_client()
        .await
        .delete_entities(pb::DeleteEntitiesRequest {
            entities: vec![pb::EntityRef {
                kind: pb::EntityKind::Group as i32,
                id: "pilot".into(),
            }],
        })
        .await
        .unwrap();
    let mut in_pilot = common::reenrol("u020", &["password"]);
    in_pilot.users[0].groups.push("pilot".into());
    let e = b
        .admin_client()
        .await
        .upsert_entities(in_pilot)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("'pilot'"), "{}", e.message());
    assert!(!b.running.state.refresh().await.unwrap());

    // A version published through B is never replaced by an older one that a
    // refresh read as "latest" before the publish.
    let mut reference = common::publish_request(std::path::Path::new(common::POLICIES));
    reference.files.push(pb::PolicyFile {
        name: "note.cedar".into(),
        text: "// v2, published through B\n".into(),
    });
    let v2 = b
        .admin_client()
        .await
        .publish(reference)
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(v2.version, 2);
    assert!(!b.running.state.serve_stored_version(1).await.unwrap());
    let p = b.plan_logon("u020", "lgwan-mobile-01").await;
    assert_eq!(p.policy_version, "v2");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = sekisho_policy_engine::config::EngineConfig::self_contained(dir.path());
    // By default: TLS, so a plaintext client cannot talk to it.
    let tls = TestEngine::start_with(config.clone(), dir).await;
    let plain =
        Endpoint::from_shared(format!("http://127.0.0.1:{}", tls.running.addr.port())).unwrap();
    let failed = match plain.connect().await {
        Err(_) => true,
        Ok(ch) => pb::policy_decision_client::PolicyDecisionClient::new(ch)
            .plan(plan_request("u1", "d1", "logon"))
            .await
            .map_err(|e| e.code() == Code::NotFound)
            .is_err(),
    };
    assert!(failed);
    let TestEngine {
        running,
        dir,
        mut config,
    } = tls;
    running.shutdown().await.unwrap();
    config.tls.plaintext = true;
    let plain_engine = TestEngine::start_with(config, dir).await;
    assert!(plain_engine.running.pki.is_none());
    let ch = Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        plain_engine.running.addr.port()
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let e = pb::policy_decision_client::PolicyDecisionClient::new(ch)
        .plan(plan_request("u1", "d1", "logon"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    plain_engine.running.shutdown().await.unwrap();
}

/// A shipment whose connection a firewall forgot gives its place back once the
/// engine's keep-alive PING goes unanswered, instead of holding it (and what it
/// sent) until the engine restarts. Whether what it sent was stored (the server
/// may see the closed stream as ended) or not, the store takes it again, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_on_a_forgotten_connection_gives_its_place_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sekisho_policy_engine::config::EngineConfig::self_contained(dir.path());
    config.audit.max_shipments = 1;
    // Two seconds rather than one: a loaded machine may be slow to answer PINGs on
    // the healthy connection too.
    config.keepalive_secs = 2;
    let engine = TestEngine::start_with(config, dir).await;
    let pki = engine.running.pki.clone().expect("dev PKI");
    let tls = sekisho_gateway::tls::ClientTls {
        ca: pki.ca(),
        cert: pki.gateway_cert(),
        key: pki.gateway_key(),
    };
    let batch = || pb::AuditBatch {
        records: vec![shipped_record("lgwan-1", 1, sekisho_policy_engine::audit::GENESIS_HASH).0],
    };
    let cable = common::cable::Cable::to(engine.running.addr).await;
    let (more, stream) = tokio::sync::mpsc::channel(1);
    more.send(batch()).await.unwrap();
    let mut far = audit_sink(&format!("https://{}", cable.addr), &tls).await;
    let call = tokio::spawn(async move {
        far.ship(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
    });

    let mut near = audit_sink(&engine.url(), &tls).await;
    // The shipment over the cable holds the engine's one place.
    let e = empty_shipments_until(&mut near, Result::is_err)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    cable.forget();
    empty_shipments_until(&mut near, Result::is_ok)
        .await
        .unwrap();
    let ack = near
        .ship(tokio_stream::iter(vec![batch()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored_through["lgwan-1"], 1);
    assert!(ack.inserted <= 1, "{ack:?}");
    drop(more);
    call.abort();
    drop(cable);
    engine.stop().await;
}

/// Empty shipments (nothing stored) until one's answer is `wanted`; that answer.
async fn empty_shipments_until(
    sink: &mut pb::audit_sink_client::AuditSinkClient<tonic::transport::Channel>,
    wanted: fn(&Result<tonic::Response<pb::ShipAck>, tonic::Status>) -> bool,
) -> Result<tonic::Response<pb::ShipAck>, tonic::Status> {
    let answers = async {
        loop {
            let answer = sink.ship(tokio_stream::iter(Vec::new())).await;
            if wanted(&answer) {
                return answer;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), answers)
        .await
        .expect("the answer wanted within 30 s")
}

/// An `AuditSink` client of the engine at `url`, as the holder of `tls`.
async fn audit_sink(
    url: &str,
    tls: &sekisho_gateway::tls::ClientTls,
) -> pb::audit_sink_client::AuditSinkClient<tonic::transport::Channel> {
    let channel =
        sekisho_gateway::tls::connect(url, tls, Some("localhost"), Duration::from_secs(5))
            .await
            .unwrap();
    pb::audit_sink_client::AuditSinkClient::new(channel)
}

/// `gateway`'s event `seq` (the chain starts at `prev`), as a forwarder ships it.
fn shipped_record(gateway: &str, seq: u64, prev: &str) -> (pb::AuditRecord, String) {
    use sekisho_policy_engine::audit::event::EventBody;
    use sekisho_policy_engine::audit::{format_ts, Outcome};
    let mut body = EventBody::new(gateway, "lgwan", "logon", Outcome::Allow);
    body.seq = seq;
    body.ts = format_ts(1_790_000_000_000 + seq as i64);
    let event = body.seal(prev);
    let record = pb::AuditRecord {
        gateway: gateway.into(),
        seq,
        json: event.to_json(),
    };
    (record, event.hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_is_shipped_only_by_the_gateway_certificate_that_first_shipped_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sekisho_policy_engine::config::EngineConfig::self_contained(dir.path());
    config.tls.gateway_names = vec!["gw-east".into(), "gw-west".into()];
    let engine = TestEngine::start_with(config, dir).await;
    let pki = engine.running.pki.clone().expect("dev PKI");
    let ship = |client: &'static str, records: Vec<pb::AuditRecord>| {
        let (url, pki) = (engine.url(), pki.clone());
        async move {
            let tls = match client {
                "admin" => sekisho_gateway::tls::ClientTls {
                    ca: pki.ca(),
                    cert: pki.admin_cert(),
                    key: pki.admin_key(),
                },
                name => common::gateway::device_tls(&pki, name),
            };
            audit_sink(&url, &tls)
                .await
                .ship(tokio_stream::iter(vec![pb::AuditBatch { records }]))
                .await
        }
    };
    let genesis = sekisho_policy_engine::audit::GENESIS_HASH;
    let (east1, h1) = shipped_record("lgwan-1", 1, genesis);
    let (east2, h2) = shipped_record("lgwan-1", 2, &h1);
    ship("gw-east", vec![east1]).await.unwrap();

    // Another gateway certificate shipping under that journal's name is refused.
    let e = ship("gw-west", vec![east2.clone()]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("'gw-east'") && e.message().contains("'gw-west'"),
        "{}",
        e.message()
    );
    // Its own journal it may ship; an administrator may ship any (a standalone
    // tier's journal carried over by hand).
    let (west1, _) = shipped_record("lgwan-2", 1, genesis);
    ship("gw-west", vec![west1]).await.unwrap();
    ship("admin", vec![east2]).await.unwrap();
    let (east3, h3) = shipped_record("lgwan-1", 3, &h2);
    let ack = ship("gw-east", vec![east3]).await.unwrap().into_inner();
    assert_eq!(ack.stored_through["lgwan-1"], 3);

    // The gateway gets a new certificate name on purpose: an administrator unbinds
    // its journal, and the next certificate to ship it owns it.
    let unbind = |journal: &'static str| {
        let (store, tenant) = (engine.config.store.clone(), engine.config.tenant.clone());
        move || {
            common::sekisho(
                &[
                    "audit", "unbind", journal, "--store", &store, "--tenant", &tenant,
                ],
                "",
            )
        }
    };
    let (code, out, err) = tokio::task::spawn_blocking(unbind("lgwan-1"))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("'gw-east'"), "{out}");
    // The new certificate ships first through another engine replica on the same
    // store; this engine, which accepted gw-east before, must not still do so.
    let audit =
        sekisho_policy_engine::audit::AuditStore::open(&engine.config.store, &engine.config.tenant)
            .await
            .unwrap();
    audit.bind_journal("lgwan-1", "gw-west").await.unwrap();
    let (east4, _) = shipped_record("lgwan-1", 4, &h3);
    let e = ship("gw-east", vec![east4.clone()]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    ship("gw-west", vec![east4]).await.unwrap();
    // Unbinding is journaled by the engine itself; a journal nobody owns is an error.
    let own = audit
        .query(
            &sekisho_policy_engine::audit::Filter {
                gateway: Some("engine-audit".into()),
                ..Default::default()
            },
            &sekisho_policy_engine::audit::Page {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].body.action, "journal_unbind");
    assert_eq!(own[0].body.detail["journal"], "lgwan-1");
    assert_eq!(own[0].body.detail["certificate"], "gw-east");
    let (code, _, err) = tokio::task::spawn_blocking(unbind("nobody-ships-this"))
        .await
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not bound"), "{err}");
    engine.stop().await;
}

/// An engine takes `audit.max_shipments` journal shipments at once. One more is
/// refused before anything of it is stored, and taken once one of them has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_beyond_audit_max_shipments_is_refused_until_one_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sekisho_policy_engine::config::EngineConfig::self_contained(dir.path());
    config.tls.gateway_names = vec!["gw-a".into(), "gw-b".into(), "gw-c".into()];
    config.audit.max_shipments = 2;
    let engine = TestEngine::start_with(config, dir).await;
    let pki = engine.running.pki.clone().expect("dev PKI");
    let client = |name: &'static str| {
        let (url, tls) = (engine.url(), common::gateway::device_tls(&pki, name));
        async move { audit_sink(&url, &tls).await }
    };
    let genesis = sekisho_policy_engine::audit::GENESIS_HASH;
    let batch = |journal: &str| pb::AuditBatch {
        records: vec![shipped_record(journal, 1, genesis).0],
    };

    // Two shipments in progress: one batch each sent, the stream still open.
    let mut open = Vec::new();
    for (name, journal) in [("gw-a", "tier-a"), ("gw-b", "tier-b")] {
        let (more, stream) = tokio::sync::mpsc::channel(1);
        more.send(batch(journal)).await.unwrap();
        let mut c = client(name).await;
        let call = tokio::spawn(async move {
            c.ship(tokio_stream::wrappers::ReceiverStream::new(stream))
                .await
        });
        open.push((more, call));
    }
    // A third is refused once the engine holds both (until then an empty shipment
    // goes through and stores nothing).
    let mut third = client("gw-c").await;
    let refused = empty_shipments_until(&mut third, Result::is_err)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("2 journal shipments are in progress")
            && refused.message().contains("audit.max_shipments"),
        "{}",
        refused.message()
    );
    let e = third
        .ship(tokio_stream::iter(vec![batch("tier-c")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // One ends and is stored; the third is taken now, and its record was not
    // stored before (inserted now, once).
    let (more, call) = open.remove(0);
    drop(more);
    let ack = call.await.unwrap().unwrap().into_inner();
    assert_eq!((ack.stored_through["tier-a"], ack.inserted), (1, 1));
    let ack = third
        .ship(tokio_stream::iter(vec![batch("tier-c")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored_through["tier-c"], ack.inserted), (1, 1));
    let (more, call) = open.remove(0);
    drop(more);
    let ack = call.await.unwrap().unwrap().into_inner();
    assert_eq!((ack.stored_through["tier-b"], ack.inserted), (1, 1));
    engine.stop().await;
}
