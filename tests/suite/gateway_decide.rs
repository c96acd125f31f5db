//! The gateway's engine client against a real engine: calls made together go out in
//! batches on one decision stream, each caller gets the answer its own call would
//! have had, and a stream the engine ended or left unanswered is replaced.

use std::pin::Pin;
use std::time::Duration;

use crate::common;

use common::cable::Cable;
use common::{Backend, TestEngine};
use futures::Stream;
use sekisho_gateway::decide::{DecideError, Decider, Subject};
use sekisho_policy_engine::{Action, Factor, FactorSet, Tier, Via};
use sekisho_proto::v1 as pb;
use tonic::{Request, Response, Status};

fn subject<'a>(user: &'a str, device: &'a str, request_id: &'a str) -> Subject<'a> {
    Subject {
        user,
        device,
        action: Action::Logon,
        via: Via::Console,
        upstream: FactorSet::EMPTY,
        request_id,
    }
}

/// One call's answer, reduced to what can be compared across calls.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Plan(Vec<Vec<String>>, String),
    Authorized(bool, Vec<String>, String),
    UnknownUser,
    UnknownDevice,
    Other(String),
}

fn failed(e: DecideError) -> Outcome {
    match e {
        DecideError::UnknownUser(_) => Outcome::UnknownUser,
        DecideError::UnknownDevice(_) => Outcome::UnknownDevice,
        other => Outcome::Other(other.to_string()),
    }
}

