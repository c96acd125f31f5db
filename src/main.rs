//! The `sekisho` binary: parse arguments, set up logging, run a command, exit.
//!
//! Exit codes: 0 done / valid / allowed; 1 the answer is no (invalid policies, lint
//! errors, a refused publish); 2 the command could not run (bad input, unknown user,
//! unreadable file, engine unreachable).

use std::process::ExitCode;

use clap::Parser;
use sekisho::cli::{Cli, Command, EngineCommand, EntitiesCommand, PolicyCommand};
use sekisho::{cmd, Outcome};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo starts an empty engine on purpose; its start-up warning is no news there.
    let filter = match cli.command {
        Command::Demo(_) => format!("{},sekisho_policy_engine::server=error", cli.log),
        _ => cli.log.clone(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run(cli.command)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::No) => ExitCode::from(1),
        Err(e) => {
            // One line: the chain of causes, outermost first.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Demo(args) => cmd::demo::run(args.dir.as_deref()).await,
        Command::Engine(EngineCommand::Serve { config }) => {
            cmd::engine::serve(config.as_deref()).await
        }
        Command::Policy(PolicyCommand::Validate { dir }) => cmd::policy::validate(&dir),
        Command::Policy(PolicyCommand::Lint {
            dir,
            entities,
            json,
        }) => cmd::policy::lint(&dir, &entities, json),
        Command::Policy(PolicyCommand::Publish {
            dir,
            comment,
            dry_run,
            force,
            engine,
        }) => cmd::policy::publish(&dir, &comment, dry_run, force, &engine).await,
        Command::Policy(PolicyCommand::Versions { engine }) => cmd::policy::versions(&engine).await,
        Command::Entities(EntitiesCommand::Upsert { file, engine }) => {
            cmd::entities::upsert(&file, &engine).await
        }
        Command::Entities(EntitiesCommand::Delete {
            users,
            groups,
            devices,
            engine,
        }) => cmd::entities::delete(&users, &groups, &devices, &engine).await,
        Command::Decide(args) => cmd::decide::run(&args),
    }
}
