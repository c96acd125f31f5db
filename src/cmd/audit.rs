//! `sekisho audit query|verify|export|import`: the trail as an auditor reads it.
//!
//! Every command reads either the engine's store or a journal file (a gateway's
//! database on a standalone tier, or an export), through [`Source`], so a question
//! gets the same answer wherever the events are kept. Nothing here writes to the
//! trail except `import`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use chrono::{Local, NaiveDate, NaiveDateTime, TimeZone};
use sekisho_gateway::journal::Journals;
use sekisho_policy_engine::audit::query::select;
use sekisho_policy_engine::audit::store::AuditStore;
use sekisho_policy_engine::audit::{
    AuditEvent, BrokenLink, ChainState, Cursor, Filter, Outcome, Page,
};
use sekisho_policy_engine::store::redact_url;

use crate::cli::{AuditFilterArgs, AuditSourceArgs};
use crate::cmd::parse_duration;
use crate::Outcome as Exit;

/// How many events a full listing (export, reports) reads per round trip.
const CHUNK: usize = 5_000;

/// Where events are read from.
pub enum Source {
    Store(AuditStore),
    /// A journal file, read whole (journal files are a tier's, not a city's, trail).
    /// `journals` is set when it is a gateway's database, whose chains are then
    /// verified there, from seq 1.
    File {
        name: String,
        events: Vec<AuditEvent>,
        journals: Option<(Journals, String)>,
    },
}

impl Source {
    pub async fn open(args: &AuditSourceArgs) -> Result<Source> {
        match &args.journal {
            Some(path) => {
                let (events, journals) = read_journal(path, &args.tenant).await?;
                Ok(Source::File {
                    name: path.display().to_string(),
                    events,
                    journals,
                })
            }
            None => Ok(Source::Store(open_store(&args.store, &args.tenant).await?)),
        }
    }

    /// One page in time order.
    pub async fn page(&self, filter: &Filter, page: &Page) -> Result<Vec<AuditEvent>> {
        match self {
            Source::Store(store) => Ok(store.query(filter, page).await?),
            Source::File { events, .. } => Ok(select(events, filter, page)),
        }
    }

    /// Calls `f` with every matching event in time order, a chunk at a time.
    pub async fn each(
        &self,
        filter: &Filter,
        mut f: impl FnMut(&AuditEvent) -> Result<()>,
    ) -> Result<u64> {
        let mut page = Page {
            after: None,
            limit: CHUNK,
        };
        let mut n = 0;
        loop {
            let chunk = self.page(filter, &page).await?;
            for e in &chunk {
                f(e)?;
            }
            n += chunk.len() as u64;
            match chunk.last() {
                Some(last) if chunk.len() == CHUNK => page.after = Some(Cursor::of(last)),
                _ => return Ok(n),
            }
        }
    }

    /// Every matching event in time order.
    pub async fn all(&self, filter: &Filter) -> Result<Vec<AuditEvent>> {
        let mut out = Vec::new();
        self.each(filter, |e| {
            out.push(e.clone());
            Ok(())
        })
        .await?;
        Ok(out)
    }
}

/// Opens the engine's audit store. A SQLite file must already exist: a mistyped
/// `--store` is an error, not a new empty store that answers "no events".
pub async fn open_store(url: &str, tenant: &str) -> Result<AuditStore> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        if !path.is_empty() && !Path::new(path).is_file() {
            bail!("no engine store at {path} (give --store, or run where the engine keeps sekisho-engine.db)");
        }
    }
    AuditStore::open(url, tenant)
        .await
        .with_context(|| format!("the engine's store {}", redact_url(url)))
}

