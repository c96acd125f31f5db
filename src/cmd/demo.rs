//! `sekisho demo`: the quick start. Starts a real engine (SQLite, mutual TLS with a
//! generated PKI, a loopback port), publishes the reference policies and the example
//! city through the admin API, then asks the questions a gateway asks at a logon.

use std::path::Path;

use anyhow::{Context, Result};
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::entities::parse_entities_json;
use sekisho_policy_engine::server;
use sekisho_proto::v1 as pb;
use tonic::transport::Channel;

use crate::client::EngineArgs;
use crate::{reference, Outcome};

/// One question of the tour.
struct Scenario {
    what: &'static str,
    user: &'static str,
    device: &'static str,
    action: &'static str,
    via: &'static str,
    upstream: &'static [&'static str],
    emergency_otp: bool,
    /// `None`: ask for a plan; `Some`: authorize these verified factors.
    factors: Option<&'static [&'static str]>,
}

const fn plan(
    what: &'static str,
    user: &'static str,
    device: &'static str,
    action: &'static str,
) -> Scenario {
    Scenario {
        what,
        user,
        device,
        action,
        via: "console",
        upstream: &[],
        emergency_otp: false,
        factors: None,
    }
}

const fn decide(
    what: &'static str,
    user: &'static str,
    device: &'static str,
    action: &'static str,
    factors: &'static [&'static str],
) -> Scenario {
    Scenario {
        factors: Some(factors),
        ..plan(what, user, device, action)
    }
}

const TOUR: &[Scenario] = &[
    plan(
        "General affairs staff at an LGWAN desktop",
        "u023",
        "lgwan-desk-17",
        "logon",
    ),
    plan(
        "...and at the same desk after a screen lock",
        "u023",
        "lgwan-desk-17",
        "unlock",
    ),
    plan(
        "A manager's mobile PC (camera, no card reader)",
        "u020",
        "lgwan-mobile-01",
        "logon",
    ),
    plan(
        "Staff whose card is not issued yet",
        "u025",
        "lgwan-desk-01",
        "logon",
    ),
    Scenario {
        emergency_otp: true,
        ..plan(
            "...after the helpdesk issues an emergency OTP",
            "u025",
            "lgwan-desk-01",
            "logon",
        )
    },
    plan(
        "A My Number counter terminal, resident-records operator",
        "u002",
        "mn-counter-01",
        "logon",
    ),
    plan(
        "The same counter, staff who are not My Number operators",
        "u007",
        "mn-counter-01",
        "logon",
    ),
    plan(
        "Operator change at the counter (proxy authentication)",
        "u003",
        "mn-counter-01",
        "switch_operator",
    ),
    plan("Internet-tier VDI", "u022", "net-vdi-01", "logon"),
    plan("A telework PC at home", "u031", "tw-pc-01", "logon"),
    Scenario {
        via: "lgwan_telework",
        upstream: &["face", "password"],
        ..plan(
            "...reaching its LGWAN desktop through the telework relay",
            "u031",
            "lgwan-desk-30",
            "logon",
        )
    },
    decide(
        "Card and password at the LGWAN desktop",
        "u023",
        "lgwan-desk-17",
        "logon",
        &["card", "password"],
    ),
    decide(
        "Password alone at the LGWAN desktop",
        "u023",
        "lgwan-desk-17",
        "logon",
        &["password"],
    ),
    decide(
        "An administrator elevating with a password only",
        "u031",
        "lgwan-desk-30",
        "elevate",
        &["password"],
    ),
    decide(
        "...and with card and password",
        "u031",
        "lgwan-desk-30",
        "elevate",
        &["card", "password"],
    ),
];

/// The hour the tour asks at, so its answers do not depend on when it runs.
const TOUR_HOUR: u32 = 10;

pub async fn run(dir: Option<&Path>) -> Result<Outcome> {
    let temp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.to_path_buf()
        }
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let config = EngineConfig::self_contained(&dir);

    println!(
        "sekisho demo — an engine on SQLite with mutual TLS, in {}\n",
        dir.display()
    );
    let running = server::start(&config)
        .await
        .context("the engine did not start")?;
    let pki = running
        .pki
        .clone()
        .context("the demo engine runs with a generated PKI")?;
    let url = format!("https://127.0.0.1:{}", running.addr.port());
    let admin = EngineArgs::new(&url, &pki.ca(), &pki.admin_cert(), &pki.admin_key());
    let gateway = EngineArgs::new(&url, &pki.ca(), &pki.gateway_cert(), &pki.gateway_key());

    let result = tour(&admin, &gateway).await;
    running.shutdown().await?;
    result?;
    println!("\nNext: `sekisho policy lint policies --entities policies/examples/entities.json` checks the");
    println!("reference set; `sekisho decide --help` evaluates your own requests offline.");
    Ok(Outcome::Ok)
}

