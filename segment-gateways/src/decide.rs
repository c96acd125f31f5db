//! Decisions for the gateway: Plan and Authorize asked of the policy engine over
//! mutual TLS.
//!
//! This is the one place that talks to the engine, so that the coming offline mode
//! (a signed policy bundle evaluated by the embedded `sekisho_policy_engine::Engine`
//! when the engine is unreachable or absent) slots in here without touching the
//! logon flow.
//!
//! Calls go out in batches over one long-lived `PolicyDecision.DecideStream`. A
//! decision on its own costs the engine a few tens of µs, but a gRPC call around it
//! over mutual TLS costs more than that on each side (HTTP/2 headers and trailers,
//! a stream and a task per call, TLS records, wake-ups); under load the two engine
//! calls were a large share of a logon's CPU (BENCHMARKS.md, "Fewer hand-offs" and
//! "One decision stream"). On the stream a batch is one message each way. A call
//! made while fewer than [`BATCHES_IN_FLIGHT`] batches are out goes at once, alone,
//! so an idle gateway adds no delay; calls made while they are all out go together
//! in the next one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sekisho_policy_engine::{Action, FactorSet, Tier, Via};
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::decision_answer::Answer;
use sekisho_proto::v1::decision_call::Call;
use sekisho_proto::v1::policy_decision_client::PolicyDecisionClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

/// Batches out to the engine at once: the engine works on one while the next is on
/// the wire or filling; more would only make the batches smaller.
pub const BATCHES_IN_FLIGHT: usize = 2;

/// Calls in one batch.
pub const MAX_BATCH: usize = 64;
const _: () = assert!(MAX_BATCH <= sekisho_policy_engine::grpc::MAX_DECIDE_CALLS);

/// Calls waiting for a batch before callers wait to add theirs.
const QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The engine does not know the device (registered at the gateway only).
    #[error("the policy engine does not know device '{0}': register it there too (sekisho device register)")]
    UnknownDevice(String),
    /// The user vanished between Begin and Complete (a directory sync).
    #[error("the policy engine does not know user '{0}'")]
    UnknownUser(String),
    /// The engine files the device under another tier than this gateway's.
    #[error("{0}")]
    OtherTier(String),
    #[error("the policy engine refused the request: {0}")]
    Refused(String),
    #[error("the policy engine is unreachable or failed: {0}")]
    Unavailable(String),
}

/// What a decision is about.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub action: Action,
    pub via: Via,
    pub upstream: FactorSet,
    pub request_id: &'a str,
}

impl Subject<'_> {
    fn context(&self) -> Option<pb::DecisionContext> {
        Some(pb::DecisionContext {
            via: self.via.name().into(),
            upstream: names(self.upstream),
            hour: None,
        })
    }
}

pub fn names(set: FactorSet) -> Vec<String> {
    set.names().into_iter().map(String::from).collect()
}

#[derive(Debug, Clone)]
pub struct Authorized {
    pub allowed: bool,
    pub policy_ids: Vec<String>,
    pub policy_version: String,
}

#[derive(Clone)]
pub struct Decider {
    calls: mpsc::Sender<Pending>,
    sent: Arc<Sent>,
    /// This gateway's tier, sent with every call: the engine refuses a device it
    /// files under another.
    tier: Tier,
}

/// What the batching task has sent, for operators and tests.
#[derive(Debug, Default)]
struct Sent {
    streams: AtomicU64,
    batches: AtomicU64,
    calls: AtomicU64,
}

/// Counts of what a [`Decider`] has sent to the engine so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideStats {
    /// `DecideStream`s opened: one, and another after each that broke.
    pub streams: u64,
    /// Batches (`DecideRequest`s) sent on them.
    pub batches: u64,
    /// Plan and Authorize calls in them.
    pub calls: u64,
}

/// A call waiting for its batch, and where its answer goes.
struct Pending {
    call: Call,
    answer: oneshot::Sender<Result<Answer, tonic::Status>>,
}

impl Decider {
    /// Sends decisions about devices of `tier` to the engine behind `channel`,
    /// failing calls the engine has not answered within `timeout`; the batching
    /// task runs until the last clone of the decider is dropped. Needs a Tokio
    /// runtime.
    pub fn remote(channel: Channel, tier: Tier, timeout: Duration) -> Self {
        let (calls, queue) = mpsc::channel(QUEUE);
        let sent = Arc::new(Sent::default());
        tokio::spawn(send_batches(
            PolicyDecisionClient::new(channel),
            queue,
            Arc::clone(&sent),
            timeout,
        ));
        Decider { calls, sent, tier }
    }

