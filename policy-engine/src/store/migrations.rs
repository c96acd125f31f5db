//! The embedded schema migrations and their tiny runner.
//!
//! One DDL text serves SQLite and PostgreSQL: only types both understand (`TEXT`,
//! `BIGINT`), composite primary keys that start with `tenant`, and `CHECK`s written in
//! the common subset. Applied migrations are recorded in a table per [`MigrationSet`].
//!
//! The whole run is one transaction. On PostgreSQL it first takes a transaction-level
//! advisory lock, so several processes opening the same database at once (replicas
//! starting together, parallel test binaries) migrate one after the other instead of
//! racing on `CREATE TABLE`. On SQLite the transaction starts with `BEGIN IMMEDIATE`,
//! which takes the single writer lock up front (waiting up to the busy timeout).

use sqlx::{Any, AnyPool};

use super::{Backend, StoreError};

/// One schema step. Versions are applied in order and never edited once released:
/// a change is a new migration.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub statements: &'static [&'static str],
    /// Data that would make a statement fail (a new unique index over rows that
    /// break it), looked for first so the refusal names those rows and says what
    /// to do, instead of quoting a constraint error.
    pub blockers: Option<Blockers>,
}

/// See [`Migration::blockers`].
pub struct Blockers {
    /// Returns one TEXT column, a description of each offending row; empty when
    /// the migration can run. Runs inside the migration's transaction.
    pub query: &'static str,
    /// What an operator does about the rows found.
    pub remedy: &'static str,
}

/// Rows named in a [`StoreError::MigrationBlocked`] at most: enough to start on,
/// short enough to read.
const BLOCKERS_SHOWN: usize = 20;

/// The migrations of one component, recorded in a table of its own, so components
/// that share a PostgreSQL database (engine, gateways) migrate independently.
pub struct MigrationSet {
    /// The table that records applied versions.
    pub table: &'static str,
    /// Advisory lock key that serialises concurrent migrations of this set.
    pub lock_key: i64,
    pub migrations: &'static [Migration],
}