/// A gateway's journal database (its SQLite file, or a `sqlite://` or `postgres://`
/// URL; only the journals of `tenant`), or JSON lines (an export).
async fn read_journal(
    path: &Path,
    tenant: &str,
) -> Result<(Vec<AuditEvent>, Option<(Journals, String)>)> {
    let shown = path.display().to_string();
    let is_url = ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| shown.starts_with(p));
    let head = if is_url {
        Vec::new()
    } else {
        use std::io::Read;
        let mut buf = [0u8; 16];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut buf))
            .with_context(|| format!("cannot read {}", path.display()))?;
        buf[..n].to_vec()
    };
    if is_url || head.starts_with(b"SQLite format 3") {
        let context = || format!("the gateway journal {}", redact_url(&shown));
        let journals = Journals::open(&shown).await.with_context(context)?;
        let mut events = Vec::new();
        for id in journals.list().await.with_context(context)? {
            if id.tenant == tenant {
                events.extend(journals.all_events(&id).await.with_context(context)?);
            }
        }
        return Ok((events, Some((journals, tenant.to_string()))));
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (expected JSON lines or a gateway database)",
            path.display()
        )
    })?;
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        events.push(
            AuditEvent::from_json(line).with_context(|| format!("{}:{}", path.display(), i + 1))?,
        );
    }
    Ok((events, None))
}

/// A time given on the command line, as Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64> {
    let t = text.trim();
    if let Some(ms) = sekisho_policy_engine::audit::parse_ts(t) {
        return Ok(ms);
    }
    let local = |naive: NaiveDateTime| -> Result<i64> {
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|d| d.timestamp_millis())
            .with_context(|| format!("'{text}' does not exist in the local time zone"))
    };
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return local(naive);
        }
    }
    if let Ok(day) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return local(day.and_hms_opt(0, 0, 0).unwrap_or_default());
    }
    if let Ok(ago) = parse_duration(t) {
        let ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        return Ok(chrono::Utc::now().timestamp_millis().saturating_sub(ms));
    }
    bail!("'{text}' is not a time: use 2026-11-22, \"2026-11-22 14:02\" (local), RFC 3339 (2026-11-22T05:02:00Z) or a period back from now (7d, 12h)")
}

pub fn filter(args: &AuditFilterArgs) -> Result<Filter> {
    let time = |t: &Option<String>, what: &str| -> Result<Option<i64>> {
        t.as_deref()
            .map(|t| parse_time(t).with_context(|| format!("--{what}")))
            .transpose()
    };
    let since_ms = time(&args.since, "since")?;
    let until_ms = time(&args.until, "until")?;
    if let (Some(s), Some(u)) = (since_ms, until_ms) {
        if s >= u {
            bail!("--since must be before --until");
        }
    }
    if let Some(tier) = &args.tier {
        tier.parse::<sekisho_policy_engine::Tier>()
            .map_err(|e| anyhow::anyhow!("--tier: {e}"))?;
    }
    Ok(Filter {
        user: args.user.clone(),
        device: args.device.clone(),
        tier: args.tier.clone(),
        action: args.action.clone(),
        outcome: args.outcome.as_deref().and_then(Outcome::parse),
        gateway: args.gateway.clone(),
        since_ms,
        until_ms,
    })
}

pub async fn query(
    source: &AuditSourceArgs,
    filter_args: &AuditFilterArgs,
    format: &str,
    limit: usize,
    after: Option<&str>,
) -> Result<Exit> {
    if limit == 0 || limit > 10_000 {
        bail!("--limit must be 1 to 10000");
    }
    let after = after
        .map(|a| {
            Cursor::parse(a).with_context(|| {
                format!("--after '{a}' is not a cursor printed by a previous page")
            })
        })
        .transpose()?;
    let filter = filter(filter_args)?;
    let source = Source::open(source).await?;
    let events = source.page(&filter, &Page { after, limit }).await?;
    let mut out = std::io::stdout().lock();
    match format {
        "json" => {
            for e in &events {
                writeln!(out, "{}", e.to_json())?;
            }
        }
        "csv" => write_csv(&mut out, &events)?,
        _ => write_table(&mut out, &events)?,
    }
    match events.last() {
        Some(last) if events.len() == limit => eprintln!(
            "{} events; more may follow: --after {}",
            events.len(),
            Cursor::of(last).token()
        ),
        _ => eprintln!("{} events", events.len()),
    }
    Ok(Exit::Ok)
}

/// The columns of the table and CSV forms.
const COLUMNS: [&str; 12] = [
    "time", "tier", "gateway", "seq", "device", "user", "operator", "action", "outcome", "factors",
    "failed", "reason",
];

