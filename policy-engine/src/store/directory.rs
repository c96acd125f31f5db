//! The directory sync's tables: its mirror of the directory, the run log and the
//! revocation list gateways follow. A sync's entity change, mirror update,
//! revocations, audit events and run record are one transaction.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{get_id, get_list, get_text, Store, StoreError, Val};
use crate::audit::event::EventBody;
use crate::directory::diff::{Mapped, Mirror, MirrorGroup, MirrorUser, SyncPlan};

/// The journal name the engine's own audit events are stored under.
pub const DIRECTORY_JOURNAL: &str = "engine-directory";

/// One sync run as the run log keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncRunRecord {
    /// Assigned when stored.
    pub id: u64,
    pub started_at: String,
    pub finished_at: String,
    /// `full` or `incremental`.
    pub mode: String,
    /// `schedule`, `admin` (the CLI / admin API), `startup`.
    pub trigger: String,
    /// `ok`, `failed` or `refused`.
    pub outcome: String,
    pub added: u64,
    pub changed: u64,
    pub disabled: u64,
    pub removed: u64,
    pub enabled: u64,
    pub error: String,
    pub elapsed_ms: u64,
}

/// A user whose access ended, as gateways receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub seq: u64,
    pub user: String,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryCounts {
    pub active_users: u64,
    pub disabled_users: u64,
    pub groups: u64,
    pub high_water: Option<String>,
}

fn db(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

/// What a sync's plan was made against. Two engine replicas (or a scheduled and a
/// manual run on two of them) can sync at once; a run that read the mirror before
/// the other's commit would otherwise apply its diff again from a stale picture:
/// revoke twice, or add back a user the other run had just disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncBasis {
    /// The entity generation the plan was checked against.
    pub entities: u64,
    /// [`Mirror::as_of_run`] of the mirror the plan was diffed against.
    pub mirror: u64,
}

impl Store {
    /// What the last sync saw, and as of which applied run ([`Mirror::as_of_run`]).
    pub async fn directory_mirror(&self) -> Result<Mirror, StoreError> {
        // Read before the rows: a run applied in between makes the mark older than
        // the rows, which refuses this run's commit (safe), never the reverse.
        let as_of_run = self.last_applied_run(&self.pool).await?;
        const T: &str = "directory_users";
        let rows =
            sqlx::query("SELECT id, dn, disabled, record FROM directory_users WHERE tenant = $1")
                .bind(&*self.tenant)
                .fetch_all(&self.pool)
                .await
                .map_err(db("loading the directory mirror"))?;
        let mut mirror = Mirror {
            as_of_run,
            ..Mirror::default()
        };
        for r in &rows {
            let id = get_id(r, T)?;
            let record: Mapped = serde_json::from_str(&get_text(r, T, &id, "record")?)
                .map_err(|e| super::corrupt(T, &id, "record", e.to_string()))?;
            let disabled: i64 = r
                .try_get("disabled")
                .map_err(|e| super::corrupt(T, &id, "disabled", e.to_string()))?;
            mirror.users.insert(
                id.clone(),
                MirrorUser {
                    dn: get_text(r, T, &id, "dn")?,
                    disabled: disabled != 0,
                    record,
                    id,
                },
            );
        }
        const G: &str = "directory_groups";
        let rows =
            sqlx::query("SELECT id, dn, parents, changed FROM directory_groups WHERE tenant = $1")
                .bind(&*self.tenant)
                .fetch_all(&self.pool)
                .await
                .map_err(db("loading the directory mirror"))?;
        for r in &rows {
            let id = get_id(r, G)?;
            mirror.groups.insert(
                id.clone(),
                MirrorGroup {
                    dn: get_text(r, G, &id, "dn")?,
                    parents: get_list(r, G, &id, "parents")?,
                    changed: get_text(r, G, &id, "changed")?,
                    id,
                },
            );
        }
        Ok(mirror)
    }

    /// Where the next incremental read starts (`None` before the first sync).
    pub async fn directory_high_water(&self) -> Result<Option<String>, StoreError> {
        sqlx::query("SELECT high_water FROM directory_state WHERE tenant = $1")
            .bind(&*self.tenant)
            .fetch_optional(&self.pool)
            .await
            .and_then(|r| r.map(|r| r.try_get::<String, _>(0)).transpose())
            .map_err(db("reading the directory high-water mark"))
    }

