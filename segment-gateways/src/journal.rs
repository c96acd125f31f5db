//! The gateway's audit journal: every attempt and every administrative change as a
//! hash-chained event (DESIGN.md §4), stored in the gateway's own database before the
//! caller hears the answer. The journal is also the outbox: [`crate::forward`] ships
//! it to the engine and records how far the engine has it (`gw_outbox`).
//!
//! **One writer.** A single task owns the head of the chain (last seq and hash), so
//! numbering and linking need no locks and cannot race. [`Journal::append`] queues
//! the body with a reply slot and waits.
//!
//! **An answer's state changes ride along.** [`Journal::commit`] queues the
//! [`Effect`]s of an answer (a TOTP step, a session, a failure count) with a function
//! that builds its events once the effects' outcome is known: the writer applies the
//! effects of the whole batch ([`crate::effects`]), then seals the events, in the same
//! transaction. A logon is one commit, shared with every answer that arrived meanwhile.
//!
//! **Group commit.** The writer takes everything queued (up to [`MAX_BATCH`] answers),
//! numbers and seals it after the previous hash, inserts it in one transaction
//! (multi-row INSERTs of up to [`ROWS_PER_INSERT`] rows, far below SQLite's bind
//! limit), commits, and only then answers every waiter of that batch. While one
//! commit waits for the disk the next batch gathers, so the cost of a sync is shared
//! by everything that arrived meanwhile. Throughput therefore grows with the number
//! of concurrent appenders; one appender alone waits for one sync per event.
//!
//! **Failure.** A failed commit answers every waiter of the batch with an error and
//! does not move the in-memory head: it is read again from the database before the
//! next batch, so the chain never has a gap or a fork, even when a commit reported
//! failure after all. Two processes appending under one gateway name would fork the
//! chain; the primary key refuses the second one's rows instead (its callers get
//! errors), so give every gateway replica its own `name`.
//!
//! **Durable means committed.** On PostgreSQL, a commit with the default
//! `synchronous_commit = on`. On SQLite the shared connector sets WAL and leaves
//! `synchronous` at the library default, FULL (sqlx does not override it, the
//! bundled SQLite is built without `SQLITE_DEFAULT_WAL_SYNCHRONOUS`), so every commit
//! syncs the WAL: an answered event survives a killed process and a power loss (on
//! disks that honour fsync). [`Journal::start`] reads the setting and warns when a
//! database runs with less; with NORMAL an answered event still survives a killed
//! process, but the last commits before a power loss may be lost.
//!
//! **Reading.** [`Journals`] reads every journal in a database, across tenants and
//! tiers: what `sekisho audit` opens on a gateway's database file ([`Journals::open`]).
//! The free functions ([`read`], [`gateways`], [`read_events`], [`verify`]) read the
//! tenant and tier a [`Db`] is bound to: what the running gateway uses.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sekisho_policy_engine::audit::event::EventBody;
use sekisho_policy_engine::audit::{
    format_ts, parse_ts, AuditEvent, BrokenLink, ChainState, GENESIS_HASH,
};
use sekisho_policy_engine::store::{self, Backend, Held, StoreError};
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use crate::db::{db_err, now_ms, Db, GATEWAY};
use crate::effects::{self, Applied, Effect, Scope};

/// Most events sealed and committed in one transaction.
pub const MAX_BATCH: usize = 2048;
/// Most rows per INSERT statement: 7 binds each, 1,792 in all, under any SQLite's
/// limit. A batch is inserted in power-of-two chunks up to this, so a handful of
/// statements, each prepared once per connection, serve every batch size.
pub const ROWS_PER_INSERT: usize = 256;
/// Appends waiting for the writer before `append` itself waits (back-pressure).
const QUEUE: usize = 8192;

/// How long the checkpointer lets commits gather before copying them from the WAL
/// into the database file: a page changed by many commits in that time is copied
/// once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL pages at which the writer's own commit checkpoints after all, should the
/// checkpointer fall behind (SQLite's default is 1,000, about 4 MiB): a backstop
/// against a WAL that only grows.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Rows per query when a journal is read through.
const PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the audit journal is closed")]
    Closed,
    #[error("the audit journal could not commit; the event was not recorded: {message}")]
    Write { message: String },
    #[error("invalid gateway name '{name}' for the audit journal: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("no journal database at '{path}'")]
    NoFile { path: String },
    #[error("journal of gateway '{gateway}', seq {seq}: unreadable row: {why}")]
    Corrupt {
        gateway: String,
        seq: u64,
        why: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which journal: its rows are keyed by these three (plus seq).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JournalId {
    pub tenant: String,
    pub tier: String,
    pub gateway: String,
}

impl JournalId {
    fn of(db: &Db, gateway: &str) -> JournalId {
        JournalId {
            tenant: db.tenant().to_string(),
            tier: db.tier().name().to_string(),
            gateway: gateway.to_string(),
        }
    }
}

impl std::fmt::Display for JournalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.tier, self.gateway)
    }
}

/// Where an appended event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReceipt {
    pub seq: u64,
    pub hash: String,
}

/// Counters since [`Journal::start`], for benchmarks and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub events: u64,
    pub batches: u64,
    pub failed_batches: u64,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
}

/// Builds an answer's events once the outcome of its effects is known.
pub type EventsFor = Box<dyn FnOnce(&Applied) -> Vec<EventBody> + Send>;

/// What [`Journal::commit`] made durable.
#[derive(Debug, Clone)]
pub struct Committed {
    pub applied: Applied,
    /// One per event, in order.
    pub receipts: Vec<AppendReceipt>,
}

/// One answer: its effects and its events.
struct Unit {
    effects: Vec<Effect>,
    events: EventsFor,
}

type Reply = oneshot::Sender<Result<Committed, JournalError>>;
type AckReply = oneshot::Sender<Result<(), JournalError>>;

