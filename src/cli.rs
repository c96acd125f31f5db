//! Command-line arguments. Help texts are what an administrator reads first, so they
//! say what a command is for, not how it works.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::client::EngineArgs;

/// sekisho (関所) decides and enforces which authentication factors a person must
/// present, per user, device and network tier (mynumber, lgwan, internet, telework).
#[derive(Debug, Parser)]
#[command(
    name = "sekisho",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Log filter (e.g. info, sekisho_policy_engine=debug). Logs go to stderr.
    #[arg(
        long,
        global = true,
        env = "SEKISHO_LOG",
        default_value = "warn",
        value_name = "FILTER"
    )]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// See sekisho work: start an engine on SQLite with the reference policies and an
    /// example city, and ask it a few questions over mutual TLS.
    Demo(DemoArgs),
    /// Run the policy engine.
    #[command(subcommand)]
    Engine(EngineCommand),
    /// Check, lint and publish Cedar policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Maintain the users, groups and devices an engine decides about.
    #[command(subcommand)]
    Entities(EntitiesCommand),
    /// Evaluate one request offline against a policy directory and an entities file,
    /// printing one JSON object: a plan without --factors, allow/deny with them.
    Decide(DecideArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the engine's database and certificates here instead of a temporary
    /// directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// Serve PolicyDecision and PolicyAdmin over gRPC until interrupted (Ctrl-C).
    Serve {
        /// TOML configuration; every setting has a default, so it may be omitted or
        /// empty (SQLite in the current directory, mutual TLS with a generated PKI).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and strictly validate a policy directory (sekisho.cedarschema and *.cedar).
    /// Exit 0 when valid; exit 1 with one `file:line:col: …` line per problem.
    Validate {
        /// Policy directory.
        dir: PathBuf,
    },
    /// Find configuration mistakes: device kinds nobody can use, factor sets no
    /// member of a group can present, groups locked out, non-monotone policies,
    /// `elevate` with a single factor. Exit 1 when any finding is an error.
    Lint {
        /// Policy directory.
        dir: PathBuf,
        /// Users, groups and devices (Cedar entity JSON) the policies will meet.
        #[arg(long, value_name = "FILE")]
        entities: PathBuf,
        /// Print JSON for machines instead of lines for people.
        #[arg(long)]
        json: bool,
    },
    /// Validate, lint (against the engine's entities) and publish a directory as a new
    /// immutable version. A refused publish changes nothing.
    Publish {
        /// Policy directory.
        dir: PathBuf,
        /// Why this version exists (shown in `policy versions`).
        #[arg(long, short, default_value = "")]
        comment: String,
        /// Check and lint only; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Publish despite lint errors (validation errors can never be forced).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// List the published versions, newest first.
    Versions {
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum EntitiesCommand {
    /// Insert or replace the users, groups and devices of a Cedar entity JSON file,
    /// in one transaction.
    Upsert {
        /// Entities file (same format as policies/examples/entities.json).
        file: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Delete users, groups or devices by id, in one transaction.
    Delete {
        #[arg(long = "user", value_name = "ID")]
        users: Vec<String>,
        #[arg(long = "group", value_name = "ID")]
        groups: Vec<String>,
        #[arg(long = "device", value_name = "ID")]
        devices: Vec<String>,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// Policy directory.
    #[arg(long, value_name = "DIR")]
    pub policies: PathBuf,
    /// Users, groups and devices (Cedar entity JSON).
    #[arg(long, value_name = "FILE")]
    pub entities: PathBuf,
    /// User id, without the type (u042).
    #[arg(long, value_name = "ID")]
    pub user: String,
    /// Device id, without the type (lgwan-desk-17).
    #[arg(long, value_name = "ID")]
    pub device: String,
    /// logon, unlock, switch_operator, presence or elevate.
    #[arg(long, value_name = "NAME")]
    pub action: String,
    /// Verified factors, comma separated (card,password). Without it: a plan.
    #[arg(long, value_delimiter = ',', value_name = "A,B,…")]
    pub factors: Option<Vec<String>>,
    /// How the session arrived: console, rdp or lgwan_telework.
    #[arg(long, default_value = "console", value_name = "V")]
    pub via: String,
    /// Factors proven on the device a remote session came from.
    #[arg(long, value_delimiter = ',', value_name = "A,B,…")]
    pub upstream: Vec<String>,
    /// Local hour 0-23 (default: now).
    #[arg(long, value_name = "H")]
    pub hour: Option<u32>,
    /// An emergency one-time password is active for the user.
    #[arg(long)]
    pub emergency_otp: bool,
}