    pub fn stats(&self) -> DecideStats {
        DecideStats {
            streams: self.sent.streams.load(Ordering::Relaxed),
            batches: self.sent.batches.load(Ordering::Relaxed),
            calls: self.sent.calls.load(Ordering::Relaxed),
        }
    }

    async fn call(&self, call: Call) -> Result<Answer, tonic::Status> {
        let (answer, answered) = oneshot::channel();
        let gone = || tonic::Status::unavailable("the gateway's engine client has stopped");
        self.calls
            .send(Pending { call, answer })
            .await
            .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }

    /// The plan for `subject`, restricted to what the user enrolled on this tier.
    /// Unknown users are masked by the engine (a plausible plan, never NotFound).
    pub async fn plan(
        &self,
        subject: &Subject<'_>,
        enrolled: FactorSet,
        emergency_otp_active: bool,
    ) -> Result<pb::PlanResponse, DecideError> {
        let request = pb::PlanRequest {
            user: subject.user.into(),
            device: subject.device.into(),
            action: subject.action.name().into(),
            context: subject.context(),
            emergency_otp_active,
            request_id: subject.request_id.into(),
            enrolled: Some(pb::FactorSet {
                factors: names(enrolled),
            }),
            mask_unknown_user: true,
            gateway_tier: self.tier.name().into(),
        };
        match self.call(Call::Plan(request)).await {
            Ok(Answer::Plan(plan)) => Ok(plan),
            Ok(_) => Err(mismatched("plan")),
            Err(status) => Err(status_error(status, subject)),
        }
    }

    pub async fn authorize(
        &self,
        subject: &Subject<'_>,
        factors: FactorSet,
    ) -> Result<Authorized, DecideError> {
        let request = pb::AuthorizeRequest {
            user: subject.user.into(),
            device: subject.device.into(),
            action: subject.action.name().into(),
            factors: names(factors),
            context: subject.context(),
            request_id: subject.request_id.into(),
            gateway_tier: self.tier.name().into(),
        };
        let r = match self.call(Call::Authorize(request)).await {
            Ok(Answer::Authorize(r)) => r,
            Ok(_) => return Err(mismatched("authorize")),
            Err(status) => return Err(status_error(status, subject)),
        };
        Ok(Authorized {
            allowed: r.decision == pb::Decision::Allow as i32,
            policy_ids: r.policy_ids,
            policy_version: r.policy_version,
        })
    }
}

fn mismatched(asked: &str) -> DecideError {
    DecideError::Unavailable(format!(
        "the policy engine answered a {asked} call with another kind of answer"
    ))
}

/// The open decision stream: batches go out on `requests` and come back on
/// `answers`, in the order sent.
struct DecisionStream {
    requests: mpsc::Sender<pb::DecideRequest>,
    answers: tonic::Streaming<pb::DecideResponse>,
}

/// A batch sent and not yet answered.
struct Waiting {
    answers: Answers,
    sent: Instant,
}

type Answers = Vec<oneshot::Sender<Result<Answer, tonic::Status>>>;

/// Takes calls off `queue` and sends them in batches over one `DecideStream`, at
/// most [`BATCHES_IN_FLIGHT`] unanswered at a time: a batch is formed only when a
/// slot is free, so calls that arrive while the slots are taken join the next batch
/// instead of queueing behind it. The stream is opened with the first batch and
/// again with the first batch after it broke; a batch not answered within
/// `timeout` fails every waiting call and the stream is given up, as a stalled
/// engine would otherwise hold logons forever.
async fn send_batches(
    engine: PolicyDecisionClient<Channel>,
    mut queue: mpsc::Receiver<Pending>,
    sent: Arc<Sent>,
    timeout: Duration,
) {
    let mut link = Link {
        engine,
        stream: None,
        waiting: VecDeque::with_capacity(BATCHES_IN_FLIGHT),
        timeout,
    };
    loop {
        let deadline = link.waiting.front().map(|w| w.sent + timeout);
        tokio::select! {
            biased;
            reply = next_answer(&mut link.stream), if !link.waiting.is_empty() => match reply {
                Ok(response) => {
                    if let Some(batch) = link.waiting.pop_front() {
                        deliver(batch.answers, response);
                    }
                }
                Err(status) => link.give_up(&status),
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                link.give_up(&tonic::Status::unavailable(format!(
                    "the policy engine did not answer within {} ms",
                    timeout.as_millis()
                )));
            }
            first = queue.recv(), if link.waiting.len() < BATCHES_IN_FLIGHT => {
                let Some(first) = first else {
                    return; // every Decider is gone
                };
                let (request, answers) = take_batch(first, &mut queue, &sent);
                link.send(request, answers, &sent).await;
            }
        }
    }
}