enum Msg {
    Append(Unit, Reply),
    /// Pause after committing what is queued, and lend out the head until the
    /// [`Exclusive`] sent back is dropped.
    Pause(oneshot::Sender<Result<Exclusive, JournalError>>),
    /// The engine stores the journal through this seq (`gw_outbox.acked_seq`).
    Acked(u64, AckReply),
    Flush(oneshot::Sender<()>),
    Close,
}

/// The append side of one gateway's journal. Cheap to clone; every clone feeds the
/// same writer.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
    id: Arc<JournalId>,
    committed: watch::Receiver<u64>,
    /// Checkpoints the [`checkpointer`] has made (SQLite; stays 0 elsewhere).
    checkpointed: watch::Receiver<u64>,
    counters: Arc<Counters>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn check_name(name: &str) -> Result<(), JournalError> {
    let why = if name.is_empty() {
        "empty"
    } else if name.len() > 256 {
        "longer than 256 bytes"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else if name.trim() != name {
        "has leading or trailing white space"
    } else {
        return Ok(());
    };
    Err(JournalError::InvalidName {
        name: name.to_string(),
        why,
    })
}

impl Journal {
    /// Loads the head of `gateway`'s chain in `db`'s tenant and tier and starts its
    /// writer.
    pub async fn start(db: Db, gateway: String) -> Result<Journal, JournalError> {
        check_name(&gateway)?;
        let id = JournalId::of(&db, &gateway);
        if let Some(level) = sqlite_synchronous(&db).await? {
            if level < 2 {
                tracing::warn!(
                    synchronous = level,
                    "SQLite runs with synchronous below FULL: journaled events survive a killed process but the last ones may be lost on power failure"
                );
            }
        }
        let head = load_head(&db.pool, &id).await?;
        tracing::info!(journal = %id, seq = head.seq, "audit journal open");
        let (committed_tx, committed) = watch::channel(head.seq);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            insert_sql: (0..=ROWS_PER_INSERT.ilog2())
                .map(|k| insert_sql(db.backend, 1 << k))
                .collect(),
            conn: Held::new(db.pool.clone(), 1),
            conn_configured: false,
            pool: db.pool.clone(),
            backend: db.backend,
            id: id.clone(),
            head: Some(head),
            committed: committed_tx,
            counters: counters.clone(),
        };
        let (checkpoints, checkpointed) = watch::channel(0);
        if db.backend == Backend::Sqlite {
            tokio::spawn(checkpointer(
                db.pool.clone(),
                committed.clone(),
                checkpoints,
                id.clone(),
            ));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer.run(rx));
        Ok(Journal {
            tx,
            id: Arc::new(id),
            committed,
            checkpointed,
            counters,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Appends `body` and returns once it is committed. The journal sets `seq`,
    /// `gateway` and `tier` (they are its own), and `ts` when it is empty or not
    /// RFC 3339.
    pub async fn append(&self, body: EventBody) -> Result<AppendReceipt, JournalError> {
        let committed = self
            .commit(Vec::new(), Box::new(move |_| vec![body]))
            .await?;
        committed
            .receipts
            .into_iter()
            .next()
            .ok_or(JournalError::Closed)
    }

    /// Applies `effects` and appends the events `events` builds from their outcome,
    /// in one transaction; returns once it is committed. Nothing of it is kept when
    /// the commit fails.
    pub async fn commit(
        &self,
        effects: Vec<Effect>,
        events: EventsFor,
    ) -> Result<Committed, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Append(Unit { effects, events }, reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Records that the engine stores this journal through `seq`, in the writer's
    /// next commit. Written beside the writer, this row took SQLite's write lock
    /// between two batches, and whichever of the two came second slept in SQLite's
    /// busy handler (1 ms, then 2, 5, …) instead of waiting its turn: a logon's
    /// commit paid for the forwarder's bookkeeping. Returns once it is committed.
    pub async fn record_acked(&self, seq: u64) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Acked(seq, reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Pauses the writer and lends its head out, for a change that must commit in
    /// one transaction with its own events (an administrator's enrolment, a device
    /// registration): written first and journaled after, a failed journal write
    /// left the change standing with no event, and journaled first, a failed
    /// change left an event for nothing. Logons queue while it is held, so hold it
    /// for the writes alone; an append through this journal while it is held
    /// would wait for itself.
    pub async fn exclusive(&self) -> Result<Exclusive, JournalError> {
        let (lend, lent) = oneshot::channel();
        self.tx
            .send(Msg::Pause(lend))
            .await
            .map_err(|_| JournalError::Closed)?;
        lent.await.map_err(|_| JournalError::Closed)?
    }

    /// Returns once everything appended before the call has been committed (or
    /// refused).
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Flush(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)
    }

    /// Stops accepting appends, commits what is queued and ends the writer. Appends
    /// after this fail with [`JournalError::Closed`]. Idempotent.
    pub async fn close(&self) {
        let _ = self.tx.send(Msg::Close).await;
        let task = self.task.lock().await.take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(journal = %self.id, error = %e, "audit journal writer ended abnormally");
            }
        }
    }

    pub fn gateway(&self) -> &str {
        &self.id.gateway
    }

    pub fn id(&self) -> &JournalId {
        &self.id
    }

    /// The last committed seq, updated after every commit: what the forwarder waits on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// How many WAL checkpoints have been made beside the writer (SQLite).
    pub fn checkpoints(&self) -> watch::Receiver<u64> {
        self.checkpointed.clone()
    }

    pub fn stats(&self) -> JournalStats {
        JournalStats {
            events: self.counters.events.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            failed_batches: self.counters.failed_batches.load(Ordering::Relaxed),
        }
    }
}

/// SQLite's `synchronous` level of one pooled connection (every connection comes
/// from the same connector), `None` on PostgreSQL.
pub(crate) async fn sqlite_synchronous(db: &Db) -> Result<Option<i64>, JournalError> {
    if db.backend != Backend::Sqlite {
        return Ok(None);
    }
    let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&db.pool)
        .await
        .map_err(db_err("reading PRAGMA synchronous"))?;
    Ok(Some(level))
}

#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    hash: String,
}

