//! `sekisho report dormant|devices|failures|operators`: tables in the terminal, and
//! with `--html` the same report as a page with charts.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sekisho_gateway::messages::Locale;
use sekisho_policy_engine::audit::{Filter, Outcome, Page};
use sekisho_policy_engine::entities::EntityBatch;
use sekisho_policy_engine::store::{redact_url, Store};

use crate::cli::{AuditSourceArgs, ReportOutputArgs, ReportPeriodArgs};
use crate::cmd::audit::{parse_time, Source};
use crate::report::{self, html, label, local_time, print_table, DeviceUsage, Failures, KnownUser};
use crate::Outcome as Exit;

/// The period of a report when none is given.
const DEFAULT_DAYS: i64 = 30;
/// How far around `--at` the operators report lists what happened.
const TIMELINE_WINDOW_MS: i64 = 2 * 3_600_000;

fn period(p: &ReportPeriodArgs) -> Result<Filter> {
    let now = chrono::Utc::now().timestamp_millis();
    let since = match &p.since {
        Some(t) => parse_time(t).context("--since")?,
        None => now - DEFAULT_DAYS * 86_400_000,
    };
    let until = match &p.until {
        Some(t) => parse_time(t).context("--until")?,
        None => now + 1,
    };
    anyhow::ensure!(since < until, "--since must be before --until");
    Ok(Filter {
        since_ms: Some(since),
        until_ms: Some(until),
        ..Filter::default()
    })
}

fn period_line(f: &Filter, locale: Locale) -> String {
    let (s, u) = (f.since_ms.unwrap_or(0), f.until_ms.unwrap_or(0));
    match locale {
        Locale::Ja => format!("期間: {} ～ {}", local_time(s), local_time(u)),
        Locale::En => format!("Period: {} to {}", local_time(s), local_time(u)),
    }
}

/// The users, groups and devices in the engine's store that `args` reads the trail
/// of: what exists beyond those the trail happens to mention.
async fn engine_entities(args: &AuditSourceArgs) -> Result<EntityBatch> {
    let store = Store::open(&args.store, &args.tenant)
        .await
        .with_context(|| format!("the engine's store {}", redact_url(&args.store)))?;
    let entities = store
        .load_entities()
        .await
        .context("reading the engine's entities");
    store.close().await;
    entities
}

/// Fails unless `device` is a terminal the engine's entities or the trail know. A
/// terminal without events is answered "nobody", which for a mistyped id would be
/// a wrong answer rather than a missing one.
async fn check_known_device(device: &str, source: &Source, args: &AuditSourceArgs) -> Result<()> {
    let in_trail = Filter {
        device: Some(device.to_string()),
        ..Filter::default()
    };
    let first = Page {
        after: None,
        limit: 1,
    };
    if !source.page(&in_trail, &first).await?.is_empty() {
        return Ok(());
    }
    match source {
        Source::Store(_) => {
            if engine_entities(args)
                .await?
                .devices
                .iter()
                .any(|d| d.id == device)
            {
                return Ok(());
            }
            bail!("unknown device '{device}': neither the engine's entities nor its audit trail know it (sekisho device list shows the registered ones)")
        }
        // A journal knows only the terminals that appear in it.
        Source::File { name, .. } => {
            bail!("unknown device '{device}': no event in {name} names it")
        }
    }
}

fn write_html(path: &Path, page: &html::Page) -> Result<()> {
    std::fs::write(path, page.finish())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("HTML report written to {}", path.display());
    Ok(())
}

