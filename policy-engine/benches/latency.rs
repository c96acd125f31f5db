//! Per-call latency of Authorize and Plan (cached and uncached) with the big city
//! loaded: 1,000 policies, 100,000 users, 1,700 devices. Times every call on its own
//! (`Instant`) and prints percentiles, plus load/compile times and memory.
//!
//!   cargo bench -p sekisho-policy-engine --bench latency
//!
//! `SEKISHO_BENCH_CALLS` (default 50000) sets the calls per measurement,
//! `SEKISHO_BENCH_UNCACHED_CALLS` (default: the same) those of the uncached plan.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use sekisho_policy_engine::analysis::PrincipalScope;
use sekisho_policy_engine::entities::Directory;
use sekisho_policy_engine::{CompiledPolicies, DecisionRequest, Engine, FactorSet};
use sekisho_testkit::Summary;

extern "C" {
    // glibc: hand freed heap back to the OS, so VmRSS shows what is still in use.
    fn malloc_trim(pad: usize) -> i32;
}

fn measure(
    calls: usize,
    requests: &[(DecisionRequest, FactorSet)],
    mut f: impl FnMut(&DecisionRequest, FactorSet),
) -> Summary {
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let (req, factors) = &requests[i % requests.len()];
        let t = Instant::now();
        f(req, *factors);
        samples.push(t.elapsed());
    }
    Summary::of(&mut samples)
}

fn row(name: &str, s: &Summary) {
    println!(
        "{name:<44} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.1}",
        s.n,
        us(s.p50),
        us(s.p90),
        us(s.p99),
        us(s.p999),
        us(s.max),
        us(s.mean)
    );
}

