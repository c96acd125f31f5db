//! The engine's audit side over real gRPC with mutual TLS: gateways ship journals
//! through `AuditSink.Ship` with their (non-admin) certificate, and every decision
//! answered lands in the decision log, flushed at shutdown.

use std::path::Path;

use sekisho_policy_engine::audit::event::{format_ts, EventBody, Outcome, GENESIS_HASH};
use sekisho_policy_engine::audit::{AuditEvent, AuditStore, Filter};
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::server::{self, RunningEngine};
use sekisho_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
const ENTITIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policies/examples/entities.json"
);

async fn start(dir: &Path, sample: f64) -> (RunningEngine, EngineConfig) {
    let mut config = EngineConfig::self_contained(dir);
    config.bootstrap.policies = Some(POLICIES.into());
    config.bootstrap.entities = Some(ENTITIES.into());
    config.audit.decision_sample = sample;
    let running = server::start(&config).await.expect("engine starts");
    (running, config)
}

/// A channel presenting the generated gateway certificate (not an administrator).
async fn gateway_channel(e: &RunningEngine) -> Channel {
    let pki = e.pki.as_ref().expect("generated PKI");
    let read = |p: std::path::PathBuf| std::fs::read(p).expect("PKI file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(pki.ca())))
        .identity(Identity::from_pem(
            read(pki.gateway_cert()),
            read(pki.gateway_key()),
        ))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://127.0.0.1:{}", e.addr.port()))
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("gateway connects")
}

fn chain(gateway: &str, n: u64) -> Vec<AuditEvent> {
    chain_of(gateway, n, |b| {
        b.user = format!("u{:03}", b.seq % 7 + 1);
        b.device = "lgwan-desk-01".into();
        b.factors = vec!["card".into(), "password".into()];
    })
}

/// `n` logon events of `gateway`, sealed in a chain, each filled in by `fill`.
fn chain_of(gateway: &str, n: u64, fill: impl Fn(&mut EventBody)) -> Vec<AuditEvent> {
    let mut prev = GENESIS_HASH.to_string();
    (1..=n)
        .map(|seq| {
            let mut b = EventBody::new(gateway, "lgwan", "logon", Outcome::Allow);
            b.seq = seq;
            b.ts = format_ts(1_795_305_600_000 + seq as i64 * 1000);
            fill(&mut b);
            let e = b.seal(&prev);
            prev = e.hash.clone();
            e
        })
        .collect()
}

fn batch(events: &[AuditEvent]) -> pb::AuditBatch {
    pb::AuditBatch {
        records: events
            .iter()
            .map(|e| pb::AuditRecord {
                gateway: e.body.gateway.clone(),
                seq: e.body.seq,
                json: e.to_json(),
            })
            .collect(),
    }
}

async fn ship(
    client: &mut pb::audit_sink_client::AuditSinkClient<Channel>,
    batches: Vec<pb::AuditBatch>,
) -> Result<pb::ShipAck, tonic::Status> {
    client
        .ship(futures::stream::iter(batches))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_ship_journals_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _config) = start(dir.path(), 1.0).await;
    let mut client = pb::audit_sink_client::AuditSinkClient::new(gateway_channel(&engine).await);
    let events = chain("lgwan-gw-1", 1200);

    let ack = ship(
        &mut client,
        vec![batch(&events[..500]), batch(&events[500..1000])],
    )
    .await
    .expect("ship");
    assert_eq!(ack.inserted, 1000);
    assert_eq!(ack.stored_through.get("lgwan-gw-1"), Some(&1000));

    // The whole journal again (the ack was lost): only the new 200 are stored.
    let ack = ship(
        &mut client,
        vec![batch(&events[..600]), batch(&events[600..])],
    )
    .await
    .expect("ship again");
    assert_eq!(ack.inserted, 200);
    assert_eq!(ack.stored_through.get("lgwan-gw-1"), Some(&1200));

    // An empty stream is fine and acknowledges nothing.
    let ack = ship(&mut client, vec![]).await.expect("empty");
    assert_eq!((ack.inserted, ack.stored_through.len()), (0, 0));

    // A record that is not an event: InvalidArgument naming gateway and seq.
    let mut bad = batch(&chain("lgwan-gw-2", 3));
    bad.records[1].json = "{\"seq\":2,\"password\":\"hunter2\"}".into();
    let status = ship(&mut client, vec![bad]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("gateway 'lgwan-gw-2', seq 2"),
        "{}",
        status.message()
    );

    // Too many records in one batch.
    let big = chain("lgwan-gw-3", 10_001);
    let status = ship(&mut client, vec![batch(&big)]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("at most 10000"),
        "{}",
        status.message()
    );

    // An oversized event is refused as it arrives; the engine's own journal name
    // cannot be shipped under.
    let mut huge = batch(&chain("lgwan-gw-4", 1));
    huge.records[0].json = "x".repeat(64 * 1024 + 1);
    let status = ship(&mut client, vec![huge]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("gateway lgwan-gw-4 seq 1"),
        "{}",
        status.message()
    );
    let own = batch(&chain(
        sekisho_policy_engine::store::directory::DIRECTORY_JOURNAL,
        1,
    ));
    let status = ship(&mut client, vec![own]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("engine's own journal"),
        "{}",
        status.message()
    );

    let audit = engine.state.store.audit();
    assert_eq!(audit.count(&Filter::default()).await.unwrap(), 1200);
    let reports = audit.verify().await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].events, reports[0].broken.is_none()),
        (1200, true)
    );
    engine.shutdown().await.unwrap();
}

