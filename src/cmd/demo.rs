//! `sekisho demo`: the quick start. Generates a municipality, starts a real engine and
//! one gateway per tier in this process (SQLite in a temporary directory, gRPC over
//! mutual TLS with a PKI generated at start), enrolls the city through the admin
//! APIs and replays a whole workday through the endpoint agent library. The work is
//! in the `sekisho-simulator` crate; this module parses, shows progress and writes
//! the report.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sekisho_gateway::messages::Locale;
use sekisho_policy_engine::PolicySources;
use sekisho_simulator::{run_demo, City, DemoOptions, DemoOutcome, Profile, Progress};

use crate::cli::DemoArgs;
use crate::report::html::Page;
use crate::{reference, Outcome};

pub async fn run(args: &DemoArgs) -> Result<Outcome> {
    let profile: Profile = args.profile.parse()?;
    let policies = match &args.policies {
        Some(dir) => PolicySources::load_dir(dir)
            .with_context(|| format!("cannot load policies from {}", dir.display()))?,
        None => reference::policies(),
    };
    let what_if =
        match &args.what_if {
            Some(dir) => Some(PolicySources::load_dir(dir).with_context(|| {
                format!("cannot load the what-if policies from {}", dir.display())
            })?),
            None => None,
        };
    let city =
        match &args.city {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Some(serde_json::from_str::<City>(&text).with_context(|| {
                    format!("{}: not a city saved by sekisho demo", path.display())
                })?)
            }
            None => None,
        };
    if args.in_flight == 0 {
        bail!("--in-flight must be at least 1");
    }
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let work_dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut options = DemoOptions::new(profile, args.seed, policies, work_dir);
    options.city = city;
    options.what_if = what_if;
    options.in_flight = args.in_flight;

    eprintln!(
        "sekisho demo: generating a {} city (seed {}), starting the engine and four gateways, enrolling…",
        options.city.as_ref().map(|c| c.profile).unwrap_or(profile),
        options.city.as_ref().map(|c| c.seed).unwrap_or(args.seed)
    );
    let progress = Arc::new(Progress::default());
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(draw_progress(progress.clone())));
    let result = run_demo(&options, progress.clone()).await;
    if let Some(bar) = bar {
        bar.abort();
        eprintln!();
    }
    let outcome = result?;
    print!("{}", outcome.report.render_text());
    if let Some(w) = &outcome.what_if {
        println!();
        print!("{}", w.render_text());
    }
    if let Some(out) = &args.out {
        write_out(out, &outcome)?;
        println!(
            "\nWritten to {}: report.txt, report.json, report.html, audit.jsonl, city.json{}",
            out.display(),
            if outcome.what_if.is_some() {
                ", whatif.json"
            } else {
                ""
            }
        );
        println!(
            "Replay this day: sekisho demo --city {}",
            out.join("city.json").display()
        );
    }
    Ok(
        if outcome.report.audit_verified() && outcome.report.attacks_stopped() {
            Outcome::Ok
        } else {
            Outcome::No
        },
    )
}

/// A one-line progress bar on stderr, redrawn a few times a second.
async fn draw_progress(p: Arc<Progress>) {
    let phases = sekisho_simulator::day::PHASES;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let total = p.total.load(Ordering::Relaxed);
        if total == 0 {
            continue;
        }
        let done = p.done.load(Ordering::Relaxed).min(total);
        let width = 32;
        let filled = (done * width / total) as usize;
        let phase = phases
            .get(p.phase.load(Ordering::Relaxed))
            .copied()
            .unwrap_or("");
        eprint!(
            "\r[{}{}] {:>6}/{:<6} steps  {:<28}",
            "#".repeat(filled),
            "-".repeat(width as usize - filled),
            done,
            total,
            phase
        );
        let _ = std::io::stderr().flush();
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The report (text, JSON, HTML), the audit export (JSON lines, one gateway's chain
/// after another in seq order), and the city so the day can be replayed.
pub fn write_out(out: &Path, o: &DemoOutcome) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut text = o.report.render_text();
    if let Some(w) = &o.what_if {
        text.push('\n');
        text.push_str(&w.render_text());
        write(&out.join("whatif.json"), &serde_json::to_string_pretty(w)?)?;
    }
    write(&out.join("report.txt"), &text)?;
    write(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&o.report)?,
    )?;
    write(&out.join("city.json"), &serde_json::to_string(&o.city)?)?;
    let mut events: Vec<_> = o.audit.iter().collect();
    events.sort_by(|a, b| (&a.body.gateway, a.body.seq).cmp(&(&b.body.gateway, b.body.seq)));
    let mut jsonl = String::new();
    for e in events {
        jsonl.push_str(&e.to_json());
        jsonl.push('\n');
    }
    write(&out.join("audit.jsonl"), &jsonl)?;
    write(&out.join("report.html"), &html(o))?;
    Ok(())
}