async fn tour(admin: &EngineArgs, gateway: &EngineArgs) -> Result<()> {
    let mut admin_client = pb::policy_admin_client::PolicyAdminClient::new(admin.connect().await?);
    let city = parse_entities_json("policies/examples/entities.json", reference::ENTITIES_JSON)?;
    let counts = admin_client
        .upsert_entities(sekisho_policy_engine::grpc::batch_to_proto(&city))
        .await
        .context("loading the example city")?
        .into_inner();
    println!(
        "loaded the example city: {} users, {} groups, {} devices",
        counts.users, counts.groups, counts.devices
    );

    let published = admin_client
        .publish(sekisho_policy_engine::grpc::publish_request(
            reference::policies(),
            "reference policies (demo)",
            false,
            false,
        ))
        .await
        .context("publishing the reference policies")?
        .into_inner();
    let v = published.version.context("publish returned no version")?;
    let warnings = published.diagnostics.len();
    println!(
        "published the reference policies as v{} ({} policies; lint: {} finding(s), see `sekisho policy lint`)\n",
        v.version, v.policy_count, warnings
    );

    println!("Asking as a gateway would (at {TOUR_HOUR}:00):\n");
    let mut client =
        pb::policy_decision_client::PolicyDecisionClient::new(gateway.connect().await?);
    for s in TOUR {
        println!(
            "• {}\n  {} on {} — {}{}",
            s.what,
            s.user,
            s.device,
            s.action,
            via_note(s)
        );
        println!("  {}", ask(&mut client, s).await?);
    }
    Ok(())
}

fn via_note(s: &Scenario) -> String {
    if s.via == "console" {
        String::new()
    } else {
        format!(" via {} (upstream proof: {})", s.via, s.upstream.join("+"))
    }
}

fn joined(sets: impl IntoIterator<Item = Vec<String>>) -> String {
    sets.into_iter()
        .map(|s| s.join("+"))
        .collect::<Vec<_>>()
        .join("  or  ")
}

async fn ask(
    client: &mut pb::policy_decision_client::PolicyDecisionClient<Channel>,
    s: &Scenario,
) -> Result<String> {
    let context = Some(pb::DecisionContext {
        via: s.via.into(),
        upstream: s.upstream.iter().map(|f| f.to_string()).collect(),
        hour: Some(TOUR_HOUR),
    });
    Ok(match s.factors {
        None => {
            let p = client
                .plan(pb::PlanRequest {
                    user: s.user.into(),
                    device: s.device.into(),
                    action: s.action.into(),
                    context,
                    emergency_otp_active: s.emergency_otp,
                    request_id: String::new(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut line = if p.options.is_empty() {
                "→ no factor set this person can present here".to_string()
            } else {
                format!(
                    "→ present {}",
                    joined(p.options.into_iter().map(|o| o.factors))
                )
            };
            for u in p.unavailable {
                let why = if u.why == "no_capability" {
                    "this device cannot capture"
                } else {
                    "not enrolled"
                };
                line.push_str(&format!(
                    "\n    ({} would do, but {why}: {})",
                    u.factors.join("+"),
                    u.missing.join("+")
                ));
            }
            format!("{line}   [{}]", p.policy_version)
        }
        Some(factors) => {
            let a = client
                .authorize(pb::AuthorizeRequest {
                    user: s.user.into(),
                    device: s.device.into(),
                    action: s.action.into(),
                    factors: factors.iter().map(|f| f.to_string()).collect(),
                    context,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            let verdict = if a.decision == pb::Decision::Allow as i32 {
                "ALLOW"
            } else {
                "DENY"
            };
            let by = if a.policy_ids.is_empty() {
                "no policy permits it".to_string()
            } else {
                format!("by {}", a.policy_ids.join(", "))
            };
            format!(
                "{} → {verdict} ({by})   [{}]",
                factors.join("+"),
                a.policy_version
            )
        }
    })
}
