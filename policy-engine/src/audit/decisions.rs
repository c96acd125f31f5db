//! The decision log: every plan and authorization the engine answers over gRPC
//! (or a configured sample of them), with its inputs and result, in
//! `audit_decisions`. It answers "why was this person asked for a card at 08:59"
//! after the fact, under the policy version that decided it.
//!
//! Decisions must stay fast (p99 target 250 µs over gRPC), so a handler only does a
//! sampling check and a `try_send` of the unserialised decision into a bounded
//! channel. A background writer serialises and stores them in batches, one
//! transaction per batch. When the channel is full the decision is dropped and
//! counted (a warning at most every few seconds): losing log lines under overload is
//! better than slowing every logon. The gateways' audit journal, not this log, is
//! the record that must never lose an event.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::store::{AuditStore, DecisionEntry};
use crate::engine::{AuthorizeOutcome, DecisionRequest, Plan, PlanInputs};
use crate::factor::FactorSet;

/// Decisions written per transaction at most.
const WRITE_BATCH: usize = 2_000;

/// How long the writer gathers decisions before writing what it has.
const GATHER: Duration = Duration::from_millis(20);

/// Least time between two "decision log full" warnings.
const WARN_EVERY_MS: i64 = 5_000;

/// What was decided, kept unserialised until the writer gets it.
#[derive(Debug, Clone)]
pub enum Decided {
    Plan {
        inputs: PlanInputs,
        outcome: Result<Plan, String>,
    },
    Authorize {
        factors: FactorSet,
        outcome: Result<AuthorizeOutcome, String>,
    },
}

/// One decision as the handler saw it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub ts_ms: i64,
    pub request_id: String,
    pub request: DecisionRequest,
    pub decided: Decided,
}

fn names(s: FactorSet) -> Vec<String> {
    s.names().into_iter().map(String::from).collect()
}

impl Decision {
    /// The stored form (JSON for the result and kind-specific inputs).
    fn entry(self, id: String) -> DecisionEntry {
        let r = self.request;
        let (kind, factors, inputs, result, policy_version) = match self.decided {
            Decided::Plan { inputs, outcome } => {
                let inputs_json = json!({
                    "enrolled": inputs.enrolled.map(names),
                    "emergency_otp_active": inputs.emergency_otp_active,
                    "mask_unknown_user": inputs.mask_unknown_user,
                });
                let (result, version) = match outcome {
                    Ok(plan) => (
                        json!({
                            "options": plan.options.iter().map(|s| names(*s)).collect::<Vec<_>>(),
                            "unavailable": plan.unavailable.iter().map(|u| json!({
                                "factors": names(u.factors),
                                "missing": names(u.missing),
                                "why": u.why.name(),
                            })).collect::<Vec<_>>(),
                        }),
                        plan.policy_version,
                    ),
                    Err(e) => (json!({ "error": e }), String::new()),
                };
                ("plan", Vec::new(), inputs_json, result, version)
            }
            Decided::Authorize { factors, outcome } => {
                let (result, version) = match outcome {
                    Ok(o) => (
                        json!({
                            "allowed": o.allowed,
                            "policy_ids": o.policy_ids,
                            "errors": o.errors,
                        }),
                        o.policy_version,
                    ),
                    Err(e) => (json!({ "error": e }), String::new()),
                };
                ("authorize", names(factors), json!({}), result, version)
            }
        };
        DecisionEntry {
            id,
            ts_ms: self.ts_ms,
            kind: kind.into(),
            user: r.user,
            device: r.device,
            action: r.action.name().into(),
            via: r.via.name().into(),
            upstream: names(r.upstream),
            hour: r.hour,
            factors,
            inputs: inputs.to_string(),
            result: result.to_string(),
            policy_version,
            request_id: self.request_id,
        }
    }
}

