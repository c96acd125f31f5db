//! `sekisho decide`: one offline decision, as one JSON object on stdout.

use std::str::FromStr;

use anyhow::{bail, Result};
use serde::Serialize;

use sekisho_policy_engine::engine::current_hour;
use sekisho_policy_engine::entities::Directory;
use sekisho_policy_engine::{
    Action, CompiledPolicies, DecisionRequest, Engine, FactorSet, PolicySources, Via,
};

use crate::cli::DecideArgs;
use crate::Outcome;

#[derive(Serialize)]
struct Unavailable {
    factors: Vec<&'static str>,
    missing: Vec<&'static str>,
    why: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Answer {
    Plan {
        decision: &'static str,
        options: Vec<Vec<&'static str>>,
        unavailable: Vec<Unavailable>,
        policy_version: String,
    },
    Decision {
        decision: &'static str,
        policy_ids: Vec<String>,
        policy_version: String,
    },
}

/// Errors here are bad input: the caller maps them to exit code 2.
pub fn run(args: &DecideArgs) -> Result<Outcome> {
    let action = Action::from_str(&args.action)?;
    let via = Via::from_str(&args.via)?;
    let upstream = FactorSet::parse_names(&args.upstream)?;
    let factors = args
        .factors
        .as_ref()
        .map(FactorSet::parse_names)
        .transpose()?;
    let hour = match args.hour {
        None => current_hour(),
        Some(h) if h <= 23 => h as u8,
        Some(h) => bail!("hour {h} is out of range (expected 0-23)"),
    };
    let sources = PolicySources::load_dir(&args.policies)?;
    let compiled = CompiledPolicies::compile(sources, 0)?;
    let directory = Directory::from_batch(super::read_entities(&args.entities)?)?;
    let engine = Engine::new(compiled, directory);
    let req = DecisionRequest {
        user: args.user.clone(),
        device: args.device.clone(),
        action,
        via,
        upstream,
        hour,
    };
    let answer = match factors {
        None => {
            let plan = engine.plan(&req, args.emergency_otp)?;
            Answer::Plan {
                decision: "plan",
                options: plan.options.iter().map(|s| s.names()).collect(),
                unavailable: plan
                    .unavailable
                    .iter()
                    .map(|u| Unavailable {
                        factors: u.factors.names(),
                        missing: u.missing.names(),
                        why: u.why.name(),
                    })
                    .collect(),
                policy_version: plan.policy_version,
            }
        }
        Some(f) => {
            let out = engine.authorize(&req, f)?;
            Answer::Decision {
                decision: if out.allowed { "allow" } else { "deny" },
                policy_ids: out.policy_ids,
                policy_version: out.policy_version,
            }
        }
    };
    println!("{}", serde_json::to_string(&answer)?);
    // As `agent`: a script can test the exit status (0 allow or a plan, 1 deny).
    Ok(match answer {
        Answer::Decision {
            decision: "deny", ..
        } => Outcome::No,
        _ => Outcome::Ok,
    })
}