async fn load_head(pool: &AnyPool, id: &JournalId) -> Result<Head, JournalError> {
    let row = sqlx::query(
        "SELECT seq, hash FROM gw_journal WHERE tenant = $1 AND tier = $2 AND gateway = $3
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(id.tenant.as_str())
    .bind(id.tier.as_str())
    .bind(id.gateway.as_str())
    .fetch_optional(pool)
    .await
    .map_err(db_err("reading the head of the audit journal"))?;
    let Some(row) = row else {
        return Ok(Head {
            seq: 0,
            hash: GENESIS_HASH.into(),
        });
    };
    let seq = get_seq(&row, id)?;
    let hash: String = row.try_get(1).map_err(|e| JournalError::Corrupt {
        gateway: id.gateway.clone(),
        seq,
        why: format!("hash: {e}"),
    })?;
    Ok(Head { seq, hash })
}

fn get_seq(row: &sqlx::any::AnyRow, id: &JournalId) -> Result<u64, JournalError> {
    let seq: i64 = row.try_get(0).map_err(|e| JournalError::Corrupt {
        gateway: id.gateway.clone(),
        seq: 0,
        why: format!("seq: {e}"),
    })?;
    u64::try_from(seq).map_err(|_| JournalError::Corrupt {
        gateway: id.gateway.clone(),
        seq: 0,
        why: format!("negative seq {seq}"),
    })
}

/// Stores the forwarder's position inside the writer's transaction.
async fn store_acked(conn: &mut AnyConnection, id: &JournalId, seq: u64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO gw_outbox (tenant, tier, gateway, acked_seq, updated_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, tier, gateway) DO UPDATE SET acked_seq = excluded.acked_seq, updated_at = excluded.updated_at",
    )
    .bind(id.tenant.as_str())
    .bind(id.tier.as_str())
    .bind(id.gateway.as_str())
    // A seq of this journal's own, which was stored as an i64.
    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
    .bind(now_ms())
    .execute(conn)
    .await
    .map_err(db_err("recording the audit outbox position"))?;
    Ok(())
}

fn insert_sql(backend: Backend, rows: usize) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(80 + rows * 40);
    sql.push_str("INSERT INTO gw_journal (tenant, tier, gateway, seq, ts_ms, event, hash) VALUES ");
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..7 {
            if c > 0 {
                sql.push(',');
            }
            n += 1;
            // SQLite looks numbered parameters up linearly (see the engine's store):
            // anonymous ones keep a long statement cheap. Writing to a String cannot fail.
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    let _ = write!(sql, "${n}");
                }
            }
        }
        sql.push(')');
    }
    sql
}

struct NewRow {
    seq: u64,
    ts_ms: i64,
    json: String,
    hash: String,
}

struct Writer {
    pool: AnyPool,
    backend: Backend,
    id: JournalId,
    /// `None` after a failed commit until it has been read again.
    head: Option<Head>,
    committed: watch::Sender<u64>,
    counters: Arc<Counters>,
    /// INSERTs of 1, 2, 4, … [`ROWS_PER_INSERT`] rows.
    insert_sql: Vec<String>,
    /// The writer's own connection, kept between batches. Taken from the pool for
    /// each batch, connections took turns, and on SQLite every turn started with an
    /// empty page cache (a WAL reader drops its cache whenever another connection
    /// has committed), so each batch read its B-tree pages again. Kept out of the
    /// pool, so closing the pool never waits on it; closed when the writer stops, and
    /// replaced after a failed batch (the connection may be what failed).
    conn: Held,
    /// Whether `conn` has been told to leave checkpoints to the [`checkpointer`]
    /// (SQLite); a replaced connection is told again.
    conn_configured: bool,
}

