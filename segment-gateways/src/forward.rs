//! Ships the journal to the policy engine's audit store (`AuditSink.Ship`).
//!
//! The journal is the outbox: nothing is queued in memory, so nothing is lost when
//! the engine is down or either side restarts. One task reads the events after the
//! position the engine last confirmed (`gw_outbox.acked_seq`), sends them as one
//! client stream of batches, and stores the `stored_through` the engine answers as
//! the new position. Sending again after a lost acknowledgement is harmless: the
//! engine stores each (gateway, seq) once. A *different* event under a seq the
//! engine holds (another journal under this gateway's name) is refused, and the
//! position never moves past events the engine has not taken from this journal:
//! they stay in the journal, and the forwarder keeps failing, loudly, until the
//! gateway gets its own name.
//!
//! It wakes when the journal commits and every [`IDLE_RECHECK`] otherwise, but
//! starts shipments no closer together than [`ForwardSettings::interval`]: each
//! costs the engine a transaction, so under a steady stream of logons fewer, larger
//! shipments are cheaper, while an event after a quiet spell still leaves at once.
//! A backlog is shipped stream after stream without pausing. On failure it retries
//! after 100 ms, doubling to 30 s, and logs when the state changes (failing, failing
//! differently, recovered), not on every retry.

use std::time::{Duration, Instant};

use sekisho_policy_engine::grpc::audit::CONFLICT_SEQ_METADATA;
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::audit_sink_client::AuditSinkClient;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::db::Db;
use crate::journal::{self, Journal, JournalError};

pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Look again this often even without a commit (e.g. rows left by an earlier run).
pub const IDLE_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSettings {
    /// Records per `AuditBatch` message.
    pub batch_size: usize,
    /// Records per `Ship` stream (one acknowledgement).
    pub stream_records: usize,
    /// Least time from one shipment's start to the next, unless a backlog is waiting.
    pub interval: Duration,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            batch_size: 500,
            stream_records: 5000,
            interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Not `#[from]`: a status goes through [`ForwardError::from_status`], which
    /// picks out the conflict refusal.
    #[error("the policy engine refused or did not answer: {0}")]
    Rpc(tonic::Status),
    #[error("the policy engine refuses gateway '{gateway}' seq {seq}: it already holds a different event under this name and seq, so this journal was replaced or another gateway is also named '{gateway}'; the events stay in this journal until this gateway gets its own name")]
    Conflict { gateway: String, seq: u64 },
    #[error("the policy engine holds events of gateway '{gateway}' through seq {engine_through}, but this journal ends at seq {journal_through}: this journal was restored from an older copy, or another gateway is also named '{gateway}'; its next event will be refused, so give this gateway its own name")]
    EngineAhead {
        gateway: String,
        engine_through: u64,
        journal_through: u64,
    },
    #[error("the policy engine's acknowledgement does not name gateway '{0}'")]
    NoAck(String),
    #[error("the policy engine stores gateway '{gateway}' only through seq {stored} of the {sent} sent (a gap in the journal, or a refused event?)")]
    Incomplete {
        gateway: String,
        stored: u64,
        sent: u64,
    },
}

impl ForwardError {
    /// What kind of trouble, for logging state changes rather than every retry.
    fn kind(&self) -> String {
        match self {
            ForwardError::Journal(_) => "journal".into(),
            ForwardError::Rpc(s) => format!("rpc:{:?}", s.code()),
            ForwardError::NoAck(_) => "no_ack".into(),
            ForwardError::Incomplete { .. } => "incomplete".into(),
            ForwardError::Conflict { seq, .. } => format!("conflict:{seq}"),
            ForwardError::EngineAhead { .. } => "engine_ahead".into(),
        }
    }

    /// An RPC failure, as [`ForwardError::Conflict`] when the engine refused one of
    /// `gateway`'s events for differing from the one it holds under that seq.
    fn from_status(gateway: &str, status: tonic::Status) -> ForwardError {
        let seq = (status.code() == tonic::Code::FailedPrecondition)
            .then(|| status.metadata().get(CONFLICT_SEQ_METADATA))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match seq {
            Some(seq) => ForwardError::Conflict {
                gateway: gateway.to_string(),
                seq,
            },
            None => ForwardError::Rpc(status),
        }
    }