struct Inner {
    tx: mpsc::Sender<Decision>,
    sample: f64,
    seen: AtomicU64,
    /// Shared with the writer, which counts what a refused batch lost (the writer
    /// holds no sender, so the queue still closes when the last handle goes).
    dropped: Arc<AtomicU64>,
    last_warn_ms: AtomicI64,
}

/// The handlers' side of the decision log. Cheap to clone.
#[derive(Clone, Default)]
pub struct DecisionLog {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("sample", &self.inner.as_ref().map(|i| i.sample))
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl DecisionLog {
    /// A log that records nothing.
    pub fn disabled() -> DecisionLog {
        DecisionLog { inner: None }
    }

    /// Starts the background writer into `audit`. `sample` in [0, 1] is the share of
    /// decisions recorded (0 starts nothing); `capacity` bounds the decisions
    /// waiting to be written. Must be called inside a Tokio runtime.
    pub fn start(audit: AuditStore, sample: f64, capacity: usize) -> (DecisionLog, DecisionWriter) {
        if sample.is_nan() || sample <= 0.0 {
            return (DecisionLog::disabled(), DecisionWriter::idle());
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(write_loop(audit, rx, stop_rx, dropped.clone()));
        let log = DecisionLog {
            inner: Some(Arc::new(Inner {
                tx,
                sample: sample.min(1.0),
                seen: AtomicU64::new(0),
                dropped,
                last_warn_ms: AtomicI64::new(0),
            })),
        };
        (
            log,
            DecisionWriter {
                stop: Some(stop_tx),
                task: Some(task),
            },
        )
    }

    /// Whether to record the decision about to be made: call before building a
    /// [`Decision`]. Evenly spread (every 1/sample-th decision), no randomness.
    pub fn sampled(&self) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        if inner.sample >= 1.0 {
            return true;
        }
        let n = inner.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * inner.sample).floor() > (n * inner.sample).floor()
    }

    /// Queues a decision for the writer without waiting; drops it when the queue
    /// is full or the writer has stopped.
    pub fn record(&self, decision: Decision) {
        let Some(inner) = &self.inner else { return };
        if inner.tx.try_send(decision).is_err() {
            let dropped = inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = chrono::Utc::now().timestamp_millis();
            let last = inner.last_warn_ms.load(Ordering::Relaxed);
            if now - last >= WARN_EVERY_MS
                && inner
                    .last_warn_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    dropped,
                    "decision log queue full (or writer stopped): decisions are not being recorded; \
                     lower audit.decision_sample or raise audit.decision_queue"
                );
            }
        }
    }

    /// Decisions not recorded since start: dropped because the queue was full, or
    /// lost with a batch the store refused.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }
}

/// The background writer of a [`DecisionLog`]; stop it to flush what is queued.
#[derive(Debug)]
pub struct DecisionWriter {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl DecisionWriter {
    fn idle() -> DecisionWriter {
        DecisionWriter {
            stop: None,
            task: None,
        }
    }

    /// Stops taking decisions, writes those already queued, and waits for that (up to
    /// `grace`; what is left after it is lost, with a warning).
    pub async fn flush_and_stop(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                tracing::warn!("decision log not flushed within the shutdown grace period");
                task.abort();
            }
        }
    }
}

/// A process-unique prefix for decision ids, so replicas writing into one
/// PostgreSQL database never collide.
fn instance_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos as u64, std::process::id())
}

