//! The policy engine's persistent store: published policy versions and the directory
//! (users, groups, devices), per tenant.
//!
//! One code path serves SQLite (the default: a single file, zero setup) and PostgreSQL
//! (replicated deployments), through sqlx's `Any` driver. The SQL is the common subset:
//! `$1, $2…` placeholders, `TEXT`/`BIGINT` columns, `INSERT … ON CONFLICT … DO UPDATE`.
//! Lists are stored as JSON text; timestamps as RFC 3339 UTC text.
//!
//! Every table starts its primary key with `tenant`, so one deployment can hold many
//! municipalities; a [`Store`] is bound to one tenant and never sees another's rows.
//!
//! Writes are single transactions that take the writer lock up front (`BEGIN IMMEDIATE`
//! on SQLite, a per-tenant advisory lock for publishes on PostgreSQL), so concurrent
//! publishes are serialised rather than failing, and a failed write changes nothing.
//! The store checks only what a database can check (ids, duplicates in one batch);
//! references between entities (a user's groups exist, no cycles) are the job of
//! [`crate::entities::Directory::apply`], which callers run before persisting.

pub mod directory;
mod held;
mod migrations;

pub use held::{Held, HeldConnection};
pub use migrations::{Blockers, Migration, MigrationSet};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::error::ErrorKind;
use sqlx::{Any, AnyPool, Connection, Executor, Row, Transaction};

use crate::entities::{DeviceRecord, EntityBatch, EntityDeletion, GroupRecord, UserRecord};
use crate::factor::{Capabilities, FactorSet};
use crate::model::{DeviceKind, Tier};
use crate::policies::{PolicyFile, PolicySources};

/// Upper bound on bind parameters in one statement. SQLite's default limit is 32,766
/// and PostgreSQL's is 65,535; staying under both keeps one code path.
pub(crate) const MAX_BINDS: usize = 30_000;

/// `rows` in chunks whose lengths are powers of two no larger than `max`, largest
/// first. A multi-row INSERT built per chunk then comes in only a few texts, each
/// prepared once per connection and reused; a statement sized to every batch would
/// be parsed anew each time, and for rows of a dozen columns that parse cost more
/// than storing them.
pub fn pow2_chunks<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let n = rest.len().min(max.max(1));
        if n == 0 {
            return None;
        }
        let (chunk, tail) = rest.split_at(1 << n.ilog2());
        rest = tail;
        Some(chunk)
    })
}

/// How long a SQLite writer waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 15_000;