fn header() {
    println!(
        "{:<44} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "operation (µs per call)", "calls", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
}

fn run_all(
    label: &str,
    engine: &Engine,
    requests: &[(DecisionRequest, FactorSet)],
    calls: usize,
    uncached_calls: usize,
) {
    // Warm-up of the slice cache; `authorize_uncached` is one Cedar evaluation of the
    // slice (what a class's very first Authorize costs beyond its table).
    for (r, f) in requests {
        black_box(engine.authorize_uncached(r, *f).unwrap());
    }
    let a = measure(calls, requests, |r, f| {
        black_box(engine.authorize_uncached(r, f).unwrap());
    });
    row(&format!("authorize uncached (Cedar) [{label}]"), &a);
    // Warm-up of the class tables (the gateway flow: Plan, then Authorize).
    for (r, _) in requests {
        black_box(engine.plan(r, false).unwrap());
    }
    let a = measure(calls, requests, |r, f| {
        black_box(engine.authorize(r, f).unwrap());
    });
    row(&format!("authorize [{label}]"), &a);
    let p = measure(calls, requests, |r, _| {
        black_box(engine.plan(r, false).unwrap());
    });
    row(&format!("plan cached [{label}]"), &p);
    let u = measure(uncached_calls, requests, |r, _| {
        black_box(engine.plan_uncached(r, false).unwrap());
    });
    row(&format!("plan uncached [{label}]"), &u);
}

fn main() {
    let calls: usize = std::env::var("SEKISHO_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let uncached_calls: usize = std::env::var("SEKISHO_BENCH_UNCACHED_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(calls);
    let (rss0, _) = memory_kib();

    let t = Instant::now();
    let sources = big_sources();
    let gen_policies = t.elapsed();
    let t = Instant::now();
    let compiled = CompiledPolicies::compile(sources, 1).unwrap_or_else(|e| panic!("{e}"));
    let compile = t.elapsed();
    assert_eq!(compiled.policies.len(), 1_000);
    let non_monotone = compiled
        .policies
        .iter()
        .filter(|p| !p.monotonicity_issues.is_empty())
        .count();
    let reads: Vec<String> = compiled.references.attrs.iter().cloned().collect();

    let t = Instant::now();
    let batch = city_batch();
    let gen_entities = t.elapsed();
    let requests = requests(&batch, REQUESTS);
    let copy = batch.clone();
    let t = Instant::now();
    let directory = Directory::from_batch(copy).expect("directory");
    let load = t.elapsed();
    drop(batch);

    // Slice sizes: how many policies a request actually meets.
    let mut slice_sizes: Vec<Duration> = requests
        .iter()
        .map(|(r, _)| {
            let user = directory.user(&r.user).unwrap();
            let tier = directory.device(&r.device).unwrap().tier;
            let n = compiled
                .policies
                .iter()
                .filter(|p| {
                    p.scope
                        .actions
                        .as_ref()
                        .is_none_or(|a| a.contains(&r.action))
                        && p.scope.tier.is_none_or(|t| t == tier)
                        && match &p.scope.principal {
                            PrincipalScope::Any => true,
                            PrincipalScope::Group(g) => {
                                user.ancestors.iter().any(|a| a.as_ref() == g.as_str())
                            }
                            PrincipalScope::User(u) => *u == r.user,
                        }
                })
                .count();
            Duration::from_nanos(n as u64)
        })
        .collect();
    let slices = Summary::of(&mut slice_sizes);

    let engine = Engine::new(compiled, directory);
    unsafe {
        malloc_trim(0);
    }
    let (rss_loaded, hwm_loaded) = memory_kib();

    println!(
        "sekisho policy-engine latency ({calls} calls per row, {uncached_calls} for plan uncached, after one warm-up pass over {} requests)",
        requests.len()
    );
    println!(
        "data: 1,000 policies ({non_monotone} flagged non-monotone; attributes read: {}), {} users, {} groups, {} devices",
        reads.join(","),
        engine.with_directory(|d| d.user_count()),
        engine.with_directory(|d| d.group_count()),
        engine.with_directory(|d| d.device_count()),
    );
    println!(
        "policies per request slice: p50 {} p90 {} max {} (of 1,000)",
        slices.p50.as_nanos(),
        slices.p90.as_nanos(),
        slices.max.as_nanos()
    );
    println!(
        "generate 976 policies: {:.1} ms; compile 1,000 policies (strict validation): {:.1} ms",
        gen_policies.as_secs_f64() * 1e3,
        compile.as_secs_f64() * 1e3
    );
    println!(
        "generate 100k users: {:.1} ms; Directory::from_batch(100,000 users, 505 groups, 1,700 devices): {:.1} ms",
        gen_entities.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e3
    );
    println!(
        "memory: VmRSS before data {:.1} MiB; after loading (engine + 10k requests, generator data freed) {:.1} MiB; VmHWM {:.1} MiB (includes generator data)",
        mib(rss0),
        mib(rss_loaded),
        mib(hwm_loaded)
    );
    println!();
    header();
    run_all("1,000 policies", &engine, &requests, calls, uncached_calls);
    let allowed = requests
        .iter()
        .filter(|(r, f)| engine.authorize(r, *f).unwrap().allowed)
        .count();
    let with_options = requests
        .iter()
        .filter(|(r, _)| !engine.plan(r, false).unwrap().options.is_empty())
        .count();
    println!(
        "requests: {} distinct; authorize allows {:.1}%, plan has an option for {:.1}%",
        requests.len(),
        100.0 * allowed as f64 / requests.len() as f64,
        100.0 * with_options as f64 / requests.len() as f64
    );
    println!(
        "plans that fell back to evaluating every factor set: {}",
        engine.plan_fallbacks()
    );
    let (rss_after, hwm_after) = memory_kib();
    println!(
        "memory after the runs (plan-table and slice caches filled): VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(rss_after),
        mib(hwm_after)
    );

    // The same directory and requests with only the 24 reference policies.
    let small = CompiledPolicies::compile(reference_sources(), 1).expect("reference policies");
    let small_engine = Engine::new(small, engine.with_directory(|d| d.clone()));
    drop(engine);
    run_all(
        "24 reference policies",
        &small_engine,
        &requests,
        calls,
        uncached_calls,
    );
}