/// Copies committed pages from SQLite's WAL into the database file, beside the
/// writer rather than inside one of its commits. SQLite checkpoints in the commit
/// that takes the WAL past 1,000 pages: under load a few commits a second also
/// copied up to 4 MiB and synced the database file while every logon in that batch,
/// and those queued behind it, waited (BENCHMARKS.md, "Where a logon's CPU goes
/// now"). A PASSIVE checkpoint waits for no reader or writer. Runs after commits,
/// at most every [`CHECKPOINT_EVERY`], and ends with the writer.
async fn checkpointer(
    pool: AnyPool,
    mut committed: watch::Receiver<u64>,
    done: watch::Sender<u64>,
    id: JournalId,
) {
    let mut failing = false;
    // Ends when the writer (the sender) is gone.
    while committed.changed().await.is_ok() {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if pool.is_closed() {
            break;
        }
        // PASSIVE: as much of the WAL as no reader still needs.
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            Ok(_) => {
                done.send_modify(|n| *n += 1);
                if std::mem::take(&mut failing) {
                    tracing::info!(journal = %id, "WAL checkpoints succeed again");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(journal = %id, error = %e, "WAL checkpoint failed; the writer checkpoints itself once the WAL reaches {WRITER_AUTOCHECKPOINT_PAGES} pages (logged again when this changes)");
                }
            }
        }
    }
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<(Unit, Reply)> = Vec::new();
        let mut acks: Vec<(u64, AckReply)> = Vec::new();
        let mut flushes = Vec::new();
        loop {
            let Some(first) = rx.recv().await else {
                break;
            };
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    Msg::Append(unit, reply) => batch.push((unit, reply)),
                    Msg::Pause(lend) => {
                        if !batch.is_empty() || !acks.is_empty() {
                            self.write(std::mem::take(&mut batch), std::mem::take(&mut acks))
                                .await;
                        }
                        self.lend(lend).await;
                    }
                    Msg::Acked(seq, reply) => acks.push((seq, reply)),
                    Msg::Flush(reply) => flushes.push(reply),
                    // New sends fail from now on; what is queued is still received.
                    Msg::Close => rx.close(),
                }
                next = if batch.len() < MAX_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() || !acks.is_empty() {
                self.write(std::mem::take(&mut batch), std::mem::take(&mut acks))
                    .await;
            }
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
        }
        self.conn.close().await;
        tracing::debug!(journal = %self.id, "audit journal writer stopped");
    }

    async fn write(&mut self, batch: Vec<(Unit, Reply)>, acks: Vec<(u64, AckReply)>) {
        let head = match self.head.take() {
            Some(h) => h,
            None => match load_head(&self.pool, &self.id).await {
                Ok(h) => h,
                Err(e) => {
                    self.fail(batch.into_iter().map(|(_, r)| r), acks, &e.to_string());
                    return;
                }
            },
        };
        let (units, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        // The forwarder waits for each answer, so there is one at most; the last
        // stands (the engine may report less than before after a restore).
        let acked = acks.last().map(|(seq, _)| *seq);
        match self.transact(&head, units, acked).await {
            Ok((done, last)) => {
                let events: usize = done.iter().map(|c| c.receipts.len()).sum();
                self.head = Some(last.clone());
                self.counters
                    .events
                    .fetch_add(events as u64, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.committed.send_replace(last.seq);
                for (reply, committed) in replies.into_iter().zip(done) {
                    let _ = reply.send(Ok(committed));
                }
                for (_, reply) in acks {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(journal = %self.id, answers = replies.len(), error = %e, "audit journal commit failed; the events of this batch were refused");
                self.fail(replies, acks, &e.to_string());
                // The connection was closed with the failed batch; its successor
                // needs telling again.
                self.conn_configured = false;
                // The head is whatever the database holds now: unchanged, or the
                // batch after all if only the report of its commit failed.
                match load_head(&self.pool, &self.id).await {
                    Ok(h) => {
                        if h.seq != head.seq {
                            tracing::warn!(journal = %self.id, seq = h.seq, "a batch reported as failed was committed");
                            self.committed.send_replace(h.seq);
                        }
                        self.head = Some(h);
                    }
                    Err(_) => self.head = None,
                }
            }
        }
    }

    fn fail(
        &self,
        replies: impl IntoIterator<Item = Reply>,
        acks: Vec<(u64, AckReply)>,
        message: &str,
    ) {
        self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
        let error = || JournalError::Write {
            message: message.to_string(),
        };
        for reply in replies {
            let _ = reply.send(Err(error()));
        }
        for (_, reply) in acks {
            let _ = reply.send(Err(error()));
        }
    }

    /// One transaction: the batch's effects, then its events sealed after `head`,
    /// and the forwarder's position when it moved. Returns what each answer
    /// committed and the new head.
    async fn transact(
        &mut self,
        head: &Head,
        units: Vec<Unit>,
        acked: Option<u64>,
    ) -> Result<(Vec<Committed>, Head), StoreError> {
        // Dropped on an error below, the connection is closed, not kept.
        let mut conn = self
            .conn
            .get()
            .await
            .map_err(db_err("connecting for an audit journal write"))?;
        if self.backend == Backend::Sqlite && !self.conn_configured {
            sqlx::query(&format!(
                "PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}"
            ))
            .execute(&mut *conn)
            .await
            .map_err(db_err("configuring the audit journal's connection"))?;
            self.conn_configured = true;
        }
        let mut tx = conn
            .begin_with(self.backend.begin_write())
            .await
            .map_err(db_err("starting an audit journal write"))?;
        let now = now_ms();
        let scope = Scope {
            tenant: &self.id.tenant,
            tier: &self.id.tier,
        };
        let all_effects: Vec<&[Effect]> = units.iter().map(|u| u.effects.as_slice()).collect();
        let applied = effects::apply(&mut tx, &scope, &all_effects, now).await?;

        let mut chain = Chain::after(head, &self.id, now);
        let done: Vec<Committed> = units
            .into_iter()
            .zip(applied)
            .map(|(unit, applied)| Committed {
                receipts: chain.seal((unit.events)(&applied)),
                applied,
            })
            .collect();
        chain.insert(&mut tx, &self.insert_sql, &self.id).await?;
        if let Some(seq) = acked {
            store_acked(&mut tx, &self.id, seq).await?;
        }
        tx.commit()
            .await
            .map_err(db_err("committing the audit journal"))?;
        conn.keep();
        Ok((done, chain.head))
    }

    /// Lends the head out through `lend` and waits until the [`Exclusive`] is
    /// dropped; then reads the head again, since whether the borrower committed
    /// is its own business.
    async fn lend(&mut self, lend: oneshot::Sender<Result<Exclusive, JournalError>>) {
        let head = match self.head.take() {
            Some(h) => h,
            None => match load_head(&self.pool, &self.id).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(journal = %self.id, error = %e, "audit journal head unreadable; an exclusive change was refused");
                    let _ = lend.send(Err(e));
                    return;
                }
            },
        };
        let (resume, resumed) = oneshot::channel();
        let exclusive = Exclusive {
            id: self.id.clone(),
            head: head.clone(),
            insert_sql: self.insert_sql.clone(),
            _resume: resume,
        };
        if lend.send(Ok(exclusive)).is_ok() {
            let _ = resumed.await;
        }
        match load_head(&self.pool, &self.id).await {
            Ok(h) => {
                if h.seq != head.seq {
                    self.counters
                        .events
                        .fetch_add(h.seq.saturating_sub(head.seq), Ordering::Relaxed);
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.committed.send_replace(h.seq);
                }
                self.head = Some(h);
            }
            Err(_) => self.head = None,
        }
    }
}

/// Events sealed one after another from a head, waiting to be inserted.
struct Chain {
    head: Head,
    rows: Vec<NewRow>,
    gateway: String,
    tier: String,
    now_ms: i64,
}

impl Chain {
    fn after(head: &Head, id: &JournalId, now_ms: i64) -> Chain {
        Chain {
            head: head.clone(),
            rows: Vec::new(),
            gateway: id.gateway.clone(),
            tier: id.tier.clone(),
            now_ms,
        }
    }