/// The engine's schema ("sekisho" as ASCII for the lock key, fits in an i64).
pub(super) const ENGINE: MigrationSet = MigrationSet {
    table: "sekisho_migrations",
    lock_key: 0x0073_656b_6973_686f,
    migrations: MIGRATIONS,
};

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        blockers: None,
        name: "policy versions and entities",
        statements: &[
            // A published version: immutable once written.
            "CREATE TABLE policy_versions (
            tenant TEXT NOT NULL,
            version BIGINT NOT NULL CHECK (version >= 1),
            digest TEXT NOT NULL,
            schema_text TEXT NOT NULL,
            comment TEXT NOT NULL,
            created_at TEXT NOT NULL,
            policy_count BIGINT NOT NULL CHECK (policy_count >= 0),
            PRIMARY KEY (tenant, version)
        )",
            "CREATE TABLE policy_files (
            tenant TEXT NOT NULL,
            version BIGINT NOT NULL,
            name TEXT NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (tenant, version, name),
            FOREIGN KEY (tenant, version) REFERENCES policy_versions (tenant, version)
        )",
            // `enrolled` and `groups` are JSON arrays of strings.
            "CREATE TABLE users (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 256),
            department TEXT NOT NULL,
            role TEXT NOT NULL,
            enrolled TEXT NOT NULL,
            \"groups\" TEXT NOT NULL,
            PRIMARY KEY (tenant, id)
        )",
            // `parents` is a JSON array of group ids.
            "CREATE TABLE entity_groups (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 256),
            parents TEXT NOT NULL,
            PRIMARY KEY (tenant, id)
        )",
            // `capabilities` is a JSON array of capability names.
            "CREATE TABLE devices (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 256),
            tier TEXT NOT NULL,
            kind TEXT NOT NULL,
            capabilities TEXT NOT NULL,
            location TEXT NOT NULL,
            PRIMARY KEY (tenant, id)
        )",
        ],
    },
    Migration {
        version: 2,
        blockers: None,
        name: "entity generations",
        statements: &[
            // Bumped by every entity change, so replicas notice changes made elsewhere.
            "CREATE TABLE entity_generations (
            tenant TEXT NOT NULL PRIMARY KEY,
            generation BIGINT NOT NULL CHECK (generation >= 1)
        )",
        ],
    },
    Migration {
        version: 3,
        blockers: None,
        name: "audit store and decision log",
        statements: &[
            // Every gateway's journal, one row per event. `event` is the JSON line
            // exactly as the gateway hashed and shipped it (verification reads only
            // it); the other columns are copies of its fields for indexed queries,
            // and verification checks that they still agree with it.
            "CREATE TABLE audit_events (
            tenant TEXT NOT NULL,
            gateway TEXT NOT NULL,
            seq BIGINT NOT NULL CHECK (seq >= 1),
            ts_ms BIGINT NOT NULL,
            tier TEXT NOT NULL,
            device TEXT NOT NULL,
            user_id TEXT NOT NULL,
            operator TEXT NOT NULL,
            action TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('allow', 'deny', 'error')),
            event TEXT NOT NULL,
            received_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, gateway, seq)
        )",
            // Time order: unfiltered listings, time windows, tier/gateway filters.
            "CREATE INDEX audit_events_time ON audit_events (tenant, ts_ms, gateway, seq)",
            // `--user` (newest first or in a window), and the dormant-accounts report:
            // the distinct users are walked through this index, and each user's last
            // allowed logon is found by reading it backwards.
            "CREATE INDEX audit_events_user ON audit_events (tenant, user_id, ts_ms)",
            // `--device`, and the timeline of one terminal (who was at it when).
            "CREATE INDEX audit_events_device ON audit_events (tenant, device, ts_ms)",
            // `--action` with or without `--outcome` (lockouts, denied logons) in
            // time order, and the logon counts the terminal-usage report groups by
            // device and day. Outcome is left out of the key so `--action` alone is
            // still in time order; checking it per row costs little, as each action
            // is mostly one outcome.
            "CREATE INDEX audit_events_action ON audit_events (tenant, action, ts_ms)",
            // How far each gateway's journal is stored without a gap (what `Ship`
            // acknowledges), and how many events it has sent.
            "CREATE TABLE audit_gateways (
            tenant TEXT NOT NULL,
            gateway TEXT NOT NULL,
            stored_through BIGINT NOT NULL CHECK (stored_through >= 0),
            received BIGINT NOT NULL CHECK (received >= 0),
            last_received_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, gateway)
        )",
            // Every plan and authorization the engine answered (sampled), with its
            // inputs (factor names only: the engine never sees a secret) and result.
            // `upstream`, `factors` are JSON lists; `inputs` and `result` JSON objects.
            "CREATE TABLE audit_decisions (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL,
            ts_ms BIGINT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('plan', 'authorize')),
            user_id TEXT NOT NULL,
            device TEXT NOT NULL,
            action TEXT NOT NULL,
            via TEXT NOT NULL,
            upstream TEXT NOT NULL,
            hour BIGINT NOT NULL,
            factors TEXT NOT NULL,
            inputs TEXT NOT NULL,
            result TEXT NOT NULL,
            policy_version TEXT NOT NULL,
            request_id TEXT NOT NULL,
            PRIMARY KEY (tenant, id)
        )",
            "CREATE INDEX audit_decisions_time ON audit_decisions (tenant, ts_ms)",
            "CREATE INDEX audit_decisions_user ON audit_decisions (tenant, user_id, ts_ms)",
            "CREATE INDEX audit_decisions_request ON audit_decisions (tenant, request_id)",
        ],
    },
    Migration {
        version: 4,
        blockers: None,
        name: "directory sync",
        statements: &[
            // What the directory held at the last sync, per user: the sync's own mirror,
            // so a run can tell added, changed, disabled and removed apart. Users in
            // `users` without a row here are managed by hand (imports, the admin API)
            // and a sync never touches them. `record` is the mapped attributes as JSON.
            "CREATE TABLE directory_users (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL,
            dn TEXT NOT NULL,
            disabled BIGINT NOT NULL CHECK (disabled IN (0, 1)),
            record TEXT NOT NULL,
            PRIMARY KEY (tenant, id)
        )",
            // Groups the directory provides (`parents` a JSON list of group ids;
            // `changed` the group's change marker when last read).
            "CREATE TABLE directory_groups (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL,
            dn TEXT NOT NULL,
            parents TEXT NOT NULL,
            changed TEXT NOT NULL,
            PRIMARY KEY (tenant, id)
        )",
            // The incremental sync's high-water mark (uSNChanged or modifyTimestamp).
            "CREATE TABLE directory_state (
            tenant TEXT NOT NULL PRIMARY KEY,
            high_water TEXT NOT NULL
        )",
            // Every sync run, applied, refused or failed (`directory status`).
            "CREATE TABLE directory_runs (
            tenant TEXT NOT NULL,
            id BIGINT NOT NULL CHECK (id >= 1),
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            mode TEXT NOT NULL,
            run_trigger TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'failed', 'refused')),
            added BIGINT NOT NULL,
            changed BIGINT NOT NULL,
            disabled BIGINT NOT NULL,
            removed BIGINT NOT NULL,
            enabled BIGINT NOT NULL,
            error TEXT NOT NULL,
            elapsed_ms BIGINT NOT NULL,
            PRIMARY KEY (tenant, id)
        )",
            // Users whose access ended, in order: gateways follow this list (by `seq`)
            // and end the device sessions of each user on it.
            "CREATE TABLE revocations (
            tenant TEXT NOT NULL,
            seq BIGINT NOT NULL CHECK (seq >= 1),
            user_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            PRIMARY KEY (tenant, seq)
        )",
        ],
    },
    Migration {
        version: 5,
        blockers: None,
        name: "which gateway certificate ships each journal",
        statements: &[
            // The certificate name that first shipped each journal: only it may ship
            // that journal from then on (administrators importing a standalone
            // tier's journal are not bound).
            "CREATE TABLE audit_journal_owners (
            tenant TEXT NOT NULL,
            gateway TEXT NOT NULL,
            client TEXT NOT NULL,
            bound_at_ms BIGINT NOT NULL,
            PRIMARY KEY (tenant, gateway)
        )",
        ],
    },
];