    /// Trouble retrying cannot cure: two journals under one name, or a
    /// certificate the engine does not let ship this journal. Logged as an error
    /// rather than a warning, as someone must rename a gateway or fix its
    /// certificate.
    fn needs_operator(&self) -> bool {
        match self {
            ForwardError::Conflict { .. } | ForwardError::EngineAhead { .. } => true,
            ForwardError::Rpc(s) => s.code() == tonic::Code::PermissionDenied,
            _ => false,
        }
    }
}

/// The running forwarder of one gateway's journal.
pub struct Forwarder {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    through: watch::Receiver<u64>,
    failures: watch::Receiver<u64>,
}

impl Forwarder {
    /// Starts shipping `journal` (stored in `db`) to the engine behind `channel`.
    pub fn spawn(
        db: Db,
        journal: &Journal,
        channel: Channel,
        settings: ForwardSettings,
    ) -> Forwarder {
        let (stop, stopped) = oneshot::channel();
        let (shipper, through, failures) = Shipper::new(db, journal, channel, settings);
        let task = tokio::spawn(shipper.run(journal.subscribe(), stopped));
        Forwarder {
            stop: Some(stop),
            task,
            through,
            failures,
        }
    }

    /// The seq through which the engine has confirmed the journal; changes as it
    /// does (`wait_for(|s| *s >= n)` in tests).
    pub fn forwarded_through(&self) -> watch::Receiver<u64> {
        self.through.clone()
    }

    /// Failed attempts so far, each retry counted: the log says when forwarding
    /// starts failing; this says it keeps trying.
    pub fn failures(&self) -> watch::Receiver<u64> {
        self.failures.clone()
    }

    /// Stops at once; a stream in flight is dropped and sent again at the next start.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "audit forwarder ended abnormally");
        }
    }
}

struct Shipper {
    db: Db,
    /// The journal shipped; it records the position the engine confirmed, in its
    /// writer's commits.
    journal: Journal,
    client: AuditSinkClient<Channel>,
    settings: ForwardSettings,
    through: watch::Sender<u64>,
    failures: watch::Sender<u64>,
    /// When the last shipment started.
    last_sent: Option<Instant>,
}

impl Shipper {
    /// The shipper, and receivers of its confirmed position and failure count.
    fn new(
        db: Db,
        journal: &Journal,
        channel: Channel,
        settings: ForwardSettings,
    ) -> (Shipper, watch::Receiver<u64>, watch::Receiver<u64>) {
        let (through_tx, through) = watch::channel(0);
        let (failures_tx, failures) = watch::channel(0);
        let shipper = Shipper {
            db,
            journal: journal.clone(),
            client: AuditSinkClient::new(channel),
            settings: ForwardSettings {
                batch_size: settings.batch_size.max(1),
                stream_records: settings.stream_records.max(1),
                interval: settings.interval,
            },
            through: through_tx,
            failures: failures_tx,
            last_sent: None,
        };
        (shipper, through, failures)
    }