    /// Numbers and seals `bodies` after the events sealed so far. The journal sets
    /// `seq`, `gateway` and `tier`, and `ts` when it is not RFC 3339.
    fn seal(&mut self, bodies: Vec<EventBody>) -> Vec<AppendReceipt> {
        let mut receipts = Vec::with_capacity(bodies.len());
        for mut body in bodies {
            let seq = self.head.seq + 1;
            body.seq = seq;
            body.gateway.clone_from(&self.gateway);
            body.tier.clone_from(&self.tier);
            let ts_ms = match parse_ts(&body.ts) {
                Some(t) => t,
                None => {
                    body.ts = format_ts(self.now_ms);
                    self.now_ms
                }
            };
            let event = body.seal(&self.head.hash);
            self.head = Head {
                seq,
                hash: event.hash.clone(),
            };
            receipts.push(AppendReceipt {
                seq,
                hash: event.hash.clone(),
            });
            self.rows.push(NewRow {
                seq,
                ts_ms,
                json: event.to_json(),
                hash: event.hash,
            });
        }
        receipts
    }

    /// Inserts the sealed rows in the caller's transaction.
    async fn insert(
        &mut self,
        conn: &mut AnyConnection,
        insert_sql: &[String],
        id: &JournalId,
    ) -> Result<(), StoreError> {
        for chunk in sekisho_policy_engine::store::pow2_chunks(&self.rows, ROWS_PER_INSERT) {
            let mut q = sqlx::query(&insert_sql[chunk.len().ilog2() as usize]);
            for r in chunk {
                q = q
                    .bind(id.tenant.as_str())
                    .bind(id.tier.as_str())
                    .bind(id.gateway.as_str())
                    // Past i64::MAX (never) the clamped seq collides and the batch fails.
                    .bind(i64::try_from(r.seq).unwrap_or(i64::MAX))
                    .bind(r.ts_ms)
                    .bind(r.json.as_str())
                    .bind(r.hash.as_str());
            }
            q.execute(&mut *conn)
                .await
                .map_err(db_err("appending to the audit journal"))?;
        }
        self.rows.clear();
        Ok(())
    }
}

/// The journal's writer, paused, and its head: see [`Journal::exclusive`]. The
/// writer resumes when this is dropped.
pub struct Exclusive {
    id: JournalId,
    head: Head,
    insert_sql: Vec<String>,
    _resume: oneshot::Sender<()>,
}

impl Exclusive {
    /// Appends `bodies` in the caller's transaction `conn`. They are journaled if,
    /// and only if, that transaction commits; the returned receipts say so only
    /// then.
    pub async fn append(
        &mut self,
        conn: &mut AnyConnection,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<AppendReceipt>, StoreError> {
        let mut chain = Chain::after(&self.head, &self.id, now_ms());
        let receipts = chain.seal(bodies);
        chain.insert(conn, &self.insert_sql, &self.id).await?;
        self.head = chain.head;
        Ok(receipts)
    }
}

// ---------------------------------------------------------------------------------
// Reading

/// How a journal in the database checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub journal: JournalId,
    /// Events that verified, from seq 1, before the first broken link.
    pub checked: u64,
    /// The hash of the last verified event (the genesis hash when none).
    pub head_hash: String,
    /// The first link that does not hold, if any.
    pub broken: Option<BrokenLink>,
}

/// Read access to every journal in one database, whatever its tenant and tier.
#[derive(Clone)]
pub struct Journals {
    pool: AnyPool,
}

impl std::fmt::Debug for Journals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journals").finish_non_exhaustive()
    }
}

impl Journals {
    /// Opens a gateway's database: a SQLite file path, a `sqlite://` URL or a
    /// `postgres://` URL. A SQLite file must exist (a mistyped path is an error, not
    /// a new empty journal). Opening brings the gateway schema up to date, like a
    /// gateway start would; nothing else is written.
    pub async fn open(url_or_path: &str) -> Result<Journals, JournalError> {
        let url =
            if url_or_path.starts_with("postgres://") || url_or_path.starts_with("postgresql://") {
                url_or_path.to_string()
            } else {
                let (path, url) = match url_or_path.strip_prefix("sqlite://") {
                    Some(rest) => (
                        rest.split('?').next().unwrap_or(rest).to_string(),
                        url_or_path.to_string(),
                    ),
                    None => (
                        url_or_path.to_string(),
                        format!("sqlite://{}", encode_path(url_or_path)),
                    ),
                };
                if !Path::new(&path).is_file() {
                    return Err(JournalError::NoFile { path });
                }
                url
            };
        let (pool, _) = store::connect(&url, &GATEWAY).await?;
        Ok(Journals { pool })
    }

    /// The journals of the database a gateway runs on.
    pub fn of(db: &Db) -> Journals {
        Journals {
            pool: db.pool.clone(),
        }
    }

    /// Every journal in the database, ordered by tenant, tier and gateway.
    pub async fn list(&self) -> Result<Vec<JournalId>, JournalError> {
        let rows = sqlx::query(
            // A journal whose rows were all deleted is still named by the position
            // the engine confirmed, so that verifying it reports them missing.
            "SELECT tenant, tier, gateway FROM gw_journal
             UNION SELECT tenant, tier, gateway FROM gw_outbox WHERE acked_seq > 0
             ORDER BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("listing audit journals"))?;
        rows.iter()
            .map(|r| {
                let get = |i| {
                    r.try_get::<String, _>(i)
                        .map_err(db_err("listing audit journals"))
                };
                Ok(JournalId {
                    tenant: get(0)?,
                    tier: get(1)?,
                    gateway: get(2)?,
                })
            })
            .collect()
    }