/// What went wrong in the store. Every variant names what it is about; none carries a
/// password (URLs are shown with the password replaced by `***`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL '{url}': expected sqlite://PATH (a SQLite file) or postgres://USER@HOST[:PORT]/DATABASE")]
    UnsupportedUrl { url: String },
    #[error("cannot create SQLite database '{path}': directory '{dir}' does not exist")]
    MissingDirectory { path: String, dir: String },
    #[error("cannot connect to database '{url}': {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error("database migration {version} ({name}) cannot run, and nothing was changed: {count} row(s) stand in its way: {}{}. {remedy}", shown.join("; "), if *count > shown.len() { "; …" } else { "" })]
    MigrationBlocked {
        version: i64,
        name: &'static str,
        count: usize,
        shown: Vec<String>,
        remedy: &'static str,
    },
    #[error("database schema is at migration {found}, but this build only knows up to {known}: upgrade sekisho before using this database")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("invalid tenant '{tenant}': {why}")]
    InvalidTenant { tenant: String, why: &'static str },
    #[error("corrupt row in table '{table}', id '{id}', column '{column}': {message}")]
    CorruptRow {
        table: &'static str,
        id: String,
        column: &'static str,
        message: String,
    },
    #[error("publish conflict: version {version} of tenant '{tenant}' was taken by a concurrent publish; nothing was stored, retry")]
    Conflict { tenant: String, version: u64 },
    /// The change was checked against the entities as of generation `expected`,
    /// but another engine replica changed them since: stored as it is, it could
    /// refer to a group or device that no longer exists.
    #[error("the entities changed through another engine replica (now generation {found}; this change was checked against {expected}); nothing was stored, retry")]
    EntitiesMoved { expected: u64, found: u64 },
    /// A directory sync read the mirror as of applied run `expected`, but another
    /// engine replica applied run `found` since.
    #[error("the directory was synced through another engine replica while this run read it (applied run {found}; this run planned against run {expected}); nothing was changed, run the sync again")]
    DirectoryMoved { expected: u64, found: u64 },
    #[error("'{id}' appears more than once for table '{table}' in one write; nothing was stored")]
    Duplicate { table: &'static str, id: String },
    #[error("the database rejected a row for table '{table}' (nothing was stored): {message}")]
    Rejected {
        table: &'static str,
        message: String,
    },
    #[error("database error while {context}: {source}")]
    Database {
        context: &'static str,
        source: sqlx::Error,
    },
}

/// One published policy version, without its sources.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    pub version: u64,
    /// [`PolicySources::digest`] of the stored sources.
    pub digest: String,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T09:15:00.123Z`.
    pub created_at: String,
    pub comment: String,
    pub policy_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Starts a write transaction. On SQLite, `IMMEDIATE` takes the writer lock now
    /// (waiting up to the busy timeout) instead of failing later on lock upgrade.
    pub fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    /// Starts a read transaction that sees one snapshot for all its statements.
    pub(crate) fn begin_snapshot(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }

    /// Appends bind placeholder number `n` (1-based) for the generated bulk
    /// statements, whose binds are always in placeholder order. Hand-written queries use
    /// `$n`, which both databases accept. SQLite looks named and numbered parameters
    /// (`$n`, `?n`) up in a linear list, both when preparing and when binding, which
    /// makes a statement with thousands of them quadratic (18 s instead of about a
    /// second for 100,000 users); anonymous `?` parameters avoid that.
    pub(crate) fn push_placeholder(self, sql: &mut String, n: usize) {
        match self {
            Backend::Sqlite => sql.push('?'),
            Backend::Postgres => {
                use std::fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(sql, "${n}");
            }
        }
    }
}

/// A handle on the store for one tenant. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    tenant: Arc<str>,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.name())
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// A bind value for the bulk statement builder.
enum Val<'a> {
    Str(&'a str),
    Owned(String),
    Int(i64),
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Opens (creating if needed) the store at `url` for `tenant` and brings its schema
    /// up to date (see [`connect`] for the URLs).
    pub async fn open(url: &str, tenant: &str) -> Result<Store, StoreError> {
        check_tenant(tenant)?;
        let (pool, backend) = connect(url, &migrations::ENGINE).await?;
        Ok(Store {
            pool,
            tenant: Arc::from(tenant),
            backend,
        })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// The connection pool, for other parts of the store (audit) that share it.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn kind(&self) -> Backend {
        self.backend
    }

    /// The audit store of the same database and tenant (shares the pool).
    pub fn audit(&self) -> crate::audit::AuditStore {
        crate::audit::AuditStore::from_store(self.clone())
    }

    /// Closes the pool's connections (waits for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // -----------------------------------------------------------------------------
    // Policy versions

    /// Atomically stores a new immutable version numbered latest+1 (1 for the first)
    /// with its schema and files. Concurrent publishes are serialised; if a version
    /// number is still taken by a writer that bypassed the lock, the publish is retried
    /// and, failing that, refused with [`StoreError::Conflict`]. Never half-written.
    pub async fn publish(
        &self,
        sources: &PolicySources,
        comment: &str,
        policy_count: u32,
    ) -> Result<VersionInfo, StoreError> {
        let mut names = HashSet::new();
        for f in &sources.files {
            if !names.insert(f.name.as_str()) {
                return Err(StoreError::Duplicate {
                    table: "policy_files",
                    id: f.name.clone(),
                });
            }
        }
        let digest = sources.digest();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .try_publish(sources, &digest, comment, policy_count)
                .await
            {
                Err(StoreError::Conflict { .. }) if attempt < 3 => continue,
                other => return other,
            }
        }
    }

    async fn try_publish(
        &self,
        sources: &PolicySources,
        digest: &str,
        comment: &str,
        policy_count: u32,
    ) -> Result<VersionInfo, StoreError> {
        let db = |context| move |source| StoreError::Database { context, source };
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock_key("publish", &self.tenant))
                .execute(&mut *tx)
                .await
                .map_err(db("taking the publish lock"))?;
        }
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM policy_versions WHERE tenant = $1")
                .bind(&*self.tenant)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("reading the latest policy version"))?;
        let latest = latest.unwrap_or(0);
        let version = latest
            .checked_add(1)
            .ok_or_else(|| StoreError::CorruptRow {
                table: "policy_versions",
                id: latest.to_string(),
                column: "version",
                message: "version number overflows".into(),
            })?;
        let created_at = now_rfc3339();
        let inserted = sqlx::query(
            "INSERT INTO policy_versions (tenant, version, digest, schema_text, comment, created_at, policy_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&*self.tenant)
        .bind(version)
        .bind(digest)
        .bind(sources.schema.as_str())
        .bind(comment)
        .bind(created_at.as_str())
        .bind(i64::from(policy_count))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_kind(&e, ErrorKind::UniqueViolation) => {
                return Err(StoreError::Conflict {
                    tenant: self.tenant.to_string(),
                    version: version as u64,
                })
            }
            Err(e) => return Err(write_error("policy_versions", "storing the policy version")(e)),
        }
        let rows: Vec<Vec<Val>> = sources
            .files
            .iter()
            .map(|f| vec![Val::Str(&f.name), Val::Str(&f.text)])
            .collect();
        let fixed = [Val::Str(&self.tenant), Val::Int(version)];
        self.insert_rows(
            &mut tx,
            "policy_files",
            "INSERT INTO policy_files (tenant, version, name, text) VALUES ",
            "",
            &fixed,
            2,
            &rows,
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("committing the policy version"))?;
        Ok(VersionInfo {
            version: version as u64,
            digest: digest.to_string(),
            created_at,
            comment: comment.to_string(),
            policy_count,
        })
    }

    /// The newest version, or `None` before the first publish.
    pub async fn latest_version(&self) -> Result<Option<VersionInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT version, digest, comment, created_at, policy_count FROM policy_versions
             WHERE tenant = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(&*self.tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::Database {
            context: "reading the latest policy version",
            source,
        })?;
        row.as_ref().map(version_info).transpose()
    }

    /// Every version, newest first.
    pub async fn list_versions(&self) -> Result<Vec<VersionInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, digest, comment, created_at, policy_count FROM policy_versions
             WHERE tenant = $1 ORDER BY version DESC",
        )
        .bind(&*self.tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Database {
            context: "listing policy versions",
            source,
        })?;
        rows.iter().map(version_info).collect()
    }

    /// A version with its sources: the given number, or the latest for `None`.
    /// `None` when there is no such version.
    pub async fn get_version(
        &self,
        version: Option<u64>,
    ) -> Result<Option<(VersionInfo, PolicySources)>, StoreError> {
        let db = |context| move |source| StoreError::Database { context, source };
        let row = match version {
            Some(v) => {
                let Ok(v) = i64::try_from(v) else { return Ok(None) };
                sqlx::query(
                    "SELECT version, digest, comment, created_at, policy_count, schema_text FROM policy_versions
                     WHERE tenant = $1 AND version = $2",
                )
                .bind(&*self.tenant)
                .bind(v)
                .fetch_optional(&self.pool)
                .await
            }
            None => {
                sqlx::query(
                    "SELECT version, digest, comment, created_at, policy_count, schema_text FROM policy_versions
                     WHERE tenant = $1 ORDER BY version DESC LIMIT 1",
                )
                .bind(&*self.tenant)
                .fetch_optional(&self.pool)
                .await
            }
        }
        .map_err(db("reading a policy version"))?;
        let Some(row) = row else { return Ok(None) };
        let info = version_info(&row)?;
        let id = info.version.to_string();
        let schema = get_text(&row, "policy_versions", &id, "schema_text")?;
        // A version's rows are written in one transaction and never changed, so a second
        // statement outside a transaction sees all of its files.
        let file_rows =
            sqlx::query("SELECT name, text FROM policy_files WHERE tenant = $1 AND version = $2")
                .bind(&*self.tenant)
                .bind(info.version as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading policy files"))?;
        let mut files = Vec::with_capacity(file_rows.len());
        for r in &file_rows {
            let name = get_text(r, "policy_files", &id, "name")?;
            let text = get_text(r, "policy_files", &format!("{id}/{name}"), "text")?;
            files.push(PolicyFile { name, text });
        }
        let sources = PolicySources::new(schema, files);
        let digest = sources.digest();
        if digest != info.digest {
            return Err(StoreError::CorruptRow {
                table: "policy_versions",
                id,
                column: "digest",
                message: format!(
                    "stored digest {} does not match the stored sources ({digest})",
                    info.digest
                ),
            });
        }
        Ok(Some((info, sources)))
    }

    // -----------------------------------------------------------------------------
    // Entities

    /// Every user, group and device of the tenant (each list sorted by id), read in one
    /// snapshot with one query per table.
    pub async fn load_entities(&self) -> Result<EntityBatch, StoreError> {
        let db = |context| move |source| StoreError::Database { context, source };
        let mut tx = self
            .pool
            .begin_with(self.backend.begin_snapshot())
            .await
            .map_err(db("starting a read transaction"))?;
        let user_rows = sqlx::query(
            "SELECT id, department, role, enrolled, \"groups\" FROM users WHERE tenant = $1",
        )
        .bind(&*self.tenant)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("loading users"))?;
        let group_rows = sqlx::query("SELECT id, parents FROM entity_groups WHERE tenant = $1")
            .bind(&*self.tenant)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("loading groups"))?;
        let device_rows = sqlx::query(
            "SELECT id, tier, kind, capabilities, location FROM devices WHERE tenant = $1",
        )
        .bind(&*self.tenant)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("loading devices"))?;
        tx.commit()
            .await
            .map_err(db("ending the read transaction"))?;

        let mut batch = EntityBatch {
            users: Vec::with_capacity(user_rows.len()),
            groups: Vec::with_capacity(group_rows.len()),
            devices: Vec::with_capacity(device_rows.len()),
        };
        for r in &user_rows {
            const T: &str = "users";
            let id = get_id(r, T)?;
            let enrolled = get_list(r, T, &id, "enrolled")?;
            let enrolled = FactorSet::parse_names(&enrolled)
                .map_err(|e| corrupt(T, &id, "enrolled", e.to_string()))?;
            batch.users.push(UserRecord {
                department: get_text(r, T, &id, "department")?,
                role: get_text(r, T, &id, "role")?,
                enrolled,
                groups: get_list(r, T, &id, "groups")?,
                id,
            });
        }
        for r in &group_rows {
            const T: &str = "entity_groups";
            let id = get_id(r, T)?;
            batch.groups.push(GroupRecord {
                parents: get_list(r, T, &id, "parents")?,
                id,
            });
        }
        for r in &device_rows {
            const T: &str = "devices";
            let id = get_id(r, T)?;
            let tier: Tier = get_text(r, T, &id, "tier")?
                .parse()
                .map_err(|e: crate::model::UnknownName| corrupt(T, &id, "tier", e.to_string()))?;
            let kind: DeviceKind = get_text(r, T, &id, "kind")?
                .parse()
                .map_err(|e: crate::model::UnknownName| corrupt(T, &id, "kind", e.to_string()))?;
            let caps = get_list(r, T, &id, "capabilities")?;
            let capabilities = Capabilities::parse_names(&caps)
                .map_err(|e| corrupt(T, &id, "capabilities", e.to_string()))?;
            batch.devices.push(DeviceRecord {
                tier,
                kind,
                capabilities,
                location: get_text(r, T, &id, "location")?,
                id,
            });
        }
        // Sorted here rather than by ORDER BY: PostgreSQL would sort by its collation,
        // SQLite by bytes.
        batch.users.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        batch.groups.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        batch.devices.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(batch)
    }

    /// Deletes, then upserts, in one transaction: all of it or none of it. Deleting an
    /// id that does not exist is not an error; deleting and upserting the same id in one
    /// call leaves the upserted record. An id twice in one list is refused.
    ///
    /// Returns the tenant's new entity generation (see [`Store::entity_generation`]).
    pub async fn apply_entities(
        &self,
        batch: &EntityBatch,
        del: &EntityDeletion,
    ) -> Result<u64, StoreError> {
        self.apply_entities_checked(batch, del, None).await
    }

    /// [`Store::apply_entities`] for a change checked against the entities as of
    /// generation `based_on`: refused with [`StoreError::EntitiesMoved`] when the
    /// store has moved past it (another replica changed them meanwhile).
    pub async fn apply_entities_on(
        &self,
        batch: &EntityBatch,
        del: &EntityDeletion,
        based_on: u64,
    ) -> Result<u64, StoreError> {
        self.apply_entities_checked(batch, del, Some(based_on))
            .await
    }

    async fn apply_entities_checked(
        &self,
        batch: &EntityBatch,
        del: &EntityDeletion,
        based_on: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let generation = self.write_entities(&mut tx, batch, del, based_on).await?;
        tx.commit().await.map_err(|source| StoreError::Database {
            context: "committing entity changes",
            source,
        })?;
        Ok(generation)
    }

    /// Makes the caller's write transaction the only one changing this tenant's
    /// entities or directory runs until it ends. SQLite's `BEGIN IMMEDIATE` already
    /// is; on PostgreSQL two replicas would otherwise read the same generation or
    /// `MAX(seq)` and build on it side by side.
    pub(crate) async fn lock_entities(
        &self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock_key("entities", &self.tenant))
                .execute(&mut **tx)
                .await
                .map_err(|source| StoreError::Database {
                    context: "taking the entities lock",
                    source,
                })?;
        }
        Ok(())
    }

    /// [`Store::apply_entities`] inside the caller's transaction, so a change can be
    /// committed together with what it implies (a directory sync's mirror,
    /// revocations and audit events). Returns the new entity generation.
    pub(crate) async fn write_entities(
        &self,
        tx: &mut Transaction<'static, Any>,
        batch: &EntityBatch,
        del: &EntityDeletion,
        based_on: Option<u64>,
    ) -> Result<u64, StoreError> {
        check_unique("users", batch.users.iter().map(|u| u.id.as_str()))?;
        check_unique("entity_groups", batch.groups.iter().map(|g| g.id.as_str()))?;
        check_unique("devices", batch.devices.iter().map(|d| d.id.as_str()))?;
        self.lock_entities(tx).await?;
        if let Some(expected) = based_on {
            let found = self.entity_generation_in(&mut **tx).await?;
            if found != expected {
                return Err(StoreError::EntitiesMoved { expected, found });
            }
        }

        let users: Vec<Vec<Val>> = batch
            .users
            .iter()
            .map(|u| {
                vec![
                    Val::Str(&u.id),
                    Val::Str(&u.department),
                    Val::Str(&u.role),
                    Val::Owned(json_list(&u.enrolled.names())),
                    Val::Owned(json_list(&u.groups)),
                ]
            })
            .collect();
        let groups: Vec<Vec<Val>> = batch
            .groups
            .iter()
            .map(|g| vec![Val::Str(&g.id), Val::Owned(json_list(&g.parents))])
            .collect();
        let devices: Vec<Vec<Val>> = batch
            .devices
            .iter()
            .map(|d| {
                vec![
                    Val::Str(&d.id),
                    Val::Str(d.tier.name()),
                    Val::Str(d.kind.name()),
                    Val::Owned(json_list(&d.capabilities.names())),
                    Val::Str(&d.location),
                ]
            })
            .collect();

        self.delete_ids(tx, "users", &del.users).await?;
        self.delete_ids(tx, "entity_groups", &del.groups).await?;
        self.delete_ids(tx, "devices", &del.devices).await?;
        let fixed = [Val::Str(&self.tenant)];
        self.insert_rows(
            tx,
            "entity_groups",
            "INSERT INTO entity_groups (tenant, id, parents) VALUES ",
            " ON CONFLICT (tenant, id) DO UPDATE SET parents = excluded.parents",
            &fixed,
            2,
            &groups,
        )
        .await?;
        self.insert_rows(
            tx,
            "users",
            "INSERT INTO users (tenant, id, department, role, enrolled, \"groups\") VALUES ",
            " ON CONFLICT (tenant, id) DO UPDATE SET department = excluded.department, role = excluded.role, \
             enrolled = excluded.enrolled, \"groups\" = excluded.\"groups\"",
            &fixed,
            5,
            &users,
        )
        .await?;
        self.insert_rows(
            tx,
            "devices",
            "INSERT INTO devices (tenant, id, tier, kind, capabilities, location) VALUES ",
            " ON CONFLICT (tenant, id) DO UPDATE SET tier = excluded.tier, kind = excluded.kind, \
             capabilities = excluded.capabilities, location = excluded.location",
            &fixed,
            5,
            &devices,
        )
        .await?;
        let generation: i64 = sqlx::query(
            "INSERT INTO entity_generations (tenant, generation) VALUES ($1, 1)
             ON CONFLICT (tenant) DO UPDATE SET generation = entity_generations.generation + 1
             RETURNING generation",
        )
        .bind(&*self.tenant)
        .fetch_one(&mut **tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|source| StoreError::Database {
            context: "bumping the entity generation",
            source,
        })?;
        Ok(generation as u64)
    }

    /// A counter the store bumps with every entity change (0 before the first). An
    /// engine replica that sees it move reloads its directory.
    pub async fn entity_generation(&self) -> Result<u64, StoreError> {
        self.entity_generation_in(&self.pool).await
    }

    async fn entity_generation_in<'e>(
        &self,
        executor: impl sqlx::Executor<'e, Database = Any>,
    ) -> Result<u64, StoreError> {
        let generation: Option<i64> =
            sqlx::query("SELECT generation FROM entity_generations WHERE tenant = $1")
                .bind(&*self.tenant)
                .fetch_optional(executor)
                .await
                .and_then(|row| row.map(|r| r.try_get(0)).transpose())
                .map_err(|source| StoreError::Database {
                    context: "reading the entity generation",
                    source,
                })?;
        Ok(generation.map_or(0, |g| g as u64))
    }

    // -----------------------------------------------------------------------------
    // Helpers

    async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        self.pool
            .begin_with(self.backend.begin_write())
            .await
            .map_err(|source| StoreError::Database {
                context: "starting a write transaction",
                source,
            })
    }

    /// Runs `head VALUES (…), (…) tail` in chunks of at most [`MAX_BINDS`] binds.
    /// Each row's tuple is the `fixed` values (e.g. the tenant) followed by its own
    /// `cols` values; placeholders are numbered in bind order.
    #[allow(clippy::too_many_arguments)]
    async fn insert_rows(
        &self,
        tx: &mut Transaction<'static, Any>,
        table: &'static str,
        head: &str,
        tail: &str,
        fixed: &[Val<'_>],
        cols: usize,
        rows: &[Vec<Val<'_>>],
    ) -> Result<(), StoreError> {
        let width = fixed.len() + cols;
        let per_chunk = (MAX_BINDS / width).max(1);
        for chunk in rows.chunks(per_chunk) {
            let mut sql = String::with_capacity(head.len() + tail.len() + chunk.len() * width * 8);
            sql.push_str(head);
            let mut n = 0;
            for (i, row) in chunk.iter().enumerate() {
                debug_assert_eq!(row.len(), cols);
                sql.push_str(if i == 0 { "(" } else { ", (" });
                for c in 0..width {
                    n += 1;
                    if c > 0 {
                        sql.push_str(", ");
                    }
                    self.backend.push_placeholder(&mut sql, n);
                }
                sql.push(')');
            }
            sql.push_str(tail);
            let mut q = sqlx::query(&sql).persistent(false);
            for row in chunk {
                for v in fixed.iter().chain(row) {
                    q = match v {
                        Val::Str(s) => q.bind(*s),
                        Val::Owned(s) => q.bind(s.as_str()),
                        Val::Int(i) => q.bind(*i),
                    };
                }
            }
            q.execute(&mut **tx)
                .await
                .map_err(write_error(table, "writing rows"))?;
        }
        Ok(())
    }

    async fn delete_ids(
        &self,
        tx: &mut Transaction<'static, Any>,
        table: &'static str,
        ids: &[String],
    ) -> Result<(), StoreError> {
        for chunk in ids.chunks(MAX_BINDS - 1) {
            let mut sql = format!("DELETE FROM {table} WHERE tenant = ");
            self.backend.push_placeholder(&mut sql, 1);
            sql.push_str(" AND id IN (");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                self.backend.push_placeholder(&mut sql, i + 2);
            }
            sql.push(')');
            let mut q = sqlx::query(&sql).persistent(false).bind(&*self.tenant);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            q.execute(&mut **tx)
                .await
                .map_err(write_error(table, "deleting rows"))?;
        }
        Ok(())
    }
}

/// JSON text of a list of strings. Serialising strings cannot fail; the fallback only
/// keeps that unreachable case from panicking.
fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    let v: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".to_string())
}

fn is_kind(e: &sqlx::Error, kind: ErrorKind) -> bool {
    e.as_database_error().is_some_and(|d| d.kind() == kind)
}

/// Constraint violations become [`StoreError::Rejected`] naming the table; anything
/// else is a database error.
fn write_error(table: &'static str, context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match e.as_database_error() {
        Some(d) if !matches!(d.kind(), ErrorKind::Other) => StoreError::Rejected {
            table,
            message: d.message().to_string(),
        },
        _ => StoreError::Database { context, source: e },
    }
}

fn check_unique<'a>(
    table: &'static str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(StoreError::Duplicate {
                table,
                id: id.to_string(),
            });
        }
    }
    Ok(())
}

/// Opens (creating if needed) the database at `url` and brings the schema of `set`
/// up to date: the shared start of the engine's store and a gateway's.
///
/// - `sqlite://path/to/file.db` (relative to the working directory) or
///   `sqlite:///abs/path.db`: the file is created when missing, but its directory
///   must exist. WAL journal, foreign keys on, 15 s busy timeout.
/// - `sqlite::memory:`: a private in-memory database on a single connection (tests).
/// - `postgres://…` or `postgresql://…`.
pub async fn connect(url: &str, set: &MigrationSet) -> Result<(AnyPool, Backend), StoreError> {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);

    let target = parse_url(url)?;
    let opts = match target.backend {
        Backend::Sqlite => {
            // A connection to a local file does not go stale between uses, so the
            // ping before each acquire (a round trip to its worker thread) checks
            // nothing; a failing connection still fails its own query.
            let base = AnyPoolOptions::new()
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(60))
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str(),
                        )
                        .await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        // A multi-row INSERT inside a transaction keeps a statement
                        // journal, which SQLite spills past 64 KiB to a file it
                        // creates, writes and deletes in /var/tmp: several files and
                        // hundreds of writes a second while the engine ingests shipped
                        // journals. It is as large as one statement, so memory holds it.
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                        // Switching to WAL needs an exclusive lock that the busy
                        // timeout does not wait for; the mode is stored in the file,
                        // so only switch when it is not WAL yet.
                        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                            .fetch_one(&mut *conn)
                            .await?;
                        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory")
                        {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                        }
                        Ok(())
                    })
                });
            if target.memory {
                // Every new connection would be a new, empty database: keep exactly one.
                base.max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
            } else {
                // A `BEGIN` that sqlx ran and acknowledged, whose caller was dropped
                // before it held the transaction (a client hanging up mid-request),
                // leaves the connection inside a transaction that nothing will end;
                // pooled again, every later `begin_with` on it fails ("non-zero
                // transaction depth"). Such a connection is closed instead. (A
                // transaction dropped the usual way may still count here, its
                // rollback queued but not yet run: closing that one costs a reconnect.)
                base.max_connections(4).after_release(|conn, _meta| {
                    Box::pin(async move { Ok(!conn.is_in_transaction()) })
                })
            }
        }
        Backend::Postgres => AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30)),
    };
    let connect_error = |source| StoreError::Connect {
        url: redact_url(url),
        source,
    };
    if target.backend == Backend::Postgres {
        // The pool retries refused connections until its acquire timeout; one plain
        // connection first makes an unreachable or misconfigured server fail at once.
        let probe = sqlx::AnyConnection::connect(&target.connect_url)
            .await
            .map_err(connect_error)?;
        let _ = probe.close().await;
    }
    let pool = opts
        .connect(&target.connect_url)
        .await
        .map_err(connect_error)?;
    if let Err(e) = migrations::run(&pool, target.backend, set).await {
        pool.close().await;
        return Err(e);
    }
    Ok((pool, target.backend))
}

