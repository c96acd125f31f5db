//! The sekisho simulator: a synthetic municipality ([`city`]), its workday
//! ([`day`]), replayed through the real engine and gateways ([`world`], [`run`]), and
//! what came of it ([`report`], [`whatif`]). [`load`] drives external services for
//! capacity planning.
//!
//! `sekisho demo` is a thin front end over [`run_demo`].

pub mod city;
pub mod day;
pub mod load;
pub mod profile;
pub mod report;
pub mod rng;
pub mod run;
pub mod whatif;
pub mod world;

use std::path::PathBuf;
use std::sync::Arc;

use sekisho_policy_engine::audit::AuditEvent;
use sekisho_policy_engine::PolicySources;

pub use city::City;
pub use day::Workday;
pub use profile::Profile;
pub use report::Report;
pub use run::{Progress, RunLog};
pub use whatif::WhatIf;
pub use world::{World, WorldOptions};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("setting up the simulated city: {0}")]
    Setup(String),
    #[error("a service refused an administrative call: {0}")]
    Rpc(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub profile: Profile,
    pub seed: u64,
    /// A city saved by an earlier run (replays that city instead of generating one).
    pub city: Option<City>,
    pub policies: PolicySources,
    /// A second policy set to replay the same day under.
    pub what_if: Option<PolicySources>,
    /// Scripts (people and shared terminals) in flight at once.
    pub in_flight: usize,
    /// Where the services keep their stores, keys and PKI.
    pub work_dir: PathBuf,
}

impl DemoOptions {
    pub fn new(profile: Profile, seed: u64, policies: PolicySources, work_dir: PathBuf) -> Self {
        DemoOptions {
            profile,
            seed,
            city: None,
            policies,
            what_if: None,
            in_flight: 256,
            work_dir,
        }
    }
}

/// Everything a demo run produced.
pub struct DemoOutcome {
    pub city: City,
    pub day: Workday,
    pub log: RunLog,
    pub audit: Vec<AuditEvent>,
    pub report: Report,
    pub what_if: Option<WhatIf>,
}

/// Generates (or takes) the city, starts the services, enrolls, replays the day and
/// reports; then, with a what-if policy set, does the same day again on fresh
/// services under it and compares.
pub async fn run_demo(
    options: &DemoOptions,
    progress: Arc<Progress>,
) -> Result<DemoOutcome, SimError> {
    let city = options
        .city
        .clone()
        .unwrap_or_else(|| City::generate(options.profile, options.seed));
    let day = Workday::generate(&city, city.seed);
    let world_options = WorldOptions::new(options.policies.clone());
    let world = World::start(&options.work_dir.join("day"), &city, &world_options).await?;
    let setup = world.setup.as_secs_f64();
    let result = run::run_day(&city, &day, &world, options.in_flight, &progress).await;
    let audit = match &result {
        Ok(_) => world.journals().await,
        Err(_) => Ok(Vec::new()),
    };
    let version = world.policy_version.clone();
    world.shutdown().await;
    let log = result?;
    let audit = audit?;
    let report = report::build(&city, &log, &audit, &world_options, &version, setup);

    let what_if = match &options.what_if {
        None => None,
        Some(policies) => {
            let mut wo = WorldOptions::new(policies.clone());
            wo.force_publish = true;
            let world = World::start(&options.work_dir.join("what-if"), &city, &wo).await?;
            progress.done.store(0, std::sync::atomic::Ordering::Relaxed);
            let result = run::run_day(&city, &day, &world, options.in_flight, &progress).await;
            let after_version = world.policy_version.clone();
            world.shutdown().await;
            Some(whatif::compare(&log, &result?, &version, &after_version))
        }
    };
    Ok(DemoOutcome {
        city,
        day,
        log,
        audit,
        report,
        what_if,
    })
}
