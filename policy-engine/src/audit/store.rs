//! The engine's copy of every gateway's journal: ingest (from `AuditSink.Ship` and
//! from imported journal files), queries, chain verification, and the few
//! aggregates the reports want from SQL.
//!
//! Each event is stored as the exact JSON line the gateway hashed, next to copies of
//! the fields auditors filter on (indexed columns). Verification reads only the JSON
//! and checks that the copies still agree with it, so editing either is caught.
//!
//! Ingest is idempotent by (gateway, seq): a batch shipped twice (lost
//! acknowledgement, restart of either side) is stored once. Each call is one
//! transaction: a malformed record, or one whose (gateway, seq) already holds a
//! different event (another hash), refuses the whole call and stores nothing, so the
//! acknowledgement a gateway gets never covers a record that was not written.
//!
//! Same SQL on SQLite and PostgreSQL, like the rest of [`crate::store`]; the few
//! differences (collation of the gateway sort key, index hints) are spelled out where
//! they occur.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::event::{parse_ts, AuditEvent, BrokenLink, ChainState};
use super::query::{Cursor, Filter, Page};
use crate::store::{self, Backend, Store, StoreError};

pub use super::event::MAX_EVENT_BYTES;

/// Rows read per query when walking a chain or exporting.
const READ_CHUNK: usize = 10_000;

/// Lines per statement group when importing a journal file (bounds memory).
const IMPORT_CHUNK: usize = 5_000;

/// Rows per INSERT of events or decisions at most ([`store::pow2_chunks`]).
const ROWS_PER_INSERT: usize = 64;

/// One event as shipped by a gateway: where it sits in that gateway's journal, and
/// the JSON line exactly as hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub gateway: String,
    pub seq: u64,
    pub json: String,
}

/// What an [`AuditStore::ingest`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Records that were new (the rest had been stored before).
    pub inserted: u64,
    /// Per gateway named in the call: the highest seq stored with every seq below it.
    pub stored_through: BTreeMap<String, u64>,
}

/// What an [`AuditStore::import_jsonl`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Events read (blank lines are skipped).
    pub events: u64,
    pub inserted: u64,
    pub stored_through: BTreeMap<String, u64>,
}

/// The verdict on one gateway's stored chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub gateway: String,
    /// Events checked and found linked (from seq 1 up to the first broken link).
    pub events: u64,
    /// The first link that does not hold, or `None` when the chain is intact.
    pub broken: Option<BrokenLink>,
}

/// Where a gateway's shipping stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    pub gateway: String,
    pub stored_through: u64,
    /// Events received from it (new ones only).
    pub received: u64,
    /// When it last shipped something new (Unix ms).
    pub last_received_ms: i64,
}

/// Events of one device in one time bucket (see [`AuditStore::counts_by_device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCount {
    pub device: String,
    /// Start of the bucket, Unix ms.
    pub bucket_start_ms: i64,
    pub count: u64,
}

/// One recorded plan or authorization (see [`crate::audit::decisions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionEntry {
    pub id: String,
    pub ts_ms: i64,
    /// `plan` or `authorize`.
    pub kind: String,
    pub user: String,
    pub device: String,
    pub action: String,
    pub via: String,
    pub upstream: Vec<String>,
    pub hour: u8,
    /// Authorize: the verified factor names. Plan: empty.
    pub factors: Vec<String>,
    /// JSON object of the kind-specific inputs (plan: enrolled, emergency OTP, mask).
    pub inputs: String,
    /// JSON object: plan options and unavailable sets, or allowed and policy ids, or
    /// `{"error": …}`.
    pub result: String,
    pub policy_version: String,
    pub request_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record (gateway '{gateway}', seq {seq}) is not an audit event: {message}")]
    Malformed {
        gateway: String,
        seq: u64,
        message: String,
    },
    #[error("record (gateway '{gateway}', seq {seq}): the event inside names {field} '{found}'")]
    Mismatch {
        gateway: String,
        seq: u64,
        field: &'static str,
        found: String,
    },
    #[error("record (gateway '{gateway}', seq {seq}): {why}")]
    InvalidRecord {
        gateway: String,
        seq: u64,
        why: String,
    },
    /// The engine stores one event per (gateway, seq); keeping the first and
    /// acknowledging the second would lose the second without anyone knowing.
    #[error("gateway {gateway} seq {seq}: the engine already holds a different event under this name and seq (hash {held}, this one {received}): its journal was replaced, or two gateways share the name; give this gateway its own name. Nothing of this shipment was stored")]
    Conflict {
        gateway: String,
        seq: u64,
        held: String,
        received: String,
    },
    /// [`AuditError::Conflict`] within one call: which of the two the gateway's
    /// chain holds cannot be told here, and keeping either would lose the other.
    #[error("gateway {gateway} seq {seq}: this shipment holds two different events under this name and seq (two journals under one gateway name?); give each gateway its own name. Nothing of this shipment was stored")]
    ConflictInShipment { gateway: String, seq: u64 },
    /// A journal is bound to the certificate that first shipped it: another
    /// gateway certificate shipping under its name is a second gateway configured
    /// with the same name, or one pretending to be it.
    #[error("journal '{gateway}' is shipped by the gateway certificate '{owner}'; '{client}' may not ship under that name (give each gateway its own `name`). Nothing of this shipment was stored")]
    NotOwner {
        gateway: String,
        owner: String,
        client: String,
    },
    #[error("line {line}: {message}; nothing was imported")]
    ImportLine { line: u64, message: String },
    #[error("line {line}: cannot read: {source}; nothing was imported")]
    ImportRead { line: u64, source: std::io::Error },
    #[error("stored event (gateway '{gateway}', seq {seq}) is unreadable: {message} (run `sekisho audit verify`)")]
    CorruptEvent {
        gateway: String,
        seq: u64,
        message: String,
    },
    #[error("database error while {context}: {source}")]
    Database {
        context: &'static str,
        source: sqlx::Error,
    },
}

fn db(context: &'static str) -> impl Fn(sqlx::Error) -> AuditError {
    move |source| AuditError::Database { context, source }
}

/// The engine's own journal of its audit administration (a journal unbound from
/// its certificate). No gateway may ship under this name.
pub const ENGINE_JOURNAL: &str = "engine-audit";

/// A record checked and taken apart for the indexed columns.
struct Prepared {
    gateway: String,
    seq: i64,
    ts_ms: i64,
    tier: String,
    device: String,
    user: String,
    operator: String,
    action: String,
    outcome: &'static str,
    json: String,
    /// The event's chain hash: what tells a re-sent event from a different one
    /// under the same seq.
    hash: String,
}

/// Why a line is not storable, before it is attributed to a record or a file line.
enum Problem {
    Malformed(String),
    Invalid(String),
}