    async fn run(mut self, mut head: watch::Receiver<u64>, mut stop: oneshot::Receiver<()>) {
        let mut backoff = MIN_BACKOFF;
        let mut failing: Option<String> = None;
        let mut acked: Option<u64> = None;
        loop {
            let shipped = tokio::select! {
                _ = &mut stop => return,
                r = self.ship_once(&mut acked) => r,
            };
            match shipped {
                Ok(more) => {
                    if failing.take().is_some() {
                        tracing::info!(gateway = %self.journal.gateway(), through = acked.unwrap_or(0), "audit forwarding resumed");
                    }
                    backoff = MIN_BACKOFF;
                    if more {
                        continue;
                    }
                    let through = acked.unwrap_or(0);
                    let committed = async {
                        // A closed journal commits nothing more: wait for the timer.
                        if head.wait_for(|h| *h > through).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = committed => {}
                        _ = tokio::time::sleep(IDLE_RECHECK) => {}
                    }
                    if let Some(sent) = self.last_sent {
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = tokio::time::sleep_until((sent + self.settings.interval).into()) => {}
                        }
                    }
                }
                Err(e) => {
                    self.failures.send_modify(|n| *n += 1);
                    let kind = e.kind();
                    if failing.as_deref() != Some(kind.as_str()) {
                        if e.needs_operator() {
                            tracing::error!(gateway = %self.journal.gateway(), error = %e, retry_ms = backoff.as_millis() as u64, "audit forwarding refused; the journal keeps the events until the engine takes them (retrying, logged again when this changes)");
                        } else {
                            tracing::warn!(gateway = %self.journal.gateway(), error = %e, retry_ms = backoff.as_millis() as u64, "audit forwarding failed; the journal keeps the events until the engine takes them (retrying, logged again when this changes)");
                        }
                        failing = Some(kind);
                    }
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Sends what the engine lacks, up to one stream's worth. `Ok(true)` when more
    /// is waiting.
    async fn ship_once(&mut self, acked: &mut Option<u64>) -> Result<bool, ForwardError> {
        let from = match *acked {
            Some(a) => a,
            None => {
                let a = journal::acked_seq(&self.db, self.journal.gateway()).await?;
                *acked = Some(a);
                self.through.send_replace(a);
                a
            }
        };
        let rows = journal::read(
            &self.db,
            self.journal.gateway(),
            from,
            self.settings.stream_records,
        )
        .await?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(false);
        };
        let full = rows.len() == self.settings.stream_records;
        let sent = rows.len();
        let batches: Vec<pb::AuditBatch> = rows
            .chunks(self.settings.batch_size)
            .map(|chunk| pb::AuditBatch {
                records: chunk
                    .iter()
                    .map(|(seq, json)| pb::AuditRecord {
                        gateway: self.journal.gateway().to_string(),
                        seq: *seq,
                        json: json.clone(),
                    })
                    .collect(),
            })
            .collect();
        self.last_sent = Some(Instant::now());
        let ack = self
            .client
            .ship(tokio_stream::iter(batches))
            .await
            .map_err(|s| ForwardError::from_status(self.journal.gateway(), s))?
            .into_inner();
        let stored = *ack
            .stored_through
            .get(self.journal.gateway())
            .ok_or_else(|| ForwardError::NoAck(self.journal.gateway().to_string()))?;
        tracing::debug!(gateway = %self.journal.gateway(), sent, inserted = ack.inserted, stored, "audit events shipped");
        if stored > last && !full {
            // The engine holds seqs of this name that this journal has not written:
            // another journal's (two gateways with one name, or this journal restored
            // from an older copy). The events just sent were accepted, so they match
            // the engine's, but the next one this journal writes will be refused, and
            // an engine that did not compare would have dropped them unseen. So
            // nothing is acknowledged and this is a failure, retried and logged, until
            // someone renames the gateway: the events stay in the journal meanwhile.
            return Err(ForwardError::EngineAhead {
                gateway: self.journal.gateway().to_string(),
                engine_through: stored,
                journal_through: last,
            });
        }
        // Never past `last`: the engine refuses a shipment holding an event that
        // differs from the one it stores under that seq, so its answer vouches for
        // the events sent, from `from + 1` through `last`, and for nothing beyond.
        // Further up it may hold this journal's next events (imported from a file,
        // or shipped before a crash lost the position) or another journal's; the
        // next stream finds out which. Lower than `last` (a gap, or an engine
        // restored from an older store): the journal sends the rest again from there.
        let now = stored.min(last);
        if now != from {
            self.journal.record_acked(now).await?;
            *acked = Some(now);
            self.through.send_replace(now);
        }
        if stored < last {
            return Err(ForwardError::Incomplete {
                gateway: self.journal.gateway().to_string(),
                stored,
                sent: last,
            });
        }
        Ok(full)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use sekisho_policy_engine::audit::event::EventBody;
    use sekisho_policy_engine::audit::{AuditStore, Filter, Outcome};
    use sekisho_policy_engine::grpc::audit::AuditSinkService;
    use sekisho_policy_engine::Tier;
    use sekisho_proto::v1::audit_sink_server::{AuditSink, AuditSinkServer};
    use tokio_stream::StreamExt;
    use tonic::transport::server::Router;
    use tonic::transport::Server;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    /// An engine's audit sink in miniature: stores (gateway, seq) once, answers the
    /// contiguous prefix.
    #[derive(Clone, Default)]
    struct Sink {
        stored: Arc<Mutex<BTreeSet<u64>>>,
        streams: Arc<Mutex<Vec<Vec<u64>>>>,
    }

    #[tonic::async_trait]
    impl AuditSink for Sink {
        async fn ship(
            &self,
            request: Request<Streaming<pb::AuditBatch>>,
        ) -> Result<Response<pb::ShipAck>, Status> {
            let mut stream = request.into_inner();
            let mut got = Vec::new();
            let mut gateway = String::new();
            while let Some(batch) = stream.next().await {
                for r in batch?.records {
                    assert!(r.json.contains(&format!("\"seq\":{}", r.seq)));
                    gateway = r.gateway;
                    got.push(r.seq);
                }
            }
            let mut stored = self.stored.lock().unwrap();
            let mut inserted = 0;
            for s in &got {
                inserted += u64::from(stored.insert(*s));
            }
            let mut through = 0;
            while stored.contains(&(through + 1)) {
                through += 1;
            }
            self.streams.lock().unwrap().push(got);
            Ok(Response::new(pb::ShipAck {
                stored_through: [(gateway, through)].into(),
                inserted,
            }))
        }
    }

    async fn serve(sink: Sink, listener: tokio::net::TcpListener) -> oneshot::Sender<()> {
        serve_router(
            Server::builder().add_service(AuditSinkServer::new(sink)),
            listener,
        )
    }

    fn serve_router(router: Router, listener: tokio::net::TcpListener) -> oneshot::Sender<()> {
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        ));
        stop
    }

    /// The engine's own audit sink over an SQLite store in `dir`: what decides
    /// whether a re-sent seq is a duplicate or a different event.
    async fn engine(
        dir: &std::path::Path,
    ) -> (AuditStore, std::net::SocketAddr, oneshot::Sender<()>) {
        let url = format!("sqlite://{}", dir.join("engine.db").display());
        let audit = AuditStore::open(&url, "city").await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = serve_router(
            Server::builder().add_service(AuditSinkService::new(audit.clone()).server()),
            listener,
        );
        (audit, addr, stop)
    }

    async fn open_journal(dir: &std::path::Path) -> (Db, Journal) {
        let url = format!("sqlite://{}", dir.join("gw.db").display());
        let db = Db::open(&url, "city", Tier::Lgwan).await.unwrap();
        let journal = Journal::start(db.clone(), "lgwan-gateway".into())
            .await
            .unwrap();
        (db, journal)
    }

    fn lazy_channel(addr: std::net::SocketAddr) -> Channel {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    }

    async fn append(journal: &Journal, n: usize) {
        append_users(journal, "u", n).await;
    }

    /// `n` logons of users `{prefix}0`, `{prefix}1`, …
    async fn append_users(journal: &Journal, prefix: &str, n: usize) {
        for i in 0..n {
            let mut b = EventBody::new("", "", "logon", Outcome::Allow);
            b.user = format!("{prefix}{i}");
            journal.append(b).await.unwrap();
        }
    }

    /// Waits until the forwarder has failed `n` times (it retries on its own).
    async fn wait_failures(forwarder: &Forwarder, n: u64) {
        let mut failures = forwarder.failures();
        tokio::time::timeout(Duration::from_secs(20), failures.wait_for(|f| *f >= n))
            .await
            .expect("failed and retried in time")
            .expect("forwarder alive");
    }

    /// Ships `journal` once as the forwarder would, from its recorded position.
    async fn ship_once(db: &Db, journal: &Journal, channel: Channel) -> Result<bool, ForwardError> {
        let (mut shipper, _, _) =
            Shipper::new(db.clone(), journal, channel, ForwardSettings::default());
        shipper.ship_once(&mut None).await
    }

    async fn wait(through: &mut watch::Receiver<u64>, n: u64) {
        tokio::time::timeout(Duration::from_secs(20), through.wait_for(|s| *s >= n))
            .await
            .expect("forwarded in time")
            .expect("forwarder alive");
    }

    #[tokio::test]
    async fn ships_resumes_after_restart_and_waits_out_an_absent_engine() {
        let dir = tempfile::tempdir().unwrap();
        let (db, journal) = open_journal(dir.path()).await;
        append(&journal, 1200).await;

        // The engine is not there yet: the forwarder retries until it is.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let channel = lazy_channel(addr);
        let settings = ForwardSettings {
            batch_size: 100,
            stream_records: 500,
            ..ForwardSettings::default()
        };
        let forwarder = Forwarder::spawn(db.clone(), &journal, channel.clone(), settings);
        wait_failures(&forwarder, 2).await;
        assert_eq!(*forwarder.forwarded_through().borrow(), 0);

        let sink = Sink::default();
        let stop_sink = serve(
            sink.clone(),
            tokio::net::TcpListener::bind(addr).await.unwrap(),
        )
        .await;
        let mut through = forwarder.forwarded_through();
        wait(&mut through, 1200).await;
        {
            let streams = sink.streams.lock().unwrap();
            assert!(
                streams.iter().all(|s| s.len() <= 500),
                "streams are bounded"
            );
            assert_eq!(sink.stored.lock().unwrap().len(), 1200);
        }
        // New events are shipped when they commit.
        append(&journal, 5).await;
        wait(&mut through, 1205).await;
        forwarder.stop().await;
        assert_eq!(
            journal::acked_seq(&db, "lgwan-gateway").await.unwrap(),
            1205
        );

        // A restart resumes from the stored position: nothing is sent twice.
        append(&journal, 10).await;
        let before = sink.streams.lock().unwrap().len();
        let forwarder = Forwarder::spawn(db.clone(), &journal, channel, settings);
        let mut through = forwarder.forwarded_through();
        wait(&mut through, 1215).await;
        let resent: Vec<u64> = sink.streams.lock().unwrap()[before..]
            .iter()
            .flatten()
            .copied()
            .collect();
        assert_eq!(resent, (1206..=1215).collect::<Vec<_>>());
        forwarder.stop().await;
        let _ = stop_sink.send(());
        journal.close().await;
        db.close().await;
    }

    /// The interval paces a steady stream only: a backlog goes stream after stream,
    /// and the first event after a quiet spell leaves at once.
    #[tokio::test]
    async fn a_backlog_and_a_first_event_do_not_wait_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (db, journal) = open_journal(dir.path()).await;
        let sink = Sink::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop_sink = serve(sink.clone(), listener).await;
        let channel = lazy_channel(addr);
        let settings = ForwardSettings {
            batch_size: 100,
            stream_records: 500,
            // Longer than `wait` waits.
            interval: Duration::from_secs(3600),
        };

        // Nothing shipped yet: the first event is not held back.
        let forwarder = Forwarder::spawn(db.clone(), &journal, channel.clone(), settings);
        append(&journal, 1).await;
        let mut through = forwarder.forwarded_through();
        wait(&mut through, 1).await;
        forwarder.stop().await;

        // A restart finds a backlog of three streams and ships them back to back.
        append(&journal, 1200).await;
        let forwarder = Forwarder::spawn(db.clone(), &journal, channel, settings);
        let mut through = forwarder.forwarded_through();
        wait(&mut through, 1201).await;
        assert_eq!(sink.streams.lock().unwrap().len(), 4);
        forwarder.stop().await;
        assert_eq!(
            journal::acked_seq(&db, "lgwan-gateway").await.unwrap(),
            1201
        );
        let _ = stop_sink.send(());
        journal.close().await;
        db.close().await;
    }