    /// Applies a planned sync: entities, mirror, high-water mark, revocations, the
    /// engine's audit events and the run record, all or nothing. Returns the run id,
    /// the new entity generation when entities changed, and the last revocation seq.
    /// `basis` is what the plan was made against: a plan made before another
    /// replica's sync landed is refused with [`StoreError::DirectoryMoved`], one
    /// that changes entities after another entity change with
    /// [`StoreError::EntitiesMoved`] (it would disable, revoke or add again what
    /// that change already did, from a stale picture).
    pub async fn commit_directory_sync(
        &self,
        plan: &SyncPlan,
        high_water: Option<&str>,
        run: &SyncRunRecord,
        events: Vec<EventBody>,
        basis: SyncBasis,
    ) -> Result<(u64, Option<u64>, u64), StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_entities(&mut tx).await?;
        let applied = self.last_applied_run(&mut *tx).await?;
        if applied != basis.mirror {
            return Err(StoreError::DirectoryMoved {
                expected: basis.mirror,
                found: applied,
            });
        }
        let generation = if plan.changes_entities() {
            Some(
                self.write_entities(&mut tx, &plan.batch, &plan.del, Some(basis.entities))
                    .await?,
            )
        } else {
            None
        };
        self.delete_ids(&mut tx, "directory_users", &plan.mirror_deletes)
            .await?;
        let users: Vec<Vec<Val>> = plan
            .mirror_upserts
            .iter()
            .map(|u| {
                vec![
                    Val::Str(&u.id),
                    Val::Str(&u.dn),
                    Val::Int(i64::from(u.disabled)),
                    Val::Owned(serde_json::to_string(&u.record).unwrap_or_default()),
                ]
            })
            .collect();
        let fixed = [Val::Str(&self.tenant)];
        self.insert_rows(
            &mut tx,
            "directory_users",
            "INSERT INTO directory_users (tenant, id, dn, disabled, record) VALUES ",
            " ON CONFLICT (tenant, id) DO UPDATE SET dn = excluded.dn, \
             disabled = excluded.disabled, record = excluded.record",
            &fixed,
            4,
            &users,
        )
        .await?;
        sqlx::query("DELETE FROM directory_groups WHERE tenant = $1")
            .bind(&*self.tenant)
            .execute(&mut *tx)
            .await
            .map_err(db("replacing the directory's groups"))?;
        let groups: Vec<Vec<Val>> = plan
            .groups
            .iter()
            .map(|g| {
                vec![
                    Val::Str(&g.id),
                    Val::Str(&g.dn),
                    Val::Owned(super::json_list(&g.parents)),
                    Val::Str(&g.changed),
                ]
            })
            .collect();
        self.insert_rows(
            &mut tx,
            "directory_groups",
            "INSERT INTO directory_groups (tenant, id, dn, parents, changed) VALUES ",
            "",
            &fixed,
            4,
            &groups,
        )
        .await?;
        if let Some(hw) = high_water {
            sqlx::query(
                "INSERT INTO directory_state (tenant, high_water) VALUES ($1, $2)
                 ON CONFLICT (tenant) DO UPDATE SET high_water = excluded.high_water",
            )
            .bind(&*self.tenant)
            .bind(hw)
            .execute(&mut *tx)
            .await
            .map_err(db("storing the directory high-water mark"))?;
        }
        let mut last_revocation = max_revocation_seq(&self.tenant, &mut *tx).await?;
        let at_ms = chrono::Utc::now().timestamp_millis();
        for (user, reason) in plan.revocations() {
            last_revocation += 1;
            sqlx::query(
                "INSERT INTO revocations (tenant, seq, user_id, reason, at_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&*self.tenant)
            .bind(last_revocation as i64)
            .bind(user)
            .bind(reason)
            .bind(at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db("recording a revocation"))?;
        }
        self.audit()
            .append_own_in(&mut tx, DIRECTORY_JOURNAL, events)
            .await
            .map_err(|e| StoreError::Rejected {
                table: "audit_events",
                message: e.to_string(),
            })?;
        let id = self.insert_run(&mut tx, run).await?;
        tx.commit()
            .await
            .map_err(db("committing the directory sync"))?;
        Ok((id, generation, last_revocation))
    }

