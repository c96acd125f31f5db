//! `sekisho policy validate|lint|publish|versions`.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use sekisho_policy_engine::diagnostics::{Diagnostic, Severity};
use sekisho_policy_engine::entities::Directory;
use sekisho_policy_engine::{lint, CompiledPolicies, Engine, PolicySources};
use sekisho_proto::v1 as pb;

use crate::client::EngineArgs;
use crate::Outcome;

/// Diagnostics on stdout, one per line; a summary on stderr.
fn print_diagnostics(diags: &[Diagnostic]) -> (usize, usize) {
    for d in diags {
        println!("{d}");
    }
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    (errors, diags.len() - errors)
}

pub fn validate(dir: &Path) -> Result<Outcome> {
    let sources = PolicySources::load_dir(dir)?;
    match CompiledPolicies::compile(sources, 0) {
        Ok(c) => {
            print_diagnostics(&c.warnings);
            eprintln!(
                "{}: {} policies valid ({})",
                dir.display(),
                c.policies.len(),
                c.label()
            );
            Ok(Outcome::Ok)
        }
        Err(invalid) => {
            let (errors, _) = print_diagnostics(&invalid.0);
            eprintln!("{}: invalid ({errors} error(s))", dir.display());
            Ok(Outcome::No)
        }
    }
}

#[derive(Serialize)]
struct LintReport<'a> {
    policy_version: String,
    errors: usize,
    warnings: usize,
    diagnostics: &'a [Diagnostic],
}

pub fn lint(dir: &Path, entities: &Path, json: bool) -> Result<Outcome> {
    let sources = PolicySources::load_dir(dir)?;
    let compiled = match CompiledPolicies::compile(sources, 0) {
        Ok(c) => c,
        Err(invalid) => {
            print_diagnostics(&invalid.0);
            eprintln!(
                "{}: invalid; fix validation errors before linting",
                dir.display()
            );
            return Ok(Outcome::No);
        }
    };
    let directory = Directory::from_batch(super::read_entities(entities)?)?;
    let engine = Engine::new(compiled, directory);
    let mut diags = engine.policies().warnings.clone();
    diags.extend(lint::lint(&engine));
    let errors = diags.iter().filter(|d| d.is_error()).count();
    if json {
        let report = LintReport {
            policy_version: engine.policy_label(),
            errors,
            warnings: diags.len() - errors,
            diagnostics: &diags,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let (e, w) = print_diagnostics(&diags);
        eprintln!("{e} error(s), {w} warning(s)");
    }
    Ok(if errors > 0 { Outcome::No } else { Outcome::Ok })
}

pub async fn publish(
    dir: &Path,
    comment: &str,
    dry_run: bool,
    force: bool,
    engine: &EngineArgs,
) -> Result<Outcome> {
    let sources = PolicySources::load_dir(dir)?;
    let request = sekisho_policy_engine::grpc::publish_request(sources, comment, dry_run, force);
    let mut client = pb::policy_admin_client::PolicyAdminClient::new(engine.connect().await?);
    match client.publish(request).await {
        Ok(r) => {
            let r = r.into_inner();
            for d in &r.diagnostics {
                let at = if d.location.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", d.location)
                };
                println!("{at}{}[{}]: {}", d.severity, d.code, d.message);
            }
            match r.version {
                Some(v) => eprintln!(
                    "published v{} ({} policies, sha256 {})",
                    v.version,
                    v.policy_count,
                    &v.digest[..v.digest.len().min(16)]
                ),
                None => eprintln!("dry run: the set is valid and would be accepted"),
            }
            Ok(Outcome::Ok)
        }
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            ) =>
        {
            println!("{}", s.message());
            eprintln!("not published: the engine still serves the previous version");
            Ok(Outcome::No)
        }
        Err(s) => Err(anyhow::anyhow!("publish failed: {}", s.message())),
    }
}

pub async fn versions(engine: &EngineArgs) -> Result<Outcome> {
    let mut client = pb::policy_admin_client::PolicyAdminClient::new(engine.connect().await?);
    let versions = client
        .list_versions(pb::ListVersionsRequest {})
        .await?
        .into_inner()
        .versions;
    if versions.is_empty() {
        eprintln!("no version published yet");
    }
    println!(
        "{:<8} {:<26} {:>8}  {:<16}  comment",
        "version", "published (UTC)", "policies", "sha256"
    );
    for v in versions {
        println!(
            "{:<8} {:<26} {:>8}  {:<16}  {}",
            format!("v{}", v.version),
            v.created_at,
            v.policy_count,
            &v.digest[..v.digest.len().min(16)],
            v.comment
        );
    }
    Ok(Outcome::Ok)
}