fn html(o: &DemoOutcome) -> String {
    let r = &o.report;
    let mut page = Page::new(
        &format!("sekisho demo — {} city, seed {}", r.profile, r.seed),
        Locale::from_env(),
    );
    page.paragraph(&format!(
        "{} staff, {} terminals; policy version {}; Argon2id {}. The day took {:.1} s ({} answers, {:.0}/s) after {:.1} s of setup.",
        r.city.staff, r.city.terminals, r.policy_version, r.argon2, r.day_secs, r.events, r.events_per_sec, r.setup_secs
    ));
    page.heading("Answers per tier and action");
    let rows: Vec<Vec<String>> = r
        .actions
        .iter()
        .map(|a| {
            vec![
                a.tier.clone(),
                a.action.clone(),
                a.count.to_string(),
                a.allowed.to_string(),
                (a.count - a.allowed).to_string(),
                format!("{:.2}", a.p50_ms),
                format!("{:.2}", a.p95_ms),
                format!("{:.2}", a.p99_ms),
                a.denied
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    page.table(
        &[
            "tier",
            "action",
            "count",
            "allow",
            "deny",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "deny reasons",
        ],
        &rows,
    );
    page.bar_chart(
        "Answers per tier and action",
        &r.actions
            .iter()
            .map(|a| (format!("{} {}", a.tier, a.action), a.count))
            .collect::<Vec<_>>(),
    );
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    for a in &r.actions {
        for (k, v) in &a.denied {
            *reasons.entry(k.clone()).or_default() += v;
        }
    }
    let mut reasons: Vec<(String, u64)> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    page.bar_chart("Denials by reason", &reasons);
    page.column_chart(
        "Answers per phase of the day",
        &r.phases
            .iter()
            .map(|p| {
                (
                    p.name.split(' ').next().unwrap_or("").to_string(),
                    p.events as u64,
                )
            })
            .collect::<Vec<_>>(),
    );
    page.heading("Biometrics against the configured thresholds");
    page.table(
        &[
            "factor",
            "threshold",
            "genuine",
            "false rejects",
            "FRR",
            "impostor",
            "false accepts",
            "FAR",
        ],
        &r.biometrics
            .iter()
            .map(|b| {
                vec![
                    b.factor.clone(),
                    format!("{:.2}", b.threshold),
                    b.genuine.to_string(),
                    b.false_rejects.to_string(),
                    format!("{:.2}%", b.frr() * 100.0),
                    b.impostor.to_string(),
                    b.false_accepts.to_string(),
                    format!("{:.2}%", b.far() * 100.0),
                ]
            })
            .collect::<Vec<_>>(),
    );
    page.heading("The helpdesk's day");
    let h = &r.helpdesk;
    page.bar_chart(
        "Helpdesk",
        &[
            ("emergency OTPs".to_string(), h.emergency_otps),
            ("lockouts".to_string(), h.lockouts),
            ("unlock-user calls".to_string(), h.unlocks),
            ("nothing to present".to_string(), h.nothing_to_present),
            ("biometric retries".to_string(), h.biometric_retries),
        ],
    );
    page.heading("Attacks");
    page.table(
        &[
            "attack",
            "tries",
            "denied as expected",
            "audited",
            "let in",
            "expected",
        ],
        &r.attacks
            .iter()
            .map(|a| {
                vec![
                    a.name.clone(),
                    a.attempts.to_string(),
                    a.denied_as_expected.to_string(),
                    a.audited.to_string(),
                    a.allowed.to_string(),
                    a.expected.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    page.heading("Slowest logons");
    page.table(
        &["ms", "user", "terminal", "tier"],
        &r.slowest
            .iter()
            .map(|s| {
                vec![
                    format!("{:.2}", s.ms),
                    s.user.clone(),
                    s.device.clone(),
                    s.tier.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    page.heading("Audit trail");
    page.table(
        &["journal", "events", "chain"],
        &r.chains
            .iter()
            .map(|c| {
                vec![
                    c.gateway.clone(),
                    c.events.to_string(),
                    c.broken.clone().unwrap_or_else(|| "verified".into()),
                ]
            })
            .collect::<Vec<_>>(),
    );
    if let Some(w) = &o.what_if {
        page.heading("What-if");
        page.paragraph(&format!(
            "{} staff locked out of a tier, {} asked for more; staff-minutes at logon {:+.1}; emergency OTPs {} → {}.",
            w.locked_out.len(),
            w.asked_more.len(),
            w.staff_minutes_added,
            w.emergency_otps_before,
            w.emergency_otps_after
        ));
        page.table(
            &[
                "tier",
                "department",
                "locked out",
                "asked more",
                "minutes added",
            ],
            &w.by_group
                .iter()
                .map(|g| {
                    vec![
                        g.tier.clone(),
                        g.department.clone(),
                        g.locked_out.to_string(),
                        g.asked_more.to_string(),
                        format!("{:.1}", g.staff_minutes_added),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    page.finish()
}