    /// Two gateways under one name (the default name is per tier): the engine
    /// refuses the second's events rather than dropping them, and the second's
    /// forwarder keeps them, acknowledges nothing and names the refused seq.
    #[tokio::test]
    async fn a_second_journal_under_the_same_name_is_refused_and_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (audit, addr, stop_engine) = engine(dir.path()).await;
        let channel = lazy_channel(addr);
        let settings = ForwardSettings::default();

        let first_dir = tempfile::tempdir().unwrap();
        let (db_a, a) = open_journal(first_dir.path()).await;
        append(&a, 5).await;
        let forwarder = Forwarder::spawn(db_a.clone(), &a, channel.clone(), settings);
        wait(&mut forwarder.forwarded_through(), 5).await;
        forwarder.stop().await;

        let second_dir = tempfile::tempdir().unwrap();
        let (db_b, b) = open_journal(second_dir.path()).await;
        append_users(&b, "other", 3).await;
        let forwarder = Forwarder::spawn(db_b.clone(), &b, channel.clone(), settings);
        wait_failures(&forwarder, 2).await;
        assert_eq!(*forwarder.forwarded_through().borrow(), 0);
        forwarder.stop().await;
        assert_eq!(journal::acked_seq(&db_b, "lgwan-gateway").await.unwrap(), 0);

