//! Criterion benchmarks of in-process decisions with a big city loaded (1,000
//! policies, 100,000 users, 1,700 devices), and the same with only the 24 reference
//! policies. Each iteration takes the next of 10,000 pre-generated requests.
//!
//!   cargo bench -p sekisho-policy-engine --bench decisions -- --warm-up-time 2 --measurement-time 8
//!
//! Criterion prints mean-based intervals; the medians are in
//! target/criterion/<group>/<bench>/new/estimates.json ("median").

mod common;

use std::hint::black_box;

use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use sekisho_policy_engine::entities::Directory;
use sekisho_policy_engine::{CompiledPolicies, DecisionRequest, Engine, FactorSet};

fn bench_set(
    c: &mut Criterion,
    group: &str,
    engine: &Engine,
    requests: &[(DecisionRequest, FactorSet)],
) {
    let mut g = c.benchmark_group(group);
    // Slices cached; one Cedar evaluation per call, without the class tables.
    for (r, f) in requests {
        black_box(engine.authorize_uncached(r, *f).unwrap());
    }
    let mut i = 0usize;
    g.bench_function("authorize_uncached", |b| {
        b.iter(|| {
            let (r, f) = &requests[i % requests.len()];
            i += 1;
            black_box(engine.authorize_uncached(r, *f).unwrap())
        })
    });
    // Class tables cached, as after a gateway's Plan: Authorize reads them.
    for (r, _) in requests {
        black_box(engine.plan(r, false).unwrap());
    }
    let mut i = 0usize;
    g.bench_function("authorize", |b| {
        b.iter(|| {
            let (r, f) = &requests[i % requests.len()];
            i += 1;
            black_box(engine.authorize(r, *f).unwrap())
        })
    });
    let mut i = 0usize;
    g.bench_function("plan_cached", |b| {
        b.iter(|| {
            let (r, _) = &requests[i % requests.len()];
            i += 1;
            black_box(engine.plan(r, false).unwrap())
        })
    });
    let mut i = 0usize;
    g.bench_function("plan_uncached", |b| {
        b.iter(|| {
            let (r, _) = &requests[i % requests.len()];
            i += 1;
            black_box(engine.plan_uncached(r, false).unwrap())
        })
    });
    g.finish();
}

fn decisions(c: &mut Criterion) {
    let batch = city_batch();
    let requests = requests(&batch, REQUESTS);
    let directory = Directory::from_batch(batch).expect("directory");

    let big = CompiledPolicies::compile(big_sources(), 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(big.policies.len(), 1_000);
    let engine = Engine::new(big, directory.clone());
    bench_set(c, "city_1000_policies_100k_users", &engine, &requests);
    drop(engine);

    let small = CompiledPolicies::compile(reference_sources(), 1).expect("reference policies");
    assert_eq!(small.policies.len(), 24);
    let engine = Engine::new(small, directory);
    bench_set(c, "reference_24_policies_100k_users", &engine, &requests);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = decisions
}
criterion_main!(benches);