/// The first call and those queued behind it, up to [`MAX_BATCH`], as one request.
fn take_batch(
    first: Pending,
    queue: &mut mpsc::Receiver<Pending>,
    sent: &Sent,
) -> (pb::DecideRequest, Answers) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    sent.batches.fetch_add(1, Ordering::Relaxed);
    sent.calls.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let (calls, answers) = batch
        .into_iter()
        .map(|p| (pb::DecisionCall { call: Some(p.call) }, p.answer))
        .unzip();
    (pb::DecideRequest { calls }, answers)
}

/// The batching task's side of the engine: the open stream, if any, and the
/// batches sent on it that wait for their answers. `stream` is `None` only while
/// nothing waits.
struct Link {
    engine: PolicyDecisionClient<Channel>,
    stream: Option<DecisionStream>,
    waiting: VecDeque<Waiting>,
    timeout: Duration,
}

impl Link {
    /// Sends `request` on the open stream, or on a new one when there is none or
    /// it broke since its last answer (what it held is lost then).
    async fn send(&mut self, mut request: pb::DecideRequest, answers: Answers, sent: &Sent) {
        if let Some(open) = &self.stream {
            match open.requests.try_send(request) {
                Ok(()) => return self.wait_for(answers),
                Err(e) => {
                    request = e.into_inner();
                    self.give_up(&broken());
                }
            }
        }
        match open_stream(&mut self.engine, request, self.timeout).await {
            Ok(opened) => {
                sent.streams.fetch_add(1, Ordering::Relaxed);
                self.stream = Some(opened);
                self.wait_for(answers);
            }
            Err(status) => fail(answers, &status),
        }
    }

    fn wait_for(&mut self, answers: Answers) {
        self.waiting.push_back(Waiting {
            answers,
            sent: Instant::now(),
        });
    }

    /// Drops the stream and fails every call waiting on it with `status`.
    fn give_up(&mut self, status: &tonic::Status) {
        self.stream = None;
        for batch in self.waiting.drain(..) {
            fail(batch.answers, status);
        }
    }
}

/// Opens a decision stream carrying `first`, which travels with the stream's
/// headers rather than a round trip after them.
async fn open_stream(
    engine: &mut PolicyDecisionClient<Channel>,
    first: pb::DecideRequest,
    timeout: Duration,
) -> Result<DecisionStream, tonic::Status> {
    let (requests, outgoing) = mpsc::channel(BATCHES_IN_FLIGHT);
    requests
        .try_send(first)
        .map_err(|_| tonic::Status::internal("a new decision stream refused its first batch"))?;
    let opened = tokio::time::timeout(
        timeout,
        engine.decide_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
    )
    .await
    .map_err(|_| {
        tonic::Status::unavailable(format!(
            "the policy engine did not open a decision stream within {} ms",
            timeout.as_millis()
        ))
    })??;
    Ok(DecisionStream {
        requests,
        answers: opened.into_inner(),
    })
}

async fn next_answer(
    stream: &mut Option<DecisionStream>,
) -> Result<pb::DecideResponse, tonic::Status> {
    match stream {
        Some(s) => s.answers.message().await?.ok_or_else(broken),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn broken() -> tonic::Status {
    tonic::Status::unavailable("the policy engine ended the decision stream")
}

fn fail(answers: Answers, status: &tonic::Status) {
    for answer in answers {
        // The caller may have gone (its logon was cancelled); nothing to do then.
        let _ = answer.send(Err(status.clone()));
    }
}

/// Gives every call of a batch its answer, or the batch's failure.
fn deliver(answers: Answers, response: pb::DecideResponse) {
    let sent = answers.len();
    let replies = response.answers;
    if replies.len() != sent {
        let status = tonic::Status::internal(format!(
            "the policy engine answered {} of {sent} decisions",
            replies.len()
        ));
        return fail(answers, &status);
    }
    for (answer, reply) in answers.into_iter().zip(replies) {
        let result = match reply.answer {
            Some(Answer::Failure(f)) => Err(tonic::Status::new(f.code.into(), f.message)),
            Some(a) => Ok(a),
            None => Err(tonic::Status::internal(
                "the policy engine sent an empty answer",
            )),
        };
        // The caller may have gone (its logon was cancelled); nothing to do then.
        let _ = answer.send(result);
    }
}

fn status_error(status: tonic::Status, subject: &Subject<'_>) -> DecideError {
    match status.code() {
        tonic::Code::NotFound if status.message().starts_with("unknown device") => {
            DecideError::UnknownDevice(subject.device.into())
        }
        tonic::Code::NotFound => DecideError::UnknownUser(subject.user.into()),
        tonic::Code::FailedPrecondition => DecideError::OtherTier(status.message().into()),
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
            DecideError::Refused(status.message().into())
        }
        _ => DecideError::Unavailable(format!("{}: {}", status.code(), status.message())),
    }
}