        // What it reports: the conflict, by gateway and seq.
        let e = ship_once(&db_b, &b, channel).await.unwrap_err();
        assert!(
            matches!(&e, ForwardError::Conflict { gateway, seq: 1 } if gateway == "lgwan-gateway"),
            "{e}"
        );
        assert!(
            e.to_string().contains("gateway 'lgwan-gateway' seq 1"),
            "{e}"
        );
        assert_eq!(journal::acked_seq(&db_b, "lgwan-gateway").await.unwrap(), 0);

        // The engine holds the first journal, untouched; the second's are all still
        // in its journal.
        assert_eq!(audit.count(&Filter::default()).await.unwrap(), 5);
        for e in journal::read_events(&db_a, "lgwan-gateway").await.unwrap() {
            let held = audit.event("lgwan-gateway", e.body.seq).await.unwrap();
            assert_eq!(held, Some(e));
        }
        assert_eq!(
            journal::read_events(&db_b, "lgwan-gateway")
                .await
                .unwrap()
                .len(),
            3
        );

        let _ = stop_engine.send(());
        for (journal, db) in [(a, db_a), (b, db_b)] {
            journal.close().await;
            db.close().await;
        }
        audit.close().await;
    }

    /// A journal restored from an older copy: the events it still has are the
    /// engine's, but the engine holds more under its name. The forwarder does not
    /// acknowledge past what it delivered (nothing, as this is a failure), and the
    /// first event the copy writes anew is refused by its seq.
    #[tokio::test]
    async fn a_journal_restored_from_an_older_copy_is_not_acknowledged_past_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let (audit, addr, stop_engine) = engine(dir.path()).await;
        let channel = lazy_channel(addr);

        let live_dir = tempfile::tempdir().unwrap();
        let (db, live) = open_journal(live_dir.path()).await;
        append(&live, 3).await;
        live.close().await;
        db.close().await;
        let copy_dir = tempfile::tempdir().unwrap();
        for file in ["gw.db", "gw.db-wal", "gw.db-shm"] {
            let from = live_dir.path().join(file);
            if from.exists() {
                std::fs::copy(&from, copy_dir.path().join(file)).unwrap();
            }
        }
        let (db, live) = open_journal(live_dir.path()).await;
        append(&live, 2).await;
        let forwarder = Forwarder::spawn(
            db.clone(),
            &live,
            channel.clone(),
            ForwardSettings::default(),
        );
        wait(&mut forwarder.forwarded_through(), 5).await;
        forwarder.stop().await;
        live.close().await;
        db.close().await;

        let (db, copy) = open_journal(copy_dir.path()).await;
        let e = ship_once(&db, &copy, channel.clone()).await.unwrap_err();
        assert!(
            matches!(
                &e,
                ForwardError::EngineAhead {
                    engine_through: 5,
                    journal_through: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(journal::acked_seq(&db, "lgwan-gateway").await.unwrap(), 0);

        append_users(&copy, "after-restore", 1).await;
        let forwarder = Forwarder::spawn(
            db.clone(),
            &copy,
            channel.clone(),
            ForwardSettings::default(),
        );
        wait_failures(&forwarder, 2).await;
        assert_eq!(*forwarder.forwarded_through().borrow(), 0);
        forwarder.stop().await;
        let e = ship_once(&db, &copy, channel).await.unwrap_err();
        assert!(matches!(&e, ForwardError::Conflict { seq: 4, .. }), "{e}");
        assert_eq!(journal::acked_seq(&db, "lgwan-gateway").await.unwrap(), 0);
        assert_eq!(audit.count(&Filter::default()).await.unwrap(), 5);

        let _ = stop_engine.send(());
        copy.close().await;
        db.close().await;
        audit.close().await;
    }
}
