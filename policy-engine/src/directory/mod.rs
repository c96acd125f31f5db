//! Directory sync: users, groups, departments and disabled accounts from the city's
//! Active Directory or OpenLDAP into the engine's entities, so that a personnel
//! transfer or a leaver is handled in the directory alone.
//!
//! A run reads the directory ([`fetch`]), compares it with what the last run saw
//! ([`diff`]) and applies the difference in one transaction together with the
//! revocations it implies, the audit events that record them and the run record.
//! A read that fails changes nothing (the last good data stays), and a run that would
//! remove more than `max_removal_share` of the active users waits for `--force`.

pub mod config;
pub mod diff;
pub mod fetch;
pub mod schedule;

use std::time::Instant;

use tokio::sync::Mutex;

pub use config::{DirectoryConfig, DirectoryConfigError, Profile, Resolved};
use diff::{Change, ChangeKind};
pub use fetch::FetchError;

use crate::audit::event::{EventBody, Outcome};
use crate::entities::{Directory, EntityError};
use crate::grpc::EngineState;
use crate::store::directory::{SyncBasis, SyncRunRecord, DIRECTORY_JOURNAL};
use crate::store::{now_rfc3339, StoreError};

/// How a run was asked for.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Compute and report the changes; write nothing.
    pub dry_run: bool,
    /// Apply even past the mass-removal guard.
    pub force: bool,
    /// Read every entry even when an incremental read is possible.
    pub full: bool,
    /// `admin:NAME`, `schedule`: recorded with the run and as the audit operator.
    pub trigger: String,
}

/// What a run did (or, for a dry run or a refused one, would do).
#[derive(Debug, Clone, Default)]
pub struct SyncSummary {
    pub mode: &'static str,
    pub dry_run: bool,
    pub applied: bool,
    pub changes: Vec<Change>,
    pub unchanged: usize,
    pub groups_added: usize,
    pub groups_changed: usize,
    pub groups_removed: usize,
    pub directory_users: usize,
    /// Why the mass-removal guard stopped the run.
    pub refused: Option<String>,
    pub run_id: u64,
    pub elapsed_ms: u64,
    /// The entity generation after the change, when entities changed.
    pub generation: Option<u64>,
    /// Entries without the user or group id attribute, by DN.
    pub skipped: Vec<String>,
}

