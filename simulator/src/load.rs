//! Load mode: drives external (already running) services at a fixed request rate for
//! capacity planning, and reports the throughput achieved and the latency
//! percentiles. The engine gets `PolicyDecision.Plan` (what every gateway asks at
//! every `Begin`); each gateway gets `Logon.Begin` from one device certificate.
//!
//! The rate is open-loop: requests are started on a schedule, not when the previous
//! one returns, so a slow service shows up as latency and a shortfall in throughput
//! rather than being hidden by the generator slowing down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sekisho_gateway::tls::ClientTls;
use sekisho_proto::v1 as pb;
use tokio::sync::Semaphore;

use crate::world::connect;
use crate::SimError;

/// A service to drive.
#[derive(Debug, Clone)]
pub enum Target {
    Engine {
        url: String,
        tls: ClientTls,
    },
    Gateway {
        tier: String,
        url: String,
        tls: ClientTls,
    },
}

impl Target {
    pub fn name(&self) -> String {
        match self {
            Target::Engine { url, .. } => format!("engine {url} (Plan)"),
            Target::Gateway { tier, url, .. } => format!("{tier} gateway {url} (Begin)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub targets: Vec<Target>,
    /// Requests per second per target.
    pub rate: f64,
    pub duration: Duration,
    /// Most requests outstanding per target; beyond it a scheduled request is counted
    /// as shed rather than queued without bound.
    pub max_in_flight: usize,
    pub user: String,
    pub device: String,
    pub action: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadResult {
    pub target: String,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub shed: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    pub achieved_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LoadResult {
    pub fn render(&self) -> String {
        format!(
            "{}\n  sent {} ok {} errors {} shed {}; achieved {:.0}/s over {:.1} s\n  latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            self.target,
            self.sent,
            self.ok,
            self.errors,
            self.shed,
            self.achieved_per_sec,
            self.secs,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.first_error
                .as_ref()
                .map(|e| format!("\n  first error: {e}"))
                .unwrap_or_default()
        )
    }
}

enum Client {
    Engine(pb::policy_decision_client::PolicyDecisionClient<tonic::transport::Channel>),
    Gateway(pb::logon_client::LogonClient<tonic::transport::Channel>),
}

async fn call(client: Client, o: &LoadOptions) -> Result<(), String> {
    match client {
        Client::Engine(mut c) => c
            .plan(pb::PlanRequest {
                user: o.user.clone(),
                device: o.device.clone(),
                action: o.action.clone(),
                context: Some(pb::DecisionContext {
                    via: "console".into(),
                    upstream: vec![],
                    hour: Some(10),
                }),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
        Client::Gateway(mut c) => c
            .begin(pb::BeginRequest {
                device: String::new(),
                user: o.user.clone(),
                action: o.action.clone(),
                via: String::new(),
                upstream: vec![],
                request_id: String::new(),
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
    }
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// Drives every target at once for the duration.
pub async fn run(options: LoadOptions) -> Result<Vec<LoadResult>, SimError> {
    let options = Arc::new(options);
    let mut tasks = Vec::new();
    for target in options.targets.clone() {
        let (url, tls) = match &target {
            Target::Engine { url, tls } | Target::Gateway { url, tls, .. } => (url, tls),
        };
        let channel = connect(url, tls).await?;
        let o = options.clone();
        tasks.push(tokio::spawn(async move {
            let make = {
                let channel = channel.clone();
                let engine = matches!(target, Target::Engine { .. });
                move || {
                    if engine {
                        Client::Engine(pb::policy_decision_client::PolicyDecisionClient::new(
                            channel.clone(),
                        ))
                    } else {
                        Client::Gateway(pb::logon_client::LogonClient::new(channel.clone()))
                    }
                }
            };
            drive(&target.name(), &o, make).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            t.await
                .map_err(|e| SimError::Setup(format!("load task: {e}")))?,
        );
    }
    Ok(out)
}

async fn drive(name: &str, o: &Arc<LoadOptions>, make: impl Fn() -> Client) -> LoadResult {
    let permits = Arc::new(Semaphore::new(o.max_in_flight.max(1)));
    let period = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let (mut sent, mut shed) = (0u64, 0u64);
    let mut handles = Vec::new();
    while start.elapsed() < o.duration {
        ticker.tick().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shed += 1;
            continue;
        };
        sent += 1;
        let client = make();
        let o = o.clone();
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = call(client, &o).await;
            drop(permit);
            (t.elapsed(), r)
        }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    for h in handles {
        match h.await {
            Ok((d, Ok(()))) => {
                ok += 1;
                lat.push(d);
            }
            Ok((_, Err(e))) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    LoadResult {
        target: name.to_string(),
        sent,
        ok,
        errors,
        shed,
        first_error,
        secs,
        achieved_per_sec: ok as f64 / secs.max(1e-9),
        p50_ms: pct(&lat, 0.50),
        p95_ms: pct(&lat, 0.95),
        p99_ms: pct(&lat, 0.99),
        max_ms: lat.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
    }
}
