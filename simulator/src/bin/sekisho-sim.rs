//! `sekisho-sim load`: drives running services (an engine and gateways) at a fixed
//! rate for capacity planning. The demo itself is `sekisho demo`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sekisho_gateway::tls::ClientTls;
use sekisho_simulator::load::{self, LoadOptions, Target};

#[derive(Parser)]
#[command(name = "sekisho-sim", about = "Load generator for sekisho services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive an engine (Plan) and gateways (Begin) at --rate requests/s each.
    Load {
        /// The engine, e.g. https://127.0.0.1:7443.
        #[arg(long)]
        engine: Option<String>,
        /// A gateway as TIER=URL; repeat for several.
        #[arg(long = "gateway", value_name = "TIER=URL")]
        gateways: Vec<String>,
        /// Requests per second per service.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 256)]
        max_in_flight: usize,
        /// CA of the services' certificates.
        #[arg(long, default_value = "sekisho-tls/ca.pem")]
        ca: PathBuf,
        /// Client certificate for the engine (a gateway's).
        #[arg(long, default_value = "sekisho-tls/sekisho-gateway.pem")]
        cert: PathBuf,
        #[arg(long, default_value = "sekisho-tls/sekisho-gateway-key.pem")]
        key: PathBuf,
        /// Device certificate and key presented to the gateways (its CN is the device).
        #[arg(long)]
        device_cert: Option<PathBuf>,
        #[arg(long)]
        device_key: Option<PathBuf>,
        #[arg(long, default_value = "u001")]
        user: String,
        /// The device named in the engine's Plan requests.
        #[arg(long, default_value = "lgwan-desk-01")]
        device: String,
        #[arg(long, default_value = "logon")]
        action: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    sekisho_policy_engine::server::install_crypto_provider();
    let Command::Load {
        engine,
        gateways,
        rate,
        duration,
        max_in_flight,
        ca,
        cert,
        key,
        device_cert,
        device_key,
        user,
        device,
        action,
        json,
    } = Cli::parse().command;
    let mut targets = Vec::new();
    if let Some(url) = engine {
        targets.push(Target::Engine {
            url,
            tls: ClientTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
        });
    }
    for g in gateways {
        let (tier, url) = g
            .split_once('=')
            .with_context(|| format!("--gateway {g}: expected TIER=URL"))?;
        let (Some(c), Some(k)) = (&device_cert, &device_key) else {
            bail!("--gateway needs --device-cert and --device-key (the device the Begin calls come from)");
        };
        targets.push(Target::Gateway {
            tier: tier.to_string(),
            url: url.to_string(),
            tls: ClientTls {
                ca: ca.clone(),
                cert: c.clone(),
                key: k.clone(),
            },
        });
    }
    if targets.is_empty() {
        bail!("nothing to drive: give --engine URL and/or --gateway TIER=URL");
    }
    if rate.is_nan() || rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let results = load::run(LoadOptions {
        targets,
        rate,
        duration: Duration::from_secs(duration),
        max_in_flight,
        user,
        device,
        action,
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            println!("{}", r.render());
        }
    }
    Ok(())
}