impl Problem {
    fn message(self) -> String {
        match self {
            Problem::Malformed(m) => format!("not an audit event: {m}"),
            Problem::Invalid(m) => m,
        }
    }
}

fn prepare(json: String) -> Result<Prepared, Problem> {
    if json.len() > MAX_EVENT_BYTES {
        return Err(Problem::Invalid(format!(
            "event is {} bytes, more than the {MAX_EVENT_BYTES} an event may have",
            json.len()
        )));
    }
    let AuditEvent { body: b, hash, .. } =
        AuditEvent::from_json(&json).map_err(|e| Problem::Malformed(e.to_string()))?;
    if b.gateway.is_empty() {
        return Err(Problem::Invalid("the event names no gateway".into()));
    }
    let seq = i64::try_from(b.seq)
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| Problem::Invalid(format!("seq {} is out of range (1..2^63)", b.seq)))?;
    let ts_ms = parse_ts(&b.ts)
        .ok_or_else(|| Problem::Invalid(format!("ts '{}' is not an RFC 3339 time", b.ts)))?;
    // PostgreSQL cannot hold a NUL in a text column, SQLite can: refused on both, so
    // the two stores take the same events. (A sealing gateway never writes one.)
    for (field, text) in [
        ("gateway", &b.gateway),
        ("tier", &b.tier),
        ("device", &b.device),
        ("user", &b.user),
        ("operator", &b.operator),
        ("action", &b.action),
    ] {
        if text.contains('\0') {
            return Err(Problem::Invalid(format!(
                "{field} contains a NUL character"
            )));
        }
    }
    Ok(Prepared {
        gateway: b.gateway,
        seq,
        ts_ms,
        tier: b.tier,
        device: b.device,
        user: b.user,
        operator: b.operator,
        action: b.action,
        outcome: b.outcome.name(),
        json,
        hash,
    })
}

/// A bind value of a generated statement.
enum Arg<'a> {
    Str(&'a str),
    Int(i64),
}

/// A statement built piece by piece with its binds in placeholder order (SQLite's
/// anonymous `?` are bound positionally, so a value used twice is bound twice).
struct Sql<'a> {
    backend: Backend,
    text: String,
    args: Vec<Arg<'a>>,
}

impl<'a> Sql<'a> {
    fn new(backend: Backend, head: &str) -> Self {
        Sql {
            backend,
            text: head.to_string(),
            args: Vec::new(),
        }
    }

    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    fn arg(&mut self, a: Arg<'a>) -> &mut Self {
        self.args.push(a);
        self.backend
            .push_placeholder(&mut self.text, self.args.len());
        self
    }

    fn str(&mut self, s: &'a str) -> &mut Self {
        self.arg(Arg::Str(s))
    }

    fn int(&mut self, i: i64) -> &mut Self {
        self.arg(Arg::Int(i))
    }

