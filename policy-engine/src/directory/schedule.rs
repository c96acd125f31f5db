//! When the engine syncs on its own: a full read nightly at `sync_at` (local time,
//! when the directory is quiet), incremental reads every `incremental_minutes` in
//! between, and a retry `retry_secs` after a failed run.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Days, Local, NaiveTime, TimeZone};

use super::{DirectorySync, SyncOptions};
use crate::grpc::EngineState;

/// The next run after `now`: its time and whether it is the nightly full one.
pub fn next_run(
    now: DateTime<Local>,
    sync_at: Option<(u32, u32)>,
    incremental_every: Option<Duration>,
) -> Option<(DateTime<Local>, bool)> {
    let nightly = sync_at.and_then(|(h, m)| {
        let time = NaiveTime::from_hms_opt(h, m, 0)?;
        let today = now.date_naive().and_time(time);
        let at = Local.from_local_datetime(&today).earliest()?;
        if at > now {
            Some(at)
        } else {
            let tomorrow = now
                .date_naive()
                .checked_add_days(Days::new(1))?
                .and_time(time);
            Local.from_local_datetime(&tomorrow).earliest()
        }
    });
    let incremental = incremental_every
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| now + d);
    match (nightly, incremental) {
        (Some(n), Some(i)) if i < n => Some((i, false)),
        (Some(n), _) => Some((n, true)),
        (None, Some(i)) => Some((i, false)),
        (None, None) => None,
    }
}

/// Runs the schedule until the task is aborted (engine shutdown).
pub async fn run(state: Arc<EngineState>, sync: Arc<DirectorySync>) {
    let cfg = &sync.config;
    let mut retry_full: Option<bool> = None;
    loop {
        let now = Local::now();
        let (at, full) = match retry_full.take() {
            Some(full) => (
                now + chrono::Duration::from_std(cfg.retry).unwrap_or_default(),
                full,
            ),
            None => match next_run(now, cfg.sync_at, cfg.incremental_every) {
                Some(next) => next,
                None => return,
            },
        };
        state.set_next_sync(Some(at.to_rfc3339()));
        let wait = (at - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let opts = SyncOptions {
            full,
            trigger: "schedule".into(),
            ..Default::default()
        };
        if sync.run(&state, &opts).await.is_err() {
            // The error is logged and in the run log; try the same kind again soon.
            retry_full = Some(full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32) -> DateTime<Local> {
        Local
            .with_ymd_and_hms(2026, 11, 23, h, m, 0)
            .earliest()
            .unwrap()
    }

    #[test]
    fn nightly_and_incremental() {
        let (next, full) = next_run(at(1, 0), Some((2, 0)), None).unwrap();
        assert_eq!((next, full), (at(2, 0), true));
        let (next, full) = next_run(at(3, 0), Some((2, 0)), None).unwrap();
        assert_eq!(next - at(2, 0), chrono::Duration::days(1));
        assert!(full);
        let every = Some(Duration::from_secs(15 * 60));
        assert_eq!(
            next_run(at(10, 0), Some((2, 0)), every),
            Some((at(10, 15), false))
        );
        assert_eq!(
            next_run(at(1, 50), Some((2, 0)), every),
            Some((at(2, 0), true))
        );
        assert_eq!(next_run(at(1, 0), None, None), None);
    }
}