    /// Up to `limit` events after `after_seq`, in seq order: `(seq, JSON line)`,
    /// the line exactly as it was hashed.
    pub async fn read(
        &self,
        id: &JournalId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, JournalError> {
        Ok(self
            .rows(id, after_seq, limit)
            .await?
            .into_iter()
            .map(|r| (r.seq, r.json))
            .collect())
    }

    /// Like [`Journals::read`], parsed. A row that is not an audit event is an error
    /// naming its seq ([`Journals::verify`] reports it as a broken link instead).
    pub async fn events(
        &self,
        id: &JournalId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, JournalError> {
        self.rows(id, after_seq, limit)
            .await?
            .into_iter()
            .map(|r| {
                AuditEvent::from_json(&r.json).map_err(|e| JournalError::Corrupt {
                    gateway: id.gateway.clone(),
                    seq: r.seq,
                    why: e.to_string(),
                })
            })
            .collect()
    }

    /// Every event of one journal, parsed.
    pub async fn all_events(&self, id: &JournalId) -> Result<Vec<AuditEvent>, JournalError> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map_or(0, |e: &AuditEvent| e.body.seq);
            let page = self.events(id, after, PAGE).await?;
            let done = page.len() < PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// How far the engine has confirmed this journal (0 when never).
    pub async fn acked_seq(&self, id: &JournalId) -> Result<u64, JournalError> {
        let acked: Option<i64> = sqlx::query_scalar(
            "SELECT acked_seq FROM gw_outbox WHERE tenant = $1 AND tier = $2 AND gateway = $3",
        )
        .bind(id.tenant.as_str())
        .bind(id.tier.as_str())
        .bind(id.gateway.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("reading the audit outbox"))?;
        Ok(acked.map_or(0, i64::unsigned_abs))
    }

    /// Checks one journal link by link from seq 1, reading it page by page: each
    /// stored line must parse, sit at its own seq, link to the previous hash and
    /// hash to what it says. A journal that ends before the seq the engine confirmed
    /// (`gw_outbox`) lost its tail, which the chain alone cannot show.
    pub async fn verify(&self, id: &JournalId) -> Result<Verification, JournalError> {
        // Read first: on a running gateway, events committed and confirmed while the
        // chain is walked would otherwise look like events deleted from its end.
        let acked = self.acked_seq(id).await?;
        let mut state = ChainState::start(&id.gateway);
        let broken = 'check: loop {
            let page = self.rows(id, state.seq, PAGE).await?;
            let done = page.len() < PAGE;
            for row in page {
                if let Err(b) = check_row(&mut state, &row) {
                    break 'check Some(b);
                }
            }
            if done {
                break None;
            }
        };
        let broken = match broken {
            Some(b) => Some(b),
            None => (acked > state.seq).then(|| BrokenLink {
                    gateway: id.gateway.clone(),
                    seq: state.seq + 1,
                    why: format!(
                        "missing: the policy engine confirmed events through seq {acked}, the journal ends at seq {} (deleted events?)",
                        state.seq
                    ),
                }),
        };
        Ok(Verification {
            journal: id.clone(),
            checked: state.seq,
            head_hash: state.hash,
            broken,
        })
    }

    /// [`Journals::verify`] for every journal in the database.
    pub async fn verify_all(&self) -> Result<Vec<Verification>, JournalError> {
        let mut out = Vec::new();
        for id in self.list().await? {
            out.push(self.verify(&id).await?);
        }
        Ok(out)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn rows(
        &self,
        id: &JournalId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRow>, JournalError> {
        let rows = sqlx::query(
            "SELECT seq, event, hash FROM gw_journal
             WHERE tenant = $1 AND tier = $2 AND gateway = $3 AND seq > $4
             ORDER BY seq LIMIT $5",
        )
        .bind(id.tenant.as_str())
        .bind(id.tier.as_str())
        .bind(id.gateway.as_str())
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("reading the audit journal"))?;
        rows.iter()
            .map(|r| {
                let seq = get_seq(r, id)?;
                let text = |i: usize, column: &str| {
                    r.try_get::<String, _>(i)
                        .map_err(|e| JournalError::Corrupt {
                            gateway: id.gateway.clone(),
                            seq,
                            why: format!("{column}: {e}"),
                        })
                };
                Ok(StoredRow {
                    seq,
                    json: text(1, "event")?,
                    hash: text(2, "hash")?,
                })
            })
            .collect()
    }
}

struct StoredRow {
    seq: u64,
    json: String,
    hash: String,
}

fn check_row(state: &mut ChainState, row: &StoredRow) -> Result<(), BrokenLink> {
    let expected = state.seq + 1;
    let gateway = state.gateway.clone();
    let broken = |why: String| BrokenLink {
        gateway: gateway.clone(),
        seq: expected,
        why,
    };
    if row.seq != expected {
        return Err(broken(format!(
            "missing: the next stored event is seq {} (deleted events?)",
            row.seq
        )));
    }
    let event = AuditEvent::from_json(&row.json).map_err(|e| broken(e.to_string()))?;
    state.check_next(&event)?;
    if row.hash != event.hash {
        return Err(broken(
            "the row's hash column differs from the event's hash (altered?)".into(),
        ));
    }
    Ok(())
}

/// A bare path as the connector's URL expects it (it percent-decodes the path).
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

// The same, for the tenant and tier a running gateway's `Db` is bound to.

/// Up to `limit` `(seq, JSON line)` of `gateway`'s journal after `after_seq`.
pub async fn read(
    db: &Db,
    gateway: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, String)>, JournalError> {
    Journals::of(db)
        .read(&JournalId::of(db, gateway), after_seq, limit)
        .await
}

/// The gateways with a journal in `db`'s tenant and tier.
pub async fn gateways(db: &Db) -> Result<Vec<String>, JournalError> {
    Ok(Journals::of(db)
        .list()
        .await?
        .into_iter()
        .filter(|j| j.tenant == db.tenant() && j.tier == db.tier().name())
        .map(|j| j.gateway)
        .collect())
}

/// Every event of `gateway`'s journal, parsed.
pub async fn read_events(db: &Db, gateway: &str) -> Result<Vec<AuditEvent>, JournalError> {
    Journals::of(db)
        .all_events(&JournalId::of(db, gateway))
        .await
}

/// Verifies `gateway`'s journal in `db`'s tenant and tier.
pub async fn verify(db: &Db, gateway: &str) -> Result<Verification, JournalError> {
    Journals::of(db).verify(&JournalId::of(db, gateway)).await
}

/// How far the engine has confirmed `gateway`'s journal.
pub async fn acked_seq(db: &Db, gateway: &str) -> Result<u64, JournalError> {
    Journals::of(db)
        .acked_seq(&JournalId::of(db, gateway))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sekisho_policy_engine::audit::Outcome;
    use sekisho_policy_engine::Tier;

    use crate::db::testing::targets;

    const GW: &str = "lgwan-gateway";

    fn body(user: &str) -> EventBody {
        let mut b = EventBody::new("ignored", "ignored", "logon", Outcome::Allow);
        b.device = "lg-desk-01".into();
        b.user = user.into();
        b.operator = user.into();
        b.factors = vec!["card".into(), "password".into()];
        b
    }

    async fn append_concurrently(journal: &Journal, tasks: usize, each: usize) {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let j = journal.clone();
            handles.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..each {
                    seqs.push(
                        j.append(body(&format!("u{t}-{i}")))
                            .await
                            .expect("append")
                            .seq,
                    );
                }
                seqs
            }));
        }
        for h in handles {
            let seqs = h.await.expect("task");
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "one task's seqs ascend"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_numbered_without_gaps_and_verify() {
        for t in targets("journal-concurrent") {
            let db = t.db().await;
            let journal = Journal::start(db.clone(), GW.into()).await.unwrap();
            // More appenders than one INSERT takes: batches span several statements.
            append_concurrently(&journal, 400, 3).await;
            let stats = journal.stats();
            assert_eq!(stats.events, 1200);
            assert!(stats.batches < 1200, "appends were grouped: {stats:?}");
            assert_eq!(*journal.subscribe().borrow(), 1200);
            journal.close().await;

            let events = read_events(&db, GW).await.unwrap();
            let seqs: Vec<u64> = events.iter().map(|e| e.body.seq).collect();
            assert_eq!(seqs, (1..=1200).collect::<Vec<_>>(), "{}", t.url);
            assert!(events
                .iter()
                .all(|e| e.body.gateway == GW && e.body.tier == "lgwan"));
            assert!(events.iter().all(|e| parse_ts(&e.body.ts).is_some()));
            let v = verify(&db, GW).await.unwrap();
            assert_eq!((v.checked, v.broken), (1200, None), "{}", t.url);
            assert_eq!(v.head_hash, events[1199].hash);
            assert_eq!(gateways(&db).await.unwrap(), vec![GW.to_string()]);
            let rows = read(&db, GW, 1198, 10).await.unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0].0, 1199);
            assert_eq!(
                rows[0].1,
                events[1198].to_json(),
                "the stored line is the hashed line"
            );
            db.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_beside_the_writer() {
        let t = targets("journal-checkpoint").remove(0);
        let file = t.url.trim_start_matches("sqlite://").to_string();
        let db = t.db().await;
        let journal = Journal::start(db.clone(), GW.into()).await.unwrap();
        let size = || std::fs::metadata(&file).expect("database file").len();
        let initial = size();
        append_concurrently(&journal, 50, 20).await;
        journal.flush().await.unwrap();
        let mut checkpoints = journal.checkpoints();
        tokio::time::timeout(Duration::from_secs(30), checkpoints.wait_for(|n| *n >= 1))
            .await
            .expect("a checkpoint within 30 s of the commits")
            .expect("the checkpointer is running");
        assert!(
            size() > initial,
            "committed pages reached the database file ({} bytes, {initial} before)",
            size()
        );
        let v = verify(&db, GW).await.unwrap();
        assert_eq!((v.checked, v.broken), (1000, None));
        journal.close().await;
        db.close().await;
    }

    #[tokio::test]
    async fn a_restart_continues_the_chain() {
        for t in targets("journal-restart") {
            let db = t.db().await;
            let journal = Journal::start(db.clone(), GW.into()).await.unwrap();
            for i in 0..3 {
                journal.append(body(&format!("a{i}"))).await.unwrap();
            }
            // Dropped without close: the writer ends when the last sender goes.
            drop(journal);
            db.close().await;

            let db = t.db().await;
            let journal = Journal::start(db.clone(), GW.into()).await.unwrap();
            let r = journal.append(body("b")).await.unwrap();
            assert_eq!(r.seq, 4);
            let other = Journal::start(db.clone(), "other-gateway".into())
                .await
                .unwrap();
            assert_eq!(
                other.append(body("c")).await.unwrap().seq,
                1,
                "one chain per gateway"
            );
            journal.close().await;
            other.close().await;
            let v = verify(&db, GW).await.unwrap();
            assert_eq!((v.checked, v.broken), (4, None));
            assert_eq!(v.head_hash, r.hash);
            let mut names = gateways(&db).await.unwrap();
            names.sort();
            assert_eq!(names, vec![GW.to_string(), "other-gateway".to_string()]);
            db.close().await;
        }
    }

    async fn exec(db: &Db, sql: &str, seq: i64) {
        sqlx::query(sql)
            .bind(db.tenant())
            .bind(seq)
            .execute(&db.pool)
            .await
            .expect("tamper");
    }

    #[tokio::test]
    async fn tampered_and_deleted_rows_are_named() {
        for t in targets("journal-tamper") {
            let db = t.db().await;
            let journal = Journal::start(db.clone(), GW.into()).await.unwrap();
            for i in 0..6 {
                journal.append(body(&format!("u{i}"))).await.unwrap();
            }
            assert_eq!(acked_seq(&db, GW).await.unwrap(), 0);
            journal.record_acked(6).await.unwrap();
            assert_eq!(acked_seq(&db, GW).await.unwrap(), 6);
            journal.close().await;
            assert!(matches!(
                journal.record_acked(6).await,
                Err(JournalError::Closed)
            ));

            exec(
                &db,
                "UPDATE gw_journal SET event = REPLACE(event, '\"u2\"', '\"mallory\"')
                 WHERE tenant = $1 AND seq = $2",
                3,
            )
            .await;
            let b = verify(&db, GW).await.unwrap().broken.expect("broken");
            assert_eq!((b.gateway.as_str(), b.seq), (GW, 3), "{b}");
            assert!(b.why.contains("altered"), "{b}");

            exec(
                &db,
                "UPDATE gw_journal SET event = '{not json' WHERE tenant = $1 AND seq = $2",
                3,
            )
            .await;
            let b = verify(&db, GW).await.unwrap().broken.expect("broken");
            assert_eq!(b.seq, 3, "{b}");
            assert!(matches!(
                read_events(&db, GW).await,
                Err(JournalError::Corrupt { seq: 3, .. })
            ));

            exec(
                &db,
                "DELETE FROM gw_journal WHERE tenant = $1 AND seq <= $2",
                3,
            )
            .await;
            let v = verify(&db, GW).await.unwrap();
            let b = v.broken.expect("broken");
            assert_eq!((b.seq, v.checked), (1, 0), "{b}");
            assert!(b.why.contains("missing"), "{b}");

            // A lost tail shows against what the engine confirmed.
            exec(
                &db,
                "DELETE FROM gw_journal WHERE tenant = $1 AND seq <= $2",
                6,
            )
            .await;
            let v = verify(&db, GW).await.unwrap();
            let b = v.broken.expect("broken");
            assert_eq!(b.seq, 1, "{b}");
            assert!(b.why.contains("confirmed"), "{b}");
            // Every row gone, the journal is still listed, and found broken.
            let all = Journals::of(&db).verify_all().await.unwrap();
            let mine: Vec<&Verification> = all
                .iter()
                .filter(|v| v.journal.tenant == db.tenant() && v.journal.gateway == GW)
                .collect();
            assert_eq!(mine.len(), 1, "{all:?}");
            assert!(mine[0].broken.is_some(), "{all:?}");
            db.close().await;
        }
    }

    #[tokio::test]
    async fn appends_after_close_fail_and_close_drains() {
        for t in targets("journal-close") {
            let db = t.db().await;
            let journal = Journal::start(db.clone(), GW.into()).await.unwrap();
            let pending: Vec<_> = (0..20)
                .map(|i| {
                    let j = journal.clone();
                    tokio::spawn(async move { j.append(body(&format!("u{i}"))).await })
                })
                .collect();
            journal.flush().await.unwrap();
            journal.close().await;
            journal.close().await;
            let mut ok = 0;
            for p in pending {
                match p.await.unwrap() {
                    Ok(_) => ok += 1,
                    Err(JournalError::Closed) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(matches!(
                journal.append(body("late")).await,
                Err(JournalError::Closed)
            ));
            assert!(matches!(journal.flush().await, Err(JournalError::Closed)));
            let v = verify(&db, GW).await.unwrap();
            assert_eq!(
                (v.checked, v.broken),
                (ok, None),
                "every answered event is there"
            );
            db.close().await;
        }
    }

    #[tokio::test]
    async fn a_failed_commit_refuses_its_batch_and_leaves_no_gap() {
        for t in targets("journal-fail") {
            let db = t.db().await;
            let journal = Journal::start(db.clone(), GW.into()).await.unwrap();
            let first = journal.append(body("a")).await.unwrap();
            // Another writer takes seq 2 behind the journal's back (a second process
            // under the same name): the next batch collides and is refused.
            let mut intruder = body("intruder");
            intruder.seq = 2;
            intruder.gateway = GW.into();
            intruder.tier = "lgwan".into();
            intruder.ts = format_ts(now_ms());
            let sealed = intruder.seal(&first.hash);
            sqlx::query(
                "INSERT INTO gw_journal (tenant, tier, gateway, seq, ts_ms, event, hash)
                 VALUES ($1, 'lgwan', $2, 2, 0, $3, $4)",
            )
            .bind(db.tenant())
            .bind(GW)
            .bind(sealed.to_json())
            .bind(sealed.hash.as_str())
            .execute(&db.pool)
            .await
            .unwrap();
            let refused = journal.append(body("b")).await;
            assert!(
                matches!(refused, Err(JournalError::Write { .. })),
                "{refused:?}"
            );
            assert_eq!(journal.stats().failed_batches, 1);
            // The head was read again: the chain continues after the row it found.
            let next = journal.append(body("c")).await.unwrap();
            assert_eq!(next.seq, 3);
            journal.close().await;
            let v = verify(&db, GW).await.unwrap();
            assert_eq!((v.checked, v.broken), (3, None));
            let users: Vec<String> = read_events(&db, GW)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.body.user)
                .collect();
            assert_eq!(users, ["a", "intruder", "c"]);
            db.close().await;
        }
    }

    #[tokio::test]
    async fn sqlite_commits_are_full_sync_and_files_open_across_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.db");
        let url = format!("sqlite://{}", file.display());
        let a = Db::open(&url, "city-a", Tier::Lgwan).await.unwrap();
        assert_eq!(sqlite_synchronous(&a).await.unwrap(), Some(2), "FULL");
        let b = Db::open(&url, "city-b", Tier::Internet).await.unwrap();
        for (db, n) in [(&a, 2), (&b, 3)] {
            let j = Journal::start(db.clone(), GW.into()).await.unwrap();
            for i in 0..n {
                j.append(body(&format!("u{i}"))).await.unwrap();
            }
            j.close().await;
        }
        a.close().await;
        b.close().await;

        let missing = Journals::open(&dir.path().join("nope.db").display().to_string()).await;
        assert!(matches!(missing, Err(JournalError::NoFile { .. })));
        let journals = Journals::open(&file.display().to_string()).await.unwrap();
        let ids = journals.list().await.unwrap();
        assert_eq!(
            ids.iter().map(|i| format!("{i}")).collect::<Vec<_>>(),
            [
                "city-a/lgwan/lgwan-gateway",
                "city-b/internet/lgwan-gateway"
            ]
        );
        let checked: Vec<u64> = journals
            .verify_all()
            .await
            .unwrap()
            .iter()
            .map(|v| v.checked)
            .collect();
        assert_eq!(checked, [2, 3]);
        assert_eq!(
            journals.all_events(&ids[1]).await.unwrap()[2].body.user,
            "u2"
        );
        journals.close().await;
        assert!(matches!(
            Journal::start(Db::open(&url, "c", Tier::Lgwan).await.unwrap(), " x".into()).await,
            Err(JournalError::InvalidName { .. })
        ));
    }
}