impl SyncSummary {
    pub fn count(&self, kind: ChangeKind) -> usize {
        self.changes.iter().filter(|c| c.kind == kind).count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the engine has no [directory] section in its configuration")]
    NotConfigured,
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the directory's data does not fit the entities: {0}")]
    Entities(#[from] EntityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("catching up with entity changes made through another engine replica failed: {0}")]
    CatchUp(String),
}

/// Times a run is planned again when another engine replica's sync or entity change
/// landed while it read the directory.
const REPLANS_AFTER_ANOTHER_REPLICA: usize = 2;

/// The configured directory and the lock that keeps runs from overlapping.
pub struct DirectorySync {
    pub config: Resolved,
    running: Mutex<()>,
}

impl DirectorySync {
    pub fn new(config: Resolved) -> Self {
        DirectorySync {
            config,
            running: Mutex::new(()),
        }
    }

    /// One run. Errors are also recorded in the run log (unless a dry run), so
    /// `directory status` shows them.
    pub async fn run(
        &self,
        state: &EngineState,
        opts: &SyncOptions,
    ) -> Result<SyncSummary, SyncError> {
        let _running = self.running.lock().await;
        let started_at = now_rfc3339();
        let t0 = Instant::now();
        let mut record = SyncRunRecord {
            started_at: started_at.clone(),
            trigger: opts.trigger.clone(),
            mode: "full".into(),
            ..Default::default()
        };
        let mut result = self.run_inner(state, opts, &mut record).await;
        // Replicas scheduled at the same time race; the loser plans again on top of
        // the winner's run (usually finding nothing left to change).
        for _ in 0..REPLANS_AFTER_ANOTHER_REPLICA {
            match &result {
                Err(SyncError::Store(
                    e @ (StoreError::DirectoryMoved { .. } | StoreError::EntitiesMoved { .. }),
                )) => {
                    tracing::info!(reason = %e, trigger = %opts.trigger, "directory sync planned again");
                    result = self.run_inner(state, opts, &mut record).await;
                }
                _ => break,
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, trigger = %opts.trigger, "directory sync failed; the last good data stays");
            if !opts.dry_run {
                record.outcome = "failed".into();
                record.error = e.to_string();
                record.finished_at = now_rfc3339();
                record.elapsed_ms = t0.elapsed().as_millis() as u64;
                if let Err(store_error) = state.store.record_directory_run(&record).await {
                    tracing::error!(error = %store_error, "could not record the failed directory sync");
                }
            }
        }
        result.map(|mut s| {
            s.elapsed_ms = t0.elapsed().as_millis() as u64;
            s
        })
    }

    async fn run_inner(
        &self,
        state: &EngineState,
        opts: &SyncOptions,
        record: &mut SyncRunRecord,
    ) -> Result<SyncSummary, SyncError> {
        let t0 = Instant::now();
        let mirror = state.store.directory_mirror().await?;
        let since = if opts.full || mirror.users.is_empty() {
            None
        } else {
            state
                .store
                .directory_high_water()
                .await?
                .map(|high_water| fetch::Since {
                    high_water,
                    groups: mirror
                        .groups
                        .values()
                        .map(|g| (g.id.clone(), g.changed.clone()))
                        .collect(),
                })
        };
        let snapshot = fetch::read(&self.config, since.as_ref()).await?;
        let mode = if snapshot.full { "full" } else { "incremental" };
        record.mode = mode.into();
        // Plan against the newest entities: another replica may have changed them.
        state.refresh_entities().await.map_err(SyncError::CatchUp)?;
        let _admin = state.admin_lock().await;
        let based_on = state.entity_generation();
        let current = state.engine.with_directory(Directory::clone);
        let plan = diff::plan(&snapshot, &mirror, &current);
        let mut next = current;
        next.apply(plan.batch.clone(), plan.del.clone())?;

        let mut summary = SyncSummary {
            mode,
            dry_run: opts.dry_run,
            changes: plan.changes.clone(),
            unchanged: plan.unchanged,
            groups_added: plan.groups_added,
            groups_changed: plan.groups_changed,
            groups_removed: plan.groups_removed,
            directory_users: plan.directory_users,
            skipped: snapshot.skipped.clone(),
            ..Default::default()
        };
        record.added = plan.count(ChangeKind::Added) as u64;
        record.changed = plan.count(ChangeKind::Changed) as u64;
        record.disabled = plan.count(ChangeKind::Disabled) as u64;
        record.removed = plan.count(ChangeKind::Removed) as u64;
        record.enabled = plan.count(ChangeKind::Enabled) as u64;
        if opts.dry_run {
            return Ok(summary);
        }
        let share = plan.removal_share();
        if share > self.config.max_removal_share && !opts.force {
            let why = format!(
                "this run would disable or remove {} of {} active users ({:.1} %), more than \
                 directory.max_removal_share ({:.1} %); nothing was changed. Check the \
                 directory and its filters, then run `sekisho directory sync --force` if \
                 this is intended",
                record.disabled + record.removed,
                plan.active_before,
                share * 100.0,
                self.config.max_removal_share * 100.0
            );
            tracing::warn!(share, "directory sync refused by the mass-removal guard");
            record.outcome = "refused".into();
            record.error = why.clone();
            record.finished_at = now_rfc3339();
            record.elapsed_ms = t0.elapsed().as_millis() as u64;
            summary.run_id = state.store.record_directory_run(record).await?;
            summary.refused = Some(why);
            return Ok(summary);
        }

        let events = plan
            .changes
            .iter()
            .filter_map(|c| {
                let reason = c.kind.revocation_reason()?;
                let mut body = EventBody::new(DIRECTORY_JOURNAL, "", "deprovision", Outcome::Allow);
                body.user.clone_from(&c.user);
                body.operator.clone_from(&opts.trigger);
                body.reason = reason.into();
                body.detail.insert("change".into(), c.kind.name().into());
                Some(body)
            })
            .collect();
        record.outcome = "ok".into();
        record.finished_at = now_rfc3339();
        record.elapsed_ms = t0.elapsed().as_millis() as u64;
        let (run_id, generation, last_revocation) = state
            .store
            .commit_directory_sync(
                &plan,
                snapshot.high_water.as_deref(),
                record,
                events,
                SyncBasis {
                    entities: based_on,
                    mirror: mirror.as_of_run,
                },
            )
            .await?;
        if let Some(generation) = generation {
            state.install_directory(next, generation);
        }
        state.revocations_advanced(last_revocation);
        tracing::info!(
            run_id,
            mode,
            added = record.added,
            changed = record.changed,
            disabled = record.disabled,
            removed = record.removed,
            enabled = record.enabled,
            unchanged = plan.unchanged,
            "directory sync applied"
        );
        summary.applied = true;
        summary.run_id = run_id;
        summary.generation = generation;
        Ok(summary)
    }
}
