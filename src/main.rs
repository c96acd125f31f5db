//! The `sekisho` binary: parse arguments, set up logging, run a command, exit.
//!
//! Exit codes: 0 done / valid / allowed; 1 the answer is no (invalid policies, lint
//! errors, a refused publish, a denied logon); 2 the command could not run (bad
//! input, unknown user, unreadable file, engine or gateway unreachable or refusing
//! the call).

use std::process::ExitCode;

use clap::Parser;
use sekisho::cli::{
    AgentCommand, AuditCommand, Cli, Command, DeviceCommand, DirectoryCommand, EmergencyOtpCommand,
    EngineCommand, EnrollCommand, EntitiesCommand, GatewayCommand, PolicyCommand, ReportCommand,
    UsersCommand,
};
use sekisho::{cmd, Outcome};

/// The engine and gateway allocate per request (protobuf, HTTP/2 frames, rows);
/// glibc's malloc was 7% of a loaded gateway's CPU, and mimalloc made logons
/// about 7% cheaper (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo starts an empty engine on purpose; its start-up warning is no news there.
    let filter = match cli.command {
        Command::Demo(_) => format!("{},sekisho_policy_engine::server=error", cli.log),
        _ => cli.log.clone(),
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log / SEKISHO_LOG '{}': {e}", cli.log);
            return ExitCode::from(2);
        }
    };
    // Colours only for a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Demo(args) => cmd::demo::run(&args).await,
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
        Command::Directory(DirectoryCommand::Sync {
            dry_run,
            force,
            full,
            verbose,
            engine,
        }) => cmd::directory::sync(dry_run, force, full, verbose, &engine).await,
        Command::Directory(DirectoryCommand::Status { runs, engine }) => {
            cmd::directory::status(runs, &engine).await
        }
        Command::Decide(args) => cmd::decide::run(&args),
        Command::Gateway(GatewayCommand::Serve { config, pki_dir }) => {
            cmd::gateway::serve(config.as_deref(), pki_dir.as_deref()).await
        }
        Command::Enroll(EnrollCommand::Totp {
            user,
            algorithm,
            digits,
            invert_qr,
            gateway,
        }) => cmd::enroll::totp(&user, &algorithm, digits, invert_qr, &gateway).await,
        Command::Enroll(EnrollCommand::Card {
            user,
            card_cert,
            gateway,
        }) => cmd::enroll::card(&user, &card_cert, &gateway).await,
        Command::Enroll(EnrollCommand::Face(a)) => {
            cmd::enroll::biometric("face", &a.user, &a.template, a.replace, &a.gateway).await
        }
        Command::Enroll(EnrollCommand::Vein(a)) => {
            cmd::enroll::biometric("vein", &a.user, &a.template, a.replace, &a.gateway).await
        }
        Command::Enroll(EnrollCommand::Pin { user, gateway }) => {
            cmd::enroll::secret("pin", &user, &gateway).await
        }
        Command::Enroll(EnrollCommand::Password { user, gateway }) => {
            cmd::enroll::secret("password", &user, &gateway).await
        }
        Command::Enroll(EnrollCommand::Remove(a)) => cmd::enroll::remove(&a).await,
        Command::Enroll(EnrollCommand::Show { user, gateway }) => {
            cmd::enroll::show(&user, &gateway).await
        }
        Command::EmergencyOtp(EmergencyOtpCommand::Issue { user, ttl, gateway }) => {
            cmd::enroll::emergency_otp(&user, ttl, &gateway).await
        }
        Command::UnlockUser(a) => cmd::enroll::unlock_user(&a.user, &a.gateway).await,
        Command::Device(DeviceCommand::Register(a)) => cmd::device::register(&a).await,
        Command::Device(DeviceCommand::Import(a)) => cmd::device::import(&a).await,
        Command::Device(DeviceCommand::List(a)) => cmd::device::list(&a).await,
        Command::Device(DeviceCommand::Deregister { device, gateway }) => {
            cmd::device::deregister(&device, &gateway).await
        }
        Command::Users(UsersCommand::Import(a)) => cmd::users::import(&a).await,
        Command::Agent(AgentCommand::Logon(a)) => cmd::agent::authenticate("logon", &a).await,
        Command::Agent(AgentCommand::Unlock(a)) => cmd::agent::authenticate("unlock", &a).await,
        Command::Agent(AgentCommand::Lock(a)) => cmd::agent::session("lock", &a).await,
        Command::Agent(AgentCommand::Logoff(a)) => cmd::agent::session("logoff", &a).await,
        Command::Audit(AuditCommand::Query {
            source,
            filter,
            format,
            limit,
            after,
        }) => cmd::audit::query(&source, &filter, &format, limit, after.as_deref()).await,
        Command::Audit(AuditCommand::Verify { source }) => cmd::audit::verify(&source).await,
        Command::Audit(AuditCommand::Export {
            source,
            filter,
            format,
            out,
        }) => cmd::audit::export(&source, &filter, &format, out.as_deref()).await,
        Command::Audit(AuditCommand::Import { file, store }) => {
            cmd::audit::import(&file, &store.store, &store.tenant).await
        }
        Command::Audit(AuditCommand::Unbind { journal, store }) => {
            cmd::audit::unbind(&journal, &store.store, &store.tenant).await
        }
        Command::Report(ReportCommand::Dormant {
            days,
            source,
            output,
        }) => cmd::report::dormant(days, &source, &output).await,
        Command::Report(ReportCommand::Devices {
            source,
            period,
            output,
        }) => cmd::report::devices(&source, &period, &output).await,
        Command::Report(ReportCommand::Failures {
            source,
            period,
            output,
        }) => cmd::report::failures(&source, &period, &output).await,
        Command::Report(ReportCommand::Operators {
            device,
            at,
            source,
            output,
        }) => cmd::report::operators(&device, &at, &source, &output).await,
    }
}

/// An error as one line: the chain of causes, outermost first. A cause whose text
/// its parent already spells out (`{path}: {source}` with `#[source]`) is not
/// repeated, and line breaks inside a message (a TOML error's excerpt) become
/// single spaces.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the CA certificate ca.pem: {source}")]
    struct Read {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Read { source: io }).context("engine failed to start");
        assert_eq!(
            one_line(&e),
            "engine failed to start: cannot read the CA certificate ca.pem: No such file"
        );
        let toml = anyhow::anyhow!("e.toml: TOML parse error at line 2\n  |\n2 | x = 3\n");
        assert_eq!(
            one_line(&toml),
            "e.toml: TOML parse error at line 2 | 2 | x = 3"
        );
    }
}