pub async fn dormant(
    days: u32,
    source_args: &AuditSourceArgs,
    output: &ReportOutputArgs,
) -> Result<Exit> {
    let locale = Locale::from_env();
    let source = Source::open(source_args).await?;
    let (users, last) = match &source {
        Source::Store(audit) => {
            let users = engine_entities(source_args)
                .await?
                .users
                .into_iter()
                .map(|u| KnownUser {
                    id: u.id,
                    department: u.department,
                    role: u.role,
                })
                .collect::<Vec<_>>();
            (users, audit.last_allowed("logon").await?)
        }
        // A standalone tier's journal knows only the users that appear in it.
        Source::File { events, .. } => {
            let mut last: HashMap<String, i64> = HashMap::new();
            let mut users: Vec<KnownUser> = Vec::new();
            for e in events {
                let b = &e.body;
                if b.user.is_empty() {
                    continue;
                }
                if !users.iter().any(|u| u.id == b.user) {
                    users.push(KnownUser {
                        id: b.user.clone(),
                        department: String::new(),
                        role: String::new(),
                    });
                }
                if b.action == "logon" && b.outcome == Outcome::Allow {
                    let t = last.entry(b.user.clone()).or_insert(0);
                    *t = (*t).max(e.ts_ms());
                }
            }
            (users, last)
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    let rows: Vec<Vec<String>> = report::dormant(&users, &last, now, days)
        .into_iter()
        .map(|d| {
            vec![
                d.user.id,
                d.user.department,
                d.user.role,
                d.last_logon_ms
                    .map(local_time)
                    .unwrap_or_else(|| label("never", locale).to_string()),
            ]
        })
        .collect();
    let header = [
        label("user", locale),
        label("department", locale),
        label("role", locale),
        label("last_logon", locale),
    ];
    let lead = match locale {
        Locale::Ja => format!(
            "{}日以上ログオンのないアカウント: {} / {}",
            days,
            rows.len(),
            users.len()
        ),
        Locale::En => format!(
            "Accounts without a logon for {} days: {} of {}",
            days,
            rows.len(),
            users.len()
        ),
    };
    println!("{lead}");
    print_table(&mut std::io::stdout().lock(), &header, &rows)?;
    if let Some(path) = &output.html {
        let mut page = html::Page::new(label("dormant_title", locale), locale);
        page.paragraph(label("dormant_lead", locale))
            .paragraph(&lead)
            .table(&header, &rows);
        write_html(path, &page)?;
    }
    Ok(Exit::Ok)
}

pub async fn devices(
    source_args: &AuditSourceArgs,
    p: &ReportPeriodArgs,
    output: &ReportOutputArgs,
) -> Result<Exit> {
    let locale = Locale::from_env();
    let mut filter = period(p)?;
    filter.action = Some("logon".into());
    filter.outcome = Some(Outcome::Allow);
    let source = Source::open(source_args).await?;
    let mut usage = DeviceUsage::default();
    let mut seen = HashMap::new();
    source
        .each(&filter, |e| {
            usage.add(e, &mut seen);
            Ok(())
        })
        .await?;

    let mut ranked: Vec<(&String, &report::DeviceUse)> = usage.devices.iter().collect();
    ranked.sort_by(|a, b| b.1.total.cmp(&a.1.total).then_with(|| a.0.cmp(b.0)));
    let mut header: Vec<&str> = vec![
        label("device", locale),
        label("tier", locale),
        label("total", locale),
        label("users", locale),
    ];
    let day_cols: Vec<String> = usage
        .days
        .iter()
        .map(|d| d.get(5..).unwrap_or(d).to_string())
        .collect();
    header.extend(day_cols.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = ranked
        .iter()
        .map(|(id, d)| {
            let mut r = vec![
                (*id).clone(),
                d.tier.clone(),
                d.total.to_string(),
                d.users.to_string(),
            ];
            r.extend(
                usage
                    .days
                    .iter()
                    .map(|day| d.per_day.get(day).copied().unwrap_or(0).to_string()),
            );
            r
        })
        .collect();
    println!("{}", period_line(&filter, locale));
    print_table(&mut std::io::stdout().lock(), &header, &rows)?;
    let hours = usage.per_hour();
    let hour_header: Vec<String> = (0..24).map(|h| format!("{h:02}")).collect();
    println!();
    println!("{}", label("per_hour", locale));
    let mut hh: Vec<&str> = vec![""];
    hh.extend(hour_header.iter().map(String::as_str));
    let mut hr = vec![label("total", locale).to_string()];
    hr.extend(hours.iter().map(u64::to_string));
    print_table(&mut std::io::stdout().lock(), &hh, &[hr])?;

    if let Some(path) = &output.html {
        let mut page = html::Page::new(label("devices_title", locale), locale);
        page.paragraph(label("devices_lead", locale))
            .paragraph(&period_line(&filter, locale))
            .column_chart(
                label("per_hour", locale),
                &hour_header.iter().cloned().zip(hours).collect::<Vec<_>>(),
            )
            .bar_chart(
                label("per_device", locale),
                &ranked
                    .iter()
                    .map(|(id, d)| ((*id).clone(), d.total))
                    .collect::<Vec<_>>(),
            )
            .table(&header, &rows);
        write_html(path, &page)?;
    }
    Ok(Exit::Ok)
}

/// Rows ordered by their count, largest first (ties keep their order).
fn most_first(mut rows: Vec<(u64, Vec<String>)>) -> Vec<Vec<String>> {
    rows.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    rows.into_iter().map(|(_, r)| r).collect()
}

pub async fn failures(
    source_args: &AuditSourceArgs,
    p: &ReportPeriodArgs,
    output: &ReportOutputArgs,
) -> Result<Exit> {
    let locale = Locale::from_env();
    let filter = period(p)?;
    let source = Source::open(source_args).await?;
    let mut f = Failures::default();
    source
        .each(&filter, |e| {
            f.add(e);
            Ok(())
        })
        .await?;

    let tier_rows: Vec<Vec<String>> = f
        .by_tier
        .iter()
        .map(|(t, n)| vec![t.clone(), n.to_string()])
        .collect();
    let factor_rows: Vec<(u64, Vec<String>)> = f
        .by_factor
        .iter()
        .map(|((tier, factor, code), n)| {
            (
                *n,
                vec![
                    tier.clone(),
                    factor.clone(),
                    report::explain(code, true, locale),
                    n.to_string(),
                ],
            )
        })
        .collect();
    let factor_rows = most_first(factor_rows);
    let reason_rows: Vec<(u64, Vec<String>)> = f
        .by_reason
        .iter()
        .map(|((tier, reason), n)| {
            (
                *n,
                vec![
                    tier.clone(),
                    report::explain(reason, false, locale),
                    n.to_string(),
                ],
            )
        })
        .collect();
    let reason_rows = most_first(reason_rows);
    let lockout_rows: Vec<Vec<String>> = f
        .lockouts
        .iter()
        .map(|l| {
            vec![
                local_time(l.ts_ms),
                l.tier.clone(),
                l.user.clone(),
                l.device.clone(),
            ]
        })
        .collect();

    let tier_h = [label("tier", locale), label("refused", locale)];
    let factor_h = [
        label("tier", locale),
        label("factor", locale),
        label("reason", locale),
        label("count", locale),
    ];
    let reason_h = [
        label("tier", locale),
        label("reason", locale),
        label("count", locale),
    ];
    let lock_h = [
        label("time", locale),
        label("tier", locale),
        label("user", locale),
        label("device", locale),
    ];
    let mut out = std::io::stdout().lock();
    println!("{}", period_line(&filter, locale));
    print_table(&mut out, &tier_h, &tier_rows)?;
    println!();
    print_table(&mut out, &reason_h, &reason_rows)?;
    println!();
    print_table(&mut out, &factor_h, &factor_rows)?;
    println!();
    println!("{}: {}", label("lockouts", locale), f.lockouts.len());
    if !lockout_rows.is_empty() {
        print_table(&mut out, &lock_h, &lockout_rows)?;
    }

    if let Some(path) = &output.html {
        let mut page = html::Page::new(label("failures_title", locale), locale);
        page.paragraph(label("failures_lead", locale))
            .paragraph(&period_line(&filter, locale))
            .bar_chart(
                label("refused", locale),
                &f.by_tier
                    .iter()
                    .map(|(t, n)| (t.clone(), *n))
                    .collect::<Vec<_>>(),
            )
            .table(&tier_h, &tier_rows)
            .heading(label("reason", locale))
            .table(&reason_h, &reason_rows)
            .heading(label("factor", locale))
            .bar_chart(
                label("factor", locale),
                &f.by_factor
                    .iter()
                    .map(|((t, fac, code), n)| (format!("{t} {fac} {code}"), *n))
                    .collect::<Vec<_>>(),
            )
            .table(&factor_h, &factor_rows)
            .heading(label("lockouts", locale))
            .table(&lock_h, &lockout_rows);
        write_html(path, &page)?;
    }
    Ok(Exit::Ok)
}

pub async fn operators(
    device: &str,
    at: &str,
    source_args: &AuditSourceArgs,
    output: &ReportOutputArgs,
) -> Result<Exit> {
    let locale = Locale::from_env();
    let at_ms = parse_time(at).context("--at")?;
    let source = Source::open(source_args).await?;
    // Everything on the terminal up to the moment (a session may have begun days
    // before), and the window after it for the timeline.
    let events = source
        .all(&Filter {
            device: Some(device.to_string()),
            until_ms: Some(at_ms + TIMELINE_WINDOW_MS),
            ..Filter::default()
        })
        .await?;
    if events.is_empty() {
        check_known_device(device, &source, source_args).await?;
    }
    let title = format!(
        "{} {device} @ {}",
        label("operators_title", locale),
        local_time(at_ms)
    );
    let answer: Vec<String> = match report::operator_at(&events, at_ms) {
        None => vec![label("nobody", locale).to_string()],
        Some(o) => {
            let state = if o.locked {
                format!(" ({})", label("locked", locale))
            } else {
                String::new()
            };
            vec![
                format!("{}: {}{state}", label("operator", locale), o.operator),
                format!("{}: {}", label("account", locale), o.account),
                format!("{}: {}", label("since", locale), local_time(o.since_ms)),
            ]
        }
    };
    println!("{title}");
    for line in &answer {
        println!("{line}");
    }
    let rows: Vec<Vec<String>> = report::timeline(&events, at_ms, TIMELINE_WINDOW_MS)
        .into_iter()
        .map(|e| {
            vec![
                local_time(e.ts_ms()),
                e.body.action.clone(),
                e.body.outcome.name().to_string(),
                e.body.user.clone(),
                e.body.operator.clone(),
                e.body.factors.join("+"),
            ]
        })
        .collect();
    let header = [
        label("time", locale),
        label("action", locale),
        "",
        label("user", locale),
        label("operator", locale),
        label("factor", locale),
    ];
    println!();
    if rows.is_empty() {
        println!("{}", label("none", locale));
    } else {
        print_table(&mut std::io::stdout().lock(), &header, &rows)?;
    }
    if let Some(path) = &output.html {
        let mut page = html::Page::new(&title, locale);
        for line in &answer {
            page.paragraph(line);
        }
        page.table(&header, &rows);
        write_html(path, &page)?;
    }
    Ok(Exit::Ok)
}
