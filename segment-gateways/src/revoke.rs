//! Ends the device sessions of users the engine deprovisioned (a leaver or a
//! disabled account found by directory sync), following `WatchRevocations`.
//!
//! The position (the last revocation applied) is kept in the gateway's store, so a
//! gateway that was down or cut off from the engine catches up on every revocation it
//! missed when it reconnects. Each ended session is journaled (`session_revoke`).
//! On failure it retries after 100 ms, doubling to 30 s.

use std::sync::Arc;

use sekisho_policy_engine::audit::Outcome;
use sekisho_policy_engine::store::StoreError;
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::policy_decision_client::PolicyDecisionClient;
use sqlx::Row;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::db::{db_err, Db};
use crate::forward::{MAX_BACKOFF, MIN_BACKOFF};
use crate::logon::Gateway;
use crate::session;

const CURSOR: &str = "revocations_applied";

/// The running follower of one gateway.
pub struct RevocationFollower {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    applied: watch::Receiver<u64>,
}

impl RevocationFollower {
    pub fn spawn(gateway: Arc<Gateway>, channel: Channel) -> RevocationFollower {
        let (stop, stopped) = oneshot::channel();
        let (applied_tx, applied) = watch::channel(0);
        let task = tokio::spawn(run(
            gateway,
            PolicyDecisionClient::new(channel),
            applied_tx,
            stopped,
        ));
        RevocationFollower {
            stop: Some(stop),
            task,
            applied,
        }
    }

    /// The last revocation seq applied (tests wait on it; 0 before the first).
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "revocation follower ended abnormally");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the policy engine refused or did not answer: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("journaling a revoked session failed: {0}")]
    Journal(#[from] crate::journal::JournalError),
}

async fn run(
    gateway: Arc<Gateway>,
    mut client: PolicyDecisionClient<Channel>,
    applied: watch::Sender<u64>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = MIN_BACKOFF;
    // Whether the last failure was logged and nothing has worked since: an outage is
    // logged once, and again after the stream had come back.
    let mut failing = false;
    loop {
        let attempt = follow(&gateway, &mut client, &applied, &mut failing);
        tokio::select! {
            _ = &mut stop => return,
            r = attempt => {
                if let Err(e) = r {
                    if !failing {
                        tracing::warn!(error = %e, "cannot follow the engine's revocations; retrying");
                        failing = true;
                    }
                } else {
                    backoff = MIN_BACKOFF; // the stream ended cleanly (engine restart)
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow(
    gateway: &Gateway,
    client: &mut PolicyDecisionClient<Channel>,
    applied: &watch::Sender<u64>,
    failing: &mut bool,
) -> Result<(), FollowError> {
    let db = gateway.store.db();
    let after = cursor(db).await?;
    applied.send_if_modified(|a| {
        let moved = *a != after;
        *a = after;
        moved
    });
    let mut stream = client
        .watch_revocations(pb::WatchRevocationsRequest { after })
        .await?
        .into_inner();
    if std::mem::take(failing) {
        tracing::info!("following the engine's revocations again");
    }
    while let Some(r) = stream.message().await? {
        apply(gateway, &r).await?;
        set_cursor(db, r.seq).await?;
        applied.send_replace(r.seq);
    }
    Ok(())
}

/// Journals, then ends, each of the user's sessions on this tier. Journaled first:
/// a failure in between leaves the sessions open and the revocation unapplied, so
/// the next attempt journals them again (twice in the trail) rather than ending
/// them with no trace.
async fn apply(gateway: &Gateway, r: &pb::Revocation) -> Result<(), FollowError> {
    let now = chrono::Utc::now().timestamp_millis();
    let db = gateway.store.db();
    let ended = session::open_of(db, &r.user).await?;
    for s in &ended {
        let mut e = gateway.event("session_revoke", Outcome::Allow);
        e.device.clone_from(&s.device);
        e.user.clone_from(&s.user);
        e.operator.clone_from(&s.operator);
        e.session.clone_from(&s.id);
        e.reason.clone_from(&r.reason);
        e.detail.insert("revocation".into(), r.seq.to_string());
        gateway.record(e).await?;
    }
    let ids: Vec<&str> = ended.iter().map(|s| s.id.as_str()).collect();
    session::end(db, &ids, "revoked", now).await?;
    tracing::info!(user = %r.user, reason = %r.reason, sessions = ended.len(), seq = r.seq, "revocation applied");
    Ok(())
}

async fn cursor(db: &Db) -> Result<u64, StoreError> {
    let row =
        sqlx::query("SELECT value FROM gw_meta WHERE tenant = $1 AND tier = $2 AND name = $3")
            .bind(&*db.tenant)
            .bind(db.tier.name())
            .bind(CURSOR)
            .fetch_optional(&db.pool)
            .await
            .map_err(db_err("reading the revocation position"))?;
    let Some(row) = row else { return Ok(0) };
    let value: String = row
        .try_get(0)
        .map_err(db_err("reading the revocation position"))?;
    value.parse().map_err(|_| StoreError::CorruptRow {
        table: "gw_meta",
        id: CURSOR.into(),
        column: "value",
        message: format!("{value:?} is not a number"),
    })
}

async fn set_cursor(db: &Db, seq: u64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO gw_meta (tenant, tier, name, value) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, tier, name) DO UPDATE SET value = excluded.value",
    )
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(CURSOR)
    .bind(seq.to_string())
    .execute(&db.pool)
    .await
    .map_err(db_err("storing the revocation position"))?;
    Ok(())
}