async fn decide(engine: &RunningEngine) {
    let mut client =
        pb::policy_decision_client::PolicyDecisionClient::new(gateway_channel(engine).await);
    let context = Some(pb::DecisionContext {
        via: "console".into(),
        upstream: vec![],
        hour: Some(9),
    });
    client
        .plan(pb::PlanRequest {
            user: "u001".into(),
            device: "lgwan-desk-01".into(),
            action: "logon".into(),
            context: context.clone(),
            request_id: "req-plan-1".into(),
            ..Default::default()
        })
        .await
        .expect("plan");
    client
        .authorize(pb::AuthorizeRequest {
            user: "u001".into(),
            device: "lgwan-desk-01".into(),
            action: "logon".into(),
            factors: vec!["password".into(), "card".into()],
            context: context.clone(),
            request_id: "req-auth-1".into(),
            gateway_tier: String::new(),
        })
        .await
        .expect("authorize");
    // An unknown user is answered with NotFound, and recorded too.
    let status = client
        .authorize(pb::AuthorizeRequest {
            user: "nobody".into(),
            device: "lgwan-desk-01".into(),
            action: "logon".into(),
            factors: vec!["password".into()],
            context,
            request_id: "req-auth-2".into(),
            gateway_tier: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_logged_and_flushed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, config) = start(dir.path(), 1.0).await;
    decide(&engine).await;
    engine.shutdown().await.unwrap();

    let audit = AuditStore::open(&config.store, &config.tenant)
        .await
        .unwrap();
    let mut got = audit.decisions(None, 10).await.unwrap();
    got.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    let ids: Vec<&str> = got.iter().map(|d| d.request_id.as_str()).collect();
    assert_eq!(ids, ["req-auth-1", "req-auth-2", "req-plan-1"]);

    let auth = &got[0];
    assert_eq!(auth.kind, "authorize");
    assert_eq!(
        (auth.user.as_str(), auth.device.as_str()),
        ("u001", "lgwan-desk-01")
    );
    assert_eq!(
        (auth.action.as_str(), auth.via.as_str(), auth.hour),
        ("logon", "console", 9)
    );
    assert_eq!(auth.factors, ["card", "password"]);
    let result: serde_json::Value = serde_json::from_str(&auth.result).unwrap();
    assert!(result["allowed"].is_boolean(), "{result}");
    assert!(!auth.policy_version.is_empty());

    assert!(got[1].result.contains("unknown user"), "{}", got[1].result);

    let plan = &got[2];
    assert_eq!(plan.kind, "plan");
    let result: serde_json::Value = serde_json::from_str(&plan.result).unwrap();
    assert!(result["options"].is_array(), "{result}");
    let inputs: serde_json::Value = serde_json::from_str(&plan.inputs).unwrap();
    assert_eq!(inputs["emergency_otp_active"], false);
    audit.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_zero_logs_no_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, config) = start(dir.path(), 0.0).await;
    decide(&engine).await;
    engine.shutdown().await.unwrap();
    let audit = AuditStore::open(&config.store, &config.tenant)
        .await
        .unwrap();
    assert!(audit.decisions(None, 10).await.unwrap().is_empty());
    audit.close().await;
}

/// Events as large as a sealed event can be: every detail entry at its bound.
fn large_chain(gateway: &str, n: u64) -> Vec<AuditEvent> {
    use sekisho_policy_engine::audit::event::{MAX_FIELD_BYTES, MAX_FIELD_ENTRIES};
    chain_of(gateway, n, |b| {
        b.detail = (0..MAX_FIELD_ENTRIES)
            .map(|k| (format!("k{k:02}"), "x".repeat(MAX_FIELD_BYTES)))
            .collect();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stores_what_it_holds_once_it_holds_group_bytes() {
    use sekisho_policy_engine::grpc::audit::{GROUP_BYTES, GROUP_RECORDS};
    let dir = tempfile::tempdir().unwrap();
    let (engine, _config) = start(dir.path(), 1.0).await;
    let mut client = pb::audit_sink_client::AuditSinkClient::new(gateway_channel(&engine).await);
    let events = large_chain("lgwan-gw-big", 1_100);
    let bytes: usize = events.iter().map(|e| e.to_json().len()).sum();
    assert!(
        bytes > GROUP_BYTES && events.len() < GROUP_RECORDS,
        "{bytes} bytes in {} events",
        events.len()
    );

    // The stream stays open: nothing is acknowledged yet, but what it holds past
    // GROUP_BYTES must already be stored, not held in memory.
    let (send, batches) = tokio::sync::mpsc::channel(4);
    let shipping = tokio::spawn(async move {
        client
            .ship(tokio_stream::wrappers::ReceiverStream::new(batches))
            .await
            .map(|r| r.into_inner())
    });
    for part in events.chunks(400) {
        send.send(batch(part)).await.expect("stream open");
    }
    let audit = engine.state.store.audit();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stored = audit.count(&Filter::default()).await.unwrap();
        if stored == 1_100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{stored} of 1,100 events stored while the stream is open"
        );
        tokio::task::yield_now().await;
    }
    assert!(!shipping.is_finished(), "the stream is still open");
    drop(send);
    let ack = shipping.await.unwrap().expect("ship");
    assert_eq!(ack.inserted, 1_100);
    assert_eq!(ack.stored_through.get("lgwan-gw-big"), Some(&1_100));
    engine.shutdown().await.unwrap();
}