async fn write_loop(
    audit: AuditStore,
    mut rx: mpsc::Receiver<Decision>,
    mut stop: oneshot::Receiver<()>,
    dropped: Arc<AtomicU64>,
) {
    let prefix = instance_prefix();
    let mut next_id = 0u64;
    let mut buf = Vec::with_capacity(WRITE_BATCH);
    let mut write = |batch: &mut Vec<Decision>| {
        let entries: Vec<DecisionEntry> = batch
            .drain(..)
            .map(|d| {
                next_id += 1;
                // Fixed width, so ids sort in the order they were made and each
                // batch lands at the end of the key's index, not all over it.
                d.entry(format!("{prefix}-{next_id:012x}"))
            })
            .collect();
        entries
    };
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, WRITE_BATCH) => {
                if n == 0 {
                    break;
                }
                // Under a steady stream each wake-up finds a handful of decisions;
                // gathering for a moment makes one transaction of what would have
                // been dozens. The writer sleeps through the gathering rather than
                // waking for each arrival (those wake-ups were about a sixth of
                // the log's CPU, `--bench decision_log`); the queue holds what
                // comes meanwhile.
                tokio::time::sleep(GATHER).await;
                while buf.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(d) => buf.push(d),
                        Err(_) => break,
                    }
                }
                let entries = write(&mut buf);
                store_entries(&audit, &entries, &dropped).await;
            }
            // A writer handle dropped without `flush_and_stop` leaves the writer running.
            Ok(()) = &mut stop => {
                rx.close();
                while rx.recv_many(&mut buf, WRITE_BATCH).await > 0 {
                    let entries = write(&mut buf);
                    store_entries(&audit, &entries, &dropped).await;
                }
                break;
            }
        }
    }
}

async fn store_entries(audit: &AuditStore, entries: &[DecisionEntry], dropped: &AtomicU64) {
    if let Err(e) = audit.record_decisions(entries).await {
        let total =
            dropped.fetch_add(entries.len() as u64, Ordering::Relaxed) + entries.len() as u64;
        tracing::error!(error = %e, lost = entries.len(), dropped_since_start = total, "could not record decisions");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Via};

    fn decision(i: u32) -> Decision {
        Decision {
            ts_ms: 1_795_305_600_000 + i64::from(i),
            request_id: format!("r{i}"),
            request: DecisionRequest {
                user: "u1".into(),
                device: "d1".into(),
                action: Action::Logon,
                via: Via::Console,
                upstream: FactorSet::default(),
                hour: 9,
            },
            decided: Decided::Authorize {
                factors: FactorSet::default(),
                outcome: Err("unknown user 'u1'".into()),
            },
        }
    }

    async fn memory_store() -> AuditStore {
        crate::store::Store::open("sqlite::memory:", "t")
            .await
            .expect("in-memory store")
            .audit()
    }

    #[tokio::test]
    async fn sampling_is_an_even_share() {
        let (log, writer) = DecisionLog::start(memory_store().await, 0.25, 10);
        let taken = (0..1000).filter(|_| log.sampled()).count();
        assert_eq!(taken, 250);
        writer.flush_and_stop(Duration::from_secs(5)).await;
        let (log, _) = DecisionLog::start(memory_store().await, 0.0, 10);
        assert!(!(0..100).any(|_| log.sampled()));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_stop_flushes() {
        let audit = memory_store().await;
        // A current-thread runtime: the writer cannot run until this test awaits.
        let (log, writer) = DecisionLog::start(audit.clone(), 1.0, 3);
        for i in 0..10 {
            assert!(log.sampled());
            log.record(decision(i));
        }
        assert_eq!(log.dropped(), 7);
        writer.flush_and_stop(Duration::from_secs(5)).await;
        let stored = audit.decisions(None, 100).await.unwrap();
        assert_eq!(stored.len(), 3);
        assert_eq!(stored[0].request_id, "r2");
        assert_eq!(stored[0].result, "{\"error\":\"unknown user 'u1'\"}");
        // After the stop, decisions are dropped rather than queued forever.
        log.record(decision(11));
        assert_eq!(log.dropped(), 8);
    }

    #[tokio::test]
    async fn a_batch_the_store_refuses_is_counted_as_dropped() {
        let audit = memory_store().await;
        audit.close().await;
        let (log, writer) = DecisionLog::start(audit, 1.0, 10);
        for i in 0..4 {
            log.record(decision(i));
        }
        assert_eq!(log.dropped(), 0);
        writer.flush_and_stop(Duration::from_secs(5)).await;
        assert_eq!(log.dropped(), 4);
    }
}