pub fn check_tenant(tenant: &str) -> Result<(), StoreError> {
    let why = if tenant.is_empty() {
        "empty"
    } else if tenant.len() > 256 {
        "longer than 256 bytes"
    } else if tenant.chars().any(char::is_control) {
        "contains a control character"
    } else if tenant.trim() != tenant {
        "has leading or trailing white space"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidTenant {
        tenant: tenant.to_string(),
        why,
    })
}

/// A stable advisory-lock key per purpose and tenant.
pub(crate) fn lock_key(purpose: &str, tenant: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(b"sekisho.");
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(tenant.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

fn corrupt(table: &'static str, id: &str, column: &'static str, message: String) -> StoreError {
    StoreError::CorruptRow {
        table,
        id: id.to_string(),
        column,
        message,
    }
}

fn get_id(row: &AnyRow, table: &'static str) -> Result<String, StoreError> {
    row.try_get::<String, _>("id")
        .map_err(|e| corrupt(table, "?", "id", e.to_string()))
}

fn get_text(
    row: &AnyRow,
    table: &'static str,
    id: &str,
    column: &'static str,
) -> Result<String, StoreError> {
    row.try_get::<String, _>(column)
        .map_err(|e| corrupt(table, id, column, e.to_string()))
}

fn get_list(
    row: &AnyRow,
    table: &'static str,
    id: &str,
    column: &'static str,
) -> Result<Vec<String>, StoreError> {
    let text = get_text(row, table, id, column)?;
    serde_json::from_str(&text).map_err(|e| {
        corrupt(
            table,
            id,
            column,
            format!("not a JSON list of strings: {e}"),
        )
    })
}

fn version_info(row: &AnyRow) -> Result<VersionInfo, StoreError> {
    const T: &str = "policy_versions";
    let version: i64 = row
        .try_get("version")
        .map_err(|e| corrupt(T, "?", "version", e.to_string()))?;
    let id = version.to_string();
    let version = u64::try_from(version)
        .map_err(|_| corrupt(T, &id, "version", "negative version".into()))?;
    let count: i64 = row
        .try_get("policy_count")
        .map_err(|e| corrupt(T, &id, "policy_count", e.to_string()))?;
    let policy_count = u32::try_from(count)
        .map_err(|_| corrupt(T, &id, "policy_count", format!("{count} is out of range")))?;
    Ok(VersionInfo {
        version,
        digest: get_text(row, T, &id, "digest")?,
        created_at: get_text(row, T, &id, "created_at")?,
        comment: get_text(row, T, &id, "comment")?,
        policy_count,
    })
}

struct Target {
    backend: Backend,
    connect_url: String,
    memory: bool,
}

fn parse_url(url: &str) -> Result<Target, StoreError> {
    let unsupported = || StoreError::UnsupportedUrl {
        url: redact_url(url),
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target {
            backend: Backend::Postgres,
            connect_url: url.to_string(),
            memory: false,
        });
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(unsupported());
    };
    if rest == ":memory:" {
        return Ok(Target {
            backend: Backend::Sqlite,
            connect_url: "sqlite::memory:".into(),
            memory: true,
        });
    }
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path.starts_with(":memory:") {
        return Err(unsupported());
    }
    let path = percent_decode(path).ok_or_else(unsupported)?;
    let mut path = PathBuf::from(path);
    if path.is_relative() {
        let cwd = std::env::current_dir().map_err(|_| unsupported())?;
        path = cwd.join(path);
    }
    if let Some(dir) = path.parent() {
        if !dir.is_dir() {
            return Err(StoreError::MissingDirectory {
                path: path.display().to_string(),
                dir: dir.display().to_string(),
            });
        }
    }
    let mut query = query.unwrap_or("").to_string();
    if !query.split('&').any(|p| p.starts_with("mode=")) {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("mode=rwc");
    }
    Ok(Target {
        backend: Backend::Sqlite,
        connect_url: format!("sqlite://{}?{query}", percent_encode_path(&path)),
        memory: false,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' | '"' | '#' | '%' | '<' | '>' | '?' | '`' | '{' | '}' | '\\' | '^' | '|' | '['
            | ']' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The URL with any password replaced by `***` (in `user:password@` and in a
/// `password=` query parameter), for error messages and logs.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        let auth_end = out[start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..auth_end].rfind('@') {
            let at = start + at;
            if let Some(colon) = out[start..at].find(':') {
                out.replace_range(start + colon + 1..at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
}

/// What the store tests share: the PostgreSQL the test script provides, and
/// tenants no other test (or earlier run) uses.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) enum Kind {
        Sqlite,
        Postgres,
    }

    /// One test's database: a temporary SQLite file, or a tenant of its own on the
    /// test PostgreSQL (so tests and test processes run in parallel).
    pub(crate) struct Fx {
        pub(crate) kind: Kind,
        pub(crate) url: String,
        pub(crate) tenant: String,
        _dir: Option<tempfile::TempDir>,
    }

    impl Fx {
        pub(crate) fn new(kind: Kind, name: &str) -> Fx {
            let (url, dir) = match kind {
                Kind::Sqlite => {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let url = format!("sqlite://{}", dir.path().join("store.db").display());
                    (url, Some(dir))
                }
                Kind::Postgres => (pg_url(), None),
            };
            Fx {
                kind,
                url,
                tenant: unique_tenant(name),
                _dir: dir,
            }
        }

        /// The opened store, or a panic that says how to provide the database.
        pub(crate) fn opened<T, E: std::fmt::Display>(&self, result: Result<T, E>) -> T {
            match result {
                Ok(s) => s,
                Err(e) if self.kind == Kind::Postgres => panic!(
                    "PostgreSQL test database unreachable or unusable at '{}' ({e}). \
                     These tests need PostgreSQL: start it, create the database \
                     (psql -h 127.0.0.1 -U postgres -c 'create database sekisho_test') \
                     or point SEKISHO_TEST_PG_URL at one.",
                    super::redact_url(&self.url)
                ),
                Err(e) => panic!("cannot open SQLite store at {}: {e}", self.url),
            }
        }
    }

    pub(crate) fn pg_url() -> String {
        std::env::var("SEKISHO_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sekisho_test".to_string())
    }

    pub(crate) fn unique_tenant(name: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "test-{name}-{}-{nanos:x}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Test cases once per backend: `NAME` in a module's `sqlite` and `postgres`
/// submodules, each calling `NAME(Fx::new(Kind::…, "NAME"))` of the calling module.
#[cfg(test)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fx::new(super::Kind::Sqlite, stringify!($name))).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fx::new(super::Kind::Postgres, stringify!($name))).await
                }
            )*
        }
    };
}
#[cfg(test)]
pub(crate) use on_both_backends;

#[cfg(test)]
mod tests;
