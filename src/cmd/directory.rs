//! `sekisho directory sync|status`: directory sync runs in the engine (which holds the
//! directory's configuration and service account); these commands ask it through the
//! admin API and print what it did.

use anyhow::{Context, Result};
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::policy_admin_client::PolicyAdminClient;

use crate::client::EngineArgs;
use crate::report::print_table;
use crate::Outcome;

pub async fn sync(
    dry_run: bool,
    force: bool,
    full: bool,
    verbose: bool,
    engine: &EngineArgs,
) -> Result<Outcome> {
    let mut client = PolicyAdminClient::new(engine.connect().await?);
    eprintln!(
        "reading the directory{}…",
        if dry_run {
            " (dry run: nothing will change)"
        } else {
            ""
        }
    );
    let r = client
        .sync_directory(pb::SyncDirectoryRequest {
            dry_run,
            force,
            full,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .context("directory sync failed; the engine keeps the last good data")?
        .into_inner();
    let mut out = std::io::stdout().lock();
    if dry_run || verbose {
        let rows: Vec<Vec<String>> = r
            .changes
            .iter()
            .map(|c| vec![c.change.clone(), c.user.clone(), c.detail.clone()])
            .collect();
        if !rows.is_empty() {
            print_table(&mut out, &["change", "user", "detail"], &rows)?;
        }
    }
    let verb = if r.applied { "" } else { "would be " };
    println!(
        "{} sync: {} added, {} changed, {} enabled, {} disabled, {} removed, {} unchanged {verb}\
         ({} in the directory); groups: {} added, {} changed, {} removed",
        r.mode,
        r.added,
        r.changed,
        r.enabled,
        r.disabled,
        r.removed,
        r.unchanged,
        r.directory_users,
        r.groups_added,
        r.groups_changed,
        r.groups_removed
    );
    if !r.refused.is_empty() {
        eprintln!("refused (run {}): {}", r.run_id, r.refused);
        return Ok(Outcome::No);
    }
    if r.applied {
        eprintln!(
            "applied as run {} in {} ms; sessions of {} user(s) are being ended at the gateways",
            r.run_id,
            r.elapsed_ms,
            r.disabled + r.removed
        );
    } else {
        eprintln!("dry run: nothing was changed");
    }
    Ok(Outcome::Ok)
}

pub async fn status(runs: u32, engine: &EngineArgs) -> Result<Outcome> {
    let mut client = PolicyAdminClient::new(engine.connect().await?);
    let s = client
        .directory_status(pb::DirectoryStatusRequest { limit: runs })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if !s.configured {
        println!(
            "no directory configured (add a [directory] section to the engine's configuration)"
        );
    } else {
        println!("directory: {} ({})", s.url, s.profile);
    }
    println!(
        "from the directory: {} active users, {} disabled, {} groups",
        s.active_users, s.disabled_users, s.groups
    );
    if !s.high_water.is_empty() {
        println!("changes read up to: {}", s.high_water);
    }
    if !s.next_run.is_empty() {
        println!("next scheduled run: {}", s.next_run);
    }
    if s.runs.is_empty() {
        println!("no sync has run yet");
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = s
        .runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.started_at.clone(),
                r.trigger.clone(),
                r.mode.clone(),
                r.outcome.clone(),
                format!(
                    "+{} ~{} ↑{} ↓{} -{}",
                    r.added, r.changed, r.enabled, r.disabled, r.removed
                ),
                format!("{} ms", r.elapsed_ms),
                r.error.clone(),
            ]
        })
        .collect();
    let mut out = std::io::stdout().lock();
    println!("(changes: +added ~changed ↑enabled ↓disabled -removed)");
    print_table(
        &mut out,
        &[
            "run", "started", "by", "mode", "outcome", "changes", "took", "error",
        ],
        &rows,
    )?;
    Ok(Outcome::Ok)
}