    fn query(&self) -> sqlx::query::Query<'_, Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text).persistent(false);
        for a in &self.args {
            q = match a {
                Arg::Str(s) => q.bind(*s),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// A stored row with its ordering key, event not parsed yet.
struct StoredRow {
    ts_ms: i64,
    gateway: String,
    seq: u64,
    event: String,
}

impl StoredRow {
    fn from_row(row: &AnyRow) -> Result<StoredRow, AuditError> {
        let gateway: String = row.try_get("gateway").map_err(db("reading an event"))?;
        let seq: i64 = row.try_get("seq").map_err(db("reading an event"))?;
        Ok(StoredRow {
            ts_ms: row.try_get("ts_ms").map_err(db("reading an event"))?,
            event: row.try_get("event").map_err(db("reading an event"))?,
            seq: u64::try_from(seq).unwrap_or(0),
            gateway,
        })
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            ts_ms: self.ts_ms,
            gateway: self.gateway.clone(),
            seq: self.seq,
        }
    }

    fn parse(self) -> Result<AuditEvent, AuditError> {
        AuditEvent::from_json(&self.event).map_err(|e| AuditError::CorruptEvent {
            gateway: self.gateway,
            seq: self.seq,
            message: e.to_string(),
        })
    }
}

/// The audit tables of one tenant. Cheap to clone (shares the store's pool).
#[derive(Clone, Debug)]
pub struct AuditStore {
    store: Store,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl AuditStore {
    /// Binds journal `gateway` to the certificate name `client` unless it is bound
    /// already, and refuses with [`AuditError::NotOwner`] when it is bound to
    /// another.
    ///
    /// Called for every shipment, so a bound journal costs one read and no write;
    /// nothing is remembered between calls, because an administrator's unbind or
    /// another engine replica's binding must count at once.
    pub async fn bind_journal(&self, gateway: &str, client: &str) -> Result<(), AuditError> {
        let bound: Option<String> = sqlx::query_scalar(
            "SELECT client FROM audit_journal_owners WHERE tenant = $1 AND gateway = $2",
        )
        .bind(self.tenant())
        .bind(gateway)
        .fetch_optional(self.pool())
        .await
        .map_err(db("reading a journal's owner"))?;
        let owner = match bound {
            Some(owner) => owner,
            None => self.bind_unbound(gateway, client).await?,
        };
        if owner == client {
            Ok(())
        } else {
            Err(AuditError::NotOwner {
                gateway: gateway.into(),
                owner,
                client: client.into(),
            })
        }
    }

    /// Binds `gateway` to `client` and returns its owner: `client`, or whoever
    /// bound it between the read and this write.
    async fn bind_unbound(&self, gateway: &str, client: &str) -> Result<String, AuditError> {
        // The no-op update on a conflict makes RETURNING give the stored owner.
        sqlx::query_scalar(
            "INSERT INTO audit_journal_owners (tenant, gateway, client, bound_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant, gateway) DO UPDATE SET client = audit_journal_owners.client
             RETURNING client",
        )
        .bind(self.tenant())
        .bind(gateway)
        .bind(client)
        .bind(now_ms())
        .fetch_one(self.pool())
        .await
        .map_err(db("binding a journal to its gateway"))
    }

    /// Forgets which certificate ships journal `gateway` (a gateway given a new
    /// certificate name on purpose): the next gateway certificate that ships it
    /// owns it. Recorded, in the same transaction, as a `journal_unbind` event of
    /// the engine's own journal [`ENGINE_JOURNAL`], with `operator` and the
    /// certificate that owned it. Returns that certificate's name, or `None` when
    /// the journal was not bound (nothing changes, nothing is recorded).
    pub async fn unbind_journal(
        &self,
        gateway: &str,
        operator: &str,
    ) -> Result<Option<String>, AuditError> {
        let mut tx = self.begin_write().await?;
        let owner: Option<String> = sqlx::query_scalar(
            "DELETE FROM audit_journal_owners WHERE tenant = $1 AND gateway = $2 RETURNING client",
        )
        .bind(self.tenant())
        .bind(gateway)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("unbinding a journal"))?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        let mut event = super::event::EventBody::new(
            ENGINE_JOURNAL,
            "",
            "journal_unbind",
            super::event::Outcome::Allow,
        );
        event.operator = operator.into();
        event.detail.insert("journal".into(), gateway.into());
        event.detail.insert("certificate".into(), owner.clone());
        self.append_own_in(&mut tx, ENGINE_JOURNAL, vec![event])
            .await?;
        tx.commit().await.map_err(db("unbinding a journal"))?;
        Ok(Some(owner))
    }

    /// Opens (creating and migrating if needed) the store at `url` for `tenant`, as
    /// [`Store::open`] does, for the CLI's `audit` commands.
    pub async fn open(url: &str, tenant: &str) -> Result<AuditStore, AuditError> {
        Ok(Store::open(url, tenant).await?.audit())
    }

    pub(crate) fn from_store(store: Store) -> AuditStore {
        AuditStore { store }
    }

    pub fn tenant(&self) -> &str {
        self.store.tenant()
    }

    /// Closes the underlying pool (shared with the [`Store`] it came from).
    pub async fn close(&self) {
        self.store.close().await;
    }

    fn backend(&self) -> Backend {
        self.store.kind()
    }

    fn pool(&self) -> &sqlx::AnyPool {
        self.store.pool()
    }

    /// The gateway column as a sort key that orders like Rust strings (bytes), so
    /// the database's order and [`Cursor`]'s agree whatever the database collation.
    fn gw(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "gateway",
            Backend::Postgres => "gateway COLLATE \"C\"",
        }
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Any>, AuditError> {
        self.pool()
            .begin_with(self.backend().begin_write())
            .await
            .map_err(db("starting a write transaction"))
    }

    // -----------------------------------------------------------------------------
    // Ingest

    /// Stores shipped records: all of them or, when one is not a valid event, does
    /// not match the gateway and seq it was shipped as, or differs (another hash)
    /// from the event stored under its gateway and seq, none (the error names it).
    /// Records already stored are skipped; one with the stored hash but other bytes
    /// leaves the stored copy and a warning (verification tells which of the two the
    /// chain holds).
    pub async fn ingest(&self, records: Vec<Record>) -> Result<IngestOutcome, AuditError> {
        let mut tx = self.begin_write().await?;
        let out = self.ingest_in(&mut tx, records).await?;
        tx.commit().await.map_err(db("committing audit events"))?;
        Ok(out)
    }

    /// [`AuditStore::ingest`] inside the caller's transaction (the engine's own events
    /// are stored with the change they record).
    pub(crate) async fn ingest_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        records: Vec<Record>,
    ) -> Result<IngestOutcome, AuditError> {
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            let p = prepare(r.json).map_err(|p| match p {
                Problem::Malformed(message) => AuditError::Malformed {
                    gateway: r.gateway.clone(),
                    seq: r.seq,
                    message,
                },
                Problem::Invalid(why) => AuditError::InvalidRecord {
                    gateway: r.gateway.clone(),
                    seq: r.seq,
                    why,
                },
            })?;
            if p.gateway != r.gateway {
                return Err(AuditError::Mismatch {
                    gateway: r.gateway,
                    seq: r.seq,
                    field: "gateway",
                    found: p.gateway,
                });
            }
            if p.seq as u64 != r.seq {
                return Err(AuditError::Mismatch {
                    gateway: r.gateway,
                    seq: r.seq,
                    field: "seq",
                    found: p.seq.to_string(),
                });
            }
            rows.push(p);
        }
        if rows.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let by_gateway = group_by_gateway(rows)?;
        self.lock_gateways(tx, by_gateway.keys()).await?;
        let mut out = IngestOutcome::default();
        for (gateway, rows) in &by_gateway {
            let inserted = self.insert_events(tx, rows).await?;
            let known: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            let through = self.advance(tx, gateway, &known, inserted).await?;
            out.inserted += inserted;
            out.stored_through.insert(gateway.clone(), through);
        }
        Ok(out)
    }

    /// Imports a journal file (one event JSON per line, as `audit export` and the
    /// gateways' journals write them) through the same path as shipped events, in
    /// one transaction: a bad line refuses the whole file and names the line.
    pub async fn import_jsonl<R: BufRead>(&self, reader: R) -> Result<ImportOutcome, AuditError> {
        let mut tx = self.begin_write().await?;
        let mut out = ImportOutcome::default();
        let mut inserted_per: BTreeMap<String, u64> = BTreeMap::new();
        let mut locked: std::collections::BTreeSet<String> = Default::default();
        let mut lines = reader.lines();
        let mut line_no = 0u64;
        loop {
            let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
            while chunk.len() < IMPORT_CHUNK {
                let Some(line) = lines.next() else { break };
                line_no += 1;
                let line = line.map_err(|source| AuditError::ImportRead {
                    line: line_no,
                    source,
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                let p = prepare(line).map_err(|p| AuditError::ImportLine {
                    line: line_no,
                    message: p.message(),
                })?;
                chunk.push(p);
            }
            if chunk.is_empty() {
                break;
            }
            out.events += chunk.len() as u64;
            let by_gateway = group_by_gateway(chunk)?;
            // Gateway locks are taken as gateways first appear; a file normally
            // holds one gateway's journal, so the order question does not arise.
            let new: Vec<&String> = by_gateway.keys().filter(|g| !locked.contains(*g)).collect();
            self.lock_gateways(&mut tx, new.iter().copied()).await?;
            locked.extend(new.into_iter().cloned());
            for (gateway, rows) in &by_gateway {
                let n = self.insert_events(&mut tx, rows).await?;
                *inserted_per.entry(gateway.clone()).or_default() += n;
                out.inserted += n;
            }
        }
        for (gateway, inserted) in &inserted_per {
            let through = self.advance(&mut tx, gateway, &[], *inserted).await?;
            out.stored_through.insert(gateway.clone(), through);
        }
        tx.commit()
            .await
            .map_err(db("committing imported events"))?;
        Ok(out)
    }

    /// Chains and stores events the engine itself records (a directory sync's
    /// deprovisioning) as the journal `journal`, inside the caller's transaction, so
    /// they are stored exactly when the change they record is.
    pub(crate) async fn append_own_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        journal: &str,
        bodies: Vec<super::event::EventBody>,
    ) -> Result<(), AuditError> {
        if bodies.is_empty() {
            return Ok(());
        }
        let name = journal.to_string();
        self.lock_gateways(tx, std::iter::once(&name)).await?;
        let head = sqlx::query(
            "SELECT event FROM audit_events WHERE tenant = $1 AND gateway = $2
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(self.tenant())
        .bind(journal)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading the engine journal's head"))?;
        let (mut seq, mut prev) = match head {
            Some(row) => {
                let json: String = row
                    .try_get(0)
                    .map_err(db("reading the engine journal's head"))?;
                let e = AuditEvent::from_json(&json).map_err(|e| AuditError::Malformed {
                    gateway: name.clone(),
                    seq: 0,
                    message: e.to_string(),
                })?;
                (e.body.seq, e.hash)
            }
            None => (0, super::event::GENESIS_HASH.to_string()),
        };
        let ts = super::event::format_ts(now_ms());
        let mut records = Vec::with_capacity(bodies.len());
        for mut body in bodies {
            seq += 1;
            body.seq = seq;
            body.ts.clone_from(&ts);
            body.gateway.clone_from(&name);
            let event = body.seal(&prev);
            prev.clone_from(&event.hash);
            records.push(Record {
                gateway: name.clone(),
                seq,
                json: event.to_json(),
            });
        }
        self.ingest_in(tx, records).await.map(|_| ())
    }

    /// On PostgreSQL, serialises ingests of the same gateway (two replicas of the
    /// engine receiving overlapping batches), so each computes `stored_through` from
    /// rows the other has committed. SQLite transactions are serial already.
    async fn lock_gateways<'g>(
        &self,
        tx: &mut Transaction<'static, Any>,
        gateways: impl Iterator<Item = &'g String>,
    ) -> Result<(), AuditError> {
        if self.backend() != Backend::Postgres {
            return Ok(());
        }
        for g in gateways {
            let key = store::lock_key("audit", &format!("{}\u{0}{g}", self.tenant()));
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut **tx)
                .await
                .map_err(db("taking the gateway's audit lock"))?;
        }
        Ok(())
    }

