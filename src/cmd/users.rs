//! `sekisho users import`: a standalone tier's users from a CSV file into its
//! gateway, through the gateway's admin API (`GatewayAdmin.ImportUsers`).
//!
//! The file is read and checked here, where it and the certificate files beside it
//! are; the gateway checks again against what only it knows (card CAs, directory
//! passwords, what is stored), writes everything in one transaction, and journals
//! one `user_import` event per user changed with this administrator as operator.

use std::path::Path;

use anyhow::{bail, Context, Result};
use sekisho_gateway::import::{parse_users, USER_COLUMNS};
use sekisho_policy_engine::import::{decode, parse_table, Problem};
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::gateway_admin_client::GatewayAdminClient;

use crate::cli::UsersImportArgs;
use crate::Outcome;

/// Prints every problem, one line each as `FILE: row R, column C: reason`, and fails.
pub(crate) fn refuse(file: &Path, problems: &[Problem]) -> anyhow::Error {
    for p in problems {
        eprintln!("{}: {p}", file.display());
    }
    anyhow::anyhow!(
        "{}: {} problem(s); nothing was imported",
        file.display(),
        problems.len()
    )
}

pub async fn import(args: &UsersImportArgs) -> Result<Outcome> {
    let file = &args.file;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (text, encoding) = decode(&bytes, args.encoding).map_err(|p| refuse(file, &[p]))?;
    let base = file.parent().unwrap_or(Path::new("."));
    // Through parse_table: an unknown column must not hide the rows' problems.
    let rows = parse_table(&text, USER_COLUMNS, |text| parse_users(text, base))
        .map_err(|p| refuse(file, &p))?;
    if rows.is_empty() {
        bail!("{}: no users below the header", file.display());
    }
    eprintln!(
        "{}: {} users read ({encoding}), all valid",
        file.display(),
        rows.len()
    );
    let request = pb::ImportUsersRequest {
        users: rows.iter().map(|r| r.to_proto()).collect(),
        dry_run: args.dry_run,
    };
    let r = GatewayAdminClient::new(args.gateway.connect().await?)
        .max_encoding_message_size(64 * 1024 * 1024)
        .import_users(request)
        .await
        .map_err(|s| super::refused("gateway", s))?
        .into_inner();
    if !r.problems.is_empty() {
        let problems: Vec<Problem> = r
            .problems
            .iter()
            .map(|p| Problem::new(p.row as usize, p.field.clone(), p.reason.clone()))
            .collect();
        return Err(refuse(file, &problems).context("refused by the gateway"));
    }
    let (mut added, mut changed, mut unchanged) = (0, 0, 0);
    for u in &r.users {
        let mark = match u.change.as_str() {
            "added" => {
                added += 1;
                "+"
            }
            "changed" => {
                changed += 1;
                "~"
            }
            _ => {
                unchanged += 1;
                if !args.verbose {
                    continue;
                }
                "="
            }
        };
        let fields = if u.fields.is_empty() {
            String::new()
        } else {
            format!(": {}", u.fields.join(", "))
        };
        println!("{mark} {} (row {}) {}{fields}", u.user, u.row, u.change);
    }
    let verb = if args.dry_run { "would be " } else { "" };
    println!(
        "{added} {verb}added, {changed} {verb}changed, {unchanged} unchanged{}",
        if args.dry_run {
            " (dry run: nothing was written)"
        } else {
            ""
        }
    );
    Ok(Outcome::Ok)
}