/// Brings the database up to the newest embedded migration.
pub(super) async fn run(
    pool: &AnyPool,
    backend: Backend,
    set: &MigrationSet,
) -> Result<(), StoreError> {
    let failed = |version: i64, name: &'static str| {
        move |source: sqlx::Error| StoreError::Migration {
            version,
            name,
            source,
        }
    };
    let mut tx = pool
        .begin_with(backend.begin_write())
        .await
        .map_err(failed(0, "begin"))?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(set.lock_key)
            .execute(&mut *tx)
            .await
            .map_err(failed(0, "lock"))?;
    }
    let table = set.table;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            version BIGINT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL
        )"
    ))
    .execute(&mut *tx)
    .await
    .map_err(failed(0, "create the migrations table"))?;

    let applied: Option<i64> =
        sqlx::query_scalar::<Any, Option<i64>>(&format!("SELECT MAX(version) FROM {table}"))
            .fetch_one(&mut *tx)
            .await
            .map_err(failed(0, "read the migrations table"))?;
    let applied = applied.unwrap_or(0);
    let known = set.migrations.last().map_or(0, |m| m.version);
    if applied > known {
        return Err(StoreError::SchemaTooNew {
            found: applied,
            known,
        });
    }

    for m in set.migrations.iter().filter(|m| m.version > applied) {
        if let Some(b) = &m.blockers {
            let found: Vec<String> = sqlx::query_scalar::<Any, String>(b.query)
                .fetch_all(&mut *tx)
                .await
                .map_err(failed(m.version, m.name))?;
            if !found.is_empty() {
                return Err(StoreError::MigrationBlocked {
                    version: m.version,
                    name: m.name,
                    count: found.len(),
                    shown: found.into_iter().take(BLOCKERS_SHOWN).collect(),
                    remedy: b.remedy,
                });
            }
        }
        for stmt in m.statements {
            sqlx::query(stmt)
                .execute(&mut *tx)
                .await
                .map_err(failed(m.version, m.name))?;
        }
        sqlx::query(&format!(
            "INSERT INTO {table} (version, name, applied_at) VALUES ($1, $2, $3)"
        ))
        .bind(m.version)
        .bind(m.name)
        .bind(super::now_rfc3339())
        .execute(&mut *tx)
        .await
        .map_err(failed(m.version, m.name))?;
    }
    tx.commit().await.map_err(failed(known, "commit"))?;
    Ok(())
}