/// Call `n` of a mix: plans and authorizations for a known user, an unknown user
/// (masked plan, NotFound on authorize) and an unknown device.
async fn call(decider: &Decider, n: usize) -> Outcome {
    let id = format!("batch-{n}");
    let card_password = FactorSet::EMPTY.with(Factor::Card).with(Factor::Password);
    let (user, device) = match n % 3 {
        0 => ("u023", "lgwan-desk-17"),
        1 => ("nobody", "lgwan-desk-17"),
        _ => ("u023", "no-such-desk"),
    };
    let s = subject(user, device, &id);
    if n.is_multiple_of(2) {
        match decider.plan(&s, card_password, false).await {
            Ok(p) => Outcome::Plan(
                p.options.into_iter().map(|o| o.factors).collect(),
                p.policy_version,
            ),
            Err(e) => failed(e),
        }
    } else {
        let verified = if n % 4 == 1 {
            card_password
        } else {
            FactorSet::EMPTY.with(Factor::Password)
        };
        match decider.authorize(&s, verified).await {
            Ok(a) => Outcome::Authorized(a.allowed, a.policy_ids, a.policy_version),
            Err(e) => failed(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_go_in_batches_and_each_caller_gets_its_own_answer() {
    let engine = TestEngine::start(Backend::Sqlite, "batches").await;
    engine.load_reference().await;
    let decider = Decider::remote(
        engine.gateway().connect().await.expect("connects"),
        Tier::Lgwan,
        Duration::from_secs(5),
    );
    const CALLS: usize = 240;

    // One at a time, each call is a batch of one: the reference answers.
    let mut alone = Vec::with_capacity(CALLS);
    for n in 0..CALLS {
        alone.push(call(&decider, n).await);
    }
    assert_eq!(
        decider.stats().batches,
        CALLS as u64,
        "calls made one at a time go out alone"
    );
    // The mix covers every kind of answer.
    for kind in [
        |o: &Outcome| matches!(o, Outcome::Plan(..)),
        |o: &Outcome| matches!(o, Outcome::Authorized(true, ..)),
        |o: &Outcome| matches!(o, Outcome::Authorized(false, ..)),
        |o: &Outcome| *o == Outcome::UnknownUser,
        |o: &Outcome| *o == Outcome::UnknownDevice,
    ] {
        assert!(alone.iter().any(kind), "{alone:?}");
    }

    // All at once: fewer requests than calls, and the same answer for each call.
    let before = decider.stats();
    let together = futures::future::join_all((0..CALLS).map(|n| call(&decider, n))).await;
    let after = decider.stats();
    assert_eq!(together, alone);
    assert_eq!(after.calls - before.calls, CALLS as u64);
    let batches = after.batches - before.batches;
    assert!(
        batches < CALLS as u64,
        "{CALLS} concurrent calls went in {batches} requests"
    );

    assert_eq!(after.streams, 1, "every batch went on the one stream");

    // The engine gone: every waiting caller is told it is unavailable.
    let stopped = engine.stop_keeping_address().await;
    let gone = futures::future::join_all((0..8).map(|n| call(&decider, n))).await;
    for outcome in gone {
        assert!(
            matches!(&outcome, Outcome::Other(m) if m.contains("unreachable")),
            "{outcome:?}"
        );
    }

    // Back on the same address, with the same store: a new stream, the same answers.
    let engine = stopped.start().await;
    let streams = decider.stats().streams;
    let again = futures::future::join_all((0..CALLS).map(|n| call(&decider, n))).await;
    assert_eq!(again, alone);
    assert_eq!(
        decider.stats().streams,
        streams + 1,
        "one new stream carries them all"
    );
    engine.stop().await;
}

/// An engine that opens decision streams and never answers on them.
struct Stalled;

type Never<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::policy_decision_server::PolicyDecision for Stalled {
    async fn plan(
        &self,
        _: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        Err(Status::unimplemented("stalled"))
    }

    async fn authorize(
        &self,
        _: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        Err(Status::unimplemented("stalled"))
    }

    type DecideStreamStream = Never<pb::DecideResponse>;

    async fn decide_stream(
        &self,
        _: Request<tonic::Streaming<pb::DecideRequest>>,
    ) -> Result<Response<Self::DecideStreamStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }

    type WatchPolicyStream = Never<pb::PolicyVersionInfo>;

    async fn watch_policy(
        &self,
        _: Request<pb::WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        Err(Status::unimplemented("stalled"))
    }

    type WatchRevocationsStream = Never<pb::Revocation>;

    async fn watch_revocations(
        &self,
        _: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        Err(Status::unimplemented("stalled"))
    }
}

/// An engine that stops answering must not hold logons: every call waiting on the
/// stream fails once the timeout has passed, and the next batch opens a new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_an_engine_leaves_unanswered_fail_after_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::policy_decision_server::PolicyDecisionServer::new(
                Stalled,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    let decider = Decider::remote(channel, Tier::Lgwan, Duration::from_millis(300));

    let stalled = |outcome: &Outcome| matches!(outcome, Outcome::Other(m) if m.contains("did not answer within 300 ms"));
    for round in 1..=2 {
        let outcome = call(&decider, 0).await;
        assert!(stalled(&outcome), "{outcome:?}");
        assert_eq!(
            decider.stats().streams,
            round,
            "a new stream after a stalled one"
        );
    }
    let waited = futures::future::join_all((0..6).map(|n| call(&decider, n))).await;
    assert!(waited.iter().all(stalled), "{waited:?}");
    server.abort();
}

/// A firewall forgets the connection under the decision stream: the PINGs go
/// unanswered, the connection is closed, and decisions go on over a new one,
/// within a few timeouts rather than when TCP gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_a_firewall_forgot_is_replaced() {
    let engine = TestEngine::start(Backend::Sqlite, "forgotten").await;
    engine.load_reference().await;
    let cable = Cable::to(engine.running.addr).await;
    let pki = engine
        .running
        .pki
        .as_ref()
        .expect("test engines use the generated PKI");
    let tls = sekisho_gateway::tls::ClientTls {
        ca: pki.ca(),
        cert: pki.gateway_cert(),
        key: pki.gateway_key(),
    };
    let timeout = Duration::from_millis(500);
    let endpoint = sekisho_gateway::tls::endpoint(
        &format!("https://{}", cable.addr),
        &tls,
        Some("localhost"),
        timeout,
    )
    .expect("endpoint");
    let channel = sekisho_gateway::tls::open_lazy(sekisho_gateway::tls::keep_alive(
        endpoint,
        Duration::from_millis(200),
        timeout,
    ));
    let decider = Decider::remote(channel, Tier::Lgwan, timeout);
    let answered = |o: &Outcome| matches!(o, Outcome::Plan(..));
    let first = call(&decider, 0).await;
    assert!(answered(&first), "{first:?}");

    cable.forget();
    let mut outcomes = Vec::new();
    while outcomes.len() < 8 {
        let o = call(&decider, 0).await;
        let done = answered(&o);
        outcomes.push(o);
        if done {
            break;
        }
    }
    assert!(
        outcomes.last().is_some_and(answered),
        "decisions did not resume over a new connection: {outcomes:?}"
    );
    assert!(decider.stats().streams >= 2, "{:?}", decider.stats());
    drop(cable);
    engine.stop().await;
}
