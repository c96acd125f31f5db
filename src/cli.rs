//! Command-line arguments. Help texts are what an administrator reads first, so they
//! say what a command is for, not how it works.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use sekisho_policy_engine::{Factor, Via};

use crate::client::{DeviceConnArgs, EngineArgs, GatewayArgs};

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
    /// See sekisho work: a generated city's whole workday through a real engine and
    /// one gateway per tier (in-process, mutual TLS, SQLite in a temporary
    /// directory), with a report at the end.
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
    /// Bring users, groups, departments and disabled accounts over from Active
    /// Directory or OpenLDAP (the engine's [directory] section), and see how the
    /// last runs went.
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// Evaluate one request offline against a policy directory and an entities file,
    /// printing one JSON object: a plan without --factors, allow/deny with them.
    Decide(DecideArgs),
    /// Run a tier's segment gateway: the service that PCs of one network tier log on
    /// through, which checks each factor and enforces the engine's decision.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Register a user's credentials on a tier's gateway (authenticator app, IC card,
    /// face, vein, PIN, password) and show what a user has registered.
    #[command(subcommand)]
    Enroll(EnrollCommand),
    /// Give a user who forgot or lost their IC card a one-time code for today.
    #[command(subcommand)]
    EmergencyOtp(EmergencyOtpCommand),
    /// Register terminals (PCs) with the engine and their tier's gateway, and issue
    /// their certificates.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Bulk-import the users of a standalone tier (no directory) and their initial
    /// credentials from a CSV file into the tier's gateway.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Lift a user's lockout on a tier's gateway (after too many failed attempts).
    UnlockUser(UnlockUserArgs),
    /// Act as a terminal: log on, unlock, lock or log off through a gateway, as a
    /// Windows credential provider or PAM module would (tests, scripts, checks after
    /// a change). Exit 0 allowed, 1 refused, 2 could not ask.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Search, verify and export the audit trail: who did what, on which terminal,
    /// when, and whether the record has been tampered with.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Reports for the yearly security month: dormant accounts, terminal usage,
    /// failures and lockouts, who was at a terminal at a given moment. Plain tables,
    /// and with --html a page with charts that opens offline.
    #[command(subcommand)]
    Report(ReportCommand),
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Read the directory now and apply what changed: users added, changed (a
    /// transfer, a new group), disabled or removed (their sessions are ended at the
    /// gateways). With --dry-run, list the changes and change nothing. Exit 1 when
    /// the mass-removal guard stopped the run.
    Sync {
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply even if more users would be disabled or removed than the engine's
        /// directory.max_removal_share allows.
        #[arg(long)]
        force: bool,
        /// Read every entry rather than only those changed since the last run.
        #[arg(long)]
        full: bool,
        /// List every changed user (a dry run always does).
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// The last runs (when, what changed, errors), the counts the engine holds from
    /// the directory, and when the next scheduled run is.
    Status {
        /// How many runs to show.
        #[arg(long, default_value_t = 10)]
        runs: u32,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// City size: small (≈400 staff), city (≈4,700 staff) or large (≈15,000 staff).
    #[arg(long, default_value = "small", value_name = "PROFILE")]
    pub profile: String,
    /// Seed of the generated city and its day: the same seed gives the same events
    /// and the same outcomes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report (text, JSON, HTML with charts), the audit export and the
    /// generated city here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replay the city saved by an earlier run (`city.json` under its --out).
    #[arg(long, value_name = "FILE")]
    pub city: Option<PathBuf>,
    /// Policies to run the day under (default: the built-in reference policies).
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Replay the same day under this second policy set and print the difference.
    #[arg(long = "what-if", value_name = "POLICY_DIR")]
    pub what_if: Option<PathBuf>,
    /// People and shared terminals in flight at once.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Keep the services' databases, keys and certificates here instead of a
    /// temporary directory.
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
        /// A user to delete (repeat for more).
        #[arg(long = "user", value_name = "ID")]
        users: Vec<String>,
        /// A group to delete (repeat for more).
        #[arg(long = "group", value_name = "ID")]
        groups: Vec<String>,
        /// A device to delete (repeat for more).
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

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Serve the Logon and GatewayAdmin APIs for one tier until interrupted (Ctrl-C or
    /// SIGTERM).
    ///
    /// Without engine.ca/cert/key in the config, the gateway talks to the engine with
    /// the engine's development PKI, looked for in tls.generate_dir (default
    /// sekisho-tls/ beside the config). When no CA is there, a new one would not be
    /// trusted by the engine, so the gateway refuses to start if the engine is on
    /// another host or already answers at engine.url; only for a loopback engine
    /// that is not running yet (to be started from the same directory) is a CA
    /// created, with a warning naming it.
    Serve {
        /// TOML configuration; only `tier` is required (SQLite store, key file and
        /// the development PKI beside it by default).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The engine's development PKI directory (where `engine serve` wrote
        /// sekisho-tls/); replaces the config's tls.generate_dir.
        #[arg(long, value_name = "DIR")]
        pki_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnrollCommand {
    /// Create a new authenticator-app (TOTP) secret for a user, replacing any old
    /// one, and show it as a QR code to scan. The secret is shown only this once.
    Totp {
        /// User id (1 to 256 bytes).
        #[arg(value_parser = crate::cmd::parse_user_id)]
        user: String,
        /// Hash algorithm; sha1 is what most authenticator apps support.
        #[arg(long, default_value = "sha1", value_parser = ["sha1", "sha256"])]
        algorithm: String,
        /// Code length in digits.
        #[arg(
            long,
            default_value = "6",
            value_parser = PossibleValuesParser::new(["6", "8"]).map(|s| s.parse::<u32>().unwrap_or(6))
        )]
        digits: u32,
        /// Draw the QR code for a terminal with a light background.
        #[arg(long)]
        invert_qr: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Register an IC card (staff card or My Number card) for a user by its
    /// certificate. Only the certificate is stored, never a private key.
    Card {
        /// User id (1 to 256 bytes).
        #[arg(value_parser = crate::cmd::parse_user_id)]
        user: String,
        /// The card's certificate, PEM or DER.
        #[arg(long, value_name = "FILE")]
        card_cert: PathBuf,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Register face templates for a user (added to the existing ones unless
    /// --replace).
    Face(BiometricEnrollArgs),
    /// Register palm vein templates for a user (added to the existing ones unless
    /// --replace).
    Vein(BiometricEnrollArgs),
    /// Set a user's PIN. The PIN is read from standard input (one line), so it is
    /// neither shown nor kept in the shell history: `sekisho enroll pin u042 < pin.txt`,
    /// or type it at the prompt.
    Pin {
        /// User id (1 to 256 bytes).
        #[arg(value_parser = crate::cmd::parse_user_id)]
        user: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Set a user's password on a tier without a directory (standalone). Read from
    /// standard input like `enroll pin`.
    Password {
        /// User id (1 to 256 bytes).
        #[arg(value_parser = crate::cmd::parse_user_id)]
        user: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Remove a user's credentials on this tier: a lost card (--factor card
    /// --card-cert FILE), every card, a factor's credentials, or everything the user
    /// has (--all, for someone who left). Takes effect at the next logon.
    Remove(EnrollRemoveArgs),
    /// Show what a user has registered on this tier, and whether they are locked out.
    Show {
        /// User id (1 to 256 bytes).
        #[arg(value_parser = crate::cmd::parse_user_id)]
        user: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["factor", "all"])))]
pub struct EnrollRemoveArgs {
    /// User id (1 to 256 bytes).
    #[arg(value_parser = crate::cmd::parse_user_id)]
    pub user: String,
    /// The factor whose credentials go: password, pin, totp, card, mynumber_card,
    /// face, vein or emergency_otp.
    #[arg(long, value_name = "FACTOR")]
    pub factor: Option<Factor>,
    /// Every credential the user has on this tier.
    #[arg(long)]
    pub all: bool,
    /// With --factor card or mynumber_card: only this card, by its certificate
    /// (PEM or DER), as given to `enroll card`.
    #[arg(long, value_name = "FILE")]
    pub card_cert: Option<PathBuf>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct BiometricEnrollArgs {
    /// User id (1 to 256 bytes).
    #[arg(value_parser = crate::cmd::parse_user_id)]
    pub user: String,
    /// Feature vectors from the enrolment device: one vector (a JSON array of
    /// numbers, or numbers separated by spaces) or a JSON array of vectors.
    #[arg(long, value_name = "FILE")]
    pub template: PathBuf,
    /// Replace the user's templates for this factor instead of adding to them.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum EmergencyOtpCommand {
    /// Issue a single-use code the user types instead of presenting their card. It is
    /// printed once (tell it to the user in person or by phone) and expires after --ttl.
    Issue {
        /// User id (1 to 256 bytes).
        #[arg(value_parser = crate::cmd::parse_user_id)]
        user: String,
        /// How long the code stays valid: 30m, 2h, 1h30m, 1d (at most 24h).
        #[arg(long, default_value = "2h", value_parser = crate::cmd::parse_otp_ttl, value_name = "DURATION")]
        ttl: Duration,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register (or update) a terminal: in the engine's entities, so that policies
    /// see its tier and kind, and on its tier's gateway, which then accepts its
    /// certificate. Run again to change it.
    Register(Box<DeviceRegisterArgs>),
    /// Register or update many terminals at once from a CSV or TOML file (by its
    /// extension) in the engine's store, in one transaction. Every row is checked
    /// first; with any problem nothing is written. Importing the same file again
    /// changes nothing.
    Import(DeviceImportArgs),
    /// List the terminals in the engine's store.
    List(DeviceListArgs),
    /// Remove a stolen or retired terminal from its tier's gateway: its certificate
    /// is refused from then on and its open session ends. (Its entry in the engine's
    /// entities stays until `sekisho entities delete --device ID`.)
    Deregister {
        /// Device id (its certificate's common name, 1 to 256 bytes).
        #[arg(value_parser = crate::cmd::parse_device_id)]
        device: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

/// The engine's database, opened directly (device import and list, audit import
/// and unbind).
#[derive(Debug, Clone, Args)]
pub struct EngineStoreArgs {
    /// The engine's database: sqlite://FILE or postgres://…
    #[arg(
        long,
        env = "SEKISHO_STORE",
        default_value = "sqlite://sekisho-engine.db",
        value_name = "URL"
    )]
    pub store: String,
    /// The municipality (tenant) in the engine's store.
    #[arg(
        long,
        env = "SEKISHO_TENANT",
        default_value = "default",
        value_name = "ID"
    )]
    pub tenant: String,
}

#[derive(Debug, Args)]
pub struct DeviceImportArgs {
    /// devices.csv (columns id,tier,kind,capabilities,location; capabilities
    /// separated by ;) or devices.toml ([[device]] tables with the same keys).
    pub file: PathBuf,
    /// Check and show what would be added or changed; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How the CSV file is encoded: auto (UTF-8 if valid, else Shift_JIS), utf-8 or
    /// shift_jis.
    #[arg(long, default_value = "auto", value_name = "ENCODING")]
    pub encoding: sekisho_policy_engine::import::TextEncoding,
    #[command(flatten)]
    pub store: EngineStoreArgs,
}

#[derive(Debug, Args)]
pub struct DeviceListArgs {
    /// Only this tier: mynumber, lgwan, internet or telework.
    #[arg(long, value_name = "TIER")]
    pub tier: Option<String>,
    /// Only this kind: desktop, shared, mobile, telework or vdi.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Print CSV in the import format instead of a table (edit and import again).
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub store: EngineStoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create or update users (name, department, role, groups) and their initial
    /// password, PIN, IC card certificate and TOTP seed on a tier's gateway, from a
    /// CSV file (UTF-8 or Shift_JIS). Every row is checked first and any problem is
    /// reported with its row and column; nothing is written unless every row is
    /// valid. Importing the same file again changes nothing.
    Import(UsersImportArgs),
}

#[derive(Debug, Args)]
pub struct UsersImportArgs {
    /// users.csv; header: user,name,department,role,groups,password,pin,card_cert,totp_seed
    /// (only user is required; groups and card_cert separated by ;, card_cert paths
    /// relative to the CSV file).
    pub file: PathBuf,
    /// Check and show what would be added or changed; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How the file is encoded: auto (UTF-8 if valid, else Shift_JIS), utf-8 or
    /// shift_jis.
    #[arg(long, default_value = "auto", value_name = "ENCODING")]
    pub encoding: sekisho_policy_engine::import::TextEncoding,
    /// Also list the users that did not change.
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct DeviceRegisterArgs {
    /// Device id: the common name of the terminal's certificate (lgwan-desk-17),
    /// 1 to 256 bytes.
    #[arg(value_parser = crate::cmd::parse_device_id)]
    pub id: String,
    /// The network tier it sits on: mynumber, lgwan, internet or telework.
    #[arg(long, value_name = "TIER")]
    pub tier: String,
    /// What kind of terminal: desktop, shared, mobile, telework or vdi.
    #[arg(long, value_name = "KIND")]
    pub kind: String,
    /// Readers it has: card (IC card reader, also reads My Number cards), face
    /// (camera), vein (vein reader). Comma separated.
    #[arg(long, value_delimiter = ',', value_name = "A,B,…")]
    pub capabilities: Vec<String>,
    /// Where it stands (shown in reports): "1F counter 3".
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        value_name = "TEXT"
    )]
    pub location: String,
    /// Public key (PEM) of its face or vein capture device, which signs captures.
    #[arg(long, value_name = "PUBKEY.pem")]
    pub capture_key: Option<PathBuf>,
    /// Also issue the terminal's client certificate from the development CA and
    /// write it to DIR/ID.pem and DIR/ID-key.pem (kept if already there).
    #[arg(long, value_name = "DIR")]
    pub issue_cert: Option<PathBuf>,
    /// The development PKI (CA certificate and key) to issue from.
    #[arg(long, default_value = "sekisho-tls", value_name = "DIR")]
    pub pki_dir: PathBuf,
    /// Register on the gateway only, not in the engine (standalone tiers have no
    /// engine; their entities come with the policy bundle).
    #[arg(long)]
    pub gateway_only: bool,
    /// Gateway address: https://HOST:PORT. The gateway is called with the same
    /// --ca, --cert and --key as the engine.
    #[arg(
        long = "gateway",
        env = "SEKISHO_GATEWAY",
        default_value = "https://127.0.0.1:7444",
        value_name = "URL"
    )]
    pub gateway: String,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct UnlockUserArgs {
    /// User id (1 to 256 bytes).
    #[arg(value_parser = crate::cmd::parse_user_id)]
    pub user: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Log a user on to this terminal. Prints the session id on success (exit 0), the
    /// reasons in the locale's language on refusal (exit 1). Secrets never go on the
    /// command line: --password-stdin and --pin-stdin read one line each from
    /// standard input, the password first when both are given.
    Logon(AgentAuthArgs),
    /// Unlock this terminal's locked session; on a shared terminal another user may,
    /// and becomes its operator. Output and secrets as for `agent logon`.
    Unlock(AgentAuthArgs),
    /// Lock this terminal's session (screen lock).
    Lock(AgentSessionArgs),
    /// End this terminal's session.
    Logoff(AgentSessionArgs),
}

/// What the person presents. Only the factor set the gateway asks for is sent;
/// secrets come from standard input, never from the command line.
#[derive(Debug, Args)]
pub struct AgentAuthArgs {
    /// User id (1 to 256 bytes).
    #[arg(long, value_name = "ID", value_parser = crate::cmd::parse_user_id)]
    pub user: String,
    /// How the session arrives: console, rdp or lgwan_telework.
    #[arg(long, default_value = "console", value_name = "V")]
    pub via: Via,
    /// Factors proven on the device a remote session came from, comma separated.
    #[arg(long, value_delimiter = ',', value_name = "A,B,…")]
    pub upstream: Vec<Factor>,
    /// Read the password from standard input (the first line).
    #[arg(long)]
    pub password_stdin: bool,
    /// Read the PIN from standard input (the line after the password, when both are
    /// read).
    #[arg(long)]
    pub pin_stdin: bool,
    /// The code shown by the authenticator app.
    #[arg(long, value_name = "CODE")]
    pub totp: Option<String>,
    /// An emergency one-time password issued by an administrator.
    #[arg(long, value_name = "CODE")]
    pub emergency_otp: Option<String>,
    /// IC card certificate (PEM or DER), for a software card.
    #[arg(long, value_name = "FILE", requires = "card_key")]
    pub card_cert: Option<PathBuf>,
    /// IC card private key (PKCS#8 PEM) that signs the gateway's nonce.
    #[arg(long, value_name = "FILE", requires = "card_cert")]
    pub card_key: Option<PathBuf>,
    /// Face capture: a feature vector file (JSON array or numbers separated by
    /// spaces).
    #[arg(long, value_name = "FILE", requires = "capture_key")]
    pub face: Option<PathBuf>,
    /// Vein capture: a feature vector file.
    #[arg(long, value_name = "FILE", requires = "capture_key")]
    pub vein: Option<PathBuf>,
    /// Private key (PKCS#8 PEM) of the capture device, which signs face and vein
    /// captures.
    #[arg(long, value_name = "FILE")]
    pub capture_key: Option<PathBuf>,
    #[command(flatten)]
    pub conn: DeviceConnArgs,
}

#[derive(Debug, Args)]
pub struct AgentSessionArgs {
    /// The session id printed by `agent logon`.
    #[arg(long, value_name = "ID")]
    pub session: String,
    #[command(flatten)]
    pub conn: DeviceConnArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agent_card_and_capture_flags_come_in_pairs() {
        let base = [
            "sekisho",
            "agent",
            "logon",
            "--user",
            "u1",
            "--device-cert",
            "d.pem",
            "--device-key",
            "d-key.pem",
        ];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--card-cert", "c.pem"]).is_err());
        assert!(parse(&["--face", "f.json"]).is_err());
        assert!(parse(&["--face", "f.json", "--capture-key", "k.pem"]).is_ok());
        assert!(parse(&["--card-cert", "c.pem", "--card-key", "k.pem"]).is_ok());
    }

    #[test]
    fn emergency_otp_ttl_is_checked_when_parsing() {
        let parse = |ttl: &str| {
            Cli::try_parse_from(["sekisho", "emergency-otp", "issue", "u1", "--ttl", ttl])
        };
        match parse("90m").unwrap().command {
            Command::EmergencyOtp(EmergencyOtpCommand::Issue { ttl, .. }) => {
                assert_eq!(ttl, Duration::from_secs(5_400))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse("25h").is_err());
        assert!(parse("2").is_err());
    }
}

/// Where the trail is read from: the engine's store (default), or a file.
#[derive(Debug, Clone, Args)]
pub struct AuditSourceArgs {
    /// The engine's database: sqlite://FILE or postgres://… (only read).
    #[arg(
        long,
        env = "SEKISHO_STORE",
        default_value = "sqlite://sekisho-engine.db",
        value_name = "URL",
        conflicts_with = "journal"
    )]
    pub store: String,
    /// The municipality (tenant) in the engine's store.
    #[arg(
        long,
        env = "SEKISHO_TENANT",
        default_value = "default",
        value_name = "ID"
    )]
    pub tenant: String,
    /// Read a gateway's journal instead: its database (the file gateway-TIER.db, or
    /// a sqlite:// or postgres:// URL; the journals of --tenant) or an export made
    /// with `audit export --format jsonl`.
    #[arg(long, value_name = "FILE|URL")]
    pub journal: Option<PathBuf>,
}

/// Which events: every given condition must hold.
#[derive(Debug, Clone, Args)]
pub struct AuditFilterArgs {
    /// The account the event is about (who logged on, whose card was enrolled).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The terminal (its certificate's name, e.g. lgwan-desk-17).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// mynumber, lgwan, internet or telework.
    #[arg(long, value_name = "TIER")]
    pub tier: Option<String>,
    /// logon, unlock, switch_operator, elevate, lock, logoff, lockout, enroll,
    /// emergency_otp_issue, device_register, device_deregister, credential_remove,
    /// unlock_user, user_import, session_revoke, deprovision.
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// allow, deny or error.
    #[arg(long, value_name = "OUTCOME", value_parser = PossibleValuesParser::new(["allow", "deny", "error"]))]
    pub outcome: Option<String>,
    /// The gateway whose journal recorded it (its configured name).
    #[arg(long, value_name = "GATEWAY")]
    pub gateway: Option<String>,
    /// From this time on: 2026-11-22, "2026-11-22 14:00" (local time), RFC 3339,
    /// or a period back from now such as 7d or 12h.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List events in time order, a page at a time.
    Query {
        #[command(flatten)]
        source: AuditSourceArgs,
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// table for people, json (one object per line) or csv for other tools.
        #[arg(long, default_value = "table", value_parser = PossibleValuesParser::new(["table", "json", "csv"]))]
        format: String,
        /// Events per page (1 to 10000).
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
        /// Continue after this cursor (printed at the end of the previous page).
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
    },
    /// Check every gateway's hash chain. Exit 0 when all are intact, 1 naming the
    /// first broken link (gateway, seq) of each chain that is not.
    Verify {
        #[command(flatten)]
        source: AuditSourceArgs,
    },
    /// Write events for a SIEM or an archive: JSON lines (as chained) or CSV.
    Export {
        #[command(flatten)]
        source: AuditSourceArgs,
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// jsonl keeps each event as chained (verifiable, importable); csv is for
        /// spreadsheets.
        #[arg(long, default_value = "jsonl", value_parser = PossibleValuesParser::new(["jsonl", "csv"]))]
        format: String,
        /// Write here instead of standard output (replaced only when complete).
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Bring a journal export from a standalone tier (no network path) into the
    /// engine's store. Importing the same file again adds nothing.
    Import {
        /// A file written by `audit export --format jsonl`.
        file: PathBuf,
        #[command(flatten)]
        store: EngineStoreArgs,
    },
    /// Let a journal be shipped by another gateway certificate: a journal belongs
    /// to the certificate that first shipped it, so a gateway given a new
    /// certificate name on purpose is refused until its journal is unbound. The
    /// next gateway certificate that ships it owns it. Recorded in the engine's own
    /// journal (`engine-audit`, action `journal_unbind`).
    Unbind {
        /// The journal: the gateway's `name`.
        journal: String,
        #[command(flatten)]
        store: EngineStoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Accounts with no successful logon for --days (candidates to disable).
    Dormant {
        /// Days without a successful logon that make an account dormant.
        #[arg(long, default_value_t = 90, value_name = "N")]
        days: u32,
        #[command(flatten)]
        source: AuditSourceArgs,
        #[command(flatten)]
        output: ReportOutputArgs,
    },
    /// Successful logons per terminal, per day and per hour of the day.
    Devices {
        #[command(flatten)]
        source: AuditSourceArgs,
        #[command(flatten)]
        period: ReportPeriodArgs,
        #[command(flatten)]
        output: ReportOutputArgs,
    },
    /// Refused logons and unlocks by tier, factor and reason, and the lockouts.
    Failures {
        #[command(flatten)]
        source: AuditSourceArgs,
        #[command(flatten)]
        period: ReportPeriodArgs,
        #[command(flatten)]
        output: ReportOutputArgs,
    },
    /// Who was using a terminal at a given moment (shared counter terminals), and
    /// the logons, switches and locks around it.
    Operators {
        /// The terminal (its certificate's name, e.g. lg-counter-03); an id that
        /// neither the engine's entities nor the trail know is an error.
        #[arg(long, value_name = "DEVICE")]
        device: String,
        /// The moment: "2026-11-22 14:02" (local time) or RFC 3339.
        #[arg(long, value_name = "TIME")]
        at: String,
        #[command(flatten)]
        source: AuditSourceArgs,
        #[command(flatten)]
        output: ReportOutputArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ReportPeriodArgs {
    /// From (default: 30 days ago). Same forms as `audit query --since`.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Until (default: now).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ReportOutputArgs {
    /// Also write the report as an HTML page with charts.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}