fn row(e: &AuditEvent) -> [String; 12] {
    let b = &e.body;
    [
        crate::report::local_time(e.ts_ms()),
        b.tier.clone(),
        b.gateway.clone(),
        b.seq.to_string(),
        b.device.clone(),
        b.user.clone(),
        b.operator.clone(),
        b.action.clone(),
        b.outcome.name().to_string(),
        b.factors.join("+"),
        b.failed
            .iter()
            .map(|(f, r)| format!("{f}:{r}"))
            .collect::<Vec<_>>()
            .join(" "),
        b.reason.clone(),
    ]
}

fn write_table(out: &mut impl Write, events: &[AuditEvent]) -> Result<()> {
    let rows: Vec<[String; 12]> = events.iter().map(row).collect();
    crate::report::print_table(out, &COLUMNS, &rows)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_csv_header(out: &mut impl Write) -> Result<()> {
    writeln!(out, "{},session,policy_version,hash", COLUMNS.join(","))?;
    Ok(())
}

fn write_csv_row(out: &mut impl Write, e: &AuditEvent) -> Result<()> {
    let mut fields: Vec<String> = row(e).iter().map(|f| csv_field(f)).collect();
    // CSV readers want one absolute time format: RFC 3339 UTC, as in the event.
    fields[0] = e.body.ts.clone();
    fields.push(csv_field(&e.body.session));
    fields.push(csv_field(&e.body.policy_version));
    fields.push(e.hash.clone());
    writeln!(out, "{}", fields.join(","))?;
    Ok(())
}

fn write_csv(out: &mut impl Write, events: &[AuditEvent]) -> Result<()> {
    write_csv_header(out)?;
    for e in events {
        write_csv_row(out, e)?;
    }
    Ok(())
}

/// One chain's verdict.
pub struct ChainVerdict {
    pub gateway: String,
    pub events: u64,
    /// The seq the checked part starts at (1 unless a file holds only a later part).
    pub from_seq: u64,
    pub broken: Option<BrokenLink>,
}

/// Verifies the chains of events held in memory: per gateway in seq order. A file
/// may start later than seq 1 (an export of a period); its chain is then checked
/// from its first event on, and the verdict says so.
pub fn verify_events(events: &[AuditEvent]) -> Vec<ChainVerdict> {
    let mut by_gateway: BTreeMap<&str, Vec<&AuditEvent>> = BTreeMap::new();
    for e in events {
        by_gateway.entry(&e.body.gateway).or_default().push(e);
    }
    by_gateway
        .into_iter()
        .map(|(gateway, mut chain)| {
            chain.sort_by_key(|e| e.body.seq);
            let first = chain.first().map(|e| e.body.seq).unwrap_or(1);
            let mut state = ChainState::start(gateway);
            if let Some(e) = chain.first() {
                state.seq = first.saturating_sub(1);
                if first > 1 {
                    state.hash.clone_from(&e.prev_hash);
                }
            }
            let mut verdict = ChainVerdict {
                gateway: gateway.to_string(),
                events: 0,
                from_seq: first,
                broken: None,
            };
            for e in chain {
                if let Err(b) = state.check_next(e) {
                    verdict.broken = Some(b);
                    break;
                }
                verdict.events += 1;
            }
            verdict
        })
        .collect()
}

pub async fn verify(source_args: &AuditSourceArgs) -> Result<Exit> {
    let source = Source::open(source_args).await?;
    let verdicts = match &source {
        Source::Store(store) => store
            .verify()
            .await?
            .into_iter()
            .map(|r| ChainVerdict {
                gateway: r.gateway,
                events: r.events,
                from_seq: 1,
                broken: r.broken,
            })
            .collect(),
        Source::File {
            journals: Some((journals, tenant)),
            ..
        } => journals
            .verify_all()
            .await?
            .into_iter()
            .filter(|v| v.journal.tenant == *tenant)
            .map(|v| ChainVerdict {
                gateway: v.journal.gateway,
                events: v.checked,
                from_seq: 1,
                broken: v.broken,
            })
            .collect(),
        Source::File { events, .. } => verify_events(events),
    };
    let where_ = match &source {
        Source::Store(_) => redact_url(&source_args.store),
        Source::File { name, .. } => name.clone(),
    };
    if verdicts.is_empty() {
        println!("{where_}: no events");
        return Ok(Exit::Ok);
    }
    let mut intact = true;
    for v in &verdicts {
        match &v.broken {
            None if v.from_seq > 1 => println!(
                "ok      {}: seq {} to {} intact ({} events; the file starts at seq {}, earlier events were not given)",
                v.gateway,
                v.from_seq,
                v.from_seq + v.events - 1,
                v.events,
                v.from_seq
            ),
            None => println!("ok      {}: {} events, chain intact", v.gateway, v.events),
            Some(b) => {
                intact = false;
                println!("BROKEN  {}: first broken link at seq {}: {}", b.gateway, b.seq, b.why);
            }
        }
    }
    Ok(if intact { Exit::Ok } else { Exit::No })
}

pub async fn export(
    source_args: &AuditSourceArgs,
    filter_args: &AuditFilterArgs,
    format: &str,
    out_path: Option<&Path>,
) -> Result<Exit> {
    let filter = filter(filter_args)?;
    let source = Source::open(source_args).await?;
    // Written to a temporary file beside the target and renamed when complete, so a
    // failed export never leaves half a file where the complete one is expected.
    let (mut out, tmp): (Box<dyn Write>, Option<tempfile::NamedTempFile>) = match out_path {
        Some(p) => {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let file = tmp.reopen()?;
            (Box::new(std::io::BufWriter::new(file)), Some(tmp))
        }
        None => (
            Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            None,
        ),
    };
    if format == "csv" {
        write_csv_header(&mut out)?;
    }
    let n = source
        .each(&filter, |e| {
            if format == "csv" {
                write_csv_row(&mut out, e)
            } else {
                writeln!(out, "{}", e.to_json()).map_err(Into::into)
            }
        })
        .await?;
    out.flush()?;
    drop(out);
    if let (Some(tmp), Some(p)) = (tmp, out_path) {
        tmp.persist(p)
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("{n} events written to {}", p.display());
    } else {
        eprintln!("{n} events");
    }
    Ok(Exit::Ok)
}

pub async fn import(file: &Path, store_url: &str, tenant: &str) -> Result<Exit> {
    let store = open_store(store_url, tenant).await?;
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let done = store
        .import_jsonl(reader)
        .await
        .with_context(|| format!("{}", file.display()))?;
    println!(
        "{}: {} events read, {} new, {} already stored",
        file.display(),
        done.events,
        done.inserted,
        done.events - done.inserted
    );
    Ok(Exit::Ok)
}

pub async fn unbind(journal: &str, store_url: &str, tenant: &str) -> Result<Exit> {
    let store = open_store(store_url, tenant).await?;
    // Who ran it, as the operating system names them: the store is opened directly,
    // with no certificate to name the administrator.
    let operator = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .map_or_else(
            || "local administrator".to_string(),
            |u| format!("local user {u}"),
        );
    match store
        .unbind_journal(journal, &operator)
        .await
        .with_context(|| format!("unbinding journal '{journal}'"))?
    {
        Some(owner) => {
            println!("journal '{journal}' is no longer bound to certificate '{owner}': the next gateway certificate that ships it owns it");
            Ok(Exit::Ok)
        }
        None => {
            eprintln!("journal '{journal}' is not bound to any certificate (no gateway certificate has shipped it); nothing changed");
            Ok(Exit::No)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_accepted_form() {
        assert_eq!(
            parse_time("2026-11-22T05:02:00Z").unwrap(),
            1_795_323_720_000
        );
        assert!(parse_time("2026-11-22").is_ok());
        assert!(parse_time("2026-11-22 14:02").is_ok());
        let week = parse_time("7d").unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        assert!((now - week - 7 * 86_400_000).abs() < 5_000);
        let err = parse_time("yesterday").unwrap_err().to_string();
        assert!(err.contains("'yesterday' is not a time"), "{err}");
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