    /// Inserts one gateway's rows (sorted by seq, no seq twice), skipping those
    /// already stored and refusing ([`AuditError::Conflict`]) when one of those
    /// differs from the stored event. Returns how many were new.
    async fn insert_events(
        &self,
        tx: &mut Transaction<'static, Any>,
        rows: &[Prepared],
    ) -> Result<u64, AuditError> {
        let received_at = now_ms();
        let tenant = self.tenant().to_string();
        let mut inserted = 0;
        for chunk in store::pow2_chunks(rows, ROWS_PER_INSERT) {
            let mut sql = Sql::new(
                self.backend(),
                "INSERT INTO audit_events (tenant, gateway, seq, ts_ms, tier, device, user_id, \
                 operator, action, outcome, event, received_at) VALUES ",
            );
            for (i, r) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                sql.str(&tenant).push(", ");
                sql.str(&r.gateway).push(", ");
                sql.int(r.seq).push(", ");
                sql.int(r.ts_ms).push(", ");
                sql.str(&r.tier).push(", ");
                sql.str(&r.device).push(", ");
                sql.str(&r.user).push(", ");
                sql.str(&r.operator).push(", ");
                sql.str(&r.action).push(", ");
                sql.str(r.outcome).push(", ");
                sql.str(&r.json).push(", ");
                sql.int(received_at).push(")");
            }
            sql.push(" ON CONFLICT (tenant, gateway, seq) DO NOTHING");
            let n = sql
                .query()
                .persistent(true)
                .execute(&mut **tx)
                .await
                .map_err(db("storing audit events"))?
                .rows_affected();
            if (n as usize) < chunk.len() {
                self.check_held_copies(tx, chunk).await?;
            }
            inserted += n;
        }
        Ok(inserted)
    }

    /// Some of `chunk` were stored before. A re-sent event (a lost acknowledgement)
    /// is the one stored, and skipping it is right; one with another hash is a
    /// different event under the same (gateway, seq), a replaced journal or two
    /// gateways with one name, and skipping it while acknowledging the seq would
    /// lose it unseen, so the call is refused ([`AuditError::Conflict`], lowest seq).
    /// Only called for a chunk that inserted fewer rows than it has, so shipments
    /// of new events pay no extra query.
    async fn check_held_copies(
        &self,
        tx: &mut Transaction<'static, Any>,
        chunk: &[Prepared],
    ) -> Result<(), AuditError> {
        let Some(first) = chunk.first() else {
            return Ok(());
        };
        let mut sql = Sql::new(
            self.backend(),
            "SELECT seq, event FROM audit_events WHERE tenant = ",
        );
        sql.str(self.tenant()).push(" AND gateway = ");
        sql.str(&first.gateway).push(" AND seq IN (");
        for (i, r) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.int(r.seq);
        }
        sql.push(") ORDER BY seq");
        let stored = sql
            .query()
            .fetch_all(&mut **tx)
            .await
            .map_err(db("comparing re-sent audit events"))?;
        let ours: HashMap<i64, &Prepared> = chunk.iter().map(|r| (r.seq, r)).collect();
        for row in &stored {
            let seq: i64 = row
                .try_get(0)
                .map_err(db("comparing re-sent audit events"))?;
            let event: String = row
                .try_get(1)
                .map_err(db("comparing re-sent audit events"))?;
            // The rows this chunk just inserted come back too, byte for byte.
            let Some(ours) = ours.get(&seq).filter(|r| r.json != event) else {
                continue;
            };
            let seq = u64::try_from(seq).unwrap_or(0);
            let held = serde_json::from_str::<HashOnly>(&event)
                .map_err(|e| AuditError::CorruptEvent {
                    gateway: ours.gateway.clone(),
                    seq,
                    message: e.to_string(),
                })?
                .hash;
            // The same hash over different bytes is harmless only while the stored
            // copy is the event that hash was made over (the same body written out
            // another way); a forged copy carrying the genuine hash would otherwise
            // keep the genuine event out, acknowledged but never stored.
            let stored_genuine = AuditEvent::from_json(&event).is_ok_and(|e| e.hash_matches());
            if held != ours.hash || !stored_genuine {
                return Err(AuditError::Conflict {
                    gateway: ours.gateway.clone(),
                    seq,
                    held,
                    received: ours.hash.clone(),
                });
            }
            tracing::warn!(
                gateway = %ours.gateway,
                seq,
                "audit event re-sent with its stored hash but different content; the stored copy is kept (`sekisho audit verify` tells which the chain holds)"
            );
        }
        Ok(())
    }

    /// Moves the gateway's `stored_through` up to the highest seq with no gap below
    /// it and records `inserted` new events. `known`: seqs of this call (all stored
    /// now), sorted, which spares reading them back in the usual in-order case.
    async fn advance(
        &self,
        tx: &mut Transaction<'static, Any>,
        gateway: &str,
        known: &[i64],
        inserted: u64,
    ) -> Result<u64, AuditError> {
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT stored_through FROM audit_gateways WHERE tenant = $1 AND gateway = $2",
        )
        .bind(self.tenant())
        .bind(gateway)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading a gateway's stored_through"))?;
        let mut through = current.unwrap_or(0);
        for &s in known {
            if s == through + 1 {
                through = s;
            } else if s > through + 1 {
                break;
            }
        }
        // Events received earlier beyond a gap that this call may have closed.
        'walk: loop {
            let mut sql = Sql::new(
                self.backend(),
                "SELECT seq FROM audit_events WHERE tenant = ",
            );
            sql.str(self.tenant()).push(" AND gateway = ");
            sql.str(gateway).push(" AND seq > ");
            sql.int(through).push(" ORDER BY seq LIMIT ");
            sql.int(READ_CHUNK as i64);
            let seqs: Vec<i64> = sql
                .query()
                .fetch_all(&mut **tx)
                .await
                .map_err(db("reading stored seqs"))?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(db("reading stored seqs"))?;
            let full = seqs.len() == READ_CHUNK;
            for s in seqs {
                if s != through + 1 {
                    break 'walk;
                }
                through = s;
            }
            if !full {
                break;
            }
        }
        sqlx::query(
            "INSERT INTO audit_gateways (tenant, gateway, stored_through, received, last_received_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, gateway) DO UPDATE SET
               stored_through = CASE WHEN excluded.stored_through > audit_gateways.stored_through
                                     THEN excluded.stored_through ELSE audit_gateways.stored_through END,
               received = audit_gateways.received + excluded.received,
               last_received_at = CASE WHEN excluded.received > 0
                                       THEN excluded.last_received_at ELSE audit_gateways.last_received_at END",
        )
        .bind(self.tenant())
        .bind(gateway)
        .bind(through)
        .bind(i64::try_from(inserted).unwrap_or(i64::MAX))
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(db("recording a gateway's stored_through"))?;
        Ok(through as u64)
    }

    /// Every gateway that has shipped, by name.
    pub async fn gateways(&self) -> Result<Vec<GatewayStatus>, AuditError> {
        let rows = sqlx::query(
            "SELECT gateway, stored_through, received, last_received_at FROM audit_gateways
             WHERE tenant = $1",
        )
        .bind(self.tenant())
        .fetch_all(self.pool())
        .await
        .map_err(db("listing gateways"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let get = |c: &str| r.try_get::<i64, _>(c).map_err(db("listing gateways"));
            out.push(GatewayStatus {
                gateway: r.try_get("gateway").map_err(db("listing gateways"))?,
                stored_through: get("stored_through")?.max(0) as u64,
                received: get("received")?.max(0) as u64,
                last_received_ms: get("last_received_at")?,
            });
        }
        out.sort_by(|a, b| a.gateway.cmp(&b.gateway));
        Ok(out)
    }

    // -----------------------------------------------------------------------------
    // Queries

    /// Appends the index hint and `WHERE tenant = … AND <filter>` (indexed columns
    /// only) after `FROM audit_events`.
    ///
    /// SQLite, without statistics, prefers the time index whenever a query is ordered
    /// by time, and then walks every event of the period to find one user's hundred
    /// (0.7 s instead of 4 ms at 200,000 events). So on SQLite the index is named,
    /// picked by the most selective filter present: user, device, action, else time.
    /// PostgreSQL keeps statistics and chooses well by itself.
    fn push_filter<'a>(&'a self, sql: &mut Sql<'a>, f: &'a Filter) {
        if self.backend() == Backend::Sqlite {
            sql.push(if f.user.is_some() {
                " INDEXED BY audit_events_user"
            } else if f.device.is_some() {
                " INDEXED BY audit_events_device"
            } else if f.action.is_some() {
                " INDEXED BY audit_events_action"
            } else {
                " INDEXED BY audit_events_time"
            });
        }
        sql.push(" WHERE tenant = ");
        sql.str(self.tenant());
        for (col, v) in [
            ("user_id", &f.user),
            ("device", &f.device),
            ("tier", &f.tier),
            ("action", &f.action),
            ("gateway", &f.gateway),
        ] {
            if let Some(v) = v {
                sql.push(" AND ").push(col).push(" = ");
                sql.str(v);
            }
        }
        if let Some(o) = f.outcome {
            sql.push(" AND outcome = ");
            sql.str(o.name());
        }
        if let Some(s) = f.since_ms {
            sql.push(" AND ts_ms >= ");
            sql.int(s);
        }
        if let Some(u) = f.until_ms {
            sql.push(" AND ts_ms < ");
            sql.int(u);
        }
    }

    /// Rows in (ts_ms, gateway, seq) order: ascending strictly after `from`, or
    /// (`descending`) newest first strictly before `from`.
    async fn fetch(
        &self,
        filter: &Filter,
        from: Option<&Cursor>,
        descending: bool,
        limit: usize,
    ) -> Result<Vec<StoredRow>, AuditError> {
        let gw = self.gw();
        let mut sql = Sql::new(
            self.backend(),
            "SELECT ts_ms, gateway, seq, event FROM audit_events",
        );
        self.push_filter(&mut sql, filter);
        if let Some(c) = from {
            let (range, strict) = if descending {
                (" <= ", " < ")
            } else {
                (" >= ", " > ")
            };
            // The time bound alone first, so the index range starts at the cursor.
            sql.push(" AND ts_ms").push(range);
            sql.int(c.ts_ms).push(" AND (ts_ms").push(strict);
            sql.int(c.ts_ms).push(" OR ").push(gw).push(strict);
            sql.str(&c.gateway).push(" OR (gateway = ");
            sql.str(&c.gateway).push(" AND seq").push(strict);
            sql.int(seq_arg(c.seq)).push("))");
        }
        let dir = if descending { " DESC" } else { "" };
        sql.push(" ORDER BY ts_ms")
            .push(dir)
            .push(", ")
            .push(gw)
            .push(dir)
            .push(", seq")
            .push(dir)
            .push(" LIMIT ");
        sql.int(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = sql
            .query()
            .fetch_all(self.pool())
            .await
            .map_err(db("querying audit events"))?;
        rows.iter().map(StoredRow::from_row).collect()
    }

    /// Events matching `filter`, ordered by (time, gateway, seq), strictly after
    /// `page.after`, at most `page.limit` — the same answer as
    /// [`crate::audit::query::select`] over the same events.
    pub async fn query(&self, filter: &Filter, page: &Page) -> Result<Vec<AuditEvent>, AuditError> {
        self.fetch(filter, page.after.as_ref(), false, page.limit)
            .await?
            .into_iter()
            .map(StoredRow::parse)
            .collect()
    }

    /// The last `limit` events matching `filter` strictly before `before` (the newest
    /// when `None`), in ascending order: `--user U --last 100`. Page further back
    /// with the cursor of the first event returned.
    pub async fn tail(
        &self,
        filter: &Filter,
        before: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let mut rows = self.fetch(filter, before, true, limit).await?;
        rows.reverse();
        rows.into_iter().map(StoredRow::parse).collect()
    }

    /// One event by its place in its gateway's journal.
    pub async fn event(&self, gateway: &str, seq: u64) -> Result<Option<AuditEvent>, AuditError> {
        let row = sqlx::query(
            "SELECT ts_ms, gateway, seq, event FROM audit_events
             WHERE tenant = $1 AND gateway = $2 AND seq = $3",
        )
        .bind(self.tenant())
        .bind(gateway)
        .bind(seq_arg(seq))
        .fetch_optional(self.pool())
        .await
        .map_err(db("reading an audit event"))?;
        row.as_ref()
            .map(StoredRow::from_row)
            .transpose()?
            .map(StoredRow::parse)
            .transpose()
    }

    /// How many events match.
    pub async fn count(&self, filter: &Filter) -> Result<u64, AuditError> {
        let mut sql = Sql::new(self.backend(), "SELECT COUNT(*) FROM audit_events");
        self.push_filter(&mut sql, filter);
        let n: i64 = sql
            .query()
            .fetch_one(self.pool())
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db("counting audit events"))?;
        Ok(n.max(0) as u64)
    }

    /// Every event matching `filter` in time order, `chunk` at a time: for `audit
    /// export` and for reports that need fields only the JSON holds (`failed`).
    pub fn pages(&self, filter: Filter, chunk: usize) -> Pages {
        Pages {
            store: self.clone(),
            filter,
            after: None,
            chunk: chunk.max(1),
            done: false,
        }
    }

    // -----------------------------------------------------------------------------
    // Verification

    /// Verifies every gateway's stored chain (see [`AuditStore::verify_gateway`]),
    /// in gateway name order. Gateways are those with stored events and those that
    /// ever shipped, so a journal whose every row was deleted is reported too.
    pub async fn verify(&self) -> Result<Vec<ChainReport>, AuditError> {
        let mut names = self.distinct("gateway").await?;
        for g in self.gateways().await? {
            names.push(g.gateway);
        }
        names.sort();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for g in names {
            out.push(self.verify_gateway(&g).await?);
        }
        Ok(out)
    }

    /// Walks one gateway's events in seq order from 1, a chunk at a time (the next
    /// chunk is read while the current one is hashed), and stops at the first link
    /// that does not hold: a missing seq, JSON that no longer parses, a row whose
    /// columns disagree with its JSON, a wrong `prev_hash` or `hash`, or a chain
    /// that ends before what the gateway was acknowledged for (deleted tail).
    pub async fn verify_gateway(&self, gateway: &str) -> Result<ChainReport, AuditError> {
        let acknowledged: i64 = sqlx::query_scalar(
            "SELECT stored_through FROM audit_gateways WHERE tenant = $1 AND gateway = $2",
        )
        .bind(self.tenant())
        .bind(gateway)
        .fetch_optional(self.pool())
        .await
        .map_err(db("reading a gateway's stored_through"))?
        .unwrap_or(0);

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<ChainRow>, AuditError>>(2);
        let reader = {
            let store = self.clone();
            let gateway = gateway.to_string();
            tokio::spawn(async move {
                let mut after = 0i64;
                loop {
                    let chunk = store.chain_chunk(&gateway, after).await;
                    let (last, full) = match &chunk {
                        Ok(rows) => (rows.last().map(|r| r.seq), rows.len() == READ_CHUNK),
                        Err(_) => (None, false),
                    };
                    if tx.send(chunk).await.is_err() || !full {
                        return;
                    }
                    after = last.unwrap_or(after);
                }
            })
        };

        let mut state = ChainState::start(gateway);
        let mut broken = None;
        'chunks: while let Some(chunk) = rx.recv().await {
            for row in chunk? {
                if let Err(link) = check_row(&mut state, row) {
                    broken = Some(link);
                    break 'chunks;
                }
            }
        }
        drop(rx);
        reader.abort();
        if broken.is_none() && (state.seq as i64) < acknowledged {
            broken = Some(BrokenLink {
                gateway: gateway.to_string(),
                seq: state.seq + 1,
                why: format!(
                    "missing: the gateway was acknowledged through seq {acknowledged}, but the stored chain ends at seq {} (deleted events?)",
                    state.seq
                ),
            });
        }
        Ok(ChainReport {
            gateway: gateway.to_string(),
            events: state.seq,
            broken,
        })
    }

    async fn chain_chunk(&self, gateway: &str, after: i64) -> Result<Vec<ChainRow>, AuditError> {
        let mut sql = Sql::new(
            self.backend(),
            "SELECT seq, ts_ms, tier, device, user_id, operator, action, outcome, event \
             FROM audit_events WHERE tenant = ",
        );
        sql.str(self.tenant()).push(" AND gateway = ");
        sql.str(gateway).push(" AND seq > ");
        sql.int(after).push(" ORDER BY seq LIMIT ");
        sql.int(READ_CHUNK as i64);
        let rows = sql
            .query()
            .fetch_all(self.pool())
            .await
            .map_err(db("reading a gateway's chain"))?;
        let e = db("reading a gateway's chain");
        rows.iter()
            .map(|r| {
                Ok(ChainRow {
                    seq: r.try_get("seq").map_err(&e)?,
                    ts_ms: r.try_get("ts_ms").map_err(&e)?,
                    tier: r.try_get("tier").map_err(&e)?,
                    device: r.try_get("device").map_err(&e)?,
                    user: r.try_get("user_id").map_err(&e)?,
                    operator: r.try_get("operator").map_err(&e)?,
                    action: r.try_get("action").map_err(&e)?,
                    outcome: r.try_get("outcome").map_err(&e)?,
                    event: r.try_get("event").map_err(&e)?,
                })
            })
            .collect()
    }

    /// Distinct values of an indexed column that leads an index after `tenant`
    /// (`gateway`, `user_id`), by a loose index scan: one index probe per value
    /// instead of a scan of every event.
    async fn distinct(&self, column: &'static str) -> Result<Vec<String>, AuditError> {
        let t = self.tenant();
        let mut sql = Sql::new(self.backend(), "");
        sql.push("WITH RECURSIVE v(x) AS (SELECT MIN(")
            .push(column)
            .push(") FROM audit_events WHERE tenant = ");
        sql.str(t)
            .push(" UNION ALL SELECT (SELECT MIN(")
            .push(column);
        sql.push(") FROM audit_events WHERE tenant = ");
        sql.str(t)
            .push(" AND ")
            .push(column)
            .push(" > v.x) FROM v WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL");
        let rows = sql
            .query()
            .fetch_all(self.pool())
            .await
            .map_err(db("listing distinct values"))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(db("listing distinct values"))
    }

    // -----------------------------------------------------------------------------
    // Reports

    /// Per user, the time (Unix ms) of the last `allow` event with this action: the
    /// dormant-accounts report's "last logon". Users who never had one are absent.
    /// One index probe per user rather than a scan of the year's logons.
    pub async fn last_allowed(&self, action: &str) -> Result<HashMap<String, i64>, AuditError> {
        let t = self.tenant();
        // SQLite without statistics may otherwise walk the action index backwards
        // through everybody's logons looking for this user's.
        let hint = match self.backend() {
            Backend::Sqlite => " INDEXED BY audit_events_user",
            Backend::Postgres => "",
        };
        let mut sql = Sql::new(self.backend(), "");
        sql.push("WITH RECURSIVE u(id) AS (SELECT MIN(user_id) FROM audit_events WHERE tenant = ");
        sql.str(t);
        sql.push(" UNION ALL SELECT (SELECT MIN(user_id) FROM audit_events WHERE tenant = ");
        sql.str(t);
        sql.push(" AND user_id > u.id) FROM u WHERE u.id IS NOT NULL) SELECT id, (SELECT ts_ms FROM audit_events")
            .push(hint)
            .push(" WHERE tenant = ");
        sql.str(t).push(" AND user_id = u.id AND action = ");
        sql.str(action);
        sql.push(" AND outcome = 'allow' ORDER BY ts_ms DESC LIMIT 1) AS last FROM u WHERE id IS NOT NULL");
        let rows = sql
            .query()
            .fetch_all(self.pool())
            .await
            .map_err(db("finding each user's last allowed event"))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in &rows {
            let user: String = r
                .try_get(0)
                .map_err(db("finding each user's last allowed event"))?;
            let last: Option<i64> = r
                .try_get(1)
                .map_err(db("finding each user's last allowed event"))?;
            if let (Some(last), false) = (last, user.is_empty()) {
                out.insert(user, last);
            }
        }
        Ok(out)
    }

    /// Events matching `filter` counted per device and time bucket of `bucket_ms`
    /// (e.g. 86,400,000 for days), buckets aligned to local midnight by
    /// `utc_offset_ms` (+9 h for Japan): terminal usage without reading events.
    /// Sorted by device, then bucket.
    pub async fn counts_by_device(
        &self,
        filter: &Filter,
        bucket_ms: i64,
        utc_offset_ms: i64,
    ) -> Result<Vec<DeviceCount>, AuditError> {
        let bucket = bucket_ms.max(1);
        let mut sql = Sql::new(self.backend(), "SELECT device, ((ts_ms + ");
        sql.int(utc_offset_ms).push(") / ");
        sql.int(bucket)
            .push(") AS b, COUNT(*) AS n FROM audit_events");
        self.push_filter(&mut sql, filter);
        sql.push(" GROUP BY device, b");
        let rows = sql
            .query()
            .fetch_all(self.pool())
            .await
            .map_err(db("counting events per device"))?;
        let e = db("counting events per device");
        let mut out = rows
            .iter()
            .map(|r| {
                let b: i64 = r.try_get(1).map_err(&e)?;
                Ok(DeviceCount {
                    device: r.try_get(0).map_err(&e)?,
                    bucket_start_ms: b * bucket - utc_offset_ms,
                    count: r.try_get::<i64, _>(2).map_err(&e)?.max(0) as u64,
                })
            })
            .collect::<Result<Vec<_>, AuditError>>()?;
        out.sort_by(|a, b| {
            a.device
                .cmp(&b.device)
                .then(a.bucket_start_ms.cmp(&b.bucket_start_ms))
        });
        Ok(out)
    }

    // -----------------------------------------------------------------------------
    // Decision log

    /// Writes recorded decisions in one transaction (the decision log's writer).
    pub(crate) async fn record_decisions(
        &self,
        entries: &[DecisionEntry],
    ) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        let tenant = self.tenant().to_string();
        let lists: Vec<(String, String)> = entries
            .iter()
            .map(|d| (json_list(&d.upstream), json_list(&d.factors)))
            .collect();
        let mut tx = self.begin_write().await?;
        let rows: Vec<(&DecisionEntry, &(String, String))> = entries.iter().zip(&lists).collect();
        for chunk in store::pow2_chunks(&rows, ROWS_PER_INSERT) {
            let mut sql = Sql::new(
                self.backend(),
                "INSERT INTO audit_decisions (tenant, id, ts_ms, kind, user_id, device, action, via, \
                 upstream, hour, factors, inputs, result, policy_version, request_id) VALUES ",
            );
            for (i, (d, (upstream, factors))) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                sql.str(&tenant).push(", ");
                sql.str(&d.id).push(", ");
                sql.int(d.ts_ms).push(", ");
                sql.str(&d.kind).push(", ");
                sql.str(&d.user).push(", ");
                sql.str(&d.device).push(", ");
                sql.str(&d.action).push(", ");
                sql.str(&d.via).push(", ");
                sql.str(upstream).push(", ");
                sql.int(i64::from(d.hour)).push(", ");
                sql.str(factors).push(", ");
                sql.str(&d.inputs).push(", ");
                sql.str(&d.result).push(", ");
                sql.str(&d.policy_version).push(", ");
                sql.str(&d.request_id).push(")");
            }
            sql.push(" ON CONFLICT (tenant, id) DO NOTHING");
            sql.query()
                .persistent(true)
                .execute(&mut *tx)
                .await
                .map_err(db("recording decisions"))?;
        }
        tx.commit().await.map_err(db("committing decisions"))?;
        Ok(())
    }

    /// How many decisions are recorded.
    pub async fn decision_count(&self) -> Result<u64, AuditError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_decisions WHERE tenant = $1")
            .bind(self.tenant())
            .fetch_one(self.pool())
            .await
            .map_err(db("counting decisions"))?;
        Ok(n.max(0) as u64)
    }

    /// Recorded decisions, newest first, optionally of one user.
    pub async fn decisions(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DecisionEntry>, AuditError> {
        let mut sql = Sql::new(
            self.backend(),
            "SELECT id, ts_ms, kind, user_id, device, action, via, upstream, hour, factors, \
             inputs, result, policy_version, request_id FROM audit_decisions WHERE tenant = ",
        );
        sql.str(self.tenant());
        if let Some(u) = user {
            sql.push(" AND user_id = ");
            sql.str(u);
        }
        sql.push(" ORDER BY ts_ms DESC, id DESC LIMIT ");
        sql.int(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = sql
            .query()
            .fetch_all(self.pool())
            .await
            .map_err(db("reading decisions"))?;
        let e = db("reading decisions");
        rows.iter()
            .map(|r| {
                let list = |c: &str| -> Result<Vec<String>, AuditError> {
                    let text: String = r.try_get(c).map_err(&e)?;
                    serde_json::from_str(&text).map_err(|err| {
                        AuditError::Store(StoreError::CorruptRow {
                            table: "audit_decisions",
                            id: r.try_get::<String, _>("id").unwrap_or_default(),
                            column: if c == "upstream" {
                                "upstream"
                            } else {
                                "factors"
                            },
                            message: err.to_string(),
                        })
                    })
                };
                let hour: i64 = r.try_get("hour").map_err(&e)?;
                Ok(DecisionEntry {
                    id: r.try_get("id").map_err(&e)?,
                    ts_ms: r.try_get("ts_ms").map_err(&e)?,
                    kind: r.try_get("kind").map_err(&e)?,
                    user: r.try_get("user_id").map_err(&e)?,
                    device: r.try_get("device").map_err(&e)?,
                    action: r.try_get("action").map_err(&e)?,
                    via: r.try_get("via").map_err(&e)?,
                    upstream: list("upstream")?,
                    hour: u8::try_from(hour).unwrap_or(u8::MAX),
                    factors: list("factors")?,
                    inputs: r.try_get("inputs").map_err(&e)?,
                    result: r.try_get("result").map_err(&e)?,
                    policy_version: r.try_get("policy_version").map_err(&e)?,
                    request_id: r.try_get("request_id").map_err(&e)?,
                })
            })
            .collect()
    }
}

/// A seq as bound to SQL (seqs beyond i64 cannot be stored, so they match nothing).
fn seq_arg(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// The one field [`AuditStore::check_held_copies`] needs of a stored event, read
/// without parsing the rest (an altered body is `audit verify`'s to judge).
#[derive(serde::Deserialize)]
struct HashOnly {
    hash: String,
}

/// Rows per gateway, each sorted by seq with every seq once. A seq sent twice in one
/// call keeps its first copy (with a warning when the copies' bytes differ); two
/// copies with different hashes are two different events and refuse the call
/// ([`AuditError::ConflictInShipment`]), as a different stored copy would.
fn group_by_gateway(rows: Vec<Prepared>) -> Result<BTreeMap<String, Vec<Prepared>>, AuditError> {
    let mut by: BTreeMap<String, Vec<Prepared>> = BTreeMap::new();
    for r in rows {
        by.entry(r.gateway.clone()).or_default().push(r);
    }
    for rows in by.values_mut() {
        // Stable: the first copy of a seq stays first.
        rows.sort_by_key(|r| r.seq);
        let mut kept: Vec<Prepared> = Vec::with_capacity(rows.len());
        for r in rows.drain(..) {
            match kept.last() {
                Some(first) if first.seq == r.seq => {
                    if first.hash != r.hash {
                        return Err(AuditError::ConflictInShipment {
                            gateway: r.gateway,
                            seq: u64::try_from(r.seq).unwrap_or(0),
                        });
                    }
                    if first.json != r.json {
                        tracing::warn!(
                            gateway = %first.gateway,
                            seq = first.seq,
                            "audit event sent twice in one batch with the same hash but different content; the first copy is kept"
                        );
                    }
                }
                _ => kept.push(r),
            }
        }
        *rows = kept;
    }
    Ok(by)
}

/// One row of a chain walk.
struct ChainRow {
    seq: i64,
    ts_ms: i64,
    tier: String,
    device: String,
    user: String,
    operator: String,
    action: String,
    outcome: String,
    event: String,
}

/// Checks the next stored row of a chain.
fn check_row(state: &mut ChainState, row: ChainRow) -> Result<(), BrokenLink> {
    let expected = state.seq + 1;
    let seq = u64::try_from(row.seq).unwrap_or(0);
    let broken = |seq: u64, why: String| BrokenLink {
        gateway: state.gateway.clone(),
        seq,
        why,
    };
    if seq != expected {
        return Err(broken(
            expected,
            format!("missing: the next stored event is seq {seq} (deleted events?)"),
        ));
    }
    let event = AuditEvent::from_json(&row.event).map_err(|e| {
        broken(
            seq,
            format!("the stored event no longer parses (altered?): {e}"),
        )
    })?;
    if event.body.seq != seq {
        return Err(broken(
            seq,
            format!(
                "the row is stored as seq {seq} but its event says seq {} (altered?)",
                event.body.seq
            ),
        ));
    }
    let b = &event.body;
    let columns: [(&str, String, String); 7] = [
        ("ts_ms", row.ts_ms.to_string(), event.ts_ms().to_string()),
        ("tier", row.tier, b.tier.clone()),
        ("device", row.device, b.device.clone()),
        ("user_id", row.user, b.user.clone()),
        ("operator", row.operator, b.operator.clone()),
        ("action", row.action, b.action.clone()),
        ("outcome", row.outcome, b.outcome.name().to_string()),
    ];
    for (column, stored, said) in columns {
        if stored != said {
            return Err(broken(
                seq,
                format!("column {column} holds '{stored}' but the event says '{said}' (altered?)"),
            ));
        }
    }
    state.check_next(&event)
}

/// Every event of a filter in time order, a chunk at a time ([`AuditStore::pages`]).
/// Stable while events arrive: each chunk starts strictly after the previous one.
pub struct Pages {
    store: AuditStore,
    filter: Filter,
    after: Option<Cursor>,
    chunk: usize,
    done: bool,
}

impl Pages {
    async fn next_rows(&mut self) -> Result<Option<Vec<StoredRow>>, AuditError> {
        if self.done {
            return Ok(None);
        }
        let rows = self
            .store
            .fetch(&self.filter, self.after.as_ref(), false, self.chunk)
            .await?;
        if rows.len() < self.chunk {
            self.done = true;
        }
        match rows.last() {
            Some(last) => {
                self.after = Some(last.cursor());
                Ok(Some(rows))
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }

    /// The next chunk of events, or `None` when all have been read.
    pub async fn next(&mut self) -> Result<Option<Vec<AuditEvent>>, AuditError> {
        match self.next_rows().await? {
            Some(rows) => rows
                .into_iter()
                .map(StoredRow::parse)
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            None => Ok(None),
        }
    }

    /// The next chunk as the exact JSON lines stored (what `audit export` writes, so
    /// an exported file verifies byte for byte as the gateway wrote it).
    pub async fn next_lines(&mut self) -> Result<Option<Vec<String>>, AuditError> {
        Ok(self
            .next_rows()
            .await?
            .map(|rows| rows.into_iter().map(|r| r.event).collect()))
    }

    /// Where the listing stands (the last event returned).
    pub fn cursor(&self) -> Option<&Cursor> {
        self.after.as_ref()
    }
}

#[cfg(test)]
mod tests;