    /// The id of the last run that applied a plan (outcome `ok`), 0 before any.
    async fn last_applied_run<'c, E>(&self, conn: E) -> Result<u64, StoreError>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(id) FROM directory_runs WHERE tenant = $1 AND outcome = 'ok'",
        )
        .bind(&*self.tenant)
        .fetch_one(conn)
        .await
        .map_err(db("reading the last applied directory run"))?;
        Ok(id.map_or(0, |id| id as u64))
    }

    /// Records a run that changed nothing (failed or refused).
    pub async fn record_directory_run(&self, run: &SyncRunRecord) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_entities(&mut tx).await?;
        let id = self.insert_run(&mut tx, run).await?;
        tx.commit()
            .await
            .map_err(db("committing the directory run record"))?;
        Ok(id)
    }

    async fn insert_run(
        &self,
        tx: &mut Transaction<'static, Any>,
        run: &SyncRunRecord,
    ) -> Result<u64, StoreError> {
        let id: i64 = sqlx::query_scalar::<Any, Option<i64>>(
            "SELECT MAX(id) FROM directory_runs WHERE tenant = $1",
        )
        .bind(&*self.tenant)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("numbering the directory run"))?
        .unwrap_or(0)
            + 1;
        sqlx::query(
            "INSERT INTO directory_runs (tenant, id, started_at, finished_at, mode, run_trigger,
             outcome, added, changed, disabled, removed, enabled, error, elapsed_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&*self.tenant)
        .bind(id)
        .bind(&run.started_at)
        .bind(&run.finished_at)
        .bind(&run.mode)
        .bind(&run.trigger)
        .bind(&run.outcome)
        .bind(run.added as i64)
        .bind(run.changed as i64)
        .bind(run.disabled as i64)
        .bind(run.removed as i64)
        .bind(run.enabled as i64)
        .bind(&run.error)
        .bind(run.elapsed_ms as i64)
        .execute(&mut **tx)
        .await
        .map_err(db("recording the directory run"))?;
        Ok(id as u64)
    }

    /// The most recent runs, newest first.
    pub async fn directory_runs(&self, limit: u32) -> Result<Vec<SyncRunRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, started_at, finished_at, mode, run_trigger, outcome, added, changed,
             disabled, removed, enabled, error, elapsed_ms
             FROM directory_runs WHERE tenant = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(&*self.tenant)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the directory runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    pub async fn directory_counts(&self) -> Result<DirectoryCounts, StoreError> {
        let row = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM directory_users WHERE tenant = $1 AND disabled = 0),
               (SELECT COUNT(*) FROM directory_users WHERE tenant = $1 AND disabled = 1),
               (SELECT COUNT(*) FROM directory_groups WHERE tenant = $1)",
        )
        .bind(&*self.tenant)
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting the directory mirror"))?;
        let n = |i: usize| -> Result<u64, StoreError> {
            row.try_get::<i64, _>(i)
                .map(|v| v as u64)
                .map_err(db("counting the directory mirror"))
        };
        Ok(DirectoryCounts {
            active_users: n(0)?,
            disabled_users: n(1)?,
            groups: n(2)?,
            high_water: self.directory_high_water().await?,
        })
    }

    /// Revocations after `after`, oldest first, at most `limit`.
    pub async fn revocations_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, user_id, reason, at_ms FROM revocations
             WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(&*self.tenant)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading revocations"))?;
        rows.iter()
            .map(|r| {
                let get = |e: sqlx::Error| super::corrupt("revocations", "?", "row", e.to_string());
                Ok(Revocation {
                    seq: r.try_get::<i64, _>(0).map_err(get)? as u64,
                    user: r.try_get(1).map_err(get)?,
                    reason: r.try_get(2).map_err(get)?,
                    at_ms: r.try_get(3).map_err(get)?,
                })
            })
            .collect()
    }

    /// The newest revocation's seq (0 when there is none).
    pub async fn last_revocation(&self) -> Result<u64, StoreError> {
        max_revocation_seq(&self.tenant, &self.pool).await
    }
}

async fn max_revocation_seq<'e>(
    tenant: &str,
    executor: impl sqlx::Executor<'e, Database = Any>,
) -> Result<u64, StoreError> {
    let n: Option<i64> = sqlx::query_scalar::<Any, Option<i64>>(
        "SELECT MAX(seq) FROM revocations WHERE tenant = $1",
    )
    .bind(tenant)
    .fetch_one(executor)
    .await
    .map_err(db("reading the last revocation"))?;
    Ok(n.unwrap_or(0) as u64)
}

fn run_from_row(r: &AnyRow) -> Result<SyncRunRecord, StoreError> {
    let bad = |e: sqlx::Error| super::corrupt("directory_runs", "?", "row", e.to_string());
    let n = |i: usize| -> Result<u64, StoreError> {
        r.try_get::<i64, _>(i).map(|v| v as u64).map_err(bad)
    };
    let s = |i: usize| -> Result<String, StoreError> { r.try_get::<String, _>(i).map_err(bad) };
    Ok(SyncRunRecord {
        id: n(0)?,
        started_at: s(1)?,
        finished_at: s(2)?,
        mode: s(3)?,
        trigger: s(4)?,
        outcome: s(5)?,
        added: n(6)?,
        changed: n(7)?,
        disabled: n(8)?,
        removed: n(9)?,
        enabled: n(10)?,
        error: s(11)?,
        elapsed_ms: n(12)?,
    })
}
